// Test-only entry point: runs the larktun CLI in a child process.
import { main } from '../../src/cli/main.js';

await main(process.argv);
