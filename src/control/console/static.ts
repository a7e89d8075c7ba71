// Serves the built console (dist/console, made by `npm run build`) on the
// server's own port: hashed assets under /assets/ with a year-long immutable
// cache, and index.html — without caching — for the console's own page paths
// only (/, /signin, /tenants, /relays, /<tenant>/<page>, /login/<node login id>). Nothing else is shadowed:
// /api, /node, /relay, /healthz, /readyz and /metrics keep their routes and a
// path the console does not know stays a JSON 404.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash, randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { errorBody } from '../errors.js';

/** The tenant pages of the console (the client's router has the same list). */
export const CONSOLE_PAGES = ['machines', 'routes', 'acls', 'users', 'keys', 'logs', 'relays', 'settings'] as const;

/** The console's CSP; `nonce` allows the one <style> element the policy editor (CodeMirror) makes. */
export const consoleCsp = (nonce: string): string => [
  "default-src 'none'",
  "script-src 'self'",
  `style-src 'self' 'nonce-${nonce}'`,
  "img-src 'self' data:",
  "font-src 'self'",
  "connect-src 'self'",
  "manifest-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "object-src 'none'",
].join('; ');

/** index.html carries this placeholder in <meta name="csp-nonce">; each response gets a fresh nonce. */
const NONCE_PLACEHOLDER = '__LARKTUN_CSP_NONCE__';

const TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.html': 'text/html; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.woff2': 'font/woff2',
  '.json': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
};

interface Asset {
  body: Buffer;
  gzip: Buffer | null;
  type: string;
  etag: string;
}

const MAX_FILES = 1000;
const MAX_FILE_BYTES = 8 * 1024 * 1024;

export function defaultConsoleDir(): string {
  // src/control/console (tsx) or dist/control/console (built): both three levels below the package root.
  return resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'dist', 'console');
}

function load(file: string): Asset {
  const body = readFileSync(file);
  const type = TYPES[extname(file)] ?? 'application/octet-stream';
  const compressible = /^(text\/|application\/json|image\/svg)/.test(type) && body.length > 512;
  return { body, gzip: compressible ? gzipSync(body, { level: 9 }) : null, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` };
}

/** Every file under dir (relative paths with /), bounded. */
function walk(dir: string, base = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(dir, base), { withFileTypes: true })) {
    const rel = base ? `${base}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...walk(dir, rel));
    else if (e.isFile()) out.push(rel);
    if (out.length > MAX_FILES) throw new Error(`console build in ${dir} has more than ${MAX_FILES} files`);
  }
  return out;
}

export interface ConsoleStatic {
  /** false when the console is not built (its pages answer 503 saying so). */
  built: boolean;
  dir: string;
}

export function registerConsoleStatic(app: FastifyInstance, opts: { dir?: string } = {}): ConsoleStatic {
  const dir = opts.dir ?? defaultConsoleDir();
  const built = existsSync(join(dir, 'index.html'));
  const assets = new Map<string, Asset>();
  let index: Asset | null = null;
  if (built) {
    for (const rel of walk(dir)) {
      if (statSync(join(dir, rel)).size > MAX_FILE_BYTES) throw new Error(`console file ${rel} is larger than ${MAX_FILE_BYTES} bytes`);
      if (rel === 'index.html') index = load(join(dir, rel));
      else assets.set(`/${rel}`, load(join(dir, rel)));
    }
  }

  const security = (reply: FastifyReply, nonce: string) => {
    reply.header('content-security-policy', consoleCsp(nonce));
    reply.header('x-content-type-options', 'nosniff');
    reply.header('referrer-policy', 'no-referrer');
    reply.header('x-frame-options', 'DENY');
    reply.header('cross-origin-opener-policy', 'same-origin');
  };

  const send = (req: FastifyRequest, reply: FastifyReply, a: Asset, cache: string) => {
    security(reply, randomBytes(16).toString('base64'));
    reply.header('cache-control', cache).header('etag', a.etag).header('vary', 'accept-encoding').type(a.type);
    if (req.headers['if-none-match'] === a.etag) return reply.code(304).send();
    const accepts = /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
    if (a.gzip && accepts) return reply.header('content-encoding', 'gzip').send(a.gzip);
    return reply.send(a.body);
  };

  const page = async (req: FastifyRequest, reply: FastifyReply) => {
    if (!index) {
      return reply.code(503).send(errorBody('console_not_built', `the console is not built (no ${join(dir, 'index.html')}): run "npm run build"`));
    }
    // A fresh nonce per response (never cached: no-store), in the CSP header and the page.
    const nonce = randomBytes(16).toString('base64');
    security(reply, nonce);
    reply.header('cache-control', 'no-store').type(index.type);
    return reply.send(index.body.toString('utf8').replace(NONCE_PLACEHOLDER, nonce));
  };

  app.get('/', page);
  app.get('/signin', page);
  app.get('/tenants', page);
  app.get('/relays', page);
  // An interactive node login's link (src/control/nodelogin.ts). A tenant named
  // "login" keeps its pages: /login/machines etc. are its pages, not logins.
  app.get<{ Params: { id: string } }>('/login/:id', async (req, reply) => {
    const id = req.params.id;
    if (!/^[A-Za-z0-9_-]{43}$/.test(id) && !(CONSOLE_PAGES as readonly string[]).includes(id)) {
      return reply.code(404).send(errorBody('not_found', `no route GET ${req.url.split('?')[0]}`));
    }
    return page(req, reply);
  });
  app.get<{ Params: { tenant: string; page: string } }>('/:tenant/:page', async (req, reply) => {
    const { tenant, page: p } = req.params;
    if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(tenant) || !(CONSOLE_PAGES as readonly string[]).includes(p)) {
      return reply.code(404).send(errorBody('not_found', `no route GET ${req.url.split('?')[0]}`));
    }
    return page(req, reply);
  });
  app.get<{ Params: { '*': string } }>('/assets/*', async (req, reply) => {
    const a = assets.get(`/assets/${req.params['*']}`);
    if (!a) return reply.code(404).send(errorBody('not_found', `no console asset ${req.url.split('?')[0]}`));
    return send(req, reply, a, 'public, max-age=31536000, immutable');
  });
  for (const [path, a] of assets) {
    if (path.startsWith('/assets/') || path.split('/').length !== 2) continue;
    app.get(path, async (req, reply) => send(req, reply, a, 'public, max-age=86400'));
  }
  return { built, dir };
}
