// Alias, port and protocol syntax of Tailscale policy files.
import { tryParsePrefix } from '../net/addr.js';
import type { Alias, AutogroupName, PortRange } from './types.js';

export const AUTOGROUPS: readonly AutogroupName[] = ['internet', 'member', 'nonroot', 'tagged', 'self', 'danger-all'];

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

export function parseAlias(text: string): Parsed<Alias> {
  if (text === '*') return { ok: true, value: { kind: 'wildcard' } };
  if (text.startsWith('autogroup:')) {
    const name = text.slice('autogroup:'.length) as AutogroupName;
    if (!AUTOGROUPS.includes(name)) {
      return {
        ok: false,
        error: `invalid autogroup: got ${JSON.stringify(text)}, must be one of [${AUTOGROUPS.map((a) => `autogroup:${a}`).join(' ')}]`,
      };
    }
    return { ok: true, value: { kind: 'autogroup', name } };
  }
  if (text.startsWith('group:')) return { ok: true, value: { kind: 'group', name: text } };
  if (text.startsWith('tag:')) return { ok: true, value: { kind: 'tag', name: text } };
  if (text.includes('@')) return { ok: true, value: { kind: 'user', name: text } };
  const p = tryParsePrefix(text);
  if (p) return { ok: true, value: { kind: 'prefix', prefix: p, text } };
  if (text === '') return { ok: false, error: 'alias must not be empty' };
  // A host name never holds a "/": this is a prefix that does not parse
  // (10.0.0.0/33), not the name of an undefined host.
  if (text.includes('/')) return { ok: false, error: `invalid prefix ${JSON.stringify(text)}` };
  return { ok: true, value: { kind: 'host', name: text } };
}

/** Tag name rules (after "tag:"): ASCII letter first, then letters, digits or dashes. */
export function tagNameError(tag: string): string | null {
  const name = tag.slice('tag:'.length);
  if (!/^[A-Za-z]/.test(name)) return "tag names must start with a letter, after 'tag:'";
  if (!/^[A-Za-z][A-Za-z0-9-]*$/.test(name)) return 'tag names can only contain letters, numbers, or dashes';
  return null;
}

export const ALL_PORTS: PortRange = Object.freeze({ First: 0, Last: 65535 });

/** "*", "22", "80-90", "80,443,8000-8080". */
export function parsePorts(spec: string): Parsed<PortRange[]> {
  if (spec === '*') return { ok: true, value: [ALL_PORTS] };
  const out: PortRange[] = [];
  for (const part of spec.split(',')) {
    const dash = part.indexOf('-');
    const firstText = dash >= 0 ? part.slice(0, dash) : part;
    const lastText = dash >= 0 ? part.slice(dash + 1) : part;
    if (!/^[0-9]{1,5}$/.test(firstText) || Number(firstText) > 65535) {
      return { ok: false, error: `port range ${JSON.stringify(part)}: invalid first integer` };
    }
    if (!/^[0-9]{1,5}$/.test(lastText) || Number(lastText) > 65535) {
      return { ok: false, error: `port range ${JSON.stringify(part)}: invalid last integer` };
    }
    const first = Number(firstText);
    const last = Number(lastText);
    if (first === 0) return { ok: false, error: `port range ${JSON.stringify(part)}: first port must be >0, or use '*' for wildcard` };
    if (last < first) {
      return { ok: false, error: `port range ${JSON.stringify(part)}: last port must not be below the first` };
    }
    // Frozen: compiled filters share these objects.
    out.push(Object.freeze({ First: first, Last: last }));
  }
  return { ok: true, value: out };
}

const PROTOCOLS: Record<string, number[]> = {
  icmp: [1], // IPv4 ICMP only, as in Tailscale; ICMPv6 is ipv6-icmp / icmpv6 / 58
  igmp: [2],
  ipv4: [4],
  'ip-in-ip': [4],
  tcp: [6],
  egp: [8],
  igp: [9],
  udp: [17],
  gre: [47],
  esp: [50],
  ah: [51],
  'ipv6-icmp': [58],
  icmpv6: [58],
  sctp: [132],
};

/** Protocols for which specific ports make sense. */
const PORTED = new Set([6, 17, 132]);

export function parseProto(text: string): Parsed<number[]> {
  const lower = text.toLowerCase();
  if (/^[0-9]{1,3}$/.test(text)) {
    const n = Number(text);
    if (n <= 255) return { ok: true, value: [n] };
  }
  const known = Object.hasOwn(PROTOCOLS, lower) ? PROTOCOLS[lower] : undefined;
  if (known) return { ok: true, value: known };
  return {
    ok: false,
    error: `proto name ${JSON.stringify(text)} not known; use protocol number 0-255 or protocol name (icmp, tcp, udp, etc.)`,
  };
}

export function protoSupportsPorts(proto: number[]): boolean {
  return proto.every((p) => PORTED.has(p));
}

export function isAllPorts(ports: PortRange[]): boolean {
  return ports.length === 1 && ports[0]!.First === 0 && ports[0]!.Last === 65535;
}

/**
 * Splits an ACL destination "alias:ports" at its last colon; IPv6 may be
 * bracketed: "[fd7a::1]:22" or "[fd00::]/64:22". null when there is no colon.
 */
export function splitHostPort(text: string): { host: string; ports: string } | null {
  if (text.startsWith('[')) {
    const end = text.indexOf(']');
    if (end > 0) {
      const inner = text.slice(1, end);
      let rest = text.slice(end + 1);
      let host = inner;
      if (rest.startsWith('/')) {
        const colon = rest.indexOf(':');
        if (colon < 0) return null;
        host = inner + rest.slice(0, colon);
        rest = rest.slice(colon);
      }
      if (!rest.startsWith(':')) return null;
      return { host, ports: rest.slice(1) };
    }
  }
  const colon = text.lastIndexOf(':');
  if (colon < 0) return null;
  return { host: text.slice(0, colon), ports: text.slice(colon + 1) };
}

const NS_PER: Record<string, bigint> = {
  ns: 1n,
  us: 1_000n,
  '\u00b5s': 1_000n,
  '\u03bcs': 1_000n,
  ms: 1_000_000n,
  s: 1_000_000_000n,
  m: 60_000_000_000n,
  h: 3_600_000_000_000n,
};
const MAX_DURATION = (1n << 63n) - 1n;

/**
 * A Go time.Duration string ("12h", "1h30m", "1.5s", "-2m", "0") in
 * nanoseconds, with the errors time.ParseDuration gives (Tailscale reports
 * them as they are).
 */
export function parseGoDuration(text: string): Parsed<bigint> {
  const invalid = { ok: false as const, error: `time: invalid duration ${JSON.stringify(text)}` };
  let s = text;
  let neg = false;
  if (s.startsWith('-') || s.startsWith('+')) {
    neg = s[0] === '-';
    s = s.slice(1);
  }
  if (s === '0') return { ok: true, value: 0n };
  if (s === '') return invalid;
  let total = 0n;
  while (s !== '') {
    const m = /^([0-9]*)(?:\.([0-9]*))?/.exec(s)!;
    const intPart = m[1]!;
    const frac = m[2];
    if (intPart === '' && (frac === undefined || frac === '')) return invalid;
    s = s.slice(m[0].length);
    const u = /^[^0-9.]*/.exec(s)![0];
    if (u === '') return { ok: false, error: `time: missing unit in duration ${JSON.stringify(text)}` };
    const unit = Object.hasOwn(NS_PER, u) ? NS_PER[u] : undefined;
    if (unit === undefined) return { ok: false, error: `time: unknown unit ${JSON.stringify(u)} in duration ${JSON.stringify(text)}` };
    s = s.slice(u.length);
    let v = BigInt(intPart === '' ? '0' : intPart) * unit;
    if (frac) v += (BigInt(frac) * unit) / 10n ** BigInt(frac.length);
    total += v;
    if (total > MAX_DURATION + (neg ? 1n : 0n)) return invalid;
  }
  return { ok: true, value: neg ? -total : total };
}

function fracText(v: bigint, digits: number): string {
  const t = v.toString().padStart(digits, '0').replace(/0+$/, '');
  return t === '' ? '' : `.${t}`;
}

/** Go's Duration.String(): "200h0m0s", "1h30m0s", "1m30s", "1.5s", "500ms", "0s", "-1h0m0s". */
export function formatGoDuration(ns: bigint): string {
  if (ns === 0n) return '0s';
  const sign = ns < 0n ? '-' : '';
  const u = ns < 0n ? -ns : ns;
  if (u < 1_000n) return `${sign}${u}ns`;
  if (u < 1_000_000n) return `${sign}${u / 1_000n}${fracText(u % 1_000n, 3)}\u00b5s`;
  if (u < 1_000_000_000n) return `${sign}${u / 1_000_000n}${fracText(u % 1_000_000n, 6)}ms`;
  const h = u / 3_600_000_000_000n;
  const m = (u / 60_000_000_000n) % 60n;
  const sec = `${(u / 1_000_000_000n) % 60n}${fracText(u % 1_000_000_000n, 9)}s`;
  if (h > 0n) return `${sign}${h}h${m}m${sec}`;
  if (m > 0n) return `${sign}${m}m${sec}`;
  return `${sign}${sec}`;
}
