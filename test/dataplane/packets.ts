// Real IPv4 / IPv6 packets (UDP and TCP, checksums included) for the data-plane
// tests: the relay, relay mode and metrics tests send them through real engines.
import { parseIPv4, parseIPv6 } from '../../src/net/addr.js';

function sum16(buf: Buffer, start = 0): number {
  let s = start;
  for (let i = 0; i + 1 < buf.length; i += 2) s += buf.readUInt16BE(i);
  if (buf.length % 2) s += buf[buf.length - 1]! << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}
const v4 = (s: string): number => Number(parseIPv4(s));
let ipId = 1;

function ip4(src: string, dst: string, proto: number, l4: Buffer): Buffer {
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h.writeUInt16BE(20 + l4.length, 2);
  h.writeUInt16BE(ipId++ & 0xffff, 4);
  h.writeUInt16BE(0x4000, 6); // DF
  h[8] = 64;
  h[9] = proto;
  h.writeUInt32BE(v4(src), 12);
  h.writeUInt32BE(v4(dst), 16);
  h.writeUInt16BE(~sum16(h) & 0xffff, 10);
  // transport checksum over the pseudo-header
  const pseudo = Buffer.alloc(12);
  pseudo.writeUInt32BE(v4(src), 0);
  pseudo.writeUInt32BE(v4(dst), 4);
  pseudo[9] = proto;
  pseudo.writeUInt16BE(l4.length, 10);
  const ckOff = proto === 6 ? 16 : 6;
  l4.writeUInt16BE(0, ckOff);
  let ck = ~sum16(l4, sum16(pseudo)) & 0xffff;
  if (proto === 17 && ck === 0) ck = 0xffff;
  l4.writeUInt16BE(ck, ckOff);
  return Buffer.concat([h, l4]);
}

/** An IPv4 header (protocol 17, no checksum) followed by `body` as its payload: enough for routing and source checks. */
export function ipv4(src: string, dst: string, body = 'hello'): Buffer {
  const b = Buffer.alloc(20 + body.length);
  b[0] = 0x45;
  b.writeUInt16BE(b.length, 2);
  b[8] = 64;
  b[9] = 17;
  b.writeUInt32BE(v4(src), 12);
  b.writeUInt32BE(v4(dst), 16);
  b.write(body, 20);
  return b;
}

export function udp(src: string, dst: string, sport: number, dport: number, body = 'hello'): Buffer {
  const b = Buffer.alloc(8 + body.length);
  b.writeUInt16BE(sport, 0);
  b.writeUInt16BE(dport, 2);
  b.writeUInt16BE(b.length, 4);
  b.write(body, 8);
  return ip4(src, dst, 17, b);
}

export const SYN = 0x02;
export const ACK = 0x10;
export function tcp(src: string, dst: string, sport: number, dport: number, flags: number, seq = 1000, ack = 0): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt16BE(sport, 0);
  b.writeUInt16BE(dport, 2);
  b.writeUInt32BE(seq, 4);
  b.writeUInt32BE(ack, 8);
  b[12] = 5 << 4;
  b[13] = flags;
  b.writeUInt16BE(65535, 14);
  return ip4(src, dst, 6, b);
}

export function udp6(src: string, dst: string, body: string): Buffer {
  const b = Buffer.alloc(48 + body.length);
  b[0] = 0x60;
  b.writeUInt16BE(8 + body.length, 4);
  b[6] = 17;
  b[7] = 64;
  const put = (s: string, at: number) => {
    const v = parseIPv6(s)!;
    for (let i = 0; i < 16; i++) b[at + i] = Number((v >> BigInt(8 * (15 - i))) & 0xffn);
  };
  put(src, 8);
  put(dst, 24);
  b.writeUInt16BE(4000, 40);
  b.writeUInt16BE(53, 42);
  b.writeUInt16BE(8 + body.length, 44);
  b.write(body, 48);
  // UDP checksum (mandatory in IPv6) over the pseudo-header
  let s = 0;
  for (let i = 8; i < 40; i += 2) s += b.readUInt16BE(i);
  s += 8 + body.length + 17;
  for (let i = 40; i + 1 < b.length; i += 2) s += b.readUInt16BE(i);
  if (b.length % 2) s += b[b.length - 1]! << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  b.writeUInt16BE(~s & 0xffff || 0xffff, 46);
  return b;
}

export const bodyOf = (p: Buffer): string => p.subarray(p[0]! >> 4 === 6 ? 48 : 28).toString();
