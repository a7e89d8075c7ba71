import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { parsePrefix, prefixContainsIP, type Prefix } from '../../src/net/addr.js';
import { ForwardingTable, PrefixMatcher, formatRule, type FwdRule } from '../../src/net/lpm.js';

const P = (s: string): Prefix => parsePrefix(s, { requireMasked: true });
const rule = (src: string, dst: string, target: number, action: 'forward' | 'drop' = 'forward'): FwdRule => ({
  src: P(src),
  dst: P(dst),
  action,
  target,
});
const u32 = (ip: string): number => Number(parsePrefix(ip).addr);

function v4Packet(src: string, dst: string): Buffer {
  const b = Buffer.alloc(20);
  b[0] = 0x45;
  b.writeUInt32BE(u32(src), 12);
  b.writeUInt32BE(u32(dst), 16);
  return b;
}

test('longest destination prefix wins', () => {
  const t = ForwardingTable.build([
    rule('0.0.0.0/0', '10.0.0.0/8', 1),
    rule('0.0.0.0/0', '10.1.0.0/16', 2),
    rule('0.0.0.0/0', '10.1.2.3/32', 0),
    rule('0.0.0.0/0', '0.0.0.0/0', 9),
  ]);
  const target = (dst: string): number => t.rules[t.lookup4(u32(dst), u32('1.1.1.1'))]!.target;
  assert.equal(target('10.1.2.3'), 0);
  assert.equal(target('10.1.2.4'), 2);
  assert.equal(target('10.2.0.1'), 1);
  assert.equal(target('11.0.0.1'), 9);
  assert.equal(target('255.255.255.255'), 9);
  assert.equal(target('0.0.0.0'), 9);
});

test('no match returns -1 and an empty table matches nothing', () => {
  const t = ForwardingTable.build([rule('0.0.0.0/0', '10.0.0.0/8', 1)]);
  assert.equal(t.lookup4(u32('11.0.0.1'), 0), -1);
  assert.equal(ForwardingTable.empty().lookup4(u32('10.0.0.1'), 0), -1);
  assert.equal(ForwardingTable.empty().lookupPacket(v4Packet('1.1.1.1', '10.0.0.1'), 20), -1);
});

test('source prefixes: most specific matching source, else fall back to a shorter destination', () => {
  const t = ForwardingTable.build([
    rule('0.0.0.0/0', '10.0.0.0/8', 1),
    rule('192.168.0.0/16', '10.1.0.0/16', 2),
    rule('192.168.5.0/24', '10.1.0.0/16', 0, 'drop'),
  ]);
  const r = (src: string, dst: string): FwdRule | undefined => t.rules[t.lookupPacket(v4Packet(src, dst), 20)];
  assert.equal(r('192.168.5.9', '10.1.0.1')!.action, 'drop');
  assert.equal(r('192.168.6.9', '10.1.0.1')!.target, 2);
  assert.equal(r('172.16.0.1', '10.1.0.1')!.target, 1);
});

test('same (src,dst) replaces; lookup order is longest dst first and replayable', () => {
  const t = ForwardingTable.build([rule('0.0.0.0/0', '10.0.0.0/8', 1), rule('0.0.0.0/0', '10.0.0.0/8', 3), rule('0.0.0.0/0', '10.0.0.0/24', 0)]);
  assert.deepEqual(t.rules.map(formatRule), [
    'policy add --src 0.0.0.0/0 --dst 10.0.0.0/24 --action forward --target 0',
    'policy add --src 0.0.0.0/0 --dst 10.0.0.0/8 --action forward --target 3',
  ]);
});

test('IPv6 lookup and source matcher', () => {
  const t = ForwardingTable.build([rule('::/0', 'fd00::/8', 1), rule('::/0', 'fd00:1::/32', 2)]);
  const pkt = Buffer.alloc(40);
  pkt[0] = 0x60;
  const put = (ip: string, off: number): void => {
    const v = parsePrefix(ip).addr;
    for (let i = 0; i < 16; i++) pkt[off + i] = Number((v >> BigInt(8 * (15 - i))) & 0xffn);
  };
  put('fd00:1::5', 24);
  put('fd99::1', 8);
  assert.equal(t.rules[t.lookupPacket(pkt, 40)]!.target, 2);
  put('fd02::5', 24);
  assert.equal(t.rules[t.lookupPacket(pkt, 40)]!.target, 1);
  put('2001:db8::1', 24);
  assert.equal(t.lookupPacket(pkt, 40), -1);
  const m = new PrefixMatcher([P('fd99::/16'), P('10.0.0.0/24')]);
  assert.equal(m.hasPacketSource(pkt, 40), true);
  put('fd98::1', 8);
  assert.equal(m.hasPacketSource(pkt, 40), false);
  assert.equal(m.hasPacketSource(v4Packet('10.0.0.7', '1.1.1.1'), 20), true);
  assert.equal(m.hasPacketSource(v4Packet('10.0.1.7', '1.1.1.1'), 20), false);
});

test('property: agrees with a brute-force longest-prefix search', () => {
  const arbPrefix = fc
    .tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 32 }))
    .map(([a, bits]) => {
      const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
      return { family: 4 as const, addr: BigInt((a & mask) >>> 0), bits };
    });
  fc.assert(
    fc.property(
      fc.array(fc.tuple(arbPrefix, arbPrefix, fc.integer({ min: 0, max: 5 })), { maxLength: 30 }),
      fc.array(fc.tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 0xffffffff })), { minLength: 1, maxLength: 20 }),
      (specs, probes) => {
        const rules: FwdRule[] = specs.map(([src, dst, target]) => ({ src, dst, target, action: 'forward' }));
        const t = ForwardingTable.build(rules);
        for (const [d, s] of probes) {
          const got = t.lookup4(d, s);
          // brute force over the table's own (deduplicated, ordered) rules
          const want = t.rules.findIndex(
            (r) => prefixContainsIP(r.dst, { family: 4, value: BigInt(d) }) && prefixContainsIP(r.src, { family: 4, value: BigInt(s) }),
          );
          assert.equal(got, want);
        }
      },
    ),
    { numRuns: 300 },
  );
});
