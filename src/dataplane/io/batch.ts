// The batched UDP path: sockets of the native addon (native/udp.c) that
// receive with recvmmsg into a preallocated arena and send with sendmmsg (and
// UDP GSO where the kernel has it) from another. The packet logic stays in the
// engines; this moves bytes.
//
// Receive: the addon drains a readable socket into RX_SLOTS fixed slots plus a
// meta table (length, port, family, address words) and calls onBatch(count)
// once per batch; each datagram is handed to the engine in one per-layer
// receive buffer (copied out of its slot with copyWithin, which allocates
// nothing, unlike Buffer#copy of a range), with the source address as a cached
// string (AddrNames: no formatting for a known address).
// Send: `nextBuffer(sock)` is the socket's seal buffer (an extra slot of its tx
// arena); `send()` copies the sealed bytes into the next tx slot (copyWithin) and records the destination in the tx meta
// table.
//
// Why the copies: the wire layer (src/wire/views.ts) caches the exact-length
// views sodium needs for a few buffers it sees again and again. Handing it one
// of 256 rotating slots instead defeats that cache and costs a fresh typed-array
// view per datagram and direction (~210 B of young-generation garbage per
// forwarded packet, measured with bench/relay); a memcpy of at most 1.5 KB into
// a fixed buffer is cheaper than that allocation and its GC. Queued datagrams go to the kernel in
// one sendmmsg when the receive batch ends, when the current JavaScript task
// ends (a microtask: TUN batches, timers), or when the tx arena is full, so a
// datagram never waits for more traffic.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AddrNames, AddrWords, META_WORDS } from './addr.js';
import { addUdpIoCounts, BindError, BUF_SIZE, zeroUdpIoStatus, type UdpIo, type UdpIoCounts, type UdpIoOptions, type UdpIoStatus, type UdpSock } from './types.js';

type Handle = object;

export interface NativeUdp {
  open(family: 4 | 6, host: string, port: number, opts?: { reusePort?: boolean; bufSize?: number; offload?: boolean }): Handle;
  info(h: Handle): { port: number; gro: boolean; gso: boolean };
  start(h: Handle, rxArena: ArrayBuffer, rxMeta: ArrayBuffer, slots: number, slotSize: number, onBatch: (count: number) => void): void;
  send(h: Handle, txArena: ArrayBuffer, txMeta: ArrayBuffer, count: number, slotSize: number): number;
  stats(h: Handle): UdpIoCounts;
  close(h: Handle): void;
  META_WORDS: number;
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
let loaded: NativeUdp | Error | null = null;

/** The addon, or the reason it cannot be used. */
export function loadNativeUdp(): NativeUdp | Error {
  if (loaded !== null) return loaded;
  const file = path.join(root, 'native', 'build', 'Release', 'larktun_udp.node');
  if (process.platform !== 'linux') loaded = new Error(`batched UDP needs Linux (recvmmsg/sendmmsg); this is ${process.platform}`);
  else if (!existsSync(file)) loaded = new Error(`UDP addon not built (${file} is missing): run "npm run build"`);
  else {
    try {
      const n = createRequire(import.meta.url)(file) as NativeUdp;
      if (n.META_WORDS !== META_WORDS) throw new Error(`UDP addon meta layout ${n.META_WORDS} != ${META_WORDS}: rebuild it`);
      loaded = n;
    } catch (err) {
      loaded = err as Error;
    }
  }
  return loaded;
}

export const RX_SLOTS = 256;
export const TX_SLOTS = 256;

/** Byte offset of the extra slot (after the RX_SLOTS/TX_SLOTS the addon uses) that datagrams are handed over / sealed in. */
const RX_HANDOVER = RX_SLOTS * BUF_SIZE;
const TX_SEAL = TX_SLOTS * BUF_SIZE;

export class BatchSock implements UdpSock {
  readonly rxArena = new ArrayBuffer((RX_SLOTS + 1) * BUF_SIZE);
  readonly rxBytes = new Uint8Array(this.rxArena);
  readonly rxMeta = new Int32Array(RX_SLOTS * META_WORDS);
  /** The handover slot as a Buffer: what the engine's handler gets. */
  readonly rxBuf = Buffer.from(this.rxArena, RX_HANDOVER, BUF_SIZE);
  readonly txArena = new ArrayBuffer((TX_SLOTS + 1) * BUF_SIZE);
  readonly txBytes = new Uint8Array(this.txArena);
  readonly txMeta = new Int32Array(TX_SLOTS * META_WORDS);
  /** The seal slot as a Buffer: what nextBuffer() returns. */
  readonly sealBuf = Buffer.from(this.txArena, TX_SEAL, BUF_SIZE);
  txCount = 0;
  readonly names: AddrNames;
  port = 0;

  constructor(
    readonly family: 4 | 6,
    readonly h: Handle,
  ) {
    this.names = new AddrNames(this.rxMeta);
  }
}

export class BatchPorts implements UdpIo {
  readonly path = 'batch' as const;
  readonly socks: BatchSock[] = [];
  private readonly words = new AddrWords();
  private lastAddr = '';
  private lastWords: Int32Array | null = null;
  private flushQueued = false;
  private rxBatches = 0;
  private rxMaxBatch = 0;
  private closed = false;
  private offloadReason: string | null;
  private readonly flushTask = (): void => {
    this.flushQueued = false;
    this.flush();
  };

  constructor(
    private readonly n: NativeUdp,
    private readonly opts: UdpIoOptions,
    private readonly offload: boolean,
    offloadReason: string | null,
  ) {
    this.offloadReason = offloadReason;
  }

  async start(): Promise<void> {
    for (const port of this.opts.ports) {
      const s4 = this.bind(4, this.opts.bindHost4 ?? '0.0.0.0', port, true);
      const p6 = port === 0 && s4 ? s4.port : port;
      if (this.opts.bindHost6 !== null) this.bind(6, this.opts.bindHost6 ?? '::', p6, false);
    }
    if (this.offload && this.offloadReason === null && this.socks.length > 0) {
      const off = this.socks.filter((s) => !this.n.info(s.h).gro || !this.n.info(s.h).gso);
      if (off.length > 0) this.offloadReason = 'the kernel refused UDP_GRO or UDP_SEGMENT on some sockets';
    }
  }

  private bind(family: 4 | 6, host: string, port: number, required: boolean): BatchSock | null {
    let h: Handle;
    try {
      h = this.n.open(family, host, port, { reusePort: this.opts.reusePort ?? false, offload: this.offload, bufSize: 4 << 20 });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (required) {
        throw new BindError(`cannot bind UDP ${family === 6 ? `[${host}]` : host}:${port}: ${e.code === 'EADDRINUSE' ? 'the port is already in use by another process' : e.message}`);
      }
      this.opts.log(`IPv6 listener on port ${port} not available (${e.code ?? e.message}); continuing with IPv4 only`);
      return null;
    }
    const sock = new BatchSock(family, h);
    sock.port = this.n.info(h).port;
    const handler = this.opts.onDatagram;
    const batchStart = this.opts.onBatchStart ?? null;
    const batchEnd = this.opts.onBatchEnd ?? null;
    const log = this.opts.log;
    const meta = sock.rxMeta;
    const bytes = sock.rxBytes;
    const names = sock.names;
    const rxBuf = sock.rxBuf;
    this.n.start(h, sock.rxArena, meta.buffer as ArrayBuffer, RX_SLOTS, BUF_SIZE, (count: number) => {
      this.rxBatches++;
      if (count > this.rxMaxBatch) this.rxMaxBatch = count;
      if (batchStart !== null) batchStart();
      for (let i = 0; i < count; i++) {
        const o = i * META_WORDS;
        const len = meta[o]!;
        // len > BUF_SIZE: truncated (did not fit a slot); the engine counts it malformed.
        if (len <= BUF_SIZE) bytes.copyWithin(RX_HANDOVER, i * BUF_SIZE, i * BUF_SIZE + len);
        try {
          handler(rxBuf, len, names.name(i), meta[o + 1]!, sock);
        } catch (err) {
          log(`datagram handler error: ${(err as Error).message}`);
        }
      }
      this.flush();
      if (batchEnd !== null) batchEnd();
    });
    this.socks.push(sock);
    return sock;
  }

  nextBuffer(sock: UdpSock): Buffer {
    return (sock as BatchSock).sealBuf;
  }

  send(sock: UdpSock, buf: Buffer, len: number, port: number, addr: string): void {
    const s = sock as BatchSock;
    if (this.closed) return;
    // The engines pass a peer's address string, the same object packet after
    // packet: one identity compare instead of a map lookup.
    let w: Int32Array | null;
    if (addr === this.lastAddr) w = this.lastWords;
    else {
      w = this.words.words(addr);
      this.lastAddr = addr;
      this.lastWords = w;
    }
    if (w === null || len > BUF_SIZE) {
      this.opts.onSendError(1);
      return;
    }
    if (s.txCount === TX_SLOTS) this.flushSock(s);
    const i = s.txCount;
    if (buf === s.sealBuf) s.txBytes.copyWithin(i * BUF_SIZE, TX_SEAL, TX_SEAL + len);
    else s.txBytes.set(len === buf.length ? buf : buf.subarray(0, len), i * BUF_SIZE);
    const m = s.txMeta;
    const o = i * META_WORDS;
    m[o] = len;
    m[o + 1] = port;
    m[o + 2] = s.family;
    m[o + 3] = w[0]!;
    m[o + 4] = w[1]!;
    m[o + 5] = w[2]!;
    m[o + 6] = w[3]!;
    s.txCount = i + 1;
    if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(this.flushTask);
    }
  }

  flush(): void {
    const socks = this.socks;
    for (let i = 0; i < socks.length; i++) {
      const s = socks[i]!;
      if (s.txCount > 0) this.flushSock(s);
    }
  }

  private flushSock(s: BatchSock): void {
    const count = s.txCount;
    s.txCount = 0;
    const failed = this.n.send(s.h, s.txArena, s.txMeta.buffer as ArrayBuffer, count, BUF_SIZE);
    if (failed > 0) this.opts.onSendError(failed);
  }

  sockFor(family: 4 | 6): UdpSock | null {
    return this.socks.find((s) => s.family === family) ?? null;
  }

  ports(): number[] {
    return [...new Set(this.socks.map((s) => s.port))];
  }

  boundAddresses(): { family: 4 | 6; port: number }[] {
    return this.socks.map((s) => ({ family: s.family, port: s.port }));
  }

  status(): UdpIoStatus {
    const infos = this.socks.map((s) => this.n.info(s.h));
    const st = zeroUdpIoStatus('batch', null, this.offloadReason);
    st.gro = infos.length > 0 && infos.every((i) => i.gro);
    st.gso = infos.length > 0 && infos.every((i) => i.gso);
    st.rx_batches = this.rxBatches;
    st.rx_max_batch = this.rxMaxBatch;
    for (const s of this.socks) addUdpIoCounts(st, this.n.stats(s.h));
    if (st.gso_fallbacks > 0 && !st.gso && st.offload_reason === null) st.offload_reason = 'UDP GSO failed on the route and was turned off';
    return st;
  }

  async close(): Promise<void> {
    this.flush();
    this.closed = true;
    for (const s of this.socks) this.n.close(s.h);
    this.socks.length = 0;
  }
}
