// Receiving end for bench/relay: plays the destination nodes of relayed traffic
// without spending CPU on it. For each link it binds a UDP socket on 127.0.0.1
// (small receive buffer) and sends one sealed keepalive from it to the relay,
// so the relay learns that socket as the link's endpoint; prints
// {"ports":[...]} on stdout and then blocks its event loop for good, so the
// sockets are never read: the kernel drops relayed datagrams at the full socket
// queue (the loopback stand-in for bench/dataplane's drop at ingress). Ends by
// signal.
//   sink.ts < {"target":"HOST:PORT","links":[{"link":N,"psk":"hex"}],"relay_id":65535}
import { WireTx } from '../../src/wire/index.js';
import { readStdin, udpSocket } from './wiregen.js';

interface SinkSpec {
  target: string;
  relay_id: number;
  links: { link: number; psk: string }[];
}

const spec = JSON.parse(await readStdin()) as SinkSpec;
const i = spec.target.lastIndexOf(':');
const host = spec.target.slice(0, i);
const port = Number(spec.target.slice(i + 1));
const ports: number[] = [];
const out = Buffer.alloc(64);
for (const l of spec.links) {
  const sock = await udpSocket({ host: '127.0.0.1', recvBufferSize: 4096 });
  const tx = new WireTx({ psk: Buffer.from(l.psk, 'hex'), from: l.link, to: spec.relay_id, obfuscate: true });
  const n = tx.sealKeepalive(out);
  await new Promise<void>((r) => sock.send(out, 0, n, port, host, () => r()));
  ports.push(sock.address().port);
}
process.stdout.write(`${JSON.stringify({ ports })}\n`); // a pipe: written synchronously on Linux
Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0); // never returns
