// Data-plane packet filter: enforces a tenant's compiled ACL (tailcfg-shaped
// FilterRule[]) on the node daemon (its own reduced filter, inbound) and on the
// relay (the tenant's global filter, every packet it forwards), with flow
// tracking so that replies to allowed flows pass and unsolicited packets the
// other way do not.
//
// Three pieces:
//   PacketFilter  immutable, compiled once per policy version from FilterRule[];
//                 the caller swaps it in one assignment (FilterState.setFilter).
//   FlowTable     bounded connection table (open addressing in typed arrays).
//   FilterState   { filter, flows }: the hot-path decision check(pkt, len, now).
// Nothing on the per-packet path allocates: packets are parsed into a reused
// ParsedPacket, rules are matched by binary search over typed arrays and flows
// live in preallocated typed arrays (the table only allocates when it grows,
// doubling up to its bound).
//
// ---- Rule semantics (Tailscale's, wgengine/filter) -------------------------
// A packet matches a rule when its source is in SrcIPs and some DstPorts entry
// contains its destination, and:
//   * TCP (6), UDP (17), SCTP (132): the protocol is in IPProto and the
//     destination port is inside the entry's port range;
//   * ICMP (1 in IPv4) / ICMPv6 (58 in IPv6): ICMP has no ports, so any port
//     range matches; like Tailscale ("if any port is open to an IP, allow ICMP
//     to it") IPProto is not consulted for ICMP either: a tcp-only rule to
//     host:22 also admits pings to host;
//   * any other protocol (GRE, ESP, a number, also ICMPv4 inside IPv6): the
//     protocol must be listed in IPProto and the entry's range must be the full
//     0-65535 (what `proto: "gre"` with `host:*` compiles to); a narrower range
//     never matches a portless protocol.
// IPProto omitted or empty = TCP, UDP, ICMP, ICMPv6; values outside 0..255 are
// ignored. IP strings are a bare address, a CIDR with no host bits, an "a-b"
// range of one family, or "*" (all of IPv4 and IPv6). Like Tailscale's
// MatchesFromFilterRules, an entry that does not parse is skipped (and listed in
// `errors`) while the rest of the filter stands: skipping only ever removes
// access. "cap:" sources (peer capabilities) are not supported here and are
// skipped. CapGrant-only rules (no DstPorts) grant no packets.
//
// ---- Where we differ from Tailscale (stricter, stateful) -------------------
// Tailscale accepts every inbound TCP non-SYN, every ICMP echo reply and error,
// and every non-first fragment. Here a packet is accepted only when
//   (1) it continues a flow the current filter admitted (fast path), or
//   (2) it is the reverse of a tracked flow (a reply), or
//   (3) for an ICMP error (unreachable, packet too big, time exceeded,
//       parameter problem), the packet it quotes was sent by the error's
//       destination and belongs to a live tracked flow, or
//   (4) for a non-first fragment, the first fragment of the same datagram
//       (src, dst, protocol, IP identification) was accepted in the last 60 s, or
//   (5) the rules admit it: then its flow is tracked as "admitted" (ICMP errors
//       and ICMP messages other than echo are matched by the rules but never
//       tracked).
// Rules are therefore consulted only for a flow's first packet and for the first
// packet after a policy change; later packets take the flow-table fast path.
// Multicast, IPv4 broadcast and link-local destinations are dropped before any
// rule, as Tailscale does (the overlay is unicast L3).
//
// Usage: a node calls noteOutbound() for every packet it sends into the overlay
// and check() for every packet it receives from it; a relay calls check() for
// every packet it forwards within a tenant namespace (both directions go through
// the same FilterState, so the admitted direction's replies pass).
//
// Fragments: non-first fragments carry no ports, so they pass only when their
// first fragment did (decision 4). Fragments arriving before their first
// fragment are dropped (the sender's retransmission recovers; over one tunnel
// reordering is rare). A TCP fragment at offset 8 bytes (RFC 1858 overlap) and a
// first fragment too short to hold the transport header are malformed.
//
// Policy changes (setFilter): the flow table is kept. Flows this node started
// (noteOutbound) keep their replies: the node's own outbound traffic is never
// subject to its filter. Flows that were admitted by rules carry the policy
// generation that admitted them and are re-checked against the new filter on
// their next packet in either direction; if the new filter no longer admits
// them they become "revoked": further packets of the flow are dropped, their
// replies are no longer accepted, and the node's own replies on that flow do
// not turn it into a node-started flow (as long as the revoked record lives:
// it is refreshed by every packet of the flow and expires like any flow). So a
// revoked grant cuts established connections at once (well within the 2 s
// budget), while a grant that still holds keeps its flows. Tailscale instead
// keeps established TCP (it accepts every non-SYN) and cached UDP replies after a
// policy change; we keep only what this node itself started.
//
// Table bound: at most `maxFlows` entries (default 65 536). Expired entries are
// removed on lookup and by an amortised sweep (4 slots per insert). When the
// table is full, a 16-slot sample from the sweep cursor gives up an expired
// entry if it holds one, else its least recently seen entry is evicted
// (approximate LRU, O(1)), counted in `evictions`; new flows are never refused
// (refusing would break replies to new outbound flows under a flood of admitted
// flows; evicting the idlest costs the least). Lookups and inserts hash a
// per-table random seed, so peers cannot aim collisions at a known layout.
//
// Compiled structure, per family: source intervals (disjoint, sorted) → a
// bitset row over the distinct SrcIPs sets (identical rows shared); destination
// intervals → a list of (source set, rule, port range) candidates (identical
// lists shared). A lookup is two binary searches plus a walk of the candidates
// covering the destination (usually one or two), testing one bit each.
// Size is linear for policies whose rules name hosts; the worst case (many
// overlapping wide ranges) grows with intervals × candidates, like any flattened
// interval index; see PacketFilter.stats.
//
// Timeouts (idle, ms): TCP established (a reply was seen) 2 h; TCP opening or
// closing (FIN/RST seen) 120 s / 60 s; UDP, ICMP echo, SCTP and other protocols
// 120 s; fragment records 60 s. `now` is any monotonic millisecond clock
// (performance.now() or Date.now()), the same one for every call on a table.
// A table shared by threads needs one clock for all of them: performance.now()
// counts from each thread's own start, so use performance.timeOrigin +
// performance.now(), or Date.now().
//
// ---- Worker threads (shared mode) --------------------------------------------
// A packet engine running on N worker threads handles the two directions of a
// connection on different threads, so they share one flow table:
// FilterState.createShared() keeps the table in one SharedArrayBuffer,
// share() returns a structured-cloneable handle to post to each worker, and
// FilterState.attach(handle, filter) there gives a FilterState over the same
// table. What is shared: the flows, the table's size, sweep cursor and
// counters (evictions, expirations, insertions), the hash seed and the policy
// generation counter. What is per thread: the compiled PacketFilter, the
// verdict counters (FilterCounters.writeTo/addFrom sum them) and scratch.
// Every public call that touches the table (check, checkParsed, noteOutbound,
// notePacket, allowInbound, isReply, clear) takes a spin lock in the buffer's
// header once for its whole duration, so a decision and the insert it makes
// are one step for every other thread; nothing is allocated. The buffer
// reserves the largest table (2 × maxFlows slots) up front and the table grows
// inside it by doubling, under the lock; Linux commits the pages only as the
// table grows into them. The unshared table is unchanged (no lock, arrays
// reallocated on growth). Stop a worker's packet loop before terminate(): a
// thread killed inside a call would leave the lock held for the others.
// Policy contract: every thread compiles its PacketFilter from the same rules
// and calls setFilter() when the policy changes. Each setFilter() takes a new
// generation from the table, newer than any before, and flows carry the
// generation of the filter that last judged them: a thread re-checks flows
// judged under an older generation than its filter's and trusts those judged
// under a newer one. So a flow revoked by the first thread on the new policy
// is dropped by all threads, even those still holding the old filter (they
// cannot re-admit it), and a new flow a lagging thread admits is re-checked
// by the first up-to-date thread that sees it. Until a thread calls
// setFilter, packets it is first to see are still judged by its old filter.

import type { FilterRule } from '../acl/index.js';
import { type Family, parseIP } from '../net/addr.js';
import { lock, unlock } from '../wire/lock.js';

// ---- protocols ---------------------------------------------------------------

export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_ICMPV6 = 58;
export const IPPROTO_SCTP = 132;
export const DEFAULT_PROTOS: readonly number[] = Object.freeze([IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6]);

const CLS_PORTS = 0;
const CLS_ICMP = 1;
const CLS_OTHER = 2;

function protoClass(family: number, proto: number): number {
  if (proto === IPPROTO_TCP || proto === IPPROTO_UDP || proto === IPPROTO_SCTP) return CLS_PORTS;
  if (family === 4 ? proto === IPPROTO_ICMP : proto === IPPROTO_ICMPV6) return CLS_ICMP;
  return CLS_OTHER;
}

const TCP_FIN = 0x01;
const TCP_SYN = 0x02;
const TCP_RST = 0x04;
const TCP_ACK = 0x10;

// ---- packet parsing ----------------------------------------------------------

/** What a parsed packet is, for the filter. */
export const PacketKind = {
  /** TCP, UDP, SCTP, ICMP echo request/reply, or a portless protocol: a flow. */
  Flow: 0,
  /** ICMP informational message other than echo (rules only, never tracked). */
  IcmpInfo: 1,
  /** ICMP error quoting another packet (destination unreachable, time exceeded, ...). */
  IcmpError: 2,
  /** Non-first fragment: no transport header. */
  Fragment: 3,
} as const;
export type PacketKind = (typeof PacketKind)[keyof typeof PacketKind];

/**
 * A parsed IP packet. One instance is reused for every packet; fields are
 * plain numbers so the hot path stays monomorphic. Addresses are big-endian
 * u32 words in `addr`: source at 0..3, destination at 4..7 (IPv4 uses word 0
 * and 4, the others are 0); for ICMP errors the quoted packet's source and
 * destination at 8..11 and 12..15.
 */
export class ParsedPacket {
  family: 0 | 4 | 6 = 0;
  proto = 0;
  kind: PacketKind = PacketKind.Flow;
  /** Ports; for ICMP echo request (id, 0), for echo reply (0, id); 0 when portless. */
  sport = 0;
  dport = 0;
  tcpFlags = 0;
  icmpType = 0;
  icmpCode = 0;
  /** First fragment of a fragmented datagram (offset 0, more fragments). */
  firstFragment = false;
  /** IP identification (16 bits IPv4, 32 bits IPv6) when fragmented. */
  fragId = 0;
  /** Protocol keying fragments: IPv4 protocol, or the IPv6 fragment header's next header. */
  fragProto = 0;
  /** ICMP errors: the quoted packet parsed far enough to name its flow. */
  innerValid = false;
  innerProto = 0;
  innerSport = 0;
  innerDport = 0;
  readonly addr = new Uint32Array(16);
}

const u16 = (b: Uint8Array, o: number): number => (b[o]! << 8) | b[o + 1]!;
const u32 = (b: Uint8Array, o: number): number => ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;

// Results of walk6 (module scratch, no allocation).
let w6Proto = 0;
let w6FragOff = 0;
let w6More = false;
/** Fragment identification (a u32 kept in a typed array: a module `let` holding a non-small integer would box it on every write). */
const w6FragId = new Uint32Array(1);
let w6FragNext = 0;
let w6Frag = false;

/**
 * Walks the IPv6 extension headers from `off` (next header `nh`): hop-by-hop,
 * routing, destination options, fragment and AH. Returns the transport
 * offset, or -1 when malformed. Sets w6*; a non-first fragment stops the walk.
 */
function walk6(pkt: Uint8Array, nh: number, off: number, end: number): number {
  w6Frag = false;
  w6FragOff = 0;
  w6More = false;
  for (let n = 0; n < 10; n++) {
    if (nh === 0 || nh === 43 || nh === 60) {
      if (off + 8 > end) return -1;
      const next = pkt[off]!;
      off += (pkt[off + 1]! + 1) * 8;
      nh = next;
    } else if (nh === 51) {
      if (off + 8 > end) return -1;
      const next = pkt[off]!;
      off += (pkt[off + 1]! + 2) * 4;
      nh = next;
    } else if (nh === 44) {
      if (off + 8 > end) return -1;
      const fo = u16(pkt, off + 2);
      w6Frag = true;
      w6FragNext = pkt[off]!;
      w6FragOff = fo >>> 3;
      w6More = (fo & 1) !== 0;
      w6FragId[0] = u32(pkt, off + 4);
      nh = w6FragNext;
      off += 8;
      if (w6FragOff !== 0) {
        w6Proto = nh;
        return off;
      }
    } else {
      if (off > end) return -1;
      w6Proto = nh;
      return off;
    }
    if (off > end) return -1;
  }
  return -1; // too many extension headers
}

/** Parses the packet an ICMP error quotes (at `off`); sets p.inner*. */
function parseInner(pkt: Uint8Array, off: number, end: number, p: ParsedPacket): void {
  p.innerValid = false;
  if (off + 1 > end) return;
  const v = pkt[off]! >> 4;
  if (v !== p.family) return;
  const a = p.addr;
  let toff: number;
  let proto: number;
  if (v === 4) {
    if (off + 20 > end) return;
    const ihl = (pkt[off]! & 15) * 4;
    if (ihl < 20) return;
    if ((u16(pkt, off + 6) & 0x1fff) !== 0) return;
    proto = pkt[off + 9]!;
    a[8] = u32(pkt, off + 12);
    a[9] = 0;
    a[10] = 0;
    a[11] = 0;
    a[12] = u32(pkt, off + 16);
    a[13] = 0;
    a[14] = 0;
    a[15] = 0;
    toff = off + ihl;
  } else {
    if (off + 40 > end) return;
    for (let w = 0; w < 4; w++) {
      a[8 + w] = u32(pkt, off + 8 + w * 4);
      a[12 + w] = u32(pkt, off + 24 + w * 4);
    }
    toff = walk6(pkt, pkt[off + 6]!, off + 40, end);
    if (toff < 0 || w6FragOff !== 0) return;
    proto = w6Proto;
  }
  if (toff + 8 > end) return;
  let sp = 0;
  let dp = 0;
  const cls = protoClass(v, proto);
  if (cls === CLS_PORTS) {
    sp = u16(pkt, toff);
    dp = u16(pkt, toff + 2);
  } else if (cls === CLS_ICMP) {
    const t = pkt[toff]!;
    const id = u16(pkt, toff + 4);
    if (t === (v === 4 ? 8 : 128)) sp = id;
    else if (t === (v === 4 ? 0 : 129)) dp = id;
    else return; // errors about errors are not related to any flow
  }
  p.innerProto = proto;
  p.innerSport = sp;
  p.innerDport = dp;
  p.innerValid = true;
}

/**
 * Parses the IPv4/IPv6 packet in pkt[0..len) into `p`. Returns false (never
 * throws) when the packet is not IP, is truncated or is malformed; a false
 * packet must be dropped.
 */
export function parsePacket(pkt: Uint8Array, len: number, p: ParsedPacket): boolean {
  if (len > pkt.length) len = pkt.length;
  if (!(len >= 1)) return false;
  const a = p.addr;
  p.kind = PacketKind.Flow;
  p.sport = 0;
  p.dport = 0;
  p.tcpFlags = 0;
  p.icmpType = 0;
  p.icmpCode = 0;
  p.firstFragment = false;
  p.fragId = 0;
  p.innerValid = false;
  const v = pkt[0]! >> 4;
  let off: number;
  let end: number;
  let proto: number;
  if (v === 4) {
    if (len < 20) return false;
    const ihl = (pkt[0]! & 15) * 4;
    end = u16(pkt, 2);
    if (ihl < 20 || end < ihl || end > len) return false;
    p.family = 4;
    proto = pkt[9]!;
    p.proto = proto;
    p.fragProto = proto;
    a[0] = u32(pkt, 12);
    a[1] = 0;
    a[2] = 0;
    a[3] = 0;
    a[4] = u32(pkt, 16);
    a[5] = 0;
    a[6] = 0;
    a[7] = 0;
    const fo = u16(pkt, 6);
    const fragOff = fo & 0x1fff;
    const more = (fo & 0x2000) !== 0;
    if (fragOff !== 0 || more) p.fragId = u16(pkt, 4);
    if (fragOff !== 0) {
      if (proto === IPPROTO_TCP && fragOff === 1) return false; // RFC 1858
      p.kind = PacketKind.Fragment;
      return true;
    }
    p.firstFragment = more;
    off = ihl;
  } else if (v === 6) {
    if (len < 40) return false;
    end = 40 + u16(pkt, 4);
    if (end > len) return false;
    p.family = 6;
    for (let w = 0; w < 4; w++) {
      a[w] = u32(pkt, 8 + w * 4);
      a[4 + w] = u32(pkt, 24 + w * 4);
    }
    off = walk6(pkt, pkt[6]!, 40, end);
    if (off < 0) return false;
    proto = w6Proto;
    p.proto = proto;
    if (w6Frag) {
      p.fragId = w6FragId[0]!;
      p.fragProto = w6FragNext;
      if (w6FragOff !== 0) {
        if (proto === IPPROTO_TCP && w6FragOff === 1) return false;
        p.kind = PacketKind.Fragment;
        return true;
      }
      p.firstFragment = w6More;
    } else {
      p.fragProto = proto;
    }
  } else {
    return false;
  }
  const rem = end - off;
  switch (protoClass(v, proto)) {
    case CLS_PORTS: {
      const need = proto === IPPROTO_TCP ? 20 : proto === IPPROTO_UDP ? 8 : 12;
      if (rem < need) return false;
      p.sport = u16(pkt, off);
      p.dport = u16(pkt, off + 2);
      if (proto === IPPROTO_TCP) p.tcpFlags = pkt[off + 13]!;
      return true;
    }
    case CLS_ICMP: {
      if (rem < 8) return false;
      const t = pkt[off]!;
      p.icmpType = t;
      p.icmpCode = pkt[off + 1]!;
      if (v === 4) {
        if (t === 8) p.sport = u16(pkt, off + 4);
        else if (t === 0) p.dport = u16(pkt, off + 4);
        else if (t === 3 || t === 11 || t === 12) p.kind = PacketKind.IcmpError;
        else p.kind = PacketKind.IcmpInfo;
      } else {
        if (t === 128) p.sport = u16(pkt, off + 4);
        else if (t === 129) p.dport = u16(pkt, off + 4);
        else if (t >= 1 && t <= 4) p.kind = PacketKind.IcmpError;
        else p.kind = PacketKind.IcmpInfo;
      }
      if (p.kind === PacketKind.IcmpError) parseInner(pkt, off + 8, end, p);
      return true;
    }
    default:
      return true;
  }
}

/** Multicast, IPv4 broadcast or link-local destination (dropped before rules). */
function badDestination(p: ParsedPacket): boolean {
  const a = p.addr;
  if (p.family === 4) {
    const d = a[4]!;
    return d >>> 28 === 14 || d >>> 16 === 0xa9fe || d === 0xffffffff;
  }
  const hi = a[4]!;
  return hi >>> 24 === 0xff || hi >>> 22 === 0x3fa; // ff00::/8, fe80::/10
}

// ---- filter strings -------------------------------------------------------------

/** An inclusive address range of one family, as parsed from a filter IP string. */
export interface IPSpan {
  readonly family: Family;
  readonly lo: bigint;
  readonly hi: bigint;
}

const MAX4 = 0xffffffffn;
const MAX6 = (1n << 128n) - 1n;
const maxOf = (f: Family): bigint => (f === 4 ? MAX4 : MAX6);

/** Parses one SrcIPs / DstPorts.IP string; a string is the reason it is invalid. */
export function parseFilterIP(s: string): IPSpan[] | string {
  if (typeof s !== 'string') return `${JSON.stringify(s)} is not an IP string`;
  if (s === '*') return [
    { family: 4, lo: 0n, hi: MAX4 },
    { family: 6, lo: 0n, hi: MAX6 },
  ];
  if (s.startsWith('cap:')) return `"${s}": peer capabilities are not supported by the data-plane filter`;
  const slash = s.indexOf('/');
  if (slash >= 0) {
    const ip = parseIP(s.slice(0, slash));
    const bt = s.slice(slash + 1);
    if (!ip || !/^(0|[1-9][0-9]{0,2})$/.test(bt)) return `"${s}" is not a valid CIDR`;
    const total = ip.family === 4 ? 32 : 128;
    const bits = Number(bt);
    if (bits > total) return `"${s}" is not a valid CIDR`;
    const host = bits === total ? 0n : maxOf(ip.family) >> BigInt(bits);
    if ((ip.value & host) !== 0n) return `"${s}" contains non-network bits set`;
    return [{ family: ip.family, lo: ip.value, hi: ip.value | host }];
  }
  const dash = s.indexOf('-');
  if (dash >= 0) {
    const lo = parseIP(s.slice(0, dash));
    const hi = parseIP(s.slice(dash + 1));
    if (!lo || !hi || lo.family !== hi.family || lo.value > hi.value) return `invalid IP range "${s}"`;
    return [{ family: lo.family, lo: lo.value, hi: hi.value }];
  }
  const ip = parseIP(s);
  if (!ip) return `invalid IP address "${s}"`;
  return [{ family: ip.family, lo: ip.value, hi: ip.value }];
}

function mergeSpans(spans: IPSpan[]): IPSpan[] {
  const s = spans.slice().sort((x, y) => x.family - y.family || (x.lo < y.lo ? -1 : x.lo > y.lo ? 1 : 0));
  const out: IPSpan[] = [];
  for (const r of s) {
    const last = out[out.length - 1];
    if (last && last.family === r.family && r.lo <= last.hi + 1n) {
      if (r.hi > last.hi) out[out.length - 1] = { family: r.family, lo: last.lo, hi: r.hi };
    } else out.push(r);
  }
  return out;
}

// ---- compiled matching structure -------------------------------------------------

interface IdRange {
  lo: bigint;
  hi: bigint;
  id: number;
}

/**
 * Flattens ranges tagged with ids into disjoint elementary intervals covering
 * the whole family space, calling `emit` for each interval start with the
 * bitset (over ids) of the ranges covering it. Adjacent intervals with equal
 * sets are merged by the caller (emit returns the interned key index).
 */
function sweep(ranges: IdRange[], max: bigint, nIds: number, emit: (start: bigint, bits: Uint32Array) => void): void {
  const ev: { at: bigint; id: number; d: number }[] = [];
  for (const r of ranges) {
    ev.push({ at: r.lo, id: r.id, d: 1 });
    if (r.hi < max) ev.push({ at: r.hi + 1n, id: r.id, d: -1 });
  }
  ev.sort((x, y) => (x.at < y.at ? -1 : x.at > y.at ? 1 : 0));
  const count = new Int32Array(nIds);
  const bits = new Uint32Array(Math.max(1, Math.ceil(nIds / 32)));
  let i = 0;
  let pos = 0n;
  for (;;) {
    while (i < ev.length && ev[i]!.at === pos) {
      const e = ev[i++]!;
      if (e.d > 0) {
        if (count[e.id]++ === 0) bits[e.id >>> 5]! |= 1 << (e.id & 31);
      } else if (--count[e.id] === 0) bits[e.id >>> 5]! &= ~(1 << (e.id & 31));
    }
    emit(pos, bits);
    if (i >= ev.length) break;
    pos = ev[i]!.at;
  }
}

function writeWords(v: bigint, words: number, out: Uint32Array, at: number): void {
  for (let w = 0; w < words; w++) out[at + w] = Number((v >> BigInt(32 * (words - 1 - w))) & 0xffffffffn);
}

interface Candidate {
  family: Family;
  lo: bigint;
  hi: bigint;
  set: number;
  rule: number;
  first: number;
  last: number;
}

/** One address family's index: source intervals → set bitset row; destination intervals → candidate list. */
class FamilyIndex {
  readonly words: number;
  readonly srcStarts: Uint32Array;
  readonly srcRow: Uint32Array;
  readonly srcCount: number;
  /** Bitset rows over source-set ids; row 0 is empty. */
  readonly rows: Uint32Array;
  readonly rowWords: number;
  readonly dstStarts: Uint32Array;
  readonly dstOff: Uint32Array;
  readonly dstLen: Uint32Array;
  readonly dstCount: number;
  /** Candidate ids, grouped per destination interval (identical lists shared). */
  readonly list: Uint32Array;
  readonly cSet: Uint32Array;
  readonly cRule: Uint32Array;
  /** first << 16 | last. */
  readonly cPorts: Uint32Array;

  constructor(family: Family, srcRanges: IdRange[], nSets: number, cands: Candidate[]) {
    const words = family === 4 ? 1 : 4;
    this.words = words;
    const max = maxOf(family);
    // Sources.
    const rowWords = Math.max(1, Math.ceil(nSets / 32));
    this.rowWords = rowWords;
    const rowIds = new Map<string, number>();
    const rowData: number[] = [];
    const intern = (bits: Uint32Array): number => {
      const key = bits.join(',');
      let id = rowIds.get(key);
      if (id === undefined) {
        id = rowIds.size;
        rowIds.set(key, id);
        for (let w = 0; w < rowWords; w++) rowData.push(bits[w] ?? 0);
      }
      return id;
    };
    intern(new Uint32Array(rowWords));
    const sStarts: bigint[] = [];
    const sRows: number[] = [];
    sweep(srcRanges, max, nSets, (start, bits) => {
      const r = intern(bits);
      if (sRows.length > 0 && sRows[sRows.length - 1] === r) return;
      sStarts.push(start);
      sRows.push(r);
    });
    this.srcCount = sStarts.length;
    this.srcStarts = new Uint32Array(sStarts.length * words);
    sStarts.forEach((b, k) => writeWords(b, words, this.srcStarts, k * words));
    this.srcRow = Uint32Array.from(sRows);
    this.rows = Uint32Array.from(rowData);
    // Destinations.
    const nc = cands.length;
    this.cSet = new Uint32Array(nc);
    this.cRule = new Uint32Array(nc);
    this.cPorts = new Uint32Array(nc);
    cands.forEach((c, k) => {
      this.cSet[k] = c.set;
      this.cRule[k] = c.rule;
      this.cPorts[k] = ((c.first << 16) | c.last) >>> 0;
    });
    const listIds = new Map<string, [number, number]>();
    const flat: number[] = [];
    const dStarts: bigint[] = [];
    const dOff: number[] = [];
    const dLen: number[] = [];
    let lastKey = '';
    sweep(
      cands.map((c, k) => ({ lo: c.lo, hi: c.hi, id: k })),
      max,
      nc,
      (start, bits) => {
        const ids: number[] = [];
        for (let w = 0; w < bits.length; w++) {
          let x = bits[w]!;
          while (x !== 0) {
            const b = 31 - Math.clz32(x & -x);
            ids.push(w * 32 + b);
            x &= x - 1;
          }
        }
        const key = ids.join(',');
        if (dStarts.length > 0 && key === lastKey) return;
        lastKey = key;
        let at = listIds.get(key);
        if (!at) {
          at = [flat.length, ids.length];
          listIds.set(key, at);
          flat.push(...ids);
        }
        dStarts.push(start);
        dOff.push(at[0]);
        dLen.push(at[1]);
      },
    );
    this.dstCount = dStarts.length;
    this.dstStarts = new Uint32Array(dStarts.length * words);
    dStarts.forEach((b, k) => writeWords(b, words, this.dstStarts, k * words));
    this.dstOff = Uint32Array.from(dOff);
    this.dstLen = Uint32Array.from(dLen);
    this.list = Uint32Array.from(flat);
  }
}

/** Index of the last interval whose start ≤ x (IPv4: one word per start). */
function bsearch4(starts: Uint32Array, count: number, x: number): number {
  let lo = 0;
  let hi = count - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (starts[mid]! <= x) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** Index of the last interval whose start ≤ the IPv6 address in a[off..off+4). */
function bsearch6(starts: Uint32Array, count: number, a: Uint32Array, off: number): number {
  const x0 = a[off]!;
  const x1 = a[off + 1]!;
  const x2 = a[off + 2]!;
  const x3 = a[off + 3]!;
  let lo = 0;
  let hi = count - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    const b = mid * 4;
    const s0 = starts[b]!;
    let le: boolean;
    if (s0 !== x0) le = s0 < x0;
    else {
      const s1 = starts[b + 1]!;
      if (s1 !== x1) le = s1 < x1;
      else {
        const s2 = starts[b + 2]!;
        le = s2 !== x2 ? s2 < x2 : starts[b + 3]! <= x3;
      }
    }
    if (le) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

const PARSE_SCRATCH = new ParsedPacket();

/**
 * An immutable compiled packet filter. Build it once per policy version with
 * PacketFilter.compile and swap it in (FilterState.setFilter); lookups never
 * allocate.
 */
export class PacketFilter {
  /** Input entries that did not parse and were skipped (the rest stands). */
  readonly errors: readonly string[];
  /** Number of rules compiled (including those that admit nothing). */
  readonly ruleCount: number;
  private readonly v4: FamilyIndex;
  private readonly v6: FamilyIndex;
  /** 256 protocol bits per rule. */
  private readonly protoBits: Uint32Array;

  private constructor(rules: readonly FilterRule[]) {
    const errors: string[] = [];
    this.ruleCount = rules.length;
    this.protoBits = new Uint32Array(Math.max(1, rules.length) * 8);
    const setIds = new Map<string, number>();
    const src4: IdRange[] = [];
    const src6: IdRange[] = [];
    const c4: Candidate[] = [];
    const c6: Candidate[] = [];
    rules.forEach((r, ri) => {
      const where = `rule ${ri}`;
      const dsts = Array.isArray(r.DstPorts) ? r.DstPorts : [];
      if (dsts.length === 0) return; // CapGrant-only: grants no packets
      const protos = Array.isArray(r.IPProto) && r.IPProto.length > 0 ? r.IPProto : DEFAULT_PROTOS;
      for (const n of protos) {
        if (Number.isInteger(n) && n >= 0 && n <= 255) this.protoBits[ri * 8 + (n >>> 5)]! |= 1 << (n & 31);
        else errors.push(`${where}: IPProto ${JSON.stringify(n)} is not a protocol number 0..255`);
      }
      const spans: IPSpan[] = [];
      for (const s of Array.isArray(r.SrcIPs) ? r.SrcIPs : []) {
        const p = parseFilterIP(s);
        if (typeof p === 'string') errors.push(`${where}: SrcIPs: ${p}`);
        else spans.push(...p);
      }
      if (spans.length === 0) return;
      const merged = mergeSpans(spans);
      const key = merged.map((x) => `${x.family}:${x.lo}-${x.hi}`).join(',');
      let set = setIds.get(key);
      if (set === undefined) {
        set = setIds.size;
        setIds.set(key, set);
        for (const x of merged) (x.family === 4 ? src4 : src6).push({ lo: x.lo, hi: x.hi, id: set });
      }
      for (const d of dsts) {
        const ports = d?.Ports;
        const first = ports?.First;
        const last = ports?.Last;
        if (!Number.isInteger(first) || !Number.isInteger(last) || first! < 0 || last! > 65535 || first! > last!) {
          errors.push(`${where}: DstPorts ${JSON.stringify(d?.IP)}: invalid port range ${JSON.stringify(ports)}`);
          continue;
        }
        const p = parseFilterIP(d.IP);
        if (typeof p === 'string') {
          errors.push(`${where}: DstPorts: ${p}`);
          continue;
        }
        for (const x of p) {
          (x.family === 4 ? c4 : c6).push({ family: x.family, lo: x.lo, hi: x.hi, set, rule: ri, first: first!, last: last! });
        }
      }
    });
    this.v4 = new FamilyIndex(4, src4, setIds.size, c4);
    this.v6 = new FamilyIndex(6, src6, setIds.size, c6);
    this.errors = Object.freeze(errors);
  }

  /** Compiles tailcfg FilterRules. Never throws on bad entries: they are skipped and listed in `errors`. */
  static compile(rules: readonly FilterRule[]): PacketFilter {
    return new PacketFilter(rules);
  }

  /** A filter that admits nothing (only replies to tracked flows pass). */
  static empty(): PacketFilter {
    return new PacketFilter([]);
  }

  /**
   * Rule decision for a flow tuple: `family` 4|6, `proto`, addresses as u32
   * words in `a` (source at srcOff, destination at dstOff; one word for IPv4,
   * four for IPv6) and the destination port (ignored unless TCP/UDP/SCTP).
   */
  matchTuple(family: number, proto: number, a: Uint32Array, srcOff: number, dstOff: number, dport: number): boolean {
    // Destination first: most packets a filter refuses go to addresses no rule names.
    let t: FamilyIndex;
    let d: number;
    if (family === 4) {
      t = this.v4;
      d = bsearch4(t.dstStarts, t.dstCount, a[dstOff]!);
    } else {
      t = this.v6;
      d = bsearch6(t.dstStarts, t.dstCount, a, dstOff);
    }
    let k = t.dstOff[d]!;
    const end = k + t.dstLen[d]!;
    if (k === end) return false;
    const row =
      t.srcRow[family === 4 ? bsearch4(t.srcStarts, t.srcCount, a[srcOff]!) : bsearch6(t.srcStarts, t.srcCount, a, srcOff)]!;
    if (row === 0) return false;
    const rows = t.rows;
    const base = row * t.rowWords;
    const cls = protoClass(family, proto);
    const pw = proto >>> 5;
    const pb = 1 << (proto & 31);
    const list = t.list;
    const cSet = t.cSet;
    const cRule = t.cRule;
    const cPorts = t.cPorts;
    const protoBits = this.protoBits;
    for (; k < end; k++) {
      const c = list[k]!;
      const set = cSet[c]!;
      if ((rows[base + (set >>> 5)]! & (1 << (set & 31))) === 0) continue;
      if (cls === CLS_ICMP) return true;
      if ((protoBits[cRule[c]! * 8 + pw]! & pb) === 0) continue;
      const ports = cPorts[c]!;
      if (cls === CLS_PORTS) {
        if (dport >= ports >>> 16 && dport <= (ports & 0xffff)) return true;
      } else if (ports === 0xffff) return true;
    }
    return false;
  }

  /**
   * Rules-only decision for a packet (no flow state): parses pkt[0..len) and
   * matches it. Malformed packets, non-first fragments and ICMP errors quoting
   * nothing the rules admit are false.
   */
  matchPacket(pkt: Uint8Array, len: number): boolean {
    const p = PARSE_SCRATCH;
    if (!parsePacket(pkt, len, p) || p.kind === PacketKind.Fragment) return false;
    return this.matchTuple(p.family, p.proto, p.addr, 0, 4, p.dport);
  }

  /** Convenience (allocates; not for the hot path): does the filter admit proto src → dst:port? */
  allows(proto: number, src: string, dst: string, dport = 0): boolean {
    const s = parseIP(src);
    const d = parseIP(dst);
    if (!s || !d || s.family !== d.family) return false;
    const words = s.family === 4 ? 1 : 4;
    const a = new Uint32Array(8);
    writeWords(s.value, words, a, 0);
    writeWords(d.value, words, a, 4);
    return this.matchTuple(s.family, proto, a, 0, 4, dport);
  }

  /** Sizes of the compiled structure (for status and benchmarks). */
  get stats(): { srcIntervals: number; dstIntervals: number; candidates: number; listEntries: number; rowBytes: number } {
    return {
      srcIntervals: this.v4.srcCount + this.v6.srcCount,
      dstIntervals: this.v4.dstCount + this.v6.dstCount,
      candidates: this.v4.cSet.length + this.v6.cSet.length,
      listEntries: this.v4.list.length + this.v6.list.length,
      rowBytes: this.v4.rows.byteLength + this.v6.rows.byteLength,
    };
  }
}

// ---- flow table -------------------------------------------------------------------

/** How a tracked flow came to be. */
export const FlowOrigin = {
  /** Started by this node (noteOutbound): replies pass whatever the filter says. */
  Local: 1,
  /** Admitted by the filter of the generation recorded with it. */
  Admitted: 2,
  /** Was admitted, but a newer filter no longer admits it. */
  Revoked: 3,
} as const;
export type FlowOrigin = (typeof FlowOrigin)[keyof typeof FlowOrigin];

const KT_FLOW = 0;
const KT_FRAG = 1;

/** Key words per slot: [family | proto<<8 | ktype<<16, src×4, dst×4, sport<<16|dport (or fragment id)]. */
const KW = 10;

const F_REPLIED = 1;
const F_CLOSING = 2;

export interface FlowTableOptions {
  /** Most flows tracked at once (default 65 536). */
  maxFlows?: number;
  /** Initial slot count (power of two, default 1 024); the table doubles up to 2 × maxFlows slots. */
  initialSlots?: number;
  /** Idle timeout of UDP, ICMP echo, SCTP and other flows (default 120 000 ms). */
  udpTimeoutMs?: number;
  /** Idle timeout of a TCP flow once a reply was seen (default 7 200 000 ms). */
  tcpEstablishedTimeoutMs?: number;
  /** Idle timeout of a TCP flow before its first reply (default 120 000 ms). */
  tcpOpeningTimeoutMs?: number;
  /** Idle timeout of a TCP flow after FIN or RST (default 60 000 ms). */
  tcpClosingTimeoutMs?: number;
  /** How long a first fragment admits the rest of its datagram (default 60 000 ms). */
  fragmentTimeoutMs?: number;
}

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** Samples this many slots to pick an eviction victim when full. */
const EVICT_SAMPLE = 16;
/** Slots swept for expired entries per insert. */
const SWEEP_PER_INSERT = 4;

// ---- shared layout -------------------------------------------------------------
// One SharedArrayBuffer per shared table: a header page, then the slot arrays
// sized for the largest table (2 × maxFlows slots, rounded up to a power of
// two), each starting on a page. Only the first `slots` slots of each array are
// ever written (a grow doubles `slots` in place), so the kernel commits the
// pages of the reservation as the table grows into them, not when it is made.

/** Header words (Int32): lock, layout check, then the table's scalar state. */
const H_LOCK = 0;
const H_MAGIC = 1;
const H_MAX_SLOTS = 2;
const H_SLOTS = 3;
const H_COUNT = 4;
const H_CURSOR = 5;
const H_GEN = 6;
const H_SEED = 7;
/** Float64 index (byte 64) of the table-wide counters: evictions, expirations, insertions. */
const HC_OFFSET = 64;
const HC_EVICTIONS = 0;
const HC_EXPIRATIONS = 1;
const HC_INSERTIONS = 2;
const SHARED_MAGIC = 0x4c6b4654; // 'LkFT'
const PAGE = 4096;

const pageUp = (n: number): number => Math.ceil(n / PAGE) * PAGE;

// Lazy commit depends on the buffer being fresh from the kernel. Node takes a
// SharedArrayBuffer's memory from calloc; glibc maps blocks above its mmap
// threshold afresh (zero pages, committed when first written), but that
// threshold rises, up to 32 MiB, as large blocks are freed, and a block carved
// from memory freed before is zeroed by writing to it: every page committed at
// once (seen in a test process: 716 MB resident for 200 default tables after
// other tables had been freed, 0.9 MB without). So a reservation of 1 MiB or
// more is padded to just over 32 MiB, which glibc always maps afresh. The
// padding costs address space only.
const FRESH_MAP_BYTES = 32 * 1024 * 1024 + PAGE;
const PAD_FROM_BYTES = 1024 * 1024;

interface SharedLayout {
  keys: number;
  hashes: number;
  gens: number;
  seen: number;
  origins: number;
  states: number;
  bytes: number;
}

function sharedLayout(maxSlots: number): SharedLayout {
  const keys = PAGE;
  const hashes = keys + pageUp(maxSlots * KW * 4);
  const gens = hashes + pageUp(maxSlots * 4);
  const seen = gens + pageUp(maxSlots * 4);
  const origins = seen + pageUp(maxSlots * 8);
  const states = origins + pageUp(maxSlots);
  const bytes = states + pageUp(maxSlots);
  return { keys, hashes, gens, seen, origins, states, bytes: bytes >= PAD_FROM_BYTES && bytes < FRESH_MAP_BYTES ? FRESH_MAP_BYTES : bytes };
}

/**
 * A shared flow table, as posted to another thread (structured-cloneable: one
 * SharedArrayBuffer and the table's options). FlowTable.attach /
 * FilterState.attach turn it back into a table over the same memory.
 */
export interface SharedFilterHandle {
  readonly buffer: SharedArrayBuffer;
  readonly options: Readonly<Required<FlowTableOptions>>;
}

function normalizeOptions(opts: FlowTableOptions): Required<FlowTableOptions> {
  const max = Math.floor(opts.maxFlows ?? 65_536);
  if (!(max >= 1 && max <= 1 << 24)) throw new RangeError(`maxFlows must be 1..${1 << 24}, got ${opts.maxFlows}`);
  const maxSlots = nextPow2(max) * 2;
  return {
    maxFlows: max,
    initialSlots: Math.min(maxSlots, nextPow2(Math.max(16, Math.floor(opts.initialSlots ?? 1024)))),
    udpTimeoutMs: opts.udpTimeoutMs ?? 120_000,
    tcpEstablishedTimeoutMs: opts.tcpEstablishedTimeoutMs ?? 7_200_000,
    tcpOpeningTimeoutMs: opts.tcpOpeningTimeoutMs ?? 120_000,
    tcpClosingTimeoutMs: opts.tcpClosingTimeoutMs ?? 60_000,
    fragmentTimeoutMs: opts.fragmentTimeoutMs ?? 60_000,
  };
}

/**
 * Bounded flow table: open addressing with linear probing and backward-shift
 * deletion over typed arrays. Per-packet operations do not allocate.
 *
 * Shared mode (FlowTable.createShared / attach): the arrays and the scalar
 * state (slot count, flow count, sweep cursor, counters, policy generation,
 * hash seed) live in one SharedArrayBuffer, and every public operation holds
 * the spin lock in its header for its whole duration (one lock/unlock pair per
 * call). Each thread has its own FlowTable object over that memory: its own
 * scratch key, and copies of the scalars that enter() loads and leave() stores.
 */
export class FlowTable {
  readonly maxFlows: number;
  readonly udpTimeoutMs: number;
  readonly tcpEstablishedTimeoutMs: number;
  readonly tcpOpeningTimeoutMs: number;
  readonly tcpClosingTimeoutMs: number;
  readonly fragmentTimeoutMs: number;
  /** True when the table lives in shared memory (createShared / attach). */
  readonly shared: boolean;

  private readonly options: Required<FlowTableOptions>;
  private readonly maxSlots: number;
  private slots: number;
  private mask: number;
  private keys: Uint32Array;
  private hashes: Uint32Array;
  private origins: Uint8Array;
  private states: Uint8Array;
  private gens: Uint32Array;
  private seen: Float64Array;
  private count = 0;
  private cursor = 0;
  private nEvictions = 0;
  private nExpirations = 0;
  private nInsertions = 0;
  /** Last policy generation handed out (unshared; shared: header word H_GEN). */
  private gen = 1;
  private readonly seed: number;
  /** Shared mode: the buffer, its header words and its counters (unshared: null and empty arrays). */
  private readonly sab: SharedArrayBuffer | null;
  private readonly hdr: Int32Array;
  private readonly hctr: Float64Array;
  /** Scratch key of the last key() call and its hash. */
  private readonly k = new Uint32Array(KW);
  private kh = 0;

  /**
   * An unshared table (one thread). `sharedBuffer` is internal (checked, so a
   * wrong one throws): use FlowTable.createShared / FlowTable.attach for a
   * shared table.
   */
  constructor(opts: FlowTableOptions = {}, sharedBuffer?: SharedArrayBuffer | null) {
    const o = normalizeOptions(opts);
    this.options = o;
    this.maxFlows = o.maxFlows;
    this.maxSlots = nextPow2(o.maxFlows) * 2;
    this.udpTimeoutMs = o.udpTimeoutMs;
    this.tcpEstablishedTimeoutMs = o.tcpEstablishedTimeoutMs;
    this.tcpOpeningTimeoutMs = o.tcpOpeningTimeoutMs;
    this.tcpClosingTimeoutMs = o.tcpClosingTimeoutMs;
    this.fragmentTimeoutMs = o.fragmentTimeoutMs;
    if (sharedBuffer === undefined) {
      this.shared = false;
      this.sab = null;
      this.hdr = new Int32Array(0);
      this.hctr = new Float64Array(0);
      this.slots = o.initialSlots;
      this.seed = (Math.random() * 0x100000000) >>> 0;
      this.keys = new Uint32Array(this.slots * KW);
      this.hashes = new Uint32Array(this.slots);
      this.origins = new Uint8Array(this.slots);
      this.states = new Uint8Array(this.slots);
      this.gens = new Uint32Array(this.slots);
      this.seen = new Float64Array(this.slots);
    } else {
      const ms = this.maxSlots;
      const lay = sharedLayout(ms);
      if (!(sharedBuffer instanceof SharedArrayBuffer)) throw new TypeError('attach: the buffer must be a SharedArrayBuffer (from FlowTable.share)');
      if (sharedBuffer.byteLength !== lay.bytes) throw new TypeError(`attach: a buffer of ${sharedBuffer.byteLength} bytes does not fit maxFlows ${o.maxFlows}`);
      const h = new Int32Array(sharedBuffer, 0, HC_OFFSET / 4);
      const slots = Atomics.load(h, H_SLOTS);
      if (h[H_MAGIC] !== SHARED_MAGIC || h[H_MAX_SLOTS] !== ms || !(slots >= 1 && slots <= ms && (slots & (slots - 1)) === 0)) {
        throw new TypeError('attach: the buffer does not hold a shared flow table of these options');
      }
      this.shared = true;
      this.sab = sharedBuffer;
      this.hdr = new Int32Array(sharedBuffer, 0, HC_OFFSET / 4);
      this.hctr = new Float64Array(sharedBuffer, HC_OFFSET, 3);
      this.slots = Atomics.load(this.hdr, H_SLOTS);
      this.seed = Atomics.load(this.hdr, H_SEED) >>> 0;
      this.keys = new Uint32Array(sharedBuffer, lay.keys, ms * KW);
      this.hashes = new Uint32Array(sharedBuffer, lay.hashes, ms);
      this.gens = new Uint32Array(sharedBuffer, lay.gens, ms);
      this.seen = new Float64Array(sharedBuffer, lay.seen, ms);
      this.origins = new Uint8Array(sharedBuffer, lay.origins, ms);
      this.states = new Uint8Array(sharedBuffer, lay.states, ms);
    }
    this.mask = this.slots - 1;
  }

  /**
   * A table in shared memory. The buffer reserves room for the largest table
   * (2 × maxFlows slots, about 58 B a slot; at least 32 MiB from 1 MiB up, see
   * FRESH_MAP_BYTES) up front; it starts at `initialSlots` and grows in place
   * by doubling, so only the pages in use are committed.
   */
  static createShared(opts: FlowTableOptions = {}): FlowTable {
    const o = normalizeOptions(opts);
    const maxSlots = nextPow2(o.maxFlows) * 2;
    const sab = new SharedArrayBuffer(sharedLayout(maxSlots).bytes);
    const h = new Int32Array(sab, 0, HC_OFFSET / 4);
    h[H_MAGIC] = SHARED_MAGIC;
    h[H_MAX_SLOTS] = maxSlots;
    h[H_SLOTS] = o.initialSlots;
    h[H_GEN] = 1;
    h[H_SEED] = (Math.random() * 0x100000000) | 0;
    return new FlowTable(o, sab);
  }

  /** A table over the shared memory of `handle` (from share(), possibly posted from another thread). */
  static attach(handle: SharedFilterHandle): FlowTable {
    return new FlowTable(handle?.options ?? {}, handle?.buffer ?? null);
  }

  /** The handle to post to another thread (shared tables only). */
  share(): SharedFilterHandle {
    if (this.sab === null) throw new TypeError('share: this flow table is not shared (use FlowTable.createShared / FilterState.createShared)');
    return { buffer: this.sab, options: { ...this.options } };
  }

  /**
   * @internal Shared mode: takes the lock and loads the scalar state (another
   * thread may have changed it). Every enter() is followed by one leave().
   */
  enter(): void {
    const h = this.hdr;
    lock(h, H_LOCK);
    const slots = h[H_SLOTS]!;
    if (slots !== this.slots) {
      this.slots = slots;
      this.mask = slots - 1;
    }
    this.count = h[H_COUNT]!;
    this.cursor = h[H_CURSOR]!;
    const c = this.hctr;
    this.nEvictions = c[HC_EVICTIONS]!;
    this.nExpirations = c[HC_EXPIRATIONS]!;
    this.nInsertions = c[HC_INSERTIONS]!;
  }

  /** @internal Shared mode: stores the scalar state and releases the lock. */
  leave(): void {
    const h = this.hdr;
    h[H_SLOTS] = this.slots;
    h[H_COUNT] = this.count;
    h[H_CURSOR] = this.cursor;
    const c = this.hctr;
    c[HC_EVICTIONS] = this.nEvictions;
    c[HC_EXPIRATIONS] = this.nExpirations;
    c[HC_INSERTIONS] = this.nInsertions;
    unlock(h, H_LOCK);
  }

  /** Reads one table-wide counter of a shared table under the lock. */
  private sharedCounter(i: number): number {
    lock(this.hdr, H_LOCK);
    const v = this.hctr[i]!;
    unlock(this.hdr, H_LOCK);
    return v;
  }

  /** Flows evicted because the table was full (shared: by every thread). */
  get evictions(): number {
    return this.shared ? this.sharedCounter(HC_EVICTIONS) : this.nEvictions;
  }

  /** Flows removed because they were idle past their timeout (shared: by every thread). */
  get expirations(): number {
    return this.shared ? this.sharedCounter(HC_EXPIRATIONS) : this.nExpirations;
  }

  /** Flows inserted (shared: by every thread). */
  get insertions(): number {
    return this.shared ? this.sharedCounter(HC_INSERTIONS) : this.nInsertions;
  }

  /** @internal The current policy generation (see FilterState.setFilter). */
  get generation(): number {
    return this.shared ? Atomics.load(this.hdr, H_GEN) >>> 0 : this.gen;
  }

  /**
   * @internal Hands out the next policy generation: unique among the
   * FilterStates over this table, whichever thread they run on.
   */
  nextGeneration(): number {
    if (!this.shared) {
      this.gen = (this.gen + 1) >>> 0 || 1;
      return this.gen;
    }
    const h = this.hdr;
    lock(h, H_LOCK);
    const g = ((h[H_GEN]! >>> 0) + 1) >>> 0 || 1;
    h[H_GEN] = g | 0;
    unlock(h, H_LOCK);
    return g;
  }

  /** Flows currently held (expired ones may linger until swept or looked up). */
  get size(): number {
    return this.shared ? Atomics.load(this.hdr, H_COUNT) : this.count;
  }

  /** Current slot capacity (grows by doubling up to 2 × maxFlows). */
  get capacity(): number {
    return this.shared ? Atomics.load(this.hdr, H_SLOTS) : this.slots;
  }

  /** Forgets every flow (the capacity stays). */
  clear(): void {
    if (!this.shared) {
      this.keys.fill(0);
      this.count = 0;
      this.cursor = 0;
      return;
    }
    this.enter();
    this.keys.fill(0, 0, this.slots * KW); // never past `slots`: the rest of the reservation stays uncommitted
    this.count = 0;
    this.cursor = 0;
    this.leave();
  }

  /**
   * Records a packet this node sends (after routing, before encryption) so the
   * reverse direction is accepted. A packet that answers a flow the filter
   * admitted (or revoked) refreshes that flow instead of starting a new one.
   * Malformed, multicast, fragment and ICMP error/info packets are ignored.
   */
  noteOutbound(pkt: Uint8Array, len: number, now: number): void {
    const p = PARSE_SCRATCH;
    if (!parsePacket(pkt, len, p) || p.kind !== PacketKind.Flow || badDestination(p)) return;
    this.notePacket(p, now);
  }

  /** noteOutbound for an already parsed Flow packet. */
  notePacket(p: ParsedPacket, now: number): void {
    if (!this.shared) {
      this.noteLocked(p, now);
      return;
    }
    this.enter();
    try {
      this.noteLocked(p, now);
    } finally {
      this.leave();
    }
  }

  private noteLocked(p: ParsedPacket, now: number): void {
    const a = p.addr;
    this.key(KT_FLOW, p.family, p.proto, a, 4, 0, p.dport, p.sport);
    let i = this.find(now);
    if (i >= 0 && this.origins[i] !== FlowOrigin.Local) {
      this.touch(i, now, p.tcpFlags, true);
      return;
    }
    this.key(KT_FLOW, p.family, p.proto, a, 0, 4, p.sport, p.dport);
    i = this.find(now);
    if (i < 0) i = this.insert(FlowOrigin.Local, 0, now);
    this.touch(i, now, p.tcpFlags, false);
  }

  /**
   * True when the packet is a reply to a flow this node started (the reverse
   * of a noteOutbound tuple), refreshing it. Rules are not consulted: use
   * FilterState.check for the full decision.
   */
  isReply(pkt: Uint8Array, len: number, now: number): boolean {
    const p = PARSE_SCRATCH;
    if (!parsePacket(pkt, len, p) || p.kind !== PacketKind.Flow) return false;
    if (!this.shared) return this.replyLocked(p, now);
    this.enter();
    try {
      return this.replyLocked(p, now);
    } finally {
      this.leave();
    }
  }

  private replyLocked(p: ParsedPacket, now: number): boolean {
    this.key(KT_FLOW, p.family, p.proto, p.addr, 4, 0, p.dport, p.sport);
    const i = this.find(now);
    if (i < 0 || this.origins[i] !== FlowOrigin.Local) return false;
    this.touch(i, now, p.tcpFlags, true);
    return true;
  }

  // ---- low-level interface for FilterState (same module) ----

  /** @internal Sets the scratch key. Addresses: words of `a` at srcOff / dstOff. */
  key(ktype: number, family: number, proto: number, a: Uint32Array, srcOff: number, dstOff: number, sport: number, dport: number): void {
    const k = this.k;
    k[0] = family | (proto << 8) | (ktype << 16);
    if (family === 4) {
      k[1] = a[srcOff]!;
      k[2] = 0;
      k[3] = 0;
      k[4] = 0;
      k[5] = a[dstOff]!;
      k[6] = 0;
      k[7] = 0;
      k[8] = 0;
    } else {
      k[1] = a[srcOff]!;
      k[2] = a[srcOff + 1]!;
      k[3] = a[srcOff + 2]!;
      k[4] = a[srcOff + 3]!;
      k[5] = a[dstOff]!;
      k[6] = a[dstOff + 1]!;
      k[7] = a[dstOff + 2]!;
      k[8] = a[dstOff + 3]!;
    }
    k[9] = (((sport & 0xffff) << 16) | (dport & 0xffff)) >>> 0;
    // murmur3-style mix of the ten words with a per-table seed.
    let h = this.seed;
    for (let w = 0; w < KW; w++) {
      let x = Math.imul(k[w]!, 0xcc9e2d51);
      x = (x << 15) | (x >>> 17);
      x = Math.imul(x, 0x1b873593);
      h ^= x;
      h = (h << 13) | (h >>> 19);
      h = (Math.imul(h, 5) + 0xe6546b64) | 0;
    }
    h ^= KW * 4;
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    this.kh = h >>> 0;
  }

  /** @internal Slot of the scratch key, or -1; an expired match is removed and reported absent. */
  find(now: number): number {
    const keys = this.keys;
    const k = this.k;
    const kh = this.kh;
    const mask = this.mask;
    let i = kh & mask;
    for (;;) {
      const b = i * KW;
      const k0 = keys[b]!;
      if (k0 === 0) return -1;
      if (
        this.hashes[i] === kh &&
        k0 === k[0] &&
        keys[b + 9] === k[9] &&
        keys[b + 1] === k[1] &&
        keys[b + 5] === k[5] &&
        keys[b + 2] === k[2] &&
        keys[b + 3] === k[3] &&
        keys[b + 4] === k[4] &&
        keys[b + 6] === k[6] &&
        keys[b + 7] === k[7] &&
        keys[b + 8] === k[8]
      ) {
        if (this.expired(i, now)) {
          this.remove(i);
          this.nExpirations++;
          return -1;
        }
        return i;
      }
      i = (i + 1) & mask;
    }
  }

  /** @internal Inserts the scratch key (known absent); returns its slot. */
  insert(origin: number, gen: number, now: number): number {
    this.sweep(now, SWEEP_PER_INSERT);
    if (this.count >= this.maxFlows) this.evictOne(now);
    if ((this.count + 1) * 2 > this.slots && this.slots < this.maxSlots) {
      if (this.shared) this.growInPlace();
      else this.grow(now);
    }
    const mask = this.mask;
    const keys = this.keys;
    let i = this.kh & mask;
    while (keys[i * KW] !== 0) i = (i + 1) & mask;
    keys.set(this.k, i * KW);
    this.hashes[i] = this.kh;
    this.origins[i] = origin;
    this.states[i] = 0;
    this.gens[i] = gen;
    this.seen[i] = now;
    this.count++;
    this.nInsertions++;
    return i;
  }

  /** @internal Refreshes slot i; `reply` = the packet went in the flow's reverse direction. */
  touch(i: number, now: number, tcpFlags: number, reply: boolean): void {
    let s = this.states[i]!;
    if (reply) s |= F_REPLIED;
    if ((tcpFlags & (TCP_FIN | TCP_RST)) !== 0) s |= F_CLOSING;
    else if (!reply && (tcpFlags & (TCP_SYN | TCP_ACK)) === TCP_SYN && (s & F_CLOSING) !== 0) s = 0; // tuple reused
    this.states[i] = s;
    this.seen[i] = now;
  }

  /** @internal */
  originOf(i: number): number {
    return this.origins[i]!;
  }

  /** @internal */
  genOf(i: number): number {
    return this.gens[i]!;
  }

  /** @internal */
  setOrigin(i: number, origin: number, gen: number): void {
    this.origins[i] = origin;
    this.gens[i] = gen;
  }

  /** @internal The key words array (replaced when the table grows): slot i at i*10. */
  get keyWords(): Uint32Array {
    return this.keys;
  }

  private timeoutOf(i: number): number {
    const k0 = this.keys[i * KW]!;
    if (k0 >>> 16 === KT_FRAG) return this.fragmentTimeoutMs;
    if (((k0 >>> 8) & 255) === IPPROTO_TCP) {
      const s = this.states[i]!;
      if ((s & F_CLOSING) !== 0) return this.tcpClosingTimeoutMs;
      return (s & F_REPLIED) !== 0 ? this.tcpEstablishedTimeoutMs : this.tcpOpeningTimeoutMs;
    }
    return this.udpTimeoutMs;
  }

  private expired(i: number, now: number): boolean {
    return now - this.seen[i]! > this.timeoutOf(i);
  }

  /** Backward-shift deletion: no tombstones, probe chains stay short. */
  private remove(i: number): void {
    const keys = this.keys;
    const mask = this.mask;
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      if (keys[j * KW] === 0) break;
      const home = this.hashes[j]! & mask;
      // Move j into the hole at i unless its home lies cyclically in (i, j].
      const inRange = i <= j ? home > i && home <= j : home > i || home <= j;
      if (inRange) continue;
      keys.copyWithin(i * KW, j * KW, j * KW + KW);
      this.hashes[i] = this.hashes[j]!;
      this.origins[i] = this.origins[j]!;
      this.states[i] = this.states[j]!;
      this.gens[i] = this.gens[j]!;
      this.seen[i] = this.seen[j]!;
      i = j;
    }
    keys[i * KW] = 0;
    this.count--;
  }

  /** Examines `n` slots from the cursor and removes expired flows. */
  private sweep(now: number, n: number): void {
    const mask = this.mask;
    for (let step = 0; step < n && this.count > 0; step++) {
      const i = this.cursor;
      if (this.keys[i * KW] !== 0 && this.expired(i, now)) {
        this.remove(i); // an entry may shift into i: look at it again next step
        this.nExpirations++;
      } else this.cursor = (i + 1) & mask;
    }
  }

  /**
   * Makes room: among EVICT_SAMPLE occupied-or-not slots from the cursor,
   * removes an expired flow if there is one, else the least recently seen.
   */
  private evictOne(now: number): void {
    const mask = this.mask;
    let victim = -1;
    let oldest = Infinity;
    for (let step = 0, i = this.cursor; step < EVICT_SAMPLE || victim < 0; step++, i = (i + 1) & mask) {
      if (this.keys[i * KW] === 0) continue;
      if (this.expired(i, now)) {
        this.remove(i);
        this.nExpirations++;
        return;
      }
      if (this.seen[i]! < oldest) {
        oldest = this.seen[i]!;
        victim = i;
      }
    }
    this.remove(victim);
    this.cursor = (victim + 1) & mask;
    this.nEvictions++;
  }

  private grow(now: number): void {
    const oldKeys = this.keys;
    const oldHashes = this.hashes;
    const oldOrigins = this.origins;
    const oldStates = this.states;
    const oldGens = this.gens;
    const oldSeen = this.seen;
    const oldSlots = this.slots;
    this.slots = oldSlots * 2;
    this.mask = this.slots - 1;
    this.keys = new Uint32Array(this.slots * KW);
    this.hashes = new Uint32Array(this.slots);
    this.origins = new Uint8Array(this.slots);
    this.states = new Uint8Array(this.slots);
    this.gens = new Uint32Array(this.slots);
    this.seen = new Float64Array(this.slots);
    this.count = 0;
    this.cursor = 0;
    for (let j = 0; j < oldSlots; j++) {
      if (oldKeys[j * KW] === 0) continue;
      let i = oldHashes[j]! & this.mask;
      while (this.keys[i * KW] !== 0) i = (i + 1) & this.mask;
      this.keys.set(oldKeys.subarray(j * KW, j * KW + KW), i * KW);
      this.hashes[i] = oldHashes[j]!;
      this.origins[i] = oldOrigins[j]!;
      this.states[i] = oldStates[j]!;
      this.gens[i] = oldGens[j]!;
      this.seen[i] = oldSeen[j]!;
      this.count++;
      if (this.expired(i, now)) {
        this.remove(i);
        this.nExpirations++;
      }
    }
  }

  /**
   * Shared mode: doubles `slots` inside the reservation (the arrays are views
   * of the whole buffer, so nothing is reallocated or re-posted). Slots past
   * the old size are zero: nothing is ever written beyond `slots`. Every entry
   * is then moved to the first free slot between its new home and where it
   * sits, pass after pass until a pass moves nothing: that pass proves every
   * probe chain unbroken. Each move strictly shortens one entry's distance
   * from its home, so the passes end. In practice the first pass places
   * everything and the second only confirms it (2 700 grows of random tables:
   * none needed a third).
   */
  private growInPlace(): void {
    const slots = this.slots * 2;
    const mask = slots - 1;
    const keys = this.keys;
    const hashes = this.hashes;
    this.slots = slots;
    this.mask = mask;
    this.cursor = 0;
    for (let moved = 1; moved !== 0; ) {
      moved = 0;
      for (let i = 0; i < slots; i++) {
        if (keys[i * KW] === 0) continue;
        let j = hashes[i]! & mask;
        while (j !== i && keys[j * KW] !== 0) j = (j + 1) & mask;
        if (j === i) continue;
        keys.copyWithin(j * KW, i * KW, i * KW + KW);
        hashes[j] = hashes[i]!;
        this.origins[j] = this.origins[i]!;
        this.states[j] = this.states[i]!;
        this.gens[j] = this.gens[i]!;
        this.seen[j] = this.seen[i]!;
        keys[i * KW] = 0;
        moved++;
      }
    }
  }
}

// ---- decision ------------------------------------------------------------------------

/** Why check() decided as it did (FilterState.lastVerdict). */
export const Verdict = {
  /** Admitted by the rules (a new flow, now tracked). */
  AllowRule: 1,
  /** Continues a flow the current rules admitted. */
  AllowFlow: 2,
  /** Reverse of a tracked flow. */
  AllowReply: 3,
  /** ICMP error about a tracked flow. */
  AllowRelated: 4,
  /** Non-first fragment of an admitted datagram. */
  AllowFragment: 5,
  DropMalformed: 16,
  /** Multicast, broadcast or link-local destination. */
  DropDestination: 17,
  DropNoRule: 18,
  /** Packet of a flow the current filter no longer admits. */
  DropRevoked: 19,
  /** Non-first fragment whose first fragment was not admitted. */
  DropFragment: 20,
} as const;
export type Verdict = (typeof Verdict)[keyof typeof Verdict];

export const FILTER_COUNTER_HELP = {
  filter_allow_rule: 'packets admitted by the ACL rules (new flows)',
  filter_allow_flow: 'packets continuing a flow the ACL admitted',
  filter_allow_reply: 'packets answering a tracked flow',
  filter_allow_related: 'ICMP errors about a tracked flow',
  filter_allow_fragment: 'non-first fragments of admitted datagrams',
  filter_drop_malformed: 'packets the filter could not parse (truncated, bad header)',
  filter_drop_destination: 'packets to multicast, broadcast or link-local destinations',
  filter_drop_no_rule: 'packets no ACL rule admits and no tracked flow answers',
  filter_drop_revoked: 'packets of flows a policy change revoked',
  filter_drop_fragment: 'non-first fragments whose first fragment was not admitted',
} as const;
export type FilterCounterName = keyof typeof FILTER_COUNTER_HELP;
export const FILTER_COUNTER_NAMES = Object.keys(FILTER_COUNTER_HELP) as FilterCounterName[];

/** Per-verdict packet counts; plain numeric fields. */
export class FilterCounters {
  filter_allow_rule = 0;
  filter_allow_flow = 0;
  filter_allow_reply = 0;
  filter_allow_related = 0;
  filter_allow_fragment = 0;
  filter_drop_malformed = 0;
  filter_drop_destination = 0;
  filter_drop_no_rule = 0;
  filter_drop_revoked = 0;
  filter_drop_fragment = 0;

  /** Copies every counter into `f[off .. off + FILTER_COUNTER_NAMES.length]` (a packet worker publishing its totals). */
  writeTo(f: Float64Array, off: number): void {
    for (let i = 0; i < FILTER_COUNTER_NAMES.length; i++) f[off + i] = this[FILTER_COUNTER_NAMES[i]!];
  }

  /** Adds counters published with writeTo (summing the workers of one engine). */
  addFrom(f: Float64Array, off: number): void {
    for (let i = 0; i < FILTER_COUNTER_NAMES.length; i++) this[FILTER_COUNTER_NAMES[i]!] += f[off + i]!;
  }

  toJSON(): Record<FilterCounterName, number> {
    const out = {} as Record<FilterCounterName, number>;
    for (const k of FILTER_COUNTER_NAMES) out[k] = this[k];
    return out;
  }
}

/**
 * A filter plus its flow table: the decision point of one node (inbound) or of
 * one tenant namespace on a relay (every forwarded packet).
 *
 * Node: call noteOutbound() for every packet it sends into the overlay and
 * check() for every packet it receives. Relay: call check() for every packet of
 * the namespace it forwards (both directions; admitted flows are tracked, so
 * their replies pass).
 *
 * Threads: FilterState.createShared() puts the flow table in shared memory;
 * share() gives the handle to post to a worker, FilterState.attach() there
 * gives a FilterState over the same table. Each thread keeps its own compiled
 * PacketFilter and its own counters. Contract: every thread compiles its
 * filter from the same rules and calls setFilter() with the new policy when it
 * changes (see setFilter for what happens in between).
 */
export class FilterState {
  readonly flows: FlowTable;
  readonly counters = new FilterCounters();
  /** Verdict of the last check(). */
  lastVerdict: Verdict = Verdict.DropNoRule;
  private current: PacketFilter;
  /** Generation of `current`: flows stamped with an older one are re-checked. */
  private gen: number;

  /** `flows`: the table's options, or a table (shared or not) to use. */
  constructor(filter: PacketFilter = PacketFilter.empty(), flows: FlowTable | FlowTableOptions = {}) {
    this.current = filter;
    this.flows = flows instanceof FlowTable ? flows : new FlowTable(flows);
    this.gen = this.flows.generation;
  }

  /** A FilterState whose flow table is in shared memory (see share / attach). */
  static createShared(filter: PacketFilter = PacketFilter.empty(), opts: FlowTableOptions = {}): FilterState {
    return new FilterState(filter, FlowTable.createShared(opts));
  }

  /**
   * A FilterState over the shared flow table of `handle` (from share(), in
   * this thread or posted from another). `filter` must be the policy the
   * engine currently enforces (compiled from the same rules as the others').
   */
  static attach(handle: SharedFilterHandle, filter: PacketFilter = PacketFilter.empty()): FilterState {
    return new FilterState(filter, FlowTable.attach(handle));
  }

  /** The structured-cloneable handle of the shared flow table (to post to a worker). */
  share(): SharedFilterHandle {
    return this.flows.share();
  }

  get filter(): PacketFilter {
    return this.current;
  }

  /** Policy generation of the current filter (a new, higher one on every setFilter). */
  get generation(): number {
    return this.gen;
  }

  /**
   * Swaps in a new filter atomically. Tracked flows are kept: flows this node
   * started keep their replies; flows the old filter admitted are re-checked
   * against the new one on their next packet (revoked when no longer admitted).
   *
   * Shared table: the new generation comes from the table, so it is newer than
   * every other thread's. Flows carry the generation of the filter that last
   * judged them; a thread re-checks a flow judged under an older generation
   * than its own and trusts one judged under a newer one. So once one thread
   * has the new filter, what it revokes is revoked for all threads, including
   * those still on the old filter (they cannot re-admit it); a new flow a
   * lagging thread admits under the old filter is re-checked by the first
   * up-to-date thread that sees it. When every thread has called setFilter,
   * every flow is judged by the new policy.
   */
  setFilter(filter: PacketFilter): void {
    this.current = filter;
    this.gen = this.flows.nextGeneration();
  }

  /** Was a flow stamped with generation `g` judged under an older filter than the current one? */
  private stale(g: number): boolean {
    return ((g - this.gen) | 0) < 0;
  }

  /** Records an outbound packet of this node (see FlowTable.noteOutbound). */
  noteOutbound(pkt: Uint8Array, len: number, now: number): void {
    this.flows.noteOutbound(pkt, len, now);
  }

  /** Same as check(): the inbound decision. */
  allowInbound(pkt: Uint8Array, len: number, now: number): boolean {
    return this.check(pkt, len, now);
  }

  /** The hot-path decision: may this packet pass? Never throws, never allocates. */
  check(pkt: Uint8Array, len: number, now: number): boolean {
    const p = PARSE_SCRATCH;
    if (!parsePacket(pkt, len, p)) return this.drop(Verdict.DropMalformed);
    return this.checkParsed(p, now);
  }

  /** check() for a packet already parsed into `p`. */
  checkParsed(p: ParsedPacket, now: number): boolean {
    if (badDestination(p)) return this.drop(Verdict.DropDestination);
    const fl = this.flows;
    if (!fl.shared) return this.decide(p, now);
    fl.enter();
    try {
      return this.decide(p, now);
    } finally {
      fl.leave();
    }
  }

  /** The decision proper (shared table: with its lock held). */
  private decide(p: ParsedPacket, now: number): boolean {
    const fl = this.flows;
    const a = p.addr;
    const fam = p.family;
    switch (p.kind) {
      case PacketKind.Fragment: {
        fl.key(KT_FRAG, fam, p.fragProto, a, 0, 4, p.fragId >>> 16, p.fragId & 0xffff);
        const i = fl.find(now);
        if (i < 0) return this.drop(Verdict.DropFragment);
        fl.touch(i, now, 0, false);
        return this.allow(Verdict.AllowFragment, p, now);
      }
      case PacketKind.IcmpError:
        if (p.innerValid && this.related(p, now)) return this.allow(Verdict.AllowRelated, p, now);
        return this.current.matchTuple(fam, p.proto, a, 0, 4, 0) ? this.allow(Verdict.AllowRule, p, now) : this.drop(Verdict.DropNoRule);
      case PacketKind.IcmpInfo:
        return this.current.matchTuple(fam, p.proto, a, 0, 4, 0) ? this.allow(Verdict.AllowRule, p, now) : this.drop(Verdict.DropNoRule);
    }
    // A flow packet: same direction as an admitted flow?
    fl.key(KT_FLOW, fam, p.proto, a, 0, 4, p.sport, p.dport);
    let i = fl.find(now);
    if (i >= 0 && fl.originOf(i) !== FlowOrigin.Local) {
      if (this.stale(fl.genOf(i))) this.revalidate(i);
      fl.touch(i, now, p.tcpFlags, false);
      if (fl.originOf(i) === FlowOrigin.Admitted) return this.allow(Verdict.AllowFlow, p, now);
      return this.drop(Verdict.DropRevoked);
    }
    // A reply to a tracked flow?
    fl.key(KT_FLOW, fam, p.proto, a, 4, 0, p.dport, p.sport);
    i = fl.find(now);
    if (i >= 0) {
      if (fl.originOf(i) !== FlowOrigin.Local && this.stale(fl.genOf(i))) this.revalidate(i);
      if (fl.originOf(i) !== FlowOrigin.Revoked) {
        fl.touch(i, now, p.tcpFlags, true);
        return this.allow(Verdict.AllowReply, p, now);
      }
    }
    // A new flow: the rules decide.
    if (!this.current.matchTuple(fam, p.proto, a, 0, 4, p.dport)) return this.drop(Verdict.DropNoRule);
    fl.key(KT_FLOW, fam, p.proto, a, 0, 4, p.sport, p.dport);
    i = fl.find(now);
    if (i >= 0) fl.setOrigin(i, FlowOrigin.Admitted, this.gen);
    else i = fl.insert(FlowOrigin.Admitted, this.gen, now);
    fl.touch(i, now, p.tcpFlags, false);
    return this.allow(Verdict.AllowRule, p, now);
  }

  /** Re-checks an admitted/revoked flow's forward tuple against the current filter. */
  private revalidate(i: number): void {
    const fl = this.flows;
    const kw = fl.keyWords;
    const b = i * KW;
    const k0 = kw[b]!;
    const ok = this.current.matchTuple(k0 & 255, (k0 >>> 8) & 255, kw, b + 1, b + 5, kw[b + 9]! & 0xffff);
    fl.setOrigin(i, ok ? FlowOrigin.Admitted : FlowOrigin.Revoked, this.gen);
  }

  /** Is the packet an ICMP error quotes (sent to this error's destination) part of a live tracked flow? */
  private related(p: ParsedPacket, now: number): boolean {
    const a = p.addr;
    const words = p.family === 4 ? 1 : 4;
    for (let w = 0; w < words; w++) if (a[8 + w] !== a[4 + w]) return false;
    const fl = this.flows;
    fl.key(KT_FLOW, p.family, p.innerProto, a, 8, 12, p.innerSport, p.innerDport);
    if (this.live(fl.find(now))) return true;
    fl.key(KT_FLOW, p.family, p.innerProto, a, 12, 8, p.innerDport, p.innerSport);
    return this.live(fl.find(now));
  }

  private live(i: number): boolean {
    if (i < 0) return false;
    const fl = this.flows;
    if (fl.originOf(i) === FlowOrigin.Local) return true;
    if (this.stale(fl.genOf(i))) this.revalidate(i);
    return fl.originOf(i) === FlowOrigin.Admitted;
  }

  private allow(v: Verdict, p: ParsedPacket, now: number): boolean {
    if (p.firstFragment) {
      const fl = this.flows;
      fl.key(KT_FRAG, p.family, p.fragProto, p.addr, 0, 4, p.fragId >>> 16, p.fragId & 0xffff);
      const i = fl.find(now);
      if (i >= 0) fl.touch(i, now, 0, false);
      else fl.insert(FlowOrigin.Admitted, this.gen, now);
    }
    this.lastVerdict = v;
    const c = this.counters;
    switch (v) {
      case Verdict.AllowRule:
        c.filter_allow_rule++;
        break;
      case Verdict.AllowFlow:
        c.filter_allow_flow++;
        break;
      case Verdict.AllowReply:
        c.filter_allow_reply++;
        break;
      case Verdict.AllowRelated:
        c.filter_allow_related++;
        break;
      default:
        c.filter_allow_fragment++;
    }
    return true;
  }

  private drop(v: Verdict): boolean {
    this.lastVerdict = v;
    const c = this.counters;
    switch (v) {
      case Verdict.DropMalformed:
        c.filter_drop_malformed++;
        break;
      case Verdict.DropDestination:
        c.filter_drop_destination++;
        break;
      case Verdict.DropRevoked:
        c.filter_drop_revoked++;
        break;
      case Verdict.DropFragment:
        c.filter_drop_fragment++;
        break;
      default:
        c.filter_drop_no_rule++;
    }
    return false;
  }
}
