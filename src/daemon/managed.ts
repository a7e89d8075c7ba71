// larktund in managed mode: a node joined to a control server by `larktun up`.
//
// State (in the state dir, 0600, written atomically): state.json holds the
// preferences, the node key and its Ed25519 private key (the node's identity:
// registration proves possession of it, src/control/nodekey.ts), the
// server-issued node token and whether the node should be running; netmap.json
// holds the last network map, so after a restart the node forwards with it at
// once, even while the server is unreachable.
//
// A session is the map stream (SSE, resumed with Last-Event-ID, reconnecting by
// itself) plus the data plane built from each map: one engine peer (the relay),
// the forwarding table, the packet filter (inbound, with flow tracking), and the
// OS side (TUN addresses, routes in their own table, forwarding and masquerade
// on routers and exit nodes).
import { randomInt } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync, openSync, fsyncSync, closeSync, unlinkSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname as osHostname } from 'node:os';
import path from 'node:path';
import { parseHostPort, parseIPv6 } from '../net/addr.js';
import { Engine, type NodeEngine, type WorkerStatus } from '../dataplane/engine.js';
import { WorkerEngine } from '../dataplane/node-workers/pool.js';
import { KEEPALIVE_MS, ROUTER_KEEPALIVE_MS } from '../dataplane/liveness.js';
import { FilterState } from '../dataplane/filter.js';
import { TunDevice, type TunQueueDesc } from '../dataplane/tun.js';
import { SseClient } from './sse.js';
import { DEFAULT_PREFS, PrefsError, prefsForSet, prefsForUp, type PrefFlags, type Prefs } from './prefs.js';
import { applyPatch, applyPresence, checkMap, findPeer, planFromMap, type DataplanePlan, type NodeMap } from './mapplan.js';
import { VERSION } from './control.js';
import { ioSummary, type UdpIoStatus } from '../dataplane/io/types.js';
import { generateNodeKey, nodeKeyFingerprint, nodeKeyOf, signRegistration, type NodeKeyPair } from '../control/nodekey.js';
import type { OsNetDesired } from './osnet.js';

/** What the daemon needs from the OS side (OsNet implements it; tests may pass another). */
export interface OsIntegration {
  apply(d: OsNetDesired): Promise<unknown>;
  teardown(): Promise<unknown>;
}

export interface ManagedOptions {
  stateDir: string;
  tunName: string;
  /** UDP port of the node's link to its relay (0: any). */
  port: number;
  bindHost4?: string;
  bindHost6?: string | null;
  /** false: no TUN and no OS changes (tests without root). */
  tun: boolean;
  os: OsIntegration | null;
  log: (msg: string) => void;
  /** How often to check whether the relay RTT should be reported to the server (ms; default 5000). */
  latencyReportMs?: number;
  /**
   * Seconds between keepalives to the relay, for every node (default: 1 s, or
   * ROUTER_KEEPALIVE_MS while the node has approved routes).
   */
  keepaliveSecs?: number;
  /** Packet worker threads (default 1: the engine on the main thread; see node-workers/pool.ts). */
  workers?: number;
}

interface Persisted {
  schema: 1;
  prefs: Prefs;
  /**
   * The node key the server knows this node by (its registration); the identity
   * across restarts. State files written before keys were proven hold an
   * unprovable key here until the next login moves the node to its proven key.
   */
  node_key: string;
  /** Ed25519 private key (PKCS#8 DER, base64) whose public key the node registers with; made at start when absent (older state files). */
  node_private_key?: string;
  token: string | null;
  node: { id: number; name: string; tenant: string } | null;
  want_running: boolean;
  last_event_id: string | null;
}

/** Milliseconds as shown and reported: two decimals. */
const round2 = (ms: number): number => Math.round(ms * 100) / 100;

/** The relay RTT is re-reported at least this often while it is being measured. */
const LATENCY_REFRESH_MS = 60_000;

export class ClientError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export type BackendState = 'NeedsLogin' | 'Stopped' | 'Starting' | 'Running';

/** An interactive login waiting for approval (its poll secret lives only in pollLogin). */
interface PendingLogin {
  url: string;
  expiresAt: string;
  abort: AbortController;
  result: Promise<Record<string, unknown>>;
}

const TUN_MTU = 1280;
const FIRST_MAP_WAIT_MS = 20_000;

function freshState(): Persisted {
  const k = generateNodeKey();
  return { schema: 1, prefs: { ...DEFAULT_PREFS }, node_key: k.nodeKey, node_private_key: k.privateKey, token: null, node: null, want_running: false, last_event_id: null };
}

function writeAtomic(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeFileSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}

interface PingResult {
  seq: number;
  rtt_ms: number | null;
}

interface PendingPing {
  id: number;
  seq: number;
  sent: number;
  resolve: (rtt: number | null) => void;
  timer: NodeJS.Timeout;
}

export class ManagedNode {
  private st: Persisted;
  private map: NodeMap | null = null;
  private plan: DataplanePlan | null = null;
  private sse: SseClient | null = null;
  private engine: NodeEngine | null = null;
  private tun: TunDevice | null = null;
  /** Every queue of the TUN when it has one per packet worker. */
  private tunQueues: TunQueueDesc[] = [];
  /** The node's inbound filter; its flow table is in shared memory when packet workers enforce it. */
  private readonly filter: FilterState;
  private filterJson = '';
  private osJson = '';
  private serverState: { connected: boolean; error: string | null; since: number } = { connected: false, error: null, since: Date.now() };
  private hostinfoDirty = true;
  private mapWaiters: (() => void)[] = [];
  private applying: Promise<void> = Promise.resolve();
  private readonly pings = new Map<number, PendingPing>();
  private readonly lastPing = new Map<number, { rtt_ms: number | null; at: number }>();
  private applyError: string | null = null;
  private readonly startedAt = Date.now();
  private firstMapAt: number | null = null;
  private upAt: number | null = null;
  private latencyTimer: NodeJS.Timeout | null = null;
  /** The relay RTT last reported to the server (relay id, ms, when). */
  private latencySent: { relayId: number; rttMs: number; at: number } | null = null;
  private pendingLogin: PendingLogin | null = null;

  constructor(private readonly opts: ManagedOptions) {
    mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
    this.filter = (opts.workers ?? 1) > 1 ? FilterState.createShared() : new FilterState();
    this.st = this.load();
  }

  private get stateFile(): string {
    return path.join(this.opts.stateDir, 'state.json');
  }

  private get mapFile(): string {
    return path.join(this.opts.stateDir, 'netmap.json');
  }

  private load(): Persisted {
    if (existsSync(this.stateFile)) {
      try {
        const v = JSON.parse(readFileSync(this.stateFile, 'utf8')) as Persisted;
        if (v.schema === 1) {
          const st: Persisted = { ...v, prefs: { ...DEFAULT_PREFS, ...v.prefs } };
          const mode = statSync(this.stateFile).mode & 0o777;
          if (mode & 0o077) {
            chmodSync(this.stateFile, 0o600);
            this.opts.log(`${this.stateFile} was readable by others (mode ${mode.toString(8)}): now 0600; it holds the node's private key and token`);
          }
          let valid = false;
          try {
            valid = st.node_private_key !== undefined && nodeKeyOf(st.node_private_key) !== '';
          } catch {
            this.opts.log(`${this.stateFile}: the node private key is not usable; a new one is made (the next larktun up proves it)`);
          }
          if (!valid) {
            // A state file from before node keys were proven: its node_key has no
            // private key here. Make one now; the next login proves it (the node
            // token shows the server it is the same node) and moves the node to it.
            st.node_private_key = generateNodeKey().privateKey;
            this.st = st;
            this.save();
          }
          return st;
        }
      } catch (err) {
        this.opts.log(`${this.stateFile}: unreadable (${(err as Error).message}); starting logged out`);
      }
    }
    return freshState();
  }

  /** The key pair the node registers with (its stored private key and that key's public half). */
  private identity(): NodeKeyPair {
    const privateKey = this.st.node_private_key as string; // load() guarantees a valid one
    return { nodeKey: nodeKeyOf(privateKey), privateKey };
  }

  /**
   * Registers with the server: a nonce from /register/challenge, signed with the
   * node key, proves the node holds it. `priorToken`: the node token of a node
   * whose registered key is not this one (state from before keys were proven).
   */
  private async register(server: string, authKey: string, pair: NodeKeyPair, prefs: Prefs, priorToken: string | null): Promise<Record<string, unknown>> {
    const ch = await this.apiAt(server, '/node/v1/register/challenge', { auth_key: authKey }, null);
    const nonce = String(ch['nonce']);
    const tenant = String(ch['tenant']);
    return this.apiAt(server, '/node/v1/register', {
      auth_key: authKey,
      node_key: pair.nodeKey,
      nonce,
      signature: signRegistration(pair.privateKey, nonce, pair.nodeKey, tenant),
      ...this.hostinfoBody(prefs),
      ...(prefs.advertiseTags.length ? { tags: prefs.advertiseTags } : {}),
    }, priorToken);
  }

  /**
   * A node registered before node keys were proven (its state's node_key is not
   * its private key's) moves to its own key with its token: no auth key needed,
   * same node and token. Nothing to do for a proven node.
   */
  private async proveKey(server: string): Promise<void> {
    const pair = this.identity();
    if (!this.st.token || this.st.node_key === pair.nodeKey) return;
    const ch = await this.apiAt(server, '/node/v1/key/challenge', {}, this.st.token);
    const nonce = String(ch['nonce']);
    await this.apiAt(server, '/node/v1/key', { node_key: pair.nodeKey, nonce, signature: signRegistration(pair.privateKey, nonce, pair.nodeKey, String(ch['tenant'])) }, this.st.token);
    this.st.node_key = pair.nodeKey;
    this.save();
    this.opts.log(`node key proven: ${pair.nodeKey}`);
  }

  private save(): void {
    writeAtomic(this.stateFile, `${JSON.stringify(this.st, null, 2)}\n`);
  }

  /** At daemon start: resume a node that was up (with its saved map), else wait for `up`. */
  async init(): Promise<void> {
    if (!this.st.want_running || !this.st.token) return;
    if (existsSync(this.mapFile)) {
      try {
        this.map = checkMap(JSON.parse(readFileSync(this.mapFile, 'utf8')));
        await this.applyMap();
        this.opts.log(`applied the saved network map (version ${this.map.version}) while connecting to ${this.st.prefs.loginServer}`);
      } catch (err) {
        this.opts.log(`saved network map not usable: ${(err as Error).message}`);
      }
    }
    this.startSession();
  }

  /** The live data-plane engine (null while stopped); for metrics, read only. */
  get liveEngine(): NodeEngine | null {
    return this.engine;
  }

  /** The node filter's flow-tracking counters; for metrics, read only. */
  get filterCounters(): Record<string, number> {
    return this.engine?.filterCounters() ?? this.filter.counters.toJSON();
  }

  get backendState(): BackendState {
    if (!this.st.token) return 'NeedsLogin';
    if (!this.st.want_running) return 'Stopped';
    return this.map && this.engine !== null ? 'Running' : 'Starting';
  }

  // ---- server API -----------------------------------------------------------

  private async api(pathName: string, body: unknown, token: string | null): Promise<Record<string, unknown>> {
    const server = this.st.prefs.loginServer;
    if (!server) throw new ClientError('needs_login', 'no login server: run larktun up --login-server URL --authkey KEY');
    return this.apiAt(server, pathName, body, token);
  }

  private async apiAt(server: string, pathName: string, body: unknown, token: string | null, timeoutMs = 15_000): Promise<Record<string, unknown>> {
    let res: Response;
    try {
      res = await fetch(`${server}${pathName}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      const e = err as Error & { cause?: Error };
      throw new ClientError('server_unreachable', `cannot reach ${server}: ${e.cause?.message ?? e.message}`);
    }
    const text = await res.text();
    let json: Record<string, unknown> = {};
    try {
      json = JSON.parse(text) as Record<string, unknown>;
    } catch {
      /* not JSON */
    }
    if (!res.ok) {
      const err = json['error'] as { code?: string; message?: string } | undefined;
      throw new ClientError(err?.code ?? `http_${res.status}`, `${server}: ${err?.message ?? `HTTP ${res.status}`}`);
    }
    return json;
  }

  private hostinfoBody(p: Prefs): Record<string, unknown> {
    let useExit: string | null = p.exitNode;
    if (useExit !== null && this.map) {
      const peer = findPeer(this.map, useExit);
      if (peer) useExit = peer.name;
    }
    return {
      hostname: p.hostname ?? osHostname(),
      routes: p.advertiseRoutes,
      exit_node: p.advertiseExitNode,
      use_exit_node: useExit,
      os: process.platform,
      version: VERSION,
    };
  }

  private async pushHostinfo(): Promise<void> {
    if (!this.st.token) return;
    this.hostinfoDirty = false;
    try {
      await this.api('/node/v1/hostinfo', this.hostinfoBody(this.st.prefs), this.st.token);
    } catch (err) {
      this.hostinfoDirty = true; // sent again when the stream reconnects
      throw err;
    }
  }

  // ---- session --------------------------------------------------------------

  /**
   * Reports the measured round-trip time to the relay (keepalive echoes) to the
   * server, which shows it as the node's relay_rtt_ms: when first measured, when
   * it moved by more than 20 % (and 2 ms), and at least every LATENCY_REFRESH_MS.
   */
  private async reportLatency(): Promise<void> {
    const relay = this.plan?.relay;
    if (!this.st.token || !relay || !this.engine || !this.serverState.connected) return;
    const rp = this.engine.peer(relay.relay_link_id);
    const now = Date.now();
    if (!rp || rp.rttSmoothMs < 0 || now - rp.rttAtMs > 30_000) return;
    const rtt = round2(rp.rttSmoothMs);
    const last = this.latencySent;
    if (last && last.relayId === relay.id && now - last.at < LATENCY_REFRESH_MS && Math.abs(rtt - last.rttMs) <= Math.max(2, last.rttMs * 0.2)) return;
    this.latencySent = { relayId: relay.id, rttMs: rtt, at: now };
    await this.api('/node/v1/latency', { relays: [{ relay_id: relay.id, rtt_ms: rtt }] }, this.st.token);
  }

  private startSession(): void {
    this.sse?.stop();
    if (this.latencyTimer === null) {
      this.latencyTimer = setInterval(() => {
        this.reportLatency().catch((err: unknown) => {
          this.latencySent = null;
          this.opts.log(`latency report: ${(err as Error).message}`);
        });
      }, this.opts.latencyReportMs ?? 5000);
      this.latencyTimer.unref();
    }
    const server = this.st.prefs.loginServer!;
    const sse = new SseClient({
      url: `${server}/node/v1/stream`,
      token: () => this.st.token ?? '',
      idleMs: 5000,
      fatalStatus: (status) => status === 401,
      onState: (s) => {
        if (s.state === 'open') {
          this.serverState = { connected: true, error: null, since: Date.now() };
          if (this.hostinfoDirty) void this.pushHostinfo().catch((err: unknown) => this.opts.log(`hostinfo: ${(err as Error).message}`));
        } else if (s.state === 'down') {
          if (this.serverState.connected) this.opts.log(`lost the control server (${s.error}); forwarding with the last map, reconnecting`);
          this.serverState = { connected: false, error: s.error, since: this.serverState.connected ? Date.now() : this.serverState.since };
          if (s.retryInMs < 0) {
            this.opts.log(`control server refused this node (${s.error}): log in again with larktun up --authkey KEY`);
            this.serverState.error = `refused: ${s.error}; run larktun up --authkey KEY`;
          }
        }
      },
      onEvent: (e) => this.onEvent(e.event, e.data, e.id),
    });
    this.sse = sse;
    sse.start(this.st.last_event_id);
  }

  private onEvent(event: string, data: string, id: string | null): void {
    try {
      if (event === 'map') this.setMap(checkMap(JSON.parse(data)), id);
      else if (event === 'patch' && this.map) this.setMap(applyPatch(this.map, JSON.parse(data) as Record<string, unknown>), id);
      else if (event === 'peers' && this.map) {
        const d = JSON.parse(data) as { version: number; online: Record<string, boolean> };
        this.map = applyPresence(this.map, d.version, d.online);
      } else if (event === 'unchanged') {
        this.mapWaiters.splice(0).forEach((w) => w());
      } else if (event === 'end') {
        const reason = (JSON.parse(data) as { reason?: string }).reason ?? 'ended';
        this.opts.log(`control server ended the stream: ${reason}`);
        if (reason === 'node deleted' || reason === 'tenant deleted') {
          this.serverState.error = `${reason}: log in again with larktun up --authkey KEY`;
          this.sse?.stop();
        }
      }
    } catch (err) {
      this.opts.log(`bad ${event} event from the control server (kept the previous map): ${(err as Error).message}`);
    }
  }

  private setMap(map: NodeMap, id: string | null): void {
    const first = this.map === null;
    this.map = map;
    if (id !== null && id !== this.st.last_event_id) {
      this.st.last_event_id = id;
      this.save();
    }
    try {
      writeAtomic(this.mapFile, JSON.stringify(map));
    } catch (err) {
      this.opts.log(`cannot save the network map: ${(err as Error).message}`);
    }
    if (first && this.firstMapAt === null) this.firstMapAt = Date.now();
    void this.applyMap().finally(() => this.mapWaiters.splice(0).forEach((w) => w()));
  }

  /** Serialised: maps that arrive during an apply are applied after it, newest state wins. */
  private applyMap(): Promise<void> {
    this.applying = this.applying.then(() => this.applyNow()).catch((err: unknown) => {
      this.applyError = (err as Error).message;
      this.opts.log(`applying the network map failed: ${(err as Error).message}`);
    });
    return this.applying;
  }

  private async applyNow(): Promise<void> {
    const map = this.map;
    if (!map || !this.st.want_running) return;
    const plan = planFromMap(map, this.st.prefs);
    this.plan = plan;
    const workers = this.opts.workers ?? 1;
    if (this.opts.tun && this.tun === null) {
      try {
        if (workers === 1) this.tun = TunDevice.open(this.opts.tunName);
        else ({ dev: this.tun, queues: this.tunQueues } = TunDevice.openQueues(this.opts.tunName, workers));
      } catch (err) {
        throw new Error(`cannot open TUN device ${this.opts.tunName}: ${(err as Error).message} (needs root or CAP_NET_ADMIN and /dev/net/tun)`);
      }
    }
    if (this.engine === null) {
      const engineOpts = {
        localId: plan.peers[0]?.localId ?? 1,
        obfuscate: true,
        peers: plan.peers,
        rules: plan.rules,
        keepaliveSecs: this.opts.keepaliveSecs ?? KEEPALIVE_MS / 1000,
        listenPorts: [this.opts.port],
        bindHost4: this.opts.bindHost4,
        bindHost6: this.opts.bindHost6,
        log: this.opts.log,
      };
      if (workers === 1) {
        const engine = new Engine({ ...engineOpts, tun: this.tun });
        engine.setFilter(this.filter);
        await engine.start();
        this.engine = engine;
        this.tun?.start(engine.onTunPacket, engine.counters, engine.refreshClock);
      } else {
        const pool = new WorkerEngine({ ...engineOpts, workers, tun: this.tun ? { dev: this.tun, queues: this.tunQueues } : null });
        pool.setFilter(this.filter);
        await pool.start();
        this.engine = pool;
      }
    } else {
      this.engine.setPeers(plan.peers);
      this.engine.setRules(plan.rules);
    }
    if (this.opts.keepaliveSecs === undefined) this.engine.setKeepaliveInterval(map.self.approved_routes.length > 0 ? ROUTER_KEEPALIVE_MS : KEEPALIVE_MS);
    const fj = JSON.stringify(plan.filter);
    if (fj !== this.filterJson) {
      this.engine.setFilterRules(plan.filter);
      this.filterJson = fj;
    }
    if (this.opts.os && this.tun) {
      const desired: OsNetDesired = {
        dev: this.tun.name,
        mtu: TUN_MTU,
        ...plan.os,
        exclude: await this.underlayHosts(plan),
      };
      const dj = JSON.stringify(desired);
      if (dj !== this.osJson) {
        await this.opts.os.apply(desired);
        this.osJson = dj;
      }
    }
    this.applyError = null;
    if (plan.exitProblem && this.st.prefs.exitNode !== null) this.opts.log(plan.exitProblem);
  }

  /** Relay endpoints and the control server: they stay on the underlay even with an exit node. */
  private async underlayHosts(plan: DataplanePlan): Promise<string[]> {
    const hosts = new Set<string>();
    for (const e of plan.relay?.endpoints ?? []) {
      const hp = parseHostPort(e);
      if (hp) hosts.add(hp.host);
    }
    if (this.st.prefs.loginServer) hosts.add(new URL(this.st.prefs.loginServer).hostname.replace(/^\[|\]$/g, ''));
    const out = new Set<string>();
    for (const h of hosts) {
      if (isIP(h)) out.add(h);
      else {
        try {
          for (const r of await lookup(h, { all: true })) out.add(r.address);
        } catch {
          /* unresolvable now; the route stays as it was */
        }
      }
    }
    return [...out].sort();
  }

  private async stopDataplane(): Promise<void> {
    await this.applying.catch(() => undefined);
    for (const p of this.pings.values()) {
      clearTimeout(p.timer);
      p.resolve(null);
    }
    this.pings.clear();
    if (this.engine) await this.engine.stop();
    this.engine = null;
    if (this.opts.os) await this.opts.os.teardown().catch((err: unknown) => this.opts.log(`OS teardown: ${(err as Error).message}`));
    this.osJson = '';
    this.tun?.close();
    this.tun = null;
    this.tunQueues = [];
    this.filterJson = '';
  }

  private waitForMap(ms: number): Promise<boolean> {
    if (this.map && this.backendState === 'Running') return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), ms);
      this.mapWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  // ---- verbs ----------------------------------------------------------------

  async up(flags: PrefFlags, authKey: string | null, reset: boolean, interactive: { tenant: string } | null = null): Promise<Record<string, unknown>> {
    const t0 = Date.now();
    let prefs: Prefs;
    try {
      prefs = prefsForUp(this.st.token ? this.st.prefs : null, flags, reset);
    } catch (err) {
      if (err instanceof PrefsError) throw new ClientError('bad_flags', err.message);
      throw err;
    }
    if (!prefs.loginServer) throw new ClientError('needs_login', 'this node has never logged in: give --login-server URL and --authkey KEY (or --tenant NAME to log in interactively)');
    const serverChanged = this.st.prefs.loginServer !== null && prefs.loginServer !== this.st.prefs.loginServer;
    const tagsChanged = this.st.token !== null && JSON.stringify(prefs.advertiseTags) !== JSON.stringify(this.st.prefs.advertiseTags);
    const mustLogin = !this.st.token || serverChanged || authKey !== null;
    if (mustLogin && authKey === null) {
      if (interactive !== null) return this.startInteractiveLogin(prefs, interactive.tenant, serverChanged);
      throw new ClientError('needs_login', serverChanged ? `switching to ${prefs.loginServer} needs --authkey KEY (or --tenant NAME to log in interactively)` : 'this node is not logged in: give --authkey KEY, or --tenant NAME to log in interactively');
    }
    if (tagsChanged && authKey === null) throw new ClientError('needs_login', 'changing --advertise-tags needs a new login: give --authkey KEY');
    if (prefs.exitNode !== null && this.map && !serverChanged) this.checkExitNode(prefs.exitNode);
    let login: Record<string, unknown> | null = null;
    if (authKey !== null) {
      // A new server gets a new identity (and never this server's token).
      const pair = serverChanged ? generateNodeKey() : this.identity();
      const priorToken = !serverChanged && this.st.token !== null && this.st.node_key !== pair.nodeKey ? this.st.token : null;
      login = await this.register(prefs.loginServer, authKey, pair, prefs, priorToken);
      this.cancelInteractiveLogin('replaced by a login with an auth key');
      await this.adoptLogin(login, pair, serverChanged);
    }
    if (authKey === null && !serverChanged) {
      await this.proveKey(prefs.loginServer).catch((err: unknown) => this.opts.log(`proving the node key (the node keeps working with its token): ${(err as Error).message}`));
    }
    return this.finishUp(prefs, login, mustLogin, t0);
  }

  /** Takes the node token and identity a registration (or an approved interactive login) gave. */
  private async adoptLogin(r: Record<string, unknown>, pair: NodeKeyPair, serverChanged: boolean): Promise<void> {
    const node = r['node'] as { id: number; name: string };
    if (serverChanged || (this.st.node && this.st.node.id !== node.id)) {
      await this.stopDataplane();
      this.map = null;
      this.st.last_event_id = null;
    }
    this.st.node_key = pair.nodeKey;
    this.st.node_private_key = pair.privateKey;
    this.st.token = String(r['token']);
    this.st.node = { id: node.id, name: node.name, tenant: String(r['tenant']) };
  }

  /** The rest of up once logged in: save, connect (or reconnect), wait for the first map. */
  private async finishUp(prefs: Prefs, login: Record<string, unknown> | null, mustLogin: boolean, t0: number): Promise<Record<string, unknown>> {
    const serverWarning = login !== null && typeof login['warning'] === 'string' ? login['warning'] : null;
    this.st.prefs = prefs;
    this.st.want_running = true;
    this.save();
    this.hostinfoDirty = true;
    this.upAt = t0;
    if (!this.sse || mustLogin) this.startSession();
    else await this.pushHostinfo().catch(() => undefined);
    if (this.map) await this.applyMap();
    const ok = await this.waitForMap(FIRST_MAP_WAIT_MS);
    return {
      state: this.backendState,
      logged_in: login !== null,
      node: this.st.node,
      addresses: this.map?.self.addresses ?? [],
      ...(login !== null && typeof login['approved_by'] === 'string' ? { approved_by: login['approved_by'] } : {}),
      ...(ok ? {} : { note: `no network map yet from ${prefs.loginServer}; the daemon keeps trying (see larktun status)` }),
      ...(this.plan?.exitProblem && prefs.exitNode !== null ? { warning: serverWarning ? `${serverWarning}; ${this.plan.exitProblem}` : this.plan.exitProblem } : serverWarning ? { warning: serverWarning } : {}),
      elapsed_ms: Date.now() - t0,
    };
  }

  // ---- interactive login (larktun up without an auth key; src/control/nodelogin.ts) ----

  /**
   * Starts an interactive login: proves the node key to the tenant, gets the URL
   * for a user to approve at, and polls in the background (the poll secret stays
   * in this process). Answers at once with the URL; `loginWait` waits for the end.
   */
  private async startInteractiveLogin(prefs: Prefs, tenant: string, serverChanged: boolean): Promise<Record<string, unknown>> {
    const server = prefs.loginServer as string;
    this.cancelInteractiveLogin('replaced by a new larktun up');
    const pair = serverChanged ? generateNodeKey() : this.identity();
    const ch = await this.apiAt(server, '/node/v1/login/challenge', { tenant }, null);
    const nonce = String(ch['nonce']);
    const r = await this.apiAt(server, '/node/v1/login', {
      tenant: String(ch['tenant']), node_key: pair.nodeKey, nonce,
      signature: signRegistration(pair.privateKey, nonce, pair.nodeKey, String(ch['tenant'])),
      ...this.hostinfoBody(prefs),
      ...(prefs.advertiseTags.length ? { tags: prefs.advertiseTags } : {}),
    }, null);
    const url = typeof r['url'] === 'string' && /^https?:\/\//.test(r['url']) ? r['url'] : `${server}${String(r['path'])}`;
    const abort = new AbortController();
    const pending: PendingLogin = { url, expiresAt: String(r['expires_at']), abort, result: null as unknown as Promise<Record<string, unknown>> };
    pending.result = this.pollLogin(server, String(r['login_id']), String(r['poll_secret']), Date.parse(pending.expiresAt), abort.signal).then(async (done) => {
      if (this.pendingLogin !== pending) throw new ClientError('login_cancelled', 'this login was replaced by another larktun up');
      this.pendingLogin = null;
      await this.adoptLogin(done, pair, serverChanged);
      this.opts.log(`logged in interactively as node ${String((done['node'] as { name: string }).name)}, approved by ${String(done['approved_by'])}`);
      return this.finishUp(prefs, done, true, Date.now());
    }, (err: unknown) => {
      if (this.pendingLogin === pending) this.pendingLogin = null;
      throw err;
    });
    pending.result.catch(() => undefined); // observed by loginWait; never unhandled
    this.pendingLogin = pending;
    this.opts.log(`interactive login started: waiting for approval at ${url}`);
    return { state: 'NeedsLogin', auth_url: url, key_fingerprint: nodeKeyFingerprint(pair.nodeKey), expires_at: pending.expiresAt, node: null, addresses: [] };
  }

  private async pollLogin(server: string, loginId: string, pollSecret: string, expiresAt: number, signal: AbortSignal): Promise<Record<string, unknown>> {
    let failures = 0;
    for (;;) {
      if (signal.aborted) throw new ClientError('login_cancelled', String(signal.reason ?? 'the login was cancelled'));
      try {
        const r = await this.apiAt(server, '/node/v1/login/poll', { login_id: loginId, poll_secret: pollSecret, wait_s: 25 }, null, 40_000);
        failures = 0;
        if (r['state'] === 'approved') return r;
      } catch (err) {
        if (err instanceof ClientError && ['login_rejected', 'login_expired', 'login_used', 'login_unknown', 'login_node_gone'].includes(err.code)) throw err;
        // the server is unreachable or restarting: keep trying until the link expires
        if (Date.now() >= expiresAt) throw new ClientError('login_expired', `the login link expired while ${server} could not be reached (${(err as Error).message})`);
        failures++;
        this.opts.log(`waiting for login approval: ${(err as Error).message}; retrying`);
        await new Promise((res) => setTimeout(res, Math.min(10_000, 500 * 2 ** Math.min(failures, 5))));
      }
    }
  }

  private cancelInteractiveLogin(why: string): void {
    const p = this.pendingLogin;
    if (!p) return;
    this.pendingLogin = null;
    p.abort.abort(why);
  }

  /** Waits for the pending interactive login to end (approved: the result of up); cancels it after `timeoutMs`. */
  async loginWait(timeoutMs: number): Promise<Record<string, unknown>> {
    const p = this.pendingLogin;
    if (!p) throw new ClientError('no_pending_login', 'no interactive login is pending: run larktun up --login-server URL --tenant NAME');
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_res, rej) => {
      timer = setTimeout(() => {
        this.cancelInteractiveLogin('gave up waiting');
        rej(new ClientError('login_timeout', `no approval within ${Math.round(timeoutMs / 1000)} s: the login was cancelled (run larktun up again for a new link)`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([p.result, timeout]);
    } catch (err) {
      if (err instanceof ClientError && err.code === 'login_rejected') throw new ClientError('login_rejected', `login rejected: ${err.message.replace(/^[^ ]+: /, '')}`);
      if (err instanceof ClientError && err.code === 'login_expired') throw new ClientError('login_expired', `login link expired before anyone approved it: ${err.message.replace(/^[^ ]+: /, '')}`);
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  private checkExitNode(wanted: string): void {
    if (!this.map) return;
    const peer = findPeer(this.map, wanted);
    const offered = this.map.peers.filter((p) => p.exit_node).map((p) => p.name);
    if (!peer) {
      throw new ClientError('unknown_exit_node', `--exit-node: no peer named "${wanted}" (by name or IP); exit nodes offered to this node: ${offered.join(', ') || 'none'}`);
    }
    if (!peer.exit_node) {
      throw new ClientError('unknown_exit_node', `--exit-node: "${peer.name}" is not an exit node offered to this node; exit nodes offered: ${offered.join(', ') || 'none'}`);
    }
  }

  async set(flags: PrefFlags): Promise<Record<string, unknown>> {
    if (!this.st.token) throw new ClientError('needs_login', 'this node is not logged in: run larktun up --login-server URL --authkey KEY');
    let next: Prefs;
    try {
      next = prefsForSet(this.st.prefs, flags);
    } catch (err) {
      if (err instanceof PrefsError) throw new ClientError('bad_flags', err.message);
      throw err;
    }
    if (flags.exitNode !== undefined && next.exitNode !== null) this.checkExitNode(next.exitNode);
    this.st.prefs = next;
    this.save();
    this.hostinfoDirty = true;
    let note: string | undefined;
    try {
      await this.pushHostinfo();
    } catch (err) {
      note = `saved; the server will be told when it is reachable (${(err as Error).message})`;
    }
    if (this.map) await this.applyMap();
    return { prefs: this.st.prefs, ...(note ? { note } : {}) };
  }

  async down(): Promise<Record<string, unknown>> {
    this.st.want_running = false;
    this.save();
    this.sse?.stop();
    this.sse = null;
    await this.stopDataplane();
    this.plan = null;
    this.serverState = { connected: false, error: null, since: Date.now() };
    return { state: this.backendState };
  }

  async logout(): Promise<Record<string, unknown>> {
    this.cancelInteractiveLogin('logged out');
    await this.down();
    this.map = null;
    this.plan = null;
    this.st = freshState();
    this.save();
    if (existsSync(this.mapFile)) unlinkSync(this.mapFile);
    return { state: this.backendState };
  }

  async shutdown(): Promise<void> {
    this.sse?.stop();
    if (this.latencyTimer) clearInterval(this.latencyTimer);
    this.latencyTimer = null;
    await this.stopDataplane();
  }

  exitNodes(): Record<string, unknown>[] {
    if (!this.map) return [];
    const online = new Set(this.map.online);
    return this.map.peers
      .filter((p) => p.exit_node)
      .map((p) => ({ id: p.id, name: p.name, addresses: p.addresses, online: online.has(p.id), selected: this.map!.exit_node === p.id }));
  }

  // ---- ping over the overlay ------------------------------------------------

  private readonly onTunIntercept = (pkt: Buffer, len: number): boolean => {
    // An ICMP (IPv4) or ICMPv6 echo reply addressed to us, with one of our ids.
    let off: number;
    if (len >= 28 && pkt[0]! >> 4 === 4 && pkt[9] === 1) {
      off = (pkt[0]! & 15) * 4;
      if (len < off + 8 || pkt[off] !== 0) return false;
    } else if (len >= 48 && pkt[0]! >> 4 === 6 && pkt[6] === 58) {
      off = 40;
      if (pkt[off] !== 129) return false;
    } else return false;
    const id = pkt.readUInt16BE(off + 4);
    const p = this.pings.get(id);
    if (!p || pkt.readUInt16BE(off + 6) !== p.seq) return false;
    this.pings.delete(id);
    clearTimeout(p.timer);
    p.resolve(performance.now() - p.sent);
    if (this.pings.size === 0) this.engine?.setInterceptor(null);
    return true;
  };

  private pingOnce(src: Buffer, dst: Buffer, seq: number, timeoutMs: number): Promise<number | null> {
    const engine = this.engine;
    if (!engine) return Promise.resolve(null);
    let id = randomInt(1, 65535);
    while (this.pings.has(id)) id = randomInt(1, 65535);
    const pkt = src.length === 4 ? echoRequest4(src, dst, id, seq) : echoRequest6(src, dst, id, seq);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pings.delete(id);
        if (this.pings.size === 0) this.engine?.setInterceptor(null);
        resolve(null);
      }, timeoutMs);
      this.pings.set(id, { id, seq, sent: performance.now(), resolve, timer });
      engine.setInterceptor(this.onTunIntercept);
      engine.inject(pkt, pkt.length);
    });
  }

  /**
   * ICMP echo to a peer through the overlay. `family`: 4 or 6 forces one; by
   * default an IP target decides, else IPv4 when both ends have it.
   */
  async ping(target: string, count: number, timeoutMs: number, intervalMs: number, family: 4 | 6 | null = null): Promise<Record<string, unknown>> {
    if (!this.map || !this.engine) throw new ClientError('not_running', 'not running: larktun up first');
    const peer = findPeer(this.map, target);
    if (!peer) throw new ClientError('unknown_peer', `no peer named "${target}" (by name, DNS name or IP)`);
    const fam = family ?? (target.includes(':') ? 6 : null);
    const pick = (addrs: string[], f: 4 | 6): string | undefined => addrs.find((a) => a.includes(':') === (f === 6))?.split('/')[0];
    const both = (f: 4 | 6) => ({ self: pick(this.map!.self.addresses, f), peer: pick(peer.addresses, f), f });
    let use = both(fam ?? 4);
    if (fam === null && (!use.self || !use.peer)) use = both(6);
    if (!use.self || !use.peer) {
      const which = fam === null ? 'an IPv4 or IPv6' : `an IPv${fam}`;
      throw new ClientError('no_address', `ping needs ${which} overlay address on both ends (this node: ${this.map.self.addresses.join(', ') || 'none'}; ${peer.name}: ${peer.addresses.join(', ') || 'none'})`);
    }
    const src = ipBytes(use.self);
    const dst = ipBytes(use.peer);
    const results: PingResult[] = [];
    for (let i = 0; i < count; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, intervalMs));
      const rtt = await this.pingOnce(src, dst, i + 1, timeoutMs);
      const rttMs = rtt === null ? null : round2(rtt);
      results.push({ seq: i + 1, rtt_ms: rttMs });
      this.lastPing.set(peer.id, { rtt_ms: rttMs, at: Date.now() });
    }
    const relay = this.plan?.relay;
    const relayPeer = relay ? this.engine.peer(relay.relay_link_id) : undefined;
    return {
      peer: peer.name,
      address: use.peer,
      family: use.f,
      path: relay ? `via relay ${relay.name} (${relayPeer?.endpointText() ?? relay.endpoints[0]})` : 'no relay',
      results,
      received: results.filter((r) => r.rtt_ms !== null).length,
    };
  }

  // ---- status ---------------------------------------------------------------

  /** Brings the packet workers' I/O and TUN status up to date for status() (at once on one thread). */
  refreshStatus(): Promise<void> {
    return this.engine?.refresh() ?? Promise.resolve();
  }

  status(): Record<string, unknown> {
    const now = Date.now();
    const map = this.map;
    const online = new Set(map?.online ?? []);
    const relay = this.plan?.relay ?? null;
    const rp = relay && this.engine ? this.engine.peer(relay.relay_link_id) : undefined;
    return {
      schema_version: 1,
      version: VERSION,
      mode: 'managed',
      state: this.backendState,
      ...(this.pendingLogin ? { auth_url: this.pendingLogin.url } : {}),
      server: {
        url: this.st.prefs.loginServer,
        connected: this.serverState.connected,
        error: this.serverState.error,
        since_seconds: Math.round((now - this.serverState.since) / 1000),
      },
      self: map
        ? {
            id: map.self.id,
            name: map.self.name,
            dns_name: map.self.dns_name,
            tenant: map.tenant,
            addresses: map.self.addresses,
            tags: map.self.tags,
            user: map.self.user,
            advertised_routes: this.st.prefs.advertiseRoutes,
            approved_routes: map.self.approved_routes,
            primary_routes: map.self.primary_routes,
            exit_node_offered: this.st.prefs.advertiseExitNode,
          }
        : this.st.node,
      map_version: map?.version ?? null,
      relay: relay
        ? {
            name: relay.name,
            endpoint: rp?.endpointText() ?? relay.endpoints[0] ?? null,
            link_id: relay.link_id,
            /** Heard from the relay lately (it echoes every keepalive, so within about a second when up). */
            online: rp ? rp.online(now) : false,
            last_seen_age_seconds: rp && rp.lastSeenMs > 0 ? Math.round((now - rp.lastSeenMs) / 100) / 10 : null,
            /** Round-trip time to the relay from keepalive echoes: smoothed and last sample, ms. */
            rtt_ms: rp && rp.rttSmoothMs >= 0 ? round2(rp.rttSmoothMs) : null,
            rtt_last_ms: rp && rp.rttLastMs >= 0 ? round2(rp.rttLastMs) : null,
          }
        : null,
      peers: (map?.peers ?? []).map((p) => ({
        id: p.id,
        name: p.name,
        addresses: p.addresses,
        routes: p.allowed_ips.filter((a) => !p.addresses.includes(a)),
        tags: p.tags,
        online: online.has(p.id),
        exit_node: p.exit_node,
        last_ping_ms: this.lastPing.get(p.id)?.rtt_ms ?? null,
      })),
      routes_in_use: this.plan?.routesInUse ?? [],
      exit_node: this.st.prefs.exitNode === null ? null : { wanted: this.st.prefs.exitNode, in_use: this.plan?.exitNode?.name ?? null, problem: this.plan?.exitProblem ?? null },
      prefs: this.st.prefs,
      tun: this.tun?.name ?? null,
      tun_offload: this.engine?.tunOffload() ?? this.tun?.offloadStatus() ?? null,
      listen_ports: this.engine?.listenPorts() ?? [],
      apply_error: this.applyError,
      first_map_seconds: this.firstMapAt !== null && this.upAt !== null ? (this.firstMapAt - this.upAt) / 1000 : null,
      uptime_seconds: Math.round((now - this.startedAt) / 1000),
      counters: this.engine ? this.engine.counters.toJSON() : {},
      filter: this.filterCounters,
      udp_io: this.engine ? this.engine.ioStatus() : null,
      workers: this.engine?.workers ?? this.opts.workers ?? 1,
      per_worker: this.engine?.workerStatus() ?? [],
    };
  }
}

function checksum(b: Buffer, off: number, len: number): number {
  let sum = 0;
  for (let i = 0; i + 1 < len; i += 2) sum += b.readUInt16BE(off + i);
  if (len & 1) sum += b[off + len - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** 4 or 16 bytes of an IP literal (already known to be valid: it came from the map). */
function ipBytes(a: string): Buffer {
  if (!a.includes(':')) return Buffer.from(a.split('.').map(Number));
  const v = parseIPv6(a);
  if (v === null) throw new ClientError('bad_address', `not an IPv6 address: ${a}`);
  const b = Buffer.alloc(16);
  b.writeBigUInt64BE(v >> 64n, 0);
  b.writeBigUInt64BE(v & 0xffffffffffffffffn, 8);
  return b;
}

const PING_PAYLOAD = 'larktun ping';

/** An IPv4 ICMP echo request (header and ICMP checksums filled in). */
export function echoRequest4(src: Buffer, dst: Buffer, id: number, seq: number): Buffer {
  const pkt = Buffer.alloc(20 + 8 + 32);
  pkt[0] = 0x45;
  pkt.writeUInt16BE(pkt.length, 2);
  pkt.writeUInt16BE(randomInt(0, 65535), 4);
  pkt[8] = 64;
  pkt[9] = 1;
  src.copy(pkt, 12);
  dst.copy(pkt, 16);
  pkt.writeUInt16BE(checksum(pkt, 0, 20), 10);
  pkt[20] = 8; // echo request
  pkt.writeUInt16BE(id, 24);
  pkt.writeUInt16BE(seq, 26);
  pkt.write(PING_PAYLOAD, 28);
  pkt.writeUInt16BE(checksum(pkt, 20, pkt.length - 20), 22);
  return pkt;
}

/** An IPv6 ICMPv6 echo request; the checksum covers the pseudo-header (RFC 8200 §8.1). */
export function echoRequest6(src: Buffer, dst: Buffer, id: number, seq: number): Buffer {
  const icmpLen = 8 + 32;
  const pkt = Buffer.alloc(40 + icmpLen);
  pkt[0] = 0x60;
  pkt.writeUInt16BE(icmpLen, 4);
  pkt[6] = 58; // next header: ICMPv6
  pkt[7] = 64; // hop limit
  src.copy(pkt, 8);
  dst.copy(pkt, 24);
  pkt[40] = 128; // echo request
  pkt.writeUInt16BE(id, 44);
  pkt.writeUInt16BE(seq, 46);
  pkt.write(PING_PAYLOAD, 48);
  const pseudo = Buffer.alloc(40 + icmpLen);
  src.copy(pseudo, 0);
  dst.copy(pseudo, 16);
  pseudo.writeUInt32BE(icmpLen, 32);
  pseudo[39] = 58;
  pkt.copy(pseudo, 40, 40);
  pkt.writeUInt16BE(checksum(pseudo, 0, pseudo.length), 42);
  return pkt;
}

/** Status for people. */
export function managedStatusText(s: Record<string, unknown>): string {
  const st = s as {
    state: string;
    auth_url?: string;
    server: { url: string | null; connected: boolean; error: string | null };
    self: { name: string; dns_name?: string; addresses?: string[]; tenant?: string; approved_routes?: string[]; primary_routes?: string[] } | null;
    relay: { name: string; endpoint: string | null; online: boolean; last_seen_age_seconds: number | null; rtt_ms?: number | null } | null;
    peers: { name: string; addresses: string[]; online: boolean; exit_node: boolean; routes: string[]; last_ping_ms: number | null }[];
    routes_in_use: string[];
    exit_node: { wanted: string; in_use: string | null; problem: string | null } | null;
    udp_io?: UdpIoStatus | null;
    workers?: number;
    per_worker?: WorkerStatus[];
  };
  const lines: string[] = [];
  lines.push(`state: ${st.state}${st.server.url ? `   server: ${st.server.url} (${st.server.connected ? 'connected' : `not connected${st.server.error ? `: ${st.server.error}` : ''}`})` : ''}`);
  if (st.auth_url) lines.push(`waiting for login approval at ${st.auth_url}`);
  if (st.self) {
    lines.push(`self:  ${st.self.name}${st.self.tenant ? ` (tenant ${st.self.tenant})` : ''}  ${(st.self.addresses ?? []).join(' ')}`);
    if (st.self.approved_routes?.length) lines.push(`       serving routes: ${st.self.approved_routes.join(', ')}${st.self.primary_routes?.length ? `  (primary for ${st.self.primary_routes.join(', ')})` : ''}`);
  }
  if (st.relay) {
    const heard = st.relay.last_seen_age_seconds !== null ? `last packet from it ${st.relay.last_seen_age_seconds}s ago` : 'no packet from it yet';
    const rtt = st.relay.rtt_ms !== undefined && st.relay.rtt_ms !== null ? `rtt ${st.relay.rtt_ms} ms, ` : '';
    lines.push(`relay: ${st.relay.name} ${st.relay.endpoint ?? ''} (${st.relay.online ? 'online' : 'offline'}, ${rtt}${heard})`);
  }
  if (st.udp_io) lines.push(`udp io: ${ioSummary(st.udp_io)}`);
  if ((st.workers ?? 1) > 1) {
    lines.push(`packet workers: ${st.workers}`);
    for (const w of st.per_worker ?? []) {
      const c = w.counters;
      lines.push(`  worker ${w.index}: udp io ${ioSummary(w.udp_io)}; udp rx ${c.udp_rx_packets} tx ${c.udp_tx_packets}, tun rx ${c.tun_rx_packets} tx ${c.tun_tx_packets}`);
    }
  }
  if (st.exit_node) lines.push(`exit node: ${st.exit_node.in_use ?? `none (${st.exit_node.problem ?? 'waiting'})`}`);
  if (st.routes_in_use.length) lines.push(`routes in use: ${st.routes_in_use.join(', ')}`);
  if (st.peers.length) {
    lines.push('peers:');
    const w = Math.max(...st.peers.map((p) => p.name.length), 4);
    for (const p of st.peers) {
      const extra = [p.exit_node ? 'exit node' : '', p.routes.length ? `routes ${p.routes.join(',')}` : '', p.last_ping_ms !== null ? `ping ${p.last_ping_ms} ms` : ''].filter(Boolean).join('; ');
      lines.push(`  ${p.name.padEnd(w)}  ${p.addresses.join(' ').padEnd(40)}  ${p.online ? 'online ' : 'offline'}${extra ? `  ${extra}` : ''}`);
    }
  }
  return `${lines.join('\n')}\n`;
}
