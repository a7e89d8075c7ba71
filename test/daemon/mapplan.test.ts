import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyPatch, applyPresence, checkMap, planFromMap, type NodeMap } from '../../src/daemon/mapplan.js';
import { DEFAULT_PREFS } from '../../src/daemon/prefs.js';
import { formatPrefix } from '../../src/net/addr.js';
import { ForwardingTable } from '../../src/net/lpm.js';

const PSK = 'ab'.repeat(32);
function map(over: Partial<NodeMap> = {}): NodeMap {
  return checkMap({
    version: 3, hash: 'h', tenant: 'acme',
    self: { id: 1, name: 'laptop', dns_name: 'laptop.acme.lt', addresses: ['100.64.0.1/32'], tags: [], user: 'a@x', approved_routes: [], primary_routes: [] },
    peers: [
      { id: 2, name: 'router', node_key: 'k2', addresses: ['100.64.0.2/32'], allowed_ips: ['100.64.0.2/32', '192.168.6.0/24'], endpoints: [], tags: ['tag:router'], user: null, exit_node: false },
      { id: 3, name: 'exit-hk', node_key: 'k3', addresses: ['100.64.0.3/32'], allowed_ips: ['100.64.0.3/32', '0.0.0.0/0', '::/0'], endpoints: [], tags: ['tag:exit'], user: null, exit_node: true },
    ],
    online: [2],
    packet_filter: [{ SrcIPs: ['100.64.0.2'], DstPorts: [{ IP: '100.64.0.1', Ports: { First: 22, Last: 22 } }] }],
    ssh_policy: null, exit_node: null,
    relays: [{ id: 7, name: 'r1', endpoints: ['10.9.0.1:41642'], link_id: 12, relay_link_id: 65535, psk: PSK, obfuscate: true }],
    dns: { base: 'acme.lt' },
    ...over,
  });
}
const dsts = (p: ReturnType<typeof planFromMap>) => p.rules.filter((r) => r.action === 'forward').map((r) => `${formatPrefix(r.dst)}->${r.target}`).sort();
const drops = (p: ReturnType<typeof planFromMap>) => p.rules.filter((r) => r.action === 'drop').map((r) => formatPrefix(r.dst)).sort();

test('a plain client: own address to the TUN, peers to the relay, no subnet routes without --accept-routes', () => {
  const p = planFromMap(map(), { ...DEFAULT_PREFS });
  assert.deepEqual(dsts(p), ['100.64.0.1/32->0', '100.64.0.2/32->65535', '100.64.0.3/32->65535']);
  // multicast, broadcast and link-local never enter the tunnel (kernel chatter on the TUN)
  assert.deepEqual(drops(p), ['169.254.0.0/16', '224.0.0.0/4', '255.255.255.255/32', 'fe80::/10', 'ff00::/8']);
  assert.equal(p.peers.length, 1);
  assert.equal(p.peers[0]!.localId, 12);
  assert.deepEqual(p.peers[0]!.endpoint, { host: '10.9.0.1', port: 41642 });
  assert.deepEqual(p.os.routes, ['100.64.0.2/32', '100.64.0.3/32']);
  assert.equal(p.os.exitNode, false);
  assert.deepEqual(p.routesInUse, []);
});

test('--accept-routes installs peer subnet routes; an exit node only when the map selected it', () => {
  const p = planFromMap(map(), { ...DEFAULT_PREFS, acceptRoutes: true, exitNode: 'exit-hk' });
  assert.ok(dsts(p).includes('192.168.6.0/24->65535'));
  assert.deepEqual(p.routesInUse, ['192.168.6.0/24']);
  assert.equal(p.exitNode, null);
  assert.match(p.exitProblem ?? '', /being set up/);
  const q = planFromMap(map({ exit_node: 3 }), { ...DEFAULT_PREFS, exitNode: 'exit-hk' });
  assert.deepEqual(q.exitNode, { id: 3, name: 'exit-hk' });
  assert.ok(dsts(q).includes('0.0.0.0/0->65535') && dsts(q).includes('::/0->65535'));
  // under the exit node's default route, an MLD report (fe80:: → ff02::16) and IGMP still hit a drop rule
  const table = ForwardingTable.build(q.rules);
  const v6 = Buffer.alloc(48);
  v6[0] = 0x60;
  v6[6] = 58;
  Buffer.from('fe800000000000000000000000000001', 'hex').copy(v6, 8);
  Buffer.from('ff020000000000000000000000000016', 'hex').copy(v6, 24);
  assert.equal(table.rules[table.lookupPacket(v6, v6.length)]!.action, 'drop');
  const v4 = Buffer.alloc(28);
  v4[0] = 0x45;
  v4.writeUInt32BE(0x64400005, 12);
  v4.writeUInt32BE(0xe0000016, 16); // 224.0.0.22
  assert.equal(table.rules[table.lookupPacket(v4, v4.length)]!.action, 'drop');
  v4.writeUInt32BE(0xcb00710a, 16); // 203.0.113.10: the exit node
  assert.deepEqual([table.rules[table.lookupPacket(v4, v4.length)]!.action, table.rules[table.lookupPacket(v4, v4.length)]!.target], ['forward', 65535]);
  assert.equal(q.os.exitNode, true);
  const r = planFromMap(map(), { ...DEFAULT_PREFS, exitNode: 'router' });
  assert.match(r.exitProblem ?? '', /not offered to this node as an exit node/);
});

test('a subnet router delivers its approved routes to the TUN and masquerades unless told not to', () => {
  const m = map({ self: { ...map().self, approved_routes: ['10.20.0.0/16'], primary_routes: ['10.20.0.0/16'] } });
  const p = planFromMap(m, { ...DEFAULT_PREFS, advertiseRoutes: ['10.20.0.0/16'] });
  assert.ok(dsts(p).includes('10.20.0.0/16->0'));
  assert.equal(p.os.forwarding, true);
  assert.equal(p.os.masquerade, true);
  assert.equal(planFromMap(m, { ...DEFAULT_PREFS, advertiseRoutes: ['10.20.0.0/16'], snatSubnetRoutes: false }).os.masquerade, false);
});

test('patches replace sections; presence deltas update online; bad maps are refused', () => {
  const m = applyPatch(map(), { exit_node: 3, version: 4 });
  assert.equal(m.exit_node, 3);
  assert.equal(m.peers.length, 2);
  assert.deepEqual(applyPresence(m, 5, { 3: true, 2: false }).online, [3]);
  assert.throws(() => checkMap({ ...map(), relays: [{ link_id: 1 }] }), /relays\[\] needs/);
  assert.throws(() => checkMap({ version: 'x' }), /version must be a number/);
});
