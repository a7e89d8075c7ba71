// Routes: canonical prefix text and ordering, exit routes, approval requests,
// HA primary election and auto-approval.
import { type Prefix, formatPrefix, tryParsePrefix } from '../net/addr.js';
import { IPSet } from '../net/ipset.js';

export const EXIT_V4 = '0.0.0.0/0';
export const EXIT_V6 = '::/0';

export function canonPrefix(s: string): string | null {
  const p = tryParsePrefix(s, { allowBare: false });
  return p ? formatPrefix(p) : null;
}

const prefixSets = new Map<string, IPSet>();

/** IPSet of a canonical prefix string, cached. */
export function prefixSet(p: string): IPSet {
  let s = prefixSets.get(p);
  if (!s) {
    s = IPSet.fromPrefix(tryParsePrefix(p)!);
    prefixSets.set(p, s);
  }
  return s;
}

export function isExitRoute(p: Prefix): boolean {
  return p.bits === 0;
}

export function comparePrefix(a: Prefix, b: Prefix): number {
  if (a.family !== b.family) return a.family - b.family;
  if (a.addr !== b.addr) return a.addr < b.addr ? -1 : 1;
  return a.bits - b.bits;
}

/** Parses, canonicalises, de-duplicates and sorts (IPv4 first, by address then length). Invalid entries are dropped. */
export function sortRoutes(routes: Iterable<string>): string[] {
  const seen = new Map<string, Prefix>();
  for (const r of routes) {
    const p = tryParsePrefix(r, { allowBare: false });
    if (p) seen.set(formatPrefix(p), p);
  }
  return [...seen.entries()].sort((a, b) => comparePrefix(a[1], b[1])).map(([s]) => s);
}

/** Routes a node actually serves: announced AND approved. */
export function servingRoutes(node: { announced_routes: string[]; approved_routes: string[] }): string[] {
  const ann = new Set(sortRoutes(node.announced_routes));
  return sortRoutes(node.approved_routes).filter((r) => ann.has(r));
}

export type ApproveResult = { ok: true; routes: string[]; isExitNode: boolean } | { ok: false; error: string };

/**
 * The admin "set approved routes" request: the list REPLACES the approved
 * set; one exit family implies both; sorted and de-duplicated.
 */
export function setApprovedRoutes(requested: string[]): ApproveResult {
  const out: string[] = [];
  for (const r of requested) {
    const c = canonPrefix(r);
    if (c === null) return { ok: false, error: `parsing route ${JSON.stringify(r)}: not a valid IP prefix` };
    out.push(c);
    if (c === EXIT_V4) out.push(EXIT_V6);
    if (c === EXIT_V6) out.push(EXIT_V4);
  }
  const routes = sortRoutes(out);
  return { ok: true, routes, isExitNode: routes.includes(EXIT_V4) || routes.includes(EXIT_V6) };
}

export interface ElectionNode {
  id: number;
  online: boolean;
  healthy?: boolean;
  announced_routes: string[];
  approved_routes: string[];
}

/**
 * HA primary per exact prefix. Candidates are online nodes serving the
 * prefix (announced and approved). A healthy current primary is kept
 * (anti-flap); otherwise the lowest id among healthy candidates wins; when
 * every candidate is unhealthy the current primary is kept if still a
 * candidate, else the lowest id. Exit routes are never elected.
 */
export function electPrimaries(
  nodes: Iterable<ElectionNode>,
  previous: ReadonlyMap<string, number> = new Map(),
): Map<string, number> {
  const cands = new Map<string, ElectionNode[]>();
  for (const n of nodes) {
    if (!n.online) continue;
    for (const r of servingRoutes(n)) {
      if (r === EXIT_V4 || r === EXIT_V6) continue;
      let l = cands.get(r);
      if (!l) cands.set(r, (l = []));
      l.push(n);
    }
  }
  const out = new Map<string, number>();
  for (const [prefix, list] of cands) {
    out.set(prefix, pickPrimary(list, previous.get(prefix)));
  }
  return out;
}

export function pickPrimary(list: ReadonlyArray<Pick<ElectionNode, 'id' | 'healthy'>>, prev: number | undefined): number {
  const healthy = list.filter((n) => n.healthy !== false);
  const prevNode = prev === undefined ? undefined : list.find((n) => n.id === prev);
  if (prevNode && prevNode.healthy !== false) return prevNode.id;
  if (healthy.length > 0) return Math.min(...healthy.map((n) => n.id));
  if (prevNode) return prevNode.id;
  return Math.min(...list.map((n) => n.id));
}

/** Stateful election helper for a server: feed it the current nodes on every change. */
export class PrimaryElector {
  private current = new Map<string, number>();
  update(nodes: Iterable<ElectionNode>): Map<string, number> {
    this.current = electPrimaries(nodes, this.current);
    return new Map(this.current);
  }
  get primaries(): ReadonlyMap<string, number> {
    return this.current;
  }
}
