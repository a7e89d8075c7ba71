// One packet worker of a worker engine: an ordinary Engine (engine.ts) over its
// own SO_REUSEPORT sockets on the engine's ports and its own queue of the
// multi-queue TUN, with every peer's session, endpoint and statistics in
// shared memory (PeerSpec.shared). The main thread (pool.ts) posts the tables
// on every change; this thread publishes its counters every publishMs.
import { parentPort, workerData } from 'node:worker_threads';
import { Engine, BindError, type PeerSpec } from '../engine.js';
import { TunDevice } from '../tun.js';
import { COUNTER_NAMES } from '../counters.js';
import { FILTER_COUNTER_NAMES, FilterState, PacketFilter } from '../filter.js';
import { MAX_IN_FLIGHT, type FromWorker, type ToWorker, type WorkerFilter, type WorkerInit } from './protocol.js';

const init = workerData as WorkerInit;
const port = parentPort!;
const post = (m: FromWorker): void => port.postMessage(m);

/** Structured clone turns Buffers into Uint8Arrays: make them Buffers again (same memory). */
function peerSpecs(peers: PeerSpec[]): PeerSpec[] {
  return peers.map((p) => ({ ...p, psk: Buffer.from(p.psk.buffer, p.psk.byteOffset, p.psk.byteLength) }));
}

const counters = new Float64Array(init.counters);
const counterOff = init.index * COUNTER_NAMES.length;
const filterCounters = new Float64Array(init.filterCounters);
const filterOff = init.index * FILTER_COUNTER_NAMES.length;
let tun: TunDevice | null = null;
/** This thread's view of the shared flow table, with its own compiled policy and verdict counters. */
let filter: FilterState | null = null;

function attachFilter(f: WorkerFilter | null): void {
  filter = f === null ? null : FilterState.attach(f.handle, PacketFilter.compile(f.rules));
  engine.setFilter(filter);
}

function publish(): void {
  engine.publish(counters, counterOff);
  if (filter !== null) filter.counters.writeTo(filterCounters, filterOff);
}
let engine: Engine;
let inFlight = 0;

/** An ICMP echo reply (IPv4 type 0, ICMPv6 129): what the main thread's interceptor (larktun ping) may want. */
function isEchoReply(pkt: Buffer, len: number): boolean {
  const v = pkt[0]! >> 4;
  if (v === 4) {
    const off = (pkt[0]! & 15) * 4;
    return len >= off + 8 && pkt[9] === 1 && pkt[off] === 0;
  }
  return v === 6 && len >= 48 && pkt[6] === 58 && pkt[40] === 129;
}

/** Hands echo replies to the main thread (bounded: beyond MAX_IN_FLIGHT they go to the TUN as usual). */
const intercept = (pkt: Buffer, len: number): boolean => {
  if (!isEchoReply(pkt, len) || inFlight >= MAX_IN_FLIGHT) return false;
  inFlight++;
  post({ t: 'intercept', pkt: Uint8Array.prototype.slice.call(pkt, 0, len) });
  return true;
};

async function start(): Promise<void> {
  if (init.tun !== null) tun = TunDevice.fromQueue(init.tun, init.tunQueues, init.tunFlows);
  engine = new Engine({
    localId: init.localId,
    obfuscate: init.obfuscate,
    peers: peerSpecs(init.peers),
    rules: init.rules,
    keepaliveSecs: init.keepaliveSecs,
    listenPorts: init.listenPorts,
    bindHost4: init.bindHost4,
    bindHost6: init.bindHost6,
    tun,
    log: (msg) => process.stderr.write(`larktund: worker ${init.index}: ${msg}\n`),
    udpBatch: init.udpBatch,
    udpOffload: init.udpOffload,
    worker: { index: init.index },
    clockBase: init.clockBase,
  });
  try {
    await engine.start();
  } catch (err) {
    post({ t: 'failed', message: (err as Error).message, bind: err instanceof BindError });
    port.close();
    return;
  }
  attachFilter(init.filter);
  tun?.start(engine.onTunPacket, engine.counters, engine.refreshClock);
  const publishTimer = setInterval(publish, init.publishMs);
  port.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'rules':
        engine.setRules(m.rules);
        break;
      case 'peers':
        engine.setPeers(peerSpecs(m.peers));
        break;
      case 'keepalive':
        engine.setKeepaliveInterval(m.ms);
        break;
      case 'filter':
        attachFilter(m.filter);
        break;
      case 'filterRules':
        engine.setFilterRules(m.rules);
        break;
      case 'inject': {
        const b = Buffer.from(m.pkt.buffer, m.pkt.byteOffset, m.pkt.byteLength);
        engine.inject(b, b.length);
        post({ t: 'injected' });
        break;
      }
      case 'intercept':
        engine.setInterceptor(m.on ? intercept : null);
        break;
      case 'intercepted':
        inFlight--;
        if (m.pkt !== null && tun !== null) {
          if (tun.write(Buffer.from(m.pkt.buffer, m.pkt.byteOffset, m.pkt.byteLength), 0, m.pkt.byteLength)) engine.counters.tun_tx_packets++;
          else engine.counters.drop_send_error++;
        }
        break;
      case 'snapshot':
        publish(); // status reads the counters right after: no publication lag
        post({ t: 'snapshot', id: m.id, snap: { index: init.index, udp_io: engine.ioStatus(), tun_offload: tun?.offloadStatus() ?? null, clockBase: engine.clockBase } });
        break;
      case 'stop':
        clearInterval(publishTimer);
        void engine.stop().then(async () => {
          tun?.close(); // flushes; the fd and the device are the main thread's
          publish();
          // The queue's reader is this thread's child: it must see the stop
          // flag and close its fd before this thread ends (ended with it, it would not).
          await tun?.readerStopped();
          post({ t: 'stopped' });
          port.close();
        });
        break;
    }
  });
  post({ t: 'ready', ports: engine.listenPorts(), bound: engine.boundAddresses() });
}

void start();
