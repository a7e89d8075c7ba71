// The control socket of a second daemon must never take over a live one's:
// a socket that answers is left alone (the start fails, exit 1, naming the
// path); a stale one (nobody accepts) is replaced.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ControlSocketInUseError, controlRequest, listenControlSocket, probeControlSocket } from '../../src/daemon/control.js';
import { ROOT } from '../e2e/netns.js';

const dir = mkdtempSync(path.join(tmpdir(), 'larktun-ctlsock-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const close = (s: net.Server) => new Promise<void>((r) => s.close(() => r()));

test('a live control socket is not replaced: the second listener fails naming the path', async () => {
  const sock = path.join(dir, 'live.sock');
  const first = await listenControlSocket(sock, 100, () => 'first\n');
  try {
    assert.equal(await probeControlSocket(sock), 'live');
    await assert.rejects(listenControlSocket(sock, 100, () => 'second\n'), (err: unknown) => {
      assert.ok(err instanceof ControlSocketInUseError);
      assert.match(err.message, new RegExp(`control socket ${sock.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is in use: another larktund is running`));
      return true;
    });
    assert.ok(existsSync(sock), 'the live socket file is still there');
    assert.equal(await controlRequest(sock, 'status'), 'first\n', 'the first daemon still answers');
  } finally {
    await close(first);
  }
});

test('a stale control socket (nobody accepts) is replaced', async () => {
  const sock = path.join(dir, 'stale.sock');
  // A socket file left behind: bound, never listening (what a kill -9 leaves is the same to connect()).
  const { status, stderr } = spawnSync(process.execPath, ['-e',
    `const s=require('net').createServer();s.listen(${JSON.stringify(sock)},()=>process.exit(0))`]);
  assert.equal(status, 0, stderr.toString());
  // process.exit does not unlink a Unix socket: the file stays, nobody accepts.
  assert.ok(existsSync(sock) && statSync(sock).isSocket(), 'stale socket file present');
  assert.equal(await probeControlSocket(sock), 'stale');
  const s = await listenControlSocket(sock, 100, () => 'new\n');
  try {
    assert.equal(await controlRequest(sock, 'status'), 'new\n');
    assert.equal(statSync(sock).mode & 0o777, 0o600);
  } finally {
    await close(s);
  }
});

test('a regular file at the socket path counts as stale, a missing one as absent', async () => {
  const p = path.join(dir, 'file.sock');
  writeFileSync(p, 'junk');
  assert.equal(await probeControlSocket(p), 'stale');
  assert.equal(await probeControlSocket(path.join(dir, 'none.sock')), 'absent');
});

test('larktund: a second daemon on the same control socket exits 1 and the first keeps its socket', async () => {
  const sock = path.join(dir, 'd.sock');
  const first = await listenControlSocket(sock, 100, () => 'first\n');
  try {
    // managed mode without TUN: the control socket is the first thing it opens
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e',
      `import('./src/daemon/main.ts').then((m) => m.main(['node', 'larktund', '--no-tun'])).catch((e) => { process.stderr.write('larktund: ' + e.message + '\\n'); process.exit(1); })`],
    { cwd: ROOT, encoding: 'utf8', timeout: 30_000, env: { ...process.env, LARKTUN_SOCK: sock, LARKTUN_STATE_DIR: path.join(dir, 'state2') } });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /larktund: control socket .*d\.sock is in use: another larktund is running/);
    assert.equal(await controlRequest(sock, 'x'), 'first\n');
  } finally {
    await close(first);
  }
});
