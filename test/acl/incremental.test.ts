// The incremental compiler against fresh full compiles on medium random
// tenants: after every change its results deep-equal a full compile,
// changedNodes() names exactly the nodes whose results differ, and every
// other node keeps the very same result object.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  type AclNetwork,
  type AclNode,
  IncrementalCompiler,
  type NodeResult,
  type Policy,
  compileNetwork,
  parsePolicy,
} from '../../src/acl/index.js';

/** Deterministic PRNG (mulberry32). */
function prng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n: number): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) % n) >>> 0;
  };
}

const USERS = ['u0', 'u1', 'u2', 'u3', 'u4', 'u5', 'u6', 'u7'];
const TAGS = ['tag:web', 'tag:db', 'tag:ci', 'tag:gw', 'tag:exit', 'tag:mon'];
const ROUTES = ['10.0.0.0/16', '10.1.0.0/16', '10.0.5.0/24', '192.168.0.0/24', '172.16.4.0/22', '8.8.8.0/24', 'fd00:1::/64'];

function policyText(rnd: (n: number) => number): string {
  const pick = <T>(a: readonly T[]): T => a[rnd(a.length)]!;
  const srcs = ['*', 'autogroup:member', 'autogroup:tagged', 'group:dev', 'group:ops', 'u1@', 'u3@example.com', ...TAGS, '10.0.0.0/8', 'office'];
  const userish = new Set(['autogroup:member', 'group:dev', 'group:ops', 'u1@', 'u3@example.com']);
  const dsts = ['*', ...TAGS, 'group:ops', 'u2@', 'autogroup:member', 'autogroup:tagged', '10.0.0.0/16', '10.0.5.0/24', '192.168.0.0/24', 'autogroup:internet', 'office', 'lab', 'autogroup:self'];
  const ports = ['*', '22', '80,443', '8000-8100', '53', '5432'];
  const acls: unknown[] = [];
  for (let i = 0; i < 40; i++) {
    const src = [pick(srcs), ...(rnd(4) === 0 ? [pick(srcs)] : [])];
    const selfOk = src.every((s) => userish.has(s));
    let dst = [pick(dsts), ...(rnd(3) === 0 ? [pick(dsts)] : [])].filter((d) => selfOk || d !== 'autogroup:self');
    if (dst.length === 0) dst = ['tag:web'];
    const rule: Record<string, unknown> = { action: 'accept', src, dst: [...new Set(dst)].map((d) => `${d}:${pick(ports)}`) };
    if (rnd(5) === 0) rule.proto = pick(['udp', 'tcp']);
    acls.push(rule);
  }
  const grants: unknown[] = [];
  for (let i = 0; i < 8; i++) {
    const src = [pick(srcs.filter((s) => s !== 'office'))];
    const selfOk = src.every((s) => userish.has(s));
    let dst = [pick(dsts)].filter((d) => (selfOk || d !== 'autogroup:self') && d !== 'autogroup:internet');
    if (dst.length === 0) dst = ['tag:db'];
    const g: Record<string, unknown> = { src, dst };
    const k = rnd(3);
    if (k === 0) g.ip = ['tcp:443', 'udp:53'];
    else if (k === 1) g.app = i % 3 === 0 ? { 'tailscale.com/cap/drive': [{ shares: ['*'], access: 'ro' }] } : { 'example.com/cap/admin': [{ level: i }] };
    else {
      g.ip = ['22'];
      g.app = { 'example.com/cap/ssh': [{}] };
    }
    if (rnd(3) === 0 && !dst.includes('autogroup:self')) g.via = [pick(['tag:gw', 'tag:exit'])];
    grants.push(g);
  }
  return JSON.stringify({
    groups: { 'group:dev': ['u0@', 'u1@', 'u5@example.com'], 'group:ops': ['u2@', 'u3@example.com', 'u7@'] },
    hosts: { office: '100.64.0.7', lab: '10.1.0.0/16' },
    tagOwners: Object.fromEntries(TAGS.map((t) => [t, ['group:ops']])),
    acls,
    grants,
    ssh: [
      { action: 'accept', src: ['autogroup:member'], dst: ['autogroup:self'], users: ['autogroup:nonroot', 'root'] },
      { action: 'check', src: ['group:dev'], dst: ['tag:ci', 'tag:web'], users: ['ubuntu'], checkPeriod: '12h' },
      { action: 'accept', src: ['group:ops'], dst: ['u2@', 'tag:db'], users: ['root'] },
    ],
    nodeAttrs: [{ target: ['tag:mon', 'group:dev'], attr: ['funnel'] }],
    autoApprovers: { routes: { '10.0.0.0/8': ['tag:gw'] }, exitNode: ['tag:exit'] },
  });
}

function makeNode(rnd: (n: number) => number, id: number): AclNode {
  const tagged = rnd(3) === 0;
  const routed = rnd(4) === 0;
  const ann: string[] = [];
  if (routed) {
    for (let k = 0; k < 1 + rnd(2); k++) ann.push(ROUTES[rnd(ROUTES.length)]!);
    if (rnd(4) === 0) ann.push('0.0.0.0/0', '::/0');
  }
  const announced = [...new Set(ann)];
  return {
    id,
    name: `n${id}`,
    user: tagged ? null : `${USERS[rnd(USERS.length)]}@example.com`,
    tags: tagged ? [...new Set([TAGS[rnd(TAGS.length)]!, ...(rnd(4) === 0 ? [TAGS[rnd(TAGS.length)]!] : [])])] : [],
    ipv4: `100.64.${id >> 8}.${id & 255}`,
    ipv6: rnd(10) === 0 ? null : `fd7a:115c:a1e0::${id.toString(16)}`,
    announced_routes: announced,
    approved_routes: announced.filter(() => rnd(3) !== 0),
    online: rnd(6) !== 0,
    ...(rnd(8) === 0 ? { healthy: false } : {}),
  };
}

function view(r: NodeResult): string {
  return JSON.stringify([r.packetFilter, r.peers, [...r.peerAllowedRoutes], r.primaryRoutes, r.sshPolicy, r.capabilities]);
}

/** Runs `steps` random changes, checking the incremental compiler after each against a full compile. */
function exercise(seed: number, nodes: number, steps: number): { changed: number; checked: number } {
  const rnd = prng(seed);
  const parsed = parsePolicy(policyText(rnd));
  if (!parsed.ok) throw new Error(parsed.errors.join('\n'));
  const policy: Policy = parsed.policy;
  const pool = Array.from({ length: nodes + steps }, (_, i) => makeNode(rnd, i + 1));
  let net: AclNetwork = {
    users: USERS.map((u, i) => ({ id: i + 1, name: u, email: `${u}@example.com` })),
    nodes: pool.slice(0, nodes),
  };
  let next = nodes;
  const inc = new IncrementalCompiler(policy, net);
  const prev = new Map<number, { text: string; obj: NodeResult }>();
  for (const id of inc.changedNodes()) {
    const r = inc.result(id)!;
    prev.set(id, { text: view(r), obj: r });
  }
  let changedTotal = 0;
  let checked = 0;
  const update = (id: number, patch: Partial<AclNode>): void => {
    net = { ...net, nodes: net.nodes.map((n) => (n.id === id ? { ...n, ...patch } : n)) };
  };
  for (let s = 0; s < steps; s++) {
    const target = net.nodes[rnd(net.nodes.length)]!;
    const op = rnd(7);
    let what: string;
    if (op === 0 || net.nodes.length < 3) {
      const n = pool[next++]!;
      inc.nodeJoined(n);
      net = { ...net, nodes: [...net.nodes, n] };
      what = `join ${n.id}`;
    } else if (op === 1) {
      inc.nodeRemoved(target.id);
      net = { ...net, nodes: net.nodes.filter((n) => n.id !== target.id) };
      what = `remove ${target.id}`;
    } else if (op === 2) {
      const approved = target.announced_routes.filter(() => rnd(2) === 0);
      inc.routesApproved(target.id, approved);
      update(target.id, { approved_routes: approved });
      what = `approve ${target.id} ${approved.join(',')}`;
    } else if (op === 3) {
      const announced = [...new Set([ROUTES[rnd(ROUTES.length)]!, ...(rnd(2) === 0 ? target.approved_routes : [])])];
      inc.routesAnnounced(target.id, announced);
      update(target.id, { announced_routes: announced });
      what = `announce ${target.id}`;
    } else if (op === 4) {
      inc.setOnline(target.id, !target.online);
      update(target.id, { online: !target.online });
      what = `online ${target.id}`;
    } else if (op === 5) {
      const healthy = target.healthy === false;
      inc.setHealthy(target.id, healthy);
      update(target.id, { healthy });
      what = `healthy ${target.id}`;
    } else if (op === 6 && rnd(3) === 0) {
      // A node re-registers with a new address (same id, same owner).
      const n = { ...target, ipv4: `100.65.${target.id >> 8}.${(target.id + s) & 255}` };
      inc.nodeJoined(n);
      update(target.id, n);
      what = `readdress ${target.id}`;
    } else {
      // A node changes identity: the server removes and re-adds it.
      const n = { ...target, tags: target.tags.length > 0 ? [] : ['tag:web'], user: target.tags.length > 0 ? 'u4@example.com' : null };
      inc.nodeRemoved(target.id);
      inc.nodeJoined(n);
      update(target.id, n);
      what = `retag ${target.id}`;
    }
    const changed = new Set(inc.changedNodes());
    changedTotal += changed.size;
    const want = compileNetwork(policy, net, { previousPrimaries: inc.primaries() });
    for (const [id, r] of want.nodes) {
      const got = inc.result(id);
      assert.ok(got, `step ${s} (${what}): no result for node ${id}`);
      const text = view(r);
      assert.equal(view(got), text, `step ${s} (${what}): node ${id} differs from a full compile`);
      const before = prev.get(id);
      if (before === undefined || before.text !== text) {
        assert.ok(changed.has(id), `step ${s} (${what}): node ${id} changed but was not reported`);
      } else {
        assert.ok(!changed.has(id), `step ${s} (${what}): node ${id} reported but its result is the same`);
        assert.equal(got, before.obj, `step ${s} (${what}): node ${id} unchanged but got a new result object`);
      }
      prev.set(id, { text, obj: got });
      checked++;
    }
    for (const id of changed) assert.ok(want.nodes.has(id), `step ${s} (${what}): reported node ${id} does not exist`);
    for (const id of [...prev.keys()]) if (!want.nodes.has(id)) prev.delete(id);
  }
  return { changed: changedTotal, checked };
}

describe('incremental compiler on medium random tenants', () => {
  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: 150 nodes, 40 changes — equal to full compiles, exact changedNodes, shared unchanged results`, () => {
      const r = exercise(seed, 150, 40);
      assert.ok(r.changed > 0 && r.checked > 0, 'nothing changed or nothing was checked');
    });
  }

  it('a join and a route approval in a larger tenant match a full compile', () => {
    const r = exercise(7, 400, 6);
    assert.ok(r.checked > 0, 'nothing was checked');
  });

  it('rules with identical sources from different aliases merge, before and after a join', () => {
    const policy = parsePolicy(
      JSON.stringify({
        groups: { 'group:solo': ['u1@'] },
        tagOwners: { 'tag:db': ['u1@'] },
        acls: [
          { action: 'accept', src: ['group:solo'], dst: ['tag:db:5432'] },
          { action: 'accept', src: ['u1@'], dst: ['tag:db:22'] },
        ],
      }),
    );
    assert.ok(policy.ok);
    const node = (id: number, user: string | null, tags: string[]): AclNode => ({
      id,
      name: `n${id}`,
      user,
      tags,
      ipv4: `100.64.0.${id}`,
      ipv6: null,
      announced_routes: [],
      approved_routes: [],
      online: true,
    });
    const net: AclNetwork = { users: [{ id: 1, name: 'u1', email: 'u1@example.com' }], nodes: [node(1, 'u1@example.com', []), node(2, null, ['tag:db'])] };
    const inc = new IncrementalCompiler(policy.policy, net);
    inc.changedNodes();
    const merged = (r: NodeResult): void => {
      assert.equal(r.packetFilter.length, 1);
      assert.deepEqual(
        r.packetFilter[0]!.DstPorts!.map((d) => d.Ports.First),
        [5432, 22],
      );
    };
    merged(inc.result(2)!);
    const before1 = inc.result(1);
    inc.nodeJoined(node(3, 'u1@example.com', []));
    // Node 1 (u1's other node) still only reaches node 2: its result is unchanged.
    assert.deepEqual(inc.changedNodes(), [2, 3]);
    assert.equal(inc.result(1), before1);
    merged(inc.result(2)!);
    assert.deepEqual(inc.result(2)!.packetFilter[0]!.SrcIPs, ['100.64.0.1', '100.64.0.3']);
  });

  it('peer lists of nodes with the same memberships share one vector, and joins append to it in place', () => {
    const policy = parsePolicy(JSON.stringify({ acls: [{ action: 'accept', src: ['*'], dst: ['*:*'] }] }));
    assert.ok(policy.ok);
    const node = (id: number): AclNode => ({
      id,
      name: `n${id}`,
      user: 'u1@example.com',
      tags: [],
      ipv4: `100.64.${id >> 8}.${id & 255}`,
      ipv6: null,
      announced_routes: [],
      approved_routes: [],
      online: true,
    });
    const users = [{ id: 1, name: 'u1', email: 'u1@example.com' }];
    let net: AclNetwork = { users, nodes: Array.from({ length: 40 }, (_, i) => node(i + 1)) };
    const inc = new IncrementalCompiler(policy.policy, net);
    inc.changedNodes();
    const results = (): NodeResult[] => net.nodes.map((n) => inc.result(n.id)!);
    const check = (): void => {
      const full = compileNetwork(policy.policy, net);
      const rs = results();
      for (const [i, r] of rs.entries()) {
        const id = net.nodes[i]!.id;
        assert.deepEqual(r.peers.toArray(), full.nodes.get(id)!.peers.toArray(), `peers of ${id}`);
        assert.ok(!r.peers.includes(id));
      }
      // One vector for everyone (each node's list leaves out only itself).
      assert.equal(new Set(rs.map((r) => r.peers.base.buffer)).size, 1);
    };
    check();
    const bufferBefore = inc.result(1)!.peers.base.buffer;
    const peersBefore = inc.result(1)!.peers;
    for (let id = 41; id <= 45; id++) {
      inc.nodeJoined(node(id));
      net = { users, nodes: [...net.nodes, node(id)] };
      assert.equal(inc.changedNodes().length, id);
      check();
    }
    // The first join copied the vector (into a buffer with room); later ones appended in place.
    const buf = inc.result(1)!.peers.base.buffer;
    assert.notEqual(buf, bufferBefore);
    assert.equal(inc.result(45)!.peers.base.buffer, buf);
    // Results handed out earlier are unchanged.
    assert.deepEqual(peersBefore.toArray(), Array.from({ length: 39 }, (_, i) => i + 2));
  });
});
