// The console with 1 000 machines in a tenant (real server, SQLite file,
// chromium): how long Machines and Routes take until their data is on screen,
// printed as "# console load … (1000 nodes)" lines. Skips like browser.test.ts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { Client, ROOT, cleanup, nodeKey, spawnServer, tempDir, type ServerProc, registerNode } from '../control/harness.js';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const skip = !existsSync(CHROMIUM)
  ? `${CHROMIUM} is missing (apt-get install chromium)`
  : !existsSync(join(ROOT, 'dist', 'console', 'index.html')) ? 'the console is not built (npm run build:console)' : false;
const N = 1000;

let dir = '';
let srv: ServerProc;
let browser: Browser;

before(async () => {
  if (skip) return;
  dir = tempDir('larktun-console-scale-');
  srv = await spawnServer({ dataDir: dir, db: 'sqlite' });
  const op = new Client(srv.url, srv.operatorKey());
  await op.post('/api/v1/tenants', { name: 'big' });
  await op.post('/api/v1/tenants/big/console-users', { username: 'admin', password: 'big-admin-password', role: 'admin' });
  await op.put('/api/v1/tenants/big/policy', { policy: '{"tagOwners":{"tag:router":[]}}' });
  const key = (await op.post('/api/v1/tenants/big/authkeys', { tags: ['tag:router'], reusable: true })).body.key as string;
  const node = op.as(null);
  let next = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next < N) {
      const i = next++;
      const r = await registerNode(node, { auth_key: key, hostname: `host-${String(i).padStart(4, '0')}`, ...(i % 10 === 0 ? { routes: [`10.${Math.floor(i / 250)}.${i % 250}.0/24`] } : {}) });
      assert.equal(r.status, 201, r.text);
    }
  }));
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
});

after(async () => {
  if (skip) return;
  await browser?.close();
  await srv?.stop();
  cleanup(dir);
});

test(`Machines and Routes with ${N} machines`, { skip }, async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, baseURL: srv.url });
  const page = await ctx.newPage();
  await page.goto('/signin');
  await page.getByLabel('Tenant', { exact: true }).fill('big');
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill('big-admin-password');
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForURL('**/big/machines');
  for (const [path, ready, label] of [['/big/machines', 'tr[data-node]', 'machines'], ['/big/routes', 'article.card', 'routes'], ['/big/logs', 'tr[data-seq]', 'logs']] as const) {
    const t0 = Date.now();
    await page.goto(path);
    await page.locator(ready).first().waitFor();
    const ms = Date.now() - t0;
    process.stdout.write(`# console load ${label} (${N} nodes) = ${ms} ms\n`);
    assert.ok(ms < 10_000, `${label} rendered in ${ms} ms`);
  }
  await page.goto('/big/machines');
  await page.locator('tr[data-node]').first().waitFor();
  assert.equal(await page.locator('tr[data-node]').count(), 50, 'one page of 50 rows');
  await page.getByText(`All ${N}`).waitFor();
  await page.getByLabel('Search machines').fill('host-0999');
  assert.equal(await page.locator('tr[data-node]').count(), 1);
  await ctx.close();
});
