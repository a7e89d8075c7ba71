// Property tests of the compiler over random small tenants and policies.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { formatIPv4, parseIP } from '../../src/net/addr.js';
import { IPSet } from '../../src/net/ipset.js';
import {
  type AclNetwork,
  type AclNode,
  type FilterRule,
  INTERNET,
  IncrementalCompiler,
  compileNetwork,
  parsePolicy,
  type Policy,
} from '../../src/acl/index.js';

const SRCS = ['*', 'autogroup:member', 'autogroup:tagged', 'u0@', 'u1@example.com', 'group:g0', 'tag:t0', 'tag:t1', '10.0.0.0/8', 'web'];
const USERISH = new Set(['*', 'autogroup:member', 'u0@', 'u1@example.com', 'group:g0']);
const DSTS = [
  '*:*',
  'tag:t1:22',
  'tag:t0:80,443',
  'u1@example.com:80',
  'autogroup:self:*',
  '10.0.0.0/16:443',
  '192.168.0.0/24:*',
  'autogroup:internet:*',
  'autogroup:member:22',
  'web:8080',
];
const ROUTES = ['10.0.0.0/16', '10.1.0.0/16', '192.168.0.0/24'];

interface Tenant {
  v4Base: number;
  v6Prefix: string;
  pool: string[];
}

const TENANT_A: Tenant = { v4Base: 0x64400000, v6Prefix: 'fd7a:115c:a1e0:1::', pool: ['100.64.0.0/16', 'fd7a:115c:a1e0:1::/64'] };
const TENANT_B: Tenant = { v4Base: 0x64410000, v6Prefix: 'fd7a:115c:a1e0:2::', pool: ['100.65.0.0/16', 'fd7a:115c:a1e0:2::/64'] };

const nodeArb = fc.record({
  owner: fc.oneof(fc.constantFrom('u0', 'u1', 'u2'), fc.constantFrom('tag:t0', 'tag:t1')),
  routes: fc.subarray(ROUTES),
  exit: fc.boolean(),
  approveAll: fc.boolean(),
  online: fc.boolean(),
});

type NodeSpec = { owner: string; routes: string[]; exit: boolean; approveAll: boolean; online: boolean };

function makeNet(specs: NodeSpec[], t: Tenant, idBase = 0): AclNetwork {
  const users = ['u0', 'u1', 'u2'].map((n, i) => ({ id: i + 1 + idBase, name: n, email: `${n}@example.com` }));
  const nodes: AclNode[] = specs.map((s, i) => {
    const tagged = s.owner.startsWith('tag:');
    const ann = [...s.routes, ...(s.exit ? ['0.0.0.0/0', '::/0'] : [])];
    return {
      id: idBase + i + 1,
      name: `n${idBase + i + 1}`,
      user: tagged ? null : `${s.owner}@example.com`,
      tags: tagged ? [s.owner] : [],
      ipv4: formatIPv4(t.v4Base + i + 1),
      ipv6: `${t.v6Prefix}${(i + 1).toString(16)}`,
      announced_routes: ann,
      approved_routes: s.approveAll ? ann : ann.slice(0, 1),
      online: s.online,
    };
  });
  return { users, nodes, pool: t.pool };
}

const ruleArb = fc
  .record({ src: fc.subarray(SRCS, { minLength: 1, maxLength: 3 }), dst: fc.subarray(DSTS, { minLength: 1, maxLength: 3 }), udp: fc.boolean() })
  .map((r) => {
    const dst = r.src.every((s) => USERISH.has(s)) ? r.dst : r.dst.filter((d) => !d.startsWith('autogroup:self'));
    return { action: 'accept', src: r.src, dst: dst.length > 0 ? dst : ['tag:t1:22'], ...(r.udp ? { proto: 'udp' } : {}) };
  });

function policyText(rules: unknown[]): string {
  return JSON.stringify({
    groups: { 'group:g0': ['u0@', 'u2@example.com'] },
    tagOwners: { 'tag:t0': ['u0@'], 'tag:t1': ['group:g0'] },
    hosts: { web: '100.64.0.3' },
    acls: rules,
  });
}

function parse(rules: unknown[]): Policy {
  const p = parsePolicy(policyText(rules));
  if (!p.ok) throw new Error(p.errors.join('\n'));
  return p.policy;
}

function jsonOf(policy: Policy, net: AclNetwork): string {
  const c = compileNetwork(policy, net);
  return JSON.stringify(
    [...c.nodes.entries()].map(([id, r]) => [id, r.packetFilter, r.peers, [...r.peerAllowedRoutes], r.primaryRoutes, r.sshPolicy]),
  );
}

/** Every (source, destination, port, proto) allowed by `before` is allowed by `after`. */
function covered(before: FilterRule[], after: FilterRule[]): boolean {
  const protoOk = (a: number[] | undefined, b: number[] | undefined): boolean =>
    b === undefined || (a !== undefined && a.every((p) => b.includes(p)));
  for (const r of before) {
    for (const src of r.SrcIPs) {
      const s = IPSet.parse(src)!;
      for (const d of r.DstPorts ?? []) {
        const ds = IPSet.parse(d.IP)!;
        // Union of what `after` allows for this source, destination and ports.
        let allowedDst = IPSet.EMPTY;
        for (const a of after) {
          if (!protoOk(r.IPProto, a.IPProto)) continue;
          const asrc = IPSet.unionAll(a.SrcIPs.map((x) => IPSet.parse(x)!));
          if (!asrc.containsSet(s)) continue;
          for (const ad of a.DstPorts ?? []) {
            if (ad.Ports.First <= d.Ports.First && ad.Ports.Last >= d.Ports.Last) allowedDst = allowedDst.union(IPSet.parse(ad.IP)!);
          }
        }
        if (!allowedDst.containsSet(ds)) return false;
      }
    }
  }
  return true;
}

describe('compiler properties', () => {
  it('compilation is deterministic (also under input reordering)', () => {
    fc.assert(
      fc.property(fc.array(nodeArb, { minLength: 1, maxLength: 8 }), fc.array(ruleArb, { maxLength: 5 }), (specs, rules) => {
        const net = makeNet(specs, TENANT_A);
        const policy = parse(rules);
        const a = jsonOf(policy, net);
        assert.equal(jsonOf(policy, net), a);
        const shuffled = { ...net, nodes: [...net.nodes].reverse(), users: [...net.users].reverse() };
        assert.equal(jsonOf(policy, shuffled), a);
      }),
      { numRuns: 60 },
    );
  });

  it('adding an accept rule never removes access', () => {
    fc.assert(
      fc.property(fc.array(nodeArb, { minLength: 1, maxLength: 7 }), fc.array(ruleArb, { maxLength: 4 }), ruleArb, fc.nat(5), (specs, rules, extra, at) => {
        const net = makeNet(specs, TENANT_A);
        const before = compileNetwork(parse(rules), net);
        const more = [...rules];
        more.splice(Math.min(at, more.length), 0, extra);
        const after = compileNetwork(parse(more), net);
        for (const [id, b] of before.nodes) {
          const a = after.nodes.get(id)!;
          assert.ok(covered(b.packetFilter, a.packetFilter), `node ${id} lost access`);
          for (const p of b.peers) assert.ok(a.peers.includes(p), `node ${id} lost peer ${p}`);
        }
      }),
      { numRuns: 60 },
    );
  });

  it("a node's reduced filter only names destinations it owns or routes", () => {
    fc.assert(
      fc.property(fc.array(nodeArb, { minLength: 1, maxLength: 8 }), fc.array(ruleArb, { maxLength: 5 }), (specs, rules) => {
        const net = makeNet(specs, TENANT_A);
        const c = compileNetwork(parse(rules), net);
        for (const n of net.nodes) {
          const own = IPSet.unionAll([n.ipv4!, n.ipv6!].map((ip) => IPSet.parse(ip)!));
          const ann = new Set(n.announced_routes);
          const served = n.approved_routes.filter((r) => ann.has(r));
          const routes = IPSet.unionAll(served.filter((r) => !r.endsWith('/0')).map((r) => IPSet.parse(r)!));
          const exit = served.some((r) => r.endsWith('/0'));
          for (const rule of c.nodes.get(n.id)!.packetFilter) {
            for (const d of rule.DstPorts ?? []) {
              const s = IPSet.parse(d.IP)!;
              const ok = s.overlaps(own) || s.overlaps(routes) || (exit && s.overlaps(INTERNET));
              assert.ok(ok, `${n.name} got destination ${d.IP}`);
            }
          }
        }
      }),
      { numRuns: 60 },
    );
  });

  it("nothing ever resolves to another tenant's nodes", () => {
    fc.assert(
      fc.property(
        fc.array(nodeArb, { minLength: 1, maxLength: 6 }),
        fc.array(nodeArb, { minLength: 1, maxLength: 6 }),
        fc.array(ruleArb, { maxLength: 5 }),
        (specsA, specsB, rules) => {
          const netA = makeNet(specsA, TENANT_A, 0);
          const netB = makeNet(specsB, TENANT_B, 100);
          const bIps = IPSet.unionAll(netB.nodes.flatMap((n) => [n.ipv4!, n.ipv6!]).map((ip) => IPSet.parse(ip)!));
          const bIds = new Set(netB.nodes.map((n) => n.id));
          const c = compileNetwork(parse(rules), netA);
          for (const [id, r] of c.nodes) {
            assert.ok(!bIds.has(id));
            for (const p of r.peers) assert.ok(!bIds.has(p));
            for (const p of r.peerAllowedRoutes.keys()) assert.ok(!bIds.has(p));
            for (const rule of r.packetFilter) {
              for (const s of rule.SrcIPs) assert.ok(!IPSet.parse(s)!.overlaps(bIps), `src ${s} reaches tenant B`);
              // A "*" destination is "any address" by design (DESIGN.md): the relay forwards only inside the tenant's namespace.
              for (const d of rule.DstPorts ?? []) assert.ok(d.IP === '*' || !IPSet.parse(d.IP)!.overlaps(bIps), `dst ${d.IP} reaches tenant B`);
            }
            for (const sr of r.sshPolicy.rules) for (const p of sr.principals) assert.ok(!bIps.containsAddr(parseIP(p.nodeIP)!));
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it('incremental updates give the same results as a full compile', () => {
    fc.assert(
      fc.property(
        fc.array(nodeArb, { minLength: 2, maxLength: 8 }),
        fc.array(ruleArb, { maxLength: 5 }),
        fc.array(fc.record({ op: fc.constantFrom('join', 'remove', 'approve', 'offline'), k: fc.nat(20) }), { maxLength: 6 }),
        (specs, rules, ops) => {
          const policy = parse(rules);
          const full = makeNet(specs, TENANT_A);
          // Start without the last node; it joins as the first operation.
          let net: AclNetwork = { ...full, nodes: full.nodes.slice(0, -1) };
          const inc = new IncrementalCompiler(policy, net);
          const apply = (next: AclNetwork, fn: () => void): void => {
            fn();
            net = next;
          };
          const last = full.nodes[full.nodes.length - 1]!;
          apply({ ...net, nodes: [...net.nodes, last] }, () => inc.nodeJoined(last));
          for (const { op, k } of ops) {
            const n = net.nodes[k % net.nodes.length];
            if (!n) continue;
            if (op === 'remove' && net.nodes.length > 1) {
              apply({ ...net, nodes: net.nodes.filter((x) => x.id !== n.id) }, () => inc.nodeRemoved(n.id));
            } else if (op === 'approve') {
              const approved = k % 2 === 0 ? n.announced_routes : [];
              apply({ ...net, nodes: net.nodes.map((x) => (x.id === n.id ? { ...x, approved_routes: approved } : x)) }, () =>
                inc.routesApproved(n.id, approved),
              );
            } else if (op === 'offline') {
              apply({ ...net, nodes: net.nodes.map((x) => (x.id === n.id ? { ...x, online: !x.online } : x)) }, () =>
                inc.setOnline(n.id, !n.online),
              );
            }
          }
          inc.changedNodes();
          const want = compileNetwork(policy, net, { previousPrimaries: inc.primaries() });
          for (const [id, r] of want.nodes) {
            const got = inc.result(id)!;
            assert.deepEqual(got.peers.toArray(), r.peers.toArray(), `peers of ${id}`);
            assert.deepEqual(JSON.stringify(got.packetFilter), JSON.stringify(r.packetFilter), `filter of ${id}`);
            assert.deepEqual([...got.peerAllowedRoutes], [...r.peerAllowedRoutes], `routes of ${id}`);
            assert.deepEqual(got.primaryRoutes, r.primaryRoutes, `primaries of ${id}`);
            assert.deepEqual(got.sshPolicy, r.sshPolicy, `ssh of ${id}`);
          }
        },
      ),
      { numRuns: 80 },
    );
  });
});
