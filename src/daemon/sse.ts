// A reconnecting Server-Sent Events client for the daemon's streams from the
// control server (a node's map stream, a relay's view stream). It resumes with
// Last-Event-ID, treats a stream that stays silent for `idleMs` (the server
// sends heartbeats) as dead, and retries with capped exponential backoff and
// jitter. It never throws: failures are reported through onState and retried.

export interface SseEvent {
  event: string;
  id: string | null;
  data: string;
}

export type SseState =
  | { state: 'connecting'; attempt: number }
  | { state: 'open' }
  | { state: 'down'; error: string; retryInMs: number; status?: number };

export interface SseClientOptions {
  url: string;
  token: () => string;
  onEvent: (e: SseEvent) => void;
  onState?: (s: SseState) => void;
  /** Stop retrying (and report) on these HTTP statuses, e.g. 401: the credentials are gone. */
  fatalStatus?: (status: number, body: string) => boolean;
  /** No byte for this long: reconnect (default 5000 ms). */
  idleMs?: number;
  /** Backoff bounds (default 250 ms .. 10 s). */
  minRetryMs?: number;
  maxRetryMs?: number;
}

export class SseClient {
  lastId: string | null = null;
  private ctrl: AbortController | null = null;
  private stopped = false;
  private attempt = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  connected = false;

  constructor(private readonly opts: SseClientOptions) {}

  start(lastId: string | null = null): void {
    this.lastId = lastId;
    this.stopped = false;
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.ctrl?.abort();
  }

  /** Drop the current connection and reconnect at once (e.g. after re-login). */
  reconnect(): void {
    this.attempt = 0;
    this.ctrl?.abort();
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const o = this.opts;
    this.attempt++;
    o.onState?.({ state: 'connecting', attempt: this.attempt });
    const ctrl = new AbortController();
    this.ctrl = ctrl;
    let idle: NodeJS.Timeout | null = null;
    const idleMs = o.idleMs ?? 5000;
    const arm = (): void => {
      if (idle) clearTimeout(idle);
      idle = setTimeout(() => ctrl.abort(new Error(`no data for ${idleMs} ms`)), idleMs);
      idle.unref();
    };
    let error = 'stream ended';
    let status: number | undefined;
    let fatal = false;
    try {
      arm();
      const headers: Record<string, string> = { authorization: `Bearer ${o.token()}`, accept: 'text/event-stream' };
      if (this.lastId) headers['last-event-id'] = this.lastId;
      const res = await fetch(o.url, { headers, signal: ctrl.signal });
      status = res.status;
      if (!res.ok || !res.body) {
        const body = await res.text().catch(() => '');
        error = `HTTP ${res.status}: ${body.slice(0, 300)}`;
        fatal = o.fatalStatus?.(res.status, body) ?? false;
      } else {
        this.connected = true;
        this.attempt = 0;
        o.onState?.({ state: 'open' });
        const dec = new TextDecoder();
        let buf = '';
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          arm();
          buf += dec.decode(chunk, { stream: true });
          let i: number;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            this.dispatch(block);
          }
        }
      }
    } catch (err) {
      const e = err as Error & { cause?: Error };
      const reason = ctrl.signal.reason as Error | undefined;
      error = reason?.message ?? e.cause?.message ?? e.message;
    } finally {
      if (idle) clearTimeout(idle);
      this.connected = false;
    }
    if (this.stopped) return;
    if (fatal) {
      o.onState?.({ state: 'down', error, retryInMs: -1, ...(status !== undefined ? { status } : {}) });
      return;
    }
    const min = o.minRetryMs ?? 250;
    const max = o.maxRetryMs ?? 10_000;
    const base = Math.min(max, min * 2 ** Math.min(this.attempt, 10));
    const wait = Math.round(base / 2 + Math.random() * (base / 2));
    o.onState?.({ state: 'down', error, retryInMs: wait, ...(status !== undefined ? { status } : {}) });
    this.retryTimer = setTimeout(() => void this.connect(), wait);
  }

  private dispatch(block: string): void {
    let event = 'message';
    let id: string | null = null;
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'id') id = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length === 0 && id === null) return;
    if (id !== null) this.lastId = id;
    try {
      this.opts.onEvent({ event, id, data: data.join('\n') });
    } catch {
      // a handler error must not kill the stream; the handler reports its own
    }
  }
}
