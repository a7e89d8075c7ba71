// Socket addresses as the batched I/O layer's meta table holds them (family,
// port, 4 or 16 address bytes in int32 words) ↔ the address strings the
// engines key their peers by. Both directions are cached so that a datagram
// from (or to) a known address costs a few integer compares and no allocation:
// `AddrNames` is a fixed open-addressed table (words → string), `AddrWords` a
// bounded Map (string → words). Strings are formatted exactly as node:dgram's
// rinfo.address (inet_ntop: dotted quad; RFC 5952 IPv6 with the longest run of
// two or more zero groups compressed), so both I/O paths name a peer alike.

import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';

/**
 * A configured peer host (literal address or DNS name) as the address and
 * family to send to; a name is looked up. Rejects when the lookup fails.
 */
export async function resolveHost(host: string): Promise<{ addr: string; family: 4 | 6 }> {
  const kind = isIP(host);
  if (kind !== 0) return { addr: host, family: kind === 6 ? 6 : 4 };
  const r = await lookup(host);
  return { addr: r.address, family: r.family === 6 ? 6 : 4 };
}

/** The table's layout: [len, port, family, a0, a1, a2, a3, spare] per slot (native/udp.c). */
export const META_WORDS = 8;

const NAME_SLOTS = 4096; // power of two

export class AddrNames {
  private readonly keys = new Int32Array(NAME_SLOTS * 5);
  private readonly names: (string | null)[] = new Array<string | null>(NAME_SLOTS).fill(null);
  private readonly bytes: Uint8Array;
  misses = 0;

  /** `meta` is the table the names are read from (its bytes are formatted on a miss). */
  constructor(private readonly meta: Int32Array) {
    this.bytes = new Uint8Array(meta.buffer, meta.byteOffset, meta.byteLength);
  }

  /** The address string of slot `i` of the meta table. */
  name(i: number): string {
    const m = this.meta;
    const o = i * META_WORDS;
    const fam = m[o + 2]!;
    const a0 = m[o + 3]!;
    const a1 = fam === 6 ? m[o + 4]! : 0;
    const a2 = fam === 6 ? m[o + 5]! : 0;
    const a3 = fam === 6 ? m[o + 6]! : 0;
    let h = Math.imul(a0 ^ fam, 0x9e3779b1);
    h = Math.imul(h ^ a1, 0x85ebca77);
    h = Math.imul(h ^ a2, 0xc2b2ae3d);
    h = Math.imul(h ^ a3, 0x27d4eb2f);
    const idx = (h ^ (h >>> 15)) & (NAME_SLOTS - 1);
    const k = this.keys;
    const ko = idx * 5;
    const cached = this.names[idx];
    if (cached !== null && k[ko] === fam && k[ko + 1] === a0 && k[ko + 2] === a1 && k[ko + 3] === a2 && k[ko + 4] === a3) return cached;
    this.misses++;
    const s = formatAddr(this.bytes, (o + 3) * 4, fam === 6 ? 6 : 4);
    k[ko] = fam;
    k[ko + 1] = a0;
    k[ko + 2] = a1;
    k[ko + 3] = a2;
    k[ko + 4] = a3;
    this.names[idx] = s;
    return s;
  }
}

/** inet_ntop of 4 or 16 bytes at `off`. */
export function formatAddr(b: Uint8Array, off: number, family: 4 | 6): string {
  if (family === 4) return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((b[off + 2 * i]! << 8) | b[off + 2 * i + 1]!);
  // IPv4-mapped / compatible forms, as inet_ntop prints them.
  if (g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) {
    return `::ffff:${b[off + 12]}.${b[off + 13]}.${b[off + 14]}.${b[off + 15]}`;
  }
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (bestLen < 2) return g.map((x) => x.toString(16)).join(':');
  const head = g.slice(0, best).map((x) => x.toString(16)).join(':');
  const tail = g.slice(best + bestLen).map((x) => x.toString(16)).join(':');
  return `${head}::${tail}`;
}

/** Parses a literal IPv4 or IPv6 address into 4 or 16 bytes; null: not one. */
export function parseAddr(s: string): { family: 4 | 6; bytes: Uint8Array } | null {
  const v4 = (t: string, out: Uint8Array, off: number): boolean => {
    const p = t.split('.');
    if (p.length !== 4) return false;
    for (let i = 0; i < 4; i++) {
      if (!/^\d{1,3}$/.test(p[i]!)) return false;
      const n = Number(p[i]);
      if (n > 255) return false;
      out[off + i] = n;
    }
    return true;
  };
  if (!s.includes(':')) {
    const out = new Uint8Array(4);
    return v4(s, out, 0) ? { family: 4, bytes: out } : null;
  }
  const out = new Uint8Array(16);
  let t = s;
  const pct = t.indexOf('%');
  if (pct >= 0) t = t.slice(0, pct);
  const halves = t.split('::');
  if (halves.length > 2) return null;
  const groups = (h: string): string[] => (h === '' ? [] : h.split(':'));
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  const words: number[] = [];
  const push = (list: string[], isLast: boolean): boolean => {
    for (let i = 0; i < list.length; i++) {
      const x = list[i]!;
      if (isLast && i === list.length - 1 && x.includes('.')) {
        const b = new Uint8Array(4);
        if (!v4(x, b, 0)) return false;
        words.push((b[0]! << 8) | b[1]!, (b[2]! << 8) | b[3]!);
        continue;
      }
      if (!/^[0-9a-fA-F]{1,4}$/.test(x)) return false;
      words.push(parseInt(x, 16));
    }
    return true;
  };
  if (!push(head, halves.length === 1)) return null;
  const headLen = words.length;
  if (!push(tail, true)) return null;
  if (halves.length === 1 && words.length !== 8) return null;
  if (halves.length === 2 && words.length > 7) return null;
  const tailWords = words.slice(headLen);
  const all = [...words.slice(0, headLen), ...new Array<number>(8 - words.length).fill(0), ...tailWords];
  for (let i = 0; i < 8; i++) {
    out[2 * i] = all[i]! >> 8;
    out[2 * i + 1] = all[i]! & 255;
  }
  return { family: 6, bytes: out };
}

const WORDS_CACHE_MAX = 8192;

/** Address string → its 4 meta words (bytes as int32), cached. */
export class AddrWords {
  private readonly map = new Map<string, Int32Array>();

  words(addr: string): Int32Array | null {
    const hit = this.map.get(addr);
    if (hit !== undefined) return hit;
    const p = parseAddr(addr);
    if (p === null) return null;
    const b = new Uint8Array(16);
    b.set(p.bytes);
    const w = new Int32Array(b.buffer);
    if (this.map.size >= WORDS_CACHE_MAX) this.map.clear();
    this.map.set(addr, w);
    return w;
  }
}
