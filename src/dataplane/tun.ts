// TUN device: opened by the native addon, read by a reader thread that reads
// batches into a shared ring (native readBatch, see tun-worker.ts), written with
// synchronous writes from the main thread (a TUN write never blocks for long).
//
// Offloads (default; LARKTUN_TUN_OFFLOAD=0 turns them off): the device is opened
// with IFF_VNET_HDR and TSO/checksum offload, so the kernel hands us TCP
// segments of up to 64 KiB (one read, one wakeup) that offload.ts splits into
// MSS-sized packets in place of many small reads; on the write side consecutive
// segments of one TCP flow are coalesced into one large segment, flushed when
// the event loop has no more input for this turn (setImmediate), so a lone
// packet (a ping) waits for nothing. With UDP segmentation offload (USO,
// Linux >= 6.2) consecutive datagrams of one UDP flow are written the same way,
// as one UDP GSO packet the kernel cuts back into datagrams. Without a kernel feature the device falls
// back stepwise (see native/tun.c) and `offloadStatus()` says what is in use.
import { createRequire } from 'node:module';
import { closeSync, existsSync, writeSync } from 'node:fs';
import type { Worker } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

import { GroBatch, splitGso, SplitResult, VNET_HDR_LEN, MAX_GSO_PACKET } from './offload.js';
import type { Counters } from './counters.js';
import { spawnWorker } from '../runtime/worker.js';

/** The TUN addon (native/tun.c). */
export interface NativeTun {
  open(
    name: string,
    opts?: { multiQueue?: boolean; attach?: boolean; offload?: boolean; offloadMask?: number },
  ): { fd: number; name: string; vnetHdr?: boolean; offloads?: number; note?: string };
  readerFd(fd: number): number;
  /** The reader thread's loop body: see native/tun.c and tun-worker.ts. */
  readBatch(fd: number, data: Uint8Array, lens: Int32Array, ctrl: Int32Array, slots: number, slotSize: number, max: number, timeoutMs: number): number;
}

const TUN_F_CSUM = 0x01;
const TUN_F_TSO4 = 0x02;
const TUN_F_TSO6 = 0x04;
const TUN_F_USO4 = 0x20;
const TUN_F_USO6 = 0x40;

/** What the TUN device does beyond moving single packets (reported by `status`). */
export interface TunOffloadStatus {
  /** Every read and write carries a virtio_net_hdr. */
  vnet_hdr: boolean;
  /** Kernel offloads in force: csum, tso4, tso6, uso4, uso6. */
  offloads: string[];
  /** Consecutive TCP segments written as one (needs tso4). */
  gro: boolean;
  /** Consecutive UDP datagrams of one flow written as one (needs uso4+uso6). */
  uso: boolean;
  /** Why something is off (LARKTUN_TUN_OFFLOAD=0 or what the kernel refused); empty when all is on. */
  note: string;
  /** Large segments read and split, and the packets they made. */
  gso_reads: number;
  gso_segments: number;
  /** Large segments written, and the packets merged into them. */
  gro_writes: number;
  gro_segments: number;
  /** Of those, the UDP GSO packets written and the datagrams merged into them. */
  uso_writes: number;
  uso_segments: number;
  /** Reads from the device, and the batches the reader thread handed them over in (one wakeup each). */
  reads: number;
  read_batches: number;
  /** Packets the kernel failed to hand over on a read (EINVAL/EFAULT) and dropped. */
  read_drops: number;
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

const addonFile = path.join(root, 'native', 'build', 'Release', 'larktun_tun.node');

function loadNative(): NativeTun {
  if (!existsSync(addonFile)) {
    throw new Error(`TUN addon not built (${addonFile} is missing): run "npm run build" or "npm ci"`);
  }
  const require = createRequire(import.meta.url);
  return require(addonFile) as NativeTun;
}

export const SLOT_SIZE = 2048;
const SLOTS = 1024;
/** With a vnet header a read can be a 64 KiB segment: fewer, larger slots (pages are touched only when used). */
const VNET_SLOT_SIZE = VNET_HDR_LEN + MAX_GSO_PACKET + 1; // 65546: a read that fills it is too large
const VNET_SLOTS = 256;
/**
 * Most packets the reader thread reads before it wakes the main thread (it
 * wakes it sooner when the device has no more): a batch of small packets costs
 * one wakeup, and a lone packet (a ping) waits for nothing. Fewer with a vnet
 * header, where one read can be a 64 KiB segment.
 */
const READ_BATCH = 64;
const VNET_READ_BATCH = 32;
/** Packets handled before UDP receive and timers get a turn (see drain). */
const DRAIN_BUDGET = 512;

/**
 * LARKTUN_TUN_OFFLOAD: unset, 1 or on: every offload (TSO + USO + checksum,
 * TCP and UDP coalescing on write); tso: the same without USO (UDP written one
 * datagram per write); csum: checksum offload only (vnet header, no TSO, no
 * coalescing); 0 or off: the plain device. The TUN_F_* mask to ask for (0: plain), or an error.
 */
export function offloadMask(env: NodeJS.ProcessEnv = process.env): number {
  const v = (env.LARKTUN_TUN_OFFLOAD ?? '').trim().toLowerCase();
  if (v === '' || v === '1' || v === 'on') return TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6;
  if (v === 'tso') return TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
  if (v === 'csum') return TUN_F_CSUM;
  if (v === '0' || v === 'off') return 0;
  throw new Error(`LARKTUN_TUN_OFFLOAD must be 1, tso, csum or 0, got "${env.LARKTUN_TUN_OFFLOAD}"`);
}

export type PacketHandler = (buf: Buffer, len: number) => void;

/** One queue of a (multi-queue) TUN device, as handed to a packet worker (structured-cloneable). */
export interface TunQueueDesc {
  name: string;
  fd: number;
  vnetHdr: boolean;
  offloads: number;
  note: string;
}

export class TunDevice {
  readonly name: string;
  readonly fd: number;
  private readonly ctrl: Int32Array;
  private readonly lens: Int32Array;
  private readonly data: Buffer;
  /** One view per slot, made once: handlers get a Buffer without allocation. */
  private readonly slotViews: Buffer[];
  /** The packet after the vnet header, per slot (vnet mode only). */
  private readonly pktViews: Buffer[];
  /**
   * Where each packet read whole is handed over: copied there from its slot
   * (copyWithin: a memmove in the ring's own buffer, nothing allocated), so
   * the handler sees one buffer packet after packet. The wire layer caches
   * its sealing views per buffer (wire/views.ts): a payload in one of a
   * thousand rotating slots would cost a fresh view (~96 B) per packet. One
   * slot's size after the slots in `data`; the reader never writes there.
   */
  private readonly handover: Buffer;
  private readonly handoverAt: number;
  /** Byte offset in `data` of the packet splitGso is handling (see emit). */
  private readAt = 0;
  private readonly slots: number;
  private readonly slotSize: number;
  private worker: Worker | null = null;
  /** Settles when the reader thread has ended (and closed its fd); settled when there is none. */
  private readerExit: Promise<void> = Promise.resolve();
  private running = false;
  private consumed = 0;
  readonly vnetHdr: boolean;
  private readonly offloads: number;
  private readonly note: string;
  /** Segments of a split read are built here, one after another. */
  private readonly scratch: Buffer;
  private readonly gro: GroBatch | null;
  private flushScheduled = false;
  private closed = false;
  private counters: Counters | null = null;
  /** A queue handed to a packet worker: close() stops reading but leaves the fd and the device to their owner. */
  private readonly borrowed: boolean;
  /**
   * Packet workers: a writer per queue of the device (this one's included);
   * each packet is written on the queue its flow hashes to (flowQueue), so
   * the kernel's flow steering reads the flow's packets from that queue.
   */
  private steer: { fd: number; gro: GroBatch | null }[] | null = null;
  /**
   * Packet workers: which queue each flow was last read from (FLOW_SLOTS
   * words shared by the workers of one device; see flowSlot). A packet is
   * written on the queue its flow is read from, so the kernel's flow
   * steering, which follows the queue that last wrote a flow, never moves a
   * flow to another queue (and worker) while its packets are in flight.
   */
  private flowTable: Int32Array | null = null;
  private queueIndex = 0;
  private gsoReads = 0;
  private gsoSegments = 0;

  private constructor(name: string, fd: number, vnetHdr: boolean, offloads: number, note: string, borrowed = false) {
    this.borrowed = borrowed;
    this.name = name;
    this.fd = fd;
    this.vnetHdr = vnetHdr;
    this.offloads = offloads;
    this.note = note;
    this.slots = vnetHdr ? VNET_SLOTS : SLOTS;
    this.slotSize = vnetHdr ? VNET_SLOT_SIZE : SLOT_SIZE;
    const ctrl = new SharedArrayBuffer(5 * 4);
    const lens = new SharedArrayBuffer(4 * this.slots);
    // The ring's slots, then the handover buffer, then (vnet) the scratch the
    // split builds segments in: one ArrayBuffer, so every copy between them
    // is a copyWithin, which allocates nothing (Buffer#copy makes a view).
    const data = new SharedArrayBuffer((this.slots + (vnetHdr ? 2 : 1)) * this.slotSize);
    this.ctrl = new Int32Array(ctrl);
    this.lens = new Int32Array(lens);
    this.data = Buffer.from(data);
    this.handoverAt = this.slots * this.slotSize;
    this.handover = this.data.subarray(this.handoverAt, this.handoverAt + this.slotSize);
    this.slotViews = [];
    this.pktViews = [];
    for (let i = 0; i < this.slots; i++) {
      const at = i * this.slotSize;
      this.slotViews.push(this.data.subarray(at, at + this.slotSize));
      if (vnetHdr) this.pktViews.push(this.data.subarray(at + VNET_HDR_LEN, at + this.slotSize));
    }
    this.scratch = vnetHdr ? this.data.subarray(this.handoverAt + this.slotSize, this.handoverAt + this.slotSize + MAX_GSO_PACKET) : Buffer.alloc(0);
    this.gro = vnetHdr
      ? new GroBatch((b, o, l) => this.rawWrite(b, o, l), (offloads & TUN_F_TSO4) !== 0, (offloads & TUN_F_USO4) !== 0)
      : null;
  }

  /**
   * Opens (creates) the TUN device; throws with the device name and reason.
   * `offloadMask`: the TUN_F_* flags to ask for, 0 for a plain device
   * (default: from LARKTUN_TUN_OFFLOAD, see offloadMask()).
   */
  static open(name: string, opts: { offloadMask?: number } = {}): TunDevice {
    const mask = opts.offloadMask ?? offloadMask();
    return TunDevice.fromOpen(loadNative().open(name, { offload: mask !== 0, offloadMask: mask }), mask);
  }

  /**
   * Opens the device with `queues` queues (IFF_MULTI_QUEUE when more than one):
   * the first is opened like open() (offload fallbacks included), the others
   * are attached with exactly its vnet header and offloads. Returns the device
   * object of the first queue (name, status, close() deletes the device) and a
   * descriptor of every queue, the first included, for packet workers
   * (TunDevice.fromQueue). The extra fds are the caller's to close
   * (closeQueues) after the workers stopped.
   */
  static openQueues(name: string, queues: number, opts: { offloadMask?: number } = {}): { dev: TunDevice; queues: TunQueueDesc[] } {
    if (queues < 1) throw new RangeError('queues must be at least 1');
    const mask = opts.offloadMask ?? offloadMask();
    const native = loadNative();
    const first = native.open(name, { multiQueue: queues > 1, offload: mask !== 0, offloadMask: mask });
    const dev = TunDevice.fromOpen(first, mask);
    const out: TunQueueDesc[] = [{ name: dev.name, fd: dev.fd, vnetHdr: dev.vnetHdr, offloads: dev.offloads, note: dev.note }];
    try {
      for (let i = 1; i < queues; i++) {
        const q = native.open(dev.name, { multiQueue: true, attach: true, offload: dev.vnetHdr, offloadMask: dev.offloads });
        out.push({ name: dev.name, fd: q.fd, vnetHdr: dev.vnetHdr, offloads: dev.offloads, note: dev.note });
      }
    } catch (err) {
      TunDevice.closeQueues(out.slice(1));
      dev.close();
      throw err;
    }
    return { dev, queues: out };
  }

  /** Closes the fds of queues 2..n (the first belongs to the device object). */
  static closeQueues(queues: TunQueueDesc[]): void {
    for (const q of queues) {
      try {
        closeSync(q.fd);
      } catch {
        /* already closed */
      }
    }
  }

  /**
   * A queue opened by openQueues, in a packet worker: reads it; close() leaves
   * fd and device alone. `all` (every queue of the device, in order): each
   * packet is written on the queue of its flow (flowQueue) rather than this one.
   */
  static fromQueue(q: TunQueueDesc, all: TunQueueDesc[] = [], flows: SharedArrayBuffer | null = null): TunDevice {
    const t = new TunDevice(q.name, q.fd, q.vnetHdr, q.offloads, q.note, true);
    if (all.length > 1) {
      if (flows === null || flows.byteLength !== FLOW_SLOTS * 4) throw new TypeError('a steered queue needs the flow table (newFlowTable())');
      t.flowTable = new Int32Array(flows);
      t.queueIndex = all.findIndex((x) => x.fd === q.fd);
      t.steer = all.map((x) =>
        x.fd === q.fd
          ? { fd: q.fd, gro: t.gro }
          : { fd: x.fd, gro: t.vnetHdr ? new GroBatch((b, o, l) => rawWriteFd(x.fd, b, o, l), (t.offloads & TUN_F_TSO4) !== 0, (t.offloads & TUN_F_USO4) !== 0) : null },
      );
    }
    return t;
  }

  private static fromOpen(t: { fd: number; name: string; vnetHdr?: boolean; offloads?: number; note?: string }, mask: number): TunDevice {
    let note = t.note ?? '';
    if (mask === 0) note = 'off: LARKTUN_TUN_OFFLOAD=0';
    else if ((mask & TUN_F_TSO4) === 0 && note === '') note = 'no TSO: LARKTUN_TUN_OFFLOAD=csum';
    else if ((mask & TUN_F_USO4) === 0 && note === '') note = 'no USO: LARKTUN_TUN_OFFLOAD=tso';
    return new TunDevice(t.name, t.fd, t.vnetHdr === true, t.offloads ?? 0, note);
  }

  /** What is in use, for `status`. */
  offloadStatus(): TunOffloadStatus {
    const o = this.offloads;
    const names = [
      ...(o & TUN_F_CSUM ? ['csum'] : []),
      ...(o & TUN_F_TSO4 ? ['tso4'] : []),
      ...(o & TUN_F_TSO6 ? ['tso6'] : []),
      ...(o & TUN_F_USO4 ? ['uso4'] : []),
      ...(o & TUN_F_USO6 ? ['uso6'] : []),
    ];
    return {
      vnet_hdr: this.vnetHdr,
      offloads: names,
      gro: this.vnetHdr && (o & TUN_F_TSO4) !== 0,
      uso: this.vnetHdr && (o & TUN_F_USO4) !== 0,
      note: this.note,
      gso_reads: this.gsoReads,
      gso_segments: this.gsoSegments,
      gro_writes: this.gros().reduce((n, g) => n + g.superPackets, 0),
      gro_segments: this.gros().reduce((n, g) => n + g.coalesced, 0),
      uso_writes: this.gros().reduce((n, g) => n + g.udpSuperPackets, 0),
      uso_segments: this.gros().reduce((n, g) => n + g.udpCoalesced, 0),
      reads: Atomics.load(this.ctrl, 0) >>> 0,
      read_batches: Atomics.load(this.ctrl, 3) >>> 0,
      read_drops: Atomics.load(this.ctrl, 4) >>> 0,
    };
  }

  /** One line for logs and `status` text. */
  offloadText(): string {
    const s = this.offloadStatus();
    if (!s.vnet_hdr) return `off${s.note ? ` (${s.note.replace(/^off: /, '')})` : ''}`;
    const on = [...s.offloads, ...(s.gro ? ['gro'] : [])];
    return `${on.length ? on.join(',') : 'vnet_hdr only'}${s.note ? ` (${s.note})` : ''}`;
  }

  /**
   * Starts the reader thread and delivers each packet to `onPacket` on the main
   * thread (a large segment as its MSS-sized packets). Malformed vnet headers
   * are counted in `counters.drop_tun_vnet`. `onBatchStart` runs before each
   * batch of packets (an engine reads its packet clock there, once per batch).
   * The buffer handed to `onPacket` is valid only during the call.
   */
  start(onPacket: PacketHandler, counters?: Counters, onBatchStart?: () => void): void {
    this.counters = counters ?? null;
    this.batchStart = onBatchStart ?? null;
    if (this.running) return;
    this.running = true;
    this.worker = spawnWorker(import.meta.url, 'tun-worker', {
      workerData: {
        // The reader's own duplicate: this.fd's number may be reused once close() closes it.
        fd: loadNative().readerFd(this.fd),
        ctrl: this.ctrl.buffer,
        lens: this.lens.buffer,
        data: this.data.buffer,
        slots: this.slots,
        slotSize: this.slotSize,
        batch: this.vnetHdr ? VNET_READ_BATCH : READ_BATCH,
        addon: addonFile,
      },
    });
    this.worker.unref();
    const w = this.worker;
    this.readerExit = new Promise<void>((resolve) => w.once('exit', () => resolve()));
    this.worker.on('error', (err) => {
      if (!this.running) return; // closing: the reader's read() fails on the deleted device
      process.stderr.write(`larktund: TUN reader for ${this.name} failed: ${err.message}\n`);
      process.exit(1);
    });
    void this.drain(onPacket);
  }

  private async drain(onPacket: PacketHandler): Promise<void> {
    const ctrl = this.ctrl;
    while (this.running) {
      const written = Atomics.load(ctrl, 0);
      if (written === this.consumed) {
        const w = Atomics.waitAsync(ctrl, 0, written);
        if (w.async) await w.value;
        continue;
      }
      // Everything the reader has published is one batch, but a batch of large
      // segments can be thousands of packets: after DRAIN_BUDGET packets, UDP
      // receive (ACKs, pings) and timers get a turn before the rest.
      const slots = this.slots;
      let packets = 0;
      if (this.batchStart !== null) this.batchStart();
      while (this.consumed !== written && packets < DRAIN_BUDGET) {
        const slot = (this.consumed >>> 0) % slots; // the counters wrap as unsigned 32-bit
        try {
          if (this.vnetHdr) packets += this.deliverVnet(slot, onPacket);
          else {
            const len = this.lens[slot]!;
            if (this.flowTable !== null) this.noteRead(this.slotViews[slot]!, len);
            this.handOver(slot * this.slotSize, len, onPacket);
            packets++;
          }
        } catch (err) {
          process.stderr.write(`larktund: packet handler error: ${(err as Error).message}\n`);
          packets++;
        }
        this.consumed = (this.consumed + 1) | 0;
        Atomics.store(ctrl, 1, this.consumed);
      }
      Atomics.notify(ctrl, 1);
      if (packets >= DRAIN_BUDGET) await new Promise<void>((r) => setImmediate(r));
    }
  }

  /** Delivers one read of a vnet-header device; returns the packets it made. */
  private deliverVnet(slot: number, onPacket: PacketHandler): number {
    const len = this.lens[slot]!;
    const hdr = this.slotViews[slot]!;
    if (len >= this.slotSize) {
      // Larger than any segment the kernel may hand us (the read was truncated).
      if (this.counters) this.counters.drop_tun_vnet++;
      return 1;
    }
    const gso = hdr[1]! !== 0;
    if (this.flowTable !== null) this.noteRead(this.pktViews[slot]!, len - VNET_HDR_LEN);
    this.sink = onPacket;
    this.emitted = 0;
    this.readAt = slot * this.slotSize + VNET_HDR_LEN;
    const r = splitGso(hdr, 0, len, this.pktViews[slot]!, this.scratch, this.emit, this.data);
    if (r === SplitResult.Malformed) {
      if (this.counters) this.counters.drop_tun_vnet++;
      return 1;
    }
    if (gso) {
      this.gsoReads++;
      this.gsoSegments += this.emitted;
    }
    return this.emitted;
  }

  // The split's callback, made once (no closure per read). Segments come in
  // `scratch` (one buffer already); a packet read whole, in its slot, is
  // moved to the handover buffer first.
  private sink: PacketHandler = () => {};
  private batchStart: (() => void) | null = null;
  private emitted = 0;
  private readonly emit = (p: Buffer, l: number): void => {
    this.emitted++;
    if (p === this.scratch) this.sink(p, l);
    else this.handOver(this.readAt, l, this.sink);
  };

  /** Moves the packet at `at` in the ring's memory to the handover buffer and hands it over. */
  private handOver(at: number, len: number, onPacket: PacketHandler): void {
    this.data.copyWithin(this.handoverAt, at, at + len);
    onPacket(this.handover, len);
  }

  private rawWrite(buf: Buffer, off: number, len: number): boolean {
    return rawWriteFd(this.fd, buf, off, len);
  }

  /** Every coalescing batch of this device object (one, or one per queue when steering). */
  private gros(): GroBatch[] {
    if (this.steer !== null) return this.steer.flatMap((w) => (w.gro ? [w.gro] : []));
    return this.gro ? [this.gro] : [];
  }

  private readonly flushNow = (): void => {
    this.flushScheduled = false;
    this.flush();
  };

  /**
   * Writes one IP packet into the kernel; returns false on failure. With
   * offloads a TCP data segment may be held until the end of this event-loop
   * turn to be coalesced with the ones after it (the bytes are copied).
   */
  write(buf: Buffer, off: number, len: number): boolean {
    const st = this.steer;
    if (st !== null) {
      const w = st[this.queueFor(buf, off, len, st.length)]!;
      return this.writeVia(w.gro, w.fd, buf, off, len);
    }
    return this.writeVia(this.gro, this.fd, buf, off, len);
  }

  /** Records that this packet's flow is read from this queue (a store only when that changed). */
  private noteRead(p: Buffer, len: number): void {
    const h = flowHash(p, 0, len);
    if (h === NOT_IP) return;
    const t = this.flowTable!;
    const i = h & (FLOW_SLOTS - 1);
    const e = flowEntry(h, this.queueIndex);
    if (t[i] !== e) t[i] = e;
  }

  /** The queue to write a packet on: where its flow is read from, else the queue its hash picks. */
  private queueFor(p: Buffer, off: number, len: number, queues: number): number {
    const h = flowHash(p, off, len);
    if (h === NOT_IP) return 0;
    const e = this.flowTable![h & (FLOW_SLOTS - 1)]!;
    if (e !== 0 && e >>> 8 === h >>> FLOW_SLOT_BITS) {
      const q = (e & 0xff) - 1;
      if (q < queues) return q;
    }
    return (h >>> 0) % queues;
  }

  private writeVia(gro: GroBatch | null, fd: number, buf: Buffer, off: number, len: number): boolean {
    if (this.closed) return false;
    if (gro === null) return rawWriteFd(fd, buf, off, len);
    const ok = gro.add(off === 0 ? buf : buf.subarray(off, off + len), len);
    if (gro.pending && !this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushNow);
    }
    return ok;
  }

  /** Writes whatever is held for coalescing now. */
  flush(): void {
    if (this.closed) return;
    const st = this.steer;
    if (st === null) this.gro?.flush();
    else for (let i = 0; i < st.length; i++) st[i]!.gro?.flush();
  }

  /**
   * Settles once the reader thread has ended after close() (it looks at the
   * stop flag at least every 200 ms, at once when the device is deleted) and
   * has closed its duplicate of the fd. A thread that owns this device and is
   * about to end awaits it: a reader ended with its parent thread never gets
   * to close its fd.
   */
  readerStopped(): Promise<void> {
    return this.readerExit;
  }

  /**
   * Flushes, stops the reader, deletes the device and closes the fd. Once:
   * a second call does nothing (the fd number may belong to something else by then).
   */
  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.running = false;
    Atomics.store(this.ctrl, 2, 1);
    Atomics.notify(this.ctrl, 1);
    // Kept alive until the reader has ended (at most its 200 ms wait): it
    // closes its fd on the way out, which it cannot once this thread is gone.
    this.worker?.ref();
    // A worker's queue: its reader wakes when the owner deletes the device.
    if (this.borrowed) return;
    // Deleting the interface detaches the queue: the reader's wait ends at once
    // with an error (it reads its own duplicate fd, which closing ours leaves open).
    spawnSync('ip', ['link', 'delete', this.name], { stdio: 'ignore' });
    try {
      closeSync(this.fd);
    } catch {
      /* already closed */
    }
  }
}

function rawWriteFd(fd: number, buf: Buffer, off: number, len: number): boolean {
  try {
    return writeSync(fd, buf, off, len) === len;
  } catch {
    return false;
  }
}

/** Slots of a device's flow table (see TunDevice.flowTable): 2^FLOW_SLOT_BITS words. */
const FLOW_SLOT_BITS = 12;
export const FLOW_SLOTS = 1 << FLOW_SLOT_BITS;

/** The shared flow table of a device whose queues packet workers read (one per device). */
export function newFlowTable(): SharedArrayBuffer {
  return new SharedArrayBuffer(FLOW_SLOTS * 4);
}

/** A slot's word: the hash bits above the slot index (a tag telling flows of one slot apart), then queue + 1. */
function flowEntry(h: number, queue: number): number {
  return ((h >>> FLOW_SLOT_BITS) << 8) | (queue + 1);
}

const NOT_IP = -1;

/**
 * The queue (0..queues-1) of an IP packet's flow by its hash alone (flowHash);
 * packets that are not IP go to queue 0.
 */
export function flowQueue(p: Buffer, off: number, len: number, queues: number): number {
  if (queues <= 1) return 0;
  const h = flowHash(p, off, len);
  return h === NOT_IP ? 0 : (h >>> 0) % queues;
}

/**
 * A hash of an IP packet's addresses, protocol and (TCP/UDP/SCTP,
 * unfragmented) ports that is the same in both directions, as a non-negative
 * 31-bit integer; NOT_IP (-1) for anything else. Integer arithmetic only: no
 * allocation.
 */
export function flowHash(p: Buffer, off: number, len: number): number {
  if (len < 20) return NOT_IP;
  const v = p[off]! >> 4;
  let h: number;
  let proto: number;
  let l4: number;
  if (v === 4) {
    h = ((p[off + 12]! ^ p[off + 16]!) << 24) | ((p[off + 13]! ^ p[off + 17]!) << 16) | ((p[off + 14]! ^ p[off + 18]!) << 8) | (p[off + 15]! ^ p[off + 19]!);
    proto = p[off + 9]!;
    // Ports only in an unfragmented packet (a later fragment has none).
    l4 = (p[off + 6]! & 0x3f) === 0 && p[off + 7] === 0 ? (p[off]! & 15) * 4 : -1;
  } else if (v === 6 && len >= 40) {
    h = 0;
    for (let i = 8; i < 24; i += 4) {
      h ^= ((p[off + i]! ^ p[off + i + 16]!) << 24) | ((p[off + i + 1]! ^ p[off + i + 17]!) << 16) | ((p[off + i + 2]! ^ p[off + i + 18]!) << 8) | (p[off + i + 3]! ^ p[off + i + 19]!);
    }
    proto = p[off + 6]!;
    l4 = 40;
  } else return NOT_IP;
  h ^= proto;
  if ((proto === 6 || proto === 17 || proto === 132) && l4 > 0 && len >= l4 + 4) {
    h ^= (((p[off + l4]! ^ p[off + l4 + 2]!) << 8) | (p[off + l4 + 1]! ^ p[off + l4 + 3]!)) << 8;
  }
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b);
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b);
  return (h ^ (h >>> 16)) & 0x7fffffff;
}
