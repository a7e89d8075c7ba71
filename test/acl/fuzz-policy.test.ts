// No policy text may throw out of check or compile (issue 10, item 16): a
// property test that mutates a rich valid policy (values swapped for tricky
// tokens, keys dropped, elements duplicated, characters changed) and checks
// that checkPolicy, compileToJson and the incremental compiler only ever
// answer with a verdict; deep nesting included.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { type AclNetwork, type AclNode, IncrementalCompiler, checkPolicy, compileToJson } from '../../src/acl/index.js';

const node = (id: number, user: string | null, tags: string[], routes: string[] = []): AclNode => ({
  id,
  name: `n${id}`,
  user,
  tags,
  ipv4: `100.64.0.${id}`,
  ipv6: `fd7a:115c:a1e0::${id}`,
  announced_routes: routes,
  approved_routes: routes,
  online: true,
});

const net: AclNetwork = {
  users: [
    { id: 1, name: 'u0', email: 'u0@example.com' },
    { id: 2, name: 'u1', email: 'u1@example.com' },
  ],
  nodes: [
    node(1, 'u0@example.com', []),
    node(2, 'u1@example.com', []),
    node(3, null, ['tag:t0']),
    node(4, null, ['tag:t0', 'tag:t1'], ['10.0.0.0/16', '0.0.0.0/0', '::/0']),
  ],
};

type J = null | boolean | number | string | J[] | { [k: string]: J };

const SEED: J = {
  groups: { 'group:g0': ['u0@example.com', 'u1@'] },
  hosts: { web: '100.64.0.3', lan: '10.0.0.0/16' },
  tagOwners: { 'tag:t0': ['group:g0'], 'tag:t1': ['tag:t0'] },
  acls: [
    { action: 'accept', src: ['group:g0', 'tag:t0'], proto: 'tcp', dst: ['web:80,443', 'lan:*'] },
    { action: 'accept', src: ['autogroup:member'], dst: ['autogroup:self:*', 'autogroup:internet:*'] },
  ],
  grants: [
    { src: ['*'], dst: ['tag:t1'], ip: ['tcp:22', 'icmp:*'] },
    { src: ['u0@example.com'], dst: ['*'], app: { 'example.com/cap/x': [{ a: 1 }] } },
    { src: ['autogroup:member'], dst: ['10.0.0.0/16'], ip: ['*'], via: ['tag:t1'] },
  ],
  autoApprovers: { routes: { '10.0.0.0/8': ['tag:t1'] }, exitNode: ['tag:t1'] },
  ssh: [
    { action: 'check', src: ['autogroup:member'], dst: ['tag:t0'], users: ['root', 'localpart:*@example.com'], checkPeriod: '1h' },
    { action: 'accept', src: ['group:g0'], dst: ['autogroup:self'], users: ['autogroup:nonroot'], acceptEnv: ['LANG'] },
  ],
  nodeAttrs: [{ target: ['tag:t0'], attr: ['funnel'] }],
  tests: [{ src: 'u0@example.com', proto: 'tcp', accept: ['web:80'], deny: ['100.64.0.4:25'] }],
  sshTests: [{ src: 'u0@example.com', dst: ['tag:t0'], check: ['root'], deny: ['nobody'] }],
};

const TOKENS = [
  '*', '', ' ', 'nohost', 'web', 'lan', '10.0.0.0/33', '10.0.0.0/8', '0.0.0.0/0', '::/0', '100.64.0.1', 'fd7a:115c:a1e0::1',
  '[fd7a:115c:a1e0::1]:22', 'web:80', '*:*', 'web:0', 'web:*', 'web:1-2', 'x:y:z', 'autogroup:self', 'autogroup:self:*',
  'autogroup:internet', 'autogroup:internet:443', 'autogroup:danger-all', 'autogroup:member', 'autogroup:tagged',
  'autogroup:nonroot', 'autogroup:bogus', 'tag:t0', 'tag:t1', 'tag:nope', 'tag:', 'group:g0', 'group:nope', 'u0@',
  'u0@example.com', 'nobody@', 'localpart:*@example.com', 'localpart:', 'localpart:*@', 'tcp', 'udp', 'icmp', 'sctp',
  '47', '999', 'tcp:0', 'tcp:22', 'tailscale.com/cap/drive', 'tailscale.com/cap/funnel', 'https://x/y', 'example.com/cap/x',
  'always', '0s', '-1h', '200h', 'abc', 'accept', 'check', 'deny', '__proto__', 'constructor', 'toString', 'hasOwnProperty',
];


const leaf: fc.Arbitrary<J> = fc.oneof(
  fc.constantFrom(...TOKENS),
  fc.constantFrom<J>(null, true, false, 0, -1, 1e400, 65536, 1.5),
  fc.string({ maxLength: 8 }),
);
const value: fc.Arbitrary<J> = fc.oneof(
  { weight: 4, arbitrary: leaf },
  { weight: 2, arbitrary: fc.array(leaf, { maxLength: 3 }) },
  { weight: 1, arbitrary: fc.dictionary(fc.constantFrom(...TOKENS, 'src', 'dst', 'users', 'ip', 'app', 'action'), leaf, { maxKeys: 3 }) },
);

type Mutation = { op: 'set' | 'delete' | 'dup' | 'push'; at: number; v: J };
const mutation: fc.Arbitrary<Mutation> = fc.record({
  op: fc.constantFrom<Mutation['op']>('set', 'set', 'delete', 'dup', 'push'),
  at: fc.nat(),
  v: value,
});

/** Every container (object or array) with the key or index of each of its members. */
function slots(root: J, out: Array<{ parent: J[] | { [k: string]: J }; key: string | number }> = []): typeof out {
  if (Array.isArray(root)) root.forEach((c, i) => (out.push({ parent: root, key: i }), slots(c, out)));
  else if (root && typeof root === 'object') for (const [k, c] of Object.entries(root)) out.push({ parent: root, key: k }), slots(c, out);
  return out;
}

function mutate(seed: J, ms: Mutation[]): J {
  const root = JSON.parse(JSON.stringify(seed)) as J;
  for (const m of ms) {
    const all = slots(root);
    if (all.length === 0) break;
    const { parent, key } = all[m.at % all.length]!;
    const p = parent as Record<string | number, J>;
    if (m.op === 'set') p[key] = m.v;
    else if (m.op === 'delete') {
      if (Array.isArray(parent)) parent.splice(key as number, 1);
      else delete p[key];
    } else if (m.op === 'dup' && Array.isArray(parent)) parent.push(JSON.parse(JSON.stringify(parent[key as number]!)) as J);
    else if (m.op === 'push' && Array.isArray(p[key])) (p[key] as J[]).push(m.v);
    else p[key] = m.v;
  }
  return root;
}

/** Runs everything a policy text reaches; fails the property only on a throw. */
function survive(text: string): void {
  let r;
  try {
    r = checkPolicy(text, net);
  } catch (err) {
    assert.fail(`checkPolicy threw ${(err as Error).stack}\npolicy: ${text}`);
  }
  for (const e of r.errors) assert.match(e, /^policy\.hujson:\d+:\d+: /, `error without a position: ${e}`);
  if (!r.valid || !r.policy) return;
  try {
    compileToJson(r.policy, net);
    const inc = new IncrementalCompiler(r.policy, net);
    inc.changedNodes();
    for (const n of net.nodes) inc.result(n.id);
    inc.nodeJoined(node(9, 'u1@example.com', []));
    inc.changedNodes();
  } catch (err) {
    assert.fail(`compile threw ${(err as Error).stack}\npolicy: ${text}`);
  }
}

describe('no policy text throws out of check or compile', () => {
  it('the seed policy is valid and its tests pass', () => {
    const r = checkPolicy(JSON.stringify(SEED), net);
    assert.deepEqual(r.errors, []);
  });

  it('structural mutations of a rich policy', () => {
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (ms) => survive(JSON.stringify(mutate(SEED, ms), null, 1))),
      { numRuns: 1000 },
    );
  });

  it('character-level mutations of the policy text', () => {
    const text = JSON.stringify(SEED, null, 1);
    fc.assert(
      fc.property(
        fc.array(fc.record({ at: fc.nat(text.length), del: fc.nat(3), ins: fc.constantFrom('', '"', ',', '{', '}', '[', ']', ':', '/', '*', ' ', '\\', 'x', '0', '//c\n') }), {
          minLength: 1,
          maxLength: 4,
        }),
        (edits) => {
          let t = text;
          for (const e of edits) {
            const at = e.at % (t.length + 1);
            t = t.slice(0, at) + e.ins + t.slice(at + e.del);
          }
          survive(t);
        },
      ),
      { numRuns: 600 },
    );
  });

  it('deep nesting is an error with a position, not a stack overflow', () => {
    for (const n of [150, 10_000, 200_000]) {
      for (const t of ['{"acls":' + '['.repeat(n) + ']'.repeat(n) + '}', '{"x":'.repeat(n) + '1' + '}'.repeat(n)]) {
        const r = checkPolicy(t, net);
        assert.equal(r.valid, false);
        assert.match(r.errors[0]!, /^policy\.hujson:1:\d+: invalid HuJSON: arrays\/objects nested more than 64 levels deep \(the limit\)$/);
      }
    }
    // Brackets inside strings and comments do not count; 64 levels are fine.
    const deepApp = '{"x":'.repeat(58) + '1' + '}'.repeat(58);
    const ok = checkPolicy(
      `{"grants": [{"src": ["*"], "dst": ["*"], "app": {"example.com/cap/x": [${deepApp}]}}], // ${'['.repeat(500)}\n "hosts": {"a": "1.2.3.4"}, /* ${'{'.repeat(500)} */ "groups": {"group:${'['.repeat(300)}": []}}`,
      net,
    );
    assert.deepEqual(ok.errors, []);
  });

  it('names of Object.prototype members are plain names, never inherited values', () => {
    for (const t of [
      '{"nodeAttrs":[{"target":["*"],"app":{"constructor":[1]},"attr":["toString","__proto__"]}]}',
      '{"acls":[{"action":"accept","src":["*"],"proto":"constructor","dst":["*:*"]}]}',
      '{"grants":[{"src":["*"],"dst":["*"],"ip":["hasOwnProperty:*"]}]}',
      '{"tagOwners":{"tag:t0":["u0@"]},"ssh":[{"action":"check","src":["autogroup:member"],"dst":["tag:t0"],"users":["root"],"checkPeriod":"1constructor"}]}',
    ]) {
      survive(t);
    }
    const inc = new IncrementalCompiler(
      checkPolicy('{"nodeAttrs":[{"target":["*"],"app":{"constructor":[2]},"attr":["__proto__","toString"]}]}', net).policy!,
      net,
    );
    const c = inc.result(1)!.capabilities;
    assert.deepEqual(Object.keys(c).sort(), ['__proto__', 'constructor', 'toString']);
    assert.deepEqual(Object.getOwnPropertyDescriptor(c, 'constructor')?.value, [2]);
    // sshUsers keep such names, and sshTests do not match inherited members.
    const p = '{"tagOwners":{"tag:t0":["u0@"]},"ssh":[{"action":"accept","src":["autogroup:member"],"dst":["tag:t0"],"users":["__proto__","constructor"]}],' +
      '"sshTests":[{"src":"u0@example.com","dst":["tag:t0"],"accept":["constructor","__proto__"],"deny":["toString","valueOf"]}]}';
    const r = checkPolicy(p, net);
    assert.deepEqual(r.errors, []);
    const users = compileToJson(r.policy!, net).ssh_policy['n3']!.rules[0]!.sshUsers;
    assert.deepEqual(JSON.parse(JSON.stringify(users)), JSON.parse('{"__proto__":"__proto__","constructor":"constructor","root":""}'));
  });

  it('known sharp inputs', () => {
    for (const p of [
      { tests: [{ src: 'nohost', accept: ['1.2.3.4:80'] }] },
      { tests: [{ src: 'web', accept: ['nohost:80'] }] },
      { sshTests: [{ src: 'nohost', dst: ['nohost'], accept: ['root'] }] },
      { tests: [{ src: '10.0.0.0/33', accept: ['10.0.0.0/33:80'] }] },
      { ssh: [{ action: 'accept', users: ['root'] }] },
      { grants: [{ src: [], dst: [], ip: ['*'] }] },
      { nodeAttrs: [{ target: ['nohost'] }] },
    ]) {
      survive(JSON.stringify(p));
    }
    survive('{"grants": [{"src": ["*"], "dst": ["*"], "app": {"__proto__": [1], "constructor": [2]}}]}');
    survive('{"groups": {"__proto__": ["u0@"]}, "hosts": {"__proto__": "1.2.3.4"}, "tagOwners": {"__proto__": []}}');
  });
});
