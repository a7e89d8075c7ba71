// OS integration of the managed node (src/daemon/osnet.ts): the pure planner and
// parsers without root, then real runs in fresh network namespaces (as root). Every
// address used lives inside namespaces made here; only the forwarding test sends
// packets, between its own three namespaces.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import {
  OsNet,
  OsNetError,
  nftScript,
  nftSpec,
  parseAddrShow,
  parseLan,
  parseRoutes,
  parseRules,
  planOsNet,
  SYSCTL_FORWARD_V4,
  SYSCTL_FORWARD_V6,
  type OsNetDesired,
  type OsNetExec,
  type OsNetPlanOptions,
  type OsNetState,
  type OsNetStep,
} from '../../src/daemon/osnet.js';

const OPTS: OsNetPlanOptions = { table: 52, rulePriority: 5270, nftTable: 'larktun', savedSysctls: null };

const desired = (over: Partial<OsNetDesired> = {}): OsNetDesired => ({
  dev: 'lt0',
  mtu: 1280,
  addresses: ['100.64.0.5/32', 'fd7a:115c:a1e0::5/128'],
  routes: ['100.64.0.0/10', 'fd7a:115c:a1e0::/48'],
  exitNode: false,
  exclude: [],
  allowLan: false,
  forwarding: false,
  masquerade: false,
  ...over,
});

const empty = (over: Partial<OsNetState> = {}): OsNetState => ({
  dev: 'lt0',
  link: { mtu: 1500, up: false },
  addresses: [],
  routes: [],
  rules: [],
  lan: [],
  nft: null,
  sysctls: {},
  ipv6: true,
  ...over,
});

/** The state a successful apply of `d` leaves (as readState would report it). */
function settled(d: OsNetDesired, over: Partial<OsNetState> = {}): OsNetState {
  return empty({
    dev: d.dev,
    link: { mtu: d.mtu, up: true },
    addresses: [...d.addresses],
    routes: d.routes.map((dst) => ({ family: dst.includes(':') ? 6 : 4, dst, type: 'unicast', dev: d.dev, ...(dst.includes(':') ? { metric: 1024 } : {}) })),
    rules: [
      { family: 4, priority: 5270, table: '52', plain: true },
      { family: 6, priority: 5270, table: '52', plain: true },
    ],
    nft: d.masquerade ? nftSpec(d.dev) : null,
    sysctls: d.forwarding ? { [SYSCTL_FORWARD_V4]: '1', [SYSCTL_FORWARD_V6]: '1' } : {},
    ...over,
  });
}

const lines = (steps: readonly OsNetStep[]): string[] => steps.map((s) => s.argv.join(' '));

describe('planOsNet (pure)', () => {
  test('from nothing: link, addresses, routes (throws first), rules, nft, then forwarding', () => {
    const d = desired({ exitNode: true, exclude: ['203.0.113.7', '2001:db8::7/128'], forwarding: true, masquerade: true });
    const plan = planOsNet(d, empty({ sysctls: { [SYSCTL_FORWARD_V4]: '0', [SYSCTL_FORWARD_V6]: '0' } }), OPTS);
    assert.deepEqual(lines(plan.steps), [
      'ip link set dev lt0 mtu 1280',
      'ip link set dev lt0 up',
      'ip addr add 100.64.0.5/32 dev lt0',
      'ip addr add fd7a:115c:a1e0::5/128 dev lt0 nodad',
      'ip route replace throw 203.0.113.7/32 table 52',
      'ip route replace throw 2001:db8::7/128 table 52',
      'ip route replace 100.64.0.0/10 dev lt0 table 52',
      'ip route replace 0.0.0.0/0 dev lt0 table 52',
      'ip route replace fd7a:115c:a1e0::/48 dev lt0 table 52',
      'ip route replace ::/0 dev lt0 table 52',
      'ip rule add pref 5270 lookup 52',
      'ip -6 rule add pref 5270 lookup 52',
      'nft -f -',
      'sysctl -w net.ipv4.ip_forward=1',
      'sysctl -w net.ipv6.conf.all.forwarding=1',
    ]);
    const nft = plan.steps.find((s) => s.argv[0] === 'nft')!;
    assert.equal(nft.input, nftScript('larktun', 'lt0'));
    assert.match(nft.input!, /^table inet larktun\ndelete table inet larktun\ntable inet larktun \{/);
    assert.match(nft.input!, /type nat hook postrouting priority 100; policy accept;/);
    assert.match(nft.input!, /iifname "lt0" oifname != "lt0" counter masquerade comment "larktun:masq iif=lt0 v1"/);
    assert.deepEqual(plan.warnings, []);
  });

  test('idempotent: a settled state plans nothing', () => {
    const d = desired({ forwarding: true, masquerade: true });
    assert.deepEqual(planOsNet(d, settled(d), OPTS).steps, []);
    const x = desired({ exitNode: true, exclude: ['203.0.113.7'] });
    const st = settled(x);
    st.routes.push(
      { family: 4, dst: '0.0.0.0/0', type: 'unicast', dev: 'lt0' },
      { family: 6, dst: '::/0', type: 'unicast', dev: 'lt0', metric: 1024 },
      { family: 4, dst: '203.0.113.7/32', type: 'throw' },
    );
    assert.deepEqual(planOsNet(x, st, OPTS).steps, []);
  });

  test('only the delta: a removed route, an added address, a changed MTU', () => {
    const before = desired({ routes: ['100.64.0.0/10', '10.99.0.0/16', 'fd7a:115c:a1e0::/48'] });
    const after = desired({ addresses: [...before.addresses, '100.64.0.6/32'], mtu: 1400 });
    assert.deepEqual(lines(planOsNet(after, settled(before), OPTS).steps), [
      'ip link set dev lt0 mtu 1400',
      'ip addr add 100.64.0.6/32 dev lt0',
      'ip route del 10.99.0.0/16 table 52',
    ]);
  });

  test('addresses: new ones before removals (the last IPv4 address takes its routes along)', () => {
    const d = desired();
    assert.deepEqual(lines(planOsNet(desired({ addresses: ['100.64.0.9/32', 'fd7a:115c:a1e0::5/128'] }), settled(d), OPTS).steps), [
      'ip addr add 100.64.0.9/32 dev lt0',
      'ip addr del 100.64.0.5/32 dev lt0',
    ]);
    assert.deepEqual(lines(planOsNet(desired({ addresses: ['100.64.0.5/32', 'fd7a:115c:a1e0::5/64'] }), settled(d), OPTS).steps), [
      'ip addr del fd7a:115c:a1e0::5/128 dev lt0',
      'ip addr add fd7a:115c:a1e0::5/64 dev lt0 nodad',
    ]);
  });

  test('stray state is removed: foreign addresses, routes and rules at our priority', () => {
    const d = desired();
    const st = settled(d);
    st.addresses.push('192.0.2.9/24');
    st.routes.push({ family: 4, dst: '198.51.100.0/24', type: 'blackhole' }, { family: 6, dst: 'fd00::/8', type: 'unicast', dev: 'eth0', metric: 1024 });
    st.rules = [
      { family: 4, priority: 5270, table: '99', plain: true },
      { family: 6, priority: 5270, table: '52', plain: true },
      { family: 6, priority: 5270, table: '52', plain: false },
    ];
    assert.deepEqual(lines(planOsNet(d, st, OPTS).steps), [
      'ip addr del 192.0.2.9/24 dev lt0',
      'ip route del blackhole 198.51.100.0/24 table 52',
      'ip route del fd00::/8 table 52 metric 1024',
      'ip rule del pref 5270',
      'ip rule add pref 5270 lookup 52',
      'ip -6 rule del pref 5270',
      'ip -6 rule del pref 5270',
      'ip -6 rule add pref 5270 lookup 52',
    ]);
  });

  test('route changes: type change in place, duplicates and odd metrics removed first', () => {
    const d = desired({ routes: ['100.64.0.0/10', 'fd7a:115c:a1e0::/48'], exclude: ['100.64.0.0/10'] });
    const st = settled(desired());
    st.routes.push({ family: 6, dst: 'fd7a:115c:a1e0::/48', type: 'unicast', dev: 'lt0', metric: 7 });
    assert.deepEqual(lines(planOsNet(d, st, OPTS).steps), [
      'ip route replace throw 100.64.0.0/10 table 52', // exclude beats route
      'ip route del fd7a:115c:a1e0::/48 table 52 metric 1024',
      'ip route del fd7a:115c:a1e0::/48 table 52 metric 7',
      'ip route replace fd7a:115c:a1e0::/48 dev lt0 table 52',
    ]);
  });

  test('allowLan: LAN throws only with exitNode; an identical accepted route wins', () => {
    const lan = ['192.168.7.0/24', 'fe80::/64', '10.99.0.0/16'];
    const routes = ['100.64.0.0/10', '10.99.0.0/16'];
    const noExit = planOsNet(desired({ routes, allowLan: true }), empty({ lan }), OPTS);
    assert.ok(!lines(noExit.steps).some((l) => l.includes('throw')));
    const exit = lines(planOsNet(desired({ routes, allowLan: true, exitNode: true }), empty({ lan }), OPTS).steps);
    assert.ok(exit.includes('ip route replace throw 192.168.7.0/24 table 52'));
    assert.ok(exit.includes('ip route replace throw fe80::/64 table 52'));
    assert.ok(exit.includes('ip route replace 10.99.0.0/16 dev lt0 table 52'));
    assert.ok(!exit.includes('ip route replace throw 10.99.0.0/16 table 52'));
    const noLan = lines(planOsNet(desired({ exitNode: true }), empty({ lan }), OPTS).steps);
    assert.ok(!noLan.some((l) => l.includes('throw')));
  });

  test('forwarding off restores what was saved; nothing saved, nothing touched', () => {
    const on = desired({ forwarding: true, masquerade: true });
    const saved = { [SYSCTL_FORWARD_V4]: '0', [SYSCTL_FORWARD_V6]: '0' };
    const off = desired();
    assert.deepEqual(lines(planOsNet(off, settled(on), { ...OPTS, savedSysctls: saved }).steps), [
      'sysctl -w net.ipv4.ip_forward=0',
      'sysctl -w net.ipv6.conf.all.forwarding=0',
      'nft -f -',
    ]);
    assert.deepEqual(lines(planOsNet(off, settled(on), OPTS).steps), ['nft -f -']);
    const del = planOsNet(off, settled(on), OPTS).steps[0]!;
    assert.equal(del.input, 'table inet larktun\ndelete table inet larktun\n');
    // Already forwarding before us: nothing to enable.
    assert.deepEqual(planOsNet(on, settled(on), OPTS).steps, []);
  });

  test('nft: a table from another version or device is replaced', () => {
    const d = desired({ masquerade: true });
    assert.deepEqual(lines(planOsNet(d, settled(d, { nft: '' }), OPTS).steps), ['nft -f -']);
    assert.deepEqual(lines(planOsNet(d, settled(d, { nft: nftSpec('other0') }), OPTS).steps), ['nft -f -']);
  });

  test('teardown: rules, routes, addresses, sysctls, nft; nothing left alone', () => {
    const d = desired({ exitNode: true, forwarding: true, masquerade: true });
    const st = settled(d);
    const plan = planOsNet(null, st, { ...OPTS, savedSysctls: { [SYSCTL_FORWARD_V4]: '0', [SYSCTL_FORWARD_V6]: '1' } });
    assert.deepEqual(lines(plan.steps), [
      'ip rule del pref 5270',
      'ip -6 rule del pref 5270',
      'ip route del 100.64.0.0/10 table 52',
      'ip route del fd7a:115c:a1e0::/48 table 52 metric 1024',
      'ip addr del 100.64.0.5/32 dev lt0',
      'ip addr del fd7a:115c:a1e0::5/128 dev lt0',
      'sysctl -w net.ipv4.ip_forward=0',
      'nft -f -',
    ]);
    // Device unknown or gone: only the shared state.
    assert.deepEqual(lines(planOsNet(null, settled(d, { dev: null, link: null, routes: [] }), OPTS).steps), [
      'ip rule del pref 5270',
      'ip -6 rule del pref 5270',
      'nft -f -',
    ]);
    assert.deepEqual(planOsNet(null, empty({ dev: null, link: null }), OPTS).steps, []);
  });

  test('no IPv6 on the host: IPv6 items skipped with warnings', () => {
    const plan = planOsNet(desired({ exitNode: true, forwarding: true }), empty({ ipv6: false }), OPTS);
    const l = lines(plan.steps);
    assert.ok(!l.some((x) => x.includes(':') || x.includes('-6') || x.includes('ipv6')), l.join('\n'));
    assert.ok(l.includes('ip route replace 0.0.0.0/0 dev lt0 table 52'));
    assert.equal(plan.warnings.length, 2);
  });

  test('invalid desired state is rejected with the reason', () => {
    assert.throws(() => planOsNet(desired({ dev: 'bad name' }), empty(), OPTS), /may contain only/);
    assert.throws(() => planOsNet(desired({ mtu: 20 }), empty(), OPTS), /mtu 20/);
    assert.throws(() => planOsNet(desired({ mtu: 1200 }), empty(), OPTS), /below 1280/);
    assert.throws(() => planOsNet(desired({ routes: ['10.0.0.1/8'] }), empty(), OPTS), /route: .*host bits/);
    assert.throws(() => planOsNet(desired({ exclude: ['nope'] }), empty(), OPTS), /exclude: /);
    assert.throws(() => planOsNet(desired({ addresses: ['100.64.0.5/33'] }), empty(), OPTS), /prefix length/);
    assert.throws(() => planOsNet(desired(), empty({ link: null }), OPTS), /does not exist/);
    assert.throws(() => planOsNet(desired(), empty(), { ...OPTS, table: 254 }), /253..255/);
    assert.throws(() => new OsNet({ rulePriority: 40000 }), /rule priority/);
    assert.throws(() => new OsNet({ nftTable: 'x y' }), /nft table name/);
  });
});

describe('parsers (ip -j output)', () => {
  test('routes: default, bare host, throw, metric, gateway', () => {
    const v4 = '[{"dst":"default","dev":"lt0","scope":"link","flags":["linkdown"]},{"type":"throw","dst":"10.77.2.2","flags":[]},{"dst":"100.64.0.0/10","dev":"lt0","scope":"link","flags":[]},{"dst":"10.1.0.0/16","gateway":"10.0.0.1","dev":"eth0","flags":[]}]';
    assert.deepEqual(parseRoutes(v4, 4), [
      { family: 4, dst: '0.0.0.0/0', type: 'unicast', dev: 'lt0' },
      { family: 4, dst: '10.77.2.2/32', type: 'throw' },
      { family: 4, dst: '100.64.0.0/10', type: 'unicast', dev: 'lt0' },
      { family: 4, dst: '10.1.0.0/16', type: 'unicast', dev: 'eth0', gateway: '10.0.0.1' },
    ]);
    const v6 = '[{"type":"throw","dst":"2001:db8::1","dev":"lo","metric":1024,"flags":[],"pref":"medium"},{"dst":"default","dev":"lt0","metric":1024,"flags":["linkdown"],"pref":"medium"}]';
    assert.deepEqual(parseRoutes(v6, 6), [
      { family: 6, dst: '2001:db8::1/128', type: 'throw', dev: 'lo', metric: 1024 },
      { family: 6, dst: '::/0', type: 'unicast', dev: 'lt0', metric: 1024 },
    ]);
    assert.deepEqual(parseRoutes('', 4), []);
    assert.throws(() => parseRoutes('Error', 4), /not JSON/);
  });

  test('LAN: connected prefixes not on the TUN, deduplicated, no defaults or gateways', () => {
    const main6 = '[{"dst":"fd7a:115c:a1e0::5","dev":"lt0","protocol":"kernel","metric":256,"flags":["linkdown"],"pref":"medium"},{"dst":"fe80::/64","dev":"rl","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},{"dst":"fe80::/64","dev":"rc","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},{"dst":"default","dev":"rc","metric":1024}]';
    assert.deepEqual(parseLan(main6, 6, 'lt0'), ['fe80::/64']);
    const main4 = '[{"dst":"default","gateway":"192.168.7.1","dev":"eth0"},{"dst":"192.168.7.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.168.7.20","flags":[]},{"type":"blackhole","dst":"10.9.0.0/16","flags":[]}]';
    assert.deepEqual(parseLan(main4, 4, 'lt0'), ['192.168.7.0/24']);
  });

  test('rules: only our priority; plain means from all lookup TABLE', () => {
    const j = '[{"priority":0,"src":"all","table":"local"},{"priority":5270,"src":"all","table":"52"},{"priority":5270,"src":"all","fwmark":"0x1","table":"52"},{"priority":32766,"src":"all","table":"main"}]';
    assert.deepEqual(parseRules(j, 4, 5270), [
      { family: 4, priority: 5270, table: '52', plain: true },
      { family: 4, priority: 5270, table: '52', plain: false },
    ]);
  });

  test('addr show: mtu, up, global addresses only', () => {
    const j = '[{"ifindex":4,"ifname":"lt0","flags":["NO-CARRIER","POINTOPOINT","MULTICAST","NOARP","UP"],"mtu":1280,"addr_info":[{"family":"inet","local":"100.64.0.5","prefixlen":32,"scope":"global"},{"family":"inet6","local":"fd7a:115c:a1e0:0::5","prefixlen":128,"scope":"global","nodad":true},{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]';
    assert.deepEqual(parseAddrShow(j), { link: { mtu: 1280, up: true }, addresses: ['100.64.0.5/32', 'fd7a:115c:a1e0::5/128'] });
    assert.equal(parseAddrShow('[]'), null);
  });
});

describe('OsNet with a scripted exec (no root)', () => {
  /** Answers reads like an empty host; records what ran; fails batches as told. */
  function fakeHost(failBatchLine?: { line: number; stderr: string }) {
    const ran: { argv: string[]; input?: string }[] = [];
    const exec: OsNetExec = async (argv, input) => {
      const a = argv.join(' ');
      if (a.includes(' -batch ')) {
        ran.push({ argv: [...argv], input });
        if (failBatchLine) return { code: 1, stdout: '', stderr: `${failBatchLine.stderr}\nCommand failed -:${failBatchLine.line}\n` };
        return { code: 0, stdout: '', stderr: '' };
      }
      if (a.startsWith('ip -j addr show dev lt0')) return { code: 0, stdout: '[{"ifname":"lt0","flags":["POINTOPOINT"],"mtu":1500,"addr_info":[]}]', stderr: '' };
      if (a.startsWith('ip -j addr show')) return { code: 1, stdout: '', stderr: `Device "${argv.at(-1)}" does not exist.\n` };
      if (a.startsWith('ip -j')) return { code: 0, stdout: '[]\n', stderr: '' };
      if (a.startsWith('nft list')) return { code: 1, stdout: '', stderr: 'Error: No such file or directory\n' };
      if (a.startsWith('sysctl -n')) return { code: 0, stdout: '0\n', stderr: '' };
      ran.push({ argv: [...argv], input });
      return { code: 0, stdout: '', stderr: '' };
    };
    return { exec, ran };
  }

  test('ip steps run as few batches; the change lists every step', async () => {
    const h = fakeHost();
    const os = new OsNet({ exec: h.exec });
    const change = await os.apply(desired({ forwarding: true, masquerade: true }));
    assert.equal(change.changed, true);
    assert.deepEqual(
      h.ran.map((r) => r.argv.join(' ')),
      ['ip -batch -', 'ip -6 -batch -', 'nft -f -', 'sysctl -w net.ipv4.ip_forward=1', 'sysctl -w net.ipv6.conf.all.forwarding=1'],
    );
    assert.equal(
      h.ran[0]!.input,
      'link set dev lt0 mtu 1280\nlink set dev lt0 up\naddr add 100.64.0.5/32 dev lt0\naddr add fd7a:115c:a1e0::5/128 dev lt0 nodad\n' +
        'route replace 100.64.0.0/10 dev lt0 table 52\nroute replace fd7a:115c:a1e0::/48 dev lt0 table 52\nrule add pref 5270 lookup 52\n',
    );
    assert.equal(h.ran[1]!.input, 'rule add pref 5270 lookup 52\n');
    assert.deepEqual(os.savedSysctls, { [SYSCTL_FORWARD_V4]: '0', [SYSCTL_FORWARD_V6]: '0' });
    assert.ok(change.steps.every((s) => s.what.length > 0));
  });

  test('a failing batch line names that command and its stderr', async () => {
    const h = fakeHost({ line: 3, stderr: 'RTNETLINK answers: Permission denied' });
    const os = new OsNet({ exec: h.exec });
    await assert.rejects(os.apply(desired()), (e: unknown) => {
      assert.ok(e instanceof OsNetError);
      assert.equal(e.command, 'ip addr add 100.64.0.5/32 dev lt0');
      assert.match(e.message, /^ip addr add 100\.64\.0\.5\/32 dev lt0 failed \(exit 1\): RTNETLINK answers: Permission denied$/);
      return true;
    });
    assert.equal(h.ran.length, 1, 'stops at the first failure');
  });

  test('a missing device fails with the ip command that found it missing', async () => {
    const os = new OsNet({ exec: fakeHost().exec });
    await assert.rejects(os.apply(desired({ dev: 'nope0' })), /ip -j addr show dev nope0 failed \(exit 1\): Device "nope0" does not exist\./);
  });
});

// ---------------------------------------------------------------- real namespaces

function skipReason(tools: string[]): string | false {
  if (process.platform !== 'linux') return 'needs Linux network namespaces';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root (network namespaces)';
  if (!existsSync('/dev/net/tun')) return 'needs /dev/net/tun';
  for (const t of ['ip', ...tools]) {
    if (spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0) return `needs the ${t} command`;
  }
  const probe = `ltos-probe${process.pid}`;
  if (spawnSync('ip', ['netns', 'add', probe]).status !== 0) return 'cannot create network namespaces here';
  spawnSync('ip', ['netns', 'del', probe]);
  return false;
}

const namespaces: string[] = [];
after(() => {
  for (const ns of namespaces) spawnSync('ip', ['netns', 'del', ns]);
});

function addNs(base: string): string {
  const ns = `ltos-${process.pid}-${base}`;
  spawnSync('ip', ['netns', 'del', ns]);
  namespaces.push(ns);
  run(`ip netns add ${ns} && ip -n ${ns} link set lo up`);
  return ns;
}

function run(cmd: string, allowFail = false): { status: number; out: string; err: string } {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8', timeout: 20_000 });
  const res = { status: r.status ?? -1, out: r.stdout ?? '', err: r.stderr ?? '' };
  if (!allowFail && res.status !== 0) throw new Error(`command failed (${res.status}): ${cmd}\n${res.out}${res.err}`);
  return res;
}

const inNs = (ns: string, cmd: string, allowFail = false) => run(`ip netns exec ${ns} sh -c '${cmd.replace(/'/g, `'\\''`)}'`, allowFail);
const json = <T = Record<string, unknown>[]>(ns: string, cmd: string): T => JSON.parse(inNs(ns, cmd).out) as T;
const sysctl = (ns: string, k: string): string => inNs(ns, `sysctl -n ${k}`).out.trim();

type JRoute = { dst: string; type?: string; dev?: string };
const table = (ns: string, fam: 4 | 6): string[] =>
  json<JRoute[]>(ns, `ip -j -${fam} route show table 52`)
    .map((r) => `${r.type === 'throw' ? 'throw ' : ''}${r.dst}${r.type === 'throw' ? '' : ` dev ${r.dev}`}`)
    .sort();
const rules = (ns: string, fam: 4 | 6): string[] =>
  json<{ priority: number; table: string }[]>(ns, `ip -j -${fam} rule show`)
    .filter((r) => r.priority === 5270)
    .map((r) => `${r.priority} ${r.table}`);

describe('OsNet in a network namespace', { skip: skipReason(['nft', 'sysctl']) }, () => {
  test('apply, re-apply, delta, teardown', async () => {
    const ns = addNs('a');
    // The TUN and a "LAN" interface (a second TUN: no carrier, nothing is sent),
    // plus a main-table default so route lookups have an underlay to fall back to.
    inNs(ns, 'ip tuntap add dev lt0 mode tun && ip tuntap add dev lan0 mode tun');
    inNs(ns, 'ip addr add 198.18.5.1/24 dev lan0 && ip link set lan0 up && ip route add default dev lan0');
    const v4Before = sysctl(ns, SYSCTL_FORWARD_V4);
    const v6Before = sysctl(ns, SYSCTL_FORWARD_V6);
    assert.equal(v4Before, '0');

    const os = new OsNet({ netns: ns });
    const d = desired({
      routes: ['100.64.0.0/10', 'fd7a:115c:a1e0::/48', '10.99.0.0/16'],
      exitNode: true,
      exclude: ['203.0.113.7', '2001:db8::7'],
      allowLan: true,
      forwarding: true,
      masquerade: true,
    });
    const first = await os.apply(d);
    assert.equal(first.changed, true);

    const link = json(ns, 'ip -j addr show dev lt0')[0]!;
    assert.equal(link.mtu, 1280);
    assert.ok((link.flags as string[]).includes('UP'));
    const addrs = (link.addr_info as { local: string; prefixlen: number; scope: string }[]).filter((a) => a.scope === 'global').map((a) => `${a.local}/${a.prefixlen}`);
    assert.deepEqual(addrs.sort(), ['100.64.0.5/32', 'fd7a:115c:a1e0::5/128']);

    assert.deepEqual(table(ns, 4), ['10.99.0.0/16 dev lt0', '100.64.0.0/10 dev lt0', 'default dev lt0', 'throw 198.18.5.0/24', 'throw 203.0.113.7'].sort());
    const t6 = table(ns, 6);
    for (const r of ['default dev lt0', 'fd7a:115c:a1e0::/48 dev lt0', 'throw 2001:db8::7']) assert.ok(t6.includes(r), `${r} in ${t6.join(', ')}`);
    assert.deepEqual(rules(ns, 4), ['5270 52']);
    assert.deepEqual(rules(ns, 6), ['5270 52']);
    // Lookups (no packets): the exit node catches the rest, throws fall back to main.
    assert.match(inNs(ns, 'ip route get 192.0.2.80').out, /dev lt0 table 52/);
    assert.match(inNs(ns, 'ip route get 203.0.113.7').out, /dev lan0/);
    assert.match(inNs(ns, 'ip route get 198.18.5.9').out, /dev lan0/);

    assert.equal(sysctl(ns, SYSCTL_FORWARD_V4), '1');
    assert.equal(sysctl(ns, SYSCTL_FORWARD_V6), '1');
    const nft = inNs(ns, 'nft list table inet larktun').out;
    assert.match(nft, /iifname "lt0" oifname != "lt0" counter packets \d+ bytes \d+ masquerade/);

    // Same state again: nothing to do.
    const again = await os.apply(d);
    assert.deepEqual(again.steps, []);
    assert.equal(again.changed, false);

    // Drop a route and the exit node: only those routes go.
    const delta = await os.apply({ ...d, routes: ['100.64.0.0/10', 'fd7a:115c:a1e0::/48'], exitNode: false });
    assert.deepEqual(lines(delta.steps), [
      'ip route del 0.0.0.0/0 table 52',
      'ip route del 10.99.0.0/16 table 52',
      'ip route del ::/0 table 52 metric 1024',
      'ip route del throw 198.18.5.0/24 table 52', // the LAN throw
    ]);
    assert.deepEqual(table(ns, 4), ['100.64.0.0/10 dev lt0', 'throw 203.0.113.7']);
    assert.deepEqual(table(ns, 6), ['fd7a:115c:a1e0::/48 dev lt0', 'throw 2001:db8::7']);
    assert.deepEqual(rules(ns, 4), ['5270 52']);
    assert.match(inNs(ns, 'nft list table inet larktun').out, /masquerade/);
    assert.equal(sysctl(ns, SYSCTL_FORWARD_V4), '1');

    // Someone removed our rule: the next apply puts back just that.
    inNs(ns, 'ip rule del pref 5270');
    assert.deepEqual(lines((await os.apply({ ...d, routes: ['100.64.0.0/10', 'fd7a:115c:a1e0::/48'], exitNode: false })).steps), ['ip rule add pref 5270 lookup 52']);

    // Replacing the only IPv4 address, then dropping IPv4 addresses altogether: the
    // kernel flushes a device's IPv4 routes with its last IPv4 address; apply must
    // end with the routes in place all the same.
    const kept = { ...d, routes: ['100.64.0.0/10', 'fd7a:115c:a1e0::/48'], exitNode: false };
    const swap = await os.apply({ ...kept, addresses: ['100.64.0.9/32', 'fd7a:115c:a1e0::5/128'] });
    assert.deepEqual(lines(swap.steps), ['ip addr add 100.64.0.9/32 dev lt0', 'ip addr del 100.64.0.5/32 dev lt0']);
    assert.deepEqual(table(ns, 4), ['100.64.0.0/10 dev lt0', 'throw 203.0.113.7']);
    const none4 = await os.apply({ ...kept, addresses: ['fd7a:115c:a1e0::5/128'] });
    assert.deepEqual(lines(none4.steps), ['ip addr del 100.64.0.9/32 dev lt0', 'ip route replace 100.64.0.0/10 dev lt0 table 52']);
    assert.deepEqual(table(ns, 4), ['100.64.0.0/10 dev lt0', 'throw 203.0.113.7']);
    assert.deepEqual((await os.apply({ ...kept, addresses: ['fd7a:115c:a1e0::5/128'] })).steps, []);

    await os.teardown();
    assert.deepEqual(rules(ns, 4), []);
    assert.deepEqual(rules(ns, 6), []);
    assert.deepEqual(table(ns, 4), []);
    assert.deepEqual(table(ns, 6), []);
    assert.equal(sysctl(ns, SYSCTL_FORWARD_V4), v4Before);
    assert.equal(sysctl(ns, SYSCTL_FORWARD_V6), v6Before);
    assert.notEqual(inNs(ns, 'nft list table inet larktun', true).status, 0);
    assert.deepEqual(
      (json(ns, 'ip -j addr show dev lt0')[0]!.addr_info as { scope: string }[]).filter((a) => a.scope === 'global'),
      [],
    );
    // Nothing left: a second teardown has nothing to do.
    assert.equal((await os.teardown()).changed, false);
  });

  test('a fresh instance cleans up after a crashed one; saved sysctls carry over', async () => {
    const ns = addNs('b');
    inNs(ns, 'ip tuntap add dev lt0 mode tun');
    const crashed = new OsNet({ netns: ns });
    await crashed.apply(desired({ exitNode: true, forwarding: true, masquerade: true }));
    const saved = crashed.savedSysctls;
    assert.deepEqual(saved, { [SYSCTL_FORWARD_V4]: '0', [SYSCTL_FORWARD_V6]: '0' });

    const fresh = new OsNet({ netns: ns, savedSysctls: saved });
    const change = await fresh.teardown('lt0');
    assert.equal(change.changed, true);
    assert.deepEqual(rules(ns, 4), []);
    assert.deepEqual(table(ns, 4), []);
    assert.deepEqual(table(ns, 6), []);
    assert.equal(sysctl(ns, SYSCTL_FORWARD_V4), '0');
    assert.notEqual(inNs(ns, 'nft list table inet larktun', true).status, 0);
  });

  test('a command the kernel refuses fails naming it, with its stderr', async () => {
    const ns = addNs('c');
    inNs(ns, 'ip tuntap add dev lt0 mode tun && sysctl -qw net.ipv6.conf.lt0.disable_ipv6=1');
    const os = new OsNet({ netns: ns });
    await assert.rejects(os.apply(desired({ routes: [] })), (e: unknown) => {
      assert.ok(e instanceof OsNetError, String(e));
      assert.equal(e.command, 'ip addr add fd7a:115c:a1e0::5/128 dev lt0 nodad');
      assert.match(e.stderr, /IPv6 is disabled/);
      return true;
    });
    await assert.rejects(os.apply(desired({ dev: 'nope0' })), /ip -j addr show dev nope0 failed .*does not exist/);
    await os.teardown();
  });
});

describe('forwarding through a router namespace', { skip: skipReason(['nft', 'sysctl', 'ping', 'tcpdump']) }, () => {
  test('client -> router (OsNet: forwarding + masquerade) -> lan: lan sees the router address', async () => {
    const c = addNs('cl');
    const r = addNs('rt');
    const l = addNs('ln');
    // client c0 <-> rc router rl <-> l0 lan. The lan host has no route back to the
    // client's subnet: replies only come back if the router masquerades.
    run(`ip link add c0 netns ${c} type veth peer name rc netns ${r}`);
    run(`ip link add l0 netns ${l} type veth peer name rl netns ${r}`);
    inNs(c, 'ip addr add 198.18.1.2/24 dev c0 && ip addr add fd00:a::2/64 dev c0 nodad && ip link set c0 up && ip route add default via 198.18.1.1 && ip -6 route add default via fd00:a::1');
    inNs(r, 'ip addr add 198.19.2.1/24 dev rl && ip addr add fd00:b::1/64 dev rl nodad && ip link set rl up && ip addr add 198.18.1.1/24 dev rc && ip addr add fd00:a::1/64 dev rc nodad');
    inNs(l, 'ip addr add 198.19.2.2/24 dev l0 && ip addr add fd00:b::2/64 dev l0 nodad && ip link set l0 up');

    // rc plays the TUN: OsNet brings it up and keeps its addresses.
    const os = new OsNet({ netns: r });
    await os.apply({
      dev: 'rc',
      mtu: 1500,
      addresses: ['198.18.1.1/24', 'fd00:a::1/64'],
      routes: [],
      exitNode: false,
      exclude: [],
      allowLan: false,
      forwarding: true,
      masquerade: true,
    });

    const dump = spawn('ip', ['netns', 'exec', l, 'tcpdump', '-n', '-l', '-i', 'l0', '-c', '2', '(icmp and icmp[icmptype] == icmp-echo) or (icmp6 and ip6[40] == 128)'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let seen = '';
    dump.stdout.setEncoding('utf8').on('data', (d: string) => (seen += d));
    const exited = new Promise<void>((res) => dump.once('exit', () => res()));
    const timer = setTimeout(() => dump.kill('SIGKILL'), 8_000);
    try {
      await new Promise<void>((res, rej) => {
        let err = '';
        dump.stderr.setEncoding('utf8').on('data', (d: string) => {
          err += d;
          if (err.includes('listening on')) res();
        });
        dump.once('exit', () => rej(new Error(`tcpdump exited: ${err}`)));
      });
      assert.equal(inNs(c, 'ping -n -c 1 -W 2 198.19.2.2', true).status, 0, 'IPv4 ping through the router');
      assert.equal(inNs(c, 'ping -6 -n -c 1 -W 2 fd00:b::2', true).status, 0, 'IPv6 ping through the router');
      await exited;
    } finally {
      clearTimeout(timer);
      dump.kill('SIGKILL');
    }
    assert.match(seen, /IP 198\.19\.2\.1 > 198\.19\.2\.2: ICMP echo request/);
    assert.match(seen, /IP6 fd00:b::1 > fd00:b::2: ICMP6, echo request/);
    assert.doesNotMatch(seen, /198\.18\.1\.2|fd00:a::2/);
    const counters = /counter packets (\d+)/.exec(inNs(r, 'nft list table inet larktun').out);
    assert.ok(counters && Number(counters[1]) >= 2, 'masquerade rule counted both connections');

    await os.teardown();
    assert.equal(sysctl(r, SYSCTL_FORWARD_V4), '0');
    assert.equal(inNs(c, 'ping -n -c 1 -W 1 198.19.2.2', true).status, 1, 'no forwarding after teardown');
  });
});
