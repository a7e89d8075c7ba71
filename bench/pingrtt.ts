// Idle ping RTT through the tunnel (network namespaces, root): spoke A → hub →
// spoke B, 100 pings 50 ms apart, with every daemon on the node:dgram UDP path
// (LARKTUN_UDP_BATCH=0) and then on the batched path (recvmmsg/sendmmsg,
// GRO/GSO; flushed at the end of every receive batch and TUN batch). Batching
// must not add latency: an idle packet is flushed as soon as the socket or TUN
// has no more to give. Prints one JSON line (min/median/avg/p90 ms per path,
// and the load average: the machine is shared).
import os from 'node:os';
import { Lab, netnsSkipReason, nsExec, hexKey } from '../test/e2e/netns.js';

const COUNT = Number(process.env.BENCH_PINGS ?? 100);

function stats(xs: number[]): Record<string, number> {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number): number => s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
  const r3 = (x: number): number => Math.round(x * 1000) / 1000;
  return { n: s.length, min_ms: r3(s[0]!), median_ms: r3(q(0.5)), avg_ms: r3(s.reduce((a, b) => a + b, 0) / s.length), p90_ms: r3(q(0.9)) };
}

async function run(batch: boolean): Promise<Record<string, unknown>> {
  const lab = new Lab();
  try {
    const hubNs = lab.addNs('hub');
    const aNs = lab.addNs('a');
    const bNs = lab.addNs('b');
    lab.link(aNs, 'ua', '198.18.1.2/24', hubNs, 'ha', '198.18.1.1/24');
    lab.link(bNs, 'ub', '198.18.2.2/24', hubNs, 'hb', '198.18.2.1/24');
    const pskA = hexKey(0x11);
    const pskB = hexKey(0x22);
    const env = { LARKTUN_UDP_BATCH: batch ? '1' : '0' };
    await lab.daemon(hubNs, 'hub', {
      role: 'hub',
      virtual_subnet: '10.88.0.0/24',
      local_id: 1,
      local_tun_ip: '10.88.0.1/24',
      local_routes: ['10.88.0.1/32'],
      peers: [
        { id: 2, name: 'a', endpoint: '198.18.1.2:18020', allowed_src: '10.88.0.2/32', psk: pskA },
        { id: 3, name: 'b', endpoint: '198.18.2.2:18020', allowed_src: '10.88.0.3/32', psk: pskB },
      ],
    }, [], env);
    const spoke = (id: number, psk: string, ep: string) => ({
      role: 'spoke',
      virtual_subnet: '10.88.0.0/24',
      local_id: id,
      local_tun_ip: `10.88.0.${id}/24`,
      peers: [{ id: 1, name: 'hub', endpoint: ep, allowed_src: '10.88.0.0/24', psk }],
    });
    const a = await lab.daemon(aNs, 'a', spoke(2, pskA, '198.18.1.1:18020'), [], env);
    await lab.daemon(bNs, 'b', spoke(3, pskB, '198.18.2.1:18020'), [], env);
    nsExec(aNs, 'ping -c 3 -i 0.2 -W 2 10.88.0.3', { allowFail: true }); // warm up: endpoints, ARP
    const load = os.loadavg()[0]!;
    const out = nsExec(aNs, `ping -c ${COUNT} -i 0.05 -W 2 10.88.0.3`, { allowFail: true, timeoutMs: (COUNT * 0.05 + 30) * 1000 }).out;
    const rtts = [...out.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
    const io = ((await a.statusFast()) as unknown as { udp_io?: { path: string; gro: boolean; gso: boolean } }).udp_io;
    return { path: io?.path ?? null, gro: io?.gro ?? null, gso: io?.gso ?? null, lost: COUNT - rtts.length, ...stats(rtts.length ? rtts : [NaN]), loadavg_1m: Math.round(load * 100) / 100 };
  } finally {
    lab.cleanup();
  }
}

async function main(): Promise<void> {
  const skip = netnsSkipReason(['ping']);
  if (skip) {
    process.stdout.write(`${JSON.stringify({ bench: 'pingrtt', skipped: skip })}\n`);
    return;
  }
  const dgram = await run(false);
  const batch = await run(true);
  process.stdout.write(`${JSON.stringify({ bench: 'pingrtt', pings: COUNT, interval_ms: 50, dgram, batch, machine: `${os.cpus().length}x ${os.cpus()[0]?.model ?? 'cpu'}, node ${process.version}` })}\n`);
}

await main();
