// API keys: last_used_at recorded (throttled).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { startServer, type RunningServer } from '../../src/control/index.js';
import { cleanup, tempDir } from './harness.js';

let srv: RunningServer;
let dir = '';
let opKey = '';
let adminKey = '';

async function call(method: 'GET' | 'POST', url: string, key: string | null, ip = '127.0.0.1', payload?: unknown) {
  const r = await srv.app.inject({
    method, url, remoteAddress: ip,
    headers: key ? { authorization: `Bearer ${key}` } : {},
    ...(payload !== undefined ? { payload: payload as Record<string, unknown> } : {}),
  });
  return { status: r.statusCode, body: r.json() as Record<string, any>, headers: r.headers }; // eslint-disable-line @typescript-eslint/no-explicit-any
}

before(async () => {
  dir = tempDir();
  srv = await startServer({ listen: '127.0.0.1:0', dataDir: dir, logger: pino({ level: 'silent' }) });
  const { readFileSync } = await import('node:fs');
  opKey = readFileSync(`${dir}/operator.key`, 'utf8').trim();
  assert.equal((await call('POST', '/api/v1/tenants', opKey, '127.0.0.1', { name: 'acme' })).status, 201);
  const k = await call('POST', '/api/v1/tenants/acme/apikeys', opKey, '127.0.0.1', { role: 'admin' });
  assert.equal(k.status, 201);
  adminKey = k.body['key'] as string;
});
after(async () => {
  await srv?.close();
  cleanup(dir);
});

const listed = async () => (await call('GET', '/api/v1/tenants/acme/apikeys', opKey)).body['apikeys'][0] as { last_used_at: string | null };

test('api_keys.last_used_at: set on use, at most once a minute, visible in the listing', async () => {
  assert.equal((await listed()).last_used_at, null, 'never used yet (the operator key listing it does not count)');
  const t0 = Date.now();
  assert.equal((await call('GET', '/api/v1/tenants/acme/users', adminKey)).status, 200);
  const first = (await listed()).last_used_at;
  assert.ok(first !== null, 'recorded');
  assert.ok(Math.abs(Date.parse(first) - t0) < 5000, first);
  // within the minute: no further write
  await new Promise((r) => setTimeout(r, 20));
  assert.equal((await call('GET', '/api/v1/tenants/acme/users', adminKey)).status, 200);
  assert.equal((await listed()).last_used_at, first, 'throttled: unchanged within a minute');
  // a use older than a minute is refreshed
  const old = new Date(Date.now() - 120_000).toISOString();
  await srv.store.db.updateTable('api_keys').set({ last_used_at: old }).execute();
  assert.equal((await call('GET', '/api/v1/tenants/acme/users', adminKey)).status, 200);
  const again = (await listed()).last_used_at;
  assert.ok(again !== null && again > old && Date.now() - Date.parse(again) < 5000, `refreshed: ${again}`);
});

