// Test entry: runs `larktun server …` and `larktun admin …` through the real CLI definition without
// needing the compiled build or the shared main.ts.
import { Command } from 'commander';
import { registerServer } from '../../src/cli/server.js';
import { registerAdmin } from '../../src/cli/admin.js';
import { CliExit } from '../../src/cli/util.js';

const program = new Command('larktun').exitOverride();
registerServer(program);
registerAdmin(program);
program.parseAsync(process.argv).then(() => {
  if (process.argv[2] === 'admin') process.exit(process.exitCode ?? 0);
}).catch((err: unknown) => {
  if (err instanceof CliExit) {
    process.stderr.write(`${err.message}\n`);
    process.exit(err.exitCode);
  }
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
