// Daemon verbs of the `larktun` CLI: status, policy add|del|show, save. Each is
// one line over the control socket; the command is checked here first so typos
// get a clear message without a round trip.
import type { Command } from 'commander';
import { CommandError, parseCommand } from '../daemon/commands.js';
import { controlRequest, defaultSocketPath } from '../daemon/control.js';
import { fail } from './util.js';

async function send(line: string): Promise<void> {
  try {
    parseCommand(line);
  } catch (err) {
    if (err instanceof CommandError) fail(`larktun: ${err.message}`, 2);
    throw err;
  }
  let reply: string;
  try {
    reply = await controlRequest(defaultSocketPath(), line);
  } catch (err) {
    fail(`larktun: ${(err as Error).message}`);
  }
  if (reply.startsWith('error: ')) fail(`larktun: ${reply.slice(7).trimEnd()}`);
  process.stdout.write(reply);
}

interface PolicyAddOpts {
  src: string;
  dst: string;
  action: string;
  target?: string;
}

export function registerDaemonVerbs(program: Command): void {
  program
    .command('status')
    .description("show the local daemon's peers, counters and drops (LARKTUN_SOCK selects the socket)")
    .option('--json', 'machine-readable, stable schema (schema_version 1)')
    .action(async (o: { json?: boolean }) => send(o.json ? 'status --json' : 'status'));

  const policy = program.command('policy').description("inspect or change the daemon's live forwarding table");
  policy
    .command('add')
    .description('add (or replace) a rule; applied atomically')
    .requiredOption('--src <cidr>', 'source prefix, e.g. 0.0.0.0/0')
    .requiredOption('--dst <cidr>', 'destination prefix, e.g. 10.0.1.0/24')
    .option('--action <action>', 'forward or drop', 'forward')
    .option('--target <id>', 'peer id to forward to, 0 = local TUN')
    .action(async (o: PolicyAddOpts) => {
      const parts = ['policy add', `--src ${o.src}`, `--dst ${o.dst}`, `--action ${o.action}`];
      if (o.target !== undefined) parts.push(`--target ${o.target}`);
      await send(parts.join(' '));
    });
  policy
    .command('del')
    .description('remove every rule with this destination')
    .requiredOption('--dst <cidr>', 'destination prefix')
    .action(async (o: { dst: string }) => send(`policy del --dst ${o.dst}`));
  policy
    .command('show')
    .description('print the live table in lookup order, as replayable lines')
    .action(async () => send('policy show'));
  program
    .command('save')
    .description("write the live table to the daemon's state dir (loaded again at start)")
    .action(async () => send('save'));
}
