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
    if (first === 0) return { ok: false, error: "first port must be >0, or use '*' for wildcard" };
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
  const known = PROTOCOLS[lower];
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

/** Go time.Duration text ("200h0m0s", "1h30m0s", "45s"). */
export function formatGoDuration(seconds: number): string {
  if (seconds === 0) return '0s';
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h > 0) return `${h}h${m}m${s}s`;
  if (m > 0) return `${m}m${s}s`;
  return `${s}s`;
}

/** Parses Go-style durations ("12h", "1h30m", "90s"); whole seconds. */
export function parseGoDuration(text: string): number | null {
  if (!/^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$/.test(text)) return null;
  let total = 0;
  for (const m of text.matchAll(/([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)/g)) {
    const n = Number(m[1]);
    const unit = m[2];
    total += unit === 'h' ? n * 3600 : unit === 'm' ? n * 60 : unit === 's' ? n : n / 1000;
  }
  return Math.round(total);
}
