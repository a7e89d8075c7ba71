// API keys: last_used_at recorded (throttled), failed attempts counted and
// slowed per client address and key prefix, with bounded memory.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { startServer, type RunningServer } from '../../src/control/index.js';
import { FailureLimiter } from '../../src/control/http/auth-limiter.js';
import { cleanup, tempDir } from './harness.js';

let srv: RunningServer;
let dir = '';
let opKey = '';
let adminKey = '';

const randomApiKey = (prefix = randomBytes(6).toString('hex')) => `lkapi_${prefix}_${randomBytes(32).toString('base64url').slice(0, 43)}`;

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

test('50 bad keys from one address: 429 with Retry-After; a valid key from another address is unaffected', async () => {
  const statuses: number[] = [];
  let retryAfter = '';
  for (let i = 0; i < 50; i++) {
    const r = await call('GET', '/api/v1/tenants/acme/users', randomApiKey(), '10.9.0.1');
    statuses.push(r.status);
    if (r.status === 429) {
      retryAfter = String(r.headers['retry-after']);
      assert.equal(r.body['error'].code, 'too_many_attempts');
    }
  }
  assert.deepEqual(statuses.slice(0, 9), Array(9).fill(401), 'the first failures are plain 401');
  assert.deepEqual(statuses.slice(10), Array(40).fill(429), `later attempts are refused: ${statuses.join(',')}`);
  assert.ok(Number(retryAfter) >= 1, `Retry-After: ${retryAfter}`);
  // that address is refused even with a valid key while blocked
  assert.equal((await call('GET', '/api/v1/tenants/acme/users', adminKey, '10.9.0.1')).status, 429);
  // a valid key from elsewhere: not slowed
  const t = performance.now();
  assert.equal((await call('GET', '/api/v1/tenants/acme/users', adminKey, '10.9.0.2')).status, 200);
  assert.ok(performance.now() - t < 1000);
  const text = (await srv.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${opKey}` } })).body;
  const count = (result: string) => Number(new RegExp(`larktun_api_auth_failures_total\\{result="${result}"\\} (\\d+)`).exec(text)?.[1] ?? 0);
  assert.ok(count('invalid') >= 9, text);
  assert.ok(count('limited') >= 41, text);
  // one address remembered; the 50 unknown key prefixes are not (nothing to protect)
  assert.match(text, /larktun_api_auth_limiter_entries 1\n/);
});

test('guessing one key prefix from many addresses is refused (429), yet the real key still works', async () => {
  const prefix = /^lkapi_([0-9a-f]{12})_/.exec(adminKey)?.[1] as string;
  const statuses: number[] = [];
  for (let i = 0; i < 30; i++) statuses.push((await call('GET', '/api/v1/tenants/acme/users', randomApiKey(prefix), `10.8.${i}.1`)).status);
  assert.ok(statuses.slice(10).every((s) => s === 429), statuses.join(','));
  assert.equal((await call('GET', '/api/v1/tenants/acme/users', adminKey, '10.7.0.1')).status, 200, 'the valid key of another client is never slowed');
});

test('the limiter stays bounded under many addresses', () => {
  const l = new FailureLimiter({ maxEntries: 1000, maxFailures: 3 });
  for (let i = 0; i < 100_000; i++) l.fail(`ip:10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, 1_000);
  assert.equal(l.size, 1000);
  // recent offenders are still remembered and blocked
  for (let k = 0; k < 3; k++) l.fail('ip:192.0.2.1', 2_000);
  assert.ok(l.blockedFor('ip:192.0.2.1', 2_001) > 0);
  assert.ok(l.size <= 1000);
  // blocks double with each repeat
  const first = l.blockedFor('ip:192.0.2.1', 2_000);
  for (let k = 0; k < 3; k++) l.fail('ip:192.0.2.1', 2_000 + first);
  assert.equal(l.blockedFor('ip:192.0.2.1', 2_000 + first), first * 2);
});
