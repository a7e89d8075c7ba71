// Managed nodes end to end, in network namespaces (demo/world.ts draws the map):
// a control server, a shared relay, tenant acme (two subnet routers for one LAN,
// an exit node with a stand-in internet, dev/ops/guest laptops under a policy)
// and tenant beta whose pool overlaps acme's. Real TUN devices, kernel routing,
// nftables masquerade, ping and TCP. The figures asked for are printed as
// "# figure ..." lines.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { World, worldSkipReason, DB, INTERNET_HOST, SERVER_URL, ACME_POLICY, sleep, type NodeName } from '../../demo/world.js';

const skip = worldSkipReason();
const w = new World();
const figures: Record<string, number> = {};
const figure = (k: string, v: number): void => {
  figures[k] = v;
  process.stdout.write(`# figure ${k} = ${v}\n`);
};

function up(name: NodeName, args: string, allowFail = false) {
  return w.cli(name, `up --login-server ${SERVER_URL} --hostname ${name} ${args}`, allowFail);
}

async function nodeId(tenant: string, name: string): Promise<number> {
  const r = await w.api('GET', `/api/v1/tenants/${tenant}/nodes`, undefined, w.adminKey[tenant]);
  const n = (r.body.nodes as { id: number; name: string }[]).find((x) => x.name === name);
  assert.ok(n, `node ${name} exists in ${tenant}`);
  return n.id;
}

before(async () => {
  if (skip) return;
  w.build();
  await w.startServer();
  await w.bootstrap();
  await w.startRelay();
  for (const n of ['router', 'router2', 'exit-hk', 'dev', 'ops', 'guest', 'b1', 'b2'] as const) await w.startNode(n);
});

after(() => {
  if (!skip) w.teardown();
  if (Object.keys(figures).length) process.stdout.write(`# figures ${JSON.stringify(figures)}\n`);
});

test('join with an auth key: an address from the pool; tags only per tagOwners; bad keys change nothing', { skip: skip ?? false }, async () => {
  // A user who does not own tag:router cannot claim it.
  const denied = up('guest', `--authkey ${w.authKeys['guest']} --advertise-tags=tag:router`, true);
  assert.equal(denied.status, 1);
  assert.match(denied.err, /tag "tag:router" is not permitted/);
  assert.equal(w.status('guest').state, 'NeedsLogin');
  // Wrong and expired keys: clear messages, still logged out.
  const wrong = up('guest', '--authkey lkauth_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', true);
  assert.equal(wrong.status, 1);
  assert.match(wrong.err, /invalid auth key/);
  const soon = new Date(Date.now() + 1500).toISOString();
  const exp = (await w.api('POST', '/api/v1/tenants/acme/authkeys', { user: 'guest', expires_at: soon }, w.adminKey['acme'])).body.key as string;
  await sleep(2000);
  const expired = up('guest', `--authkey ${exp}`, true);
  assert.equal(expired.status, 1);
  assert.match(expired.err, /expired/);
  assert.equal(w.status('guest').state, 'NeedsLogin');
  const nodes = await w.api('GET', '/api/v1/tenants/acme/nodes', undefined, w.adminKey['acme']);
  assert.equal(nodes.body.nodes.length, 0, 'no node was created by the refused logins');

  const t0 = Date.now();
  const r = up('router', `--authkey ${w.authKeys['ops']} --advertise-routes=192.168.6.0/24 --advertise-tags=tag:router`);
  assert.match(r.out, /router \(tenant acme\): Running, 100\.64\.\d+\.\d+/);
  figure('router_up_ms', Date.now() - t0);
  up('router2', `--authkey ${w.authKeys['ops']} --advertise-routes=192.168.6.0/24 --advertise-tags=tag:router`);
  up('exit-hk', `--authkey ${w.authKeys['ops']} --advertise-exit-node --advertise-tags=tag:exit`);
  up('ops', `--authkey ${w.authKeys['ops']} --accept-routes`);
  up('guest', `--authkey ${w.authKeys['guest']} --accept-routes`);
  const st = w.status('router');
  assert.deepEqual(st.self.tags, ['tag:router']);
  assert.match(st.self.addresses[0], /^100\.(6[4-9]|[7-9]\d|1[01]\d|12[0-7])\./, 'IPv4 from the default pool 100.64.0.0/10');
  assert.deepEqual(st.self.approved_routes, ['192.168.6.0/24'], 'auto-approved for tag:router');
  assert.deepEqual(w.status('exit-hk').self.approved_routes.sort(), ['0.0.0.0/0', '::/0'], 'exit routes auto-approved for tag:exit');
});

test('group:dev reaches db:5432 over the subnet route and nothing else; --accept-routes off means no route', { skip: skip ?? false }, async () => {
  const t0 = Date.now();
  up('dev', `--authkey ${w.authKeys['dev']}`);
  // Without --accept-routes the kernel has no route into the LAN.
  assert.doesNotMatch(w.exec('dev', 'ip route show table 52').out, /192\.168\.6\.0\/24/);
  assert.equal(w.tcp('dev', DB, 5432, 1), false, 'no route without --accept-routes');
  assert.deepEqual(w.status('dev').routes_in_use, []);
  w.cli('dev', 'set --accept-routes');
  assert.match(w.exec('dev', 'ip route show table 52').out, /192\.168\.6\.0\/24 dev lark0/);
  const ok = await w.waitFor(() => w.tcp('dev', DB, 5432, 1), 10_000, 100);
  figure('dev_up_to_first_tcp_ms', Date.now() - t0);
  assert.ok(ok, 'dev reaches db:5432');
  assert.equal(w.tcp('dev', DB, 5433, 1), false, 'db:5433 is not granted');
  assert.equal(w.tcp('dev', DB, 80, 1), false, 'db:80 is not granted');
  assert.deepEqual(w.status('dev').routes_in_use, ['192.168.6.0/24']);
  // The untagged guest without a grant reaches neither the database nor the internet.
  assert.equal(w.tcp('guest', DB, 5432, 1), false);
  assert.equal(w.ping('guest', INTERNET_HOST, 1, 1), 0);
  // The router's filter counted what it refused, and the relay its tenant's drops.
  const router = w.status('router');
  assert.ok(router.counters.drop_filter + (w.relayStatus().counters.drop_filter ?? 0) > 0, 'the refused flows were dropped by a filter');
});

test('group:ops reaches the internet only through the exit node; LAN access is optional', { skip: skip ?? false }, async () => {
  assert.equal(w.ping('ops', INTERNET_HOST, 1, 1), 0, 'no exit node: no internet');
  // dev has no autogroup:internet grant: the exit node is not offered to it.
  const devExit = w.cli('dev', 'set --exit-node=exit-hk', true);
  assert.equal(devExit.status, 1);
  assert.match(devExit.err, /exit-node/);
  assert.equal(w.status('dev').prefs.exitNode, null, 'refused: unchanged');
  const unknown = w.cli('ops', 'set --exit-node=nowhere', true);
  assert.equal(unknown.status, 1);
  assert.match(unknown.err, /no peer named "nowhere"/);
  assert.match(w.cli('ops', 'exit-node list').out, /exit-hk/);

  w.cli('ops', 'set --exit-node=exit-hk');
  const cap = spawn('ip', ['netns', 'exec', w.ns('inet'), 'tcpdump', '-n', '-l', '-c', '1', '-i', 'eth0', 'icmp and dst host ' + INTERNET_HOST], { stdio: ['ignore', 'pipe', 'pipe'] });
  let seen = '';
  cap.stdout.on('data', (d: Buffer) => (seen += d.toString()));
  await sleep(500);
  const ok = await w.waitFor(() => w.ping('ops', INTERNET_HOST, 1, 1) === 1, 10_000, 200);
  assert.ok(ok, 'ops reaches the stand-in internet through exit-hk');
  assert.ok(w.tcp('ops', INTERNET_HOST, 80, 2), 'TCP too');
  await w.waitFor(() => seen.length > 0, 3000);
  cap.kill();
  assert.match(seen, /IP 203\.0\.113\.1 > 203\.0\.113\.10/, 'masqueraded to the exit node uplink address');
  const st = w.status('ops');
  assert.equal(st.exit_node.in_use, 'exit-hk');
  // The gateway on ops's own LAN is private (not autogroup:internet): through the exit node it is refused ...
  assert.equal(w.ping('ops', '10.99.5.1', 1, 1), 0, 'LAN goes into the tunnel without --exit-node-allow-lan-access');
  w.cli('ops', 'set --exit-node-allow-lan-access');
  assert.equal(w.ping('ops', '10.99.5.1', 1, 1), 1, '--exit-node-allow-lan-access keeps the LAN direct');
  // ... and the control server stayed reachable all along (throw route).
  assert.equal(w.status('ops').server.connected, true);
  w.cli('ops', 'set --exit-node=');
  assert.equal(await w.waitFor(() => w.ping('ops', INTERNET_HOST, 1, 1) === 0, 5000, 200), true, 'exit node off: no internet');
});

test('manual approval turns a route on; revoking turns it off', { skip: skip ?? false }, async () => {
  const id = await nodeId('acme', 'router');
  w.cli('router', 'set --advertise-routes=192.168.6.0/24,10.20.0.0/16');
  const pending = await w.api('GET', `/api/v1/tenants/acme/nodes/${id}/routes`, undefined, w.adminKey['acme']);
  assert.ok(pending.body.announced.includes('10.20.0.0/16'));
  assert.ok(!pending.body.approved.includes('10.20.0.0/16'), 'not covered by autoApprovers: waits for approval');
  assert.equal(w.ping('ops', '10.20.0.1', 1, 1), 0);
  const t0 = Date.now();
  const ap = await w.api('POST', `/api/v1/tenants/acme/nodes/${id}/routes`, { approved: ['192.168.6.0/24', '10.20.0.0/16'] }, w.adminKey['acme']);
  assert.equal(ap.status, 200);
  assert.ok(await w.waitFor(() => w.ping('ops', '10.20.0.1', 1, 1) === 1, 10_000, 100), 'approved: ops reaches 10.20.0.1');
  figure('route_approval_to_traffic_ms', Date.now() - t0);
  await w.api('POST', `/api/v1/tenants/acme/nodes/${id}/routes`, { approved: ['192.168.6.0/24'] }, w.adminKey['acme']);
  assert.ok(await w.waitFor(() => w.ping('ops', '10.20.0.1', 1, 1) === 0, 10_000, 100), 'revoked: no longer reachable');
  assert.doesNotMatch(w.exec('ops', 'ip route show table 52').out, /10\.20\.0\.0\/16/);
  // A route that is not a masked prefix: refused, nothing changes.
  const bad = w.cli('router', 'set --advertise-routes=192.168.6.1/24', true);
  assert.equal(bad.status, 2);
  assert.match(bad.err, /host bits set: use 192\.168\.6\.0\/24/);
  assert.deepEqual(w.status('router').prefs.advertiseRoutes, ['10.20.0.0/16', '192.168.6.0/24']);
});

test('a policy change is enforced within 2 s', { skip: skip ?? false }, async () => {
  assert.ok(w.tcp('dev', DB, 5432, 1));
  const denyDev = ACME_POLICY.replace('{ "action": "accept", "src": ["group:dev"], "dst": ["db:5432"] },', '');
  const t0 = Date.now();
  const put = await w.api('PUT', '/api/v1/tenants/acme/policy', { policy: denyDev }, w.adminKey['acme']);
  assert.equal(put.status, 200, JSON.stringify(put.body));
  const denied = await w.waitFor(() => !w.tcp('dev', DB, 5432, 0.5), 5000, 50);
  const ms = Date.now() - t0;
  figure('policy_put_to_enforced_ms', ms);
  assert.ok(denied, 'dev lost db:5432');
  assert.ok(ms < 2000, `enforced in ${ms} ms`);
  const t1 = Date.now();
  await w.api('PUT', '/api/v1/tenants/acme/policy', { policy: ACME_POLICY }, w.adminKey['acme']);
  assert.ok(await w.waitFor(() => w.tcp('dev', DB, 5432, 0.5), 5000, 50));
  figure('policy_put_to_allowed_ms', Date.now() - t1);
});

test('HA: the standby takes over within 5 s of the primary going offline, and the primary does not flap back', { skip: skip ?? false }, async () => {
  const rid = await nodeId('acme', 'router');
  const r2 = await nodeId('acme', 'router2');
  const primaryOf = async () => {
    const r = await w.api('GET', `/api/v1/tenants/acme/nodes/${r2}/routes`, undefined, w.adminKey['acme']);
    return (r.body.primary as string[]).includes('192.168.6.0/24') ? r2 : rid;
  };
  assert.equal(await primaryOf(), rid, 'the lower id is primary first');
  // A ping stream from dev to the database (ICMP rides on the db:5432 grant).
  const ping = spawn('ip', ['netns', 'exec', w.ns('dev'), 'ping', '-n', '-i', '0.1', '-W', '1', '-c', '120', DB], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  ping.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await sleep(2000);
  await w.stopNode('router', 'SIGKILL'); // the primary dies: no goodbye, its TUN vanishes
  await new Promise<void>((r) => ping.once('exit', () => r()));
  const seqs = [...out.matchAll(/icmp_seq=(\d+)/g)].map((m) => Number(m[1]));
  assert.ok(seqs.length > 40, `ping replies: ${seqs.length}`);
  let gap = 0;
  for (let i = 1; i < seqs.length; i++) gap = Math.max(gap, seqs[i]! - seqs[i - 1]! - 1);
  const gapMs = gap * 100;
  figure('ha_failover_gap_ms', gapMs);
  assert.ok(gapMs < 5000, `failover gap ${gapMs} ms`);
  assert.equal(seqs[seqs.length - 1], 120, 'the stream ends healthy through router2');
  assert.equal(await primaryOf(), r2);
  // The old primary comes back (same state dir: same identity) and stays standby.
  await w.startNode('router');
  await w.waitFor(() => {
    try {
      return w.status('router').state === 'Running';
    } catch {
      return false;
    }
  }, 15_000, 200);
  await sleep(4000);
  assert.equal(await primaryOf(), r2, 'no flap back');
  assert.ok(w.tcp('dev', DB, 5432, 1));
});

test('tenant isolation: beta, with the same overlay addresses, cannot reach acme — not even with forged sources', { skip: skip ?? false }, async () => {
  up('b1', `--authkey ${w.authKeys['beta']} --accept-routes`);
  up('b2', `--authkey ${w.authKeys['beta']} --accept-routes`);
  const b1 = w.status('b1');
  const b2 = w.status('b2');
  const acmeAddrs = new Set<string>();
  for (const n of ['router', 'router2', 'exit-hk', 'dev', 'ops', 'guest'] as const) for (const a of w.status(n).self.addresses) acmeAddrs.add(a.split('/')[0]);
  const b1v4 = b1.self.addresses[0].split('/')[0];
  const b2v4 = b2.self.addresses[0].split('/')[0];
  assert.ok(acmeAddrs.has(b1v4) && acmeAddrs.has(b2v4), 'the pools overlap: beta holds addresses acme also uses');
  // b1 → b2's address reaches beta's b2, never the acme node with that address.
  const acmeTwin = (['router', 'router2', 'exit-hk', 'dev', 'ops', 'guest'] as const).find((n) => w.status(n).self.addresses[0].split('/')[0] === b2v4)!;
  const before = w.status(acmeTwin).counters.tun_tx_packets;
  assert.equal(w.ping('b1', b2v4, 3, 1), 3);
  assert.equal(w.status(acmeTwin).counters.tun_tx_packets, before, `acme's ${acmeTwin} saw nothing`);
  // acme's LAN route does not exist in beta.
  assert.equal(w.ping('b1', DB, 1, 1), 0);
  // A forged inner source (an acme-only address) is dropped and counted by the relay in beta's namespace.
  const forged = [...acmeAddrs].find((a) => a.includes('.') && a !== b1v4 && a !== b2v4)!;
  const relayBefore = w.relayStatus().tenants.find((t: { tenant: string }) => t.tenant === 'beta').counters.drop_spoof as number;
  w.exec('b1', `ip addr add ${forged}/32 dev lark0`);
  assert.equal(w.ping('b1', `-I ${forged} ${b2v4}`, 3, 1), 0);
  const beta = w.relayStatus().tenants.find((t: { tenant: string }) => t.tenant === 'beta');
  assert.ok(beta.counters.drop_spoof >= relayBefore + 3, `relay counted the forged packets in beta (${beta.counters.drop_spoof})`);
  const acme = w.relayStatus().tenants.find((t: { tenant: string }) => t.tenant === 'acme');
  assert.ok(acme, 'acme namespace exists on the same relay');
});

test('larktun ping over IPv4 and IPv6; latency to the relay in status and the Admin API', { skip: skip ?? false }, async () => {
  // beta allows everything, so ICMP and ICMPv6 both pass b2's filter.
  const r4 = JSON.parse(w.cli('b1', 'ping -4 -c 3 --json b2').out);
  assert.equal(r4.family, 4);
  assert.equal(r4.received, 3, JSON.stringify(r4));
  const r6 = JSON.parse(w.cli('b1', 'ping -6 -c 3 --json b2').out);
  assert.equal(r6.family, 6);
  assert.ok(r6.address.includes(':'), r6.address);
  assert.equal(r6.received, 3, JSON.stringify(r6));
  assert.match(r6.path, /^via relay /);
  figure('ping6_rtt_ms', Math.max(...r6.results.map((x: { rtt_ms: number }) => x.rtt_ms)));
  const text = w.cli('b1', 'ping -6 -c 1 b2').out;
  assert.match(text, /^pong from b2 \(fd7a:[0-9a-f:]+\) via relay \S+ .* seq=1 in [\d.]+ ms$/m);
  // An IPv6 target picks IPv6 by itself; -4 and -6 together are refused.
  assert.equal(JSON.parse(w.cli('b1', `ping -c 1 --json ${r6.address}`).out).family, 6);
  const both = w.cli('b1', 'ping -4 -6 b2', true);
  assert.equal(both.status, 2);
  assert.match(both.err, /-4 and -6 exclude each other/);
  // The relay echoes keepalives: the node knows its round-trip time to it…
  assert.ok(await w.waitFor(() => typeof w.status('b1').relay?.rtt_ms === 'number', 5000, 200), 'status shows relay.rtt_ms');
  const rtt = w.status('b1').relay.rtt_ms as number;
  assert.ok(rtt >= 0 && rtt < 200, `rtt ${rtt} ms`);
  figure('relay_rtt_ms_b1', rtt);
  assert.match(w.cli('b1', 'status').out, /^relay: \S+ \S+ \(online, rtt [\d.]+ ms, last packet from it/m);
  // …and reports it: the Admin API shows it on the node.
  const id = await nodeId('beta', 'b1');
  const seen = await w.waitFor(async () => {
    const r = await w.api('GET', `/api/v1/tenants/beta/nodes/${id}`, undefined, w.adminKey['beta']);
    return typeof r.body.relay_rtt_ms === 'number';
  }, 12_000, 500);
  assert.ok(seen, 'relay_rtt_ms reported to the server');
});

test('server stopped: paths keep working; restarted: nodes reconnect by themselves', { skip: skip ?? false }, async () => {
  await w.stop('server');
  await sleep(500);
  assert.ok(w.tcp('dev', DB, 5432, 1), 'dev still reaches db with its last map');
  assert.equal(w.ping('b1', w.status('b2').self.addresses[0].split('/')[0], 2, 1), 2);
  assert.equal(w.status('dev').server.connected, false);
  // A daemon restart while the server is down: forwarding resumes from the saved map.
  await w.stopNode('dev');
  await w.startNode('dev');
  assert.ok(await w.waitFor(() => w.tcp('dev', DB, 5432, 1), 10_000, 200), 'restarted dev forwards with its saved map');
  const t0 = Date.now();
  await w.startServer();
  const back = await w.waitFor(() => (['dev', 'ops', 'router2', 'b1'] as const).every((n) => w.status(n).server.connected === true), 20_000, 200);
  figure('server_restart_to_all_reconnected_ms', Date.now() - t0);
  assert.ok(back, 'every node reconnected');
});

test('down removes the routes and the TUN; up brings them back without an auth key', { skip: skip ?? false }, async () => {
  w.cli('guest', 'down');
  assert.equal(w.status('guest').state, 'Stopped');
  assert.notEqual(w.exec('guest', 'ip link show lark0', { allowFail: true }).status, 0, 'TUN gone');
  assert.equal(w.exec('guest', 'ip route show table 52').out.trim(), '');
  assert.doesNotMatch(w.exec('guest', 'ip rule').out, /lookup 52/);
  w.cli('guest', `up --login-server ${SERVER_URL} --hostname guest --accept-routes`);
  assert.equal(w.status('guest').state, 'Running');
  w.cli('guest', 'logout');
  assert.equal(w.status('guest').state, 'NeedsLogin');
});
