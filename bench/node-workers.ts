// The node engine on 1 and on 2 packet worker threads, side by side (root,
// Linux): two spoke → hub pairs in network namespaces, one pair with
// --workers 1 and one with --workers 2, both up at once; every measurement
// alternates between them (BENCH_ROUNDS, default 5; medians), so load from
// other processes falls on both alike. Measured: iperf3 TCP spoke → hub with
// 1 and 4 streams (Gbit/s, retransmits, the out-of-order segments the hub's
// TCP queued — reordering within a flow, or loss — and the datagrams the hub's
// kernel dropped at a full UDP receive buffer: loss) and the share of packets each
// worker of the 2-worker hub and spoke carried. BENCH_SECONDS (default 5)
// per iperf3 run. One JSON line per metric; the load average first and last.
//
// hub_ingress: a hub with INGRESS_PEERS peers receives pre-sealed datagrams
// (1400-byte inner UDP packets) from all of them at once, each peer from its own
// source port, at a paced offered rate, from a generator in a namespace of its
// own (bench/tools/blast.ts: it seals before the window and then only sends, so
// it takes little of the CPU the hub needs). The hub opens, filters, routes and
// writes every packet into its TUN (the kernel then discards them: a blackhole
// route). Packets/s delivered into the TUN and the hub's CPU, with 1 and then 2
// workers, alternating, BENCH_ROUNDS times each (medians). This is the hub's load with many spokes; iperf3 above is one peer's,
// which one worker carries (a peer's datagrams arrive on one socket).
// BENCH_INGRESS_ONLY=1 runs only this; BENCH_INGRESS_RATE (default 300000)
// and BENCH_INGRESS_BYTES (default 1400) set the load.
import { spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { HZ, cpuTicks } from './tools/proc.js';
import { Lab, ROOT, netnsSkipReason, nsExec, sleep, hexKey, type DaemonHandle } from '../test/e2e/netns.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 5));
const PSK = hexKey(0x4e);

interface Pair {
  workers: number;
  nsHub: string;
  nsSpoke: string;
  hub: DaemonHandle;
  spoke: DaemonHandle;
}

async function pair(lab: Lab, workers: number, i: number): Promise<Pair> {
  const nsHub = lab.addNs(`bh${workers}`);
  const nsSpoke = lab.addNs(`bs${workers}`);
  lab.link(nsSpoke, `nwbs${workers}`, `198.19.${10 + i}.2/24`, nsHub, `nwbh${workers}`, `198.19.${10 + i}.1/24`);
  const args = ['--workers', String(workers)];
  const hub = await lab.daemon(nsHub, `bhub${workers}`, {
    role: 'hub',
    virtual_subnet: '10.82.0.0/24',
    local_id: 1,
    local_tun_ip: '10.82.0.1/24',
    local_tun_mtu: 1420,
    local_routes: ['10.82.0.1/32'],
    listen_port: 18130,
    peers: [{ id: 2, name: 'spoke', allowed_src: '10.82.0.2/32', psk: PSK }],
  }, args);
  const spoke = await lab.daemon(nsSpoke, `bspoke${workers}`, {
    role: 'spoke',
    virtual_subnet: '10.82.0.0/24',
    local_id: 2,
    local_tun_ip: '10.82.0.2/24',
    local_tun_mtu: 1420,
    local_routes: ['10.82.0.2/32'],
    keepalive_secs: 1,
    listen_port: 18130,
    peers: [{ id: 1, name: 'hub', endpoint: `198.19.${10 + i}.1:18130`, allowed_src: '10.82.0.0/24', psk: PSK }],
  }, args);
  nsExec(nsHub, 'iperf3 -s -D -B 10.82.0.1 --logfile /dev/null');
  for (let t = 0; t < 50; t++) {
    if (nsExec(nsSpoke, 'ping -n -q -c 1 -W 1 10.82.0.1', { allowFail: true }).status === 0) break;
    await sleep(100);
  }
  return { workers, nsHub, nsSpoke, hub, spoke };
}

function nstat(ns: string, name: string): number {
  const m = new RegExp(`${name}\\s+(\\d+)`).exec(nsExec(ns, `nstat -az ${name}`).out);
  return m ? Number(m[1]) : 0;
}

function iperf(p: Pair, streams: number): { gbps: number; retransmits: number; ofo: number; rcvbuf: number } {
  const ofo0 = nstat(p.nsHub, 'TcpExtTCPOFOQueue');
  const rcv0 = nstat(p.nsHub, 'UdpRcvbufErrors');
  const r = nsExec(p.nsSpoke, `iperf3 -J -c 10.82.0.1 -P ${streams} -t ${SECONDS} -O 1`, { timeoutMs: (SECONDS + 30) * 1000 });
  const j = JSON.parse(r.out) as { end: { sum_sent: { bits_per_second: number; retransmits: number } } };
  return {
    gbps: j.end.sum_sent.bits_per_second / 1e9,
    retransmits: j.end.sum_sent.retransmits,
    ofo: nstat(p.nsHub, 'TcpExtTCPOFOQueue') - ofo0,
    rcvbuf: nstat(p.nsHub, 'UdpRcvbufErrors') - rcv0,
  };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const r3 = (n: number): number => Number(n.toFixed(3));

const INGRESS_PEERS = 16;
const INGRESS_RATE = Number(process.env.BENCH_INGRESS_RATE ?? 300_000);
const INGRESS_BYTES = Number(process.env.BENCH_INGRESS_BYTES ?? 1400);
/** The generator's run: start-up, a ramp, then the measured window. */
const INGRESS_SEND_S = 5;
const INGRESS_WINDOW_S = 2.5;

interface IngressResult {
  workers: number;
  pps: number;
  gbit_s: number;
  cpu_pct: number;
  rx_share: number[];
  rx_pps: number;
  rcvbuf_drops_per_s: number;
  gen?: string;
  drops: Record<string, number>;
}

async function hubIngress(lab: Lab, workers: number): Promise<IngressResult> {
  const nsHub = lab.addNs(`ih${workers}`);
  const nsGen = lab.addNs(`ig${workers}`);
  lab.link(nsGen, `nwig${workers}`, `198.19.${20 + workers}.2/24`, nsHub, `nwih${workers}`, `198.19.${20 + workers}.1/24`);
  // Inner packets go to 10.83.9.0/24: the engine writes them into its TUN and
  // the hub's kernel discards them (forwarding on, a blackhole route): no ICMP.
  nsExec(nsHub, 'sysctl -qw net.ipv4.ip_forward=1 && ip route add blackhole 10.83.9.0/24');
  const psk = (i: number): string => hexKey(0x10 + i);
  const hub = await lab.daemon(nsHub, `ihub${workers}`, {
    role: 'hub',
    virtual_subnet: '10.83.0.0/16',
    local_id: 1,
    local_tun_ip: '10.83.0.1/24',
    local_tun_mtu: 1420,
    local_routes: ['10.83.0.1/32', '10.83.9.0/24'],
    listen_port: 18140,
    peers: Array.from({ length: INGRESS_PEERS }, (_, i) => ({ id: i + 2, name: `g${i}`, allowed_src: `10.83.0.${i + 2}/32`, psk: psk(i) })),
  }, ['--workers', String(workers)]);
  const perFlow = Math.ceil((INGRESS_RATE * INGRESS_SEND_S) / INGRESS_PEERS);
  const spec = {
    target: `198.19.${20 + workers}.1:18140`,
    seconds: INGRESS_SEND_S,
    batch: true,
    pregen: perFlow,
    rate: INGRESS_RATE,
    obfuscate: true,
    flows: Array.from({ length: INGRESS_PEERS }, (_, i) => ({
      from: i + 2,
      to: 1,
      psk: psk(i),
      src: `10.83.0.${i + 2}`,
      dst: '10.83.9.9',
      proto: 'udp' as const,
      sport: 42000 + i,
      dport: 5000,
      bytes: INGRESS_BYTES,
    })),
  };
  const gen = spawn('ip', ['netns', 'exec', nsGen, process.execPath, '--import', 'tsx', path.join(ROOT, 'bench', 'tools', 'blast.ts'), '--spec', '-'], {
    stdio: ['pipe', 'pipe', 'inherit'],
    cwd: ROOT,
  });
  gen.stdin!.end(JSON.stringify(spec));
  let genOut = '';
  gen.stdout!.on('data', (d: Buffer) => (genOut += d.toString()));
  const done = new Promise<void>((r) => gen.once('exit', () => r()));
  const rcvbuf = (): number => {
    const m = /UdpRcvbufErrors\s+(\d+)/.exec(nsExec(nsHub, 'nstat -az UdpRcvbufErrors').out);
    return m ? Number(m[1]) : 0;
  };
  try {
    // The window starts once the datagrams flow (sealing them first takes a while).
    const rx = async (): Promise<number> => (await hub.statusFast()).counters.udp_rx_packets ?? 0;
    const start = await rx();
    for (let t = 0; t < 600 && (await rx()) - start < 10_000; t++) await sleep(50);
    await sleep(500);
    const s0 = await hub.statusFast();
    const b0 = rcvbuf();
    const c0 = cpuTicks(hub.proc.pid!);
    const t0 = performance.now();
    await sleep(INGRESS_WINDOW_S * 1000);
    const s1 = (await hub.statusFast()) as unknown as { counters: Record<string, number>; per_worker?: { counters: Record<string, number> }[] };
    const secs = (performance.now() - t0) / 1000;
    const c1 = cpuTicks(hub.proc.pid!);
    const b1 = rcvbuf();
    const received = (s1.counters.udp_rx_packets ?? 0) - (s0.counters.udp_rx_packets ?? 0);
    const delivered = (s1.counters.tun_tx_packets ?? 0) - (s0.counters.tun_tx_packets ?? 0);
    const pws = s1.per_worker ?? [];
    const rxs = pws.map((w) => w.counters.udp_rx_packets ?? 0);
    const tot = rxs.reduce((a, b) => a + b, 0) || 1;
    return {
      workers,
      pps: Math.round(delivered / secs),
      gbit_s: r3((delivered * INGRESS_BYTES * 8) / secs / 1e9),
      cpu_pct: Math.round(((c1 - c0) / HZ / secs) * 100),
      rx_share: rxs.map((x) => r3(x / tot)),
      rx_pps: Math.round(received / secs),
      rcvbuf_drops_per_s: Math.round((b1 - b0) / secs),
      drops: Object.fromEntries(Object.entries(s1.counters).filter(([k, v]) => k.startsWith('drop_') && v > 0)),
    };
  } finally {
    await done;
    await hub.stop();
  }
}

async function ingress(lab: Lab): Promise<void> {
  // Alternating 1 and 2 workers, ROUNDS times each (medians): the machine's
  // own noise moves single runs by ±20 %.
  const runs: IngressResult[][] = [[], []];
  for (let round = 0; round < ROUNDS; round++) {
    for (const w of round % 2 === 0 ? [1, 2] : [2, 1]) runs[w - 1]!.push(await hubIngress(lab, w));
  }
  const med = (rs: IngressResult[], k: 'pps' | 'cpu_pct' | 'rx_pps' | 'rcvbuf_drops_per_s'): number => median(rs.map((r) => r[k]));
  const [one, two] = runs as [IngressResult[], IngressResult[]];
  const pps1 = med(one, 'pps');
  const pps2 = med(two, 'pps');
  process.stdout.write(
    `${JSON.stringify({
      bench: 'node-workers',
      metric: 'hub_ingress_pps',
      peers: INGRESS_PEERS,
      inner_bytes: INGRESS_BYTES,
      offered_pps: INGRESS_RATE,
      workers_1: pps1,
      workers_2: pps2,
      ratio: r3(pps2 / pps1),
      gbit_s_1: r3((pps1 * INGRESS_BYTES * 8) / 1e9),
      gbit_s_2: r3((pps2 * INGRESS_BYTES * 8) / 1e9),
      hub_cpu_pct_1: med(one, 'cpu_pct'),
      hub_cpu_pct_2: med(two, 'cpu_pct'),
      rcvbuf_drops_per_s_1: med(one, 'rcvbuf_drops_per_s'),
      rcvbuf_drops_per_s_2: med(two, 'rcvbuf_drops_per_s'),
      rx_share_2: two[two.length - 1]!.rx_share,
      all_1: one.map((r) => r.pps),
      all_2: two.map((r) => r.pps),
      drops_1: one[one.length - 1]!.drops,
      drops_2: two[two.length - 1]!.drops,
    })}\n`,
  );
}

async function main(): Promise<void> {
  const skip = netnsSkipReason(['iperf3', 'ping', 'nstat']);
  if (skip) {
    process.stdout.write(`${JSON.stringify({ bench: 'node-workers', skipped: skip })}\n`);
    return;
  }
  process.stdout.write(
    `${JSON.stringify({ bench: 'node-workers', machine: `${os.cpus().length}x ${os.cpus()[0]?.model ?? 'cpu'}`, loadavg_at_start: os.loadavg().map((l) => r3(l)), seconds: SECONDS, rounds: ROUNDS })}\n`,
  );
  const lab = new Lab('nw');
  try {
    await ingress(lab);
    if (process.env.BENCH_INGRESS_ONLY === '1') {
      process.stdout.write(`${JSON.stringify({ bench: 'node-workers', loadavg_at_end: os.loadavg().map((l) => r3(l)) })}\n`);
      return;
    }
    const pairs = [await pair(lab, 1, 0), await pair(lab, 2, 1)];
    const res = new Map<string, number[]>();
    const add = (k: string, v: number): void => {
      res.set(k, [...(res.get(k) ?? []), v]);
    };
    for (let round = 0; round < ROUNDS; round++) {
      for (const streams of [1, 4]) {
        for (const p of round % 2 === 0 ? pairs : [...pairs].reverse()) {
          const r = iperf(p, streams);
          add(`w${p.workers}_p${streams}_gbps`, r.gbps);
          add(`w${p.workers}_p${streams}_retr`, r.retransmits);
          add(`w${p.workers}_p${streams}_ofo`, r.ofo);
          add(`w${p.workers}_p${streams}_rcvbuf`, r.rcvbuf);
        }
      }
    }
    for (const streams of [1, 4]) {
      const one = median(res.get(`w1_p${streams}_gbps`)!);
      const two = median(res.get(`w2_p${streams}_gbps`)!);
      process.stdout.write(
        `${JSON.stringify({
          bench: 'node-workers',
          metric: `tcp_direct_${streams}_stream${streams > 1 ? 's' : ''}_gbit_s`,
          workers_1: r3(one),
          workers_2: r3(two),
          ratio: r3(two / one),
          retransmits_1: median(res.get(`w1_p${streams}_retr`)!),
          retransmits_2: median(res.get(`w2_p${streams}_retr`)!),
          out_of_order_1: median(res.get(`w1_p${streams}_ofo`)!),
          out_of_order_2: median(res.get(`w2_p${streams}_ofo`)!),
          udp_rcvbuf_drops_1: median(res.get(`w1_p${streams}_rcvbuf`)!),
          udp_rcvbuf_drops_2: median(res.get(`w2_p${streams}_rcvbuf`)!),
          all_2: res.get(`w2_p${streams}_gbps`)!.map(r3),
          all_1: res.get(`w1_p${streams}_gbps`)!.map(r3),
        })}\n`,
      );
    }
    const two = pairs[1]!;
    for (const [side, d] of [['hub', two.hub], ['spoke', two.spoke]] as const) {
      const s = (await d.statusFast()) as unknown as { counters: Record<string, number>; per_worker: { index: number; counters: Record<string, number> }[] };
      const moved = s.per_worker.map((w) => w.counters.udp_rx_packets! + w.counters.tun_rx_packets!);
      const total = moved.reduce((a, b) => a + b, 0) || 1;
      const drops = Object.fromEntries(Object.entries(s.counters).filter(([k, v]) => k.startsWith('drop_') && v > 0));
      process.stdout.write(`${JSON.stringify({ bench: 'node-workers', metric: `share_per_worker_${side}`, shares: moved.map((m) => r3(m / total)), drops })}\n`);
    }
    for (const p of pairs) {
      nsExec(p.nsHub, 'pkill -f "iperf3 -s -D -B 10.82.0.1"', { allowFail: true });
      await p.hub.stop();
      await p.spoke.stop();
    }
  } finally {
    lab.cleanup();
  }
  process.stdout.write(`${JSON.stringify({ bench: 'node-workers', loadavg_at_end: os.loadavg().map((l) => r3(l)) })}\n`);
}

await main();
