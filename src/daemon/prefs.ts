// A managed node's preferences (what `larktun up` / `larktun set` change) and
// the flag rules, Tailscale's in substance: routes must be masked prefixes, the
// two exit routes go together (and only through --advertise-exit-node), tags
// are set only by `up`, a node cannot offer and use an exit node at once, and
// `up` on a configured node must mention every non-default setting it keeps
// (or pass --reset) so that nothing is changed by accident. Pure: shared by the
// CLI (early messages) and the daemon (authoritative).
import { AddrError, formatPrefix, parsePrefix } from '../net/addr.js';

export interface Prefs {
  loginServer: string | null;
  hostname: string | null;
  advertiseRoutes: string[];
  advertiseTags: string[];
  advertiseExitNode: boolean;
  acceptRoutes: boolean;
  /** Exit node to use: a node name, DNS name or overlay IP; null = none. */
  exitNode: string | null;
  exitNodeAllowLanAccess: boolean;
  snatSubnetRoutes: boolean;
}

export const DEFAULT_PREFS: Readonly<Prefs> = Object.freeze({
  loginServer: null,
  hostname: null,
  advertiseRoutes: [],
  advertiseTags: [],
  advertiseExitNode: false,
  acceptRoutes: false,
  exitNode: null,
  exitNodeAllowLanAccess: false,
  snatSubnetRoutes: true,
});

/** Flags as given on the command line (undefined = not mentioned). */
export interface PrefFlags {
  loginServer?: string;
  hostname?: string;
  advertiseRoutes?: string;
  advertiseTags?: string;
  advertiseExitNode?: boolean;
  acceptRoutes?: boolean;
  exitNode?: string;
  exitNodeAllowLanAccess?: boolean;
  snatSubnetRoutes?: boolean;
}

export class PrefsError extends Error {
  override name = 'PrefsError';
}

const FLAG_NAMES: Record<keyof PrefFlags, string> = {
  loginServer: '--login-server',
  hostname: '--hostname',
  advertiseRoutes: '--advertise-routes',
  advertiseTags: '--advertise-tags',
  advertiseExitNode: '--advertise-exit-node',
  acceptRoutes: '--accept-routes',
  exitNode: '--exit-node',
  exitNodeAllowLanAccess: '--exit-node-allow-lan-access',
  snatSubnetRoutes: '--snat-subnet-routes',
};

const splitList = (s: string): string[] =>
  s
    .split(',')
    .map((x) => x.trim())
    .filter((x) => x !== '');

/** Parses --advertise-routes: masked prefixes, canonical text, sorted, no exit routes. */
export function parseRoutes(text: string): string[] {
  const out = new Set<string>();
  let v4def = false;
  let v6def = false;
  for (const r of splitList(text)) {
    let p;
    try {
      p = parsePrefix(r, { requireMasked: true, allowBare: false });
    } catch (err) {
      if (err instanceof AddrError) throw new PrefsError(`--advertise-routes: ${err.message}`);
      throw err;
    }
    if (p.bits === 0) {
      if (p.family === 4) v4def = true;
      else v6def = true;
      continue;
    }
    out.add(formatPrefix(p));
  }
  if (v4def || v6def) {
    if (v4def !== v6def) {
      throw new PrefsError('--advertise-routes: 0.0.0.0/0 and ::/0 must be advertised together; to offer this node as an exit node use --advertise-exit-node');
    }
    throw new PrefsError('--advertise-routes: use --advertise-exit-node instead of listing 0.0.0.0/0 and ::/0');
  }
  return [...out].sort();
}

const TAG_RE = /^tag:[A-Za-z0-9][A-Za-z0-9-]*$/;

export function parseTags(text: string): string[] {
  const tags = splitList(text);
  for (const t of tags) {
    if (!t.startsWith('tag:')) throw new PrefsError(`--advertise-tags: "${t}" is not a tag: tags start with "tag:", e.g. tag:router`);
    if (!TAG_RE.test(t)) throw new PrefsError(`--advertise-tags: "${t}" is not a valid tag name: after "tag:" use letters, digits and dashes, starting with a letter or digit`);
  }
  return [...new Set(tags)].sort();
}

export function parseLoginServer(text: string): string {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new PrefsError(`--login-server: "${text}" is not a URL; expected e.g. https://ctl.example.com or http://127.0.0.1:8080`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new PrefsError(`--login-server: "${text}" must be an http:// or https:// URL`);
  return u.origin + u.pathname.replace(/\/+$/, '');
}

function normalise(f: PrefFlags): Partial<Prefs> {
  const out: Partial<Prefs> = {};
  if (f.loginServer !== undefined) out.loginServer = parseLoginServer(f.loginServer);
  if (f.hostname !== undefined) {
    if (!/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(f.hostname)) {
      throw new PrefsError(`--hostname: "${f.hostname}" is not a host name: use letters, digits, dots and dashes`);
    }
    out.hostname = f.hostname;
  }
  if (f.advertiseRoutes !== undefined) out.advertiseRoutes = parseRoutes(f.advertiseRoutes);
  if (f.advertiseTags !== undefined) out.advertiseTags = parseTags(f.advertiseTags);
  if (f.advertiseExitNode !== undefined) out.advertiseExitNode = f.advertiseExitNode;
  if (f.acceptRoutes !== undefined) out.acceptRoutes = f.acceptRoutes;
  if (f.exitNode !== undefined) out.exitNode = f.exitNode.trim() === '' ? null : f.exitNode.trim();
  if (f.exitNodeAllowLanAccess !== undefined) out.exitNodeAllowLanAccess = f.exitNodeAllowLanAccess;
  if (f.snatSubnetRoutes !== undefined) out.snatSubnetRoutes = f.snatSubnetRoutes;
  return out;
}

function checkCombination(p: Prefs): void {
  if (p.advertiseExitNode && p.exitNode !== null) {
    throw new PrefsError('cannot advertise this node as an exit node and use an exit node at the same time (drop --advertise-exit-node or set --exit-node=)');
  }
}

const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

function flagText(k: keyof PrefFlags, v: Prefs[keyof Prefs]): string {
  const name = FLAG_NAMES[k];
  if (typeof v === 'boolean') return v ? name : `${name}=false`;
  if (Array.isArray(v)) return `${name}=${v.join(',')}`;
  return `${name}=${v ?? ''}`;
}

/**
 * `larktun up`: the flags given replace the preferences; a setting that is not
 * mentioned falls back to its default, which is refused (unless `reset`) when
 * the current value is not the default — the user is shown the full command.
 */
export function prefsForUp(current: Prefs | null, flags: PrefFlags, reset: boolean): Prefs {
  const given = normalise(flags);
  const next: Prefs = { ...DEFAULT_PREFS, advertiseRoutes: [], advertiseTags: [], ...given };
  if (next.loginServer === null) next.loginServer = current?.loginServer ?? null;
  if (current && !reset) {
    const lost: (keyof PrefFlags)[] = [];
    for (const k of Object.keys(FLAG_NAMES) as (keyof PrefFlags)[]) {
      if (k === 'loginServer' || k === 'hostname' || k in given) continue;
      if (!same(current[k], DEFAULT_PREFS[k])) lost.push(k);
    }
    if (current.hostname !== null && !('hostname' in given)) next.hostname = current.hostname;
    if (lost.length) {
      const keep = lost.map((k) => flagText(k, current[k]));
      const mentioned = (Object.keys(given) as (keyof PrefFlags)[]).filter((k) => k !== 'loginServer').map((k) => flagText(k, next[k]));
      throw new PrefsError(
        `changing settings with 'larktun up' requires mentioning every non-default setting; missing: ${lost.map((k) => FLAG_NAMES[k]).join(', ')}.\n` +
          `To keep them, run:\n\n\tlarktun up ${[...mentioned, ...keep].join(' ')}\n\n` +
          `or use 'larktun set' to change only what you name, or 'larktun up --reset' to return the rest to defaults.`,
      );
    }
  }
  checkCombination(next);
  return next;
}

/** `larktun set`: changes only the flags given. Tags and the login server are `up`'s. */
export function prefsForSet(current: Prefs, flags: PrefFlags): Prefs {
  if (flags.advertiseTags !== undefined) throw new PrefsError('--advertise-tags can only be set with larktun up');
  if (flags.loginServer !== undefined) throw new PrefsError('--login-server can only be set with larktun up');
  const next: Prefs = { ...current, ...normalise(flags) };
  // Choosing an exit node while offering one: the newer wish wins, like Tailscale's set.
  if (flags.exitNode !== undefined && next.exitNode !== null && flags.advertiseExitNode === undefined) next.advertiseExitNode = false;
  checkCombination(next);
  return next;
}

/** The non-default settings as `up` flags (for status and messages). */
export function prefsAsFlags(p: Prefs): string[] {
  const out: string[] = [];
  if (p.loginServer) out.push(`--login-server=${p.loginServer}`);
  for (const k of Object.keys(FLAG_NAMES) as (keyof PrefFlags)[]) {
    if (k === 'loginServer') continue;
    if (!same(p[k], DEFAULT_PREFS[k])) out.push(flagText(k, p[k]));
  }
  return out;
}
