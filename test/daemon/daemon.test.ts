// larktund as a process: offline checks, bad input, and a TUN-less daemon driven
// through the control socket (no root needed: --no-tun, ports on loopback).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import dgram from 'node:dgram';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ROOT, BIN_LARKTUN, BIN_LARKTUND, sleep } from '../e2e/netns.js';

const built = existsSync(path.join(ROOT, 'dist', 'daemon', 'main.js'));
const skip = built ? false : 'dist/ not built: run npm run build';
const dir = mkdtempSync(path.join(tmpdir(), 'larktund-test-'));
const procs: ChildProcess[] = [];
after(() => procs.forEach((p) => p.exitCode === null && p.kill('SIGKILL')));

const PSK = (b: number): string => Buffer.alloc(32, b).toString('hex').replace(/^../, 'a5');

function writeCfg(name: string, cfg: unknown): string {
  const p = path.join(dir, name);
  writeFileSync(p, JSON.stringify(cfg, null, 2));
  return p;
}

function run(bin: string, args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 20_000 });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

async function freePort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const hubCfg = (port: number) => ({
  role: 'hub',
  virtual_subnet: '10.66.0.0/24',
  local_id: 1,
  listen_port: port,
  peers: [
    { id: 2, name: 'a', allowed_src: '10.66.0.2/32', psk: PSK(2) },
    { id: 3, name: 'b', allowed_src: '10.66.0.3/32', psk: PSK(3) },
  ],
});

test('--check prints "config ok" for a valid config and every problem for a bad one', { skip }, () => {
  const good = writeCfg('good.json', hubCfg(18020));
  const r = run(BIN_LARKTUND, ['--config', good, '--check']);
  assert.equal(r.status, 0, r.err);
  assert.equal(r.out, 'config ok\n');
  const bad = path.join(dir, 'bad.json');
  writeFileSync(bad, '{\n  "role": "hub",\n  "local_id": 70000,\n  "peers": [{"id": 2, "allowed_src": "0.0.0.0/0", "psk": "zz"}]\n}\n');
  const b = run(BIN_LARKTUND, ['--config', bad, '--check']);
  assert.equal(b.status, 1);
  assert.match(b.err, /bad\.json:3:\d+: error: \$\.local_id: must be 1\.\.65535/);
  assert.match(b.err, /\$\.peers\[0\]\.psk: must be 64 hex characters/);
  assert.match(b.err, /allowed_src/);
});

test('--print-network-plan prints the ip commands', { skip }, () => {
  const cfg = writeCfg('spoke.json', {
    role: 'spoke', virtual_subnet: '10.66.0.0/24', local_id: 2, local_tun_ip: '10.66.0.2/24',
    remote_routes: ['10.66.0.0/24', '10.67.0.0/16'],
    peers: [{ id: 1, endpoint: '127.0.0.1:18020', allowed_src: '10.66.0.0/24', psk: PSK(2) }],
  });
  const r = run(BIN_LARKTUND, ['--config', cfg, '--print-network-plan'], { LARKTUN_TUN: 'lk9' });
  assert.equal(r.status, 0, r.err);
  assert.match(r.out, /^ip link set dev lk9 mtu 1400$/m);
  assert.match(r.out, /^ip addr add 10\.66\.0\.2\/24 dev lk9$/m);
  assert.match(r.out, /^ip route replace 10\.67\.0\.0\/16 dev lk9$/m);
  assert.doesNotMatch(r.out, /route replace 10\.66\.0\.0\/24/, 'the connected subnet needs no route');
});

test('a bad TUN name from LARKTUN_TUN is named with the fix, exit 2', { skip }, () => {
  const cfg = writeCfg('tunname.json', hubCfg(18020));
  const r = run(BIN_LARKTUND, ['--config', cfg], { LARKTUN_TUN: 'this-name-is-way-too-long' });
  assert.equal(r.status, 2);
  assert.match(r.err, /LARKTUN_TUN: interface name "this-name-is-way-too-long" must be 1\.\.15 characters/);
});

test('a port already in use is named with the reason and the daemon exits 1', { skip }, async () => {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '0.0.0.0', () => r()));
  const port = s.address().port;
  const cfg = writeCfg('busy.json', hubCfg(port));
  const r = run(BIN_LARKTUND, ['--config', cfg, '--no-tun'], { LARKTUN_SOCK: path.join(dir, 'busy.sock'), LARKTUN_STATE_DIR: dir });
  s.close();
  assert.equal(r.status, 1);
  assert.match(r.err, new RegExp(`cannot bind UDP 0\\.0\\.0\\.0:${port}: the port is already in use`));
});

test('the CLI says clearly when no daemon is running, and refuses bad commands with exit 2', { skip }, () => {
  const r = run(BIN_LARKTUN, ['status'], { LARKTUN_SOCK: path.join(dir, 'nobody.sock') });
  assert.equal(r.status, 1);
  assert.match(r.err, /larktund is not running \(no control socket at .*nobody\.sock/);
  const p = run(BIN_LARKTUN, ['policy', 'add', '--src', '0.0.0.0/0', '--dst', '10.1.2.3/8', '--action', 'drop'], { LARKTUN_SOCK: path.join(dir, 'nobody.sock') });
  assert.equal(p.status, 2);
  assert.match(p.err, /--dst: "10\.1\.2\.3\/8" has host bits set: use 10\.0\.0\.0\/8/);
  const q = run(BIN_LARKTUN, ['policy', 'add', '--src', '0.0.0.0/0', '--dst', '10.0.0.0/8', '--action', 'bounce'], { LARKTUN_SOCK: path.join(dir, 'nobody.sock') });
  assert.equal(q.status, 2);
  assert.match(q.err, /--action must be forward or drop/);
});

test('control socket, live table, save and reload, metrics, SIGTERM', { skip }, async () => {
  const port = await freePort();
  const metricsPort = await freePort();
  const sock = path.join(dir, 'hub.sock');
  const state = path.join(dir, 'hub-state');
  const env = { ...process.env, LARKTUN_SOCK: sock, LARKTUN_STATE_DIR: state };
  const cfg = writeCfg('hub.json', hubCfg(port));
  const start = async (): Promise<ChildProcess> => {
    const p = spawn(process.execPath, [BIN_LARKTUND, '--config', cfg, '--no-tun', '--metrics', `127.0.0.1:${metricsPort}`], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    procs.push(p);
    for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(100);
    await sleep(200);
    return p;
  };
  const cli = (...args: string[]) => run(BIN_LARKTUN, args, { LARKTUN_SOCK: sock });
  let d = await start();
  assert.equal(statSync(sock).mode & 0o777, 0o600, 'control socket is 0600');

  const st = JSON.parse(cli('status', '--json').out) as { schema_version: number; role: string; local_id: number; listen_ports: number[]; peers: { id: number; online: boolean; last_seen_age_seconds: number | null }[]; counters: Record<string, number> };
  assert.equal(st.schema_version, 1);
  assert.equal(st.role, 'hub');
  assert.deepEqual(st.listen_ports, [port]);
  assert.deepEqual(st.peers.map((p) => [p.id, p.online, p.last_seen_age_seconds]), [[2, false, null], [3, false, null]]);
  for (const k of ['drop_unknown_peer', 'drop_auth', 'drop_replay', 'drop_old_epoch', 'drop_spoof', 'drop_no_route', 'drop_no_reflect', 'drop_oversized', 'drop_send_error', 'relay_packets', 'keepalive_rx']) {
    assert.equal(st.counters[k], 0, k);
  }
  assert.match(cli('status').out, /role=hub local_id=1/);

  assert.equal(cli('policy', 'show').out,
    'policy add --src 0.0.0.0/0 --dst 10.66.0.2/32 --action forward --target 2\n' +
    'policy add --src 0.0.0.0/0 --dst 10.66.0.3/32 --action forward --target 3\n');
  assert.equal(cli('policy', 'add', '--src', '0.0.0.0/0', '--dst', '10.70.0.0/16', '--action', 'forward', '--target', '3').status, 0);
  assert.equal(cli('policy', 'add', '--src', '10.66.0.2/32', '--dst', '10.70.1.0/24', '--action', 'drop').status, 0);
  const shown = cli('policy', 'show').out.trim().split('\n');
  assert.deepEqual(shown, [
    'policy add --src 0.0.0.0/0 --dst 10.66.0.2/32 --action forward --target 2',
    'policy add --src 0.0.0.0/0 --dst 10.66.0.3/32 --action forward --target 3',
    'policy add --src 10.66.0.2/32 --dst 10.70.1.0/24 --action drop',
    'policy add --src 0.0.0.0/0 --dst 10.70.0.0/16 --action forward --target 3',
  ], 'lookup order: longest destination first');
  const del = cli('policy', 'del', '--dst', '10.99.0.0/16');
  assert.equal(del.status, 1);
  assert.match(del.err, /no rule has --dst 10\.99\.0\.0\/16/);

  const saved = cli('save');
  assert.equal(saved.status, 0, saved.err);
  const file = path.join(state, 'policy.lines');
  assert.equal(saved.out, `saved 4 rule(s) to ${file}\n`);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.ok(readFileSync(file, 'utf8').includes('--dst 10.70.1.0/24 --action drop'));

  // Junk at the UDP port: counted, never answered.
  const junk = dgram.createSocket('udp4');
  let replied = false;
  junk.on('message', () => (replied = true));
  await new Promise<void>((r) => junk.bind(0, '127.0.0.1', () => r()));
  for (const n of [0, 5, 36, 80, 1488, 1500]) junk.send(Buffer.alloc(n, 0x42), port, '127.0.0.1');
  await sleep(500);
  junk.close();
  assert.equal(replied, false);
  const c = (JSON.parse(cli('status', '--json').out) as typeof st).counters;
  assert.equal(c.drop_malformed! + c.drop_unknown_peer!, 6);

  const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
  const body = await res.text();
  assert.equal(res.status, 200);
  assert.match(body, /^larktun_drop_malformed_total \d+$/m);
  assert.match(body, /^larktun_forwarding_rules 4$/m);
  assert.match(body, /^larktun_peer_online\{id="2",name="a"\} 0$/m);

  d.kill('SIGTERM');
  const code = await new Promise<number | null>((r) => d.once('exit', (c2) => r(c2)));
  assert.equal(code, 0);

  // Restart: the saved table is loaded again.
  d = await start();
  assert.deepEqual(cli('policy', 'show').out.trim().split('\n'), shown);
  d.kill('SIGTERM');
  await new Promise((r) => d.once('exit', r));
});
