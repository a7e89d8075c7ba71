// larktund (also `subnetrad`): the node daemon. Three modes:
//   standalone  larktund --config PATH [--check] [--print-network-plan] [--metrics HOST:PORT]
//                        [--state-dir DIR] [--no-tun] [--workers N]
//   managed     larktund [--state-dir DIR] [--tun NAME] [--port N] [--no-tun] [--metrics HOST:PORT] [--workers N]
//               (then `larktun up --login-server URL --authkey KEY`)
//   relay       larktund --relay --server URL --relay-token TOKEN [--listen PORT[,PORT]] [--state-dir DIR] [--workers N]
//                        [--metrics HOST:PORT]
// --metrics serves Prometheus metrics at http://HOST:PORT/metrics in every mode
// (registries: src/dataplane/metrics.ts for standalone, src/daemon/metrics.ts
// for managed and relay).
import { Command, CommanderError } from 'commander';
import { spawnSync } from 'node:child_process';
import type net from 'node:net';
import type { Registry } from 'prom-client';
import { loadConfig, deriveRules, hasErrors, formatProblem, type Config } from './config.js';
import { networkPlan, formatPlan, tunNameProblem } from './plan.js';
import { Engine, BindError, type NodeEngine } from '../dataplane/engine.js';
import { TunDevice, type TunQueueDesc } from '../dataplane/tun.js';
import { WorkerEngine } from '../dataplane/node-workers/pool.js';
import { chooseWorkers, type WorkerChoice } from '../dataplane/node-workers/count.js';
import { MetricsListenError, buildStandaloneRegistry, startMetricsServer, type MetricsServer } from '../dataplane/metrics.js';
import { buildManagedRegistry, buildRelayRegistry } from './metrics.js';
import {
  VERSION,
  defaultSocketPath,
  defaultStateDir,
  listenControlSocket,
  loadSavedPolicy,
  startControlServer,
} from './control.js';
import { parseHostPort, type HostPort } from '../net/addr.js';
import { ManagedNode } from './managed.js';
import { startManagedControl } from './managed-control.js';
import { OsNet } from './osnet.js';
import { runRelay } from './relaymode.js';

interface DaemonFlags {
  config?: string;
  check?: boolean;
  printNetworkPlan?: boolean;
  metrics?: string;
  stateDir?: string;
  tun?: boolean | string;
  port?: string;
  relay?: boolean;
  server?: string;
  relayToken?: string;
  listen?: string;
  workers?: string;
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

function waitForSignal(): Promise<void> {
  return new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      log(`${sig}: shutting down`);
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}

function parsePort(text: string, flag: string): number {
  if (!/^[0-9]+$/.test(text) || Number(text) > 65535) throw new Exit(`${flag} must be a UDP port 0..65535, got "${text}"`, 2);
  return Number(text);
}

/** The --metrics address (null: no metrics); a bad value is exit 2, before anything starts. */
function metricsAddress(flags: DaemonFlags): HostPort | null {
  if (flags.metrics === undefined) return null;
  const hp = parseHostPort(flags.metrics);
  if (!hp) throw new Exit(`--metrics must be HOST:PORT, e.g. 127.0.0.1:9810, got "${flags.metrics}"`, 2);
  return hp;
}

/** Serves `registry` at --metrics; cannot listen (port in use, …): exit 1 with the reason. */
async function serveMetrics(at: HostPort, registry: Registry): Promise<MetricsServer> {
  try {
    const m = await startMetricsServer(at.host, at.port, registry);
    log(`Prometheus metrics at http://${at.host.includes(':') ? `[${at.host}]` : at.host}:${m.port}/metrics`);
    return m;
  } catch (err) {
    if (err instanceof MetricsListenError) throw new Exit(`--metrics: ${err.message}`, 1);
    throw err;
  }
}

async function runManaged(flags: DaemonFlags): Promise<void> {
  const metricsAt = metricsAddress(flags);
  const stateDir = flags.stateDir ?? defaultStateDir();
  const tunName = typeof flags.tun === 'string' ? flags.tun : process.env.LARKTUN_TUN || 'lark0';
  const nameProblem = tunNameProblem(tunName);
  if (nameProblem) throw new Exit(`--tun: ${nameProblem}`, 2);
  const withTun = flags.tun !== false;
  const choice = workerChoice(flags, null);
  const node = new ManagedNode({
    stateDir,
    tunName,
    port: parsePort(flags.port ?? '41641', '--port'),
    tun: withTun,
    os: withTun ? new OsNet() : null,
    log,
    workers: choice.workers,
  });
  const metrics = metricsAt ? await serveMetrics(metricsAt, buildManagedRegistry(node)) : null;
  const sockPath = defaultSocketPath();
  const control = await startManagedControl(sockPath, node);
  log(
    `${VERSION} running in managed mode: state=${stateDir} control=${sockPath} tun=${withTun ? tunName : 'none'} ` +
      `workers=${choice.workers} (${choice.from}); state ${node.backendState}`,
  );
  await node.init();
  await waitForSignal();
  control.close();
  await metrics?.close();
  await node.shutdown();
  process.exit(0);
}

/** The relay's control socket: `status --json` (and `status`, the same JSON) for larktun status. */
function startStatusSocket(sockPath: string, status: () => unknown): Promise<net.Server> {
  return listenControlSocket(sockPath, 4096, (line) => {
    const l = line.trim();
    return l === 'status --json' || l === 'status' ? `${JSON.stringify(status())}\n` : 'error: a relay answers only status [--json]\n';
  });
}

async function runRelayMode(flags: DaemonFlags): Promise<void> {
  const metricsAt = metricsAddress(flags);
  const server = flags.server ?? process.env.LARKTUN_SERVER;
  const token = flags.relayToken ?? process.env.LARKTUN_RELAY_TOKEN;
  if (!server) throw new Exit('--relay needs --server URL (or LARKTUN_SERVER): the control server that registered this relay', 2);
  if (!token) throw new Exit('--relay needs --relay-token TOKEN (or LARKTUN_RELAY_TOKEN): the token POST /api/v1/relays returned', 2);
  const ports = (flags.listen ?? '41642').split(',').map((p) => parsePort(p.trim(), '--listen'));
  const stateDir = flags.stateDir ?? defaultStateDir();
  let relay;
  try {
    relay = await runRelay({ server: server.replace(/\/+$/, ''), token, listenPorts: ports, stateDir, workers: workerChoice(flags, null).workers, log });
  } catch (err) {
    if (err instanceof BindError) throw new Exit(err.message, 1);
    throw err;
  }
  let metrics: MetricsServer | null = null;
  if (metricsAt) {
    try {
      metrics = await serveMetrics(metricsAt, buildRelayRegistry(relay));
    } catch (err) {
      await relay.stop();
      throw err;
    }
  }
  const sockPath = defaultSocketPath();
  const control = await startStatusSocket(sockPath, () => relay.status());
  log(`${VERSION} running as a relay: udp=${ports.join(',')} server=${server} state=${stateDir} control=${sockPath}`);
  await waitForSignal();
  control.close();
  await metrics?.close();
  await relay.stop();
  process.exit(0);
}

async function run(flags: DaemonFlags): Promise<void> {
  if (flags.relay) return runRelayMode(flags);
  if (!flags.config) return runManaged(flags);
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
  const metricsAt = metricsAddress(flags);
  const choice = workerChoice(flags, cfg.workers);
  const workers = choice.workers;

  const stateDir = flags.stateDir ?? defaultStateDir();
  let rules = deriveRules(cfg);
  const saved = loadSavedPolicy(stateDir);
  if (saved) {
    rules = saved.rules;
    log(`loaded ${rules.length} rule(s) from ${saved.file} (saved table; delete it to use the config's derived table)`);
  }

  let tun: TunDevice | null = null;
  let queues: TunQueueDesc[] = [];
  if (flags.tun !== false) {
    try {
      if (workers === 1) tun = TunDevice.open(tunName);
      else ({ dev: tun, queues } = TunDevice.openQueues(tunName, workers));
    } catch (err) {
      throw new Exit(`cannot open TUN device ${tunName}: ${(err as Error).message} (needs root or CAP_NET_ADMIN and /dev/net/tun)`, 1);
    }
    runPlan(plan);
  }

  const engineOpts = {
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
    log,
  };
  let engine: NodeEngine;
  try {
    if (workers === 1) {
      const single = new Engine({ ...engineOpts, tun });
      await single.start();
      if (tun) tun.start(single.onTunPacket, single.counters, single.refreshClock);
      engine = single;
    } else {
      const pool = new WorkerEngine({ ...engineOpts, workers, tun: tun ? { dev: tun, queues } : null });
      await pool.start();
      engine = pool;
    }
  } catch (err) {
    tun?.close();
    if (err instanceof BindError) throw new Exit(err.message, 1);
    throw err;
  }

  let metrics: MetricsServer | null = null;
  if (metricsAt) {
    try {
      metrics = await serveMetrics(metricsAt, buildStandaloneRegistry({ engine }));
    } catch (err) {
      await engine.stop();
      tun?.close();
      throw err;
    }
  }

  const sockPath = defaultSocketPath();
  const ctx = { engine, role: cfg.role, tunName: tun ? tun.name : null, stateDir, tunOffload: tun ? () => engine.tunOffload()! : undefined };
  const control = await startControlServer(sockPath, ctx);

  log(
    `${VERSION} running: role=${cfg.role} local_id=${cfg.localId} udp=${cfg.listenPorts.join(',')} ` +
      `tun=${tun ? `${tun.name} offload=${tun.offloadText()}` : 'none'} peers=${cfg.peers.length} rules=${rules.length} ` +
      `workers=${workers} (${choice.from}) control=${sockPath}`,
  );

  await waitForSignal();
  control.close();
  if (metrics) await metrics.close();
  await engine.stop();
  tun?.close();
  process.exit(0);
}

/** --workers / LARKTUN_WORKERS / the config key / one per core; a bad value is exit 2. */
function workerChoice(flags: DaemonFlags, config: number | null): WorkerChoice {
  try {
    return chooseWorkers(flags.workers, config);
  } catch (err) {
    throw new Exit((err as Error).message, 2);
  }
}

export async function main(argv: string[]): Promise<void> {
  const program = new Command('larktund')
    .description('Larktun node daemon: TUN + encrypted UDP links (subnetra v1 compatible)')
    .version(VERSION)
    .option('-c, --config <path>', 'standalone mode: subnetra-style JSON config file (without it: managed mode)')
    .option('--check', 'validate the config, print every problem, exit 1 (or "config ok", exit 0)')
    .option('--print-network-plan', 'print the ip commands the daemon would run, then exit')
    .option('--metrics <host:port>', 'every mode: serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9810')
    .option('--state-dir <dir>', 'where `larktun save` writes the table (default $LARKTUN_STATE_DIR or /var/lib/larktun)')
    .option('--no-tun', 'run without a TUN device (pure relay hub; no local delivery)')
    .option('--tun <name>', 'managed mode: TUN device name (default $LARKTUN_TUN or lark0)')
    .option('--port <n>', 'managed mode: UDP port of the link to the relay (default 41641)')
    .option('--workers <n>', 'packet threads, every mode (default $LARKTUN_WORKERS, standalone: the config key workers, else one per core; 1: the main thread only)')
    .option('--relay', 'relay mode: serve the tenants the control server assigns to this relay')
    .option('--server <url>', 'relay mode: control server URL (default $LARKTUN_SERVER)')
    .option('--relay-token <token>', 'relay mode: the relay token (default $LARKTUN_RELAY_TOKEN)')
    .option('--listen <ports>', 'relay mode: UDP port(s), comma-separated (default 41642)')
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
