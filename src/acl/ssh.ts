// SSH rules per destination node: principals per rule (autogroup:self per
// user), recompiled per change reusing unchanged users, and the difference
// between two versions of a rule as the nodes it affects. Output follows
// Tailscale: check rules come before accept rules (stable), a check is only
// holdAndDelegate, a tagged source is a principal once per tag, and
// `localpart:*@domain` users expand to per-user rules.
import { NONE, diffSorted, membership, sameNums, sameStrings, unionOf } from './idlists.js';
import type { NodeInfo } from './model.js';
import type { Change, OwnNodes, Resolver } from './resolve.js';
import { touchedUsers } from './units.js';
import { setOwn } from './hujson.js';
import type { SSHRule } from './types.js';

interface SelfPrincipals {
  /** The user's untagged nodes (the destinations). */
  readonly own: OwnNodes;
  readonly ids: readonly number[];
  /** The user's nodes that are sources; null when all of them are. */
  readonly inSrc: readonly number[] | null;
  readonly principals: string[];
  /** The SSHRules every destination gets (built on first use, shared). */
  rules?: readonly SSHRule[];
}

interface SshDst {
  readonly self: boolean;
  /** Non-self: destination node ids (ascending) and the principals they get. */
  readonly ids: readonly number[];
  readonly principals: string[];
  /** autogroup:self: per user with at least one principal. */
  readonly byUser: ReadonlyMap<number, SelfPrincipals>;
  /** Non-self: the SSHRules every destination gets (built on first use, shared). */
  rules?: readonly SSHRule[];
}

/** A source user matched by a `localpart:*@domain` entry. */
interface LocalpartUser {
  readonly localpart: string;
  /** Addresses of the user's (untagged) source nodes. */
  readonly principals: string[];
  rule?: SSHRule;
}

export interface SshUnit {
  /** Destinations in policy order; a node takes the principals of the first that covers it. */
  readonly dsts: SshDst[];
  readonly srcNodes: readonly number[];
  readonly deps: Set<string>;
  readonly wildcard: boolean;
  readonly sshUsers: Record<string, string>;
  readonly action: SSHRule['action'];
  readonly acceptEnv?: string[];
  /** Source users matched by the rule's localpart entries, in user-id order (empty: none). */
  readonly localparts: ReadonlyMap<number, LocalpartUser>;
}

/** Tailscale's check action: hold and ask the control server, nothing else. */
export const CHECK_URL = 'https://unused/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER';

const LOCALPART_RE = /^localpart:\*@([^@*\s]+)$/;

/** The domain of a well-formed `localpart:*@domain` user (lower case), else null (a literal login name). */
export function localpartDomain(user: string): string | null {
  const m = LOCALPART_RE.exec(user);
  return m ? m[1]!.toLowerCase() : null;
}

const EMPTY_LOCALPARTS: ReadonlyMap<number, LocalpartUser> = new Map();
const NO_RULES: readonly SSHRule[] = Object.freeze([]);

const EMPTY_BY_USER: ReadonlyMap<number, SelfPrincipals> = new Map();

/**
 * Compiles the policy's SSH rules. With `prev` and `only`, rules `only`
 * rejects are kept as they were; for the others, autogroup:self principals
 * are recomputed only for the users `ch` touched.
 */
export function compileSsh(r: Resolver, only?: (i: number) => boolean, prev?: SshUnit[], ch?: Change): SshUnit[] {
  const model = r.model;
  const out: SshUnit[] = [];
  // Check rules first, then accept rules, each in policy order; units are
  // indexed by this position (prev and only use it too).
  const rules = r.policy.ssh;
  const order = [...rules.filter((x) => x.action === 'check'), ...rules.filter((x) => x.action !== 'check')];
  for (const [ri, rule] of order.entries()) {
    const before = prev?.[ri];
    if (only && before && !only(ri)) {
      out.push(before);
      continue;
    }
    const deps = new Set<string>();
    let wildcard = false;
    const srcLists: Array<readonly number[]> = [];
    for (const s of rule.src) {
      const ids = r.identityNodes(s.alias, deps);
      if (ids) srcLists.push(ids);
      else if (s.alias.kind === 'wildcard') {
        wildcard = true;
        srcLists.push([...model.nodes.keys()].sort((a, b) => a - b));
      }
    }
    const srcNodes = unionOf(srcLists);
    const domains = new Set<string>();
    for (const user of rule.users) {
      const d = localpartDomain(user);
      if (d) domains.add(d);
    }
    // A tagged source node is a principal once per tag it carries.
    const ipsOf = (ids: readonly number[]): string[] => {
      const v: string[] = [];
      for (const id of ids) {
        const n = model.nodes.get(id)!;
        const times = n.tagged ? n.tags.length : 1;
        for (let t = 0; t < times; t++) for (const ip of n.ips) v.push(ip);
      }
      return v;
    };
    // With localpart users the principals go by owner (user-id order), tagged sources last.
    const byOwner = (ids: readonly number[]): readonly number[] => {
      if (domains.size === 0) return ids;
      const key = (id: number): number => {
        const n = model.nodes.get(id)!;
        return n.tagged || n.userId === null ? Number.MAX_SAFE_INTEGER : n.userId;
      };
      return [...ids].sort((x, y) => key(x) - key(y) || x - y);
    };
    let principals: string[] | null = null;
    const allPrincipals = (): string[] => (principals ??= ipsOf(byOwner(srcNodes)));
    const dsts: SshDst[] = [];
    const touched = before && ch ? touchedUsers(model, ch, before.srcNodes, srcNodes) : null;
    for (const [k, d] of rule.dst.entries()) {
      if (d.alias.kind === 'autogroup' && d.alias.name === 'self') {
        deps.add('member');
        const isSrc = membership(srcNodes);
        const prevBy = before?.dsts[k]?.self ? before.dsts[k]!.byUser : EMPTY_BY_USER;
        let byUser: Map<number, SelfPrincipals>;
        let users: Iterable<number>;
        if (touched && prevBy !== EMPTY_BY_USER) {
          byUser = new Map(prevBy);
          for (const uid of touched) byUser.delete(uid);
          users = touched;
        } else {
          byUser = new Map();
          users = model.byUser.keys();
        }
        for (const uid of users) {
          if (!model.byUser.has(uid)) continue;
          const o = r.userOwn(uid);
          let all = true;
          for (const id of o.ids) if (!isSrc(id)) all = false;
          const p = all ? o.ids : o.ids.filter(isSrc);
          if (p.length === 0) continue;
          const old = prevBy.get(uid);
          const same = old && old.own === o && (all ? old.inSrc === null : old.inSrc !== null && sameNums(old.inSrc, p));
          byUser.set(uid, same ? old : { own: o, ids: o.ids, inSrc: all ? null : p, principals: ipsOf(p) });
        }
        dsts.push({ self: true, ids: NONE, principals: [], byUser });
        continue;
      }
      const ids = r.identityNodes(d.alias, deps) ?? [];
      const p = allPrincipals();
      dsts.push({ self: false, ids: p.length === 0 ? NONE : ids, principals: p, byUser: EMPTY_BY_USER });
    }
    const sshUsers: Record<string, string> = {};
    for (const u of rule.users) {
      if (u === 'autogroup:nonroot') sshUsers['*'] = '=';
      else if (!localpartDomain(u)) setOwn(sshUsers, u, u);
    }
    if (!Object.hasOwn(sshUsers, 'root')) sshUsers['root'] = '';
    const action: SSHRule['action'] =
      rule.action === 'accept'
        ? { accept: true, allowAgentForwarding: true, allowLocalPortForwarding: true, allowRemotePortForwarding: true }
        : { holdAndDelegate: CHECK_URL };
    let localparts = EMPTY_LOCALPARTS;
    if (domains.size > 0) {
      // Per matching source user, in user-id order: the user's own source nodes.
      const lp = new Map<number, LocalpartUser>();
      const mine = new Map<number, number[]>();
      for (const id of srcNodes) {
        const n = model.nodes.get(id)!;
        if (n.tagged || n.userId === null) continue;
        const l = mine.get(n.userId);
        if (l) l.push(id);
        else mine.set(n.userId, [id]);
      }
      for (const uid of [...model.users.keys()].sort((x, y) => x - y)) {
        const email = model.users.get(uid)!.email ?? '';
        const at = email.lastIndexOf('@');
        if (at <= 0 || !domains.has(email.slice(at + 1).toLowerCase())) continue;
        const ids = mine.get(uid);
        if (ids) lp.set(uid, { localpart: email.slice(0, at), principals: ipsOf(ids) });
      }
      localparts = lp;
    }
    out.push({
      dsts,
      srcNodes,
      deps,
      // Localpart expansion depends on users and every source node: recompile it on any change.
      wildcard: wildcard || domains.size > 0,
      sshUsers,
      action,
      ...(rule.acceptEnv ? { acceptEnv: rule.acceptEnv } : {}),
      localparts,
    });
  }
  return out;
}

function makeRule(u: SshUnit, principals: readonly string[], sshUsers: Record<string, string>): SSHRule {
  const rule: SSHRule = {
    principals: principals.map((nodeIP) => ({ nodeIP })),
    sshUsers: { ...sshUsers },
    action: { ...u.action },
  };
  if (u.acceptEnv) rule.acceptEnv = u.acceptEnv.slice();
  return rule;
}

function localpartRule(u: SshUnit, l: LocalpartUser): SSHRule {
  return (l.rule ??= makeRule(u, l.principals, { [l.localpart]: l.localpart }));
}

/**
 * The SSH rules one unit gives a node, in order (shared, read-only): the
 * common rule, then the per-user localpart rules (for an autogroup:self
 * destination only the owner's). A source node the unit does not cover still
 * gets its own user's localpart rule.
 */
export function sshRules(u: SshUnit, n: NodeInfo): readonly SSHRule[] {
  const g = sshGrant(u, n);
  if (!g) {
    if (u.localparts.size === 0 || n.tagged || n.userId === null) return NO_RULES;
    const l = u.localparts.get(n.userId);
    if (!l || !membership(u.srcNodes)(n.id)) return NO_RULES;
    return [localpartRule(u, l)];
  }
  if (g.rules) return g.rules;
  const out = [makeRule(u, g.principals, u.sshUsers)];
  if ('self' in g) {
    // An SshDst (a non-self destination): every matching source user.
    for (const l of u.localparts.values()) out.push(localpartRule(u, l));
  } else if (n.userId !== null) {
    const l = u.localparts.get(n.userId);
    if (l) out.push(localpartRule(u, l));
  }
  g.rules = out;
  return out;
}

/** What an SSH rule gives a destination node (its principals), if anything. */
function sshGrant(u: SshUnit, n: NodeInfo): SshDst | SelfPrincipals | undefined {
  for (const d of u.dsts) {
    if (d.self) {
      if (n.tagged || n.userId === null) continue;
      const s = d.byUser.get(n.userId);
      if (s) return s;
    } else if (d.ids.length > 0 && membership(d.ids)(n.id)) return d;
  }
  return undefined;
}

function sshCovered(u: SshUnit, out: Set<number>): void {
  for (const d of u.dsts) {
    for (const id of d.ids) out.add(id);
    for (const s of d.byUser.values()) for (const id of s.ids) out.add(id);
  }
}

/** Adds to `affected` the nodes whose SSH policy differs between two versions of one rule. */
export function sshDiff(a: SshUnit | undefined, b: SshUnit | undefined, affected: Set<number>): void {
  if (a === b) return;
  if (!a || !b || a.dsts.length !== b.dsts.length || a.localparts.size > 0 || b.localparts.size > 0) {
    // Localpart rules also reach source nodes: count them as affected too.
    for (const x of [a, b]) {
      if (!x) continue;
      sshCovered(x, affected);
      if (x.localparts.size > 0) for (const id of x.srcNodes) affected.add(id);
    }
    return;
  }
  for (let k = 0; k < a.dsts.length; k++) {
    const x = a.dsts[k]!;
    const y = b.dsts[k]!;
    if (x.self !== y.self) {
      sshCovered(a, affected);
      sshCovered(b, affected);
      return;
    }
    if (!x.self) {
      if (x.principals === y.principals || sameStrings(x.principals, y.principals)) diffSorted(x.ids, y.ids, (id) => affected.add(id));
      else {
        for (const id of x.ids) affected.add(id);
        for (const id of y.ids) affected.add(id);
      }
      continue;
    }
    for (const [uid, p] of x.byUser) {
      const q = y.byUser.get(uid);
      if (p === q) continue;
      if (q && sameStrings(p.principals, q.principals)) diffSorted(p.ids, q.ids, (id) => affected.add(id));
      else {
        for (const id of p.ids) affected.add(id);
        if (q) for (const id of q.ids) affected.add(id);
      }
    }
    for (const [uid, q] of y.byUser) if (!x.byUser.has(uid)) for (const id of q.ids) affected.add(id);
  }
}
