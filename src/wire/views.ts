// sodium-native wants typed-array views of exactly the right length, and
// Buffer#subarray allocates a new view object on every call. ViewCache keeps,
// per backing buffer and start offset, a lazily filled table of views indexed
// by length, so the steady state (the same receive/transmit buffers reused
// packet after packet) allocates nothing.
//
// A few buffers are remembered at once (round-robin). A buffer is only adopted
// into the cache when it is seen twice in a row without a hit; a caller that
// hands over a brand-new Buffer for every packet therefore just gets a plain
// subarray, without churning the tables.

const SLOTS = 4;

interface Slot {
  buf: Buffer | null;
  base: number;
  views: (Buffer | undefined)[];
}

export class ViewCache {
  private readonly slots: Slot[] = [];
  private next = 0;
  private lastMissBuf: Buffer | null = null;
  private lastMissBase = -1;

  /** @param maxLen the largest view length that will be requested */
  constructor(private readonly maxLen: number) {
    for (let i = 0; i < SLOTS; i++) {
      this.slots.push({ buf: null, base: 0, views: new Array<Buffer | undefined>(maxLen + 1).fill(undefined) });
    }
  }

  /**
   * Returns a view `buf[base .. base + len]`. The caller has already checked
   * that the range lies inside `buf` and that `len <= maxLen`.
   */
  get(buf: Buffer, base: number, len: number): Buffer {
    const slots = this.slots;
    for (let i = 0; i < SLOTS; i++) {
      const s = slots[i]!;
      if (s.buf === buf && s.base === base) {
        let v = s.views[len];
        if (v === undefined) {
          v = buf.subarray(base, base + len);
          s.views[len] = v;
        }
        return v;
      }
    }
    if (buf === this.lastMissBuf && base === this.lastMissBase) {
      // Seen twice running: adopt it, evicting the oldest slot.
      const s = slots[this.next]!;
      this.next = (this.next + 1) % SLOTS;
      s.buf = buf;
      s.base = base;
      s.views.fill(undefined);
      this.lastMissBuf = null;
      this.lastMissBase = -1;
      const v = buf.subarray(base, base + len);
      s.views[len] = v;
      return v;
    }
    this.lastMissBuf = buf;
    this.lastMissBase = base;
    return buf.subarray(base, base + len);
  }

  /** Forgets every cached buffer (lets them be garbage collected). */
  clear(): void {
    for (const s of this.slots) {
      s.buf = null;
      s.views.fill(undefined);
    }
    this.lastMissBuf = null;
    this.lastMissBase = -1;
  }

  get capacity(): number {
    return this.maxLen;
  }
}
