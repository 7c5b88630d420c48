// server.timeouts.sendIdleMs: a response whose client has stopped reading is ended. Without
// it, a client that opens downloads and never reads them holds, for each, a slot of its
// upstream's bulkhead and fair share and an upstream connection (the upstream is paused by
// back-pressure, not finished), for as long as the TCP connection lives: minutes or forever.
//
// "Stopped reading" is back-pressure that does not clear: the response's socket buffer is full
// (ServerResponse.writableNeedDrain) and no 'drain' came for sendIdleMs. A slow reader that
// drains now and then is progress and is never cut; a response waiting for its upstream has
// nothing to write and is never cut either (that is the route's upstream timeout's business).
//
// One sweeping timer for all responses instead of a timer per response: the check is a
// property read per response in flight, and the timer runs only while some are watched.
import type { ServerResponse } from 'node:http';

export interface StallWatch {
  /** Watches the response until it closes; `onStall` runs once if it stays undrained for `idleMs`. */
  watch(res: ServerResponse, idleMs: number, onStall: () => void): void;
  /** Responses watched now (tests). */
  readonly size: number;
  close(): void;
}

interface Entry {
  readonly idleMs: number;
  readonly onStall: () => void;
  /** When the sweep first saw the buffer full with no drain since; undefined while it drains. */
  since: number | undefined;
}

/** `intervalMs`: how often responses are checked: the precision of the cut (a quarter of sendIdleMs, at most 1 s). */
export function createStallWatch(intervalMs: number, now: () => number = performance.now.bind(performance)): StallWatch {
  const entries = new Map<ServerResponse, Entry>();
  let timer: NodeJS.Timeout | undefined;

  const sweep = (): void => {
    const t = now();
    for (const [res, entry] of entries) {
      if (!res.writableNeedDrain) {
        entry.since = undefined;
        continue;
      }
      entry.since ??= t;
      if (t - entry.since < entry.idleMs) continue;
      entries.delete(res);
      entry.onStall();
    }
    if (entries.size === 0) stop();
  };
  const stop = (): void => {
    if (timer !== undefined) clearInterval(timer);
    timer = undefined;
  };

  return {
    watch(res, idleMs, onStall) {
      const entry: Entry = { idleMs, onStall, since: undefined };
      entries.set(res, entry);
      // Progress, however slow, restarts the clock.
      res.on('drain', () => void (entry.since = undefined));
      res.once('close', () => {
        entries.delete(res);
        if (entries.size === 0) stop();
      });
      if (timer === undefined) {
        timer = setInterval(sweep, intervalMs);
        timer.unref();
      }
    },
    get size() {
      return entries.size;
    },
    close() {
      entries.clear();
      stop();
    },
  };
}

/** The sweep interval for a sendIdleMs: a quarter of it, within 50 ms and 1 s. */
export function sweepIntervalFor(sendIdleMs: number): number {
  return Math.min(1_000, Math.max(50, Math.floor(sendIdleMs / 4)));
}
