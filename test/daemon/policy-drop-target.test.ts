// subnetra parses `--target N` on a drop rule and ignores it, so its scripts
// and saved tables (which may carry one) must replay unchanged here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CommandError, parseCommand } from '../../src/daemon/commands.js';
import { loadSavedPolicy, POLICY_FILE } from '../../src/daemon/control.js';
import { formatRule } from '../../src/net/lpm.js';

test('policy add --action drop --target N is accepted and the target ignored', () => {
  for (const line of [
    'policy add --src 0.0.0.0/0 --dst 10.9.0.0/16 --action drop --target 3',
    'policy add --src 0.0.0.0/0 --dst 10.9.0.0/16 --target 0 --action drop',
    'policy add --src 0.0.0.0/0 --dst 10.9.0.0/16 --action=drop --target=65535',
  ]) {
    const c = parseCommand(line);
    assert.equal(c.kind, 'policy-add', line);
    if (c.kind !== 'policy-add') return;
    assert.equal(c.rule.action, 'drop');
    assert.equal(c.rule.target, 0, 'a drop rule has no target');
    assert.equal(formatRule(c.rule), 'policy add --src 0.0.0.0/0 --dst 10.9.0.0/16 --action drop');
  }
});

test('the target of a drop rule is still parsed: a bad value is an error', () => {
  for (const [line, msg] of [
    ['policy add --src 0.0.0.0/0 --dst 10.9.0.0/16 --action drop --target x', /--target must be 0 \(local TUN\) or a peer id 1\.\.65535, got "x"/],
    ['policy add --src 0.0.0.0/0 --dst 10.9.0.0/16 --action drop --target 70000', /--target must be/],
    ['policy add --src 0.0.0.0/0 --dst 10.9.0.0/16 --action drop --target', /--target needs a value/],
  ] as const) {
    assert.throws(() => parseCommand(line), (e: unknown) => e instanceof CommandError && msg.test(e.message), line);
  }
});

test('a saved table with a drop --target line loads', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'larktun-drop-'));
  writeFileSync(
    path.join(dir, POLICY_FILE),
    'policy add --src 0.0.0.0/0 --dst 10.66.0.2/32 --action forward --target 2\n' +
      'policy add --src 10.1.0.0/16 --dst 10.9.0.0/16 --action drop --target 2\n',
  );
  const r = loadSavedPolicy(dir);
  assert.ok(r);
  assert.deepEqual(r.rules.map(formatRule), [
    'policy add --src 0.0.0.0/0 --dst 10.66.0.2/32 --action forward --target 2',
    'policy add --src 10.1.0.0/16 --dst 10.9.0.0/16 --action drop',
  ]);
});
