// Policy file → validated Policy. Every problem is collected (not just the
// first) as "file:line:col: message", with Tailscale's wording for the message.
import { tryParsePrefix } from '../net/addr.js';
import { IPSet } from '../net/ipset.js';
import {
  formatGoDuration,
  isAllPorts,
  parseAlias,
  parseGoDuration,
  parsePorts,
  parseProto,
  protoSupportsPorts,
  splitHostPort,
  tagNameError,
  ALL_PORTS,
} from './alias.js';
import { type JProp, type JVal, type Pos, parseHuJSON, plain, setOwn } from './hujson.js';
import type {
  AclRule,
  Alias,
  AliasRef,
  AutoApproverRoute,
  DstRef,
  GrantRule,
  IpSpec,
  NodeAttrRule,
  Policy,
  PolicyTest,
  SshPolicyRule,
  SshPolicyTest,
  Str,
} from './types.js';

export type ParseResult = { ok: true; policy: Policy } | { ok: false; errors: string[] };

const TOP_KEYS = [
  'groups',
  'hosts',
  'tagOwners',
  'acls',
  'grants',
  'autoApprovers',
  'ssh',
  'tests',
  'sshTests',
  'nodeAttrs',
];
/** Tailscale settings that carry no meaning for Larktun; accepted and ignored. */
const IGNORED_TOP_KEYS = ['derpMap', 'disableIPv4', 'OneCGNATRoute', 'randomizeClientPort'];

const MAX_CHECK_PERIOD_NS = 168n * 3_600_000_000_000n;

class Ctx {
  readonly errors: string[] = [];
  constructor(readonly file: string) {}
  err(pos: Pos, msg: string): void {
    this.errors.push(`${this.file}:${pos.line}:${pos.col}: ${msg}`);
  }
}

type Fields = Map<string, JProp>;

function fields(ctx: Ctx, v: JVal, known: readonly string[], ignored: readonly string[] = [], hashComments = false): Fields {
  const out: Fields = new Map();
  if (v.t !== 'obj') return out;
  const byLower = new Map(known.map((k) => [k.toLowerCase(), k]));
  const ignoredLower = new Set(ignored.map((k) => k.toLowerCase()));
  for (const p of v.props) {
    if (hashComments && p.key.startsWith('#')) continue;
    const lower = p.key.toLowerCase();
    const canon = byLower.get(lower);
    if (!canon) {
      if (!ignoredLower.has(lower)) ctx.err(p.keyPos, `unknown field: ${JSON.stringify(p.key)}`);
      continue;
    }
    if (out.has(canon)) {
      ctx.err(p.keyPos, `duplicate field: ${JSON.stringify(p.key)}`);
      continue;
    }
    out.set(canon, p);
  }
  return out;
}

function expectObj(ctx: Ctx, v: JVal, what: string): boolean {
  if (v.t === 'obj') return true;
  ctx.err(v.pos, `${what}: expected an object`);
  return false;
}

function strList(ctx: Ctx, v: JVal | undefined, what: string): Str[] {
  if (!v || v.t === 'null') return [];
  if (v.t !== 'arr') {
    ctx.err(v.pos, `${what}: expected an array of strings`);
    return [];
  }
  const out: Str[] = [];
  for (const it of v.items) {
    if (it.t !== 'str') ctx.err(it.pos, `${what}: expected a string`);
    else out.push({ v: it.v, pos: it.pos });
  }
  return out;
}

function str(ctx: Ctx, v: JVal | undefined, what: string): Str | undefined {
  if (!v || v.t === 'null') return undefined;
  if (v.t !== 'str') {
    ctx.err(v.pos, `${what}: expected a string`);
    return undefined;
  }
  return { v: v.v, pos: v.pos };
}

interface Env {
  groups: Map<string, string[]>;
  tags: Set<string>;
  hosts: Map<string, { set: IPSet; text: string }>;
}

/** Checks that an alias refers to something defined; returns the message when not. */
function refError(env: Env, a: Alias, text: string): string | null {
  switch (a.kind) {
    case 'group':
      return env.groups.has(a.name) ? null : `group not defined in policy: ${JSON.stringify(text)}`;
    case 'tag':
      return env.tags.has(a.name) ? null : `tag not found: ${JSON.stringify(text)}`;
    case 'host':
      return env.hosts.has(a.name) ? null : `host not defined in policy: ${JSON.stringify(text)}`;
    default:
      return null;
  }
}

const isUserish = (a: Alias): boolean =>
  a.kind === 'user' ||
  a.kind === 'group' ||
  a.kind === 'wildcard' ||
  (a.kind === 'autogroup' && a.name === 'member');

function parseSrcList(ctx: Ctx, env: Env, items: Str[], section: 'acl' | 'grant'): AliasRef[] {
  const out: AliasRef[] = [];
  for (const s of items) {
    const r = parseAlias(s.v);
    if (!r.ok) {
      ctx.err(s.pos, `src=${r.error}`);
      continue;
    }
    const a = r.value;
    if (a.kind === 'autogroup') {
      if (a.name === 'self') {
        ctx.err(s.pos, `src=${JSON.stringify(s.v)} not valid on the src side of a rule`);
        continue;
      }
      if (a.name === 'internet') {
        ctx.err(s.pos, `src=${JSON.stringify(s.v)}: autogroup:internet can only be used in ACL destinations`);
        continue;
      }
      if (a.name === 'nonroot') {
        ctx.err(s.pos, `src=${JSON.stringify(s.v)}: autogroup:nonroot can only be used in SSH users`);
        continue;
      }
    }
    const re = refError(env, a, s.v);
    if (re) {
      ctx.err(s.pos, `src=${re}`);
      continue;
    }
    void section;
    out.push({ text: s.v, alias: a, pos: s.pos });
  }
  return out;
}

/** Validation shared by ACL and grant destinations (alias part only). */
function dstAliasError(env: Env, a: Alias, text: string, isGrant: boolean): string | null {
  if (a.kind === 'autogroup') {
    if (a.name === 'danger-all') return 'cannot use autogroup:danger-all as a dst';
    if (a.name === 'nonroot') return 'autogroup:nonroot can only be used in SSH users';
  }
  if (isGrant && a.kind === 'prefix' && a.prefix.bits === 0) {
    return `dst ${JSON.stringify(text)}: to allow all IP addresses, use "*" or "autogroup:internet"`;
  }
  return refError(env, a, text);
}

/** autogroup:self needs user sources; grants (unlike ACLs) also refuse a `*` source. */
function checkSelf(ctx: Ctx, pos: Pos, src: AliasRef[], dst: AliasRef[], wildcardOk = true): void {
  if (!dst.some((d) => d.alias.kind === 'autogroup' && d.alias.name === 'self')) return;
  if (src.every((s) => isUserish(s.alias) && (wildcardOk || s.alias.kind !== 'wildcard'))) return;
  ctx.err(pos, 'autogroup:self can only be used with users, groups, or supported autogroups');
}

function parseAcl(ctx: Ctx, env: Env, v: JVal, i: number): AclRule | null {
  if (!expectObj(ctx, v, `acls[${i}]`)) return null;
  const f = fields(ctx, v, ['action', 'src', 'dst', 'proto'], [], true);
  const action = str(ctx, f.get('action')?.val, 'action');
  if (!action || action.v !== 'accept') {
    ctx.err(action?.pos ?? v.pos, `action=${JSON.stringify(action?.v ?? '')} is not supported`);
  }
  let proto: number[] | undefined;
  const protoStr = str(ctx, f.get('proto')?.val, 'proto');
  if (protoStr && protoStr.v !== '') {
    const p = parseProto(protoStr.v);
    if (!p.ok) ctx.err(protoStr.pos, p.error);
    else proto = p.value;
  }
  const srcItems = strList(ctx, f.get('src')?.val, 'src');
  if (!f.has('src')) ctx.err(v.pos, `acls[${i}]: src must be specified`);
  const src = parseSrcList(ctx, env, srcItems, 'acl');
  const dst: DstRef[] = [];
  const dstItems = strList(ctx, f.get('dst')?.val, 'dst');
  if (!f.has('dst')) ctx.err(v.pos, `acls[${i}]: dst must be specified`);
  for (const d of dstItems) {
    const hp = splitHostPort(d.v);
    if (!hp) {
      ctx.err(d.pos, `dst=${JSON.stringify(d.v)}: hostport must contain a colon`);
      continue;
    }
    const ports = parsePorts(hp.ports);
    if (!ports.ok) {
      ctx.err(d.pos, `dst=${JSON.stringify(d.v)}: ${ports.error}`);
      continue;
    }
    const r = parseAlias(hp.host);
    if (!r.ok) {
      ctx.err(d.pos, `dst=${JSON.stringify(hp.host)}: ${r.error}`);
      continue;
    }
    const e = dstAliasError(env, r.value, hp.host, false);
    if (e) {
      ctx.err(d.pos, `dst=${JSON.stringify(hp.host)}: ${e}`);
      continue;
    }
    if (proto && !protoSupportsPorts(proto) && !isAllPorts(ports.value)) {
      ctx.err(d.pos, `protocol does not support specific ports: ${JSON.stringify(protoStr!.v)}, only "*" is allowed`);
      continue;
    }
    dst.push({ text: hp.host, alias: r.value, pos: d.pos, ports: ports.value });
  }
  checkSelf(ctx, v.pos, src, dst);
  return { pos: v.pos, proto, src, dst };
}

function parseIpSpec(ctx: Ctx, s: Str): IpSpec | null {
  if (s.v === '*') return { ports: [ALL_PORTS] };
  const colon = s.v.indexOf(':');
  let proto: number[] | undefined;
  let portsText = s.v;
  if (colon >= 0) {
    const protoText = s.v.slice(0, colon);
    portsText = s.v.slice(colon + 1);
    const p = parseProto(protoText);
    if (!p.ok) {
      ctx.err(s.pos, p.error);
      return null;
    }
    proto = p.value;
  }
  const ports = parsePorts(portsText);
  if (!ports.ok) {
    ctx.err(s.pos, ports.error);
    return null;
  }
  if (proto && !protoSupportsPorts(proto) && !isAllPorts(ports.value)) {
    ctx.err(s.pos, `protocol does not support specific ports: ${JSON.stringify(s.v.slice(0, colon))}, only "*" is allowed`);
    return null;
  }
  return { proto, ports: ports.value };
}

/** Capabilities of the tailscale.com domain that a policy may grant (Tailscale's documented list). */
const TAILSCALE_CAPS = new Set([
  'tailscale.com/cap/drive',
  'tailscale.com/cap/relay',
  'tailscale.com/cap/webui',
  'tailscale.com/cap/kubernetes',
  'tailscale.com/cap/tsidp',
]);

function capNameError(name: string): string | null {
  if (name.includes('://') || !/^[^/]+\/./.test(name)) return 'capability name must have the form {domain}/{path}';
  if (name.toLowerCase().startsWith('tailscale.com/') && !TAILSCALE_CAPS.has(name)) {
    return 'capability name must not be in the tailscale.com domain';
  }
  return null;
}

function parseApp(ctx: Ctx, v: JVal | undefined, what: string, checkNames = false): Record<string, unknown[]> | null {
  if (!v || v.t === 'null') return null;
  if (v.t !== 'obj') {
    ctx.err(v.pos, `${what}: expected an object of capability name to values`);
    return null;
  }
  const out: Record<string, unknown[]> = {};
  for (const p of v.props) {
    const ne = checkNames ? capNameError(p.key) : null;
    if (ne) {
      ctx.err(p.keyPos, `${what}[${JSON.stringify(p.key)}]: ${ne}`);
      continue;
    }
    if (p.val.t !== 'arr') {
      ctx.err(p.val.pos, `${what}[${JSON.stringify(p.key)}]: expected an array`);
      continue;
    }
    setOwn(out, p.key, p.val.items.map(plain));
  }
  return Object.keys(out).length > 0 ? out : null;
}

/** True when `app` is an object with at least one key (valid or not: its errors are reported on their own). */
function hasAppKeys(v: JVal | undefined): boolean {
  return v !== undefined && v.t === 'obj' && v.props.length > 0;
}

function parseGrant(ctx: Ctx, env: Env, v: JVal, i: number): GrantRule | null {
  if (!expectObj(ctx, v, `grants[${i}]`)) return null;
  const f = fields(ctx, v, ['src', 'dst', 'ip', 'app', 'via', 'srcPosture'], [], true);
  const srcItems = strList(ctx, f.get('src')?.val, 'src');
  const dstItems = strList(ctx, f.get('dst')?.val, 'dst');
  // An empty list is accepted (the grant yields nothing); a missing key is not.
  if (!f.has('src')) ctx.err(v.pos, `grants[${i}]: src must be specified`);
  if (!f.has('dst')) ctx.err(v.pos, `grants[${i}]: dst must be specified`);
  const src = parseSrcList(ctx, env, srcItems, 'grant');
  const dst: AliasRef[] = [];
  for (const d of dstItems) {
    const r = parseAlias(d.v);
    if (!r.ok) {
      ctx.err(d.pos, `dst=${JSON.stringify(d.v)}: ${r.error}`);
      continue;
    }
    const e = dstAliasError(env, r.value, d.v, true);
    if (e) {
      ctx.err(d.pos, e.startsWith('dst ') ? e : `dst=${JSON.stringify(d.v)}: ${e}`);
      continue;
    }
    dst.push({ text: d.v, alias: r.value, pos: d.pos });
  }
  const ipItems = strList(ctx, f.get('ip')?.val, 'ip');
  const app = parseApp(ctx, f.get('app')?.val, 'app', true);
  if (ipItems.length === 0 && !app && !hasAppKeys(f.get('app')?.val)) ctx.err(v.pos, 'ip and app can not both be empty');
  if (app) {
    for (const d of dst) {
      if (d.alias.kind === 'autogroup' && d.alias.name === 'internet') {
        ctx.err(d.pos, `dst=${JSON.stringify(d.text)}: cannot use app grants with autogroup:internet`);
      }
    }
  }
  const ip: IpSpec[] = [];
  for (const s of ipItems) {
    const spec = parseIpSpec(ctx, s);
    if (spec) ip.push(spec);
  }
  const via: string[] = [];
  for (const s of strList(ctx, f.get('via')?.val, 'via')) {
    if (!s.v.startsWith('tag:')) {
      ctx.err(s.pos, `via=${JSON.stringify(s.v)}: via can only be a tag`);
      continue;
    }
    if (!env.tags.has(s.v)) {
      ctx.err(s.pos, `tag ${JSON.stringify(s.v)} not found`);
      continue;
    }
    via.push(s.v);
  }
  if (f.has('srcPosture')) {
    ctx.err(f.get('srcPosture')!.keyPos, 'srcPosture is not supported: device posture is not collected by Larktun');
  }
  checkSelf(ctx, v.pos, src, dst, false);
  return { pos: v.pos, src, dst, ip, app, via };
}

/** `str` with the value trimmed (Tailscale trims SSH action, src, dst and users values). */
function trimmed(x: Str): Str {
  return x.v === x.v.trim() ? x : { v: x.v.trim(), pos: x.pos };
}

function parseSsh(ctx: Ctx, env: Env, v: JVal, i: number): SshPolicyRule | null {
  if (!expectObj(ctx, v, `ssh[${i}]`)) return null;
  const f = fields(ctx, v, ['action', 'src', 'dst', 'users', 'checkPeriod', 'acceptEnv'], [], true);
  const rawAction = str(ctx, f.get('action')?.val, 'action');
  const action = rawAction && trimmed(rawAction);
  let act: 'accept' | 'check' = 'accept';
  if (!action || action.v === '') ctx.err(action?.pos ?? v.pos, 'action must be specified');
  else if (action.v !== 'accept' && action.v !== 'check') ctx.err(action.pos, `${JSON.stringify(action.v)} is not a valid action`);
  else act = action.v;
  // Any value but "" and "*" is a login name (even "autogroup:member");
  // autogroup:nonroot and localpart:*@domain are interpreted when compiling.
  const users = strList(ctx, f.get('users')?.val, 'users').map(trimmed);
  if (users.length === 0) ctx.err(v.pos, 'users must be specified');
  for (const u of users) {
    if (u.v === '*' || u.v === '') ctx.err(u.pos, `user ${JSON.stringify(u.v)} is not valid`);
  }
  const src: AliasRef[] = [];
  for (const s of strList(ctx, f.get('src')?.val, 'src').map(trimmed)) {
    const r = parseAlias(s.v);
    if (!r.ok) {
      ctx.err(s.pos, `src=${r.error}`);
      continue;
    }
    const a = r.value;
    const okKind =
      a.kind === 'user' ||
      a.kind === 'group' ||
      a.kind === 'tag' ||
      a.kind === 'wildcard' ||
      (a.kind === 'autogroup' && (a.name === 'member' || a.name === 'tagged'));
    if (!okKind) {
      ctx.err(s.pos, `invalid src ${JSON.stringify(s.v)}`);
      continue;
    }
    const re = refError(env, a, s.v);
    if (re) {
      ctx.err(s.pos, `src=${re}`);
      continue;
    }
    src.push({ text: s.v, alias: a, pos: s.pos });
  }
  const dst: AliasRef[] = [];
  for (const s of strList(ctx, f.get('dst')?.val, 'dst').map(trimmed)) {
    const r = parseAlias(s.v);
    if (!r.ok) {
      ctx.err(s.pos, `dst=${r.error}`);
      continue;
    }
    const a = r.value;
    if (a.kind === 'wildcard') {
      ctx.err(s.pos, 'wildcard (*) is not supported as SSH destination');
      continue;
    }
    const okKind =
      a.kind === 'user' ||
      a.kind === 'tag' ||
      (a.kind === 'autogroup' && (a.name === 'member' || a.name === 'tagged' || a.name === 'self'));
    if (!okKind) {
      ctx.err(s.pos, `invalid dst ${JSON.stringify(s.v)}`);
      continue;
    }
    const re = refError(env, a, s.v);
    if (re) {
      ctx.err(s.pos, `dst=${re}`);
      continue;
    }
    dst.push({ text: s.v, alias: a, pos: s.pos });
  }
  // A rule without src or dst is accepted and matches nothing (as in Tailscale).
  const srcTagged = src.some((s) => s.alias.kind === 'tag' || (s.alias.kind === 'autogroup' && s.alias.name === 'tagged'));
  const dstUserOwned = dst.some(
    (d) => d.alias.kind === 'user' || (d.alias.kind === 'autogroup' && (d.alias.name === 'member' || d.alias.name === 'self')),
  );
  if (srcTagged && dstUserOwned) ctx.err(v.pos, 'tags in SSH source cannot access user-owned devices');
  checkSelf(ctx, v.pos, src, dst);
  let checkPeriod: number | undefined;
  const cp = str(ctx, f.get('checkPeriod')?.val, 'checkPeriod');
  if (cp) {
    if (act !== 'check') ctx.err(cp.pos, 'checkPeriod is only valid with action "check"');
    else if (cp.v !== 'always') {
      // No minimum (Tailscale accepts 0s and sub-minute periods).
      const d = parseGoDuration(cp.v);
      if (!d.ok) ctx.err(cp.pos, d.error);
      else if (d.value < 0n) ctx.err(cp.pos, `checkPeriod ${formatGoDuration(d.value)} must be a positive duration`);
      else if (d.value > MAX_CHECK_PERIOD_NS) ctx.err(cp.pos, `checkPeriod ${formatGoDuration(d.value)} is above the max (168h)`);
      else checkPeriod = Number(d.value) / 1e9;
    } else checkPeriod = 0;
  }
  let acceptEnv: string[] | undefined;
  if (f.has('acceptEnv')) {
    acceptEnv = [];
    for (const e of strList(ctx, f.get('acceptEnv')!.val, 'acceptEnv')) {
      if (e.v === '') ctx.err(e.pos, 'acceptEnv values cannot be empty');
      else acceptEnv.push(e.v);
    }
  }
  return { pos: v.pos, action: act, src, dst, users: users.map((u) => u.v), checkPeriod, acceptEnv };
}

/** Tailscale reports every problem inside a tests/sshTests entry as a failed test. */
const TESTS_FAILED = 'test(s) failed: ';

/** Validates an alias used in tests or sshTests like the rest of the policy; returns the message when bad. */
function testAliasError(env: Env, text: string): string | null {
  const r = parseAlias(text);
  if (!r.ok) return r.error;
  return refError(env, r.value, text);
}

const TEST_PROTOS = new Set([6, 17, 132]);

function parseTest(ctx: Ctx, env: Env, v: JVal, i: number): PolicyTest | null {
  if (!expectObj(ctx, v, `tests[${i}]`)) return null;
  const err = (pos: Pos, msg: string): void => ctx.err(pos, TESTS_FAILED + msg);
  const f = fields(ctx, v, ['src', 'proto', 'accept', 'deny'], [], true);
  const src = str(ctx, f.get('src')?.val, 'src');
  if (!src || src.v.trim() === '') {
    err(v.pos, `tests[${i}]: src must be specified`);
    return null;
  }
  let ok = true;
  const se = testAliasError(env, src.v);
  if (se) {
    err(src.pos, `src=${se}`);
    ok = false;
  }
  const proto = str(ctx, f.get('proto')?.val, 'proto');
  if (proto && proto.v !== '') {
    const p = parseProto(proto.v);
    if (!p.ok) {
      err(proto.pos, p.error);
      ok = false;
    } else if (!p.value.every((n) => TEST_PROTOS.has(n))) {
      err(proto.pos, `proto=${JSON.stringify(proto.v)}: test protocol must be tcp, udp, sctp, or empty`);
      ok = false;
    }
  }
  const accept = strList(ctx, f.get('accept')?.val, 'accept');
  const deny = strList(ctx, f.get('deny')?.val, 'deny');
  if (accept.length === 0 && deny.length === 0) {
    err(v.pos, 'test entry must have at least one of "accept" or "deny"');
    ok = false;
  }
  for (const d of [...accept, ...deny]) {
    const e = testDstError(env, d.v);
    if (e) {
      err(d.pos, `${JSON.stringify(d.v)}: ${e}`);
      ok = false;
    }
  }
  if (!ok) return null;
  return { pos: v.pos, src: src.v, proto: proto?.v || undefined, accept, deny };
}

/** A test destination is one host (an address, a single-address host alias, or an identity) and one port. */
function testDstError(env: Env, text: string): string | null {
  const hp = splitHostPort(text);
  if (!hp) return 'hostport must contain a colon';
  const ports = parsePorts(hp.ports);
  if (!ports.ok) return `port range ${JSON.stringify(hp.ports)}: ${ports.error}`;
  if (ports.value.length !== 1 || ports.value[0]!.First !== ports.value[0]!.Last) {
    return 'test destination port must be a single port';
  }
  const r = parseAlias(hp.host);
  if (!r.ok) return r.error;
  const a = r.value;
  if (a.kind === 'wildcard' || (a.kind === 'prefix' && hp.host.includes('/'))) {
    return 'test destination must be a single host, not a CIDR range';
  }
  if (a.kind === 'autogroup') {
    if (a.name === 'internet') return 'autogroup:internet not valid as a test destination';
    if (a.name !== 'member' && a.name !== 'tagged') return `${JSON.stringify(hp.host)} not valid as a test destination`;
  }
  const re = refError(env, a, hp.host);
  if (re) return re;
  if (a.kind === 'host') {
    const spans = [...env.hosts.get(a.name)!.set.v4, ...env.hosts.get(a.name)!.set.v6];
    if (spans.length !== 1 || spans[0]![0] !== spans[0]![1]) return 'test destination must be a single host, not a CIDR range';
  }
  return null;
}

function parseSshTest(ctx: Ctx, env: Env, v: JVal, i: number): SshPolicyTest | null {
  if (!expectObj(ctx, v, `sshTests[${i}]`)) return null;
  const err = (pos: Pos, msg: string): void => ctx.err(pos, TESTS_FAILED + msg);
  const f = fields(ctx, v, ['src', 'dst', 'accept', 'deny', 'check'], [], true);
  const src = str(ctx, f.get('src')?.val, 'src');
  if (!src || src.v.trim() === '') {
    err(v.pos, `sshTests[${i}]: SSH tests entry must have a non-empty src`);
    return null;
  }
  let ok = true;
  const se = testAliasError(env, src.v);
  if (se) {
    err(src.pos, `src=${se}`);
    ok = false;
  }
  const dst = strList(ctx, f.get('dst')?.val, 'dst');
  if (dst.length === 0) {
    err(v.pos, `sshTests[${i}]: SSH tests entry must have at least one dst`);
    ok = false;
  }
  for (const d of dst) {
    if (d.v.includes(':') && !d.v.startsWith('tag:') && !d.v.startsWith('autogroup:')) {
      err(d.pos, `invalid dst ${JSON.stringify(d.v)}: sshTests destinations take no port`);
      ok = false;
      continue;
    }
    const de = testAliasError(env, d.v);
    if (de) {
      err(d.pos, `dst=${de}`);
      ok = false;
    }
  }
  if (!ok) return null;
  return {
    pos: v.pos,
    src: src.v,
    dst: dst.map((d) => d.v),
    accept: strList(ctx, f.get('accept')?.val, 'accept').map((s) => s.v),
    deny: strList(ctx, f.get('deny')?.val, 'deny').map((s) => s.v),
    check: strList(ctx, f.get('check')?.val, 'check').map((s) => s.v),
  };
}

function parseApproverList(ctx: Ctx, env: Env, items: Str[]): AliasRef[] {
  const out: AliasRef[] = [];
  for (const s of items) {
    const r = parseAlias(s.v);
    if (!r.ok) {
      ctx.err(s.pos, r.error);
      continue;
    }
    const a = r.value;
    if (a.kind !== 'user' && a.kind !== 'group' && a.kind !== 'tag') {
      ctx.err(s.pos, `invalid auto approver ${JSON.stringify(s.v)}: use a user, group or tag`);
      continue;
    }
    const re = refError(env, a, s.v);
    if (re) {
      ctx.err(s.pos, re);
      continue;
    }
    out.push({ text: s.v, alias: a, pos: s.pos });
  }
  return out;
}

function arrayItems(ctx: Ctx, p: JProp | undefined, what: string): JVal[] {
  if (!p || p.val.t === 'null') return [];
  if (p.val.t !== 'arr') {
    ctx.err(p.val.pos, `${what}: expected an array`);
    return [];
  }
  return p.val.items;
}

export function parsePolicy(text: string, file = 'policy.hujson'): ParseResult {
  const ctx = new Ctx(file);
  const hu = parseHuJSON(text);
  if (!hu.value) {
    return { ok: false, errors: hu.errors.map(([p, m]) => `${file}:${p.line}:${p.col}: ${m}`) };
  }
  const root = hu.value;
  if (root.t !== 'obj') {
    ctx.err(root.pos, 'policy: expected an object');
    return { ok: false, errors: ctx.errors };
  }
  const top = fields(ctx, root, TOP_KEYS, IGNORED_TOP_KEYS);

  // groups
  const groups = new Map<string, string[]>();
  const groupsVal = top.get('groups')?.val;
  if (groupsVal && groupsVal.t !== 'null' && expectObj(ctx, groupsVal, 'groups') && groupsVal.t === 'obj') {
    for (const p of groupsVal.props) {
      if (!p.key.startsWith('group:')) {
        ctx.err(p.keyPos, `group must start with 'group:', got: ${JSON.stringify(p.key)}`);
        continue;
      }
      const members: string[] = [];
      for (const m of strList(ctx, p.val, `groups[${JSON.stringify(p.key)}]`)) {
        if (m.v.startsWith('group:')) {
          ctx.err(m.pos, `groups[${JSON.stringify(p.key)}]: ${JSON.stringify(m.v)}: group members cannot be recursive`);
          continue;
        }
        if (m.v.startsWith('tag:')) {
          ctx.err(m.pos, `groups[${JSON.stringify(p.key)}]: ${JSON.stringify(m.v)}: groups cannot contain tags`);
          continue;
        }
        if (!m.v.includes('@')) {
          ctx.err(m.pos, `username must contain @, got: ${JSON.stringify(m.v)}`);
          continue;
        }
        members.push(m.v);
      }
      groups.set(p.key, members);
    }
  }

  // hosts
  const hosts = new Map<string, { set: IPSet; text: string }>();
  const hostsVal = top.get('hosts')?.val;
  if (hostsVal && hostsVal.t !== 'null' && expectObj(ctx, hostsVal, 'hosts') && hostsVal.t === 'obj') {
    for (const p of hostsVal.props) {
      if (p.val.t !== 'str') {
        ctx.err(p.val.pos, `hosts[${JSON.stringify(p.key)}]: expected an IP address or prefix string`);
        continue;
      }
      if (p.key.includes('@') || p.key.includes(':') || p.key === '' || p.key === '*') {
        ctx.err(p.keyPos, `invalid host name ${JSON.stringify(p.key)}: names may not contain "@" or ":"`);
        continue;
      }
      const pre = tryParsePrefix(p.val.v);
      if (!pre) {
        ctx.err(
          p.val.pos,
          `hostname contains invalid IP address: hostname ${JSON.stringify(p.key)} address ${JSON.stringify(p.val.v)}`,
        );
        continue;
      }
      hosts.set(p.key, { set: IPSet.fromPrefix(pre), text: p.val.v });
    }
  }

  // tagOwners
  const tagOwners = new Map<string, string[]>();
  const toVal = top.get('tagOwners')?.val;
  const tagOwnerItems: Array<{ tag: string; owners: Str[] }> = [];
  if (toVal && toVal.t !== 'null' && expectObj(ctx, toVal, 'tagOwners') && toVal.t === 'obj') {
    for (const p of toVal.props) {
      if (!p.key.startsWith('tag:')) {
        ctx.err(p.keyPos, `tagOwners[${JSON.stringify(p.key)}]: tag must start with 'tag:'`);
        continue;
      }
      const te = tagNameError(p.key);
      if (te) {
        ctx.err(p.keyPos, `tagOwners[${JSON.stringify(p.key)}]: ${te}`);
        continue;
      }
      const owners = strList(ctx, p.val, `tagOwners[${JSON.stringify(p.key)}]`);
      tagOwnerItems.push({ tag: p.key, owners });
      tagOwners.set(p.key, owners.map((o) => o.v));
    }
  }
  const env: Env = { groups, tags: new Set(tagOwners.keys()), hosts };
  for (const { tag, owners } of tagOwnerItems) {
    for (const o of owners) {
      if (o.v.startsWith('tag:')) {
        if (!env.tags.has(o.v)) ctx.err(o.pos, `tag ${JSON.stringify(tag)} references undefined tag ${JSON.stringify(o.v)}`);
      } else if (o.v.startsWith('group:')) {
        if (!groups.has(o.v)) ctx.err(o.pos, `group not defined in policy: ${JSON.stringify(o.v)}`);
      } else if (o.v.startsWith('autogroup:')) {
        if (o.v !== 'autogroup:member' && o.v !== 'autogroup:admin') {
          ctx.err(o.pos, `tagOwners[${JSON.stringify(tag)}]: ${JSON.stringify(o.v)} cannot own tags`);
        }
      } else if (!o.v.includes('@')) {
        ctx.err(o.pos, `username must contain @, got: ${JSON.stringify(o.v)}`);
      }
    }
  }

  // acls / grants
  const acls: AclRule[] = [];
  arrayItems(ctx, top.get('acls'), 'acls').forEach((v, i) => {
    const r = parseAcl(ctx, env, v, i);
    if (r) acls.push(r);
  });
  const grants: GrantRule[] = [];
  arrayItems(ctx, top.get('grants'), 'grants').forEach((v, i) => {
    const r = parseGrant(ctx, env, v, i);
    if (r) grants.push(r);
  });

  // autoApprovers
  const routes: AutoApproverRoute[] = [];
  let exitNode: AliasRef[] = [];
  const aaVal = top.get('autoApprovers')?.val;
  if (aaVal && aaVal.t !== 'null' && expectObj(ctx, aaVal, 'autoApprovers')) {
    const f = fields(ctx, aaVal, ['routes', 'exitNode']);
    const rv = f.get('routes')?.val;
    if (rv && rv.t !== 'null' && expectObj(ctx, rv, 'autoApprovers.routes') && rv.t === 'obj') {
      for (const p of rv.props) {
        const pre = tryParsePrefix(p.key, { allowBare: false });
        if (!pre) {
          ctx.err(p.keyPos, `autoApprovers.routes: invalid route prefix ${JSON.stringify(p.key)}`);
          continue;
        }
        routes.push({ prefix: pre, text: p.key, approvers: parseApproverList(ctx, env, strList(ctx, p.val, 'routes')) });
      }
    }
    exitNode = parseApproverList(ctx, env, strList(ctx, f.get('exitNode')?.val, 'exitNode'));
  }

  const ssh: SshPolicyRule[] = [];
  arrayItems(ctx, top.get('ssh'), 'ssh').forEach((v, i) => {
    const r = parseSsh(ctx, env, v, i);
    if (r) ssh.push(r);
  });
  const tests: PolicyTest[] = [];
  arrayItems(ctx, top.get('tests'), 'tests').forEach((v, i) => {
    const r = parseTest(ctx, env, v, i);
    if (r) tests.push(r);
  });
  const sshTests: SshPolicyTest[] = [];
  arrayItems(ctx, top.get('sshTests'), 'sshTests').forEach((v, i) => {
    const r = parseSshTest(ctx, env, v, i);
    if (r) sshTests.push(r);
  });
  const nodeAttrs: NodeAttrRule[] = [];
  arrayItems(ctx, top.get('nodeAttrs'), 'nodeAttrs').forEach((v, i) => {
    if (!expectObj(ctx, v, `nodeAttrs[${i}]`)) return;
    const f = fields(ctx, v, ['target', 'attr', 'app'], [], true);
    const target: AliasRef[] = [];
    for (const s of strList(ctx, f.get('target')?.val, 'target')) {
      const r = parseAlias(s.v);
      if (!r.ok) {
        ctx.err(s.pos, `target=${r.error}`);
        continue;
      }
      const a = r.value;
      if (a.kind === 'autogroup' && a.name !== 'member' && a.name !== 'tagged') {
        ctx.err(s.pos, `target=${JSON.stringify(s.v)}: not valid as a nodeAttrs target`);
        continue;
      }
      const re = refError(env, a, s.v);
      if (re) {
        ctx.err(s.pos, `target=${re}`);
        continue;
      }
      target.push({ text: s.v, alias: a, pos: s.pos });
    }
    if (target.length === 0 && !f.has('target')) ctx.err(v.pos, `nodeAttrs[${i}]: target must be specified`);
    const attr = strList(ctx, f.get('attr')?.val, 'attr').map((s) => s.v);
    const app = parseApp(ctx, f.get('app')?.val, 'app');
    nodeAttrs.push({ pos: v.pos, target, attr, app });
  });

  if (ctx.errors.length > 0) return { ok: false, errors: sortByPosition(ctx.errors) };
  return {
    ok: true,
    policy: {
      file,
      groups,
      hosts,
      tagOwners,
      acls,
      grants,
      hasAcls: top.has('acls'),
      hasGrants: top.has('grants'),
      autoApprovers: { routes, exitNode },
      ssh,
      tests,
      sshTests,
      nodeAttrs,
    },
  };
}

/** Orders "file:line:col: msg" strings by position (stable for equal positions). */
function sortByPosition(errors: string[]): string[] {
  const key = (e: string): [number, number] => {
    const m = /:(\d+):(\d+): /.exec(e);
    return m ? [Number(m[1]), Number(m[2])] : [0, 0];
  };
  return errors
    .map((e, i) => ({ e, i, k: key(e) }))
    .sort((a, b) => a.k[0] - b.k[0] || a.k[1] - b.k[1] || a.i - b.i)
    .map((x) => x.e);
}
