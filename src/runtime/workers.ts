// How many packet threads a daemon runs: `--workers N`, else LARKTUN_WORKERS,
// else one per core (os.availableParallelism()).
import { availableParallelism } from 'node:os';

export const MAX_WORKERS = 64;

/** Parses a worker count; throws an Error naming `source` and the allowed range. */
export function parseWorkers(text: string, source: string): number {
  const t = text.trim();
  const n = /^\d+$/.test(t) ? Number(t) : NaN;
  if (!(Number.isInteger(n) && n >= 1 && n <= MAX_WORKERS)) {
    throw new Error(`${source} must be a whole number of packet threads from 1 to ${MAX_WORKERS} (default: one per core, here ${availableParallelism()}), got ${JSON.stringify(text)}`);
  }
  return n;
}

/** The worker count from a flag value, else LARKTUN_WORKERS, else the core count (capped at MAX_WORKERS). */
export function resolveWorkers(flag: string | number | undefined, env: NodeJS.ProcessEnv = process.env): number {
  if (typeof flag === 'number') return parseWorkers(String(flag), '--workers');
  if (flag !== undefined) return parseWorkers(flag, '--workers');
  const e = env['LARKTUN_WORKERS'];
  if (e !== undefined && e !== '') return parseWorkers(e, 'LARKTUN_WORKERS');
  return Math.min(MAX_WORKERS, Math.max(1, availableParallelism()));
}
