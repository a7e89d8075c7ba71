// larktund (also `subnetrad`): the node daemon in standalone mode.
//   larktund --config PATH [--check] [--print-network-plan] [--metrics HOST:PORT]
//            [--state-dir DIR] [--no-tun]
import { Command, CommanderError } from 'commander';
import { spawnSync } from 'node:child_process';
import { loadConfig, deriveRules, hasErrors, formatProblem, type Config } from './config.js';
import { networkPlan, formatPlan, tunNameProblem } from './plan.js';
import { Engine, BindError } from '../dataplane/engine.js';
import { TunDevice } from '../dataplane/tun.js';
import { startMetricsServer } from '../dataplane/metrics.js';
import {
  VERSION,
  defaultSocketPath,
  defaultStateDir,
  loadSavedPolicy,
  startControlServer,
} from './control.js';
import { parseHostPort } from '../net/addr.js';

interface DaemonFlags {
  config?: string;
  check?: boolean;
  printNetworkPlan?: boolean;
  metrics?: string;
  stateDir?: string;
  tun?: boolean;
}

class Exit extends Error {
  constructor(
    message: string,
    readonly code: number,
  ) {
    super(message);
  }
}

function log(msg: string): void {
  process.stderr.write(`larktund: ${msg}\n`);
}

function load(path: string): Config {
  const { config, problems } = loadConfig(path);
  if (!config || hasErrors(problems)) {
    const errors = problems.filter((p) => p.severity === 'error').length;
    throw new Exit(`${path}: ${errors} problem(s):\n${problems.map(formatProblem).join('\n')}`, 1);
  }
  for (const p of problems) log(formatProblem(p));
  return config;
}

function runPlan(plan: string[][]): void {
  for (const argv of plan) {
    const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
    if (r.error || r.status !== 0) {
      const why = r.error ? r.error.message : (r.stderr || '').trim() || `exit ${r.status}`;
      throw new Exit(`network setup failed at "${argv.join(' ')}": ${why}`, 1);
    }
  }
}

async function run(flags: DaemonFlags): Promise<void> {
  if (!flags.config) throw new Exit('--config PATH is required (the subnetra-style JSON config)', 2);
  const cfg = load(flags.config);
  const tunName = process.env.LARKTUN_TUN || 'lark0';
  if (flags.check) {
    process.stdout.write('config ok\n');
    return;
  }
  const nameProblem = tunNameProblem(tunName);
  if (nameProblem) throw new Exit(`LARKTUN_TUN: ${nameProblem}`, 2);
  const plan = networkPlan(cfg, tunName);
  if (flags.printNetworkPlan) {
    process.stdout.write(formatPlan(plan));
    return;
  }

  const stateDir = flags.stateDir ?? defaultStateDir();
  let rules = deriveRules(cfg);
  const saved = loadSavedPolicy(stateDir);
  if (saved) {
    rules = saved.rules;
    log(`loaded ${rules.length} rule(s) from ${saved.file} (saved table; delete it to use the config's derived table)`);
  }

  let tun: TunDevice | null = null;
  if (flags.tun !== false) {
    try {
      tun = TunDevice.open(tunName);
    } catch (err) {
      throw new Exit(`cannot open TUN device ${tunName}: ${(err as Error).message} (needs root or CAP_NET_ADMIN and /dev/net/tun)`, 1);
    }
    runPlan(plan);
  }

  const engine = new Engine({
    localId: cfg.localId,
    obfuscate: cfg.obfuscate,
    peers: cfg.peers.map((p) => ({
      id: p.id,
      name: p.name,
      endpoint: p.endpoint,
      allowedSrc: p.allowedSrc,
      psk: p.psk,
    })),
    rules,
    keepaliveSecs: cfg.keepaliveSecs,
    listenPorts: cfg.listenPorts,
    tun,
    log,
  });
  try {
    await engine.start();
  } catch (err) {
    if (err instanceof BindError) throw new Exit(err.message, 1);
    throw err;
  }
  if (tun) tun.start(engine.onTunPacket);

  const sockPath = defaultSocketPath();
  const ctx = { engine, role: cfg.role, tunName: tun ? tun.name : null, stateDir };
  const control = await startControlServer(sockPath, ctx);

  let metrics: { close(): Promise<void> } | null = null;
  if (flags.metrics) {
    const hp = parseHostPort(flags.metrics);
    if (!hp) throw new Exit(`--metrics must be HOST:PORT, e.g. 127.0.0.1:9810, got "${flags.metrics}"`, 2);
    metrics = await startMetricsServer(hp.host, hp.port, ctx);
  }

  log(
    `${VERSION} running: role=${cfg.role} local_id=${cfg.localId} udp=${cfg.listenPorts.join(',')} ` +
      `tun=${tun ? tun.name : 'none'} peers=${cfg.peers.length} rules=${rules.length} control=${sockPath}`,
  );

  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      log(`${sig}: shutting down`);
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  control.close();
  if (metrics) await metrics.close();
  await engine.stop();
  tun?.close();
  process.exit(0);
}

export async function main(argv: string[]): Promise<void> {
  const program = new Command('larktund')
    .description('Larktun node daemon: TUN + encrypted UDP links (subnetra v1 compatible)')
    .version(VERSION)
    .option('-c, --config <path>', 'subnetra-style JSON config file')
    .option('--check', 'validate the config, print every problem, exit 1 (or "config ok", exit 0)')
    .option('--print-network-plan', 'print the ip commands the daemon would run, then exit')
    .option('--metrics <host:port>', 'serve Prometheus metrics on this address, e.g. 127.0.0.1:9810')
    .option('--state-dir <dir>', 'where `larktun save` writes the table (default $LARKTUN_STATE_DIR or /var/lib/larktun)')
    .option('--no-tun', 'run without a TUN device (pure relay hub; no local delivery)')
    .exitOverride()
    .action(async (opts: DaemonFlags) => run(opts));
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode;
      return;
    }
    if (err instanceof Exit) {
      process.stderr.write(`larktund: ${err.message}\n`);
      process.exit(err.code);
    }
    throw err;
  }
}
