// Hub and two spokes in network namespaces, over real TUN devices and veth links:
//
//   [A] 198.18.1.2 ---- 198.18.1.1 [HUB] 198.18.2.1 ---- 198.18.2.2 [B] 10.78.0.1 ---- 10.78.0.10 [LAN]
//   overlay 10.77.0.0/24: A = 10.77.0.2, B = 10.77.0.3 (publishes 10.78.0.0/24)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { Lab, ROOT, netnsSkipReason, nsExec, ping, sleep, hexKey, type DaemonHandle } from './netns.js';

const skip = netnsSkipReason(['ping', 'tcpdump', 'tc']);
const lab = new Lab();
let hub: DaemonHandle;
let a: DaemonHandle;
let b: DaemonHandle;
let nsHub = '';
let nsA = '';
let nsB = '';
let nsLan = '';

const PSK_A = hexKey(0xa1);
const PSK_B = hexKey(0xb2);
const PSK_C = hexKey(0xc3);

before(async () => {
  if (skip) return;
  nsHub = lab.addNs('hub');
  nsA = lab.addNs('a');
  nsB = lab.addNs('b');
  nsLan = lab.addNs('lan');
  lab.link(nsA, 'ua', '198.18.1.2/24', nsHub, 'ha', '198.18.1.1/24');
  lab.link(nsB, 'ub', '198.18.2.2/24', nsHub, 'hb', '198.18.2.1/24');
  lab.link(nsB, 'lanb', '10.78.0.1/24', nsLan, 'lan0', '10.78.0.10/24');
  nsExec(nsLan, 'ip route add default via 10.78.0.1');
  nsExec(nsB, 'sysctl -qw net.ipv4.ip_forward=1');

  hub = await lab.daemon(nsHub, 'hub', {
    role: 'hub',
    virtual_subnet: '10.77.0.0/24',
    local_id: 1,
    listen_port: 18020,
    peers: [
      { id: 2, name: 'spoke-a', allowed_src: '10.77.0.2/32', psk: PSK_A },
      { id: 3, name: 'spoke-b', allowed_src: ['10.77.0.3/32', '10.78.0.0/24'], psk: PSK_B },
      { id: 4, name: 'spoke-c', allowed_src: '10.77.0.4/32', psk: PSK_C },
    ],
  }, ['--no-tun']);
  a = await lab.daemon(nsA, 'a', {
    role: 'spoke',
    virtual_subnet: '10.77.0.0/24',
    local_id: 2,
    local_tun_ip: '10.77.0.2/24',
    remote_routes: ['10.77.0.0/24', '10.78.0.0/24'],
    keepalive_secs: 1,
    listen_port: 18020,
    peers: [{ id: 1, name: 'hub', endpoint: '198.18.1.1:18020', allowed_src: ['10.77.0.0/24', '10.78.0.0/24'], psk: PSK_A }],
  });
  b = await lab.daemon(nsB, 'b', {
    role: 'spoke',
    virtual_subnet: '10.77.0.0/24',
    local_id: 3,
    local_tun_ip: '10.77.0.3/24',
    local_routes: ['10.77.0.3/32', '10.78.0.0/24'],
    keepalive_secs: 1,
    listen_port: 18020,
    peers: [{ id: 1, name: 'hub', endpoint: '198.18.2.1:18020', allowed_src: '10.77.0.0/24', psk: PSK_B }],
  });
});

after(() => lab.cleanup());

test('spoke A reaches spoke B through the hub', { skip: skip ?? false }, () => {
  assert.equal(ping(nsA, '10.77.0.3', 3), 3, `A->B ping failed\nhub: ${hub.log()}\na: ${a.log()}`);
  const s = hub.status();
  assert.ok(s.counters.relay_packets! >= 6, `hub relayed ${s.counters.relay_packets} packets`);
  assert.ok(s.peers.filter((p) => p.id === 2 || p.id === 3).every((p) => p.online), 'both spokes online at the hub');
});

test("spoke A reaches the LAN behind spoke B", { skip: skip ?? false }, () => {
  assert.equal(ping(nsA, '10.78.0.10', 3), 3);
});

test('a plaintext marker is on the TUN but never on the wire', { skip: skip ?? false }, async () => {
  const marker = `LARKTUN-MARKER-${process.pid}-${Date.now()}`;
  const tunCap = path.join(lab.dir, 'tun.pcap');
  const wireCap = path.join(lab.dir, 'wire.pcap');
  const capTun = spawn('ip', ['netns', 'exec', nsA, 'tcpdump', '-U', '-n', '-i', 'lark0', '-w', tunCap, 'udp']);
  const capWire = spawn('ip', ['netns', 'exec', nsA, 'tcpdump', '-U', '-n', '-i', 'ua', '-w', wireCap, 'udp']);
  await sleep(1000);
  for (let i = 0; i < 3; i++) {
    nsExec(nsA, `python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'${marker}', ('10.77.0.3', 9999))"`);
    await sleep(100);
  }
  await sleep(500);
  capTun.kill('SIGINT');
  capWire.kill('SIGINT');
  await Promise.all([capTun, capWire].map((c) => new Promise((r) => c.once('exit', r))));
  const tunBytes = readFileSync(tunCap);
  const wireBytes = readFileSync(wireCap);
  assert.ok(tunBytes.includes(marker), 'marker visible on the TUN');
  assert.ok(statSync(wireCap).size > 24 + 3 * 40, 'tunnel datagrams were captured on the wire');
  assert.ok(!wireBytes.includes(marker), 'marker must not appear on the wire');
});

test('a spoofed inner source is dropped and counted at the hub', { skip: skip ?? false }, async () => {
  const before = hub.status().counters.drop_spoof!;
  nsExec(nsA, 'ip addr add 10.77.0.99/32 dev lo');
  assert.equal(ping(nsA, '10.77.0.3', 3, { src: '10.77.0.99' }), 0);
  const after = hub.status().counters.drop_spoof!;
  assert.ok(after >= before + 3, `drop_spoof went ${before} -> ${after}`);
  nsExec(nsA, 'ip addr del 10.77.0.99/32 dev lo');
});

test('a live drop rule blocks traffic and removing it restores it', { skip: skip ?? false }, () => {
  hub.cli('policy add --src 0.0.0.0/0 --dst 10.78.0.10/32 --action drop');
  assert.match(hub.cli('policy show').out, /--dst 10\.78\.0\.10\/32 --action drop/);
  const before = hub.status().counters.drop_policy!;
  assert.equal(ping(nsA, '10.78.0.10', 3), 0);
  assert.ok(hub.status().counters.drop_policy! >= before + 3);
  assert.equal(ping(nsA, '10.77.0.3', 2), 2, 'other destinations unaffected');
  hub.cli('policy del --dst 10.78.0.10/32');
  assert.equal(ping(nsA, '10.78.0.10', 3), 3);
});

test('policy commands that do not parse change nothing', { skip: skip ?? false }, () => {
  const before = hub.cli('policy show').out;
  const r = hub.cli('policy add --src 10.0.0.1/8 --dst 10.9.0.0/16 --action forward --target 2', true);
  assert.equal(r.status, 2);
  assert.match(r.err, /host bits set: use 10\.0\.0\.0\/8/);
  const r2 = hub.cli('policy add --src 0.0.0.0/0 --dst 10.9.0.0/16 --action forward --target 42', true);
  assert.equal(r2.status, 1);
  assert.match(r2.err, /not a configured peer/);
  assert.equal(hub.cli('policy show').out, before);
});

test('save writes the live table atomically with mode 0600', { skip: skip ?? false }, () => {
  const out = hub.cli('save').out;
  const m = /saved (\d+) rule\(s\) to (\S+)/.exec(out);
  assert.ok(m, out);
  const st = statSync(m[2]!);
  assert.equal(st.mode & 0o777, 0o600);
  assert.match(readFileSync(m[2]!, 'utf8'), /policy add --src 0\.0\.0\.0\/0 --dst 10\.77\.0\.2\/32 --action forward --target 2/);
});

test('the hub relearns a spoke whose address changes', { skip: skip ?? false }, async () => {
  const before = hub.status().peers.find((p) => p.id === 2)!.endpoint;
  assert.equal(before, '198.18.1.2:18020');
  // Deleting a primary address also deletes its secondaries, so delete first.
  nsExec(nsA, 'ip addr del 198.18.1.2/24 dev ua && ip addr add 198.18.1.3/24 dev ua');
  await sleep(300);
  assert.equal(ping(nsA, '10.77.0.3', 3, { wait: 2 }), 3);
  const s = hub.status();
  assert.equal(s.peers.find((p) => p.id === 2)!.endpoint, '198.18.1.3:18020');
  assert.ok(s.counters.endpoint_changes! >= 1);
});

test('random junk to the UDP port gets no reply and no crash', { skip: skip ?? false }, () => {
  const before = hub.status().counters;
  const script = [
    'import socket, os',
    's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
    's.settimeout(1.0)',
    'for n in (0, 1, 19, 20, 35, 36, 100, 1400, 1488, 1600):',
    '    s.sendto(os.urandom(n), ("198.18.1.1", 18020))',
    'try:',
    '    s.recvfrom(2048); print("REPLY")',
    'except socket.timeout:',
    '    print("NOREPLY")',
  ].join('\n');
  const r = nsExec(nsA, `python3 -c '${script}'`);
  assert.equal(r.out.trim(), 'NOREPLY');
  assert.equal(hub.proc.exitCode, null, 'hub still running');
  const after = hub.status().counters;
  const drops = (c: Record<string, number>): number => c.drop_malformed! + c.drop_unknown_peer! + c.drop_auth!;
  assert.ok(drops(after) >= drops(before) + 10, `junk counted: ${drops(before)} -> ${drops(after)}`);
  assert.equal(ping(nsA, '10.77.0.3', 2), 2, 'traffic still flows');
});

test('under 10% loss and 20 ms delay at least 20 of 40 pings pass; all pass after', { skip: skip ?? false }, async (t) => {
  // Spoke C joins over its own link. With sch_netem the link itself is impaired;
  // on kernels without it, C reaches the hub through a userspace proxy that
  // drops 10% and delays 20 ms each way (the same impairment, in both directions).
  const nsC = lab.addNs('c');
  lab.link(nsC, 'uc', '198.18.3.2/24', nsHub, 'hc', '198.18.3.1/24');
  const netem = nsExec(nsC, 'tc qdisc add dev uc root netem loss 10% delay 20ms', { allowFail: true }).status === 0;
  let proxy: ReturnType<typeof spawn> | null = null;
  let endpoint = '198.18.3.1:18020';
  if (!netem) {
    t.diagnostic('sch_netem unavailable in this kernel: impairing the link with a userspace proxy');
    proxy = spawn('ip', ['netns', 'exec', nsHub, process.execPath, '--import', 'tsx', path.join(ROOT, 'test/e2e/impair.ts'), '198.18.3.1:18021', '198.18.3.1:18020', '0.1', '20'], { stdio: ['ignore', 'pipe', 'inherit'], cwd: ROOT });
    await new Promise<void>((r) => proxy!.stdout!.once('data', () => r()));
    endpoint = '198.18.3.1:18021';
  }
  const c = await lab.daemon(nsC, 'c', {
    role: 'spoke',
    virtual_subnet: '10.77.0.0/24',
    local_id: 4,
    local_tun_ip: '10.77.0.4/24',
    keepalive_secs: 1,
    peers: [{ id: 1, name: 'hub', endpoint, allowed_src: '10.77.0.0/24', psk: PSK_C }],
  });
  try {
    // 40 pings: a round trip survives 10% loss each way with p = 0.81, so all 40
    // passing (the check that the impairment was in effect) has p = 0.81^40 < 0.0003;
    // with 20 it was 1.5%, and a fresh-clone CI run once hit it.
    const got = ping(nsC, '10.77.0.3', 40, { interval: 0.1, wait: 1 });
    assert.ok(got >= 20, `only ${got}/40 pings passed under 10% loss + 20 ms`);
    assert.ok(got < 40 || netem, `the impairment was in effect (${got}/40 passed)`);
    if (netem) nsExec(nsC, 'tc qdisc del dev uc root');
    else {
      proxy!.kill('SIGTERM');
      // Back to a clean path: C's next packets go straight to the hub.
      await c.stop();
      await lab.daemon(nsC, 'c2', {
        role: 'spoke', virtual_subnet: '10.77.0.0/24', local_id: 4, local_tun_ip: '10.77.0.4/24', keepalive_secs: 1,
        peers: [{ id: 1, name: 'hub', endpoint: '198.18.3.1:18020', allowed_src: '10.77.0.0/24', psk: PSK_C }],
      });
    }
    assert.equal(ping(nsC, '10.77.0.3', 20, { interval: 0.05 }), 20);
  } finally {
    proxy?.kill('SIGKILL');
  }
});

test('SIGTERM stops the daemons cleanly', { skip: skip ?? false }, async () => {
  assert.equal(await a.stop(), 0);
  assert.equal(await b.stop(), 0);
  assert.equal(await hub.stop(), 0);
});
