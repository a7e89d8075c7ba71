// The README's examples must keep working as written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { ROOT, BIN_LARKTUN, BIN_LARKTUND } from './e2e/netns.js';

const skip = existsSync(path.join(ROOT, 'dist', 'cli', 'main.js')) ? false : 'dist/ not built';
const run = (bin: string, ...args: string[]) => spawnSync(process.execPath, [bin, ...args], { cwd: ROOT, encoding: 'utf8' });

test('examples/hub.json and examples/spoke-b.json pass --check', { skip }, () => {
  for (const f of ['examples/hub.json', 'examples/spoke-b.json']) {
    const r = run(BIN_LARKTUND, '--config', f, '--check');
    assert.equal(r.status, 0, `${f}: ${r.stderr}`);
    assert.equal(r.stdout, 'config ok\n');
  }
});

test('examples/policy.hujson passes acl check (tests included) and compiles', { skip }, () => {
  const c = run(BIN_LARKTUN, 'acl', 'check', 'examples/policy.hujson', '--network', 'examples/network.json');
  assert.equal(c.status, 0, c.stderr);
  assert.equal(c.stdout, 'policy ok\n');
  const j = run(BIN_LARKTUN, 'acl', 'compile', 'examples/policy.hujson', '--network', 'examples/network.json');
  assert.equal(j.status, 0, j.stderr);
  const out = JSON.parse(j.stdout) as { valid: boolean; peers: Record<string, string[]>; primary_routes: Record<string, string[]> };
  assert.equal(out.valid, true);
  assert.deepEqual(out.peers['alice-laptop'], ['bob-laptop', 'router']);
  assert.deepEqual(out.primary_routes.router, ['192.168.6.0/24']);
});

test('examples/tenant-policy.hujson is a valid policy', { skip }, () => {
  const r = run(BIN_LARKTUN, 'acl', 'check', 'examples/tenant-policy.hujson');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'policy ok\n');
});
