// How many packet worker threads a node daemon runs: --workers, else
// LARKTUN_WORKERS, else the config's `workers`, else one per core
// (os.availableParallelism()). More than one needs SO_REUSEPORT sockets, i.e.
// the batched UDP path: with LARKTUN_UDP_BATCH=0 or the addon missing it is 1.
import { availableParallelism } from 'node:os';
import { envFlag } from '../io/types.js';
import { loadNativeUdp } from '../io/batch.js';
import { MAX_WORKERS, parseWorkers } from '../../runtime/workers.js';

export { MAX_WORKERS };

export interface WorkerChoice {
  workers: number;
  /** Where the number came from, for the start-up log. */
  from: string;
}

export function chooseWorkers(
  flag: string | undefined,
  config: number | null,
  env: NodeJS.ProcessEnv = process.env,
  cores: number = availableParallelism(),
  batchAvailable: () => boolean = () => !(loadNativeUdp() instanceof Error),
): WorkerChoice {
  let c: WorkerChoice;
  if (flag !== undefined) c = { workers: parseWorkers(flag, '--workers'), from: '--workers' };
  else if (env.LARKTUN_WORKERS !== undefined && env.LARKTUN_WORKERS !== '') c = { workers: parseWorkers(env.LARKTUN_WORKERS, 'LARKTUN_WORKERS'), from: 'LARKTUN_WORKERS' };
  else if (config !== null) c = { workers: config, from: 'config' };
  else c = { workers: Math.min(Math.max(1, cores), MAX_WORKERS), from: 'one per core' };
  if (c.workers > 1 && envFlag('LARKTUN_UDP_BATCH', env) === false) return { workers: 1, from: `${c.from}; 1 because LARKTUN_UDP_BATCH=0 (workers share ports with SO_REUSEPORT on the batched path)` };
  if (c.workers > 1 && !batchAvailable()) return { workers: 1, from: `${c.from}; 1 because the batched UDP addon is unavailable` };
  return c;
}
