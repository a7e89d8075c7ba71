// Starting a worker thread from a module next to the caller, whether the
// project runs compiled (dist/…/x.js) or from source under tsx (tests, `node
// --import tsx`): a worker thread does not inherit tsx's loader, so from
// source a small bootstrap registers it in the thread first.
import { Worker, type WorkerOptions } from 'node:worker_threads';

/**
 * `base` is the caller's import.meta.url, `name` the module's file name
 * without extension ('worker' for worker.ts / worker.js beside the caller).
 */
export function spawnWorker(base: string, name: string, opts: WorkerOptions = {}): Worker {
  const fromSource = base.endsWith('.ts');
  const file = new URL(`./${name}${fromSource ? '.ts' : '.js'}`, base);
  if (!fromSource) return new Worker(file, opts);
  const tsx = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(file.href)}); });`;
  return new Worker(boot, { ...opts, eval: true });
}
