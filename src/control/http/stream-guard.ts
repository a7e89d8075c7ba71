// Writes to a long-lived SSE response with a stall cut-off: a client that
// stops reading leaves our writes queued in memory; once a write is not
// drained within `stallMs`, or the queue grows past `maxBacklog` bytes, the
// stream is destroyed (its 'close' handlers then clean up).
import type { ServerResponse } from 'node:http';

export interface StreamGuardOptions {
  /** A write not drained within this many ms cuts the stream. */
  stallMs: number;
  /** More than this many bytes queued cuts the stream at once. */
  maxBacklog: number;
  onCut(reason: 'stalled' | 'backlog', backlog: number): void;
}

export interface GuardedWriter {
  /** false once the stream is cut or ended. */
  write(chunk: string): boolean;
  /** Stops the stall timer (call when the stream ends). */
  dispose(): void;
}

export function guardedWriter(res: ServerResponse, o: StreamGuardOptions): GuardedWriter {
  let timer: NodeJS.Timeout | null = null;
  let cut = false;
  const stop = (reason: 'stalled' | 'backlog') => {
    if (cut) return;
    cut = true;
    if (timer) clearTimeout(timer);
    timer = null;
    o.onCut(reason, res.writableLength);
    res.destroy();
  };
  const onDrain = () => {
    if (timer) clearTimeout(timer);
    timer = null;
  };
  res.on('drain', onDrain);
  return {
    write(chunk: string): boolean {
      if (cut || res.destroyed || res.writableEnded) return false;
      if (res.write(chunk)) return true;
      if (res.writableLength > o.maxBacklog) {
        stop('backlog');
        return false;
      }
      if (!timer) {
        timer = setTimeout(() => stop('stalled'), o.stallMs);
        timer.unref();
      }
      return true;
    },
    dispose(): void {
      if (timer) clearTimeout(timer);
      timer = null;
      res.off('drain', onDrain);
    },
  };
}
