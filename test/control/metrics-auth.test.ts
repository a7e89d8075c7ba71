// /metrics names every tenant, node and prefix: on the API listener (which
// every node reaches) it needs the operator key; --metrics-listen serves it
// without authentication on an address of the operator's choice.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Client, cleanup, sleep, spawnServer, tempDir, type ServerProc } from './harness.js';
import { assertError } from './api-suite.js';

/** The metrics URL the server printed (the line follows "listening on", maybe in a later chunk). */
async function metricsUrlOf(srv: ServerProc): Promise<string> {
  for (let i = 0; i < 100; i++) {
    const m = /Prometheus metrics without authentication at (\S+)/.exec(srv.stderr());
    if (m) return m[1] as string;
    await sleep(50);
  }
  throw new Error(`no metrics URL printed:\n${srv.stderr()}`);
}

test('/metrics: operator key on the API listener, open on --metrics-listen', async () => {
  const dir = tempDir();
  const srv = await spawnServer({ dataDir: dir, db: 'sqlite', extra: ['--metrics-listen', '127.0.0.1:0'] });
  try {
    const metricsUrl = await metricsUrlOf(srv);
    assert.match(metricsUrl, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const op = new Client(srv.url, srv.operatorKey());
    assert.equal((await op.post('/api/v1/tenants', { name: 'secret-tenant' })).status, 201);
    const tenantKey = (await op.post('/api/v1/tenants/secret-tenant/apikeys', { role: 'admin' })).body.key as string;

    // API listener: no key, a wrong key, a tenant's key → 401 JSON; never the tenant list
    for (const key of [null, 'lkop_000000000000_' + 'A'.repeat(43), tenantKey, 'garbage']) {
      const r = await op.as(key).get('/metrics');
      assertError(r, 401, 'unauthorized');
      assert.ok(!r.text.includes('secret-tenant'));
    }
    const ok = await op.get('/metrics');
    assert.equal(ok.status, 200);
    assert.match(ok.text, /larktun_nodes\{tenant="secret-tenant"\} 0/);

    // the separate listener: no authentication, same registry, nothing else
    const open = await fetch(metricsUrl);
    assert.equal(open.status, 200);
    assert.match(open.headers.get('content-type') ?? '', /text\/plain/);
    assert.match(await open.text(), /larktun_nodes\{tenant="secret-tenant"\} 0/);
    const other = await fetch(metricsUrl.replace(/\/metrics$/, '/api/v1/tenants'));
    assert.equal(other.status, 404);
    assert.equal((await other.json() as { error: { code: string } }).error.code, 'not_found');
  } finally {
    await srv.stop();
    cleanup(dir);
  }
});

test('LARKTUN_METRICS_LISTEN works like the flag; a bad address refuses to start', async () => {
  const dir = tempDir();
  try {
    const srv = await spawnServer({ dataDir: dir, db: 'sqlite', env: { LARKTUN_METRICS_LISTEN: '127.0.0.1:0' } });
    try {
      assert.equal((await fetch(await metricsUrlOf(srv))).status, 200);
    } finally {
      await srv.stop();
    }
    await assert.rejects(spawnServer({ dataDir: dir, db: 'sqlite', extra: ['--metrics-listen', 'nonsense'] }), /--metrics-listen "nonsense" is not host:port/);
    // a metrics port in use: the server does not start (and says why)
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      await assert.rejects(spawnServer({ dataDir: dir, db: 'sqlite', extra: ['--metrics-listen', `127.0.0.1:${port}`] }),
        new RegExp(`--metrics-listen 127\\.0\\.0\\.1:${port}: the port is already in use`));
    } finally {
      busy.close();
    }
  } finally {
    cleanup(dir);
  }
});
