// Data-plane packet filter benchmark. Prints two JSON lines.
//
// Filter: 1 000 rules over a tenant of 4 000 nodes (IPv4 + IPv6): sources are
// lists of node addresses, small CIDRs and ranges, a few '*'; destinations are
// node addresses and subnet routes with single ports, port ranges and '*';
// a quarter of the rules name protocols. Packets: 4 096 prebuilt packets,
// IPv4 and IPv6, TCP / UDP / ICMP / GRE, about half admitted.
//
// Measured (each after a warm-up, for a fixed time, in batches):
//   lookups_per_s     PacketFilter.matchPacket: parse + rule match
//   check_new_per_s   FilterState.check on packets of new flows (rules decide;
//                     admitted ones are inserted into a 16 384-flow table, which
//                     fills up, so inserts also evict)
//   flow_ops_per_s    FlowTable steady state over 50 000 live flows: one
//                     noteOutbound and one check of the reply per pair, each
//                     counted as one op
// Second line (bench "filter_shared"): the flow table in shared memory
// (FilterState.createShared, what packet worker threads use) against the
// unshared one, on this one thread, so it is the cost of the shared mode itself
// (the lock/unlock pair and the header loads/stores around every call), not of
// contention: ns per check() of a tracked reply over 50 000 live flows, and of
// a new flow (rules decide, insert, evict from a full 16 384-flow table), and
// ns of one uncontended lock/unlock pair. The variants alternate in rounds
// (the machine may be busy) and the fastest round of each is reported, with
// every round listed.
//
// Allocation: before each measured window a full GC clears the setup garbage;
// a PerformanceObserver then counts 'gc' entries whose start falls in the
// window (gc_events per window), and the young generation (where every JS
// allocation lands) is compared before and after it (new_space_drift_bytes),
// as is heapUsed (heap_drift_bytes, which also sees optimised code the JIT
// produces mid-run). The loops allocate nothing, so gc_events and the young
// generation drift should be 0.
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { FilterRule } from '../src/acl/index.js';
import { FilterState, FlowTable, PacketFilter } from '../src/dataplane/filter.js';
import { lock, sharedWords, unlock } from '../src/wire/lock.js';

const RULES = 1_000;
const NODES = 4_000;
const PACKETS = 4_096;
const SECONDS = 1.5;
const BATCH = 4_096;

let seed = 12345;
const rnd = (n: number): number => {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return (seed >>> 8) % n;
};

const v4 = (i: number): string => `100.64.${(i >> 8) & 255}.${i & 255}`;
const v6 = (i: number): string => `fd7a:115c:a1e0::${i.toString(16)}`;
const v4n = (i: number): number => ((100 << 24) | (64 << 16) | i) >>> 0;

function makeRules(): FilterRule[] {
  const rules: FilterRule[] = [];
  for (let r = 0; r < RULES; r++) {
    const src: string[] = [];
    const kind = rnd(20);
    if (kind === 0) src.push('*');
    else if (kind < 4) src.push(`100.64.${rnd(16)}.0/24`, `fd7a:115c:a1e0::${(rnd(16) * 256).toString(16)}/120`);
    else if (kind < 6) {
      const a = rnd(NODES - 50);
      src.push(`${v4(a)}-${v4(a + 1 + rnd(40))}`);
    } else {
      const n = 1 + rnd(12);
      for (let k = 0; k < n; k++) {
        const id = rnd(NODES);
        src.push(v4(id), v6(id));
      }
    }
    const dst: FilterRule['DstPorts'] = [];
    const nd = 1 + rnd(3);
    for (let k = 0; k < nd; k++) {
      const pk = rnd(10);
      const Ports = pk < 5 ? { First: [22, 80, 443, 5432, 8080][rnd(5)]!, Last: 0 } : pk < 8 ? { First: 8000, Last: 8100 } : { First: 0, Last: 65535 };
      if (Ports.Last === 0) Ports.Last = Ports.First;
      if (rnd(10) === 0) dst.push({ IP: `10.${rnd(200)}.0.0/16`, Ports });
      else {
        const id = rnd(NODES);
        dst.push({ IP: v4(id), Ports }, { IP: v6(id), Ports });
      }
    }
    const rule: FilterRule = { SrcIPs: src, DstPorts: dst };
    const pr = rnd(8);
    if (pr === 0) rule.IPProto = [6];
    else if (pr === 1) rule.IPProto = [17];
    else if (pr === 2) rule.IPProto = [47];
    rules.push(rule);
  }
  return rules;
}

function addr6(i: number, out: Buffer, at: number): void {
  out.fill(0, at, at + 16);
  out.writeUInt32BE(0xfd7a115c, at);
  out.writeUInt16BE(0xa1e0, at + 4);
  out.writeUInt32BE(i >>> 0, at + 12);
}

/** A packet of family 4|6 from node s to node d (or 10.x for routes) with proto and ports. */
function packet(fam: 4 | 6, s: number, d: number, proto: number, sport: number, dport: number, dstRoute = -1): Buffer {
  const tl = proto === 6 ? 20 : 8;
  const ipLen = fam === 4 ? 20 : 40;
  const b = Buffer.alloc(ipLen + tl);
  if (fam === 4) {
    b[0] = 0x45;
    b.writeUInt16BE(b.length, 2);
    b[8] = 64;
    b[9] = proto;
    b.writeUInt32BE(v4n(s), 12);
    b.writeUInt32BE(dstRoute >= 0 ? ((10 << 24) | (dstRoute << 16) | 7) >>> 0 : v4n(d), 16);
  } else {
    b[0] = 0x60;
    b.writeUInt16BE(tl, 4);
    b[6] = proto;
    b[7] = 64;
    addr6(s, b, 8);
    addr6(d, b, 24);
  }
  const o = ipLen;
  if (proto === 1 || proto === 58) {
    b[o] = fam === 4 ? 8 : 128;
    b.writeUInt16BE(sport, o + 4);
  } else if (proto !== 47) {
    b.writeUInt16BE(sport, o);
    b.writeUInt16BE(dport, o + 2);
    if (proto === 6) b[o + 13] = 0x02;
  }
  return b;
}

/** A node id inside a SrcIPs entry of the given family, or -1. */
function nodeIn(src: string, fam: 4 | 6): number {
  if (src === '*') return rnd(NODES);
  const isV6 = src.includes(':');
  if (isV6 !== (fam === 6)) return -1;
  const id4 = (a: string): number => Number(a.split('.')[2]) * 256 + Number(a.split('.')[3]);
  const id6 = (a: string): number => parseInt(a.split('::')[1]!, 16);
  if (src.includes('-')) return fam === 4 ? id4(src.split('-')[0]!) : id6(src.split('-')[0]!);
  if (src.includes('/')) return (fam === 4 ? id4(src.split('/')[0]!) : id6(src.split('/')[0]!)) + rnd(256);
  return fam === 4 ? id4(src) : id6(src);
}

function mixedPackets(rules: FilterRule[], filter: PacketFilter): { pkts: Buffer[]; admitted: number } {
  const pkts: Buffer[] = [];
  let admitted = 0;
  while (pkts.length < PACKETS) {
    const fam: 4 | 6 = rnd(3) === 0 ? 6 : 4;
    const icmp = fam === 4 ? 1 : 58;
    if (rnd(2) === 0) {
      // Aimed at a rule: one of its sources, one of its destinations, its protocol and port.
      const r = rules[rnd(rules.length)]!;
      const srcs = r.SrcIPs.map((x) => nodeIn(x, fam)).filter((x) => x >= 0);
      const dsts = r.DstPorts!.filter((x) => x.IP.includes(':') === (fam === 6));
      if (srcs.length === 0 || dsts.length === 0) continue;
      const dst = dsts[rnd(dsts.length)]!;
      const protos = r.IPProto ?? [6, 17, icmp];
      const proto = protos[rnd(protos.length)]!;
      const route = dst.IP.startsWith('10.') ? Number(dst.IP.split('.')[1]) : -1;
      const d = route >= 0 ? 0 : fam === 4 ? Number(dst.IP.split('.')[2]) * 256 + Number(dst.IP.split('.')[3]) : parseInt(dst.IP.split('::')[1]!, 16);
      const b = packet(fam, srcs[rnd(srcs.length)]!, d, proto, 1024 + rnd(60000), dst.Ports.First + rnd(dst.Ports.Last - dst.Ports.First + 1), route);
      if (filter.matchPacket(b, b.length)) admitted++;
      pkts.push(b);
      continue;
    }
    // Anything: mostly refused.
    const pr = rnd(10);
    const proto = pr < 5 ? 6 : pr < 8 ? 17 : pr < 9 ? icmp : 47;
    const dport = [22, 80, 443, 5432, 8080, 8050, 9999][rnd(7)]!;
    const b = packet(fam, rnd(NODES), rnd(NODES), proto, 1024 + rnd(60000), dport);
    if (filter.matchPacket(b, b.length)) admitted++;
    pkts.push(b);
  }
  return { pkts, admitted };
}

// ---- measurement ----------------------------------------------------------------

const gcStarts: number[] = [];
const obs = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) gcStarts.push(e.startTime);
});
obs.observe({ entryTypes: ['gc'] });

// A full GC on demand without a command-line flag (bench/run.ts passes none).
setFlagsFromString('--expose-gc');
const fullGc = runInNewContext('gc') as () => void;

interface Window {
  t0: number;
  t1: number;
  heapDrift: number;
  newSpaceDrift: number;
}

/** Bytes in the young generation, where every JS allocation starts. */
const newSpaceUsed = (): number => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_used_size ?? 0;
const windows: Window[] = [];

/** Runs `batch` (which does BATCH-ish ops and returns the op count) for `seconds`; returns ops/s. */
function measure(batch: () => number, seconds: number): number {
  for (let i = 0; i < 20; i++) batch(); // warm-up
  fullGc();
  const h0 = process.memoryUsage().heapUsed;
  const n0 = newSpaceUsed();
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  let ops = 0;
  let t = t0;
  while (t < deadline) {
    ops += batch();
    t = performance.now();
  }
  const t1 = performance.now();
  const n1 = newSpaceUsed();
  const h1 = process.memoryUsage().heapUsed;
  windows.push({ t0, t1, heapDrift: h1 - h0, newSpaceDrift: n1 - n0 });
  return Math.round((ops * 1000) / (t1 - t0));
}

const rules = makeRules();
const tc0 = performance.now();
const filter = PacketFilter.compile(rules);
const compileMs = performance.now() - tc0;
if (filter.errors.length > 0) throw new Error(`bench rules did not compile: ${filter.errors[0]}`);
const { pkts, admitted } = mixedPackets(rules, filter);

// 1. Rule lookups (parse + match).
let sink = 0;
const lookups = measure(() => {
  let n = 0;
  for (let i = 0; i < BATCH; i++) {
    const p = pkts[i & (PACKETS - 1)]!;
    if (filter.matchPacket(p, p.length)) n++;
  }
  sink += n;
  return BATCH;
}, SECONDS);

// 2. check() on new flows (rules decide; admitted flows inserted; table full → evictions).
const newState = new FilterState(filter, { maxFlows: 16_384 });
// Offset of the source port (ICMP: echo id) in each packet; -1 for GRE (no ports).
const portOff = Int32Array.from(pkts, (p) => {
  const fam = p[0]! >> 4;
  const off = fam === 4 ? 20 : 40;
  const proto = fam === 4 ? p[9]! : p[6]!;
  return proto === 47 ? -1 : proto === 1 || proto === 58 ? off + 4 : off;
});
let portSeq = 0;
let newClock = 0;
const checkNew = measure(() => {
  newClock += 1; // one millisecond of flow-table time per batch
  for (let i = 0; i < BATCH; i++) {
    const k = i & (PACKETS - 1);
    const p = pkts[k]!;
    // A fresh source port (ICMP: a fresh id) makes every packet a new flow.
    portSeq = (portSeq + 1) & 0xffff;
    const o = portOff[k]!;
    if (o >= 0) {
      p[o] = portSeq >>> 8;
      p[o + 1] = portSeq & 0xff;
    }
    if (newState.check(p, p.length, newClock)) sink++;
  }
  return BATCH;
}, SECONDS);

// 3. Flow table steady state: 50 000 live outbound flows; note + reply check per op pair.
const FLOWS = 50_000;
const flowState = new FilterState(PacketFilter.empty(), new FlowTable({ maxFlows: 65_536 }));
const outPkts: Buffer[] = [];
const inPkts: Buffer[] = [];
for (let i = 0; i < FLOWS; i++) {
  const fam: 4 | 6 = i % 3 === 0 ? 6 : 4;
  const proto = i % 2 === 0 ? 6 : 17;
  const peer = 1 + (i % (NODES - 1));
  const sport = 20_000 + ((i / NODES) | 0);
  outPkts.push(packet(fam, 0, peer, proto, sport, 443));
  const r = packet(fam, peer, 0, proto, 443, sport);
  if (proto === 6) r[(fam === 4 ? 20 : 40) + 13] = 0x12;
  inPkts.push(r);
}
let clock = 0;
for (let i = 0; i < FLOWS; i++) flowState.noteOutbound(outPkts[i]!, outPkts[i]!.length, 0);
let cursor = 0;
const flowOps = measure(() => {
  clock += 1;
  for (let i = 0; i < BATCH / 2; i++) {
    const k = cursor;
    cursor = cursor + 1 === FLOWS ? 0 : cursor + 1;
    flowState.noteOutbound(outPkts[k]!, outPkts[k]!.length, clock);
    if (!flowState.check(inPkts[k]!, inPkts[k]!.length, clock)) throw new Error('tracked reply was dropped');
  }
  return BATCH;
}, SECONDS);

// 4. Shared against unshared flow table, one thread.
const sharedFlows = FilterState.createShared(PacketFilter.empty(), { maxFlows: 65_536 });
for (let i = 0; i < FLOWS; i++) sharedFlows.noteOutbound(outPkts[i]!, outPkts[i]!.length, 0);
if (sharedFlows.flows.size !== flowState.flows.size) throw new Error('shared table holds a different flow count');
const sharedNew = FilterState.createShared(filter, { maxFlows: 16_384 });
const ROUND_S = 0.2;
const ROUNDS = 8;

/** ns per check() of tracked replies (steady state). */
function replyNs(st: FilterState): number {
  let k = 0;
  const ops = measure(() => {
    for (let i = 0; i < BATCH; i++) {
      if (!st.check(inPkts[k]!, inPkts[k]!.length, clock)) throw new Error('tracked reply was dropped');
      k = k + 1 === FLOWS ? 0 : k + 1;
    }
    return BATCH;
  }, ROUND_S);
  return 1e9 / ops;
}

/** ns per check() of new flows (fresh source port each; admitted ones inserted). */
function newNs(st: FilterState): number {
  const ops = measure(() => {
    newClock += 1;
    for (let i = 0; i < BATCH; i++) {
      const k = i & (PACKETS - 1);
      const p = pkts[k]!;
      portSeq = (portSeq + 1) & 0xffff;
      const o = portOff[k]!;
      if (o >= 0) {
        p[o] = portSeq >>> 8;
        p[o + 1] = portSeq & 0xff;
      }
      if (st.check(p, p.length, newClock)) sink++;
    }
    return BATCH;
  }, ROUND_S);
  return 1e9 / ops;
}

const lockWords = sharedWords(1);
function lockNs(): number {
  const ops = measure(() => {
    for (let i = 0; i < BATCH; i++) {
      lock(lockWords, 0);
      unlock(lockWords, 0);
    }
    return BATCH;
  }, ROUND_S);
  return 1e9 / ops;
}

const firstShared = windows.length;
const rounds = { reply_unshared: [] as number[], reply_shared: [] as number[], new_unshared: [] as number[], new_shared: [] as number[], lock_pair: [] as number[] };
for (let r = 0; r < ROUNDS; r++) {
  rounds.reply_unshared.push(replyNs(flowState));
  rounds.reply_shared.push(replyNs(sharedFlows));
  rounds.new_unshared.push(newNs(newState));
  rounds.new_shared.push(newNs(sharedNew));
  rounds.lock_pair.push(lockNs());
}
const best = (a: number[]): number => Math.round(Math.min(...a) * 10) / 10;

await new Promise((r) => setTimeout(r, 50)); // let the observer deliver gc entries
obs.disconnect();
const gcInWindows = windows.map((w) => gcStarts.filter((s) => s >= w.t0 && s <= w.t1).length);
const loadavg = (await import('node:os')).loadavg().map((x) => Math.round(x * 100) / 100);

process.stdout.write(
  `${JSON.stringify({
    bench: 'filter',
    rules: RULES,
    compile_ms: Math.round(compileMs),
    structure: filter.stats,
    packets: PACKETS,
    admitted_share: Math.round((admitted / PACKETS) * 100) / 100,
    lookups_per_s: lookups,
    check_new_per_s: checkNew,
    flow_ops_per_s: flowOps,
    flows_live: flowState.flows.size,
    new_flow_table: { size: newState.flows.size, evictions: newState.flows.evictions },
    windows: ['lookups', 'check_new', 'flow_ops'],
    gc_events: gcInWindows.slice(0, firstShared),
    new_space_drift_bytes: windows.slice(0, firstShared).map((w) => w.newSpaceDrift),
    heap_drift_bytes: windows.slice(0, firstShared).map((w) => w.heapDrift),
    node: process.version,
    sink: sink > 0,
  })}\n`,
);
const sharedWindows = windows.slice(firstShared);
process.stdout.write(
  `${JSON.stringify({
    bench: 'filter_shared',
    threads: 1,
    reply_check_ns: { unshared: best(rounds.reply_unshared), shared: best(rounds.reply_shared) },
    new_flow_check_ns: { unshared: best(rounds.new_unshared), shared: best(rounds.new_shared) },
    lock_pair_ns: best(rounds.lock_pair),
    rounds_ns: Object.fromEntries(Object.entries(rounds).map(([k, v]) => [k, v.map((x) => Math.round(x * 10) / 10)])),
    flows_live: sharedFlows.flows.size,
    new_flow_table: { size: sharedNew.flows.size, evictions: sharedNew.flows.evictions, capacity: sharedNew.flows.capacity },
    reserved_bytes: sharedFlows.share().buffer.byteLength,
    // Windows in round order: reply unshared, reply shared, new unshared, new shared, lock; per round.
    gc_events: gcInWindows.slice(firstShared),
    new_space_drift_bytes: sharedWindows.map((w) => w.newSpaceDrift),
    loadavg,
    node: process.version,
  })}\n`,
);
