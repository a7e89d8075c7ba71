// TUN offloads in TypeScript: the virtio_net_hdr that a TUN opened with
// IFF_VNET_HDR puts in front of every packet, TCP segmentation of the large
// segments the kernel hands us (TSO, read side) and coalescing of consecutive
// TCP segments into one large segment for the kernel (GRO, write side).
//
// struct virtio_net_hdr (10 bytes, little-endian on the hosts we run on):
//   u8 flags (1 = NEEDS_CSUM), u8 gso_type (0 none, 1 TCPV4, 4 TCPV6, |0x80 ECN),
//   u16 hdr_len, u16 gso_size, u16 csum_start, u16 csum_offset
//
// Read side: a GSO packet (gso_type TCPV4/TCPV6) is one TCP segment of up to
// 64 KiB with a partial checksum; split() cuts it into gso_size-payload
// segments with their own IP length, IPv4 id and checksum, TCP sequence number,
// flags (FIN/PSH only on the last, CWR only on the first) and a full TCP
// checksum. A non-GSO packet with NEEDS_CSUM gets its checksum completed in
// place. Anything else in the header (UDP GSO, which we never enable, a
// csum_start that does not point at the TCP header, a gso_size of 0) is malformed.
// With USO on the device (TUN_F_USO4|USO6) the kernel may also hand us a UDP
// GSO packet (gso_type UDP_L4: one UDP header, gso_size-byte payloads back to
// back); it is cut into datagrams with their own IP length, IPv4 id, UDP length
// and full UDP checksum, exactly as the kernel's __udp_gso_segment would.
//
// Write side: GroBatch collects consecutive segments of one TCP flow (same
// addresses, ports, ack, window, options and flags, sequence numbers in order,
// equal payload sizes except a shorter last one, PSH only on the last) and
// writes them as one packet with a GSO header; every other packet goes out at
// once behind a zero header, after whatever was pending (order is kept).
// The kernel re-segments (or delivers the large segment to the local TCP stack).
// With USO (`uso` true) consecutive UDP datagrams of one flow (same addresses,
// ports, TOS/TTL/DF or traffic class/flow label/hop limit, IPv4 ids in sequence
// unless DF is set, a non-zero checksum) with equal payload sizes (the last may
// be shorter), at most 64 of them and 64 KiB, go out as one UDP_L4 GSO packet:
// IP and UDP lengths describe the whole packet, the UDP checksum field holds the
// (uncomplemented) pseudo-header sum over that length, and the kernel's
// segmentation swaps the length for each datagram's and completes the sum.

import { endianness } from 'node:os';
import { ViewCache } from '../wire/views.js';

export const VNET_HDR_LEN = 10;
export const VNET_F_NEEDS_CSUM = 1;
export const GSO_NONE = 0;
export const GSO_TCPV4 = 1;
export const GSO_TCPV6 = 4;
export const GSO_UDP_L4 = 5;
/** Datagrams per UDP GSO packet: the kernel refuses a vnet header describing more than UDP_MAX_SEGMENTS (64 on older kernels). */
export const MAX_UDP_SEGS = 64;
export const GSO_ECN = 0x80;

const TCP_FIN = 0x01;
const TCP_SYN = 0x02;
const TCP_RST = 0x04;
const TCP_PSH = 0x08;
const TCP_ACK = 0x10;
const TCP_URG = 0x20;
const TCP_CWR = 0x80;

/** Largest packet a GSO header may describe (the IPv4 total length field). */
export const MAX_GSO_PACKET = 65535;

const LITTLE = endianness() === 'LE';

/** Byte-at-a-time reference path (odd start or big-endian host). */
function sum16Slow(buf: Buffer, off: number, len: number, initial: number): number {
  // 16-bit words only: a 32-bit read above 2^31 is a heap number (an allocation per call).
  let s = initial;
  const end = off + (len & ~1);
  for (let i = off; i < end; i += 2) s += (buf[i]! << 8) | buf[i + 1]!;
  if (len & 1) s += buf[off + len - 1]! << 8;
  return s;
}

// Word views of the last buffer summed (the hot path sums one or two buffers:
// the split scratch and the TUN ring), made once per backing store.
let viewAb: ArrayBufferLike | null = null;
let view16: Uint16Array<ArrayBufferLike> = new Uint16Array(0);
let view32: Uint32Array<ArrayBufferLike> = new Uint32Array(0);

/**
 * One's-complement sum of `len` bytes at `off` (as big-endian 16-bit words),
 * added to `initial`; not folded or complemented. On little-endian hosts the
 * bytes are summed as native 32-bit words and the folded result byte-swapped
 * (RFC 1071: the sum does not depend on byte order), four bytes per load.
 */
export function sum16(buf: Buffer, off: number, len: number, initial: number): number {
  let start = buf.byteOffset + off;
  if (!LITTLE || (start & 1) !== 0 || len < 16) return sum16Slow(buf, off, len, initial);
  const ab = buf.buffer;
  if (ab !== viewAb) {
    viewAb = ab;
    view16 = new Uint16Array(ab, 0, ab.byteLength >>> 1);
    view32 = new Uint32Array(ab, 0, ab.byteLength >>> 2);
  }
  let s = 0;
  let n = len;
  if ((start & 2) !== 0) {
    s += view16[start >>> 1]!;
    start += 2;
    n -= 2;
  }
  const w0 = start >>> 2;
  const w1 = w0 + (n >>> 2);
  const v = view32;
  for (let i = w0; i < w1; i++) s += v[i]!;
  let at = w1 << 2;
  if ((n & 2) !== 0) {
    s += view16[at >>> 1]!;
    at += 2;
  }
  if ((n & 1) !== 0) s += buf[at - buf.byteOffset]!; // low byte of a little-endian word
  const f = fold16(s);
  return initial + (((f & 0xff) << 8) | (f >>> 8));
}

/** Folds a sum16() to 16 bits (not complemented). */
export function fold16(s: number): number {
  // Split rather than shift: s may exceed 2^32.
  let x = (s % 0x10000) + Math.floor(s / 0x10000);
  while (x > 0xffff) x = (x & 0xffff) + (x >>> 16);
  return x;
}

/** The pseudo-header sum for a TCP segment of `tcpLen` bytes in the IP packet at `pkt` (v4 or v6). */
export function pseudoSum(pkt: Buffer, v6: boolean, tcpLen: number, proto = 6): number {
  if (v6) return sum16(pkt, 8, 32, proto + tcpLen);
  return sum16(pkt, 12, 8, proto + tcpLen);
}

/** Full UDP checksum of the datagram at pkt[ihl..len) (field zeroed first; 0 is sent as 0xffff). */
function udpChecksum(pkt: Buffer, v6: boolean, ihl: number, len: number): void {
  pkt[ihl + 6] = 0;
  pkt[ihl + 7] = 0;
  const c = ~fold16(sum16(pkt, ihl, len - ihl, pseudoSum(pkt, v6, len - ihl, 17))) & 0xffff;
  pkt.writeUInt16BE(c === 0 ? 0xffff : c, ihl + 6);
}

/**
 * ipHeader / udpHeader results: the IP header length, with HDR_V6 set for
 * IPv6, or NO_HDR. A number rather than an object: they run per packet.
 */
const NO_HDR = -1;
const HDR_V6 = 0x100;
const HDR_IHL = 0xff;

/**
 * Where the IP header ends, for a UDP datagram that may join (or be cut from) a
 * UDP GSO packet: IPv4 without fragmentation or IPv6 with UDP right after the
 * fixed header. `exact`: the IP and UDP lengths must match `len` and the
 * checksum must be present (a zero IPv4 checksum means none: never coalesced).
 */
function udpHeader(pkt: Buffer, len: number, exact: boolean): number {
  if (len < 1) return NO_HDR;
  const v = pkt[0]! >> 4;
  let ihl: number;
  let v6: boolean;
  if (v === 4) {
    ihl = (pkt[0]! & 15) * 4;
    if (ihl < 20 || len < ihl + 8 || pkt[9] !== 17) return NO_HDR;
    if ((pkt.readUInt16BE(6) & 0x3fff) !== 0) return NO_HDR;
    if (exact && pkt.readUInt16BE(2) !== len) return NO_HDR;
    v6 = false;
  } else if (v === 6) {
    ihl = 40;
    if (len < 48 || pkt[6] !== 17) return NO_HDR;
    if (exact && pkt.readUInt16BE(4) + 40 !== len) return NO_HDR;
    v6 = true;
  } else return NO_HDR;
  if (exact && (pkt.readUInt16BE(ihl + 4) !== len - ihl || pkt.readUInt16BE(ihl + 6) === 0)) return NO_HDR;
  return v6 ? ihl | HDR_V6 : ihl;
}

function ipv4HeaderChecksum(pkt: Buffer, ihl: number): void {
  pkt[10] = 0;
  pkt[11] = 0;
  pkt.writeUInt16BE(~fold16(sum16(pkt, 0, ihl, 0)) & 0xffff, 10);
}

/**
 * Sets the IP length of a packet of `total` bytes (IPv6: the payload length);
 * IPv4 also gets `id` (when one is given, 0..0xffff after masking) and a fresh
 * header checksum.
 */
function setIpLength(pkt: Buffer, v6: boolean, ihl: number, total: number, id = -1): void {
  if (v6) {
    pkt.writeUInt16BE(total - 40, 4);
    return;
  }
  pkt.writeUInt16BE(total, 2);
  if (id >= 0) pkt.writeUInt16BE(id & 0xffff, 4);
  ipv4HeaderChecksum(pkt, ihl);
}

/** Full TCP checksum of the segment at pkt[ihl..len) (field zeroed first). */
function tcpChecksum(pkt: Buffer, v6: boolean, ihl: number, len: number): void {
  pkt[ihl + 16] = 0;
  pkt[ihl + 17] = 0;
  const s = sum16(pkt, ihl, len - ihl, pseudoSum(pkt, v6, len - ihl));
  pkt.writeUInt16BE(~fold16(s) & 0xffff, ihl + 16);
}

/** Where the IP header ends and the protocol, for a TCP-offload candidate; null when not one. */
function ipHeader(pkt: Buffer, len: number, exactLen: boolean): number {
  if (len < 1) return NO_HDR;
  const v = pkt[0]! >> 4;
  if (v === 4) {
    const ihl = (pkt[0]! & 15) * 4;
    if (ihl < 20 || len < ihl + 20 || pkt[9] !== 6) return NO_HDR;
    if (exactLen && pkt.readUInt16BE(2) !== len) return NO_HDR;
    // Fragments (MF or an offset) are never segments we can split or merge.
    if ((pkt.readUInt16BE(6) & 0x3fff) !== 0) return NO_HDR;
    return ihl;
  }
  if (v === 6) {
    if (len < 60 || pkt[6] !== 6) return NO_HDR; // TCP right after the fixed header only
    if (exactLen && pkt.readUInt16BE(4) + 40 !== len) return NO_HDR;
    return 40 | HDR_V6;
  }
  return NO_HDR;
}

export const enum SplitResult {
  /** Delivered (in place or as segments). */
  Ok = 0,
  /** The vnet header or the packet it describes does not make sense: dropped. */
  Malformed = 1,
}

/**
 * Handles one packet read from an IFF_VNET_HDR TUN: `buf[off..off+10)` is the
 * virtio_net_hdr, the IP packet follows (`len` counts both). Calls `emit` once
 * per resulting IP packet; `emit` must finish with the bytes before it returns
 * (segments are built one after another in `scratch`, at least 64 KiB).
 * `arena`: a Buffer over the whole ArrayBuffer that `pkt` and `scratch` both
 * lie in, when they do (the TUN ring): segments are then copied with
 * copyWithin, which allocates nothing; Buffer#copy makes a view per call.
 */
export function splitGso(
  buf: Buffer,
  off: number,
  len: number,
  pkt: Buffer,
  scratch: Buffer,
  emit: (p: Buffer, len: number) => void,
  arena: Buffer | null = null,
): SplitResult {
  if (len < VNET_HDR_LEN) return SplitResult.Malformed;
  const flags = buf[off]!;
  const gsoType = buf[off + 1]! & ~GSO_ECN;
  const gsoSize = buf.readUInt16LE(off + 4);
  const csumStart = buf.readUInt16LE(off + 6);
  const csumOffset = buf.readUInt16LE(off + 8);
  const plen = len - VNET_HDR_LEN;
  if (plen <= 0) return SplitResult.Malformed;
  if (gsoType === GSO_NONE) {
    if ((flags & VNET_F_NEEDS_CSUM) !== 0) {
      if (csumStart + csumOffset + 2 > plen) return SplitResult.Malformed;
      // The field holds the pseudo-header sum: sum from csum_start to the end, complement.
      const s = sum16(pkt, csumStart, plen - csumStart, 0);
      pkt.writeUInt16BE(~fold16(s) & 0xffff, csumStart + csumOffset);
    }
    emit(pkt, plen);
    return SplitResult.Ok;
  }
  const shared = arena !== null && pkt.buffer === arena.buffer && scratch.buffer === arena.buffer ? arena : null;
  if (gsoType === GSO_UDP_L4) return splitUdp(pkt, plen, gsoSize, csumStart, csumOffset, scratch, emit, shared);
  if (gsoType !== GSO_TCPV4 && gsoType !== GSO_TCPV6) return SplitResult.Malformed;
  const ip = ipHeader(pkt, plen, false);
  if (ip === NO_HDR || (ip & HDR_V6) !== 0 !== (gsoType === GSO_TCPV6)) return SplitResult.Malformed;
  const v6 = (ip & HDR_V6) !== 0;
  const ihl = ip & HDR_IHL;
  if (gsoSize === 0 || csumStart !== ihl || csumOffset !== 16) return SplitResult.Malformed;
  const doff = (pkt[ihl + 12]! >> 4) * 4;
  const hdrEnd = ihl + doff;
  if (doff < 20 || hdrEnd > plen) return SplitResult.Malformed;
  const payload = plen - hdrEnd;
  if (payload <= gsoSize) {
    // One segment: only the checksum is left to do.
    setIpLength(pkt, v6, ihl, plen);
    tcpChecksum(pkt, v6, ihl, plen);
    emit(pkt, plen);
    return SplitResult.Ok;
  }
  // As int32 (bytes, not readUInt32BE): a sequence number above 2^31 would be a heap number.
  const seq0 = (pkt[ihl + 4]! << 24) | (pkt[ihl + 5]! << 16) | (pkt[ihl + 6]! << 8) | pkt[ihl + 7]!;
  const id0 = v6 ? 0 : pkt.readUInt16BE(4);
  const flags0 = pkt[ihl + 13]!;
  const out = scratch;
  copyBytes(pkt, 0, hdrEnd, out, 0, shared);
  let i = 0;
  for (let p = hdrEnd; p < plen; p += gsoSize, i++) {
    const seg = Math.min(gsoSize, plen - p);
    const total = hdrEnd + seg;
    const last = p + seg >= plen;
    copyBytes(pkt, p, p + seg, out, hdrEnd, shared);
    setIpLength(out, v6, ihl, total, id0 + i);
    const seq = (seq0 + i * gsoSize) | 0;
    out[ihl + 4] = seq >>> 24;
    out[ihl + 5] = (seq >>> 16) & 0xff;
    out[ihl + 6] = (seq >>> 8) & 0xff;
    out[ihl + 7] = seq & 0xff;
    let f = flags0;
    if (!last) f &= ~(TCP_FIN | TCP_PSH);
    if (i > 0) f &= ~TCP_CWR;
    out[ihl + 13] = f;
    tcpChecksum(out, v6, ihl, total);
    emit(out, total);
  }
  return SplitResult.Ok;
}

/** A UDP_L4 GSO packet (IPv4 or IPv6): datagrams of gsoSize payload bytes, the last may be shorter. */
function splitUdp(
  pkt: Buffer,
  plen: number,
  gsoSize: number,
  csumStart: number,
  csumOffset: number,
  scratch: Buffer,
  emit: (p: Buffer, len: number) => void,
  shared: Buffer | null,
): SplitResult {
  const ip = udpHeader(pkt, plen, false);
  if (ip === NO_HDR) return SplitResult.Malformed;
  const v6 = (ip & HDR_V6) !== 0;
  const ihl = ip & HDR_IHL;
  if (gsoSize === 0 || csumStart !== ihl || csumOffset !== 6) return SplitResult.Malformed;
  const hdrEnd = ihl + 8;
  if (plen - hdrEnd <= gsoSize) {
    setIpLength(pkt, v6, ihl, plen);
    pkt.writeUInt16BE(plen - ihl, ihl + 4);
    udpChecksum(pkt, v6, ihl, plen);
    emit(pkt, plen);
    return SplitResult.Ok;
  }
  const id0 = v6 ? 0 : pkt.readUInt16BE(4);
  const out = scratch;
  copyBytes(pkt, 0, hdrEnd, out, 0, shared);
  let i = 0;
  for (let p = hdrEnd; p < plen; p += gsoSize, i++) {
    const seg = Math.min(gsoSize, plen - p);
    const total = hdrEnd + seg;
    copyBytes(pkt, p, p + seg, out, hdrEnd, shared);
    setIpLength(out, v6, ihl, total, id0 + i);
    out.writeUInt16BE(total - ihl, ihl + 4);
    udpChecksum(out, v6, ihl, total);
    emit(out, total);
  }
  return SplitResult.Ok;
}

/**
 * dst[at ..] = src[from, to). With `arena` (a Buffer over the one ArrayBuffer
 * both lie in) a copyWithin, which allocates nothing; else Buffer#copy.
 */
function copyBytes(src: Buffer, from: number, to: number, dst: Buffer, at: number, arena: Buffer | null): void {
  if (arena === null) {
    src.copy(dst, at, from, to);
    return;
  }
  const base = arena.byteOffset;
  arena.copyWithin(dst.byteOffset - base + at, src.byteOffset - base + from, src.byteOffset - base + to);
}

/** Longest packet GroBatch copies through a cached view (larger ones: Buffer#copy). */
const VIEW_MAX = 2048;

/** Writes bytes to the TUN; returns false when the kernel refused them. */
export type RawWrite = (buf: Buffer, off: number, len: number) => boolean;

/**
 * The write side: `add()` takes each packet for the TUN (the bytes are copied,
 * the caller may reuse its buffer), `flush()` writes what is pending. A packet
 * that cannot join a TCP run is written at once behind a zero vnet header.
 */
export class GroBatch {
  /** vnet header + the run being built. */
  private readonly run = Buffer.alloc(VNET_HDR_LEN + MAX_GSO_PACKET);
  private readonly runPkt = this.run.subarray(VNET_HDR_LEN);
  /** vnet header + a packet written at once. */
  private readonly single = Buffer.alloc(VNET_HDR_LEN + MAX_GSO_PACKET);
  private runLen = 0; // IP bytes in run (0: no run)
  private segs = 0;
  private v6 = false;
  private ihl = 0;
  private hdrEnd = 0;
  private gsoSize = 0;
  private nextSeq = 0;
  private closed = false; // the last segment was short or had PSH: nothing more joins
  private udp = false; // the run is UDP datagrams (USO), not TCP segments
  private nextId = 0; // IPv4 id the next datagram must carry (-1: DF set, any id)
  /** Packets merged into a larger one (each run of n segments counts n). */
  coalesced = 0;
  /** Large segments written (runs of two or more). */
  superPackets = 0;
  /** Datagrams merged into UDP GSO packets, and those packets (included in the two above). */
  udpCoalesced = 0;
  udpSuperPackets = 0;
  writeErrors = 0;
  /**
   * Views of the callers' packet buffers (the engine's receive buffer, over
   * and over), so a packet is copied in with TypedArray#set, which allocates
   * nothing once a view exists; Buffer#copy makes a view per call.
   */
  private readonly srcViews = new ViewCache(VIEW_MAX);

  /**
   * coalesce false: no TCP runs (no TSO on the device); uso false: no UDP runs
   * (no USO on the device). With neither every packet goes out alone behind a zero header.
   */
  constructor(
    private readonly write: RawWrite,
    private readonly coalesce = true,
    private readonly uso = false,
  ) {}

  get pending(): boolean {
    return this.runLen > 0;
  }

  /** Adds one IP packet; false when it had to be written at once and the write failed. */
  /** dst[at ..] = src[from, to). */
  private put(src: Buffer, from: number, to: number, dst: Buffer, at: number): void {
    const n = to - from;
    if (n <= VIEW_MAX) dst.set(this.srcViews.get(src, from, n), at);
    else src.copy(dst, at, from, to);
  }

  add(pkt: Buffer, len: number): boolean {
    if (this.runLen > 0 && (this.udp ? this.extendsUdp(pkt, len) : this.extends(pkt, len))) return true;
    this.flush();
    if (this.uso && this.startUdp(pkt, len)) return true;
    const ip = this.coalesce ? ipHeader(pkt, len, true) : NO_HDR;
    if (ip !== NO_HDR) {
      const ihl = ip & HDR_IHL;
      const doff = (pkt[ihl + 12]! >> 4) * 4;
      const hdrEnd = ihl + doff;
      const fl = pkt[ihl + 13]!;
      // Plain data segments start a run; SYN/FIN/RST/URG, PSH (it ends a run) and
      // CWR (once per window reduction; re-segmenting would repeat or drop it) do not.
      if (doff >= 20 && hdrEnd < len && (fl & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_PSH | TCP_CWR)) === 0 && (fl & TCP_ACK) !== 0) {
        this.put(pkt, 0, len, this.run, VNET_HDR_LEN);
        this.runLen = len;
        this.segs = 1;
        this.v6 = (ip & HDR_V6) !== 0;
        this.ihl = ihl;
        this.hdrEnd = hdrEnd;
        this.gsoSize = len - hdrEnd;
        this.nextSeq = (pkt.readUInt32BE(ihl + 4) + this.gsoSize) >>> 0;
        this.closed = false;
        this.udp = false;
        return true;
      }
    }
    const out = this.single;
    out.fill(0, 0, VNET_HDR_LEN);
    this.put(pkt, 0, len, out, VNET_HDR_LEN);
    if (this.write(out, 0, VNET_HDR_LEN + len)) return true;
    this.writeErrors++;
    return false;
  }

  /** Starts a UDP run with `pkt` when it is a datagram that may be coalesced. */
  private startUdp(pkt: Buffer, len: number): boolean {
    const ip = udpHeader(pkt, len, true);
    if (ip === NO_HDR) return false;
    const v6 = (ip & HDR_V6) !== 0;
    const ihl = ip & HDR_IHL;
    const hdrEnd = ihl + 8;
    if (len <= hdrEnd) return false; // an empty datagram cannot set a gso_size
    this.put(pkt, 0, len, this.run, VNET_HDR_LEN);
    this.runLen = len;
    this.segs = 1;
    this.v6 = v6;
    this.ihl = ihl;
    this.hdrEnd = hdrEnd;
    this.gsoSize = len - hdrEnd;
    this.nextId = v6 || (pkt[6]! & 0x40) !== 0 ? -1 : (pkt.readUInt16BE(4) + 1) & 0xffff;
    this.closed = false;
    this.udp = true;
    return true;
  }

  /** Whether the datagram `pkt` continues the pending UDP run; appends it when it does. */
  private extendsUdp(pkt: Buffer, len: number): boolean {
    if (this.closed || this.segs >= MAX_UDP_SEGS) return false;
    const r = this.run;
    const b = VNET_HDR_LEN;
    const ihl = this.ihl;
    const hdrEnd = this.hdrEnd;
    const seg = len - hdrEnd;
    if (seg <= 0 || seg > this.gsoSize || this.runLen + seg > MAX_GSO_PACKET) return false;
    if (pkt[0] !== r[b]) return false; // version and IHL
    if (!this.v6) {
      if (pkt.readUInt16BE(2) !== len) return false;
      if (pkt[1] !== r[b + 1] || pkt[8] !== r[b + 8] || pkt[9] !== 17) return false; // TOS, TTL, proto
      if (pkt.readUInt16BE(6) !== r.readUInt16BE(b + 6)) return false; // same DF, no fragments
      // The kernel numbers the datagrams it cuts from the first id on; without DF
      // the id matters (reassembly), so only a run of consecutive ids joins.
      if (this.nextId >= 0 && pkt.readUInt16BE(4) !== this.nextId) return false;
      // Addresses as two words (cheaper than Buffer.compare at 64-byte packet rates).
      if (pkt.readInt32LE(12) !== r.readInt32LE(b + 12) || pkt.readInt32LE(16) !== r.readInt32LE(b + 16)) return false;
      if (ihl > 20 && pkt.compare(r, b + 20, b + ihl, 20, ihl) !== 0) return false; // IP options
    } else {
      if (pkt.readUInt16BE(4) + 40 !== len) return false;
      // Version, traffic class, flow label; next header; hop limit; addresses.
      if (pkt.readInt32LE(0) !== r.readInt32LE(b) || pkt[6] !== 17 || pkt[7] !== r[b + 7]) return false;
      for (let i = 8; i < 40; i += 4) if (pkt.readInt32LE(i) !== r.readInt32LE(b + i)) return false;
    }
    if (pkt.readInt32LE(ihl) !== r.readInt32LE(b + ihl)) return false; // ports
    if (pkt.readUInt16BE(ihl + 4) !== len - ihl || pkt.readUInt16BE(ihl + 6) === 0) return false;
    this.put(pkt, hdrEnd, len, r, b + this.runLen);
    this.runLen += seg;
    this.segs++;
    if (this.nextId >= 0) this.nextId = (this.nextId + 1) & 0xffff;
    if (seg < this.gsoSize) this.closed = true;
    return true;
  }

  /** Whether `pkt` continues the pending run; appends it when it does. */
  private extends(pkt: Buffer, len: number): boolean {
    if (this.closed) return false;
    const r = this.run;
    const b = VNET_HDR_LEN;
    const ihl = this.ihl;
    const hdrEnd = this.hdrEnd;
    const seg = len - hdrEnd;
    if (seg <= 0 || seg > this.gsoSize || this.runLen + seg > MAX_GSO_PACKET) return false;
    if (pkt[0] !== r[b]) return false; // version and IHL
    // The IP length must be the datagram's: bytes past it are not payload.
    if (!this.v6 ? pkt.readUInt16BE(2) !== len : pkt.readUInt16BE(4) + 40 !== len) return false;
    if (!this.v6) {
      if (pkt[1] !== r[b + 1] || pkt[8] !== r[b + 8] || pkt[9] !== 6) return false; // TOS, TTL, proto
      if ((pkt.readUInt16BE(6) & 0xffff) !== r.readUInt16BE(b + 6)) return false; // DF, no fragments
      if (pkt.compare(r, b + 12, b + 20, 12, 20) !== 0) return false; // addresses
      if (ihl > 20 && pkt.compare(r, b + 20, b + ihl, 20, ihl) !== 0) return false; // IP options
    } else {
      if (pkt[6] !== 6 || pkt.readUInt32BE(0) !== r.readUInt32BE(b) || pkt[7] !== r[b + 7]) return false;
      if (pkt.compare(r, b + 8, b + 40, 8, 40) !== 0) return false;
    }
    if (((pkt[ihl + 12]! >> 4) * 4) !== hdrEnd - ihl) return false;
    if (pkt.compare(r, b + ihl, b + ihl + 4, ihl, ihl + 4) !== 0) return false; // ports
    if (pkt.readUInt32BE(ihl + 4) !== this.nextSeq) return false;
    if (pkt.compare(r, b + ihl + 8, b + ihl + 12, ihl + 8, ihl + 12) !== 0) return false; // ack
    const fl = pkt[ihl + 13]!;
    const runFl = r[b + ihl + 13]!;
    if ((fl & ~TCP_PSH) !== runFl) return false;
    if (pkt.compare(r, b + ihl + 14, b + ihl + 16, ihl + 14, ihl + 16) !== 0) return false; // window
    if (pkt.compare(r, b + ihl + 18, b + hdrEnd, ihl + 18, hdrEnd) !== 0) return false; // urg ptr + options
    this.put(pkt, hdrEnd, len, r, b + this.runLen);
    this.runLen += seg;
    this.segs++;
    this.nextSeq = (this.nextSeq + seg) >>> 0;
    if ((fl & TCP_PSH) !== 0) {
      r[b + ihl + 13] = runFl | TCP_PSH;
      this.closed = true;
    }
    if (seg < this.gsoSize) this.closed = true;
    return true;
  }

  /** Writes the pending run (if any): one segment as it is, more as one GSO packet. */
  flush(): void {
    const len = this.runLen;
    if (len === 0) return;
    this.runLen = 0;
    const r = this.run;
    const b = VNET_HDR_LEN;
    r.fill(0, 0, VNET_HDR_LEN);
    if (this.segs > 1 && this.udp) {
      const ihl = this.ihl;
      const pkt = this.runPkt;
      setIpLength(pkt, this.v6, ihl, len);
      // The UDP length and the pseudo-header describe the whole packet; the kernel
      // replaces that length with each datagram's and completes the sum.
      pkt.writeUInt16BE(len - ihl, ihl + 4);
      pkt.writeUInt16BE(fold16(pseudoSum(pkt, this.v6, len - ihl, 17)), ihl + 6);
      r[0] = VNET_F_NEEDS_CSUM;
      r[1] = GSO_UDP_L4;
      r.writeUInt16LE(this.hdrEnd, 2);
      r.writeUInt16LE(this.gsoSize, 4);
      r.writeUInt16LE(ihl, 6);
      r.writeUInt16LE(6, 8);
      this.coalesced += this.segs;
      this.superPackets++;
      this.udpCoalesced += this.segs;
      this.udpSuperPackets++;
    } else if (this.segs > 1) {
      const ihl = this.ihl;
      const pkt = this.runPkt;
      setIpLength(pkt, this.v6, ihl, len);
      // CHECKSUM_PARTIAL: the field holds the pseudo-header sum; the kernel completes it.
      pkt.writeUInt16BE(fold16(pseudoSum(pkt, this.v6, len - ihl)), ihl + 16);
      r[0] = VNET_F_NEEDS_CSUM;
      r[1] = this.v6 ? GSO_TCPV6 : GSO_TCPV4;
      r.writeUInt16LE(this.hdrEnd, 2);
      r.writeUInt16LE(this.gsoSize, 4);
      r.writeUInt16LE(ihl, 6);
      r.writeUInt16LE(16, 8);
      this.coalesced += this.segs;
      this.superPackets++;
    }
    if (!this.write(r, 0, b + len)) this.writeErrors++;
  }
}
