// Longest-prefix forwarding table for the data plane.
//
// Rules are (src, dst, action, target). A packet is matched on its destination by
// longest prefix; among rules with the same destination prefix the most specific
// source prefix that contains the packet's source wins; if no source matches, the
// next shorter destination is tried. The table is immutable once built: the data
// plane swaps a whole new table in one assignment, so no packet ever sees half a
// table.
//
// Build flattens the (laminar) destination prefixes into disjoint address
// intervals; each interval carries its candidate rules already in lookup order.
// Lookup is a binary search over typed arrays plus a short candidate walk: no
// allocation per packet.

import {
  type Family,
  type Prefix,
  formatPrefix,
  familyMax,
  prefixLast,
  prefixMask,
} from './addr.js';

export type RuleAction = 'forward' | 'drop';

export interface FwdRule {
  readonly src: Prefix;
  readonly dst: Prefix;
  readonly action: RuleAction;
  /** 0 = the local TUN; otherwise a peer id. Ignored for drop. */
  readonly target: number;
}

/** Lookup order: longer destination first, then longer source, then address order. */
export function compareRules(a: FwdRule, b: FwdRule): number {
  if (a.dst.family !== b.dst.family) return a.dst.family - b.dst.family;
  if (a.dst.bits !== b.dst.bits) return b.dst.bits - a.dst.bits;
  if (a.dst.addr !== b.dst.addr) return a.dst.addr < b.dst.addr ? -1 : 1;
  if (a.src.bits !== b.src.bits) return b.src.bits - a.src.bits;
  if (a.src.addr !== b.src.addr) return a.src.addr < b.src.addr ? -1 : 1;
  return 0;
}

export function formatRule(r: FwdRule): string {
  const base = `policy add --src ${formatPrefix(r.src)} --dst ${formatPrefix(r.dst)} --action ${r.action}`;
  return r.action === 'forward' ? `${base} --target ${r.target}` : base;
}

const WORDS = { 4: 1, 6: 4 } as const;

function toWords(v: bigint, family: Family, out: Uint32Array, at: number): void {
  const n = WORDS[family];
  for (let i = 0; i < n; i++) {
    out[at + i] = Number((v >> BigInt(32 * (n - 1 - i))) & 0xffffffffn);
  }
}

/** One address family's flattened interval table. */
class FamilyTable {
  readonly words: number;
  /** Interval start addresses, `words` u32 per interval, ascending. */
  readonly starts: Uint32Array;
  readonly candOff: Uint32Array;
  readonly candLen: Uint32Array;
  readonly cand: Int32Array;
  readonly count: number;

  constructor(
    readonly family: Family,
    rules: readonly FwdRule[],
    indices: number[],
  ) {
    this.words = WORDS[family];
    const max = familyMax(family);
    // Boundaries: each rule's first address and the address after its last one.
    const bset = new Set<bigint>([0n]);
    for (const i of indices) {
      const r = rules[i]!;
      bset.add(r.dst.addr);
      const last = prefixLast(r.dst);
      if (last < max) bset.add(last + 1n);
    }
    const bounds = [...bset].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    // Sweep: rules sorted by start; active = rules covering the current boundary.
    const byStart = [...indices].sort((a, b) => {
      const x = rules[a]!.dst.addr;
      const y = rules[b]!.dst.addr;
      return x < y ? -1 : x > y ? 1 : 0;
    });
    let next = 0;
    let active: number[] = [];
    const starts = new Uint32Array(bounds.length * this.words);
    const candOff = new Uint32Array(bounds.length);
    const candLen = new Uint32Array(bounds.length);
    const cand: number[] = [];
    bounds.forEach((b, k) => {
      while (next < byStart.length && rules[byStart[next]!]!.dst.addr <= b) active.push(byStart[next++]!);
      active = active.filter((i) => prefixLast(rules[i]!.dst) >= b);
      const here = active.slice().sort((x, y) => compareRules(rules[x]!, rules[y]!) || x - y);
      toWords(b, family, starts, k * this.words);
      candOff[k] = cand.length;
      candLen[k] = here.length;
      cand.push(...here);
    });
    this.starts = starts;
    this.candOff = candOff;
    this.candLen = candLen;
    this.cand = Int32Array.from(cand);
    this.count = bounds.length;
  }
}

/**
 * Immutable forwarding table. `lookup4`/`lookup6` return the index of the
 * matching rule in `rules` (lookup order) or -1.
 */
export class ForwardingTable {
  readonly rules: readonly FwdRule[];
  private readonly v4: FamilyTable;
  private readonly v6: FamilyTable;
  // Per rule: source prefix as words + mask words for a fast containment test.
  private readonly srcAddr: Uint32Array;
  private readonly srcMask: Uint32Array;

  private constructor(rules: FwdRule[]) {
    this.rules = rules;
    const v4: number[] = [];
    const v6: number[] = [];
    rules.forEach((r, i) => (r.dst.family === 4 ? v4 : v6).push(i));
    this.v4 = new FamilyTable(4, rules, v4);
    this.v6 = new FamilyTable(6, rules, v6);
    this.srcAddr = new Uint32Array(rules.length * 4);
    this.srcMask = new Uint32Array(rules.length * 4);
    rules.forEach((r, i) => {
      toWords(r.src.addr, r.src.family, this.srcAddr, i * 4);
      toWords(prefixMask(r.src.family, r.src.bits), r.src.family, this.srcMask, i * 4);
    });
  }

  /** Builds a table; a later rule with the same (src, dst) replaces an earlier one. */
  static build(rules: readonly FwdRule[]): ForwardingTable {
    const byKey = new Map<string, FwdRule>();
    for (const r of rules) {
      if (r.src.family !== r.dst.family) {
        throw new RangeError(`rule ${formatRule(r)} mixes IPv4 and IPv6`);
      }
      byKey.set(`${formatPrefix(r.src)} ${formatPrefix(r.dst)}`, r);
    }
    return new ForwardingTable([...byKey.values()].sort(compareRules));
  }

  static empty(): ForwardingTable {
    return new ForwardingTable([]);
  }

  get size(): number {
    return this.rules.length;
  }

  /** IPv4 lookup on host-order u32 addresses. */
  lookup4(dst: number, src: number): number {
    const t = this.v4;
    const starts = t.starts;
    let lo = 0;
    let hi = t.count - 1;
    dst >>>= 0;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (starts[mid]! <= dst) lo = mid;
      else hi = mid - 1;
    }
    const off = t.candOff[lo]!;
    const end = off + t.candLen[lo]!;
    for (let k = off; k < end; k++) {
      const ri = t.cand[k]!;
      if (((src & this.srcMask[ri * 4]!) >>> 0) === this.srcAddr[ri * 4]) return ri;
    }
    return -1;
  }

  /** Lookup for an IPv4 packet in `pkt` (header at offset 0). */
  lookupPacket4(pkt: Buffer): number {
    return this.lookup4(pkt.readUInt32BE(16), pkt.readUInt32BE(12));
  }

  /** Lookup for an IPv6 packet in `pkt` (header at offset 0): src at 8, dst at 24. */
  lookupPacket6(pkt: Buffer): number {
    const t = this.v6;
    const starts = t.starts;
    let lo = 0;
    let hi = t.count - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (cmp6(starts, mid * 4, pkt, 24) <= 0) lo = mid;
      else hi = mid - 1;
    }
    const off = t.candOff[lo]!;
    const end = off + t.candLen[lo]!;
    for (let k = off; k < end; k++) {
      const ri = t.cand[k]!;
      let ok = true;
      for (let w = 0; w < 4; w++) {
        if (((pkt.readUInt32BE(8 + w * 4) & this.srcMask[ri * 4 + w]!) >>> 0) !== this.srcAddr[ri * 4 + w]) {
          ok = false;
          break;
        }
      }
      if (ok) return ri;
    }
    return -1;
  }

  /** Lookup for any IP packet by its version nibble; -1 when none or not IP. */
  lookupPacket(pkt: Buffer, len: number): number {
    const v = pkt[0]! >> 4;
    if (v === 4 && len >= 20) return this.lookupPacket4(pkt);
    if (v === 6 && len >= 40) return this.lookupPacket6(pkt);
    return -1;
  }
}

/** Compares 4 words of `starts` at `at` with the 16 bytes of `pkt` at `off`. */
function cmp6(starts: Uint32Array, at: number, pkt: Buffer, off: number): number {
  for (let w = 0; w < 4; w++) {
    const a = starts[at + w]!;
    const b = pkt.readUInt32BE(off + w * 4);
    if (a !== b) return a < b ? -1 : 1;
  }
  return 0;
}

/**
 * A small set of prefixes tested against packet source addresses (the per-peer
 * allowed_src binding). Linear scan; peers have a handful of prefixes.
 */
export class PrefixMatcher {
  private readonly v4Addr: Uint32Array;
  private readonly v4Mask: Uint32Array;
  private readonly v6Addr: Uint32Array;
  private readonly v6Mask: Uint32Array;

  constructor(readonly prefixes: readonly Prefix[]) {
    const v4 = prefixes.filter((p) => p.family === 4);
    const v6 = prefixes.filter((p) => p.family === 6);
    this.v4Addr = new Uint32Array(v4.length);
    this.v4Mask = new Uint32Array(v4.length);
    v4.forEach((p, i) => {
      toWords(p.addr, 4, this.v4Addr, i);
      toWords(prefixMask(4, p.bits), 4, this.v4Mask, i);
    });
    this.v6Addr = new Uint32Array(v6.length * 4);
    this.v6Mask = new Uint32Array(v6.length * 4);
    v6.forEach((p, i) => {
      toWords(p.addr, 6, this.v6Addr, i * 4);
      toWords(prefixMask(6, p.bits), 6, this.v6Mask, i * 4);
    });
  }

  has4(a: number): boolean {
    for (let i = 0; i < this.v4Addr.length; i++) {
      if (((a & this.v4Mask[i]!) >>> 0) === this.v4Addr[i]) return true;
    }
    return false;
  }

  /** Tests the 16-byte IPv6 address in `buf` at `off`. */
  has6(buf: Buffer, off: number): boolean {
    const n = this.v6Addr.length / 4;
    outer: for (let i = 0; i < n; i++) {
      for (let w = 0; w < 4; w++) {
        if (((buf.readUInt32BE(off + w * 4) & this.v6Mask[i * 4 + w]!) >>> 0) !== this.v6Addr[i * 4 + w]) {
          continue outer;
        }
      }
      return true;
    }
    return false;
  }

  /** Tests the source address of the IP packet in `pkt`. */
  hasPacketSource(pkt: Buffer, len: number): boolean {
    const v = pkt[0]! >> 4;
    if (v === 4 && len >= 20) return this.has4(pkt.readUInt32BE(12));
    if (v === 6 && len >= 40) return this.has6(pkt, 8);
    return false;
  }
}
