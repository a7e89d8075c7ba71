// A peer's learned underlay endpoint (address, port, the local port it talks
// to) and when it was last heard, in shared memory: the packet worker that
// receives a peer's datagrams learns it, every worker sends to it.
//
// Writers (rare: a peer roams) take the spin lock and bump a sequence word
// around the change (odd while writing); readers keep a per-thread copy and
// re-read only when the sequence moved, so the send path reads one word per
// packet and builds the address string only after a change.
import { lock, unlock } from '../../wire/index.js';
import { formatAddr, parseAddr } from '../io/addr.js';

const LOCK = 0;
const SEQ = 1;
const FAMILY = 2; // 0: none yet
const PORT = 3;
const LOCAL_PORT = 4;
const TAG = 5; // a word for the engine (the relay: which key the node last used)
const ADDR = 8; // 16 bytes = words 8..11
const WORDS = 12;
const LAST_SEEN = 6; // Float64 index 6 = bytes 48..55 (after the address words)
const BYTES = 56;

/** The shared words of one endpoint; structured-cloneable (post `buffer` to a worker). */
export class SharedEndpoint {
  readonly words: Int32Array;
  private readonly bytes: Uint8Array;
  private readonly f64: Float64Array;
  // This thread's copy (see refresh()).
  private seen = -1;
  /** Cached address text; null while none is known. */
  addr: string | null = null;
  port = 0;
  family: 4 | 6 = 4;
  /** The local UDP port the peer was heard on (answers go out from it). */
  localPort = 0;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(BYTES)) {
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength !== BYTES) throw new TypeError('not a shared endpoint buffer');
    this.words = new Int32Array(buffer, 0, WORDS);
    this.bytes = new Uint8Array(buffer, ADDR * 4, 16);
    this.f64 = new Float64Array(buffer);
  }

  /**
   * Brings this thread's copy up to date; true when it changed. One atomic
   * load when nothing moved; allocates only the new address text after a change.
   */
  refresh(): boolean {
    const w = this.words;
    const s = Atomics.load(w, SEQ);
    if (s === this.seen) return false;
    for (let tries = 0; tries < 1000; tries++) {
      const s1 = Atomics.load(w, SEQ);
      if ((s1 & 1) !== 0) continue; // a write in progress
      const fam = w[FAMILY]!;
      const port = w[PORT]!;
      const lport = w[LOCAL_PORT]!;
      const addr = fam === 0 ? null : formatAddr(this.bytes, 0, fam === 6 ? 6 : 4);
      if (Atomics.load(w, SEQ) !== s1) continue;
      this.seen = s1;
      this.addr = addr;
      this.family = fam === 6 ? 6 : 4;
      this.port = port;
      this.localPort = lport;
      return true;
    }
    return false; // a writer kept it busy; the old copy stays for this packet
  }

  /**
   * Sets the endpoint when it differs from this thread's copy (refreshed
   * first); returns true when it changed. `addr` is a literal IPv4/IPv6 address.
   */
  set(addr: string, port: number, family: 4 | 6, localPort: number): boolean {
    this.refresh();
    if (this.addr === addr && this.port === port && this.localPort === localPort) return false;
    const p = parseAddr(addr);
    if (p === null) return false;
    const w = this.words;
    lock(w, LOCK);
    Atomics.add(w, SEQ, 1); // odd: writing
    this.bytes.fill(0);
    this.bytes.set(p.bytes);
    w[FAMILY] = family;
    w[PORT] = port;
    w[LOCAL_PORT] = localPort;
    Atomics.add(w, SEQ, 1);
    unlock(w, LOCK);
    this.refresh();
    return true;
  }

  /** Forgets the endpoint (nothing learned). */
  clear(): void {
    const w = this.words;
    lock(w, LOCK);
    Atomics.add(w, SEQ, 1);
    w[FAMILY] = 0;
    w[PORT] = 0;
    w[LOCAL_PORT] = 0;
    this.bytes.fill(0);
    Atomics.add(w, SEQ, 1);
    unlock(w, LOCK);
    this.refresh();
  }

  /** A small number the engine keeps with the endpoint (the relay: which of a link's keys the node speaks). */
  get tag(): number {
    return Atomics.load(this.words, TAG);
  }

  set tag(v: number) {
    if (Atomics.load(this.words, TAG) !== v) Atomics.store(this.words, TAG, v);
  }

  /** When the peer was last authenticated (ms since the epoch; 0: never). A plain store: the newest write wins. */
  get lastSeenMs(): number {
    return this.f64[LAST_SEEN]!;
  }

  set lastSeenMs(v: number) {
    this.f64[LAST_SEEN] = v;
  }
}
