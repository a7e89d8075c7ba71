// Data-plane packet filter: rule matching (v4/v6, ranges, '*', default protocols,
// ICMP without ports, portless protocols), packet parsing (options, extension
// headers, fragments, truncation), flow tracking (replies, expiry, table bound,
// ICMP errors), policy swaps, a property test against a naive matcher, and the
// per-node and relay filters compiled from a real policy.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { type AclNetwork, type FilterRule, checkPolicy, compileNetwork } from '../../src/acl/index.js';
import { parseIP } from '../../src/net/addr.js';
import {
  FlowTable,
  FilterState,
  PacketFilter,
  PacketKind,
  ParsedPacket,
  Verdict,
  parsePacket,
} from '../../src/dataplane/filter.js';

// ---- packet builders ---------------------------------------------------------

const SYN = 0x02;
const ACK = 0x10;
const FIN = 0x01;
const RST = 0x04;

function addrBytes(s: string): Buffer {
  const ip = parseIP(s);
  if (!ip) throw new Error(`bad ip ${s}`);
  const n = ip.family === 4 ? 4 : 16;
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Number((ip.value >> BigInt(8 * (n - 1 - i))) & 0xffn);
  return b;
}

const isV6 = (s: string): boolean => s.includes(':');

function tcpH(sport: number, dport: number, flags = SYN): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt16BE(sport, 0);
  b.writeUInt16BE(dport, 2);
  b[12] = 5 << 4;
  b[13] = flags;
  return b;
}

function udpH(sport: number, dport: number, body = 0): Buffer {
  const b = Buffer.alloc(8 + body);
  b.writeUInt16BE(sport, 0);
  b.writeUInt16BE(dport, 2);
  b.writeUInt16BE(8 + body, 4);
  return b;
}

function sctpH(sport: number, dport: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(sport, 0);
  b.writeUInt16BE(dport, 2);
  return b;
}

function icmpH(type: number, code = 0, id = 0, rest?: Buffer): Buffer {
  const b = Buffer.alloc(8);
  b[0] = type;
  b[1] = code;
  b.writeUInt16BE(id, 4);
  return rest ? Buffer.concat([b, rest]) : b;
}

interface V4Opts {
  id?: number;
  fragOff?: number;
  mf?: boolean;
  options?: number; // bytes of IP options (multiple of 4)
}

function ip4(src: string, dst: string, proto: number, payload: Buffer, o: V4Opts = {}): Buffer {
  const opt = o.options ?? 0;
  const h = Buffer.alloc(20 + opt);
  h[0] = 0x40 | ((20 + opt) / 4);
  h.writeUInt16BE(h.length + payload.length, 2);
  h.writeUInt16BE(o.id ?? 0, 4);
  h.writeUInt16BE(((o.mf ? 0x2000 : 0) | (o.fragOff ?? 0)) >>> 0, 6);
  h[8] = 64;
  h[9] = proto;
  addrBytes(src).copy(h, 12);
  addrBytes(dst).copy(h, 16);
  if (opt > 0) h.fill(1, 20); // NOP options
  return Buffer.concat([h, payload]);
}

/** ext: [nextHeaderOfThisExt... ] built by the caller; `nh` is the first next header. */
function ip6(src: string, dst: string, nh: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(40);
  h[0] = 0x60;
  h.writeUInt16BE(payload.length, 4);
  h[6] = nh;
  h[7] = 64;
  addrBytes(src).copy(h, 8);
  addrBytes(dst).copy(h, 24);
  return Buffer.concat([h, payload]);
}

/** An 8-byte option-style extension header (HBH 0, routing 43, dest opts 60). */
function ext(next: number, extraUnits = 0): Buffer {
  const b = Buffer.alloc(8 * (1 + extraUnits));
  b[0] = next;
  b[1] = extraUnits;
  if (b.length > 2) b[2] = 1; // PadN-ish filler, content is not inspected
  return b;
}

function frag6(next: number, offsetUnits: number, more: boolean, id: number): Buffer {
  const b = Buffer.alloc(8);
  b[0] = next;
  b.writeUInt16BE(((offsetUnits << 3) | (more ? 1 : 0)) >>> 0, 2);
  b.writeUInt32BE(id >>> 0, 4);
  return b;
}

/** A packet of either family by addresses. */
function ip(src: string, dst: string, proto: number, payload: Buffer): Buffer {
  return isV6(src) ? ip6(src, dst, proto, payload) : ip4(src, dst, proto, payload);
}

const tcp = (src: string, sp: number, dst: string, dp: number, flags = SYN): Buffer => ip(src, dst, 6, tcpH(sp, dp, flags));
const udp = (src: string, sp: number, dst: string, dp: number): Buffer => ip(src, dst, 17, udpH(sp, dp));
const echo = (src: string, dst: string, id: number, reply = false): Buffer =>
  isV6(src) ? ip6(src, dst, 58, icmpH(reply ? 129 : 128, 0, id)) : ip4(src, dst, 1, icmpH(reply ? 0 : 8, 0, id));

const R = (src: string[], dst: [string, number, number][], proto?: number[]): FilterRule => ({
  SrcIPs: src,
  DstPorts: dst.map(([IP, First, Last]) => ({ IP, Ports: { First, Last } })),
  ...(proto ? { IPProto: proto } : {}),
});

const A4 = '100.64.0.1';
const B4 = '100.64.0.2';
const C4 = '100.64.0.3';
const A6 = 'fd7a:115c:a1e0::1';
const B6 = 'fd7a:115c:a1e0::2';
const C6 = 'fd7a:115c:a1e0::3';

// ---- rule matching -------------------------------------------------------------

describe('PacketFilter rule matching', () => {
  it('matches source, destination and port for IPv4 and IPv6', () => {
    const f = PacketFilter.compile([R([A4, A6], [[B4, 22, 22], [B6, 22, 22]])]);
    assert.deepEqual(f.errors, []);
    for (const [a, b, c] of [[A4, B4, C4], [A6, B6, C6]] as const) {
      assert.equal(f.matchPacket(tcp(a, 40000, b, 22), 9999), true, `${a} -> ${b}:22`);
      assert.equal(f.matchPacket(tcp(a, 40000, b, 23), 9999), false);
      assert.equal(f.matchPacket(tcp(c, 40000, b, 22), 9999), false, 'other source');
      assert.equal(f.matchPacket(tcp(a, 40000, c, 22), 9999), false, 'other destination');
      assert.equal(f.matchPacket(udp(a, 40000, b, 22), 9999), true, 'default protos include UDP');
      assert.equal(f.matchPacket(ip(a, b, 132, sctpH(1, 22)), 9999), false, 'SCTP is not a default proto');
    }
    // A v4 rule does not leak into v6 and vice versa.
    const g = PacketFilter.compile([R([A4], [[B4, 0, 65535]])]);
    assert.equal(g.matchPacket(tcp(A6, 1, B6, 22), 9999), false);
  });

  it('CIDRs, a-b ranges and * for sources and destinations', () => {
    const f = PacketFilter.compile([
      R(['10.1.0.0/16'], [['192.168.6.0/24', 80, 80]]),
      R(['10.2.0.5-10.2.0.9'], [['fd00::10-fd00::1f', 443, 443]]),
      R(['fd00:1::/64'], [['fd00::10-fd00::1f', 443, 443]]),
      R(['*'], [['100.64.0.9', 8000, 8100]]),
      R([A4], [['*', 53, 53]]),
    ]);
    assert.deepEqual(f.errors, []);
    assert.equal(f.allows(6, '10.1.255.255', '192.168.6.77', 80), true);
    assert.equal(f.allows(6, '10.0.255.255', '192.168.6.77', 80), false);
    assert.equal(f.allows(6, '10.1.0.0', '192.168.7.0', 80), false);
    // The v4 range source only reaches v6 destinations of the same rule if the family matches.
    assert.equal(f.allows(6, '10.2.0.5', 'fd00::10', 443), false);
    assert.equal(f.allows(6, 'fd00:1::abcd', 'fd00::1f', 443), true);
    assert.equal(f.allows(6, 'fd00:1::abcd', 'fd00::20', 443), false);
    assert.equal(f.allows(6, 'fd00:2::1', 'fd00::10', 443), false);
    assert.equal(f.allows(17, '8.8.8.8', '100.64.0.9', 8050), true);
    assert.equal(f.allows(17, 'fd00:9::9', '100.64.0.9', 8050), false, 'family mismatch');
    assert.equal(f.allows(17, '8.8.8.8', '100.64.0.9', 8101), false);
    assert.equal(f.allows(17, A4, '1.2.3.4', 53), true);
    assert.equal(f.allows(17, A4, '1.2.3.4', 54), false);
    // '*' covers IPv6 too.
    const g = PacketFilter.compile([R(['*'], [['*', 22, 22]])]);
    assert.equal(g.allows(6, '::1', 'ffff::1', 22), true);
    assert.equal(g.allows(6, '0.0.0.0', '255.255.255.255', 22), true);
    assert.equal(g.allows(6, '0.0.0.0', '255.255.255.255', 21), false);
  });

  it('explicit IPProto narrows; omitted or empty means TCP, UDP, ICMP, ICMPv6', () => {
    const f = PacketFilter.compile([R([A4], [[B4, 5000, 5000]], [17]), { ...R([A4], [[C4, 5000, 5000]]), IPProto: [] }]);
    assert.equal(f.allows(17, A4, B4, 5000), true);
    assert.equal(f.allows(6, A4, B4, 5000), false);
    assert.equal(f.allows(6, A4, C4, 5000), true);
    assert.equal(f.allows(17, A4, C4, 5000), true);
    assert.equal(f.allows(132, A4, C4, 5000), false);
    const s = PacketFilter.compile([R([A6], [[B6, 9000, 9100]], [132])]);
    assert.equal(s.matchPacket(ip6(A6, B6, 132, sctpH(1, 9050)), 9999), true);
    assert.equal(s.matchPacket(ip6(A6, B6, 132, sctpH(1, 9101)), 9999), false);
  });

  it('ICMP has no ports: any port range to the destination admits it, whatever IPProto says', () => {
    const f = PacketFilter.compile([R([A4, A6], [[B4, 22, 22], [B6, 443, 443]], [6])]);
    assert.equal(f.matchPacket(echo(A4, B4, 1), 9999), true);
    assert.equal(f.matchPacket(echo(A6, B6, 1), 9999), true);
    assert.equal(f.matchPacket(echo(A4, C4, 1), 9999), false);
    assert.equal(f.matchPacket(echo(C4, B4, 1), 9999), false);
    assert.equal(f.matchPacket(udp(A4, 1, B4, 22), 9999), false, 'but UDP still needs IPProto');
  });

  it('other protocols match only when listed and the range is 0-65535', () => {
    const f = PacketFilter.compile([
      R([A4], [[B4, 0, 65535]], [47]),
      R([A4], [[C4, 1, 65535]], [47]),
      R([A4], [[C4, 0, 65535]]), // default protos: no GRE
    ]);
    const gre = (d: string): Buffer => ip4(A4, d, 47, Buffer.alloc(8));
    assert.equal(f.matchPacket(gre(B4), 9999), true);
    assert.equal(f.matchPacket(gre(C4), 9999), false);
    assert.equal(f.matchPacket(ip4(A4, B4, 50, Buffer.alloc(8)), 9999), false, 'ESP not listed');
    // ICMPv4 inside IPv6 is a portless "other" protocol there: it needs the full
    // port range (the default protocols do list 1, as in Tailscale).
    const g = PacketFilter.compile([R([A6], [[B6, 0, 65535]], [6])]);
    assert.equal(g.matchPacket(ip6(A6, B6, 1, icmpH(8, 0, 1)), 9999), false);
    const h = PacketFilter.compile([R([A6], [[B6, 0, 65535]])]);
    assert.equal(h.matchPacket(ip6(A6, B6, 1, icmpH(8, 0, 1)), 9999), true);
    const k = PacketFilter.compile([R([A6], [[B6, 0, 65534]])]);
    assert.equal(k.matchPacket(ip6(A6, B6, 1, icmpH(8, 0, 1)), 9999), false);
  });

  it('skips invalid entries, keeps the rest, never throws', () => {
    const rules = [
      R(['100.64.0.1/24', 'cap:foo', 'nonsense', '10.0.0.9-10.0.0.1', '10.0.0.1-fd00::1', A4], [[B4, 22, 22], ['bad', 80, 80], [B4, 90, 80]]),
      { SrcIPs: [A4], DstPorts: [{ IP: B4, Ports: { First: 100, Last: 70000 } }] },
      { SrcIPs: [A4], DstPorts: [{ IP: C4, Ports: { First: 1, Last: 1 } }], IPProto: [6, 300, -1] },
      { SrcIPs: [A4], CapGrant: [{ Dsts: [`${B4}/32`], CapMap: { 'example.com/cap/x': [] } }] },
      { SrcIPs: [], DstPorts: [{ IP: '*', Ports: { First: 0, Last: 65535 } }] },
    ] as FilterRule[];
    const f = PacketFilter.compile(rules);
    assert.equal(f.errors.length, 10, f.errors.join('\n'));
    assert.ok(f.errors.some((e) => /non-network bits/.test(e)));
    assert.ok(f.errors.some((e) => /capabilities/.test(e)));
    assert.equal(f.allows(6, A4, B4, 22), true);
    assert.equal(f.allows(6, '100.64.0.77', B4, 22), false);
    assert.equal(f.allows(6, A4, B4, 85), false);
    assert.equal(f.allows(6, A4, B4, 100), false);
    assert.equal(f.allows(6, A4, C4, 1), true);
    assert.equal(f.ruleCount, 5);
  });

  it('an empty filter admits nothing', () => {
    const f = PacketFilter.empty();
    assert.equal(f.matchPacket(tcp(A4, 1, B4, 22), 9999), false);
    assert.equal(f.matchPacket(echo(A6, B6, 1), 9999), false);
  });
});

// ---- parsing -----------------------------------------------------------------

describe('packet parsing', () => {
  const p = new ParsedPacket();

  it('IPv4 with options, TCP flags, ICMP echo ids', () => {
    assert.equal(parsePacket(ip4(A4, B4, 6, tcpH(1234, 22, SYN | ACK), { options: 8 }), 9999, p), true);
    assert.equal(p.family, 4);
    assert.equal(p.sport, 1234);
    assert.equal(p.dport, 22);
    assert.equal(p.tcpFlags, SYN | ACK);
    assert.equal(parsePacket(echo(A4, B4, 77), 9999, p), true);
    assert.deepEqual([p.sport, p.dport, p.kind], [77, 0, PacketKind.Flow]);
    assert.equal(parsePacket(echo(A4, B4, 77, true), 9999, p), true);
    assert.deepEqual([p.sport, p.dport], [0, 77]);
    assert.equal(parsePacket(ip4(A4, B4, 1, icmpH(13)), 9999, p), true);
    assert.equal(p.kind, PacketKind.IcmpInfo);
  });

  it('skips IPv6 hop-by-hop, routing, destination options and AH headers', () => {
    const ah = Buffer.alloc(12);
    ah[0] = 17; // next: UDP
    ah[1] = 1; // AH length: (1 + 2) * 4 = 12 bytes
    // IPv6 (nh 0) -> hop-by-hop (-> 43) -> routing (-> 60) -> dest opts, 16 bytes (-> 51) -> AH (-> 17) -> UDP
    const chain = Buffer.concat([ext(43), ext(60), ext(51, 1), ah, udpH(5353, 53)]);
    const pk = ip6(A6, B6, 0, chain);
    assert.equal(parsePacket(pk, pk.length, p), true);
    assert.equal(p.proto, 17);
    assert.equal(p.dport, 53);
    const f = PacketFilter.compile([R([A6], [[B6, 53, 53]])]);
    assert.equal(f.matchPacket(pk, pk.length), true);
    // Too many extension headers is malformed.
    const many = Buffer.concat([...Array.from({ length: 11 }, () => ext(60)), ext(17), udpH(1, 53)]);
    assert.equal(parsePacket(ip6(A6, B6, 60, many), 9999, p), false);
  });

  it('fragments: first has ports; later ones are Fragment kind; RFC 1858 overlap is malformed', () => {
    assert.equal(parsePacket(ip4(A4, B4, 17, udpH(1, 53, 40), { id: 9, mf: true }), 9999, p), true);
    assert.deepEqual([p.firstFragment, p.dport, p.fragId], [true, 53, 9]);
    assert.equal(parsePacket(ip4(A4, B4, 17, Buffer.alloc(16), { id: 9, fragOff: 6 }), 9999, p), true);
    assert.equal(p.kind, PacketKind.Fragment);
    assert.equal(parsePacket(ip4(A4, B4, 6, Buffer.alloc(16), { fragOff: 1, mf: true }), 9999, p), false);
    assert.equal(parsePacket(ip4(A4, B4, 6, Buffer.alloc(8), { mf: true }), 9999, p), false, 'tiny first TCP fragment');
    const f6 = ip6(A6, B6, 44, Buffer.concat([frag6(17, 0, true, 0xdeadbeef), udpH(1, 53)]));
    assert.equal(parsePacket(f6, f6.length, p), true);
    assert.deepEqual([p.firstFragment, p.dport, p.fragId, p.fragProto], [true, 53, 0xdeadbeef, 17]);
    const n6 = ip6(A6, B6, 44, Buffer.concat([frag6(17, 100, false, 0xdeadbeef), Buffer.alloc(8)]));
    assert.equal(parsePacket(n6, n6.length, p), true);
    assert.equal(p.kind, PacketKind.Fragment);
  });

  it('ICMP errors carry the quoted flow', () => {
    const quoted = udp(A4, 5000, B4, 53).subarray(0, 28);
    assert.equal(parsePacket(ip4(B4, A4, 1, icmpH(3, 3, 0, quoted)), 9999, p), true);
    assert.equal(p.kind, PacketKind.IcmpError);
    assert.deepEqual([p.innerValid, p.innerProto, p.innerSport, p.innerDport], [true, 17, 5000, 53]);
    assert.equal(parsePacket(ip4(B4, A4, 1, icmpH(3, 3, 0, quoted.subarray(0, 24))), 9999, p), true);
    assert.equal(p.innerValid, false, 'quote shorter than 8 transport bytes');
  });

  it('truncated and malformed packets are rejected without throwing', () => {
    const samples = [
      tcp(A4, 1, B4, 22),
      udp(A6, 1, B6, 53),
      echo(A4, B4, 3),
      echo(A6, B6, 3, true),
      ip4(A4, B4, 17, udpH(1, 2), { options: 12 }),
      ip6(A6, B6, 0, Buffer.concat([ext(44), frag6(6, 0, true, 1), tcpH(1, 2)])),
      ip4(B4, A4, 1, icmpH(11, 0, 0, udp(A4, 1, B4, 2))),
    ];
    const f = PacketFilter.compile([R(['*'], [['*', 0, 65535]], [1, 6, 17, 58])]);
    const st = new FilterState(f);
    for (const s of samples) {
      assert.equal(parsePacket(s, s.length, p), true);
      for (let n = 0; n < s.length; n++) {
        assert.equal(parsePacket(s, n, p), false, `truncated to ${n}`);
        assert.equal(st.check(s, n, 0), false);
        assert.equal(st.check(s.subarray(0, n), s.length, 0), false, 'len beyond the buffer is clamped');
      }
    }
    const bad = [
      Buffer.from([0x45]),
      Buffer.concat([Buffer.from([0x44]), Buffer.alloc(40)]), // IHL 4
      Buffer.concat([Buffer.from([0x55]), Buffer.alloc(40)]), // version 5
      Buffer.alloc(0),
    ];
    for (const b of bad) assert.equal(st.check(b, b.length, 0), false);
    const big = tcp(A4, 1, B4, 22);
    big.writeUInt16BE(5000, 2); // total length beyond the packet
    assert.equal(st.check(big, big.length, 0), false);
    assert.ok(st.counters.filter_drop_malformed > 0);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 120 }), fc.nat(200), (bytes, n) => {
        const b = Buffer.from(bytes);
        st.check(b, n, 1);
        st.noteOutbound(b, n, 1);
        parsePacket(b, b.length, p);
        return true;
      }),
      { numRuns: 3000 },
    );
  });
});

// ---- flows ---------------------------------------------------------------------

describe('FilterState flow tracking (node)', () => {
  it('replies to outbound flows pass; unsolicited packets the other way do not', () => {
    for (const [a, b] of [[A4, B4], [A6, B6]] as const) {
      const st = new FilterState(PacketFilter.empty());
      assert.equal(st.check(udp(b, 53, a, 5000), 9999, 0), false, 'unsolicited');
      st.noteOutbound(udp(a, 5000, b, 53), 9999, 1);
      assert.equal(st.check(udp(b, 53, a, 5000), 9999, 2), true);
      assert.equal(st.lastVerdict, Verdict.AllowReply);
      assert.equal(st.check(udp(b, 54, a, 5000), 9999, 3), false, 'other source port');
      assert.equal(st.check(udp(b, 53, a, 5001), 9999, 3), false, 'other destination port');
      assert.equal(st.check(tcp(b, 53, a, 5000), 9999, 3), false, 'other protocol');
      assert.equal(st.check(udp(isV6(a) ? C6 : C4, 53, a, 5000), 9999, 3), false, 'other host');
      assert.equal(st.check(udp(a, 5000, b, 53), 9999, 3), false, 'own tuple inbound is not a reply');
      // TCP: the reverse tuple of an outbound SYN.
      st.noteOutbound(tcp(a, 40000, b, 443, SYN), 9999, 4);
      assert.equal(st.check(tcp(b, 443, a, 40000, SYN | ACK), 9999, 5), true);
      assert.equal(st.check(tcp(b, 443, a, 40001, ACK), 9999, 5), false);
      assert.equal(st.check(tcp(b, 80, a, 40000, SYN), 9999, 5), false);
    }
  });

  it('ICMP echo replies match the request id', () => {
    for (const [a, b] of [[A4, B4], [A6, B6]] as const) {
      const st = new FilterState();
      st.noteOutbound(echo(a, b, 7), 9999, 0);
      assert.equal(st.check(echo(b, a, 7, true), 9999, 1), true);
      assert.equal(st.check(echo(b, a, 8, true), 9999, 1), false);
      assert.equal(st.check(echo(b, a, 7), 9999, 1), false, 'an echo request from the peer is not a reply');
      // A rule to any port of ours admits pings (IP-only, like Tailscale).
      st.setFilter(PacketFilter.compile([R([b], [[a, 22, 22]], [6])]));
      assert.equal(st.check(echo(b, a, 9), 9999, 2), true);
      assert.equal(st.lastVerdict, Verdict.AllowRule);
    }
  });

  it('inbound flows admitted by rules are tracked so they continue and the node can answer', () => {
    const st = new FilterState(PacketFilter.compile([R([B4], [[A4, 22, 22]])]));
    assert.equal(st.check(tcp(B4, 50000, A4, 22, SYN), 9999, 0), true);
    assert.equal(st.lastVerdict, Verdict.AllowRule);
    st.noteOutbound(tcp(A4, 22, B4, 50000, SYN | ACK), 9999, 1);
    assert.equal(st.flows.size, 1, 'the reply refreshed the admitted flow instead of adding one');
    assert.equal(st.check(tcp(B4, 50000, A4, 22, ACK), 9999, 2), true);
    assert.equal(st.lastVerdict, Verdict.AllowFlow);
    assert.equal(st.check(tcp(B4, 50000, A4, 23, SYN), 9999, 2), false);
  });

  it('idle timeouts: 120 s UDP/ICMP, 2 h established TCP, 120 s opening, 60 s closing', () => {
    let st = new FilterState();
    st.noteOutbound(udp(A4, 5000, B4, 53), 9999, 0);
    assert.equal(st.check(udp(B4, 53, A4, 5000), 9999, 119_000), true, 'refreshes');
    assert.equal(st.check(udp(B4, 53, A4, 5000), 9999, 239_000), true);
    assert.equal(st.check(udp(B4, 53, A4, 5000), 9999, 359_001), false, 'idle > 120 s');
    assert.equal(st.flows.size, 0, 'the expired flow was removed');
    st = new FilterState();
    st.noteOutbound(echo(A4, B4, 1), 9999, 0);
    assert.equal(st.check(echo(B4, A4, 1, true), 9999, 120_000), true);
    assert.equal(st.check(echo(B4, A4, 1, true), 9999, 240_001), false);
    // Established TCP lives 2 h idle.
    st = new FilterState();
    st.noteOutbound(tcp(A4, 40000, B4, 22, SYN), 9999, 0);
    assert.equal(st.check(tcp(B4, 22, A4, 40000, SYN | ACK), 9999, 10), true);
    assert.equal(st.check(tcp(B4, 22, A4, 40000, ACK), 9999, 10 + 7_000_000), true);
    assert.equal(st.check(tcp(B4, 22, A4, 40000, ACK), 9999, 20 + 2 * 7_200_000), false);
    // Half-open: no reply within 120 s.
    st = new FilterState();
    st.noteOutbound(tcp(A4, 40001, B4, 22, SYN), 9999, 0);
    assert.equal(st.check(tcp(B4, 22, A4, 40001, SYN | ACK), 9999, 120_001), false);
    // Closing after FIN: 60 s idle.
    st = new FilterState();
    st.noteOutbound(tcp(A4, 40002, B4, 22, SYN), 9999, 0);
    assert.equal(st.check(tcp(B4, 22, A4, 40002, SYN | ACK), 9999, 1), true);
    st.noteOutbound(tcp(A4, 40002, B4, 22, FIN | ACK), 9999, 2);
    assert.equal(st.check(tcp(B4, 22, A4, 40002, ACK), 9999, 50_000), true);
    assert.equal(st.check(tcp(B4, 22, A4, 40002, ACK), 9999, 110_001), false);
    // A new SYN on a closed tuple starts over.
    st = new FilterState();
    st.noteOutbound(tcp(A4, 40003, B4, 22, SYN), 9999, 0);
    st.check(tcp(B4, 22, A4, 40003, RST | ACK), 9999, 1);
    st.noteOutbound(tcp(A4, 40003, B4, 22, SYN), 9999, 2);
    assert.equal(st.check(tcp(B4, 22, A4, 40003, SYN | ACK), 9999, 100_000), true, 'opening timeout, not closing');
  });

  it('ICMP errors pass only when they quote a tracked flow sent to the error destination', () => {
    for (const [a, b, c] of [[A4, B4, C4], [A6, B6, C6]] as const) {
      const v6 = isV6(a);
      const err = (from: string, to: string, quoted: Buffer): Buffer =>
        v6 ? ip6(from, to, 58, icmpH(2, 0, 0, quoted)) : ip4(from, to, 1, icmpH(3, 4, 0, quoted));
      const st = new FilterState();
      st.noteOutbound(udp(a, 5000, b, 53), 9999, 0);
      assert.equal(st.check(err(c, a, udp(a, 5000, b, 53)), 9999, 1), true, 'router error about our flow');
      assert.equal(st.lastVerdict, Verdict.AllowRelated);
      assert.equal(st.check(err(b, a, udp(a, 5001, b, 53)), 9999, 1), false, 'untracked flow');
      assert.equal(st.check(err(b, a, udp(c, 5000, b, 53)), 9999, 1), false, 'quoted source is not the error destination');
      st.noteOutbound(echo(a, b, 5), 9999, 0);
      assert.equal(st.check(err(b, a, echo(a, b, 5)), 9999, 1), true, 'error about our ping');
      // Errors about packets of a flow the peer started and we admitted also pass.
      const st2 = new FilterState(PacketFilter.compile([R([b], [[a, 80, 80]])]));
      assert.equal(st2.check(tcp(b, 1000, a, 80), 9999, 0), true);
      assert.equal(st2.check(err(c, a, tcp(a, 80, b, 1000, SYN | ACK)), 9999, 1), true);
      assert.equal(st2.check(err(c, a, tcp(a, 80, b, 1001, SYN | ACK)), 9999, 1), false);
    }
  });

  it('drops multicast, broadcast and link-local destinations even under *', () => {
    const st = new FilterState(PacketFilter.compile([R(['*'], [['*', 0, 65535]])]));
    assert.equal(st.check(udp(A4, 5353, '224.0.0.251', 5353), 9999, 0), false);
    assert.equal(st.check(udp(A4, 68, '255.255.255.255', 67), 9999, 0), false);
    assert.equal(st.check(udp(A4, 1, '169.254.1.1', 2), 9999, 0), false);
    assert.equal(st.check(udp(A6, 1, 'ff02::fb', 5353), 9999, 0), false);
    assert.equal(st.check(udp(A6, 1, 'fe80::1', 2), 9999, 0), false);
    assert.equal(st.counters.filter_drop_destination, 5);
    assert.equal(st.check(udp(A4, 1, B4, 2), 9999, 0), true);
  });
});

describe('FilterState counters', () => {
  it('every check is counted under exactly one verdict', () => {
    const st = new FilterState(PacketFilter.compile([R([B4], [[A4, 22, 22]])]));
    st.noteOutbound(udp(A4, 5000, C4, 53), 9999, 0);
    const pkts: [Buffer, number][] = [
      [tcp(B4, 1, A4, 22), Verdict.AllowRule],
      [tcp(B4, 1, A4, 22, ACK), Verdict.AllowFlow],
      [udp(C4, 53, A4, 5000), Verdict.AllowReply],
      [ip4(C4, A4, 1, icmpH(3, 1, 0, udp(A4, 5000, C4, 53))), Verdict.AllowRelated],
      [tcp(C4, 1, A4, 22), Verdict.DropNoRule],
      [Buffer.from([0x45, 0]), Verdict.DropMalformed],
      [udp(B4, 1, '239.1.1.1', 22), Verdict.DropDestination],
      [ip4(B4, A4, 6, Buffer.alloc(16), { id: 3, fragOff: 20 }), Verdict.DropFragment],
    ];
    for (const [b, v] of pkts) {
      st.check(b, b.length, 1);
      assert.equal(st.lastVerdict, v);
    }
    st.setFilter(PacketFilter.empty());
    st.check(tcp(B4, 1, A4, 22, ACK), 9999, 2);
    assert.equal(st.lastVerdict, Verdict.DropRevoked);
    const c = st.counters.toJSON();
    assert.equal(Object.values(c).reduce((x, y) => x + y, 0), pkts.length + 1);
    assert.deepEqual(
      Object.entries(c).filter(([, n]) => n !== 1),
      [['filter_allow_fragment', 0]],
    );
  });
});

describe('FilterState on a relay (both directions through one state)', () => {
  it('admitted flows let replies through; unsolicited flows the other way are dropped', () => {
    const st = new FilterState(PacketFilter.compile([R([A4, A6], [[B4, 22, 22], [B6, 22, 22]])]));
    for (const [a, b] of [[A4, B4], [A6, B6]] as const) {
      assert.equal(st.check(tcp(a, 40000, b, 22, SYN), 9999, 0), true);
      assert.equal(st.check(tcp(b, 22, a, 40000, SYN | ACK), 9999, 1), true);
      assert.equal(st.lastVerdict, Verdict.AllowReply);
      assert.equal(st.check(tcp(a, 40000, b, 22, ACK), 9999, 2), true);
      assert.equal(st.lastVerdict, Verdict.AllowFlow);
      assert.equal(st.check(tcp(b, 22, a, 40000, ACK), 9999, 3), true);
      assert.equal(st.check(tcp(b, 40000, a, 22, SYN), 9999, 3), false, 'B may not start flows to A');
      assert.equal(st.check(echo(b, a, 1), 9999, 3), false);
    }
  });

  it('non-first fragments pass only after their first fragment (v4 and v6)', () => {
    const st = new FilterState(PacketFilter.compile([R([A4, A6], [[B4, 53, 53], [B6, 53, 53]], [17])]));
    const first4 = ip4(A4, B4, 17, udpH(1000, 53, 40), { id: 42, mf: true });
    const rest4 = ip4(A4, B4, 17, Buffer.alloc(40), { id: 42, fragOff: 6 });
    const other4 = ip4(A4, B4, 17, Buffer.alloc(40), { id: 43, fragOff: 6 });
    assert.equal(st.check(rest4, 9999, 0), false, 'before the first fragment');
    assert.equal(st.lastVerdict, Verdict.DropFragment);
    assert.equal(st.check(first4, 9999, 1), true);
    assert.equal(st.check(rest4, 9999, 2), true);
    assert.equal(st.lastVerdict, Verdict.AllowFragment);
    assert.equal(st.check(other4, 9999, 2), false);
    assert.equal(st.check(rest4, 9999, 2 + 60_001), false, 'fragment record expires');
    // A denied first fragment admits nothing.
    const bad4 = ip4(A4, B4, 17, udpH(1000, 54, 40), { id: 44, mf: true });
    assert.equal(st.check(bad4, 9999, 3), false);
    assert.equal(st.check(ip4(A4, B4, 17, Buffer.alloc(40), { id: 44, fragOff: 6 }), 9999, 3), false);
    // IPv6.
    const first6 = ip6(A6, B6, 44, Buffer.concat([frag6(17, 0, true, 7), udpH(1000, 53, 32)]));
    const rest6 = ip6(A6, B6, 44, Buffer.concat([frag6(17, 5, false, 7), Buffer.alloc(24)]));
    assert.equal(st.check(rest6, 9999, 10), false);
    assert.equal(st.check(first6, 9999, 11), true);
    assert.equal(st.check(rest6, 9999, 12), true);
    // Reply fragments: the first fragment of a reply passes as a reply and admits the rest.
    const r1 = ip4(B4, A4, 17, udpH(53, 1000, 40), { id: 9, mf: true });
    const r2 = ip4(B4, A4, 17, Buffer.alloc(40), { id: 9, fragOff: 6 });
    assert.equal(st.check(r1, 9999, 20), true);
    assert.equal(st.check(r2, 9999, 21), true);
  });
});

describe('FilterState.setFilter', () => {
  it('a revoked grant cuts admitted flows at once; a restored one resumes them', () => {
    const allow = PacketFilter.compile([R([B4], [[A4, 22, 22]])]);
    const st = new FilterState(allow);
    assert.equal(st.check(tcp(B4, 50000, A4, 22, SYN), 9999, 0), true);
    st.noteOutbound(tcp(A4, 22, B4, 50000, SYN | ACK), 9999, 1);
    assert.equal(st.check(tcp(B4, 50000, A4, 22, ACK), 9999, 2), true);
    const gen = st.generation;
    st.setFilter(PacketFilter.empty());
    assert.equal(st.generation, gen + 1);
    assert.equal(st.check(tcp(B4, 50000, A4, 22, ACK), 9999, 3), false);
    assert.equal(st.lastVerdict, Verdict.DropRevoked);
    // The node's own replies on the revoked flow do not reopen it.
    st.noteOutbound(tcp(A4, 22, B4, 50000, ACK), 9999, 4);
    assert.equal(st.check(tcp(B4, 50000, A4, 22, ACK), 9999, 5), false);
    assert.equal(st.counters.filter_drop_revoked, 2);
    // A new filter that still grants it brings the flow back.
    st.setFilter(PacketFilter.compile([R([B4], [[A4, 1, 1024]])]));
    assert.equal(st.check(tcp(B4, 50000, A4, 22, ACK), 9999, 6), true);
    assert.equal(st.lastVerdict, Verdict.AllowFlow);
  });

  it('keeps replies to flows the node started', () => {
    const st = new FilterState(PacketFilter.compile([R([B4], [[A4, 0, 65535]])]));
    st.noteOutbound(udp(A4, 5000, B4, 53), 9999, 0);
    st.setFilter(PacketFilter.empty());
    assert.equal(st.check(udp(B4, 53, A4, 5000), 9999, 1), true);
    assert.equal(st.check(udp(B4, 53, A4, 5001), 9999, 1), false, 'new flows are re-checked');
  });

  it('on a relay, revoking A→B also stops B’s replies', () => {
    const st = new FilterState(PacketFilter.compile([R([A6], [[B6, 443, 443]])]));
    assert.equal(st.check(tcp(A6, 40000, B6, 443), 9999, 0), true);
    assert.equal(st.check(tcp(B6, 443, A6, 40000, SYN | ACK), 9999, 1), true);
    st.setFilter(PacketFilter.compile([R([A6], [[B6, 80, 80]])]));
    assert.equal(st.check(tcp(B6, 443, A6, 40000, ACK), 9999, 2), false);
    assert.equal(st.check(tcp(A6, 40000, B6, 443, ACK), 9999, 2), false);
    assert.equal(st.check(tcp(A6, 40001, B6, 80), 9999, 2), true);
    // If the new policy allows the reverse direction as a flow of its own, it is admitted as one.
    st.setFilter(PacketFilter.compile([R([B6], [[A6, 40000, 40000]])]));
    assert.equal(st.check(tcp(B6, 443, A6, 40000, ACK), 9999, 3), true);
    assert.equal(st.lastVerdict, Verdict.AllowRule);
  });
});

describe('FlowTable bound', () => {
  const peer = (i: number): string => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;

  it('when full, the least recently seen flow is evicted and new flows are tracked', () => {
    const st = new FilterState(PacketFilter.empty(), { maxFlows: 8 });
    for (let i = 1; i <= 8; i++) st.noteOutbound(udp(A4, 5000, peer(i), 53), 9999, i);
    // Touch flow 1 so that flow 2 is now the oldest.
    assert.equal(st.check(udp(peer(1), 53, A4, 5000), 9999, 20), true);
    st.noteOutbound(udp(A4, 5000, peer(9), 53), 9999, 21);
    assert.equal(st.flows.size, 8);
    assert.equal(st.flows.evictions, 1);
    assert.equal(st.check(udp(peer(2), 53, A4, 5000), 9999, 22), false, 'oldest evicted');
    for (const i of [1, 3, 4, 5, 6, 7, 8, 9]) assert.equal(st.check(udp(peer(i), 53, A4, 5000), 9999, 22), true, `flow ${i}`);
  });

  it('expired flows are reclaimed before anything is evicted', () => {
    const ft = new FlowTable({ maxFlows: 8 });
    for (let i = 1; i <= 8; i++) ft.noteOutbound(udp(A4, 5000, peer(i), 53), 9999, 0);
    for (let i = 9; i <= 16; i++) ft.noteOutbound(udp(A4, 5000, peer(i), 53), 9999, 200_000);
    assert.equal(ft.size, 8);
    assert.equal(ft.evictions, 0);
    assert.equal(ft.expirations, 8);
    for (let i = 9; i <= 16; i++) assert.equal(ft.isReply(udp(peer(i), 53, A4, 5000), 9999, 200_001), true);
  });

  it('grows to hold many flows and stays bounded under a flood', () => {
    const st = new FilterState(PacketFilter.empty());
    const N = 20_000;
    for (let i = 0; i < N; i++) st.noteOutbound(udp(A4, 1000 + (i % 50_000), peer(i), 53), 9999, i / 1000);
    assert.equal(st.flows.size, N);
    assert.ok(st.flows.capacity >= 2 * N);
    for (let i = 0; i < N; i += 97) assert.equal(st.check(udp(peer(i), 53, A4, 1000 + (i % 50_000)), 9999, 30), true);
    const small = new FilterState(PacketFilter.compile([R(['10.0.0.0/8'], [[A4, 0, 65535]])]), { maxFlows: 1000 });
    for (let i = 0; i < 5000; i++) assert.equal(small.check(udp(peer(i), 9, A4, 9), 9999, i), true);
    assert.equal(small.flows.size, 1000);
    assert.equal(small.flows.evictions, 4000);
    assert.ok(small.flows.capacity <= 2048);
  });

  it('removal keeps every probe chain intact (random insert / expire churn, growth)', () => {
    const ft = new FlowTable({ maxFlows: 256, initialSlots: 16, udpTimeoutMs: 50 });
    const alive = new Map<number, number>();
    let now = 0;
    const steps = fc.sample(fc.tuple(fc.integer({ min: 0, max: 200 }), fc.boolean()), { numRuns: 20_000, seed: 7 });
    for (const [i, out] of steps) {
      now += 1;
      if (out) {
        ft.noteOutbound(udp(A4, 7, peer(i), 7), 9999, now);
        alive.set(i, now);
      } else {
        const last = alive.get(i);
        const want = last !== undefined && now - last <= 50;
        assert.equal(ft.isReply(udp(peer(i), 7, A4, 7), 9999, now), want, `flow ${i} at ${now}`);
        if (want) alive.set(i, now);
      }
    }
    assert.equal(ft.evictions, 0);
    assert.ok(ft.expirations > 1000);
  });
});

// ---- property: compiled matcher vs a naive reference -------------------------------------

const U4 = Array.from({ length: 16 }, (_, i) => `10.0.0.${i}`);
const U6 = Array.from({ length: 16 }, (_, i) => `fd00::${i.toString(16)}`);
const PORTS = [0, 1, 22, 80, 443, 1000, 65534, 65535];
const PROTOS = [1, 6, 17, 47, 50, 58, 132];

/** Naive reference: Tailscale's matching, linear over rules, bigint arithmetic, strings parsed here. */
function refContains(s: string, fam: 4 | 6, v: bigint): boolean {
  if (s === '*') return true;
  const bits = fam === 4 ? 32 : 128;
  if (s.includes('/')) {
    const [a, b] = s.split('/');
    const ip = parseIP(a!);
    const n = Number(b);
    if (!ip || ip.family !== fam) return false;
    const shift = BigInt(bits - n);
    if ((ip.value >> shift) << shift !== ip.value) return false; // host bits: entry invalid
    return v >> shift === ip.value >> shift;
  }
  if (s.includes('-')) {
    const [a, b] = s.split('-');
    const lo = parseIP(a!);
    const hi = parseIP(b!);
    if (!lo || !hi || lo.family !== hi.family || lo.family !== fam) return false;
    return lo.value <= v && v <= hi.value;
  }
  const ip = parseIP(s);
  return !!ip && ip.family === fam && ip.value === v;
}

function refMatch(rules: FilterRule[], fam: 4 | 6, proto: number, src: bigint, dst: bigint, dport: number): boolean {
  const icmp = fam === 4 ? proto === 1 : proto === 58;
  const ported = proto === 6 || proto === 17 || proto === 132;
  for (const r of rules) {
    const protos = r.IPProto && r.IPProto.length > 0 ? r.IPProto : [6, 17, 1, 58];
    if (!icmp && !protos.includes(proto)) continue;
    if (!r.SrcIPs.some((s) => refContains(s, fam, src))) continue;
    for (const d of r.DstPorts ?? []) {
      const { First, Last } = d.Ports;
      if (First > Last) continue;
      if (!refContains(d.IP, fam, dst)) continue;
      if (icmp) return true;
      if (ported ? First <= dport && dport <= Last : First === 0 && Last === 65535) return true;
    }
  }
  return false;
}

const ipStrArb = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...U4, ...U6) },
  { weight: 1, arbitrary: fc.constant('*') },
  {
    weight: 3,
    arbitrary: fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 15 }), fc.boolean()).map(([v6, hostBits, i, unaligned]) => {
      const block = 1 << hostBits;
      const base = unaligned ? i : i - (i % block);
      return v6 ? `fd00::${base.toString(16)}/${128 - hostBits}` : `10.0.0.${base}/${32 - hostBits}`;
    }),
  },
  {
    weight: 3,
    arbitrary: fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 15 }), fc.integer({ min: 0, max: 15 })).map(([v6, x, y]) =>
      v6 ? `fd00::${x.toString(16)}-fd00::${y.toString(16)}` : `10.0.0.${x}-10.0.0.${y}`,
    ),
  },
);

const ruleArb: fc.Arbitrary<FilterRule> = fc.record({
  SrcIPs: fc.array(ipStrArb, { minLength: 0, maxLength: 3 }),
  DstPorts: fc.array(
    fc.record({
      IP: ipStrArb,
      Ports: fc.tuple(fc.constantFrom(...PORTS), fc.constantFrom(...PORTS)).map(([a, b]) => ({ First: Math.min(a, b), Last: Math.max(a, b) })),
    }),
    { minLength: 0, maxLength: 3 },
  ),
  IPProto: fc.option(fc.subarray(PROTOS), { nil: undefined }),
}).map((r) => (r.IPProto === undefined ? { SrcIPs: r.SrcIPs, DstPorts: r.DstPorts } : r));

const pktArb = fc.record({
  v6: fc.boolean(),
  s: fc.integer({ min: 0, max: 15 }),
  d: fc.integer({ min: 0, max: 15 }),
  proto: fc.constantFrom(...PROTOS),
  dport: fc.constantFrom(...PORTS, 21, 23, 8080),
});

function build(v6: boolean, s: number, d: number, proto: number, dport: number): Buffer {
  const src = v6 ? U6[s]! : U4[s]!;
  const dst = v6 ? U6[d]! : U4[d]!;
  let payload: Buffer;
  if (proto === 6) payload = tcpH(999, dport);
  else if (proto === 17) payload = udpH(999, dport);
  else if (proto === 132) payload = sctpH(999, dport);
  else if (proto === 1 || proto === 58) payload = icmpH(proto === 1 ? 8 : 128, 0, 1);
  else payload = Buffer.alloc(8);
  return v6 ? ip6(src, dst, proto, payload) : ip4(src, dst, proto, payload);
}

describe('property: compiled filter equals a naive matcher', () => {
  it('random rules and packets', () => {
    fc.assert(
      fc.property(fc.array(ruleArb, { maxLength: 8 }), fc.array(pktArb, { minLength: 1, maxLength: 30 }), (rules, pkts) => {
        const f = PacketFilter.compile(rules);
        for (const k of pkts) {
          const b = build(k.v6, k.s, k.d, k.proto, k.dport);
          const fam = k.v6 ? 6 : 4;
          const src = parseIP(k.v6 ? U6[k.s]! : U4[k.s]!)!.value;
          const dst = parseIP(k.v6 ? U6[k.d]! : U4[k.d]!)!.value;
          const ported = k.proto === 6 || k.proto === 17 || k.proto === 132;
          const want = refMatch(rules, fam, k.proto, src, dst, ported ? k.dport : 0);
          assert.equal(f.matchPacket(b, b.length), want, JSON.stringify({ rules, k }));
        }
      }),
      { numRuns: 1500 },
    );
  });

  it('the stateful check never admits a first packet the rules deny, and always admits one they allow', () => {
    fc.assert(
      fc.property(fc.array(ruleArb, { maxLength: 6 }), pktArb, (rules, k) => {
        const st = new FilterState(PacketFilter.compile(rules));
        const b = build(k.v6, k.s, k.d, k.proto, k.dport);
        const want = st.filter.matchPacket(b, b.length);
        assert.equal(st.check(b, b.length, 0), want);
        assert.equal(st.lastVerdict, want ? Verdict.AllowRule : Verdict.DropNoRule);
      }),
      { numRuns: 500 },
    );
  });
});

// ---- real compiled policies -------------------------------------------------------------

describe('filters compiled from a policy by src/acl', () => {
  const NET: AclNetwork = {
    users: [
      { id: 1, name: 'alice', email: 'alice@example.com' },
      { id: 2, name: 'bob', email: 'bob@example.com' },
    ],
    nodes: [
      { id: 1, name: 'dev-laptop', user: 'alice@example.com', tags: [], ipv4: '100.64.0.1', ipv6: 'fd7a:115c:a1e0::1', announced_routes: [], approved_routes: [], online: true },
      { id: 2, name: 'ops-laptop', user: 'bob@example.com', tags: [], ipv4: '100.64.0.2', ipv6: 'fd7a:115c:a1e0::2', announced_routes: [], approved_routes: [], online: true },
      { id: 3, name: 'db', user: null, tags: ['tag:db'], ipv4: '100.64.0.3', ipv6: 'fd7a:115c:a1e0::3', announced_routes: [], approved_routes: [], online: true },
      { id: 4, name: 'web', user: null, tags: ['tag:web'], ipv4: '100.64.0.4', ipv6: 'fd7a:115c:a1e0::4', announced_routes: [], approved_routes: [], online: true },
    ],
  };
  const POLICY = JSON.stringify({
    groups: { 'group:dev': ['alice@example.com'], 'group:ops': ['bob@example.com'] },
    tagOwners: { 'tag:db': ['group:ops'], 'tag:web': ['group:ops'] },
    acls: [
      { action: 'accept', src: ['group:dev'], dst: ['tag:db:5432'] },
      { action: 'accept', src: ['group:ops'], dst: ['tag:web:80,443', 'tag:db:22'] },
      { action: 'accept', src: ['tag:web'], dst: ['tag:db:5432'], proto: 'tcp' },
      { action: 'accept', src: ['group:ops'], dst: ['tag:web:*'], proto: 'gre' },
    ],
    tests: [
      { src: 'alice@example.com', accept: ['tag:db:5432'], deny: ['tag:db:22', 'tag:web:80'] },
      { src: 'bob@example.com', accept: ['tag:web:443', 'tag:db:22'], deny: ['tag:db:5432'] },
    ],
  });

  /** What the policy says, by hand: [src node, dst node, proto] → allowed ports ('*' = ICMP / portless). */
  function expected(src: number, dst: number, proto: number, port: number, fam: 4 | 6): boolean {
    const tcpudp = proto === 6 || proto === 17;
    const icmp = fam === 4 ? proto === 1 : proto === 58;
    const grants: [number, number, number[], number[]][] = [
      [1, 3, [6, 17], [5432]],
      [2, 4, [6, 17], [80, 443]],
      [2, 3, [6, 17], [22]],
      [4, 3, [6], [5432]],
    ];
    if (icmp) return grants.some(([s, d]) => s === src && d === dst);
    if (proto === 47) return src === 2 && dst === 4;
    return tcpudp && grants.some(([s, d, ps, ports]) => s === src && d === dst && ps.includes(proto) && ports.includes(port));
  }

  it('each node’s reduced filter and the relay’s global filter admit exactly what the policy says', () => {
    const check = checkPolicy(POLICY, NET);
    assert.deepEqual(check.errors, []);
    assert.equal(check.valid, true);
    const compiled = compileNetwork(check.policy!, NET);
    const relay = PacketFilter.compile(compiled.globalFilter);
    assert.deepEqual(relay.errors, []);
    const ipOf = (id: number, fam: 4 | 6): string => {
      const n = NET.nodes.find((x) => x.id === id)!;
      return (fam === 4 ? n.ipv4 : n.ipv6)!;
    };
    let checked = 0;
    for (const dst of NET.nodes) {
      const nodeFilter = PacketFilter.compile(compiled.nodes.get(dst.id)!.packetFilter);
      assert.deepEqual(nodeFilter.errors, []);
      for (const src of NET.nodes) {
        if (src.id === dst.id) continue;
        for (const fam of [4, 6] as const) {
          for (const proto of [1, 6, 17, 47, 58, 132]) {
            for (const port of [22, 80, 443, 5432, 8080]) {
              const ported = proto === 6 || proto === 17 || proto === 132;
              const want = expected(src.id, dst.id, proto, ported ? port : 0, fam);
              const label = `${src.name} -> ${dst.name} proto ${proto} port ${port} v${fam}`;
              assert.equal(nodeFilter.allows(proto, ipOf(src.id, fam), ipOf(dst.id, fam), port), want, `node: ${label}`);
              assert.equal(relay.allows(proto, ipOf(src.id, fam), ipOf(dst.id, fam), port), want, `relay: ${label}`);
              checked++;
            }
          }
        }
      }
    }
    assert.equal(checked, 12 * 2 * 6 * 5);
  });

  it('end to end through FilterState: dev reaches db:5432 and the reply returns; db cannot start flows to dev', () => {
    const check = checkPolicy(POLICY, NET);
    const compiled = compileNetwork(check.policy!, NET);
    const dbState = new FilterState(PacketFilter.compile(compiled.nodes.get(3)!.packetFilter));
    const devState = new FilterState(PacketFilter.compile(compiled.nodes.get(1)!.packetFilter));
    const relay = new FilterState(PacketFilter.compile(compiled.globalFilter));
    const dev = '100.64.0.1';
    const db = '100.64.0.3';
    const syn = tcp(dev, 41000, db, 5432, SYN);
    devState.noteOutbound(syn, syn.length, 0);
    assert.equal(relay.check(syn, syn.length, 0), true);
    assert.equal(dbState.check(syn, syn.length, 0), true);
    const synack = tcp(db, 5432, dev, 41000, SYN | ACK);
    dbState.noteOutbound(synack, synack.length, 1);
    assert.equal(relay.check(synack, synack.length, 1), true);
    assert.equal(devState.check(synack, synack.length, 1), true);
    const probe = tcp(db, 5432, dev, 22, SYN);
    assert.equal(relay.check(probe, probe.length, 2), false);
    assert.equal(devState.check(probe, probe.length, 2), false);
    const toSsh = tcp(dev, 41001, db, 22, SYN);
    assert.equal(relay.check(toSsh, toSsh.length, 2), false);
    assert.equal(dbState.check(toSsh, toSsh.length, 2), false);
  });
});
