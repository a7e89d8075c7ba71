// ACL compiler benchmark: a tenant of 10 000 nodes, 500 users, 50 tags,
// 1 000 rules and 200 subnet routes. Measures the full compile of every
// per-node result, then incremental updates (one node joins; one route is
// approved), each including materialising the results of the changed nodes.
// Prints one JSON line.
import { performance } from 'node:perf_hooks';
import { formatIPv4 } from '../src/net/addr.js';
import { type AclNetwork, type AclNode, IncrementalCompiler, compileNetwork, parsePolicy } from '../src/acl/index.js';

const NODES = 10_000;
const USERS = 500;
const TAGS = 50;
const GROUPS = 50;
const RULES = 1_000;
const ROUTES = 200;

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

const ms = (t: number): number => Math.round(t * 100) / 100;

const net = makeNetwork();
const text = makePolicy();
const parsed = parsePolicy(text, 'bench.hujson');
if (!parsed.ok) throw new Error(parsed.errors.join('\n'));
const policy = parsed.policy;
const ruleCount = policy.acls.length + policy.grants.length;

// Full compile of every per-node result.
let t0 = performance.now();
const full = compileNetwork(policy, net);
const fullMs = performance.now() - t0;
let filterRules = 0;
let peerLinks = 0;
for (const r of full.nodes.values()) {
  filterRules += r.packetFilter.length;
  peerLinks += r.peers.length;
}

// Incremental: warm compiler with all results materialised.
const inc = new IncrementalCompiler(policy, net);
for (const id of inc.changedNodes()) inc.result(id);

function step(fn: () => void): { ms: number; update_ms: number; changed: number } {
  const s = performance.now();
  fn();
  const changed = inc.changedNodes();
  const mid = performance.now();
  for (const id of changed) inc.result(id);
  const end = performance.now();
  return { ms: ms(end - s), update_ms: ms(mid - s), changed: changed.length };
}

const joins: number[] = [];
let joinInfo = { ms: 0, update_ms: 0, changed: 0 };
for (let k = 0; k < 5; k++) {
  const node = makeNode(NODES + k);
  node.tags = [];
  node.user = `u${7 + k}@example.com`;
  node.announced_routes = [];
  node.approved_routes = [];
  const r = step(() => inc.nodeJoined(node));
  joins.push(r.ms);
  joinInfo = r;
}
const approves: number[] = [];
let approveInfo = { ms: 0, update_ms: 0, changed: 0 };
for (let k = 0; k < 5; k++) {
  const id = NODES; // node-10000 announces 172.20.0.0/24
  const r = step(() => inc.routesApproved(id, k % 2 === 0 ? ['172.20.0.0/24'] : []));
  approves.push(r.ms);
  approveInfo = r;
}
const median = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;

t0 = performance.now();
const peak = process.memoryUsage().heapUsed;
void t0;

process.stdout.write(
  `${JSON.stringify({
    bench: 'acl',
    nodes: NODES,
    users: USERS,
    tags: TAGS,
    rules: ruleCount,
    subnet_routes: ROUTES,
    full_compile_ms: ms(fullMs),
    full_compile_target_ms: 2000,
    filter_rules_total: filterRules,
    peer_links_total: peerLinks,
    node_join_ms_median: median(joins),
    node_join_update_ms: joinInfo.update_ms,
    node_join_changed_nodes: joinInfo.changed,
    route_approve_ms_median: median(approves),
    route_approve_update_ms: approveInfo.update_ms,
    route_approve_changed_nodes: approveInfo.changed,
    incremental_target_ms: 20,
    heap_used_mb: Math.round(peak / 1e6),
  })}\n`,
);
