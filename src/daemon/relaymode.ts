// larktund as a relay: the RelayEngine on its UDP port(s), fed by the control
// server's relay protocol.
//
//   GET  /relay/v1/stream   SSE, event "map" (a full view), "unchanged" (resume
//                           with Last-Event-ID found the same view), "end" (the
//                           relay was deleted)
//   POST /relay/v1/health   every healthIntervalMs: when each link was last heard
//
// Every view that validates is applied and saved to `stateDir/relay-view.json`
// (0600, temp file + fsync + rename). At start the saved view is loaded before
// anything else, so forwarding continues while the server is unreachable; the
// stream then resumes from its hash (Last-Event-ID) and the server answers
// "unchanged" or sends the newer view. A view that does not validate is logged
// and ignored (the old one stays).
//
// When the server ends the stream ("end") or refuses the token (HTTP 401), the
// relay stops talking to the server (no more views, no more health reports) and
// says so in the log and in status(); it keeps forwarding with the view it has
// until it is stopped.
import { resolveWorkers } from '../runtime/workers.js';
import { ioSummary } from '../dataplane/io/types.js';
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import { RelayEngine, RelayViewError, type RelayStatus, type RelayView } from '../dataplane/relay.js';
import { SseClient, type SseState } from './sse.js';
import { HEALTH_REPORT_MS, ROUTER_CHECK_MS, ROUTER_SEEN_MS, ROUTER_UNSEEN_MS } from '../dataplane/liveness.js';

export const RELAY_VIEW_FILE = 'relay-view.json';
/** The relay stream's heartbeat is 15 s; three missed ones mean the connection is dead. */
const STREAM_IDLE_MS = 45_000;

export interface RunRelayOptions {
  /** Control server base URL, e.g. https://ctl.example.net:8443 */
  server: string;
  /** The relay's token (lkrelay_…), from POST /api/v1/relays. */
  token: string;
  listenPorts: number[];
  stateDir: string;
  bindHost4?: string;
  bindHost6?: string | null;
  /** Health report interval (ms, default 1000: the server's unseen threshold is 3 s, 1 s for routers). */
  healthIntervalMs?: number;
  /**
   * How often links that carry routes (HA primaries, exit nodes) are checked
   * (ms, default 100): one crossing ROUTER_UNSEEN_MS (or heard again within
   * ROUTER_SEEN_MS) triggers a report at once. 0 turns this off.
   */
  routerCheckMs?: number;
  /** Packet threads (default: LARKTUN_WORKERS, else one per core). */
  workers?: number;
  log: (m: string) => void;
}

export interface RelayModeStatus extends RelayStatus {
  server: string;
  /** 'connecting' | 'open' | 'down' | 'ended' (end event) | 'unauthorized' (401) | 'stopped' */
  control: string;
  control_error: string | null;
  /** Where the view in force came from. */
  view_source: 'none' | 'saved' | 'server';
  view_applied_at: string | null;
  views_rejected: number;
  last_view_error: string | null;
  /** early: reports sent ahead of the routine period because a route-carrying link went unseen or came back. */
  health: { sent: number; failed: number; early: number; last_ok_at: string | null; last_error: string | null };
}

/** The relay mode's own part of the status (the control side), without the engine's. */
export type RelayControlStatus = Omit<RelayModeStatus, keyof RelayStatus>;

export interface RelayHandle {
  engine: RelayEngine;
  stop(): Promise<void>;
  status(): RelayModeStatus;
  /** status() without the engine part: cheap, for metrics. */
  controlStatus(): RelayControlStatus;
}

async function writeAtomic(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
}

export async function runRelay(opts: RunRelayOptions): Promise<RelayHandle> {
  const log = opts.log;
  const base = opts.server.replace(/\/+$/, '');
  const healthMs = opts.healthIntervalMs ?? HEALTH_REPORT_MS;
  const routerCheckMs = opts.routerCheckMs ?? ROUTER_CHECK_MS;
  const viewFile = path.join(opts.stateDir, RELAY_VIEW_FILE);
  await mkdir(opts.stateDir, { recursive: true, mode: 0o700 });

  const engine = new RelayEngine({
    listenPorts: opts.listenPorts,
    ...(opts.bindHost4 !== undefined ? { bindHost4: opts.bindHost4 } : {}),
    ...(opts.bindHost6 !== undefined ? { bindHost6: opts.bindHost6 } : {}),
    workers: resolveWorkers(opts.workers),
    log,
  });
  await engine.start();
  const ws = engine.workersStatus();
  log(
    `relay listening on UDP ${engine.boundAddresses().map((a) => `${a.family === 6 ? 'IPv6' : 'IPv4'}:${a.port}`).join(', ')}; I/O: ${ioSummary(engine.ioStatus())}; ` +
      `packet threads: ${ws.running}${ws.reason !== null ? ` of ${ws.configured} (${ws.reason})` : ''}`,
  );

  let control = 'connecting';
  let controlError: string | null = null;
  let viewSource: RelayModeStatus['view_source'] = 'none';
  let viewAppliedAt: string | null = null;
  let viewsRejected = 0;
  let lastViewError: string | null = null;
  const health = { sent: 0, failed: 0, early: 0, last_ok_at: null as string | null, last_error: null as string | null };
  // Links that carry routes in the view in force (HA primaries, exit nodes): id → unseen as last reported.
  let routerLinks = new Map<number, boolean>();
  const noteRouterLinks = (view: unknown): void => {
    const next = new Map<number, boolean>();
    const tenants = (view as { tenants?: { links?: { link_id?: unknown; routes?: unknown }[] }[] } | null)?.tenants;
    for (const t of Array.isArray(tenants) ? tenants : []) {
      for (const l of Array.isArray(t.links) ? t.links : []) {
        if (typeof l.link_id === 'number' && Array.isArray(l.routes) && l.routes.length > 0) next.set(l.link_id, routerLinks.get(l.link_id) ?? false);
      }
    }
    routerLinks = next;
  };
  let halted = false; // end / 401: no more talking to the server
  let stopped = false;

  // ---- the saved view ----
  let resumeId: string | null = null;
  try {
    const text = await readFile(viewFile, 'utf8');
    try {
      const saved = JSON.parse(text) as RelayView;
      const r = engine.setView(saved);
      noteRouterLinks(saved);
      resumeId = r.hash;
      viewSource = 'saved';
      viewAppliedAt = new Date().toISOString();
      log(`loaded the saved relay view ${r.hash} (${r.tenants} tenant(s), ${r.links} link(s)) from ${viewFile}`);
    } catch (err) {
      log(`ignoring the saved relay view ${viewFile}: ${(err as Error).message}`);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log(`cannot read ${viewFile}: ${(err as Error).message}`);
  }

  // Saves run one after another; the newest view is the one left on disk.
  let saving: Promise<void> = Promise.resolve();
  const save = (text: string): void => {
    saving = saving
      .then(() => writeAtomic(viewFile, text))
      .catch(async (err: Error) => {
        log(`cannot save the relay view to ${viewFile}: ${err.message}`);
        await unlink(`${viewFile}.tmp-${process.pid}`).catch(() => undefined);
      });
  };

  const halt = (state: 'ended' | 'unauthorized', why: string): void => {
    if (halted) return;
    halted = true;
    control = state;
    controlError = why;
    sse.stop();
    if (healthTimer) clearInterval(healthTimer);
    if (routerTimer) clearInterval(routerTimer);
    log(
      state === 'ended'
        ? `the control server ended this relay's stream (${why}): the relay was deleted or replaced. No further views or health reports; forwarding continues with view ${engine.view?.hash ?? '(none)'} until larktund is stopped`
        : `the control server refused the relay token (${why}): the relay was deleted or its token revoked. No further views or health reports; forwarding continues with view ${engine.view?.hash ?? '(none)'} until larktund is stopped`,
    );
  };

  const apply = (data: string): void => {
    let parsed: unknown;
    try {
      parsed = JSON.parse(data);
    } catch (err) {
      viewsRejected++;
      lastViewError = `not JSON: ${(err as Error).message}`;
      log(`relay view rejected: ${lastViewError}`);
      return;
    }
    try {
      const r = engine.setView(parsed as RelayView);
      noteRouterLinks(parsed);
      viewSource = 'server';
      viewAppliedAt = new Date().toISOString();
      log(`relay view ${r.hash}: ${r.tenants} tenant(s), ${r.links} link(s) (${r.kept} kept their session)`);
      save(data);
    } catch (err) {
      viewsRejected++;
      lastViewError = err instanceof RelayViewError ? err.message : `${(err as Error).message}`;
      log(`relay view rejected, keeping ${engine.view?.hash ?? 'no view'}: ${lastViewError}`);
    }
  };

  const sse: SseClient = new SseClient({
    url: `${base}/relay/v1/stream`,
    token: () => opts.token,
    idleMs: STREAM_IDLE_MS,
    fatalStatus: (status) => status === 401,
    onEvent: (e) => {
      if (halted || stopped) return;
      if (e.event === 'map') apply(e.data);
      else if (e.event === 'end') {
        let reason = e.data;
        try {
          reason = String((JSON.parse(e.data) as { reason?: unknown }).reason ?? e.data);
        } catch {
          /* keep the raw text */
        }
        halt('ended', reason || 'end');
      }
      // "unchanged": the view in force is current.
    },
    onState: (s: SseState) => {
      if (halted || stopped) return;
      if (s.state === 'open') {
        if (control !== 'open') log(`connected to ${base} (relay stream)`);
        control = 'open';
        controlError = null;
      } else if (s.state === 'connecting') {
        if (control !== 'down') control = 'connecting';
      } else if (s.status === 401) {
        halt('unauthorized', s.error);
      } else {
        if (control !== 'down' || controlError !== s.error) log(`relay stream down (${s.error}); retrying in ${s.retryInMs} ms, forwarding with view ${engine.view?.hash ?? '(none)'}`);
        control = 'down';
        controlError = s.error;
      }
    },
  });

  // ---- health reports ----
  let inFlight = false;
  let again = false; // an early report was wanted while one was in flight
  const report = async (): Promise<void> => {
    if (inFlight) {
      again = true;
      return;
    }
    if (halted || stopped || engine.view === null) return;
    inFlight = true;
    // Let datagrams that queued up meanwhile (after a stall of this process) be
    // read first, so a busy relay does not report its links unseen.
    await new Promise<void>((r) => setImmediate(r));
    const now = Date.now();
    const body = engine.healthReport(now);
    if (body.links.length === 0) {
      inFlight = false;
      return;
    }
    for (const l of body.links) {
      const was = routerLinks.get(l.link_id);
      if (was === undefined) continue;
      const ago = l.last_seen_ms_ago;
      routerLinks.set(l.link_id, ago === null || ago > ROUTER_UNSEEN_MS || (was && ago > ROUTER_SEEN_MS));
    }
    try {
      const res = await fetch(`${base}/relay/v1/health`, {
        method: 'POST',
        headers: { authorization: `Bearer ${opts.token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(Math.max(2000, healthMs * 2)),
      });
      const text = await res.text().catch(() => '');
      if (res.status === 401) {
        halt('unauthorized', `health report: HTTP 401 ${text.slice(0, 200)}`);
        return;
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}: ${text.slice(0, 200)}`);
      health.sent++;
      health.last_ok_at = new Date().toISOString();
      if (health.last_error !== null) log('health reports reach the server again');
      health.last_error = null;
    } catch (err) {
      const e = err as Error & { cause?: Error };
      const msg = e.cause?.message ?? e.message;
      health.failed++;
      if (health.last_error === null) log(`health report failed (${msg}); will keep trying every ${healthMs} ms`);
      health.last_error = msg;
    } finally {
      inFlight = false;
      if (again) {
        again = false;
        void report();
      }
    }
  };
  const healthTimer: NodeJS.Timeout | null = setInterval(() => void report(), healthMs);
  healthTimer.unref();

  // Route-carrying links are watched closely: when one is not heard for
  // ROUTER_UNSEEN_MS (or is heard again), report now rather than at the next
  // routine report, so the server fails its routes over sooner. A tick that
  // comes late (this process stalled) only resets the clock: the links' silence
  // may be ours.
  let lastCheck = Date.now();
  const checkRouters = (): void => {
    const now = Date.now();
    const late = now - lastCheck > routerCheckMs * 4;
    lastCheck = now;
    if (late || inFlight || halted || stopped || routerLinks.size === 0) return;
    for (const [id, unseen] of routerLinks) {
      const link = engine.link(id);
      if (!link || link.lastSeenMs === 0) continue;
      const ago = now - link.lastSeenMs;
      if ((!unseen && ago > ROUTER_UNSEEN_MS) || (unseen && ago <= ROUTER_SEEN_MS)) {
        health.early++;
        void report();
        return;
      }
    }
  };
  const routerTimer: NodeJS.Timeout | null = routerCheckMs > 0 ? setInterval(checkRouters, routerCheckMs) : null;
  routerTimer?.unref();

  sse.start(resumeId);

  const controlStatus = (): RelayControlStatus => ({
    server: base,
    control,
    control_error: controlError,
    view_source: viewSource,
    view_applied_at: viewAppliedAt,
    views_rejected: viewsRejected,
    last_view_error: lastViewError,
    health: { ...health },
  });

  return {
    engine,
    async stop() {
      if (stopped) return;
      stopped = true;
      control = 'stopped';
      sse.stop();
      clearInterval(healthTimer);
      if (routerTimer) clearInterval(routerTimer);
      await saving;
      await engine.stop();
    },
    status(): RelayModeStatus {
      return { ...engine.status(), ...controlStatus() };
    },
    controlStatus,
  };
}
