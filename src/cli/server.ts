// `larktun server`: run the control plane.
import type { Command } from 'commander';
import { startServer, type RunningServer } from '../control/index.js';
import { fail } from './util.js';

export interface ServerCliOptions {
  listen: string;
  data: string;
  db: string;
  tlsCert?: string;
  tlsKey?: string;
  logLevel: string;
  metricsListen?: string;
  publicUrl?: string;
}

export async function runServer(o: ServerCliOptions): Promise<RunningServer> {
  let srv: RunningServer;
  try {
    srv = await startServer({
      listen: o.listen,
      dataDir: o.data,
      db: o.db,
      logLevel: o.logLevel,
      ...(o.tlsCert ? { tlsCert: o.tlsCert } : {}),
      ...(o.tlsKey ? { tlsKey: o.tlsKey } : {}),
      ...(o.metricsListen ? { metricsListen: o.metricsListen } : {}),
      ...(o.publicUrl ? { publicUrl: o.publicUrl } : {}),
    });
  } catch (err) {
    fail(`larktun server: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (srv.operatorKeyCreated) {
    process.stderr.write(`larktun server: operator key written to ${srv.operatorKeyCreated} (mode 0600); use it as the API key for tenant management\n`);
  }
  process.stderr.write(`larktun server: listening on ${srv.url}\n`);
  if (srv.metricsUrl) process.stderr.write(`larktun server: Prometheus metrics without authentication at ${srv.metricsUrl}\n`);
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`larktun server: ${sig}, shutting down\n`);
    const t = setTimeout(() => process.exit(1), 10000);
    t.unref();
    srv.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  return srv;
}

export function registerServer(program: Command): void {
  program
    .command('server')
    .description('run the Larktun control server (Admin API, node coordination, metrics)')
    .option('--listen <host:port>', 'address to listen on', '127.0.0.1:8080')
    .option('--data <dir>', 'data directory (SQLite database, operator key)', './larktun-data')
    .option('--db <sqlite|postgres://…>', 'database: embedded SQLite or a PostgreSQL URL', 'sqlite')
    .option('--tls-cert <file>', 'TLS certificate (PEM)')
    .option('--tls-key <file>', 'TLS private key (PEM)')
    .option('--metrics-listen <host:port>', 'also serve GET /metrics WITHOUT authentication on this address, for a local Prometheus (default $LARKTUN_METRICS_LISTEN; the API listener\'s /metrics needs the operator key)')
    .option('--public-url <url>', 'the URL browsers, identity providers and nodes reach this server at, e.g. https://larktun.example.com (default $LARKTUN_PUBLIC_URL): console SSO redirect URIs and the links larktun up prints for interactive logins derive from it; without it only loopback requests can start SSO and login links use the URL the node used')
    .option('--log-level <level>', 'log level (trace, debug, info, warn, error)', 'info')
    .action(async (o: ServerCliOptions) => {
      await runServer(o);
      // keep running until a signal arrives
      await new Promise<never>(() => undefined);
    });
}
