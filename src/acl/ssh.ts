// SSH rules per destination node: principals per rule (autogroup:self per
// user), recompiled per change reusing unchanged users, and the difference
// between two versions of a rule as the nodes it affects.
import { NONE, diffSorted, membership, sameNums, sameStrings, unionOf } from './idlists.js';
import type { NodeInfo } from './model.js';
import type { Change, OwnNodes, Resolver } from './resolve.js';
import { touchedUsers } from './units.js';
import type { SSHRule } from './types.js';

interface SelfPrincipals {
  /** The user's untagged nodes (the destinations). */
  readonly own: OwnNodes;
  readonly ids: readonly number[];
  /** The user's nodes that are sources; null when all of them are. */
  readonly inSrc: readonly number[] | null;
  readonly principals: string[];
  /** The SSHRule every destination gets (built on first use, shared). */
  rule?: SSHRule;
}

interface SshDst {
  readonly self: boolean;
  /** Non-self: destination node ids (ascending) and the principals they get. */
  readonly ids: readonly number[];
  readonly principals: string[];
  /** autogroup:self: per user with at least one principal. */
  readonly byUser: ReadonlyMap<number, SelfPrincipals>;
  /** Non-self: the SSHRule every destination gets (built on first use, shared). */
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
}

const EMPTY_BY_USER: ReadonlyMap<number, SelfPrincipals> = new Map();

/**
 * Compiles the policy's SSH rules. With `prev` and `only`, rules `only`
 * rejects are kept as they were; for the others, autogroup:self principals
 * are recomputed only for the users `ch` touched.
 */
export function compileSsh(r: Resolver, only?: (i: number) => boolean, prev?: SshUnit[], ch?: Change): SshUnit[] {
  const model = r.model;
  const out: SshUnit[] = [];
  for (const [ri, rule] of r.policy.ssh.entries()) {
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
    const ipsOf = (ids: readonly number[]): string[] => {
      const v: string[] = [];
      for (const id of ids) for (const ip of model.nodes.get(id)!.ips) v.push(ip);
      return v;
    };
    let principals: string[] | null = null;
    const allPrincipals = (): string[] => (principals ??= ipsOf(srcNodes));
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
      else sshUsers[u] = u;
    }
    if (!('root' in sshUsers)) sshUsers['root'] = '';
    const action: SSHRule['action'] =
      rule.action === 'accept'
        ? { accept: true, allowAgentForwarding: true, allowLocalPortForwarding: true, allowRemotePortForwarding: true }
        : {
            holdAndDelegate:
              'https://unused/machine/ssh/action/from/$SRC_NODE_ID/to/$DST_NODE_ID/ssh_user/$SSH_USER/local_user/$LOCAL_USER',
            allowAgentForwarding: true,
            allowLocalPortForwarding: true,
            allowRemotePortForwarding: true,
            ...(rule.checkPeriod ? { sessionDuration: rule.checkPeriod * 1e9 } : {}),
          };
    out.push({ dsts, srcNodes, deps, wildcard, sshUsers, action, ...(rule.acceptEnv ? { acceptEnv: rule.acceptEnv } : {}) });
  }
  return out;
}

/** What an SSH rule gives a destination node (its principals), if anything. */
export function sshGrant(u: SshUnit, n: NodeInfo): { principals: readonly string[]; rule?: SSHRule } | undefined {
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
  if (!a || !b || a.dsts.length !== b.dsts.length) {
    if (a) sshCovered(a, affected);
    if (b) sshCovered(b, affected);
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
