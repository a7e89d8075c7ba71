// ACL compiler benchmark: a tenant of 10 000 nodes, 500 users, 50 tags,
// 1 000 rules and 200 subnet routes. Measures the full compile of every
// per-node result, then incremental updates (one node joins; one route is
// approved or withdrawn), each including the results of every changed node.
// Prints one JSON line.
//
// Method: the full compile runs FULL_RUNS times; the first run is reported
// as cold, the median of the others as the figure. The incremental steps run
// on one warm IncrementalCompiler (all results materialised, a few unmeasured
// warm-up steps first); each figure is the median of STEPS steps, with the
// 90th percentile alongside. A step is the change, changedNodes() (which
// settles the candidates' results to report exactly the nodes whose results
// differ) and reading every part of every changed node's result. Garbage
// collection is not suppressed: its pauses fall into whichever step triggers
// them; *_gc_ms is the sum of those pauses per step (median). CPU time (this
// process, all threads) is reported next to wall time, with the load average,
// since other work on the machine inflates wall time. A result's peers is a
// PeerList: a read-only view of an ascending id vector shared by the nodes
// with the same rule memberships, minus the node itself; reading a result
// reads every peer id (a loop over the shared vector skipping the node's own
// slot), not just the length (*_peer_ids_read counts them; when peers was a
// plain array per node, the bench read only its length, so *_results_ms of
// earlier runs did not include this read). *_new_peer_ids counts the ids a step wrote into
// peer vectors (a vector is counted once however many results share it; one
// that grew in place, as a longer view of the same buffer, counts only its
// new ids): the peer storage the step wrote.
import { loadavg } from 'node:os';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { formatIPv4 } from '../src/net/addr.js';
import {
  type AclNetwork,
  type AclNode,
  IncrementalCompiler,
  type NodeResult,
  compileNetwork,
  parsePolicy,
} from '../src/acl/index.js';

const NODES = 10_000;
const USERS = 500;
const TAGS = 50;
const GROUPS = 50;
const RULES = 1_000;
const ROUTES = 200;
const FULL_RUNS = 5;
const WARMUP = 3;
const STEPS = 15;

let seed = 42;
const rnd = (n: number): number => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  return seed % n;
};

function ip4(i: number): string {
  return formatIPv4(0x64400000 + i); // 100.64.0.0 + i
}

function makeNode(i: number): AclNode {
  const tagged = i < 2_000;
  const routeIdx = i < ROUTES ? i : -1;
  const route = routeIdx >= 0 ? [`10.${Math.floor(routeIdx / 2)}.0.0/16`] : [];
  return {
    id: i + 1,
    name: `node-${i + 1}`,
    user: tagged ? null : `u${i % USERS}@example.com`,
    tags: tagged ? [`tag:t${i % TAGS}`] : [],
    ipv4: ip4(i + 1),
    ipv6: `fd7a:115c:a1e0::${(i + 1).toString(16)}`,
    announced_routes: route,
    approved_routes: route,
    online: true,
  };
}

function makeNetwork(): AclNetwork {
  const users = Array.from({ length: USERS }, (_, i) => ({ id: i + 1, name: `u${i}`, email: `u${i}@example.com` }));
  const nodes = Array.from({ length: NODES }, (_, i) => makeNode(i));
  // The route-approval step approves a route announced but not yet approved.
  nodes[NODES - 1]!.announced_routes = ['172.20.0.0/24'];
  return { users, nodes };
}

function makePolicy(): string {
  const groups: Record<string, string[]> = {};
  for (let g = 0; g < GROUPS; g++) {
    groups[`group:g${g}`] = Array.from({ length: USERS / GROUPS }, (_, k) => `u${g + k * GROUPS}@example.com`);
  }
  const tagOwners: Record<string, string[]> = {};
  for (let t = 0; t < TAGS; t++) tagOwners[`tag:t${t}`] = [`group:g${t % GROUPS}`];
  const ports = ['22', '80', '443', '5432', '8000-8100', '80,443', '*'];
  const acls: unknown[] = [];
  const grants: unknown[] = [];
  for (let i = 0; i < RULES; i++) {
    const r = i % 20;
    if (r < 12) {
      acls.push({ action: 'accept', src: [`group:g${rnd(GROUPS)}`], dst: [`tag:t${rnd(TAGS)}:${ports[rnd(ports.length)]}`] });
    } else if (r < 16) {
      acls.push({ action: 'accept', src: [`tag:t${rnd(TAGS)}`], dst: [`tag:t${rnd(TAGS)}:*`] });
    } else if (r < 18) {
      acls.push({ action: 'accept', src: [`group:g${rnd(GROUPS)}`], dst: [`10.${rnd(ROUTES / 2)}.0.0/16:*`] });
    } else if (r < 19) {
      grants.push({ src: [`u${rnd(USERS)}@example.com`], dst: [`tag:t${rnd(TAGS)}`], ip: ['tcp:443', 'udp:53'] });
    } else if (i % 200 === 19) {
      acls.push({ action: 'accept', src: ['*'], dst: [`tag:t${rnd(TAGS)}:80`] });
    } else if (i % 100 === 39) {
      acls.push({ action: 'accept', src: ['autogroup:member'], dst: ['autogroup:self:*'] });
    } else {
      acls.push({ action: 'accept', src: ['autogroup:member'], dst: [`tag:t${rnd(TAGS)}:53`], proto: 'udp' });
    }
  }
  const ssh = [
    { action: 'accept', src: ['autogroup:member'], dst: ['autogroup:self'], users: ['autogroup:nonroot'] },
    { action: 'accept', src: ['group:g1'], dst: ['tag:t1'], users: ['root', 'ubuntu'] },
  ];
  return JSON.stringify({ groups, tagOwners, acls, grants, ssh, autoApprovers: { routes: { '10.0.0.0/8': ['tag:t0'] } } }, null, 2);
}

// ---- a large hosts policy (issue 11) ---------------------------------------
// 20 000 `hosts` entries (single addresses inside a router's 1 024 approved
// /24 routes, no two adjacent) and one ACL from 10 000 of them to the other 10 000, in a tenant
// of a router and a few connected nodes: about 750 KB of policy text.
const BIG_HOSTS = 20_000;
const BIG_ROUTES = 1_024;
const BIG_RUNS = 3;

function bigHostsCase(): { text: string; net: AclNetwork } {
  const route = (k: number): string => `10.${k >> 8}.${k & 255}.0/24`;
  const hosts: Record<string, string> = {};
  for (let i = 0; i < BIG_HOSTS; i++) {
    const k = i % BIG_ROUTES;
    hosts[`host-${i}`] = `10.${k >> 8}.${k & 255}.${1 + 2 * Math.floor(i / BIG_ROUTES)}`;
  }
  const names = Object.keys(hosts);
  const half = BIG_HOSTS / 2;
  const acls = [{ action: 'accept', src: names.slice(0, half), dst: names.slice(half).map((h) => `${h}:443`) }];
  const routes = Array.from({ length: BIG_ROUTES }, (_, k) => route(k));
  const nodes: AclNode[] = [
    { id: 1, name: 'router', user: null, tags: ['tag:router'], ipv4: '100.64.0.1', ipv6: 'fd7a:115c:a1e0::1', announced_routes: routes, approved_routes: routes, online: true },
    ...Array.from({ length: 8 }, (_, i): AclNode => ({
      id: i + 2,
      name: `laptop-${i + 2}`,
      user: 'u0@example.com',
      tags: [],
      ipv4: `100.64.0.${i + 2}`,
      ipv6: `fd7a:115c:a1e0::${(i + 2).toString(16)}`,
      announced_routes: [],
      approved_routes: [],
      online: true,
    })),
  ];
  const text = JSON.stringify({ tagOwners: { 'tag:router': ['u0@example.com'] }, hosts, acls });
  return { text, net: { users: [{ id: 1, name: 'u0', email: 'u0@example.com' }], nodes } };
}

const ms = (t: number): number => Math.round(t * 100) / 100;
const cpuMs = (u: NodeJS.CpuUsage): number => (u.user + u.system) / 1000;
const median = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
const p90 = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(a.length * 0.9))]!;

/**
 * Reads every part of a result, so nothing can stay unmaterialised. Peers are
 * a PeerList (a view of a vector shared between nodes, minus the node's own
 * id): every peer id is read (the shared vector before and after the node's
 * own slot), not just the length, so an indirect or lazy representation pays
 * its full cost.
 */
function touch(r: NodeResult): number {
  let x = 0;
  const { base, cut } = r.peers;
  const n = base.length;
  const end = cut < n ? cut : n;
  for (let i = 0; i < end; i++) x ^= base[i]!;
  for (let i = cut + 1; i < n; i++) x ^= base[i]!;
  peerIdsRead += r.peers.length;
  return (x & 1) + r.packetFilter.length + r.peers.length + r.peerAllowedRoutes.size + r.primaryRoutes.length + r.sshPolicy.rules.length;
}
let peerIdsRead = 0;

const net = makeNetwork();
const parsed = parsePolicy(makePolicy(), 'bench.hujson');
if (!parsed.ok) throw new Error(parsed.errors.join('\n'));
const policy = parsed.policy;
const ruleCount = policy.acls.length + policy.grants.length;

// ---- the 20 000-host policy: parse, then full compiles --------------------------
const big = bigHostsCase();
const bigParsed = parsePolicy(big.text, 'big.hujson');
if (!bigParsed.ok) throw new Error(bigParsed.errors.join('\n'));
const bigRuns: number[] = [];
const bigCpu: number[] = [];
for (let k = 0; k < BIG_RUNS; k++) {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  compileNetwork(bigParsed.policy, big.net);
  bigRuns.push(performance.now() - t0);
  bigCpu.push(cpuMs(process.cpuUsage(c0)));
}

// ---- full compile of every per-node result -----------------------------------
const fullRuns: number[] = [];
const fullCpu: number[] = [];
let filterRules = 0;
let peerLinks = 0;
for (let k = 0; k < FULL_RUNS; k++) {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  let full: ReturnType<typeof compileNetwork> | null = compileNetwork(policy, net);
  fullRuns.push(performance.now() - t0);
  fullCpu.push(cpuMs(process.cpuUsage(c0)));
  if (k === 0) {
    for (const r of full.nodes.values()) {
      filterRules += r.packetFilter.length;
      peerLinks += r.peers.length;
    }
  }
  full = null;
}

// ---- incremental ---------------------------------------------------------------
// Garbage-collection pauses, summed per step.
let gcMs = 0;
const gcObserver = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) gcMs += e.duration;
});
gcObserver.observe({ entryTypes: ['gc'] });

const inc = new IncrementalCompiler(policy, net);
/** Per peer-vector buffer: how many of its ids the caller has seen (vectors grow in place, as longer views of one buffer). */
const seenPeers = new WeakMap<ArrayBufferLike, number>();
/** The ids in a result's peer vector not seen before (and marks them seen). */
function newIds(r: NodeResult): number {
  const b = r.peers.base;
  const seen = seenPeers.get(b.buffer) ?? 0;
  if (b.length <= seen) return 0;
  seenPeers.set(b.buffer, b.length);
  return b.length - seen;
}
for (const id of inc.changedNodes()) {
  const r = inc.result(id)!;
  touch(r);
  newIds(r);
}

interface Step {
  total: number;
  cpu: number;
  /** GC pauses during the step (the observer reports them at the next turn, so they are collected after it). */
  gc: number;
  /** Ids the step wrote into peer vectors (lists are views of shared vectors, which may grow in place). */
  newPeerIds: number;
  /** The change and changedNodes(). */
  update: number;
  /** Reading the changed nodes' results (every peer id included). */
  results: number;
  peerIdsRead: number;
  changed: number;
}

async function step(fn: () => void): Promise<Step> {
  await new Promise((r) => setImmediate(r));
  const gc0 = gcMs;
  const read0 = peerIdsRead;
  const c0 = process.cpuUsage();
  const s = performance.now();
  fn();
  const changed = inc.changedNodes();
  const mid = performance.now();
  let sink = 0;
  const results: NodeResult[] = [];
  for (const id of changed) {
    const r = inc.result(id)!;
    sink += touch(r);
    results.push(r);
  }
  const end = performance.now();
  const cpu = cpuMs(process.cpuUsage(c0));
  if (sink < 0) throw new Error('unreachable');
  let newPeerIds = 0;
  for (const r of results) {
    newPeerIds += newIds(r);
  }
  // Let the GC observer report the pauses of this step.
  await new Promise((r) => setTimeout(r, 0));
  return { total: end - s, cpu, gc: gcMs - gc0, newPeerIds, update: mid - s, results: end - mid, peerIdsRead: peerIdsRead - read0, changed: changed.length };
}

let joined = 0;
function join(): Promise<Step> {
  // A new untagged node of a different user each time, without routes.
  const node = makeNode(NODES + joined);
  node.tags = [];
  node.user = `u${(7 + joined) % USERS}@example.com`;
  node.announced_routes = [];
  node.approved_routes = [];
  joined++;
  return step(() => inc.nodeJoined(node));
}

let approvals = 0;
function approve(): Promise<Step> {
  // node-10000 announces 172.20.0.0/24: approve it, then withdraw the approval, alternately.
  const routes = approvals++ % 2 === 0 ? ['172.20.0.0/24'] : [];
  return step(() => inc.routesApproved(NODES, routes));
}

for (let k = 0; k < WARMUP; k++) {
  await join();
  await approve();
  await approve();
}
const joins: Step[] = [];
const approves: Step[] = [];
for (let k = 0; k < STEPS; k++) {
  joins.push(await join());
  approves.push(await approve());
}
gcObserver.disconnect();

const heap = process.memoryUsage().heapUsed;
const pick = (a: Step[], f: (s: Step) => number): number => ms(median(a.map(f)));

process.stdout.write(
  `${JSON.stringify({
    bench: 'acl',
    nodes: NODES,
    users: USERS,
    tags: TAGS,
    rules: ruleCount,
    subnet_routes: ROUTES,
    full_compile_ms: ms(median(fullRuns.slice(1))),
    full_compile_cpu_ms: ms(median(fullCpu.slice(1))),
    full_compile_cold_ms: ms(fullRuns[0]!),
    full_compile_target_ms: 2000,
    filter_rules_total: filterRules,
    peer_links_total: peerLinks,
    node_join_ms: pick(joins, (s) => s.total),
    node_join_p90_ms: ms(p90(joins.map((s) => s.total))),
    node_join_cpu_ms: pick(joins, (s) => s.cpu),
    node_join_gc_ms: pick(joins, (s) => s.gc),
    node_join_update_ms: pick(joins, (s) => s.update),
    node_join_results_ms: pick(joins, (s) => s.results),
    node_join_changed_nodes: median(joins.map((s) => s.changed)),
    node_join_peer_ids_read: median(joins.map((s) => s.peerIdsRead)),
    node_join_new_peer_ids: median(joins.map((s) => s.newPeerIds)),
    route_approve_ms: pick(approves, (s) => s.total),
    route_approve_p90_ms: ms(p90(approves.map((s) => s.total))),
    route_approve_cpu_ms: pick(approves, (s) => s.cpu),
    route_approve_gc_ms: pick(approves, (s) => s.gc),
    route_approve_update_ms: pick(approves, (s) => s.update),
    route_approve_results_ms: pick(approves, (s) => s.results),
    route_approve_changed_nodes: median(approves.map((s) => s.changed)),
    route_approve_peer_ids_read: median(approves.map((s) => s.peerIdsRead)),
    route_approve_new_peer_ids: median(approves.map((s) => s.newPeerIds)),
    incremental_target_ms: 20,
    hosts_policy_kb: Math.round(big.text.length / 1024),
    hosts_policy_hosts: BIG_HOSTS,
    hosts_policy_router_routes: BIG_ROUTES,
    hosts_policy_compile_ms: ms(median(bigRuns.slice(1))),
    hosts_policy_compile_cpu_ms: ms(median(bigCpu.slice(1))),
    hosts_policy_compile_cold_ms: ms(bigRuns[0]!),
    runs: { full: FULL_RUNS, warmup_steps: WARMUP, steps: STEPS, hosts_policy: BIG_RUNS },
    heap_used_mb: Math.round(heap / 1e6),
    load_avg_1m: Math.round(loadavg()[0]! * 100) / 100,
  })}\n`,
);
