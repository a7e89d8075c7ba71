// Compile fidelity with Tailscale (issue 10, items 1–8): small policies and
// networks whose expected output is written from the observed Tailscale
// behaviour, not from this compiler's output. Each also runs through the
// incremental compiler (built empty, nodes joining one by one) to check it
// agrees with a fresh compile.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  type AclNetwork,
  type AclNode,
  type CompiledJson,
  type FilterRule,
  IncrementalCompiler,
  type Policy,
  compileNetwork,
  compileToJson,
  parsePolicy,
} from '../../src/acl/index.js';

const ALL = { First: 0, Last: 65535 };
/** The default pool as `*` sources render it (100.115.92.0/23 excluded). */
const POOL = ['100.64.0.0-100.115.91.255', '100.115.94.0-100.127.255.255', 'fd7a:115c:a1e0::/48'];
const EXIT = ['0.0.0.0/0', '::/0'];

const USERS = [
  { id: 1, name: 'alice', email: 'alice@example.com' },
  { id: 2, name: 'bob', email: 'bob@example.com' },
];

function node(id: number, name: string, owner: string, routes: string[] = [], extra: Partial<AclNode> = {}): AclNode {
  const tagged = owner.startsWith('tag:');
  return {
    id,
    name,
    user: tagged ? null : owner,
    tags: tagged ? [owner] : [],
    ipv4: `100.64.0.${id}`,
    ipv6: `fd7a:115c:a1e0::${id}`,
    announced_routes: routes,
    approved_routes: routes,
    online: true,
    ...extra,
  };
}

function parse(policy: unknown): Policy {
  const p = parsePolicy(typeof policy === 'string' ? policy : JSON.stringify(policy));
  assert.ok(p.ok, p.ok ? '' : p.errors.join('\n'));
  return p.policy;
}

/** Compiles fresh, and checks an incremental compiler fed the nodes one by one gives the same results. */
function compile(policy: unknown, net: AclNetwork): CompiledJson {
  const p = parse(policy);
  const out = compileToJson(p, net);
  const fresh = compileNetwork(p, net);
  const inc = new IncrementalCompiler(p, { ...net, nodes: [] });
  inc.changedNodes();
  for (const n of net.nodes) inc.nodeJoined(n);
  inc.changedNodes();
  for (const n of net.nodes) {
    const a = inc.result(n.id)!;
    const b = fresh.nodes.get(n.id)!;
    assert.deepEqual(a.packetFilter, b.packetFilter, `incremental filter of ${n.name}`);
    assert.deepEqual([...a.peers], [...b.peers], `incremental peers of ${n.name}`);
    assert.deepEqual(a.peerAllowedRoutes, b.peerAllowedRoutes, `incremental routes of ${n.name}`);
  }
  return out;
}

const star = (ports = [ALL]): FilterRule['DstPorts'] => ports.map((p) => ({ IP: '*', Ports: p }));

describe('1: a * destination', () => {
  // laptop (alice), exit node (tag:exit, approved exit routes), router (10.1.0.0/24), unapproved exit.
  const net: AclNetwork = {
    users: USERS,
    nodes: [
      node(1, 'laptop', 'alice@example.com'),
      node(2, 'exit', 'tag:exit', EXIT),
      node(3, 'router', 'tag:router', ['10.1.0.0/24']),
      node(4, 'pending', 'tag:exit', [], { announced_routes: EXIT }),
    ],
  };
  const srcAll = [...POOL, '10.1.0.0/24'];

  it('is one IP "*" entry per port range, sent unreduced to every node', () => {
    const out = compile({ acls: [{ action: 'accept', src: ['*'], dst: ['*:22,80-81'] }] }, net);
    for (const name of ['laptop', 'exit', 'router', 'pending']) {
      const f = out.packet_filter[name]!;
      assert.equal(f.length, 1, name);
      assert.deepEqual([...f[0]!.SrcIPs].sort(), [...srcAll].sort(), name);
      assert.deepEqual(f[0]!.DstPorts, star([{ First: 22, Last: 22 }, { First: 80, Last: 81 }]), name);
    }
  });

  it('lets sources use approved exit nodes and every approved subnet route', () => {
    const out = compile({ acls: [{ action: 'accept', src: ['alice@example.com'], dst: ['*:*'] }] }, net);
    assert.deepEqual(out.packet_filter.exit, [{ SrcIPs: ['100.64.0.1', 'fd7a:115c:a1e0::1'], DstPorts: star() }]);
    assert.deepEqual(out.peers.laptop, ['exit', 'pending', 'router']);
    assert.deepEqual(out.peer_allowed_routes.laptop, { exit: EXIT, router: ['10.1.0.0/24'] });
    // Receivers do not get routes through their sources.
    assert.equal(out.peer_allowed_routes.exit, undefined);
  });
});

describe('2: a policy without acls and grants', () => {
  const net: AclNetwork = {
    users: USERS,
    nodes: [node(1, 'laptop', 'alice@example.com'), node(2, 'exit', 'tag:exit', EXIT), node(3, 'phone', 'bob@example.com')],
  };

  it('allows everything, as src ["*"] → dst ["*:*"] (SrcIPs never the literal "*")', () => {
    for (const policy of ['{}', { groups: { 'group:a': ['alice@example.com'] } }]) {
      const out = compile(policy, net);
      for (const name of ['laptop', 'exit', 'phone']) {
        assert.equal(out.packet_filter[name]!.length, 1, name);
        const r = out.packet_filter[name]![0]!;
        assert.deepEqual([...r.SrcIPs].sort(), [...POOL].sort(), name);
        assert.deepEqual(r.DstPorts, star());
        assert.equal(r.IPProto, undefined);
      }
      assert.deepEqual(out.peers.laptop, ['exit', 'phone']);
      assert.deepEqual(out.peer_allowed_routes.laptop, { exit: EXIT });
    }
  });

  it('an explicitly empty acls or grants allows nothing', () => {
    for (const policy of [{ acls: [] }, { grants: [] }, { acls: [], grants: [] }]) {
      const out = compile(policy, net);
      for (const name of ['laptop', 'exit', 'phone']) {
        assert.deepEqual(out.packet_filter[name], [], `${JSON.stringify(policy)} ${name}`);
        assert.deepEqual(out.peers[name], [], `${JSON.stringify(policy)} ${name}`);
      }
    }
  });
});

describe('3: protocol icmp', () => {
  const net: AclNetwork = { users: USERS, nodes: [node(1, 'laptop', 'alice@example.com'), node(2, 'srv', 'tag:srv')] };
  const srcs = ['100.64.0.1', 'fd7a:115c:a1e0::1'];
  const dsts = (ports = ALL): FilterRule['DstPorts'] => [
    { IP: '100.64.0.2', Ports: ports },
    { IP: 'fd7a:115c:a1e0::2', Ports: ports },
  ];

  it('is IPv4 ICMP only (1); ICMPv6 is ipv6-icmp / 58', () => {
    const out = compile(
      {
        tagOwners: { 'tag:srv': ['alice@example.com'] },
        acls: [
          { action: 'accept', src: ['alice@example.com'], dst: ['tag:srv:*'], proto: 'icmp' },
          { action: 'accept', src: ['alice@example.com'], dst: ['tag:srv:*'], proto: 'ipv6-icmp' },
        ],
      },
      net,
    );
    assert.deepEqual(out.packet_filter.srv, [
      { SrcIPs: srcs, DstPorts: dsts(), IPProto: [1] },
      { SrcIPs: srcs, DstPorts: dsts(), IPProto: [58] },
    ]);
  });

  it('the same in a grant', () => {
    const out = compile(
      { tagOwners: { 'tag:srv': ['alice@example.com'] }, grants: [{ src: ['alice@example.com'], dst: ['tag:srv'], ip: ['icmp:*'] }] },
      net,
    );
    assert.deepEqual(out.packet_filter.srv, [{ SrcIPs: srcs, DstPorts: dsts(), IPProto: [1] }]);
  });
});

describe('5: rule order of an ACL with autogroup:self', () => {
  const net: AclNetwork = { users: USERS, nodes: [node(1, 'laptop', 'alice@example.com'), node(2, 'phone', 'bob@example.com')] };
  const alice = ['100.64.0.1', 'fd7a:115c:a1e0::1'];
  const members = [...alice, '100.64.0.2', 'fd7a:115c:a1e0::2'];
  const to = (ips: string[], ports: { First: number; Last: number }) => ips.map((IP) => ({ IP, Ports: ports }));
  const p22 = { First: 22, Last: 22 };

  it('all destinations autogroups: the self rules stay in policy order', () => {
    const out = compile({ acls: [{ action: 'accept', src: ['autogroup:member'], dst: ['autogroup:self:*', 'autogroup:member:22'] }] }, net);
    assert.deepEqual(out.packet_filter.laptop, [
      { SrcIPs: alice, DstPorts: to(alice, ALL) },
      { SrcIPs: members, DstPorts: to(alice, p22) },
    ]);
  });

  it('a destination that is not an autogroup: the non-self rules come first', () => {
    const out = compile({ acls: [{ action: 'accept', src: ['autogroup:member'], dst: ['autogroup:self:*', 'alice@example.com:22'] }] }, net);
    assert.deepEqual(out.packet_filter.laptop, [
      { SrcIPs: members, DstPorts: to(alice, p22) },
      { SrcIPs: alice, DstPorts: to(alice, ALL) },
    ]);
  });
});

describe('6–8: app grants (CapGrant)', () => {
  const net: AclNetwork = {
    users: USERS,
    nodes: [
      node(1, 'laptop', 'alice@example.com'),
      node(2, 'phone', 'bob@example.com'),
      node(3, 'srv', 'tag:srv'),
      node(4, 'router', 'tag:router', ['10.1.0.0/24']),
    ],
  };
  const ips = (id: number): string[] => [`100.64.0.${id}`, `fd7a:115c:a1e0::${id}`];
  const own = (id: number): string[] => [`100.64.0.${id}/32`, `fd7a:115c:a1e0::${id}/128`];
  const tagOwners = { 'tag:srv': ['alice@example.com'], 'tag:router': ['alice@example.com'] };
  const CAP = { 'example.com/cap/x': [{ level: 1 }] };

  it('6: dst * gives each node a CapGrant of only its own addresses', () => {
    const out = compile({ tagOwners, grants: [{ src: ['alice@example.com'], dst: ['*'], app: CAP }] }, net);
    for (const [name, id] of [['laptop', 1], ['phone', 2], ['srv', 3], ['router', 4]] as const) {
      assert.deepEqual(out.packet_filter[name], [{ SrcIPs: ips(1), CapGrant: [{ Dsts: own(id), CapMap: CAP }] }], name);
    }
  });

  it('7: cap/drive adds the reverse drive-sharer rule right after the main one', () => {
    const drive = { 'tailscale.com/cap/drive': [{ shares: ['*'], access: 'rw' }] };
    const out = compile({ tagOwners, grants: [{ src: ['alice@example.com'], dst: ['tag:srv'], app: drive }] }, net);
    assert.deepEqual(out.packet_filter.srv, [{ SrcIPs: ips(1), CapGrant: [{ Dsts: own(3), CapMap: drive }] }]);
    assert.deepEqual(out.packet_filter.laptop, [{ SrcIPs: ips(3), CapGrant: [{ Dsts: own(1), CapMap: { 'tailscale.com/cap/drive-sharer': null } }] }]);
  });

  it('7: cap/relay adds relay-target, between the main rule and the next grant', () => {
    const relay = { 'tailscale.com/cap/relay': [] };
    const out = compile(
      {
        tagOwners,
        grants: [
          { src: ['autogroup:member'], dst: ['autogroup:member'], app: relay },
          { src: ['alice@example.com'], dst: ['bob@example.com'], ip: ['tcp:22'] },
        ],
      },
      net,
    );
    const members = [...ips(1), ...ips(2)];
    assert.deepEqual(out.packet_filter.phone, [
      { SrcIPs: members, CapGrant: [{ Dsts: own(2), CapMap: relay }] },
      { SrcIPs: members, CapGrant: [{ Dsts: own(2), CapMap: { 'tailscale.com/cap/relay-target': null } }] },
      { SrcIPs: ips(1), DstPorts: ips(2).map((IP) => ({ IP, Ports: { First: 22, Last: 22 } })), IPProto: [6] },
    ]);
  });

  it('8: sources that resolve to nothing still give the CapGrant, with SrcIPs []', () => {
    const out = compile({ tagOwners, groups: { 'group:empty': [] }, grants: [{ src: ['group:empty'], dst: ['tag:srv'], app: CAP }] }, net);
    assert.deepEqual(out.packet_filter.srv, [{ SrcIPs: [], CapGrant: [{ Dsts: own(3), CapMap: CAP }] }]);
    assert.deepEqual(out.peers.srv, []);
  });

  it('8: the app part of a via grant is ignored', () => {
    const out = compile(
      { tagOwners, grants: [{ src: ['alice@example.com'], dst: ['10.1.0.0/24'], via: ['tag:router'], ip: ['tcp:443'], app: CAP }] },
      net,
    );
    assert.deepEqual(out.packet_filter.router, [{ SrcIPs: ips(1), DstPorts: [{ IP: '10.1.0.0/24', Ports: { First: 443, Last: 443 } }], IPProto: [6] }]);
    for (const name of ['laptop', 'phone', 'srv']) assert.deepEqual(out.packet_filter[name], [], name);
  });
});

describe('4: HA routers, via and per-node merging', () => {
  // r1 and r2 serve the same prefix; r1 (lower id) is the HA primary. r2 is the via router.
  const net: AclNetwork = {
    users: USERS,
    nodes: [
      node(1, 'r1', 'tag:router', ['10.1.0.0/24']),
      node(2, 'r2', 'tag:via', ['10.1.0.0/24']),
      node(3, 'client', 'tag:client'),
      node(4, 'srv', 'tag:srv'),
      node(5, 'laptop', 'alice@example.com'),
    ],
  };
  const tagOwners = Object.fromEntries(['tag:router', 'tag:via', 'tag:client', 'tag:srv'].map((t) => [t, ['alice@example.com']]));
  const ips = (id: number): string[] => [`100.64.0.${id}`, `fd7a:115c:a1e0::${id}`];
  const to = (id: number, ports = ALL): FilterRule['DstPorts'] => ips(id).map((IP) => ({ IP, Ports: ports }));
  const NET = [{ IP: '10.1.0.0/24', Ports: ALL }];

  it('a router serving the HA primary\'s prefix sees it on the primary, whatever the policy says about the router', () => {
    const out = compile(
      {
        tagOwners,
        acls: [
          { action: 'accept', src: ['tag:client'], dst: ['10.1.0.0/24:*'] },
          { action: 'accept', src: ['tag:via'], dst: ['tag:router:22'] },
        ],
      },
      net,
    );
    assert.deepEqual(out.primary_routes, { r1: ['10.1.0.0/24'] });
    assert.deepEqual(out.peers.r2, ['client', 'r1']);
    assert.deepEqual(out.peer_allowed_routes.r2, { r1: ['10.1.0.0/24'] });
    assert.deepEqual(out.peer_allowed_routes.client, { r1: ['10.1.0.0/24'] });
    // The primary does not see the prefix on the standby.
    assert.equal(out.peer_allowed_routes.r1, undefined);
  });

  it('a source with a via grant and a plain grant to one prefix: the HA primary wins', () => {
    const out = compile(
      {
        tagOwners,
        grants: [
          { src: ['tag:client'], dst: ['10.1.0.0/24'], ip: ['*'], via: ['tag:via'] },
          { src: ['tag:client'], dst: ['10.1.0.0/24'], ip: ['tcp:22'] },
        ],
      },
      net,
    );
    assert.deepEqual(out.peers.client, ['r1', 'r2']);
    assert.deepEqual(out.peer_allowed_routes.client, { r1: ['10.1.0.0/24'] });
    // via rules only on the matching router; the plain rule on both routers.
    assert.deepEqual(out.packet_filter.r1, [{ SrcIPs: ips(3), DstPorts: [{ IP: '10.1.0.0/24', Ports: { First: 22, Last: 22 } }], IPProto: [6] }]);
    assert.deepEqual(out.packet_filter.r2, [
      { SrcIPs: ips(3), DstPorts: NET },
      { SrcIPs: ips(3), DstPorts: [{ IP: '10.1.0.0/24', Ports: { First: 22, Last: 22 } }], IPProto: [6] },
    ]);
  });

  it('rule merging is decided per node: a rule merges at the first position among the rules the node receives', () => {
    const out = compile(
      {
        tagOwners,
        grants: [
          { src: ['tag:client'], dst: ['10.1.0.0/24'], ip: ['*'], via: ['tag:via'] },
          { src: ['alice@example.com'], dst: ['tag:srv'], ip: ['*'] },
          { src: ['tag:client'], dst: ['tag:srv'], ip: ['*'] },
        ],
      },
      net,
    );
    assert.deepEqual(out.packet_filter.srv, [
      { SrcIPs: ips(5), DstPorts: to(4) },
      { SrcIPs: ips(3), DstPorts: to(4) },
    ]);
    assert.deepEqual(out.packet_filter.r2, [{ SrcIPs: ips(3), DstPorts: NET }]);
    assert.deepEqual(out.packet_filter.r1, []);
  });
});

describe('7: drive to autogroup:self', () => {
  it('the companion of a self grant is the same per-user grant with drive-sharer', () => {
    const net: AclNetwork = {
      users: USERS,
      nodes: [node(1, 'laptop', 'alice@example.com'), node(2, 'desk', 'alice@example.com'), node(3, 'phone', 'bob@example.com')],
    };
    const drive = { 'tailscale.com/cap/drive': [{ shares: ['*'], access: 'rw' }] };
    const out = compile({ grants: [{ src: ['autogroup:member'], dst: ['autogroup:self'], app: drive }] }, net);
    const alice = ['100.64.0.1', 'fd7a:115c:a1e0::1', '100.64.0.2', 'fd7a:115c:a1e0::2'];
    assert.deepEqual(out.packet_filter.laptop, [
      { SrcIPs: alice, CapGrant: [{ Dsts: ['100.64.0.1/32', 'fd7a:115c:a1e0::1/128'], CapMap: drive }] },
      { SrcIPs: alice, CapGrant: [{ Dsts: ['100.64.0.1/32', 'fd7a:115c:a1e0::1/128'], CapMap: { 'tailscale.com/cap/drive-sharer': null } }] },
    ]);
    assert.deepEqual(out.packet_filter.phone, [
      { SrcIPs: ['100.64.0.3', 'fd7a:115c:a1e0::3'], CapGrant: [{ Dsts: ['100.64.0.3/32', 'fd7a:115c:a1e0::3/128'], CapMap: drive }] },
      { SrcIPs: ['100.64.0.3', 'fd7a:115c:a1e0::3'], CapGrant: [{ Dsts: ['100.64.0.3/32', 'fd7a:115c:a1e0::3/128'], CapMap: { 'tailscale.com/cap/drive-sharer': null } }] },
    ]);
  });
});

describe('4: HA views through failover (incremental)', () => {
  it('after the primary goes offline and back, every result equals a fresh compile', () => {
    const tagOwners = Object.fromEntries(['tag:router', 'tag:via', 'tag:client'].map((t) => [t, ['alice@example.com']]));
    const p = parse({
      tagOwners,
      acls: [
        { action: 'accept', src: ['tag:client'], dst: ['10.1.0.0/24:*'] },
        { action: 'accept', src: ['tag:via', 'tag:router'], dst: ['tag:router:22', 'tag:via:22'] },
      ],
    });
    let net: AclNetwork = {
      users: USERS,
      nodes: [
        node(1, 'r1', 'tag:router', ['10.1.0.0/24']),
        node(2, 'r2', 'tag:via', ['10.1.0.0/24']),
        node(3, 'client', 'tag:client'),
        // A second standby: neither the old nor the new primary, its view still follows the primary.
        node(4, 'r4', 'tag:via', ['10.1.0.0/24']),
      ],
    };
    const inc = new IncrementalCompiler(p, net);
    inc.changedNodes();
    const check = (what: string): void => {
      // A fresh compile that knows the current primaries (the anti-flap input a server keeps).
      const fresh = compileNetwork(p, net, { previousPrimaries: inc.primaries() });
      assert.deepEqual(fresh.primaries, inc.primaries(), what);
      for (const n of net.nodes) {
        assert.deepEqual(inc.result(n.id)!.peerAllowedRoutes, fresh.nodes.get(n.id)!.peerAllowedRoutes, `${what}: ${n.name}`);
        assert.deepEqual(inc.result(n.id)!.packetFilter, fresh.nodes.get(n.id)!.packetFilter, `${what}: ${n.name}`);
      }
    };
    check('start');
    assert.deepEqual(inc.result(2)!.peerAllowedRoutes, new Map([[1, ['10.1.0.0/24']]]));
    for (const online of [false, true]) {
      inc.setOnline(1, online);
      net = { ...net, nodes: net.nodes.map((n) => (n.id === 1 ? { ...n, online } : n)) };
      const changed = inc.changedNodes();
      check(`r1 online=${online}`);
      // Offline: r2 becomes primary; r2 no longer sees the prefix on r1, r1 and the client see it on r2.
      // Back online: r2 stays primary (anti-flap), so nothing changes.
      assert.deepEqual(changed, online ? [] : [1, 2, 3, 4], `changed after r1 online=${online}`);
    }
    // r2 took over and kept the prefix (anti-flap); r1 now sees it on r2.
    assert.deepEqual(inc.primaries(), new Map([['10.1.0.0/24', 2]]));
    assert.deepEqual(inc.result(1)!.peerAllowedRoutes, new Map([[2, ['10.1.0.0/24']]]));
    assert.deepEqual(inc.result(4)!.peerAllowedRoutes, new Map([[2, ['10.1.0.0/24']]]));
  });
});
