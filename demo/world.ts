// A complete Larktun installation in Linux network namespaces, shared by
// `npm run demo` and the managed-node end-to-end tests (test/e2e/managed*.test.ts).
//
//                         root ns  10.99.254.1 ──┐ (the demo/test talks to the Admin API here)
//                                                │
//   ┌──────────────────────── hub 10.99.254.2, service address 10.99.255.1 ──────────────────┐
//   │  larktun server :8080        larktund --relay :41642 (shared by acme and beta)          │
//   └──┬──────────┬──────────┬──────────┬──────────┬──────────┬──────────┬──────────┬────────┘
//   10.99.1.0/24 .2.0/24   .3.0/24    .4.0/24    .5.0/24    .6.0/24    .7.0/24    .8.0/24
//   router      router2    exit-hk    dev        ops        guest      b1 (beta)  b2 (beta)
//     │ 192.168.6.1  │ .2     │ 203.0.113.1
//     └── lan: db 192.168.6.10 (bridge)      └── inet: 203.0.113.10 (TEST-NET-3 stand-in internet)
//
// Optional (World.addSecondExit, used by test/e2e/managed-more.test.ts): exit-sg,
// 10.99.9.0/24 to the hub, uplink 198.51.100.2 into inet (198.51.100.1); and
// startRelay({ key, token, port }) runs further relays (e.g. a dedicated one) in hub.
//
// Every address lives inside namespaces made here; nothing leaves the machine.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const LARKTUN = path.join(ROOT, 'bin', 'larktun');
const LARKTUND = path.join(ROOT, 'bin', 'larktund');

export const SERVER_URL = 'http://10.99.255.1:8080';
const ADMIN_URL = 'http://10.99.254.2:8080';
export const RELAY_ENDPOINT = '10.99.255.1:41642';
export const DB = '192.168.6.10';
export const INTERNET_HOST = '203.0.113.10';

export const ACME_POLICY = `// acme: developers reach the database, ops reach the internet through the exit node.
{
  "groups": {
    "group:dev": ["dev@acme.test"],
    "group:ops": ["ops@acme.test"],
  },
  "hosts": { "db": "${DB}", "lab": "10.20.0.0/16" },
  "tagOwners": {
    "tag:router": ["group:ops"],
    "tag:exit": ["group:ops"],
  },
  "autoApprovers": {
    "routes": { "192.168.6.0/24": ["tag:router"] },
    "exitNode": ["tag:exit"],
  },
  "acls": [
    { "action": "accept", "src": ["group:dev"], "dst": ["db:5432"] },
    { "action": "accept", "src": ["group:ops"], "dst": ["autogroup:internet:*", "lab:*"] },
  ],
}
`;

/** Uplink address of the optional second exit node (World.addSecondExit): its masquerade source. */
export const EXIT_SG_UPLINK = '198.51.100.2';
/** Uplink address of exit-hk (built by World.build): its masquerade source. */
export const EXIT_HK_UPLINK = '203.0.113.1';

export const BETA_POLICY = `{ "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ] }`;

export type NodeName = 'router' | 'router2' | 'exit-hk' | 'dev' | 'ops' | 'guest' | 'b1' | 'b2' | 'exit-sg';
export const NODES: { name: NodeName; idx: number; tenant: 'acme' | 'beta' }[] = [
  { name: 'router', idx: 1, tenant: 'acme' },
  { name: 'router2', idx: 2, tenant: 'acme' },
  { name: 'exit-hk', idx: 3, tenant: 'acme' },
  { name: 'dev', idx: 4, tenant: 'acme' },
  { name: 'ops', idx: 5, tenant: 'acme' },
  { name: 'guest', idx: 6, tenant: 'acme' },
  { name: 'b1', idx: 7, tenant: 'beta' },
  { name: 'b2', idx: 8, tenant: 'beta' },
];

export interface Cmd {
  status: number;
  out: string;
  err: string;
}

export function sh(cmd: string, opts: { allowFail?: boolean; timeoutMs?: number; env?: Record<string, string> } = {}): Cmd {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8', timeout: opts.timeoutMs ?? 30_000, env: { ...process.env, ...(opts.env ?? {}) } });
  const res = { status: r.status ?? -1, out: r.stdout ?? '', err: r.stderr ?? '' };
  if (!opts.allowFail && res.status !== 0) throw new Error(`command failed (${res.status}): ${cmd}\n${res.out}${res.err}`);
  return res;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Why the world cannot be built here, or null. */
export function worldSkipReason(): string | null {
  if (process.platform !== 'linux') return 'needs Linux network namespaces';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root (network namespaces, TUN)';
  if (!existsSync('/dev/net/tun')) return 'needs /dev/net/tun';
  for (const t of ['ip', 'nft', 'ping', 'python3', 'bash']) {
    if (spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0) return `needs the ${t} command`;
  }
  if (!existsSync(path.join(ROOT, 'dist', 'daemon', 'main.js'))) return 'dist/ not built: run npm run build';
  const probe = `ltprobe${process.pid}`;
  if (spawnSync('ip', ['netns', 'add', probe]).status !== 0) return 'cannot create network namespaces here';
  spawnSync('ip', ['netns', 'del', probe]);
  return null;
}

interface Proc {
  child: ChildProcess;
  log: string;
}

export class World {
  readonly dir = mkdtempSync(path.join(tmpdir(), 'larktun-world-'));
  private readonly tag = (process.pid % 1000).toString(36);
  private readonly nsList: string[] = [];
  private readonly procs = new Map<string, Proc>();
  private rootIf = '';
  operatorKey = '';
  /** Admin API keys per tenant. */
  readonly adminKey: Record<string, string> = {};
  /** Auth keys by purpose. */
  readonly authKeys: Record<string, string> = {};
  relayToken = '';

  constructor(private readonly say: (msg: string) => void = () => {}) {}

  ns(name: string): string {
    return `lt${this.tag}${name.replace(/[^a-z0-9]/g, '')}`;
  }

  exec(name: string, cmd: string, opts: { allowFail?: boolean; timeoutMs?: number } = {}): Cmd {
    return sh(`ip netns exec ${this.ns(name)} sh -c ${JSON.stringify(cmd)}`, opts);
  }

  private addNs(name: string): void {
    const ns = this.ns(name);
    spawnSync('ip', ['netns', 'del', ns]);
    sh(`ip netns add ${ns} && ip -n ${ns} link set lo up`);
    this.nsList.push(ns);
  }

  private veth(a: string, aIf: string, aAddr: string | null, b: string, bIf: string, bAddr: string | null): void {
    sh(`ip link add ${aIf} netns ${this.ns(a)} type veth peer name ${bIf} netns ${this.ns(b)}`);
    for (const [n, i, addr] of [[a, aIf, aAddr], [b, bIf, bAddr]] as const) {
      if (addr) sh(`ip -n ${this.ns(n)} addr add ${addr} dev ${i}`);
      sh(`ip -n ${this.ns(n)} link set ${i} up`);
    }
  }

  /** Namespaces, links and the LAN/internet stand-ins. */
  build(): void {
    this.addNs('hub');
    this.rootIf = `lt${this.tag}root`;
    spawnSync('ip', ['link', 'del', this.rootIf]);
    sh(`ip link add ${this.rootIf} type veth peer name up0 netns ${this.ns('hub')}`);
    sh(`ip addr add 10.99.254.1/30 dev ${this.rootIf} && ip link set ${this.rootIf} up`);
    sh(`ip -n ${this.ns('hub')} addr add 10.99.254.2/30 dev up0 && ip -n ${this.ns('hub')} link set up0 up`);
    sh(`ip -n ${this.ns('hub')} addr add 10.99.255.1/32 dev lo`);
    this.exec('hub', 'sysctl -qw net.ipv4.ip_forward=1');
    for (const n of NODES) {
      this.addNs(n.name);
      this.veth('hub', `h${n.idx}`, `10.99.${n.idx}.1/24`, n.name, 'eth0', `10.99.${n.idx}.2/24`);
      sh(`ip -n ${this.ns(n.name)} route add default via 10.99.${n.idx}.1`);
    }
    // The LAN behind both routers: a bridge with the database host on it.
    this.addNs('lan');
    sh(`ip -n ${this.ns('lan')} link add br0 type bridge && ip -n ${this.ns('lan')} addr add ${DB}/24 dev br0 && ip -n ${this.ns('lan')} link set br0 up`);
    this.veth('router', 'lan0', '192.168.6.1/24', 'lan', 'p1', null);
    this.veth('router2', 'lan0', '192.168.6.2/24', 'lan', 'p2', null);
    sh(`ip -n ${this.ns('lan')} link set p1 master br0 && ip -n ${this.ns('lan')} link set p2 master br0`);
    // A second network on the first router only (for manual route approval).
    sh(`ip -n ${this.ns('router')} addr add 10.20.0.1/32 dev lo`);
    // The stand-in internet behind the exit node.
    this.addNs('inet');
    this.veth('exit-hk', 'wan1', '203.0.113.1/24', 'inet', 'eth0', `${INTERNET_HOST}/24`);
    // TCP services on the database host: 5432 (allowed to dev) and 5433 (not).
    this.spawnIn('lan', 'db-listener', ['python3', '-c', LISTENER, '5432', '5433', '80']);
    this.spawnIn('inet', 'web-listener', ['python3', '-c', LISTENER, '80']);
  }

  /**
   * Optional, after build(): a second exit node "exit-sg" (namespace with a link
   * to the hub, 10.99.9.0/24, like the other nodes) with its own uplink into the
   * inet namespace (${EXIT_SG_UPLINK} ↔ inet 198.51.100.1), so the stand-in
   * internet host sees a different masquerade source per exit node. Not started
   * or joined: startNode('exit-sg') and larktun up as for any node.
   */
  addSecondExit(): void {
    const name: NodeName = 'exit-sg';
    const idx = 9;
    this.addNs(name);
    this.veth('hub', `h${idx}`, `10.99.${idx}.1/24`, name, 'eth0', `10.99.${idx}.2/24`);
    sh(`ip -n ${this.ns(name)} route add default via 10.99.${idx}.1`);
    this.veth(name, 'wan1', `${EXIT_SG_UPLINK}/24`, 'inet', 'eth1', '198.51.100.1/24');
    sh(`ip -n ${this.ns(name)} route add ${INTERNET_HOST}/32 via 198.51.100.1 dev wan1`);
  }

  private spawnIn(name: string, key: string, argv: string[], env: Record<string, string> = {}): Proc {
    const child = spawn('ip', ['netns', 'exec', this.ns(name), ...argv], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const p: Proc = { child, log: '' };
    child.stdout!.on('data', (d: Buffer) => (p.log += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (p.log += d.toString()));
    this.procs.set(key, p);
    return p;
  }

  log(key: string): string {
    return this.procs.get(key)?.log ?? '';
  }

  async stop(key: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const p = this.procs.get(key);
    if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
    const exited = new Promise<void>((r) => p.child.once('exit', () => r()));
    p.child.kill(signal);
    await exited;
  }

  // ---- control server ------------------------------------------------------

  async startServer(): Promise<void> {
    const data = path.join(this.dir, 'server-data');
    const p = this.spawnIn('hub', 'server', [process.execPath, LARKTUN, 'server', '--listen', '0.0.0.0:8080', '--data', data]);
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      if (p.child.exitCode !== null) throw new Error(`larktun server exited:\n${p.log}`);
      try {
        const r = await fetch(`${ADMIN_URL}/readyz`, { signal: AbortSignal.timeout(1000) });
        if (r.ok) break;
      } catch {
        /* not yet */
      }
      await sleep(100);
    }
    this.operatorKey = readFileSync(path.join(data, 'operator.key'), 'utf8').trim();
  }

  async api(method: string, urlPath: string, body?: unknown, key?: string): Promise<{ status: number; body: any }> {
    const r = await fetch(`${ADMIN_URL}${urlPath}`, {
      method,
      headers: { authorization: `Bearer ${key ?? this.operatorKey}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await r.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      /* text */
    }
    return { status: r.status, body: parsed };
  }

  private async must(method: string, urlPath: string, body?: unknown, key?: string): Promise<any> {
    const r = await this.api(method, urlPath, body, key);
    if (r.status >= 300) throw new Error(`${method} ${urlPath}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  /** Tenants, users, policies, the shared relay and auth keys. */
  async bootstrap(): Promise<void> {
    for (const t of ['acme', 'beta']) {
      await this.must('POST', '/api/v1/tenants', { name: t, dns_base: `${t}.larktun.test` });
      this.adminKey[t] = (await this.must('POST', `/api/v1/tenants/${t}/apikeys`, { role: 'admin' })).key;
    }
    const acme = this.adminKey['acme']!;
    const beta = this.adminKey['beta']!;
    for (const u of ['dev', 'ops', 'guest']) await this.must('POST', '/api/v1/tenants/acme/users', { name: u, email: `${u}@acme.test` }, acme);
    await this.must('POST', '/api/v1/tenants/beta/users', { name: 'bob', email: 'bob@beta.test' }, beta);
    await this.must('PUT', '/api/v1/tenants/acme/policy', { policy: ACME_POLICY }, acme);
    await this.must('PUT', '/api/v1/tenants/beta/policy', { policy: BETA_POLICY }, beta);
    const relay = await this.must('POST', '/api/v1/relays', { name: 'relay-1', endpoints: [RELAY_ENDPOINT] });
    this.relayToken = relay.token;
    const key = async (t: string, body: Record<string, unknown>) => (await this.must('POST', `/api/v1/tenants/${t}/authkeys`, { reusable: true, ...body }, this.adminKey[t])).key as string;
    // Routers and the exit node are set up by ops (who owns their tags).
    this.authKeys['ops'] = await key('acme', { user: 'ops' });
    this.authKeys['dev'] = await key('acme', { user: 'dev' });
    this.authKeys['guest'] = await key('acme', { user: 'guest' });
    this.authKeys['beta'] = await key('beta', { user: 'bob' });
  }

  /**
   * Starts a relay in the hub namespace. Without options: the shared relay-1
   * (token from bootstrap, UDP 41642, process key "relay"). `key` names another
   * relay process (its socket, state dir and log key), with its own token and port.
   */
  startRelay(opts: { key?: string; token?: string; port?: number } = {}): Promise<void> {
    const key = opts.key ?? 'relay';
    const p = this.spawnIn('hub', key, [process.execPath, LARKTUND, '--relay', '--server', 'http://127.0.0.1:8080', '--relay-token', opts.token ?? this.relayToken, '--listen', String(opts.port ?? 41642), '--state-dir', this.relayStateDir(key)], {
      LARKTUN_SOCK: this.relaySock(key),
    });
    return this.waitFor(() => p.log.includes('running as a relay') || p.child.exitCode !== null, 15_000).then(() => {
      if (p.child.exitCode !== null) throw new Error(`relay exited:\n${p.log}`);
    });
  }

  // ---- managed nodes --------------------------------------------------------

  sock(name: string): string {
    return path.join(this.dir, `${name}.sock`);
  }

  async startNode(name: NodeName): Promise<void> {
    const p = this.spawnIn(name, `node:${name}`, [process.execPath, LARKTUND, '--state-dir', path.join(this.dir, `${name}-state`), '--tun', 'lark0'], {
      LARKTUN_SOCK: this.sock(name),
    });
    await this.waitFor(() => existsSync(this.sock(name)) || p.child.exitCode !== null, 15_000);
    if (p.child.exitCode !== null) throw new Error(`larktund ${name} exited:\n${p.log}`);
  }

  stopNode(name: NodeName, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    return this.stop(`node:${name}`, signal);
  }

  nodeLog(name: NodeName): string {
    return this.log(`node:${name}`);
  }

  /** Runs the larktun CLI against a node's daemon (from the root namespace: the socket is a file). */
  cli(name: NodeName, args: string, allowFail = false): Cmd {
    return sh(`${process.execPath} ${LARKTUN} ${args}`, { allowFail, timeoutMs: 60_000, env: { LARKTUN_SOCK: this.sock(name) } });
  }

  /** Control socket of the relay started under `key` (default: the shared relay). */
  relaySock(key = 'relay'): string {
    return path.join(this.dir, `${key}.sock`);
  }

  /** State dir (relay-view.json) of the relay started under `key`. */
  relayStateDir(key = 'relay'): string {
    return path.join(this.dir, `${key}-state`);
  }

  /** A relay's status (per tenant namespace counters); default: the shared relay. */
  relayStatus(key = 'relay'): any {
    return JSON.parse(sh(`${process.execPath} ${LARKTUN} status --json`, { env: { LARKTUN_SOCK: this.relaySock(key) } }).out);
  }

  status(name: NodeName): any {
    return JSON.parse(this.cli(name, 'status --json').out);
  }

  async waitFor(cond: () => boolean | Promise<boolean>, ms: number, step = 50): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (await cond()) return true;
      await sleep(step);
    }
    return cond();
  }

  /** A TCP connect from a node's namespace; true when it was accepted. */
  tcp(from: string, host: string, port: number, timeoutSec = 2): boolean {
    return this.exec(from, `timeout ${timeoutSec} bash -c 'exec 3<>/dev/tcp/${host}/${port}'`, { allowFail: true }).status === 0;
  }

  ping(from: string, host: string, count = 2, wait = 1): number {
    const r = this.exec(from, `ping -n -q -c ${count} -i 0.2 -W ${wait} ${host}`, { allowFail: true, timeoutMs: 60_000 });
    const m = /(\d+) (?:packets )?received/.exec(r.out);
    return m ? Number(m[1]) : 0;
  }

  teardown(): void {
    for (const p of this.procs.values()) if (p.child.exitCode === null) p.child.kill('SIGKILL');
    for (const ns of this.nsList) spawnSync('ip', ['netns', 'del', ns]);
    if (this.rootIf) spawnSync('ip', ['link', 'del', this.rootIf]);
    rmSync(this.dir, { recursive: true, force: true });
  }

  writeFile(name: string, text: string): string {
    const p = path.join(this.dir, name);
    writeFileSync(p, text);
    return p;
  }
}

/** A tiny TCP service: accepts on each port given and closes at once. */
const LISTENER = `
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', int(port))); s.listen(64)
    while True:
        c, _ = s.accept(); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print('listening', *sys.argv[1:], flush=True)
threading.Event().wait()
`;
