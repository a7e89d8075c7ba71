// IP addresses and prefixes, IPv4 and IPv6, as exact integers (bigint) for the
// control plane and offline tools. The data plane uses the numeric fast paths in
// lpm.ts; everything here is pure and allocation is fine.

export type Family = 4 | 6;

export interface IPAddr {
  readonly family: Family;
  /** 32-bit (IPv4) or 128-bit (IPv6) unsigned value. */
  readonly value: bigint;
}

export interface Prefix {
  readonly family: Family;
  /** Network address, already masked unless the caller asked to keep host bits. */
  readonly addr: bigint;
  readonly bits: number;
}

export class AddrError extends Error {
  override name = 'AddrError';
}

export const familyBits = (f: Family): number => (f === 4 ? 32 : 128);
export const familyMax = (f: Family): bigint => (f === 4 ? 0xffffffffn : (1n << 128n) - 1n);

export function parseIPv4(s: string): bigint | null {
  const parts = s.split('.');
  if (parts.length !== 4) return null;
  let v = 0n;
  for (const p of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return null;
    const n = Number(p);
    if (n > 255) return null;
    v = (v << 8n) | BigInt(n);
  }
  return v;
}

export function parseIPv6(input: string): bigint | null {
  let s = input;
  const zone = s.indexOf('%');
  if (zone >= 0) return null; // zones have no meaning in an overlay
  // Embedded IPv4 tail (::ffff:1.2.3.4) becomes two hex groups.
  const lastColon = s.lastIndexOf(':');
  if (lastColon >= 0 && s.indexOf('.', lastColon) > lastColon) {
    const v4 = parseIPv4(s.slice(lastColon + 1));
    if (v4 === null) return null;
    s = `${s.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const dbl = s.indexOf('::');
  if (dbl !== s.lastIndexOf('::')) return null;
  const parseGroups = (t: string): number[] | null => {
    if (t === '') return [];
    const out: number[] = [];
    for (const g of t.split(':')) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return null;
      out.push(parseInt(g, 16));
    }
    return out;
  };
  let groups: number[];
  if (dbl >= 0) {
    const head = parseGroups(s.slice(0, dbl));
    const rest = parseGroups(s.slice(dbl + 2));
    if (!head || !rest) return null;
    const fill = 8 - head.length - rest.length;
    if (fill < 1) return null;
    groups = [...head, ...new Array<number>(fill).fill(0), ...rest];
  } else {
    const all = parseGroups(s);
    if (!all) return null;
    groups = all;
  }
  if (groups.length !== 8) return null;
  let v = 0n;
  for (const g of groups) v = (v << 16n) | BigInt(g);
  return v;
}

export function parseIP(s: string): IPAddr | null {
  if (s.includes(':')) {
    const v = parseIPv6(s);
    return v === null ? null : { family: 6, value: v };
  }
  const v = parseIPv4(s);
  return v === null ? null : { family: 4, value: v };
}

export function formatIPv4(v: bigint | number): string {
  const n = typeof v === 'bigint' ? Number(v) : v >>> 0;
  return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/** RFC 5952 canonical text. */
export function formatIPv6(v: bigint): string {
  const g: number[] = [];
  for (let i = 7; i >= 0; i--) g.push(Number((v >> BigInt(i * 16)) & 0xffffn));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const hex = (a: number[]): string => a.map((x) => x.toString(16)).join(':');
  if (bestStart < 0) return hex(g);
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLen))}`;
}

export function formatIP(a: IPAddr): string {
  return a.family === 4 ? formatIPv4(a.value) : formatIPv6(a.value);
}

export function prefixMask(f: Family, bits: number): bigint {
  const total = familyBits(f);
  if (bits === 0) return 0n;
  return (familyMax(f) >> BigInt(total - bits)) << BigInt(total - bits);
}

export interface ParsePrefixOptions {
  /** Reject prefixes with host bits set (e.g. 10.0.0.1/8) instead of masking them. */
  requireMasked?: boolean;
  /** Accept a bare address as a full-length prefix. Default true. */
  allowBare?: boolean;
}

/** Parses "a.b.c.d/n", "x::/n" or a bare address; throws AddrError with the fix. */
export function parsePrefix(s: string, opts: ParsePrefixOptions = {}): Prefix {
  const slash = s.indexOf('/');
  const ipText = slash >= 0 ? s.slice(0, slash) : s;
  const ip = parseIP(ipText);
  if (!ip) throw new AddrError(`"${s}" is not an IP prefix: expected an address like 10.0.0.0/24 or fd00::/64`);
  const max = familyBits(ip.family);
  let bits = max;
  if (slash >= 0) {
    const b = s.slice(slash + 1);
    if (!/^(0|[1-9][0-9]{0,2})$/.test(b) || Number(b) > max) {
      throw new AddrError(`"${s}" has an invalid prefix length: expected 0..${max}`);
    }
    bits = Number(b);
  } else if (opts.allowBare === false) {
    throw new AddrError(`"${s}" needs a prefix length, e.g. ${ipText}/${max}`);
  }
  const mask = prefixMask(ip.family, bits);
  const addr = ip.value & mask;
  if (opts.requireMasked && addr !== ip.value) {
    throw new AddrError(
      `"${s}" has host bits set: use ${formatPrefix({ family: ip.family, addr, bits })}`,
    );
  }
  return { family: ip.family, addr, bits };
}

export function tryParsePrefix(s: string, opts: ParsePrefixOptions = {}): Prefix | null {
  try {
    return parsePrefix(s, opts);
  } catch {
    return null;
  }
}

export function formatPrefix(p: Prefix): string {
  return `${formatIP({ family: p.family, value: p.addr })}/${p.bits}`;
}

export function prefixLast(p: Prefix): bigint {
  return p.addr | (familyMax(p.family) & ~prefixMask(p.family, p.bits));
}

export function prefixContainsIP(p: Prefix, a: IPAddr): boolean {
  return p.family === a.family && (a.value & prefixMask(p.family, p.bits)) === p.addr;
}

/** True when `inner` lies entirely inside `outer`. */
export function prefixContainsPrefix(outer: Prefix, inner: Prefix): boolean {
  return (
    outer.family === inner.family &&
    inner.bits >= outer.bits &&
    (inner.addr & prefixMask(outer.family, outer.bits)) === outer.addr
  );
}

export function prefixesOverlap(a: Prefix, b: Prefix): boolean {
  return prefixContainsPrefix(a, b) || prefixContainsPrefix(b, a);
}

export function prefixEqual(a: Prefix, b: Prefix): boolean {
  return a.family === b.family && a.bits === b.bits && a.addr === b.addr;
}

export function isDefaultRoute(p: Prefix): boolean {
  return p.bits === 0;
}

/** "host:port" / "[v6]:port" underlay endpoints. Host may be a name. */
export interface HostPort {
  host: string;
  port: number;
}

export function parseHostPort(s: string): HostPort | null {
  let host: string;
  let portText: string;
  if (s.startsWith('[')) {
    const end = s.indexOf(']');
    if (end < 0 || s[end + 1] !== ':') return null;
    host = s.slice(1, end);
    portText = s.slice(end + 2);
    if (parseIPv6(host) === null) return null;
  } else {
    const colon = s.lastIndexOf(':');
    if (colon <= 0) return null;
    host = s.slice(0, colon);
    portText = s.slice(colon + 1);
    if (host.includes(':')) return null; // bare IPv6 needs brackets
    if (!/^[A-Za-z0-9.-]+$/.test(host)) return null;
  }
  if (!/^[0-9]{1,5}$/.test(portText)) return null;
  const port = Number(portText);
  if (port < 1 || port > 65535) return null;
  return { host, port };
}

export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
