// The packet filter's flow table shared between threads (FilterState.createShared
// / share / attach): two FilterStates over one table see each other's flows and
// policy changes; two real worker threads hammering one table lose no flow,
// insert none twice, stay within maxFlows and grow the table in place; a shared
// table only commits the memory it uses.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { FilterRule } from '../../src/acl/index.js';
import {
  FILTER_COUNTER_NAMES,
  FilterCounters,
  FilterState,
  FlowTable,
  PacketFilter,
  type SharedFilterHandle,
  Verdict,
} from '../../src/dataplane/filter.js';
import { spawnWorker } from '../../src/runtime/worker.js';
import type { HammerJob, HammerResult } from './filter-shared-worker.js';
import { ACK, SYN, tcp, udp } from './packets.js';

const LOCAL = '100.64.0.1';
const peer = (i: number): string => `100.65.${(i >> 8) & 255}.${i & 255}`;
const rule = (ports: [number, number][]): FilterRule => ({
  SrcIPs: ['100.65.0.0/16'],
  DstPorts: ports.map(([First, Last]) => ({ IP: LOCAL, Ports: { First, Last } })),
});
/** What the workers enforce: peers may reach the node on port 80. */
const WEB: FilterRule[] = [rule([[80, 80]])];

function verdictOf(st: FilterState, pkt: Buffer, now = 1000): Verdict {
  st.check(pkt, pkt.length, now);
  return st.lastVerdict;
}

function hammer(job: Omit<HammerJob, 'id'>): Promise<HammerResult[]> {
  const one = (id: 0 | 1): Promise<HammerResult> =>
    new Promise((resolve, reject) => {
      const w = spawnWorker(import.meta.url, 'filter-shared-worker', { workerData: { ...job, id } });
      w.once('message', (m) => resolve(m as HammerResult)); // then the worker ends by itself
      w.once('error', reject);
      w.once('exit', (code) => {
        if (code !== 0) reject(new Error(`worker ${id} exited with ${code}`));
      });
    });
  return Promise.all([one(0), one(1)]);
}

function summed(results: HammerResult[]): FilterCounters {
  const c = new FilterCounters();
  for (const r of results) c.addFrom(r.counters, 0);
  return c;
}

function assertClean(results: HammerResult[]): void {
  for (const r of results) {
    assert.equal(r.error, null, `worker error: ${r.error}`);
    assert.equal(r.badOwnReply, 0, 'a reply to a flow the worker had just noted was dropped');
    assert.equal(r.badInbound, 0, 'an inbound packet the rules admit was dropped');
    assert.equal(r.badCrossReply, 0, 'a reply to a flow the other worker had noted was dropped');
    assert.ok(r.crossChecks > 0, 'the workers overlapped');
  }
}

describe('shared flow table, one thread', () => {
  it('two FilterStates over one handle see each other\'s flows', () => {
    const a = FilterState.createShared(PacketFilter.compile(WEB));
    const b = FilterState.attach(a.share(), PacketFilter.compile(WEB));
    assert.equal(a.flows.shared, true);
    assert.equal(b.flows.shared, true);
    // Outbound noted on one, the reply admitted on the other.
    const out = udp(LOCAL, peer(1), 5000, 53);
    const reply = udp(peer(1), LOCAL, 53, 5000);
    assert.equal(verdictOf(b, reply), Verdict.DropNoRule, 'not noted yet');
    a.noteOutbound(out, out.length, 1000);
    assert.equal(verdictOf(b, reply), Verdict.AllowReply);
    assert.equal(b.flows.isReply(reply, reply.length, 1000), true);
    // A flow the rules admitted on one continues on the other; its reply passes on the first.
    const syn = tcp(peer(2), LOCAL, 40000, 80, SYN);
    const synAck = tcp(LOCAL, peer(2), 80, 40000, SYN | ACK);
    assert.equal(verdictOf(b, syn), Verdict.AllowRule);
    assert.equal(verdictOf(a, syn), Verdict.AllowFlow);
    a.noteOutbound(synAck, synAck.length, 1000); // refreshes the admitted flow, starts none
    assert.equal(a.flows.size, 2);
    assert.equal(b.flows.size, 2);
    assert.equal(a.flows.insertions, 2);
    // A handle survives structured cloning (what postMessage does) and still names the same memory.
    const c = FilterState.attach(structuredClone(a.share()), PacketFilter.compile(WEB));
    assert.equal(c.flows.size, 2);
    assert.equal(verdictOf(c, reply), Verdict.AllowReply);
    // Per-thread counters stay apart.
    assert.equal(a.counters.filter_allow_flow, 1);
    assert.equal(b.counters.filter_allow_rule, 1);
    assert.equal(c.counters.filter_allow_reply, 1);
    c.flows.clear();
    assert.equal(a.flows.size, 0);
    assert.equal(verdictOf(a, reply), Verdict.DropNoRule, 'clear on one forgets for all');
  });

  it('setFilter on one revokes on the other, as the unshared table would', () => {
    const WIDE = [rule([[22, 22], [80, 80]])];
    const NARROW = [rule([[22, 22]])];
    const a = FilterState.createShared(PacketFilter.compile(WIDE));
    const b = FilterState.attach(a.share(), PacketFilter.compile(WIDE));
    const u = new FilterState(PacketFilter.compile(WIDE)); // the unshared reference
    const web = udp(peer(1), LOCAL, 6000, 80);
    const webReply = udp(LOCAL, peer(1), 80, 6000);
    const web2 = udp(peer(2), LOCAL, 6000, 80);
    const ssh = udp(peer(1), LOCAL, 6001, 22);
    const out = udp(LOCAL, peer(1), 5000, 53);
    const outReply = udp(peer(1), LOCAL, 53, 5000);
    // Both run the same script; the pair splits it between a and b.
    const both = (st1: FilterState, pkt: Buffer): [Verdict, Verdict] => [verdictOf(st1, pkt), verdictOf(u, pkt)];
    assert.deepEqual(both(a, web), [Verdict.AllowRule, Verdict.AllowRule]);
    assert.deepEqual(both(b, web2), [Verdict.AllowRule, Verdict.AllowRule]);
    assert.deepEqual(both(a, ssh), [Verdict.AllowRule, Verdict.AllowRule]);
    a.noteOutbound(out, out.length, 1000);
    u.noteOutbound(out, out.length, 1000);

    // Port 80 is withdrawn. a takes the new filter first; b still holds the old one.
    a.setFilter(PacketFilter.compile(NARROW));
    u.setFilter(PacketFilter.compile(NARROW));
    assert.ok(a.generation > b.generation);
    assert.deepEqual(both(a, web), [Verdict.DropRevoked, Verdict.DropRevoked]);
    // What a revokes stays revoked on b, although b's own filter would still admit it.
    assert.deepEqual(both(b, web), [Verdict.DropRevoked, Verdict.DropRevoked]);
    // The node's own reply does not turn the revoked flow into one it started.
    b.noteOutbound(webReply, webReply.length, 1000);
    u.noteOutbound(webReply, webReply.length, 1000);
    assert.deepEqual(both(b, web), [Verdict.DropRevoked, Verdict.DropRevoked]);
    // Grants that still hold, and flows the node started, keep passing on both.
    assert.deepEqual(both(b, ssh), [Verdict.AllowFlow, Verdict.AllowFlow]);
    assert.deepEqual(both(a, ssh), [Verdict.AllowFlow, Verdict.AllowFlow]);
    assert.deepEqual(both(b, outReply), [Verdict.AllowReply, Verdict.AllowReply]);

    // b takes the new filter too: the flow a never re-checked is revoked by b, as by u.
    b.setFilter(PacketFilter.compile(NARROW));
    assert.deepEqual(both(b, web2), [Verdict.DropRevoked, Verdict.DropRevoked]);
    assert.deepEqual(both(a, web2), [Verdict.DropRevoked, Verdict.DropRevoked]);
    assert.deepEqual(both(a, web), [Verdict.DropRevoked, Verdict.DropRevoked]);
    assert.deepEqual(both(a, ssh), [Verdict.AllowFlow, Verdict.AllowFlow]);

    // Granted again: revoked flows come back on their next packet, on either thread.
    a.setFilter(PacketFilter.compile(WIDE));
    b.setFilter(PacketFilter.compile(WIDE));
    u.setFilter(PacketFilter.compile(WIDE));
    assert.deepEqual(both(b, web), [Verdict.AllowFlow, Verdict.AllowFlow]);
    assert.deepEqual(both(a, web2), [Verdict.AllowFlow, Verdict.AllowFlow]);
    assert.equal(a.flows.size, u.flows.size);
  });

  it('a flow admitted by a thread still on the old filter is re-checked by the first up-to-date one', () => {
    const a = FilterState.createShared(PacketFilter.compile([rule([[80, 80]])]));
    const b = FilterState.attach(a.share(), PacketFilter.compile([rule([[80, 80]])]));
    a.setFilter(PacketFilter.empty());
    const web = udp(peer(3), LOCAL, 6000, 80);
    assert.equal(verdictOf(b, web), Verdict.AllowRule, 'b still enforces the old policy');
    assert.equal(verdictOf(a, web), Verdict.DropRevoked);
    assert.equal(verdictOf(b, web), Verdict.DropRevoked);
  });

  it('grows in place inside its reservation and keeps every flow, as the unshared table does', () => {
    // A random mix of notes, checks and idle gaps (short timeout: flows expire
    // and are swept while the table doubles from 16 to 32 768 slots).
    const opts = { initialSlots: 16, udpTimeoutMs: 40_000 };
    const s = FilterState.createShared(PacketFilter.compile(WEB), opts);
    const u = new FilterState(PacketFilter.compile(WEB), opts);
    const pkts = { out: [] as Buffer[], reply: [] as Buffer[], inb: [] as Buffer[] };
    const N = 12_000;
    for (let i = 0; i < N; i++) {
      pkts.out.push(udp(LOCAL, peer(i), 5000, 53));
      pkts.reply.push(udp(peer(i), LOCAL, 53, 5000));
      pkts.inb.push(udp(peer(i), LOCAL, 6000, 80));
    }
    let seed = 7;
    const rnd = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return (seed >>> 8) % n;
    };
    let now = 0;
    let passed = 0;
    const capacities = new Set<number>();
    for (let step = 0; step < 60_000; step++) {
      const i = Math.min(N - 1, (step >> 2) + rnd(64)); // mostly new flows, some recent ones again
      const op = rnd(4);
      if (op === 0) {
        s.noteOutbound(pkts.out[i]!, pkts.out[i]!.length, now);
        u.noteOutbound(pkts.out[i]!, pkts.out[i]!.length, now);
      } else {
        const p = op === 1 ? pkts.reply[i]! : pkts.inb[i]!;
        const vs = verdictOf(s, p, now);
        assert.equal(vs, verdictOf(u, p, now), `step ${step}`);
        if (vs === Verdict.AllowReply) passed++;
      }
      if (rnd(50) === 0) now += rnd(200);
      capacities.add(s.flows.capacity);
    }
    assert.ok(passed > 1000, `replies exercised (${passed})`);
    assert.equal(s.flows.capacity, u.flows.capacity);
    assert.ok(capacities.size >= 8, `grew through ${[...capacities].join(', ')}`);
    assert.equal(s.flows.evictions, 0);
    // Expired entries may linger in either until swept, so only live flows are compared.
    for (let i = 0; i < N; i++) {
      const r = pkts.reply[i]!;
      assert.equal(s.flows.isReply(r, r.length, now), u.flows.isReply(r, r.length, now), `flow ${i}`);
    }
  });

  it('refuses handles that do not describe a shared table', () => {
    const st = FilterState.createShared(PacketFilter.empty(), { maxFlows: 100 });
    const h = st.share();
    assert.equal(h.buffer instanceof SharedArrayBuffer, true);
    assert.equal(h.options.maxFlows, 100);
    assert.throws(() => new FilterState().share(), TypeError);
    assert.throws(() => FlowTable.attach({ buffer: new SharedArrayBuffer(64), options: h.options }), TypeError);
    assert.throws(() => FlowTable.attach({ ...h, options: { ...h.options, maxFlows: 1000 } }), TypeError);
    assert.throws(() => FlowTable.attach({ buffer: new ArrayBuffer(8) as unknown as SharedArrayBuffer, options: h.options }), TypeError);
    const junk = new SharedArrayBuffer(h.buffer.byteLength);
    assert.throws(() => FlowTable.attach({ buffer: junk, options: h.options }), TypeError, 'no table in it');
  });

  it('FilterCounters publish with writeTo and sum with addFrom', () => {
    const a = new FilterCounters();
    const b = new FilterCounters();
    a.filter_allow_rule = 3;
    a.filter_drop_fragment = 1;
    b.filter_allow_rule = 4;
    b.filter_drop_no_rule = 9;
    const f = new Float64Array(1 + 2 * FILTER_COUNTER_NAMES.length);
    a.writeTo(f, 1);
    b.writeTo(f, 1 + FILTER_COUNTER_NAMES.length);
    const sum = new FilterCounters();
    sum.addFrom(f, 1);
    sum.addFrom(f, 1 + FILTER_COUNTER_NAMES.length);
    assert.deepEqual(sum.toJSON(), { ...new FilterCounters().toJSON(), filter_allow_rule: 7, filter_drop_fragment: 1, filter_drop_no_rule: 9 });
    assert.equal(f[0], 0, 'nothing written before the offset');
  });
});

describe('shared flow table, two worker threads', () => {
  it('hammering note/check on the same flows: no lost flows, no duplicates, no exceptions', async (t) => {
    const st = FilterState.createShared(PacketFilter.compile(WEB));
    const N = 3000;
    const results = await hammer({ handle: st.share(), rules: WEB, flows: N, ms: 1000, progress: new Int32Array(new SharedArrayBuffer(16)), now: 1000 });
    assertClean(results);
    // Each flow of the universe is tracked once: N the node started, N the rules admitted.
    assert.equal(st.flows.size, 2 * N);
    assert.equal(st.flows.insertions, 2 * N, 'no flow inserted twice');
    assert.equal(st.flows.evictions, 0);
    assert.equal(st.flows.expirations, 0);
    const c = summed(results);
    // A check and its insert are one step: the rules decided each admitted flow exactly once.
    assert.equal(c.filter_allow_rule, N);
    const rounds = results[0]!.rounds + results[1]!.rounds;
    const cross = results[0]!.crossChecks + results[1]!.crossChecks;
    assert.equal(c.filter_allow_flow, rounds - N);
    assert.equal(c.filter_allow_reply, rounds + cross);
    for (const k of FILTER_COUNTER_NAMES) if (k.startsWith('filter_drop_')) assert.equal(c[k], 0, k);
    assert.ok(rounds > 4 * N, `both workers cycled the universe (${rounds} rounds)`);
    t.diagnostic(`rounds ${results.map((r) => r.rounds).join(' + ')}, cross-thread checks ${cross}`);
  });

  it('grows from 16 slots to its largest size while both threads insert and look up', async () => {
    const st = FilterState.createShared(PacketFilter.compile(WEB), { initialSlots: 16 });
    assert.equal(st.flows.capacity, 16);
    const N = 25_000;
    const results = await hammer({ handle: st.share(), rules: WEB, flows: N, ms: 200, progress: new Int32Array(new SharedArrayBuffer(16)), now: 1000 });
    assertClean(results);
    assert.equal(st.flows.capacity, 131_072, '50 000 flows need the full 2 × 65 536 slots');
    assert.equal(st.flows.size, 2 * N);
    assert.equal(st.flows.insertions, 2 * N);
    assert.equal(summed(results).filter_allow_rule, N);
    // Every flow is still findable from this thread.
    for (let i = 0; i < N; i++) {
      const r = udp(peer(i), LOCAL, 53, 5000);
      assert.equal(st.flows.isReply(r, r.length, 1000), true, `flow ${i} lost`);
      assert.equal(verdictOf(st, udp(peer(i), LOCAL, 6000, 80)), Verdict.AllowFlow, `admitted flow ${i} lost`);
    }
  });

  it('with a small maxFlows both threads evict and the table stays bounded', async (t) => {
    const st = FilterState.createShared(PacketFilter.compile(WEB), { maxFlows: 64 });
    let largest = 0;
    const poll = setInterval(() => {
      largest = Math.max(largest, st.flows.size);
    }, 1);
    const results = await hammer({ handle: st.share(), rules: WEB, flows: 4000, ms: 700, progress: new Int32Array(new SharedArrayBuffer(16)), now: 0 });
    clearInterval(poll);
    for (const r of results) assert.equal(r.error, null, `worker error: ${r.error}`);
    const ft = st.flows;
    assert.ok(largest > 0 && largest <= 64, `size seen while running: ${largest}`);
    assert.ok(ft.size <= 64);
    assert.ok(ft.capacity <= 128);
    assert.ok(ft.evictions > 1000, `evictions ${ft.evictions}`);
    // Every insert is accounted for by an eviction, an expiry or a live flow.
    assert.equal(ft.insertions - ft.evictions - ft.expirations, ft.size);
    t.diagnostic(`insertions ${ft.insertions}, evictions ${ft.evictions}, largest size seen ${largest}`);
    // Still a working table afterwards.
    const out = udp(LOCAL, peer(9999), 5000, 53);
    st.noteOutbound(out, out.length, Date.now());
    assert.equal(verdictOf(st, udp(peer(9999), LOCAL, 53, 5000), Date.now()), Verdict.AllowReply);
  });
});

describe('shared flow table memory', () => {
  /** Resident set size in bytes (VmRSS). */
  const rss = (): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
  // A full GC before each reading, so garbage of the earlier tests does not blur the difference.
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;

  it('200 shared tables of the default size do not commit their reservations', (t) => {
    gc();
    const before = rss();
    const tables: FilterState[] = [];
    const handles: SharedFilterHandle[] = [];
    for (let t = 0; t < 200; t++) {
      const st = FilterState.createShared(PacketFilter.compile(WEB));
      for (let i = 0; i < 100; i++) {
        const out = udp(LOCAL, peer(i), 5000 + t, 53);
        st.noteOutbound(out, out.length, 1000);
      }
      tables.push(st);
      handles.push(st.share());
    }
    gc();
    const grown = rss() - before;
    const reserved = handles.reduce((n, h) => n + h.buffer.byteLength, 0);
    assert.ok(reserved > 200 * 32 * 1024 * 1024, `a default table reserves ${handles[0]!.buffer.byteLength} bytes`);
    assert.ok(tables.every((st) => st.flows.size === 100 && st.flows.capacity === 1024));
    const said = `RSS grew ${(grown / 1e6).toFixed(1)} MB for ${(reserved / 1e6).toFixed(0)} MB reserved`;
    assert.ok(grown < reserved / 50, said);
    t.diagnostic(said);
    // The measurement does see committed memory: one more reservation, written throughout.
    const extra = FilterState.createShared(PacketFilter.empty()).share().buffer;
    gc();
    const r0 = rss();
    new Uint8Array(extra).fill(0, 4096); // past the header page: still an empty table
    assert.ok(rss() - r0 > extra.byteLength * 0.8, 'writing a whole reservation commits it');
  });
});
