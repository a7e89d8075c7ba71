// Model.primariesOverlapping (the index that keeps route matching linear)
// against a scan of every primary, on nested and disjoint prefixes.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { IPSet } from '../../src/net/ipset.js';
import { Model } from '../../src/acl/model.js';
import type { AclNode } from '../../src/acl/types.js';

const ROUTES = ['10.0.0.0/8', '10.1.0.0/16', '10.1.2.0/24', '10.1.3.0/24', '10.2.0.0/16', '192.168.0.0/24', '192.168.1.0/24', 'fd00::/16', 'fd00:1::/32', '2001:db8::/32'];

function router(id: number, routes: string[]): AclNode {
  return { id, name: `r${id}`, user: null, tags: ['tag:r'], ipv4: `100.64.0.${id}`, ipv6: null, announced_routes: routes, approved_routes: routes, online: true };
}

describe('primariesOverlapping', () => {
  const model = new Model({ users: [], nodes: ROUTES.map((r, i) => router(i + 1, [r])) });
  const list = model.primaryList();
  const scan = (set: IPSet): number[] => list.flatMap((p, i) => (p.set.overlaps(set) ? [i] : []));
  const sets = [
    '10.1.2.7/32', '10.1.0.0/16', '10.0.0.0/7', '10.3.0.0/16', '9.0.0.0/8', '11.0.0.0/8', '192.168.0.0/23', '192.168.1.128/25',
    '0.0.0.0/0', '172.16.0.0/12', 'fd00:1:2::/48', 'fd00::1/128', '2001:db8:1::/48', '::/0', 'fe80::/10',
  ];
  for (const text of sets) {
    it(text, () => {
      const set = IPSet.parse(text)!;
      assert.deepEqual(model.primariesOverlapping(set), scan(set));
    });
  }
  it('a set of several spans (each hit once)', () => {
    const set = IPSet.unionAll(['10.1.2.1/32', '10.1.3.1/32', '10.200.0.0/16', '192.168.1.1/32', 'fd00:1::1/128'].map((s) => IPSet.parse(s)!));
    assert.deepEqual(model.primariesOverlapping(set), scan(set));
    assert.ok(model.primariesOverlapping(set).length >= 6);
  });
});
