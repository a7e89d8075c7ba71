// The managed node's OS network state: makes the host match a desired description
// of the TUN device, its routes, the policy rule, forwarding and masquerading,
// idempotently, and undoes it on shutdown. Linux only (iproute2, nftables, sysctl).
//
//   link      ip link set dev TUN mtu M / up
//   addresses ip addr add|del A/L dev TUN [nodad]          (global scope only; the TUN is ours)
//   routes    table T (default 52), the whole table is ours:
//               route replace P dev TUN table T            per route, 0.0.0.0/0 + ::/0 with exitNode
//               route replace throw P table T              per exclude (and per LAN prefix with
//                                                          exitNode + allowLan): lookups for these
//                                                          fall through to the main table
//   rule      ip [-6] rule add pref R lookup T             (default 5270), IPv4 and IPv6
//   nft       one table `inet larktun`, replaced atomically by one `nft -f -` script:
//               chain postrouting (nat, priority 100):
//                 iifname "TUN" oifname != "TUN" counter masquerade
//             `iifname` is set in postrouting for forwarded packets (the kernel passes the
//             input device to the POST_ROUTING hook from ip_output/ip6_output), so no mark
//             is needed; test/daemon/osnet.test.ts checks it with real forwarded traffic.
//   sysctl    net.ipv4.ip_forward, net.ipv6.conf.all.forwarding = 1 with forwarding; the
//             values found before are kept and written back when forwarding is turned off
//             or on teardown.
//
// apply() reads the current state (ip -j ..., nft list table, sysctl -n), plans the
// difference with the pure planOsNet() and runs only that: `ip` commands in as few
// `ip [-6] -batch -` runs as the order allows. Nothing here sends packets.
import { spawn } from 'node:child_process';
import { familyBits, formatIP, formatPrefix, parseIP, parsePrefix, type Family, type Prefix } from '../net/addr.js';
import { tunNameProblem } from './plan.js';

export interface OsNetDesired {
  /** The TUN device (created elsewhere). */
  dev: string;
  /** Link MTU, e.g. 1280 (IPv6 needs at least 1280). */
  mtu: number;
  /** Own overlay addresses, CIDR: '100.64.0.5/32', 'fd7a:115c:a1e0::5/128'. */
  addresses: string[];
  /** Prefixes sent into the TUN (tenant pools, accepted subnet routes), IPv4 or IPv6. */
  routes: string[];
  /** Default routes (0.0.0.0/0 and ::/0) into the TUN. */
  exitNode: boolean;
  /** Underlay destinations (relays, control server, peers' endpoints) that must not
   * enter the TUN: throw routes. A bare address means a host route. */
  exclude: string[];
  /** With exitNode: directly connected prefixes of the main table (other than the
   * TUN's) become throw routes, so the LAN stays reachable. */
  allowLan: boolean;
  /** Subnet router / exit node: net.ipv4.ip_forward and net.ipv6.conf.all.forwarding. */
  forwarding: boolean;
  /** Masquerade traffic that arrives from the TUN and leaves by another interface. */
  masquerade: boolean;
}

export interface OsNetExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs one argv (no shell), optionally feeding `input` on stdin. Never rejects for a
 * failing command: a spawn failure is code 127 with the reason in stderr. */
export type OsNetExec = (argv: readonly string[], input?: string) => Promise<OsNetExecResult>;

export interface OsNetOptions {
  /** Routing table for the TUN's routes. Default 52. */
  table?: number;
  /** Priority of the `ip rule` that looks the table up. Default 5270. */
  rulePriority?: number;
  /** Name of the nftables table (family inet). Default 'larktun'. */
  nftTable?: string;
  /** Run every command in this network namespace (`ip netns exec NS ...`). */
  netns?: string;
  /** Replaces command execution entirely (netns is then ignored). */
  exec?: OsNetExec;
  /** Per-command time limit of the default exec. Default 15 s. */
  timeoutMs?: number;
  /** Sysctl values saved by an earlier process (see OsNet.savedSysctls), restored on
   * teardown or when forwarding is turned off. */
  savedSysctls?: Readonly<Record<string, string>> | null;
}

/** One step of a plan: `argv` is the command as it would be typed; `ip` steps are
 * run batched (`ip [-6] -batch -`), `input` is stdin (nft scripts). */
export interface OsNetStep {
  what: string;
  argv: string[];
  input?: string;
}

export interface OsNetChange {
  /** False when the OS already matched. */
  changed: boolean;
  /** What was run, in order (one line each in `what` for logs). */
  steps: OsNetStep[];
  /** Things skipped, e.g. IPv6 items on a host without IPv6. */
  warnings: string[];
}

/** A route found in our table. `dst` is canonical CIDR. */
export interface OsNetRoute {
  family: Family;
  dst: string;
  /** 'unicast', 'throw', or another route type found there. */
  type: string;
  dev?: string;
  gateway?: string;
  metric?: number;
}

/** A policy rule found at our priority. */
export interface OsNetRule {
  family: Family;
  priority: number;
  table: string;
  /** True for exactly `from all lookup TABLE` (no other selector or action). */
  plain: boolean;
}

/** The OS state the plan is computed against (see OsNet.readState). */
export interface OsNetState {
  /** The device the link/address part was read for (null: not read). */
  dev: string | null;
  /** Null when the device does not exist (or was not read). */
  link: { mtu: number; up: boolean } | null;
  /** Global-scope addresses on the device, canonical CIDR with host bits. */
  addresses: string[];
  /** Every route in our table, both families. */
  routes: OsNetRoute[];
  /** Every rule at our priority, both families. */
  rules: OsNetRule[];
  /** Directly connected prefixes of the main table not on the device (canonical CIDR). */
  lan: string[];
  /** The spec comment of our nft table; '' when the table exists without one; null when absent. */
  nft: string | null;
  /** Current sysctl values that were read. */
  sysctls: Record<string, string>;
  /** False when the host has no IPv6 (ip -6 fails). */
  ipv6: boolean;
}

export interface OsNetPlanOptions {
  table: number;
  rulePriority: number;
  nftTable: string;
  /** Sysctl values to restore when forwarding is off (null: nothing saved). */
  savedSysctls: Readonly<Record<string, string>> | null;
}

export interface OsNetPlan {
  steps: OsNetStep[];
  warnings: string[];
}

export const SYSCTL_FORWARD_V4 = 'net.ipv4.ip_forward';
export const SYSCTL_FORWARD_V6 = 'net.ipv6.conf.all.forwarding';

export const OSNET_DEFAULTS = { table: 52, rulePriority: 5270, nftTable: 'larktun' } as const;

/** Thrown when a command fails: names the command and carries its stderr. */
export class OsNetError extends Error {
  override name = 'OsNetError';
  constructor(
    readonly command: string,
    readonly code: number,
    readonly stderr: string,
  ) {
    super(`${command} failed (exit ${code}): ${stderr.trim() || '(no output)'}`);
  }
}

// ---------------------------------------------------------------- validation

function checkOptions(o: { table: number; rulePriority: number; nftTable: string }): void {
  if (!Number.isInteger(o.table) || o.table < 1 || o.table > 0xffffffff || [253, 254, 255].includes(o.table)) {
    throw new Error(`routing table ${o.table} must be an integer 1..4294967295 other than 253..255 (default, main, local)`);
  }
  if (!Number.isInteger(o.rulePriority) || o.rulePriority < 1 || o.rulePriority > 32765) {
    throw new Error(`rule priority ${o.rulePriority} must be an integer 1..32765 (before the main table's 32766)`);
  }
  if (!/^[A-Za-z][A-Za-z0-9_]{0,31}$/.test(o.nftTable)) {
    throw new Error(`nft table name "${o.nftTable}" must be a letter then up to 31 letters, digits or _`);
  }
}

/** "A/L" with host bits kept (an interface address); a bare address is a full-length one. */
function parseIfAddr(s: string): { family: Family; text: string } {
  const slash = s.indexOf('/');
  const ip = parseIP(slash >= 0 ? s.slice(0, slash) : s);
  if (!ip) throw new Error(`address "${s}" is not an IP address with a prefix length, e.g. 100.64.0.5/32`);
  const max = familyBits(ip.family);
  let bits = max;
  if (slash >= 0) {
    const b = s.slice(slash + 1);
    if (!/^(0|[1-9][0-9]{0,2})$/.test(b) || Number(b) > max) throw new Error(`address "${s}" has an invalid prefix length: expected 0..${max}`);
    bits = Number(b);
  }
  return { family: ip.family, text: `${formatIP(ip)}/${bits}` };
}

function parseRoutePrefix(s: string, what: string): Prefix {
  try {
    return parsePrefix(s, { requireMasked: true });
  } catch (e) {
    throw new Error(`${what}: ${(e as Error).message}`);
  }
}

const routeKey = (p: Prefix): string => formatPrefix(p);

// ---------------------------------------------------------------- planning

interface WantRoute {
  prefix: Prefix;
  throw: boolean;
}

const defaultMetric = (f: Family): number => (f === 6 ? 1024 : 0);

function routeMatches(r: OsNetRoute, want: WantRoute, dev: string | null): boolean {
  if ((r.metric ?? 0) !== defaultMetric(want.prefix.family)) return false;
  if (r.gateway !== undefined) return false;
  if (want.throw) return r.type === 'throw';
  return r.type === 'unicast' && r.dev === dev;
}

function routeDel(r: OsNetRoute, table: number): OsNetStep {
  const type = r.type === 'unicast' ? [] : [r.type];
  const metric = r.metric !== undefined && r.metric !== 0 ? ['metric', String(r.metric)] : [];
  const argv = ['ip', 'route', 'del', ...type, r.dst, 'table', String(table), ...metric];
  return { what: `route - ${type.length ? `${r.type} ` : ''}${r.dst}${r.dev && r.type === 'unicast' ? ` dev ${r.dev}` : ''} (table ${table})`, argv };
}

function routeAdd(w: WantRoute, dev: string, table: number): OsNetStep {
  const dst = formatPrefix(w.prefix);
  if (w.throw) return { what: `route + throw ${dst} (table ${table})`, argv: ['ip', 'route', 'replace', 'throw', dst, 'table', String(table)] };
  return { what: `route + ${dst} dev ${dev} (table ${table})`, argv: ['ip', 'route', 'replace', dst, 'dev', dev, 'table', String(table)] };
}

/** The nft script that makes our table hold exactly `spec`'s rules (or removes it). */
export function nftScript(nftTable: string, masqDev: string | null): string {
  const head = `table inet ${nftTable}\ndelete table inet ${nftTable}\n`;
  if (masqDev === null) return head;
  return (
    head +
    `table inet ${nftTable} {\n` +
    `\tchain postrouting {\n` +
    `\t\ttype nat hook postrouting priority 100; policy accept;\n` +
    `\t\tiifname "${masqDev}" oifname != "${masqDev}" counter masquerade comment "${nftSpec(masqDev)}"\n` +
    `\t}\n` +
    `}\n`
  );
}

/** The comment that identifies the nft table's content (compared on apply). */
export const nftSpec = (masqDev: string): string => `larktun:masq iif=${masqDev} v1`;

/**
 * The steps that take `state` to `desired` (null: tear everything down). Pure;
 * throws for an invalid desired state. Apply order: link, addresses (adds first),
 * routes (throws first, removals last), rules, sysctl restore, nft, sysctl enable.
 * Teardown order: rules, routes, addresses, sysctl restore, nft.
 */
export function planOsNet(desired: OsNetDesired | null, state: OsNetState, opts: OsNetPlanOptions): OsNetPlan {
  checkOptions(opts);
  const warnings: string[] = [];
  const T = String(opts.table);
  const v6ok = state.ipv6;
  const dev = desired ? desired.dev : state.dev;

  // Desired pieces.
  let wantAddrs: { family: Family; text: string }[] = [];
  const wantRoutes = new Map<string, WantRoute>();
  if (desired) {
    const bad = tunNameProblem(desired.dev);
    if (bad) throw new Error(bad);
    if (!Number.isInteger(desired.mtu) || desired.mtu < 68 || desired.mtu > 65535) {
      throw new Error(`mtu ${desired.mtu} must be an integer 68..65535`);
    }
    wantAddrs = desired.addresses.map(parseIfAddr);
    const routes = desired.routes.map((r) => parseRoutePrefix(r, 'route'));
    const excludes = desired.exclude.map((r) => parseRoutePrefix(r, 'exclude'));
    const uses6 = wantAddrs.some((a) => a.family === 6) || routes.some((r) => r.family === 6);
    if (uses6 && desired.mtu < 1280 && v6ok) throw new Error(`mtu ${desired.mtu} is below 1280, the IPv6 minimum, but IPv6 addresses or routes are configured`);

    const put = (p: Prefix, thr: boolean, what: string): void => {
      if (p.family === 6 && !v6ok) {
        warnings.push(`IPv6 is not available: ${what} ${formatPrefix(p)} skipped`);
        return;
      }
      wantRoutes.set(routeKey(p), { prefix: p, throw: thr });
    };
    // On equal prefixes the later wins: LAN throws < routes and exit-node defaults <
    // excludes (the underlay must keep working). An accepted subnet route thus beats an
    // identical LAN prefix; a more specific LAN prefix still beats a shorter route.
    if (desired.exitNode && desired.allowLan) {
      for (const l of state.lan) put(parsePrefix(l), true, 'LAN prefix');
    }
    for (const r of routes) put(r, false, 'route');
    if (desired.exitNode) {
      put({ family: 4, addr: 0n, bits: 0 }, false, 'default route');
      if (v6ok) put({ family: 6, addr: 0n, bits: 0 }, false, 'default route');
    }
    for (const x of excludes) put(x, true, 'exclude');
    wantAddrs = wantAddrs.filter((a) => {
      if (a.family === 6 && !v6ok) {
        warnings.push(`IPv6 is not available: address ${a.text} skipped`);
        return false;
      }
      return true;
    });
  }

  // Sections, joined in the order apply or teardown needs (see the end).
  const linkSteps: OsNetStep[] = [];
  const addrSteps: OsNetStep[] = [];
  const routeSteps: OsNetStep[] = [];
  const ruleSteps: OsNetStep[] = [];
  const restoreSteps: OsNetStep[] = [];
  const nftSteps: OsNetStep[] = [];
  const enableSteps: OsNetStep[] = [];

  // Link.
  if (desired) {
    if (!state.link) throw new Error(`device "${desired.dev}" does not exist`);
    if (state.link.mtu !== desired.mtu) {
      linkSteps.push({ what: `link ${desired.dev} mtu ${state.link.mtu} -> ${desired.mtu}`, argv: ['ip', 'link', 'set', 'dev', desired.dev, 'mtu', String(desired.mtu)] });
    }
    if (!state.link.up) linkSteps.push({ what: `link ${desired.dev} up`, argv: ['ip', 'link', 'set', 'dev', desired.dev, 'up'] });
  }

  // Addresses (the device is ours: global addresses not desired are removed). New
  // ones go first: deleting a device's last IPv4 address makes the kernel drop every
  // IPv4 route through it, in all tables. Only the same address with another prefix
  // length is removed before it is added again (IPv6 would refuse the duplicate).
  if (dev && state.link) {
    const want = new Set(wantAddrs.map((a) => a.text));
    const have = new Set(state.addresses);
    const removed = new Set<string>();
    const del = (a: string): void => {
      removed.add(a);
      addrSteps.push({ what: `address - ${a} dev ${dev}`, argv: ['ip', 'addr', 'del', a, 'dev', dev] });
    };
    const ipOf = (cidr: string): string => cidr.slice(0, cidr.indexOf('/'));
    for (const a of wantAddrs) {
      if (have.has(a.text)) continue;
      have.add(a.text);
      for (const old of state.addresses) if (!want.has(old) && !removed.has(old) && ipOf(old) === ipOf(a.text)) del(old);
      addrSteps.push({ what: `address + ${a.text} dev ${dev}`, argv: ['ip', 'addr', 'add', a.text, 'dev', dev, ...(a.family === 6 ? ['nodad'] : [])] });
    }
    for (const a of state.addresses) if (!want.has(a) && !removed.has(a)) del(a);
  }

  // Routes in our table: throws first, removals last.
  const current = new Map<string, OsNetRoute[]>();
  for (const r of state.routes) {
    const list = current.get(r.dst);
    if (list) list.push(r);
    else current.set(r.dst, [r]);
  }
  const adds: OsNetStep[] = [];
  const dels: OsNetStep[] = [];
  const ordered = [...wantRoutes.entries()].sort(([, a], [, b]) => Number(b.throw) - Number(a.throw) || a.prefix.family - b.prefix.family);
  for (const [key, w] of ordered) {
    const have = current.get(key) ?? [];
    if (have.length === 1 && routeMatches(have[0]!, w, dev)) continue;
    // One route at the default metric is changed in place by `replace`; anything
    // else (duplicates, other metrics) is removed first.
    const inPlace = have.length === 1 && (have[0]!.metric ?? 0) === defaultMetric(w.prefix.family);
    if (!inPlace) for (const r of have) adds.push(routeDel(r, opts.table));
    adds.push(routeAdd(w, dev!, opts.table));
  }
  const stale = state.routes.filter((r) => !wantRoutes.has(r.dst));
  stale.sort((a, b) => Number(a.type === 'throw') - Number(b.type === 'throw'));
  for (const r of stale) dels.push(routeDel(r, opts.table));
  routeSteps.push(...adds, ...dels);

  // The rule, per family.
  for (const fam of [4, 6] as const) {
    if (fam === 6 && !v6ok) continue;
    const six = fam === 6 ? ['-6'] : [];
    const mine = state.rules.filter((r) => r.family === fam && r.priority === opts.rulePriority);
    const ok = mine.length === 1 && mine[0]!.plain && mine[0]!.table === T;
    const keep = desired !== null && ok;
    if (!keep) {
      for (const r of mine) {
        ruleSteps.push({ what: `rule - IPv${fam} pref ${opts.rulePriority} lookup ${r.table}`, argv: ['ip', ...six, 'rule', 'del', 'pref', String(opts.rulePriority)] });
      }
    }
    if (desired && !ok) {
      ruleSteps.push({ what: `rule + IPv${fam} pref ${opts.rulePriority} lookup ${T}`, argv: ['ip', ...six, 'rule', 'add', 'pref', String(opts.rulePriority), 'lookup', T] });
    }
  }

  // Sysctls: restore what was saved when forwarding goes off.
  const fwdKeys = v6ok ? [SYSCTL_FORWARD_V4, SYSCTL_FORWARD_V6] : [SYSCTL_FORWARD_V4];
  const forwarding = desired?.forwarding ?? false;
  if (!forwarding && opts.savedSysctls) {
    for (const [k, v] of Object.entries(opts.savedSysctls)) {
      if (state.sysctls[k] === v) continue;
      restoreSteps.push({ what: `sysctl ${k} ${state.sysctls[k] ?? '?'} -> ${v} (restored)`, argv: ['sysctl', '-w', `${k}=${v}`] });
    }
  }

  // nft.
  const wantSpec = desired?.masquerade ? nftSpec(desired.dev) : null;
  if (wantSpec !== state.nft) {
    const script = nftScript(opts.nftTable, wantSpec === null ? null : desired!.dev);
    const what = wantSpec === null ? `nft - table inet ${opts.nftTable}` : `nft = table inet ${opts.nftTable}: masquerade iifname ${desired!.dev} -> other interfaces`;
    nftSteps.push({ what, argv: ['nft', '-f', '-'], input: script });
  }

  // Sysctls: enable forwarding (after masquerading is in place).
  if (forwarding) {
    for (const k of fwdKeys) {
      if (state.sysctls[k] === '1') continue;
      enableSteps.push({ what: `sysctl ${k} ${state.sysctls[k] ?? '?'} -> 1`, argv: ['sysctl', '-w', `${k}=1`] });
    }
  }

  const steps = desired
    ? [...linkSteps, ...addrSteps, ...routeSteps, ...ruleSteps, ...restoreSteps, ...nftSteps, ...enableSteps]
    : [...ruleSteps, ...routeSteps, ...addrSteps, ...restoreSteps, ...nftSteps];
  return { steps, warnings };
}

// ---------------------------------------------------------------- reading state

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function jsonArray(text: string, what: string): Record<string, unknown>[] {
  let v: unknown;
  try {
    v = JSON.parse(text.trim() === '' ? '[]' : text);
  } catch {
    throw new Error(`${what}: unexpected output (not JSON): ${text.slice(0, 200)}`);
  }
  if (!Array.isArray(v)) throw new Error(`${what}: unexpected output (not a JSON array)`);
  return v.filter(isRecord);
}

/** A route's dst from `ip -j route` ('default', a bare address or CIDR) as canonical CIDR. */
function routeDst(dst: unknown, family: Family): string | null {
  if (typeof dst !== 'string') return null;
  if (dst === 'default') return family === 4 ? '0.0.0.0/0' : '::/0';
  try {
    const p = parsePrefix(dst);
    return p.family === family ? formatPrefix(p) : null;
  } catch {
    return null;
  }
}

/** Parses `ip -j [-4|-6] route show table T`. */
export function parseRoutes(json: string, family: Family): OsNetRoute[] {
  const out: OsNetRoute[] = [];
  for (const e of jsonArray(json, 'ip route')) {
    const dst = routeDst(e.dst, family);
    if (!dst) continue;
    const r: OsNetRoute = { family, dst, type: typeof e.type === 'string' ? e.type : 'unicast' };
    if (typeof e.dev === 'string') r.dev = e.dev;
    if (typeof e.gateway === 'string') r.gateway = e.gateway;
    if (typeof e.metric === 'number') r.metric = e.metric;
    if (Array.isArray(e.nexthops)) r.gateway = 'multipath';
    out.push(r);
  }
  return out;
}

/** Directly connected prefixes in `ip -j route show table main` output, not on `dev`. */
export function parseLan(json: string, family: Family, dev: string): string[] {
  const out = new Set<string>();
  for (const r of parseRoutes(json, family)) {
    if (r.type !== 'unicast' || r.gateway !== undefined || !r.dev || r.dev === dev) continue;
    if (r.dst.endsWith('/0')) continue;
    out.add(r.dst);
  }
  return [...out];
}

const RULE_PLAIN_KEYS = new Set(['priority', 'src', 'table', 'protocol']);

/** Parses `ip -j [-4|-6] rule show`, keeping the rules at `priority`. */
export function parseRules(json: string, family: Family, priority: number): OsNetRule[] {
  const out: OsNetRule[] = [];
  for (const e of jsonArray(json, 'ip rule')) {
    if (e.priority !== priority) continue;
    const table = typeof e.table === 'string' ? e.table : typeof e.table === 'number' ? String(e.table) : '';
    const plain = e.src === 'all' && table !== '' && Object.keys(e).every((k) => RULE_PLAIN_KEYS.has(k));
    out.push({ family, priority, table, plain });
  }
  return out;
}

/** Parses `ip -j addr show dev X`: link state and global addresses. */
export function parseAddrShow(json: string): { link: { mtu: number; up: boolean }; addresses: string[] } | null {
  const e = jsonArray(json, 'ip addr')[0];
  if (!e) return null;
  const flags = Array.isArray(e.flags) ? e.flags : [];
  const link = { mtu: typeof e.mtu === 'number' ? e.mtu : 0, up: flags.includes('UP') };
  const addresses: string[] = [];
  for (const a of Array.isArray(e.addr_info) ? e.addr_info : []) {
    if (!isRecord(a) || a.scope !== 'global' || typeof a.local !== 'string' || typeof a.prefixlen !== 'number') continue;
    try {
      addresses.push(parseIfAddr(`${a.local}/${a.prefixlen}`).text);
    } catch {
      /* not an address we could have set */
    }
  }
  return { link, addresses };
}

/** The spec comment in `nft list table` output ('' when none). */
export function parseNftSpec(listing: string): string {
  const m = /comment "(larktun:[^"]*)"/.exec(listing);
  return m ? m[1]! : '';
}

// ---------------------------------------------------------------- running

function defaultExec(prefix: readonly string[], timeoutMs: number): OsNetExec {
  return (argv, input) =>
    new Promise((resolve) => {
      const full = [...prefix, ...argv];
      let stdout = '';
      let stderr = '';
      let done = false;
      const finish = (code: number, extra = ''): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve({ code, stdout, stderr: stderr + extra });
      };
      const child = spawn(full[0]!, full.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        finish(124, `timed out after ${timeoutMs} ms`);
      }, timeoutMs);
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      child.on('error', (e) => finish(127, e.message));
      child.on('close', (code, signal) => finish(code ?? 128, signal ? `killed by ${signal}` : ''));
      child.stdin.on('error', () => {});
      child.stdin.end(input ?? '');
    });
}

const fmt = (argv: readonly string[]): string => argv.join(' ');

/** Steps grouped for running: consecutive `ip` steps with the same family flag share one batch. */
interface Run {
  argv: string[];
  input?: string;
  steps: OsNetStep[];
}

function groupRuns(steps: readonly OsNetStep[], force: boolean): Run[] {
  const runs: Run[] = [];
  let batch: { six: boolean; steps: OsNetStep[] } | null = null;
  const flush = (): void => {
    if (!batch) return;
    const lines = batch.steps.map((s) => `${fmt(s.argv.slice(batch!.six ? 2 : 1))}\n`).join('');
    runs.push({ argv: ['ip', ...(force ? ['-force'] : []), ...(batch.six ? ['-6'] : []), '-batch', '-'], input: lines, steps: batch.steps });
    batch = null;
  };
  for (const s of steps) {
    if (s.argv[0] === 'ip') {
      const six = s.argv[1] === '-6';
      if (batch && batch.six !== six) flush();
      if (!batch) batch = { six, steps: [] };
      batch.steps.push(s);
      continue;
    }
    flush();
    runs.push({ argv: s.argv, input: s.input, steps: [s] });
  }
  flush();
  return runs;
}

/** Applies desired OS network state for a managed node; see the file header. */
export class OsNet {
  readonly table: number;
  readonly rulePriority: number;
  readonly nftTable: string;
  private readonly exec: OsNetExec;
  private saved: Record<string, string> | null;
  private dev: string | null = null;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(opts: OsNetOptions = {}) {
    this.table = opts.table ?? OSNET_DEFAULTS.table;
    this.rulePriority = opts.rulePriority ?? OSNET_DEFAULTS.rulePriority;
    this.nftTable = opts.nftTable ?? OSNET_DEFAULTS.nftTable;
    checkOptions(this);
    const prefix = opts.netns ? ['ip', 'netns', 'exec', opts.netns] : [];
    this.exec = opts.exec ?? defaultExec(prefix, opts.timeoutMs ?? 15_000);
    this.saved = opts.savedSysctls ? { ...opts.savedSysctls } : null;
  }

  /** Sysctl values to write back later (persist them to survive a crash), or null. */
  get savedSysctls(): Readonly<Record<string, string>> | null {
    return this.saved ? { ...this.saved } : null;
  }

  /** Makes the OS match `d`, changing only what differs. Throws OsNetError naming a failing command. */
  apply(d: OsNetDesired): Promise<OsNetChange> {
    return this.serial(async () => {
      const needSysctls = d.forwarding || this.saved !== null;
      const state = await this.readState(d.dev, { lan: d.exitNode && d.allowLan, sysctls: needSysctls, strictDev: true });
      if (d.forwarding && this.saved === null) {
        this.saved = {};
        for (const k of [SYSCTL_FORWARD_V4, SYSCTL_FORWARD_V6]) if (state.sysctls[k] !== undefined) this.saved[k] = state.sysctls[k]!;
      }
      let plan = planOsNet(d, state, this.planOptions());
      this.dev = d.dev;
      let done: OsNetStep[] = [];
      if (plan.steps.some((s) => s.argv[1] === 'addr' && s.argv[2] === 'del')) {
        // Removing addresses can make the kernel drop routes (the last IPv4 address of
        // a device takes its IPv4 routes along; a primary takes its secondaries): change
        // the link and addresses first, then plan the rest against what is left.
        done = plan.steps.filter((s) => s.argv[1] === 'link' || s.argv[1] === 'addr');
        const errors = await this.run(done, false);
        if (errors.length) throw errors[0]!;
        const after = await this.readState(d.dev, { lan: d.exitNode && d.allowLan, sysctls: needSysctls, strictDev: true });
        plan = planOsNet(d, after, this.planOptions());
      }
      const errors = await this.run(plan.steps, false);
      if (errors.length) throw errors[0]!;
      if (!d.forwarding) this.saved = null;
      const steps = [...done, ...plan.steps];
      return { changed: steps.length > 0, steps, warnings: plan.warnings };
    });
  }

  /**
   * Removes everything apply() set up: the rule (both families), every route in the
   * table, the nft table, the device's global addresses (when the device is known and
   * still there), and restores saved sysctls. Tries every step; throws afterwards if
   * any failed. Safe to call without apply() (cleans up after a crashed process).
   */
  teardown(dev?: string): Promise<OsNetChange> {
    return this.serial(async () => {
      const d = dev ?? this.dev;
      const state = await this.readState(d, { lan: false, sysctls: this.saved !== null, strictDev: false });
      const plan = planOsNet(null, state, this.planOptions());
      // Already gone is as good as removed (e.g. the TUN vanished meanwhile).
      const errors = (await this.run(plan.steps, true)).filter((e) => !/No such process|Cannot find device|No such device/.test(e.stderr));
      if (errors.length) {
        throw new Error(`teardown: ${errors.length} step(s) failed:\n${errors.map((e) => e.message).join('\n')}`);
      }
      this.saved = null;
      this.dev = null;
      return { changed: plan.steps.length > 0, steps: plan.steps, warnings: plan.warnings };
    });
  }

  /** Reads the state planOsNet() works on. */
  async readState(dev: string | null, want: { lan?: boolean; sysctls?: boolean; strictDev?: boolean } = {}): Promise<OsNetState> {
    const T = String(this.table);
    const state: OsNetState = { dev, link: null, addresses: [], routes: [], rules: [], lan: [], nft: null, sysctls: {}, ipv6: true };

    const v6rules = await this.exec(['ip', '-j', '-6', 'rule', 'show']);
    state.ipv6 = v6rules.code === 0;
    if (state.ipv6) state.rules.push(...parseRules(v6rules.stdout, 6, this.rulePriority));
    state.rules.push(...parseRules(await this.read(['ip', '-j', '-4', 'rule', 'show']), 4, this.rulePriority));

    if (dev) {
      const r = await this.exec(['ip', '-j', 'addr', 'show', 'dev', dev]);
      if (r.code === 0) {
        const a = parseAddrShow(r.stdout);
        if (a) {
          state.link = a.link;
          state.addresses = a.addresses;
        }
      } else if (want.strictDev) {
        throw new OsNetError(fmt(['ip', '-j', 'addr', 'show', 'dev', dev]), r.code, r.stderr);
      }
    }

    for (const fam of state.ipv6 ? ([4, 6] as const) : ([4] as const)) {
      // A table never used since boot does not exist yet (IPv4 says so): empty.
      const shown = await this.exec(['ip', '-j', `-${fam}`, 'route', 'show', 'table', T]);
      if (shown.code === 0) state.routes.push(...parseRoutes(shown.stdout, fam));
      else if (!/FIB table does not exist/.test(shown.stderr)) throw new OsNetError(`ip -j -${fam} route show table ${T}`, shown.code, shown.stderr);
      if (want.lan && dev) state.lan.push(...parseLan(await this.read(['ip', '-j', `-${fam}`, 'route', 'show', 'table', 'main']), fam, dev));
    }

    const nft = await this.exec(['nft', 'list', 'table', 'inet', this.nftTable]);
    if (nft.code === 0) state.nft = parseNftSpec(nft.stdout);
    else if (nft.code !== 127 && !/No such file or directory/.test(nft.stderr)) {
      throw new OsNetError(`nft list table inet ${this.nftTable}`, nft.code, nft.stderr);
    }
    // (nft missing: no table of ours can exist; wanting one fails when the script runs.)

    if (want.sysctls) {
      for (const k of state.ipv6 ? [SYSCTL_FORWARD_V4, SYSCTL_FORWARD_V6] : [SYSCTL_FORWARD_V4]) {
        state.sysctls[k] = (await this.read(['sysctl', '-n', k])).trim();
      }
    }
    return state;
  }

  private planOptions(): OsNetPlanOptions {
    return { table: this.table, rulePriority: this.rulePriority, nftTable: this.nftTable, savedSysctls: this.saved };
  }

  private async read(argv: string[]): Promise<string> {
    const r = await this.exec(argv);
    if (r.code !== 0) throw new OsNetError(fmt(argv), r.code, r.stderr);
    return r.stdout;
  }

  /** Runs steps (ip steps batched). Without `force` stops at the first failure. */
  private async run(steps: readonly OsNetStep[], force: boolean): Promise<OsNetError[]> {
    const errors: OsNetError[] = [];
    for (const run of groupRuns(steps, force)) {
      const r = await this.exec(run.argv, run.input);
      if (r.code === 0) continue;
      if (run.argv[0] === 'ip') {
        // `ip -batch` reports "Command failed -:N" per failing line, stderr above it.
        const failed = [...r.stderr.matchAll(/Command failed -:(\d+)/g)].map((m) => Number(m[1]));
        const lines = r.stderr.split('\n');
        let from = 0;
        for (const n of failed) {
          const at = lines.findIndex((l, i) => i >= from && l.includes(`Command failed -:${n}`));
          const msg = lines.slice(from, at).join('\n');
          from = at + 1;
          const step = run.steps[n - 1];
          errors.push(new OsNetError(step ? fmt(step.argv) : fmt(run.argv), r.code, msg));
        }
        if (failed.length === 0) errors.push(new OsNetError(`${fmt(run.argv)} <<${JSON.stringify(run.input ?? '')}`, r.code, r.stderr));
      } else {
        errors.push(new OsNetError(fmt(run.argv), r.code, r.stderr));
      }
      if (!force) break;
    }
    return errors;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn, fn);
    this.queue = p.catch(() => {});
    return p;
  }
}

/** One line per step, for logs and --print style output. */
export function formatSteps(steps: readonly OsNetStep[]): string {
  return steps.map((s) => `${fmt(s.argv)}${s.input !== undefined ? ` <<'EOF'\n${s.input}EOF` : ''}\n`).join('');
}
