// TUN offloads (src/dataplane/offload.ts): TSO split on read, GRO coalesce on
// write. Checksums are verified with an independent reference computation
// (byte pairs, written out plainly here), not with the module's own helpers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { splitGso, GroBatch, sum16, fold16, SplitResult, VNET_HDR_LEN, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, MAX_UDP_SEGS, VNET_F_NEEDS_CSUM } from '../../src/dataplane/offload.js';

// ---- reference checksums -------------------------------------------------

function refSum(bytes: number[] | Buffer): number {
  let s = 0;
  for (let i = 0; i < bytes.length; i += 2) s += (bytes[i]! << 8) + (i + 1 < bytes.length ? bytes[i + 1]! : 0);
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

function pseudo(pkt: Buffer, l4len: number, proto: number): number[] {
  const v6 = pkt[0]! >> 4 === 6;
  const addrs = v6 ? [...pkt.subarray(8, 40)] : [...pkt.subarray(12, 20)];
  const len = v6 ? [(l4len >>> 24) & 255, (l4len >>> 16) & 255, (l4len >>> 8) & 255, l4len & 255] : [(l4len >>> 8) & 255, l4len & 255];
  return [...addrs, ...(v6 ? [0, 0, 0, proto] : [0, proto]), ...len];
}

/** True when the transport checksum of the packet is right (sum over pseudo + segment is 0xffff). */
function l4ChecksumOk(pkt: Buffer): boolean {
  const v6 = pkt[0]! >> 4 === 6;
  const ihl = v6 ? 40 : (pkt[0]! & 15) * 4;
  const proto = v6 ? pkt[6]! : pkt[9]!;
  const seg = pkt.subarray(ihl);
  return refSum([...pseudo(pkt, seg.length, proto), ...seg]) === 0xffff;
}

function ipv4HeaderOk(pkt: Buffer): boolean {
  return refSum(pkt.subarray(0, (pkt[0]! & 15) * 4)) === 0xffff;
}

// ---- packet builders -----------------------------------------------------

const FIN = 0x01;
const PSH = 0x08;
const ACK = 0x10;
const SYN = 0x02;
const CWR = 0x80;

interface TcpSpec {
  v6?: boolean;
  seq?: number;
  ack?: number;
  flags?: number;
  payload: Buffer;
  sport?: number;
  dport?: number;
  id?: number;
  /** TCP options (multiple of 4 bytes), e.g. a timestamp. */
  options?: Buffer;
  window?: number;
}

/** A TCP packet with correct lengths and checksums. */
function tcpPacket(s: TcpSpec): Buffer {
  const opts = s.options ?? Buffer.alloc(0);
  const th = Buffer.alloc(20 + opts.length);
  th.writeUInt16BE(s.sport ?? 40000, 0);
  th.writeUInt16BE(s.dport ?? 5201, 2);
  th.writeUInt32BE((s.seq ?? 1000) >>> 0, 4);
  th.writeUInt32BE(s.ack ?? 777, 8);
  th[12] = (th.length / 4) << 4;
  th[13] = s.flags ?? ACK;
  th.writeUInt16BE(s.window ?? 501, 14);
  opts.copy(th, 20);
  let ip: Buffer;
  if (s.v6) {
    ip = Buffer.alloc(40);
    ip[0] = 0x60;
    ip.writeUInt16BE(th.length + s.payload.length, 4);
    ip[6] = 6;
    ip[7] = 64;
    Buffer.from('fd000000000000000000000000000002', 'hex').copy(ip, 8);
    Buffer.from('fd000000000000000000000000000001', 'hex').copy(ip, 24);
  } else {
    ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip.writeUInt16BE(20 + th.length + s.payload.length, 2);
    ip.writeUInt16BE(s.id ?? 100, 4);
    ip.writeUInt16BE(0x4000, 6);
    ip[8] = 64;
    ip[9] = 6;
    Buffer.from([10, 89, 0, 2]).copy(ip, 12);
    Buffer.from([10, 89, 0, 1]).copy(ip, 16);
    ip.writeUInt16BE(~refSum(ip) & 0xffff, 10);
  }
  const pkt = Buffer.concat([ip, th, s.payload]);
  const ihl = ip.length;
  pkt.writeUInt16BE(~refSum([...pseudo(pkt, pkt.length - ihl, 6), ...pkt.subarray(ihl)]) & 0xffff, ihl + 16);
  return pkt;
}

function udpPacket(body: Buffer): Buffer {
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(28 + body.length, 2);
  ip[8] = 64;
  ip[9] = 17;
  Buffer.from([10, 89, 0, 2]).copy(ip, 12);
  Buffer.from([10, 89, 0, 1]).copy(ip, 16);
  ip.writeUInt16BE(~refSum(ip) & 0xffff, 10);
  const u = Buffer.alloc(8);
  u.writeUInt16BE(5000, 0);
  u.writeUInt16BE(53, 2);
  u.writeUInt16BE(8 + body.length, 4);
  return Buffer.concat([ip, u, body]);
}

function pattern(n: number, seed = 7): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 255;
  return b;
}

/** What the kernel hands us for a TSO write: vnet header + one large segment with a partial checksum. */
function gsoRead(pkt: Buffer, gsoSize: number, type = pkt[0]! >> 4 === 6 ? GSO_TCPV6 : GSO_TCPV4): Buffer {
  const v6 = pkt[0]! >> 4 === 6;
  const ihl = v6 ? 40 : (pkt[0]! & 15) * 4;
  const doff = (pkt[ihl + 12]! >> 4) * 4;
  const p = Buffer.from(pkt);
  // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum.
  p.writeUInt16BE(refSum(pseudo(p, p.length - ihl, 6)), ihl + 16);
  const h = Buffer.alloc(VNET_HDR_LEN);
  h[0] = VNET_F_NEEDS_CSUM;
  h[1] = type;
  h.writeUInt16LE(ihl + doff, 2);
  h.writeUInt16LE(gsoSize, 4);
  h.writeUInt16LE(ihl, 6);
  h.writeUInt16LE(16, 8);
  return Buffer.concat([h, p]);
}

function split(read: Buffer): { r: SplitResult; out: Buffer[] } {
  const out: Buffer[] = [];
  const scratch = Buffer.alloc(65535);
  const r = splitGso(read, 0, read.length, read.subarray(VNET_HDR_LEN), scratch, (p, l) => out.push(Buffer.from(p.subarray(0, l))));
  return { r, out };
}

const TS_OPT = Buffer.from([1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78]);

function tcpFields(p: Buffer): { ihl: number; seq: number; flags: number; payload: Buffer; id: number; hdr: Buffer } {
  const v6 = p[0]! >> 4 === 6;
  const ihl = v6 ? 40 : (p[0]! & 15) * 4;
  const doff = (p[ihl + 12]! >> 4) * 4;
  return { ihl, seq: p.readUInt32BE(ihl + 4), flags: p[ihl + 13]!, payload: p.subarray(ihl + doff), id: v6 ? 0 : p.readUInt16BE(4), hdr: p.subarray(ihl + 20, ihl + doff) };
}

test('sum16 equals the reference for every alignment, length and backing store', () => {
  const plain = pattern(3000, 11);
  const shared = Buffer.from(new SharedArrayBuffer(3001)).subarray(1); // odd byteOffset
  plain.copy(shared);
  const pooled = Buffer.from(plain.subarray(0, 200)); // may sit at any offset in the pool
  for (const buf of [plain, shared, pooled]) {
    for (const off of [0, 1, 2, 3, 5, 6]) {
      for (const len of [0, 1, 2, 3, 15, 16, 17, 18, 19, 61, 64, 191, buf.length - off]) {
        if (off + len > buf.length) continue;
        const want = refSum(buf.subarray(off, off + len));
        assert.equal(fold16(sum16(buf, off, len, 0)), want, `off ${off} len ${len}`);
        // With an initial (big-endian domain) value carried in.
        assert.equal(fold16(sum16(buf, off, len, 0x1fffe)), refSum([...buf.subarray(off, off + len), ...(len & 1 ? [0] : []), 0xff, 0xff, 0xff, 0xff]), `off ${off} len ${len} with initial`);
      }
    }
  }
});

// ---- split (read side) ---------------------------------------------------

for (const v6 of [false, true]) {
  const fam = v6 ? 'IPv6' : 'IPv4';
  test(`${fam}: a TSO segment splits into gso_size segments with right seq, flags, lengths and checksums (short last one)`, () => {
    const payload = pattern(4 * 1368 + 500);
    const big = tcpPacket({ v6, seq: 0xfffff000, flags: ACK | PSH | FIN | CWR, payload, options: TS_OPT, id: 0xfffe });
    const { r, out } = split(gsoRead(big, 1368));
    assert.equal(r, SplitResult.Ok);
    assert.equal(out.length, 5);
    const sizes = out.map((p) => tcpFields(p).payload.length);
    assert.deepEqual(sizes, [1368, 1368, 1368, 1368, 500]);
    out.forEach((p, i) => {
      const f = tcpFields(p);
      assert.equal(f.seq, (0xfffff000 + i * 1368) >>> 0, `seq of segment ${i} (wraps past 2^32)`);
      const last = i === out.length - 1;
      assert.equal(f.flags & (PSH | FIN), last ? PSH | FIN : 0, `PSH/FIN only on the last (segment ${i})`);
      assert.equal(f.flags & CWR, i === 0 ? CWR : 0, `CWR only on the first (segment ${i})`);
      assert.equal(f.flags & ACK, ACK);
      assert.deepEqual(f.hdr, TS_OPT, 'options copied to every segment');
      if (v6) assert.equal(p.readUInt16BE(4) + 40, p.length);
      else {
        assert.equal(p.readUInt16BE(2), p.length);
        assert.equal(f.id, (0xfffe + i) & 0xffff, 'IPv4 id increments per segment');
        assert.ok(ipv4HeaderOk(p), `IPv4 header checksum of segment ${i}`);
      }
      assert.ok(l4ChecksumOk(p), `TCP checksum of segment ${i}`);
    });
    assert.deepEqual(Buffer.concat(out.map((p) => tcpFields(p).payload)), payload, 'payload intact and in order');
  });

  test(`${fam}: a TSO segment of exactly n*gso_size splits into n full segments`, () => {
    const payload = pattern(3 * 1000, 3);
    const { r, out } = split(gsoRead(tcpPacket({ v6, payload }), 1000));
    assert.equal(r, SplitResult.Ok);
    assert.deepEqual(out.map((p) => tcpFields(p).payload.length), [1000, 1000, 1000]);
    assert.ok(out.every(l4ChecksumOk));
  });

  test(`${fam}: a GSO header on a segment no larger than gso_size yields it once with its checksum completed`, () => {
    const pkt = tcpPacket({ v6, payload: pattern(700), flags: ACK | PSH });
    const { r, out } = split(gsoRead(pkt, 1368));
    assert.equal(r, SplitResult.Ok);
    assert.equal(out.length, 1);
    assert.deepEqual(out[0], pkt);
  });
}

test('NEEDS_CSUM without GSO: the checksum is completed in place (UDP), other bytes untouched', () => {
  const pkt = udpPacket(pattern(333));
  const want = Buffer.from(pkt);
  want.writeUInt16BE(~refSum([...pseudo(want, want.length - 20, 17), ...want.subarray(20)]) & 0xffff, 26);
  const partial = Buffer.from(pkt);
  partial.writeUInt16BE(refSum(pseudo(partial, partial.length - 20, 17)), 26);
  const h = Buffer.alloc(VNET_HDR_LEN);
  h[0] = VNET_F_NEEDS_CSUM;
  h.writeUInt16LE(20, 6);
  h.writeUInt16LE(6, 8);
  const { r, out } = split(Buffer.concat([h, partial]));
  assert.equal(r, SplitResult.Ok);
  assert.equal(out.length, 1);
  assert.ok(l4ChecksumOk(out[0]!));
  assert.deepEqual(out[0], want);
});

test('a zero vnet header passes the packet through untouched (non-TCP, e.g. ICMP-like bytes)', () => {
  const pkt = udpPacket(Buffer.from('not tcp'));
  pkt[9] = 1; // say ICMP: nothing may look at it
  const { r, out } = split(Buffer.concat([Buffer.alloc(VNET_HDR_LEN), pkt]));
  assert.equal(r, SplitResult.Ok);
  assert.deepEqual(out, [pkt]);
});

test('malformed vnet headers are refused and nothing is emitted', () => {
  const big = tcpPacket({ payload: pattern(3000) });
  const big6 = tcpPacket({ v6: true, payload: pattern(3000) });
  const cases: [string, Buffer][] = [];
  const mk = (what: string, f: (b: Buffer) => Buffer): void => {
    cases.push([what, f(gsoRead(big, 1000))]);
  };
  mk('UFO (gso_type UDP, never enabled)', (b) => ((b[1] = 3), b));
  mk('gso_size 0', (b) => (b.writeUInt16LE(0, 4), b));
  mk('csum_start not at the TCP header', (b) => (b.writeUInt16LE(24, 6), b));
  mk('csum_offset not the TCP checksum', (b) => (b.writeUInt16LE(6, 8), b));
  mk('TCPV6 type on an IPv4 packet', (b) => ((b[1] = GSO_TCPV6), b));
  mk('TCPV4 on a UDP packet', (b) => ((b[VNET_HDR_LEN + 9] = 17), b));
  mk('TCP data offset past the end', (b) => b.subarray(0, VNET_HDR_LEN + 20 + 12).fill(0xf0, VNET_HDR_LEN + 32)); // doff 60 > packet
  mk('IPv4 fragment', (b) => (b.writeUInt16BE(0x2000, VNET_HDR_LEN + 6), b));
  cases.push(['TCPV4 type on an IPv6 packet', ((b) => ((b[1] = GSO_TCPV4), b))(gsoRead(big6, 1000))]);
  cases.push(['IPv6 with an extension header', ((b) => ((b[VNET_HDR_LEN + 6] = 0), b))(gsoRead(big6, 1000))]);
  const needs = Buffer.concat([Buffer.from([1, 0, 0, 0, 0, 0, 40, 0, 6, 0]), udpPacket(Buffer.from('x'))]);
  cases.push(['NEEDS_CSUM pointing past the packet', needs]);
  cases.push(['shorter than a vnet header', Buffer.alloc(6)]);
  cases.push(['a vnet header and nothing else', Buffer.alloc(VNET_HDR_LEN)]);
  for (const [what, buf] of cases) {
    const { r, out } = split(buf);
    assert.equal(r, SplitResult.Malformed, what);
    assert.equal(out.length, 0, `${what}: nothing emitted`);
  }
});

// ---- coalesce (write side) -----------------------------------------------

interface Written {
  hdr: Buffer;
  pkt: Buffer;
}

function batch(coalesce = true): { b: GroBatch; writes: Written[] } {
  const writes: Written[] = [];
  const b = new GroBatch((buf, off, len) => {
    const w = Buffer.from(buf.subarray(off, off + len));
    writes.push({ hdr: w.subarray(0, VNET_HDR_LEN), pkt: w.subarray(VNET_HDR_LEN) });
    return true;
  }, coalesce);
  return { b, writes };
}

/** Completes a CHECKSUM_PARTIAL packet the way the kernel does (sum from csum_start, complement). */
function complete(w: Written): Buffer {
  const p = Buffer.from(w.pkt);
  const start = w.hdr.readUInt16LE(6);
  const off = w.hdr.readUInt16LE(8);
  p.writeUInt16BE(~refSum(p.subarray(start)) & 0xffff, start + off);
  return p;
}

function segments(v6: boolean, n: number, size: number, opts: Partial<TcpSpec> & { lastSize?: number; pshLast?: boolean } = {}): Buffer[] {
  const out: Buffer[] = [];
  let seq = opts.seq ?? 5000;
  for (let i = 0; i < n; i++) {
    const len = i === n - 1 && opts.lastSize !== undefined ? opts.lastSize : size;
    const flags = ACK | (i === n - 1 && opts.pshLast ? PSH : 0);
    out.push(tcpPacket({ v6, seq, flags, payload: pattern(len, i), id: 200 + i, options: opts.options }));
    seq += len;
  }
  return out;
}

for (const v6 of [false, true]) {
  const fam = v6 ? 'IPv6' : 'IPv4';
  test(`${fam}: consecutive segments of one flow are written as one GSO packet that the kernel can complete and split back`, () => {
    const segs = segments(v6, 6, 1368, { lastSize: 411, pshLast: true, options: TS_OPT });
    const { b, writes } = batch();
    for (const s of segs) assert.ok(b.add(s, s.length));
    assert.equal(writes.length, 0, 'held until flush');
    b.flush();
    assert.equal(writes.length, 1);
    const w = writes[0]!;
    const ihl = v6 ? 40 : 20;
    assert.equal(w.hdr[0], VNET_F_NEEDS_CSUM);
    assert.equal(w.hdr[1], v6 ? GSO_TCPV6 : GSO_TCPV4);
    assert.equal(w.hdr.readUInt16LE(2), ihl + 32, 'hdr_len');
    assert.equal(w.hdr.readUInt16LE(4), 1368, 'gso_size');
    assert.equal(w.hdr.readUInt16LE(6), ihl, 'csum_start');
    assert.equal(w.hdr.readUInt16LE(8), 16, 'csum_offset');
    assert.equal(w.pkt.length, ihl + 32 + 5 * 1368 + 411);
    if (v6) assert.equal(w.pkt.readUInt16BE(4) + 40, w.pkt.length);
    else {
      assert.equal(w.pkt.readUInt16BE(2), w.pkt.length);
      assert.ok(ipv4HeaderOk(w.pkt), 'IPv4 header checksum of the large packet');
    }
    assert.ok(l4ChecksumOk(complete(w)), 'partial checksum completes to a valid one');
    const f = tcpFields(w.pkt);
    assert.equal(f.seq, 5000);
    assert.equal(f.flags, ACK | PSH, 'PSH of the last segment carried');
    assert.deepEqual(f.payload, Buffer.concat(segs.map((s) => tcpFields(s).payload)));
    assert.equal(b.coalesced, 6);
    assert.equal(b.superPackets, 1);
    // Round trip: the same bytes read back as a TSO segment split into the originals.
    const back = split(Buffer.concat([w.hdr, w.pkt])).out;
    assert.equal(back.length, 6);
    back.forEach((p, i) => assert.deepEqual(p, segs[i], `segment ${i} round-trips byte for byte`));
  });
}

test('only in-order, same-flow, same-size segments join; anything else ends the run in order', () => {
  const { b, writes } = batch();
  const [s1, s2, s3] = segments(false, 3, 1000);
  const gap = tcpPacket({ seq: 5000 + 3000 + 1, payload: pattern(1000) }); // seq out of order
  b.add(s1!, s1!.length);
  b.add(s3!, s3!.length); // skips s2
  b.add(s2!, s2!.length);
  b.add(gap, gap.length);
  b.flush();
  // Nothing merged: each was written on its own, in the order given.
  assert.deepEqual(writes.map((w) => tcpFields(w.pkt).seq), [5000, 7000, 6000, 8001]);
  assert.ok(writes.every((w) => w.hdr.equals(Buffer.alloc(VNET_HDR_LEN))), 'single segments go out with a zero header');
  assert.equal(b.superPackets, 0);
});

test('another flow, another ack, a larger segment, changed options or a segment after a short one do not join', () => {
  const base = { seq: 1, payload: pattern(1000), options: TS_OPT };
  const first = tcpPacket(base);
  const tsChanged = Buffer.from(TS_OPT);
  tsChanged[7] ^= 1;
  const cases: [string, Buffer][] = [
    ['other source port', tcpPacket({ ...base, seq: 1001, sport: 40001 })],
    ['other ack', tcpPacket({ ...base, seq: 1001, ack: 778 })],
    ['other window', tcpPacket({ ...base, seq: 1001, window: 600 })],
    ['larger than the first', tcpPacket({ ...base, seq: 1001, payload: pattern(1001) })],
    ['timestamp changed', tcpPacket({ ...base, seq: 1001, options: tsChanged })],
    ['FIN', tcpPacket({ ...base, seq: 1001, flags: ACK | FIN })],
    ['IPv6 after IPv4', tcpPacket({ ...base, v6: true, seq: 1001 })],
  ];
  for (const [what, next] of cases) {
    const { b, writes } = batch();
    b.add(first, first.length);
    b.add(next, next.length);
    b.flush();
    assert.equal(writes.length, 2, what);
    assert.equal(b.superPackets, 0, what);
  }
  // After a short segment the run is closed.
  const { b, writes } = batch();
  const short = tcpPacket({ ...base, seq: 1001, payload: pattern(500) });
  const after = tcpPacket({ ...base, seq: 1501, payload: pattern(500) });
  for (const p of [first, short, after]) b.add(p, p.length);
  b.flush();
  assert.equal(writes.length, 2);
  assert.equal(tcpFields(writes[0]!.pkt).payload.length, 1500, 'first + short merged');
  assert.equal(tcpFields(writes[1]!.pkt).seq, 1501);
});

test('non-TCP, SYN, PSH and CWR packets go out at once, behind the pending run', () => {
  const { b, writes } = batch();
  const [s1, s2] = segments(false, 2, 1000);
  const udp = udpPacket(Buffer.from('ping-like'));
  const syn = tcpPacket({ flags: SYN, payload: Buffer.alloc(0), sport: 1234 });
  const psh = tcpPacket({ flags: ACK | PSH, payload: pattern(10), sport: 999 });
  b.add(s1!, s1!.length);
  b.add(s2!, s2!.length);
  assert.equal(writes.length, 0);
  b.add(udp, udp.length);
  assert.equal(writes.length, 2, 'the run is written before the UDP packet, which is not held');
  assert.equal(writes[0]!.hdr[1], GSO_TCPV4);
  assert.deepEqual(writes[1]!.pkt, udp);
  b.add(syn, syn.length);
  b.add(psh, psh.length);
  assert.equal(writes.length, 4, 'SYN and a PSH segment are not held either');
  const cwr = tcpPacket({ flags: ACK | CWR, payload: pattern(1000), sport: 998 });
  b.add(cwr, cwr.length);
  assert.equal(writes.length, 5, 'a CWR segment is not held');
  assert.equal(b.pending, false);
  b.flush();
  assert.equal(writes.length, 5);
});

test('a run stops before 64 KiB; a packet whose IP length disagrees with its size is not merged', () => {
  const { b, writes } = batch();
  for (const s of segments(false, 60, 1400)) b.add(s, s.length);
  b.flush();
  assert.ok(writes.length >= 2);
  assert.ok(writes.every((w) => w.pkt.length <= 65535));
  assert.equal(writes.reduce((n, w) => n + tcpFields(w.pkt).payload.length, 0), 60 * 1400, 'every byte written once');
  // Trailing bytes past the IP length (a peer could send them) never become payload.
  const { b: b2, writes: w2 } = batch();
  const [a1, a2] = segments(false, 2, 1000);
  const padded = Buffer.concat([a2!, Buffer.from('JUNK')]);
  b2.add(a1!, a1!.length);
  b2.add(padded, padded.length);
  b2.flush();
  assert.equal(w2.length, 2);
  assert.equal(b2.superPackets, 0);
});

test('without TSO on the device every packet is written alone behind a zero header', () => {
  const { b, writes } = batch(false);
  const segs = segments(false, 4, 1000);
  for (const s of segs) b.add(s, s.length);
  assert.equal(writes.length, 4, 'nothing held');
  assert.ok(writes.every((w, i) => w.hdr.equals(Buffer.alloc(VNET_HDR_LEN)) && w.pkt.equals(segs[i]!)));
});

test('a failed write is counted and reported', () => {
  const b = new GroBatch(() => false);
  const u = udpPacket(Buffer.from('x'));
  assert.equal(b.add(u, u.length), false);
  const [s1, s2] = segments(false, 2, 1000);
  b.add(s1!, s1!.length);
  b.add(s2!, s2!.length);
  b.flush();
  assert.equal(b.writeErrors, 2);
});

// ---- UDP segmentation offload (USO): coalesce on write, split on read ------

interface UdpSpec {
  v6?: boolean;
  payload: Buffer;
  id?: number;
  /** IPv4 Don't Fragment (default set). */
  df?: boolean;
  tos?: number;
  ttl?: number;
  sport?: number;
  dport?: number;
  flowLabel?: number;
  /** IPv4 only: send without a checksum (field 0). */
  noChecksum?: boolean;
  /** Last byte of the destination address (default 1). */
  dstLast?: number;
}

/** A UDP datagram with correct lengths and checksums (reference arithmetic). */
function udpDatagram(s: UdpSpec): Buffer {
  const u = Buffer.alloc(8);
  u.writeUInt16BE(s.sport ?? 40001, 0);
  u.writeUInt16BE(s.dport ?? 5201, 2);
  u.writeUInt16BE(8 + s.payload.length, 4);
  let ip: Buffer;
  if (s.v6) {
    ip = Buffer.alloc(40);
    ip.writeUInt32BE((0x6 << 28) | ((s.tos ?? 0) << 20) | (s.flowLabel ?? 0x12345), 0);
    ip.writeUInt16BE(8 + s.payload.length, 4);
    ip[6] = 17;
    ip[7] = s.ttl ?? 64;
    Buffer.from('fd000000000000000000000000000002', 'hex').copy(ip, 8);
    Buffer.from('fd000000000000000000000000000001', 'hex').copy(ip, 24);
    ip[39] = s.dstLast ?? 1;
  } else {
    ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip[1] = s.tos ?? 0;
    ip.writeUInt16BE(28 + s.payload.length, 2);
    ip.writeUInt16BE(s.id ?? 300, 4);
    ip.writeUInt16BE(s.df === false ? 0 : 0x4000, 6);
    ip[8] = s.ttl ?? 64;
    ip[9] = 17;
    Buffer.from([10, 89, 0, 2]).copy(ip, 12);
    Buffer.from([10, 89, 0, s.dstLast ?? 1]).copy(ip, 16);
    ip.writeUInt16BE(~refSum(ip) & 0xffff, 10);
  }
  const pkt = Buffer.concat([ip, u, s.payload]);
  const ihl = ip.length;
  if (!s.noChecksum) {
    const c = ~refSum([...pseudo(pkt, pkt.length - ihl, 17), ...pkt.subarray(ihl)]) & 0xffff;
    pkt.writeUInt16BE(c === 0 ? 0xffff : c, ihl + 6);
  }
  return pkt;
}

/** n datagrams of one flow, `size`-byte payloads (the last `lastSize`), IPv4 ids counting up from 300. */
function datagrams(v6: boolean, n: number, size: number, opts: Partial<UdpSpec> & { lastSize?: number } = {}): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const len = i === n - 1 && opts.lastSize !== undefined ? opts.lastSize : size;
    out.push(udpDatagram({ ...opts, v6, id: ((opts.id ?? 300) + i) & 0xffff, payload: pattern(len, 3 * i + 1) }));
  }
  return out;
}

function usoBatch(): { b: GroBatch; writes: Written[] } {
  const writes: Written[] = [];
  const b = new GroBatch((buf, off, len) => {
    const w = Buffer.from(buf.subarray(off, off + len));
    writes.push({ hdr: w.subarray(0, VNET_HDR_LEN), pkt: w.subarray(VNET_HDR_LEN) });
    return true;
  }, true, true);
  return { b, writes };
}

/** One's complement a - b (16 bits). */
function csumSub(a: number, b: number): number {
  return refSum(Buffer.from([(a >> 8) & 255, a & 255, ((~b) >> 8) & 255, ~b & 255]));
}

/**
 * Reference for the kernel's UDP GSO segmentation (inet/ipv6 gso_segment +
 * __udp_gso_segment): header copied per datagram, IP length (and IPv4 id
 * counting up from the first, header checksum), UDP length, and the checksum
 * adjusted from the super-packet's partial sum by swapping the old UDP length
 * for the new one, then completed over the datagram (0 becomes 0xffff).
 * A packet without a GSO header goes through unchanged.
 */
function kernelSplitUdp(w: Written): Buffer[] {
  if (w.hdr[1] === 0) return [Buffer.from(w.pkt)];
  assert.equal(w.hdr[1], GSO_UDP_L4);
  assert.equal(w.hdr[0], VNET_F_NEEDS_CSUM);
  const p = w.pkt;
  const v6 = p[0]! >> 4 === 6;
  const ihl = v6 ? 40 : (p[0]! & 15) * 4;
  const gsoSize = w.hdr.readUInt16LE(4);
  assert.equal(w.hdr.readUInt16LE(2), ihl + 8, 'hdr_len');
  assert.equal(w.hdr.readUInt16LE(6), ihl, 'csum_start');
  assert.equal(w.hdr.readUInt16LE(8), 6, 'csum_offset');
  // The kernel (virtio_net_hdr_to_skb) refuses more than UDP_MAX_SEGMENTS (64 on older kernels).
  assert.ok(p.length - ihl - 8 <= gsoSize * 64, 'no more than 64 segments');
  assert.ok(p.length <= 65535);
  const oldLen = p.readUInt16BE(ihl + 4);
  assert.equal(oldLen, p.length - ihl, 'the UDP length describes the whole packet');
  if (v6) assert.equal(p.readUInt16BE(4) + 40, p.length);
  else {
    assert.equal(p.readUInt16BE(2), p.length);
    assert.ok(ipv4HeaderOk(p));
  }
  assert.equal(p.readUInt16BE(ihl + 6), refSum(pseudo(p, oldLen, 17)), 'partial checksum: the pseudo-header sum over the whole length');
  const out: Buffer[] = [];
  const id0 = v6 ? 0 : p.readUInt16BE(4);
  for (let at = ihl + 8, i = 0; at < p.length; at += gsoSize, i++) {
    const seg = Math.min(gsoSize, p.length - at);
    const d = Buffer.concat([p.subarray(0, ihl + 8), p.subarray(at, at + seg)]);
    const newLen = 8 + seg;
    if (v6) d.writeUInt16BE(newLen, 4);
    else {
      d.writeUInt16BE(d.length, 2);
      d.writeUInt16BE((id0 + i) & 0xffff, 4);
      d.writeUInt16BE(0, 10);
      d.writeUInt16BE(~refSum(d.subarray(0, ihl)) & 0xffff, 10);
    }
    d.writeUInt16BE(newLen, ihl + 4);
    const check = refSum(Buffer.from([0, 0, ...[csumSub(p.readUInt16BE(ihl + 6), oldLen)].flatMap((x) => [x >> 8, x & 255]), newLen >> 8, newLen & 255]));
    d.writeUInt16BE(check, ihl + 6);
    const c = ~refSum(d.subarray(ihl)) & 0xffff;
    d.writeUInt16BE(c === 0 ? 0xffff : c, ihl + 6);
    out.push(d);
  }
  return out;
}

for (const v6 of [false, true]) {
  const fam = v6 ? 'IPv6' : 'IPv4';
  test(`${fam}: consecutive datagrams of one UDP flow are written as one UDP GSO packet; the kernel's segmentation gives them back byte for byte`, () => {
    const dgs = datagrams(v6, 7, 100, { lastSize: 33 });
    const { b, writes } = usoBatch();
    for (const d of dgs) assert.ok(b.add(d, d.length));
    assert.equal(writes.length, 0, 'held until flush');
    b.flush();
    assert.equal(writes.length, 1);
    const w = writes[0]!;
    const ihl = v6 ? 40 : 20;
    assert.equal(w.hdr.readUInt16LE(4), 100, 'gso_size: the payload size');
    assert.equal(w.pkt.length, ihl + 8 + 6 * 100 + 33);
    const back = kernelSplitUdp(w);
    assert.equal(back.length, dgs.length);
    back.forEach((d, i) => {
      assert.deepEqual(d, dgs[i], `datagram ${i} byte for byte`);
      assert.ok(l4ChecksumOk(d), `datagram ${i} checksum`);
    });
    assert.equal(b.udpSuperPackets, 1);
    assert.equal(b.udpCoalesced, 7);
    assert.equal(b.superPackets, 1);
    // Our own read side, given the same packet (the kernel may hand us UDP GSO too), agrees.
    const read = split(Buffer.concat([w.hdr, w.pkt]));
    assert.equal(read.r, SplitResult.Ok);
    assert.deepEqual(read.out, dgs);
  });

  test(`${fam}: a UDP GSO read of exactly n*gso_size, and one no larger than gso_size, split into valid datagrams`, () => {
    const dgs = datagrams(v6, 4, 250);
    const { b, writes } = usoBatch();
    for (const d of dgs) b.add(d, d.length);
    b.flush();
    const read = split(Buffer.concat([writes[0]!.hdr, writes[0]!.pkt]));
    assert.deepEqual(read.out, dgs);
    // A GSO header on a single datagram: its lengths and checksum are completed.
    const one = udpDatagram({ v6, payload: pattern(90) });
    const ihl = v6 ? 40 : 20;
    const p = Buffer.from(one);
    p.writeUInt16BE(refSum(pseudo(p, p.length - ihl, 17)), ihl + 6);
    const h = Buffer.from([VNET_F_NEEDS_CSUM, GSO_UDP_L4, ihl + 8, 0, 200, 0, ihl, 0, 6, 0]);
    const r1 = split(Buffer.concat([h, p]));
    assert.equal(r1.r, SplitResult.Ok);
    assert.deepEqual(r1.out, [one]);
  });
}

test('UDP runs: another flow, TOS, TTL, flow label, a larger payload or anything after a shorter one do not join', () => {
  const base = (o: Partial<UdpSpec> = {}, len = 64, id = 300): Buffer => udpDatagram({ payload: pattern(len), id, ...o });
  const cases: [string, Buffer][] = [
    ['another destination address', base({ dstLast: 9 }, 64, 301)],
    ['another destination port', base({ dport: 9999 }, 64, 301)],
    ['another source port', base({ sport: 1 }, 64, 301)],
    ['another TOS', base({ tos: 0x10 }, 64, 301)],
    ['another TTL', base({ ttl: 63 }, 64, 301)],
    ['DF cleared', base({ df: false }, 64, 301)],
    ['a larger payload', base({}, 65, 301)],
    ['IPv6 (other family)', udpDatagram({ v6: true, payload: pattern(64) })],
  ];
  for (const [what, second] of cases) {
    const { b, writes } = usoBatch();
    const first = base();
    b.add(first, first.length);
    b.add(second, second.length);
    b.flush();
    assert.equal(writes.length, 2, `${what}: two writes`);
    assert.equal(b.udpSuperPackets, 0, what);
    assert.deepEqual(writes[0]!.pkt, first, `${what}: first unchanged, in order`);
    assert.deepEqual(writes[1]!.pkt, second, `${what}: second unchanged`);
  }
  // IPv6: another flow label or traffic class ends the run.
  for (const o of [{ flowLabel: 7 }, { tos: 0x20 }, { dstLast: 9 }, { sport: 2 }, { ttl: 1 }]) {
    const { b, writes } = usoBatch();
    const a = udpDatagram({ v6: true, payload: pattern(64) });
    const c = udpDatagram({ v6: true, payload: pattern(64), ...o });
    b.add(a, a.length);
    b.add(c, c.length);
    b.flush();
    assert.equal(writes.length, 2, JSON.stringify(o));
  }
  // After a shorter datagram the run is closed: the next full one starts a new run.
  const { b, writes } = usoBatch();
  const dgs = [...datagrams(false, 3, 64, { lastSize: 20 }), ...datagrams(false, 2, 64, { id: 303 })];
  for (const d of dgs) b.add(d, d.length);
  b.flush();
  assert.equal(writes.length, 2);
  assert.deepEqual(writes.flatMap(kernelSplitUdp), dgs, 'all five back in order');
});

test('UDP runs: IPv4 ids must count up without DF; with DF (atomic datagrams) the kernel renumbers from the first', () => {
  // No DF, ids out of sequence: not merged (the id matters for reassembly).
  const { b, writes } = usoBatch();
  const a = udpDatagram({ df: false, id: 10, payload: pattern(64) });
  const c = udpDatagram({ df: false, id: 12, payload: pattern(64) });
  b.add(a, a.length);
  b.add(c, c.length);
  b.flush();
  assert.equal(writes.length, 2);
  // No DF, consecutive ids (wrapping at 65535): merged, byte-exact.
  const { b: b2, writes: w2 } = usoBatch();
  const seq = datagrams(false, 3, 64, { df: false, id: 65534 });
  assert.equal(seq[2]!.readUInt16BE(4), 0, 'the ids wrap');
  for (const d of seq) b2.add(d, d.length);
  b2.flush();
  assert.equal(w2.length, 1);
  assert.deepEqual(kernelSplitUdp(w2[0]!), seq);
  // DF with id 0 on every datagram (an unconnected socket): merged; only the id (and the IP checksum) differ after segmentation.
  const { b: b3, writes: w3 } = usoBatch();
  const zeros = [0, 1, 2].map((i) => udpDatagram({ id: 0, payload: pattern(64, i) }));
  for (const d of zeros) b3.add(d, d.length);
  b3.flush();
  assert.equal(w3.length, 1);
  const back = kernelSplitUdp(w3[0]!);
  back.forEach((d, i) => {
    assert.equal(d.readUInt16BE(4), i);
    assert.ok(ipv4HeaderOk(d) && l4ChecksumOk(d));
    assert.deepEqual(d.subarray(20), zeros[i]!.subarray(20), 'UDP header and payload identical');
  });
});

test('UDP runs: no-checksum IPv4 datagrams, empty or padded ones, fragments are written alone at once', () => {
  const { b, writes } = usoBatch();
  const nock = [0, 1].map((i) => udpDatagram({ noChecksum: true, id: 300 + i, payload: pattern(64) }));
  b.add(nock[0]!, nock[0]!.length);
  assert.equal(writes.length, 1, 'a datagram without checksum is not held');
  b.add(nock[1]!, nock[1]!.length);
  assert.equal(writes.length, 2);
  assert.ok(writes.every((w) => w.hdr.equals(Buffer.alloc(VNET_HDR_LEN))));
  const empty = udpDatagram({ payload: Buffer.alloc(0) });
  b.add(empty, empty.length);
  assert.equal(writes.length, 3, 'an empty datagram is not held');
  const [d1, d2] = datagrams(false, 2, 64);
  const padded = Buffer.concat([d2!, Buffer.from('JUNK')]);
  b.add(d1!, d1!.length);
  b.add(padded, padded.length);
  assert.equal(writes.length, 5, 'the padded datagram (IP length disagrees) ends the run and is written alone');
  assert.deepEqual(writes[4]!.pkt, padded);
  const frag = udpDatagram({ payload: pattern(64) });
  frag.writeUInt16BE(0x2000, 6); // MF
  b.add(frag, frag.length);
  assert.equal(writes.length, 6, 'a fragment is not held');
  b.flush();
  assert.equal(b.udpSuperPackets, 0);
});

test('UDP and TCP interleaved: each packet of another kind flushes the pending run first, order kept', () => {
  const { b, writes } = usoBatch();
  const u = datagrams(false, 3, 64);
  const t = segments(false, 2, 1000);
  const u2 = datagrams(true, 2, 64);
  const all = [u[0]!, u[1]!, t[0]!, t[1]!, u[2]!, ...u2];
  for (const p of all) b.add(p, p.length);
  b.flush();
  assert.deepEqual(writes.map((w) => w.hdr[1]), [GSO_UDP_L4, GSO_TCPV4, 0, GSO_UDP_L4]);
  const back: Buffer[] = [];
  for (const w of writes) {
    if (w.hdr[1] === GSO_TCPV4) back.push(...split(Buffer.concat([w.hdr, w.pkt])).out);
    else back.push(...kernelSplitUdp(w));
  }
  assert.deepEqual(back, all);
});

test(`UDP runs stop at ${MAX_UDP_SEGS} datagrams and before 64 KiB; every byte is written once, in order`, () => {
  for (const [n, size] of [[150, 64], [60, 1400], [64, 1200]] as const) {
    const { b, writes } = usoBatch();
    const dgs = datagrams(false, n, size);
    for (const d of dgs) b.add(d, d.length);
    b.flush();
    for (const w of writes) {
      assert.ok(w.pkt.length <= 65535);
      assert.ok((w.pkt.length - 28) / size <= MAX_UDP_SEGS);
    }
    if (size === 64) assert.deepEqual(writes.map((w) => (w.pkt.length - 28) / 64), [64, 64, 22]);
    if (size === 1400) assert.ok(writes.length === 2 && writes[0]!.pkt.length + 1400 > 65535, 'the first run is as large as fits');
    assert.deepEqual(writes.flatMap(kernelSplitUdp), dgs, `${n} x ${size}`);
  }
});

test('without USO on the device UDP datagrams are written one by one behind a zero header', () => {
  const { b, writes } = batch(true);
  const dgs = datagrams(false, 4, 64);
  for (const d of dgs) b.add(d, d.length);
  assert.equal(writes.length, 4, 'nothing held');
  assert.ok(writes.every((w, i) => w.hdr.equals(Buffer.alloc(VNET_HDR_LEN)) && w.pkt.equals(dgs[i]!)));
});

test('malformed UDP GSO reads are refused and nothing is emitted', () => {
  const dgs = datagrams(false, 3, 100);
  const { b, writes } = usoBatch();
  for (const d of dgs) b.add(d, d.length);
  b.flush();
  const good = Buffer.concat([writes[0]!.hdr, writes[0]!.pkt]);
  const cases: [string, (x: Buffer) => void][] = [
    ['csum_offset not the UDP checksum', (x) => x.writeUInt16LE(16, 8)],
    ['csum_start not at the UDP header', (x) => x.writeUInt16LE(24, 6)],
    ['gso_size 0', (x) => x.writeUInt16LE(0, 4)],
    ['UDP_L4 on a TCP packet', (x) => (x[VNET_HDR_LEN + 9] = 6)],
    ['IPv4 fragment', (x) => x.writeUInt16BE(0x2000, VNET_HDR_LEN + 6)],
    ['shorter than a UDP header', () => undefined],
  ];
  for (const [what, f] of cases) {
    const x = what.startsWith('shorter') ? Buffer.from(good.subarray(0, VNET_HDR_LEN + 24)) : Buffer.from(good);
    f(x);
    const { r, out } = split(x);
    assert.equal(r, SplitResult.Malformed, what);
    assert.equal(out.length, 0, what);
  }
});

test('LARKTUN_TUN_OFFLOAD levels: default asks for USO too, tso without it, csum, 0; anything else is refused', async () => {
  const { offloadMask } = await import('../../src/dataplane/tun.js');
  const CSUM = 0x01, TSO4 = 0x02, TSO6 = 0x04, USO4 = 0x20, USO6 = 0x40;
  assert.equal(offloadMask({}), CSUM | TSO4 | TSO6 | USO4 | USO6);
  assert.equal(offloadMask({ LARKTUN_TUN_OFFLOAD: 'on' }), CSUM | TSO4 | TSO6 | USO4 | USO6);
  assert.equal(offloadMask({ LARKTUN_TUN_OFFLOAD: ' TSO ' }), CSUM | TSO4 | TSO6);
  assert.equal(offloadMask({ LARKTUN_TUN_OFFLOAD: 'csum' }), CSUM);
  assert.equal(offloadMask({ LARKTUN_TUN_OFFLOAD: '0' }), 0);
  assert.throws(() => offloadMask({ LARKTUN_TUN_OFFLOAD: 'uso' }), /must be 1, tso, csum or 0, got "uso"/);
});
