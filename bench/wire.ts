// Micro-benchmark of the subnetra v1 hot path: seal and open 1400-byte inner
// packets (obfuscated headers, the default) for about two seconds and print
// one JSON line. Seal and open are timed separately over batches.
import { PerformanceObserver } from 'node:perf_hooks';
import { MAX_DATAGRAM, MAX_PLAINTEXT, MIN_EPOCH, RxCode, WireRx, WireTx } from '../src/wire/index.js';

const PAYLOAD = 1400;
const BATCH = 256;
const SECONDS = 2;

interface Result {
  packets: number;
  sealNs: number;
  openNs: number;
  gcs: number;
}

function run(obfuscate: boolean, seconds: number): Result {
  const psk = Buffer.alloc(32, 0xa5);
  const tx = new WireTx({ psk, from: 1, to: 2, epoch: MIN_EPOCH + 42n, obfuscate });
  const rx = new WireRx({ psk, from: 1, to: 2, obfuscate });
  const payload = Buffer.alloc(PAYLOAD);
  for (let i = 0; i < PAYLOAD; i++) payload[i] = i & 0xff;
  const dgrams: Buffer[] = [];
  for (let i = 0; i < BATCH; i++) dgrams.push(Buffer.alloc(MAX_DATAGRAM));
  const lens = new Int32Array(BATCH);
  const plain = Buffer.alloc(MAX_PLAINTEXT);

  const batch = (): [number, number] => {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < BATCH; i++) lens[i] = tx.seal(payload, 0, PAYLOAD, dgrams[i]!);
    const t1 = process.hrtime.bigint();
    for (let i = 0; i < BATCH; i++) {
      const d = dgrams[i]!;
      if (!rx.matches(d, lens[i]!) || rx.openMatched(d, lens[i]!, plain) !== RxCode.Accept) {
        throw new Error('benchmark datagram was not accepted');
      }
    }
    const t2 = process.hrtime.bigint();
    return [Number(t1 - t0), Number(t2 - t1)];
  };

  for (let i = 0; i < 20; i++) batch(); // warm-up
  let gcs = 0;
  const obs = new PerformanceObserver((l) => {
    gcs += l.getEntries().length;
  });
  obs.observe({ entryTypes: ['gc'] });
  let sealNs = 0;
  let openNs = 0;
  let packets = 0;
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    const [s, o] = batch();
    sealNs += s;
    openNs += o;
    packets += BATCH;
  }
  obs.disconnect();
  return { packets, sealNs, openNs, gcs };
}

const obfs = run(true, SECONDS * 0.75);
const plain = run(false, SECONDS * 0.25);
const pps = (n: number, ns: number): number => Math.round((n * 1e9) / ns);
const mbps = (n: number, ns: number): number => Math.round(((n * PAYLOAD * 8) / ns) * 1e3);

process.stdout.write(
  `${JSON.stringify({
    bench: 'wire',
    payload_bytes: PAYLOAD,
    obfuscate: true,
    packets: obfs.packets,
    seal_pps: pps(obfs.packets, obfs.sealNs),
    open_pps: pps(obfs.packets, obfs.openNs),
    seal_mbps: mbps(obfs.packets, obfs.sealNs),
    open_mbps: mbps(obfs.packets, obfs.openNs),
    plain_seal_pps: pps(plain.packets, plain.sealNs),
    plain_open_pps: pps(plain.packets, plain.openNs),
    gc_events: obfs.gcs + plain.gcs,
    node: process.version,
  })}\n`,
);
