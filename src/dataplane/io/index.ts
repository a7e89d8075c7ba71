// Picks the UDP I/O path for an engine: batched (native addon) unless turned
// off (option `batch: false` or LARKTUN_UDP_BATCH=0) or unavailable (the addon
// is missing or fails to load), in which case node:dgram with the reason in
// status. GRO/GSO: on where the kernel has them, unless `offload: false` or
// LARKTUN_UDP_OFFLOAD=0.
import { BatchPorts, loadNativeUdp, type NativeUdp } from './batch.js';
import { DgramPorts } from './dgram.js';
import { envFlag, type UdpIo, type UdpIoOptions } from './types.js';

export * from './types.js';
export { DgramPorts } from './dgram.js';
export { BatchPorts } from './batch.js';

export function createUdpIo(opts: UdpIoOptions, env: NodeJS.ProcessEnv = process.env): UdpIo {
  return createUdpIoWith(() => loadNativeUdp(), opts, env);
}

/** createUdpIo with the addon loader given (tests: an addon that failed to load). */
export function createUdpIoWith(load: () => NativeUdp | Error, opts: UdpIoOptions, env: NodeJS.ProcessEnv = process.env): UdpIo {
  const envBatch = envFlag('LARKTUN_UDP_BATCH', env);
  const batch = opts.batch ?? envBatch ?? true;
  if (!batch) {
    return new DgramPorts(opts, opts.batch === false ? 'batching turned off by configuration' : 'LARKTUN_UDP_BATCH=0');
  }
  const n = load();
  if (n instanceof Error) {
    opts.log(`batched UDP unavailable (${n.message}); using node:dgram`);
    return new DgramPorts(opts, n.message);
  }
  const envOffload = envFlag('LARKTUN_UDP_OFFLOAD', env);
  const offload = opts.offload ?? envOffload ?? true;
  const reason = offload ? null : opts.offload === false ? 'offloads turned off by configuration' : 'LARKTUN_UDP_OFFLOAD=0';
  return new BatchPorts(n, opts, offload, reason);
}
