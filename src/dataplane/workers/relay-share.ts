// What a relay's main thread hands its packet workers with every view: for
// each link the shared endpoint, a counter slice per worker and the shared
// session state of each key; for each tenant namespace its counter slices and
// its shared flow table. Everything here is structured-cloneable
// (SharedArrayBuffers and typed arrays over them), so one postMessage carries
// it; ids (sid/eid/nid) let a worker keep its own objects (keys, caches) for
// what did not change.
import type { SharedFilterHandle } from '../filter.js';
import { UDP_IO_COUNTS } from '../io/types.js';

/** Per-link counters, in this order, LINK_COUNTERS numbers per worker. */
export const LINK_COUNTER_NAMES = ['rx_packets', 'rx_bytes', 'tx_packets', 'tx_bytes', 'keepalive_rx', 'drops'] as const;
export const LINK_COUNTERS = LINK_COUNTER_NAMES.length;

export interface SessionShare {
  /** Unique per session (one key of one link, created on the main thread). */
  sid: number;
  /** The key, hex. */
  hex: string;
  rx: Int32Array;
  tx: Int32Array;
}

export interface LinkShare {
  /** Unique per endpoint object. */
  eid: number;
  ep: SharedArrayBuffer;
  /** workers × LINK_COUNTERS; worker w writes [w * LINK_COUNTERS ..]. Slot 0 (the main thread) is unused: main counts live. */
  counters: Float64Array;
  sessions: SessionShare[];
}

export interface NamespaceShare {
  nid: number;
  /** workers × COUNTER_NAMES.length (see Counters.writeTo). */
  counters: Float64Array;
  /** workers × FILTER_COUNTER_NAMES.length. */
  filterCounters: Float64Array;
  flows: SharedFilterHandle;
}

export interface ViewShare {
  links: Record<number, LinkShare>;
  namespaces: Record<number, NamespaceShare>;
}

/** workerData of a relay packet worker (src/dataplane/relay-worker.ts). */
export interface RelayWorkerData {
  index: number;
  count: number;
  ports: number[];
  bindHost4?: string;
  bindHost6?: string | null;
  udpOffload?: boolean;
  onlineMs?: number;
  scanLimits?: unknown;
  /** workers × COUNTER_NAMES.length: the relay totals per worker. */
  counters: Float64Array;
  /** workers × RELAY_IO_SLOT: each worker's UDP syscall and datagram counts (UDP_IO_COUNTS, then rx_batches, rx_max_batch). */
  io: Float64Array;
  /** The main engine's clockBase (every thread's packet clock must agree: the flow tables are shared). */
  clockBase: number;
}

export type ToRelayWorker = { type: 'view'; seq: number; view: unknown; share: ViewShare } | { type: 'stop' };
export type FromRelayWorker =
  | { type: 'ready' }
  | { type: 'log'; msg: string }
  | { type: 'view-applied'; seq: number }
  | { type: 'view-error'; seq: number; error: string }
  | { type: 'stopped' };

/** Numbers per worker in RelayWorkerData.io. */
export const RELAY_IO_SLOT = UDP_IO_COUNTS.length + 2;

export function sharedF64(n: number): Float64Array {
  return new Float64Array(new SharedArrayBuffer(Math.max(1, n) * 8));
}
