// `larktun ping` builds its ICMP / ICMPv6 echo requests itself (they are injected
// into the engine as if read from the TUN). Checked here against an independent
// one's-complement sum: a packet with a correct checksum sums to 0xffff.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { echoRequest4, echoRequest6 } from '../../src/daemon/managed.js';

function onesSum(b: Buffer): number {
  let s = 0;
  for (let i = 0; i < b.length; i += 2) s += (b[i]! << 8) | (i + 1 < b.length ? b[i + 1]! : 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

const v6 = (hex: string): Buffer => Buffer.from(hex.replace(/:/g, ''), 'hex');

test('IPv4 echo request: header and ICMP checksums verify; id and seq in place', () => {
  const p = echoRequest4(Buffer.from([100, 64, 0, 1]), Buffer.from([100, 64, 0, 9]), 0x1234, 7);
  assert.equal(p[0], 0x45);
  assert.equal(p.readUInt16BE(2), p.length);
  assert.equal(p[9], 1);
  assert.equal(onesSum(p.subarray(0, 20)), 0xffff, 'IPv4 header checksum');
  assert.equal(p[20], 8, 'echo request');
  assert.equal(onesSum(p.subarray(20)), 0xffff, 'ICMP checksum');
  assert.equal(p.readUInt16BE(24), 0x1234);
  assert.equal(p.readUInt16BE(26), 7);
});

test('IPv6 echo request: ICMPv6 checksum over the pseudo-header verifies', () => {
  const src = v6('fd7a:115c:a1e0:0000:0000:0000:0000:0001');
  const dst = v6('fd7a:115c:a1e0:0000:0000:0000:0000:0009');
  const p = echoRequest6(src, dst, 0xbeef, 3);
  assert.equal(p[0]! >> 4, 6);
  assert.equal(p.readUInt16BE(4), p.length - 40, 'payload length');
  assert.equal(p[6], 58, 'next header ICMPv6');
  assert.ok(p.subarray(8, 24).equals(src) && p.subarray(24, 40).equals(dst));
  assert.equal(p[40], 128, 'echo request');
  assert.equal(p.readUInt16BE(44), 0xbeef);
  assert.equal(p.readUInt16BE(46), 3);
  const pseudo = Buffer.concat([src, dst, Buffer.from([0, 0, 0, p.length - 40, 0, 0, 0, 58]), p.subarray(40)]);
  assert.equal(onesSum(pseudo), 0xffff, 'ICMPv6 checksum');
  // a different destination must not verify with the same checksum
  const other = Buffer.concat([src, v6('fd7a:115c:a1e0:0000:0000:0000:0000:000a'), pseudo.subarray(32)]);
  assert.notEqual(onesSum(other), 0xffff);
});
