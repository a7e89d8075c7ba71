// Worker for filter-shared.test.ts: one packet worker hammering a shared flow
// table. Flow i of the universe is the node's own UDP flow 100.64.0.1:5000 →
// peer(i):53 (noted outbound, its reply checked) plus the peer's inbound flow
// peer(i):6000 → 100.64.0.1:80 (admitted by the rules). Every round the worker
// notes out[i], checks the reply and the inbound packet, and checks the reply
// of a flow the other worker has already noted (progress[other] = how many of
// the universe it has noted in its first pass). It runs one full pass over the
// universe and then goes on cycling until `ms` have passed, and posts how many
// checks failed, its filter counters (FilterCounters.writeTo) and any error.
import { parentPort, workerData } from 'node:worker_threads';
import type { FilterRule } from '../../src/acl/index.js';
import { FILTER_COUNTER_NAMES, FilterState, PacketFilter, type SharedFilterHandle } from '../../src/dataplane/filter.js';
import { udp } from './packets.js';

export interface HammerJob {
  handle: SharedFilterHandle;
  rules: FilterRule[];
  id: 0 | 1;
  flows: number;
  ms: number;
  /** [0], [1]: flows each worker has noted so far in its first pass; [2]: workers ready (start together). */
  progress: Int32Array;
  /** Clock for the table: a fixed instant (no expiry) or, when 0, Date.now(). */
  now: number;
}

export interface HammerResult {
  rounds: number;
  badOwnReply: number;
  badInbound: number;
  badCrossReply: number;
  crossChecks: number;
  counters: Float64Array;
  error: string | null;
}

const LOCAL = '100.64.0.1';
const peer = (i: number): string => `100.65.${(i >> 8) & 255}.${i & 255}`;

const job = workerData as HammerJob;
const res: HammerResult = { rounds: 0, badOwnReply: 0, badInbound: 0, badCrossReply: 0, crossChecks: 0, counters: new Float64Array(FILTER_COUNTER_NAMES.length), error: null };
try {
  const fs = FilterState.attach(job.handle, PacketFilter.compile(job.rules));
  const n = job.flows;
  const out: Buffer[] = [];
  const rep: Buffer[] = [];
  const inb: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    out.push(udp(LOCAL, peer(i), 5000, 53));
    rep.push(udp(peer(i), LOCAL, 53, 5000));
    inb.push(udp(peer(i), LOCAL, 6000, 80));
  }
  const progress = job.progress;
  const other = 1 - job.id;
  // Start together, so both workers race on the same keys from the first round.
  Atomics.add(progress, 2, 1);
  for (let spins = 0; Atomics.load(progress, 2) < 2 && spins < 20_000; spins++) Atomics.wait(progress, 3, 0, 0.5);
  const end = Date.now() + job.ms;
  let i = 0;
  let firstPass = true;
  let pick = 12345 + job.id;
  while (firstPass || Date.now() < end) {
    for (let b = 0; b < 128; b++) {
      const now = job.now || Date.now();
      fs.noteOutbound(out[i]!, out[i]!.length, now);
      if (!fs.check(rep[i]!, rep[i]!.length, now)) res.badOwnReply++;
      if (!fs.check(inb[i]!, inb[i]!.length, now)) res.badInbound++;
      const done = Atomics.load(progress, other);
      if (done > 0) {
        pick = (Math.imul(pick, 1103515245) + 12345) >>> 0;
        const j = pick % done;
        res.crossChecks++;
        if (!fs.check(rep[j]!, rep[j]!.length, now)) res.badCrossReply++;
      }
      res.rounds++;
      if (++i === n) {
        i = 0;
        firstPass = false;
      }
      if (firstPass) Atomics.store(progress, job.id, i);
      else Atomics.store(progress, job.id, n);
    }
  }
  fs.counters.writeTo(res.counters, 0);
} catch (e) {
  res.error = e instanceof Error ? `${e.message}\n${e.stack}` : String(e);
}
parentPort!.postMessage(res);
