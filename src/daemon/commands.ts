// The control-socket command grammar (subnetra's, one command per line):
//   status [--json]
//   policy add --src CIDR --dst CIDR --action forward|drop [--target N]  (drop ignores the target)
//   policy del --dst CIDR
//   policy show
//   save
// Parsing is pure and shared by the daemon (authoritative) and the CLI (early,
// friendly errors). A line that does not parse changes nothing.
import { AddrError, parsePrefix } from '../net/addr.js';
import type { FwdRule } from '../net/lpm.js';

export type Command =
  | { kind: 'status'; json: boolean }
  | { kind: 'policy-add'; rule: FwdRule }
  | { kind: 'policy-del'; dst: FwdRule['dst'] }
  | { kind: 'policy-show' }
  | { kind: 'save' };

export class CommandError extends Error {
  override name = 'CommandError';
}

function flags(tokens: string[], allowed: readonly string[]): Map<string, string | true> {
  const out = new Map<string, string | true>();
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (!t.startsWith('--')) throw new CommandError(`unexpected "${t}": options start with --`);
    const eq = t.indexOf('=');
    const name = eq >= 0 ? t.slice(2, eq) : t.slice(2);
    if (!allowed.includes(name)) {
      throw new CommandError(`unknown option --${name}; expected one of ${allowed.map((a) => `--${a}`).join(', ')}`);
    }
    if (out.has(name)) throw new CommandError(`--${name} given twice`);
    if (eq >= 0) out.set(name, t.slice(eq + 1));
    else if (i + 1 < tokens.length && !tokens[i + 1]!.startsWith('--')) out.set(name, tokens[++i]!);
    else out.set(name, true);
  }
  return out;
}

function cidr(v: string | true | undefined, flag: string): FwdRule['dst'] {
  if (v === undefined || v === true) throw new CommandError(`--${flag} CIDR is required, e.g. --${flag} 10.0.0.0/24`);
  try {
    return parsePrefix(v, { requireMasked: true, allowBare: false });
  } catch (err) {
    throw new CommandError(`--${flag}: ${(err as AddrError).message}`);
  }
}

export function parseCommand(line: string): Command {
  const tokens = line.trim().split(/\s+/).filter((t) => t.length > 0);
  if (tokens.length === 0) throw new CommandError('empty command');
  const [verb, ...rest] = tokens;
  if (verb === 'status') {
    const f = flags(rest, ['json']);
    if (f.has('json') && f.get('json') !== true) throw new CommandError('--json takes no value');
    return { kind: 'status', json: f.has('json') };
  }
  if (verb === 'save') {
    if (rest.length > 0) throw new CommandError('save takes no arguments');
    return { kind: 'save' };
  }
  if (verb === 'policy') {
    const [sub, ...args] = rest;
    if (sub === 'show') {
      if (args.length > 0) throw new CommandError('policy show takes no arguments');
      return { kind: 'policy-show' };
    }
    if (sub === 'del') {
      const f = flags(args, ['dst']);
      return { kind: 'policy-del', dst: cidr(f.get('dst'), 'dst') };
    }
    if (sub === 'add') {
      const f = flags(args, ['src', 'dst', 'action', 'target']);
      const src = cidr(f.get('src'), 'src');
      const dst = cidr(f.get('dst'), 'dst');
      if (src.family !== dst.family) throw new CommandError('--src and --dst must both be IPv4 or both IPv6');
      const action = f.get('action') ?? 'drop';
      if (action !== 'forward' && action !== 'drop') {
        throw new CommandError(`--action must be forward or drop, got "${String(action)}"`);
      }
      // As in subnetra, --target is parsed whatever the action and ignored
      // for drop, so its scripts and saved tables replay unchanged.
      let target = 0;
      const t = f.get('target');
      if (action === 'forward' && t === undefined) {
        throw new CommandError('--action forward needs --target N (a peer id, or 0 for the local TUN)');
      }
      if (t === true) throw new CommandError('--target needs a value: 0 (local TUN) or a peer id 1..65535');
      if (t !== undefined && (!/^[0-9]{1,5}$/.test(t) || Number(t) > 65535)) {
        throw new CommandError(`--target must be 0 (local TUN) or a peer id 1..65535, got "${t}"`);
      }
      if (action === 'forward') target = Number(t);
      return { kind: 'policy-add', rule: { src, dst, action, target } };
    }
    throw new CommandError(`unknown policy command "${sub ?? ''}"; expected add, del or show`);
  }
  throw new CommandError(`unknown command "${verb}"; expected status, policy add|del|show or save`);
}
