// Helper of udp-batch.test.ts, run inside a network namespace whose loopback
// MTU is 1300: 100 datagrams of 1400 bytes (above the MTU: IP fragments) and
// then 100 of 1000 bytes go out through the batched layer with GSO on. The
// first GSO run is refused (EMSGSIZE/EINVAL) and resent plainly; smaller runs still use
// GSO. Prints {"ok":..,"status":..} on stdout.
import dgram from 'node:dgram';
import { createUdpIo } from '../../src/dataplane/io/index.js';

let sendErrors = 0;
const got: Buffer[] = [];
const cap = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
cap.on('message', (m) => got.push(m));
await new Promise<void>((r) => cap.bind(0, '127.0.0.1', () => r()));
const io = createUdpIo({ ports: [0], bindHost4: '127.0.0.1', bindHost6: null, onDatagram: () => {}, onSendError: (n) => void (sendErrors += n), log: () => {}, batch: true, offload: true }, {});
await io.start();
const list: Buffer[] = [];
for (let i = 0; i < 100; i++) list.push(Buffer.alloc(1400, i));
for (let i = 0; i < 100; i++) list.push(Buffer.alloc(1000, i));
const sock = io.sockFor(4)!;
for (const d of list) {
  const b = io.nextBuffer(sock);
  d.copy(b);
  io.send(sock, b, d.length, cap.address().port, '127.0.0.1');
}
io.flush();
const end = Date.now() + 5000;
while (got.length < list.length && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
const ok = got.length === list.length && got.every((g, i) => g.equals(list[i]!));
process.stdout.write(`${JSON.stringify({ ok, received: got.length, send_errors: sendErrors, sizes: [...new Set(got.map((g) => g.length))], status: io.status() })}\n`);
await io.close();
cap.close();
