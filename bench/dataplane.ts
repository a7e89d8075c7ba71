// Data-plane benchmark in network namespaces (root, Linux). Prints one JSON line.
//
//   A (spoke) ── HUB ── B (spoke)     overlay 10.88.0.0/24, 1400-byte inner packets
//
// 1. relay_one_core: a wire-level generator plays spoke A and blasts sealed
//    datagrams for B at the hub; the hub decrypts, routes, re-encrypts and sends
//    (B's namespace drops them at ingress, so nothing else spends CPU). Hub-limited.
// 2. spoke_to_hub: the same generator, inner packets for the hub's own TUN
//    address: the hub decrypts and delivers to its TUN. Hub-limited.
// 3. spoke_send: a UDP flood into spoke A's TUN (real spoke: TUN read → seal →
//    send) with nothing receiving; counts what A puts on the wire.
// 4. spoke_hub_spoke: real spokes A and B, UDP flood A→B through the hub.
// 5. iperf3 TCP A→B through the relay.
// 6. RSS of the hub sampled while it relays for BENCH_SOAK_SECONDS (flat = no
//    per-packet leak).
// On this 2-core machine every phase shares the cores with its load generator;
// per-core figures (pps / CPU share of the measured process) are reported too.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HZ, cpuTicks } from './tools/proc.js';
import { Lab, ROOT, netnsSkipReason, nsExec, sleep, hexKey, type DaemonHandle } from '../test/e2e/netns.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 6);
const SOAK = Number(process.env.BENCH_SOAK_SECONDS ?? 60);
/** Each load runs this long: start-up, ramp-up and the SECONDS window fit inside. */
const LOAD_SECONDS = SECONDS + 5;
const progress = (msg: string): void => {
  process.stderr.write(`bench/dataplane: ${msg}\n`);
};

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

interface Phase {
  pps: number;
  gbit_s: number;
  cpu_pct: number;
  pps_per_core: number;
}

/**
 * Runs `load` (which lasts LOAD_SECONDS) and samples `counter` of daemon `d`
 * over a SECONDS-long window that starts once the counter is moving.
 */
async function measure(d: DaemonHandle, counter: string, load: () => Promise<void>): Promise<Phase> {
  progress(`measuring ${counter} of ${path.basename(d.sock, '.sock')}`);
  const done = load();
  const start = (await d.statusFast()).counters[counter]!;
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && (await d.statusFast()).counters[counter]! === start) await sleep(100);
  await sleep(500); // past the ramp-up
  const pid = d.proc.pid!;
  const c0 = (await d.statusFast()).counters[counter]!;
  const t0 = cpuTicks(pid);
  const w0 = process.hrtime.bigint();
  await sleep(SECONDS * 1000);
  const c1 = (await d.statusFast()).counters[counter]!;
  const t1 = cpuTicks(pid);
  const secs = Number(process.hrtime.bigint() - w0) / 1e9;
  await done;
  const pps = (c1 - c0) / secs;
  const cpu = (t1 - t0) / HZ / secs;
  return {
    pps: Math.round(pps),
    gbit_s: Number(((pps * 1400 * 8) / 1e9).toFixed(3)),
    cpu_pct: Math.round(cpu * 100),
    pps_per_core: cpu > 0 ? Math.round(pps / cpu) : 0,
  };
}

function runIn(ns: string, argv: string[]): Promise<void> {
  return new Promise((resolve) => {
    const c = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: 'ignore', cwd: ROOT });
    c.once('exit', () => resolve());
  });
}

async function main(): Promise<void> {
  const skip = netnsSkipReason(['iperf3', 'python3']);
  if (skip) {
    process.stdout.write(`${JSON.stringify({ bench: 'dataplane', skipped: skip })}\n`);
    return;
  }
  const lab = new Lab();
  const blast = path.join(ROOT, 'bench', 'tools', 'blast.ts');
  const flood = path.join(ROOT, 'bench', 'tools', 'udpflood.py');
  try {
    const hubNs = lab.addNs('hub');
    const aNs = lab.addNs('a');
    const bNs = lab.addNs('b');
    lab.link(aNs, 'ua', '198.18.1.2/24', hubNs, 'ha', '198.18.1.1/24');
    lab.link(bNs, 'ub', '198.18.2.2/24', hubNs, 'hb', '198.18.2.1/24');
    const pskA = hexKey(0x11);
    const pskB = hexKey(0x22);
    const hub = await lab.daemon(hubNs, 'hub', {
      role: 'hub',
      virtual_subnet: '10.88.0.0/24',
      local_id: 1,
      local_tun_ip: '10.88.0.1/24',
      local_routes: ['10.88.0.1/32'],
      peers: [
        { id: 2, name: 'a', allowed_src: '10.88.0.2/32', psk: pskA },
        { id: 3, name: 'b', endpoint: '198.18.2.2:18020', allowed_src: '10.88.0.3/32', psk: pskB },
      ],
    });
    const blastArgs = (dst: string): string[] => [
      process.execPath, '--import', 'tsx', blast, '198.18.1.1:18020', '2', '1', pskA, '10.88.0.2', dst, String(LOAD_SECONDS),
    ];
    // 1 + 2: hub-limited phases, generator on the wire. B's namespace drops the
    // relayed datagrams at ingress (nft, when available) so it spends no CPU on
    // them: on one machine that work would otherwise be charged to the hub's send.
    const nftDrop = nsExec(bNs, "nft add table inet bench && nft 'add chain inet bench pre { type filter hook prerouting priority -300; }' && nft add rule inet bench pre udp dport 18020 drop", { allowFail: true }).status === 0;
    const relayOneCore = await measure(hub, 'relay_packets', () => runIn(aNs, blastArgs('10.88.0.3')));
    const toHub = await measure(hub, 'tun_tx_packets', () => runIn(aNs, blastArgs('10.88.0.1')));

    // 3 + 4: real spokes.
    const spoke = (id: number, psk: string, ep: string) => ({
      role: 'spoke',
      virtual_subnet: '10.88.0.0/24',
      local_id: id,
      local_tun_ip: `10.88.0.${id}/24`,
      peers: [{ id: 1, name: 'hub', endpoint: ep, allowed_src: '10.88.0.0/24', psk }],
    });
    if (nftDrop) nsExec(bNs, 'nft delete table inet bench');

    // 3: the spoke's own send path, alone with its load: its hub endpoint is a
    // port nobody listens on, so no other process spends CPU on the packets.
    const floodAtoB = () => runIn(aNs, ['python3', flood, '10.88.0.3', '9', String(LOAD_SECONDS)]);
    const aSolo = await lab.daemon(aNs, 'a-solo', spoke(2, pskA, '198.18.1.1:18099'));
    nsExec(aNs, 'ip link set dev lark0 txqueuelen 10000');
    const spokeSend = await measure(aSolo, 'udp_tx_packets', floodAtoB);
    await aSolo.stop();

    // 4: real spokes A and B through the hub.
    const a = await lab.daemon(aNs, 'a', spoke(2, pskA, '198.18.1.1:18020'));
    const b = await lab.daemon(bNs, 'b', spoke(3, pskB, '198.18.2.1:18020'));
    nsExec(aNs, 'ip link set dev lark0 txqueuelen 10000');
    nsExec(aNs, 'ping -c 2 -i 0.2 10.88.0.3', { allowFail: true });
    const hubRelay = await measure(hub, 'relay_packets', floodAtoB);
    const bRecv = await measure(b, 'tun_tx_packets', floodAtoB);

    // 5: TCP through the relay.
    progress('iperf3 TCP through the relay');
    const srv = spawn('ip', ['netns', 'exec', bNs, 'iperf3', '-s', '-1', '-p', '5202'], { stdio: 'ignore' });
    await sleep(500);
    const tcp = nsExec(aNs, `iperf3 -c 10.88.0.3 -t ${SECONDS} -p 5202 -J`, { allowFail: true, timeoutMs: (SECONDS + 20) * 1000 });
    srv.kill();
    let tcpGbit = 0;
    try {
      tcpGbit = (JSON.parse(tcp.out) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second / 1e9;
    } catch {
      /* iperf3 failed: reported as 0 */
    }

    // 6: RSS of the hub during a long relay run (wire generator → hub → B).
    progress(`hub RSS over a ${SOAK} s relay run`);
    const pid = hub.proc.pid!;
    const soak = spawn('ip', ['netns', 'exec', aNs, process.execPath, '--import', 'tsx', blast, '198.18.1.1:18020', '2', '1', pskA, '10.88.0.2', '10.88.0.3', String(SOAK)], { stdio: 'ignore', cwd: ROOT });
    const soakDone = new Promise((r) => soak.once('exit', r));
    const r0 = (await hub.statusFast()).counters.relay_packets!;
    const samples: number[] = [];
    const tStart = Date.now();
    while (Date.now() - tStart < SOAK * 1000) {
      await sleep(5000);
      samples.push(Math.round(rssMiB(pid) * 10) / 10);
    }
    await soakDone;
    const soakPackets = (await hub.statusFast()).counters.relay_packets! - r0;
    const steady = samples.slice(Math.floor(samples.length / 3));

    process.stdout.write(
      `${JSON.stringify({
        bench: 'dataplane',
        machine: `${os.cpus().length}x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`,
        packet_bytes: 1400,
        relay_one_core: { ...relayOneCore, receiver_drops_at_ingress: nftDrop },
        spoke_to_hub: toHub,
        spoke_send: spokeSend,
        spoke_hub_spoke: { hub: hubRelay, b_delivered: bRecv },
        iperf3_tcp_gbit_s: Number(tcpGbit.toFixed(3)),
        soak: {
          seconds: SOAK,
          relayed: soakPackets,
          hub_rss_mib: samples,
          steady_growth_mib: steady.length > 1 ? Math.round((steady[steady.length - 1]! - steady[0]!) * 10) / 10 : null,
        },
        targets: { relay_pps: 66000, spoke_to_hub_pps: 100000 },
      })}\n`,
    );
  } finally {
    lab.cleanup();
  }
}

await main();
