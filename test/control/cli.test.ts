// `larktun admin …` against a real server: tables, --json, env configuration,
// errors without stack traces, and audit verify.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Client, ROOT, cleanup, registerNode, spawnServer, tempDir, type ServerProc } from './harness.js';
import { routeRows } from '../../src/cli/admin.js';

describe('larktun admin CLI', () => {
  let dir = '';
  let srv: ServerProc;
  const run = (args: string[], env: Record<string, string> = {}) => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'test/control/server-entry.ts'), 'admin', ...args], {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env, LARKTUN_SERVER: srv.url, ...env },
    });
    return { code: r.status, out: r.stdout, err: r.stderr };
  };

  before(async () => {
    dir = tempDir();
    srv = await spawnServer({ dataDir: dir, db: 'sqlite' });
  });
  after(async () => {
    await srv.stop();
    cleanup(dir);
  });

  it('manages a tenant end to end', async () => {
    const opEnv = { LARKTUN_API_KEY: srv.operatorKey() };
    let r = run(['tenants', 'create', 'acme', '--pool4', '10.20.0.0/16'], opEnv);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /NAME\s+POOL4/);
    assert.match(r.out, /acme\s+10\.20\.0\.0\/16/);
    r = run(['--json', 'tenants', 'list'], opEnv);
    assert.equal(JSON.parse(r.out).tenants[0].name, 'acme');

    r = run(['--tenant', 'acme', '--json', 'apikeys', 'create', '--role', 'admin'], opEnv);
    assert.equal(r.code, 0, r.err);
    const key = JSON.parse(r.out).key as string;
    const env = { LARKTUN_API_KEY: key, LARKTUN_TENANT: 'acme' };

    assert.equal(run(['users', 'create', 'alice', '--email', 'alice@example.com'], env).code, 0);
    const pol = join(dir, 'policy.hujson');
    writeFileSync(pol, `{
      "tagOwners": { "tag:router": ["alice@example.com"] },
      "autoApprovers": { "routes": { "10.99.0.0/16": ["tag:router"] } },
      "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ],
    }`);
    r = run(['acl', 'check', pol], env);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /valid/);
    r = run(['acl', 'set', pol], env);
    assert.match(r.out, /version 2 is live/);
    const bad = join(dir, 'bad.hujson');
    writeFileSync(bad, '{ "acls": [ { "action": "accept", "src": ["nobody@x"], "dst": ["*:*"] } ], "bogus": 1 }');
    r = run(['acl', 'set', bad], env);
    assert.equal(r.code, 1);
    assert.match(r.err, /error \(400 invalid_policy\)/);
    assert.doesNotMatch(r.err, /\bat .+:\d+:\d+\)/);
    assert.match(run(['acl', 'get'], env).out, /tag:router/);

    r = run(['--json', 'authkeys', 'create', '--user', 'alice', '--tags', 'tag:router'], env);
    assert.equal(r.code, 0, r.err);
    const ak = JSON.parse(r.out).key as string;
    const reg = await registerNode(new Client(srv.url, null), { auth_key: ak, hostname: 'gw', routes: ['10.99.1.0/24', '192.168.1.0/24'] });
    const node = (reg.body as { node: { id: number } }).node;
    r = run(['nodes', 'list'], env);
    assert.match(r.out, /gw\s+10\.20\.0\.1/);
    r = run(['nodes', 'list'], env);
    assert.match(r.out, /LAST_SEEN\s+RELAY_RTT_MS/);
    r = run(['routes', 'list'], env);
    assert.match(r.out, /NODE\s+NODE_ID\s+PREFIX\s+STATE\s+PRIMARY\s+HEALTH/);
    assert.match(r.out, new RegExp(`gw\\s+${node.id}\\s+10\\.99\\.1\\.0/24\\s+approved\\s+no\\s+offline`), r.out);
    assert.match(r.out, /gw\s+\d+\s+192\.168\.1\.0\/24\s+announced\s+no\s+offline/, r.out);
    r = run(['--json', 'routes', 'approve', String(node.id), '10.99.1.0/24', '192.168.1.0/24'], env);
    assert.deepEqual(JSON.parse(r.out).approved, ['10.99.1.0/24', '192.168.1.0/24']);
    r = run(['--json', 'routes', 'list'], env);
    assert.deepEqual(JSON.parse(r.out).routes.map((x: { prefix: string; state: string; primary: string; health: string }) => [x.prefix, x.state, x.primary, x.health]),
      [['10.99.1.0/24', 'approved', 'no', 'offline'], ['192.168.1.0/24', 'approved', 'no', 'offline']]);
    r = run(['nodes', 'rename', String(node.id), 'gateway'], env);
    assert.match(r.out, /gateway/);

    r = run(['audit', 'list', '--limit', '1000'], env);
    assert.match(r.out, /node\.rename/);
    r = run(['audit', 'verify'], env);
    assert.equal(r.code, 0, r.err + r.out);
    assert.match(r.out, /intact/);
  });

  it('manages relays', () => {
    const opEnv = { LARKTUN_API_KEY: srv.operatorKey() };
    let r = run(['relays', 'create', 'edge-1', '203.0.113.5:18020', '--for-tenant', 'acme'], opEnv);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^lkrelay_\S+\n\(relay token, shown once/);
    r = run(['relays', 'list'], opEnv);
    assert.match(r.out, /ID\s+NAME\s+ENDPOINTS\s+TENANT\s+RELAY_LINK_ID\s+LIVE\s+LAST_REPORT/);
    assert.match(r.out, /edge-1\s+203\.0\.113\.5:18020\s+acme\s+\d+\s+no\s+-/, 'never reported: not live, no report time');
    const id = JSON.parse(run(['--json', 'relays', 'list'], opEnv).out).relays[0].id as number;
    r = run(['--tenant', 'acme', '--json', 'nodes', 'list'], opEnv);
    const nodeId = JSON.parse(r.out).nodes[0].id as number;
    r = run(['--tenant', 'acme', 'nodes', 'links', String(nodeId)], opEnv);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /edge-1\s+1\s+65535/);
    r = run(['relays', 'rotate', String(id)], opEnv);
    assert.match(r.out, /rotated 1 link key/);
    r = run(['--tenant', 'acme', 'nodes', 'rotate-links', String(nodeId)], opEnv);
    assert.match(r.out, /rotated 1 link key/);
    r = run(['relays', 'create', 'bad', 'not-an-endpoint'], opEnv);
    assert.equal(r.code, 1);
    assert.match(r.err, /400 invalid_request\): endpoint "not-an-endpoint" is not host:port/);
    r = run(['relays', 'delete', String(id)], opEnv);
    assert.match(r.out, /deleted relay/);
    assert.match(run(['relays', 'get', String(id)], opEnv).err, /404 not_found/);
  });

  it('routes list rows: state, primary (exit routes have none), health', () => {
    const rows = routeRows([
      { id: 1, name: 'gw', online: true, announced_routes: ['0.0.0.0/0', '10.1.0.0/16', '10.2.0.0/16', '::/0'], approved_routes: ['0.0.0.0/0', '10.1.0.0/16', '::/0'], primary_routes: ['10.1.0.0/16'] },
      { id: 2, name: 'gw2', online: false, announced_routes: ['10.1.0.0/16'], approved_routes: ['10.1.0.0/16'], primary_routes: [] },
    ]);
    assert.deepEqual(rows.map((r) => [r['node'], r['prefix'], r['state'], r['primary'], r['health']]), [
      ['gw', '0.0.0.0/0', 'approved', '-', 'online'],
      ['gw', '10.1.0.0/16', 'approved', 'yes', 'online'],
      ['gw', '10.2.0.0/16', 'announced', 'no', 'online'],
      ['gw', '::/0', 'approved', '-', 'online'],
      ['gw2', '10.1.0.0/16', 'approved', 'no', 'offline'],
    ]);
  });

  it('reports errors plainly', () => {
    let r = run(['--tenant', 'acme', 'users', 'list'], { LARKTUN_API_KEY: 'wrong' });
    assert.equal(r.code, 1);
    assert.match(r.err, /401 unauthorized/);
    r = run(['users', 'list'], { LARKTUN_API_KEY: srv.operatorKey(), LARKTUN_TENANT: '' });
    assert.match(r.err, /which tenant/);
    r = run(['tenants', 'list'], { LARKTUN_API_KEY: 'x', LARKTUN_SERVER: 'http://127.0.0.1:1' });
    assert.equal(r.code, 1);
    assert.match(r.err, /cannot reach the server/);
  });
});
