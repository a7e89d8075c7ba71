// The web console in a real browser (Debian's chromium through playwright-core,
// never a downloaded one) against a real `larktun server` process, once with a
// real SQLite file and once with PostgreSQL (a fresh schema): sign-in with a
// password, machine tags limited to the policy's tags, policy errors at their
// line, a saved policy in Logs under the user's name and the Logs filters,
// route approve/revoke seen in the nodes' maps (GET /node/v1/map with their
// tokens), the Relays pages (operator and tenant: no other tenant's relay or
// links), tenant counts and edits, tenant isolation between two browser
// contexts, XSS, CSRF, the CSP, the phone layout's menu, slowed wrong
// passwords, live updates over SSE. The PostgreSQL run skips the policy editor
// walk-through and the slowed sign-ins (store-independent, slow) to keep the
// time reasonable. Page load times are printed as "# console load" lines.
// Screenshots (1280×800 and 390×844, light) of the SQLite run go to
// docs/console/ when LARKTUN_CONSOLE_SCREENSHOTS=1, else to the test's temp directory.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { Client, ROOT, SseReader, cleanup, freshPgSchema, pgUnavailable, spawnServer, tempDir, type Json, type PgSchema, type ServerProc, registerNode } from '../control/harness.js';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const skip = !existsSync(CHROMIUM)
  ? `${CHROMIUM} is missing (apt-get install chromium)`
  : !existsSync(join(ROOT, 'dist', 'console', 'index.html')) ? 'the console is not built (npm run build:console)' : false;

const XSS = '<img src=x onerror=alert(1)>';
const PW = { alice: 'alice-password-1', bob: 'bob-password-22', dana: 'dana-password-333' };
const shotsDir = process.env.LARKTUN_CONSOLE_SCREENSHOTS ? join(ROOT, 'docs', 'console') : null;

type Backend = 'SQLite' | 'PostgreSQL';

function suite(backend: Backend): void {
  const full = backend === 'SQLite';
  const onlyFull = full ? false : 'run on SQLite only (store-independent and slow)';
  describe(`console in chromium (${backend})`, () => {
    let skipWhy: string | false = skip;
    let schema: PgSchema | null = null;
    let dir = '';
    let srv: ServerProc;
    let op: Client;
    let browser: Browser;
    const streams: SseReader[] = [];
    const problems: string[] = [];
    const ids: Record<string, number> = {};

    const tokens: Record<string, string> = {};
    let edge = { id: 0, token: '' };

    async function shot(page: Page, name: string): Promise<void> {
      await page.screenshot({ path: join((full ? shotsDir : null) ?? dir, `${name}.png`) });
    }

    /** The node's current map (GET /node/v1/map with its token) until `pred` holds (the server recompiles in a worker). */
    async function mapUntil(node: string, pred: (m: Json) => boolean, what: string): Promise<Json> {
      const deadline = Date.now() + 15_000;
      let m: Json = null;
      while (Date.now() < deadline) {
        const r = await new Client(srv.url, tokens[node]!).get('/node/v1/map');
        assert.equal(r.status, 200, r.text);
        m = r.body;
        if (pred(m)) return m;
        await new Promise((res) => setTimeout(res, 100));
      }
      assert.fail(`${node}'s map: ${what} (last map: ${JSON.stringify(m).slice(0, 400)})`);
    }

    async function newContext(): Promise<{ ctx: BrowserContext; page: Page }> {
      const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light', baseURL: srv.url });
      const page = await ctx.newPage();
      page.on('console', (m) => { if (m.type() === 'error') problems.push(`console on ${new URL(page.url()).pathname}: ${m.text()}`); });
      page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
      page.on('dialog', (d) => { problems.push(`dialog opened: ${d.message()}`); void d.dismiss(); });
      return { ctx, page };
    }

    async function signIn(page: Page, tenant: string, username: string, password: string): Promise<void> {
      await page.goto('/signin');
      await page.getByLabel('Tenant', { exact: true }).fill(tenant);
      await page.getByLabel('Username').fill(username);
      await page.getByLabel('Password').fill(password);
      await page.getByRole('button', { name: 'Sign in', exact: true }).click();
      await page.waitForURL(`**/${tenant}/machines`);
    }

    /** Waits for "Saved as version N"; a refused save fails at once with the server's message (e.g. a compile worker busy on a loaded machine). */
    async function savedOrSay(page: Page): Promise<void> {
      const saved = page.getByText(/Saved as version \d+/);
      const refused = page.getByRole('dialog').getByRole('alert');
      await saved.or(refused).first().waitFor({ timeout: 60_000 });
      if (!(await saved.isVisible())) assert.fail(`the save was refused: ${await refused.first().textContent()}`);
    }

    /** Waits (up to 10 s) until exactly `n` elements match: lists refetch from the server after a filter changes. */
    async function rowsAre(page: Page, sel: string, n: number): Promise<void> {
      const deadline = Date.now() + 10_000;
      let c = -1;
      while (Date.now() < deadline) {
        c = await page.locator(sel).count();
        if (c === n) return;
        await page.waitForTimeout(50);
      }
      assert.equal(c, n, `${sel}: ${c} shown, expected ${n}`);
    }

    /** Navigates and times until `ready` is visible (the page's data rendered). */
    async function timedGoto(page: Page, path: string, ready: string, label: string): Promise<number> {
      const t0 = Date.now();
      await page.goto(path);
      await page.locator(ready).first().waitFor({ state: 'visible' });
      const ms = Date.now() - t0;
      process.stdout.write(`# console load ${label} = ${ms} ms\n`);
      return ms;
    }

    before(async () => {
      if (skip) return;
      let db = 'sqlite';
      if (backend === 'PostgreSQL') {
        const why = await pgUnavailable();
        if (why) {
          skipWhy = why;
          return;
        }
        schema = await freshPgSchema();
        db = schema.url;
      }
      dir = tempDir('larktun-console-');
      srv = await spawnServer({ dataDir: dir, db });
      op = new Client(srv.url, srv.operatorKey());
      for (const t of ['acme', 'beta']) assert.equal((await op.post('/api/v1/tenants', { name: t })).status, 201);
      const mk = async (t: string, username: string, password: string, role: string) =>
        assert.equal((await op.post(`/api/v1/tenants/${t}/console-users`, { username, password, role })).status, 201);
      await mk('acme', 'alice', PW.alice, 'admin');
      await mk('acme', 'dana', PW.dana, 'auditor');
      await mk('beta', 'bob', PW.bob, 'admin');
      // acme: users, a policy with tags, nodes (one named to try XSS), routers and an exit node.
      await op.post('/api/v1/tenants/acme/users', { name: 'alice', email: 'alice@acme.example', display_name: 'Alice Adams' });
      await op.post('/api/v1/tenants/acme/users', { name: 'eve', display_name: XSS });
      const policy = `// acme's network
{
  "groups": { "group:admins": ["alice@"] },
  "tagOwners": { "tag:router": ["group:admins"], "tag:exit": ["group:admins"], "tag:server": ["group:admins"] },
  "acls": [
    { "action": "accept", "src": ["group:admins"], "dst": ["*:*"] },
    { "action": "accept", "src": ["tag:server"], "dst": ["tag:server:443"] },
  ],
}
`;
      const pr = await op.put('/api/v1/tenants/acme/policy', { policy });
      assert.equal(pr.status, 200, pr.text);
      const key = (await op.post('/api/v1/tenants/acme/authkeys', { user: 'alice', reusable: true, description: 'laptops' })).body.key as string;
      const tagKey = (await op.post('/api/v1/tenants/acme/authkeys', { tags: ['tag:router', 'tag:exit'], reusable: true, description: XSS })).body.key as string;
      const node = op.as(null);
      const reg = async (authKey: string, body: Record<string, unknown>, online: boolean) => {
        const r = await registerNode(node, { auth_key: authKey, ...body });
        assert.equal(r.status, 201, r.text);
        ids[r.body.node.name as string] = r.body.node.id as number;
        tokens[r.body.node.name as string] = r.body.token as string;
        if (online) streams.push(await SseReader.open(`${srv.url}/node/v1/stream`, r.body.token as string));
      };
      await reg(key, { hostname: 'alice-laptop', os: 'linux', version: '0.1.0' }, true);
      await reg(key, { hostname: 'build-box', os: 'linux' }, false);
      await reg(key, { hostname: XSS, os: 'linux' }, false);
      await reg(tagKey, { hostname: 'router-a', tags: ['tag:router'], routes: ['10.20.0.0/16', '192.168.6.0/24'], os: 'linux' }, true);
      await reg(tagKey, { hostname: 'router-b', tags: ['tag:router'], routes: ['10.20.0.0/16'], os: 'linux' }, false);
      await reg(tagKey, { hostname: 'exit-fra', tags: ['tag:exit'], exit_node: true, os: 'linux' }, true);
      // beta: one node of its own.
      await op.post('/api/v1/tenants/beta/users', { name: 'bob' });
      const bk = (await op.post('/api/v1/tenants/beta/authkeys', { user: 'bob' })).body.key as string;
      await reg(bk, { hostname: 'beta-only-node' }, false);
      // Relays: one shared, one dedicated to each tenant (beta's must never show in acme).
      for (const [name, tenant] of [['edge-fra', undefined], ['acme-hub', 'acme'], ['beta-secret-relay', 'beta']] as const) {
        const r = await op.post('/api/v1/relays', { name, endpoints: ['203.0.113.9:18020'], ...(tenant ? { tenant } : {}) });
        assert.equal(r.status, 201, r.text);
        if (name === 'edge-fra') edge = { id: r.body.id as number, token: r.body.token as string };
      }
      browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
    });

    after(async () => {
      if (skip) return;
      for (const s of streams) s.close();
      await browser?.close();
      await srv?.stop();
      if (dir) cleanup(dir);
      await schema?.drop();
    });

    test('console in chromium: sign-in, machines, tags, routes and maps, policy, logs, relays, users, keys, tenants, isolation, XSS, CSRF, CSP, phone, slowed sign-in', async (t) => {
      if (skipWhy) return t.skip(skipWhy);
      const { ctx, page } = await newContext();

      await t.test('signing in with a password sets an HttpOnly, SameSite=Strict session cookie', async () => {
        const t0 = Date.now();
        await page.goto('/');
        await page.waitForURL('**/signin');
        process.stdout.write(`# console load signin = ${Date.now() - t0} ms\n`);
        await shot(page, 'signin');
        await signIn(page, 'acme', 'alice', PW.alice);
        const cookies = await ctx.cookies();
        const c = cookies.find((x) => x.name === 'larktun_session');
        assert.ok(c, 'session cookie set');
        assert.equal(c.httpOnly, true);
        assert.equal(c.sameSite, 'Strict');
        assert.equal(await page.evaluate('document.cookie'), '', 'the session cookie is not readable by scripts');
        assert.equal(await page.evaluate('JSON.stringify(localStorage) + JSON.stringify(sessionStorage)'), '{}{}', 'nothing kept in web storage');
      });

      await t.test('Machines lists the tenant\'s nodes; a hostile name shows as text; search and filters work', async () => {
        const ms = await timedGoto(page, '/acme/machines', 'tr[data-node]', 'machines');
        assert.ok(ms < 5000);
        await page.getByText('alice-laptop').first().waitFor();
        assert.equal(await page.locator('tr[data-node]').count(), 6);
        await page.getByText(XSS, { exact: true }).first().waitFor();
        assert.equal(await page.locator('main img').count(), 0, 'no <img> element was created from a node name');
        await shot(page, 'machines');
        // The server filters and searches (the browser holds one page).
        await page.getByRole('button', { name: /^Online/ }).click();
        await rowsAre(page, 'tr[data-node]', 3);
        assert.equal(await page.locator(`tr[data-node="${ids['build-box']}"]`).count(), 0, 'an offline node is not listed as online');
        await page.getByRole('button', { name: /^Offline/ }).click();
        await rowsAre(page, 'tr[data-node]', 3);
        await page.getByRole('button', { name: /^All/ }).click();
        await page.getByLabel('Search machines').fill('router');
        await rowsAre(page, 'tr[data-node]', 2);
        await page.getByLabel('Search machines').fill('');
        await rowsAre(page, 'tr[data-node]', 6);
        // Live: the page follows the tenant's event stream (polling is 60 s while it is connected).
        await page.locator('[data-live="on"]').waitFor();
        const row = page.locator(`tr[data-node="${ids['alice-laptop']}"]`);
        await row.getByText('Online', { exact: true }).waitFor();
        const t0 = Date.now();
        streams[0]!.close(); // alice-laptop's map stream ends: the server marks it offline
        await row.getByText('Offline', { exact: true }).waitFor({ timeout: 5000 });
        process.stdout.write(`# console live update (node offline shown without reload) = ${Date.now() - t0} ms\n`);
      });

      await t.test('rename a machine (confirmed in a dialog, audited as the user)', async () => {
        await page.getByRole('button', { name: 'Rename build-box' }).click();
        await page.getByLabel('New name').fill('build-server');
        await page.getByRole('dialog').getByRole('button', { name: 'Rename' }).click();
        await page.getByText('build-server').first().waitFor();
        const n = await op.get(`/api/v1/tenants/acme/nodes/${ids['build-box']}`);
        assert.equal(n.body.name, 'build-server');
      });

      await t.test('edit a machine\'s tags: only the tags the policy defines are offered; audited as the user', async () => {
        await page.getByRole('button', { name: 'Edit tags of build-server' }).click();
        const dlg = page.getByRole('dialog');
        await dlg.getByRole('checkbox').first().waitFor();
        const offered = await dlg.locator('fieldset label').allTextContents();
        assert.deepEqual(offered, ['tag:exit', 'tag:router', 'tag:server'], 'the keys of the policy\'s tagOwners');
        await dlg.getByRole('checkbox', { name: 'tag:server' }).check();
        if (full) await shot(page, 'machines-tags');
        await dlg.getByRole('button', { name: 'Save tags' }).click();
        await page.locator(`tr[data-node="${ids['build-box']}"] .badge`, { hasText: 'tag:server' }).waitFor();
        const n = await op.get(`/api/v1/tenants/acme/nodes/${ids['build-box']}`);
        assert.deepEqual(n.body.tags, ['tag:server']);
        const a = await op.get(`/api/v1/tenants/acme/audit?action=node.tags&object=node:${ids['build-box']}`);
        assert.deepEqual(a.body.entries.map((e: Json) => [e.actor, e.after.tags]), [['user:alice', ['tag:server']]]);
        // A tag the policy does not define is refused by the server even if a client sends it.
        const r = await page.evaluate(async (id) => {
          const csrf = (await (await fetch('/api/v1/console/session')).json() as { csrf: string }).csrf;
          const res = await fetch(`/api/v1/tenants/acme/nodes/${id}/tags`, { method: 'PUT', headers: { 'content-type': 'application/json', 'x-csrf-token': csrf }, body: JSON.stringify({ tags: ['tag:nope'] }) });
          return res.status;
        }, ids['build-box']);
        assert.equal(r, 400);
        assert.deepEqual((await op.get(`/api/v1/tenants/acme/nodes/${ids['build-box']}`)).body.tags, ['tag:server']);
      });

      await t.test('Routes: approve and revoke a subnet route and an exit node', async () => {
        await timedGoto(page, '/acme/routes', 'article.card', 'routes');
        await shot(page, 'routes');
        const row = page.locator('tr[data-router="router-a|10.20.0.0/16"]');
        await row.getByRole('button', { name: 'Approve' }).click();
        await page.getByRole('dialog').getByRole('button', { name: 'Approve' }).click();
        await row.getByRole('button', { name: 'Revoke' }).waitFor();
        let n = await op.get(`/api/v1/tenants/acme/nodes/${ids['router-a']}`);
        assert.deepEqual(n.body.approved_routes, ['10.20.0.0/16']);
        await row.locator('.badge', { hasText: 'Primary' }).waitFor();
        // The maps change: the router is primary for the prefix, and a peer (alice's laptop) routes it through the router.
        const viaRouter = (m: Json) => (m.peers as Json[]).some((p) => p.name === 'router-a' && (p.allowed_ips as string[]).includes('10.20.0.0/16'));
        await mapUntil('router-a', (m) => (m.self.primary_routes as string[]).includes('10.20.0.0/16'), 'primary for 10.20.0.0/16');
        await mapUntil('alice-laptop', viaRouter, 'router-a carries 10.20.0.0/16');
        const exit = page.locator('tr[data-exit="exit-fra"]');
        await exit.getByRole('button', { name: 'Approve' }).click();
        await page.getByRole('dialog').getByRole('button', { name: 'Approve' }).click();
        await exit.getByRole('button', { name: 'Revoke' }).waitFor();
        n = await op.get(`/api/v1/tenants/acme/nodes/${ids['exit-fra']}`);
        assert.deepEqual(n.body.approved_routes, ['0.0.0.0/0', '::/0'], 'approving an exit node approves both families');
        await shot(page, 'routes-approved');
        await row.getByRole('button', { name: 'Revoke' }).click();
        await page.getByRole('dialog').getByRole('button', { name: 'Revoke' }).click();
        await row.getByRole('button', { name: 'Approve' }).waitFor();
        n = await op.get(`/api/v1/tenants/acme/nodes/${ids['router-a']}`);
        assert.deepEqual(n.body.approved_routes, []);
        await mapUntil('alice-laptop', (m) => !viaRouter(m) && (m.peers as Json[]).some((p) => p.name === 'router-a'), 'router-a no longer carries 10.20.0.0/16');
        await mapUntil('router-a', (m) => !(m.self.primary_routes as string[]).includes('10.20.0.0/16'), 'no longer primary');
      });

      await t.test('Access controls: an error shows at its line and column; a valid policy saves after a diff', async () => {
        await timedGoto(page, '/acme/acls', '.cm-content', 'acls');
        const editor = page.locator('.cm-content');
        await editor.click();
        // Line 5 of the live policy is the first acl; replace the group with an undefined one.
        await page.keyboard.press('Control+Home');
        for (let i = 0; i < 5; i++) await page.keyboard.press('ArrowDown');
        await page.keyboard.press('End');
        const line6 = await page.locator('.cm-line').nth(5).textContent() ?? '';
        assert.match(line6, /group:admins/);
        await page.keyboard.press('Home');
        await page.keyboard.press('Shift+End');
        // (no spaces: a contenteditable may turn typed spaces into non-breaking ones)
        await page.keyboard.insertText('{"action":"accept","src":["group:nobody"],"dst":["*:*"]},');
        const problem = page.locator('.problems li').first();
        await problem.waitFor({ timeout: 10_000 });
        const text = (await problem.textContent()) ?? '';
        assert.match(text, /^Line 6, column \d+: .*group:nobody/, text);
        await page.locator('.cm-lint-marker-error').first().waitFor();
        await shot(page, 'acls-error');
        // Saving the broken text is refused by the server and the editor keeps it.
        await page.getByRole('button', { name: 'Save…' }).click();
        await page.getByRole('dialog').getByRole('button', { name: 'Save policy' }).click();
        await page.getByRole('dialog').getByRole('alert').waitFor();
        await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
        assert.match(await editor.textContent() ?? '', /group:nobody/, 'the editor keeps its text after a refused save');
        // Fix it: a valid policy, saved after looking at the diff.
        await editor.click();
        await page.keyboard.press('Control+Home');
        for (let i = 0; i < 5; i++) await page.keyboard.press('ArrowDown');
        await page.keyboard.press('Home');
        await page.keyboard.press('Shift+End');
        await page.keyboard.insertText('{"action":"accept","src":["group:admins","alice@"],"dst":["*:*"]},');
        await page.getByText('The policy is valid and its tests pass.').waitFor({ timeout: 10_000 });
        await page.getByRole('button', { name: 'Save…' }).click();
        await page.locator('.cm-mergeView').waitFor();
        await shot(page, 'acls-diff');
        await page.getByRole('dialog').getByRole('button', { name: 'Save policy' }).click();
        await savedOrSay(page);
        const live = await op.get('/api/v1/tenants/acme/policy');
        assert.match(live.body.policy, /"group:admins","alice@"/);
        assert.equal(live.body.created_by, 'user:alice');
        // History: compare an older version, restore it into the editor, save it again.
        const v2 = await op.get('/api/v1/tenants/acme/policy/versions/2');
        await page.getByRole('button', { name: 'Compare version 2' }).click();
        await page.getByRole('dialog').locator('.cm-mergeView').waitFor();
        await page.getByRole('dialog').getByRole('button', { name: 'Restore into the editor' }).click();
        await page.getByRole('button', { name: 'Save…' }).click();
        await page.getByRole('dialog').getByRole('button', { name: 'Save policy' }).click();
        await savedOrSay(page);
        await page.locator('tr[data-version="4"]').waitFor();
        const restored = await op.get('/api/v1/tenants/acme/policy');
        assert.equal(restored.body.version, 4);
        assert.equal(restored.body.policy, v2.body.policy, 'version 2 restored as version 4');
      });

      await t.test('Logs: the saved policy appears under the user\'s name, with the chain verified', async () => {
        await timedGoto(page, '/acme/logs', 'tr[data-seq]', 'logs');
        const row = page.locator('tr[data-seq]', { hasText: 'policy.set' }).first();
        await row.waitFor();
        assert.match((await row.textContent()) ?? '', /user:alice/);
        assert.equal(await page.locator('[data-chain]').getAttribute('data-chain'), 'ok');
        await page.locator('tr[data-seq]', { hasText: 'node.routes.approve' }).first().waitFor();
        await page.locator('tr[data-seq]', { hasText: 'console.signin' }).first().waitFor();
        // The newest entry comes first.
        const seqs = (await page.locator('tr[data-seq]').evaluateAll((rows) => rows.map((r) => Number(r.getAttribute('data-seq')))));
        assert.deepEqual(seqs, [...seqs].sort((a, b) => b - a));
        await shot(page, 'logs');
      });

      await t.test('Logs filters by actor, object and time on the server; each entry shows its before and after', async () => {
        const filters = page.getByRole('search', { name: 'Filter the audit log' });
        await filters.getByLabel('Object').fill(`node:${ids['build-box']}`);
        await rowsAre(page, 'tr[data-seq]', (await op.get(`/api/v1/tenants/acme/audit?object=node:${ids['build-box']}&limit=1000`)).body.entries.length);
        const actions = await page.locator('tr[data-seq] td:nth-child(4)').allTextContents();
        assert.ok(actions.includes('node.rename') && actions.includes('node.tags') && actions.every((a) => a.startsWith('node.')), actions.join(','));
        const rename = page.locator('tr[data-seq]', { hasText: 'node.rename' });
        await rename.getByRole('button', { name: 'Details' }).click();
        const details = page.locator('tr.details');
        await details.locator('pre').first().waitFor();
        const [bef, aft] = await details.locator('pre').allTextContents();
        assert.deepEqual([JSON.parse(bef!), JSON.parse(aft!)], [{ name: 'build-box' }, { name: 'build-server' }]);
        if (full) await shot(page, 'logs-details');
        await filters.getByLabel('Object').fill('');
        await filters.getByLabel('Actor').fill('user:alice');
        const mine = (await op.get('/api/v1/tenants/acme/audit?actor=user:alice&limit=1000')).body.entries.length;
        assert.ok(mine >= 5);
        await rowsAre(page, 'tr[data-seq]', Math.min(mine, 100));
        assert.ok((await page.locator('tr[data-seq] td:nth-child(3)').allTextContents()).every((a) => a === 'user:alice'));
        await page.locator(`[data-total="${mine}"]`).waitFor();
        // Until a time before anything happened: nothing matches.
        await filters.getByLabel('Until').fill('2020-01-01T00:00');
        await page.getByText('No entry matches.').waitFor();
        await filters.getByLabel('Until').fill('');
        await filters.getByLabel('Actor').fill('');
        await page.locator('tr[data-seq]').first().waitFor();
      });

      await t.test('Relays (tenant): the shared relay and the tenant\'s own, live state, this tenant\'s links only', async () => {
        // edge-fra reports every one of its links as seen: it becomes live.
        const links: Json[] = [];
        for (const [nm, id] of Object.entries(ids)) {
          const tn = nm === 'beta-only-node' ? 'beta' : 'acme';
          const r = await op.get(`/api/v1/tenants/${tn}/nodes/${id}/links`);
          assert.equal(r.status, 200, r.text);
          links.push(...(r.body.links as Json[]).filter((l) => l.relay === edge.id));
        }
        assert.equal(links.length, 7);
        const h = await op.as(edge.token).post('/relay/v1/health', { links: links.map((l) => ({ link_id: l.link_id, last_seen_ms_ago: 200, rtt_ms: 2 })) });
        assert.equal(h.status, 200, h.text);
        await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Relays' }).click();
        await page.waitForURL('**/acme/relays');
        await page.locator('tr[data-relay]').first().waitFor();
        assert.deepEqual(await page.locator('tr[data-relay]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-relay'))), ['edge-fra', 'acme-hub']);
        const e = page.locator('tr[data-relay="edge-fra"]');
        await e.getByText('Live', { exact: true }).waitFor();
        await e.getByText('in use').waitFor();
        assert.equal(await e.locator('[data-links]').getAttribute('data-links'), '6', 'acme\'s 6 links, not beta\'s');
        assert.equal(await page.locator('tr[data-relay="acme-hub"] [data-links]').getAttribute('data-links'), '6');
        await page.locator('tr[data-relay="acme-hub"]').getByText('Not live').waitFor();
        assert.ok(!((await page.locator('main').textContent()) ?? '').includes('beta'), 'nothing of beta on acme\'s page');
        await shot(page, 'relays-tenant');
      });

      await t.test('Users: create a console user; a hostile display name shows as text', async () => {
        await timedGoto(page, '/acme/users', 'table.grid tbody tr', 'users');
        await page.getByText(XSS, { exact: true }).waitFor();
        const form = page.getByRole('form', { name: 'Add a console user' });
        await form.getByLabel('Username').fill('frank');
        await form.getByLabel('Password').fill('frank-password-1');
        await form.getByLabel('Role').selectOption('operator');
        await form.getByRole('button', { name: 'Add user' }).click();
        await page.getByRole('cell', { name: 'frank', exact: true }).waitFor();
        await shot(page, 'users');
        const list = await op.get('/api/v1/tenants/acme/console-users');
        assert.ok(list.body.console_users.some((u: { username: string; role: string }) => u.username === 'frank' && u.role === 'operator'));
      });

      await t.test('Keys: an auth key is shown once with the command to run', async () => {
        await page.goto('/acme/machines');
        await page.getByRole('link', { name: 'Add machine' }).click();
        await page.waitForURL('**/acme/keys');
        await timedGoto(page, '/acme/keys', 'table.grid tbody tr', 'keys');
        await page.getByText(XSS, { exact: true }).waitFor();
        const form = page.getByRole('form', { name: 'Create an auth key' });
        await form.getByLabel('User').fill('alice');
        await form.getByLabel('Description').fill('new laptop');
        await form.getByRole('button', { name: 'Create auth key' }).click();
        const keyInput = page.getByRole('dialog').getByLabel('Key', { exact: true });
        await keyInput.waitFor();
        const key = await keyInput.inputValue();
        assert.match(key, /^lkauth_[0-9a-f]{12}_/);
        await shot(page, 'keys-created');
        await page.getByRole('dialog').getByRole('button', { name: 'Done' }).click();
        assert.equal(await page.getByText(key).count(), 0, 'the secret is gone once the dialog closes');
        await shot(page, 'keys');
      });

      await t.test('CSRF: a change with the session cookie but without the token is refused', async () => {
        const r = await page.evaluate(async () => {
          const res = await fetch('/api/v1/tenants/acme/users', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'mallory' }) });
          return { status: res.status, body: await res.json() as { error: { code: string } } };
        });
        assert.equal(r.status, 403);
        assert.equal(r.body.error.code, 'csrf_token_invalid');
        const users = await op.get('/api/v1/tenants/acme/users');
        assert.ok(!users.body.users.some((u: { name: string }) => u.name === 'mallory'));
      });

      await t.test('a second context signed into another tenant sees none of the first', async () => {
        const b = await newContext();
        await signIn(b.page, 'beta', 'bob', PW.bob);
        await b.page.locator('tr[data-node]').first().waitFor();
        assert.equal(await b.page.locator('tr[data-node]').count(), 1);
        const body = (await b.page.locator('main').textContent()) ?? '';
        for (const name of ['alice-laptop', 'router-a', 'exit-fra']) assert.ok(!body.includes(name), `${name} not visible to beta`);
        await b.page.goto('/acme/routes');
        await b.page.waitForURL('**/beta/machines');
        const r = await b.page.evaluate(async () => Promise.all(['/api/v1/tenants/acme/nodes', '/api/v1/tenants/acme/routes', '/api/v1/tenants/acme/audit', '/api/v1/tenants'].map(async (p) => (await fetch(p)).status)));
        assert.deepEqual(r, [404, 404, 404, 403]);
        const rel = await b.page.evaluate(async () => Promise.all(['/api/v1/tenants/acme/relays', '/api/v1/tenants/acme/tags', '/api/v1/tenants/acme/nodes?limit=5'].map(async (p) => (await fetch(p)).status)));
        assert.deepEqual(rel, [404, 404, 404]);
        assert.doesNotMatch(await b.page.evaluate(async () => (await fetch('/api/v1/relays')).text()), /acme|edge-fra/, 'a tenant session lists only its own dedicated relays');
        await b.page.goto('/beta/relays');
        await b.page.locator('tr[data-relay]').first().waitFor();
        assert.deepEqual(await b.page.locator('tr[data-relay]').evaluateAll((rows) => rows.map((x) => x.getAttribute('data-relay'))), ['edge-fra', 'beta-secret-relay']);
        assert.equal(await b.page.locator('tr[data-relay="edge-fra"] [data-links]').getAttribute('data-links'), '1', 'beta sees its one link on the shared relay');
        // And the first context is still alice in acme.
        await page.goto('/acme/machines');
        await page.locator('tr[data-node]').first().waitFor();
        assert.equal(await page.locator('tr[data-node]').count(), 6);
        await b.ctx.close();
      });

      await t.test('an auditor sees the pages read-only', async () => {
        const d = await newContext();
        await signIn(d.page, 'acme', 'dana', PW.dana);
        await d.page.locator('tr[data-node]').first().waitFor();
        assert.equal(await d.page.getByRole('button', { name: /^Delete / }).count(), 0);
        await d.page.goto('/acme/acls');
        await d.page.getByText('read-only for the auditor role').waitFor();
        // Phone size: the page fits the width (tables scroll inside their own box),
        // and every page is reachable through the Menu button.
        await d.page.setViewportSize({ width: 390, height: 844 });
        await d.page.goto('/acme/machines');
        await d.page.locator('tr[data-node]').first().waitFor();
        assert.ok(Number(await d.page.evaluate('document.documentElement.scrollWidth')) <= 390, 'no sideways scrolling of the page at 390 px');
        const nav = d.page.getByRole('navigation', { name: 'Main' });
        assert.equal(await nav.isVisible(), false, 'the nav is folded at phone width');
        await shot(d.page, 'phone-machines');
        await d.page.getByRole('button', { name: 'Menu' }).click();
        const labels = ['Machines', 'Routes', 'Access controls', 'Users', 'Keys', 'Logs', 'Relays'];
        for (const l of labels) {
          const a = nav.getByRole('link', { name: l, exact: true });
          await a.waitFor();
          const box = await a.boundingBox();
          assert.ok(box && box.x >= 0 && box.x + box.width <= 390 && box.y + box.height <= 844, `${l} is on screen at 390×844 (${JSON.stringify(box)})`);
        }
        await shot(d.page, 'phone-menu');
        await nav.getByRole('link', { name: 'Relays', exact: true }).click();
        await d.page.waitForURL('**/acme/relays');
        await d.page.locator('tr[data-relay]').first().waitFor();
        assert.equal(await nav.isVisible(), false, 'the menu closes after a choice');
        assert.ok(Number(await d.page.evaluate('document.documentElement.scrollWidth')) <= 390);
        await d.ctx.close();
      });

      await t.test('the operator signs in with the operator key and sees every tenant', async () => {
        const o = await newContext();
        await o.page.goto('/signin');
        await o.page.getByRole('tab', { name: 'Operator' }).click();
        await o.page.getByLabel('Operator key').fill(srv.operatorKey());
        await o.page.getByRole('button', { name: 'Sign in', exact: true }).click();
        await o.page.waitForURL('**/tenants');
        await o.page.getByRole('link', { name: 'acme', exact: true }).waitFor();
        await o.page.getByRole('link', { name: 'beta', exact: true }).waitFor();
        // Node counts and online nodes per tenant, as the API counts them.
        const acme = o.page.locator('tr[data-tenant="acme"]');
        assert.equal(await acme.locator('[data-nodes]').getAttribute('data-nodes'), '6');
        assert.equal(await o.page.locator('tr[data-tenant="beta"] [data-nodes]').getAttribute('data-nodes'), '1');
        const online = ((await op.get('/api/v1/tenants')).body.tenants as Json[]).find((x) => x.name === 'acme').online_nodes as number;
        assert.ok(online >= 1 && online <= 6);
        await acme.locator(`[data-online="${online}"]`).waitFor({ timeout: 15_000 });
        await shot(o.page, 'tenants');
        // Edit a tenant: the limit and the DNS base name; audited as the operator.
        await o.page.getByRole('button', { name: 'Edit beta' }).click();
        const dlg = o.page.getByRole('dialog');
        await dlg.getByLabel('Node limit').fill('42');
        await dlg.getByLabel('DNS base name').fill('beta.example.net');
        if (full) await shot(o.page, 'tenants-edit');
        await dlg.getByRole('button', { name: 'Save' }).click();
        await o.page.locator('tr[data-tenant="beta"]').getByText('beta.example.net').waitFor();
        const bt = await op.get('/api/v1/tenants/beta');
        assert.deepEqual([bt.body.max_nodes, bt.body.dns_base], [42, 'beta.example.net']);
        const au = (await op.get('/api/v1/tenants/beta/audit?action=tenant.update')).body.entries as Json[];
        assert.equal(au.length, 1);
        assert.match(au[0].actor, /^operator:/);
        assert.deepEqual([au[0].before.max_nodes, au[0].after.max_nodes], [10000, 42]);
        // A refused edit keeps the dialog open with the server's message.
        await o.page.getByRole('button', { name: 'Edit beta' }).click();
        await dlg.getByLabel('IPv4 address pool').fill('10.0.0.0/31');
        await dlg.getByRole('button', { name: 'Save' }).click();
        await dlg.getByRole('alert').filter({ hasText: 'too small' }).waitFor();
        await dlg.getByRole('button', { name: 'Cancel' }).click();
        assert.equal((await op.get('/api/v1/tenants/beta')).body.pool4, '100.64.0.0/10');
        // Every relay with its links per tenant (edge-fra reports again, so it is live).
        const edgeLinks: Json[] = [];
        for (const [nm, id] of Object.entries(ids)) {
          const r = await op.get(`/api/v1/tenants/${nm === 'beta-only-node' ? 'beta' : 'acme'}/nodes/${id}/links`);
          edgeLinks.push(...(r.body.links as Json[]).filter((l) => l.relay === edge.id));
        }
        assert.equal((await op.as(edge.token).post('/relay/v1/health', { links: edgeLinks.map((l) => ({ link_id: l.link_id, last_seen_ms_ago: 200 })) })).status, 200);
        await o.page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'All relays' }).click();
        await o.page.waitForURL('**/relays');
        await o.page.locator('tr[data-relay]').first().waitFor();
        assert.deepEqual(await o.page.locator('tr[data-relay]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-relay'))), ['edge-fra', 'acme-hub', 'beta-secret-relay']);
        const edgeRow = o.page.locator('tr[data-relay="edge-fra"]');
        assert.deepEqual(await edgeRow.locator('[data-links]').evaluateAll((els) => els.map((x) => x.getAttribute('data-links'))), ['acme:6', 'beta:1']);
        assert.deepEqual(await o.page.locator('tr[data-relay="beta-secret-relay"] [data-links]').evaluateAll((els) => els.map((x) => x.getAttribute('data-links'))), ['beta:1']);
        await edgeRow.getByText('shared').waitFor();
        await edgeRow.getByText('Live', { exact: true }).waitFor();
        await o.page.locator('tr[data-relay="acme-hub"]').getByText('Not live').waitFor();
        await shot(o.page, 'relays');
        // Switch into a tenant.
        await o.page.goto('/tenants');
        await o.page.getByRole('link', { name: 'Switch into beta' }).click();
        await o.page.waitForURL('**/beta/machines');
        await o.page.getByText('beta-only-node').waitFor();
        await o.ctx.close();
      });

      await t.test('sign-out ends the session on the server', async () => {
        const cookie = (await ctx.cookies()).find((x) => x.name === 'larktun_session');
        assert.ok(cookie);
        await page.getByRole('button', { name: 'Sign out' }).click();
        await page.waitForURL('**/signin');
        const r = await fetch(`${srv.url}/api/v1/tenants/acme/nodes`, { headers: { cookie: `larktun_session=${cookie.value}` } });
        assert.equal(r.status, 401, 'the old cookie no longer works');
      });

      await t.test('wrong passwords are refused, slowed and audited', { skip: onlyFull }, async () => {
        await page.goto('/signin');
        await page.getByLabel('Tenant', { exact: true }).fill('acme');
        await page.getByLabel('Username').fill('alice');
        await page.getByLabel('Password').fill('not-the-password');
        await page.getByRole('button', { name: 'Sign in', exact: true }).click();
        await page.getByRole('alert').filter({ hasText: 'not right' }).waitFor();
        const times: number[] = [];
        for (let i = 0; i < 4; i++) {
          const t0 = Date.now();
          const r = await fetch(`${srv.url}/api/v1/console/session`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tenant: 'acme', username: 'alice', password: `wrong-${i}-password` }) });
          times.push(Date.now() - t0);
          assert.equal(r.status, 401);
        }
        process.stdout.write(`# console wrong-password attempts 2..5 took ${times.join(', ')} ms\n`);
        // After n failures an attempt waits 250 ms × 2^(n-1) (capped at 4 s) before its check.
        assert.ok(times[3]! >= 2000, `the 5th attempt waited (${times[3]} ms)`);
        assert.ok(times[3]! > times[0]!, 'each failure slows the next attempt');
        const audit = await op.get('/api/v1/tenants/acme/audit?action=console.signin.failed&limit=100');
        assert.equal(audit.body.entries.length, 5);
        assert.equal(audit.body.entries[0].actor, 'anonymous');
      });

      await t.test('no script error, CSP violation or alert in any page', () => {
        assert.deepEqual(problems.filter((p) => !/status of 40[0134] /.test(p)), []);
      });
      await ctx.close();
    });
  });
}

suite('SQLite');
suite('PostgreSQL');
