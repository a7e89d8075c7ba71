// sodium-native wants typed-array views of exactly the right length, and
// Buffer#subarray allocates a new view object on every call. ViewCache keeps,
// per backing buffer and start offset, a lazily filled table of views indexed
// by length, so the steady state (the same receive/transmit buffers reused
// packet after packet) allocates nothing.
//
// A few buffers are remembered at once (round-robin). A buffer is only adopted
// into the cache when it is seen twice in a row without a hit; a caller that
// hands over a brand-new Buffer for every packet (or one of many rotating ring
// slots) therefore gets no view from find(), and a plain subarray from get(),
// without churning the tables. find() lets the wire layer copy a small packet
// into a buffer it does cache instead of allocating a view for it.

const SLOTS = 8;

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
    const v = this.find(buf, base, len);
    return v !== null ? v : buf.subarray(base, base + len);
  }

  /**
   * The cached view `buf[base .. base + len]`, or null when `buf` at `base` is
   * not (yet) a cached buffer; nothing is allocated then. A buffer asked for
   * twice in a row is adopted (that call returns its view).
   */
  find(buf: Buffer, base: number, len: number): Buffer | null {
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
    return null;
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
