// Node identity end to end (issue 11), in network namespaces: a real
// `larktun up` joins (proving its node key), traffic flows through the relay,
// and after a daemon restart the node comes back by itself and rejoins with
// `larktun up --authkey` as the same node; a node left as an older larktund
// left it (no private key, key never proven) runs on with its token and a plain
// `larktun up` proves its key. Everything runs inside namespaces made here:
// "hub" (control server and relay on 10.231.255.1), "n1" and "n2".
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Lab, BIN_LARKTUN, BIN_LARKTUND, netnsSkipReason, nsExec, ping, sh, sleep } from './netns.js';
import { dbExec } from '../control/harness.js';

const skip = netnsSkipReason(['curl', 'ping']);
const lab = new Lab();
const SERVICE = '10.231.255.1';
const SERVER_URL = `http://${SERVICE}:8080`;
let hub = '';
const ns: Record<string, string> = {};
const procs = new Map<string, { child: ChildProcess; log: string }>();
let adminKey = '';
let authKey = '';

function start(key: string, nsName: string, argv: string[], env: Record<string, string> = {}): { child: ChildProcess; log: string } {
  const child = spawn('ip', ['netns', 'exec', nsName, process.execPath, ...argv], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const p = { child, log: '' };
  child.stdout!.on('data', (d: Buffer) => (p.log += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (p.log += d.toString()));
  lab.procs.push(child);
  procs.set(key, p);
  return p;
}

async function stop(key: string): Promise<void> {
  const p = procs.get(key);
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  const exited = new Promise<void>((r) => p.child.once('exit', () => r()));
  p.child.kill('SIGTERM');
  await exited;
}

async function waitFor(cond: () => boolean | Promise<boolean>, ms: number, step = 100): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await cond()) return true;
    await sleep(step);
  }
  return cond();
}

/** The Admin API, called from inside the hub namespace. */
function api(method: string, urlPath: string, body?: unknown, key = adminKey): { status: number; body: any } {
  const data = body === undefined ? '' : `-H 'content-type: application/json' --data '${JSON.stringify(body)}'`;
  const r = nsExec(hub, `curl -s -w '\\n%{http_code}' -X ${method} -H 'authorization: Bearer ${key}' ${data} http://127.0.0.1:8080${urlPath}`);
  const i = r.out.lastIndexOf('\n');
  return { status: Number(r.out.slice(i + 1)), body: JSON.parse(r.out.slice(0, i) || 'null') };
}

function must(method: string, urlPath: string, body?: unknown, key = adminKey): any {
  const r = api(method, urlPath, body, key);
  assert.ok(r.status < 300, `${method} ${urlPath}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

const sock = (name: string): string => path.join(lab.dir, `${name}.sock`);
const stateDir = (name: string): string => path.join(lab.dir, `${name}-state`);
const cli = (name: string, args: string, allowFail = false) => sh(`LARKTUN_SOCK=${sock(name)} ${process.execPath} ${BIN_LARKTUN} ${args}`, { allowFail, timeoutMs: 60_000 });
const status = (name: string): any => JSON.parse(cli(name, 'status --json').out);
const up = (name: string, extra = '') => cli(name, `up --login-server ${SERVER_URL} --hostname ${name} ${extra}`);

async function startNode(name: string): Promise<void> {
  const p = start(`node:${name}`, ns[name]!, [BIN_LARKTUND, '--state-dir', stateDir(name), '--tun', 'lark0'], { LARKTUN_SOCK: sock(name) });
  const ok = await waitFor(() => (existsSync(sock(name)) && cli(name, 'status --json', true).status === 0) || p.child.exitCode !== null, 15_000);
  assert.ok(ok && p.child.exitCode === null, `larktund ${name} did not start:\n${p.log}`);
}

const running = (name: string) => waitFor(() => {
  try {
    return status(name).state === 'Running';
  } catch {
    return false;
  }
}, 20_000, 200);

before(async () => {
  if (skip) return;
  hub = lab.addNs('hub');
  nsExec(hub, `ip addr add ${SERVICE}/32 dev lo && sysctl -qw net.ipv4.ip_forward=1`);
  for (const [i, name] of ['n1', 'n2'].entries()) {
    ns[name] = lab.addNs(name);
    lab.link(hub, `h${i + 1}`, `10.231.${i + 1}.1/24`, ns[name]!, 'eth0', `10.231.${i + 1}.2/24`);
    nsExec(ns[name]!, `ip route add default via 10.231.${i + 1}.1`);
  }
  const data = path.join(lab.dir, 'server-data');
  const server = start('server', hub, [BIN_LARKTUN, 'server', '--listen', '0.0.0.0:8080', '--data', data]);
  const ready = await waitFor(() => nsExec(hub, 'curl -sf http://127.0.0.1:8080/readyz', { allowFail: true }).status === 0 || server.child.exitCode !== null, 20_000);
  assert.ok(ready && server.child.exitCode === null, `server did not start:\n${server.log}`);
  const op = readFileSync(path.join(data, 'operator.key'), 'utf8').trim();
  must('POST', '/api/v1/tenants', { name: 'acme' }, op);
  adminKey = must('POST', '/api/v1/tenants/acme/apikeys', { role: 'admin' }, op).key;
  must('POST', '/api/v1/tenants/acme/users', { name: 'alice' });
  authKey = must('POST', '/api/v1/tenants/acme/authkeys', { user: 'alice', reusable: true }).key;
  const relay = must('POST', '/api/v1/relays', { name: 'relay-1', endpoints: [`${SERVICE}:41642`] }, op);
  const rp = start('relay', hub, [BIN_LARKTUND, '--relay', '--server', 'http://127.0.0.1:8080', '--relay-token', relay.token, '--listen', '41642', '--state-dir', path.join(lab.dir, 'relay-state')], { LARKTUN_SOCK: path.join(lab.dir, 'relay.sock') });
  assert.ok(await waitFor(() => rp.log.includes('running as a relay') || rp.child.exitCode !== null, 15_000) && rp.child.exitCode === null, `relay did not start:\n${rp.log}`);
  await startNode('n1');
  await startNode('n2');
});

after(() => {
  if (!skip) lab.cleanup();
});

test('larktun up joins with a proven key; after a daemon restart the node is back and rejoins as itself', { skip: skip ?? false }, async () => {
  const r1 = up('n1', `--authkey ${authKey}`);
  assert.match(r1.out, /n1 \(tenant acme\): Running, 100\.64\.\d+\.\d+/);
  up('n2', `--authkey ${authKey}`);
  const n1 = status('n1');
  const n2addr = status('n2').self.addresses[0].split('/')[0] as string;
  assert.ok(await waitFor(() => ping(ns['n1']!, n2addr, 1) === 1, 10_000, 200), 'n1 reaches n2 through the relay');

  // The identity: a private key in state.json (0600), its public half proven at the server.
  const file = path.join(stateDir('n1'), 'state.json');
  const st = JSON.parse(readFileSync(file, 'utf8'));
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.match(st.node_key, /^nodekey:[0-9a-f]{64}$/);
  assert.ok(typeof st.node_private_key === 'string' && st.node_private_key.length > 40);
  const nodes = must('GET', '/api/v1/tenants/acme/nodes').nodes as any[];
  const server1 = nodes.find((n) => n.name === 'n1');
  assert.equal(server1.node_key, st.node_key);
  assert.equal(server1.key_proven, true);
  assert.equal(server1.id, n1.self.id);

  // Restart the daemon: it resumes by itself (saved state, token) ...
  await stop('node:n1');
  await startNode('n1');
  assert.ok(await running('n1'), 'n1 runs again after the restart');
  assert.ok(await waitFor(() => ping(ns['n1']!, n2addr, 1) === 1, 10_000, 200), 'and reaches n2 again');
  // ... and a new login proves the same key: the same node, address and key.
  const r2 = up('n1', `--authkey ${authKey}`);
  assert.match(r2.out, /n1 \(tenant acme\): Running/);
  const after = status('n1');
  assert.equal(after.self.id, n1.self.id);
  assert.deepEqual(after.self.addresses, n1.self.addresses);
  assert.equal(JSON.parse(readFileSync(file, 'utf8')).node_key, st.node_key);
  assert.equal(must('GET', '/api/v1/tenants/acme/nodes').nodes.length, 2, 'no second node');
  assert.ok(await waitFor(() => ping(ns['n1']!, n2addr, 1) === 1, 10_000, 200), 'traffic after the rejoin');
  // The proofs were audited as registrations of one node.
  const audit = must('GET', '/api/v1/tenants/acme/audit?action=node.reregister').entries as any[];
  assert.ok(audit.some((e) => e.object_id === String(n1.self.id)));
});

test('a node as an older larktund left it (state without a private key, key never proven) restarts, runs, and a plain larktun up proves its key', { skip: skip ?? false }, async () => {
  const before = status('n2');
  const n2addr = before.self.addresses[0].split('/')[0] as string;
  // Make n2 look as it did before node keys were proven: an X25519-era key on both sides, no private key kept.
  await stop('node:n2');
  const legacyKey = `nodekey:${'5a'.repeat(32)}`;
  await dbExec('sqlite', path.join(lab.dir, 'server-data'), 'update nodes set node_key = $1, key_proven_at = null where id = $2', [legacyKey, before.self.id]);
  const file = path.join(stateDir('n2'), 'state.json');
  const old = JSON.parse(readFileSync(file, 'utf8'));
  delete old.node_private_key;
  old.node_key = legacyKey;
  writeFileSync(file, JSON.stringify(old, null, 2), { mode: 0o600 });
  await startNode('n2');
  assert.ok(await running('n2'), 'the old state loads and the node runs with its token');
  assert.ok(await waitFor(() => ping(ns['n1']!, n2addr, 1) === 1, 10_000, 200), 'and carries traffic');
  const unproven = must('GET', `/api/v1/tenants/acme/nodes/${before.self.id}`);
  assert.equal(unproven.key_proven, false);
  // The user runs larktun up as always (no auth key): the node proves a key of its own.
  up('n2');
  const st = JSON.parse(readFileSync(file, 'utf8'));
  assert.match(st.node_key, /^nodekey:[0-9a-f]{64}$/);
  assert.notEqual(st.node_key, legacyKey);
  assert.equal(st.token, old.token, 'same token');
  const proven = must('GET', `/api/v1/tenants/acme/nodes/${before.self.id}`);
  assert.equal(proven.key_proven, true);
  assert.equal(proven.node_key, st.node_key);
  assert.deepEqual(status('n2').self.addresses, before.self.addresses);
  assert.ok(await waitFor(() => ping(ns['n1']!, n2addr, 1) === 1, 10_000, 200), 'traffic after the key moved');
});
