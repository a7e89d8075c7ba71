import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_PREFS, PrefsError, parseRoutes, parseTags, prefsAsFlags, prefsForSet, prefsForUp } from '../../src/daemon/prefs.js';

test('routes must be masked prefixes; canonical and sorted', () => {
  assert.deepEqual(parseRoutes('10.20.0.0/16, 192.168.6.0/24,10.20.0.0/16'), ['10.20.0.0/16', '192.168.6.0/24']);
  assert.throws(() => parseRoutes('192.168.6.1/24'), /host bits set: use 192\.168\.6\.0\/24/);
  assert.throws(() => parseRoutes('192.168.6.0'), /needs a prefix length/);
  assert.throws(() => parseRoutes('banana/8'), /not an IP prefix/);
  assert.deepEqual(parseRoutes(''), []);
});

test('exit routes only together and only through --advertise-exit-node', () => {
  assert.throws(() => parseRoutes('0.0.0.0/0'), /0\.0\.0\.0\/0 and ::\/0 must be advertised together/);
  assert.throws(() => parseRoutes('0.0.0.0/0,::/0'), /use --advertise-exit-node/);
});

test('tags need the tag: prefix and a valid name', () => {
  assert.deepEqual(parseTags('tag:router,tag:exit,tag:router'), ['tag:exit', 'tag:router']);
  assert.throws(() => parseTags('router'), /tags start with "tag:"/);
  assert.throws(() => parseTags('tag:-x'), /not a valid tag name/);
});

test('up: first login takes the flags; offering and using an exit node conflict', () => {
  const p = prefsForUp(null, { loginServer: 'http://127.0.0.1:8080/', advertiseRoutes: '192.168.6.0/24', acceptRoutes: true }, false);
  assert.equal(p.loginServer, 'http://127.0.0.1:8080');
  assert.deepEqual(p.advertiseRoutes, ['192.168.6.0/24']);
  assert.equal(p.acceptRoutes, true);
  assert.equal(p.snatSubnetRoutes, true);
  assert.throws(() => prefsForUp(null, { advertiseExitNode: true, exitNode: 'exit-hk' }, false), /cannot advertise this node as an exit node and use an exit node/);
  assert.throws(() => prefsForUp(null, { loginServer: 'ftp://x' }, false), /must be an http/);
});

test('up on a configured node must mention every non-default setting (or --reset)', () => {
  const cur = { ...DEFAULT_PREFS, loginServer: 'http://s', advertiseRoutes: ['10.0.0.0/8'], acceptRoutes: true };
  assert.throws(
    () => prefsForUp(cur, { advertiseExitNode: true }, false),
    (err: Error) => err instanceof PrefsError && /missing: --advertise-routes, --accept-routes/.test(err.message) && /larktun up --advertise-exit-node --advertise-routes=10\.0\.0\.0\/8 --accept-routes/.test(err.message),
  );
  const kept = prefsForUp(cur, { advertiseExitNode: true, advertiseRoutes: '10.0.0.0/8', acceptRoutes: true }, false);
  assert.equal(kept.advertiseExitNode, true);
  assert.equal(kept.loginServer, 'http://s');
  const reset = prefsForUp(cur, { advertiseExitNode: true }, true);
  assert.deepEqual(reset.advertiseRoutes, []);
  assert.equal(reset.acceptRoutes, false);
});

test('set changes only what is named; tags and login server are up-only', () => {
  const cur = { ...DEFAULT_PREFS, loginServer: 'http://s', advertiseRoutes: ['10.0.0.0/8'] };
  const n = prefsForSet(cur, { acceptRoutes: true });
  assert.deepEqual(n.advertiseRoutes, ['10.0.0.0/8']);
  assert.equal(n.acceptRoutes, true);
  assert.equal(prefsForSet(n, { exitNode: '' }).exitNode, null);
  assert.equal(prefsForSet(n, { exitNode: 'exit-hk' }).exitNode, 'exit-hk');
  assert.throws(() => prefsForSet(cur, { advertiseTags: 'tag:x' }), /--advertise-tags can only be set with larktun up/);
  assert.throws(() => prefsForSet(cur, { loginServer: 'http://y' }), /--login-server can only be set with larktun up/);
  assert.throws(() => prefsForSet(cur, { advertiseRoutes: '10.0.0.1/8' }), /host bits/);
  assert.deepEqual(prefsAsFlags(n), ['--login-server=http://s', '--advertise-routes=10.0.0.0/8', '--accept-routes']);
});
