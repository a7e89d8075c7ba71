// Load generator for bench/dataplane: plays a spoke on the wire (its own link
// id and PSK), sealing 1400-byte inner IPv4/ICMP echo-reply packets (which the
// receiving kernel ignores) as fast as it can for SECONDS, then prints
// {"sent":N,"seconds":S} on stdout.
//   blast.ts HOST:PORT FROM_ID TO_ID PSK_HEX INNER_SRC INNER_DST SECONDS [obfuscate=1]
import dgram from 'node:dgram';
import { WireTx } from '../../src/wire/index.js';
import { parseIPv4 } from '../../src/net/addr.js';

const [target, fromId, toId, pskHex, src, dst, secondsText, obfs] = process.argv.slice(2);
if (!target || !fromId || !toId || !pskHex || !src || !dst || !secondsText) {
  process.stderr.write('usage: blast.ts HOST:PORT FROM TO PSK INNER_SRC INNER_DST SECONDS [OBFUSCATE]\n');
  process.exit(2);
}
const i = target.lastIndexOf(':');
const host = target.slice(0, i);
const port = Number(target.slice(i + 1));
const seconds = Number(secondsText);
const tx = new WireTx({ psk: Buffer.from(pskHex, 'hex'), from: Number(fromId), to: Number(toId), obfuscate: obfs !== '0' });

const inner = Buffer.alloc(1400);
inner[0] = 0x45;
inner.writeUInt16BE(1400, 2);
inner[8] = 64;
inner[9] = 1; // ICMP
inner.writeUInt32BE(Number(parseIPv4(src)), 12);
inner.writeUInt32BE(Number(parseIPv4(dst)), 16);
let sum = 0;
for (let k = 0; k < 20; k += 2) sum += inner.readUInt16BE(k);
while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
inner.writeUInt16BE(~sum & 0xffff, 10);
inner[20] = 0; // echo reply

const RING = 4096;
const bufs = Array.from({ length: RING }, () => Buffer.alloc(1500));
let idx = 0;
let sent = 0;
const sock = dgram.createSocket({ type: 'udp4', sendBufferSize: 4 << 20, lookup: (a, _f, cb) => cb(null, a, 4) });
sock.on('error', () => {});
const end = Date.now() + seconds * 1000;
const t0 = process.hrtime.bigint();
function burst(): void {
  for (let k = 0; k < 512; k++) {
    const out = bufs[idx]!;
    idx = (idx + 1) % RING;
    const n = tx.seal(inner, 0, inner.length, out);
    sock.send(out, 0, n, port, host);
    sent++;
  }
  if (Date.now() < end) setImmediate(burst);
  else {
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    process.stdout.write(`${JSON.stringify({ sent, seconds: secs })}\n`);
    sock.close();
  }
}
sock.bind(0, () => burst());
