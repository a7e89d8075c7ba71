// `npm run bench`: runs every bench/*.ts (or those named on the command line) in
// its own process; each prints one JSON line. Benchmarks never gate CI.
// A name with a leading '-' skips it: `npm run bench -- -vs-wireguard`.
import { readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const wanted = args.filter((a) => !a.startsWith('-'));
const skipped = args.filter((a) => a.startsWith('-')).map((a) => a.slice(1));
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts')
  .filter((f) => wanted.length === 0 || wanted.some((w) => f.includes(w)))
  .filter((f) => !skipped.some((s) => f.includes(s)))
  .sort();
let failed = 0;
for (const f of files) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(dir, f)], { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) {
    failed++;
    process.stdout.write(`${JSON.stringify({ bench: f.replace(/\.ts$/, ''), error: `exited ${r.status}` })}\n`);
  }
}
process.exit(failed > 0 ? 1 : 0);
