// The policy's `tests` and `sshTests` blocks, evaluated against the compiled
// filter and SSH policy.
import { IPSet } from '../net/ipset.js';
import { parseAlias, parsePorts, parseProto, splitHostPort } from './alias.js';
import type { Engine } from './compile.js';
import { getOwn } from './hujson.js';
import { INTERNET } from './model.js';
import type { Alias, Pos } from './types.js';

const DEFAULT_PROTOS = [6, 17, 1, 58];

type Addrs = { ok: true; addrs: IPSet[] } | { ok: false; error: string };

function resolveAddrs(engine: Engine, a: Alias, text: string): Addrs {
  const deps = new Set<string>();
  const model = engine.model;
  if (a.kind === 'user' && model.userIdOf(a.name) === null) {
    return { ok: false, error: `failed to resolve ${JSON.stringify(text)}: user not found` };
  }
  const ids = engine.resolver.identityNodes(a, deps);
  if (ids) {
    const out: IPSet[] = [];
    for (const id of ids) for (const ip of model.nodes.get(id)!.ips) out.push(IPSet.parse(ip)!);
    return { ok: true, addrs: out };
  }
  switch (a.kind) {
    case 'prefix':
      return { ok: true, addrs: [IPSet.fromPrefix(a.prefix)] };
    case 'host': {
      // The parser rejects undefined hosts in tests; a policy object built
      // elsewhere still gets a message, never a crash.
      const h = engine.policy.hosts.get(a.name);
      if (!h) return { ok: false, error: `host not defined in policy: ${JSON.stringify(text)}` };
      return { ok: true, addrs: [h.set] };
    }
    case 'wildcard':
      return { ok: true, addrs: [engine.resolver.wildcardSet()] };
    case 'autogroup':
      if (a.name === 'internet') return { ok: true, addrs: [INTERNET] };
      return { ok: false, error: `${JSON.stringify(text)} cannot be used in tests` };
    default:
      return { ok: false, error: `${JSON.stringify(text)} cannot be used in tests` };
  }
}

function allowed(engine: Engine, src: IPSet[], dst: IPSet, first: number, last: number, protos: number[]): boolean {
  const rules = engine.allRules().filter((r) => r.kind === 'net');
  return src.every((s) =>
    rules.some((r) => {
      if (r.proto && !r.proto.some((p) => protos.includes(p))) return false;
      const srcHit =
        r.srcSet.overlaps(s) || r.srcIdentity.some((id) => engine.model.nodes.get(id)!.ipSet.overlaps(s));
      if (!srcHit) return false;
      return r.entries.some((e) => e.ports.First <= first && e.ports.Last >= last && e.set.overlaps(dst));
    }),
  );
}

export interface TestFailure {
  pos: Pos;
  message: string;
}

/** One expectation of the `tests` block (one entry of a test's accept or deny list) and how it came out. */
export interface TestOutcome {
  /** Position of the entry (of the test when its source failed). */
  pos: Pos;
  /** Index of the test in the block. */
  test: number;
  src: string;
  proto?: string;
  dst: string;
  expect: 'accept' | 'deny';
  pass: boolean;
  /** Why it failed (the same text as the check's error), or what it verified. */
  message: string;
}

/**
 * Runs the `tests` block; returns the failures. With `outcomes`, every
 * expectation (passed or failed) is also recorded there, in policy order.
 */
export function runPolicyTests(engine: Engine, outcomes?: TestOutcome[]): TestFailure[] {
  const out: TestFailure[] = [];
  let index = -1;
  for (const t of engine.policy.tests) {
    index++;
    const label = `${t.src}${t.proto ? ` (${t.proto})` : ''}`;
    const entries = (): { d: (typeof t.accept)[number]; expect: 'accept' | 'deny' }[] => [
      ...t.accept.map((d) => ({ d, expect: 'accept' as const })),
      ...t.deny.map((d) => ({ d, expect: 'deny' as const })),
    ];
    const record = (pos: Pos, dst: string, expect: 'accept' | 'deny', pass: boolean, message: string): void => {
      outcomes?.push({ pos, test: index, src: t.src, ...(t.proto ? { proto: t.proto } : {}), dst, expect, pass, message });
    };
    const srcFailed = (message: string): void => {
      out.push({ pos: t.pos, message });
      for (const e of entries()) record(t.pos, e.d.v, e.expect, false, message);
    };
    const sa = parseAlias(t.src);
    if (!sa.ok) {
      srcFailed(`${label}: ${sa.error}`);
      continue;
    }
    const src = resolveAddrs(engine, sa.value, t.src);
    if (!src.ok) {
      srcFailed(`${label}: ${src.error}`);
      continue;
    }
    if (src.addrs.length === 0) {
      srcFailed(`${label}: source ${JSON.stringify(t.src)} resolved to no IP addresses`);
      continue;
    }
    let protos = DEFAULT_PROTOS;
    if (t.proto) {
      const p = parseProto(t.proto);
      if (p.ok) protos = p.value;
    }
    const check = (dsts: typeof t.accept, want: boolean): void => {
      const expect = want ? 'accept' : 'deny';
      for (const d of dsts) {
        const fail = (message: string): void => {
          out.push({ pos: d.pos, message });
          record(d.pos, d.v, expect, false, message);
        };
        const hp = splitHostPort(d.v);
        if (!hp) {
          fail(`${label} -> ${d.v}: destination must be host:port`);
          continue;
        }
        const ports = parsePorts(hp.ports);
        const da = parseAlias(hp.host);
        if (!ports.ok || !da.ok) {
          fail(`${label} -> ${d.v}: ${!ports.ok ? ports.error : (da as { error: string }).error}`);
          continue;
        }
        if (da.value.kind === 'prefix' && hp.host.includes('/')) {
          fail(`${label} -> ${d.v}: destination must be a host or single IP address, not a CIDR prefix`);
          continue;
        }
        const dst = resolveAddrs(engine, da.value, hp.host);
        if (!dst.ok || dst.addrs.length === 0) {
          fail(`${label} -> ${d.v}: ${dst.ok ? 'destination resolved to no IP addresses' : dst.error}`);
          continue;
        }
        const dset = IPSet.unionAll(dst.addrs);
        const ok = ports.value.every((p) => allowed(engine, src.addrs, dset, p.First, p.Last, protos));
        if (ok !== want) fail(`${label} -> ${d.v}: expected ${want ? 'ALLOWED' : 'DENIED'}, got ${ok ? 'ALLOWED' : 'DENIED'}`);
        else record(d.pos, d.v, expect, true, `${label} -> ${d.v}: ${ok ? 'ALLOWED' : 'DENIED'} as expected`);
      }
    };
    check(t.accept, true);
    check(t.deny, false);
  }
  return out;
}

export function runSshTests(engine: Engine): TestFailure[] {
  const out: TestFailure[] = [];
  const model = engine.model;
  for (const t of engine.policy.sshTests) {
    const sa = parseAlias(t.src);
    if (!sa.ok) {
      out.push({ pos: t.pos, message: `${t.src}: ${sa.error}` });
      continue;
    }
    const src = resolveAddrs(engine, sa.value, t.src);
    if (!src.ok || src.addrs.length === 0) {
      out.push({ pos: t.pos, message: `${t.src}: ${src.ok ? `source ${JSON.stringify(t.src)} resolved to no IP addresses` : src.error}` });
      continue;
    }
    const srcIps = src.addrs.flatMap((s) => s.toStrings());
    for (const d of t.dst) {
      const da = parseAlias(d);
      const ids = da.ok ? engine.resolver.identityNodes(da.value, new Set()) : null;
      let dstIds: readonly number[] = ids ?? [];
      if (!ids && da.ok && da.value.kind === 'host') {
        const h = engine.policy.hosts.get(da.value.name);
        dstIds = h ? [...model.nodes.values()].filter((n) => h.set.overlaps(n.ipSet)).map((n) => n.id) : [];
      }
      if (dstIds.length === 0) {
        out.push({ pos: t.pos, message: `${t.src} -> ${d}: destination resolved to no nodes` });
        continue;
      }
      const verdict = (user: string, id: number): 'accept' | 'check' | 'deny' => {
        for (const r of engine.sshPolicy(id).rules) {
          const principals = new Set(r.principals.map((p) => p.nodeIP));
          if (!srcIps.every((ip) => principals.has(ip))) continue;
          const mapped = getOwn(r.sshUsers, user) ?? (user !== 'root' ? getOwn(r.sshUsers, '*') : undefined);
          if (!mapped) continue;
          return r.action.holdAndDelegate ? 'check' : 'accept';
        }
        return 'deny';
      };
      for (const id of dstIds) {
        for (const u of t.accept) {
          const v = verdict(u, id);
          if (v === 'deny') out.push({ pos: t.pos, message: `${t.src} -> ${u}@${d}: expected ALLOWED, got DENIED` });
        }
        for (const u of t.check) {
          const v = verdict(u, id);
          if (v !== 'check') out.push({ pos: t.pos, message: `${t.src} -> ${u}@${d}: expected CHECK, got ${v === 'accept' ? 'ALLOWED' : 'DENIED'}` });
        }
        for (const u of t.deny) {
          const v = verdict(u, id);
          if (v !== 'deny') out.push({ pos: t.pos, message: `${t.src} -> ${u}@${d}: expected DENIED, got ${v === 'check' ? 'CHECK' : 'ALLOWED'}` });
        }
      }
    }
  }
  return out;
}
