// Deeply nested input (100 000 levels) never overflows the stack: daemon
// configs, HuJSON policies and API bodies refuse nesting deeper than
// MAX_JSON_DEPTH with an error naming where (file:line:col for files).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { MAX_JSON_DEPTH, findTooDeep } from '../../src/json/depth.js';
import { loadConfig, parseConfigText } from '../../src/daemon/config.js';
import { parsePolicy } from '../../src/acl/index.js';
import { startServer } from '../../src/control/index.js';

const dir = mkdtempSync(path.join(tmpdir(), 'larktun-nesting-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const N = 100_000;
const nested = (n: number, inner = '1') => '['.repeat(n) + inner + ']'.repeat(n);

test('findTooDeep: 64 levels pass, the 65th bracket is named; strings and HuJSON comments do not count', () => {
  assert.equal(MAX_JSON_DEPTH, 64);
  assert.equal(findTooDeep(nested(64)), null);
  assert.deepEqual(findTooDeep(nested(65)), { offset: 64, line: 1, column: 65, depth: 65 });
  assert.equal(findTooDeep(`["${'['.repeat(1000)}", {"a": "{{{{"}]`), null);
  assert.equal(findTooDeep(`// ${'['.repeat(100)}\n/* ${'{'.repeat(100)} */ {}`, { comments: true }), null);
  const p = findTooDeep(`{\n  "a":\n    ${nested(N)}\n}`);
  assert.deepEqual(p && [p.line, p.column], [3, 5 + 63]);
});

test('daemon config: 100 000 nested arrays are one problem at file:line:col, no stack overflow', () => {
  const text = `{\n  "local_id": 1,\n  "peers": ${nested(N)}\n}\n`;
  const r = parseConfigText(text, 'deep.json');
  assert.equal(r.config, undefined);
  assert.equal(r.problems.length, 1);
  const [p] = r.problems;
  assert.equal(p?.severity, 'error');
  // "peers": starts the outer array at column 12; the 64th bracket after it opens level 65
  assert.equal(p?.message, `too deeply nested at deep.json:3:${12 + 63}: arrays/objects nest more than 64 levels (the limit for a config)`);
  assert.deepEqual([p?.line, p?.column], [3, 75]);
  // through the file loader too, and with a BOM (columns stay those of the file)
  const f = path.join(dir, 'deep.json');
  writeFileSync(f, `\ufeff${nested(N)}`);
  const l = loadConfig(f);
  assert.match(l.problems[0]?.message ?? '', new RegExp(`^too deeply nested at ${f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:1:66: `));
  // 64 levels is only a validation problem, not a nesting one
  assert.doesNotMatch(parseConfigText(`{"peers": ${nested(63)}}`, 'ok.json').problems.map((x) => x.message).join('\n'), /nested/);
});

test('HuJSON policy: 100 000 nested arrays → policy.hujson:line:col, no stack overflow', () => {
  const r = parsePolicy(`// a comment with [[[[ brackets\n{\n  "acls": ${nested(N)}\n}\n`);
  assert.equal(r.ok, false);
  assert.deepEqual(!r.ok && r.errors, [`policy.hujson:3:${11 + 63}: invalid HuJSON: arrays/objects nested more than 64 levels deep (the limit)`]);
});

test('API: a deeply nested JSON body or policy text is 400, the server keeps serving', async () => {
  const data = path.join(dir, 'srv');
  const srv = await startServer({ listen: '127.0.0.1:0', dataDir: data, logger: pino({ level: 'silent' }) });
  try {
    const op = readFileSync(path.join(data, 'operator.key'), 'utf8').trim();
    const h = { authorization: `Bearer ${op}` };
    assert.equal((await srv.app.inject({ method: 'POST', url: '/api/v1/tenants', headers: h, payload: { name: 'acme' } })).statusCode, 201);
    const body = await srv.app.inject({ method: 'POST', url: '/api/v1/tenants', headers: { ...h, 'content-type': 'application/json' }, payload: `{"name": "x", "tags": ${nested(N)}}` });
    assert.equal(body.statusCode, 400, body.body);
    assert.deepEqual(body.json(), { error: { code: 'invalid_request', message: 'body nests arrays/objects more than 64 levels deep (the limit)', details: [{ field: 'body', message: 'body nests arrays/objects more than 64 levels deep (the limit)' }] } });
    const pol = await srv.app.inject({ method: 'PUT', url: '/api/v1/tenants/acme/policy', headers: { ...h, 'content-type': 'application/hujson' }, payload: `{\n"acls": ${nested(N)}\n}` });
    assert.equal(pol.statusCode, 400, pol.body);
    assert.match(pol.body, /2:\d+: invalid HuJSON: arrays\/objects nested more than 64 levels deep/);
    assert.equal((await srv.app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
  } finally {
    await srv.close();
  }
});
