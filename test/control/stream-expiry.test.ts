// A node's map stream ends when the node expires while it streams: by its
// expiry time passing, or by an admin expiring it now.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { startServer, type RunningServer } from '../../src/control/index.js';
import { Client, SseReader, cleanup, registerNode, tempDir, type Json } from './harness.js';

let srv: RunningServer;
let dir = '';
let op: Client;
let authKey = '';

before(async () => {
  dir = tempDir();
  srv = await startServer({ listen: '127.0.0.1:0', dataDir: dir, logger: pino({ level: 'silent' }) });
  op = new Client(srv.url, readFileSync(`${dir}/operator.key`, 'utf8').trim());
  assert.equal((await op.post('/api/v1/tenants', { name: 'acme' })).status, 201);
  assert.equal((await op.post('/api/v1/tenants/acme/users', { name: 'alice' })).status, 201);
  authKey = (await op.post('/api/v1/tenants/acme/authkeys', { user: 'alice', reusable: true })).body.key;
});
after(async () => {
  await srv?.close();
  cleanup(dir);
});

async function register(name: string): Promise<{ id: number; token: string }> {
  const r = await registerNode(op.as(null), { auth_key: authKey, hostname: name });
  assert.equal(r.status, 201, r.text);
  return { id: r.body.node.id, token: r.body.token };
}

/** Events until "end" (or the stream closes); throws after `ms`. */
async function untilEnd(s: SseReader, ms: number): Promise<Json> {
  const deadline = Date.now() + ms;
  for (;;) {
    const e = await s.next(Math.max(1, deadline - Date.now()));
    if (e.event === 'end') return e.data;
  }
}

test('an expiry passing while the node streams ends its stream with a final event', async () => {
  const n = await register('short');
  const other = await register('keeps');
  const expiresAt = Date.now() + 1500;
  await srv.store.db.updateTable('nodes').set({ expires_at: new Date(expiresAt).toISOString() }).where('id', '=', n.id).execute();
  const s = await SseReader.open(`${srv.url}/node/v1/stream`, n.token);
  const o = await SseReader.open(`${srv.url}/node/v1/stream`, other.token);
  assert.equal(s.status, 200);
  assert.equal((await s.next()).event, 'map');
  const end = await untilEnd(s, 5000);
  const at = Date.now();
  assert.deepEqual(end, { reason: 'node expired' });
  assert.ok(at >= expiresAt - 50, `not before the expiry (${at - expiresAt} ms)`);
  assert.ok(at - expiresAt < 1500, `soon after the expiry (${at - expiresAt} ms)`);
  for (let i = 0; i < 50 && !s.closed; i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(s.closed, 'the stream is closed');
  const again = await SseReader.open(`${srv.url}/node/v1/stream`, n.token);
  assert.equal(again.status, 401, 'an expired node cannot stream again');
  // the other node's stream is untouched
  assert.ok(!o.closed);
  o.close();
});

test('an admin expiring a streaming node ends its stream at once', async () => {
  const n = await register('victim');
  const s = await SseReader.open(`${srv.url}/node/v1/stream`, n.token);
  assert.equal((await s.next()).event, 'map');
  const t0 = Date.now();
  const r = await op.post(`/api/v1/tenants/acme/nodes/${n.id}/expire`, {});
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(await untilEnd(s, 3000), { reason: 'node expired' });
  assert.ok(Date.now() - t0 < 1000, `ended in ${Date.now() - t0} ms`);
});
