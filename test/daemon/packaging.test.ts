// The packaging contract: `npm install -g .` puts larktun, larktund, subnetra and
// subnetrad on the PATH, the subnetra names being aliases of the larktun ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ROOT } from '../e2e/netns.js';

const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { bin: Record<string, string> };

test('package.json maps the four program names, subnetra* as aliases', () => {
  assert.deepEqual(pkg.bin, {
    larktun: 'bin/larktun',
    larktund: 'bin/larktund',
    subnetra: 'bin/larktun',
    subnetrad: 'bin/larktund',
  });
});

const built = existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'));
test('npm install -g . links all four names and they run', { skip: built ? false : 'dist/ not built' }, () => {
  const prefix = mkdtempSync(path.join(tmpdir(), 'larktun-global-'));
  const r = spawnSync('npm', ['install', '-g', '.', '--prefix', prefix, '--no-audit', '--no-fund', '--offline'], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  for (const name of ['larktun', 'larktund', 'subnetra', 'subnetrad']) {
    const link = path.join(prefix, 'bin', name);
    assert.ok(existsSync(link), `${name} on the PATH`);
    assert.match(readlinkSync(link), name.endsWith('d') ? /bin\/larktund$/ : /bin\/larktun$/);
    const v = spawnSync(link, ['--version'], { encoding: 'utf8' });
    assert.equal(v.stdout.trim(), '0.1.0', `${name} --version`);
  }
});
