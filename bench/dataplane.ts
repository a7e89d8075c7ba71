// Data-plane benchmark in network namespaces (root, Linux). Prints one JSON line.
//
//   A (spoke) ── HUB ── B (spoke)      1400-byte UDP packets from iperf3 -u:
//   1. spoke→hub: A sends to the hub's own overlay address (hub delivers to its TUN)
//   2. spoke→hub→spoke: A sends to B; the hub decrypts, routes, re-encrypts (relay)
//   3. iperf3 TCP A→B through the relay
//   4. RSS of the hub sampled over a long relay run (flat = no per-packet leak)
//
// Env: BENCH_SECONDS (per UDP phase, default 8), BENCH_SOAK_SECONDS (default 60).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { Lab, netnsSkipReason, nsExec, sleep, hexKey, type DaemonHandle } from '../test/e2e/netns.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const SOAK = Number(process.env.BENCH_SOAK_SECONDS ?? 60);
const PAYLOAD = 1400 - 28; // UDP payload so the inner IPv4 packet is 1400 bytes

function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]); // utime + stime (fields 14, 15)
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

/** The larktund node process inside `ip netns exec` (the child is `ip`, which execs it). */
function daemonPid(h: DaemonHandle): number {
  return h.proc.pid!;
}

async function udpPhase(serverNs: string, from: string, to: string, hub: DaemonHandle, counter: string, seconds: number) {
  const server = spawn('ip', ['netns', 'exec', serverNs, 'iperf3', '-s', '-1', '-p', '5201'], { stdio: 'ignore' });
  await sleep(500);
  const pid = daemonPid(hub);
  const c0 = hub.status().counters[counter]!;
  const t0 = cpuTicks(pid);
  const start = process.hrtime.bigint();
  const r = nsExec(from, `iperf3 -c ${to} -u -b 0 -l ${PAYLOAD} -t ${seconds} -p 5201 -J`, { allowFail: true, timeoutMs: (seconds + 20) * 1000 });
  const secs = Number(process.hrtime.bigint() - start) / 1e9;
  const c1 = hub.status().counters[counter]!;
  const t1 = cpuTicks(pid);
  server.kill();
  let received = 0;
  try {
    const j = JSON.parse(r.out) as { end?: { sum?: { packets?: number; lost_packets?: number } } };
    received = (j.end?.sum?.packets ?? 0) - (j.end?.sum?.lost_packets ?? 0);
  } catch {
    /* iperf3 output unavailable */
  }
  const pps = (c1 - c0) / secs;
  return {
    pps: Math.round(pps),
    gbit_s: Number(((pps * 1400 * 8) / 1e9).toFixed(3)),
    hub_cpu_pct: 0,
    hub_cpu_ticks: t1 - t0,
    secs,
    receiver_packets: received,
  };
}

async function main(): Promise<void> {
  const skip = netnsSkipReason(['iperf3']);
  if (skip) {
    process.stdout.write(`${JSON.stringify({ bench: 'dataplane', skipped: skip })}\n`);
    return;
  }
  const lab = new Lab();
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
        { id: 3, name: 'b', allowed_src: '10.88.0.3/32', psk: pskB },
      ],
    });
    const spoke = (id: number, psk: string, ep: string) => ({
      role: 'spoke',
      virtual_subnet: '10.88.0.0/24',
      local_id: id,
      local_tun_ip: `10.88.0.${id}/24`,
      peers: [{ id: 1, name: 'hub', endpoint: ep, allowed_src: '10.88.0.0/24', psk }],
    });
    await lab.daemon(aNs, 'a', spoke(2, pskA, '198.18.1.1:18020'));
    await lab.daemon(bNs, 'b', spoke(3, pskB, '198.18.2.1:18020'));
    nsExec(aNs, 'ping -c 2 -i 0.2 10.88.0.3', { allowFail: true });

    const hz = 100; // USER_HZ on Linux
    const toHub = await udpPhase(hubNs, aNs, '10.88.0.1', hub, 'udp_rx_packets', SECONDS);
    const relay = await udpPhase(bNs, aNs, '10.88.0.3', hub, 'relay_packets', SECONDS);
    for (const r of [toHub, relay]) r.hub_cpu_pct = Math.round((r.hub_cpu_ticks / hz / r.secs) * 100);

    // TCP through the relay.
    const srv = spawn('ip', ['netns', 'exec', bNs, 'iperf3', '-s', '-1', '-p', '5202'], { stdio: 'ignore' });
    await sleep(500);
    const tcp = nsExec(aNs, `iperf3 -c 10.88.0.3 -t ${SECONDS} -p 5202 -J`, { allowFail: true, timeoutMs: (SECONDS + 20) * 1000 });
    srv.kill();
    let tcpGbit = 0;
    try {
      tcpGbit = (JSON.parse(tcp.out) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second / 1e9;
    } catch {
      /* leave 0 */
    }

    // Soak: RSS of the hub over a long relay run.
    const pid = daemonPid(hub);
    const soakSrv = spawn('ip', ['netns', 'exec', bNs, 'iperf3', '-s', '-1', '-p', '5203'], { stdio: 'ignore' });
    await sleep(500);
    const soak = spawn('ip', ['netns', 'exec', aNs, 'iperf3', '-c', '10.88.0.3', '-u', '-b', '0', '-l', String(PAYLOAD), '-t', String(SOAK), '-p', '5203'], { stdio: 'ignore' });
    const samples: number[] = [];
    const t0 = Date.now();
    while (Date.now() - t0 < SOAK * 1000) {
      await sleep(5000);
      samples.push(Math.round(rssMiB(pid) * 10) / 10);
    }
    soak.kill();
    soakSrv.kill();
    const steady = samples.slice(Math.floor(samples.length / 3));

    process.stdout.write(
      `${JSON.stringify({
        bench: 'dataplane',
        machine: `${os.cpus().length}x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`,
        packet_bytes: 1400,
        spoke_to_hub: { pps: toHub.pps, gbit_s: toHub.gbit_s, hub_cpu_pct: toHub.hub_cpu_pct },
        spoke_hub_spoke: { pps: relay.pps, gbit_s: relay.gbit_s, hub_cpu_pct: relay.hub_cpu_pct, receiver_packets: relay.receiver_packets },
        iperf3_tcp_gbit_s: Number(tcpGbit.toFixed(3)),
        soak_seconds: SOAK,
        hub_rss_mib_samples: samples,
        hub_rss_growth_mib: steady.length > 1 ? Math.round((steady[steady.length - 1]! - steady[0]!) * 10) / 10 : null,
        targets: { relay_pps: 66000, spoke_to_hub_pps: 100000 },
      })}\n`,
    );
  } finally {
    lab.cleanup();
  }
}

await main();
