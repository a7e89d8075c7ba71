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
import os from 'node:os';
import { Lab, netnsSkipReason, nsExec, sleep, hexKey, type DaemonHandle } from '../test/e2e/netns.js';

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
