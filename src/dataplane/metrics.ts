// Prometheus metrics for larktund (`--metrics HOST:PORT`). This module holds the
// part every mode shares: the HTTP server (GET /metrics), the helpers that turn
// plain numeric counters into Prometheus counters read at scrape time, and the
// standalone mode's registry (every engine counter, peer health, the table
// size). The managed and relay registries live in src/daemon/metrics.ts.
import http from 'node:http';
import { Registry, Gauge, Counter } from 'prom-client';
import { COUNTER_HELP, COUNTER_NAMES } from './counters.js';
import type { NodeEngine } from './engine.js';

export interface MetricsContext {
  engine: NodeEngine;
}

/**
 * Registers `<prefix><name>_total` for every name, read with `read(name)` at
 * scrape time (the counts are owned by the data plane; prom-client only
 * reports them).
 */
export function registerCounters<N extends string>(
  reg: Registry,
  names: readonly N[],
  help: Readonly<Record<N, string>>,
  read: (name: N) => number,
  prefix = 'larktun_',
): void {
  for (const name of names) {
    const c: Counter = new Counter({
      name: `${prefix}${name}_total`,
      help: help[name],
      registers: [reg],
      collect() {
        c.reset();
        c.inc(read(name));
      },
    });
  }
}

/**
 * Registers `<prefix><name>_total{labels…}` for every name: one series per
 * entry that `entries()` returns at scrape time, valued `read(entry, name)`.
 */
export function registerLabelledCounters<N extends string, E, L extends string>(
  reg: Registry,
  names: readonly N[],
  help: Readonly<Record<N, string>>,
  labelNames: readonly L[],
  entries: () => Iterable<E>,
  labels: (entry: E) => Record<L, string>,
  read: (entry: E, name: N) => number,
  prefix: string,
): void {
  for (const name of names) {
    const c: Counter<L> = new Counter({
      name: `${prefix}${name}_total`,
      help: help[name],
      labelNames,
      registers: [reg],
      collect() {
        c.reset();
        for (const e of entries()) c.inc(labels(e), read(e, name));
      },
    });
  }
}

/** Standalone mode: every engine counter, peer health, and the table size. */
export function buildStandaloneRegistry(ctx: MetricsContext): Registry {
  const reg = new Registry();
  registerCounters(reg, COUNTER_NAMES, COUNTER_HELP, (name) => ctx.engine.counters[name]);
  const online = new Gauge({
    name: 'larktun_peer_online',
    help: '1 when the peer was heard within 90 s',
    labelNames: ['id', 'name'],
    registers: [reg],
    collect() {
      online.reset();
      const now = Date.now();
      for (const p of ctx.engine.peers) online.set({ id: String(p.id), name: p.name }, p.online(now) ? 1 : 0);
    },
  });
  const age = new Gauge({
    name: 'larktun_peer_last_seen_age_seconds',
    help: 'seconds since the peer was last authenticated (absent when never)',
    labelNames: ['id', 'name'],
    registers: [reg],
    collect() {
      age.reset();
      const now = Date.now();
      for (const p of ctx.engine.peers) {
        if (p.lastSeenMs > 0) age.set({ id: String(p.id), name: p.name }, (now - p.lastSeenMs) / 1000);
      }
    },
  });
  const rules = new Gauge({
    name: 'larktun_forwarding_rules',
    help: 'rules in the live forwarding table',
    registers: [reg],
    collect() {
      rules.set(ctx.engine.rules.length);
    },
  });
  registerWorkersGauge(reg, () => ctx.engine.workers);
  return reg;
}

/** `larktun_packet_workers`: how many threads run the packet engine (the counters are their sum). */
export function registerWorkersGauge(reg: Registry, read: () => number | null): void {
  const g = new Gauge({
    name: 'larktun_packet_workers',
    help: 'threads running the packet engine (1: the main thread); the packet counters are summed over them',
    registers: [reg],
    collect() {
      g.reset();
      const n = read();
      if (n !== null) g.set(n);
    },
  });
}

/** The server could not listen (port in use, no such address, …): the message says which and why. */
export class MetricsListenError extends Error {
  override name = 'MetricsListenError';
}

export interface MetricsServer {
  /** The address actually bound (the port is the real one when 0 was asked for). */
  readonly host: string;
  readonly port: number;
  close(): Promise<void>;
}

function listenProblem(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'EADDRINUSE':
      return 'the port is already in use (another process listens there; choose another port)';
    case 'EADDRNOTAVAIL':
      return 'this machine has no such address';
    case 'EACCES':
      return 'permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'cannot resolve the host name';
    default:
      return err.message;
  }
}

/**
 * Serves `registry` at http://HOST:PORT/metrics (everything else is 404).
 * Rejects with MetricsListenError when it cannot listen.
 */
export function startMetricsServer(host: string, port: number, registry: Registry): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    const url = req.url?.split('?')[0];
    if (url !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
      return;
    }
    registry.metrics().then(
      (body) => res.writeHead(200, { 'content-type': registry.contentType }).end(body),
      (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`),
    );
  });
  const where = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(new MetricsListenError(`cannot serve metrics on ${where}: ${listenProblem(err)}`)));
    server.listen(port, host, () => {
      const a = server.address();
      resolve({
        host,
        port: typeof a === 'object' && a !== null ? a.port : port,
        close: () =>
          new Promise<void>((r) => {
            server.close(() => r());
            server.closeAllConnections();
          }),
      });
    });
  });
}
