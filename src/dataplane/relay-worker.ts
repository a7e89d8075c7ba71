// A relay packet worker: one more thread moving the relay's packets. It binds
// its own SO_REUSEPORT sockets on the relay's ports (the kernel spreads the
// senders over the threads by address and port, so one node's datagrams stay
// on one thread, in order) and runs the same packet path as the main thread
// over the state the main thread shares with every view: link sessions
// (sequence counters, replay windows), endpoints, flow tables. Its counts go
// to the main thread through shared counter slots (RelayEngine.publish).
import { parentPort, workerData } from 'node:worker_threads';
import { RelayEngine, type RelayView } from './relay.js';
import type { ScanLimitOptions } from './scanlimit.js';
import type { FromRelayWorker, RelayWorkerData, ToRelayWorker } from './workers/relay-share.js';

const wd = workerData as RelayWorkerData;
const port = parentPort!;
const say = (m: FromRelayWorker): void => port.postMessage(m);

const engine = new RelayEngine({
  listenPorts: wd.ports,
  ...(wd.bindHost4 !== undefined ? { bindHost4: wd.bindHost4 } : {}),
  ...(wd.bindHost6 !== undefined ? { bindHost6: wd.bindHost6 } : {}),
  ...(wd.udpOffload !== undefined ? { udpOffload: wd.udpOffload } : {}),
  ...(wd.onlineMs !== undefined ? { onlineMs: wd.onlineMs } : {}),
  ...(wd.scanLimits !== undefined ? { scanLimits: wd.scanLimits as ScanLimitOptions } : {}),
  log: (msg) => say({ type: 'log', msg }),
  role: { index: wd.index, count: wd.count, counters: wd.counters, io: wd.io, clockBase: wd.clockBase },
});

port.on('message', (m: ToRelayWorker) => {
  if (m.type === 'view') {
    try {
      engine.applySharedView(m.view as RelayView, m.share);
      say({ type: 'view-applied', seq: m.seq });
    } catch (err) {
      say({ type: 'view-error', seq: m.seq, error: (err as Error).message });
    }
  } else if (m.type === 'stop') {
    void engine.stop().finally(() => {
      say({ type: 'stopped' });
      port.close();
    });
  }
});

await engine.start();
say({ type: 'ready' });
