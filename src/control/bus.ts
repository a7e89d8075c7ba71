// Change fan-out between server replicas sharing one PostgreSQL database:
// every change transaction NOTIFYs "<tenant id>:<generation>" (inside the
// transaction, so only committed changes are announced) on a channel named
// after the database schema; every replica LISTENs and refreshes that tenant's
// connected nodes. No polling. On SQLite (single server) there is no bus.
//
// Notifications sent while a replica's LISTEN connection is down are lost, so
// after every (re)connect the replica re-syncs: once LISTEN is active again it
// reads every tenant's generation and refreshes those it has not pushed yet
// (`onResync`). The connection is re-made with a bounded backoff, and checked
// with a ping so that a silently dead connection (a partition that drops
// packets without a reset) is noticed too.
import pg from 'pg';

export interface ChangeBus {
  /** The NOTIFY channel (null without PostgreSQL). */
  readonly channel: string | null;
  close(): Promise<void>;
}

export const nullBus: ChangeBus = {
  channel: null,
  async close() {},
};

export const notifyPayload = (tenantId: number, generation: number): string => `${tenantId}:${generation}`;

/** Reconnect backoff: first retry after this, doubling up to BACKOFF_MAX_MS. */
export const BUS_BACKOFF_MIN_MS = 100;
export const BUS_BACKOFF_MAX_MS = 1000;
/** The LISTEN connection is pinged this often; no answer within BUS_PING_TIMEOUT_MS drops it. */
export const BUS_PING_MS = 5000;
export const BUS_PING_TIMEOUT_MS = 3000;

export interface PgBusOptions {
  url: string;
  onChange: (tenantId: number, generation: number) => void;
  onError: (err: Error) => void;
  onReceived?: () => void;
  /**
   * LISTEN is active again after a lost connection (not called for the first
   * connect): notifications may have been missed, re-sync every tenant. Runs
   * after LISTEN, so nothing committed from here on can be missed.
   */
  onResync?: () => Promise<void>;
  /** A reconnect attempt (ok: LISTEN active again). */
  onReconnect?: (ok: boolean) => void;
  backoffMinMs?: number;
  backoffMaxMs?: number;
  pingMs?: number;
  pingTimeoutMs?: number;
}

export async function startPgBus(opts: PgBusOptions): Promise<ChangeBus> {
  const minMs = opts.backoffMinMs ?? BUS_BACKOFF_MIN_MS;
  const maxMs = Math.max(minMs, opts.backoffMaxMs ?? BUS_BACKOFF_MAX_MS);
  const pingMs = opts.pingMs ?? BUS_PING_MS;
  const pingTimeoutMs = opts.pingTimeoutMs ?? BUS_PING_TIMEOUT_MS;
  let closed = false;
  let listener: pg.Client | null = null;
  let channel = 'larktun_changes';
  let retry: NodeJS.Timeout | null = null;
  let pinger: NodeJS.Timeout | null = null;
  let delay = minMs;

  const drop = (c: pg.Client): void => {
    if (listener === c) listener = null;
    // end() on a dead socket may never settle; the 'end' handler schedules the reconnect
    void c.end().catch(() => undefined);
  };

  const scheduleReconnect = (): void => {
    if (closed || retry !== null) return;
    const wait = delay;
    delay = Math.min(maxMs, delay * 2);
    retry = setTimeout(() => {
      retry = null;
      if (closed) return;
      void connect(true).then(
        () => {
          delay = minMs;
          opts.onReconnect?.(true);
        },
        (err: unknown) => {
          opts.onReconnect?.(false);
          opts.onError(err as Error);
          scheduleReconnect();
        },
      );
    }, wait);
    retry.unref();
  };

  const connect = async (again: boolean): Promise<void> => {
    const c = new pg.Client({ connectionString: opts.url, keepAlive: true, connectionTimeoutMillis: 5000 });
    let ended = false;
    c.on('error', (err) => {
      opts.onError(err);
      drop(c);
    });
    c.on('end', () => {
      ended = true;
      if (listener === c) listener = null;
      if (!closed) scheduleReconnect();
    });
    try {
      await c.connect();
      const r = await c.query<{ s: string }>('select current_schema() as s');
      channel = `larktun_${(r.rows[0]?.s ?? 'public').replace(/[^a-z0-9_]/gi, '_')}`.slice(0, 63);
      c.on('notification', (n) => {
        if (n.channel !== channel || !n.payload) return;
        const m = /^(\d+):(-?\d+)$/.exec(n.payload);
        if (!m) return;
        opts.onReceived?.();
        opts.onChange(Number(m[1]), Number(m[2]));
      });
      await c.query(`LISTEN ${channel}`);
    } catch (err) {
      // a failed attempt must not schedule a second retry through 'end'
      c.removeAllListeners('end');
      void c.end().catch(() => undefined);
      throw err;
    }
    if (ended || closed) {
      if (closed) void c.end().catch(() => undefined);
      throw new Error('the LISTEN connection closed while it was being set up');
    }
    listener = c;
    if (again && opts.onResync) {
      try {
        await opts.onResync();
      } catch (err) {
        // Not re-synced: drop this connection too, so the retry re-syncs (one listener at a time).
        listener = null;
        c.removeAllListeners('end');
        void c.end().catch(() => undefined);
        throw err;
      }
    }
  };

  // A silently dead connection (packets dropped, no reset) would never end:
  // ping it, and drop it when the ping does not come back in time.
  let pinging = false;
  pinger = setInterval(() => {
    const c = listener;
    if (c === null || pinging || closed) return;
    pinging = true;
    let timer: NodeJS.Timeout | null = null;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the LISTEN connection did not answer a ping within ${pingTimeoutMs} ms`)), pingTimeoutMs);
    });
    void Promise.race([c.query('select 1'), timeout])
      .catch((err: unknown) => {
        if (listener !== c) return;
        opts.onError(err as Error);
        listener = null;
        // the client may hang in end() on a dead socket: force the reconnect here
        c.removeAllListeners('end');
        void c.end().catch(() => undefined);
        scheduleReconnect();
      })
      .finally(() => {
        if (timer) clearTimeout(timer);
        pinging = false;
      });
  }, pingMs);
  pinger.unref();

  try {
    await connect(false);
  } catch (err) {
    closed = true;
    clearInterval(pinger);
    throw err;
  }

  return {
    channel,
    async close() {
      closed = true;
      if (retry) clearTimeout(retry);
      if (pinger) clearInterval(pinger);
      await listener?.end().catch(() => undefined);
    },
  };
}
