// One place that refuses request input no handler should see: a NUL character
// (U+0000) in any string of the body, the path parameters or the query string
// (PostgreSQL cannot store it in text and answered 500; SQLite kept it), and
// bodies nested deeper than MAX_JSON_DEPTH (no recursive walk of a handler
// or library may see those). Runs as a preValidation hook, before the JSON
// schemas and every handler.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { errorBody } from '../errors.js';
import { MAX_JSON_DEPTH } from '../../json/depth.js';

export interface InputProblem {
  field: string;
  message: string;
}

const label = (path: string, key: string): string =>
  /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;

/**
 * The first string (or object key) containing U+0000 in `value`, named like
 * `body.endpoints[1]`, or the first array/object nested deeper than `maxDepth`.
 * Walks iteratively: the input's depth cannot exhaust the stack.
 */
export function findInputProblem(value: unknown, root: string, maxDepth = MAX_JSON_DEPTH): InputProblem | null {
  const stack: { v: unknown; path: string; depth: number }[] = [{ v: value, path: root, depth: 0 }];
  while (stack.length > 0) {
    const { v, path, depth } = stack.pop() as { v: unknown; path: string; depth: number };
    if (v !== null && typeof v === 'object' && depth >= maxDepth) {
      return { field: root, message: `${root} nests arrays/objects more than ${maxDepth} levels deep (the limit)` };
    }
    if (typeof v === 'string') {
      if (v.includes('\u0000')) return { field: path, message: `${path} contains a NUL character (\\u0000), which is not allowed` };
    } else if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) stack.push({ v: v[i], path: `${path}[${i}]`, depth: depth + 1 });
    } else if (v !== null && typeof v === 'object') {
      const entries = Object.entries(v as Record<string, unknown>);
      for (let i = entries.length - 1; i >= 0; i--) {
        const [k, child] = entries[i] as [string, unknown];
        if (k.includes('\u0000')) return { field: path, message: `a key in ${path} contains a NUL character (\\u0000), which is not allowed` };
        stack.push({ v: child, path: label(path, k), depth: depth + 1 });
      }
    }
  }
  return null;
}

/** Installs the check on `app` (and every route registered inside it afterwards). */
export function installInputGuard(app: FastifyInstance, onReject: (problem: InputProblem) => void): void {
  app.addHook('preValidation', async (req: FastifyRequest, reply: FastifyReply) => {
    const problem = findInputProblem(req.params, 'params') ?? findInputProblem(req.query, 'query') ?? findInputProblem(req.body, 'body');
    if (!problem) return;
    onReject(problem);
    return reply.code(400).send(errorBody('invalid_request', problem.message, [problem]));
  });
}
