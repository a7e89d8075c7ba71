// TUN offloads (src/dataplane/offload.ts): TSO split on read, GRO coalesce on
// write. Checksums are verified with an independent reference computation
// (byte pairs, written out plainly here), not with the module's own helpers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { splitGso, GroBatch, sum16, fold16, SplitResult, VNET_HDR_LEN, GSO_TCPV4, GSO_TCPV6, VNET_F_NEEDS_CSUM } from '../../src/dataplane/offload.js';

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
  mk('UDP GSO (never enabled)', (b) => ((b[1] = 3), b));
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
