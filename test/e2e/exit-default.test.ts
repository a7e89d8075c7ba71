// Issue 10: exit nodes work under the DEFAULT policy (src ["*"] → dst ["*:*"]).
// A fresh tenant whose policy is never PUT, a control server and a relay in
// "hub", an exit node with an uplink to a stand-in internet host, and a laptop
// that picks the exit node with `larktun set --exit-node`; then ping and a
// tcpdump on the internet host that sees the exit node's masqueraded address.
//
//   hub 10.77.0.1 (server :8080, relay :41642)
//    ├── 10.77.1.0/24 ── exit (wan1 203.0.113.1/24 ── inet 203.0.113.10)
//    └── 10.77.2.0/24 ── laptop
//
// Every address lives in namespaces created here.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { BIN_LARKTUN, BIN_LARKTUND, Lab, netnsSkipReason, nsExec, ping, sh, sleep } from './netns.js';

const skip = netnsSkipReason(['nft', 'tcpdump', 'curl', 'ping']);
const lab = new Lab();
const SERVER = 'http://10.77.0.1:8080';
const INTERNET_HOST = '203.0.113.10';
const EXIT_UPLINK = '203.0.113.1';
let hub = '';
let operatorKey = '';
let adminKey = '';
const logs = new Map<string, () => string>();

function start(ns: string, key: string, argv: string[], env: Record<string, string> = {}): ChildProcess {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...argv], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  lab.procs.push(child);
  logs.set(key, () => log);
  return child;
}

async function waitFor(cond: () => boolean, ms: number, step = 100): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (cond()) return true;
    await sleep(step);
  }
  return cond();
}

/** An Admin API call made from inside the hub namespace. */
function api(method: string, urlPath: string, body?: unknown, key = adminKey): { status: number; body: any } {
  const data = body === undefined ? '' : `-H 'content-type: application/json' --data '${JSON.stringify(body)}'`;
  const r = nsExec(hub, `curl -s -w '\\n%{http_code}' -X ${method} -H 'authorization: Bearer ${key}' ${data} http://127.0.0.1:8080/api/v1${urlPath}`);
  const lines = r.out.trimEnd().split('\n');
  const status = Number(lines.pop());
  const text = lines.join('\n');
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    /* text */
  }
  return { status, body: parsed };
}

function must(method: string, urlPath: string, body?: unknown, key = adminKey): any {
  const r = api(method, urlPath, body, key);
  if (r.status >= 300) throw new Error(`${method} ${urlPath}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

const sockOf = (name: string): string => path.join(lab.dir, `${name}.sock`);
const cli = (name: string, args: string, allowFail = false) =>
  sh(`LARKTUN_SOCK=${sockOf(name)} ${process.execPath} ${BIN_LARKTUN} ${args}`, { allowFail, timeoutMs: 60_000 });

async function startNode(ns: string, name: string): Promise<void> {
  const child = start(ns, `node:${name}`, [BIN_LARKTUND, '--state-dir', path.join(lab.dir, `${name}-state`), '--tun', 'lark0'], { LARKTUN_SOCK: sockOf(name) });
  await waitFor(() => existsSync(sockOf(name)) || child.exitCode !== null, 15_000);
  if (child.exitCode !== null) throw new Error(`larktund ${name} exited:\n${logs.get(`node:${name}`)!()}`);
}

const nodes: Record<string, string> = {};

/** What a failure report needs: the daemons' logs and status, the relay's status. */
function diagnostics(): string {
  const parts: string[] = [];
  for (const name of ['laptop', 'exit']) {
    parts.push(`--- ${name} log\n${logs.get(`node:${name}`)?.() ?? ''}`);
    parts.push(`--- ${name} status\n${cli(name, 'status --json', true).out}`);
    parts.push(`--- ${name} table 52\n${nsExec(nodes[name]!, 'ip route show table 52; ip route get 203.0.113.10; ping -n -c 1 -W 1 203.0.113.10 2>&1; ip -s link show lark0; nft list ruleset', { allowFail: true }).out}`);
  }
  parts.push(`--- relay status\n${cli('relay', 'status --json', true).out}`);
  return parts.join('\n');
}

before(async () => {
  if (skip) return;
  hub = lab.addNs('hub');
  nodes.exit = lab.addNs('exit');
  nodes.laptop = lab.addNs('laptop');
  const inet = lab.addNs('inet');
  sh(`ip -n ${hub} addr add 10.77.0.1/32 dev lo`);
  lab.link(hub, 'h1', '10.77.1.1/24', nodes.exit, 'eth0', '10.77.1.2/24');
  lab.link(hub, 'h2', '10.77.2.1/24', nodes.laptop, 'eth0', '10.77.2.2/24');
  sh(`ip -n ${nodes.exit} route add default via 10.77.1.1`);
  sh(`ip -n ${nodes.laptop} route add default via 10.77.2.1`);
  lab.link(nodes.exit, 'wan1', `${EXIT_UPLINK}/24`, inet, 'eth0', `${INTERNET_HOST}/24`);

  const data = path.join(lab.dir, 'server-data');
  const server = start(hub, 'server', [BIN_LARKTUN, 'server', '--listen', '0.0.0.0:8080', '--data', data]);
  const up = await waitFor(() => server.exitCode !== null || nsExec(hub, 'curl -sf http://127.0.0.1:8080/readyz', { allowFail: true }).status === 0, 20_000, 200);
  if (!up || server.exitCode !== null) throw new Error(`larktun server did not come up:\n${logs.get('server')!()}`);
  operatorKey = readFileSync(path.join(data, 'operator.key'), 'utf8').trim();

  // A fresh tenant: the policy is never PUT, so the tenant keeps the default one.
  must('POST', '/tenants', { name: 'fresh', dns_base: 'fresh.larktun.test' }, operatorKey);
  adminKey = must('POST', '/tenants/fresh/apikeys', { role: 'admin' }, operatorKey).key;
  must('POST', '/tenants/fresh/users', { name: 'amy', email: 'amy@fresh.test' });
  const relay = must('POST', '/relays', { name: 'relay-1', endpoints: ['10.77.0.1:41642'] }, operatorKey);
  const r = start(hub, 'relay', [BIN_LARKTUND, '--relay', '--server', 'http://127.0.0.1:8080', '--relay-token', relay.token, '--listen', '41642', '--state-dir', path.join(lab.dir, 'relay-state')], {
    LARKTUN_SOCK: sockOf('relay'),
  });
  await waitFor(() => logs.get('relay')!().includes('running as a relay') || r.exitCode !== null, 15_000);
  if (r.exitCode !== null) throw new Error(`relay exited:\n${logs.get('relay')!()}`);
  await startNode(nodes.exit, 'exit');
  await startNode(nodes.laptop, 'laptop');
});

after(() => {
  if (!skip) lab.cleanup();
});

test('default policy: a laptop uses an approved exit node to reach the internet', { skip: skip ?? false }, async () => {
  const policy = must('GET', '/tenants/fresh/policy');
  assert.match(JSON.stringify(policy), /\*:\*/, 'the tenant has the default policy');

  const key = must('POST', '/tenants/fresh/authkeys', { reusable: true, user: 'amy' }).key as string;
  cli('exit', `up --login-server ${SERVER} --hostname exit --authkey ${key} --advertise-exit-node`);
  cli('laptop', `up --login-server ${SERVER} --hostname laptop --authkey ${key}`);
  const list = must('GET', '/tenants/fresh/nodes').nodes as { id: number; name: string }[];
  const exitId = list.find((n) => n.name === 'exit')!.id;
  const routes = must('GET', `/tenants/fresh/nodes/${exitId}/routes`);
  assert.deepEqual([...routes.announced].sort(), ['0.0.0.0/0', '::/0']);
  must('POST', `/tenants/fresh/nodes/${exitId}/routes`, { approved: ['0.0.0.0/0', '::/0'] });

  // No exit node yet: the internet host is out of reach.
  assert.equal(ping(nodes.laptop!, INTERNET_HOST, 1, { wait: 1 }), 0, 'no exit node: no internet');
  // The exit node reaches the laptop's map (the default policy offers it).
  assert.ok(await waitFor(() => /exit/.test(cli('laptop', 'exit-node list', true).out), 10_000, 200), cli('laptop', 'exit-node list', true).out);
  cli('laptop', 'set --exit-node=exit');

  const cap = spawn('ip', ['netns', 'exec', lab.name('inet'), 'tcpdump', '-n', '-l', '-c', '1', '-i', 'eth0', `icmp and dst host ${INTERNET_HOST}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  lab.procs.push(cap);
  let seen = '';
  cap.stdout!.on('data', (d: Buffer) => (seen += d.toString()));
  await sleep(500);
  const ok = await waitFor(() => ping(nodes.laptop!, INTERNET_HOST, 1, { wait: 1 }) === 1, 10_000, 200);
  assert.ok(ok, `laptop reaches ${INTERNET_HOST} through the exit node\n${diagnostics()}`);
  await waitFor(() => seen.length > 0, 3000);
  cap.kill();
  assert.match(seen, new RegExp(`IP ${EXIT_UPLINK.replace(/\./g, '\\.')} > ${INTERNET_HOST.replace(/\./g, '\\.')}`), 'masqueraded to the exit node uplink address');
  const st = JSON.parse(cli('laptop', 'status --json').out);
  assert.equal(st.exit_node.in_use, 'exit');
});
