// A node engine on N worker threads. The main thread keeps control: it owns
// the peer table (keys, configured endpoints and their DNS resolution), the
// forwarding table and status; each worker (worker.ts) runs an ordinary Engine
// on its own SO_REUSEPORT sockets (same ports) and its own queue of the
// multi-queue TUN. Tables are posted to every worker on each change; per-peer
// state lives in shared memory (PeerSpec.shared): one sending session (one
// sequence counter), one epoch and replay window, the learned endpoint and
// last-heard time, RTT and packet counts; counters are published by each worker
// into one SharedArrayBuffer and summed here.
//
// Flow affinity: the kernel picks a socket of the reuseport group by a hash of
// the datagram's addresses and ports, so one peer's datagrams reach one worker;
// the multi-queue TUN hands the packets of one flow to one queue. Order within
// a flow is therefore kept on both paths.
//
// A worker that fails (throws, exits) is fatal: the daemon logs it and exits
// non-zero, for its supervisor to restart (see README "Packet workers").
import { isIP } from 'node:net';
import type { Worker } from 'node:worker_threads';
import { ForwardingTable, PrefixMatcher, type FwdRule } from '../../net/lpm.js';
import { newRxShared, newTxShared } from '../../wire/index.js';
import { COUNTER_NAMES, Counters } from '../counters.js';
import {
  BindError,
  ONLINE_WINDOW_MS,
  PACKET_CLOCK_BASE,
  PEER_STATS_PER_WORKER,
  PEER_STATS_RTT_AT,
  PEER_STATS_RTT_LAST,
  PEER_STATS_RTT_SMOOTH,
  newPeerStats,
  type NodeEngine,
  type PeerShared,
  type PeerSpec,
  type PeerView,
  type TunInterceptor,
  type WorkerStatus,
} from '../engine.js';
import { FILTER_COUNTER_NAMES, FilterCounters, type FilterState } from '../filter.js';
import type { FilterRule } from '../../acl/index.js';
import { addUdpIoCounts, zeroUdpIoStatus, type UdpIoStatus } from '../io/types.js';
import { TunDevice, newFlowTable, type TunOffloadStatus, type TunQueueDesc } from '../tun.js';
import { SharedEndpoint } from '../workers/endpoint.js';
import { resolveHost } from '../io/addr.js';
import { spawnWorker } from '../../runtime/worker.js';
import { MAX_IN_FLIGHT, type FromWorker, type ToWorker, type WorkerFilter, type WorkerInit, type WorkerSnapshot } from './protocol.js';

/** How often workers publish their counters (status and metrics lag by at most this). */
export const PUBLISH_MS = 100;
/** How long status waits for a worker's snapshot before showing the last one. */
const SNAPSHOT_TIMEOUT_MS = 1000;
/** How long a stopping worker may take before it is terminated. */
const STOP_TIMEOUT_MS = 3000;

export interface WorkerEngineOptions {
  workers: number;
  localId: number;
  obfuscate: boolean;
  peers: PeerSpec[];
  rules: FwdRule[];
  keepaliveSecs: number;
  listenPorts: number[];
  bindHost4?: string;
  bindHost6?: string | null;
  /** The TUN device opened with TunDevice.openQueues(name, workers) (null: no TUN). Closed by stop(). */
  tun: { dev: TunDevice; queues: TunQueueDesc[] } | null;
  log?: (msg: string) => void;
  udpBatch?: boolean;
  udpOffload?: boolean;
  /** A worker failed while running (default: log and exit the process with status 1). */
  onFatal?: (msg: string) => void;
  /** Wall-clock ms of the workers' packet clock 0 (default: this thread's PACKET_CLOCK_BASE). */
  clockBase?: number;
}

/** The main thread's view of one peer: its spec, and the shared words the workers update. */
class PoolPeer implements PeerView {
  readonly id: number;
  name: string;
  allowedSrc: PrefixMatcher;
  configuredEndpoint: { host: string; port: number } | null;
  localId: number;
  pskHex: string;
  spec: PeerSpec;
  readonly ep: SharedEndpoint;
  readonly stats: Float64Array;
  shared: PeerShared;

  constructor(s: PeerSpec, localId: number, workers: number) {
    this.id = s.id;
    this.name = s.name;
    this.allowedSrc = new PrefixMatcher(s.allowedSrc);
    this.configuredEndpoint = s.endpoint;
    this.localId = s.localId ?? localId;
    this.pskHex = s.psk.toString('hex');
    const endpoint = new SharedArrayBuffer(56);
    const stats = newPeerStats(workers);
    this.ep = new SharedEndpoint(endpoint);
    this.stats = new Float64Array(stats);
    this.shared = { tx: newTxShared(), rx: newRxShared(), endpoint, stats };
    this.spec = postable(s, this.shared);
  }

  get lastSeenMs(): number {
    return this.ep.lastSeenMs;
  }

  get rxPackets(): number {
    let n = 0;
    for (let i = PEER_STATS_PER_WORKER; i < this.stats.length; i += 2) n += this.stats[i]!;
    return n;
  }

  get txPackets(): number {
    let n = 0;
    for (let i = PEER_STATS_PER_WORKER + 1; i < this.stats.length; i += 2) n += this.stats[i]!;
    return n;
  }

  get rttLastMs(): number {
    return this.stats[PEER_STATS_RTT_LAST]!;
  }

  get rttSmoothMs(): number {
    return this.stats[PEER_STATS_RTT_SMOOTH]!;
  }

  get rttAtMs(): number {
    return this.stats[PEER_STATS_RTT_AT]!;
  }

  online(now: number): boolean {
    const t = this.lastSeenMs;
    return t > 0 && now - t <= ONLINE_WINDOW_MS;
  }

  endpointText(): string | null {
    this.ep.refresh();
    const e = this.ep;
    if (e.addr === null) return null;
    return e.family === 6 ? `[${e.addr}]:${e.port}` : `${e.addr}:${e.port}`;
  }
}

interface Slot {
  index: number;
  worker: Worker;
  ready: boolean;
  stopping: boolean;
  snap: WorkerSnapshot | null;
  inFlight: number;
}

export class WorkerEngine implements NodeEngine {
  readonly workers: number;
  readonly localId: number;
  readonly obfuscate: boolean;
  readonly startedAt = Date.now();
  /**
   * Wall-clock ms of packet clock 0 on every worker: they share one flow
   * table, whose times must all be on one clock (a worker's own
   * PACKET_CLOCK_BASE is its thread's start).
   */
  readonly clockBase: number;
  readonly peers: PoolPeer[] = [];
  private readonly byId = new Map<number, PoolPeer>();
  private ruleList: readonly FwdRule[];
  private readonly countersBuf: SharedArrayBuffer;
  private readonly countersView: Float64Array;
  private readonly filterBuf: SharedArrayBuffer;
  /** Which TUN queue each flow is read from (null: no TUN). */
  private readonly tunFlows: SharedArrayBuffer | null;
  private readonly filterView: Float64Array;
  /** The filter the workers enforce (its shared flow table and policy), null: none. */
  private filter: WorkerFilter | null = null;
  private filterRules: readonly FilterRule[] = [];
  /** Drops counted on this thread (inject beyond the bound). */
  private readonly local = new Counters();
  private readonly slots: Slot[] = [];
  private ports: number[] = [];
  private bound: { family: 4 | 6; port: number }[] = [];
  private intercept: TunInterceptor | null = null;
  private keepaliveMs: number;
  private snapId = 0;
  private readonly snapWaits = new Map<number, { left: number; done: () => void }>();
  private resolveTimer: NodeJS.Timeout | null = null;
  private stopping = false;
  private readonly log: (msg: string) => void;
  private readonly onFatal: (msg: string) => void;

  constructor(private readonly opts: WorkerEngineOptions) {
    if (!Number.isInteger(opts.workers) || opts.workers < 2) throw new RangeError('a worker engine has at least 2 workers (1: use Engine)');
    if (opts.tun !== null && opts.tun.queues.length !== opts.workers) throw new RangeError('the TUN needs one queue per worker');
    this.workers = opts.workers;
    this.clockBase = opts.clockBase ?? PACKET_CLOCK_BASE;
    this.localId = opts.localId;
    this.obfuscate = opts.obfuscate;
    this.ruleList = ForwardingTable.build(opts.rules).rules;
    this.keepaliveMs = Math.max(0, opts.keepaliveSecs * 1000);
    this.log = opts.log ?? (() => {});
    this.onFatal =
      opts.onFatal ??
      ((msg) => {
        process.stderr.write(`larktund: ${msg}; exiting\n`);
        process.exit(1);
      });
    this.countersBuf = new SharedArrayBuffer(8 * COUNTER_NAMES.length * opts.workers);
    this.countersView = new Float64Array(this.countersBuf);
    this.filterBuf = new SharedArrayBuffer(8 * FILTER_COUNTER_NAMES.length * opts.workers);
    this.tunFlows = opts.tun !== null ? newFlowTable() : null;
    this.filterView = new Float64Array(this.filterBuf);
    for (const s of opts.peers) this.addPeer(s);
  }

  private addPeer(s: PeerSpec): PoolPeer {
    const p = new PoolPeer(s, this.localId, this.workers);
    this.peers.push(p);
    this.byId.set(p.id, p);
    return p;
  }

  /** Resolves configured endpoints, then starts worker 0 (which binds the ports) and the others on its ports. */
  async start(): Promise<void> {
    await Promise.all(this.peers.map((p) => this.resolvePeer(p)));
    try {
      const first = await this.spawn(0, this.opts.listenPorts);
      this.ports = first.ports;
      this.bound = first.bound;
      await Promise.all(Array.from({ length: this.workers - 1 }, (_, i) => this.spawn(i + 1, this.ports)));
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.resolveTimer = setInterval(() => {
      const now = Date.now();
      for (const p of this.peers) {
        if (p.configuredEndpoint && isIP(p.configuredEndpoint.host) === 0 && !p.online(now)) void this.resolvePeer(p);
      }
    }, 30_000);
    this.resolveTimer.unref();
  }

  private spawn(index: number, ports: number[]): Promise<{ ports: number[]; bound: { family: 4 | 6; port: number }[] }> {
    const o = this.opts;
    const init: WorkerInit = {
      index,
      localId: o.localId,
      obfuscate: o.obfuscate,
      peers: this.peers.map((p) => p.spec),
      rules: [...this.ruleList],
      keepaliveSecs: index === 0 ? this.keepaliveMs / 1000 : 0,
      listenPorts: ports,
      bindHost4: o.bindHost4,
      bindHost6: o.bindHost6,
      udpBatch: o.udpBatch,
      udpOffload: o.udpOffload,
      tun: o.tun ? o.tun.queues[index]! : null,
      tunQueues: o.tun ? o.tun.queues : [],
      tunFlows: this.tunFlows,
      counters: this.countersBuf,
      publishMs: PUBLISH_MS,
      filter: this.filter,
      filterCounters: this.filterBuf,
      clockBase: this.clockBase,
    };
    const worker = spawnWorker(import.meta.url, 'worker', { workerData: init, name: `larktun-packets-${index}` });
    const slot: Slot = { index, worker, ready: false, stopping: false, snap: null, inFlight: 0 };
    this.slots.push(slot);
    return new Promise((resolve, reject) => {
      worker.on('message', (m: FromWorker) => {
        switch (m.t) {
          case 'ready':
            slot.ready = true;
            resolve({ ports: m.ports, bound: m.bound });
            break;
          case 'failed':
            slot.stopping = true;
            reject(m.bind ? new BindError(m.message) : new Error(`packet worker ${index}: ${m.message}`));
            break;
          case 'snapshot': {
            slot.snap = m.snap;
            const w = this.snapWaits.get(m.id);
            if (w && --w.left === 0) w.done();
            break;
          }
          case 'intercept':
            this.onIntercept(slot, m.pkt);
            break;
          case 'injected':
            slot.inFlight--;
            break;
          case 'stopped':
            slot.stopping = true;
            break;
        }
      });
      worker.on('error', (err) => {
        if (!slot.ready) reject(new Error(`packet worker ${index} failed to start: ${err.message}`));
        else if (!this.stopping) this.onFatal(`packet worker ${index} failed: ${err.stack ?? err.message}`);
      });
      worker.on('exit', (code) => {
        if (!slot.ready && !slot.stopping) reject(new Error(`packet worker ${index} exited (${code}) before it was ready`));
        else if (!this.stopping && !slot.stopping) this.onFatal(`packet worker ${index} exited unexpectedly (code ${code})`);
      });
    });
  }

  private post(m: ToWorker, only?: number): void {
    for (const s of this.slots) if (only === undefined || s.index === only) s.worker.postMessage(m);
  }

  private async resolvePeer(p: PoolPeer): Promise<void> {
    const ep = p.configuredEndpoint;
    if (!ep) return;
    let addr: string;
    let family: 4 | 6;
    try {
      ({ addr, family } = await resolveHost(ep.host));
    } catch (err) {
      this.log(`peer ${p.id} (${p.name || 'unnamed'}): cannot resolve ${ep.host}: ${(err as Error).message}; will retry`);
      return;
    }
    // A learned endpoint (the peer roamed and authenticated) wins over the configured one.
    if (p.lastSeenMs > 0 && p.online(Date.now())) return;
    if (this.byId.get(p.id) !== p) return; // removed meanwhile
    p.ep.set(addr, ep.port, family, 0); // local port 0: each worker's first socket of the family
  }

  // ---- NodeEngine ---------------------------------------------------------

  /** Every worker's counters summed, plus this thread's (at most PUBLISH_MS old). */
  get counters(): Counters {
    const c = new Counters();
    c.add(this.local);
    for (let w = 0; w < this.workers; w++) c.addFrom(this.countersView, w * COUNTER_NAMES.length);
    return c;
  }

  get rules(): readonly FwdRule[] {
    return this.ruleList;
  }

  /** The table in lookup order (as Engine.rules shows it); every worker builds its own from the same rules. */
  setRules(rules: readonly FwdRule[]): void {
    this.ruleList = ForwardingTable.build(rules).rules;
    this.post({ t: 'rules', rules: [...rules] });
  }

  /**
   * Every worker enforces a FilterState over `f`'s flow table, which must be
   * shared (FilterState.createShared), with the policy of setFilterRules.
   */
  setFilter(f: FilterState | null): void {
    if (f !== null && !f.flows.shared) throw new TypeError('packet workers need a filter made with FilterState.createShared()');
    this.filter = f === null ? null : { handle: f.share(), rules: this.filterRules };
    this.post({ t: 'filter', filter: this.filter });
  }

  /** Every worker compiles the policy and swaps it into its FilterState. */
  setFilterRules(rules: readonly FilterRule[]): void {
    this.filterRules = rules;
    if (this.filter !== null) this.filter = { ...this.filter, rules };
    this.post({ t: 'filterRules', rules });
  }

  /** Every worker's verdict counters summed (at most PUBLISH_MS old); null without a filter. */
  filterCounters(): Record<string, number> | null {
    if (this.filter === null) return null;
    const c = new FilterCounters();
    for (let w = 0; w < this.workers; w++) c.addFrom(this.filterView, w * FILTER_COUNTER_NAMES.length);
    return c.toJSON();
  }

  setInterceptor(i: TunInterceptor | null): void {
    const was = this.intercept !== null;
    this.intercept = i;
    if (was !== (i !== null)) this.post({ t: 'intercept', on: i !== null });
  }

  private onIntercept(slot: Slot, pkt: Uint8Array): void {
    const b = Buffer.from(pkt.buffer, pkt.byteOffset, pkt.byteLength);
    const i = this.intercept;
    let consumed = false;
    try {
      consumed = i !== null && i(b, b.length);
    } catch (err) {
      this.log(`interceptor error: ${(err as Error).message}`);
    }
    slot.worker.postMessage({ t: 'intercepted', pkt: consumed ? null : pkt } satisfies ToWorker);
  }

  /** Sends a packet of our own into the overlay (through worker 0); beyond MAX_IN_FLIGHT unanswered it is dropped. */
  inject(pkt: Buffer, len: number): void {
    const s = this.slots[0];
    if (s === undefined || s.inFlight >= MAX_IN_FLIGHT) {
      this.local.drop_send_error++;
      return;
    }
    s.inFlight++;
    s.worker.postMessage({ t: 'inject', pkt: Uint8Array.prototype.slice.call(pkt, 0, len) } satisfies ToWorker);
  }

  /**
   * The same rules as Engine.setPeers: unchanged peers keep session and
   * endpoint; a changed key gets a new shared session (the workers keep the
   * old one for receiving during the grace period); a moved configured
   * endpoint is resolved again.
   */
  setPeers(specs: PeerSpec[]): void {
    const keep = new Set(specs.map((s) => s.id));
    for (let i = this.peers.length - 1; i >= 0; i--) {
      const p = this.peers[i]!;
      if (keep.has(p.id)) continue;
      this.byId.delete(p.id);
      this.peers.splice(i, 1);
    }
    for (const s of specs) {
      const p = this.byId.get(s.id);
      if (p === undefined) {
        void this.resolvePeer(this.addPeer(s));
        continue;
      }
      const localId = s.localId ?? this.localId;
      const pskHex = s.psk.toString('hex');
      if (p.pskHex !== pskHex || p.localId !== localId) {
        p.shared = { ...p.shared, tx: newTxShared(), rx: newRxShared() };
        p.pskHex = pskHex;
        p.localId = localId;
      }
      p.name = s.name;
      p.allowedSrc = new PrefixMatcher(s.allowedSrc);
      p.spec = postable(s, p.shared);
      const moved = JSON.stringify(s.endpoint) !== JSON.stringify(p.configuredEndpoint);
      p.configuredEndpoint = s.endpoint;
      if (moved) {
        p.ep.lastSeenMs = 0; // the configured endpoint changed: use it, not what was learned
        void this.resolvePeer(p);
      }
    }
    this.post({ t: 'peers', peers: this.peers.map((p) => p.spec) });
  }

  hasPeer(id: number): boolean {
    return this.byId.has(id);
  }

  peer(id: number): PeerView | undefined {
    return this.byId.get(id);
  }

  listenPorts(): number[] {
    return [...this.ports];
  }

  /** Keepalives go from worker 0 only. */
  setKeepaliveInterval(ms: number): void {
    this.keepaliveMs = Math.max(0, ms);
    this.post({ t: 'keepalive', ms: this.keepaliveMs }, 0);
  }

  boundAddresses(): { family: 4 | 6; port: number }[] {
    return this.bound.map((b) => ({ ...b }));
  }

  /** Asks every worker for its I/O and TUN status and to publish its counters now (waits at most SNAPSHOT_TIMEOUT_MS). */
  refresh(): Promise<void> {
    const live = this.slots.filter((s) => s.ready && !s.stopping);
    if (live.length === 0) return Promise.resolve();
    const id = ++this.snapId;
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.snapWaits.delete(id);
        resolve();
      }, SNAPSHOT_TIMEOUT_MS);
      this.snapWaits.set(id, {
        left: live.length,
        done: () => {
          clearTimeout(timer);
          this.snapWaits.delete(id);
          resolve();
        },
      });
      for (const s of live) s.worker.postMessage({ t: 'snapshot', id } satisfies ToWorker);
    });
  }

  workerStatus(): WorkerStatus[] {
    const k = COUNTER_NAMES.length;
    return this.slots
      .slice()
      .sort((a, b) => a.index - b.index)
      .map((s) => {
        const c = new Counters();
        c.addFrom(this.countersView, s.index * k);
        return { index: s.index, udp_io: s.snap?.udp_io ?? zeroUdpIoStatus('batch', null, null), tun_offload: s.snap?.tun_offload ?? null, counters: c.toJSON() };
      });
  }

  /** The UDP path of worker 0 with every worker's syscall and datagram counts summed. */
  ioStatus(): UdpIoStatus {
    const snaps = this.slots.map((s) => s.snap?.udp_io).filter((x): x is UdpIoStatus => x !== undefined);
    if (snaps.length === 0) return zeroUdpIoStatus('batch', null, null);
    const out: UdpIoStatus = { ...snaps[0]! };
    for (const s of snaps.slice(1)) {
      out.gro &&= s.gro;
      out.gso &&= s.gso;
      out.offload_reason ??= s.offload_reason;
      addUdpIoCounts(out, s);
      out.rx_batches += s.rx_batches;
      out.rx_max_batch = Math.max(out.rx_max_batch, s.rx_max_batch);
    }
    return out;
  }

  tunOffload(): TunOffloadStatus | null {
    const t = this.opts.tun;
    if (t === null) return null;
    const out = t.dev.offloadStatus();
    for (const s of this.slots) {
      const o = s.snap?.tun_offload;
      if (!o) continue;
      out.gso_reads += o.gso_reads;
      out.gso_segments += o.gso_segments;
      out.gro_writes += o.gro_writes;
      out.gro_segments += o.gro_segments;
      out.uso_writes += o.uso_writes;
      out.uso_segments += o.uso_segments;
      out.reads += o.reads;
      out.read_batches += o.read_batches;
      out.read_drops += o.read_drops;
    }
    return out;
  }

  /**
   * Stops every worker (engines stopped, sockets closed, counters published),
   * then deletes the TUN (which wakes the queue readers) and closes its queues.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.resolveTimer) clearInterval(this.resolveTimer);
    const exits = this.slots.map(
      (s) =>
        new Promise<void>((resolve) => {
          if (s.worker.threadId < 0) return resolve();
          const timer = setTimeout(() => {
            void s.worker.terminate();
          }, STOP_TIMEOUT_MS);
          s.worker.once('exit', () => {
            clearTimeout(timer);
            resolve();
          });
        }),
    );
    const stopped = this.slots.map(
      (s) =>
        new Promise<void>((resolve) => {
          if (s.stopping || s.worker.threadId < 0) return resolve();
          const timer = setTimeout(resolve, STOP_TIMEOUT_MS);
          const done = (m: FromWorker): void => {
            if (m.t !== 'stopped') return;
            clearTimeout(timer);
            s.worker.off('message', done);
            resolve();
          };
          s.worker.on('message', done);
          s.worker.once('exit', () => {
            clearTimeout(timer);
            resolve();
          });
          s.worker.postMessage({ t: 'stop' } satisfies ToWorker);
        }),
    );
    await Promise.all(stopped);
    const t = this.opts.tun;
    if (t !== null) {
      t.dev.close();
      TunDevice.closeQueues(t.queues.slice(1));
    }
    await Promise.all(exits);
  }
}

/**
 * The spec as posted to workers: the key in a buffer of its own (a pooled
 * Buffer would clone its whole 8 KiB pool slab with it) and the shared state.
 */
function postable(s: PeerSpec, shared: PeerShared): PeerSpec {
  return { ...s, psk: Buffer.from(new Uint8Array(s.psk).buffer), shared };
}

