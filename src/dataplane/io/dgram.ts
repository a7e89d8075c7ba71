// The node:dgram UDP path (the fallback of the batched one): one IPv4 and,
// where available, one IPv6-only socket per listen port, and a ring of
// outgoing buffers.
//
// Sockets are created with a literal-IP `lookup`, so `send()` hands the
// datagram to the kernel synchronously instead of after a `dns.lookup` tick
// (peer addresses are always literal here; names are resolved beforehand).
// Outgoing datagrams rotate through SEND_RING buffers: libuv keeps a reference
// only when the socket buffer is full and it must queue, and the ring keeps
// such a buffer untouched for SEND_RING further sends.
import dgram from 'node:dgram';
import { isIP } from 'node:net';
import { BindError, BUF_SIZE, zeroUdpIoStatus, type UdpIo, type UdpIoOptions, type UdpIoStatus, type UdpSock } from './types.js';

export interface DgramSock extends UdpSock {
  readonly s: dgram.Socket;
}

export const SEND_RING = 4096;

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string, family: number) => void;

function literalLookupImpl(address: string, family: unknown, callback: LookupCallback): void {
  // Node 20's dgram asks with the socket's family as a number (4 for udp4,
  // 6 for udp6); accept an options object too in case a later Node passes one.
  const fam =
    typeof family === 'number' ? family : ((family as { family?: number } | null)?.family ?? isIP(address));
  callback(null, address, fam);
}
const literalLookup = literalLookupImpl as unknown as NonNullable<dgram.SocketOptions['lookup']>;

export class DgramPorts implements UdpIo {
  readonly path = 'dgram' as const;
  readonly socks: DgramSock[] = [];
  private readonly ring: Buffer[] = [];
  private idx = 0;

  constructor(
    private readonly opts: UdpIoOptions,
    /** Why this path was taken (shown in status). */
    private readonly reason: string | null = null,
  ) {
    for (let i = 0; i < SEND_RING; i++) this.ring.push(Buffer.alloc(BUF_SIZE));
  }

  async start(): Promise<void> {
    for (const port of this.opts.ports) {
      const sock4 = await this.bind(4, this.opts.bindHost4 ?? '0.0.0.0', port, true);
      // Port 0: the IPv6 socket takes the port the kernel gave IPv4.
      const p6 = port === 0 && sock4 ? sock4.s.address().port : port;
      if (this.opts.bindHost6 !== null) await this.bind(6, this.opts.bindHost6 ?? '::', p6, false);
    }
  }

  private bind(family: 4 | 6, host: string, port: number, required: boolean): Promise<DgramSock | null> {
    return new Promise((resolve, reject) => {
      const s = dgram.createSocket({
        type: family === 4 ? 'udp4' : 'udp6',
        ipv6Only: family === 6,
        recvBufferSize: 4 << 20,
        sendBufferSize: 4 << 20,
        lookup: literalLookup,
      });
      const onError = (err: NodeJS.ErrnoException): void => {
        s.close();
        if (required) {
          reject(new BindError(`cannot bind UDP ${family === 6 ? `[${host}]` : host}:${port}: ${err.code === 'EADDRINUSE' ? 'the port is already in use by another process' : err.message}`));
        } else {
          this.opts.log(`IPv6 listener on port ${port} not available (${err.code ?? err.message}); continuing with IPv4 only`);
          resolve(null);
        }
      };
      s.once('error', onError);
      s.bind(port, host, () => {
        s.off('error', onError);
        s.on('error', () => this.opts.onSendError(1));
        try {
          s.setRecvBufferSize(4 << 20);
          s.setSendBufferSize(4 << 20);
        } catch {
          /* best effort */
        }
        const sock: DgramSock = { s, family, port: s.address().port };
        const handler = this.opts.onDatagram;
        const batchStart = this.opts.onBatchStart;
        const batchEnd = this.opts.onBatchEnd;
        s.on('message', (msg, rinfo) => {
          if (batchStart !== undefined) batchStart();
          handler(msg, msg.length, rinfo.address, rinfo.port, sock);
          if (batchEnd !== undefined) batchEnd();
        });
        this.socks.push(sock);
        resolve(sock);
      });
    });
  }

  nextBuffer(_sock: UdpSock): Buffer {
    const b = this.ring[this.idx]!;
    this.idx = (this.idx + 1) % SEND_RING;
    return b;
  }

  send(sock: UdpSock, buf: Buffer, len: number, port: number, addr: string): void {
    (sock as DgramSock).s.send(buf, 0, len, port, addr);
  }

  flush(): void {
    /* every send went out at once */
  }

  sockFor(family: 4 | 6): UdpSock | null {
    return this.socks.find((s) => s.family === family) ?? null;
  }

  ports(): number[] {
    return [...new Set(this.socks.map((s) => s.port))];
  }

  boundAddresses(): { family: 4 | 6; port: number }[] {
    return this.socks.map((s) => ({ family: s.family, port: s.s.address().port }));
  }

  status(): UdpIoStatus {
    return zeroUdpIoStatus('dgram', this.reason, 'dgram path');
  }

  async close(): Promise<void> {
    await Promise.all(this.socks.map((s) => new Promise<void>((r) => s.s.close(() => r()))));
    this.socks.length = 0;
  }
}
