// NUL characters (U+0000) in any request input are refused with 400 naming the
// field, on both stores (PostgreSQL answered 500: it cannot store NUL in text).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, backends, cleanup, nodeKey, spawnServer, tempDir, type ServerProc } from './harness.js';
import { assertError } from './api-suite.js';
import { findInputProblem } from '../../src/control/http/input-guard.js';

for (const backend of backends()) {
  describe(`NUL characters on ${backend.name}`, () => {
    let skip: string | false = false;
    let dir = '';
    let srv: ServerProc;
    let op: Client;
    before(async () => {
      const db = await backend.setup();
      if (db.startsWith('skip:')) {
        skip = db.slice(5);
        return;
      }
      dir = tempDir();
      srv = await spawnServer({ dataDir: dir, db });
      op = new Client(srv.url, srv.operatorKey());
      assert.equal((await op.post('/api/v1/tenants', { name: 'acme' })).status, 201);
    });
    after(async () => {
      if (skip) return;
      await srv?.stop();
      cleanup(dir);
      await backend.teardown();
    });

    const nul = (r: Awaited<ReturnType<Client['get']>>, field: string) => {
      assertError(r, 400, 'invalid_request');
      assert.match(r.body.error.message, /NUL character/);
      assert.equal(r.body.error.details[0].field, field, r.text);
    };

    it('is refused in bodies, path parameters and query strings of the Admin and Node APIs', async (ctx) => {
      if (skip) return ctx.skip(skip);
      // a free-text field with no pattern: this reached the database before
      nul(await op.post('/api/v1/tenants/acme/apikeys', { role: 'admin', description: 'ci\u0000' }), 'body.description');
      nul(await op.post('/api/v1/tenants/acme/users', { name: 'alice', display_name: 'A\u0000' }), 'body.display_name');
      nul(await op.get('/api/v1/tenants/ac%00me'), 'params.tenant');
      nul(await op.get('/api/v1/tenants/acme/audit?limit=5&action=%00'), 'query.action');
      nul(await op.put('/api/v1/tenants/acme/policy', { policy: '{"acls":[]}\u0000' }), 'body.policy');
      const node = op.as(null);
      nul(await node.post('/node/v1/register', { auth_key: 'x', node_key: nodeKey(), hostname: 'h', endpoints: ['1.2.3.4:5', 'a\u0000:1'] }), 'body.endpoints[1]');
      nul(await node.post('/node/v1/register', { auth_key: 'x', node_key: nodeKey(), hostname: 'h\u0000' }), 'body.hostname');
      nul(await node.post('/node/v1/register', { auth_key: 'x', node_key: nodeKey(), hostname: 'h', 'k\u0000': 1 }), 'body');
      // nothing was stored, and the server still works
      const keys = await op.get('/api/v1/tenants/acme/apikeys');
      assert.equal(keys.status, 200);
      assert.equal(keys.body.apikeys.length, 0);
      assert.equal((await op.post('/api/v1/tenants/acme/apikeys', { role: 'admin', description: 'ci' })).status, 201);
    });
  });
}

it('findInputProblem names the first offending field, walks 64 levels and refuses deeper input without recursion', () => {
  assert.equal(findInputProblem({ a: [1, { b: 'x\u0000' }] }, 'body')?.field, 'body.a[1].b');
  assert.equal(findInputProblem({ 'we ird': 'x\u0000' }, 'body')?.field, 'body["we ird"]');
  assert.equal(findInputProblem({ a: 'fine', b: ['ok'] }, 'body'), null);
  // 64 levels of arrays: walked, the NUL at the bottom found
  let ok: unknown = 'end\u0000';
  for (let i = 0; i < 64; i++) ok = [ok];
  assert.match(findInputProblem(ok, 'body')?.field ?? '', /^body(\[0\]){64}$/);
  // 200 000 levels: refused as too deep, without recursion
  let deep: unknown = 'end';
  for (let i = 0; i < 200_000; i++) deep = [deep];
  assert.deepEqual(findInputProblem(deep, 'body'), { field: 'body', message: 'body nests arrays/objects more than 64 levels deep (the limit)' });
});
