// Latency to the relay: a Larktun relay echoes each keepalive (rate-limited), a
// node engine times the echo; node engines never answer keepalives, so two
// nodes (or a node and a subnetra peer) never ping-pong.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { RelayEngine, type RelayView } from '../../src/dataplane/relay.js';
import { Engine } from '../../src/dataplane/engine.js';

const RELAY = 65535;
const key = (b: number): Buffer => Buffer.alloc(32, b);
const ECHO_GAP = 250; // > ECHO_MIN_INTERVAL_MS
const settle = (ms = 150) => new Promise((r) => setTimeout(r, ms));

let relay: RelayEngine;
let relayPort = 0;
let node: Engine;
let plain: Engine;

function view(): RelayView {
  const link = (id: number, b: number, ip: string) => ({
    link_id: id, node_id: 100 + id, node: `n${id}`, psk: key(b).toString('hex'), previous_psk: null, previous_psk_valid_until: null,
    allowed_src: [ip], routes: [], exit_link_id: null,
  });
  return {
    hash: 'rtt',
    relay: { id: 1, name: 'edge', endpoints: ['127.0.0.1:1'], relay_link_id: RELAY, tenant_id: null },
    tenants: [{ tenant: 't', tenant_id: 1, online: [], links: [link(1, 0x11, '100.64.0.1/32')], packet_filter: [] }],
  };
}

before(async () => {
  relay = new RelayEngine({ listenPorts: [0], bindHost4: '127.0.0.1', bindHost6: null, log: () => {} });
  await relay.start();
  relayPort = relay.boundAddresses()[0]!.port;
  relay.setView(view());
  node = new Engine({
    localId: 1, obfuscate: true, keepaliveSecs: 0, listenPorts: [0], bindHost4: '127.0.0.1', bindHost6: null, tun: null, rules: [],
    peers: [{ id: RELAY, localId: 1, name: 'edge', endpoint: { host: '127.0.0.1', port: relayPort }, allowedSrc: [], psk: key(0x11), roam: false }],
  });
  await node.start();
  // A second node engine playing "the far end" for `node`-style peers: it never echoes.
  plain = new Engine({
    localId: 7, obfuscate: true, keepaliveSecs: 0, listenPorts: [0], bindHost4: '127.0.0.1', bindHost6: null, tun: null, rules: [],
    peers: [{ id: 8, name: 'other', endpoint: null, allowedSrc: [], psk: key(0x22) }],
  });
  await plain.start();
});

after(async () => {
  await node.stop();
  await plain.stop();
  await relay.stop();
});

test('the node times keepalive echoes from the relay', async () => {
  const p = node.peer(RELAY)!;
  assert.equal(p.rttSmoothMs, -1, 'unmeasured before any echo');
  for (let i = 0; i < 4; i++) {
    node.sendKeepalives();
    await settle(ECHO_GAP);
  }
  assert.equal(relay.counters.keepalive_rx, 4);
  assert.equal(relay.counters.keepalive_tx, 4, 'each keepalive (≥ 200 ms apart) echoed');
  assert.equal(node.counters.keepalive_rx, 4, 'the node got the echoes');
  assert.equal(node.counters.keepalive_tx, 4, 'and did not answer them');
  assert.ok(p.rttLastMs >= 0 && p.rttLastMs < 100, `loopback rtt ${p.rttLastMs} ms`);
  assert.ok(p.rttSmoothMs >= 0 && p.rttSmoothMs < 100, `smoothed ${p.rttSmoothMs} ms`);
  assert.ok(Date.now() - p.rttAtMs < 1000);
  assert.equal(p.probeAt, 0, 'the echo closed the probe');
});

test('a node engine never echoes: keepalives between two nodes stay one-way', async () => {
  const other = new Engine({
    localId: 8, obfuscate: true, keepaliveSecs: 0, listenPorts: [0], bindHost4: '127.0.0.1', bindHost6: null, tun: null, rules: [],
    peers: [{ id: 7, name: 'plain', endpoint: { host: '127.0.0.1', port: plain.boundAddresses()[0]!.port }, allowedSrc: [], psk: key(0x22) }],
  });
  await other.start();
  try {
    other.sendKeepalives();
    await settle();
    other.sendKeepalives();
    await settle();
    assert.equal(plain.counters.keepalive_rx, 2, 'the keepalives arrived');
    assert.equal(plain.counters.keepalive_tx, 0, 'and were not answered');
    assert.equal(other.counters.keepalive_rx, 0);
    assert.equal(other.peer(7)!.rttSmoothMs, -1, 'so no RTT without a relay');
  } finally {
    await other.stop();
  }
});
