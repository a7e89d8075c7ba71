// The Access controls page's server side and the page itself: POST
// …/policy/preview (the reach of a node under a draft, computed by the same
// compile as the maps, never stored, within the compile budget and a per-tenant
// rate), per-test results from …/policy/check, the console's templates passing
// the server's check, and in chromium: an error at its line, tests results,
// a template, a form edit that keeps a comment, a node's preview, and a save
// that shows in Logs under the user's name.
// Screenshots (1280×800, light) go to docs/console/ when LARKTUN_CONSOLE_SCREENSHOTS=1.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { Client, ROOT, SseReader, backends, cleanup, registerNode, spawnServer, tempDir, type Json, type Res, type ServerProc } from '../control/harness.js';
import { bigPolicy } from '../control/bigpolicy.js';
import { TEMPLATES } from '../../console/src/pages/acls/templates.js';

const LIVE = `// everyone reaches everyone
{
  "tagOwners": { "tag:router": ["autogroup:admin"], "tag:exit": ["autogroup:admin"] },
  "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ],
}
`;

// The draft: alice (group:eng) may ssh to the router, use its subnet on 443 and the exit node; nobody reaches bob.
const DRAFT = `// draft
{
  "groups": { "group:eng": ["alice@acme.example"] },
  "tagOwners": { "tag:router": ["autogroup:admin"], "tag:exit": ["autogroup:admin"] },
  "acls": [
    { "action": "accept", "src": ["group:eng"], "dst": ["tag:router:22", "10.1.0.0/16:443", "autogroup:internet:*"] },
    { "action": "accept", "src": ["carol@acme.example"], "dst": ["tag:router:80"] },
  ],
}
`;

function assertError(r: Res<Json>, status: number, code: string): void {
  assert.equal(r.status, status, r.text);
  assert.equal(r.body.error.code, code, r.text);
}

const portsOf = (list: Json[], name: string): string[] | undefined => {
  const p = list.find((x) => x.name === name);
  return p ? (p.ports as Json[]).map((g) => `${(g.protocols as string[]).join('+')}:${g.ports as string}`).sort() : undefined;
};

for (const b of backends()) {
  describe(`policy preview and check results (${b.name})`, () => {
    let dir = '';
    let srv: ServerProc;
    let op: Client;
    let skip: string | false = false;
    const ids: Record<string, number> = {};
    const streams: SseReader[] = [];

    /** A tenant with alice's and bob's laptops, a router (10.1.0.0/16) and an exit node, both online (HA primaries are online nodes) with their routes approved. */
    async function tenant(name: string): Promise<Client> {
      assert.equal((await op.post('/api/v1/tenants', { name })).status, 201);
      const adm = op.as((await op.post(`/api/v1/tenants/${name}/apikeys`, { role: 'admin' })).body.key as string);
      assert.equal((await adm.put(`/api/v1/tenants/${name}/policy`, { policy: LIVE })).status, 200);
      for (const u of ['alice', 'bob', 'carol']) await adm.post(`/api/v1/tenants/${name}/users`, { name: u, email: `${u}@acme.example` });
      const node = op.as(null);
      const reg = async (body: Record<string, unknown>, key: string) => {
        const r = await registerNode(node, { auth_key: key, ...body });
        assert.equal(r.status, 201, r.text);
        ids[`${name}/${body.hostname as string}`] = r.body.node.id as number;
        if (body.tags) streams.push(await SseReader.open(`${srv.url}/node/v1/stream`, r.body.token as string));
        return r.body.node.id as number;
      };
      for (const u of ['alice', 'bob']) {
        const k = (await adm.post(`/api/v1/tenants/${name}/authkeys`, { user: u })).body.key as string;
        await reg({ hostname: `${u}-laptop` }, k);
      }
      const tk = (await adm.post(`/api/v1/tenants/${name}/authkeys`, { tags: ['tag:router', 'tag:exit'], reusable: true })).body.key as string;
      const router = await reg({ hostname: 'router', tags: ['tag:router'], routes: ['10.1.0.0/16'] }, tk);
      const exit = await reg({ hostname: 'exit', tags: ['tag:exit'], exit_node: true }, tk);
      assert.equal((await adm.post(`/api/v1/tenants/${name}/nodes/${router}/routes`, { approved: ['10.1.0.0/16'] })).status, 200);
      assert.equal((await adm.post(`/api/v1/tenants/${name}/nodes/${exit}/routes`, { approved: ['0.0.0.0/0'] })).status, 200);
      return adm;
    }

    before(async () => {
      const db = await b.setup();
      if (db.startsWith('skip:')) {
        skip = db.slice(5);
        return;
      }
      dir = tempDir('larktun-policy-');
      // A small compile budget so the 20 000-host policy runs over it (a tenant this size compiles in a few ms);
      // each tenant has its own buckets, so only the rate test meets the limit.
      srv = await spawnServer({ dataDir: dir, db, env: { LARKTUN_COMPILE_BUDGET_MS: '400', LARKTUN_POLICY_MAX_RULES: '50', LARKTUN_POLICY_CHECK_RATE: '1', LARKTUN_POLICY_CHECK_BURST: '12' } });
      op = new Client(srv.url, srv.operatorKey());
    });

    after(async () => {
      if (skip) return;
      for (const x of streams) x.close();
      await srv?.stop();
      cleanup(dir);
      await b.teardown();
    });

    test('a node\'s reach follows the draft: peers with ports, routes, exit nodes, inbound; nothing is stored', async (t) => {
      if (skip) return t.skip(skip);
      const adm = await tenant('acme');
      const before = (await adm.get('/api/v1/tenants/acme/policy')).body;
      const audit0 = (await adm.get('/api/v1/tenants/acme/audit?limit=10000')).body.entries.length as number;

      // Under the live text everyone reaches everyone.
      let r = await adm.post('/api/v1/tenants/acme/policy/preview', { policy: LIVE, node: 'alice-laptop' });
      assert.equal(r.status, 200, r.text);
      let s = r.body.subjects[0];
      assert.equal(r.body.subjects.length, 1);
      assert.equal(s.node.name, 'alice-laptop');
      assert.equal(s.node.hypothetical, false);
      assert.deepEqual(s.peers.map((p: Json) => p.name), ['bob-laptop', 'exit', 'router']);
      assert.deepEqual(portsOf(s.peers, 'bob-laptop'), ['tcp+udp+icmp+ipv6-icmp:*']);
      assert.deepEqual(s.routes.map((x: Json) => `${x.prefix as string} via ${x.via.name as string}`), ['10.1.0.0/16 via router']);
      assert.deepEqual(s.exit_nodes.map((x: Json) => x.name), ['exit']);
      assert.deepEqual(s.inbound.map((p: Json) => p.name), ['bob-laptop', 'exit', 'router']);

      // Under the draft: only the router on 22, its subnet on 443, the exit node; bob is gone both ways.
      r = await adm.post('/api/v1/tenants/acme/policy/preview', { policy: DRAFT, node: ids['acme/alice-laptop'] });
      assert.equal(r.status, 200, r.text);
      s = r.body.subjects[0];
      assert.deepEqual(s.peers.map((p: Json) => p.name), ['router']);
      assert.deepEqual(portsOf(s.peers, 'router'), ['tcp+udp+icmp+ipv6-icmp:22']);
      assert.ok(s.peers[0].addresses.length >= 1);
      assert.deepEqual(s.routes.map((x: Json) => `${x.prefix as string} via ${x.via.name as string}`), ['10.1.0.0/16 via router']);
      assert.deepEqual(portsOf(s.routes.map((x: Json) => ({ ...x, name: 'r' })), 'r'), ['tcp+udp+icmp+ipv6-icmp:443']);
      assert.deepEqual(s.exit_nodes.map((x: Json) => x.name), ['exit']);
      assert.deepEqual(portsOf(s.exit_nodes, 'exit'), ['tcp+udp+icmp+ipv6-icmp:*']);
      assert.deepEqual(s.inbound, [], 'nobody may open connections to alice under the draft');

      // The router's side: alice may reach it on 22 (inbound), it reaches nobody.
      r = await adm.post('/api/v1/tenants/acme/policy/preview', { policy: DRAFT, node: 'router' });
      s = r.body.subjects[0];
      assert.deepEqual(s.peers, []);
      assert.deepEqual(s.inbound.map((p: Json) => p.name), ['alice-laptop']);
      assert.deepEqual(portsOf(s.inbound, 'alice-laptop'), ['tcp+udp+icmp+ipv6-icmp:22']);

      // A user: bob's nodes reach nothing under the draft.
      r = await adm.post('/api/v1/tenants/acme/policy/preview', { policy: DRAFT, user: 'bob' });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.body.subjects.map((x: Json) => x.node.name), ['bob-laptop']);
      assert.deepEqual(r.body.subjects[0].peers, []);
      // A user without nodes: a new untagged node of theirs, at a free address of the pool.
      r = await adm.post('/api/v1/tenants/acme/policy/preview', { policy: DRAFT, user: 'carol@acme.example' });
      assert.equal(r.status, 200, r.text);
      s = r.body.subjects[0];
      assert.equal(s.node.hypothetical, true);
      assert.equal(s.node.user, 'carol@acme.example');
      assert.match(s.node.addresses[0], /^100\./);
      const used = new Set<string>();
      for (const n of (await adm.get('/api/v1/tenants/acme/nodes')).body.nodes as Json[]) for (const a of [n.ipv4, n.ipv6]) used.add(a as string);
      assert.ok(!used.has(s.node.addresses[0]), 'the new node gets an unused address');
      assert.deepEqual(s.peers.map((p: Json) => p.name), ['router']);
      assert.deepEqual(portsOf(s.peers, 'router'), ['tcp+udp+icmp+ipv6-icmp:80']);

      // Nothing was stored: the live policy, the node list and the audit log are as before.
      const afterPol = (await adm.get('/api/v1/tenants/acme/policy')).body;
      assert.equal(afterPol.version, before.version);
      assert.equal(afterPol.policy, LIVE);
      assert.equal(((await adm.get('/api/v1/tenants/acme/nodes')).body.nodes as Json[]).length, 4);
      assert.equal((await adm.get('/api/v1/tenants/acme/audit?limit=10000')).body.entries.length, audit0);
      // The OpenAPI document lists the route.
      const spec = (await op.get('/api/v1/openapi.json')).body;
      assert.ok(spec.paths['/api/v1/tenants/{tenant}/policy/preview']?.post, 'preview is in the OpenAPI document');
    });

    test('auditors may preview; other tenants\' nodes and users are not found; bad requests and invalid drafts are 400', async (t) => {
      if (skip) return t.skip(skip);
      const adm = await tenant('gamma');
      const other = await tenant('delta');
      const auditor = adm.as((await adm.post('/api/v1/tenants/gamma/apikeys', { role: 'auditor' })).body.key as string);
      const r = await auditor.post('/api/v1/tenants/gamma/policy/preview', { policy: DRAFT, node: 'alice-laptop' });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.body.subjects[0].peers.map((p: Json) => p.name), ['router']);
      // delta's node, by id and by name, through gamma: not found (and never delta's data).
      assertError(await adm.post('/api/v1/tenants/gamma/policy/preview', { policy: DRAFT, node: ids['delta/alice-laptop'] }), 404, 'not_found');
      assertError(await adm.post('/api/v1/tenants/gamma/policy/preview', { policy: DRAFT, node: 'no-such-node' }), 404, 'not_found');
      assertError(await adm.post('/api/v1/tenants/gamma/policy/preview', { policy: DRAFT, user: 'nobody' }), 404, 'not_found');
      // delta's key cannot preview gamma at all (gamma is not found for it).
      assertError(await other.post('/api/v1/tenants/gamma/policy/preview', { policy: DRAFT, node: 'alice-laptop' }), 404, 'not_found');
      assertError(await adm.post('/api/v1/tenants/gamma/policy/preview', { policy: DRAFT }), 400, 'invalid_request');
      assertError(await adm.post('/api/v1/tenants/gamma/policy/preview', { policy: DRAFT, node: 'router', user: 'bob' }), 400, 'invalid_request');
      // An invalid draft: 400 with the same positioned errors check reports.
      const bad = DRAFT.replace('"group:eng"]', '"group:nobody"]');
      const p = await adm.post('/api/v1/tenants/gamma/policy/preview', { policy: bad, node: 'router' });
      assertError(p, 400, 'invalid_policy');
      const c = await adm.post('/api/v1/tenants/gamma/policy/check', { policy: bad });
      assert.equal(c.body.valid, false);
      assert.deepEqual(p.body.error.details.errors, c.body.errors);
      assert.match(c.body.errors[0], /^policy\.hujson:6:\d+: .*group:nobody/);
    });

    test('check lists every test of the tests block with its outcome', async (t) => {
      if (skip) return t.skip(skip);
      const adm = await tenant('tests');
      const withTests = DRAFT.replace(/\n}\n$/, `
  "tests": [
    { "src": "alice@acme.example", "accept": ["tag:router:22"], "deny": ["tag:router:80"] },
    { "src": "bob@acme.example", "accept": ["tag:router:22"] },
  ],
}
`);
      const c = await adm.post('/api/v1/tenants/tests/policy/check', { policy: withTests });
      assert.equal(c.status, 200, c.text);
      assert.equal(c.body.valid, false);
      assert.equal(c.body.errors.length, 1);
      assert.deepEqual(c.body.tests.map((x: Json) => [x.test, x.src, x.dst, x.expect, x.pass]), [
        [0, 'alice@acme.example', 'tag:router:22', 'accept', true],
        [0, 'alice@acme.example', 'tag:router:80', 'deny', true],
        [1, 'bob@acme.example', 'tag:router:22', 'accept', false],
      ]);
      const failed = c.body.tests[2];
      assert.match(failed.message, /expected ALLOWED, got DENIED/);
      assert.equal(c.body.errors[0], `policy.hujson:${failed.line as number}:${failed.col as number}: test(s) failed: ${failed.message as string}`);
      // Fixed: valid, every test passes. A policy without tests has an empty list.
      const fixed = await adm.post('/api/v1/tenants/tests/policy/check', { policy: withTests.replace('"bob@acme.example", "accept"', '"bob@acme.example", "deny"') });
      assert.equal(fixed.body.valid, true, fixed.text);
      assert.deepEqual(fixed.body.tests.map((x: Json) => x.pass), [true, true, true]);
      assert.deepEqual((await adm.post('/api/v1/tenants/tests/policy/check', { policy: LIVE })).body.tests, []);
    });

    test('the console\'s templates pass the server\'s check', async (t) => {
      if (skip) return t.skip(skip);
      const adm = await tenant('tpl');
      assert.deepEqual(TEMPLATES.map((x) => x.name), ['Basic', 'Enterprise', 'Home lab', 'Blank']);
      for (const tpl of TEMPLATES) {
        const c = await adm.post('/api/v1/tenants/tpl/policy/check', { policy: tpl.text });
        assert.equal(c.status, 200, c.text);
        assert.deepEqual(c.body.errors, [], `${tpl.name}: ${c.text}`);
        assert.equal(c.body.valid, true);
        if (tpl.name !== 'Blank') assert.ok(c.body.tests.length > 0 && c.body.tests.every((x: Json) => x.pass), `${tpl.name} has passing tests`);
        assert.match(tpl.text, /^\/\/ /, `${tpl.name} is commented`);
      }
      const ent = TEMPLATES.find((x) => x.name === 'Enterprise')!.text;
      for (const g of ['group:admin', 'group:developer', 'group:intern']) assert.ok(ent.includes(`"${g}"`), g);
    });

    test('a draft over the compile budget gets the same 422 as check and put; the pool recovers', async (t) => {
      if (skip) return t.skip(skip);
      const adm = await tenant('budget');
      const big = bigPolicy();
      const p = await adm.post('/api/v1/tenants/budget/policy/preview', { policy: big, node: 'router' });
      assertError(p, 422, 'policy_over_budget');
      assert.equal(p.body.error.details.limit, 'compile_time_ms');
      const c = await adm.post('/api/v1/tenants/budget/policy/check', { policy: big });
      assertError(c, 422, 'policy_over_budget');
      assert.equal(c.body.error.details.limit, p.body.error.details.limit);
      const u = await adm.put('/api/v1/tenants/budget/policy', { policy: big });
      assertError(u, 422, 'policy_over_budget');
      // Over a size cap (found before any compile) too, naming the cap as check does.
      const rules = `{ "acls": [ ${Array.from({ length: 60 }, (_, i) => `{ "action": "accept", "src": ["*"], "dst": ["*:${i + 1}"] }`).join(', ')} ] }`;
      const capped = await adm.post('/api/v1/tenants/budget/policy/preview', { policy: rules, node: 'router' });
      assertError(capped, 422, 'policy_over_budget');
      assert.deepEqual(capped.body.error.details, { limit: 'policy_rules', max: 50, value: 60 });
      assert.deepEqual(capped.body.error, (await adm.post('/api/v1/tenants/budget/policy/check', { policy: rules })).body.error);
      const ok = await adm.post('/api/v1/tenants/budget/policy/preview', { policy: DRAFT, node: 'alice-laptop' });
      assert.equal(ok.status, 200, ok.text);
      assert.deepEqual(ok.body.subjects[0].peers.map((x: Json) => x.name), ['router']);
    });

    test('previews are rate-limited per tenant (429 with Retry-After), apart from checks and other tenants', async (t) => {
      if (skip) return t.skip(skip);
      const adm = await tenant('hammer');
      const quiet = await tenant('quiet');
      const codes: number[] = [];
      let limited: Res<Json> | null = null;
      for (let i = 0; i < 24; i++) {
        const r = await adm.post('/api/v1/tenants/hammer/policy/preview', { policy: LIVE, node: 'router' });
        codes.push(r.status);
        if (r.status === 429 && !limited) limited = r;
      }
      // burst 12 at 1/s: the first dozen pass, most of the rest are refused
      assert.ok(codes.slice(0, 12).every((c) => c === 200), codes.join(','));
      assert.ok(codes.filter((c) => c === 429).length >= 6, codes.join(','));
      assert.ok(limited);
      assertError(limited, 429, 'rate_limited');
      assert.ok(Number(limited.headers.get('retry-after')) >= 1);
      assert.equal((await quiet.post('/api/v1/tenants/quiet/policy/preview', { policy: LIVE, node: 'router' })).status, 200, 'another tenant is not limited');
      assert.equal((await adm.post('/api/v1/tenants/hammer/policy/check', { policy: LIVE })).status, 200, 'checks have their own bucket');
    });
  });
}

// ---- the page in chromium -------------------------------------------------------------

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const browserSkip = !existsSync(CHROMIUM)
  ? `${CHROMIUM} is missing (apt-get install chromium)`
  : !existsSync(join(ROOT, 'dist', 'console', 'index.html')) ? 'the console is not built (npm run build:console)' : false;
const shotsDir = process.env.LARKTUN_CONSOLE_SCREENSHOTS ? join(ROOT, 'docs', 'console') : null;

// Line 7 is the acl the test breaks and mends; line 2 is the comment the form must keep.
const PAGE_POLICY = `// acme's policy
// keep me: the form view must not lose this comment
{
  "groups": { "group:eng": ["alice@acme.example"] },
  "tagOwners": { "tag:router": ["group:eng"] },
  "acls": [
    { "action": "accept", "src": ["group:eng"], "dst": ["tag:router:22", "10.1.0.0/16:443"] },
  ],
  "tests": [
    { "src": "alice@acme.example", "accept": ["tag:router:22"], "deny": ["tag:router:80"] },
  ],
}
`;

describe('Access controls page in chromium', { skip: browserSkip }, () => {
  let dir = '';
  let srv: ServerProc;
  let op: Client;
  let browser: Browser;
  const streams: SseReader[] = [];
  const ids: Record<string, number> = {};
  const problems: string[] = [];

  before(async () => {
    dir = tempDir('larktun-policy-ui-');
    // Typing checks the text as often as every 400 ms: a roomier rate than the default keeps every check answered (the limit itself is tested above).
    srv = await spawnServer({ dataDir: dir, db: 'sqlite', env: { LARKTUN_POLICY_CHECK_RATE: '20', LARKTUN_POLICY_CHECK_BURST: '40' } });
    op = new Client(srv.url, srv.operatorKey());
    assert.equal((await op.post('/api/v1/tenants', { name: 'acme' })).status, 201);
    assert.equal((await op.post('/api/v1/tenants/acme/console-users', { username: 'alice', password: 'alice-password-1', role: 'admin' })).status, 201);
    assert.equal((await op.post('/api/v1/tenants/acme/console-users', { username: 'dana', password: 'dana-password-22', role: 'auditor' })).status, 201);
    for (const u of ['alice', 'bob']) await op.post('/api/v1/tenants/acme/users', { name: u, email: `${u}@acme.example` });
    // The tests name tag:router, which needs a node first: a policy without them defines the tag.
    assert.equal((await op.put('/api/v1/tenants/acme/policy', { policy: `${PAGE_POLICY.slice(0, PAGE_POLICY.indexOf('  "tests"'))}}\n` })).status, 200);
    const node = op.as(null);
    const reg = async (key: string, body: Record<string, unknown>, online: boolean) => {
      const r = await registerNode(node, { auth_key: key, ...body });
      assert.equal(r.status, 201, r.text);
      ids[body.hostname as string] = r.body.node.id as number;
      if (online) streams.push(await SseReader.open(`${srv.url}/node/v1/stream`, r.body.token as string));
    };
    for (const u of ['alice', 'bob']) await reg((await op.post('/api/v1/tenants/acme/authkeys', { user: u })).body.key as string, { hostname: `${u}-laptop` }, false);
    await reg((await op.post('/api/v1/tenants/acme/authkeys', { tags: ['tag:router'] })).body.key as string, { hostname: 'router', tags: ['tag:router'], routes: ['10.1.0.0/16'] }, true);
    assert.equal((await op.post(`/api/v1/tenants/acme/nodes/${ids.router}/routes`, { approved: ['10.1.0.0/16'] })).status, 200);
    const pr = await op.put('/api/v1/tenants/acme/policy', { policy: PAGE_POLICY });
    assert.equal(pr.status, 200, pr.text);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
  });

  after(async () => {
    for (const s of streams) s.close();
    await browser?.close();
    await srv?.stop();
    cleanup(dir);
  });

  async function shot(page: Page, name: string): Promise<void> {
    await page.screenshot({ path: join(shotsDir ?? dir, `${name}.png`) });
  }

  /** Replaces line `n` (1-based) of the editor with `text` (typed without spaces: a contenteditable may make them non-breaking). */
  async function replaceLine(page: Page, n: number, text: string): Promise<void> {
    await page.locator('.cm-content').click();
    await page.keyboard.press('Control+Home');
    for (let i = 1; i < n; i++) await page.keyboard.press('ArrowDown');
    await page.keyboard.press('Home');
    await page.keyboard.press('Shift+End');
    await page.keyboard.insertText(text);
  }

  test('error at its line, tests results, a template, a form edit that keeps a comment, a node\'s preview, a save in Logs', async (t) => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light', baseURL: srv.url });
    const page = await ctx.newPage();
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('dialog', (d) => { problems.push(`dialog opened: ${d.message()}`); void d.dismiss(); });
    await page.goto('/signin');
    await page.getByLabel('Tenant', { exact: true }).fill('acme');
    await page.getByLabel('Username').fill('alice');
    await page.getByLabel('Password').fill('alice-password-1');
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.waitForURL('**/acme/machines');
    await page.goto('/acme/acls');
    const editor = page.locator('.cm-content');
    await editor.waitFor();
    const editorText = async () => page.evaluate("[...document.querySelectorAll('.cm-line')].map((l) => l.textContent).join('\\n')") as Promise<string>;

    await t.test('an error shows at its line; fixed, the check passes and the tests are listed', async () => {
      assert.match((await page.locator('.cm-line').nth(6).textContent()) ?? '', /group:eng.*tag:router:22/);
      await replaceLine(page, 7, '{"action":"accept","src":["group:nobody"],"dst":["*:*"]},');
      const problem = page.locator('.problems li').first();
      await problem.waitFor({ timeout: 15_000 });
      assert.match((await problem.textContent()) ?? '', /^Line 7, column \d+: .*group:nobody/);
      await page.locator('.cm-lint-marker-error').first().waitFor();
      await replaceLine(page, 7, '{"action":"accept","src":["group:eng"],"dst":["tag:router:22","10.1.0.0/16:443"]},');
      await page.getByText('The policy is valid and its tests pass.').waitFor({ timeout: 15_000 });
      const results = page.getByRole('region', { name: 'Test results' });
      await results.getByText('Tests: 2 of 2 passed').waitFor();
      assert.equal(await results.locator('tr[data-test-result="pass"]').count(), 2);
      assert.match((await results.locator('tr[data-test-result]').nth(1).textContent()) ?? '', /alice@acme\.example.*denied.*tag:router:80/);
      // A failing expectation is listed as failed, with the server's reason.
      await replaceLine(page, 10, '{"src":"alice@acme.example","accept":["tag:router:22","tag:router:80"]},');
      await results.locator('tr[data-test-result="fail"]').waitFor({ timeout: 15_000 });
      assert.match((await results.locator('tr[data-test-result="fail"]').textContent()) ?? '', /tag:router:80.*expected ALLOWED, got DENIED/);
      await replaceLine(page, 10, '{"src":"alice@acme.example","accept":["tag:router:22"],"deny":["tag:router:80"]},');
      await results.getByText('Tests: 2 of 2 passed').waitFor({ timeout: 15_000 });
    });

    await t.test('a template replaces the text after a confirm (the editor has changes) and passes the check', async () => {
      await page.getByRole('button', { name: 'Templates…' }).click();
      await page.getByRole('button', { name: 'Load the Enterprise template' }).click();
      const confirm = page.getByRole('dialog', { name: /Replace your text with the Enterprise template/ });
      await confirm.waitFor();
      assert.match(await editorText(), /keep me/, 'nothing replaced before the confirm');
      await confirm.getByRole('button', { name: 'Replace' }).click();
      await page.getByText('The policy is valid and its tests pass.').waitFor({ timeout: 15_000 });
      const text = await editorText();
      assert.match(text, /"group:intern"/);
      assert.match(text, /^\/\/ Enterprise: three roles\./);
      // Back to the live text.
      await page.getByRole('button', { name: 'Discard changes' }).click();
      await page.getByRole('dialog').getByRole('button', { name: 'Discard' }).click();
      assert.match(await editorText(), /keep me/);
    });

    await t.test('the form view adds a group and a rule to the same document; the comment stays', async () => {
      await page.getByRole('tab', { name: 'Form' }).click();
      const groups = page.getByRole('region', { name: 'Groups' });
      await groups.locator('tr[data-entry="group:eng"]').waitFor();
      const addGroup = page.getByRole('form', { name: 'Add to groups' });
      await addGroup.getByLabel('Group').fill('group:ops');
      await addGroup.getByLabel('Members').fill('alice@acme.example, bob@acme.example');
      await addGroup.getByRole('button', { name: 'Add' }).click();
      await groups.locator('tr[data-entry="group:ops"]').waitFor();
      const addRule = page.getByRole('form', { name: 'Add an ACL rule' });
      await addRule.getByLabel('Sources').fill('group:ops');
      await addRule.getByLabel(/Destinations/).fill('tag:router:8080,8443');
      await addRule.getByRole('button', { name: 'Add rule' }).click();
      await page.locator('tr[data-acl="1"]').waitFor();
      await page.getByText('The policy is valid and its tests pass.').waitFor({ timeout: 15_000 });
      await page.getByRole('tab', { name: 'Form' }).scrollIntoViewIfNeeded();
      await page.evaluate('window.scrollTo(0, 0)');
      await shot(page, 'acls-form');
      await page.getByRole('tab', { name: 'Text' }).click();
      const text = await editorText();
      assert.match(text, /\/\/ keep me: the form view must not lose this comment/);
      assert.match(text, /^\/\/ acme's policy/);
      assert.match(text, /"group:ops": \["alice@acme\.example", "bob@acme\.example"\]/);
      assert.match(text, /\{ "action": "accept", "src": \["group:eng"\], "dst": \["tag:router:22", "10\.1\.0\.0\/16:443"\] \},/, 'the first rule keeps its layout');
      assert.match(text, /"tag:router:8080,8443"/);
      assert.match(text, /"tests"/, 'the rest of the document is untouched');
    });

    await t.test('preview shows the node\'s reach under the editor\'s text, before saving', async () => {
      const preview = page.getByRole('region', { name: 'Preview' });
      await preview.getByLabel('Node to preview').selectOption(String(ids['alice-laptop']));
      await preview.getByRole('button', { name: 'Preview' }).click();
      const card = preview.locator('[data-preview-node="alice-laptop"]');
      await card.waitFor({ timeout: 15_000 });
      const peer = card.locator('tr[data-kind="peer"]');
      assert.equal(await peer.count(), 1);
      const peerText = (await peer.textContent()) ?? '';
      assert.match(peerText, /router/);
      assert.match(peerText, /port 22/);
      assert.match(peerText, /port 8080-8080|port 8080/, 'the rule added in the form (not saved yet) shows');
      const route = (await card.locator('tr[data-kind="route"]').textContent()) ?? '';
      assert.match(route, /10\.1\.0\.0\/16.*via router.*port 443/);
      assert.equal(await card.locator('tr[data-kind="inbound"]').count(), 0);
      await card.scrollIntoViewIfNeeded();
      await shot(page, 'acls-preview');
      // A user: bob, in the group the form just added, reaches the router on its ports only (not 22).
      await preview.getByRole('button', { name: 'User', exact: true }).click();
      await preview.getByLabel('User to preview').selectOption('bob');
      await preview.getByRole('button', { name: 'Preview' }).click();
      const bob = preview.locator('[data-preview-node="bob-laptop"]');
      await bob.waitFor({ timeout: 15_000 });
      const bobPeer = (await bob.locator('tr[data-kind="peer"]').textContent()) ?? '';
      assert.match(bobPeer, /router.*port 8080, port 8443$/);
      assert.doesNotMatch(bobPeer, /port 22/);
      assert.equal(await bob.locator('tr[data-kind="route"]').count(), 0);
      // Nothing was saved by previewing.
      assert.equal((await op.get('/api/v1/tenants/acme/policy')).body.policy, PAGE_POLICY);
    });

    await t.test('save shows the diff, then Logs shows the change under the user\'s name', async () => {
      await page.getByRole('button', { name: 'Save…' }).click();
      await page.getByRole('dialog').locator('.cm-mergeView').waitFor();
      await page.getByRole('dialog').getByRole('button', { name: 'Save policy' }).click();
      await page.getByText(/Saved as version \d+/).waitFor({ timeout: 15_000 });
      const live = (await op.get('/api/v1/tenants/acme/policy')).body;
      assert.match(live.policy, /keep me/);
      assert.match(live.policy, /group:ops/);
      assert.equal(live.created_by, 'user:alice');
      await page.goto('/acme/logs');
      const row = page.locator('tr[data-seq]', { hasText: 'policy.set' }).first();
      await row.waitFor();
      assert.match((await row.textContent()) ?? '', /user:alice/);
      // (the one 401 is the session probe on the sign-in page, before signing in)
      assert.deepEqual(problems.filter((p) => !/status of 401 /.test(p)), []);
    });
    await ctx.close();
  });

  test('an auditor sees the page read-only: no templates, no form edits, but a preview', async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light', baseURL: srv.url });
    const page = await ctx.newPage();
    await page.goto('/signin');
    await page.getByLabel('Tenant', { exact: true }).fill('acme');
    await page.getByLabel('Username').fill('dana');
    await page.getByLabel('Password').fill('dana-password-22');
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.waitForURL('**/acme/machines');
    await page.goto('/acme/acls');
    await page.locator('.cm-content').waitFor();
    await page.getByText('read-only for the auditor role').waitFor();
    assert.equal(await page.getByRole('button', { name: 'Templates…' }).count(), 0);
    await page.getByRole('tab', { name: 'Form' }).click();
    await page.locator('tr[data-entry="group:eng"]').waitFor();
    assert.equal(await page.getByRole('form', { name: 'Add to groups' }).count(), 0);
    assert.equal(await page.getByRole('button', { name: /^Remove / }).count(), 0);
    const preview = page.getByRole('region', { name: 'Preview' });
    await preview.getByLabel('Node to preview').selectOption(String(ids.router));
    await preview.getByRole('button', { name: 'Preview' }).click();
    const card = preview.locator('[data-preview-node="router"]');
    await card.waitFor({ timeout: 15_000 });
    assert.match((await card.locator('tr[data-kind="inbound"]').first().textContent()) ?? '', /alice-laptop.*port 22/);
    await ctx.close();
  });
});
