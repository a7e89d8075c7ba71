// TUN offloads end to end, in namespaces: spoke A and a hub with a TUN,
//
//   [A] 198.18.1.2 ──── 198.18.1.1 [HUB] 10.68.0.1 ──── 10.68.0.10 [LAN]
//   overlay 10.66.0.0/24 + fd66::/64, MTU 1420; the hub publishes 10.68.0.0/24
//   (with offloads only) and forwards what its TUN gives it onto the LAN veth.
//
// iperf3 TCP A → HUB (IPv4 and IPv6) with offloads on (A reads TSO segments and
// splits them, the hub coalesces on write), then the same with
// LARKTUN_TUN_OFFLOAD=0. tcpdump on the hub's TUN checks that the data of each
// flow arrives in sequence order; iperf3 retransmits are reported. Idle ping RTT
// with offloads is compared with the plain path (both pairs up at once, pings
// interleaved, medians compared: the machine is shared).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Lab, netnsSkipReason, nsExec, ping, sleep, hexKey, type DaemonHandle } from './netns.js';

const skip = netnsSkipReason(['iperf3', 'tcpdump', 'ping']);
const lab = new Lab();
/** Namespaces of the pair with offloads (on) and the plain pair (off). */
const ns = { on: { a: '', hub: '' }, off: { a: '', hub: '' }, csum: { a: '', hub: '' }, tso: { a: '', hub: '' } };
type Tag = keyof typeof ns;
/** The pairs started so far, by tag. */
const pairs: Partial<Record<Tag, { hub: DaemonHandle; a: DaemonHandle }>> = {};
let nsLan = '';
let nsA = '';
let nsHub = '';
const running: DaemonHandle[] = [];
const PSK = hexKey(0x66);

interface OffloadStatus {
  vnet_hdr: boolean;
  offloads: string[];
  gro: boolean;
  note: string;
  gso_reads: number;
  gso_segments: number;
  gro_writes: number;
  gro_segments: number;
  uso: boolean;
  uso_writes: number;
  uso_segments: number;
}

function statusOf(d: DaemonHandle): { tun_offload: OffloadStatus; counters: Record<string, number> } {
  return JSON.parse(d.cli('status --json').out) as { tun_offload: OffloadStatus; counters: Record<string, number> };
}

async function startPair(env: Record<string, string>, tag: Tag): Promise<{ hub: DaemonHandle; a: DaemonHandle }> {
  nsA = ns[tag].a;
  nsHub = ns[tag].hub;
  const hub = await lab.daemon(nsHub, `hub-${tag}`, {
    role: 'hub',
    virtual_subnet: '10.66.0.0/24',
    local_id: 1,
    local_tun_ip: ['10.66.0.1/24', 'fd66::1/64'],
    local_tun_mtu: 1420,
    local_routes: ['10.66.0.1/32', 'fd66::1/128', ...(tag === 'on' ? ['10.68.0.0/24'] : [])],
    listen_port: 18020,
    peers: [{ id: 2, name: 'a', allowed_src: ['10.66.0.2/32', 'fd66::2/128'], psk: PSK }],
  }, [], env);
  const a = await lab.daemon(nsA, `a-${tag}`, {
    role: 'spoke',
    virtual_subnet: '10.66.0.0/24',
    local_id: 2,
    local_tun_ip: ['10.66.0.2/24', 'fd66::2/64'],
    local_tun_mtu: 1420,
    local_routes: ['10.66.0.2/32', 'fd66::2/128'],
    remote_routes: ['10.66.0.0/24', 'fd66::/64', ...(tag === 'on' ? ['10.68.0.0/24'] : [])],
    keepalive_secs: 1,
    listen_port: 18020,
    peers: [{ id: 1, name: 'hub', endpoint: '198.18.1.1:18020', allowed_src: ['10.66.0.0/24', 'fd66::/64', ...(tag === 'on' ? ['10.68.0.0/24'] : [])], psk: PSK }],
  }, [], env);
  running.push(hub, a);
  pairs[tag] = { hub, a };
  assert.equal(ping(nsA, '10.66.0.1', 3, { wait: 2 }), 3, `tunnel up\n${hub.log()}\n${a.log()}`);
  return { hub, a };
}

interface Iperf {
  bytes: number;
  retransmits: number;
}

async function iperf(dst: string, extra = '', serverNs = nsHub): Promise<Iperf> {
  const srv = spawn('ip', ['netns', 'exec', serverNs, 'iperf3', '-s', '-1', '-p', '5201'], { stdio: 'ignore' });
  await sleep(500);
  try {
    const r = nsExec(nsA, `iperf3 -c ${dst} -p 5201 -t 3 -J ${extra}`, { allowFail: true, timeoutMs: 60_000 });
    const j = JSON.parse(r.out) as { end?: { sum_received: { bytes: number }; sum_sent: { retransmits?: number } }; error?: string };
    assert.ok(j.end, `iperf3 to ${dst} failed: ${j.error ?? r.err}`);
    return { bytes: j.end.sum_received.bytes, retransmits: j.end.sum_sent.retransmits ?? 0 };
  } finally {
    srv.kill();
    await new Promise((r) => (srv.exitCode !== null ? r(null) : srv.once('exit', r)));
  }
}

interface Order {
  dataPackets: number;
  bytes: number;
  /** Data that starts past what the flow has delivered so far (a hole: reordered or lost before the TUN). */
  ahead: number;
  /** Data that starts before it (a retransmission or a late, reordered packet). */
  behind: number;
}

/** Reads a raw-IP pcap and checks the sequence order of the data A sends to port 5201, per flow. */
function sequenceOrder(file: string): Order {
  const b = readFileSync(file);
  assert.ok(b.length >= 24, 'pcap written');
  const le = b.readUInt32LE(0) === 0xa1b2c3d4;
  const u32 = (o: number): number => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  const link = u32(20);
  assert.ok(link === 101 || link === 12 || link === 228 || link === 229, `raw IP link type, got ${link}`);
  const next = new Map<string, number>();
  const res: Order = { dataPackets: 0, bytes: 0, ahead: 0, behind: 0 };
  for (let o = 24; o + 16 <= b.length; ) {
    const incl = u32(o + 8);
    const p = b.subarray(o + 16, o + 16 + incl);
    o += 16 + incl;
    const v = p[0]! >> 4;
    const ihl = v === 4 ? (p[0]! & 15) * 4 : 40;
    const proto = v === 4 ? p[9] : p[6];
    if (proto !== 6 || p.length < ihl + 20) continue;
    const ipLen = v === 4 ? p.readUInt16BE(2) : p.readUInt16BE(4) + 40;
    const dport = p.readUInt16BE(ihl + 2);
    if (dport !== 5201) continue;
    const payload = ipLen - ihl - (p[ihl + 12]! >> 4) * 4;
    if (payload <= 0) continue;
    const key = `${v}:${p.readUInt16BE(ihl)}`;
    const seq = p.readUInt32BE(ihl + 4);
    res.dataPackets++;
    res.bytes += payload;
    const want = next.get(key);
    if (want !== undefined) {
      const d = (seq - want) | 0; // signed distance modulo 2^32
      if (d > 0) res.ahead++;
      if (d < 0) res.behind++;
      if (d < 0 && ((seq + payload - want) | 0) <= 0) continue; // wholly old data: no progress
    }
    next.set(key, (seq + payload) >>> 0);
  }
  return res;
}

async function captureWhile<T>(tag: string, run: () => Promise<T>): Promise<{ result: T; order: Order; kernelDrops: number }> {
  const file = path.join(lab.dir, `${tag}.pcap`);
  const cap = spawn('ip', ['netns', 'exec', nsHub, 'tcpdump', '-U', '-n', '-B', '16384', '-s', '96', '-i', 'lark0', '-w', file, 'tcp port 5201'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  cap.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const deadline = Date.now() + 10_000;
  while (!err.includes('listening on') && Date.now() < deadline) await sleep(50);
  const result = await run();
  await sleep(300);
  cap.kill('SIGINT');
  await new Promise((r) => cap.once('exit', r));
  const m = /(\d+) packets? dropped by kernel/.exec(err);
  return { result, order: sequenceOrder(file), kernelDrops: m ? Number(m[1]) : 0 };
}

/** Round-trip times (ms) of `count` pings from `fromNs`. */
function pingTimes(fromNs: string, dst: string, count: number): number[] {
  const r = nsExec(fromNs, `ping -n -c ${count} -i 0.05 ${dst}`, { allowFail: true, timeoutMs: 30_000 });
  return [...r.out.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)]!;
};

before(() => {
  if (skip) return;
  for (const tag of ['on', 'off', 'csum', 'tso'] as const) {
    ns[tag].hub = lab.addNs(`${tag}hub`);
    ns[tag].a = lab.addNs(`${tag}a`);
    lab.link(ns[tag].a, 'ua', '198.18.1.2/24', ns[tag].hub, 'ha', '198.18.1.1/24');
  }
  nsLan = lab.addNs('onlan');
  lab.link(ns.on.hub, 'lanh', '10.68.0.1/24', nsLan, 'lan0', '10.68.0.10/24');
  nsExec(nsLan, 'ip route add default via 10.68.0.1');
  nsExec(ns.on.hub, 'sysctl -qw net.ipv4.ip_forward=1');
});

after(async () => {
  for (const d of running) await d.stop();
  lab.cleanup();
});

test('offloads on: TSO reads are split, writes coalesced, TCP (IPv4 + IPv6) delivered in order', { skip: skip ?? false }, async (t) => {
  const { hub, a } = await startPair({}, 'on');
  try {
    const s0 = statusOf(a).tun_offload;
    assert.equal(s0.vnet_hdr, true, `vnet header in use: ${JSON.stringify(s0)}`);
    assert.ok(s0.offloads.includes('csum') && s0.offloads.includes('tso4'), `offloads: ${s0.offloads.join(',')}`);
    assert.equal(s0.gro, true);
    assert.match(a.cli('status').out, /tun_offload: csum,tso4/);
    for (const dst of ['10.66.0.1', 'fd66::1']) {
      const { result, order, kernelDrops } = await captureWhile(`on-${dst.includes(':') ? 6 : 4}`, () => iperf(dst));
      t.diagnostic(`offload on, ${dst}: ${(result.bytes / 1e6).toFixed(1)} MB in 3 s, iperf3 retransmits ${result.retransmits}; hub TUN saw ${order.dataPackets} data packets, ${order.ahead} ahead / ${order.behind} behind, tcpdump kernel drops ${kernelDrops}`);
      assert.ok(result.bytes > 10e6, `TCP data delivered to ${dst}: ${result.bytes} bytes`);
      assert.ok(order.dataPackets > 0, 'the capture saw the flow');
      // Every hole or step back must be explained by a retransmission or a
      // packet tcpdump itself lost; with neither, data arrives strictly in order.
      assert.ok(order.ahead <= result.retransmits + kernelDrops, `data ahead of sequence without a retransmission: ${JSON.stringify(order)}, retransmits ${result.retransmits}`);
      assert.ok(order.behind <= result.retransmits + kernelDrops, `data behind sequence without a retransmission: ${JSON.stringify(order)}, retransmits ${result.retransmits}`);
    }
    // Coalesced segments the hub's kernel forwards (re-segments) onto a real link.
    const gro0 = statusOf(hub).tun_offload.gro_writes;
    const lan = await iperf('10.68.0.10', '', nsLan);
    const gro1 = statusOf(hub).tun_offload.gro_writes;
    t.diagnostic(`offload on, A → LAN behind the hub: ${(lan.bytes / 1e6).toFixed(1)} MB in 3 s, retransmits ${lan.retransmits}, ${gro1 - gro0} coalesced writes`);
    assert.ok(lan.bytes > 10e6, `TCP through the hub to its LAN: ${lan.bytes} bytes`);
    assert.ok(gro1 > gro0, 'the forwarded flow was coalesced on the hub');
    const sa = statusOf(a);
    const sh = statusOf(hub);
    t.diagnostic(`A: ${JSON.stringify(sa.tun_offload)}`);
    t.diagnostic(`hub: ${JSON.stringify(sh.tun_offload)}`);
    assert.ok(sa.tun_offload.gso_reads > 0 && sa.tun_offload.gso_segments > 2 * sa.tun_offload.gso_reads, 'A read large TCP segments and split them');
    assert.ok(sh.tun_offload.gro_writes > 0 && sh.tun_offload.gro_segments > sh.tun_offload.gro_writes, 'the hub wrote coalesced segments');
    assert.ok(sh.tun_offload.offloads.includes('tso6'), 'IPv6 TSO on this kernel');
    assert.equal(sa.counters.drop_tun_vnet, 0);
    assert.equal(sh.counters.drop_tun_vnet, 0);
  } catch (err) {
    t.diagnostic(`hub log:\n${hub.log()}\nA log:\n${a.log()}`);
    throw err;
  }
});

test('LARKTUN_TUN_OFFLOAD=0: plain TUN path, status says so, TCP still delivered in order', { skip: skip ?? false }, async (t) => {
  const { hub, a } = await startPair({ LARKTUN_TUN_OFFLOAD: '0' }, 'off');
  try {
    const s = statusOf(a).tun_offload;
    assert.equal(s.vnet_hdr, false);
    assert.deepEqual(s.offloads, []);
    assert.equal(s.gro, false);
    assert.match(s.note, /LARKTUN_TUN_OFFLOAD=0/);
    assert.match(a.cli('status').out, /tun_offload: off \(off: LARKTUN_TUN_OFFLOAD=0\)/);
    assert.match(a.log(), /offload=off/);
    const { result, order, kernelDrops } = await captureWhile('off', () => iperf('10.66.0.1'));
    t.diagnostic(`offload off: ${(result.bytes / 1e6).toFixed(1)} MB in 3 s, iperf3 retransmits ${result.retransmits}; ${order.ahead} ahead / ${order.behind} behind`);
    assert.ok(result.bytes > 10e6, `TCP data delivered: ${result.bytes} bytes`);
    assert.ok(order.ahead + order.behind <= 2 * (result.retransmits + kernelDrops), JSON.stringify(order));
    const sa = statusOf(a).tun_offload;
    assert.equal(sa.gso_reads + sa.gro_writes, 0, 'nothing split or coalesced on the plain path');
  } catch (err) {
    t.diagnostic(`hub log:\n${hub.log()}\nA log:\n${a.log()}`);
    throw err;
  }
});

test('LARKTUN_TUN_OFFLOAD=csum: vnet header with checksum offload only, no TSO reads, no coalescing; a bad value is refused', { skip: skip ?? false }, async (t) => {
  nsA = ns.csum.a;
  await assert.rejects(
    lab.daemon(ns.csum.a, 'bad-offload', { role: 'spoke', virtual_subnet: '10.66.0.0/24', local_id: 2, local_tun_ip: '10.66.0.2/24', peers: [{ id: 1, name: 'hub', endpoint: '198.18.1.1:18020', allowed_src: '10.66.0.0/24', psk: PSK }] }, [], { LARKTUN_TUN_OFFLOAD: 'maybe' }),
    /LARKTUN_TUN_OFFLOAD must be 1, tso, csum or 0, got "maybe"/,
  );
  const { hub, a } = await startPair({ LARKTUN_TUN_OFFLOAD: 'csum' }, 'csum');
  const s = statusOf(a).tun_offload;
  assert.equal(s.vnet_hdr, true);
  assert.deepEqual(s.offloads, ['csum']);
  assert.equal(s.gro, false);
  assert.match(s.note, /no TSO/);
  const { result, order, kernelDrops } = await captureWhile('csum', () => iperf('10.66.0.1'));
  t.diagnostic(`csum only: ${(result.bytes / 1e6).toFixed(1)} MB in 3 s, iperf3 retransmits ${result.retransmits}; ${order.ahead} ahead / ${order.behind} behind`);
  // Every segment came with a partial checksum that the reader completed: TCP would stall otherwise.
  assert.ok(result.bytes > 10e6, `TCP data delivered: ${result.bytes} bytes`);
  // As with offloads off: holes and steps back come from retransmissions (iperf3 reads the sender's
  // retransmit count before the last ones of a lossy run: once 538 steps back against 534 counted).
  assert.ok(order.ahead + order.behind <= 2 * (result.retransmits + kernelDrops), JSON.stringify(order));
  const sa = statusOf(a);
  const sh = statusOf(hub);
  assert.equal(sa.tun_offload.gso_reads, 0);
  assert.equal(sh.tun_offload.gro_writes, 0);
  assert.equal(sa.counters.drop_tun_vnet, 0);
  await a.stop();
  await hub.stop();
});

test('idle ping RTT with offloads is no worse than on the plain path', { skip: skip ?? false }, (t) => {
  for (const tag of ['on', 'off'] as const) {
    assert.ok(pairs[tag] && pairs[tag].hub.proc.exitCode === null && pairs[tag].a.proc.exitCode === null, `the ${tag} pair is up`);
  }
  // Interleaved rounds so that load from other processes hits both alike.
  const on: number[] = [];
  const off: number[] = [];
  for (let round = 0; round < 5; round++) {
    on.push(...pingTimes(ns.on.a, '10.66.0.1', 10));
    off.push(...pingTimes(ns.off.a, '10.66.0.1', 10));
  }
  assert.ok(on.length >= 45 && off.length >= 45, `replies: ${on.length} with offloads, ${off.length} plain`);
  const mOn = median(on);
  const mOff = median(off);
  t.diagnostic(`median RTT of ${on.length}/${off.length} pings: offload ${mOn} ms, plain ${mOff} ms`);
  // A margin for a shared 2-core machine: the write side holds TCP data only
  // until the end of the event-loop turn; ICMP is never held.
  assert.ok(mOn <= mOff * 1.5 + 0.3, `offload median RTT ${mOn} ms vs plain ${mOff} ms`);
});

// ---- UDP segmentation offload (USO) -----------------------------------------

interface UdpRun {
  packets: number;
  lost: number;
  lostPercent: number;
}

/** iperf3 UDP A → `dst` for 3 s with `len`-byte payloads at `rate` (0: unlimited); the server's counts. */
async function iperfUdp(dst: string, len: number, rate: string): Promise<UdpRun> {
  const srv = spawn('ip', ['netns', 'exec', nsHub, 'iperf3', '-s', '-1', '-p', '5201'], { stdio: 'ignore' });
  await sleep(500);
  try {
    const r = nsExec(nsA, `iperf3 -c ${dst} -p 5201 -u -l ${len} -b ${rate} -t 3 -J`, { allowFail: true, timeoutMs: 60_000 });
    const j = JSON.parse(r.out) as { end?: { sum: { packets: number; lost_packets: number; lost_percent: number } }; error?: string };
    assert.ok(j.end, `iperf3 UDP to ${dst} failed: ${j.error ?? r.err}`);
    return { packets: j.end.sum.packets, lost: j.end.sum.lost_packets, lostPercent: j.end.sum.lost_percent };
  } finally {
    srv.kill();
    await new Promise((r) => (srv.exitCode !== null ? r(null) : srv.once('exit', r)));
  }
}

// A UDP echo through the tunnel: the hub echoes every datagram back; A sends
// bursts of distinct payloads (same size within a burst, the last one shorter,
// so both directions are coalesced) and checks each echo byte for byte, in order.
const ECHO_SERVER = `
const s = require('node:dgram').createSocket(process.argv[2]);
s.on('message', (m, r) => s.send(m, r.port, r.address));
s.bind(7007, process.argv[3], () => console.log('ready'));
`;
const ECHO_CLIENT = `
const dgram = require('node:dgram');
const [fam, dst] = [process.argv[2], process.argv[3]];
const s = dgram.createSocket(fam);
const bursts = 12, per = 32;
let got = [], bad = [];
function payload(b, i) {
  const size = 100 + b * 97;
  const n = i === per - 1 ? size >> 1 : size;
  const p = Buffer.alloc(n);
  p.writeUInt16BE(b, 0); p.writeUInt16BE(i, 2);
  for (let k = 4; k < n; k++) p[k] = (k * 131 + b * 17 + i * 29) & 255;
  return p;
}
s.on('message', (m) => got.push(m));
s.bind(0, async () => {
  let received = 0, outOfOrder = 0, mismatched = 0, sent = 0;
  for (let b = 0; b < bursts; b++) {
    got = [];
    const want = [];
    for (let i = 0; i < per; i++) { const p = payload(b, i); want.push(p); s.send(p, 7007, dst); sent++; }
    const until = Date.now() + 5000;
    while (got.length < per && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    let last = -1;
    for (const m of got) {
      const i = m.readUInt16BE(2);
      if (m.readUInt16BE(0) !== b || i >= per || !m.equals(want[i])) { mismatched++; continue; }
      if (i <= last) outOfOrder++;
      last = i;
      received++;
    }
  }
  console.log(JSON.stringify({ sent, received, outOfOrder, mismatched }));
  s.close();
});
`;

interface Echo {
  sent: number;
  received: number;
  outOfOrder: number;
  mismatched: number;
}

async function udpEcho(v6: boolean): Promise<Echo> {
  const fam = v6 ? 'udp6' : 'udp4';
  const srvFile = path.join(lab.dir, 'echo-server.cjs');
  const cliFile = path.join(lab.dir, 'echo-client.cjs');
  writeFileSync(srvFile, ECHO_SERVER);
  writeFileSync(cliFile, ECHO_CLIENT);
  const srv = spawn('ip', ['netns', 'exec', nsHub, process.execPath, srvFile, fam, v6 ? 'fd66::1' : '10.66.0.1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  srv.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const deadline = Date.now() + 10_000;
  while (!out.includes('ready') && Date.now() < deadline) await sleep(50);
  try {
    const r = nsExec(nsA, `${process.execPath} ${cliFile} ${fam} ${v6 ? 'fd66::1' : '10.66.0.1'}`, { timeoutMs: 120_000 });
    return JSON.parse(r.out.trim()) as Echo;
  } finally {
    srv.kill();
    await new Promise((r) => (srv.exitCode !== null ? r(null) : srv.once('exit', r)));
  }
}

/** UDP through the pair `tag`: iperf3 64- and 1200-byte at a paced rate (loss bounded), an unlimited 64-byte burst, the echo (IPv4 + IPv6). */
async function udpChecks(t: { diagnostic(s: string): void }, tag: Tag): Promise<{ before: OffloadStatus; after: OffloadStatus }> {
  const { hub } = pairs[tag]!;
  nsA = ns[tag].a;
  nsHub = ns[tag].hub;
  const before = statusOf(hub).tun_offload;
  // Paced rates a loaded 2-core machine carries: loss must stay small (a loose bound).
  for (const [len, rate] of [[64, '8M'], [1200, '80M']] as const) {
    const r = await iperfUdp('10.66.0.1', len, rate);
    t.diagnostic(`${tag}: iperf3 UDP ${len} B at ${rate}: ${r.packets} datagrams, ${r.lost} lost (${r.lostPercent.toFixed(2)} %)`);
    assert.ok(r.packets > 1000, `UDP ${len} B: ${r.packets} datagrams`);
    assert.ok(r.lostPercent < 15, `UDP ${len} B loss ${r.lostPercent} %`);
  }
  const burst = await iperfUdp('10.66.0.1', 64, '0');
  t.diagnostic(`${tag}: iperf3 UDP 64 B unlimited: ${burst.packets - burst.lost} delivered of ${burst.packets} in 3 s (${((burst.packets - burst.lost) / 3 / 1000).toFixed(0)}k/s)`);
  assert.ok(burst.packets - burst.lost > 3000, `unlimited 64 B UDP delivered ${burst.packets - burst.lost}`);
  for (const v6 of [false, true]) {
    const e = await udpEcho(v6);
    t.diagnostic(`${tag}: UDP echo ${v6 ? 'IPv6' : 'IPv4'}: ${JSON.stringify(e)}`);
    assert.equal(e.mismatched, 0, 'no echo differs from what was sent');
    assert.equal(e.outOfOrder, 0, 'echoes in order');
    assert.equal(e.received, e.sent, 'every datagram came back');
  }
  return { before, after: statusOf(hub).tun_offload };
}

test('USO on: UDP (64 and 1200 bytes, IPv4 + IPv6 echo) is coalesced on TUN write and arrives intact and in order', { skip: skip ?? false }, async (t) => {
  const p = pairs.on;
  assert.ok(p, 'the pair with offloads was started by the first test');
  try {
    const s = statusOf(p.a).tun_offload;
    assert.ok(s.offloads.includes('uso4') && s.offloads.includes('uso6'), `USO accepted by this kernel (6.2+): ${JSON.stringify(s)}`);
    assert.equal(s.uso, true);
    assert.match(p.a.cli('status').out, /tun_offload: csum,tso4,tso6,uso4,uso6,gro .*uso_writes=/);
    const { before, after } = await udpChecks(t, 'on');
    t.diagnostic(`hub: ${JSON.stringify(after)}`);
    assert.ok(after.uso_writes > before.uso_writes, 'the hub wrote UDP GSO packets');
    assert.ok(after.uso_segments - before.uso_segments >= 2 * (after.uso_writes - before.uso_writes), 'each of at least two datagrams');
    assert.ok(statusOf(p.a).tun_offload.uso_writes > 0, 'A coalesced the echoes');
    assert.equal(statusOf(p.hub).counters.drop_tun_vnet, 0);
    assert.equal(statusOf(p.a).counters.drop_tun_vnet, 0);
  } catch (err) {
    t.diagnostic(`hub log:\n${p.hub.log()}\nA log:\n${p.a.log()}`);
    throw err;
  }
});

test('LARKTUN_TUN_OFFLOAD=tso: TSO without USO, UDP written one datagram at a time and still delivered intact', { skip: skip ?? false }, async (t) => {
  const { hub, a } = await startPair({ LARKTUN_TUN_OFFLOAD: 'tso' }, 'tso');
  try {
    const s = statusOf(a).tun_offload;
    assert.deepEqual(s.offloads, ['csum', 'tso4', 'tso6']);
    assert.equal(s.gro, true);
    assert.equal(s.uso, false);
    assert.match(s.note, /no USO: LARKTUN_TUN_OFFLOAD=tso/);
    const { after } = await udpChecks(t, 'tso');
    assert.equal(after.uso_writes, 0, 'nothing coalesced without USO');
    assert.equal(statusOf(a).tun_offload.uso_writes, 0);
  } catch (err) {
    t.diagnostic(`hub log:\n${hub.log()}\nA log:\n${a.log()}`);
    throw err;
  } finally {
    await a.stop();
    await hub.stop();
  }
});
