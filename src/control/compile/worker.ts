// A compile worker (node:worker_threads): keeps per-tenant incremental
// compilers and answers one job at a time (compile/protocol.ts). The event
// loop never compiles; it sends inputs here and keeps only the views it gets
// back. The pool (compile/pool.ts) enforces the time budget by terminating a
// worker whose job runs too long, so nothing here needs to check the clock.
import { parentPort } from 'node:worker_threads';
import {
  compileCandidate, compileForRelayNow, previewCandidate, newTenantCompilerFrom, policyFacts, FACTS_MIN_BYTES,
  type AclNetwork, type AclNode, type TenantCompiler,
} from '../policy-engine.js';
import type { CheckJob, FactsJob, PreviewJob, FromWorker, Job, JobResult, RelayJob, SyncJob, ToWorker, WireView, WireViews } from './protocol.js';

/** Tenants whose compiled state a worker keeps (least recently used dropped first). */
const MAX_TENANTS = 256;

interface TenantState {
  policy: string;
  compiler: TenantCompiler;
  nodes: Map<number, AclNode>;
}

const states = new Map<number, TenantState>();
/** Per tenant: the state a check with keep=true compiled, adopted when a sync brings that policy. */
const candidates = new Map<number, TenantState>();

function touch(tenant: number, s: TenantState): void {
  states.delete(tenant);
  states.set(tenant, s);
  while (states.size > MAX_TENANTS) states.delete(states.keys().next().value as number);
}

const samePrimaries = (a: ReadonlyMap<string, number>, b: ReadonlyMap<string, number>): boolean =>
  a.size === b.size && [...a].every(([k, v]) => b.get(k) === v);

const facts = (text: string): string | null => (text.length >= FACTS_MIN_BYTES ? policyFacts(text) : null);

function encode(c: TenantCompiler, ids: Iterable<number>): { out: WireViews; transfer: ArrayBuffer[] } {
  const baseIdx = new Map<unknown, number>();
  const bases: (Int32Array | Float64Array)[] = [];
  const views: WireView[] = [];
  for (const id of ids) {
    const v = c.view(id);
    if (!v) continue;
    let b = baseIdx.get(v.peers.base);
    if (b === undefined) {
      b = bases.length;
      baseIdx.set(v.peers.base, b);
      // an exact-length copy: the shared vector's buffer may be much larger
      bases.push(v.peers.base.slice());
    }
    views.push({ id, base: b, cut: v.peers.cut, routes: v.peerRoutes, filter: v.packetFilter, ssh: v.sshPolicy, primary: v.primaryRoutes });
  }
  return { out: { bases, views }, transfer: bases.map((x) => x.buffer as ArrayBuffer) };
}

function applyNodes(s: TenantState, net: AclNetwork): void {
  const next = new Map(net.nodes.map((n) => [n.id, n]));
  for (const [id, prev] of s.nodes) {
    const n = next.get(id);
    if (!n) s.compiler.nodeRemoved(id);
    else s.compiler.nodeChanged(prev, n);
  }
  for (const [id, n] of next) if (!s.nodes.has(id)) s.compiler.nodeJoined(n);
  s.nodes = next;
}

function sync(job: SyncJob): { result: JobResult; transfer: ArrayBuffer[] } {
  const t0 = performance.now();
  const primaries = new Map(job.primaries);
  let s = states.get(job.tenant);
  let full = false;
  /** The facts of this policy went out with the check that compiled it. */
  let adopted = false;
  const cand = candidates.get(job.tenant);
  if (cand && cand.policy === job.policy && (!s || s.policy !== job.policy)) {
    // A PUT compiled this policy already: start from that, then apply what changed since.
    candidates.delete(job.tenant);
    s = cand;
    s.compiler.changedNodes();
    applyNodes(s, job.net);
    full = true;
    adopted = true;
  } else if (!s) {
    s = fresh(job.policy, job.net, primaries);
    full = true;
  } else {
    applyNodes(s, job.net);
    if (s.policy !== job.policy) {
      s.compiler.setPolicy(job.policy);
      s.policy = job.policy;
      full = true;
    }
  }
  // The stored primaries are the one answer; a batch that skipped the state
  // which moved one is recompiled from the input.
  if (!samePrimaries(s.compiler.primaries(), primaries)) {
    s = fresh(job.policy, job.net, primaries);
    full = true;
  }
  touch(job.tenant, s);
  const changed = s.compiler.changedNodes();
  const connected = new Set(job.connected);
  const want = new Set(job.missing);
  if (full) for (const id of connected) want.add(id);
  else for (const id of changed) if (connected.has(id)) want.add(id);
  const { out, transfer } = encode(s.compiler, want);
  const result: JobResult = {
    kind: 'sync', full, changed: Int32Array.from(changed), out, primaries: [...s.compiler.primaries()],
    facts: full && !adopted ? facts(job.policy) : null, ms: performance.now() - t0,
  };
  return { result, transfer: [...transfer, result.changed.buffer as ArrayBuffer] };
}

function fresh(policy: string, net: AclNetwork, primaries: Map<string, number>): TenantState {
  const compiler = newTenantCompilerFrom(policy, net, primaries);
  if (!compiler) throw new Error('the stored policy does not parse');
  return { policy, compiler, nodes: new Map(net.nodes.map((n) => [n.id, n])) };
}

function check(job: CheckJob): JobResult {
  const t0 = performance.now();
  const c = compileCandidate(job.policy, job.net, new Map(job.primaries), job.size);
  if (c.valid && c.compiler && job.keep) {
    c.compiler.changedNodes();
    candidates.set(job.tenant, { policy: job.policy, compiler: c.compiler, nodes: new Map(job.net.nodes.map((n) => [n.id, n])) });
  }
  return { kind: 'check', valid: c.valid, errors: c.errors, over: c.over, tests: c.tests, facts: c.valid ? facts(job.policy) : null, ms: performance.now() - t0 };
}

function relay(job: RelayJob): JobResult {
  const t0 = performance.now();
  const c = compileForRelayNow(job.policy, job.net, new Map(job.primaries), new Map(job.wishes));
  if (!c) return { kind: 'relay', ok: false, primaries: [], globalFilter: [], exitFor: [], ms: performance.now() - t0 };
  return { kind: 'relay', ok: true, primaries: [...c.primaries], globalFilter: c.globalFilter, exitFor: [...c.exitFor], ms: performance.now() - t0 };
}

function preview(job: PreviewJob): JobResult {
  const t0 = performance.now();
  const c = previewCandidate(job.policy, job.net, new Map(job.primaries), job.size, job.subjects);
  return { kind: 'preview', valid: c.valid, errors: c.errors, over: c.over, reach: c.reach, ms: performance.now() - t0 };
}

function factsJob(job: FactsJob): JobResult {
  const t0 = performance.now();
  return { kind: 'facts', facts: policyFacts(job.policy), ms: performance.now() - t0 };
}

function run(job: Job): { result: JobResult; transfer: ArrayBuffer[] } {
  switch (job.kind) {
    case 'sync':
      return sync(job);
    case 'check':
      return { result: check(job), transfer: [] };
    case 'relay':
      return { result: relay(job), transfer: [] };
    case 'facts':
      return { result: factsJob(job), transfer: [] };
    case 'preview':
      return { result: preview(job), transfer: [] };
  }
}

const port = parentPort;
if (!port) throw new Error('compile/worker.ts runs as a worker thread');

port.on('message', (m: ToWorker) => {
  if ('drop' in m) {
    states.delete(m.drop);
    candidates.delete(m.drop);
    return;
  }
  let reply: FromWorker;
  let transfer: ArrayBuffer[] = [];
  try {
    const r = run(m.job);
    reply = { id: m.id, ok: true, result: r.result };
    transfer = r.transfer;
  } catch (err) {
    // A failed job may have left the tenant's state half-updated: start over next time.
    states.delete(m.job.tenant);
    reply = { id: m.id, ok: false, error: err instanceof Error ? err.message : String(err) };
  }
  port.postMessage(reply, transfer);
});
port.postMessage({ id: 0, ready: true } satisfies FromWorker);
