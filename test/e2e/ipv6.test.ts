// IPv6 underlay, dual-stack overlay and a host-name endpoint, in namespaces:
//
//   [A] fd00:1::2 ── fd00:1::1 [HUB] fd00:2::1 ── fd00:2::2 [B]
//   overlay: A = 10.55.0.2 + fd77::2, B = 10.55.0.3 + fd77::3
//   A dials the hub by name (hub6.larktun.test, from A's /etc/netns hosts file).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { Lab, netnsSkipReason, nsExec, ping, hexKey, type DaemonHandle } from './netns.js';

const skip = netnsSkipReason(['ping']);
const lab = new Lab();
let hub: DaemonHandle;
let nsA = '';
let hostsDir = '';

before(async () => {
  if (skip) return;
  const nsHub = lab.addNs('hub6');
  nsA = lab.addNs('a6');
  const nsB = lab.addNs('b6');
  for (const [ns, ifc, peerNs, peerIf, net] of [
    [nsA, 'ua', nsHub, 'ha', '1'],
    [nsB, 'ub', nsHub, 'hb', '2'],
  ] as const) {
    nsExec(ns, `ip link add ${ifc} type veth peer name ${peerIf} netns ${peerNs}`);
    nsExec(ns, `ip addr add fd00:${net}::2/64 dev ${ifc} nodad && ip link set ${ifc} up`);
    nsExec(peerNs, `ip addr add fd00:${net}::1/64 dev ${peerIf} nodad && ip link set ${peerIf} up`);
  }
  // `ip netns exec` bind-mounts /etc/netns/NAME/hosts over /etc/hosts.
  hostsDir = `/etc/netns/${nsA}`;
  mkdirSync(hostsDir, { recursive: true });
  writeFileSync(`${hostsDir}/hosts`, '127.0.0.1 localhost\nfd00:1::1 hub6.larktun.test\n');

  const pskA = hexKey(0x61);
  const pskB = hexKey(0x62);
  hub = await lab.daemon(nsHub, 'hub6', {
    role: 'hub',
    virtual_subnet: '10.55.0.0/24',
    local_id: 1,
    peers: [
      { id: 2, name: 'a', allowed_src: ['10.55.0.2/32', 'fd77::2/128'], psk: pskA },
      { id: 3, name: 'b', allowed_src: ['10.55.0.3/32', 'fd77::3/128'], psk: pskB },
    ],
  }, ['--no-tun']);
  const spoke = (id: number, endpoint: string, psk: string) => ({
    role: 'spoke',
    virtual_subnet: '10.55.0.0/24',
    local_id: id,
    local_tun_ip: [`10.55.0.${id}/24`, `fd77::${id}/64`],
    local_routes: [`10.55.0.${id}/32`, `fd77::${id}/128`],
    remote_routes: ['10.55.0.0/24', 'fd77::/64'],
    keepalive_secs: 1,
    peers: [{ id: 1, name: 'hub', endpoint, allowed_src: ['10.55.0.0/24', 'fd77::/64'], psk }],
  });
  await lab.daemon(nsA, 'a6', spoke(2, 'hub6.larktun.test:18020', pskA));
  await lab.daemon(nsB, 'b6', spoke(3, '[fd00:2::1]:18020', pskB));
});

after(() => {
  lab.cleanup();
  if (hostsDir) rmSync(hostsDir, { recursive: true, force: true });
});

test('IPv6 inner packets cross an IPv6 underlay through the hub', { skip: skip ?? false }, () => {
  assert.equal(ping(nsA, 'fd77::3', 3), 3);
});

test('IPv4 inner packets cross the same IPv6 underlay', { skip: skip ?? false }, () => {
  assert.equal(ping(nsA, '10.55.0.3', 3), 3);
});

test('the spoke resolved the hub by host name; the hub learned it at its IPv6 address', { skip: skip ?? false }, () => {
  const s = hub.status();
  assert.equal(s.peers.find((p) => p.id === 2)!.endpoint, '[fd00:1::2]:18020');
  assert.equal(s.peers.find((p) => p.id === 3)!.endpoint, '[fd00:2::2]:18020');
  assert.ok(s.counters.relay_packets! >= 12);
});

test('an IPv6 spoofed source is dropped and counted', { skip: skip ?? false }, () => {
  const before = hub.status().counters.drop_spoof!;
  nsExec(nsA, 'ip addr add fd77::99/128 dev lo');
  assert.equal(ping(nsA, 'fd77::3', 2, { src: 'fd77::99' }), 0);
  assert.ok(hub.status().counters.drop_spoof! >= before + 2);
});
