// A separate plain-HTTP listener for Prometheus (`--metrics-listen`): serves
// GET /metrics without authentication, so bind it to an address only the
// scraper reaches (e.g. 127.0.0.1). The main listener's /metrics needs the
// operator key instead.
import http from 'node:http';
import type { Registry } from 'prom-client';

export interface MetricsListener {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** `host`/`port` as parsed from --metrics-listen (port 0 picks a free port). */
export async function startMetricsListener(host: string, port: number, registry: Registry, onError: (err: Error) => void): Promise<MetricsListener> {
  const addr = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify({ error: { code: 'not_found', message: 'this listener serves only GET /metrics', details: null } }));
      return;
    }
    registry.metrics().then(
      (text) => {
        res.writeHead(200, { 'content-type': registry.contentType });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (err: unknown) => {
        onError(err instanceof Error ? err : new Error(String(err)));
        res.writeHead(500, { 'content-type': 'application/json; charset=utf-8' });
        res.end(JSON.stringify({ error: { code: 'internal', message: 'collecting metrics failed', details: null } }));
      },
    );
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new Error(`--metrics-listen ${addr}: ${err.code === 'EADDRINUSE' ? 'the port is already in use' : err.message}`)));
    server.listen(port, host, () => resolve());
  });
  const a = server.address();
  const bound = typeof a === 'object' && a ? a.port : port;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${bound}/metrics`,
    port: bound,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
