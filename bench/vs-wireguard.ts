// Side-by-side benchmark: the same namespaces, once with wireguard-go (+ wg)
// and once with larktund standalone, measured in one run (root, Linux).
//
//   A (spoke 10.89.0.2) ── HUB (10.89.0.1) ── B (spoke 10.89.0.3)    tunnel MTU 1420
//   underlay: veth 198.18.1.0/24 (A-HUB) and 198.18.2.0/24 (B-HUB)
//
// Measured for each implementation:
//   tcp_direct   iperf3 TCP A → HUB (the hub's own tunnel address)
//   tcp_relay    iperf3 TCP A → B through the hub (wireguard-go: the hub's kernel
//                forwards between peers of one wg interface; larktund: the hub
//                relays sealed datagrams in userspace)
//   udp64        iperf3 UDP A → HUB with 64-byte payloads, unlimited rate:
//                packets/s delivered (sent minus lost), and the CPU time of the
//                two daemons (A and HUB) per delivered packet in µs
//   ping         idle RTT A → HUB and A → B, average and median of 50 pings
//   cpu_s_per_gb CPU seconds (utime + stime from /proc/<pid>/stat, all threads)
//                of every tunnel daemon on the path per GB delivered by iperf3 TCP
//   retransmits  iperf3 TCP retransmits (reordering or loss in the tunnel)
// Each measurement prints one JSON line with both values and the ratio
// larktun / wireguard-go (for RTT and CPU lower is better: ratio < 1 wins), and
// the same for larktund with LARKTUN_TUN_OFFLOAD=0 (larktun_plain, ratio_plain):
// the TUN offloads' own effect, measured in the same run.
//
// Both topologies are up at once and every measurement alternates between the
// two, BENCH_ROUNDS times (default 3; medians reported), so that load from other
// processes falls on both alike. BENCH_SECONDS (default 8) sets each iperf3 run.
// BENCH_BASE=<another checkout, dist built> adds larktun-base: that build's
// larktund in the same run (ratio_base), to compare a change with its parent.
// BENCH_METRICS (comma list of ping, tcp_direct, tcp_relay, udp64; default all)
// takes only some measurements, e.g. BENCH_METRICS=udp64 for the small-packet rate.
// The load average is printed first and last: on a shared machine the absolute
// figures move with it, the ratios much less. BENCH_WORKERS=N runs every
// larktund with N packet worker threads (LARKTUN_WORKERS; default: the
// daemon's own, one per core); run it with 1 and 2 to compare.
// Not part of CI; skip it with `npm run bench -- -vs-wireguard`.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HZ, cpuTicks } from './tools/proc.js';
import { Lab, netnsSkipReason, nsExec, sleep, hexKey, type DaemonHandle } from '../test/e2e/netns.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const MTU = 1420;
// larktun-plain: larktund with LARKTUN_TUN_OFFLOAD=0 (the TUN path without offloads).
// larktun takes LARKTUN_TUN_OFFLOAD from the environment when set (e.g. tso: without UDP segmentation offload).
// larktun-base: larktund of another checkout (BENCH_BASE: its root, with dist/ built),
// e.g. the commit before a change, measured interleaved with this one.
const IMPLS = (process.env.BENCH_IMPLS ?? `wireguard-go,larktun,larktun-plain${process.env.BENCH_BASE ? ',larktun-base' : ''}`).split(',');
const BASE = process.env.BENCH_BASE ?? '';
const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3));
/** LARKTUN_WORKERS for every larktund (unset: the daemon's default, one per core). */
const WORKERS = process.env.BENCH_WORKERS ?? process.env.LARKTUN_WORKERS ?? null;
// BENCH_METRICS: which measurements to take (default all): ping, tcp_direct, tcp_relay, udp64.
const METRIC_NAMES = ['ping', 'tcp_direct', 'tcp_relay', 'udp64'];
const METRICS = (process.env.BENCH_METRICS ?? METRIC_NAMES.join(',')).split(',').map((m) => m.trim());
for (const m of METRICS) {
  if (!METRIC_NAMES.includes(m)) throw new Error(`BENCH_METRICS: unknown measurement ${m} (${METRIC_NAMES.join(', ')})`);
}
const progress = (msg: string): void => {
  process.stderr.write(`bench/vs-wireguard: ${msg}\n`);
};

/** cpuTicks, 0 for a process already gone. */
function cpuTicksOr0(pid: number): number {
  try {
    return cpuTicks(pid);
  } catch {
    return 0;
  }
}

interface Topology {
  impl: string;
  nsA: string;
  nsHub: string;
  nsB: string;
  /** Daemon pids on the direct path (A, HUB) and the relay path (A, HUB, B). */
  pidsDirect: number[];
  pidsRelay: number[];
  stop(): Promise<void>;
}

function underlay(lab: Lab, impl: string): { nsA: string; nsHub: string; nsB: string } {
  const t = impl === 'larktun' ? 'l' : impl === 'larktun-plain' ? 'p' : impl === 'larktun-base' ? 'b' : 'w';
  const nsHub = lab.addNs(`${t}hub`);
  const nsA = lab.addNs(`${t}a`);
  const nsB = lab.addNs(`${t}b`);
  lab.link(nsA, 'ua', '198.18.1.2/24', nsHub, 'ha', '198.18.1.1/24');
  lab.link(nsB, 'ub', '198.18.2.2/24', nsHub, 'hb', '198.18.2.1/24');
  return { nsA, nsHub, nsB };
}

async function wireguardTopology(lab: Lab): Promise<Topology> {
  const ns = underlay(lab, 'wireguard-go');
  const keys = (): { priv: string; pub: string } => {
    const priv = spawnSync('wg', ['genkey'], { encoding: 'utf8' }).stdout.trim();
    const pub = spawnSync('wg', ['pubkey'], { input: `${priv}\n`, encoding: 'utf8' }).stdout.trim();
    return { priv, pub };
  };
  const kH = keys();
  const kA = keys();
  const kB = keys();
  const procs: ChildProcess[] = [];
  // Interface names are unique per run: wireguard-go's control socket lives in
  // /var/run/wireguard/<name>.sock, shared by every namespace.
  const tag = (process.pid % 1000).toString(36);
  const start = async (netns: string, dev: string, addr: string, priv: string, wgArgs: string[]): Promise<number> => {
    const child = spawn('ip', ['netns', 'exec', netns, 'wireguard-go', '-f', dev], {
      env: { ...process.env, WG_PROCESS_FOREGROUND: '1', LOG_LEVEL: 'error' },
      stdio: 'ignore',
    });
    procs.push(child);
    lab.procs.push(child);
    const sock = `/var/run/wireguard/${dev}.sock`;
    const deadline = Date.now() + 10_000;
    while (!existsSync(sock)) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`wireguard-go ${dev} did not come up`);
      await sleep(50);
    }
    const keyFile = path.join(lab.dir, `${dev}.key`);
    writeFileSync(keyFile, `${priv}\n`, { mode: 0o600 });
    nsExec(netns, `wg set ${dev} private-key ${keyFile} ${wgArgs.join(' ')}`);
    nsExec(netns, `ip addr add ${addr} dev ${dev} && ip link set ${dev} mtu ${MTU} up`);
    return child.pid!;
  };
  const pidHub = await start(ns.nsHub, `wgh${tag}`, '10.89.0.1/24', kH.priv, [
    'listen-port 51820',
    `peer ${kA.pub} allowed-ips 10.89.0.2/32`,
    `peer ${kB.pub} allowed-ips 10.89.0.3/32 endpoint 198.18.2.2:51820`,
  ]);
  nsExec(ns.nsHub, 'sysctl -qw net.ipv4.ip_forward=1');
  const pidA = await start(ns.nsA, `wga${tag}`, '10.89.0.2/24', kA.priv, [
    'listen-port 51820',
    `peer ${kH.pub} allowed-ips 10.89.0.0/24 endpoint 198.18.1.1:51820`,
  ]);
  const pidB = await start(ns.nsB, `wgb${tag}`, '10.89.0.3/24', kB.priv, [
    'listen-port 51820',
    `peer ${kH.pub} allowed-ips 10.89.0.0/24 endpoint 198.18.2.1:51820`,
  ]);
  return {
    impl: 'wireguard-go',
    ...ns,
    pidsDirect: [pidA, pidHub],
    pidsRelay: [pidA, pidHub, pidB],
    async stop() {
      for (const p of procs) if (p.exitCode === null) p.kill('SIGTERM');
      await Promise.all(procs.map((p) => (p.exitCode !== null ? null : new Promise((r) => p.once('exit', r)))));
    },
  };
}

async function larktunTopology(lab: Lab, impl: 'larktun' | 'larktun-plain' | 'larktun-base'): Promise<Topology> {
  const ns = underlay(lab, impl);
  const env: Record<string, string> = {
    LARKTUN_TUN_OFFLOAD: impl === 'larktun-plain' ? '0' : (process.env.LARKTUN_TUN_OFFLOAD ?? '1'),
    ...(WORKERS !== null ? { LARKTUN_WORKERS: WORKERS } : {}),
  };
  const n = impl === 'larktun-plain' ? 'vsp' : impl === 'larktun-base' ? 'vsb' : 'vs';
  const bin = impl === 'larktun-base' ? path.join(BASE, 'bin', 'larktund') : undefined;
  if (bin !== undefined && !existsSync(path.join(BASE, 'dist', 'daemon', 'main.js'))) throw new Error(`BENCH_BASE=${BASE}: no dist/daemon/main.js there (build it first)`);
  const pskA = hexKey(0x5a);
  const pskB = hexKey(0x5b);
  const hub = await lab.daemon(ns.nsHub, `${n}-hub`, {
    role: 'hub',
    virtual_subnet: '10.89.0.0/24',
    local_id: 1,
    local_tun_ip: '10.89.0.1/24',
    local_tun_mtu: MTU,
    local_routes: ['10.89.0.1/32'],
    listen_port: 18020,
    peers: [
      { id: 2, name: 'a', allowed_src: '10.89.0.2/32', psk: pskA },
      { id: 3, name: 'b', endpoint: '198.18.2.2:18020', allowed_src: '10.89.0.3/32', psk: pskB },
    ],
  }, [], env, [], bin);
  const spoke = (id: number, psk: string, ep: string): unknown => ({
    role: 'spoke',
    virtual_subnet: '10.89.0.0/24',
    local_id: id,
    local_tun_ip: `10.89.0.${id}/24`,
    local_tun_mtu: MTU,
    listen_port: 18020,
    keepalive_secs: 5,
    peers: [{ id: 1, name: 'hub', endpoint: ep, allowed_src: '10.89.0.0/24', psk }],
  });
  const a = await lab.daemon(ns.nsA, `${n}-a`, spoke(2, pskA, '198.18.1.1:18020'), [], env, [], bin);
  const b = await lab.daemon(ns.nsB, `${n}-b`, spoke(3, pskB, '198.18.2.1:18020'), [], env, [], bin);
  const all: DaemonHandle[] = [a, hub, b];
  return {
    impl,
    ...ns,
    pidsDirect: [a.proc.pid!, hub.proc.pid!],
    pidsRelay: [a.proc.pid!, hub.proc.pid!, b.proc.pid!],
    async stop() {
      for (const d of all) await d.stop();
    },
  };
}

interface TcpResult {
  gbit_s: number;
  retransmits: number;
  cpu_s_per_gb: number;
  bytes: number;
}

async function iperfTcp(topo: Topology, serverNs: string, dst: string, pids: number[]): Promise<TcpResult> {
  const srv = spawn('ip', ['netns', 'exec', serverNs, 'iperf3', '-s', '-1', '-p', '5209'], { stdio: 'ignore' });
  await sleep(400);
  const t0 = pids.reduce((s, p) => s + cpuTicksOr0(p), 0);
  const r = nsExec(topo.nsA, `iperf3 -c ${dst} -p 5209 -t ${SECONDS} -J`, { allowFail: true, timeoutMs: (SECONDS + 30) * 1000 });
  const t1 = pids.reduce((s, p) => s + cpuTicksOr0(p), 0);
  srv.kill();
  try {
    const j = JSON.parse(r.out) as { end: { sum_received: { bytes: number; bits_per_second: number }; sum_sent: { retransmits?: number } } };
    const bytes = j.end.sum_received.bytes;
    return {
      gbit_s: j.end.sum_received.bits_per_second / 1e9,
      retransmits: j.end.sum_sent.retransmits ?? 0,
      cpu_s_per_gb: bytes > 0 ? (t1 - t0) / HZ / (bytes / 1e9) : 0,
      bytes,
    };
  } catch {
    progress(`${topo.impl}: iperf3 TCP to ${dst} failed: ${r.err || r.out.slice(0, 300)}`);
    return { gbit_s: 0, retransmits: 0, cpu_s_per_gb: 0, bytes: 0 };
  }
}

/** 64-byte UDP: packets/s delivered, and the daemons' CPU (A and HUB, all threads) in µs per delivered packet. */
async function iperfUdp64(topo: Topology): Promise<{ pps: number; cpuUs: number }> {
  const srv = spawn('ip', ['netns', 'exec', topo.nsHub, 'iperf3', '-s', '-1', '-p', '5210'], { stdio: 'ignore' });
  await sleep(400);
  const t0 = topo.pidsDirect.reduce((s, p) => s + cpuTicksOr0(p), 0);
  const r = nsExec(topo.nsA, `iperf3 -c 10.89.0.1 -p 5210 -u -l 64 -b 0 -t ${SECONDS} -J`, { allowFail: true, timeoutMs: (SECONDS + 30) * 1000 });
  const t1 = topo.pidsDirect.reduce((s, p) => s + cpuTicksOr0(p), 0);
  srv.kill();
  try {
    const j = JSON.parse(r.out) as { end: { sum: { packets: number; lost_packets: number; seconds: number }; sum_received?: { packets?: number; seconds: number } } };
    const s = j.end.sum;
    const delivered = s.packets - s.lost_packets;
    return { pps: delivered / s.seconds, cpuUs: delivered > 0 ? ((t1 - t0) / HZ / delivered) * 1e6 : 0 };
  } catch {
    progress(`${topo.impl}: iperf3 UDP failed: ${r.err || r.out.slice(0, 300)}`);
    return { pps: 0, cpuUs: 0 };
  }
}

/** Average and median RTT (ms) of 50 pings, after 3 to warm the path. */
function pingStats(ns: string, dst: string): { avg: number; median: number } {
  nsExec(ns, `ping -n -q -c 3 -i 0.2 ${dst}`, { allowFail: true });
  const r = nsExec(ns, `ping -n -c 50 -i 0.05 ${dst}`, { allowFail: true, timeoutMs: 30_000 });
  const t = [...r.out.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  if (t.length === 0) return { avg: NaN, median: NaN };
  return { avg: t.reduce((a, b) => a + b, 0) / t.length, median: median(t) };
}

interface Results {
  tcp_direct: TcpResult;
  tcp_relay: TcpResult;
  udp64_pps: number;
  udp64_cpu_us: number;
  ping_direct_ms: number;
  ping_relay_ms: number;
  ping_direct_median_ms: number;
  ping_relay_median_ms: number;
}

function median(xs: number[]): number {
  if (xs.length === 0) return NaN; // not measured (BENCH_METRICS)
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

function medianTcp(rs: TcpResult[]): TcpResult {
  return {
    gbit_s: median(rs.map((r) => r.gbit_s)),
    retransmits: median(rs.map((r) => r.retransmits)),
    cpu_s_per_gb: median(rs.map((r) => r.cpu_s_per_gb)),
    bytes: median(rs.map((r) => r.bytes)),
  };
}

/**
 * Both topologies are up at once; each measurement runs for one implementation
 * and then the other (the order alternates per round), so that load from other
 * processes on a shared machine falls on both alike. Medians over the rounds.
 */
async function measureInterleaved(topos: Topology[]): Promise<Record<string, Results>> {
  const raw = new Map<string, { td: TcpResult[]; tr: TcpResult[]; u: number[]; uc: number[]; pd: number[]; pr: number[]; pdm: number[]; prm: number[] }>();
  for (const t of topos) raw.set(t.impl, { td: [], tr: [], u: [], uc: [], pd: [], pr: [], pdm: [], prm: [] });
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? topos : [...topos].reverse();
    const each = async (metric: string, what: string, f: (t: Topology) => Promise<void>): Promise<void> => {
      if (!METRICS.includes(metric)) return;
      for (const t of order) {
        progress(`round ${round + 1}/${ROUNDS} ${t.impl}: ${what}`);
        await f(t);
      }
    };
    await each('ping', 'ping', async (t) => {
      const r = raw.get(t.impl)!;
      const d = pingStats(t.nsA, '10.89.0.1');
      const v = pingStats(t.nsA, '10.89.0.3');
      r.pd.push(d.avg);
      r.pdm.push(d.median);
      r.pr.push(v.avg);
      r.prm.push(v.median);
    });
    await each('tcp_direct', 'iperf3 TCP direct', async (t) => {
      raw.get(t.impl)!.td.push(await iperfTcp(t, t.nsHub, '10.89.0.1', t.pidsDirect));
    });
    await each('tcp_relay', 'iperf3 TCP via the hub', async (t) => {
      raw.get(t.impl)!.tr.push(await iperfTcp(t, t.nsB, '10.89.0.3', t.pidsRelay));
    });
    await each('udp64', 'iperf3 UDP 64-byte', async (t) => {
      const u = await iperfUdp64(t);
      raw.get(t.impl)!.u.push(u.pps);
      raw.get(t.impl)!.uc.push(u.cpuUs);
    });
  }
  const out: Record<string, Results> = {};
  for (const [impl, r] of raw) {
    out[impl] = {
      tcp_direct: medianTcp(r.td),
      tcp_relay: medianTcp(r.tr),
      udp64_pps: median(r.u),
      udp64_cpu_us: median(r.uc),
      ping_direct_ms: median(r.pd),
      ping_relay_ms: median(r.pr),
      ping_direct_median_ms: median(r.pdm),
      ping_relay_median_ms: median(r.prm),
    };
  }
  return out;
}

const r3 = (n: number): number => Number(n.toFixed(3));

async function main(): Promise<void> {
  const skip = netnsSkipReason(['iperf3', 'ping']);
  if (skip) {
    process.stdout.write(`${JSON.stringify({ bench: 'vs-wireguard', skipped: skip })}\n`);
    return;
  }
  for (const tool of ['wireguard-go', 'wg']) {
    if (IMPLS.includes('wireguard-go') && spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) {
      process.stdout.write(
        `${JSON.stringify({ bench: 'vs-wireguard', skipped: `needs ${tool}: install it with "apt-get install wireguard-go wireguard-tools" (Debian/Ubuntu)` })}\n`,
      );
      return;
    }
  }
  process.stdout.write(
    `${JSON.stringify({
      bench: 'vs-wireguard',
      machine: `${os.cpus().length}x ${os.cpus()[0]?.model ?? 'cpu'}, node ${process.version}, kernel ${os.release()}`,
      loadavg_at_start: os.loadavg().map((l) => Number(l.toFixed(2))),
      implementations: IMPLS,
      seconds: SECONDS,
      rounds: ROUNDS,
      mtu: MTU,
      larktun_workers: WORKERS ?? `default (${os.availableParallelism()})`,
    })}\n`,
  );
  const lab = new Lab();
  let results: Record<string, Results>;
  try {
    const topos: Topology[] = [];
    for (const impl of IMPLS) {
      if (impl === 'larktun' || impl === 'larktun-plain') topos.push(await larktunTopology(lab, impl));
      else if (impl === 'larktun-base' && BASE !== '') topos.push(await larktunTopology(lab, impl));
      else if (impl === 'wireguard-go') topos.push(await wireguardTopology(lab));
      else throw new Error(`BENCH_IMPLS: unknown implementation ${impl} (wireguard-go, larktun, larktun-plain, larktun-base with BENCH_BASE)`);
    }
    results = await measureInterleaved(topos);
    for (const t of topos) await t.stop();
  } finally {
    lab.cleanup();
  }
  const l = results.larktun;
  const p = results['larktun-plain'];
  const bs = results['larktun-base'];
  const w = results['wireguard-go'];
  const ratio = (a: number | undefined, b: number | undefined): number | null => (a !== undefined && b !== undefined && b > 0 ? r3(a / b) : null);
  const line = (metric: string, pick: (r: Results) => number, extra: Record<string, unknown> = {}): void => {
    const lv = l && pick(l);
    const pv = p && pick(p);
    const wv = w && pick(w);
    const bv = bs && pick(bs);
    if ([lv, pv, wv, bv].every((v) => v === undefined || Number.isNaN(v))) return; // not measured (BENCH_METRICS)
    process.stdout.write(
      `${JSON.stringify({
        bench: 'vs-wireguard',
        metric,
        larktun: lv === undefined ? null : r3(lv),
        wireguard_go: wv === undefined ? null : r3(wv),
        ratio: ratio(lv, wv),
        ...(p ? { larktun_plain: r3(pv!), ratio_plain: ratio(pv, wv) } : {}),
        ...(bs ? { larktun_base: r3(bv!), ratio_base: ratio(bv, wv) } : {}),
        ...extra,
      })}\n`,
    );
  };
  line('tcp_direct_gbit_s', (r) => r.tcp_direct.gbit_s, { target_ratio: 1.5 });
  line('tcp_relay_gbit_s', (r) => r.tcp_relay.gbit_s, { target_ratio: 1.5 });
  line('udp64_pps_delivered', (r) => r.udp64_pps, { target_ratio: 2 });
  line('udp64_daemon_cpu_us_per_packet', (r) => r.udp64_cpu_us);
  line('ping_direct_avg_ms', (r) => r.ping_direct_ms);
  line('ping_relay_avg_ms', (r) => r.ping_relay_ms);
  line('ping_direct_median_ms', (r) => r.ping_direct_median_ms);
  line('ping_relay_median_ms', (r) => r.ping_relay_median_ms);
  line('cpu_s_per_gb_direct', (r) => r.tcp_direct.cpu_s_per_gb);
  line('cpu_s_per_gb_relay', (r) => r.tcp_relay.cpu_s_per_gb);
  line('tcp_retransmits_direct', (r) => r.tcp_direct.retransmits);
  line('tcp_retransmits_relay', (r) => r.tcp_relay.retransmits);
  process.stdout.write(`${JSON.stringify({ bench: 'vs-wireguard', loadavg_at_end: os.loadavg().map((x) => Number(x.toFixed(2))) })}\n`);
}

await main();
