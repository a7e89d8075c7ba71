// Multi-tenant relay engine benchmark on loopback (no root, no namespaces).
// Prints one JSON line; progress goes to stderr.
//
//   blast.ts (generator) ──► RelayEngine (own process) ──► sink.ts (never reads)
//
// The RelayEngine runs in its own process (bench/tools/relay-host.ts, driven
// over IPC) bound to 127.0.0.1; it measures its own counters, CPU time and heap.
// The generator is bench/dataplane's wire-level generator (bench/tools/blast.ts)
// in another process: it plays the sending nodes, sealing 1400-byte inner UDP
// packets with each link's key. The destination links' endpoints are sockets of
// bench/tools/sink.ts, which announced them with one keepalive each and then
// blocks its event loop, so the kernel drops relayed datagrams at the full
// socket queue (loopback delivery happens in the sender's context, so some of
// that kernel work is charged to the relay, as veth delivery is in
// bench/dataplane).
//
// 1. relay_pps: one tenant, links A → B. `allow_all`: the packet filter admits
//    everything; `filter_100_rules`: ~100 rules over a 300-node tenant, the flow
//    admitted by one of them (then flow-tracked: every later packet takes the
//    flow-table fast path).
// 2. relay_pps_many_tenants: 200 tenants × 10 links (overlapping addresses,
//    a 20-rule filter each); in every other tenant link 1 sends to link 2
//    (100 sending links). `distinct_src_ports`: each sending link has its own
//    source port; `shared_src_port`: all 100 send from one socket, so the
//    relay's endpoint-first link lookup has to trial the keys of every link
//    learned at that address:port (obfuscated headers carry no clear key id).
//    `junk_unknown_link`: datagrams from a link id not in the view (what a
//    scanner or a stale node sends): each is trialled against every link's key
//    before it is dropped (drop_unknown_peer); pps counts those drops.
// 3. Heap per window, inside the relay process: GC events and pause, new-space
//    and heap drift, and bytes allocated per received datagram (v8.GCProfiler:
//    growth + what every collection freed); a sampling heap profile of the
//    allow_all run names the allocation sites.
// 4. setView of the 200 × 10 view: first (every link new: key derivation,
//    filter compiles), the same view again (everything kept), and a one-link
//    change (a subnet route added/removed on one link), medians of repeats;
//    the relay's heap (after a full GC) before and after the first one.
//
// Per phase: pps (forwarded), gbit_s (inner bytes), cpu_pct of the relay
// process (all threads; 100 = one core), pps_per_core, the generator's offered
// rate. Generator, relay and sink share the machine (2 cores here): figures
// are indicative; run on an idle machine for comparable numbers.
// BENCH_RELAY_WORKERS_ONLY=1 runs only the 1-vs-2 packet thread step
// (BENCH_RELAY_WORKER_SECONDS, BENCH_RELAY_WORKER_PREGEN tune it).
// BENCH_SECONDS (default 5) sets each window; BENCH_RELAY_SENDERS (default 100)
// the sending links of step 2; BENCH_RELAY_HOST_ARGS adds node
// flags to the relay process (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof").
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FilterRule } from '../src/acl/index.js';
import type { RelayLinkSpec, RelayTenantView, RelayView } from '../src/dataplane/relay.js';
import type { BlastSpec } from './tools/blast.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const BYTES = 1400;
const RELAY_ID = 65535;
const TENANTS = 200;
const LINKS_PER_TENANT = 10;
const RULES_ONE = 100;
const RULES_MANY = 20;
const PROFILE_MS = 2000;
/** Sending links in relay_pps_many_tenants, one per tenant, every (TENANTS / SENDERS)-th tenant. */
const SENDERS = Math.max(1, Math.min(TENANTS, Number(process.env.BENCH_RELAY_SENDERS ?? 100)));
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const TOOLS = path.join(ROOT, 'bench', 'tools');

const progress = (msg: string): void => void process.stderr.write(`bench/relay: ${msg}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const pskOf = (link: number): string => createHash('sha256').update(`bench/relay link ${link}`).digest('hex');
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const r1 = (x: number): number => Math.round(x * 10) / 10;

// ---- views ----------------------------------------------------------------------

const v4 = (k: number): string => `100.64.${k >> 8}.${k & 255}`;
const v6 = (k: number): string => `fd7a:115c:a1e0::${k.toString(16)}`;
const nodeIPs = (k: number): string[] => [v4(k), v6(k)];

const ALLOW_ALL: FilterRule[] = [{ SrcIPs: ['*'], DstPorts: [{ IP: '*', Ports: { First: 0, Last: 65535 } }] }];

/**
 * A tenant policy of `n` rules over nodes 1..300 (IPv4 + IPv6 each, as a
 * compiled Tailscale filter lists them): groups of hosts, a few /24s, subnet
 * routes, service ports and ranges, some protocol-restricted. The flow
 * node `allow.src` → node `allow.dst` UDP `allow.port` is admitted by exactly
 * one rule in the middle; no other rule names `allow.dst`.
 */
function tenantFilter(n: number, seed: number, allow: { src: number; dst: number; port: number }): FilterRule[] {
  let s = seed >>> 0 || 1;
  const rnd = (m: number): number => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % m;
  };
  const other = (): number => 3 + rnd(298);
  const rules: FilterRule[] = [];
  for (let r = 0; r < n; r++) {
    if (r === n >> 1) {
      rules.push({
        SrcIPs: [...nodeIPs(allow.src), ...nodeIPs(other()), ...nodeIPs(other())],
        DstPorts: nodeIPs(allow.dst).map((IP) => ({ IP, Ports: { First: allow.port, Last: allow.port } })),
        IPProto: [17],
      });
      continue;
    }
    const kind = rnd(10);
    const src: string[] = [];
    if (kind === 0) src.push(`100.64.${rnd(2)}.0/24`, `fd7a:115c:a1e0::${(rnd(2) * 256).toString(16)}/120`);
    else for (let k = 1 + rnd(8); k > 0; k--) src.push(...nodeIPs(other()));
    const DstPorts: NonNullable<FilterRule['DstPorts']> = [];
    for (let k = 1 + rnd(3); k > 0; k--) {
      const pk = rnd(10);
      const Ports = pk < 6 ? { First: [22, 80, 443, 5432, 3389, 53][rnd(6)]!, Last: 0 } : pk < 9 ? { First: 8000, Last: 8100 } : { First: 0, Last: 65535 };
      if (Ports.Last === 0) Ports.Last = Ports.First;
      if (rnd(10) === 0) DstPorts.push({ IP: `10.${rnd(200)}.0.0/16`, Ports });
      else for (const IP of nodeIPs(other())) DstPorts.push({ IP, Ports });
    }
    const rule: FilterRule = { SrcIPs: src, DstPorts };
    const pr = rnd(8);
    if (pr === 0) rule.IPProto = [6];
    else if (pr === 1) rule.IPProto = [17];
    rules.push(rule);
  }
  return rules;
}

function linkSpec(id: number, addr: number, routes: string[] = []): RelayLinkSpec {
  return {
    link_id: id,
    node_id: id,
    node: `node-${id}`,
    psk: pskOf(id),
    previous_psk: null,
    previous_psk_valid_until: null,
    allowed_src: [`${v4(addr)}/32`, `${v6(addr)}/128`],
    routes,
    exit_link_id: null,
  };
}

function relayView(hash: string, port: number, tenants: RelayTenantView[]): RelayView {
  return { hash, relay: { id: 1, name: 'bench', endpoints: [`127.0.0.1:${port}`], relay_link_id: RELAY_ID, tenant_id: null }, tenants };
}

function tenant(id: number, links: RelayLinkSpec[], filter: FilterRule[]): RelayTenantView {
  return { tenant: `tenant-${id}`, tenant_id: id, online: links.map((l) => l.node_id), links, packet_filter: filter };
}

// ---- processes ------------------------------------------------------------------

interface Sample {
  t: number;
  cpu_us: number;
  counters: Record<string, number>;
  filter?: Record<string, number>;
  heap?: Record<string, unknown> & { young_alloc_bytes: number; heap_alloc_bytes: number };
}

class RelayHost {
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  private constructor(
    readonly proc: ChildProcess,
    readonly port: number,
  ) {
    proc.on('message', (m: { id: number; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.error) p.reject(new Error(`relay-host: ${m.error}`));
      else p.resolve(m as Record<string, unknown>);
    });
    proc.once('exit', (code) => {
      for (const p of this.pending.values()) p.reject(new Error(`relay-host exited (${code})`));
      this.pending.clear();
    });
  }

  static start(env: Record<string, string> = {}): Promise<RelayHost> {
    const extra = (process.env.BENCH_RELAY_HOST_ARGS ?? '').split(' ').filter(Boolean);
    const proc = fork(path.join(TOOLS, 'relay-host.ts'), [], { execArgv: ['--import', 'tsx', '--expose-gc', ...extra], cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    return new Promise((resolve, reject) => {
      proc.once('message', (m: { ready?: boolean; port?: number }) => (m.ready ? resolve(new RelayHost(proc, m.port!)) : reject(new Error('relay-host did not start'))));
      proc.once('exit', (code) => reject(new Error(`relay-host exited (${code})`)));
    });
  }

  req<T = Sample>(op: string, extra: Record<string, unknown> = {}): Promise<T> {
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: Record<string, unknown>) => void, reject });
      this.proc.send({ id, op, ...extra });
    });
  }

  async stop(): Promise<void> {
    const exited = new Promise((r) => this.proc.once('exit', r));
    await this.req('stop').catch(() => {});
    await Promise.race([exited, sleep(3000)]);
    if (this.proc.exitCode === null) this.proc.kill();
  }
}

/** Runs node with a bench tool, `input` on its stdin; resolves with its stdout once it has printed a line. */
function tool(script: string, args: string[], input: unknown): { proc: ChildProcess; line: Promise<string>; exit: Promise<number | null> } {
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(TOOLS, script), ...args], { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  const line = new Promise<string>((resolve, reject) => {
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const i = out.indexOf('\n');
      if (i >= 0) resolve(out.slice(0, i));
    });
    proc.once('exit', (code) => reject(new Error(`${script} exited (${code}) without output`)));
  });
  line.catch(() => {});
  const exit = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  proc.stdin!.end(JSON.stringify(input));
  return { proc, line, exit };
}

/** Sink sockets for `links`; waits until the relay has learned every one of their endpoints. */
async function startSink(host: RelayHost, links: number[]): Promise<ChildProcess> {
  const t = tool('sink.ts', [], { target: `127.0.0.1:${host.port}`, relay_id: RELAY_ID, links: links.map((link) => ({ link, psk: pskOf(link) })) });
  await t.line;
  const deadline = Date.now() + 10_000;
  let learned = 0;
  while (Date.now() < deadline) {
    learned = (await host.req<{ learned: number }>('endpoints')).learned;
    if (learned >= links.length) return t.proc;
    await sleep(50);
  }
  t.proc.kill();
  throw new Error(`the relay learned only ${learned} of ${links.length} sink endpoints`);
}

interface Phase {
  pps: number;
  /** Inner bytes forwarded (relay_packets phases only). */
  gbit_s?: number;
  cpu_pct: number;
  pps_per_core: number;
  rx_pps: number;
  counted?: string;
  offered_pps: number;
  drops_in_window: number;
  heap: Record<string, unknown>;
  filter?: Record<string, number>;
  lookup?: Record<string, number>;
  alloc_sites?: Record<string, unknown>;
}

const dropSum = (c: Record<string, number>): number => Object.entries(c).reduce((a, [k, v]) => (k.startsWith('drop_') ? a + v : a), 0);

/** Runs the generator with `spec` and measures the relay over a SECONDS window once it is forwarding. */
async function measure(
  host: RelayHost,
  name: string,
  spec: Omit<BlastSpec, 'seconds' | 'target'>,
  opts: { tenant?: number; profileMs?: number; counter?: string; seconds?: number } = {},
): Promise<Phase> {
  const SECONDS_ = opts.seconds ?? SECONDS;
  const counter = opts.counter ?? 'relay_packets';
  progress(`${name}: ${spec.flows.length} sending link(s)${spec.shared_socket ? ' on one source port' : ''}`);
  const profileMs = opts.profileMs ?? 0;
  const start = (await host.req('sample')).counters[counter]!;
  const gen = tool('blast.ts', ['--spec', '-'], { ...spec, target: `127.0.0.1:${host.port}`, seconds: SECONDS_ + 2.5 + profileMs / 1000 } satisfies BlastSpec);
  const deadline = Date.now() + 20_000;
  while ((await host.req('sample')).counters[counter] === start) {
    if (Date.now() > deadline) throw new Error(`${name}: ${counter} does not move`);
    await sleep(100);
  }
  await sleep(500); // past the ramp-up
  const w0 = await host.req('window-start', opts.tenant === undefined ? {} : { tenant: opts.tenant });
  await sleep(SECONDS_ * 1000);
  const w1 = await host.req('window-end', opts.tenant === undefined ? {} : { tenant: opts.tenant });
  const sites = profileMs > 0 ? await host.req<Record<string, unknown>>('heap-profile', { ms: profileMs }) : undefined;
  const lookup = await host.req<Record<string, number>>('endpoints');
  const g = JSON.parse(await gen.line) as { sent: number; seconds: number };
  await gen.exit;
  const secs = (w1.t - w0.t) / 1000;
  const d = (k: string): number => w1.counters[k]! - w0.counters[k]!;
  const pps = d(counter) / secs;
  const rx = d('udp_rx_packets');
  const cpu = (w1.cpu_us - w0.cpu_us) / 1e6 / secs;
  const h = w1.heap!;
  const { id: _id, ...siteInfo } = (sites ?? {}) as Record<string, unknown>;
  const r: Phase = {
    pps: Math.round(pps),
    ...(counter === 'relay_packets' ? { gbit_s: Number(((pps * BYTES * 8) / 1e9).toFixed(3)) } : {}),
    cpu_pct: Math.round(cpu * 100),
    pps_per_core: cpu > 0 ? Math.round(pps / cpu) : 0,
    rx_pps: Math.round(rx / secs),
    offered_pps: Math.round(g.sent / g.seconds),
    drops_in_window: dropSum(w1.counters) - dropSum(w0.counters),
    ...(counter !== 'relay_packets' ? { counted: counter } : {}),
    heap: {
      ...h,
      young_alloc_bytes_per_packet: rx > 0 ? r1(h.young_alloc_bytes / rx) : null,
      heap_alloc_bytes_per_packet: rx > 0 ? r1(h.heap_alloc_bytes / rx) : null,
    },
    ...(w0.filter && w1.filter
      ? {
          filter: {
            rules: w1.filter.rules!,
            flows: w1.filter.flows!,
            allow_rule: w1.filter.filter_allow_rule! - w0.filter.filter_allow_rule!,
            allow_flow: w1.filter.filter_allow_flow! - w0.filter.filter_allow_flow!,
            dropped: Object.keys(w1.filter).filter((k) => k.startsWith('filter_drop_')).reduce((a, k) => a + w1.filter![k]! - w0.filter![k]!, 0),
          },
        }
      : {}),
    lookup: { links_with_endpoint: lookup.learned!, max_links_per_address: lookup.max_links_per_addr!, max_links_per_endpoint: lookup.max_links_per_endpoint! },
    ...(sites ? { alloc_sites: siteInfo } : {}),
  };
  progress(`${name}: ${r.pps} pps, relay CPU ${r.cpu_pct}%, ${r.pps_per_core} pps/core, offered ${r.offered_pps} pps, ${h.gc_events as number} GCs, ${r.heap.young_alloc_bytes_per_packet} B/packet`);
  return r;
}

// ---- I/O paths ---------------------------------------------------------------------

/**
 * Relay forwarding of 1400-byte datagrams (one tenant, A → B, allow-all) with
 * the relay on the node:dgram path and on the batched path (recvmmsg/sendmmsg,
 * GRO/GSO), one JSON line each. The generator sends through the batched layer
 * in both runs so that it can offer more than either relay forwards; the load
 * average is printed with each line (the machine is shared).
 */
/** Young-generation bytes per relayed packet the batched path may allocate (it is ~3 B: the microtask that flushes a batch, shared by its packets). */
const ALLOC_BOUND = Number(process.env.BENCH_ALLOC_BOUND ?? 8);

async function ioPaths(): Promise<void> {
  for (const io of ['dgram', 'batch'] as const) {
    const host = await RelayHost.start({ LARKTUN_UDP_BATCH: io === 'batch' ? '1' : '0' });
    const sinks: ChildProcess[] = [];
    try {
      const links = [linkSpec(1, 1), linkSpec(2, 2)];
      await host.req('view', { views: [relayView(`io-${io}`, host.port, [tenant(1, links, ALLOW_ALL)])] });
      sinks.push(await startSink(host, [2]));
      const flow = { from: 1, to: RELAY_ID, psk: pskOf(1), src: v4(1), dst: v4(2), proto: 'udp', sport: 40000, dport: 5000, bytes: BYTES } as const;
      const load0 = os.loadavg()[0]!;
      const r = await measure(host, `relay_io ${io}`, { flows: [flow], batch: true }, { profileMs: PROFILE_MS });
      const st = await host.req<Record<string, unknown>>('io');
      const perPacket = r.heap['young_alloc_bytes_per_packet'] as number | null;
      const allocOk = perPacket !== null && perPacket <= ALLOC_BOUND;
      if (io === 'batch' && !allocOk) {
        progress(`relay_io batch: ${perPacket} B/packet allocated, above the bound of ${ALLOC_BOUND}`);
        process.exitCode = 1;
      }
      const { id: _id, ...ioStatus } = st;
      process.stdout.write(
        `${JSON.stringify({
          bench: 'relay_io',
          io,
          packet_bytes: BYTES,
          window_s: SECONDS,
          pps: r.pps,
          gbit_s: r.gbit_s,
          cpu_pct: r.cpu_pct,
          pps_per_core: r.pps_per_core,
          rx_pps: r.rx_pps,
          offered_pps: r.offered_pps,
          drops_in_window: r.drops_in_window,
          young_alloc_bytes_per_packet: r.heap['young_alloc_bytes_per_packet'],
          ...(io === 'batch' ? { alloc_bound_bytes: ALLOC_BOUND, alloc_bound_ok: allocOk } : {}),
          gc_events: r.heap['gc_events'],
          alloc_sites: r.alloc_sites,
          io_status: ioStatus,
          loadavg_1m: [Math.round(load0 * 100) / 100, Math.round(os.loadavg()[0]! * 100) / 100],
          machine: `${os.cpus().length}x ${os.cpus()[0]?.model ?? 'cpu'}, node ${process.version}`,
        })}\n`,
      );
    } finally {
      for (const s of sinks) s.kill();
      await host.stop();
    }
  }
}

// ---- packet threads ------------------------------------------------------------------

/**
 * Relay forwarding with 1 and then 2 packet threads: WORKER_FLOWS sending links
 * (one source port each, so the kernel spreads them over the threads' sockets)
 * to one sink link, 1400-byte datagrams, allow-all. The generator seals its
 * datagrams before the window and then only sends them, so that on a 2-core
 * machine it leaves the relay as much CPU as it can; its window is
 * WORKER_SECONDS (the pre-sealed datagrams must last through it).
 */
const WORKER_FLOWS = 16;
const WORKER_SECONDS = Number(process.env.BENCH_RELAY_WORKER_SECONDS ?? 2);
const WORKER_PREGEN = Number(process.env.BENCH_RELAY_WORKER_PREGEN ?? 90_000);
/**
 * Offered rate (datagrams/s): paced, because an unpaced generator of
 * pre-sealed datagrams offers millions per second and the loopback's receive
 * work it causes takes the CPU the relay needs (the relay then forwards less).
 */
const WORKER_RATE = Number(process.env.BENCH_RELAY_WORKER_RATE ?? 400_000);

async function workerScaling(): Promise<void> {
  const rows: { workers: number; pps: number }[] = [];
  for (const workers of [1, 2]) {
    const host = await RelayHost.start({ LARKTUN_WORKERS: String(workers) });
    const sinks: ChildProcess[] = [];
    try {
      const sink = WORKER_FLOWS + 1;
      const links = Array.from({ length: WORKER_FLOWS + 1 }, (_, i) => linkSpec(i + 1, i + 1));
      await host.req('view', { views: [relayView(`workers-${workers}`, host.port, [tenant(1, links, ALLOW_ALL)])] });
      sinks.push(await startSink(host, [sink]));
      const flows = Array.from(
        { length: WORKER_FLOWS },
        (_, i) => ({ from: i + 1, to: RELAY_ID, psk: pskOf(i + 1), src: v4(i + 1), dst: v4(sink), proto: 'udp', sport: 41000 + i, dport: 5000, bytes: BYTES }) as const,
      );
      const load0 = os.loadavg()[0]!;
      const r = await measure(host, `relay_workers ${workers}`, { flows, batch: true, pregen: WORKER_PREGEN, rate: WORKER_RATE }, { seconds: WORKER_SECONDS });
      const st = await host.req<{ workers: { running: number; threads: { udp_rx_packets: number }[] } }>('io');
      rows.push({ workers, pps: r.pps });
      process.stdout.write(
        `${JSON.stringify({
          bench: 'relay_workers',
          workers,
          running: st.workers.running,
          sending_links: WORKER_FLOWS,
          packet_bytes: BYTES,
          window_s: WORKER_SECONDS,
          pps: r.pps,
          gbit_s: r.gbit_s,
          cpu_pct: r.cpu_pct,
          pps_per_core: r.pps_per_core,
          offered_pps: r.offered_pps,
          drops_in_window: r.drops_in_window,
          rx_per_thread: st.workers.threads.map((t) => t.udp_rx_packets),
          ...(workers > 1 && rows[0] ? { vs_1_worker: Number((r.pps / rows[0].pps).toFixed(2)) } : {}),
          loadavg_1m: [Math.round(load0 * 100) / 100, Math.round(os.loadavg()[0]! * 100) / 100],
          machine: `${os.cpus().length}x ${os.cpus()[0]?.model ?? 'cpu'}, node ${process.version}`,
        })}\n`,
      );
    } finally {
      for (const s of sinks) s.kill();
      await host.stop();
    }
  }
}

// ---- main -----------------------------------------------------------------------

async function main(): Promise<void> {
  if (process.env.BENCH_RELAY_WORKERS_ONLY === '1') return workerScaling();
  await ioPaths();
  if (process.env.BENCH_RELAY_IO_ONLY === '1') return;
  await workerScaling();
  const host = await RelayHost.start();
  const sinks: ChildProcess[] = [];
  try {
    // 1. One tenant, A (link 1, 100.64.0.1) → B (link 2, 100.64.0.2).
    const oneLinks = [linkSpec(1, 1), linkSpec(2, 2)];
    await host.req('view', { views: [relayView('one-allow-all', host.port, [tenant(1, oneLinks, ALLOW_ALL)])] });
    sinks.push(await startSink(host, [2]));
    const flow = (from: number, src: number, dst: number, sport: number) =>
      ({ from, to: RELAY_ID, psk: pskOf(from), src: v4(src), dst: v4(dst), proto: 'udp', sport, dport: 5000, bytes: BYTES }) as const;
    const allowAll = await measure(host, 'relay_pps allow_all', { flows: [flow(1, 1, 2, 40000)] }, { tenant: 1, profileMs: PROFILE_MS });
    const filter100 = tenantFilter(RULES_ONE, 7, { src: 1, dst: 2, port: 5000 });
    await host.req('view', { views: [relayView('one-filter', host.port, [tenant(1, oneLinks, filter100)])] });
    const filtered = await measure(host, 'relay_pps filter_100_rules', { flows: [flow(1, 1, 2, 40001)] }, { tenant: 1 });
    for (const s of sinks.splice(0)) s.kill();

    // 4. setView of 200 tenants × 10 links (tenant ids 1001.., link ids 101..).
    const linkId = (t: number, j: number): number => 101 + t * LINKS_PER_TENANT + j;
    const manyTenants = (routeOnLast: boolean): RelayTenantView[] =>
      Array.from({ length: TENANTS }, (_, t) =>
        tenant(
          1001 + t,
          Array.from({ length: LINKS_PER_TENANT }, (_, j) => linkSpec(linkId(t, j), j + 1, t === 0 && j === LINKS_PER_TENANT - 1 && routeOnLast ? ['192.168.77.0/24'] : [])),
          tenantFilter(RULES_MANY, 1000 + t, { src: 1, dst: 2, port: 5000 }),
        ),
      );
    const many = relayView('many', host.port, manyTenants(false));
    const manyRoute = relayView('many-route', host.port, manyTenants(true));
    progress(`setView: ${TENANTS} tenants × ${LINKS_PER_TENANT} links (${JSON.stringify(many).length} bytes of view)`);
    const heapBefore = (await host.req<{ heap_used: number }>('view', { views: [], heap: true })).heap_used;
    const first = await host.req<{ ms: number[]; result: Record<string, number>; heap_used: number }>('view', { views: [many], heap: true });
    const same = await host.req<{ ms: number[] }>('view', { views: [many, many, many] });
    const change = await host.req<{ ms: number[]; result: Record<string, number> }>('view', { views: [manyRoute, many, manyRoute, many, manyRoute, many] });
    const setView = {
      tenants: TENANTS,
      links: TENANTS * LINKS_PER_TENANT,
      rules_per_tenant: RULES_MANY,
      first_ms: r1(first.ms[0]!),
      unchanged_ms: r1(median(same.ms)),
      one_link_change_ms: r1(median(change.ms)),
      one_link_change_runs_ms: change.ms.map(r1),
      kept_after_change: change.result.kept,
      // Heap after a full GC, before and after the first 200 × 10 view (the 2-link view was in force before).
      heap_used_mib: [r1(heapBefore / 2 ** 20), r1(first.heap_used / 2 ** 20)],
      heap_kib_per_link: r1((first.heap_used - heapBefore) / 1024 / (TENANTS * LINKS_PER_TENANT - 2)),
    };
    progress(`setView: first ${setView.first_ms} ms, unchanged ${setView.unchanged_ms} ms, one-link change ${setView.one_link_change_ms} ms; heap ${setView.heap_used_mib.join(' → ')} MiB`);

    // 2. Every other tenant: link 1 → link 2.
    const active = Array.from({ length: SENDERS }, (_, k) => Math.floor((k * TENANTS) / SENDERS));
    sinks.push(await startSink(host, active.map((t) => linkId(t, 1))));
    const manyFlows = active.map((t) => flow(linkId(t, 0), 1, 2, 40000));
    const distinct = await measure(host, 'relay_pps_many_tenants distinct_src_ports', { flows: manyFlows });
    const shared = await measure(host, 'relay_pps_many_tenants shared_src_port', { flows: manyFlows, shared_socket: true });
    // Datagrams no link's key matches (a link id not in the view): every one is trialled against all links.
    const junkFlow = { ...flow(60000, 1, 2, 40000), psk: pskOf(60000) };
    // With the scan budget, most junk is dropped untried (drop_scan_limited)…
    const junk = await measure(host, 'unknown link (junk) against 2000 links', { flows: [junkFlow] }, { counter: 'drop_scan_limited' });
    // …and real traffic from learned endpoints keeps flowing during the flood.
    const underJunk = await measure(host, 'one link forwarding during the junk flood', { flows: [junkFlow, manyFlows[0]!] });

    process.stdout.write(
      `${JSON.stringify({
        bench: 'relay',
        machine: `${os.cpus().length}x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`,
        packet_bytes: BYTES,
        window_s: SECONDS,
        relay_pps: { allow_all: allowAll, filter_100_rules: { ...filtered, rules: RULES_ONE } },
        relay_pps_many_tenants: {
          tenants: TENANTS,
          links_per_tenant: LINKS_PER_TENANT,
          sending_links: manyFlows.length,
          rules_per_tenant: RULES_MANY,
          distinct_src_ports: distinct,
          shared_src_port: shared,
          // pps here: junk datagrams dropped untried (drop_scan_limited: the key-trial budget was spent).
          junk_unknown_link: junk,
          // pps here: packets one learned link got through while the same generator also sent junk.
          forwarding_during_junk: underJunk,
        },
        set_view: setView,
        note: 'loopback; generator, relay and sink share the machine: indicative figures',
      })}\n`,
    );
  } finally {
    for (const s of sinks) s.kill();
    await host.stop();
  }
}

await main();
