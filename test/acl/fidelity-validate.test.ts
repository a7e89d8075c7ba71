// Validation verdicts and wording as Tailscale gives them (issue 10, items
// 13-16): SSH rules, grants, `tests` / `sshTests` entries, and no policy text
// crashing check or compile. Small policies of our own; the expected verdicts
// and messages are written from the rules.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type AclNetwork, checkPolicy, compileToJson, parsePolicy } from '../../src/acl/index.js';
import { checkPolicyText } from '../../src/control/policy-engine.js';

const net: AclNetwork = {
  users: [
    { id: 1, name: 'alice', email: 'alice@example.com' },
    { id: 2, name: 'bob', email: 'bob@example.com' },
  ],
  nodes: [
    { id: 1, name: 'a1', user: 'alice@example.com', tags: [], ipv4: '100.64.0.1', ipv6: 'fd7a:115c:a1e0::1', announced_routes: [], approved_routes: [], online: true },
    { id: 2, name: 'b1', user: 'bob@example.com', tags: [], ipv4: '100.64.0.2', ipv6: 'fd7a:115c:a1e0::2', announced_routes: [], approved_routes: [], online: true },
    { id: 3, name: 'srv', user: null, tags: ['tag:srv'], ipv4: '100.64.0.3', ipv6: 'fd7a:115c:a1e0::3', announced_routes: [], approved_routes: [], online: true },
  ],
};
const TAGS = { 'tag:srv': ['alice@example.com'] };

function accepted(policy: unknown): void {
  const r = checkPolicy(typeof policy === 'string' ? policy : JSON.stringify(policy, null, 2), net);
  assert.equal(r.valid, true, `expected valid, got:\n${r.errors.join('\n')}`);
}

/** Rejected with an error containing `want`; every error names file:line:col. */
function rejected(policy: unknown, want: string): string[] {
  const r = checkPolicy(typeof policy === 'string' ? policy : JSON.stringify(policy, null, 2), net);
  assert.equal(r.valid, false, `expected rejection containing ${JSON.stringify(want)}`);
  const joined = r.errors.join('\n');
  assert.ok(joined.includes(want), `expected an error containing ${JSON.stringify(want)}, got:\n${joined}`);
  for (const e of r.errors) assert.match(e, /^policy\.hujson:\d+:\d+: /);
  return r.errors;
}

const ssh = (rule: Record<string, unknown>): unknown => ({ tagOwners: TAGS, ssh: [rule] });
const base = { action: 'accept', src: ['autogroup:member'], dst: ['tag:srv'], users: ['root'] };

describe('SSH validation (item 13)', () => {
  it('users other than "" and "*" are plain login names, autogroup:member included', () => {
    for (const u of ['autogroup:member', 'autogroup:self', 'autogroup:tagged', 'autogroup:internet', 'ubuntu', 'localpart:foo']) {
      accepted(ssh({ ...base, users: [u] }));
    }
    rejected(ssh({ ...base, users: [''] }), 'user "" is not valid');
    rejected(ssh({ ...base, users: ['*'] }), 'user "*" is not valid');
    rejected(ssh({ ...base, users: [] }), 'users must be specified');
  });

  it('checkPeriod has no minimum; bad and negative durations read as in Tailscale', () => {
    for (const cp of ['0s', '30s', '1m', '168h', 'always']) accepted(ssh({ ...base, action: 'check', checkPeriod: cp }));
    rejected(ssh({ ...base, action: 'check', checkPeriod: 'abc' }), 'time: invalid duration "abc"');
    rejected(ssh({ ...base, action: 'check', checkPeriod: '10' }), 'time: missing unit in duration "10"');
    rejected(ssh({ ...base, action: 'check', checkPeriod: '-1h' }), 'checkPeriod -1h0m0s must be a positive duration');
    rejected(ssh({ ...base, action: 'check', checkPeriod: '200h' }), 'checkPeriod 200h0m0s is above the max (168h)');
  });

  it('a rule without src or dst is accepted and gives no SSH rules', () => {
    for (const rule of [
      { action: 'accept', dst: ['tag:srv'], users: ['root'] },
      { action: 'accept', src: ['autogroup:member'], users: ['root'] },
      { action: 'accept', src: [], dst: [], users: ['root'] },
    ]) {
      const p = parsePolicy(JSON.stringify(ssh(rule)));
      assert.ok(p.ok, p.ok ? '' : p.errors.join('\n'));
      if (!p.ok) return;
      const out = compileToJson(p.policy, net);
      for (const n of ['a1', 'b1', 'srv']) assert.deepEqual(out.ssh_policy[n], { rules: [] }, n);
    }
  });

  it('an empty acceptEnv value is rejected', () => {
    accepted(ssh({ ...base, acceptEnv: ['GIT_*', 'LANG'] }));
    rejected(ssh({ ...base, acceptEnv: ['LANG', ''] }), 'acceptEnv values cannot be empty');
  });

  it('missing action and invalid actions use Tailscale messages', () => {
    const { action: _drop, ...noAction } = base;
    void _drop;
    rejected(ssh(noAction), 'action must be specified');
    rejected(ssh({ ...base, action: '' }), 'action must be specified');
    rejected(ssh({ ...base, action: 'deny' }), '"deny" is not a valid action');
  });

  it('whitespace around action, src, dst and users is trimmed (item 12)', () => {
    accepted(ssh({ action: ' check ', src: [' autogroup:member '], dst: ['tag:srv '], users: [' root'] }));
  });

  it('errors keep their line and column', () => {
    const text = '{\n  "tagOwners": {"tag:srv": ["alice@example.com"]},\n  "ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:srv"],\n           "users": ["root"], "acceptEnv": [""]}],\n}\n';
    const errs = rejected(text, 'acceptEnv values cannot be empty');
    assert.match(errs[0]!, /^policy\.hujson:4:45: acceptEnv values cannot be empty$/);
  });
});

describe('grant validation (item 14)', () => {
  it('autogroup:self as a grant destination rejects a "*" source; ACLs allow it', () => {
    rejected({ grants: [{ src: ['*'], dst: ['autogroup:self'], ip: ['*'] }] }, 'autogroup:self can only be used with users, groups, or supported autogroups');
    accepted({ grants: [{ src: ['autogroup:member'], dst: ['autogroup:self'], ip: ['*'] }] });
    accepted({ acls: [{ action: 'accept', src: ['*'], dst: ['autogroup:self:*'] }] });
  });

  it('capability names are {domain}/{path}, outside tailscale.com except the allow-list', () => {
    const g = (cap: string): unknown => ({ grants: [{ src: ['*'], dst: ['*'], app: { [cap]: [{}] } }] });
    accepted(g('example.com/cap/thing'));
    accepted(g('tailscale.com/cap/drive'));
    accepted(g('tailscale.com/cap/relay'));
    rejected(g('https://example.com/cap/thing'), 'capability name must have the form {domain}/{path}');
    rejected(g('nodomain'), 'capability name must have the form {domain}/{path}');
    rejected(g('tailscale.com/cap/funnel'), 'capability name must not be in the tailscale.com domain');
    rejected(g('tailscale.com/cap/relay-target'), 'capability name must not be in the tailscale.com domain');
  });

  it('an app grant cannot target autogroup:internet', () => {
    rejected(
      { grants: [{ src: ['*'], dst: ['autogroup:internet'], app: { 'example.com/cap/x': [{}] } }] },
      'cannot use app grants with autogroup:internet',
    );
    accepted({ grants: [{ src: ['*'], dst: ['autogroup:internet'], ip: ['*'] }] });
  });

  it('src: [] and dst: [] are accepted and yield nothing', () => {
    for (const grant of [
      { src: [], dst: ['*'], ip: ['*'] },
      { src: ['*'], dst: [], ip: ['*'] },
    ]) {
      const p = parsePolicy(JSON.stringify({ grants: [grant] }));
      assert.ok(p.ok, p.ok ? '' : p.errors.join('\n'));
      if (!p.ok) return;
      const out = compileToJson(p.policy, net);
      for (const n of ['a1', 'b1', 'srv']) assert.deepEqual(out.packet_filter[n], [], n);
    }
  });

  it('a port of 0 names its port range', () => {
    rejected({ grants: [{ src: ['*'], dst: ['*'], ip: ['tcp:0'] }] }, `port range "0": first port must be >0, or use '*' for wildcard`);
    rejected({ grants: [{ src: ['*'], dst: ['*'], ip: ['0'] }] }, `port range "0": first port must be >0, or use '*' for wildcard`);
    rejected({ acls: [{ action: 'accept', src: ['*'], dst: ['100.64.0.1:0'] }] }, `port range "0": first port must be >0, or use '*' for wildcard`);
  });
});

describe('tests validation (item 15)', () => {
  const pol = (tests: unknown[]): unknown => ({
    tagOwners: TAGS,
    hosts: { one: '100.64.0.3', lan: '10.0.0.0/8' },
    acls: [{ action: 'accept', src: ['*'], dst: ['*:*'] }],
    tests,
  });
  it('a test entry needs accept or deny', () => {
    rejected(pol([{ src: 'alice@example.com' }]), 'test(s) failed: test entry must have at least one of "accept" or "deny"');
    accepted(pol([{ src: 'alice@example.com', accept: ['one:22'] }]));
    accepted(pol([{ src: 'alice@example.com', deny: [] , accept: ['tag:srv:22'] }]));
  });

  it('only tcp, udp and sctp', () => {
    for (const proto of ['tcp', 'udp', 'sctp']) accepted(pol([{ src: 'alice@example.com', proto, accept: ['one:22'] }]));
    for (const proto of ['icmp', 'gre', '47']) {
      rejected(pol([{ src: 'alice@example.com', proto, accept: ['one:22'] }]), 'test(s) failed: proto=');
      rejected(pol([{ src: 'alice@example.com', proto, accept: ['one:22'] }]), 'test protocol must be tcp, udp, sctp, or empty');
    }
  });

  it('each destination is one host and one port', () => {
    const bad: Array<[string, string]> = [
      ['one:22,80', 'test destination port must be a single port'],
      ['one:20-22', 'test destination port must be a single port'],
      ['one:*', 'test destination port must be a single port'],
      ['*:22', 'test destination must be a single host, not a CIDR range'],
      ['100.64.0.0/10:22', 'test destination must be a single host, not a CIDR range'],
      ['100.64.0.3/32:22', 'test destination must be a single host, not a CIDR range'],
      ['lan:22', 'test destination must be a single host, not a CIDR range'],
      ['autogroup:internet:443', 'autogroup:internet not valid as a test destination'],
    ];
    for (const [dst, msg] of bad) {
      const errs = rejected(pol([{ src: 'alice@example.com', accept: [dst] }]), msg);
      assert.ok(errs.some((e) => e.includes('test(s) failed: ') && e.includes(msg)), `${dst}: ${errs.join('\n')}`);
    }
    accepted(pol([{ src: 'alice@example.com', accept: ['100.64.0.3:22', 'one:22', 'tag:srv:22', 'bob@example.com:80'] }]));
  });
});

describe('aliases in tests and sshTests are validated (item 16: no crash)', () => {
  it('the minimal crash: an undefined host as a test source', () => {
    const errs = rejected({ tests: [{ src: 'nohost', accept: ['1.2.3.4:80'] }] }, 'test(s) failed: ');
    assert.ok(errs.some((e) => e.includes('host not defined in policy: "nohost"')), errs.join('\n'));
    // And without a network (parse only).
    const r = checkPolicy(JSON.stringify({ tests: [{ src: 'nohost', accept: ['1.2.3.4:80'] }] }));
    assert.equal(r.valid, false);
    // The server's check (what a policy PUT runs) answers instead of throwing.
    const s = checkPolicyText('{"tests":[{"src":"nohost","accept":["1.2.3.4:80"]}]}', net);
    assert.equal(s.valid, false);
    assert.ok(s.errors.some((e) => e.includes('test(s) failed')), s.errors.join('\n'));
  });

  it('an undefined host as a test destination, an sshTests source or destination', () => {
    rejected({ tests: [{ src: '100.64.0.1', accept: ['nohost:80'] }] }, 'host not defined in policy: "nohost"');
    rejected({ sshTests: [{ src: 'nohost', dst: ['100.64.0.3'], accept: ['root'] }] }, 'host not defined in policy: "nohost"');
    rejected({ sshTests: [{ src: 'alice@example.com', dst: ['nohost'], accept: ['root'] }] }, 'host not defined in policy: "nohost"');
    rejected({ sshTests: [{ src: 'alice@example.com', dst: ['tag:nope'], accept: ['root'] }] }, 'tag not found: "tag:nope"');
    rejected({ tests: [{ src: 'group:nope', accept: ['100.64.0.1:80'] }] }, 'group not defined in policy: "group:nope"');
  });

  it('10.0.0.0/33 is an invalid prefix, not a host name', () => {
    const errs = rejected({ tests: [{ src: '10.0.0.0/33', accept: ['100.64.0.1:80'] }] }, 'invalid prefix "10.0.0.0/33"');
    assert.ok(!errs.join('\n').includes('host not defined'), errs.join('\n'));
    rejected({ acls: [{ action: 'accept', src: ['10.0.0.0/33'], dst: ['*:*'] }] }, 'invalid prefix "10.0.0.0/33"');
  });
});
