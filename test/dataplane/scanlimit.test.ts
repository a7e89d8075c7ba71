// Junk floods against a relay: datagrams from endpoints no link was learned at
// are tried against every key only within a budget; the rest are dropped untried
// (drop_scan_limited), and traffic from learned endpoints flows on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { ScanLimiter } from '../../src/dataplane/scanlimit.js';
import { RelayEngine, type RelayView } from '../../src/dataplane/relay.js';
import { WireRx, WireTx, RxCode } from '../../src/wire/index.js';
import { udp } from './packets.js';

test('ScanLimiter: global trial budget and per-source scans, refilled over time', () => {
  const l = new ScanLimiter({ trialsPerSec: 1000, scansPerSecPerSource: 5 });
  let t = 0;
  // one source: burst of 10 scans (2 × 5/s), then refused
  let ok = 0;
  for (let i = 0; i < 20; i++) if (l.allow('192.0.2.1', 10, t)) ok++;
  assert.equal(ok, 10);
  // another source is not affected by the first one's budget
  assert.equal(l.allow('192.0.2.2', 10, t), true);
  // the global budget: 1000 trials, 110 spent; 100-key scans from many sources run out
  let many = 0;
  for (let i = 0; i < 50; i++) if (l.allow(`198.51.100.${i}`, 100, t)) many++;
  assert.equal(many, 8, 'floor((1000 - 110) / 100)');
  // a second later both budgets have refilled
  t += 1000;
  assert.equal(l.allow('192.0.2.1', 10, t), true);
  assert.equal(l.allow('198.51.100.200', 100, t), true);
  // a scan larger than the whole budget still runs when the budget is full
  const big = new ScanLimiter({ trialsPerSec: 100, scansPerSecPerSource: 5 });
  assert.equal(big.allow('192.0.2.9', 5000, 0), true);
  assert.equal(big.allow('192.0.2.9', 5000, 10), false, 'then waits for the budget to refill');
  // the source table is bounded
  const small = new ScanLimiter({ trialsPerSec: 1e9, scansPerSecPerSource: 5, maxSources: 100 });
  for (let i = 0; i < 1000; i++) small.allow(`10.0.${i >> 8}.${i & 255}`, 1, 0);
  assert.ok(small.trackedSources <= 100);
});

test('relay under a junk flood: scans are bounded, drops are counted, learned links keep forwarding', async () => {
  const RELAY = 65535;
  const key = (b: number) => Buffer.alloc(32, b);
  const links = Array.from({ length: 50 }, (_, i) => ({
    link_id: i + 1, node_id: 100 + i, node: `n${i + 1}`, psk: key(i + 1).toString('hex'), previous_psk: null, previous_psk_valid_until: null,
    allowed_src: [`100.64.0.${i + 1}/32`], routes: [], exit_link_id: null,
  }));
  const view: RelayView = {
    hash: 'flood',
    relay: { id: 1, name: 'edge', endpoints: ['127.0.0.1:1'], relay_link_id: RELAY, tenant_id: null },
    tenants: [{ tenant: 't', tenant_id: 1, online: [], links, packet_filter: [{ SrcIPs: ['*'], DstPorts: [{ IP: '*', Ports: { First: 0, Last: 65535 } }] }] }],
  };
  // budget: 500 trials/s (10 scans of 50 links), 4 scans/s per source
  const relay = new RelayEngine({ listenPorts: [0], bindHost4: '127.0.0.1', bindHost6: null, scanLimits: { trialsPerSec: 500, scansPerSecPerSource: 4 } });
  await relay.start();
  const port = relay.boundAddresses()[0]!.port;
  relay.setView(view);
  const sock = () => new Promise<dgram.Socket>((r) => { const s = dgram.createSocket('udp4'); s.bind(0, '127.0.0.1', () => r(s)); });
  const a = await sock();
  const b = await sock();
  const junk = await sock();
  const txA = new WireTx({ psk: key(1), from: 1, to: RELAY, obfuscate: true });
  const txB = new WireTx({ psk: key(2), from: 2, to: RELAY, obfuscate: true });
  const rxB = new WireRx({ psk: key(2), from: RELAY, to: 2, obfuscate: true });
  let gotB = 0;
  b.on('message', (m) => {
    const out = Buffer.alloc(2048);
    if (rxB.open(m, m.length, out) === RxCode.Accept && !rxB.keepalive) gotB++;
  });
  const seal = (tx: WireTx, pkt: Buffer, keepalive = false) => {
    const out = Buffer.alloc(2048);
    return out.subarray(0, tx.seal(pkt, 0, pkt.length, out, keepalive));
  };
  const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));
  try {
    // a and b make themselves known (each needs one scan)
    const t0 = Date.now();
    a.send(seal(txA, Buffer.alloc(0), true), port, '127.0.0.1');
    b.send(seal(txB, Buffer.alloc(0), true), port, '127.0.0.1');
    await settle(100);
    assert.equal(relay.counters.keepalive_rx, 2);
    // 2000 junk datagrams from one endpoint, interleaved with a → b traffic
    for (let i = 0; i < 2000; i++) {
      junk.send(randomBytes(100), port, '127.0.0.1');
      if (i % 100 === 0) a.send(seal(txA, udp('100.64.0.1', '100.64.0.2', 9, 8, '')), port, '127.0.0.1');
      if (i % 200 === 0) await settle(5);
    }
    await settle(300);
    const c = relay.counters;
    // Every datagram comes from 127.0.0.1: at most the per-source burst (8) plus
    // its refill (4/s) over the run were scanned, a's and b's first keepalives included.
    const scans = 8 + Math.ceil((4 * (Date.now() - t0)) / 1000);
    assert.ok(c.drop_unknown_peer <= scans - 2, `tried and failed: ${c.drop_unknown_peer} (at most ${scans - 2})`);
    assert.ok(c.drop_scan_limited >= 2000 - (scans - 2), `dropped untried: ${c.drop_scan_limited}`);
    assert.equal(c.drop_scan_limited + c.drop_unknown_peer, 2000, 'every junk datagram counted once');
    assert.equal(gotB, 20, 'learned endpoints are never limited: all 20 packets a → b arrived');
  } finally {
    for (const s of [a, b, junk]) s.close();
    await relay.stop();
  }
});
