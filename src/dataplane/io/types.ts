// The UDP I/O layer both packet engines (node and relay) use. Two
// implementations: `batch.ts` (the native addon: recvmmsg/sendmmsg, UDP GRO/GSO
// where the kernel has them) and `dgram.ts` (node:dgram, one syscall per
// datagram; the fallback). The engines see only this interface: datagrams
// arrive as (buffer, length, address, port, socket) and replies are sealed into
// `nextBuffer(sock)` and queued with `send(...)`; `flush()` hands what is queued
// to the kernel (the batched layer also flushes by itself at the end of every
// receive batch and at the end of the current JavaScript task, so no datagram
// waits for more traffic).

/** One bound socket. Engines keep it as an opaque endpoint handle. */
export interface UdpSock {
  readonly family: 4 | 6;
  readonly port: number;
}

/**
 * A received datagram: `msg[0 .. len]` (msg may be longer: a receive slot read
 * in place, valid only during the call). `len` larger than any datagram means
 * one that did not fit its slot (truncated): count it malformed.
 */
export type DatagramHandler = (msg: Buffer, len: number, addr: string, port: number, sock: UdpSock) => void;

export class BindError extends Error {
  override name = 'BindError';
}

export interface UdpIoOptions {
  ports: number[];
  /** Address to bind; default all. Tests bind loopback. */
  bindHost4?: string;
  /** null: no IPv6 socket. */
  bindHost6?: string | null;
  onDatagram: DatagramHandler;
  /**
   * Called before the datagrams of each receive batch are handed over (dgram:
   * before each datagram), so an engine can read the clock once per batch.
   */
  onBatchStart?: () => void;
  /** Called after a receive batch was handed over and flushed (dgram: after each datagram). */
  onBatchEnd?: () => void;
  /** `n` datagrams the kernel refused (socket error, full send buffer). */
  onSendError: (n: number) => void;
  log: (msg: string) => void;
  /** Which path: default from LARKTUN_UDP_BATCH (0: dgram; otherwise batched when the addon loads). */
  batch?: boolean;
  /** UDP GRO/GSO on the batched path: default from LARKTUN_UDP_OFFLOAD (0: off). */
  offload?: boolean;
  /** SO_REUSEPORT on the batched path (several workers on one port). */
  reusePort?: boolean;
}

/** What `status` shows about the I/O path. */
export interface UdpIoStatus {
  /** 'batch': recvmmsg/sendmmsg through the addon; 'dgram': node:dgram. */
  path: 'batch' | 'dgram';
  /** Why the path is dgram (forced by configuration, or the addon could not load). */
  reason: string | null;
  /** UDP GRO (receive coalescing) on every socket. */
  gro: boolean;
  /** UDP GSO (UDP_SEGMENT send offload) on every socket. */
  gso: boolean;
  /** Why GRO/GSO are off (forced, or the kernel refused them). */
  offload_reason: string | null;
  /** Syscall and datagram counts (batched path; zeros on dgram). */
  rx_syscalls: number;
  rx_datagrams: number;
  gro_datagrams: number;
  tx_syscalls: number;
  tx_datagrams: number;
  gso_sends: number;
  gso_fallbacks: number;
  /** Receive batches handed to the engine, and the largest (at most the arena's slots). */
  rx_batches: number;
  rx_max_batch: number;
}

/** The syscall and datagram counts of a status, which add up over sockets and workers. */
export const UDP_IO_COUNTS = ['rx_syscalls', 'rx_datagrams', 'gro_datagrams', 'tx_syscalls', 'tx_datagrams', 'gso_sends', 'gso_fallbacks'] as const;
export type UdpIoCounts = Record<(typeof UDP_IO_COUNTS)[number], number>;

/** A status with every count zero and no offload on. */
export function zeroUdpIoStatus(path: UdpIoStatus['path'], reason: string | null, offloadReason: string | null): UdpIoStatus {
  return {
    path,
    reason,
    gro: false,
    gso: false,
    offload_reason: offloadReason,
    rx_syscalls: 0,
    rx_datagrams: 0,
    gro_datagrams: 0,
    tx_syscalls: 0,
    tx_datagrams: 0,
    gso_sends: 0,
    gso_fallbacks: 0,
    rx_batches: 0,
    rx_max_batch: 0,
  };
}

/** Adds `src`'s syscall and datagram counts to `dst`. */
export function addUdpIoCounts(dst: UdpIoStatus, src: UdpIoCounts): void {
  for (const k of UDP_IO_COUNTS) dst[k] += src[k];
}

export interface UdpIo {
  readonly path: 'batch' | 'dgram';
  readonly socks: readonly UdpSock[];
  /** Binds every listen port (IPv4 required; IPv6 when the host has it). */
  start(): Promise<void>;
  /** The buffer to seal the next datagram for `sock` into (BUF_SIZE bytes). */
  nextBuffer(sock: UdpSock): Buffer;
  /** Queues (batch) or sends (dgram) `buf[0 .. len]`; `buf` is what nextBuffer(sock) returned last. */
  send(sock: UdpSock, buf: Buffer, len: number, port: number, addr: string): void;
  /** Hands everything queued to the kernel now. */
  flush(): void;
  sockFor(family: 4 | 6): UdpSock | null;
  ports(): number[];
  boundAddresses(): { family: 4 | 6; port: number }[];
  status(): UdpIoStatus;
  close(): Promise<void>;
}

export const BUF_SIZE = 2048;

/** LARKTUN_UDP_BATCH / LARKTUN_UDP_OFFLOAD: "0", "false", "off", "no" turn a feature off. */
export function envFlag(name: string, env: NodeJS.ProcessEnv = process.env): boolean | undefined {
  const v = env[name];
  if (v === undefined || v === '') return undefined;
  return !/^(0|false|off|no)$/i.test(v.trim());
}

/** One line for `larktun status`: which path and which offloads. */
export function ioSummary(s: UdpIoStatus): string {
  if (s.path === 'dgram') return `dgram${s.reason ? ` (${s.reason})` : ''}`;
  const off = `GRO ${s.gro ? 'on' : 'off'}, GSO ${s.gso ? 'on' : 'off'}`;
  return `batch (recvmmsg/sendmmsg), ${off}${s.offload_reason ? ` (${s.offload_reason})` : ''}`;
}
