#!/usr/bin/env node
// Makes a checkout runnable: installs dependencies (npm ci, which also builds)
// when node_modules is missing or older than package-lock.json, and rebuilds
// dist/ (with the console) and the TUN addon when they are missing or older
// than the sources. Used by `npm test` and `npm start`.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

function run(args) {
  process.stderr.write(`> npm ${args.join(' ')}\n`);
  const r = spawnSync(npm, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

function newest(dir) {
  let t = 0;
  if (!existsSync(dir)) return t;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

const installed = path.join(root, 'node_modules', '.package-lock.json');
// Missing, or older than the lock file (a dependency was added since): install.
if (!existsSync(installed) || statSync(path.join(root, 'package-lock.json')).mtimeMs > statSync(installed).mtimeMs) {
  run(['ci']);
}
const built = path.join(root, 'dist', 'cli', 'main.js');
const addon = path.join(root, 'native', 'build', 'Release', 'larktun_tun.node');
const udpAddon = path.join(root, 'native', 'build', 'Release', 'larktun_udp.node');
const stale =
  !existsSync(built) ||
  !existsSync(addon) ||
  !existsSync(udpAddon) ||
  statSync(path.join(root, 'native', 'udp.c')).mtimeMs > statSync(udpAddon).mtimeMs ||
  newest(path.join(root, 'src')) > statSync(built).mtimeMs ||
  statSync(path.join(root, 'native', 'tun.c')).mtimeMs > statSync(addon).mtimeMs;
if (stale) run(['run', 'build']);
// The web console (console/ → dist/console), served by `larktun server` at /.
const consoleIndex = path.join(root, 'dist', 'console', 'index.html');
if (!existsSync(consoleIndex) || newest(path.join(root, 'console')) > statSync(consoleIndex).mtimeMs) run(['run', 'build:console']);
