// Live updates for the console: a per-tenant Server-Sent Events stream that
// says "this tenant changed (generation N)" after every committed change
// (nodes going on- or offline, routes failing over, policy, audit entries from
// Admin API changes). Events are coalesced to at most one per `minGapMs` per
// subscriber; the console refetches what it shows. Bounded subscribers.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ApiError } from '../errors.js';

interface Sub {
  tenantId: number;
  send(generation: number): void;
}

export class ConsoleEvents {
  private readonly subs = new Map<number, Set<Sub>>();
  private total = 0;
  constructor(
    readonly maxPerTenant = 200,
    readonly maxTotal = 5000,
    readonly minGapMs = 300,
    readonly heartbeatMs = 15_000,
  ) {}

  /** Called after every committed tenant change (this replica's or, on PostgreSQL, another's). */
  changed(tenantId: number, generation: number): void {
    for (const s of this.subs.get(tenantId) ?? []) s.send(generation);
  }

  get size(): number {
    return this.total;
  }

  /** Takes over the reply and streams until the client goes or `stop` is called (shutdown). */
  open(req: FastifyRequest, reply: FastifyReply, tenantId: number, generation: number, openStreams: Set<() => void>): void {
    const set = this.subs.get(tenantId) ?? new Set<Sub>();
    if (set.size >= this.maxPerTenant || this.total >= this.maxTotal) {
      throw new ApiError(503, 'too_many_streams', 'too many console event streams are open; try again later');
    }
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache, no-transform', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    let last = 0;
    let pending: NodeJS.Timeout | null = null;
    let latest = generation;
    let closed = false;
    const write = (s: string) => {
      // A client that does not read gets no backlog: writes that stay unflushed end the stream.
      if (!closed && res.writableLength > 64 * 1024) return stop();
      if (!closed) res.write(s);
    };
    const flush = () => {
      pending = null;
      last = Date.now();
      write(`event: changed\ndata: ${JSON.stringify({ generation: latest })}\n\n`);
    };
    const sub: Sub = {
      tenantId,
      send: (g) => {
        latest = Math.max(latest, g);
        if (pending) return;
        const wait = last + this.minGapMs - Date.now();
        if (wait <= 0) flush();
        else pending = setTimeout(flush, wait);
      },
    };
    const beat = setInterval(() => write(': keepalive\n\n'), this.heartbeatMs);
    beat.unref();
    const stop = () => {
      if (closed) return;
      closed = true;
      clearInterval(beat);
      if (pending) clearTimeout(pending);
      set.delete(sub);
      if (set.size === 0) this.subs.delete(tenantId);
      this.total--;
      openStreams.delete(stop);
      res.end();
    };
    set.add(sub);
    this.subs.set(tenantId, set);
    this.total++;
    openStreams.add(stop);
    req.raw.on('close', stop);
    res.write(`retry: 2000\nevent: hello\ndata: ${JSON.stringify({ generation })}\n\n`);
  }
}
