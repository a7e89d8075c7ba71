// CPU profile of larktund during iperf3 TCP through the tunnel (root, Linux),
// MTU 1420, every daemon run with `node --cpu-prof`; prints the top functions
// by self time for each daemon as JSON lines. Not a benchmark of its own
// (bench/tools is not run by `npm run bench`):
//
//   node --import tsx bench/tools/profile-tun.ts [seconds] [top] [direct|relay] [tcp|udp64]
//
// direct: spoke A → HUB's own TUN address (A: TUN read, split, seal, send;
//         hub: receive, open, route, coalesce, TUN write)
// relay:  spoke A → HUB → spoke B (the hub only opens, routes and re-seals)
// Each line also carries that daemon's status: udp_io (syscalls, datagrams,
// receive batches), tun_offload and counters, read just before it stopped,
// and tun_link: the kernel's packet and drop counts of its TUN device.
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Lab, netnsSkipReason, nsExec, ping, sleep, hexKey } from '../../test/e2e/netns.js';

const SECONDS = Number(process.argv[2] ?? 10);
const TOP = Number(process.argv[3] ?? 15);
const MODE = process.argv[4] === 'relay' ? 'relay' : 'direct';
// udp64: iperf3 UDP with 64-byte payloads at full rate instead of TCP (small-packet cost).
const UDP64 = process.argv[5] === 'udp64';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

function summarize(file: string): { total_ms: number; top: { fn: string; self_pct: number }[] } {
  const prof = JSON.parse(readFileSync(file, 'utf8')) as { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[]; startTime: number; endTime: number };
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    const n = byId.get(prof.samples[i]!)!;
    const dt = prof.timeDeltas[i] ?? 0;
    const f = n.callFrame;
    const where = f.url ? `${path.basename(f.url)}:${f.lineNumber + 1}` : '';
    const key = `${f.functionName || '(anonymous)'}${where ? ` ${where}` : ''}`;
    self.set(key, (self.get(key) ?? 0) + dt);
    total += dt;
  }
  const top = [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, TOP)
    .map(([fn, us]) => ({ fn, self_pct: Number(((100 * us) / total).toFixed(1)) }));
  return { total_ms: Math.round(total / 1000), top };
}

async function main(): Promise<void> {
  const skip = netnsSkipReason(['iperf3']);
  if (skip) {
    process.stdout.write(`${JSON.stringify({ profile: 'tun', skipped: skip })}\n`);
    return;
  }
  const lab = new Lab();
  try {
    const nsHub = lab.addNs('phub');
    const nsA = lab.addNs('pa');
    const nsB = lab.addNs('pb');
    lab.link(nsA, 'ua', '198.18.1.2/24', nsHub, 'ha', '198.18.1.1/24');
    lab.link(nsB, 'ub', '198.18.2.2/24', nsHub, 'hb', '198.18.2.1/24');
    const psk = hexKey(0x70);
    const pskB = hexKey(0x71);
    const dirs: Record<string, string> = { hub: path.join(lab.dir, 'prof-hub'), a: path.join(lab.dir, 'prof-a') };
    if (MODE === 'relay') dirs.b = path.join(lab.dir, 'prof-b');
    for (const d of Object.values(dirs)) mkdirSync(d);
    const hub = await lab.daemon(nsHub, 'hub', {
      role: 'hub', virtual_subnet: '10.67.0.0/24', local_id: 1, local_tun_ip: '10.67.0.1/24', local_tun_mtu: 1420,
      local_routes: ['10.67.0.1/32'], listen_port: 18020,
      peers: [
        { id: 2, name: 'a', allowed_src: '10.67.0.2/32', psk },
        { id: 3, name: 'b', endpoint: '198.18.2.2:18020', allowed_src: '10.67.0.3/32', psk: pskB },
      ],
    }, [], {}, ['--cpu-prof', `--cpu-prof-dir=${dirs.hub}`]);
    const a = await lab.daemon(nsA, 'a', {
      role: 'spoke', virtual_subnet: '10.67.0.0/24', local_id: 2, local_tun_ip: '10.67.0.2/24', local_tun_mtu: 1420, listen_port: 18020,
      peers: [{ id: 1, name: 'hub', endpoint: '198.18.1.1:18020', allowed_src: '10.67.0.0/24', psk }],
    }, [], {}, ['--cpu-prof', `--cpu-prof-dir=${dirs.a}`]);
    const b = MODE === 'relay'
      ? await lab.daemon(nsB, 'b', {
        role: 'spoke', virtual_subnet: '10.67.0.0/24', local_id: 3, local_tun_ip: '10.67.0.3/24', local_tun_mtu: 1420, listen_port: 18020,
        peers: [{ id: 1, name: 'hub', endpoint: '198.18.2.1:18020', allowed_src: '10.67.0.0/24', psk: pskB }],
      }, [], {}, ['--cpu-prof', `--cpu-prof-dir=${dirs.b}`])
      : null;
    const dst = MODE === 'relay' ? '10.67.0.3' : '10.67.0.1';
    ping(nsA, dst, 3);
    const srv = spawn('ip', ['netns', 'exec', MODE === 'relay' ? nsB : nsHub, 'iperf3', '-s', '-1'], { stdio: 'ignore' });
    await sleep(400);
    const r = nsExec(nsA, `iperf3 -c ${dst} -t ${SECONDS} -J${UDP64 ? ' -u -l 64 -b 0' : ''}`, { allowFail: true, timeoutMs: (SECONDS + 30) * 1000 });
    srv.kill();
    let gbit = 0;
    try {
      gbit = (JSON.parse(r.out) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second / 1e9;
    } catch {
      /* reported as 0 */
    }
    // What each daemon's I/O did (batch sizes, syscalls, offloads), read before stopping.
    const io: Record<string, unknown> = {};
    for (const [who, d] of [['a', a], ['hub', hub], ['b', b]] as const) {
      if (d === null) continue;
      const st = JSON.parse(d.cli('status --json').out) as { tun_offload: unknown; udp_io: unknown; counters: Record<string, number> };
      // The kernel's side of the TUN device: tx_dropped counts packets the
      // daemon's reader did not take in time (its queue was full), i.e. where
      // a sender outran the daemon.
      const link = nsExec(d.ns, 'ip -s -j link show lark0', { allowFail: true });
      let tun_link: unknown = null;
      try {
        const s64 = (JSON.parse(link.out) as { stats64: { rx: Record<string, number>; tx: Record<string, number> } }[])[0]!.stats64;
        tun_link = { rx_packets: s64.rx.packets, rx_dropped: s64.rx.dropped, tx_packets: s64.tx.packets, tx_dropped: s64.tx.dropped };
      } catch {
        /* left null */
      }
      io[who] = { tun_offload: st.tun_offload, udp_io: st.udp_io, counters: st.counters, tun_link };
    }
    await a.stop();
    await hub.stop();
    await b?.stop();
    for (const [who, dir] of Object.entries(dirs)) {
      const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
      if (files.length === 0) {
        process.stdout.write(`${JSON.stringify({ profile: who, error: 'no .cpuprofile written' })}\n`);
        continue;
      }
      process.stdout.write(`${JSON.stringify({ profile: who, mode: MODE, load: UDP64 ? 'udp64' : 'tcp', iperf3_gbit_s: Number(gbit.toFixed(3)), ...(io[who] as object), file: path.join(dir, files[0]!), ...summarize(path.join(dir, files[0]!)) })}\n`);
    }
  } finally {
    lab.cleanup();
  }
}

await main();
