// The host network plan: the `ip` commands that configure larktund's TUN device
// for a config. The daemon runs exactly these argvs (and --print-network-plan
// prints them), so the plan is pure and deterministic:
//
//   ip link set dev TUN mtu M
//   ip addr add A/L dev TUN            (ip -6 addr add for IPv6), per local_tun_ip
//   ip link set dev TUN up
//   ip route replace DST dev TUN       (ip -6 route replace for IPv6), per
//                                       destination the forwarding table sends to a
//                                       peer, i.e. traffic that must enter the TUN
//
// Route destinations already inside one of the TUN's connected subnets are skipped
// (the kernel adds that route with the address). A default route (/0) is never
// installed: it would also capture the tunnel's own UDP packets to the hub;
// config validation warns about such remote routes instead.
import { formatIP, formatPrefix, prefixContainsPrefix, prefixEqual, type Prefix } from '../net/addr.js';
import { deriveRules, tunSubnet, type Config } from './config.js';

/** Linux interface names: 1..15 bytes, no "/", ":", whitespace; not "." or "..". */
export function tunNameProblem(name: string): string | null {
  if (name.length === 0 || name.length > 15) return `interface name "${name}" must be 1..15 characters`;
  if (name === '.' || name === '..') return `"${name}" is not a valid interface name`;
  if (!/^[A-Za-z0-9_.+-]+$/.test(name)) return `interface name "${name}" may contain only letters, digits and . _ + -`;
  return null;
}

/** The argvs that bring up `tunName` for `cfg`; throws only for an invalid TUN name. */
export function networkPlan(cfg: Config, tunName: string): string[][] {
  const bad = tunNameProblem(tunName);
  if (bad) throw new Error(bad);
  const plan: string[][] = [['ip', 'link', 'set', 'dev', tunName, 'mtu', String(cfg.mtu)]];
  for (const t of cfg.tunAddrs) {
    const fam = t.addr.family === 6 ? ['-6'] : [];
    plan.push(['ip', ...fam, 'addr', 'add', `${formatIP(t.addr)}/${t.bits}`, 'dev', tunName]);
  }
  plan.push(['ip', 'link', 'set', 'dev', tunName, 'up']);

  const connected = cfg.tunAddrs.map(tunSubnet);
  const routed: Prefix[] = [];
  for (const rule of deriveRules(cfg)) {
    if (rule.action !== 'forward' || rule.target === 0) continue;
    const dst = rule.dst;
    if (dst.bits === 0) continue;
    if (connected.some((c) => prefixContainsPrefix(c, dst))) continue;
    if (routed.some((r) => prefixEqual(r, dst))) continue;
    routed.push(dst);
    const fam = dst.family === 6 ? ['-6'] : [];
    plan.push(['ip', ...fam, 'route', 'replace', formatPrefix(dst), 'dev', tunName]);
  }
  return plan;
}

function shellQuote(arg: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** One shell command line per argv, each ending in a newline ("" for no commands). */
export function formatPlan(argvs: readonly (readonly string[])[]): string {
  return argvs.map((argv) => `${argv.map(shellQuote).join(' ')}\n`).join('');
}
