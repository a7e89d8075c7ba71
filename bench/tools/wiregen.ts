// Wire-level load generation shared by the data-plane benchmarks: inner IPv4
// packets, and the send loop that seals them (one WireTx per link, so every
// datagram carries a fresh sequence number) and sends them as fast as the
// process can. Used by blast.ts (bench/dataplane, bench/relay) and sink.ts.
import dgram from 'node:dgram';
import type { WireTx } from '../../src/wire/index.js';
import { parseIPv4 } from '../../src/net/addr.js';

export interface InnerSpec {
  src: string;
  dst: string;
  /** 'icmp': an echo reply (which a receiving kernel ignores); 'udp': a datagram sport → dport (checksum 0). */
  proto?: 'icmp' | 'udp';
  sport?: number;
  dport?: number;
  /** Whole IPv4 packet length (default 1400). */
  bytes?: number;
}

/** An IPv4 packet src → dst of `bytes` bytes (header checksum set, payload zeros). */
export function innerIPv4(spec: InnerSpec): Buffer {
  const len = spec.bytes ?? 1400;
  const udp = spec.proto === 'udp';
  const inner = Buffer.alloc(len);
  inner[0] = 0x45;
  inner.writeUInt16BE(len, 2);
  inner[8] = 64;
  inner[9] = udp ? 17 : 1;
  inner.writeUInt32BE(Number(parseIPv4(spec.src)), 12);
  inner.writeUInt32BE(Number(parseIPv4(spec.dst)), 16);
  let sum = 0;
  for (let k = 0; k < 20; k += 2) sum += inner.readUInt16BE(k);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  inner.writeUInt16BE(~sum & 0xffff, 10);
  if (udp) {
    inner.writeUInt16BE(spec.sport ?? 40000, 20);
    inner.writeUInt16BE(spec.dport ?? 5000, 22);
    inner.writeUInt16BE(len - 20, 24); // checksum 0: none (IPv4)
  } else {
    inner[20] = 0; // echo reply
  }
  return inner;
}

/** A UDP socket for sending to literal addresses (no dns.lookup tick per send), bound to an ephemeral port. */
export function udpSocket(opts: { host?: string; recvBufferSize?: number } = {}): Promise<dgram.Socket> {
  const sock = dgram.createSocket({
    type: 'udp4',
    sendBufferSize: 4 << 20,
    ...(opts.recvBufferSize !== undefined ? { recvBufferSize: opts.recvBufferSize } : {}),
    lookup: (a, _f, cb) => cb(null, a, 4),
  });
  sock.on('error', () => {});
  return new Promise((resolve) => {
    if (opts.host !== undefined) sock.bind(0, opts.host, () => resolve(sock));
    else sock.bind(0, () => resolve(sock));
  });
}

export interface BlastFlow {
  tx: WireTx;
  inner: Buffer;
  sock: dgram.Socket;
  host: string;
  port: number;
}

export interface BlastResult {
  sent: number;
  seconds: number;
}

/**
 * Seals and sends the flows' inner packets round-robin, 512 per event-loop turn,
 * for `seconds`. Outgoing datagrams rotate through a 4096-buffer ring (libuv
 * keeps a reference only when it has to queue a send).
 */
export function blast(flows: readonly BlastFlow[], seconds: number): Promise<BlastResult> {
  const RING = 4096;
  const bufs = Array.from({ length: RING }, () => Buffer.alloc(1500));
  const n = flows.length;
  let idx = 0;
  let f = 0;
  let sent = 0;
  const end = Date.now() + seconds * 1000;
  const t0 = process.hrtime.bigint();
  return new Promise((resolve) => {
    function burst(): void {
      for (let k = 0; k < 512; k++) {
        const out = bufs[idx]!;
        idx = (idx + 1) % RING;
        const fl = flows[f]!;
        f = f + 1 === n ? 0 : f + 1;
        const len = fl.tx.seal(fl.inner, 0, fl.inner.length, out);
        fl.sock.send(out, 0, len, fl.port, fl.host);
        sent++;
      }
      if (Date.now() < end) setImmediate(burst);
      else resolve({ sent, seconds: Number(process.hrtime.bigint() - t0) / 1e9 });
    }
    burst();
  });
}

/**
 * The same load sent through the batched UDP layer (src/dataplane/io: sealed
 * straight into its send arena, sendmmsg with UDP GSO), so that a generator
 * process can offer more than a relay forwards: one socket per flow, or one
 * for all (`shared`).
 */
/**
 * Sends the flows round-robin through the batched UDP layer for `seconds`.
 * pregen > 0: seal that many datagrams per flow before the clock starts and
 * then only copy and send them (a generator that costs the receiver's machine
 * little CPU); it stops early when they run out. rate > 0: at most that many
 * datagrams per second (bursts of 1024, then a pause until the schedule).
 */
export async function blastBatched(flows: readonly Omit<BlastFlow, 'sock'>[], seconds: number, shared: boolean, pregen = 0, rate = 0): Promise<BlastResult> {
  const { createUdpIo } = await import('../../src/dataplane/io/index.js');
  const ios: ReturnType<typeof createUdpIo>[] = [];
  for (let i = 0; i < (shared ? 1 : flows.length); i++) {
    const io = createUdpIo({ ports: [0], bindHost4: '0.0.0.0', bindHost6: null, onDatagram: () => {}, onSendError: () => {}, log: () => {}, batch: true });
    await io.start();
    ios.push(io);
  }
  const socks = flows.map((_, i) => ios[shared ? 0 : i]!);
  const n = flows.length;
  let f = 0;
  let sent = 0;
  // Pre-sealed datagrams: one arena per flow, fixed-size slots.
  const slot = flows.length > 0 ? flows[0]!.inner.length + 64 : 0;
  const pre = pregen > 0 ? flows.map(() => Buffer.allocUnsafe(pregen * slot)) : [];
  const preLen = pregen > 0 ? flows.map(() => new Uint16Array(pregen)) : [];
  for (let i = 0; i < pre.length; i++) {
    const fl = flows[i]!;
    const scratch = Buffer.alloc(2048);
    for (let k = 0; k < pregen; k++) {
      const len = fl.tx.seal(fl.inner, 0, fl.inner.length, scratch);
      scratch.copy(pre[i]!, k * slot, 0, len);
      preLen[i]![k] = len;
    }
  }
  let used = 0;
  const end = Date.now() + seconds * 1000;
  const t0 = process.hrtime.bigint();
  const r = await new Promise<BlastResult>((resolve) => {
    function burst(): void {
      for (let k = 0; k < 1024; k++) {
        const fl = flows[f]!;
        const io = socks[f]!;
        const sock = io.socks[0]!;
        const out = io.nextBuffer(sock);
        let len: number;
        if (pregen > 0) {
          len = preLen[f]![used]!;
          pre[f]!.copy(out, 0, used * slot, used * slot + len);
        } else len = fl.tx.seal(fl.inner, 0, fl.inner.length, out);
        f = f + 1 === n ? 0 : f + 1;
        if (f === 0 && pregen > 0) used++;
        io.send(sock, out, len, fl.port, fl.host);
        sent++;
        if (pregen > 0 && used >= pregen) break;
      }
      for (const io of ios) io.flush();
      if (Date.now() < end && !(pregen > 0 && used >= pregen)) {
        const ahead = rate > 0 ? (sent / rate) * 1000 - Number(process.hrtime.bigint() - t0) / 1e6 : 0;
        if (ahead > 1) setTimeout(burst, ahead);
        else setImmediate(burst);
      }
      else resolve({ sent, seconds: Number(process.hrtime.bigint() - t0) / 1e9 });
    }
    burst();
  });
  for (const io of ios) await io.close();
  return r;
}

/** Reads all of stdin. */
export async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
