// The relay engine on loopback: two tenants whose node addresses overlap, nodes
// simulated with WireTx/WireRx on dgram sockets. Isolation, spoofing, the
// tenant packet filter (stateful), subnet routes, exit nodes, key rotation,
// view swaps that keep sessions, junk, and view validation.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { ACK, SYN, bodyOf, tcp, udp, udp6 } from './packets.js';
import { RelayEngine, RelayViewError, parseRelayView, ECHO_MIN_INTERVAL_MS, type RelayView, type RelayLinkSpec } from '../../src/dataplane/relay.js';
import { WireRx, WireTx, RxCode } from '../../src/wire/index.js';
import type { FilterRule } from '../../src/acl/index.js';

const RELAY = 65535;
// relay-workers.test.ts runs this whole file again with the relay on 2 packet threads.
const WORKERS = Number(process.env.LARKTUN_TEST_RELAY_WORKERS ?? '1');
const keyHex = (b: number): string => Buffer.alloc(32, b).toString('hex');


// ---- simulated nodes ------------------------------------------------------------

class Node {
  readonly sock = dgram.createSocket('udp4');
  tx: WireTx;
  rx: WireRx;
  readonly got: Buffer[] = [];
  /** Keepalives the relay sent this node (its echoes), apart from data in `got`. */
  echoes = 0;
  constructor(
    readonly name: string,
    readonly link: number,
    key: string,
  ) {
    this.tx = new WireTx({ psk: Buffer.from(key, 'hex'), from: link, to: RELAY, obfuscate: true });
    this.rx = new WireRx({ psk: Buffer.from(key, 'hex'), from: RELAY, to: link, obfuscate: true });
    this.sock.on('message', (m) => {
      const out = Buffer.alloc(2048);
      const code = this.rx.open(m, m.length, out);
      if (code === RxCode.Accept && this.rx.keepalive) {
        assert.equal(this.rx.plaintextLen, 0, 'an echo carries nothing');
        this.echoes++;
        return;
      }
      this.got.push(code === RxCode.Accept ? Buffer.from(out.subarray(0, this.rx.plaintextLen)) : Buffer.from(`undecryptable:${code}`));
    });
  }
  rekey(key: string): void {
    this.tx = new WireTx({ psk: Buffer.from(key, 'hex'), from: this.link, to: RELAY, obfuscate: true });
    this.rx = new WireRx({ psk: Buffer.from(key, 'hex'), from: RELAY, to: this.link, obfuscate: true });
  }
  bind(): Promise<void> {
    return new Promise((r) => this.sock.bind(0, '127.0.0.1', () => r()));
  }
  seal(pkt: Buffer, keepalive = false): Buffer {
    const out = Buffer.alloc(2048);
    const n = this.tx.seal(pkt, 0, pkt.length, out, keepalive);
    return Buffer.from(out.subarray(0, n));
  }
  sendRaw(d: Buffer): void {
    this.sock.send(d, relayPort, '127.0.0.1');
  }
  send(pkt: Buffer): Buffer {
    const d = this.seal(pkt);
    this.sendRaw(d);
    return d;
  }
  keepalive(): void {
    this.sendRaw(this.seal(Buffer.alloc(0), true));
  }
  last(): string {
    const p = this.got.at(-1);
    return p ? bodyOf(p) : '(nothing)';
  }
}

// Tenant A (id 1): a1, a2, a3 (router for 10.50.0.0/16), ax (exit node); a1 uses ax.
// Tenant B (id 2): b1, b2, with the SAME overlay addresses as a1, a2; b3 never speaks.
const K = { a1: keyHex(0xa1), a2: keyHex(0xa2), a3: keyHex(0xa3), ax: keyHex(0xaa), b1: keyHex(0xb1), b2: keyHex(0xb2), b3: keyHex(0xb3) };
const a1 = new Node('a1', 1, K.a1);
const a2 = new Node('a2', 2, K.a2);
const a3 = new Node('a3', 3, K.a3);
const ax = new Node('ax', 4, K.ax);
const b1 = new Node('b1', 5, K.b1);
const b2 = new Node('b2', 6, K.b2);
const nodes = [a1, a2, a3, ax, b1, b2];

const ALLOW_ALL: FilterRule[] = [{ SrcIPs: ['*'], DstPorts: [{ IP: '*', Ports: { First: 0, Last: 65535 } }] }];
// Tenant B: b1 may open TCP 80 on b2, nothing else.
const B_FILTER: FilterRule[] = [{ SrcIPs: ['100.64.0.1/32'], DstPorts: [{ IP: '100.64.0.2/32', Ports: { First: 80, Last: 80 } }], IPProto: [6] }];

const L = (link_id: number, node: string, psk: string, allowed: string[], extra: Partial<RelayLinkSpec> = {}): RelayLinkSpec => ({
  link_id,
  node_id: 100 + link_id,
  node,
  psk,
  previous_psk: null,
  previous_psk_valid_until: null,
  allowed_src: allowed,
  routes: [],
  exit_link_id: null,
  ...extra,
});

function baseView(hash = 'v1'): RelayView {
  return {
    hash,
    relay: { id: 1, name: 'edge', endpoints: ['127.0.0.1:1'], relay_link_id: RELAY, tenant_id: null },
    tenants: [
      {
        tenant: 'alpha',
        tenant_id: 1,
        online: [],
        links: [
          L(1, 'a1', K.a1, ['100.64.0.1/32', 'fd7a:115c:a1e0::1/128'], { exit_link_id: 4 }),
          L(2, 'a2', K.a2, ['100.64.0.2/32']),
          L(3, 'a3', K.a3, ['100.64.0.3/32'], { routes: ['10.50.0.0/16'] }),
          L(4, 'ax', K.ax, ['100.64.0.4/32'], { routes: ['0.0.0.0/0', '::/0'] }),
        ],
        packet_filter: ALLOW_ALL,
      },
      {
        tenant: 'beta',
        tenant_id: 2,
        online: [],
        links: [L(5, 'b1', K.b1, ['100.64.0.1/32']), L(6, 'b2', K.b2, ['100.64.0.2/32']), L(7, 'b3', K.b3, ['100.64.0.3/32'])],
        packet_filter: B_FILTER,
      },
    ],
  };
}

let engine: RelayEngine;
/** Just before and just after the first setView (the links' "known since"). */
const viewAt: number[] = [0, 0];
let relayPort = 0;
const logs: string[] = [];
const settle = (ms = 120) => new Promise((r) => setTimeout(r, ms));
const counts = () => nodes.map((n) => n.got.length);
/** Which nodes received something since `before`. */
const receivers = (before: number[]): string[] => nodes.filter((n, i) => n.got.length > before[i]!).map((n) => n.name);
const A = () => engine.namespace(1)!.counters;
const B = () => engine.namespace(2)!.counters;

before(async () => {
  for (const n of nodes) await n.bind();
  engine = new RelayEngine({ listenPorts: [0], bindHost4: '127.0.0.1', bindHost6: null, log: (m) => logs.push(m), workers: WORKERS });
  await engine.start();
  relayPort = engine.boundAddresses()[0]!.port;
  viewAt[0] = Date.now();
  engine.setView(baseView());
  await engine.viewSettled();
  viewAt[1] = Date.now();
});

after(async () => {
  await engine.stop();
  for (const n of nodes) n.sock.close();
});

test('keepalives teach endpoints and are echoed (rate-limited, same key); health report', async () => {
  const before = counts();
  for (const n of nodes) n.keepalive();
  a1.keepalive(); // a second one right behind the first: within ECHO_MIN_INTERVAL_MS
  await settle();
  assert.deepEqual(receivers(before), [], 'no data in answer to keepalives');
  assert.deepEqual(nodes.map((n) => n.echoes), [1, 1, 1, 1, 1, 1], 'each sender gets one echo: a1\'s second keepalive is rate-limited');
  // One after the interval is echoed again.
  await settle(ECHO_MIN_INTERVAL_MS);
  a1.keepalive();
  await settle();
  assert.equal(a1.echoes, 2);
  assert.equal(engine.counters.keepalive_tx, 7);
  assert.equal(A().keepalive_tx, 5);
  assert.equal(B().keepalive_tx, 2);
  assert.equal(engine.counters.keepalive_rx, 8);
  assert.equal(A().keepalive_rx, 6);
  assert.equal(B().keepalive_rx, 2);
  assert.equal(engine.link(1)!.endpointText(), `127.0.0.1:${a1.sock.address().port}`);
  const reportAt = Date.now();
  const h = engine.healthReport(reportAt);
  assert.deepEqual(h.links.map((l) => l.link_id), [1, 2, 3, 4, 5, 6, 7]);
  for (const l of h.links.slice(0, 6)) assert.ok(typeof l.last_seen_ms_ago === 'number' && l.last_seen_ms_ago < 2000, JSON.stringify(l));
  assert.equal(h.links[6]!.last_seen_ms_ago, null, 'b3 never spoke');
  // known since the view was applied (between viewAt[0] and viewAt[1])
  const known = h.links[6]!.known_ms;
  assert.ok(typeof known === 'number' && known >= reportAt - viewAt[1]! && known <= reportAt - viewAt[0]! && known >= 400, `known for ${known} ms`);
  assert.equal(h.links[0]!.known_ms, undefined, 'only never-heard links say how long they were known');
  const s = engine.status();
  const beta = s.tenants.find((t) => t.tenant === 'beta')!;
  assert.equal(beta.links, 3);
  assert.equal(beta.online_links, 2);
  assert.equal(beta.link_list.find((l) => l.node === 'b1')!.endpoint, `127.0.0.1:${b1.sock.address().port}`);
});

test('A1 → A2 is forwarded inside tenant alpha', async () => {
  const before = counts();
  a1.send(udp('100.64.0.1', '100.64.0.2', 4000, 5000, 'a1-to-a2'));
  await settle();
  assert.deepEqual(receivers(before), ['a2']);
  assert.equal(a2.last(), 'a1-to-a2');
  assert.equal(A().relay_packets, 1);
  assert.equal(engine.link(2)!.counters.tx_packets, 2, 'the keepalive echo and the forwarded packet');
});

test('overlapping addresses: B1 → 100.64.0.2 reaches B2 only, never a tenant-alpha link', async () => {
  const before = counts();
  const aRelayed = A().relay_packets;
  b1.send(tcp('100.64.0.1', '100.64.0.2', 40000, 80, SYN));
  await settle();
  assert.deepEqual(receivers(before), ['b2']);
  assert.equal(b2.got.at(-1)!.readUInt16BE(22), 80);
  assert.equal(A().relay_packets, aRelayed, 'alpha saw nothing');
  assert.equal(B().relay_packets, 1);
  // and the other way: A2 answering 100.64.0.1 reaches A1, not B1
  const before2 = counts();
  a2.send(udp('100.64.0.2', '100.64.0.1', 5000, 4000, 'a2-to-a1'));
  await settle();
  assert.deepEqual(receivers(before2), ['a1']);
});

test('a forged inner source is dropped and counted as drop_spoof for tenant beta', async () => {
  const before = counts();
  const aSpoof = A().drop_spoof;
  b1.send(tcp('100.64.0.9', '100.64.0.2', 40001, 80, SYN)); // not b1's address
  b1.send(tcp('100.64.0.2', '100.64.0.2', 40002, 80, SYN)); // b2's address
  await settle();
  assert.deepEqual(receivers(before), []);
  assert.equal(B().drop_spoof, 2);
  assert.equal(A().drop_spoof, aSpoof);
  assert.equal(engine.counters.drop_spoof, 2);
  assert.equal(engine.link(5)!.counters.drops, 2);
});

test('packet filter: a denied flow is dropped; the reply direction of an allowed flow passes', async () => {
  const bf = B().drop_filter;
  let before = counts();
  // b1 → b2:22 is not in the policy
  b1.send(tcp('100.64.0.1', '100.64.0.2', 40010, 22, SYN));
  // b2 → b1:80, b2 starting a flow: not allowed
  b2.send(tcp('100.64.0.2', '100.64.0.1', 40011, 80, SYN));
  await settle();
  assert.deepEqual(receivers(before), []);
  assert.equal(B().drop_filter, bf + 2);
  // b1 → b2:80 opens a flow; b2's SYN-ACK and data back pass as replies
  before = counts();
  b1.send(tcp('100.64.0.1', '100.64.0.2', 40020, 80, SYN, 1));
  await settle();
  assert.deepEqual(receivers(before), ['b2']);
  before = counts();
  b2.send(tcp('100.64.0.2', '100.64.0.1', 80, 40020, SYN | ACK, 5000, 2));
  await settle();
  assert.deepEqual(receivers(before), ['b1']);
  const synack = b1.got.at(-1)!;
  assert.equal(synack[33], SYN | ACK);
  assert.equal(synack.readUInt16BE(20), 80);
  const f = engine.namespace(2)!.filterCounters;
  assert.ok(f.filter_allow_reply >= 1, JSON.stringify(f));
  assert.equal(B().drop_filter, bf + 2);
});

test('subnet route: A1 → 10.50.1.2 goes to the router A3, and A3 may answer from the subnet', async () => {
  let before = counts();
  a1.send(udp('100.64.0.1', '10.50.1.2', 4001, 53, 'to-lan'));
  await settle();
  assert.deepEqual(receivers(before), ['a3']);
  assert.equal(a3.last(), 'to-lan');
  before = counts();
  a3.send(udp('10.50.1.2', '100.64.0.1', 53, 4001, 'from-lan'));
  await settle();
  assert.deepEqual(receivers(before), ['a1']);
  // tenant beta has no such route: no fall-through to alpha's table
  const nr = B().drop_no_route;
  before = counts();
  b1.send(tcp('100.64.0.1', '10.50.1.2', 40030, 80, SYN));
  await settle();
  assert.deepEqual(receivers(before), []);
  assert.equal(B().drop_no_route, nr + 1);
});

test('exit node: A1 (exit_link_id) reaches the internet through AX; A2 without an exit link: drop_no_route', async () => {
  let before = counts();
  a1.send(udp('100.64.0.1', '8.8.8.8', 4002, 53, 'to-internet'));
  await settle();
  assert.deepEqual(receivers(before), ['ax']);
  assert.equal(ax.last(), 'to-internet');
  // the exit node returns the answer from the internet address
  before = counts();
  ax.send(udp('8.8.8.8', '100.64.0.1', 53, 4002, 'from-internet'));
  await settle();
  assert.deepEqual(receivers(before), ['a1']);
  assert.equal(a1.last(), 'from-internet');
  // IPv6 too (ax routes ::/0)
  before = counts();
  a1.send(udp6('fd7a:115c:a1e0::1', '2001:db8::53', 'to-internet-v6'));
  await settle();
  assert.deepEqual(receivers(before), ['ax']);
  assert.equal(ax.last(), 'to-internet-v6');
  const nr = A().drop_no_route;
  before = counts();
  a2.send(udp('100.64.0.2', '8.8.8.8', 4003, 53, 'nowhere'));
  await settle();
  assert.deepEqual(receivers(before), []);
  assert.equal(A().drop_no_route, nr + 1);
});

test('setView: unchanged links keep endpoint, session and counters; a rotated key keeps traffic flowing', async () => {
  const a1Rx = engine.link(1)!.counters.rx_packets;
  const old = a1.send(udp('100.64.0.1', '100.64.0.2', 4004, 5000, 'before-swap'));
  await settle();
  assert.equal(a2.last(), 'before-swap');
  // rotate a2's key: the server sends the new key and keeps the old one valid
  const v = baseView('v2');
  const NEW = keyHex(0x2a);
  const a2spec = v.tenants[0]!.links[1]!;
  a2spec.psk = NEW;
  a2spec.previous_psk = K.a2;
  a2spec.previous_psk_valid_until = new Date(Date.now() + 600_000).toISOString();
  const r = engine.setView(v);
  await engine.viewSettled();
  assert.equal(r.hash, 'v2');
  assert.equal(r.kept, 7);
  assert.equal(engine.link(1)!.endpointText(), `127.0.0.1:${a1.sock.address().port}`, 'endpoint kept');
  assert.equal(engine.link(1)!.counters.rx_packets, a1Rx + 1, 'counters kept');
  assert.equal(engine.link(2)!.endpointText(), `127.0.0.1:${a2.sock.address().port}`, 'rotated link kept its endpoint');
  // session kept: a replay of a datagram accepted before the swap is still refused
  const rp = A().drop_replay;
  a1.sendRaw(old);
  await settle();
  assert.equal(A().drop_replay, rp + 1);
  // a2 has not seen the new key yet: the relay answers with the previous key
  let before = counts();
  a1.send(udp('100.64.0.1', '100.64.0.2', 4004, 5000, 'during-rotation'));
  await settle();
  assert.deepEqual(receivers(before), ['a2']);
  assert.equal(a2.last(), 'during-rotation');
  assert.equal(engine.status().tenants[0]!.link_list[1]!.key, 'previous');
  // a2 still sends with the old key: accepted
  before = counts();
  a2.send(udp('100.64.0.2', '100.64.0.1', 5000, 4004, 'old-key'));
  await settle();
  assert.deepEqual(receivers(before), ['a1']);
  // a2 switches; its first datagram with the new key moves the relay's answers to it
  a2.rekey(NEW);
  a2.keepalive();
  await settle();
  assert.equal(engine.status().tenants[0]!.link_list[1]!.key, 'current');
  before = counts();
  a1.send(udp('100.64.0.1', '100.64.0.2', 4004, 5000, 'new-key'));
  await settle();
  assert.deepEqual(receivers(before), ['a2']);
  assert.equal(a2.last(), 'new-key');
});

test('an expired previous key no longer opens datagrams', async () => {
  const v = baseView('v3');
  const spec = v.tenants[1]!.links[0]!; // b1
  spec.psk = keyHex(0x5b);
  spec.previous_psk = K.b1;
  spec.previous_psk_valid_until = new Date(Date.now() - 1000).toISOString();
  v.tenants[0]!.links[1]!.psk = keyHex(0x2a); // a2 stays on its new key
  engine.setView(v);
  await engine.viewSettled();
  const unknown = engine.counters.drop_unknown_peer;
  const before = counts();
  b1.send(tcp('100.64.0.1', '100.64.0.2', 40040, 80, SYN));
  await settle();
  assert.deepEqual(receivers(before), []);
  assert.equal(engine.counters.drop_unknown_peer, unknown + 1);
  b1.rekey(keyHex(0x5b));
  b1.send(tcp('100.64.0.1', '100.64.0.2', 40041, 80, SYN));
  await settle();
  assert.deepEqual(receivers(before), ['b2']);
});

test('junk and malformed datagrams get no reply and are counted', async () => {
  const c = engine.counters;
  const mal = c.drop_malformed;
  const unk = c.drop_unknown_peer;
  const junk = dgram.createSocket('udp4');
  let replies = 0;
  junk.on('message', () => replies++);
  await new Promise<void>((r) => junk.bind(0, '127.0.0.1', () => r()));
  const send = (b: Buffer) => junk.send(b, relayPort, '127.0.0.1');
  send(Buffer.alloc(0));
  send(Buffer.alloc(10, 1));
  send(Buffer.alloc(1600, 2));
  for (let i = 0; i < 5; i++) send(Buffer.from(Array.from({ length: 100 + i }, (_, k) => (k * 37 + i) & 0xff)));
  // a valid-looking datagram sealed with a key nobody has
  const stranger = new WireTx({ psk: Buffer.alloc(32, 0x77), from: 1, to: RELAY, obfuscate: true });
  const out = Buffer.alloc(2048);
  const pkt = udp('100.64.0.1', '100.64.0.2', 1, 2);
  send(Buffer.from(out.subarray(0, stranger.seal(pkt, 0, pkt.length, out))));
  await settle(200);
  assert.equal(replies, 0);
  assert.equal(engine.counters.drop_malformed, mal + 3);
  assert.equal(engine.counters.drop_unknown_peer, unk + 6);
  junk.close();
});

test('a bad view is refused as a whole; the old one stays in force', async () => {
  const hash = engine.view!.hash;
  const bad = baseView('bad');
  bad.tenants[0]!.links[0]!.psk = 'nothex';
  bad.tenants[1]!.links[0]!.allowed_src = ['100.64.0.300/32'];
  assert.throws(() => engine.setView(bad), (e: unknown) => e instanceof RelayViewError && /psk/.test(e.message) && /allowed_src/.test(e.message));
  const cross = baseView('cross');
  cross.tenants[1]!.links[0]!.exit_link_id = 4; // beta node naming alpha's exit node
  assert.throws(() => engine.setView(cross), /belongs to another tenant/);
  const dup = baseView('dup');
  dup.tenants[1]!.links[0]!.link_id = 1;
  assert.throws(() => engine.setView(dup), /appears twice/);
  assert.throws(() => engine.setView({ hash: 'x' } as unknown as RelayView), RelayViewError);
  const dedicated = baseView('ded');
  dedicated.relay.tenant_id = 2;
  assert.throws(() => engine.setView(dedicated), /dedicated/);
  assert.equal(engine.view!.hash, hash);
  const before = counts();
  a1.send(udp('100.64.0.1', '100.64.0.2', 4005, 5000, 'still-forwarding'));
  await settle();
  assert.deepEqual(receivers(before), ['a2']);
  // an exit link that is not in the view is only a warning
  const w = baseView('warn');
  w.tenants[0]!.links[1]!.exit_link_id = 999;
  const p = parseRelayView(w);
  assert.equal(p.warnings.length, 1);
  assert.equal(p.view.tenants[0]!.links[1]!.exit_link_id, null);
});

test('a removed link stops forwarding; status reports per-tenant counters', async () => {
  const v = baseView('v4');
  v.tenants[0]!.links[1]!.psk = keyHex(0x2a);
  v.tenants[1]!.links[0]!.psk = keyHex(0x5b);
  v.tenants[1]!.links = v.tenants[1]!.links.filter((l) => l.node !== 'b2');
  engine.setView(v);
  await engine.viewSettled();
  const before = counts();
  b1.send(tcp('100.64.0.1', '100.64.0.2', 40050, 80, SYN));
  await settle();
  assert.deepEqual(receivers(before), []);
  const s = engine.status();
  assert.equal(s.view_hash, 'v4');
  const beta = s.tenants.find((t) => t.tenant === 'beta')!;
  assert.equal(beta.links, 2);
  assert.ok(beta.counters['drop_no_route']! >= 2);
  assert.ok(beta.counters['drop_spoof'] === 2);
  assert.ok(!('tun_rx_packets' in s.counters), 'relay counters only');
  JSON.stringify(s);
});

test('packet threads: datagrams from many source ports are spread over every thread, and forwarding works from each', { skip: WORKERS < 2 ? 'one packet thread (relay-workers.test.ts runs this with two)' : false }, async () => {
  const socks = await Promise.all(
    Array.from({ length: 24 }, async () => {
      const s = dgram.createSocket('udp4');
      await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
      return s;
    }),
  );
  try {
    // Tenant alpha is as the last test left it (a2 on its rotated key).
    a1.keepalive();
    a2.keepalive();
    await settle();
    const ws = engine.workersStatus();
    assert.equal(ws.configured, WORKERS);
    assert.equal(ws.running, WORKERS, `every packet thread runs (${ws.reason ?? ''})`);
    const before = ws.threads.map((t) => t.udp_rx_packets);
    // a1 roams over 24 source ports (the kernel hashes each to a thread); each
    // datagram is a fresh one to a2, so every one must be forwarded.
    const got0 = a2.got.length;
    for (const s of socks) {
      s.send(a1.seal(udp('100.64.0.1', '100.64.0.2', 1000, 2000, 'spread')), relayPort, '127.0.0.1');
      await settle(5);
    }
    await settle(150);
    assert.equal(a2.got.length - got0, socks.length, `every datagram forwarded whichever thread took it: ${JSON.stringify(engine.status().tenants[0])}`);
    const after = engine.workersStatus().threads.map((t) => t.udp_rx_packets);
    after.forEach((n, i) => assert.ok(n > before[i]!, `thread ${i} received some of them (before ${before[i]}, after ${n})`));
    // The I/O counts include every thread's datagrams (the workers' published on their timer).
    const io = engine.ioStatus();
    const authenticated = after.reduce((a, b) => a + b, 0);
    assert.ok(io.rx_datagrams >= authenticated, `rx_datagrams ${io.rx_datagrams} covers the ${authenticated} authenticated on all threads`);
    // A replay of one of them, from yet another port, is refused wherever it lands.
    const replay = a1.seal(udp('100.64.0.1', '100.64.0.2', 1000, 2000, 'once'));
    const drops0 = A().drop_replay;
    for (const s of socks.slice(0, 8)) s.send(replay, relayPort, '127.0.0.1');
    await settle(150);
    assert.equal(a2.got.filter((p) => bodyOf(p) === 'once').length, 1, 'delivered once');
    assert.equal(A().drop_replay - drops0, 7, 'the other seven are replays');
  } finally {
    for (const s of socks) s.close();
    a1.keepalive(); // back to its own socket
    await settle();
  }
});

test('packet threads: a worker that dies leaves the relay forwarding on the rest, and is counted', { skip: WORKERS < 2 ? 'one packet thread (relay-workers.test.ts runs this with two)' : false }, async () => {
  await engine.killWorkerForTest(0);
  await settle(100);
  const ws = engine.workersStatus();
  assert.equal(ws.failures, 1);
  assert.equal(ws.running, WORKERS - 1);
  assert.ok(logs.some((l) => /relay worker 1 stopped/.test(l)), logs.join('\n'));
  // Every sender now lands on a live socket (the kernel dropped the dead one from the group).
  const socks = await Promise.all(
    Array.from({ length: 8 }, async () => {
      const s = dgram.createSocket('udp4');
      await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
      return s;
    }),
  );
  try {
    const got0 = a2.got.length;
    for (const s of socks) s.send(a1.seal(udp('100.64.0.1', '100.64.0.2', 1000, 2000, 'after')), relayPort, '127.0.0.1');
    await settle(200);
    assert.equal(a2.got.length - got0, socks.length);
  } finally {
    for (const s of socks) s.close();
  }
});
