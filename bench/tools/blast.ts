// Load generator for bench/dataplane and bench/relay: plays one or more nodes on
// the wire (each with its own link id and PSK), sealing 1400-byte inner IPv4
// packets as fast as it can for SECONDS, then prints {"sent":N,"seconds":S} on
// stdout.
//
//   blast.ts HOST:PORT FROM_ID TO_ID PSK_HEX INNER_SRC INNER_DST SECONDS [obfuscate=1]
//     one link, inner ICMP echo replies (which the receiving kernel ignores)
//   blast.ts --spec -    < BlastSpec (JSON on stdin)
//     several links, round-robin; each from its own source port, or all from one
//     (`shared_socket`); inner ICMP or UDP
import { WireTx } from '../../src/wire/index.js';
import { blast, blastBatched, innerIPv4, readStdin, udpSocket, type BlastFlow, type InnerSpec } from './wiregen.js';

export interface BlastSpec {
  /** HOST:PORT of the relay / hub. */
  target: string;
  seconds: number;
  /** Send every flow from one socket (one source port) instead of one socket per flow. */
  shared_socket?: boolean;
  obfuscate?: boolean;
  /** Send through the batched UDP layer (sendmmsg + GSO) instead of node:dgram. */
  batch?: boolean;
  /** With batch: seal this many datagrams per flow before sending, then only send them (see blastBatched). */
  pregen?: number;
  /** With batch: at most this many datagrams per second (0: as fast as possible). */
  rate?: number;
  flows: ({ from: number; to: number; psk: string } & InnerSpec)[];
}

const splitTarget = (target: string): { host: string; port: number } => {
  const i = target.lastIndexOf(':');
  return { host: target.slice(0, i), port: Number(target.slice(i + 1)) };
};

async function fromSpec(spec: BlastSpec): Promise<void> {
  const { host, port } = splitTarget(spec.target);
  if (spec.batch) {
    const fl = spec.flows.map((f) => ({
      tx: new WireTx({ psk: Buffer.from(f.psk, 'hex'), from: f.from, to: f.to, obfuscate: spec.obfuscate ?? true }),
      inner: innerIPv4(f),
      host,
      port,
    }));
    process.stdout.write(`${JSON.stringify(await blastBatched(fl, spec.seconds, spec.shared_socket ?? false, spec.pregen ?? 0, spec.rate ?? 0))}\n`);
    return;
  }
  const shared = spec.shared_socket ? await udpSocket() : null;
  const flows: BlastFlow[] = [];
  for (const f of spec.flows) {
    flows.push({
      tx: new WireTx({ psk: Buffer.from(f.psk, 'hex'), from: f.from, to: f.to, obfuscate: spec.obfuscate ?? true }),
      inner: innerIPv4(f),
      sock: shared ?? (await udpSocket()),
      host,
      port,
    });
  }
  const r = await blast(flows, spec.seconds);
  process.stdout.write(`${JSON.stringify(r)}\n`);
  for (const s of new Set(flows.map((f) => f.sock))) s.close();
}

async function fromArgs(): Promise<void> {
  const [target, fromId, toId, pskHex, src, dst, secondsText, obfs] = process.argv.slice(2);
  if (!target || !fromId || !toId || !pskHex || !src || !dst || !secondsText) {
    process.stderr.write('usage: blast.ts HOST:PORT FROM TO PSK INNER_SRC INNER_DST SECONDS [OBFUSCATE] | blast.ts --spec - < spec.json\n');
    process.exit(2);
  }
  const { host, port } = splitTarget(target);
  const tx = new WireTx({ psk: Buffer.from(pskHex, 'hex'), from: Number(fromId), to: Number(toId), obfuscate: obfs !== '0' });
  const sock = await udpSocket();
  const r = await blast([{ tx, inner: innerIPv4({ src, dst, proto: 'icmp' }), sock, host, port }], Number(secondsText));
  process.stdout.write(`${JSON.stringify(r)}\n`);
  sock.close();
}

if (process.argv[2] === '--spec') await fromSpec(JSON.parse(await readStdin()) as BlastSpec);
else await fromArgs();
