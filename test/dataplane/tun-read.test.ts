// The TUN reader's batch read (native readBatch, src/dataplane/tun-worker.ts),
// on a real TUN device moved into a network namespace of its own: datagrams
// sent there are routed into the device and read back.
//
// - a burst is read in batches, in order, every byte as sent, each packet
//   published in ctrl[0], never into a slot the consumer has not released,
//   with the counters wrapping past 2^31 and 2^32;
// - with nothing to read the call waits no longer than asked and returns 0;
// - a deleted device ends the read with an error, not a hang;
// - a ring that does not fit the arrays is refused before anything is read;
// - a packet the kernel fails to hand over is dropped and counted, and the
//   reading goes on;
// - through TunDevice (the reader thread): a burst arrives complete and in
//   order in fewer wakeups than packets, and `reads`/`read_batches` say so;
//   a device opened right after another was closed (same fd number, the old
//   reader still waiting) loses nothing to the old reader; a closed device
//   leaves no fd behind once its reader has stopped.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { NativeTun } from '../../src/dataplane/tun.js';
import { netnsSkipReason, nsExec, sh, ROOT } from '../e2e/netns.js';

const skip = netnsSkipReason();

const NS = `lkrb${process.pid % 100000}`;
const DEV = `lkrb${process.pid % 100000}`;
const native = (): NativeTun => createRequire(import.meta.url)(path.join(ROOT, 'native', 'build', 'Release', 'larktun_tun.node')) as NativeTun;

/** Moves the TUN device into NS and gives it 10.77.0.1/24, so that datagrams to 10.77.0.2 go into it. */
function plumb(dev: string): void {
  sh(`ip link set dev ${dev} netns ${NS}`);
  // No IPv6 on it (best effort): the kernel's own solicitations would land in the reads.
  nsExec(NS, `echo 1 > /proc/sys/net/ipv6/conf/${dev}/disable_ipv6`, { allowFail: true });
  nsExec(NS, `ip addr add 10.77.0.1/24 dev ${dev} && ip link set ${dev} up`);
}

/**
 * Sends `n` UDP datagrams without blocking this thread (the TunDevice consumer
 * runs on it).
 */
function burstAsync(n: number, size: number, base = 0): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn('ip', ['netns', 'exec', NS, process.execPath, '-e', burstScript(n, size, base)], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`sender exited ${code}: ${err}`))));
  });
}

/** Sends `n` UDP datagrams 10.77.0.1 → 10.77.0.2:9 from inside NS, payload = 4-byte big-endian index ‖ filler. */
function burstScript(n: number, size: number, base: number): string {
  return `const d=require('node:dgram').createSocket('udp4');let i=0;` +
    `function go(){while(i<${n}){const b=Buffer.alloc(${size},0x5a);b.writeUInt32BE(${base}+i,0);d.send(b,9,'10.77.0.2');i++;if(i%64===0)return setImmediate(go);}setTimeout(()=>d.close(),50);}go();`;
}

function burst(n: number, size = 32, base = 0): void {
  const js = burstScript(n, size, base);
  const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, '-e', js], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
}

/** The index a UDP/IPv4 packet to port 9 carries, or -1 for anything else (router solicitations, IPv6). */
function indexOf(data: Uint8Array, off: number, len: number): number {
  if (len < 32 || data[off]! >> 4 !== 4 || data[off + 9] !== 17) return -1;
  const ihl = (data[off]! & 15) * 4;
  if (((data[off + ihl + 2]! << 8) | data[off + ihl + 3]!) !== 9) return -1;
  const p = off + ihl + 8;
  return ((data[p]! << 24) | (data[p + 1]! << 16) | (data[p + 2]! << 8) | data[p + 3]!) >>> 0;
}

before(() => {
  if (skip) return;
  sh(`ip netns del ${NS}`, { allowFail: true });
  sh(`ip netns add ${NS}`);
  nsExec(NS, 'ip link set lo up');
});

after(() => {
  if (skip) return;
  sh(`ip netns del ${NS}`, { allowFail: true });
});

test('readBatch reads a burst in order into free slots only, counters wrapping past 2^31 and 2^32', { skip: skip ?? false }, () => {
  const n = native();
  const t0 = n.open(`${DEV}a`);
  const t = { name: t0.name, fd: n.readerFd(t0.fd) };
  plumb(t.name);
  const SLOTS = 8;
  const SLOT = 2048;
  const data = new Uint8Array(new SharedArrayBuffer(SLOTS * SLOT));
  const lens = new Int32Array(new SharedArrayBuffer(4 * SLOTS));
  const ctrl = new Int32Array(new SharedArrayBuffer(16));
  const seen: number[] = [];
  try {
    for (const start of [0x7ffffffc, 0xfffffffa]) {
      seen.length = 0;
      ctrl[0] = start | 0;
      ctrl[1] = start | 0;
      const COUNT = 40;
      burst(COUNT);
      let calls = 0;
      while (seen.length < COUNT && calls < 200) {
        calls++;
        const before = ctrl[0]! >>> 0;
        const got = n.readBatch(t.fd, data, lens, ctrl, SLOTS, SLOT, 64, 500);
        assert.ok(got >= 0 && got <= SLOTS, `a call reads at most the ${SLOTS} free slots, read ${got}`);
        assert.equal(((ctrl[0]! >>> 0) - before) >>> 0, got, 'each packet read is published in ctrl[0]');
        if (got === 0) break;
        // The ring is full now if the burst had that many: another call reads nothing until the consumer releases.
        if (got === SLOTS) assert.equal(n.readBatch(t.fd, data, lens, ctrl, SLOTS, SLOT, 64, 10), 0, 'no read into unreleased slots');
        for (let k = 0; k < got; k++) {
          const slot = ((before + k) >>> 0) % SLOTS;
          const len = lens[slot]!;
          assert.ok(len > 0 && len <= SLOT);
          const idx = indexOf(data, slot * SLOT, len);
          if (idx < 0) continue; // e.g. the kernel's own IPv6 solicitations
          assert.equal(len, 20 + 8 + 32, 'the whole datagram');
          assert.equal(data[slot * SLOT + 28 + 4], 0x5a);
          seen.push(idx);
        }
        Atomics.store(ctrl, 1, ctrl[0]!); // consumed everything
      }
      assert.deepEqual(seen, Array.from({ length: COUNT }, (_, i) => i), `every datagram once, in order (start ${start.toString(16)})`);
      assert.ok(calls >= COUNT / SLOTS, 'a full ring stopped the reads');
    }
  } finally {
    sh(`ip -n ${NS} link del ${t.name}`, { allowFail: true });
    closeSync(t.fd);
    closeSync(t0.fd);
  }
});

test('readBatch waits no longer than asked, and a deleted device ends it with an error', { skip: skip ?? false }, () => {
  const n = native();
  const t0 = n.open(`${DEV}b`);
  const t = { name: t0.name, fd: n.readerFd(t0.fd) };
  plumb(t.name);
  const data = new Uint8Array(new SharedArrayBuffer(4 * 2048));
  const lens = new Int32Array(new SharedArrayBuffer(16));
  const ctrl = new Int32Array(new SharedArrayBuffer(16));
  // Drain whatever the kernel sent when the link came up.
  while (n.readBatch(t.fd, data, lens, ctrl, 4, 2048, 4, 50) > 0) Atomics.store(ctrl, 1, ctrl[0]!);
  // A packet of the kernel's own may still turn up: then that wait is measured again.
  let got = 1;
  let waited = 0;
  for (let k = 0; k < 5 && got > 0; k++) {
    const at = performance.now();
    got = n.readBatch(t.fd, data, lens, ctrl, 4, 2048, 4, 150);
    waited = performance.now() - at;
    Atomics.store(ctrl, 1, ctrl[0]!);
  }
  assert.equal(got, 0, 'nothing to read');
  assert.ok(waited >= 100 && waited < 1500, `waited ${waited.toFixed(0)} ms for a 150 ms timeout`);
  sh(`ip -n ${NS} link del ${t.name}`);
  assert.throws(() => n.readBatch(t.fd, data, lens, ctrl, 4, 2048, 4, 1000), (e: NodeJS.ErrnoException) => e.code === 'EBADFD' || e.code === 'EBADF' || e.code === 'EIO');
  // Geometry that does not fit the arrays is refused before any read.
  assert.throws(() => n.readBatch(t.fd, data, lens, ctrl, 5, 2048, 4, 0), RangeError);
  assert.throws(() => n.readBatch(t.fd, data, lens, ctrl, 4, 4096, 4, 0), RangeError);
  assert.throws(() => n.readBatch(t.fd, data, lens, new Int32Array(1), 4, 2048, 4, 0), RangeError);
  assert.throws(() => n.readBatch(t.fd, lens as unknown as Uint8Array, lens, ctrl, 4, 2048, 4, 0), TypeError);
  closeSync(t.fd);
  closeSync(t0.fd);
});

test('a packet the kernel cannot hand over is dropped and counted, and reading goes on', { skip: skip ?? false }, () => {
  const n = native();
  // With the virtio-net header, a read into room smaller than the header fails
  // with EINVAL and the kernel drops that packet: what any per-packet read
  // failure looks like to the reader.
  const t0 = n.open(`${DEV}c`, { offload: true });
  const t = { name: t0.name, fd: n.readerFd(t0.fd) };
  plumb(t.name);
  try {
    const data = new Uint8Array(new SharedArrayBuffer(8 * 2048));
    const lens = new Int32Array(new SharedArrayBuffer(32));
    const ctrl = new Int32Array(new SharedArrayBuffer(20));
    burst(5);
    const got = n.readBatch(t.fd, data, lens, ctrl, 8, 8, 64, 100); // slots of 8 bytes: less than the header
    assert.equal(got, 0, 'nothing read');
    assert.ok(ctrl[4]! >= 5, `every datagram counted as dropped (${ctrl[4]})`);
    assert.equal(ctrl[0], 0, 'nothing published');
    // The device is fine: the next datagrams are read whole.
    burst(3, 32, 100);
    const seen: number[] = [];
    for (let k = 0; k < 10 && seen.length < 3; k++) {
      const before = ctrl[0]! >>> 0;
      const m = n.readBatch(t.fd, data, lens, ctrl, 8, 2048, 64, 200);
      for (let j = 0; j < m; j++) {
        const slot = ((before + j) >>> 0) % 8;
        const idx = indexOf(data, slot * 2048 + 10, lens[slot]! - 10); // after the 10-byte header
        if (idx >= 0) seen.push(idx);
      }
      Atomics.store(ctrl, 1, ctrl[0]!);
    }
    assert.deepEqual(seen, [100, 101, 102]);
  } finally {
    sh(`ip -n ${NS} link del ${t.name}`, { allowFail: true });
    closeSync(t.fd);
    closeSync(t0.fd);
  }
});

test('TunDevice: a burst arrives complete and in order, in fewer wakeups than packets', { skip: skip ?? false }, async () => {
  const { TunDevice } = await import('../../src/dataplane/tun.js');
  // The second device is opened right after the first is closed: its fd
  // usually has the first one's number, while the first reader may still be
  // waiting (the link is in NS, so close() cannot delete it to wake the
  // reader). That reader must not take the second device's packets.
  for (const mask of [0, undefined]) {
    const dev = TunDevice.open(`${DEV}${mask === 0 ? 'p' : 'v'}`, mask === 0 ? { offloadMask: 0 } : {});
    plumb(dev.name);
    // Room in the kernel's queue for the whole burst: what is measured here is
    // order and batching, not whether two shared cores keep up with a flood.
    nsExec(NS, `ip link set dev ${dev.name} txqueuelen 10000`);
    const got: number[] = [];
    dev.start((p, len) => {
      const i = indexOf(p, 0, len);
      if (i >= 0) got.push(i);
    });
    try {
      // The reader thread is up once a probe comes through.
      for (let k = 0; k < 100 && got.length === 0; k++) {
        await burstAsync(1, 64, 0x7fff0000);
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(got.length > 0, 'the reader thread reads');
      await new Promise((r) => setTimeout(r, 100));
      got.length = 0;
      const COUNT = 3000;
      await burstAsync(COUNT, 64);
      const deadline = Date.now() + 5000;
      while (got.length < COUNT && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      if (got.length !== COUNT) {
        const have = new Set(got);
        const missing = Array.from({ length: COUNT }, (_, i) => i).filter((i) => !have.has(i));
        assert.fail(`${got.length} of ${COUNT} datagrams read (${mask === 0 ? 'plain' : 'vnet header'}); missing ${missing.slice(0, 10).join(',')}; ${JSON.stringify(dev.offloadStatus())}\n${sh(`ip -n ${NS} -s link show ${dev.name}`).out}${nsExec(NS, 'nstat -az | grep -i -E "udp|drop|outrequests"', { allowFail: true }).out}`);
      }
      assert.ok(got.every((v, i) => v === i), 'in order');
      const st = dev.offloadStatus();
      assert.ok(st.reads >= COUNT, `reads ${st.reads}`);
      assert.ok(st.read_batches > 0 && st.read_batches < st.reads, `batches ${st.read_batches} for ${st.reads} reads`);
    } finally {
      dev.close();
    }
  }
});

test('a closed device leaves no fd behind: the reader closes its own once it has stopped', { skip: skip ?? false }, async () => {
  const { TunDevice } = await import('../../src/dataplane/tun.js');
  const { readdirSync } = await import('node:fs');
  const fds = (): number => readdirSync('/proc/self/fd').length;
  // Warm up whatever a first TunDevice loads (the addon, the worker machinery).
  const warm = TunDevice.open(`${DEV}w`, { offloadMask: 0 });
  warm.start(() => {});
  warm.close();
  await warm.readerStopped();
  const before = fds();
  for (let i = 0; i < 3; i++) {
    const dev = TunDevice.open(`${DEV}f`, { offloadMask: 0 });
    plumb(dev.name); // in NS: close() cannot delete it, so the reader stops on its flag
    dev.start(() => {});
    await new Promise((r) => setTimeout(r, 300)); // the reader is up and waiting
    const t0 = performance.now();
    dev.close();
    await dev.readerStopped();
    assert.ok(performance.now() - t0 < 2000, 'the reader stopped within its wait');
    sh(`ip netns exec ${NS} true`); // (the device went with its last fd)
  }
  assert.equal(fds(), before, 'as many fds open as before the three devices');
});
