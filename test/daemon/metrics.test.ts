// larktund --metrics in every mode: the registries built against real objects
// (a standalone Engine, a ManagedNode started from a saved state and map, a
// relay from runRelay with a saved view), scraped over HTTP from the shared
// server, with traffic that moves the counters; and the daemon process itself
// (run from source through tsx): metrics in managed and relay mode, a bad
// --metrics value (exit 2) and a port in use (exit 1), without a stack trace.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Registry } from 'prom-client';
import { COUNTER_NAMES } from '../../src/dataplane/counters.js';
import { Engine } from '../../src/dataplane/engine.js';
import { FILTER_COUNTER_HELP } from '../../src/dataplane/filter.js';
import { MetricsListenError, buildStandaloneRegistry, startMetricsServer, type MetricsServer } from '../../src/dataplane/metrics.js';
import { RELAY_COUNTER_NAMES, type RelayView } from '../../src/dataplane/relay.js';
import { buildManagedRegistry, buildRelayRegistry, type ManagedMetricsSource } from '../../src/daemon/metrics.js';
import { ManagedNode } from '../../src/daemon/managed.js';
import { DEFAULT_PREFS } from '../../src/daemon/prefs.js';
import { RELAY_VIEW_FILE, runRelay, type RelayHandle } from '../../src/daemon/relaymode.js';
import { parsePrefix } from '../../src/net/addr.js';
import { RxCode, WireRx, WireTx } from '../../src/wire/index.js';
import { udp } from '../dataplane/packets.js';

const MAIN_TS = fileURLToPath(new URL('../../src/daemon/main.ts', import.meta.url));
const RELAY_ID = 65535;
const dir = mkdtempSync(path.join(tmpdir(), 'larktun-metrics-test-'));
const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
  rmSync(dir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const keyHex = (b: number): string => Buffer.alloc(32, b).toString('hex');

// ---- scraping and reading the exposition format ---------------------------------

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parseMetrics(body: string): Sample[] {
  const out: Sample[] = [];
  for (const line of body.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

/** The value of the one sample with exactly these labels (undefined: absent). */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const want = JSON.stringify(Object.entries(labels).sort());
  const hits = samples.filter((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want);
  assert.ok(hits.length <= 1, `${name} ${want} appears ${hits.length} times`);
  return hits[0]?.value;
}

async function scrape(port: number): Promise<Sample[]> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  return parseMetrics(await res.text());
}

async function serve(reg: Registry): Promise<MetricsServer> {
  const m = await startMetricsServer('127.0.0.1', 0, reg);
  cleanups.push(() => m.close());
  return m;
}

async function udpSocket(): Promise<dgram.Socket> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise<void>((r) => s.close(() => r())));
  return s;
}

async function waitFor<T>(what: string, fn: () => T | Promise<T>, ms = 5000): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(30);
  }
}

function seal(tx: WireTx, pkt: Buffer, keepalive: boolean): Buffer {
  const out = Buffer.alloc(2048);
  return Buffer.from(out.subarray(0, tx.seal(pkt, 0, pkt.length, out, keepalive)));
}

// ---- the shared server ------------------------------------------------------------

test('the metrics server: /metrics only, port 0 reports the real port, a port in use is a MetricsListenError', async () => {
  const reg = new Registry();
  const m = await serve(reg);
  assert.ok(m.port > 0);
  const res = await fetch(`http://127.0.0.1:${m.port}/`);
  assert.equal(res.status, 404);
  assert.match(await res.text(), /metrics are at \/metrics/);
  assert.equal((await fetch(`http://127.0.0.1:${m.port}/metrics`)).status, 200);
  await assert.rejects(startMetricsServer('127.0.0.1', m.port, reg), (err: Error) => {
    assert.ok(err instanceof MetricsListenError);
    assert.equal(err.message, `cannot serve metrics on 127.0.0.1:${m.port}: the port is already in use (another process listens there; choose another port)`);
    return true;
  });
  await assert.rejects(startMetricsServer('192.0.2.1', 0, reg), /cannot serve metrics on 192\.0\.2\.1:0: this machine has no such address/);
});

// ---- standalone ---------------------------------------------------------------------

test('standalone: the registry keeps its metric names; counters follow the engine', async () => {
  const engine = new Engine({
    localId: 1,
    obfuscate: false,
    peers: [{ id: 2, name: 'a', endpoint: null, allowedSrc: [parsePrefix('10.66.0.2/32')], psk: Buffer.from(keyHex(2), 'hex') }],
    rules: [],
    keepaliveSecs: 0,
    listenPorts: [0],
    bindHost4: '127.0.0.1',
    bindHost6: null,
    tun: null,
  });
  await engine.start();
  cleanups.push(() => engine.stop());
  const m = await serve(buildStandaloneRegistry({ engine }));
  const names = new Set((await scrape(m.port)).map((s) => s.name));
  assert.deepEqual(
    [...names].sort(),
    [...COUNTER_NAMES.map((n) => `larktun_${n}_total`), 'larktun_peer_online', 'larktun_forwarding_rules', 'larktun_packet_workers'].sort(),
    'peer_last_seen_age_seconds is absent until the peer is heard',
  );
  const junk = await udpSocket();
  junk.send(Buffer.alloc(5, 1), engine.listenPorts()[0]!, '127.0.0.1');
  const s = await waitFor('drop_malformed', async () => {
    const s = await scrape(m.port);
    return value(s, 'larktun_drop_malformed_total') === 1 ? s : null;
  });
  assert.equal(value(s, 'larktun_peer_online', { id: '2', name: 'a' }), 0);
  assert.equal(value(s, 'larktun_forwarding_rules'), 0);
  assert.equal(value(s, 'larktun_packet_workers'), 1);
});

// ---- managed ------------------------------------------------------------------------

const NODE_PSK = keyHex(0x5a);

function nodeMap(relayPort: number): Record<string, unknown> {
  return {
    version: 7,
    hash: 'h7',
    tenant: 'acme',
    self: { id: 1, name: 'laptop', dns_name: 'laptop.acme.lt', addresses: ['100.64.0.1/32'], tags: [], user: 'a@x', approved_routes: [], primary_routes: [] },
    peers: [
      { id: 2, name: 'router', node_key: 'k2', addresses: ['100.64.0.2/32'], allowed_ips: ['100.64.0.2/32', '192.168.6.0/24'], endpoints: [], tags: ['tag:router'], user: null, exit_node: false },
      { id: 3, name: 'exit-hk', node_key: 'k3', addresses: ['100.64.0.3/32'], allowed_ips: ['100.64.0.3/32', '0.0.0.0/0', '::/0'], endpoints: [], tags: ['tag:exit'], user: null, exit_node: true },
      { id: 4, name: 'desk', node_key: 'k4', addresses: ['100.64.0.4/32'], allowed_ips: ['100.64.0.4/32'], endpoints: [], tags: [], user: 'a@x', exit_node: false },
    ],
    online: [2, 3],
    packet_filter: [{ SrcIPs: ['100.64.0.2'], DstPorts: [{ IP: '100.64.0.1', Ports: { First: 22, Last: 22 } }] }],
    ssh_policy: null,
    exit_node: 3,
    relays: [{ id: 7, name: 'r1', endpoints: [`127.0.0.1:${relayPort}`], link_id: 12, relay_link_id: RELAY_ID, psk: NODE_PSK, obfuscate: true }],
    dns: { base: 'acme.lt' },
  };
}

function managedNode(stateDir: string): ManagedNode {
  return new ManagedNode({ stateDir, tunName: 'lark0', port: 0, bindHost4: '127.0.0.1', bindHost6: null, tun: false, os: null, log: () => {}, keepaliveSecs: 1 });
}

test('managed: a logged-out node exports its state, zero engine counters, and no map gauges', async () => {
  const node = managedNode(path.join(dir, 'managed-new'));
  const m = await serve(buildManagedRegistry(node));
  const s = await scrape(m.port);
  assert.equal(value(s, 'larktun_node_state', { state: 'NeedsLogin' }), 1);
  for (const st of ['Stopped', 'Starting', 'Running']) assert.equal(value(s, 'larktun_node_state', { state: st }), 0, st);
  for (const n of COUNTER_NAMES) assert.equal(value(s, `larktun_${n}_total`), 0, n);
  for (const n of Object.keys(FILTER_COUNTER_HELP)) assert.equal(value(s, `larktun_${n}_total`), 0, n);
  assert.equal(value(s, 'larktun_node_server_connected'), 0);
  assert.equal(value(s, 'larktun_node_peers'), 0);
  assert.equal(value(s, 'larktun_node_relay_online'), 0);
  assert.equal(value(s, 'larktun_node_exit_node_in_use'), 0);
  for (const absent of ['larktun_forwarding_rules', 'larktun_node_map_version', 'larktun_node_relay_last_seen_age_seconds', 'larktun_node_relay_rtt_seconds', 'larktun_packet_workers']) {
    assert.equal(s.filter((x) => x.name === absent).length, 0, `${absent} is absent`);
  }
});

test('managed: a running node (saved state and map) exports engine, map and relay metrics that follow its traffic', async () => {
  const relay = await udpSocket(); // stands in for the relay
  const relayPort = relay.address().port;
  const fromNode: Buffer[] = [];
  relay.on('message', (msg) => fromNode.push(msg));
  const stateDir = path.join(dir, 'managed-running');
  mkdirSync(stateDir, { recursive: true });
  const prefs = { ...DEFAULT_PREFS, loginServer: 'http://127.0.0.1:1', acceptRoutes: true, exitNode: 'exit-hk' };
  writeFileSync(
    path.join(stateDir, 'state.json'),
    JSON.stringify({ schema: 1, prefs, node_key: `nodekey:${'00'.repeat(32)}`, token: 'tok', node: { id: 1, name: 'laptop', tenant: 'acme' }, want_running: true, last_event_id: null }),
  );
  writeFileSync(path.join(stateDir, 'netmap.json'), JSON.stringify(nodeMap(relayPort)));
  const node = managedNode(stateDir);
  cleanups.push(() => node.shutdown());
  await node.init();
  const engine = node.liveEngine;
  assert.ok(engine, 'the saved map started the data plane');
  const m = await serve(buildManagedRegistry(node));

  // The node keepalives its relay from the start.
  await waitFor('a keepalive from the node', () => fromNode.length > 0);
  let s = await scrape(m.port);
  assert.equal(value(s, 'larktun_node_state', { state: 'Running' }), 1);
  assert.equal(value(s, 'larktun_node_state', { state: 'NeedsLogin' }), 0);
  assert.equal(value(s, 'larktun_node_server_connected'), 0, 'no control server at 127.0.0.1:1');
  assert.equal(value(s, 'larktun_node_map_version'), 7);
  assert.equal(value(s, 'larktun_node_peers'), 3);
  assert.equal(value(s, 'larktun_node_peers_online'), 2);
  assert.equal(value(s, 'larktun_node_routes_in_use'), 1, '192.168.6.0/24 with --accept-routes');
  assert.equal(value(s, 'larktun_node_exit_node_in_use'), 1);
  assert.equal(value(s, 'larktun_node_map_apply_failed'), 0);
  assert.equal(value(s, 'larktun_forwarding_rules'), engine.rules.length);
  assert.ok(engine.rules.length > 0);
  assert.ok(value(s, 'larktun_keepalive_tx_total')! >= 1);
  assert.equal(value(s, 'larktun_udp_rx_packets_total'), 0);
  assert.equal(value(s, 'larktun_node_relay_online'), 0, 'the relay was never heard');
  assert.equal(value(s, 'larktun_node_relay_last_seen_age_seconds'), undefined);

  // The relay answers (a keepalive with the link key) and junk arrives.
  const nodePort = engine.listenPorts()[0]!;
  const tx = new WireTx({ psk: Buffer.from(NODE_PSK, 'hex'), from: RELAY_ID, to: 12, obfuscate: true });
  relay.send(seal(tx, Buffer.alloc(0), true), nodePort, '127.0.0.1');
  relay.send(Buffer.alloc(7, 0x42), nodePort, '127.0.0.1');
  s = await waitFor('the relay heard', async () => {
    const s = await scrape(m.port);
    return value(s, 'larktun_keepalive_rx_total') === 1 && value(s, 'larktun_drop_malformed_total') === 1 ? s : null;
  });
  assert.equal(value(s, 'larktun_udp_rx_packets_total'), 1);
  assert.equal(value(s, 'larktun_udp_rx_packets_total'), engine.counters.udp_rx_packets);
  assert.equal(value(s, 'larktun_node_relay_online'), 1);
  assert.equal(value(s, 'larktun_packet_workers'), 1);
  const age = value(s, 'larktun_node_relay_last_seen_age_seconds');
  assert.ok(age !== undefined && age >= 0 && age < 5, `age ${age}`);
  // The answer timed the node's keepalive: status().relay.rtt_ms, in seconds.
  const rtt = (node.status()['relay'] as { rtt_ms: number | null }).rtt_ms;
  assert.equal(typeof rtt, 'number');
  assert.equal(value(s, 'larktun_node_relay_rtt_seconds'), rtt! / 1000);

  // down: the data plane goes, engine counters read 0, the state says Stopped.
  await node.down();
  s = await scrape(m.port);
  assert.equal(value(s, 'larktun_node_state', { state: 'Stopped' }), 1);
  assert.equal(value(s, 'larktun_keepalive_rx_total'), 0);
  assert.equal(value(s, 'larktun_forwarding_rules'), undefined);
});

test('managed: filter counters, relay RTT and odd status shapes (a stand-in node)', async () => {
  let status: Record<string, unknown> = {
    state: 'Running',
    server: { connected: true },
    map_version: 12,
    relay: { online: true, last_seen_age_seconds: 0.4, rtt_ms: 12.5 },
    peers: [{ online: true }, { online: false }],
    routes_in_use: [],
    exit_node: { wanted: 'x', in_use: null, problem: 'not offered' },
    apply_error: 'cannot open TUN device lark0',
  };
  const fake: ManagedMetricsSource = {
    liveEngine: null,
    filterCounters: { filter_allow_rule: 3, filter_drop_no_rule: 9 },
    status: () => status,
  };
  const m = await serve(buildManagedRegistry(fake));
  let s = await scrape(m.port);
  assert.equal(value(s, 'larktun_filter_allow_rule_total'), 3);
  assert.equal(value(s, 'larktun_filter_drop_no_rule_total'), 9);
  assert.equal(value(s, 'larktun_filter_allow_reply_total'), 0);
  assert.equal(value(s, 'larktun_node_relay_rtt_seconds'), 0.0125);
  assert.equal(value(s, 'larktun_node_relay_last_seen_age_seconds'), 0.4);
  assert.equal(value(s, 'larktun_node_server_connected'), 1);
  assert.equal(value(s, 'larktun_node_map_version'), 12);
  assert.equal(value(s, 'larktun_node_peers_online'), 1);
  assert.equal(value(s, 'larktun_node_exit_node_in_use'), 0, 'wanted but not in use');
  assert.equal(value(s, 'larktun_node_map_apply_failed'), 1);

  status = { ...status, state: 'Weird', relay: { online: false, last_seen_age_seconds: null, rtt_ms: null }, peers: 'nonsense', server: null };
  s = await scrape(m.port);
  assert.equal(value(s, 'larktun_node_relay_rtt_seconds'), undefined, 'rtt_ms null: absent');
  assert.equal(value(s, 'larktun_node_relay_last_seen_age_seconds'), undefined);
  assert.equal(value(s, 'larktun_node_state', { state: 'Weird' }), 1);
  assert.equal(value(s, 'larktun_node_state', { state: 'Running' }), 0);
  assert.equal(value(s, 'larktun_node_peers'), 0);
  assert.equal(value(s, 'larktun_node_server_connected'), 0);
  status = { ...status, relay: { online: true } };
  s = await scrape(m.port);
  assert.equal(value(s, 'larktun_node_relay_rtt_seconds'), undefined, 'rtt_ms missing: absent');
  assert.equal(value(s, 'larktun_node_relay_online'), 1);
});

// ---- relay ------------------------------------------------------------------------

const RK = { a1: keyHex(0xa1), a2: keyHex(0xa2), b1: keyHex(0xb1) };
const ALLOW_ALL = [{ SrcIPs: ['*'], DstPorts: [{ IP: '*', Ports: { First: 0, Last: 65535 } }] }];
const link = (link_id: number, node: string, psk: string, allowed: string[]) => ({
  link_id,
  node_id: 100 + link_id,
  node,
  psk,
  previous_psk: null,
  previous_psk_valid_until: null,
  allowed_src: allowed,
  routes: [],
  exit_link_id: null,
});
const relayView: RelayView = {
  hash: 'v1',
  relay: { id: 1, name: 'edge', endpoints: ['127.0.0.1:1'], relay_link_id: RELAY_ID, tenant_id: null },
  tenants: [
    { tenant: 'alpha', tenant_id: 1, online: [], links: [link(1, 'a1', RK.a1, ['100.64.0.1/32']), link(2, 'a2', RK.a2, ['100.64.0.2/32'])], packet_filter: ALLOW_ALL },
    // beta uses the same addresses; b1 never speaks.
    { tenant: 'beta', tenant_id: 2, online: [], links: [link(3, 'b1', RK.b1, ['100.64.0.1/32'])], packet_filter: [] },
  ],
};

test('relay: global and per-tenant counters, links online, and the control side', async () => {
  const stateDir = path.join(dir, 'relay-state');
  mkdirSync(stateDir, { recursive: true });
  writeFileSync(path.join(stateDir, RELAY_VIEW_FILE), JSON.stringify(relayView));
  const handle: RelayHandle = await runRelay({
    server: 'http://127.0.0.1:1',
    token: 'lkrelay_test',
    listenPorts: [0],
    stateDir,
    bindHost4: '127.0.0.1',
    bindHost6: null,
    healthIntervalMs: 60_000,
    log: () => {},
  });
  cleanups.push(() => handle.stop());
  const relayPort = handle.engine.listenPorts()[0]!;
  const m = await serve(buildRelayRegistry(handle));
  const alpha = { tenant: 'alpha', tenant_id: '1' };
  const beta = { tenant: 'beta', tenant_id: '2' };

  let s = await scrape(m.port);
  const threads = handle.engine.workersStatus();
  assert.equal(value(s, 'larktun_relay_packet_threads_configured'), threads.configured);
  assert.equal(value(s, 'larktun_relay_packet_threads'), threads.running);
  assert.equal(value(s, 'larktun_relay_packet_thread_failures'), 0);
  for (let i = 0; i < threads.running; i++) assert.equal(value(s, 'larktun_relay_thread_udp_rx_packets', { thread: String(i) }), 0, `thread ${i}`);
  const io = handle.engine.ioStatus();
  assert.equal(value(s, 'larktun_udp_io_info', { path: io.path, gro: String(io.gro), gso: String(io.gso) }), 1);
  assert.equal(value(s, 'larktun_relay_tenant_links', alpha), 2);
  assert.equal(value(s, 'larktun_relay_tenant_links', beta), 1);
  assert.equal(value(s, 'larktun_relay_tenant_links_online', alpha), 0);
  assert.equal(value(s, 'larktun_relay_view_source', { source: 'saved' }), 1);
  assert.equal(value(s, 'larktun_relay_view_source', { source: 'server' }), 0);
  const applied = value(s, 'larktun_relay_view_applied_timestamp_seconds')!;
  assert.ok(Math.abs(applied - Date.now() / 1000) < 60, `applied at ${applied}`);
  assert.equal(value(s, 'larktun_relay_server_connected'), 0);
  assert.equal(value(s, 'larktun_relay_control_state', { state: 'open' }), 0);
  assert.equal(s.filter((x) => x.name === 'larktun_relay_control_state' && x.value === 1).length, 1, 'exactly one control state');
  assert.equal(value(s, 'larktun_relay_views_rejected_total'), 0);
  assert.equal(value(s, 'larktun_relay_health_reports_total', { result: 'sent' }), 0);
  // Only the counters a relay moves; no node metrics.
  assert.equal(value(s, 'larktun_tun_rx_packets_total'), undefined);
  assert.equal(s.filter((x) => x.name.startsWith('larktun_node_') || x.name.startsWith('larktun_peer_')).length, 0);
  for (const n of RELAY_COUNTER_NAMES) {
    assert.equal(value(s, `larktun_${n}_total`), 0, n);
    assert.equal(value(s, `larktun_relay_tenant_${n}_total`, beta), 0, n);
  }

  // a1 and a2 say hello; a1 sends to a2 (forwarded) and a spoofed packet (dropped); junk.
  const nodes = await Promise.all([udpSocket(), udpSocket()]);
  const tx = [RK.a1, RK.a2].map((k, i) => new WireTx({ psk: Buffer.from(k, 'hex'), from: i + 1, to: RELAY_ID, obfuscate: true }));
  const rx2 = new WireRx({ psk: Buffer.from(RK.a2, 'hex'), from: RELAY_ID, to: 2, obfuscate: true });
  const got: string[] = [];
  nodes[1]!.on('message', (msg) => {
    const out = Buffer.alloc(2048);
    if (rx2.open(msg, msg.length, out) === RxCode.Accept && !rx2.keepalive) got.push(out.subarray(28, rx2.plaintextLen).toString());
  });
  nodes.forEach((n, i) => n.send(seal(tx[i]!, Buffer.alloc(0), true), relayPort, '127.0.0.1'));
  await waitFor('keepalives', () => handle.engine.counters.keepalive_rx === 2);
  nodes[0]!.send(seal(tx[0]!, udp('100.64.0.1', '100.64.0.2', 40000, 9999, 'hi a2'), false), relayPort, '127.0.0.1');
  nodes[0]!.send(seal(tx[0]!, udp('100.64.0.9', '100.64.0.2', 40000, 9999, 'forged'), false), relayPort, '127.0.0.1');
  nodes[0]!.send(Buffer.alloc(3), relayPort, '127.0.0.1');
  await waitFor('a2 got the packet', () => got.length === 1);
  assert.deepEqual(got, ['hi a2']);

  s = await waitFor('counters', async () => {
    const s = await scrape(m.port);
    return value(s, 'larktun_drop_malformed_total') === 1 && value(s, 'larktun_relay_tenant_drop_spoof_total', alpha) === 1 ? s : null;
  });
  assert.equal(value(s, 'larktun_keepalive_rx_total'), 2);
  assert.equal(value(s, 'larktun_relay_packets_total'), 1);
  assert.equal(value(s, 'larktun_udp_rx_packets_total'), 4);
  // Sent: the forwarded packet and one echo per keepalive.
  assert.equal(value(s, 'larktun_keepalive_tx_total'), 2);
  assert.equal(value(s, 'larktun_relay_tenant_keepalive_tx_total', alpha), 2);
  assert.equal(value(s, 'larktun_udp_tx_packets_total'), 3);
  assert.equal(value(s, 'larktun_relay_tenant_udp_tx_packets_total', alpha), 3);
  assert.equal(value(s, 'larktun_drop_spoof_total'), 1);
  assert.equal(value(s, 'larktun_relay_tenant_keepalive_rx_total', alpha), 2);
  assert.equal(value(s, 'larktun_relay_tenant_relay_packets_total', alpha), 1);
  assert.equal(value(s, 'larktun_relay_tenant_udp_tx_bytes_total', alpha), handle.engine.counters.udp_tx_bytes);
  assert.equal(value(s, 'larktun_relay_tenant_drop_malformed_total', alpha), 0, 'junk belongs to no tenant');
  assert.equal(value(s, 'larktun_relay_tenant_filter_allow_rule_total', alpha), 1);
  assert.equal(value(s, 'larktun_relay_tenant_filter_flows', alpha), 1);
  assert.equal(value(s, 'larktun_relay_tenant_links_online', alpha), 2);
  assert.equal(value(s, 'larktun_relay_tenant_links_online', beta), 0);
  for (const n of RELAY_COUNTER_NAMES) assert.equal(value(s, `larktun_relay_tenant_${n}_total`, beta), 0, `beta ${n}`);
});

test('relay: an engine without the control side exports only the engine metrics', async () => {
  const stateDir = path.join(dir, 'relay-bare');
  const handle = await runRelay({ server: 'http://127.0.0.1:1', token: 't', listenPorts: [0], stateDir, bindHost4: '127.0.0.1', bindHost6: null, healthIntervalMs: 60_000, log: () => {} });
  cleanups.push(() => handle.stop());
  const m = await serve(buildRelayRegistry({ engine: handle.engine }));
  const s = await scrape(m.port);
  assert.equal(value(s, 'larktun_udp_rx_packets_total'), 0);
  const threadMetric = (n: string): boolean => n.startsWith('larktun_relay_packet_thread') || n === 'larktun_relay_thread_udp_rx_packets';
  assert.equal(s.filter((x) => x.name.startsWith('larktun_relay_') && !x.name.startsWith('larktun_relay_packets') && !threadMetric(x.name)).length, 0, 'no view: no tenants, no control metrics');
  assert.equal(value(s, 'larktun_relay_packet_threads'), handle.engine.workersStatus().running, 'the engine part: its packet threads');
});

// ---- the daemon process -------------------------------------------------------------

const ENTRY = path.join(dir, 'larktund-entry.mts');
writeFileSync(ENTRY, `import { main } from ${JSON.stringify(pathToFileURL(MAIN_TS).href)};\nawait main(process.argv);\n`);

interface Proc {
  p: ChildProcess;
  err: () => string;
  exit: Promise<number | null>;
}

function larktund(name: string, args: string[]): Proc {
  const home = path.join(dir, name);
  mkdirSync(home, { recursive: true });
  const env = { ...process.env, LARKTUN_SOCK: path.join(home, 'larktun.sock'), LARKTUN_STATE_DIR: path.join(home, 'state') };
  const p = spawn(process.execPath, ['--import', 'tsx', ENTRY, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  cleanups.push(() => {
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  });
  let err = '';
  p.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exit = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
  return { p, err: () => err, exit };
}

async function freeTcpPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function occupiedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise<void>((r) => s.close(() => r())));
  return (s.address() as net.AddressInfo).port;
}

const RELAY_ARGS = ['--relay', '--server', 'http://127.0.0.1:1', '--relay-token', 'lkrelay_x', '--listen', '0'];

test('larktund serves --metrics in managed and relay mode and stops cleanly on SIGTERM', async () => {
  for (const [mode, args, check] of [
    ['managed', ['--no-tun', '--port', '0'], (s: Sample[]) => assert.equal(value(s, 'larktun_node_state', { state: 'NeedsLogin' }), 1)],
    ['relay', RELAY_ARGS, (s: Sample[]) => assert.equal(value(s, 'larktun_relay_view_source', { source: 'none' }), 1)],
  ] as const) {
    const port = await freeTcpPort();
    const d = larktund(`proc-${mode}`, [...args, '--metrics', `127.0.0.1:${port}`]);
    await waitFor(`${mode}: metrics up`, () => d.err().includes(`Prometheus metrics at http://127.0.0.1:${port}/metrics`) || d.p.exitCode !== null, 20_000);
    assert.equal(d.p.exitCode, null, d.err());
    check(await scrape(port));
    d.p.kill('SIGTERM');
    assert.equal(await d.exit, 0, d.err());
  }
});

test('larktund: a bad --metrics value is exit 2 in every mode, before anything starts', async () => {
  const cfg = path.join(dir, 'hub.json');
  writeFileSync(cfg, JSON.stringify({ role: 'hub', virtual_subnet: '10.66.0.0/24', local_id: 1, listen_port: 18099, peers: [{ id: 2, name: 'a', allowed_src: '10.66.0.2/32', psk: keyHex(2) }] }));
  for (const [mode, args] of [
    ['managed', ['--no-tun']],
    ['relay', RELAY_ARGS],
    ['standalone', ['--config', cfg, '--no-tun']],
  ] as const) {
    for (const bad of ['9810', 'localhost', '127.0.0.1:99999', '::1:9810', '']) {
      const d = larktund(`bad-${mode}`, [...args, '--metrics', bad]);
      assert.equal(await d.exit, 2, `${mode} ${bad}: ${d.err()}`);
      assert.equal(d.err(), `larktund: --metrics must be HOST:PORT, e.g. 127.0.0.1:9810, got "${bad}"\n`, mode);
    }
  }
});

test('larktund: a --metrics port in use is exit 1 with the reason, no stack trace, in every mode', async () => {
  const port = await occupiedPort();
  // The standalone daemon binds its UDP port first; give it a free one.
  const udp = dgram.createSocket('udp4');
  await new Promise<void>((r) => udp.bind(0, '127.0.0.1', () => r()));
  const udpPort = udp.address().port;
  await new Promise<void>((r) => udp.close(() => r()));
  const cfg = path.join(dir, 'hub2.json');
  writeFileSync(cfg, JSON.stringify({ role: 'hub', virtual_subnet: '10.66.0.0/24', local_id: 1, listen_port: udpPort, peers: [{ id: 2, name: 'a', allowed_src: '10.66.0.2/32', psk: keyHex(2) }] }));
  for (const [mode, args] of [
    ['managed', ['--no-tun']],
    ['relay', RELAY_ARGS],
    ['standalone', ['--config', cfg, '--no-tun']],
  ] as const) {
    const d = larktund(`inuse-${mode}`, [...args, '--metrics', `127.0.0.1:${port}`]);
    assert.equal(await d.exit, 1, `${mode}: ${d.err()}`);
    assert.match(d.err(), new RegExp(`^larktund: --metrics: cannot serve metrics on 127\\.0\\.0\\.1:${port}: the port is already in use`, 'm'), mode);
    assert.doesNotMatch(d.err(), /\n\s+at /, `${mode}: no stack trace`);
  }
});
