// Change fan-out between server replicas sharing one PostgreSQL database:
// every change transaction NOTIFYs "<tenant id>:<generation>" (inside the
// transaction, so only committed changes are announced) on a channel named
// after the database schema; every replica LISTENs and refreshes that tenant's
// connected nodes. No polling. On SQLite (single server) there is no bus.
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

export interface PgBusOptions {
  url: string;
  onChange: (tenantId: number, generation: number) => void;
  onError: (err: Error) => void;
  onReceived?: () => void;
}

export async function startPgBus(opts: PgBusOptions): Promise<ChangeBus> {
  let closed = false;
  let listener: pg.Client | null = null;
  let channel = 'larktun_changes';

  const connect = async (): Promise<void> => {
    const c = new pg.Client({ connectionString: opts.url });
    c.on('error', (err) => {
      opts.onError(err);
    });
    c.on('end', () => {
      if (closed) return;
      listener = null;
      // reconnect with a short backoff; a missed change is covered by the
      // tenant refresh on reconnect of each node
      setTimeout(() => void connect().catch((e: unknown) => opts.onError(e as Error)), 500).unref();
    });
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
    listener = c;
  };
  await connect();

  return {
    channel,
    async close() {
      closed = true;
      await listener?.end().catch(() => undefined);
    },
  };
}
