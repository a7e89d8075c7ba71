// Anti-replay sliding window over sequence numbers (one per receive session).
//
// The protocol asks for at least 64 entries; this window remembers the last
// REPLAY_WINDOW sequence numbers below the highest one accepted, so heavy
// reordering on multi-path underlays does not turn into loss. The bitmap is a
// ring of 32-bit words indexed by seq/32 (the RFC 6479 layout): moving the
// window forward clears whole words instead of shifting bits. One spare word
// lets the window cover exactly REPLAY_WINDOW values whatever the alignment.
//
// Sequence numbers are plain JS numbers (exact up to 2^53); no BigInt here.

/** How many sequence numbers at or below the highest one are tracked. */
export const REPLAY_WINDOW = 1024;

const WORD_BITS = 32;
const RING_WORDS = REPLAY_WINDOW / WORD_BITS + 1;

export class ReplayWindow {
  private readonly ring = new Uint32Array(RING_WORDS);
  private top = 0;
  private empty = true;

  /** Forgets everything (a new session epoch starts). */
  reset(): void {
    this.ring.fill(0);
    this.top = 0;
    this.empty = true;
  }

  /**
   * Returns true and records `seq` when it was not seen before and is not too
   * far behind the highest accepted number; returns false for a duplicate or
   * a number that fell out of the window. Never allocates.
   */
  accept(seq: number): boolean {
    const ring = this.ring;
    if (this.empty) {
      this.empty = false;
      this.top = seq;
    } else if (seq > this.top) {
      const fromWord = Math.floor(this.top / WORD_BITS);
      const toWord = Math.floor(seq / WORD_BITS);
      if (toWord - fromWord >= RING_WORDS) {
        ring.fill(0);
      } else {
        for (let w = fromWord + 1; w <= toWord; w++) ring[w % RING_WORDS] = 0;
      }
      this.top = seq;
    } else if (this.top - seq >= REPLAY_WINDOW) {
      return false;
    }
    const idx = Math.floor(seq / WORD_BITS) % RING_WORDS;
    const bit = 1 << (seq % WORD_BITS);
    const word = ring[idx]!;
    if ((word & bit) !== 0) return false;
    ring[idx] = word | bit;
    return true;
  }

  /** Highest sequence number accepted so far (0 when none). */
  get highest(): number {
    return this.top;
  }

  /** True when nothing was accepted since construction or the last reset. */
  get isEmpty(): boolean {
    return this.empty;
  }
}
