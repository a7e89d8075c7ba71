// Worker for shared.test.ts. mode 'seal': seals `count` datagrams over the
// shared sending state and posts the sequence numbers they carry (headers
// unmasked, so the number is read off the wire). mode 'open': opens the given
// datagrams over the shared receiving state and posts how many were accepted.
import { parentPort, workerData } from 'node:worker_threads';
import { RxCode, WireRx, WireTx } from '../../src/wire/index.js';

const wd = workerData as { mode: 'seal' | 'open'; psk: Uint8Array; shared: Int32Array; count?: number; dgrams?: Uint8Array[] };
const psk = Buffer.from(wd.psk);
if (wd.mode === 'seal') {
  const tx = new WireTx({ psk, from: 1, to: 2, obfuscate: false, shared: wd.shared });
  const out = Buffer.alloc(200);
  const payload = Buffer.alloc(64, 7);
  const seqs = new Float64Array(wd.count!);
  for (let i = 0; i < seqs.length; i++) {
    tx.seal(payload, 0, 64, out);
    seqs[i] = out.readUInt32LE(16) * 2 ** 32 + out.readUInt32LE(12);
  }
  parentPort!.postMessage({ seqs });
} else {
  const rx = new WireRx({ psk, from: 1, to: 2, obfuscate: false, shared: wd.shared });
  const plain = Buffer.alloc(2000);
  let accepted = 0;
  let replays = 0;
  for (const d of wd.dgrams!) {
    const b = Buffer.from(d);
    const code = rx.open(b, b.length, plain);
    if (code === RxCode.Accept) accepted++;
    else if (code === RxCode.Replay) replays++;
  }
  parentPort!.postMessage({ accepted, replays });
}
