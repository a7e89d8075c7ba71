// HuJSON parsing, positions and validation details beyond the conformance cases.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { IPSet } from '../../src/net/ipset.js';
import { checkPolicy, compileNetwork, parsePolicy, type AclNetwork } from '../../src/acl/index.js';

const NET: AclNetwork = {
  users: [
    { id: 1, name: 'alice', email: 'alice@example.com' },
    { id: 2, name: 'bob', email: 'bob@example.com' },
  ],
  nodes: [
    { id: 1, name: 'laptop', user: 'alice@example.com', tags: [], ipv4: '100.64.0.1', ipv6: 'fd7a:115c:a1e0::1', announced_routes: [], approved_routes: [], online: true },
    { id: 2, name: 'web', user: null, tags: ['tag:web'], ipv4: '100.64.0.2', ipv6: 'fd7a:115c:a1e0::2', announced_routes: [], approved_routes: [], online: true },
    { id: 3, name: 'phone', user: 'bob@example.com', tags: [], ipv4: '100.64.0.3', ipv6: 'fd7a:115c:a1e0::3', announced_routes: [], approved_routes: [], online: true },
  ],
};

describe('HuJSON policy parsing', () => {
  it('accepts comments, trailing commas, case-insensitive keys and #-keys in acls', () => {
    const text = `// policy
{
  /* groups */
  "Groups": { "group:eng": ["alice@",], },
  "TAGOWNERS": { "tag:web": ["group:eng"] },
  "ACLs": [
    { "#why": "engineers reach the web tier", "Action": "accept", "SRC": ["group:eng"], "Dst": ["tag:web:80,443", "[fd7a:115c:a1e0::3]:22"], "proto": "tcp", },
  ],
  "tests": [ { "src": "alice@", "accept": ["tag:web:443"], "deny": ["tag:web:8080"] } ],
}`;
    const r = checkPolicy(text, NET);
    assert.deepEqual(r.errors, []);
    assert.equal(r.valid, true);
    const c = compileNetwork(r.policy!, NET);
    const web = c.nodes.get(2)!.packetFilter;
    assert.equal(web.length, 1);
    assert.deepEqual(web[0]!.IPProto, [6]);
    assert.deepEqual(web[0]!.SrcIPs, ['100.64.0.1', 'fd7a:115c:a1e0::1']);
    assert.deepEqual(c.nodes.get(3)!.packetFilter[0]!.DstPorts, [{ IP: 'fd7a:115c:a1e0::3', Ports: { First: 22, Last: 22 } }]);
    assert.deepEqual(c.nodes.get(1)!.peers.toArray(), [2, 3]);
  });

  it('reports every error with file:line:column', () => {
    const text = `{
  "acls": [
    { "action": "accept", "src": ["group:nope"], "dst": ["tag:web:http"] },
  ],
  "unknown": true,
}`;
    const r = parsePolicy(text, 'tenant.hujson');
    assert.equal(r.ok, false);
    if (r.ok) return;
    assert.deepEqual(r.errors, [
      'tenant.hujson:3:35: src=group not defined in policy: "group:nope"',
      'tenant.hujson:3:58: dst="tag:web:http": port range "http": invalid first integer',
      'tenant.hujson:5:3: unknown field: "unknown"',
    ]);
  });

  it('reports syntax errors with positions', () => {
    const r = parsePolicy('{\n  "acls": [\n    { "action": "accept" "src": [] }\n  ]\n}', 'p.hujson');
    assert.equal(r.ok, false);
    if (!r.ok) assert.match(r.errors[0]!, /^p\.hujson:3:26: invalid HuJSON/);
  });

  it('failing tests make the policy invalid with one line per failure', () => {
    const text = JSON.stringify({
      hosts: { webserver: '100.64.0.2' },
      acls: [{ action: 'accept', src: ['alice@'], dst: ['webserver:80'] }],
      tests: [{ src: 'alice@', accept: ['webserver:443', 'webserver:80'] }],
    });
    const r = checkPolicy(text, NET);
    assert.equal(r.valid, false);
    assert.equal(r.errors.length, 1);
    assert.match(r.errors[0]!, /^policy\.hujson:\d+:\d+: test\(s\) failed: alice@ -> webserver:443: expected ALLOWED, got DENIED$/);
  });

  it('protocols by name or number; ports lists and ranges', () => {
    const text = JSON.stringify({
      acls: [
        { action: 'accept', src: ['*'], dst: ['100.64.0.2:8000-8100,9000'], proto: 'sctp' },
        { action: 'accept', src: ['*'], dst: ['100.64.0.2:*'], proto: '47' },
      ],
    });
    const p = parsePolicy(text);
    assert.ok(p.ok);
    if (!p.ok) return;
    const f = compileNetwork(p.policy, NET).nodes.get(2)!.packetFilter;
    assert.deepEqual(f.map((r) => r.IPProto), [[132], [47]]);
    assert.deepEqual(f[0]!.DstPorts!.map((d) => d.Ports), [{ First: 8000, Last: 8100 }, { First: 9000, Last: 9000 }]);
  });

  it('a custom pool replaces the default address space', () => {
    const p = parsePolicy(JSON.stringify({ acls: [{ action: 'accept', src: ['*'], dst: ['tag:web:22'] }], tagOwners: { 'tag:web': [] } }));
    assert.ok(p.ok);
    if (!p.ok) return;
    const f = compileNetwork(p.policy, { ...NET, pool: ['100.64.0.0/24', 'fd7a:115c:a1e0::/120'] }).nodes.get(2)!.packetFilter;
    assert.deepEqual(f[0]!.SrcIPs, ['100.64.0.0/24', 'fd7a:115c:a1e0::/120']);
  });

  it('grants with app capabilities become CapGrant rules', () => {
    const p = parsePolicy(
      JSON.stringify({
        tagOwners: { 'tag:web': [] },
        grants: [{ src: ['alice@'], dst: ['tag:web'], app: { 'example.com/cap/admin': [{ role: 'admin' }] } }],
      }),
    );
    assert.ok(p.ok);
    if (!p.ok) return;
    const f = compileNetwork(p.policy, NET).nodes.get(2)!.packetFilter;
    assert.deepEqual(f, [
      {
        SrcIPs: ['100.64.0.1', 'fd7a:115c:a1e0::1'],
        CapGrant: [{ Dsts: ['100.64.0.2/32', 'fd7a:115c:a1e0::2/128'], CapMap: { 'example.com/cap/admin': [{ role: 'admin' }] } }],
      },
    ]);
  });
});

describe('IPSet', () => {
  it('renders canonical strings: bare, aligned CIDR, otherwise a-b', () => {
    const s = IPSet.parse('100.64.0.0/10')!.subtract(IPSet.parse('100.115.92.0/23')!);
    assert.deepEqual(s.toStrings(), ['100.64.0.0-100.115.91.255', '100.115.94.0-100.127.255.255']);
    assert.deepEqual(IPSet.parse('10.0.0.5')!.toStrings(), ['10.0.0.5']);
    assert.deepEqual(IPSet.parse('10.0.0.0-10.0.0.255')!.toStrings(), ['10.0.0.0/24']);
    const u = IPSet.parse('10.0.0.0/25')!.union(IPSet.parse('10.0.0.128/25')!);
    assert.deepEqual(u.toStrings(), ['10.0.0.0/24']);
    assert.ok(u.containsSet(IPSet.parse('10.0.0.7')!));
    assert.ok(!u.overlaps(IPSet.parse('10.0.1.0/24')!));
    assert.deepEqual(IPSet.parse('10.0.0.1-10.0.0.6')!.prefixes().length, 4);
    assert.deepEqual(IPSet.parse('fd00::/8')!.intersect(IPSet.parse('fd00::1-fd00::3')!).toStrings(), ['fd00::1-fd00::3']);
  });
});
