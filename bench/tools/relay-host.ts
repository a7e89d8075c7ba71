// The relay process of bench/relay: a RelayEngine on 127.0.0.1 (ephemeral
// port, IPv4 only), driven over the fork() IPC channel. Every measurement that
// belongs to the relay process is taken here: counters, its own CPU time
// (process.cpuUsage: all threads), setView timings, and heap/GC figures for a
// window (PerformanceObserver 'gc' entries, v8.GCProfiler before/after sizes of
// every collection, new-space and heap drift), plus an optional sampling heap
// profile (node:inspector) for where allocation comes from.
//
// Requests {id, op, ...} → replies {id, ...}; on start it sends {ready, port}.
// Start with --expose-gc (a full GC clears setup garbage before a window).
import { DEFAULT_SCAN_LIMITS } from '../../src/dataplane/scanlimit.js';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { GCProfiler, getHeapSpaceStatistics, getHeapStatistics, type GCProfilerResult } from 'node:v8';
import { Session } from 'node:inspector/promises';
import path from 'node:path';
import { RelayEngine, relayCounters, type RelayView } from '../../src/dataplane/relay.js';

type Req =
  | { id: number; op: 'view'; views: RelayView[]; heap?: boolean }
  | { id: number; op: 'sample'; tenant?: number }
  | { id: number; op: 'window-start'; tenant?: number }
  | { id: number; op: 'window-end'; tenant?: number }
  | { id: number; op: 'heap-profile'; ms: number }
  | { id: number; op: 'endpoints' }
  | { id: number; op: 'io' }
  | { id: number; op: 'stop' };

// Every bench sender and sink shares 127.0.0.1, like many nodes behind one NAT:
// the per-source scan budget is raised so the 100 sinks are all learned at once;
// the global budget (what bounds a junk flood) stays the default.
const scanLimits = { ...DEFAULT_SCAN_LIMITS, scansPerSecPerSource: 1000 };
const engine = new RelayEngine({ listenPorts: [0], bindHost4: '127.0.0.1', bindHost6: null, scanLimits, workers: Number(process.env.LARKTUN_WORKERS ?? '1'), log: (m) => process.stderr.write(`relay-host: ${m}\n`) });
await engine.start();

const gcEntries: { start: number; duration: number }[] = [];
const obs = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) gcEntries.push({ start: e.startTime, duration: e.duration });
});
obs.observe({ entryTypes: ['gc'] });
const fullGc = (globalThis as { gc?: () => void }).gc ?? (() => {});

/** Young generation in use (new space + new large objects): where JS allocations start. */
const youngUsed = (spaces: { space_name?: string; spaceName?: string; space_used_size?: number; spaceUsedSize?: number }[]): number =>
  spaces
    .filter((s) => (s.space_name ?? s.spaceName) === 'new_space' || (s.space_name ?? s.spaceName) === 'new_large_object_space')
    .reduce((a, s) => a + (s.space_used_size ?? s.spaceUsedSize ?? 0), 0);

function sample(tenant?: number): Record<string, unknown> {
  const cpu = process.cpuUsage();
  const ns = tenant === undefined ? undefined : engine.namespace(tenant);
  return {
    t: performance.now(),
    cpu_us: cpu.user + cpu.system,
    counters: relayCounters(engine.counters),
    ...(ns ? { filter: { rules: ns.filter.filter.ruleCount, flows: ns.filter.flows.size, ...ns.filter.counters.toJSON() } } : {}),
  };
}

interface Win {
  t0: number;
  young0: number;
  heap0: number;
  prof: GCProfiler;
}
let win: Win | null = null;

function windowEnd(w: Win): Record<string, unknown> {
  const r: GCProfilerResult = w.prof.stop();
  const t1 = performance.now();
  const young1 = youngUsed(getHeapSpaceStatistics());
  const heap1 = getHeapStatistics().used_heap_size;
  // Allocated = growth over the window + everything each collection took away.
  let youngAlloc = young1 - w.young0;
  let heapAlloc = heap1 - w.heap0;
  const types: Record<string, number> = {};
  for (const s of r.statistics) {
    youngAlloc += youngUsed(s.beforeGC.heapSpaceStatistics) - youngUsed(s.afterGC.heapSpaceStatistics);
    heapAlloc += s.beforeGC.heapStatistics.usedHeapSize - s.afterGC.heapStatistics.usedHeapSize;
    types[s.gcType] = (types[s.gcType] ?? 0) + 1;
  }
  const inWin = gcEntries.filter((e) => e.start >= w.t0 && e.start <= t1);
  return {
    gc_events: inWin.length,
    gc_pause_ms: Math.round(inWin.reduce((a, e) => a + e.duration, 0) * 10) / 10,
    gc_types: types,
    new_space_drift_bytes: young1 - w.young0,
    heap_drift_bytes: heap1 - w.heap0,
    young_alloc_bytes: youngAlloc,
    heap_alloc_bytes: heapAlloc,
  };
}

interface ProfNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: ProfNode[];
}

/** Sampling heap profile over `ms` (objects later collected included): bytes per allocation site with its two callers. */
async function heapProfile(ms: number): Promise<Record<string, unknown>> {
  const s = new Session();
  s.connect();
  await s.post('HeapProfiler.enable');
  const c0 = engine.counters.udp_rx_packets;
  const params = { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true };
  await s.post('HeapProfiler.startSampling', params as { samplingInterval: number });
  await new Promise((r) => setTimeout(r, ms));
  const { profile } = (await s.post('HeapProfiler.stopSampling')) as unknown as { profile: { head: ProfNode } };
  const packets = engine.counters.udp_rx_packets - c0;
  await s.post('HeapProfiler.disable');
  s.disconnect();
  const frame = (n: ProfNode): string =>
    // Line numbers only for node's own modules (tsx-compiled files report their transformed lines).
    `${n.callFrame.functionName || '(anonymous)'}${n.callFrame.url ? ` ${path.basename(n.callFrame.url)}${n.callFrame.url.startsWith('node:') ? `:${n.callFrame.lineNumber + 1}` : ''}` : ''}`;
  const sites = new Map<string, number>();
  let total = 0;
  const walk = (n: ProfNode, stack: string[]): void => {
    const here = [frame(n), ...stack];
    if (n.selfSize > 0) {
      const key = here.slice(0, 3).join(' < ');
      sites.set(key, (sites.get(key) ?? 0) + n.selfSize);
      total += n.selfSize;
    }
    for (const c of n.children) walk(c, here);
  };
  walk(profile.head, []);
  const top = [...sites.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8);
  return {
    packets,
    sampled_bytes_per_packet: packets > 0 ? Math.round(total / packets) : null,
    sites: top.map(([site, bytes]) => ({ site, bytes_per_packet: packets > 0 ? Math.round((bytes / packets) * 10) / 10 : null, share: Math.round((bytes / total) * 100) / 100 })),
  };
}

async function handle(m: Req): Promise<Record<string, unknown>> {
  switch (m.op) {
    case 'view': {
      const ms: number[] = [];
      let last: unknown = null;
      for (const v of m.views) {
        const t0 = performance.now();
        const r = engine.setView(v);
        ms.push(performance.now() - t0);
        last = { tenants: r.tenants, links: r.links, kept: r.kept, warnings: r.warnings.length, filter_errors: Object.keys(r.filterErrors).length };
      }
      await engine.viewSettled(); // every packet thread forwards by it
      if (!m.heap) return { ms, result: last };
      fullGc();
      return { ms, result: last, heap_used: process.memoryUsage().heapUsed };
    }
    case 'sample':
      return sample(m.tenant);
    case 'window-start': {
      fullGc();
      const prof = new GCProfiler();
      win = { t0: performance.now(), young0: youngUsed(getHeapSpaceStatistics()), heap0: getHeapStatistics().used_heap_size, prof };
      prof.start();
      return sample(m.tenant);
    }
    case 'window-end': {
      const s = sample(m.tenant);
      const heap = win ? windowEnd(win) : {};
      win = null;
      return { ...s, heap };
    }
    case 'heap-profile':
      return heapProfile(m.ms);
    case 'io':
      return { ...engine.ioStatus(), workers: engine.workersStatus() };
    case 'endpoints': {
      const byPort = new Map<string, number>();
      let learned = 0;
      for (const l of engine.links) {
        if (l.addr === null) continue;
        learned++;
        const k = `${l.addr}:${l.port}`;
        byPort.set(k, (byPort.get(k) ?? 0) + 1);
      }
      const byAddr = new Map<string, number>();
      for (const l of engine.links) if (l.addr !== null) byAddr.set(l.addr, (byAddr.get(l.addr) ?? 0) + 1);
      return { learned, max_links_per_addr: Math.max(0, ...byAddr.values()), max_links_per_endpoint: Math.max(0, ...byPort.values()) };
    }
    case 'stop':
      obs.disconnect();
      await engine.stop();
      setImmediate(() => process.exit(0));
      return {};
  }
}

process.on('message', (m: Req) => {
  handle(m).then(
    (r) => process.send!({ id: m.id, ...r }),
    (e: Error) => process.send!({ id: m.id, error: e.stack ?? e.message }),
  );
});
process.send!({ ready: true, port: engine.listenPorts()[0] });
