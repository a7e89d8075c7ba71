// Operations: primary-route failover when a router goes offline, TLS, and the
// Prometheus metrics the issue asks for.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { get as httpsGet } from 'node:https';
import { join } from 'node:path';
import { Client, SseReader, cleanup, registerNode, spawnServer, tempDir, type Json, type ServerProc } from './harness.js';

describe('server operations (SQLite)', () => {
  let dir = '';
  let srv: ServerProc;
  let admin: Client;

  before(async () => {
    dir = tempDir();
    srv = await spawnServer({ dataDir: dir, db: 'sqlite' });
    const op = new Client(srv.url, srv.operatorKey());
    await op.post('/api/v1/tenants', { name: 'acme' });
    admin = op.as((await op.post('/api/v1/tenants/acme/apikeys', { role: 'admin' })).body.key);
  });
  after(async () => {
    await srv.stop();
    cleanup(dir);
  });

  it('a primary route fails over to the standby within 5 s of its router going offline', async () => {
    await admin.post('/api/v1/tenants/acme/users', { name: 'alice', email: 'alice@example.com' });
    const put = await admin.put('/api/v1/tenants/acme/policy', {
      policy: `{
        "tagOwners": { "tag:router": ["alice@example.com"] },
        "autoApprovers": { "routes": { "10.77.0.0/16": ["tag:router"] } },
        "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ],
      }`,
    });
    assert.equal(put.status, 200, put.text);
    const rk = (await admin.post('/api/v1/tenants/acme/authkeys', { tags: ['tag:router'], reusable: true })).body.key;
    const ck = (await admin.post('/api/v1/tenants/acme/authkeys', { user: 'alice', reusable: true })).body.key;
    const node = admin.as(null);
    const r1 = (await registerNode(node, { auth_key: rk, hostname: 'r1', routes: ['10.77.0.0/16'] })).body;
    const r2 = (await registerNode(node, { auth_key: rk, hostname: 'r2', routes: ['10.77.0.0/16'] })).body;
    const c = (await registerNode(node, { auth_key: ck, hostname: 'client' })).body;
    assert.deepEqual(r1.node.approved_routes, ['10.77.0.0/16']);
    const s1 = await SseReader.open(`${srv.url}/node/v1/stream`, r1.token);
    await s1.next();
    const s2 = await SseReader.open(`${srv.url}/node/v1/stream`, r2.token);
    await s2.next();
    const sc = await SseReader.open(`${srv.url}/node/v1/stream`, c.token);
    const via = (m: Json, id: number) => m.peers.find((p: Json) => p.id === id)?.allowed_ips.includes('10.77.0.0/16');
    await sc.waitMap((m) => via(m, r1.node.id) && !via(m, r2.node.id));

    const t0 = performance.now();
    s1.close();
    await sc.waitMap((m) => via(m, r2.node.id) && !via(m, r1.node.id), 5000);
    const ms = performance.now() - t0;
    assert.ok(ms < 5000, `failover took ${ms} ms`);
    process.stdout.write(`# route failover after router stream loss: ${ms.toFixed(0)} ms\n`);
    const routes = (await admin.get(`/api/v1/tenants/acme/nodes/${r2.node.id}/routes`)).body;
    assert.deepEqual(routes.primary, ['10.77.0.0/16']);
    s2.close();
    sc.close();
  });

  it('exports nodes online per tenant, map pushes, compile time and API latency', async () => {
    const ck = (await admin.post('/api/v1/tenants/acme/authkeys', { user: 'alice' })).body.key;
    const n = (await registerNode(admin.as(null), { auth_key: ck, hostname: 'm' })).body;
    const s = await SseReader.open(`${srv.url}/node/v1/stream`, n.token);
    await s.next();
    const m = (await admin.as(srv.operatorKey()).get('/metrics')).text;
    assert.match(m, /larktun_nodes_online\{tenant="acme"\} 1/);
    assert.match(m, /larktun_nodes\{tenant="acme"\} \d+/);
    assert.match(m, /larktun_map_pushes_total\{tenant="acme"\} [1-9]/);
    assert.match(m, /larktun_policy_compile_seconds_count\{tenant="acme"\} [1-9]/);
    assert.match(m, /larktun_api_request_duration_seconds_count\{method="POST",route="\/node\/v1\/register",status="201"\} [1-9]/);
    assert.match(m, /larktun_map_streams 1/);
    s.close();
  });
});

describe('TLS', () => {
  it('serves HTTPS with --tls-cert/--tls-key', async (ctx) => {
    const dir = tempDir();
    try {
      const cert = join(dir, 'cert.pem');
      const key = join(dir, 'key.pem');
      const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { encoding: 'utf8' });
      if (r.status !== 0) return ctx.skip(`openssl unavailable: ${r.error?.message ?? r.stderr.split('\n')[0]}`);
      const srv = await spawnServer({ dataDir: join(dir, 'data'), db: 'sqlite', extra: ['--tls-cert', cert, '--tls-key', key] });
      try {
        assert.match(srv.url, /^https:\/\//);
        const body = await new Promise<string>((resolve, reject) => {
          httpsGet(`${srv.url}/healthz`, { ca: readFileSync(cert) }, (res) => {
            let b = '';
            res.on('data', (d: Buffer) => (b += d.toString()));
            res.on('end', () => resolve(b));
          }).on('error', reject);
        });
        assert.deepEqual(JSON.parse(body), { status: 'ok' });
      } finally {
        await srv.stop();
      }
    } finally {
      cleanup(dir);
    }
  });

  it('refuses to start with only one of the TLS files, saying why', async () => {
    const dir = tempDir();
    try {
      await assert.rejects(spawnServer({ dataDir: dir, db: 'sqlite', extra: ['--tls-cert', '/nonexistent.pem'] }), /needs both --tls-cert and --tls-key/);
      await assert.rejects(spawnServer({ dataDir: dir, db: 'postgres://nobody@127.0.0.1:1/x' }), /larktun server: .*(ECONNREFUSED|connect)/);
      await assert.rejects(spawnServer({ dataDir: dir, db: 'mysql://x' }), /is not understood/);
    } finally {
      cleanup(dir);
    }
  });
});
