// Messages between the main thread of a worker engine (pool.ts) and its packet
// workers (worker.ts). Everything here is structured-cloneable; the per-peer
// shared state (PeerSpec.shared) travels as SharedArrayBuffers, so every worker
// works on the same words.
import type { FwdRule } from '../../net/lpm.js';
import type { FilterRule } from '../../acl/index.js';
import type { SharedFilterHandle } from '../filter.js';
import type { PeerSpec } from '../engine.js';
import type { TunOffloadStatus, TunQueueDesc } from '../tun.js';
import type { UdpIoStatus } from '../io/types.js';

export interface WorkerInit {
  index: number;
  localId: number;
  obfuscate: boolean;
  peers: PeerSpec[];
  rules: FwdRule[];
  /** Only worker 0 sends keepalives; the others get 0. */
  keepaliveSecs: number;
  listenPorts: number[];
  bindHost4?: string;
  bindHost6?: string | null;
  udpBatch?: boolean;
  udpOffload?: boolean;
  /** This worker's queue of the TUN device (null: no TUN). */
  tun: TunQueueDesc | null;
  /** Every queue of the device, in order: packets are written on their flow's queue (flowQueue in tun.ts). */
  tunQueues: TunQueueDesc[];
  /** Which queue each flow is read from (newFlowTable() in tun.ts), shared by the workers; null without a TUN. */
  tunFlows: SharedArrayBuffer | null;
  /** Counters of every worker, COUNTER_NAMES.length words each (Counters.writeTo at index × that). */
  counters: SharedArrayBuffer;
  /** How often the worker publishes its counters (ms). */
  publishMs: number;
  /** The packet filter: the shared flow table and the policy (null: none). */
  filter: WorkerFilter | null;
  /** Filter verdict counters of every worker, FILTER_COUNTER_NAMES.length words each. */
  filterCounters: SharedArrayBuffer;
  /** Wall-clock ms of packet clock 0, the same for every worker (EngineOptions.clockBase): their flow table is shared. */
  clockBase: number;
}

export interface WorkerFilter {
  handle: SharedFilterHandle;
  rules: readonly FilterRule[];
}

export type ToWorker =
  | { t: 'rules'; rules: FwdRule[] }
  | { t: 'peers'; peers: PeerSpec[] }
  | { t: 'keepalive'; ms: number }
  | { t: 'filter'; filter: WorkerFilter | null }
  | { t: 'filterRules'; rules: readonly FilterRule[] }
  | { t: 'inject'; pkt: Uint8Array }
  | { t: 'intercept'; on: boolean }
  /** The main thread's answer to an intercepted packet: write it to the TUN after all, or not. */
  | { t: 'intercepted'; pkt: Uint8Array | null }
  | { t: 'snapshot'; id: number }
  | { t: 'stop' };

export interface WorkerSnapshot {
  index: number;
  udp_io: UdpIoStatus;
  tun_offload: TunOffloadStatus | null;
  /** The worker engine's packet clock base (must be WorkerInit.clockBase: tests check). */
  clockBase: number;
}

export type FromWorker =
  | { t: 'ready'; ports: number[]; bound: { family: 4 | 6; port: number }[] }
  | { t: 'failed'; message: string; bind: boolean }
  | { t: 'snapshot'; id: number; snap: WorkerSnapshot }
  | { t: 'intercept'; pkt: Uint8Array }
  | { t: 'injected' }
  | { t: 'stopped' };

/** Most packets handed to the main thread (inject, intercept) and not yet answered, per worker. */
export const MAX_IN_FLIGHT = 64;
