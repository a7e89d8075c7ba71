// The compile pool: policy compilation off the server's event loop.
//
// A few worker threads (compile/worker.ts) keep each tenant's incremental
// compiler; the event loop sends inputs and keeps only the views it gets back.
// Scheduling is per tenant and fair:
// - a tenant has at most one job running, and its queued syncs coalesce
//   (the newest input wins; every caller gets that result);
// - free workers take tenants round-robin, a tenant preferring the worker
//   that holds its state ("home"); a cheap tenant whose home is busy moves to
//   any free worker (rebuilding there is cheap), an expensive one waits;
// - expensive jobs (a tenant whose last whole compile took > 250 ms, or an
//   unknown one with a large policy) never run on the first worker, the
//   "light lane", so it is always left for everybody else; cheap jobs prefer
//   it. (Workers run at the event loop's priority: at nice 10 an expensive
//   compile made no progress at all on a busy host and always ran out of budget;)
// - every job has a time budget: a worker still busy when it runs out is
//   terminated and replaced, the job fails with BudgetError, and the
//   tenants whose state lived there simply rebuild on their next job.
import type { Worker } from 'node:worker_threads';
import { spawnWorker } from '../../runtime/worker.js';
import { availableParallelism } from 'node:os';
import type { ControlMetrics } from '../metrics.js';
import type { AclNetwork } from '../policy-engine.js';
import type { CheckJob, CheckResult, FactsResult, FromWorker, Job, JobResult, PreviewJob, PreviewResult, RelayJob, RelayResult, SizeBudget, SyncJob, SyncResult, ToWorker } from './protocol.js';

export interface CompileLimits {
  /** Worker threads (default min(4, max(2, cores)); env LARKTUN_COMPILE_WORKERS). */
  workers: number;
  /** Time budget of one compile job, ms (default 5000; env LARKTUN_COMPILE_BUDGET_MS). */
  timeMs: number;
  /** Largest policy text, bytes (default 1 MiB; env LARKTUN_POLICY_MAX_BYTES). */
  maxBytes: number;
  size: SizeBudget;
  /** Jobs one tenant may have waiting (syncs coalesce, so these are mostly checks). */
  maxQueued: number;
  /** Heap of one worker, MB (a policy that needs more fails like one over the time budget). */
  workerHeapMb: number;
}

export const DEFAULT_LIMITS: CompileLimits = {
  workers: Math.min(4, Math.max(2, availableParallelism())),
  timeMs: 5000,
  maxBytes: 1024 * 1024,
  size: { maxHosts: 50_000, maxRules: 10_000, maxEntries: 200_000 },
  maxQueued: 8,
  workerHeapMb: 2048,
};

function envInt(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name}="${v}" is not a positive integer`);
  return n;
}

/** Limits from options, then the environment, then the defaults. */
export function compileLimits(opts: { workers?: number; timeMs?: number } = {}): CompileLimits {
  const d = DEFAULT_LIMITS;
  return {
    workers: opts.workers ?? envInt('LARKTUN_COMPILE_WORKERS') ?? d.workers,
    timeMs: opts.timeMs ?? envInt('LARKTUN_COMPILE_BUDGET_MS') ?? d.timeMs,
    maxBytes: envInt('LARKTUN_POLICY_MAX_BYTES') ?? d.maxBytes,
    size: {
      maxHosts: envInt('LARKTUN_POLICY_MAX_HOSTS') ?? d.size.maxHosts,
      maxRules: envInt('LARKTUN_POLICY_MAX_RULES') ?? d.size.maxRules,
      maxEntries: envInt('LARKTUN_POLICY_MAX_ENTRIES') ?? d.size.maxEntries,
    },
    maxQueued: d.maxQueued,
    workerHeapMb: d.workerHeapMb,
  };
}

/** A job ran past a budget; `limit` names it as the API and the docs do. */
export class BudgetError extends Error {
  constructor(
    readonly limit: 'compile_time_ms' | 'worker_heap_mb',
    readonly max: number,
  ) {
    super(limit === 'compile_time_ms'
      ? `the policy did not compile within the ${max} ms budget (LARKTUN_COMPILE_BUDGET_MS)`
      : `compiling the policy needed more than the ${max} MB worker heap`);
  }
}

/** The tenant already has as many compile jobs waiting as it may. */
export class QueueFullError extends Error {}

/** A job waited longer than a few budgets for a worker (workers failing to start). */
export class NoWorkerError extends Error {}

interface Waiter {
  resolve(r: JobResult): void;
  reject(e: Error): void;
}

interface Pending {
  id: number;
  tenant: number;
  job: Job;
  coalesce: string | null;
  waiters: Waiter[];
  queuedAt: number;
  heavy: boolean;
  /** Fails the job if it is still waiting for a worker after maxWaitMs(). */
  expiry: NodeJS.Timeout | null;
}

interface Slot {
  worker: Worker;
  /** The light lane: never runs an expensive job. */
  light: boolean;
  /** Loaded and taking jobs (a new worker's start-up is not charged to any job's budget). */
  ready: boolean;
  busy: Pending | null;
  timer: NodeJS.Timeout | null;
  startedAt: number;
}

interface TenantQueue {
  home: Slot | null;
  running: boolean;
  queue: Pending[];
  /** ms of the tenant's last whole-tenant compile (check, relay, full sync); null: none yet. */
  fullMs: number | null;
  /** Policy of the tenant's last sync (a sync with another one compiles from scratch). */
  syncedPolicy: string | null;
}

const HEAVY_MS = 250;
const LARGE_POLICY = 64 * 1024;
const LARGE_NET = 2000;

function newWorker(heapMb: number): Worker {
  return spawnWorker(import.meta.url, 'worker', { resourceLimits: { maxOldGenerationSizeMb: heapMb } });
}

/** Longest a job waits while a worker is still loading (see submit). */
const LOADING_WAIT_MS = 60_000;

export class CompilePool {
  private readonly slots: Slot[] = [];
  private readonly tenants = new Map<number, TenantQueue>();
  private nextId = 1;
  /** Round-robin position among tenants with work. */
  private rr = 0;
  private closed = false;

  constructor(
    readonly limits: CompileLimits,
    private readonly metrics?: ControlMetrics,
  ) {
    const n = Math.max(1, limits.workers);
    for (let i = 0; i < n; i++) this.slots.push(this.spawn(i === 0 && n > 1));
  }

  private spawn(light: boolean): Slot {
    const worker = newWorker(this.limits.workerHeapMb);
    worker.unref();
    const slot: Slot = { worker, light, ready: false, busy: null, timer: null, startedAt: 0 };
    worker.on('message', (m: FromWorker) => this.onReply(slot, m));
    worker.on('error', (err: Error) => this.onCrash(slot, err));
    worker.on('exit', (code) => {
      if (!this.closed && this.slots.includes(slot)) this.onCrash(slot, new Error(`compile worker exited with code ${code}`));
    });
    return slot;
  }

  /** Replaces a slot's worker (the tenants homed there rebuild elsewhere). */
  private replace(slot: Slot, reason: string): Slot {
    const i = this.slots.indexOf(slot);
    if (i < 0) return slot;
    if (slot.timer) clearTimeout(slot.timer);
    this.slots.splice(i, 1);
    void slot.worker.terminate();
    for (const t of this.tenants.values()) if (t.home === slot) t.home = null;
    this.metrics?.compileWorkerRestarts.inc({ reason });
    const fresh = this.spawn(slot.light);
    if (!this.closed) this.slots.splice(i, 0, fresh);
    return fresh;
  }

  private onCrash(slot: Slot, err: Error): void {
    if (this.closed || !this.slots.includes(slot)) return;
    if (!slot.ready) {
      // It failed while loading: try again in a second, not in a loop.
      this.slots.splice(this.slots.indexOf(slot), 1);
      void slot.worker.terminate();
      for (const t of this.tenants.values()) if (t.home === slot) t.home = null;
      this.metrics?.compileWorkerRestarts.inc({ reason: 'crashed' });
      setTimeout(() => {
        if (this.closed) return;
        this.slots.push(this.spawn(slot.light));
      }, 1000).unref();
      return;
    }
    const p = slot.busy;
    slot.busy = null;
    const oom = (err as { code?: string }).code === 'ERR_WORKER_OUT_OF_MEMORY';
    this.replace(slot, oom ? 'over_budget' : 'crashed');
    if (p) this.finish(p, oom ? 'over_budget' : 'error', oom ? new BudgetError('worker_heap_mb', this.limits.workerHeapMb) : new Error(`compile worker failed: ${err.message}`));
    this.pump();
  }

  private onReply(slot: Slot, m: FromWorker): void {
    if ('ready' in m) {
      slot.ready = true;
      this.pump();
      return;
    }
    const p = slot.busy;
    if (!p || p.id !== m.id) return;
    if (slot.timer) clearTimeout(slot.timer);
    slot.timer = null;
    slot.busy = null;
    if (m.ok) {
      const r = m.result;
      const t = this.tenants.get(p.tenant);
      const whole = r.kind === 'check' || r.kind === 'preview' || r.kind === 'relay' || (r.kind === 'sync' && r.full);
      if (t && whole) t.fullMs = r.ms;
      if (t && p.job.kind === 'sync') t.syncedPolicy = p.job.policy;
      const kind = r.kind === 'sync' && r.full ? 'sync_full' : r.kind;
      this.metrics?.compileJobSeconds.observe({ kind }, r.ms / 1000);
      this.finish(p, (r.kind === 'check' || r.kind === 'preview') && !r.valid ? 'invalid' : 'ok', r);
    } else {
      this.finish(p, 'error', new Error(m.error));
    }
    this.pump();
  }

  private finish(p: Pending, result: string, out: JobResult | Error): void {
    const t = this.tenants.get(p.tenant);
    if (t) {
      t.running = false;
      if (t.queue.length === 0 && t.home === null) this.tenants.delete(p.tenant);
    }
    const kind = !(out instanceof Error) && out.kind === 'sync' && out.full ? 'sync_full' : p.job.kind;
    this.metrics?.compileJobs.inc({ kind, result });
    for (const w of p.waiters) {
      if (out instanceof Error) w.reject(out);
      else w.resolve(out);
    }
  }

  private submit(job: Job, coalesce: string | null): Promise<JobResult> {
    if (this.closed) return Promise.reject(new Error('the compile pool is closed'));
    let t = this.tenants.get(job.tenant);
    if (!t) {
      t = { home: null, running: false, queue: [], fullMs: null, syncedPolicy: null };
      this.tenants.set(job.tenant, t);
    }
    const tq = t;
    return new Promise<JobResult>((resolve, reject) => {
      const same = coalesce === null ? undefined : tq.queue.find((p) => p.coalesce === coalesce);
      if (same) {
        same.job = job;
        same.heavy = this.heavy(tq, job);
        same.waiters.push({ resolve, reject });
        return;
      }
      if (tq.queue.length >= this.limits.maxQueued) {
        reject(new QueueFullError(`this tenant already has ${tq.queue.length} compile jobs waiting`));
        return;
      }
      const p: Pending = { id: this.nextId++, tenant: job.tenant, job, coalesce, waiters: [{ resolve, reject }], queuedAt: performance.now(), heavy: this.heavy(tq, job), expiry: null };
      // A job waits at most for a few budgets (the workers it may use are busy
      // with jobs that each end within the budget); longer means no worker is
      // coming (they fail to start): the caller gets an error, not a hang.
      const expire = (): void => {
        const i = tq.queue.indexOf(p);
        if (i < 0) return;
        // A worker that is still loading is coming (a restart after a budget kill
        // loads the compiler again, slow on a saturated machine): wait on for it,
        // up to LOADING_WAIT_MS in all, before calling the pool unavailable.
        if (this.slots.some((s) => !s.ready) && performance.now() - p.queuedAt < LOADING_WAIT_MS) {
          p.expiry = setTimeout(expire, this.maxWaitMs());
          p.expiry.unref();
          return;
        }
        tq.queue.splice(i, 1);
        this.metrics?.compileJobs.inc({ kind: p.job.kind, result: 'error' });
        for (const w of p.waiters) w.reject(new NoWorkerError(`no compile worker became free within ${Math.round(performance.now() - p.queuedAt)} ms`));
      };
      p.expiry = setTimeout(expire, this.maxWaitMs());
      p.expiry.unref();
      tq.queue.push(p);
      this.pump();
    });
  }

  private heavy(t: TenantQueue, job: Job): boolean {
    if (job.kind === 'sync' && t.syncedPolicy === job.policy && t.home !== null) return false; // incremental
    // A large input is expensive whatever the tenant's history (a new, larger policy).
    if (job.policy.length >= LARGE_POLICY || ('net' in job && job.net.nodes.length >= LARGE_NET)) return true;
    return t.fullMs !== null && t.fullMs > HEAVY_MS;
  }

  /** Starts queued jobs on free workers (see the scheduling rules at the top). */
  private pump(): void {
    if (this.closed) return;
    for (;;) {
      if (!this.slots.some((s) => s.ready && !s.busy)) return;
      const ready = [...this.tenants].filter(([, t]) => !t.running && t.queue.length > 0);
      if (ready.length === 0) return;
      let started = false;
      for (let k = 0; k < ready.length && !started; k++) {
        const [, t] = ready[(this.rr + k) % ready.length] as [number, TenantQueue];
        const p = t.queue[0] as Pending;
        const free = (s: Slot | null): s is Slot => s !== null && s.ready && !s.busy && !(p.heavy && s.light);
        // Only a cheap tenant moves off its busy home: elsewhere its state is rebuilt from scratch.
        const cheap = t.fullMs !== null ? t.fullMs <= HEAVY_MS : !p.heavy;
        let slot: Slot | null = free(t.home) ? t.home : null;
        if (!slot && (t.home === null || cheap)) {
          if (!p.heavy) slot = this.slots.find((s) => s.light && free(s)) ?? null;
          slot ??= this.leastHomed(p.heavy);
        }
        if (!slot) continue;
        this.rr = (this.rr + k + 1) % Math.max(1, ready.length);
        this.start(t, p, slot);
        started = true;
      }
      if (!started) return;
    }
  }

  private leastHomed(heavy: boolean): Slot | null {
    let best: Slot | null = null;
    let bestN = Infinity;
    for (const s of this.slots) {
      if (s.busy || !s.ready || (heavy && s.light)) continue;
      let n = 0;
      for (const t of this.tenants.values()) if (t.home === s) n++;
      if (n < bestN) {
        best = s;
        bestN = n;
      }
    }
    return best;
  }

  /** Longest a job may wait for a worker: a few budgets (every running job ends within one). */
  private maxWaitMs(): number {
    return Math.max(10_000, 4 * this.limits.timeMs);
  }

  private start(t: TenantQueue, p: Pending, slot: Slot): void {
    t.queue.shift();
    if (p.expiry) clearTimeout(p.expiry);
    t.running = true;
    if (t.home !== slot) {
      if (t.home) t.home.worker.postMessage({ id: 0, drop: p.tenant } satisfies ToWorker);
      t.home = slot;
      t.syncedPolicy = null;
    }
    slot.busy = p;
    slot.startedAt = performance.now();
    this.metrics?.compileWaitSeconds.observe((slot.startedAt - p.queuedAt) / 1000);
    slot.timer = setTimeout(() => {
      if (slot.busy !== p) return;
      slot.busy = null;
      this.replace(slot, 'over_budget');
      this.finish(p, 'over_budget', new BudgetError('compile_time_ms', this.limits.timeMs));
      this.pump();
    }, this.limits.timeMs);
    slot.timer.unref();
    slot.worker.postMessage({ id: p.id, job: p.job } satisfies ToWorker);
  }

  // ---- typed entry points ------------------------------------------------------

  /** Brings the tenant's compiled state up to `job` (queued syncs of a tenant coalesce). */
  async sync(job: Omit<SyncJob, 'kind'>): Promise<SyncResult> {
    return (await this.submit({ kind: 'sync', ...job }, 'sync')) as SyncResult;
  }

  /** Validates and completely compiles a candidate policy within the budget. */
  async check(tenant: number, policy: string, net: AclNetwork, primaries: ReadonlyMap<string, number>, keep: boolean): Promise<CheckResult> {
    const job: CheckJob = { kind: 'check', tenant, policy, net, primaries: [...primaries], size: this.limits.size, keep };
    return (await this.submit(job, null)) as CheckResult;
  }

  /** The reach of `subjects` under a candidate policy (a whole compile, within the budget; never coalesced). */
  async preview(tenant: number, policy: string, net: AclNetwork, primaries: ReadonlyMap<string, number>, subjects: number[]): Promise<PreviewResult> {
    const job: PreviewJob = { kind: 'preview', tenant, policy, net, primaries: [...primaries], size: this.limits.size, subjects };
    return (await this.submit(job, null)) as PreviewResult;
  }

  /** A whole-tenant compile for relays (queued ones of a tenant coalesce). */
  async relay(job: Omit<RelayJob, 'kind'>): Promise<RelayResult> {
    return (await this.submit({ kind: 'relay', ...job }, 'relay')) as RelayResult;
  }

  async facts(tenant: number, policy: string): Promise<FactsResult> {
    return (await this.submit({ kind: 'facts', tenant, policy }, `facts`)) as FactsResult;
  }

  /** Workers, and how many are running a job now. */
  stats(): { workers: number; busy: number; tenantsQueued: number } {
    return { workers: this.slots.length, busy: this.slots.filter((s) => s.busy).length, tenantsQueued: [...this.tenants.values()].filter((t) => t.queue.length > 0).length };
  }

  async close(): Promise<void> {
    this.closed = true;
    const err = new Error('the compile pool is closed');
    for (const t of this.tenants.values()) {
      for (const p of t.queue.splice(0)) {
        if (p.expiry) clearTimeout(p.expiry);
        for (const w of p.waiters) w.reject(err);
      }
    }
    for (const s of this.slots) {
      if (s.timer) clearTimeout(s.timer);
      if (s.busy) for (const w of s.busy.waiters) w.reject(err);
      s.busy = null;
    }
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
