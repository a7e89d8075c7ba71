// The `larktun` command line: command definitions only, each verb family in its
// own file exporting register*(program). Thin over src/{wire,daemon,acl,control}.
import { Command, CommanderError } from 'commander';
import { CliExit } from './util.js';
import { registerAcl } from './acl.js';
import { registerDaemonVerbs } from './daemon.js';
import { registerDebugWire } from './debug-wire.js';
import { registerServer } from './server.js';
import { registerAdmin } from './admin.js';
import { registerClientVerbs } from './client.js';

export function buildProgram(): Command {
  const program = new Command('larktun')
    .description('Larktun overlay network: client, daemon control, admin and offline tools')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();
  // register*(program) calls are added here, one line per verb family.
  registerClientVerbs(program);
  registerDaemonVerbs(program);
  registerDebugWire(program);
  registerAcl(program);
  registerServer(program);
  registerAdmin(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode;
      return;
    }
    if (err instanceof CliExit) {
      if (err.message) process.stderr.write(`${err.message}\n`);
      process.exitCode = err.exitCode;
      return;
    }
    throw err;
  }
}
