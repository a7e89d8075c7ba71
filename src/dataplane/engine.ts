// The packet engine: peers, UDP sockets, forwarding, relay, endpoint learning and
// keepalive. Receive order follows the subnetra v1 rules (DESIGN.md): find peer →
// header/epoch → decrypt → replay → keepalive? → inner source in allowed_src →
// learn endpoint → route by destination. Every failure is a silent, counted drop.
//
// Hot path: no allocation per packet of our own. Scratch buffers are made once;
// outgoing datagrams rotate through a ring so a buffer is never rewritten while
// the kernel may still be sending it.
import dgram from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { Prefix } from '../net/addr.js';
import { ForwardingTable, PrefixMatcher, type FwdRule } from '../net/lpm.js';
import { WireRx, WireTx, RxCode, HEADER_LEN, MAX_PLAINTEXT, OVERHEAD } from '../wire/index.js';
import { Counters } from './counters.js';

export const ONLINE_WINDOW_MS = 90_000;

export interface PeerSpec {
  id: number;
  name: string;
  endpoint: { host: string; port: number } | null;
  allowedSrc: Prefix[];
  psk: Buffer;
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
}

export class BindError extends Error {
  override name = 'BindError';
}

interface Sock {
  s: dgram.Socket;
  family: 4 | 6;
  port: number;
}

export class Peer {
  readonly id: number;
  readonly name: string;
  readonly configuredEndpoint: { host: string; port: number } | null;
  readonly allowedSrc: PrefixMatcher;
  readonly tx: WireTx;
  readonly rx: WireRx;
  /** Current underlay address (resolved or learned). */
  addr: string | null = null;
  port = 0;
  family: 4 | 6 = 4;
  sock: Sock | null = null;
  lastSeenMs = 0;
  rxPackets = 0;
  txPackets = 0;

  constructor(spec: PeerSpec, localId: number, obfuscate: boolean) {
    this.id = spec.id;
    this.name = spec.name;
    this.configuredEndpoint = spec.endpoint;
    this.allowedSrc = new PrefixMatcher(spec.allowedSrc);
    this.tx = new WireTx({ psk: spec.psk, from: localId, to: spec.id, obfuscate });
    this.rx = new WireRx({ psk: spec.psk, from: spec.id, to: localId, obfuscate });
  }

  online(now: number): boolean {
    return this.lastSeenMs > 0 && now - this.lastSeenMs <= ONLINE_WINDOW_MS;
  }

  endpointText(): string | null {
    if (!this.addr) return null;
    return this.family === 6 ? `[${this.addr}]:${this.port}` : `${this.addr}:${this.port}`;
  }
}

/**
 * Outgoing datagrams rotate through this many buffers. send() normally hands the
 * bytes to the kernel at once (literalLookup + libuv's try-send); only when the
 * socket buffer is full does libuv queue the request and keep a reference, and
 * the ring keeps such a buffer untouched for SEND_RING further sends.
 */
const SEND_RING = 4096;
const BUF_SIZE = 2048;

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string, family: number) => void;

function literalLookupImpl(address: string, family: unknown, callback: LookupCallback): void {
  // Node 20's dgram asks with the socket's family as a number (4 for udp4,
  // 6 for udp6); accept an options object too in case a later Node passes one.
  const fam =
    typeof family === 'number' ? family : ((family as { family?: number } | null)?.family ?? isIP(address));
  callback(null, address, fam);
}
const literalLookup = literalLookupImpl as unknown as NonNullable<dgram.SocketOptions['lookup']>;

export class Engine {
  readonly counters = new Counters();
  readonly localId: number;
  readonly obfuscate: boolean;
  readonly peers: Peer[];
  private readonly byId: (Peer | undefined)[] = new Array<Peer | undefined>(65536);
  private readonly byAddr = new Map<string, Peer[]>();
  private table: ForwardingTable;
  private readonly socks: Sock[] = [];
  private readonly tun: TunSink | null;
  private readonly plain = Buffer.alloc(BUF_SIZE);
  private readonly sendRing: Buffer[] = [];
  private sendIdx = 0;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private resolveTimer: NodeJS.Timeout | null = null;
  private readonly log: (msg: string) => void;
  readonly startedAt = Date.now();

  constructor(private readonly opts: EngineOptions) {
    this.localId = opts.localId;
    this.obfuscate = opts.obfuscate;
    this.peers = opts.peers.map((p) => new Peer(p, opts.localId, opts.obfuscate));
    for (const p of this.peers) this.byId[p.id] = p;
    this.table = ForwardingTable.build(opts.rules);
    this.tun = opts.tun;
    this.log = opts.log ?? (() => {});
    for (let i = 0; i < SEND_RING; i++) this.sendRing.push(Buffer.alloc(BUF_SIZE));
  }

  /** Binds every listen port (IPv4, and IPv6 when available), resolves endpoints, starts timers. */
  async start(): Promise<void> {
    for (const port of this.opts.listenPorts) {
      await this.bind(4, this.opts.bindHost4 ?? '0.0.0.0', port, true);
      if (this.opts.bindHost6 !== null) await this.bind(6, this.opts.bindHost6 ?? '::', port, false);
    }
    await Promise.all(this.peers.map((p) => this.resolvePeer(p)));
    if (this.opts.keepaliveSecs > 0) {
      this.keepaliveTimer = setInterval(() => this.sendKeepalives(), this.opts.keepaliveSecs * 1000);
      this.keepaliveTimer.unref();
      this.sendKeepalives();
    }
    // Host-name endpoints: re-resolve peers that went quiet (address may have moved).
    this.resolveTimer = setInterval(() => {
      const now = Date.now();
      for (const p of this.peers) {
        if (p.configuredEndpoint && isIP(p.configuredEndpoint.host) === 0 && !p.online(now)) {
          void this.resolvePeer(p);
        }
      }
    }, 30_000);
    this.resolveTimer.unref();
  }

  private bind(family: 4 | 6, host: string, port: number, required: boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      const s = dgram.createSocket({
        type: family === 4 ? 'udp4' : 'udp6',
        ipv6Only: family === 6,
        recvBufferSize: 4 << 20,
        sendBufferSize: 4 << 20,
        // Peer addresses are always literal IPs here (names are resolved by
        // resolvePeer), so skip dns.lookup and its deferral: the datagram is
        // handed to the kernel synchronously inside send().
        lookup: literalLookup,
      });
      const sock: Sock = { s, family, port };
      const onError = (err: NodeJS.ErrnoException): void => {
        s.close();
        if (required) {
          reject(new BindError(`cannot bind UDP ${family === 6 ? `[${host}]` : host}:${port}: ${err.code === 'EADDRINUSE' ? 'the port is already in use by another process' : err.message}`));
        } else {
          this.log(`IPv6 listener on port ${port} not available (${err.code ?? err.message}); continuing with IPv4 only`);
          resolve();
        }
      };
      s.once('error', onError);
      s.bind(port, host, () => {
        s.off('error', onError);
        s.on('error', () => {
          this.counters.drop_send_error++;
        });
        try {
          s.setRecvBufferSize(4 << 20);
          s.setSendBufferSize(4 << 20);
        } catch {
          /* best effort */
        }
        s.on('message', (msg, rinfo) => this.onDatagram(msg, rinfo.address, rinfo.port, sock));
        this.socks.push(sock);
        resolve();
      });
    });
  }

  private async resolvePeer(p: Peer): Promise<void> {
    const ep = p.configuredEndpoint;
    if (!ep) return;
    let addr = ep.host;
    let family: 4 | 6;
    const kind = isIP(addr);
    if (kind === 0) {
      try {
        const r = await lookup(ep.host);
        addr = r.address;
        family = r.family === 6 ? 6 : 4;
      } catch (err) {
        this.log(`peer ${p.id} (${p.name || 'unnamed'}): cannot resolve ${ep.host}: ${(err as Error).message}; will retry`);
        return;
      }
    } else {
      family = kind === 6 ? 6 : 4;
    }
    // A learned endpoint (peer roamed and authenticated) wins over the configured one.
    if (p.lastSeenMs > 0 && p.online(Date.now())) return;
    this.setEndpoint(p, addr, ep.port, family, null);
  }

  private setEndpoint(p: Peer, addr: string, port: number, family: 4 | 6, sock: Sock | null): void {
    if (p.addr) {
      const list = this.byAddr.get(p.addr);
      if (list) {
        const i = list.indexOf(p);
        if (i >= 0) list.splice(i, 1);
        if (list.length === 0) this.byAddr.delete(p.addr);
      }
    }
    p.addr = addr;
    p.port = port;
    p.family = family;
    p.sock = sock ?? this.socks.find((s) => s.family === family) ?? null;
    const list = this.byAddr.get(addr);
    if (list) list.push(p);
    else this.byAddr.set(addr, [p]);
  }

  // ---- receive path -------------------------------------------------------

  private onDatagram(msg: Buffer, addr: string, port: number, sock: Sock): void {
    const len = msg.length;
    if (len < OVERHEAD || len > OVERHEAD + MAX_PLAINTEXT) {
      this.counters.drop_malformed++;
      return;
    }
    const peer = this.findPeer(msg, len, addr, port);
    if (peer === undefined) {
      this.counters.drop_unknown_peer++;
      return;
    }
    // findPeer ran rx.matches(), which already unmasked the header.
    const code = peer.rx.openMatched(msg, len, this.plain);
    if (code !== RxCode.Accept) {
      this.countRx(code);
      return;
    }
    const c = this.counters;
    c.udp_rx_packets++;
    c.udp_rx_bytes += len;
    peer.rxPackets++;
    const now = Date.now();
    if (peer.rx.keepalive) {
      c.keepalive_rx++;
      this.touch(peer, addr, port, sock, now);
      return;
    }
    const plen = peer.rx.plaintextLen;
    const pkt = this.plain;
    if (!peer.allowedSrc.hasPacketSource(pkt, plen)) {
      if (plen < 1 || (pkt[0]! >> 4 !== 4 && pkt[0]! >> 4 !== 6)) c.drop_not_ip++;
      else c.drop_spoof++;
      return;
    }
    this.touch(peer, addr, port, sock, now);
    this.route(pkt, plen, peer);
  }

  private touch(peer: Peer, addr: string, port: number, sock: Sock, now: number): void {
    peer.lastSeenMs = now;
    if (peer.addr !== addr || peer.port !== port || peer.sock !== sock) {
      if (peer.addr !== null) this.counters.endpoint_changes++;
      this.setEndpoint(peer, addr, port, sock.family, sock);
    }
  }

  private findPeer(msg: Buffer, len: number, addr: string, port: number): Peer | undefined {
    if (!this.obfuscate) {
      if (len < HEADER_LEN) return undefined;
      const p = this.byId[msg.readUInt16LE(2)];
      return p !== undefined && p.rx.matches(msg, len) ? p : undefined;
    }
    // Obfuscated headers: try the peer(s) at this endpoint first, then everyone.
    const near = this.byAddr.get(addr);
    if (near !== undefined) {
      for (let i = 0; i < near.length; i++) {
        const p = near[i]!;
        if (p.port === port && p.rx.matches(msg, len)) return p;
      }
    }
    const all = this.peers;
    for (let i = 0; i < all.length; i++) {
      if (all[i]!.rx.matches(msg, len)) return all[i];
    }
    return undefined;
  }

  private countRx(code: number): void {
    const c = this.counters;
    switch (code) {
      case RxCode.OldEpoch:
        c.drop_old_epoch++;
        break;
      case RxCode.Replay:
        c.drop_replay++;
        break;
      case RxCode.AuthFail:
        c.drop_auth++;
        break;
      default:
        c.drop_malformed++;
    }
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

  /** Entry for packets read from the TUN device. */
  readonly onTunPacket = (pkt: Buffer, len: number): void => {
    this.counters.tun_rx_packets++;
    this.route(pkt, len, null);
  };

  private sendTo(peer: Peer, payload: Buffer, len: number, keepalive: boolean): boolean {
    const c = this.counters;
    if (len > MAX_PLAINTEXT) {
      c.drop_oversized++;
      return false;
    }
    const sock = peer.sock;
    if (peer.addr === null || sock === null) {
      c.drop_no_endpoint++;
      return false;
    }
    const out = this.sendRing[this.sendIdx]!;
    this.sendIdx = (this.sendIdx + 1) % SEND_RING;
    const n = peer.tx.seal(payload, 0, len, out, keepalive);
    sock.s.send(out, 0, n, peer.port, peer.addr);
    c.udp_tx_packets++;
    c.udp_tx_bytes += n;
    peer.txPackets++;
    return true;
  }

  sendKeepalives(): void {
    for (const p of this.peers) {
      if (p.addr !== null && this.sendTo(p, this.plain, 0, true)) this.counters.keepalive_tx++;
    }
  }

  // ---- control ------------------------------------------------------------

  get rules(): readonly FwdRule[] {
    return this.table.rules;
  }

  /** Replaces the whole table in one assignment: packets see the old or the new one. */
  setRules(rules: readonly FwdRule[]): void {
    this.table = ForwardingTable.build(rules);
  }

  hasPeer(id: number): boolean {
    return this.byId[id] !== undefined;
  }

  listenPorts(): number[] {
    return [...new Set(this.socks.map((s) => s.port))];
  }

  boundAddresses(): { family: 4 | 6; port: number }[] {
    return this.socks.map((s) => ({ family: s.family, port: s.s.address().port }));
  }

  async stop(): Promise<void> {
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    if (this.resolveTimer) clearInterval(this.resolveTimer);
    await Promise.all(this.socks.map((s) => new Promise<void>((r) => s.s.close(() => r()))));
    this.socks.length = 0;
  }
}
