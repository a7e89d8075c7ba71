// Prometheus metrics for larktund (`--metrics HOST:PORT`): every counter, peer
// health, and the table size, read from the live engine at scrape time.
import http from 'node:http';
import { Registry, Gauge, Counter } from 'prom-client';
import { COUNTER_HELP, COUNTER_NAMES } from './counters.js';
import type { Engine } from './engine.js';

export interface MetricsContext {
  engine: Engine;
}

export function buildRegistry(ctx: MetricsContext): Registry {
  const reg = new Registry();
  for (const name of COUNTER_NAMES) {
    // Counters are owned by the engine; prom-client reads them on collect.
    const c: Counter = new Counter({
      name: `larktun_${name}_total`,
      help: COUNTER_HELP[name],
      registers: [reg],
      collect() {
        c.reset();
        c.inc(ctx.engine.counters[name]);
      },
    });
  }
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
  return reg;
}

export function startMetricsServer(host: string, port: number, ctx: MetricsContext): Promise<{ close(): Promise<void> }> {
  const reg = buildRegistry(ctx);
  const server = http.createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
      return;
    }
    reg.metrics().then(
      (body) => res.writeHead(200, { 'content-type': reg.contentType }).end(body),
      (err: Error) => res.writeHead(500).end(`${err.message}\n`),
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`cannot serve metrics on ${host}:${port}: ${err.message}`)));
    server.listen(port, host, () =>
      resolve({ close: () => new Promise<void>((r) => server.close(() => r())) }),
    );
  });
}
