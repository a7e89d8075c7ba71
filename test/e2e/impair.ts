// A UDP impairment proxy for kernels without sch_netem: listens on LISTEN, sends
// to UPSTREAM, and drops LOSS of the datagrams and delays the rest by DELAY ms in
// both directions, like `tc qdisc ... netem loss L delay D` on the path.
//   node --import tsx test/e2e/impair.ts LISTEN_HOST:PORT UPSTREAM_HOST:PORT LOSS DELAY_MS
import dgram from 'node:dgram';

const [listen, upstream, lossText, delayText] = process.argv.slice(2);
if (!listen || !upstream || !lossText || !delayText) {
  process.stderr.write('usage: impair.ts LISTEN_HOST:PORT UPSTREAM_HOST:PORT LOSS DELAY_MS\n');
  process.exit(2);
}
const split = (s: string): [string, number] => {
  const i = s.lastIndexOf(':');
  return [s.slice(0, i), Number(s.slice(i + 1))];
};
const [lHost, lPort] = split(listen);
const [uHost, uPort] = split(upstream);
const loss = Number(lossText);
const delay = Number(delayText);

const front = dgram.createSocket('udp4');
const back = dgram.createSocket('udp4');
let client: { address: string; port: number } | null = null;

const pass = (): boolean => Math.random() >= loss;
front.on('message', (msg, rinfo) => {
  client = { address: rinfo.address, port: rinfo.port };
  if (pass()) setTimeout(() => back.send(msg, uPort, uHost), delay);
});
back.on('message', (msg) => {
  const c = client;
  if (c && pass()) setTimeout(() => front.send(msg, c.port, c.address), delay);
});
front.bind(lPort, lHost, () => back.bind(0, () => process.stdout.write('ready\n')));
process.on('SIGTERM', () => process.exit(0));
