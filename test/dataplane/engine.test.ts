// The packet engine on loopback, without a TUN: simulated spokes speak the wire
// protocol directly, so every receive-path decision and its counter is checked.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { parsePrefix } from '../../src/net/addr.js';
import { ipv4 } from './packets.js';
import { Engine } from '../../src/dataplane/engine.js';
import { WireRx, WireTx, RxCode } from '../../src/wire/index.js';

const P = (s: string) => parsePrefix(s);
const psk = (b: number): Buffer => Buffer.alloc(32, b);
const HUB = 1;

class Spoke {
  readonly sock = dgram.createSocket('udp4');
  tx: WireTx;
  readonly rx: WireRx;
  readonly got: Buffer[] = [];
  constructor(readonly id: number, key: Buffer, readonly hubPort: () => number) {
    this.tx = new WireTx({ psk: key, from: id, to: HUB, obfuscate: true });
    this.rx = new WireRx({ psk: key, from: HUB, to: id, obfuscate: true });
    this.sock.on('message', (m) => {
      const out = Buffer.alloc(2048);
      if (this.rx.open(m, m.length, out) === RxCode.Accept && !this.rx.keepalive) this.got.push(Buffer.from(out.subarray(0, this.rx.plaintextLen)));
    });
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
    this.sock.send(d, this.hubPort(), '127.0.0.1');
  }
  send(pkt: Buffer): Buffer {
    const d = this.seal(pkt);
    this.sendRaw(d);
    return d;
  }
}

const tunWrites: Buffer[] = [];
let engine: Engine;
let port = 0;
const a = new Spoke(2, psk(0xa2), () => port);
const b = new Spoke(3, psk(0xb3), () => port);
const settle = () => new Promise((r) => setTimeout(r, 120));

before(async () => {
  await a.bind();
  await b.bind();
  engine = new Engine({
    localId: HUB,
    obfuscate: true,
    peers: [
      { id: 2, name: 'a', endpoint: null, allowedSrc: [P('10.9.0.2/32')], psk: psk(0xa2) },
      { id: 3, name: 'b', endpoint: null, allowedSrc: [P('10.9.0.3/32'), P('10.10.0.0/24')], psk: psk(0xb3) },
    ],
    rules: [
      { src: P('0.0.0.0/0'), dst: P('10.9.0.2/32'), action: 'forward', target: 2 },
      { src: P('0.0.0.0/0'), dst: P('10.9.0.3/32'), action: 'forward', target: 3 },
      { src: P('0.0.0.0/0'), dst: P('10.10.0.0/24'), action: 'forward', target: 3 },
      { src: P('0.0.0.0/0'), dst: P('10.9.0.1/32'), action: 'forward', target: 0 },
    ],
    keepaliveSecs: 0,
    listenPorts: [0],
    bindHost4: '127.0.0.1',
    bindHost6: null,
    tun: { write: (buf, off, len) => (tunWrites.push(Buffer.from(buf.subarray(off, off + len))), true) },
  });
  await engine.start();
  port = engine.boundAddresses()[0]!.port;
});

after(async () => {
  await engine.stop();
  a.sock.close();
  b.sock.close();
});

test('keepalives mark a peer online and teach its endpoint; no reply is sent', async () => {
  a.sendRaw(a.seal(Buffer.alloc(0), true));
  b.sendRaw(b.seal(Buffer.alloc(0), true));
  await settle();
  const c = engine.counters;
  assert.equal(c.keepalive_rx, 2);
  assert.ok(engine.peers.every((p) => p.online(Date.now())));
  assert.equal(engine.peers[0]!.endpointText(), `127.0.0.1:${a.sock.address().port}`);
  assert.equal(a.got.length, 0);
});

test('relay: A to B and to the LAN behind B; B to the hub itself goes to the TUN', async () => {
  a.send(ipv4('10.9.0.2', '10.9.0.3', 'to-b'));
  a.send(ipv4('10.9.0.2', '10.10.0.7', 'to-lan'));
  b.send(ipv4('10.10.0.7', '10.9.0.1', 'to-hub'));
  await settle();
  assert.deepEqual(b.got.map((p) => p.subarray(20).toString()), ['to-b', 'to-lan']);
  assert.equal(tunWrites.at(-1)!.subarray(20).toString(), 'to-hub');
  assert.equal(engine.counters.relay_packets, 2);
  assert.equal(engine.counters.tun_tx_packets, 1);
});

test('drops, each counted once under its reason', async () => {
  const c = engine.counters;
  const before = c.toJSON();
  // spoof: A claims B's LAN as source
  a.send(ipv4('10.10.0.9', '10.9.0.3'));
  // no reflect: B sends to its own prefix through the hub
  b.send(ipv4('10.9.0.3', '10.10.0.5'));
  // no route
  a.send(ipv4('10.9.0.2', '192.0.2.1'));
  // replay: the same datagram twice (first one is relayed)
  const d = a.send(ipv4('10.9.0.2', '10.9.0.3', 'once'));
  await settle();
  a.sendRaw(d);
  // unknown peer: a key nobody has
  const stranger = new WireTx({ psk: psk(0x77), from: 2, to: HUB, obfuscate: true });
  const out = Buffer.alloc(2048);
  a.sendRaw(Buffer.from(out.subarray(0, stranger.seal(ipv4('10.9.0.2', '10.9.0.3'), 0, 25, out))));
  // malformed: too short and too long
  a.sendRaw(Buffer.alloc(10));
  a.sendRaw(Buffer.alloc(1600));
  // old epoch: a sender restarted with an older session epoch than the one adopted
  const old = new WireTx({ psk: psk(0xa2), from: 2, to: HUB, obfuscate: true, epoch: a.tx.epoch - 1_000_000_000n });
  a.sendRaw(Buffer.from(out.subarray(0, old.seal(ipv4('10.9.0.2', '10.9.0.3'), 0, 25, out))));
  await settle();
  const after = c.toJSON();
  const delta = Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - before[k as keyof typeof before]]).filter(([, v]) => v !== 0));
  assert.equal(delta.drop_spoof, 1);
  assert.equal(delta.drop_no_reflect, 1);
  assert.equal(delta.drop_no_route, 1);
  assert.equal(delta.drop_replay, 1);
  assert.equal(delta.drop_unknown_peer, 1);
  assert.equal(delta.drop_malformed, 2);
  assert.equal(delta.drop_old_epoch, 1);
  assert.equal(delta.relay_packets, 1, 'only the first copy of the replayed datagram was relayed');
  assert.equal(b.got.at(-1)!.subarray(20).toString(), 'once');
});

test('a newer epoch is adopted after it authenticates (peer restart)', async () => {
  a.tx = new WireTx({ psk: psk(0xa2), from: 2, to: HUB, obfuscate: true, epoch: a.tx.epoch + 5_000_000_000n });
  a.send(ipv4('10.9.0.2', '10.9.0.3', 'new-session'));
  await settle();
  assert.equal(b.got.at(-1)!.subarray(20).toString(), 'new-session');
});

test('a drop rule swapped in atomically blocks, removing it restores', async () => {
  const base = engine.rules;
  engine.setRules([...base, { src: P('0.0.0.0/0'), dst: P('10.10.0.7/32'), action: 'drop', target: 0 }]);
  const n = b.got.length;
  const drops = engine.counters.drop_policy;
  a.send(ipv4('10.9.0.2', '10.10.0.7', 'blocked'));
  await settle();
  assert.equal(b.got.length, n);
  assert.equal(engine.counters.drop_policy, drops + 1);
  engine.setRules(base);
  a.send(ipv4('10.9.0.2', '10.10.0.7', 'open'));
  await settle();
  assert.equal(b.got.at(-1)!.subarray(20).toString(), 'open');
});

test('a spoke that moves to a new port is followed', async () => {
  const moved = dgram.createSocket('udp4');
  await new Promise<void>((r) => moved.bind(0, '127.0.0.1', () => r()));
  const d = b.seal(Buffer.alloc(0), true);
  moved.send(d, port, '127.0.0.1');
  await settle();
  assert.equal(engine.peers[1]!.endpointText(), `127.0.0.1:${moved.address().port}`);
  assert.ok(engine.counters.endpoint_changes >= 1);
  moved.close();
});
