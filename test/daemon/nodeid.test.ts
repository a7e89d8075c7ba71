// The managed daemon's node identity (issue 11), against a real server without
// TUN or root: `up` proves an Ed25519 key kept in state.json (0600), a restart
// keeps the identity, and a state file from before node keys were proven loads,
// keeps streaming with its token, and moves to a proven key on the next login.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync, mkdirSync, chmodSync } from 'node:fs';
import path from 'node:path';
import { ManagedNode } from '../../src/daemon/managed.js';
import { DEFAULT_PREFS } from '../../src/daemon/prefs.js';
import { nodeKeyOf } from '../../src/control/nodekey.js';
import { Client, cleanup, dbExec, registerNode, sleep, spawnServer, tempDir, type Json, type ServerProc } from '../control/harness.js';

let dir = '';
let srv: ServerProc;
let admin: Client;
let aliceKey = '';
let bobKey = '';
const nodes: ManagedNode[] = [];

function managed(stateDir: string, log: string[] = []): ManagedNode {
  const n = new ManagedNode({ stateDir, tunName: 'lark0', port: 0, bindHost4: '127.0.0.1', bindHost6: null, tun: false, os: null, log: (m) => log.push(m), keepaliveSecs: 1 });
  nodes.push(n);
  return n;
}

interface StateFile {
  node_key: string;
  node_private_key?: string;
  token: string | null;
  node: { id: number; name: string; tenant: string } | null;
}
const readState = (stateDir: string): StateFile => JSON.parse(readFileSync(path.join(stateDir, 'state.json'), 'utf8')) as StateFile;

async function serverNode(id: number): Promise<Json> {
  const r = await admin.get(`/api/v1/tenants/acme/nodes/${id}`);
  assert.equal(r.status, 200, r.text);
  return r.body;
}

before(async () => {
  dir = tempDir('larktun-nodeid-');
  srv = await spawnServer({ dataDir: path.join(dir, 'server'), db: 'sqlite' });
  const op = new Client(srv.url, srv.operatorKey());
  assert.equal((await op.post('/api/v1/tenants', { name: 'acme' })).status, 201);
  admin = op.as((await op.post('/api/v1/tenants/acme/apikeys', { role: 'admin' })).body.key);
  for (const u of ['alice', 'bob']) await admin.post('/api/v1/tenants/acme/users', { name: u });
  aliceKey = (await admin.post('/api/v1/tenants/acme/authkeys', { user: 'alice', reusable: true })).body.key;
  bobKey = (await admin.post('/api/v1/tenants/acme/authkeys', { user: 'bob', reusable: true })).body.key;
});

after(async () => {
  for (const n of nodes) await n.shutdown();
  await srv?.stop();
  cleanup(dir);
});

test('up proves a key kept in state.json (0600); after a restart the node rejoins as itself', async () => {
  const stateDir = path.join(dir, 'n1');
  const n = managed(stateDir);
  const r = await n.up({ loginServer: srv.url, hostname: 'n1' }, aliceKey, false);
  const id = (r['node'] as { id: number }).id;
  const st = readState(stateDir);
  assert.ok(st.node_private_key, 'the private key is in the state file');
  assert.equal(nodeKeyOf(st.node_private_key), st.node_key, 'node_key is the public half of the stored private key');
  assert.match(st.node_key, /^nodekey:[0-9a-f]{64}$/);
  assert.equal(statSync(path.join(stateDir, 'state.json')).mode & 0o777, 0o600);
  assert.equal(statSync(stateDir).mode & 0o777, 0o700);
  const sn = await serverNode(id);
  assert.equal(sn.node_key, st.node_key);
  assert.equal(sn.key_proven, true);

  // Restart: the same identity, streaming with its token; a new login keeps the node.
  await n.shutdown();
  const again = managed(stateDir);
  await again.init();
  assert.equal(readState(stateDir).node_key, st.node_key);
  const r2 = await again.up({ loginServer: srv.url, hostname: 'n1' }, aliceKey, false);
  assert.equal((r2['node'] as { id: number }).id, id, 'same node after the restart');
  assert.equal((await serverNode(id)).ipv4, sn.ipv4);
  assert.equal(readState(stateDir).node_key, st.node_key);
  // Another user's key on this machine: refused with the server's reason; the node stays logged in as before.
  const tokenBefore = readState(stateDir).token;
  await assert.rejects(again.up({ loginServer: srv.url, hostname: 'n1' }, bobKey, false), /registered to another user/);
  assert.equal(readState(stateDir).token, tokenBefore);
  assert.equal((await serverNode(id)).user, 'alice');
  // logout forgets the identity: the next login is a new node with a new key.
  await again.logout();
  const fresh = readState(stateDir);
  assert.notEqual(fresh.node_key, st.node_key);
  const r3 = await again.up({ loginServer: srv.url, hostname: 'n1b' }, aliceKey, false);
  assert.notEqual((r3['node'] as { id: number }).id, id);
});

test('a state file from before node keys were proven loads, keeps its token, and the next login proves a new key for the same node', async () => {
  // The server side of an older node: registered, then left as 0007 finds it.
  const legacyKey = `nodekey:${'cd'.repeat(32)}`;
  const reg = await registerNode(admin.as(null), { auth_key: aliceKey, hostname: 'old' });
  assert.equal(reg.status, 201, reg.text);
  const id = reg.body.node.id as number;
  await dbExec('sqlite', path.join(dir, 'server'), 'update nodes set node_key = $1, key_proven_at = null where id = $2', [legacyKey, id]);
  // Its state file, as an older larktund wrote it (no private key).
  const stateDir = path.join(dir, 'old');
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const file = path.join(stateDir, 'state.json');
  writeFileSync(file, JSON.stringify({
    schema: 1, prefs: { ...DEFAULT_PREFS, loginServer: srv.url, hostname: 'old' }, node_key: legacyKey, token: reg.body.token,
    node: { id, name: 'old', tenant: 'acme' }, want_running: true, last_event_id: null,
  }, null, 2));
  chmodSync(file, 0o644);
  const log: string[] = [];
  const n = managed(stateDir, log);
  await n.init();
  const st = readState(stateDir);
  assert.equal(st.node_key, legacyKey, 'the registered key stays until the server knows the new one');
  assert.ok(st.node_private_key, 'a private key was made at start');
  assert.equal(statSync(file).mode & 0o777, 0o600, 'a state file readable by others is made 0600');
  assert.ok(log.some((l) => /readable by others/.test(l)));
  // It streams with its token as before.
  let connected = false;
  for (let i = 0; i < 100 && !connected; i++) {
    connected = (n.status() as { server: { connected: boolean } }).server.connected;
    if (!connected) await sleep(50);
  }
  assert.ok(connected, 'connected with the old token');
  assert.equal((await serverNode(id)).key_proven, false);

  // The next login: same node, proven key, new token.
  const r = await n.up({ loginServer: srv.url, hostname: 'old' }, aliceKey, false);
  assert.equal((r['node'] as { id: number }).id, id);
  const now = readState(stateDir);
  assert.equal(now.node_key, nodeKeyOf(now.node_private_key as string));
  assert.notEqual(now.token, reg.body.token);
  const sn = await serverNode(id);
  assert.equal(sn.key_proven, true);
  assert.equal(sn.node_key, now.node_key);
  assert.equal(sn.ipv4, reg.body.node.ipv4);
});

test('a node from before node keys were proven proves its new key on a plain larktun up (no auth key), keeping its token', async () => {
  const legacyKey = `nodekey:${'ce'.repeat(32)}`;
  const reg = await registerNode(admin.as(null), { auth_key: aliceKey, hostname: 'older' });
  assert.equal(reg.status, 201, reg.text);
  const id = reg.body.node.id as number;
  await dbExec('sqlite', path.join(dir, 'server'), 'update nodes set node_key = $1, key_proven_at = null where id = $2', [legacyKey, id]);
  const stateDir = path.join(dir, 'older');
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  writeFileSync(path.join(stateDir, 'state.json'), JSON.stringify({
    schema: 1, prefs: { ...DEFAULT_PREFS, loginServer: srv.url, hostname: 'older' }, node_key: legacyKey, token: reg.body.token,
    node: { id, name: 'older', tenant: 'acme' }, want_running: true, last_event_id: null,
  }), { mode: 0o600 });
  const n = managed(stateDir);
  await n.init();
  const r = await n.up({}, null, false);
  assert.equal((r['node'] as { id: number }).id, id);
  const st = readState(stateDir);
  assert.equal(st.token, reg.body.token, 'no new login: the same token');
  assert.equal(st.node_key, nodeKeyOf(st.node_private_key as string));
  const sn = await serverNode(id);
  assert.equal(sn.key_proven, true);
  assert.equal(sn.node_key, st.node_key);
  // Nothing more to prove afterwards: another up changes nothing.
  await n.up({}, null, false);
  assert.equal(readState(stateDir).node_key, st.node_key);
});
