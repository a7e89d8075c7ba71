// Test harness: real server processes (spawned through the CLI definition),
// fresh PostgreSQL schemas, and a small JSON client.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import BetterSqlite3 from 'better-sqlite3';
import { generateNodeKey, signRegistration, type NodeKeyPair } from '../../src/control/nodekey.js';

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = join(here, '..', '..');
export const PG_BASE = process.env.LARKTUN_TEST_PG ?? 'postgres://root@127.0.0.1:5432/test';

let pgProbe: Promise<string | null> | null = null;
/** null when PostgreSQL is reachable, else the reason to skip. */
export function pgUnavailable(): Promise<string | null> {
  pgProbe ??= (async () => {
    const c = new pg.Client({ connectionString: PG_BASE, connectionTimeoutMillis: 2000 });
    try {
      await c.connect();
      await c.query('select 1');
      return null;
    } catch (err) {
      return `PostgreSQL unreachable at ${PG_BASE}: ${err instanceof Error ? err.message : String(err)}`;
    } finally {
      await c.end().catch(() => undefined);
    }
  })();
  return pgProbe;
}

export interface PgSchema {
  url: string;
  schema: string;
  drop(): Promise<void>;
}

/** A fresh schema; the returned URL sets search_path to it. */
export async function freshPgSchema(): Promise<PgSchema> {
  const schema = `lktest_${randomBytes(6).toString('hex')}`;
  const c = new pg.Client({ connectionString: PG_BASE });
  await c.connect();
  await c.query(`create schema ${schema}`);
  await c.end();
  const sep = PG_BASE.includes('?') ? '&' : '?';
  const url = `${PG_BASE}${sep}options=${encodeURIComponent(`-c search_path=${schema}`)}`;
  return {
    url,
    schema,
    async drop() {
      const d = new pg.Client({ connectionString: PG_BASE });
      await d.connect();
      await d.query(`drop schema if exists ${schema} cascade`);
      await d.end();
    },
  };
}

export interface Backend {
  name: string;
  /** Returns the --db value, or a skip reason string prefixed with "skip:". */
  setup(): Promise<string>;
  teardown(): Promise<void>;
}

/** The two stores a suite runs on: SQLite, and a fresh PostgreSQL schema (skipped with the reason when PostgreSQL is down). */
export function backends(): Backend[] {
  let schema: PgSchema | null = null;
  return [
    { name: 'SQLite', setup: async () => 'sqlite', teardown: async () => {} },
    {
      name: 'PostgreSQL',
      async setup() {
        const why = await pgUnavailable();
        if (why) return `skip:${why}`;
        schema = await freshPgSchema();
        return schema.url;
      },
      async teardown() {
        await schema?.drop();
      },
    },
  ];
}

export function tempDir(prefix = 'larktun-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export interface ServerProc {
  url: string;
  proc: ChildProcess;
  dataDir: string;
  stderr(): string;
  operatorKey(): string;
  /** SIGTERM and wait; resolves with the exit code. */
  stop(): Promise<number | null>;
  kill9(): Promise<void>;
}

export async function spawnServer(opts: { dataDir: string; db: string; extra?: string[]; env?: Record<string, string> }): Promise<ServerProc> {
  const args = [
    '--import', 'tsx', join(ROOT, 'test/control/server-entry.ts'), 'server',
    '--listen', '127.0.0.1:0', '--data', opts.dataDir, '--db', opts.db, '--log-level', 'warn', ...(opts.extra ?? []),
  ];
  const proc = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  let err = '';
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in 20s:\n${err}\n${out}`)), 20000);
    proc.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /listening on (\S+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve(m[1] as string);
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${err}\n${out}`));
    });
  });
  return {
    url,
    proc,
    dataDir: opts.dataDir,
    stderr: () => err,
    operatorKey: () => readFileSync(join(opts.dataDir, 'operator.key'), 'utf8').trim(),
    async stop() {
      if (proc.exitCode !== null) return proc.exitCode;
      proc.kill('SIGTERM');
      return exited;
    },
    async kill9() {
      if (proc.exitCode !== null) return;
      proc.kill('SIGKILL');
      await exited;
    },
  };
}

export interface Res<T = Record<string, unknown>> {
  status: number;
  body: T;
  text: string;
  headers: Headers;
}

// Response bodies are JSON of varying shape; tests read them loosely.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Json = any;

export class Client {
  constructor(
    readonly base: string,
    public key: string | null,
  ) {}
  async req(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Res<Json>> {
    const h: Record<string, string> = { ...headers };
    if (this.key) h['authorization'] = `Bearer ${this.key}`;
    let payload: string | undefined;
    if (body !== undefined) {
      if (typeof body === 'string' && h['content-type']) payload = body;
      else {
        h['content-type'] ??= 'application/json';
        payload = typeof body === 'string' ? body : JSON.stringify(body);
      }
    }
    const r = await fetch(this.base + path, { method, headers: h, ...(payload !== undefined ? { body: payload } : {}) });
    const text = await r.text();
    let parsed: Json = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    return { status: r.status, body: parsed, text, headers: r.headers };
  }
  get(p: string) { return this.req('GET', p); }
  post(p: string, b: unknown = {}) { return this.req('POST', p, b); }
  put(p: string, b: unknown) { return this.req('PUT', p, b); }
  patch(p: string, b: unknown) { return this.req('PATCH', p, b); }
  del(p: string) { return this.req('DELETE', p); }
  as(key: string | null): Client { return new Client(this.base, key); }
}

/** A Server-Sent Events reader over fetch. */
export class SseReader {
  private buf = '';
  private events: { event: string; id: string | null; data: string; state: Json }[] = [];
  /** The node's current map: full maps replace it, patches and presence deltas update it. */
  state: Json = null;
  private waiters: (() => void)[] = [];
  private ctrl = new AbortController();
  status = 0;
  closed = false;

  static async open(url: string, token: string, lastEventId?: string): Promise<SseReader> {
    const r = new SseReader();
    const headers: Record<string, string> = { authorization: `Bearer ${token}` };
    if (lastEventId) headers['last-event-id'] = lastEventId;
    const res = await fetch(url, { headers, signal: r.ctrl.signal });
    r.status = res.status;
    if (!res.ok || !res.body) {
      r.closed = true;
      return r;
    }
    void (async () => {
      const dec = new TextDecoder();
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          r.buf += dec.decode(chunk, { stream: true });
          let i: number;
          while ((i = r.buf.indexOf('\n\n')) >= 0) {
            const block = r.buf.slice(0, i);
            r.buf = r.buf.slice(i + 2);
            let event = 'message';
            let id: string | null = null;
            const data: string[] = [];
            for (const line of block.split('\n')) {
              if (line.startsWith(':')) continue;
              if (line.startsWith('event: ')) event = line.slice(7);
              else if (line.startsWith('id: ')) id = line.slice(4);
              else if (line.startsWith('data: ')) data.push(line.slice(6));
            }
            if (data.length || id) {
              const text = data.join('\n');
              if (event === 'map') r.state = JSON.parse(text);
              else if (event === 'patch' && r.state) r.state = { ...r.state, ...JSON.parse(text) };
              else if (event === 'peers' && r.state) {
                const d = JSON.parse(text) as { version: number; online: Record<string, boolean> };
                const on = new Set<number>(r.state.online);
                for (const [id, o] of Object.entries(d.online)) {
                  if (o) on.add(Number(id));
                  else on.delete(Number(id));
                }
                r.state = { ...r.state, version: d.version, online: [...on].sort((a, b) => a - b) };
              }
              r.events.push({ event, id, data: text, state: r.state });
              r.waiters.splice(0).forEach((w) => w());
            }
          }
        }
      } catch {
        // aborted
      }
      r.closed = true;
      r.waiters.splice(0).forEach((w) => w());
    })();
    return r;
  }

  /** Next event (FIFO), waiting up to `ms`. */
  async next(ms = 5000): Promise<{ event: string; id: string | null; data: Json; state: Json }> {
    const deadline = Date.now() + ms;
    while (this.events.length === 0) {
      if (this.closed) throw new Error('stream closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no event within ${ms} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    const e = this.events.shift() as { event: string; id: string | null; data: string; state: Json };
    return { event: e.event, id: e.id, data: e.data ? JSON.parse(e.data) : null, state: e.state };
  }

  /** Waits until the node's map (after maps, patches and presence deltas) satisfies `pred`. */
  async waitMap(pred: (m: Json) => boolean, ms = 5000): Promise<Json> {
    const deadline = Date.now() + ms;
    for (;;) {
      const e = await this.next(Math.max(1, deadline - Date.now()));
      if ((e.event === 'map' || e.event === 'patch' || e.event === 'peers') && e.state && pred(e.state)) return e.state;
    }
  }

  pending(): number {
    return this.events.length;
  }

  close(): void {
    this.ctrl.abort();
  }
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A random node public key (base64 of 32 bytes): a key nobody holds the private half of. */
export const nodeKey = (): string => randomBytes(32).toString('base64');

/** A node identity: an Ed25519 key pair (`nodekey:<hex>` and its private key). */
export const nodeIdentity = (): NodeKeyPair => generateNodeKey();

/** The registration proof for a key: a fresh nonce from /register/challenge for this auth key, signed. */
export async function registerProof(client: Client, authKey: string, id: NodeKeyPair): Promise<{ nonce: string; signature: string } | Res<Json>> {
  const ch = await client.as(null).post('/node/v1/register/challenge', { auth_key: authKey });
  if (ch.status !== 200) return ch;
  return { nonce: ch.body.nonce as string, signature: signRegistration(id.privateKey, ch.body.nonce as string, id.nodeKey, ch.body.tenant as string) };
}

/**
 * Registers a node as larktun up does: a nonce from /register/challenge, signed
 * with the node key (`id`, a new one by default; any node_key in `body` is replaced).
 * A refused challenge is returned as the answer.
 */
export async function registerNode(client: Client, body: Record<string, unknown>, id: NodeKeyPair = generateNodeKey()): Promise<Res<Json>> {
  const proof = await registerProof(client, String(body['auth_key']), id);
  if ('status' in proof) return proof;
  return client.post('/node/v1/register', { ...body, node_key: id.nodeKey, ...proof });
}

/**
 * Runs one statement straight on a server's database (`db` as given to
 * spawnServer; SQLite: the file in `dataDir`), e.g. to make rows look as an
 * older version left them. Parameters as $1, $2, …
 */
export async function dbExec(db: string, dataDir: string, q: string, params: unknown[]): Promise<void> {
  if (db === 'sqlite') {
    const d = new BetterSqlite3(join(dataDir, 'larktun.db'));
    try {
      d.pragma('busy_timeout = 5000');
      d.prepare(q.replace(/\$\d+/g, '?')).run(...params);
    } finally {
      d.close();
    }
    return;
  }
  const c = new pg.Client({ connectionString: db });
  await c.connect();
  try {
    await c.query(q, params);
  } finally {
    await c.end();
  }
}
