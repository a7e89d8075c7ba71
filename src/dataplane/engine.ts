// The packet engine: peers, UDP sockets, forwarding, relay, endpoint learning and
// keepalive. Receive order follows the subnetra v1 rules (DESIGN.md): find peer →
// header/epoch → decrypt → replay → keepalive? → inner source in allowed_src →
// learn endpoint → route by destination. Every failure is a silent, counted drop.
//
// Hot path: no allocation per packet of our own. Scratch buffers are made once;
// outgoing datagrams rotate through a ring so a buffer is never rewritten while
// the kernel may still be sending it.
import { isIP } from 'node:net';
import type { Prefix } from '../net/addr.js';
import { ForwardingTable, PrefixMatcher, type FwdRule } from '../net/lpm.js';
import { WireRx, WireTx, RxCode, HEADER_LEN, MAX_PLAINTEXT, OVERHEAD } from '../wire/index.js';
import { Counters } from './counters.js';
import { PacketFilter, type FilterState } from './filter.js';
import type { FilterRule } from '../acl/index.js';
import { BUF_SIZE, createUdpIo, type UdpIo, type UdpIoStatus, type UdpSock } from './io/index.js';
import { resolveHost } from './io/addr.js';
import { ScanLimiter, UNTRIED } from './scanlimit.js';
import { SharedEndpoint } from './workers/endpoint.js';
import type { TunOffloadStatus } from './tun.js';

export { BindError } from './io/index.js';

export const ONLINE_WINDOW_MS = 90_000;

/**
 * Wall-clock ms of packet clock 0 (see Engine.clock) for every engine of this
 * thread: one per process rather than per engine, because a daemon keeps its
 * flow table (FilterState) when it stops an engine and starts another (down,
 * up), and every time in that table must be on one clock. A worker engine's
 * packet workers take the main thread's (WorkerInit.clockBase): they share
 * one table.
 *
 * Packet times are ms since this base, small integers for 2^31 ms (24.8
 * days) of process uptime; after that they are larger numbers, which are
 * correct but boxed again (a heap number, 16 B, wherever one is handed to a
 * call that is not inlined). Re-basing would mean moving every time in the
 * shared flow table by the same amount under its lock, on every thread at
 * once; not done.
 */
export const PACKET_CLOCK_BASE = Date.now();

export interface PeerSpec {
  id: number;
  name: string;
  endpoint: { host: string; port: number } | null;
  allowedSrc: Prefix[];
  psk: Buffer;
  /** Our id on this link (default: the engine's localId). Managed nodes have one per relay. */
  localId?: number;
  /**
   * Learn the peer's address from authenticated datagrams (default true). A
   * managed node keeps its relay at the configured endpoint: a relay answering
   * from another local address must not move the node's sends off the address
   * its routing exempts from the tunnel.
   */
  roam?: boolean;
  /**
   * Packet workers only (node-workers/): this peer's state shared by every
   * worker of the engine. Absent on the single-threaded engine.
   */
  shared?: PeerShared;
}

/**
 * One peer's state in shared memory, made by the main thread of a worker
 * engine (node-workers/pool.ts) and posted to every worker: the link session
 * (one sequence counter, one epoch and replay window: newTxShared/newRxShared;
 * new ones on every key change), the learned endpoint and last-heard time
 * (SharedEndpoint) and the statistics words (PEER_STATS_*).
 */
export interface PeerShared {
  tx: Int32Array;
  rx: Int32Array;
  endpoint: SharedArrayBuffer;
  stats: SharedArrayBuffer;
}

// Float64 words of PeerShared.stats: the keepalive awaiting its echo (absolute
// ms, performance.timeOrigin + now, so any thread may time it; 0: none), the
// last and smoothed RTT, when it was taken (Date.now()), then per worker w its
// received and sent packets at PEER_STATS_PER_WORKER + 2w (+1).
export const PEER_STATS_PROBE_AT = 0;
export const PEER_STATS_RTT_LAST = 1;
export const PEER_STATS_RTT_SMOOTH = 2;
export const PEER_STATS_RTT_AT = 3;
export const PEER_STATS_PER_WORKER = 4;

/** The stats words of a peer for an engine of `workers` workers. */
export function newPeerStats(workers: number): SharedArrayBuffer {
  const b = new SharedArrayBuffer(8 * (PEER_STATS_PER_WORKER + 2 * workers));
  const f = new Float64Array(b);
  f[PEER_STATS_RTT_LAST] = -1;
  f[PEER_STATS_RTT_SMOOTH] = -1;
  return b;
}

export interface TunSink {
  write(buf: Buffer, off: number, len: number): boolean;
}

export interface EngineOptions {
  localId: number;
  obfuscate: boolean;
  peers: PeerSpec[];
  rules: FwdRule[];
  keepaliveSecs: number;
  listenPorts: number[];
  /** Address to bind; default all. Tests bind loopback. */
  bindHost4?: string;
  bindHost6?: string | null;
  tun: TunSink | null;
  log?: (msg: string) => void;
  /** UDP I/O path: batched (native recvmmsg/sendmmsg) or node:dgram; default from LARKTUN_UDP_BATCH, batched when unset. */
  udpBatch?: boolean;
  /** UDP GRO/GSO on the batched path; default from LARKTUN_UDP_OFFLOAD, on when unset. */
  udpOffload?: boolean;
  /**
   * This engine is packet worker `index` of a worker engine (node-workers/):
   * its sockets join the other workers' ports (SO_REUSEPORT), every peer has
   * `shared` state, and the main thread resolves configured endpoints (the
   * worker neither resolves nor re-resolves).
   */
  worker?: { index: number };
  /**
   * Wall-clock ms of packet clock 0 (default PACKET_CLOCK_BASE of this
   * thread). Every engine using one flow table must have the same base: the
   * packet workers of a worker engine get the main thread's.
   */
  clockBase?: number;
}

/** Engines with at most this many peers try them all without a scan budget (a scan is cheap). */
const SCAN_FREE_PEERS = 64;

/** How long a replaced link key still opens datagrams (the far end may not have switched yet). */
export const PREVIOUS_KEY_GRACE_MS = 120_000;

export class Peer {
  readonly id: number;
  name: string;
  configuredEndpoint: { host: string; port: number } | null;
  allowedSrc: PrefixMatcher;
  localId: number;
  roam: boolean;
  tx: WireTx;
  rx: WireRx;
  /** The receive side of the key before the last change, until prevUntilMs. */
  rxPrev: WireRx | null = null;
  prevUntilMs = 0;
  /** Hex of the current key (to tell a changed key from an unchanged one). */
  pskHex: string;
  /** Current underlay address (resolved or learned). */
  addr: string | null = null;
  port = 0;
  family: 4 | 6 = 4;
  sock: UdpSock | null = null;
  lastSeenMs = 0;
  rxPackets = 0;
  txPackets = 0;
  /**
   * Round-trip time to this peer, from keepalive echoes (a Larktun relay answers
   * each keepalive with one; other peers never do, so these stay unset).
   * probeAt: performance.now() of the keepalive awaiting its echo, 0 when none.
   */
  probeAt = 0;
  /** Last and smoothed (RFC 6298 style, 1/8 gain) round-trip time in ms; -1 when unmeasured. */
  rttLastMs = -1;
  rttSmoothMs = -1;
  rttAtMs = 0;
  /** Packet workers: the endpoint and stats every worker of the engine shares (null: single-threaded). */
  readonly ep: SharedEndpoint | null;
  readonly stats: Float64Array | null;

  constructor(spec: PeerSpec, localId: number, private readonly obfuscate: boolean) {
    this.id = spec.id;
    this.name = spec.name;
    this.configuredEndpoint = spec.endpoint;
    this.allowedSrc = new PrefixMatcher(spec.allowedSrc);
    this.localId = spec.localId ?? localId;
    this.roam = spec.roam ?? true;
    this.pskHex = spec.psk.toString('hex');
    const sh = spec.shared;
    this.ep = sh ? new SharedEndpoint(sh.endpoint) : null;
    this.stats = sh ? new Float64Array(sh.stats) : null;
    this.tx = new WireTx({ psk: spec.psk, from: this.localId, to: spec.id, obfuscate, shared: sh?.tx });
    this.rx = new WireRx({ psk: spec.psk, from: spec.id, to: this.localId, obfuscate, shared: sh?.rx });
  }

  /**
   * New key or local id: sends switch now; the old key still opens datagrams for a grace period.
   * `shared`: a packet worker's new session state (the main thread made it for this key).
   */
  rekey(psk: Buffer, localId: number, now: number, shared?: PeerShared): void {
    const sameId = localId === this.localId;
    this.rxPrev = sameId ? this.rx : null;
    this.prevUntilMs = sameId ? now + PREVIOUS_KEY_GRACE_MS : 0;
    this.localId = localId;
    this.pskHex = psk.toString('hex');
    this.tx = new WireTx({ psk, from: localId, to: this.id, obfuscate: this.obfuscate, shared: shared?.tx });
    this.rx = new WireRx({ psk, from: this.id, to: localId, obfuscate: this.obfuscate, shared: shared?.rx });
  }

  online(now: number): boolean {
    return this.lastSeenMs > 0 && now - this.lastSeenMs <= ONLINE_WINDOW_MS;
  }

  endpointText(): string | null {
    if (!this.addr) return null;
    return this.family === 6 ? `[${this.addr}]:${this.port}` : `${this.addr}:${this.port}`;
  }
}

/** Sees packets about to be written to the TUN; returns true when it consumed one. */
export type TunInterceptor = (pkt: Buffer, len: number) => boolean;

export class Engine implements NodeEngine {
  readonly counters = new Counters();
  readonly workers = 1;
  /** The TUN, when it is a TunDevice (for tunOffload()). */
  private tunStatus: (() => TunOffloadStatus) | null = null;
  private readonly scan = new ScanLimiter();
  readonly localId: number;
  readonly obfuscate: boolean;
  readonly peers: Peer[];
  private readonly byId: (Peer | undefined)[] = new Array<Peer | undefined>(65536);
  private readonly byAddr = new Map<string, Peer[]>();
  private table: ForwardingTable;
  private readonly udp: UdpIo;
  private readonly tun: TunSink | null;
  private readonly plain = Buffer.alloc(BUF_SIZE);
  /** The receiver that matched in findPeer (the current key or the previous one). */
  private matched: WireRx | null = null;
  private filter: FilterState | null = null;
  private intercept: TunInterceptor | null = null;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private keepaliveMs: number;
  private started = false;
  private resolveTimer: NodeJS.Timeout | null = null;
  private readonly log: (msg: string) => void;
  readonly startedAt = Date.now();
  /** Packet worker index (-1: the single-threaded engine). */
  readonly workerIndex: number;
  /**
   * The packet clock: ms since clockBase, read once per UDP receive batch and
   * once per TUN drain batch (refreshClock) instead of per packet. In Node 20
   * Date.now() is a heap number, boxed anew whenever it is handed to a call
   * that is not inlined (16 B per packet); ms since a base of this process are
   * small integers, which are not. Every per-packet time (flow table, scan
   * budget, last heard) is on this clock; what leaves the engine (lastSeenMs,
   * RTT times, the shared endpoint words) is wall-clock ms, clockBase + clock.
   */
  private readonly clock = new Float64Array(1);
  /** Wall-clock ms of packet clock 0 (see PACKET_CLOCK_BASE). */
  readonly clockBase: number;

  constructor(private readonly opts: EngineOptions) {
    this.localId = opts.localId;
    this.keepaliveMs = Math.max(0, opts.keepaliveSecs * 1000);
    this.obfuscate = opts.obfuscate;
    this.peers = opts.peers.map((p) => new Peer(p, opts.localId, opts.obfuscate));
    for (const p of this.peers) this.byId[p.id] = p;
    this.table = ForwardingTable.build(opts.rules);
    this.tun = opts.tun;
    const t = opts.tun as { offloadStatus?: () => TunOffloadStatus } | null;
    if (t !== null && typeof t.offloadStatus === 'function') this.tunStatus = () => t.offloadStatus!();
    this.log = opts.log ?? (() => {});
    this.workerIndex = opts.worker?.index ?? -1;
    this.clockBase = opts.clockBase ?? PACKET_CLOCK_BASE;
    this.clock[0] = Date.now() - this.clockBase;
    this.udp = createUdpIo({
      ports: opts.listenPorts,
      bindHost4: opts.bindHost4,
      bindHost6: opts.bindHost6,
      onDatagram: (msg, len, addr, port, sock) => this.onDatagram(msg, len, addr, port, sock),
      onBatchStart: this.refreshClock,
      onSendError: (n) => {
        this.counters.drop_send_error += n;
      },
      log: this.log,
      batch: opts.udpBatch,
      offload: opts.udpOffload,
      reusePort: opts.worker !== undefined,
    });
  }

  /** Binds every listen port (IPv4, and IPv6 when available), resolves endpoints, starts timers. */
  async start(): Promise<void> {
    await this.udp.start();
    // A packet worker: the main thread resolves endpoints into the shared words.
    const worker = this.workerIndex >= 0;
    if (!worker) await Promise.all(this.peers.map((p) => this.resolvePeer(p)));
    this.started = true;
    this.setKeepaliveInterval(this.keepaliveMs);
    // Host-name endpoints: re-resolve peers that went quiet (address may have moved).
    this.resolveTimer = setInterval(() => {
      const now = Date.now();
      for (const p of this.peers) {
        if (!worker && p.configuredEndpoint && isIP(p.configuredEndpoint.host) === 0 && !p.online(now)) {
          void this.resolvePeer(p);
        }
        if (p.rxPrev !== null && now > p.prevUntilMs) p.rxPrev = null;
      }
    }, 30_000);
    this.resolveTimer.unref();
  }

  private async resolvePeer(p: Peer): Promise<void> {
    const ep = p.configuredEndpoint;
    if (!ep) return;
    let addr: string;
    let family: 4 | 6;
    try {
      ({ addr, family } = await resolveHost(ep.host));
    } catch (err) {
      this.log(`peer ${p.id} (${p.name || 'unnamed'}): cannot resolve ${ep.host}: ${(err as Error).message}; will retry`);
      return;
    }
    // A learned endpoint (peer roamed and authenticated) wins over the configured one.
    if (p.lastSeenMs > 0 && p.online(Date.now())) return;
    if (this.byId[p.id] !== p) return; // removed meanwhile
    this.setEndpoint(p, addr, ep.port, family, null);
  }

  private unindex(p: Peer): void {
    if (!p.addr) return;
    const list = this.byAddr.get(p.addr);
    if (!list) return;
    const i = list.indexOf(p);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.byAddr.delete(p.addr);
  }

  private setEndpoint(p: Peer, addr: string, port: number, family: 4 | 6, sock: UdpSock | null): void {
    this.unindex(p);
    p.addr = addr;
    p.port = port;
    p.family = family;
    p.sock = sock ?? this.udp.sockFor(family);
    const list = this.byAddr.get(addr);
    if (list) list.push(p);
    else this.byAddr.set(addr, [p]);
  }

  /**
   * Reads the wall clock into the packet clock: the UDP layer calls it before
   * each receive batch, the TUN (TunDevice.start's onBatchStart) before each
   * drain batch. A packet source that calls neither leaves the packet times of
   * its packets at the last batch of another.
   */
  readonly refreshClock = (): void => {
    this.clock[0] = Date.now() - this.clockBase;
  };

  /** The packet clock now (ms since clockBase, as of the last refreshClock). */
  get packetClock(): number {
    return this.clock[0]!;
  }

  // ---- receive path -------------------------------------------------------

  private onDatagram(msg: Buffer, len: number, addr: string, port: number, sock: UdpSock): void {
    if (len < OVERHEAD || len > OVERHEAD + MAX_PLAINTEXT) {
      this.counters.drop_malformed++;
      return;
    }
    const peer = this.findPeer(msg, len, addr, port);
    if (peer === undefined) {
      this.counters.drop_unknown_peer++;
      return;
    }
    if (peer === UNTRIED) {
      this.counters.drop_scan_limited++;
      return;
    }
    // findPeer ran matches(), which already unmasked the header.
    const rx = this.matched!;
    const code = rx.openMatched(msg, len, this.plain);
    if (code !== RxCode.Accept) {
      this.counters.rxDrop(code);
      return;
    }
    const c = this.counters;
    c.udp_rx_packets++;
    c.udp_rx_bytes += len;
    peer.rxPackets++;
    const now = this.clock[0]!;
    if (rx.keepalive) {
      c.keepalive_rx++;
      const st = peer.stats;
      if (st !== null) {
        const at = st[PEER_STATS_PROBE_AT]!;
        if (at > 0) {
          const sample = performance.timeOrigin + performance.now() - at;
          st[PEER_STATS_PROBE_AT] = 0;
          const smooth = st[PEER_STATS_RTT_SMOOTH]!;
          st[PEER_STATS_RTT_LAST] = sample;
          st[PEER_STATS_RTT_SMOOTH] = smooth < 0 ? sample : smooth + (sample - smooth) / 8;
          st[PEER_STATS_RTT_AT] = this.clockBase + now;
        }
      } else if (peer.probeAt > 0) {
        const sample = performance.now() - peer.probeAt;
        peer.probeAt = 0;
        peer.rttLastMs = sample;
        peer.rttSmoothMs = peer.rttSmoothMs < 0 ? sample : peer.rttSmoothMs + (sample - peer.rttSmoothMs) / 8;
        peer.rttAtMs = this.clockBase + now;
      }
      this.touch(peer, addr, port, sock, now);
      return;
    }
    const plen = rx.plaintextLen;
    const pkt = this.plain;
    if (!peer.allowedSrc.hasPacketSource(pkt, plen)) {
      if (plen < 1 || (pkt[0]! >> 4 !== 4 && pkt[0]! >> 4 !== 6)) c.drop_not_ip++;
      else c.drop_spoof++;
      return;
    }
    this.touch(peer, addr, port, sock, now);
    this.route(pkt, plen, peer);
  }

  /** `now`: the packet clock; the peer's last-heard time is wall-clock ms. */
  private touch(peer: Peer, addr: string, port: number, sock: UdpSock, now: number): void {
    const ep = peer.ep;
    const at = this.clockBase + now;
    if (ep !== null) {
      // The shared last-heard time sits on the cache line every sending
      // thread reads: written at most once per millisecond.
      if (peer.lastSeenMs !== at) {
        peer.lastSeenMs = at;
        ep.lastSeenMs = at;
      }
      this.touchShared(peer, ep, addr, port, sock);
      return;
    }
    peer.lastSeenMs = at;
    if ((peer.roam || peer.addr === null) && (peer.addr !== addr || peer.port !== port || peer.sock !== sock)) {
      if (peer.addr !== null) this.counters.endpoint_changes++;
      this.setEndpoint(peer, addr, port, sock.family, sock);
    }
  }

  /** touch() of a packet worker: the endpoint is learned into the shared words, for every worker to send to. */
  private touchShared(peer: Peer, ep: SharedEndpoint, addr: string, port: number, sock: UdpSock): void {
    if (ep.refresh()) this.adoptShared(peer, ep);
    if ((peer.roam || peer.addr === null) && (peer.addr !== addr || peer.port !== port || peer.sock !== sock)) {
      if (peer.addr !== null) this.counters.endpoint_changes++;
      ep.set(addr, port, sock.family, sock.port);
      this.setEndpoint(peer, addr, port, sock.family, sock);
    }
  }

  /** Takes this worker's copy of a shared endpoint that moved (learned by another worker or set by the main thread). */
  private adoptShared(peer: Peer, ep: SharedEndpoint): void {
    if (ep.addr === null) {
      this.unindex(peer);
      peer.addr = null;
      peer.sock = null;
      return;
    }
    let sock: UdpSock | null = null;
    if (ep.localPort !== 0) {
      for (const s of this.udp.socks) if (s.family === ep.family && s.port === ep.localPort) sock = s;
    }
    this.setEndpoint(peer, ep.addr, ep.port, ep.family, sock);
  }

  /** Tries the current key, then (during its grace period) the previous one. */
  private peerMatches(p: Peer, msg: Buffer, len: number): boolean {
    if (p.rx.matches(msg, len)) {
      this.matched = p.rx;
      return true;
    }
    const prev = p.rxPrev;
    if (prev !== null && prev.matches(msg, len)) {
      this.matched = prev;
      return true;
    }
    return false;
  }

  /** The peer that sent `msg`; undefined: none; UNTRIED: not tried (scan budget spent, see ScanLimiter). */
  private findPeer(msg: Buffer, len: number, addr: string, port: number): Peer | undefined | typeof UNTRIED {
    if (!this.obfuscate) {
      if (len < HEADER_LEN) return undefined;
      const p = this.byId[msg.readUInt16LE(2)];
      return p !== undefined && this.peerMatches(p, msg, len) ? p : undefined;
    }
    // Obfuscated headers: try the peer(s) at this endpoint first, then everyone.
    const near = this.byAddr.get(addr);
    if (near !== undefined) {
      for (let i = 0; i < near.length; i++) {
        const p = near[i]!;
        if (p.port === port && this.peerMatches(p, msg, len)) return p;
      }
    }
    const all = this.peers;
    if (all.length > SCAN_FREE_PEERS && !this.scan.allow(addr, all.length, this.clock[0]!)) return UNTRIED;
    for (let i = 0; i < all.length; i++) {
      if (this.peerMatches(all[i]!, msg, len)) return all[i];
    }
    return undefined;
  }

  /** Routes an inner packet that arrived from `from` (null = our own TUN). */
  private route(pkt: Buffer, len: number, from: Peer | null): void {
    const c = this.counters;
    const v = pkt[0]! >> 4;
    if (v !== 4 && v !== 6) {
      c.drop_not_ip++;
      return;
    }
    const table = this.table;
    const ri = table.lookupPacket(pkt, len);
    if (ri < 0) {
      c.drop_no_route++;
      return;
    }
    const rule = table.rules[ri]!;
    if (rule.action === 'drop') {
      c.drop_policy++;
      return;
    }
    if (rule.target === 0) {
      if (from === null || this.tun === null) {
        // A packet from our own TUN addressed back to it, or no TUN at all.
        c.drop_no_route++;
        return;
      }
      const f = this.filter;
      if (f !== null && !f.check(pkt, len, this.clock[0]!)) {
        c.drop_filter++;
        return;
      }
      const icpt = this.intercept;
      if (icpt !== null && icpt(pkt, len)) return;
      if (this.tun.write(pkt, 0, len)) c.tun_tx_packets++;
      else c.drop_send_error++;
      return;
    }
    const to = this.byId[rule.target];
    if (to === undefined) {
      c.drop_no_route++;
      return;
    }
    if (to === from) {
      c.drop_no_reflect++;
      return;
    }
    if (this.sendTo(to, pkt, len, false) && from !== null) c.relay_packets++;
  }

  // ---- send path ----------------------------------------------------------

  /**
   * Entry for packets read from the TUN device; its times are the packet
   * clock's, so the TUN calls refreshClock before each batch (TunDevice.start).
   */
  readonly onTunPacket = (pkt: Buffer, len: number): void => {
    this.counters.tun_rx_packets++;
    const f = this.filter;
    if (f !== null) f.noteOutbound(pkt, len, this.clock[0]!);
    this.route(pkt, len, null);
  };

  /** Sends a packet of our own into the overlay as if read from the TUN (e.g. a ping). */
  inject(pkt: Buffer, len: number): void {
    // Not part of any batch (a control request): the clock may be old.
    this.refreshClock();
    const f = this.filter;
    if (f !== null) f.noteOutbound(pkt, len, this.clock[0]!);
    this.route(pkt, len, null);
  }

  private sendTo(peer: Peer, payload: Buffer, len: number, keepalive: boolean): boolean {
    const c = this.counters;
    if (len > MAX_PLAINTEXT) {
      c.drop_oversized++;
      return false;
    }
    const ep = peer.ep;
    if (ep !== null && ep.refresh()) this.adoptShared(peer, ep);
    const sock = peer.sock;
    if (peer.addr === null || sock === null) {
      c.drop_no_endpoint++;
      return false;
    }
    const out = this.udp.nextBuffer(sock);
    const n = peer.tx.seal(payload, 0, len, out, keepalive);
    this.udp.send(sock, out, n, peer.port, peer.addr);
    c.udp_tx_packets++;
    c.udp_tx_bytes += n;
    peer.txPackets++;
    return true;
  }

  sendKeepalives(): void {
    const t = performance.now();
    for (const p of this.peers) {
      const ep = p.ep;
      if (ep !== null && ep.refresh()) this.adoptShared(p, ep);
      if (p.addr !== null && this.sendTo(p, this.plain, 0, true)) {
        this.counters.keepalive_tx++;
        // The echo is timed from the newest keepalive: a lost echo costs no
        // sample, and an echo slower than the keepalive interval reads short.
        p.probeAt = t;
        if (p.stats !== null) p.stats[PEER_STATS_PROBE_AT] = performance.timeOrigin + t;
      }
    }
  }

  /**
   * Packet workers: copies this worker's counters into `f` at `off` and each
   * peer's packet counts into its shared stats (the main thread sums them).
   */
  publish(f: Float64Array, off: number): void {
    this.counters.writeTo(f, off);
    const w = this.workerIndex;
    if (w < 0) return;
    for (const p of this.peers) {
      const st = p.stats;
      if (st === null) continue;
      st[PEER_STATS_PER_WORKER + 2 * w] = p.rxPackets;
      st[PEER_STATS_PER_WORKER + 2 * w + 1] = p.txPackets;
    }
  }

  /** Hands what the UDP side queued to the kernel now (a worker stopping). */
  flushUdp(): void {
    this.udp.flush();
  }

  // ---- control ------------------------------------------------------------

  get rules(): readonly FwdRule[] {
    return this.table.rules;
  }

  /** Replaces the whole table in one assignment: packets see the old or the new one. */
  setRules(rules: readonly FwdRule[]): void {
    this.table = ForwardingTable.build(rules);
  }

  /** Enforce a packet filter on packets delivered to the TUN (null: none). */
  setFilter(f: FilterState | null): void {
    this.filter = f;
  }

  /** A new policy for the filter set with setFilter (compiled here; flows are kept, see FilterState.setFilter). */
  setFilterRules(rules: readonly FilterRule[]): void {
    this.filter?.setFilter(PacketFilter.compile(rules));
  }

  /** The filter's verdict counters (null: no filter). */
  filterCounters(): Record<string, number> | null {
    return this.filter === null ? null : this.filter.counters.toJSON();
  }

  setInterceptor(i: TunInterceptor | null): void {
    this.intercept = i;
  }

  /**
   * Makes the peer set equal to `specs`: unchanged peers keep their session,
   * counters and learned endpoint; a changed key is taken at once for sends
   * while the old one still opens datagrams for PREVIOUS_KEY_GRACE_MS; new
   * peers are resolved; missing ones are removed.
   */
  setPeers(specs: PeerSpec[]): void {
    const now = Date.now();
    const keep = new Set(specs.map((s) => s.id));
    for (let i = this.peers.length - 1; i >= 0; i--) {
      const p = this.peers[i]!;
      if (keep.has(p.id)) continue;
      this.unindex(p);
      this.byId[p.id] = undefined;
      this.peers.splice(i, 1);
    }
    for (const s of specs) {
      const p = this.byId[s.id];
      if (p === undefined) {
        const np = new Peer(s, this.localId, this.obfuscate);
        this.peers.push(np);
        this.byId[np.id] = np;
        if (this.workerIndex < 0) void this.resolvePeer(np);
        continue;
      }
      const localId = s.localId ?? this.localId;
      if (p.pskHex !== s.psk.toString('hex') || p.localId !== localId) p.rekey(s.psk, localId, now, s.shared);
      p.name = s.name;
      p.roam = s.roam ?? true;
      p.allowedSrc = new PrefixMatcher(s.allowedSrc);
      const ep = s.endpoint;
      const moved = JSON.stringify(ep) !== JSON.stringify(p.configuredEndpoint);
      p.configuredEndpoint = ep;
      if (moved && this.workerIndex < 0) {
        p.lastSeenMs = 0; // the configured endpoint changed: use it, not what was learned
        void this.resolvePeer(p);
      }
    }
  }

  hasPeer(id: number): boolean {
    return this.byId[id] !== undefined;
  }

  peer(id: number): Peer | undefined {
    return this.byId[id];
  }

  listenPorts(): number[] {
    return this.udp.ports();
  }

  /**
   * Sends keepalives every `ms` (0: none) from now on; one goes at once when
   * the interval changes on a running engine. A managed router uses a shorter
   * interval than other nodes so that its relay notices a dead path sooner.
   */
  setKeepaliveInterval(ms: number): void {
    const next = Math.max(0, ms);
    if (this.started && next === this.keepaliveMs && (next === 0 || this.keepaliveTimer !== null)) return;
    this.keepaliveMs = next;
    if (!this.started) return;
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
    if (next > 0) {
      this.keepaliveTimer = setInterval(() => this.sendKeepalives(), next);
      this.keepaliveTimer.unref();
      this.sendKeepalives();
    }
  }

  boundAddresses(): { family: 4 | 6; port: number }[] {
    return this.udp.boundAddresses();
  }

  /** The UDP I/O path and its offloads (for status). */
  ioStatus(): UdpIoStatus {
    return this.udp.status();
  }

  /** Single-threaded: everything is read live. */
  refresh(): Promise<void> {
    return Promise.resolve();
  }

  workerStatus(): WorkerStatus[] {
    return [{ index: 0, udp_io: this.udp.status(), tun_offload: this.tunOffload(), counters: this.counters.toJSON() }];
  }

  tunOffload(): TunOffloadStatus | null {
    return this.tunStatus === null ? null : this.tunStatus();
  }

  async stop(): Promise<void> {
    this.started = false;
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
    if (this.resolveTimer) clearInterval(this.resolveTimer);
    await this.udp.close();
  }
}

/** What status, metrics and the daemons read of a peer (Engine's Peer, or a worker engine's view of one). */
export interface PeerView {
  readonly id: number;
  readonly name: string;
  readonly allowedSrc: PrefixMatcher;
  readonly lastSeenMs: number;
  readonly rxPackets: number;
  readonly txPackets: number;
  readonly rttLastMs: number;
  readonly rttSmoothMs: number;
  readonly rttAtMs: number;
  online(now: number): boolean;
  endpointText(): string | null;
}

/** One packet thread of an engine, for status: its UDP path and offloads, its TUN queue, its counters. */
export interface WorkerStatus {
  index: number;
  udp_io: UdpIoStatus;
  tun_offload: TunOffloadStatus | null;
  counters: Record<string, number>;
}

/**
 * The data plane as the daemons drive it: the single-threaded Engine, or a
 * worker engine (node-workers/pool.ts) running N Engines on worker threads.
 */
export interface NodeEngine {
  readonly counters: Counters;
  readonly localId: number;
  readonly obfuscate: boolean;
  readonly peers: readonly PeerView[];
  readonly startedAt: number;
  readonly rules: readonly FwdRule[];
  /** Packet threads (1: the single-threaded engine). */
  readonly workers: number;
  setRules(rules: readonly FwdRule[]): void;
  setFilter(f: FilterState | null): void;
  /** A new policy for the filter (every thread compiles it; tracked flows are kept). */
  setFilterRules(rules: readonly FilterRule[]): void;
  /** The filter's verdict counters, summed over the packet threads (null: no filter). */
  filterCounters(): Record<string, number> | null;
  setInterceptor(i: TunInterceptor | null): void;
  inject(pkt: Buffer, len: number): void;
  setPeers(specs: PeerSpec[]): void;
  hasPeer(id: number): boolean;
  peer(id: number): PeerView | undefined;
  listenPorts(): number[];
  setKeepaliveInterval(ms: number): void;
  boundAddresses(): { family: 4 | 6; port: number }[];
  ioStatus(): UdpIoStatus;
  /** Brings ioStatus/workerStatus/tunOffload up to date (a worker engine asks its workers). */
  refresh(): Promise<void>;
  workerStatus(): WorkerStatus[];
  /** The TUN's offloads summed over its queues (null: no TUN or not known here). */
  tunOffload(): TunOffloadStatus | null;
  stop(): Promise<void>;
}
