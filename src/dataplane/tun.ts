// TUN device: opened by the native addon (the ioctl is the only native code),
// read by a worker thread doing blocking reads into a shared ring, written with
// synchronous writes from the main thread (a TUN write never blocks for long).
import { createRequire } from 'node:module';
import { closeSync, existsSync, writeSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

interface NativeTun {
  open(name: string, opts?: { multiQueue?: boolean }): { fd: number; name: string };
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

function loadNative(): NativeTun {
  const file = path.join(root, 'native', 'build', 'Release', 'larktun_tun.node');
  if (!existsSync(file)) {
    throw new Error(`TUN addon not built (${file} is missing): run "npm run build" or "npm ci"`);
  }
  const require = createRequire(import.meta.url);
  return require(file) as NativeTun;
}

export const SLOT_SIZE = 2048;
const SLOTS = 1024;

export type PacketHandler = (buf: Buffer, len: number) => void;

export class TunDevice {
  readonly name: string;
  readonly fd: number;
  private readonly ctrl: Int32Array;
  private readonly lens: Int32Array;
  private readonly data: Buffer;
  /** One view per slot, made once: handlers get a Buffer without allocation. */
  private readonly slotViews: Buffer[];
  private worker: Worker | null = null;
  private running = false;
  private consumed = 0;

  private constructor(name: string, fd: number) {
    this.name = name;
    this.fd = fd;
    const ctrl = new SharedArrayBuffer(4 * 4);
    const lens = new SharedArrayBuffer(4 * SLOTS);
    const data = new SharedArrayBuffer(SLOTS * SLOT_SIZE);
    this.ctrl = new Int32Array(ctrl);
    this.lens = new Int32Array(lens);
    this.data = Buffer.from(data);
    this.slotViews = [];
    for (let i = 0; i < SLOTS; i++) this.slotViews.push(this.data.subarray(i * SLOT_SIZE, (i + 1) * SLOT_SIZE));
  }

  /** Opens (creates) the TUN device; throws with the device name and reason. */
  static open(name: string): TunDevice {
    const t = loadNative().open(name);
    return new TunDevice(t.name, t.fd);
  }

  /** Starts the reader thread and delivers each packet to `onPacket` on the main thread. */
  start(onPacket: PacketHandler): void {
    if (this.running) return;
    this.running = true;
    const workerFile = new URL(
      import.meta.url.endsWith('.ts') ? './tun-worker.ts' : './tun-worker.js',
      import.meta.url,
    );
    this.worker = new Worker(workerFile, {
      workerData: {
        fd: this.fd,
        ctrl: this.ctrl.buffer,
        lens: this.lens.buffer,
        data: this.data.buffer,
        slots: SLOTS,
        slotSize: SLOT_SIZE,
      },
    });
    this.worker.unref();
    this.worker.on('error', (err) => {
      if (!this.running) return; // closing: the reader's read() fails on the deleted device
      process.stderr.write(`larktund: TUN reader for ${this.name} failed: ${err.message}\n`);
      process.exit(1);
    });
    void this.drain(onPacket);
  }

  private async drain(onPacket: PacketHandler): Promise<void> {
    const ctrl = this.ctrl;
    let batch = 0;
    while (this.running) {
      const written = Atomics.load(ctrl, 0);
      if (written === this.consumed) {
        const w = Atomics.waitAsync(ctrl, 0, written);
        if (w.async) await w.value;
        batch = 0;
        continue;
      }
      while (this.consumed !== written) {
        const slot = this.consumed % SLOTS;
        try {
          onPacket(this.slotViews[slot]!, this.lens[slot]!);
        } catch (err) {
          process.stderr.write(`larktund: packet handler error: ${(err as Error).message}\n`);
        }
        this.consumed = (this.consumed + 1) | 0;
        Atomics.store(ctrl, 1, this.consumed);
      }
      Atomics.notify(ctrl, 1);
      // Let UDP receive and timers run between large bursts.
      if (++batch >= 8) {
        batch = 0;
        await new Promise<void>((r) => setImmediate(r));
      }
    }
  }

  /** Writes one IP packet into the kernel; returns false on failure. */
  write(buf: Buffer, off: number, len: number): boolean {
    try {
      return writeSync(this.fd, buf, off, len) === len;
    } catch {
      return false;
    }
  }

  close(): void {
    this.running = false;
    Atomics.store(this.ctrl, 2, 1);
    Atomics.notify(this.ctrl, 1);
    // The reader may be blocked in read(), which closing our fd does not wake;
    // deleting the interface detaches the queue and wakes it with an error.
    spawnSync('ip', ['link', 'delete', this.name], { stdio: 'ignore' });
    try {
      closeSync(this.fd);
    } catch {
      /* already closed */
    }
  }
}
