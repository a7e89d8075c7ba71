// Runs the larktun CLI in a child process for CLI tests.
import { main } from '../../src/cli/main.js';

await main(process.argv);
