// larktund's standalone configuration: the subnetra v1 JSON config plus the Larktun
// extensions (IPv6 and several interface addresses, lists of allowed_src, peers that
// only call in). Everything here is pure except loadConfig(), which reads the file.
//
// validateConfig() never stops at the first mistake: it walks the whole document and
// returns every problem it finds, each with a JSON path ($.peers[1].psk), a plain
// message saying what is wrong and what would be right, and — when the text is
// available (parseConfigText/loadConfig) — the line and column of the offending value.
//
// Severity: an "error" makes the config unusable (no Config is returned); a
// "warning" is reported but the Config is still returned. Warnings are kept for
// things that work but are probably not what the operator meant.
//
// Decision on local_tun_ip vs virtual_subnet (both given, same address family):
//  - an interface address OUTSIDE virtual_subnet is an error: the other nodes route
//    only the virtual subnet (or their remote_routes) towards the hub, so the address
//    is clearly inconsistent with the overlay and would be unreachable;
//  - an address inside it whose interface prefix is SHORTER than the virtual subnet
//    (10.0.0.2/16 in 10.0.0.0/24) is a warning: the kernel's connected route then
//    sends addresses outside the overlay into the TUN, where nothing forwards them;
//  - addresses of the other family (IPv6 next to an IPv4 virtual_subnet) are not
//    compared: virtual_subnet names one family only.
import { MAX_WORKERS } from '../dataplane/node-workers/count.js';
import { readFileSync, statSync } from 'node:fs';
import { parseTree, printParseErrorCode, type Node as JsonNode, type ParseError } from 'jsonc-parser';
import { MAX_JSON_DEPTH, findTooDeep } from '../json/depth.js';
import type { FwdRule } from '../net/lpm.js';
import {
  AddrError,
  familyBits,
  formatIP,
  formatPrefix,
  parseHostPort,
  parseIP,
  parseIPv6,
  parsePrefix,
  prefixContainsIP,
  prefixContainsPrefix,
  prefixEqual,
  prefixLast,
  prefixMask,
  prefixesOverlap,
  type Family,
  type HostPort,
  type IPAddr,
  type Prefix,
} from '../net/addr.js';

// ---------------------------------------------------------------------------
// Public types

export type Role = 'manual' | 'spoke' | 'hub';
export const ROLES: readonly Role[] = ['manual', 'spoke', 'hub'];

export const DEFAULT_LISTEN_PORT = 18020;
export const DEFAULT_MTU = 1400;
export const MIN_MTU = 68;
export const MAX_MTU = 1500;
/** IPv6 needs a link MTU of at least 1280 (RFC 8200); Linux drops v6 below it. */
export const MIN_MTU_IPV6 = 1280;
export const SPOKE_KEEPALIVE_SECS = 20;
export const PEER_NAME_MAX = 64;

/** An interface address: the host address with the length of its connected subnet. */
export interface TunAddr {
  addr: IPAddr;
  bits: number;
}

export interface PeerConfig {
  id: number;
  /** Operator label, metadata only ("" when unset). */
  name: string;
  /** Bootstrap underlay endpoint; null for a peer that only calls in. */
  endpoint: HostPort | null;
  allowedSrc: Prefix[];
  /** 32-byte pre-shared key of this link. */
  psk: Buffer;
}

export interface Config {
  role: Role;
  virtualSubnet: Prefix | null;
  localId: number;
  tunAddrs: TunAddr[];
  localRoutes: Prefix[];
  remoteRoutes: Prefix[];
  keepaliveSecs: number;
  mtu: number;
  listenPorts: number[];
  obfuscate: boolean;
  peers: PeerConfig[];
  /** Packet worker threads (1..MAX_WORKERS); null: not set (--workers, LARKTUN_WORKERS or the core count decide). */
  workers: number | null;
}

export type Severity = 'error' | 'warning';

export interface Problem {
  /** JSON path of the offending value, e.g. `$.peers[1].psk`; `$` for the whole file. */
  path: string;
  /** What is wrong and what would be right, in plain words. */
  message: string;
  severity: Severity;
  /** The config file the problem is in (as given by the caller). */
  file: string;
  /** 1-based position of the offending value or key, when the text is known. */
  line?: number;
  column?: number;
}

export interface ConfigResult {
  /** Present exactly when no problem has severity "error". */
  config?: Config;
  problems: Problem[];
}

/** One entry of the derived forwarding table; target 0 is the local TUN. */
/** A forwarding rule, as the data plane's table takes it. */
export type Rule = FwdRule;

export const TOP_LEVEL_KEYS = [
  'role',
  'virtual_subnet',
  'local_id',
  'local_tun_ip',
  'local_routes',
  'remote_routes',
  'keepalive_secs',
  'local_tun_mtu',
  'listen_ports',
  'listen_port',
  'obfuscate',
  'peers',
  'workers',
] as const;

export const PEER_KEYS = ['id', 'name', 'endpoint', 'allowed_src', 'psk'] as const;

// ---------------------------------------------------------------------------
// Problem collection

type Seg = string | number;

interface RawProblem {
  segs: Seg[];
  /** Point at the key itself (unknown/duplicate keys) rather than at its value. */
  onKey: boolean;
  severity: Severity;
  message: string;
}

class Collector {
  readonly list: RawProblem[] = [];
  error(segs: Seg[], message: string, onKey = false): void {
    this.list.push({ segs, onKey, severity: 'error', message });
  }
  warn(segs: Seg[], message: string, onKey = false): void {
    this.list.push({ segs, onKey, severity: 'warning', message });
  }
  get errorCount(): number {
    return this.list.filter((p) => p.severity === 'error').length;
  }
}

/** `$`, `$.peers[1].psk`, `$["odd key"]`. */
export function formatJsonPath(segs: readonly Seg[]): string {
  let out = '$';
  for (const s of segs) {
    if (typeof s === 'number') out += `[${s}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(s)) out += `.${s}`;
    else out += `[${JSON.stringify(s)}]`;
  }
  return out;
}

/**
 * `file:line:col: error: $.path: message` — the position is omitted when unknown,
 * and not repeated when the message already carries it (JSON syntax errors).
 */
export function formatProblem(p: Problem): string {
  const where = p.line !== undefined ? `${p.file}:${p.line}:${p.column ?? 1}` : p.file;
  if (p.line !== undefined && p.message.includes(where)) return `${p.severity}: ${p.message}`;
  return `${where}: ${p.severity}: ${p.path}: ${p.message}`;
}

export function hasErrors(problems: readonly Problem[]): boolean {
  return problems.some((p) => p.severity === 'error');
}

// ---------------------------------------------------------------------------
// Small helpers

const PSK_HINT = 'generate one with: openssl rand -hex 32';

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  switch (typeof v) {
    case 'string':
      return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 37)}...` : v)}`;
    case 'number':
      return `the number ${v}`;
    case 'boolean':
      return `${v}`;
    case 'object':
      return 'an object';
    default:
      return typeof v;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function has(obj: Record<string, unknown>, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(obj, key);
}

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}

function closest(key: string, known: readonly string[]): string | null {
  let best: string | null = null;
  let bestD = Infinity;
  const k = key.toLowerCase().replace(/-/g, '_');
  for (const cand of known) {
    const d = editDistance(k, cand);
    if (d < bestD) {
      bestD = d;
      best = cand;
    }
  }
  return best !== null && bestD <= Math.max(2, Math.floor(best.length / 3)) ? best : null;
}

function unknownKeyMessage(key: string, known: readonly string[]): string {
  const guess = closest(key, known);
  const hint = guess ? `; did you mean "${guess}"?` : '';
  return `unknown key "${key}"${hint} Known keys: ${known.join(', ')}`;
}

const anyPrefix = (f: Family): Prefix => ({ family: f, addr: 0n, bits: 0 });
const hostPrefix = (a: IPAddr): Prefix => ({ family: a.family, addr: a.value, bits: familyBits(a.family) });
/** The connected subnet of an interface address (10.0.0.2/24 → 10.0.0.0/24). */
export function tunSubnet(t: TunAddr): Prefix {
  return { family: t.addr.family, addr: t.addr.value & prefixMask(t.addr.family, t.bits), bits: t.bits };
}
export function formatTunAddr(t: TunAddr): string {
  return `${formatIP(t.addr)}/${t.bits}`;
}

function readInt(
  c: Collector,
  segs: Seg[],
  v: unknown,
  min: number,
  max: number,
  hint = '',
): number | null {
  if (typeof v !== 'number' || !Number.isInteger(v)) {
    c.error(segs, `must be a whole number ${min}..${max}, got ${describe(v)}${hint}`);
    return null;
  }
  if (v < min || v > max) {
    c.error(segs, `must be ${min}..${max}, got ${v}${hint}`);
    return null;
  }
  return v;
}

/** A masked CIDR prefix like "10.0.0.0/24" (prefix length required). */
function readCidr(c: Collector, segs: Seg[], v: unknown): Prefix | null {
  if (typeof v !== 'string') {
    c.error(segs, `must be a CIDR string like "10.0.0.0/24" or "fd00::/64", got ${describe(v)}`);
    return null;
  }
  try {
    return parsePrefix(v, { requireMasked: true, allowBare: false });
  } catch (e) {
    if (e instanceof AddrError) {
      c.error(segs, e.message);
      return null;
    }
    throw e;
  }
}

/** An interface address "10.0.0.2/24": host bits allowed (and expected). */
function readTunAddr(c: Collector, segs: Seg[], v: unknown): TunAddr | null {
  if (typeof v !== 'string') {
    c.error(segs, `must be an interface address like "10.0.0.2/24" or "fd00::2/64", got ${describe(v)}`);
    return null;
  }
  const slash = v.indexOf('/');
  const ipText = slash >= 0 ? v.slice(0, slash) : v;
  const addr = parseIP(ipText);
  if (!addr) {
    c.error(segs, `"${v}" is not an interface address: expected an address and prefix length like "10.0.0.2/24" or "fd00::2/64"`);
    return null;
  }
  const max = familyBits(addr.family);
  if (slash < 0) {
    const eg = addr.family === 4 ? `${ipText}/24` : `${ipText}/64`;
    c.error(segs, `"${v}" needs the prefix length of the overlay subnet, e.g. "${eg}"`);
    return null;
  }
  const lenText = v.slice(slash + 1);
  if (!/^(0|[1-9][0-9]{0,2})$/.test(lenText) || Number(lenText) < 1 || Number(lenText) > max) {
    c.error(segs, `"${v}" has an invalid prefix length: expected 1..${max}`);
    return null;
  }
  const bits = Number(lenText);
  const t: TunAddr = { addr, bits };
  if (addr.family === 4 && bits <= 30) {
    const net = tunSubnet(t);
    if (addr.value === net.addr || addr.value === prefixLast(net)) {
      const which = addr.value === net.addr ? 'network' : 'broadcast';
      const first = formatIP({ family: 4, value: net.addr + 1n });
      c.error(segs, `${formatIP(addr)} is the ${which} address of ${formatPrefix(net)}, not a host address; use one like ${first}/${bits}`);
      return null;
    }
  }
  return t;
}

function readCidrList(
  c: Collector,
  segs: Seg[],
  v: unknown,
  allowSingleString: boolean,
): { prefix: Prefix; segs: Seg[] }[] | null {
  if (allowSingleString && typeof v === 'string') {
    const p = readCidr(c, segs, v);
    return p ? [{ prefix: p, segs }] : [];
  }
  if (!Array.isArray(v)) {
    const shape = allowSingleString ? 'a CIDR string or an array of them' : 'an array of CIDR strings';
    c.error(segs, `must be ${shape}, e.g. ["10.0.0.0/24"], got ${describe(v)}`);
    return null;
  }
  const out: { prefix: Prefix; segs: Seg[] }[] = [];
  v.forEach((item, i) => {
    const s = [...segs, i];
    const p = readCidr(c, s, item);
    if (!p) return;
    const dup = out.find((o) => prefixEqual(o.prefix, p));
    if (dup) {
      c.error(s, `${formatPrefix(p)} is listed twice (also at ${formatJsonPath(dup.segs)}); remove one`);
      return;
    }
    out.push({ prefix: p, segs: s });
  });
  return out;
}

function canonicalEndpoint(hp: HostPort): string {
  const ip = parseIP(hp.host);
  const host = ip ? formatIP(ip) : hp.host.toLowerCase().replace(/\.$/, '');
  return `${host}#${hp.port}`;
}

/** Explains why an endpoint string is not "host:port" / "[v6]:port". */
function endpointProblem(s: string): string {
  const eg = 'e.g. "203.0.113.1:18020" or "[2001:db8::1]:18020"';
  if (s.trim() === '') return `is empty: give "host:port" (${eg}), or null for a peer that only calls in`;
  if (s !== s.trim()) return `"${s}" has spaces around it; write it as "${s.trim()}"`;
  if (s.startsWith('[')) {
    const end = s.indexOf(']');
    if (end < 0) return `"${s}" has no closing "]"; write IPv6 endpoints as "[2001:db8::1]:18020"`;
    const host = s.slice(1, end);
    if (parseIPv6(host) === null) return `"${host}" inside the brackets is not an IPv6 address`;
    if (s[end + 1] !== ':' || s.length === end + 2) return `"${s}" needs a port after the brackets, e.g. "[${host}]:18020"`;
    return `"${s}" has an invalid port: expected 1..65535 after "]:"`;
  }
  const colons = s.split(':').length - 1;
  if (colons === 0) return `"${s}" needs a port, e.g. "${s}:18020"`;
  if (colons > 1) {
    if (parseIPv6(s) !== null) return `"${s}" is a bare IPv6 address: put it in brackets and add a port, e.g. "[${s}]:18020"`;
    const last = s.lastIndexOf(':');
    const host = s.slice(0, last);
    if (parseIPv6(host) !== null) return `IPv6 endpoints need brackets: write "[${host}]${s.slice(last)}"`;
    return `"${s}" is not "host:port"; an IPv6 host must be in brackets, e.g. "[2001:db8::1]:18020"`;
  }
  const last = s.lastIndexOf(':');
  const host = s.slice(0, last);
  const port = s.slice(last + 1);
  if (host === '') return `"${s}" has no host before the port`;
  if (!/^[0-9]{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
    return `"${s}" has an invalid port "${port}": expected 1..65535`;
  }
  return `"${host}" is not an IP address or DNS name (${eg})`;
}

function hostNameProblem(host: string): string | null {
  if (parseIP(host)) return null;
  if (/^[0-9.]+$/.test(host)) return `"${host}" is not a valid IPv4 address`;
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  if (name.length > 253) return `DNS name "${host}" is longer than 253 characters`;
  for (const label of name.split('.')) {
    if (label === '') return `DNS name "${host}" has an empty label ("..")`;
    if (label.length > 63) return `DNS name "${host}" has a label longer than 63 characters`;
    if (label.startsWith('-') || label.endsWith('-')) return `DNS name "${host}" has a label starting or ending with "-"`;
  }
  return null;
}

// ---------------------------------------------------------------------------
// Validation

interface PeerDraft {
  index: number;
  id: number | null;
  name: string;
  endpoint: HostPort | null;
  endpointGiven: boolean;
  allowedSrc: { prefix: Prefix; segs: Seg[] }[];
  allowedSrcOk: boolean;
  psk: Buffer | null;
}

function peerLabel(p: PeerDraft): string {
  const base = p.id !== null ? `peer ${p.id}` : `peers[${p.index}]`;
  return p.name ? `${base} ("${p.name}")` : base;
}

function validatePeer(c: Collector, raw: unknown, index: number): PeerDraft | null {
  const base: Seg[] = ['peers', index];
  if (!isObject(raw)) {
    c.error(base, `each peer must be an object like {"id": 2, "endpoint": "203.0.113.2:18020", "allowed_src": "10.0.0.2/32", "psk": "<64 hex>"}, got ${describe(raw)}`);
    return null;
  }
  for (const key of Object.keys(raw)) {
    if (!(PEER_KEYS as readonly string[]).includes(key)) c.error([...base, key], unknownKeyMessage(key, PEER_KEYS), true);
  }
  const d: PeerDraft = {
    index,
    id: null,
    name: '',
    endpoint: null,
    endpointGiven: false,
    allowedSrc: [],
    allowedSrcOk: false,
    psk: null,
  };

  if (!has(raw, 'id')) c.error(base, 'is missing "id": the peer\'s node id, a whole number 1..65535');
  else d.id = readInt(c, [...base, 'id'], raw.id, 1, 65535);

  if (has(raw, 'name')) {
    const n = raw.name;
    if (typeof n !== 'string') c.error([...base, 'name'], `must be a string (a label shown by status), got ${describe(n)}`);
    else if (!/^[\x20-\x7e]*$/.test(n)) c.error([...base, 'name'], 'may contain only printable ASCII characters (letters, digits, punctuation, spaces)');
    else if (n.length > PEER_NAME_MAX) c.error([...base, 'name'], `is ${n.length} characters long; use at most ${PEER_NAME_MAX}`);
    else d.name = n;
  }

  if (has(raw, 'endpoint') && raw.endpoint !== null) {
    const e = raw.endpoint;
    const segs = [...base, 'endpoint'];
    d.endpointGiven = true;
    if (typeof e !== 'string') {
      c.error(segs, `must be "host:port" (e.g. "203.0.113.1:18020" or "[2001:db8::1]:18020") or null, got ${describe(e)}`);
    } else {
      const hp = parseHostPort(e);
      if (!hp) c.error(segs, endpointProblem(e));
      else {
        const bad = hostNameProblem(hp.host);
        if (bad) c.error(segs, bad);
        else d.endpoint = hp;
      }
    }
  }

  if (!has(raw, 'allowed_src')) {
    c.error(base, `is missing "allowed_src": the inner source addresses this peer may send from, e.g. "10.0.0.${d.id !== null && d.id < 255 ? d.id : 2}/32"`);
  } else {
    const before = c.errorCount;
    const list = readCidrList(c, [...base, 'allowed_src'], raw.allowed_src, true);
    if (list) {
      if (Array.isArray(raw.allowed_src) && raw.allowed_src.length === 0) {
        c.error([...base, 'allowed_src'], 'is empty: list at least one prefix this peer may send from');
      }
      d.allowedSrc = list;
      d.allowedSrcOk = c.errorCount === before;
      // Redundant entries inside one peer: harmless, but probably a typo.
      for (let i = 0; i < list.length; i++) {
        for (let j = 0; j < list.length; j++) {
          if (i !== j && prefixContainsPrefix(list[j]!.prefix, list[i]!.prefix) && !prefixEqual(list[i]!.prefix, list[j]!.prefix)) {
            c.warn(list[i]!.segs, `${formatPrefix(list[i]!.prefix)} is already inside ${formatPrefix(list[j]!.prefix)} of the same peer; it is redundant`);
            break;
          }
        }
      }
    }
  }

  if (!has(raw, 'psk')) {
    c.error(base, `is missing "psk": the 64-hex-character key of this link; ${PSK_HINT}`);
  } else {
    const segs = [...base, 'psk'];
    const k = raw.psk;
    if (typeof k !== 'string') c.error(segs, `must be a string of 64 hex characters (32 bytes), got ${describe(k)}; ${PSK_HINT}`);
    else if (k.length !== 64) c.error(segs, `must be 64 hex characters (32 bytes), got ${k.length} characters; ${PSK_HINT}`);
    else if (!/^[0-9a-fA-F]{64}$/.test(k)) {
      const at = k.search(/[^0-9a-fA-F]/);
      c.error(segs, `must contain only hex digits 0-9 and a-f, found "${k[at]}" at character ${at + 1}; ${PSK_HINT}`);
    } else if (/^0+$/.test(k)) c.error(segs, `is all zeros, which is not a secret; ${PSK_HINT}`);
    else {
      if (/^(.)\1*$/.test(k)) c.warn(segs, `is one character repeated, which looks like a placeholder; replace it before deploying (${PSK_HINT})`);
      d.psk = Buffer.from(k, 'hex');
    }
  }
  return d;
}

function validate(raw: unknown): { config?: Config; problems: RawProblem[] } {
  const c = new Collector();
  if (!isObject(raw)) {
    c.error([], `the config must be a JSON object like {"local_id": 1, "peers": [...]}, got ${describe(raw)}`);
    return { problems: c.list };
  }

  for (const key of Object.keys(raw)) {
    if ((TOP_LEVEL_KEYS as readonly string[]).includes(key)) continue;
    if (key === 'psk') {
      c.error([key], `there is no mesh-wide "psk": every link has its own key in peers[].psk (use a different one per peer; ${PSK_HINT})`, true);
    } else c.error([key], unknownKeyMessage(key, TOP_LEVEL_KEYS), true);
  }

  // role
  let role: Role | null = 'manual';
  if (has(raw, 'role')) {
    const r = raw.role;
    if (typeof r === 'string' && (ROLES as readonly string[]).includes(r)) role = r as Role;
    else {
      role = null;
      c.error(['role'], `must be one of "manual", "spoke", "hub", got ${describe(r)}`);
    }
  }

  // virtual_subnet
  let virtualSubnet: Prefix | null = null;
  if (has(raw, 'virtual_subnet') && raw.virtual_subnet !== null) {
    virtualSubnet = readCidr(c, ['virtual_subnet'], raw.virtual_subnet);
    if (virtualSubnet && virtualSubnet.bits === 0) {
      c.error(['virtual_subnet'], `${formatPrefix(virtualSubnet)} is every address; the overlay needs its own private range such as 10.0.0.0/24`);
      virtualSubnet = null;
    }
  }
  const virtualSubnetGiven = has(raw, 'virtual_subnet') && raw.virtual_subnet !== null;

  // local_id
  let localId: number | null = null;
  if (!has(raw, 'local_id')) c.error([], 'is missing "local_id": this node\'s id, a whole number 1..65535 unique in the mesh');
  else localId = readInt(c, ['local_id'], raw.local_id, 1, 65535);

  // local_tun_ip: string or (extension) array of strings
  const tunAddrs: { t: TunAddr; segs: Seg[] }[] = [];
  if (has(raw, 'local_tun_ip') && raw.local_tun_ip !== null) {
    const v = raw.local_tun_ip;
    const items: { v: unknown; segs: Seg[] }[] = Array.isArray(v)
      ? v.map((x, i) => ({ v: x, segs: ['local_tun_ip', i] }))
      : [{ v, segs: ['local_tun_ip'] }];
    if (!Array.isArray(v) && typeof v !== 'string') {
      c.error(['local_tun_ip'], `must be an interface address like "10.0.0.2/24" (or an array of them for IPv4 + IPv6), got ${describe(v)}`);
    } else {
      for (const it of items) {
        const t = readTunAddr(c, it.segs, it.v);
        if (!t) continue;
        const dup = tunAddrs.find((o) => o.t.addr.family === t.addr.family && o.t.addr.value === t.addr.value);
        if (dup) {
          c.error(it.segs, `${formatIP(t.addr)} is listed twice (also at ${formatJsonPath(dup.segs)}); remove one`);
          continue;
        }
        const clash = tunAddrs.find((o) => prefixesOverlap(tunSubnet(o.t), tunSubnet(t)));
        if (clash) {
          c.error(it.segs, `${formatTunAddr(t)} overlaps ${formatTunAddr(clash.t)} at ${formatJsonPath(clash.segs)}; give each address its own subnet`);
          continue;
        }
        tunAddrs.push({ t, segs: it.segs });
      }
    }
  }

  // local_routes / remote_routes
  let localRoutes: { prefix: Prefix; segs: Seg[] }[] = [];
  if (has(raw, 'local_routes') && raw.local_routes !== null) {
    localRoutes = readCidrList(c, ['local_routes'], raw.local_routes, false) ?? [];
    localRoutes = localRoutes.filter((r) => {
      if (r.prefix.bits !== 0) return true;
      c.error(r.segs, `${formatPrefix(r.prefix)} as a local route would deliver every destination to this host; list the networks behind it instead, e.g. "192.168.10.0/24"`);
      return false;
    });
  }
  let remoteRoutes: { prefix: Prefix; segs: Seg[] }[] = [];
  if (has(raw, 'remote_routes') && raw.remote_routes !== null) {
    remoteRoutes = readCidrList(c, ['remote_routes'], raw.remote_routes, false) ?? [];
  }

  // keepalive_secs
  let keepaliveSecs: number | null = role === 'spoke' ? SPOKE_KEEPALIVE_SECS : 0;
  if (has(raw, 'keepalive_secs')) {
    const k = raw.keepalive_secs;
    if (typeof k !== 'number' || !Number.isSafeInteger(k) || k < 0) {
      c.error(['keepalive_secs'], `must be a whole number of seconds >= 0 (0 turns keepalive off), got ${describe(k)}`);
      keepaliveSecs = null;
    } else keepaliveSecs = k;
    if (role === 'spoke' && k === 0) {
      c.warn(['keepalive_secs'], 'is 0 on a spoke: behind NAT the hub loses the way back once the NAT mapping expires; omit it to use 20');
    }
  }

  // workers
  let workers: number | null = null;
  if (has(raw, 'workers') && raw.workers !== null) {
    workers = readInt(c, ['workers'], raw.workers, 1, MAX_WORKERS, '; 1 runs the packet engine on the main thread, omit it for one per core');
  }

  // local_tun_mtu
  let mtu: number | null = DEFAULT_MTU;
  if (has(raw, 'local_tun_mtu')) {
    mtu = readInt(c, ['local_tun_mtu'], raw.local_tun_mtu, MIN_MTU, MAX_MTU, `; ${DEFAULT_MTU} suits a 1500-byte underlay`);
  }
  if (mtu !== null && mtu < MIN_MTU_IPV6) {
    const v6 = tunAddrs.find((a) => a.t.addr.family === 6);
    if (v6) {
      c.error(['local_tun_mtu'], `is ${mtu}, but the TUN gets the IPv6 address ${formatTunAddr(v6.t)} and IPv6 needs an MTU of at least ${MIN_MTU_IPV6}`);
    }
  }

  // listen_ports / listen_port
  let listenPorts: number[] | null = [DEFAULT_LISTEN_PORT];
  let portsList: number[] | null = null;
  let portSingle: number | null = null;
  if (has(raw, 'listen_ports')) {
    const v = raw.listen_ports;
    if (!Array.isArray(v)) {
      c.error(['listen_ports'], `must be an array of UDP ports like [18020], got ${describe(v)}`);
      listenPorts = null;
    } else if (v.length === 0) {
      c.error(['listen_ports'], `is empty: list at least one UDP port, e.g. [${DEFAULT_LISTEN_PORT}], or omit it for the default`);
      listenPorts = null;
    } else {
      const ports: number[] = [];
      let ok = true;
      v.forEach((p, i) => {
        const n = readInt(c, ['listen_ports', i], p, 1, 65535);
        if (n === null) ok = false;
        else if (ports.includes(n)) {
          c.error(['listen_ports', i], `port ${n} is listed twice (also at $.listen_ports[${v.indexOf(p)}]); remove one`);
          ok = false;
        } else ports.push(n);
      });
      portsList = ok ? ports : null;
      listenPorts = portsList;
    }
  }
  if (has(raw, 'listen_port')) {
    portSingle = readInt(c, ['listen_port'], raw.listen_port, 1, 65535);
    if (portSingle === null) listenPorts = null;
    else if (!has(raw, 'listen_ports')) listenPorts = [portSingle];
    else if (portsList && !portsList.includes(portSingle)) {
      c.error(['listen_port'], `${portSingle} conflicts with listen_ports [${portsList.join(', ')}]; give only one of listen_port and listen_ports`);
    }
  }

  // obfuscate
  let obfuscate = true;
  if (has(raw, 'obfuscate')) {
    if (typeof raw.obfuscate !== 'boolean') c.error(['obfuscate'], `must be true or false, got ${describe(raw.obfuscate)}`);
    else obfuscate = raw.obfuscate;
  }

  // peers
  const peers: PeerDraft[] = [];
  let peersOk = true;
  if (has(raw, 'peers') && raw.peers !== null) {
    if (!Array.isArray(raw.peers)) {
      c.error(['peers'], `must be an array of peer objects, got ${describe(raw.peers)}`);
      peersOk = false;
    } else {
      raw.peers.forEach((p, i) => {
        const d = validatePeer(c, p, i);
        if (d) peers.push(d);
        else peersOk = false;
      });
    }
  }

  // ---- cross-peer checks
  const seenIds = new Map<number, PeerDraft>();
  const seenEndpoints = new Map<string, PeerDraft>();
  const seenPsks = new Map<string, PeerDraft>();
  const seenNames = new Map<string, PeerDraft>();
  for (const p of peers) {
    const at = (k: string): Seg[] => ['peers', p.index, k];
    if (p.id !== null) {
      if (localId !== null && p.id === localId) {
        c.error(at('id'), `${p.id} is this node's own local_id; a peer needs a different id`);
      }
      const other = seenIds.get(p.id);
      if (other) c.error(at('id'), `id ${p.id} is already used by ${peerLabel(other)} at $.peers[${other.index}]; peer ids must be unique`);
      else seenIds.set(p.id, p);
    }
    if (p.endpoint) {
      const key = canonicalEndpoint(p.endpoint);
      const other = seenEndpoints.get(key);
      if (other) {
        c.error(at('endpoint'), `the same endpoint as ${peerLabel(other)} at $.peers[${other.index}].endpoint; every peer must have its own host:port`);
      } else seenEndpoints.set(key, p);
    }
    if (p.psk) {
      const key = p.psk.toString('hex');
      const other = seenPsks.get(key);
      if (other) {
        c.error(at('psk'), `the same key as ${peerLabel(other)} at $.peers[${other.index}].psk; sharing a key across links is rejected, give every link its own (${PSK_HINT})`);
      } else seenPsks.set(key, p);
    }
    if (p.name) {
      const other = seenNames.get(p.name);
      if (other) c.warn(at('name'), `"${p.name}" is also the name of peer at $.peers[${other.index}]; status output will be ambiguous`);
      else seenNames.set(p.name, p);
    }
  }

  // ---- local_tun_ip vs virtual_subnet (see the decision at the top of the file)
  if (virtualSubnet) {
    for (const { t, segs } of tunAddrs) {
      if (t.addr.family !== virtualSubnet.family) continue;
      if (!prefixContainsIP(virtualSubnet, t.addr)) {
        c.error(segs, `${formatIP(t.addr)} is outside virtual_subnet ${formatPrefix(virtualSubnet)}; the overlay address must be inside the virtual subnet, e.g. ${formatIP({ family: t.addr.family, value: virtualSubnet.addr + 2n })}/${virtualSubnet.bits}`);
      } else if (t.bits < virtualSubnet.bits) {
        c.warn(segs, `/${t.bits} is wider than virtual_subnet ${formatPrefix(virtualSubnet)}: the TUN's connected route would also capture addresses outside the overlay; use ${formatIP(t.addr)}/${virtualSubnet.bits}`);
      }
    }
  }

  // ---- role-specific checks
  if (role === 'spoke' && peersOk) {
    if (peers.length !== 1) {
      const ids = peers.map((p) => (p.id !== null ? String(p.id) : `peers[${p.index}]`));
      const found = peers.length === 0 ? 'found none' : `found ${peers.length} (ids ${ids.join(', ')})`;
      c.error(has(raw, 'peers') ? ['peers'] : [], `a spoke has exactly one peer, its hub; ${found}`);
    } else {
      const hub = peers[0]!;
      if (!hub.endpointGiven) {
        c.error(['peers', 0], `is the hub of this spoke and needs an "endpoint" to dial, e.g. "203.0.113.1:${DEFAULT_LISTEN_PORT}"`);
      }
      // Replies from remote networks arrive from the hub with those sources.
      if (hub.allowedSrcOk) {
        const remotes = remoteRoutes.length ? remoteRoutes : virtualSubnet ? [{ prefix: virtualSubnet, segs: ['virtual_subnet'] as Seg[] }] : [];
        for (const r of remotes) {
          if (r.prefix.bits === 0) continue;
          if (!hub.allowedSrc.some((a) => prefixContainsPrefix(a.prefix, r.prefix))) {
            c.warn(r.segs, `${formatPrefix(r.prefix)} is routed to the hub, but the hub's allowed_src does not cover it, so replies from there will be dropped as spoofed; add it to $.peers[0].allowed_src`);
          }
        }
      }
    }
    if (localRoutes.length === 0 && tunAddrs.length === 0) {
      c.error([], 'a spoke needs something to deliver locally: give "local_tun_ip" (e.g. "10.0.0.2/24") or "local_routes" (e.g. ["192.168.10.0/24"])');
    }
    if (remoteRoutes.length === 0 && !virtualSubnet && !virtualSubnetGiven) {
      c.error([], 'a spoke without "remote_routes" needs "virtual_subnet" (e.g. "10.0.0.0/24"): it is what the spoke sends to the hub');
    }
    const locals = localRoutes.length
      ? localRoutes
      : tunAddrs.map((a) => ({ prefix: hostPrefix(a.t.addr), segs: a.segs }));
    for (const r of remoteRoutes) {
      const same = locals.find((l) => prefixEqual(l.prefix, r.prefix));
      if (same) c.error(r.segs, `${formatPrefix(r.prefix)} is both a local target (${formatJsonPath(same.segs)}) and a remote route; a destination is either here or behind the hub`);
      if (r.prefix.bits === 0) {
        c.warn(r.segs, `${formatPrefix(r.prefix)} is forwarded to the hub, but the network plan installs no default route into the TUN (it would capture the tunnel's own UDP traffic); route it yourself with policy routing`);
      }
    }
  }

  if (role === 'hub' && peersOk) {
    if (peers.length === 0) c.error(has(raw, 'peers') ? ['peers'] : [], 'a hub needs at least one peer to relay between; found none');
    const claimed: { prefix: Prefix; segs: Seg[]; peer: PeerDraft }[] = [];
    for (const p of peers) {
      for (const a of p.allowedSrc) {
        if (a.prefix.bits === 0) {
          c.error(a.segs, `${formatPrefix(a.prefix)} is not allowed on a hub: the hub routes each peer's allowed_src to that peer, so it would send every destination to ${peerLabel(p)}; list that peer's own addresses, e.g. "10.0.0.${p.id !== null && p.id < 255 ? p.id : 2}/32"`);
          continue;
        }
        // Report every overlapping pair, each once, at the later of the two.
        for (const other of claimed) {
          if (other.peer === p || !prefixesOverlap(other.prefix, a.prefix)) continue;
          c.error(a.segs, `${formatPrefix(a.prefix)} of ${peerLabel(p)} overlaps ${formatPrefix(other.prefix)} of ${peerLabel(other.peer)} at ${formatJsonPath(other.segs)}; on a hub every address belongs to exactly one peer`);
        }
        claimed.push({ prefix: a.prefix, segs: a.segs, peer: p });
      }
    }
    for (const l of localRoutes) {
      const same = claimed.find((o) => prefixEqual(o.prefix, l.prefix));
      if (same) c.error(l.segs, `${formatPrefix(l.prefix)} is both a local route and the allowed_src of ${peerLabel(same.peer)}; a destination is either on the hub or behind one peer`);
    }
    for (const { t, segs } of tunAddrs) {
      const owner = claimed.find((o) => prefixContainsIP(o.prefix, t.addr));
      if (owner) c.error(segs, `the hub's own address ${formatIP(t.addr)} lies inside ${formatPrefix(owner.prefix)}, the allowed_src of ${peerLabel(owner.peer)}; pick an address no peer owns`);
    }
    if (tunAddrs.length > 0 && localRoutes.length === 0) {
      c.warn(tunAddrs[0]!.segs, `the hub has an overlay address but no local_routes, so nothing is delivered to it; add "local_routes": ["${formatPrefix(hostPrefix(tunAddrs[0]!.t.addr))}"] to reach the hub itself`);
    }
    if (remoteRoutes.length > 0) c.warn(['remote_routes'], 'is not used by a hub (it routes by each peer\'s allowed_src); remove it');
  }

  if (role === 'manual') {
    if (localRoutes.length > 0) c.warn(['local_routes'], 'is not used in the manual role (rules come from the control socket); set "role" to "spoke" or "hub" to derive them');
    if (remoteRoutes.length > 0) c.warn(['remote_routes'], 'is not used in the manual role (rules come from the control socket); set "role" to "spoke" or "hub" to derive them');
  }

  // ---- routing loops: a destination the plan routes into the TUN must not contain a
  // peer's own underlay address, or the tunnel would carry its own packets.
  if (role !== null && peersOk && c.errorCount === 0 && localId !== null && keepaliveSecs !== null && mtu !== null && listenPorts !== null) {
    const draft = buildConfig();
    const routed: Prefix[] = [
      ...draft.tunAddrs.map(tunSubnet),
      ...deriveRules(draft).filter((r) => r.target !== 0 && r.dst.bits !== 0).map((r) => r.dst),
    ];
    for (const p of peers) {
      if (!p.endpoint) continue;
      const ip = parseIP(p.endpoint.host);
      if (!ip) continue;
      const hit = routed.find((r) => prefixContainsIP(r, ip));
      if (hit) {
        c.error(['peers', p.index, 'endpoint'], `${formatIP(ip)} lies inside ${formatPrefix(hit)}, which is routed into the TUN; the tunnel would carry its own packets. Use the peer's underlay (public) address, outside the overlay`);
      }
    }
  }

  function buildConfig(): Config {
    return {
      role: role!,
      virtualSubnet,
      localId: localId!,
      tunAddrs: tunAddrs.map((a) => a.t),
      localRoutes: localRoutes.map((r) => r.prefix),
      remoteRoutes: remoteRoutes.map((r) => r.prefix),
      keepaliveSecs: keepaliveSecs!,
      workers,
      mtu: mtu!,
      listenPorts: listenPorts!,
      obfuscate,
      peers: peers.map((p) => ({
        id: p.id!,
        name: p.name,
        endpoint: p.endpoint,
        allowedSrc: p.allowedSrc.map((a) => a.prefix),
        psk: p.psk!,
      })),
    };
  }

  if (c.errorCount > 0) return { problems: c.list };
  return { config: buildConfig(), problems: c.list };
}

/**
 * Checks a parsed config document and returns every problem found. `config` is
 * present exactly when there is no error (warnings still allow it).
 */
export function validateConfig(raw: unknown, file: string): ConfigResult {
  const { config, problems } = validate(raw);
  const out: ConfigResult = {
    problems: problems.map((p) => ({ path: formatJsonPath(p.segs), message: p.message, severity: p.severity, file })),
  };
  if (config) out.config = config;
  return out;
}

// ---------------------------------------------------------------------------
// Derived forwarding table

/**
 * The forwarding table a role implies. spoke: its local targets (local_routes, or
 * the host address of each local_tun_ip) → TUN, then remote_routes (or the virtual
 * subnet) → the hub. hub: each peer's allowed_src → that peer, then local_routes →
 * TUN. manual: nothing (rules arrive over the control socket).
 */
export function deriveRules(cfg: Config): Rule[] {
  const rule = (dst: Prefix, target: number): Rule => ({ src: anyPrefix(dst.family), dst, action: 'forward', target });
  if (cfg.role === 'spoke') {
    const locals = cfg.localRoutes.length ? cfg.localRoutes : cfg.tunAddrs.map((t) => hostPrefix(t.addr));
    const remotes = cfg.remoteRoutes.length ? cfg.remoteRoutes : cfg.virtualSubnet ? [cfg.virtualSubnet] : [];
    const hub = cfg.peers[0];
    return [...locals.map((p) => rule(p, 0)), ...(hub ? remotes.map((p) => rule(p, hub.id)) : [])];
  }
  if (cfg.role === 'hub') {
    const out: Rule[] = [];
    for (const peer of cfg.peers) for (const p of peer.allowedSrc) out.push(rule(p, peer.id));
    for (const p of cfg.localRoutes) out.push(rule(p, 0));
    return out;
  }
  return [];
}

// ---------------------------------------------------------------------------
// Text and files

function lineCol(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let start = 0;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      start = i + 1;
    }
  }
  return { line, column: Math.min(offset, text.length) - start + 1 };
}

function syntaxReason(text: string, e: ParseError): string {
  const at = text.slice(e.offset, e.offset + Math.max(1, Math.min(e.length, 20)));
  const found = e.offset >= text.length ? 'the end of the file' : JSON.stringify(at);
  const before = text.slice(0, e.offset).trimEnd();
  const trailingComma = before.endsWith(',') && /^\s*[}\]]/.test(text.slice(e.offset));
  switch (printParseErrorCode(e.error)) {
    case 'PropertyNameExpected':
      return trailingComma
        ? 'trailing comma: JSON allows no "," before a closing bracket; remove it'
        : `expected a property name in double quotes, found ${found}`;
    case 'ValueExpected':
      return trailingComma
        ? 'trailing comma: JSON allows no "," before a closing bracket; remove it'
        : `expected a value (string, number, true, false, null, object or array), found ${found}`;
    case 'InvalidSymbol':
      return `unexpected ${found}; strings need double quotes and the literals are true, false and null`;
    case 'InvalidNumberFormat':
      return `invalid number ${found}`;
    case 'ColonExpected':
      return `expected ":" after the property name, found ${found}`;
    case 'CommaExpected':
      return `expected "," between items, found ${found}`;
    case 'CloseBraceExpected':
      return `expected "}" to close the object, found ${found}`;
    case 'CloseBracketExpected':
      return `expected "]" to close the array, found ${found}`;
    case 'EndOfFileExpected':
      return `unexpected ${found} after the end of the JSON document`;
    case 'InvalidCommentToken':
    case 'UnexpectedEndOfComment':
      return 'comments are not allowed in a JSON config';
    case 'UnexpectedEndOfString':
      return 'string is not closed on this line (write a line break inside a string as \\n)';
    case 'InvalidUnicode':
      return 'invalid \\u escape: expected four hex digits';
    case 'InvalidEscapeCharacter':
      return `invalid escape ${found}: JSON knows \\" \\\\ \\/ \\b \\f \\n \\r \\t and \\uXXXX`;
    case 'InvalidCharacter':
      return 'control character inside a string: escape it (\\t, \\n, ...)';
    default:
      return `unexpected ${found}`;
  }
}

function findNode(root: JsonNode, segs: readonly Seg[], onKey: boolean): JsonNode {
  let node = root;
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    let next: JsonNode | undefined;
    if (typeof s === 'number') {
      if (node.type === 'array') next = node.children?.[s];
    } else if (node.type === 'object') {
      // the last property of that name is the one JSON.parse kept
      const props = (node.children ?? []).filter((p) => p.children?.[0]?.value === s);
      const prop = props[props.length - 1];
      if (prop) {
        if (onKey && i === segs.length - 1) return prop.children![0]!;
        next = prop.children?.[1];
      }
    }
    if (!next) return node;
    node = next;
  }
  return node;
}

function duplicateKeys(node: JsonNode, segs: Seg[], c: Collector): void {
  if (node.type === 'object') {
    const seen = new Set<string>();
    for (const prop of node.children ?? []) {
      const key = prop.children?.[0]?.value;
      if (typeof key !== 'string') continue;
      if (seen.has(key)) {
        c.list.push({ segs: [...segs, key], onKey: false, severity: 'error', message: `key "${key}" appears more than once in this object; JSON keeps only the last one, so remove the other` });
      }
      seen.add(key);
      const value = prop.children?.[1];
      if (value) duplicateKeys(value, [...segs, key], c);
    }
  } else if (node.type === 'array') {
    (node.children ?? []).forEach((child, i) => duplicateKeys(child, [...segs, i], c));
  }
}

/**
 * Parses and validates config text. JSON syntax errors come back as one problem
 * at `$` with the line and column of the mistake; all other problems carry the
 * line and column of the value (or key) they are about.
 */
export function parseConfigText(text: string, file: string): ConfigResult {
  const body = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  const shift = body === text ? 0 : 1;
  // Before any parser: the syntax-error path and the tree walks recurse per level.
  const deep = findTooDeep(body);
  if (deep) {
    const { line, column } = lineCol(text, deep.offset + shift);
    return {
      problems: [{ path: '$', message: `too deeply nested at ${file}:${line}:${column}: arrays/objects nest more than ${MAX_JSON_DEPTH} levels (the limit for a config)`, severity: 'error', file, line, column }],
    };
  }
  let raw: unknown;
  try {
    raw = JSON.parse(body);
  } catch (err) {
    const errors: ParseError[] = [];
    parseTree(body, errors, { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false });
    let offset: number;
    let reason: string;
    const first = errors[0];
    if (first) {
      offset = first.offset;
      reason = syntaxReason(body, first);
    } else {
      // jsonc-parser is more lenient than JSON.parse in a few corners; fall back to V8.
      const msg = err instanceof Error ? err.message : String(err);
      const m = /at position (\d+)/.exec(msg);
      offset = m ? Number(m[1]) : body.length;
      reason = msg.replace(/,? ".*" is not valid JSON$/s, '').replace(/ in JSON at position \d+.*$/s, '');
    }
    if (body.trim() === '') reason = 'the file is empty; expected a JSON object like {"local_id": 1, "peers": [...]}';
    const { line, column } = lineCol(text, offset + shift);
    return {
      problems: [{ path: '$', message: `invalid JSON at ${file}:${line}:${column}: ${reason}`, severity: 'error', file, line, column }],
    };
  }

  const tree = parseTree(body, [], { disallowComments: true, allowTrailingComma: false });
  const dup = new Collector();
  if (tree) duplicateKeys(tree, [], dup);
  const { config, problems } = validate(raw);
  const all = [...dup.list, ...problems];
  const located = all.map((p) => {
    const prob: Problem = { path: formatJsonPath(p.segs), message: p.message, severity: p.severity, file };
    if (tree) {
      const node = findNode(tree, p.segs, p.onKey);
      const { line, column } = lineCol(text, node.offset + shift);
      prob.line = line;
      prob.column = column;
    }
    return prob;
  });
  // File order reads best; the sort is stable, so one spot keeps discovery order.
  located.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0));
  const out: ConfigResult = { problems: located };
  if (config && dup.errorCount === 0) out.config = config;
  return out;
}

/**
 * Reads and checks a config file (synchronously: the daemon does this once at
 * start). Never throws for bad input: an unreadable file and JSON syntax errors
 * are reported as problems like any other.
 */
export function loadConfig(path: string): ConfigResult {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT' ? 'no such file' :
      code === 'EACCES' ? 'permission denied (run as the daemon user or root)' :
      code === 'EISDIR' ? 'it is a directory, not a file' :
      err instanceof Error ? err.message : String(err);
    return { problems: [{ path: '$', message: `cannot read the config file: ${why}`, severity: 'error', file: path }] };
  }
  return parseConfigText(text, path);
}

/**
 * A warning when group or others can access the config file, which holds private
 * keys (POSIX only; empty elsewhere or when the file cannot be examined). Kept out
 * of loadConfig so callers decide whether to show it (e.g. in --check).
 */
export function filePermissionProblems(path: string): Problem[] {
  if (process.platform === 'win32') return [];
  try {
    const mode = statSync(path).mode & 0o777;
    if ((mode & 0o077) === 0) return [];
    return [{
      path: '$',
      message: `the file is accessible to group or others (mode ${mode.toString(8).padStart(4, '0')}) but holds private keys; run: chmod 600 ${path}`,
      severity: 'warning',
      file: path,
    }];
  } catch {
    return [];
  }
}
