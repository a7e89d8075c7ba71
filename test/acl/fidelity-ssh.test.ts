// SSH policy output as Tailscale emits it (issue 10, items 9-12): check
// actions and their order, localpart:*@domain expansion, tagged principals
// once per tag, trimmed values. Small network and policies of our own; the
// expected rules are written from the rules, not produced by the code.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type AclNetwork, type AclNode, IncrementalCompiler, type SSHRule, compileToJson, parsePolicy } from '../../src/acl/index.js';

const node = (id: number, name: string, user: string | null, tags: string[]): AclNode => ({
  id,
  name,
  user,
  tags,
  ipv4: `100.64.0.${id}`,
  ipv6: null,
  announced_routes: [],
  approved_routes: [],
  online: true,
});

// Users listed out of id order on purpose (expansion goes by user id).
const net: AclNetwork = {
  users: [
    { id: 2, name: 'bob', email: 'bob@example.com' },
    { id: 3, name: 'carol', email: 'carol@other.org' },
    { id: 1, name: 'alice', email: 'alice@example.com' },
  ],
  nodes: [
    node(1, 'b1', 'bob@example.com', []),
    node(2, 'a1', 'alice@example.com', []),
    node(3, 'c1', 'carol@other.org', []),
    node(4, 'a2', 'alice@example.com', []),
    node(5, 'srv', null, ['tag:srv']),
    node(6, 'multi', null, ['tag:ci', 'tag:build']),
  ],
};
const tagOwners = { 'tag:srv': ['alice@example.com'], 'tag:ci': ['alice@example.com'], 'tag:build': ['alice@example.com'] };

const ACCEPT = { accept: true, allowAgentForwarding: true, allowLocalPortForwarding: true, allowRemotePortForwarding: true };
const CHECK = { holdAndDelegate: 'https://unused/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER' };
const ip = (...ids: number[]): Array<{ nodeIP: string }> => ids.map((i) => ({ nodeIP: `100.64.0.${i}` }));

function sshOf(policy: unknown): Record<string, SSHRule[]> {
  const p = parsePolicy(JSON.stringify(policy, null, 2));
  assert.ok(p.ok, p.ok ? '' : p.errors.join('\n'));
  if (!p.ok) return {};
  const out = compileToJson(p.policy, net);
  const r: Record<string, SSHRule[]> = {};
  for (const [n, pol] of Object.entries(out.ssh_policy)) r[n] = pol.rules;
  // The incremental compiler gives the same rules.
  const inc = new IncrementalCompiler(p.policy, net);
  for (const n of net.nodes) assert.deepEqual(inc.result(n.id)!.sshPolicy.rules, r[n.name], `incremental ${n.name}`);
  return r;
}

describe('check action (item 9)', () => {
  it('is exactly holdAndDelegate with the action URL, and check rules come first in stable order', () => {
    const r = sshOf({
      tagOwners,
      ssh: [
        { action: 'accept', src: ['bob@example.com'], dst: ['tag:srv'], users: ['root'] },
        { action: 'check', src: ['alice@example.com'], dst: ['tag:srv'], users: ['ubuntu'], checkPeriod: '1h' },
        { action: 'accept', src: ['carol@other.org'], dst: ['tag:srv'], users: ['deploy'] },
        { action: 'check', src: ['carol@other.org'], dst: ['tag:srv'], users: ['admin'] },
      ],
    });
    assert.deepEqual(r['srv'], [
      { principals: ip(2, 4), sshUsers: { ubuntu: 'ubuntu', root: '' }, action: CHECK },
      { principals: ip(3), sshUsers: { admin: 'admin', root: '' }, action: CHECK },
      { principals: ip(1), sshUsers: { root: 'root' }, action: ACCEPT },
      { principals: ip(3), sshUsers: { deploy: 'deploy', root: '' }, action: ACCEPT },
    ]);
  });
});

describe('tagged sources (item 11)', () => {
  it('a tagged source node is a principal once per tag it carries', () => {
    for (const src of [['tag:ci'], ['tag:ci', 'tag:build'], ['tag:build']]) {
      const r = sshOf({ tagOwners, ssh: [{ action: 'accept', src, dst: ['tag:srv'], users: ['root'] }] });
      assert.deepEqual(r['srv'], [{ principals: ip(6, 6), sshUsers: { root: 'root' }, action: ACCEPT }], JSON.stringify(src));
    }
    const r = sshOf({ tagOwners, ssh: [{ action: 'accept', src: ['autogroup:tagged'], dst: ['tag:ci'], users: ['root'] }] });
    assert.deepEqual(r['multi'], [{ principals: ip(5, 6, 6), sshUsers: { root: 'root' }, action: ACCEPT }]);
  });
});

describe('localpart:*@domain (item 10)', () => {
  it('one common rule, then one rule per matching source user in user-id order; tagged sources last', () => {
    const r = sshOf({
      tagOwners,
      ssh: [{ action: 'accept', src: ['autogroup:member', 'tag:ci'], dst: ['tag:srv'], users: ['localpart:*@example.com'] }],
    });
    assert.deepEqual(r['srv'], [
      // alice (id 1: a1, a2), bob (id 2: b1), carol (id 3: c1), then the tagged source (twice: two tags).
      { principals: ip(2, 4, 1, 3, 6, 6), sshUsers: { root: '' }, action: ACCEPT },
      { principals: ip(2, 4), sshUsers: { alice: 'alice' }, action: ACCEPT },
      { principals: ip(1), sshUsers: { bob: 'bob' }, action: ACCEPT },
    ]);
    // Source nodes that are not destinations get their own user's rule.
    assert.deepEqual(r['a1'], [{ principals: ip(2, 4), sshUsers: { alice: 'alice' }, action: ACCEPT }]);
    assert.deepEqual(r['a2'], r['a1']);
    assert.deepEqual(r['b1'], [{ principals: ip(1), sshUsers: { bob: 'bob' }, action: ACCEPT }]);
    assert.deepEqual(r['c1'], [], 'carol is not in the domain');
    assert.deepEqual(r['multi'], [], 'a tagged source has no user');
  });

  it('a join updates the expansion incrementally and reports the nodes it changed', () => {
    const p = parsePolicy(
      // acls: [] so that peers and filters stay empty and only SSH changes.
      JSON.stringify({ tagOwners, acls: [], ssh: [{ action: 'accept', src: ['autogroup:member'], dst: ['tag:srv'], users: ['localpart:*@example.com'] }] }),
    );
    assert.ok(p.ok);
    if (!p.ok) return;
    const inc = new IncrementalCompiler(p.policy, net);
    inc.changedNodes();
    for (const n of net.nodes) inc.result(n.id); // results the server has sent
    inc.nodeJoined(node(7, 'b2', 'bob@example.com', []));
    const changed = inc.changedNodes();
    for (const id of [1, 5, 7]) assert.ok(changed.includes(id), `node ${id} in ${JSON.stringify(changed)}`);
    assert.ok(!changed.includes(2) && !changed.includes(3), `alice and carol unchanged: ${JSON.stringify(changed)}`);
    assert.deepEqual(inc.result(5)!.sshPolicy.rules, [
      { principals: ip(2, 4, 1, 7, 3), sshUsers: { root: '' }, action: ACCEPT },
      { principals: ip(2, 4), sshUsers: { alice: 'alice' }, action: ACCEPT },
      { principals: ip(1, 7), sshUsers: { bob: 'bob' }, action: ACCEPT },
    ]);
    assert.deepEqual(inc.result(7)!.sshPolicy.rules, [{ principals: ip(1, 7), sshUsers: { bob: 'bob' }, action: ACCEPT }]);
  });

  it('with autogroup:self a destination gets its owner only', () => {
    const r = sshOf({
      ssh: [{ action: 'accept', src: ['autogroup:member'], dst: ['autogroup:self'], users: ['localpart:*@example.com', 'autogroup:nonroot'] }],
    });
    assert.deepEqual(r['a1'], [
      { principals: ip(2, 4), sshUsers: { '*': '=', root: '' }, action: ACCEPT },
      { principals: ip(2, 4), sshUsers: { alice: 'alice' }, action: ACCEPT },
    ]);
    assert.deepEqual(r['b1'], [
      { principals: ip(1), sshUsers: { '*': '=', root: '' }, action: ACCEPT },
      { principals: ip(1), sshUsers: { bob: 'bob' }, action: ACCEPT },
    ]);
    assert.deepEqual(r['c1'], [{ principals: ip(3), sshUsers: { '*': '=', root: '' }, action: ACCEPT }]);
  });

  it('a malformed localpart stays a literal user name', () => {
    const users = ['localpart:foo', 'localpart:*@', 'localpart:alice@example.com', 'localpart:'];
    const r = sshOf({ tagOwners, ssh: [{ action: 'accept', src: ['autogroup:member'], dst: ['tag:srv'], users }] });
    const sshUsers: Record<string, string> = { root: '' };
    for (const u of users) sshUsers[u] = u;
    assert.deepEqual(r['srv'], [{ principals: ip(1, 2, 3, 4), sshUsers, action: ACCEPT }]);
    assert.deepEqual(r['a1'], []);
  });
});

describe('trimmed values (item 12)', () => {
  it('whitespace around action, src, dst and users does not change the output', () => {
    const clean = sshOf({ tagOwners, ssh: [{ action: 'check', src: ['alice@example.com', 'tag:ci'], dst: ['tag:srv'], users: ['ubuntu', 'autogroup:nonroot'] }] });
    const padded = sshOf({
      tagOwners,
      ssh: [{ action: ' check\t', src: [' alice@example.com', 'tag:ci '], dst: ['  tag:srv '], users: ['ubuntu ', ' autogroup:nonroot'] }],
    });
    assert.deepEqual(padded, clean);
    assert.deepEqual(clean['srv'], [{ principals: ip(2, 4, 6, 6), sshUsers: { ubuntu: 'ubuntu', '*': '=', root: '' }, action: CHECK }]);
  });
});
