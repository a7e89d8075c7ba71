// Client verbs of the `larktun` CLI for a managed node: up, set, down, logout,
// ping, exit-node list (status is shared with standalone mode, see daemon.ts).
// Flags are checked here first (same rules as the daemon, src/daemon/prefs.ts)
// so mistakes get a message without a round trip; the daemon decides.
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { controlRequest, defaultSocketPath } from '../daemon/control.js';
import { DEFAULT_PREFS, PrefsError, prefsForSet, prefsForUp, type PrefFlags } from '../daemon/prefs.js';
import type { ClientRequest } from '../daemon/managed-control.js';
import { fail, printJson } from './util.js';

interface FlagOpts {
  loginServer?: string;
  authkey?: string;
  hostname?: string;
  advertiseRoutes?: string;
  advertiseTags?: string;
  advertiseExitNode?: string | boolean;
  acceptRoutes?: string | boolean;
  exitNode?: string;
  exitNodeAllowLanAccess?: string | boolean;
  snatSubnetRoutes?: string | boolean;
  reset?: boolean;
  json?: boolean;
}

function bool(v: string | boolean | undefined, flag: string): boolean | undefined {
  if (v === undefined || typeof v === 'boolean') return v;
  if (v === 'true') return true;
  if (v === 'false') return false;
  return fail(`larktun: ${flag} takes true or false (e.g. ${flag}=false), got "${v}"`, 2);
}

function prefFlags(o: FlagOpts): PrefFlags {
  const f: PrefFlags = {};
  if (o.loginServer !== undefined) f.loginServer = o.loginServer;
  if (o.hostname !== undefined) f.hostname = o.hostname;
  if (o.advertiseRoutes !== undefined) f.advertiseRoutes = o.advertiseRoutes;
  if (o.advertiseTags !== undefined) f.advertiseTags = o.advertiseTags;
  const b = (k: 'advertiseExitNode' | 'acceptRoutes' | 'exitNodeAllowLanAccess' | 'snatSubnetRoutes', flag: string): void => {
    const v = bool(o[k], flag);
    if (v !== undefined) f[k] = v;
  };
  b('advertiseExitNode', '--advertise-exit-node');
  b('acceptRoutes', '--accept-routes');
  b('exitNodeAllowLanAccess', '--exit-node-allow-lan-access');
  b('snatSubnetRoutes', '--snat-subnet-routes');
  if (o.exitNode !== undefined) f.exitNode = o.exitNode;
  return f;
}

function authKey(v: string | undefined): string | null {
  if (v === undefined) return null;
  if (v.startsWith('file:')) {
    try {
      return readFileSync(v.slice(5), 'utf8').trim();
    } catch (err) {
      return fail(`larktun: --authkey ${v}: ${(err as Error).message}`, 2);
    }
  }
  return v;
}

async function request(req: ClientRequest, timeoutMs: number): Promise<unknown> {
  let reply: string;
  try {
    reply = await controlRequest(defaultSocketPath(), JSON.stringify(req), timeoutMs);
  } catch (err) {
    return fail(`larktun: ${(err as Error).message}`);
  }
  if (reply.startsWith('error: ')) return fail(`larktun: ${reply.slice(7).trim()}`);
  let parsed: { ok: boolean; result?: unknown; error?: { code: string; message: string } };
  try {
    parsed = JSON.parse(reply) as typeof parsed;
  } catch {
    return fail(`larktun: the daemon at ${defaultSocketPath()} did not answer in managed mode (is it running with --config? then use its status/policy verbs)`);
  }
  if (!parsed.ok) return fail(`larktun: ${parsed.error?.message ?? 'failed'}`);
  return parsed.result;
}

const addFlagOptions = (c: Command, forUp: boolean): Command => {
  if (forUp) {
    c.option('--login-server <url>', 'control server URL, e.g. https://ctl.example.com')
      .option('--authkey <key>', 'auth key from the tenant admin (or file:PATH to read it from a file)')
      .option('--advertise-tags <tags>', 'comma-separated tags for this node, e.g. tag:router (only with up; allowed per tagOwners)')
      .option('--reset', 'return every setting not named to its default');
  }
  return c
    .option('--hostname <name>', 'node name to ask for (default: the machine host name)')
    .option('--advertise-routes <prefixes>', 'comma-separated subnet routes to offer, masked prefixes, e.g. 192.168.6.0/24 ("" for none)')
    .option('--advertise-exit-node [bool]', 'offer this node as an exit node (0.0.0.0/0 and ::/0)')
    .option('--accept-routes [bool]', "install peers' subnet routes into this machine's routing")
    .option('--exit-node <name|ip>', 'send internet traffic through this exit node; --exit-node= to stop')
    .option('--exit-node-allow-lan-access [bool]', 'with an exit node: keep the directly connected LAN off the tunnel')
    .option('--snat-subnet-routes [bool]', 'on a subnet router: masquerade routed traffic as this node (default true)')
    .option('--json', 'print the result as JSON');
};

function show(o: FlagOpts, result: unknown, text: string): void {
  if (o.json) printJson(result);
  else process.stdout.write(text);
}

export function registerClientVerbs(program: Command): void {
  addFlagOptions(program.command('up').description('log this node in (first time: --login-server and --authkey, or --tenant to be approved by a signed-in user of the tenant) and connect it; flags set its preferences'), true)
    .option('--timeout <seconds>', 'how long to wait for the network map', '30')
    .option('--tenant <name>', 'without --authkey: log in interactively to this tenant (prints a URL for a user of the tenant to approve the machine)')
    .option('--login-timeout <seconds>', 'with --tenant: give up waiting for approval after this long (default: until the link expires)', '900')
    .action(async (o: FlagOpts & { timeout: string; tenant?: string; loginTimeout: string }) => {
      const flags = prefFlags(o);
      try {
        prefsForUp(null, flags, true); // syntax and combination checks; the daemon checks the rest
      } catch (err) {
        if (err instanceof PrefsError) fail(`larktun: ${err.message}`, 2);
        throw err;
      }
      const key = authKey(o.authkey);
      if (o.tenant !== undefined && key !== null) fail('larktun: --tenant is for logging in without --authkey (an auth key names its tenant)', 2);
      if (o.tenant !== undefined && !/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(o.tenant)) fail(`larktun: --tenant "${o.tenant}" is not a tenant name`, 2);
      const loginTimeout = Number(o.loginTimeout);
      if (!Number.isFinite(loginTimeout) || loginTimeout < 1) fail('larktun: --login-timeout must be a positive number of seconds', 2);
      type UpResult = {
        state: string; node: { name: string; tenant: string } | null; addresses: string[]; note?: string; warning?: string; elapsed_ms: number;
        auth_url?: string; key_fingerprint?: string; approved_by?: string;
      };
      let r = (await request({ op: 'up', flags, authkey: key, reset: o.reset === true, tenant: o.tenant ?? null }, (Number(o.timeout) + 15) * 1000)) as UpResult;
      if (r.auth_url !== undefined) {
        // As tailscale up does: the URL on its own line; the daemon polls, we wait.
        process.stderr.write(`\nTo authenticate, visit:\n\n\t${r.auth_url}\n\n${r.key_fingerprint ? `The page shows this machine's key as ${r.key_fingerprint}\n\n` : ''}`);
        r = (await request({ op: 'login-wait', timeout_ms: loginTimeout * 1000 }, (loginTimeout + Number(o.timeout) + 30) * 1000)) as UpResult;
        process.stderr.write(`Success.${r.approved_by ? ` (approved by ${r.approved_by})` : ''}\n`);
      }
      const lines = [`${r.node?.name ?? 'node'}${r.node ? ` (tenant ${r.node.tenant})` : ''}: ${r.state}${r.addresses.length ? `, ${r.addresses.map((a) => a.split('/')[0]).join(' ')}` : ''} (${r.elapsed_ms} ms)`];
      if (r.warning) lines.push(`warning: ${r.warning}`);
      if (r.note) lines.push(`note: ${r.note}`);
      show(o, r, `${lines.join('\n')}\n`);
    });

  addFlagOptions(program.command('set').description('change only the preferences named (tags and login server need larktun up)'), false)
    .option('--advertise-tags <tags>', '(not here: tags are set with larktun up)')
    .option('--login-server <url>', '(not here: use larktun up)')
    .action(async (o: FlagOpts) => {
      const flags = prefFlags(o);
      if (Object.keys(flags).length === 0) fail('larktun: set needs at least one flag, e.g. larktun set --accept-routes', 2);
      try {
        prefsForSet({ ...DEFAULT_PREFS }, flags);
      } catch (err) {
        if (err instanceof PrefsError) fail(`larktun: ${err.message}`, 2);
        throw err;
      }
      const r = (await request({ op: 'set', flags }, 20_000)) as { note?: string };
      show(o, r, r.note ? `note: ${r.note}\n` : '');
    });

  program
    .command('down')
    .description('disconnect: remove routes and the TUN, stay logged in (larktun up reconnects)')
    .action(async () => {
      await request({ op: 'down' }, 20_000);
    });

  program
    .command('logout')
    .description('disconnect and forget this node\'s login (a new larktun up needs an auth key)')
    .action(async () => {
      await request({ op: 'logout' }, 20_000);
    });

  program
    .command('ping')
    .description('ping a peer over the overlay (ICMP echo through the relay), with round-trip time and path')
    .argument('<peer>', 'peer name, DNS name or overlay IP')
    .option('-c, --count <n>', 'number of pings', '3')
    .option('--timeout <ms>', 'wait this long for each reply', '2000')
    .option('-4', 'use the peer\'s IPv4 overlay address')
    .option('-6', 'use the peer\'s IPv6 overlay address')
    .option('--json', 'print the result as JSON')
    .action(async (peer: string, o: { count: string; timeout: string; json?: boolean; 4?: boolean; 6?: boolean }) => {
      const count = Number(o.count);
      const timeout = Number(o.timeout);
      if (!Number.isInteger(count) || count < 1) fail('larktun: --count must be a positive integer', 2);
      if (!Number.isInteger(timeout) || timeout < 1) fail('larktun: --timeout must be a positive number of milliseconds', 2);
      if (o[4] && o[6]) fail('larktun: -4 and -6 exclude each other', 2);
      const family = o[4] ? 4 : o[6] ? 6 : null;
      const r = (await request({ op: 'ping', peer, count, timeout_ms: timeout, family }, count * (timeout + 300) + 5000)) as {
        peer: string; address: string; path: string; results: { seq: number; rtt_ms: number | null }[]; received: number;
      };
      if (o.json) printJson(r);
      else {
        for (const x of r.results) {
          process.stdout.write(x.rtt_ms === null ? `no reply from ${r.peer} (${r.address}) seq=${x.seq} within ${timeout} ms\n` : `pong from ${r.peer} (${r.address}) ${r.path} seq=${x.seq} in ${x.rtt_ms} ms\n`);
        }
      }
      if (r.received === 0) fail(`larktun: no reply from ${r.peer} (is it online, and does the policy allow this node to reach it?)`);
    });

  const exit = program.command('exit-node').description('exit nodes offered to this node');
  exit
    .command('list')
    .description('list the exit nodes this node may use')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const list = (await request({ op: 'exit-nodes' }, 5000)) as { name: string; addresses: string[]; online: boolean; selected: boolean }[];
      if (o.json) return printJson(list);
      if (list.length === 0) return void process.stdout.write('no exit nodes are offered to this node\n');
      const w = Math.max(4, ...list.map((e) => e.name.length));
      process.stdout.write(`${'NAME'.padEnd(w)}  ${'ADDRESSES'.padEnd(40)}  STATUS\n`);
      for (const e of list) {
        process.stdout.write(`${e.name.padEnd(w)}  ${e.addresses.join(' ').padEnd(40)}  ${e.online ? 'online' : 'offline'}${e.selected ? ', selected' : ''}\n`);
      }
    });
}
