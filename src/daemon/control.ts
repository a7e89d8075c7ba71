// The daemon's control socket: a Unix stream socket (mode 0600) that takes one
// command line and answers with text, then closes. Replies that start with
// "error: " mean nothing was changed.
import net from 'node:net';
import { chmodSync, mkdirSync, unlinkSync, existsSync, readFileSync } from 'node:fs';
import { open, rename, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { formatPrefix, prefixEqual } from '../net/addr.js';
import { formatRule, type FwdRule } from '../net/lpm.js';
import type { NodeEngine, WorkerStatus } from '../dataplane/engine.js';
import type { TunOffloadStatus } from '../dataplane/tun.js';
import { COUNTER_NAMES } from '../dataplane/counters.js';
import { ioSummary, type UdpIoStatus } from '../dataplane/io/types.js';
import { CommandError, parseCommand } from './commands.js';

export const VERSION = '0.1.0';

export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.LARKTUN_SOCK || env.SUBNETRA_SOCK || '/run/larktun/larktun.sock';
}

export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.LARKTUN_STATE_DIR || '/var/lib/larktun';
}

export const POLICY_FILE = 'policy.lines';

export interface ControlContext {
  engine: NodeEngine;
  role: string;
  tunName: string | null;
  stateDir: string;
  /** The TUN's offloads (absent without a TUN). */
  tunOffload?: () => TunOffloadStatus;
}

export interface PeerStatus {
  id: number;
  name: string;
  endpoint: string | null;
  allowed_src: string[];
  last_seen_age_seconds: number | null;
  online: boolean;
  rx_packets: number;
  tx_packets: number;
}

export interface StatusJson {
  schema_version: 1;
  version: string;
  mode: 'standalone';
  role: string;
  local_id: number;
  listen_ports: number[];
  tun: string | null;
  tun_offload: TunOffloadStatus | null;
  obfuscate: boolean;
  uptime_seconds: number;
  rules: number;
  peers: PeerStatus[];
  counters: Record<string, number>;
  /** The UDP I/O path (batched or dgram) and its offloads (with several workers: worker 0's path, counts summed). */
  udp_io: UdpIoStatus;
  /** Packet threads (1: the engine runs on the main thread). */
  workers: number;
  /** Each packet thread's UDP path, TUN queue offloads and counters (`counters` above is their sum). */
  per_worker: WorkerStatus[];
}

export function statusJson(ctx: ControlContext): StatusJson {
  const e = ctx.engine;
  const now = Date.now();
  return {
    schema_version: 1,
    version: VERSION,
    mode: 'standalone',
    role: ctx.role,
    local_id: e.localId,
    listen_ports: e.listenPorts(),
    tun: ctx.tunName,
    tun_offload: ctx.tunOffload ? ctx.tunOffload() : null,
    obfuscate: e.obfuscate,
    uptime_seconds: Math.floor((now - e.startedAt) / 1000),
    rules: e.rules.length,
    peers: e.peers.map((p) => ({
      id: p.id,
      name: p.name,
      endpoint: p.endpointText(),
      allowed_src: p.allowedSrc.prefixes.map(formatPrefix),
      last_seen_age_seconds: p.lastSeenMs > 0 ? Math.floor((now - p.lastSeenMs) / 1000) : null,
      online: p.online(now),
      rx_packets: p.rxPackets,
      tx_packets: p.txPackets,
    })),
    counters: e.counters.toJSON(),
    udp_io: e.ioStatus(),
    workers: e.workers,
    per_worker: e.workerStatus(),
  };
}

export function statusText(s: StatusJson): string {
  const lines = [
    `larktund ${s.version} [running] mode=${s.mode} role=${s.role} local_id=${s.local_id}`,
    `udp_ports=${s.listen_ports.join(',')} tun=${s.tun ?? '-'} obfuscate=${s.obfuscate} rules=${s.rules} uptime=${s.uptime_seconds}s`,
    `udp_io=${ioSummary(s.udp_io)}`,
    ...(s.tun_offload ? [`tun_offload: ${offloadLine(s.tun_offload)}`] : []),
    ...workerLines(s),
    `peers (${s.peers.length}):`,
  ];
  for (const p of s.peers) {
    const seen = p.last_seen_age_seconds === null ? 'never' : `${p.last_seen_age_seconds}s ago`;
    lines.push(
      `  id=${p.id} name=${p.name || '-'} endpoint=${p.endpoint ?? '-'} allowed_src=${p.allowed_src.join(',')} ` +
        `${p.online ? 'online' : 'offline'} last_seen=${seen} rx=${p.rx_packets} tx=${p.tx_packets}`,
    );
  }
  const c = s.counters;
  const traffic = COUNTER_NAMES.filter((k) => !k.startsWith('drop_'));
  const drops = COUNTER_NAMES.filter((k) => k.startsWith('drop_'));
  lines.push(`traffic: ${traffic.map((k) => `${k}=${c[k]}`).join(' ')}`);
  lines.push(`drops:   ${drops.map((k) => `${k.slice(5)}=${c[k]}`).join(' ')}`);
  return `${lines.join('\n')}\n`;
}

/** With several packet workers: one line each (path, TUN queue, what it carried). */
function workerLines(s: StatusJson): string[] {
  if (s.workers <= 1) return [];
  return [
    `workers=${s.workers}:`,
    ...s.per_worker.map((w) => {
      const c = w.counters;
      const tun = w.tun_offload ? ` tun_queue=${offloadLine(w.tun_offload)}` : '';
      return `  worker ${w.index}: udp_io=${ioSummary(w.udp_io)}${tun} udp_rx=${c.udp_rx_packets} udp_tx=${c.udp_tx_packets} tun_rx=${c.tun_rx_packets} tun_tx=${c.tun_tx_packets}`;
    }),
  ];
}

function offloadLine(o: TunOffloadStatus): string {
  const on = o.vnet_hdr ? [...o.offloads, ...(o.gro ? ['gro'] : [])] : [];
  const what = !o.vnet_hdr ? 'off' : on.length ? on.join(',') : 'vnet_hdr only';
  return `${what}${o.note ? ` (${o.note})` : ''} gso_reads=${o.gso_reads}/${o.gso_segments} gro_writes=${o.gro_writes}/${o.gro_segments}${o.uso ? ` uso_writes=${o.uso_writes}/${o.uso_segments}` : ''} reads=${o.reads}/${o.read_batches}${o.read_drops ? ` read_drops=${o.read_drops}` : ''}`;
}

export function policyText(rules: readonly FwdRule[]): string {
  return rules.length === 0 ? '# no policy rules\n' : `${rules.map(formatRule).join('\n')}\n`;
}

/** Writes the live table atomically (temp file, fsync, rename), mode 0600. */
export async function savePolicy(stateDir: string, rules: readonly FwdRule[]): Promise<string> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const file = path.join(stateDir, POLICY_FILE);
  const tmp = `${file}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(`# larktund forwarding table, saved ${new Date().toISOString()}\n${policyText(rules)}`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
  return file;
}

/** Reads a saved table; every line must parse as `policy add`. */
export function loadSavedPolicy(stateDir: string): { file: string; rules: FwdRule[] } | null {
  const file = path.join(stateDir, POLICY_FILE);
  if (!existsSync(file)) return null;
  const rules: FwdRule[] = [];
  readFileSync(file, 'utf8')
    .split('\n')
    .forEach((raw, i) => {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) return;
      try {
        const cmd = parseCommand(line);
        if (cmd.kind !== 'policy-add') throw new CommandError('only "policy add" lines belong in a saved table');
        rules.push(cmd.rule);
      } catch (err) {
        throw new Error(`${file}:${i + 1}: ${(err as Error).message}`);
      }
    });
  return { file, rules };
}

/** Executes one command line against the engine; returns the reply text. */
export async function handleLine(line: string, ctx: ControlContext): Promise<string> {
  let cmd;
  try {
    cmd = parseCommand(line);
  } catch (err) {
    return `error: ${(err as Error).message}\n`;
  }
  const e = ctx.engine;
  switch (cmd.kind) {
    case 'status':
      await e.refresh();
      return cmd.json ? `${JSON.stringify(statusJson(ctx))}\n` : statusText(statusJson(ctx));
    case 'policy-show':
      return policyText(e.rules);
    case 'policy-add': {
      const r = cmd.rule;
      if (r.action === 'forward' && r.target !== 0 && !e.hasPeer(r.target)) {
        const ids = e.peers.map((p) => p.id).join(', ') || 'none';
        return `error: --target ${r.target} is not a configured peer (peers: ${ids}; 0 = local TUN)\n`;
      }
      e.setRules([...e.rules, r]);
      return `ok: ${formatRule(r)}\n`;
    }
    case 'policy-del': {
      const keep = e.rules.filter((r) => !prefixEqual(r.dst, cmd.dst));
      const removed = e.rules.length - keep.length;
      if (removed === 0) return `error: no rule has --dst ${formatPrefix(cmd.dst)}\n`;
      e.setRules(keep);
      return `ok: removed ${removed} rule(s) for ${formatPrefix(cmd.dst)}\n`;
    }
    case 'save': {
      try {
        const file = await savePolicy(ctx.stateDir, e.rules);
        return `saved ${e.rules.length} rule(s) to ${file}\n`;
      } catch (err) {
        return `error: save failed: ${(err as Error).message}\n`;
      }
    }
  }
}

/** Another daemon answers on the control socket: this one must not start. */
export class ControlSocketInUseError extends Error {
  constructor(readonly sockPath: string, why: string) {
    super(`control socket ${sockPath} ${why}: another larktund is running (stop it first, or set LARKTUN_SOCK to another path)`);
  }
}

/**
 * What is at `sockPath`: nothing, a stale socket (nobody accepts: ECONNREFUSED,
 * or a file that is not a socket at all), or a live daemon (it accepted, or
 * the connection neither succeeds nor fails within `timeoutMs`).
 */
export function probeControlSocket(sockPath: string, timeoutMs = 1000): Promise<'absent' | 'stale' | 'live'> {
  return new Promise((resolve, reject) => {
    const c = net.createConnection(sockPath);
    const done = (v: 'absent' | 'stale' | 'live' | Error) => {
      clearTimeout(timer);
      c.destroy();
      if (v instanceof Error) reject(v);
      else resolve(v);
    };
    const timer = setTimeout(() => done('live'), timeoutMs);
    c.on('connect', () => done('live'));
    c.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') done('absent');
      else if (err.code === 'ECONNREFUSED' || err.code === 'ENOTSOCK') done('stale');
      else done(new Error(`cannot check control socket ${sockPath}: ${err.message}`));
    });
  });
}

/**
 * Listens on the daemon's control socket (mode 0600): each connection sends
 * one line (at most `maxLine` bytes) and gets `handle(line)` back before the
 * connection closes. Every mode serves its grammar through this. A socket
 * file left by a crashed daemon (nobody accepts on it) is replaced; one a
 * live daemon still answers on is left alone and this start fails with
 * `ControlSocketInUseError`.
 */
export async function listenControlSocket(sockPath: string, maxLine: number, handle: (line: string) => Promise<string> | string): Promise<net.Server> {
  mkdirSync(path.dirname(sockPath), { recursive: true, mode: 0o700 });
  if (existsSync(sockPath)) {
    const state = await probeControlSocket(sockPath);
    if (state === 'live') throw new ControlSocketInUseError(sockPath, 'is in use');
    if (state === 'stale') unlinkSync(sockPath);
  }
  const server = net.createServer((conn) => {
    let buf = '';
    conn.setEncoding('utf8');
    conn.on('error', () => {});
    conn.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > maxLine) {
        conn.end(`error: command longer than ${maxLine} bytes\n`);
        return;
      }
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const line = buf.slice(0, nl);
      buf = '';
      void Promise.resolve(handle(line)).then((reply) => conn.end(reply));
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new Error(`cannot listen on control socket ${sockPath}: ${err.message}`)),
    );
    const old = process.umask(0o177);
    server.listen(sockPath, () => {
      process.umask(old);
      chmodSync(sockPath, 0o600);
      resolve(server);
    });
  });
}

export function startControlServer(sockPath: string, ctx: ControlContext): Promise<net.Server> {
  return listenControlSocket(sockPath, 4096, (line) => handleLine(line, ctx));
}

/** Client side: sends one command line, returns the reply. */
export function controlRequest(sockPath: string, line: string, timeoutMs = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.createConnection(sockPath);
    let out = '';
    const timer = setTimeout(() => {
      c.destroy();
      reject(new Error(`no reply from larktund on ${sockPath} within ${timeoutMs} ms`));
    }, timeoutMs);
    c.setEncoding('utf8');
    c.on('connect', () => c.write(`${line}\n`));
    c.on('data', (d: string) => (out += d));
    c.on('end', () => {
      clearTimeout(timer);
      resolve(out);
    });
    c.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const why =
        err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
          ? `larktund is not running (no control socket at ${sockPath}; set LARKTUN_SOCK if it listens elsewhere)`
          : err.code === 'EACCES'
            ? `permission denied on ${sockPath}: run as the daemon's user (usually root)`
            : `cannot reach larktund on ${sockPath}: ${err.message}`;
      reject(new Error(why));
    });
  });
}
