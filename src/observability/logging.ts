// Structured JSON logs. Credentials never reach a log line: pino's redaction removes them
// wherever the request headers are logged, whatever the caller passes.
import { mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { pino, type DestinationStream, type Logger } from 'pino';
import type { AccessLineSink } from './access-log.ts';

export const REDACTED_PATHS = [
  'headers.authorization',
  'headers.cookie',
  'headers["set-cookie"]',
  'headers.dpop',
  'headers["proxy-authorization"]',
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers.dpop',
  'req.headers["proxy-authorization"]',
  'res.headers["set-cookie"]',
  'token',
  '*.token',
];

export interface Loggers {
  /** Everything but access lines; credentials redacted wherever they appear. */
  readonly logger: Logger;
  /**
   * One line per request, built by access-log.ts from fixed fields the server picks (never
   * headers or tokens): no redaction needed, and no pino on the hot path.
   */
  readonly access: AccessLineSink;
  /** Policy decisions: records built by policy/record.ts (credentials never in them), unredacted too. */
  readonly decisions: Logger;
  /**
   * Writes out every buffered line; resolves when they are written (or after 2 s, when a
   * destination is stuck). The gateway's close() ends with it. Exits through process.exit
   * need nothing: pino's exit hook writes each destination out synchronously, and fatal()
   * does so itself.
   */
  flush(): Promise<void>;
}

/**
 * How often buffered lines are written out whatever their amount. minLength holds lines until
 * 4 KB have gathered, which on a quiet gateway is forever: a single deny stayed unwritten for
 * minutes, and a crash (SIGKILL, OOM) would have lost it. A second bounds both. sonic-boom's
 * own periodicFlush does it: a write without fsync (the kernel has the line once the process
 * dies), no listener left per tick, and its timer stops when the stream closes.
 */
export const FLUSH_INTERVAL_MS = 1_000;

/** How long close() waits for a destination to take its last lines (a stalled stdout reader must not hold the exit). */
const FINAL_FLUSH_WAIT_MS = 2_000;

type Flushable = DestinationStream & { flush?: (cb?: (err?: Error | null) => void) => void; destroyed?: boolean };

/** The decision log file could not be opened: a start-up error naming the file, never a crash later. */
export class LogFileError extends Error {
  readonly file: string;
  constructor(file: string, cause: NodeJS.ErrnoException) {
    super(`cannot open ${file} for writing (${cause.code ?? cause.message})`, { cause });
    this.name = 'LogFileError';
    this.file = file;
  }
}

/**
 * Opened here, synchronously, rather than by sonic-boom (which opens a path in the background):
 * a directory that cannot be created or written then fails the start with the file's name,
 * instead of an unhandled 'error' event that killed the process after it had started, and
 * the destination is ready from its first line, so pino's exit hook can always write it out
 * synchronously (an exit during start-up printed "sonic boom is not ready yet" and its stack).
 */
function openForAppend(file: string): number {
  try {
    mkdirSync(dirname(file), { recursive: true });
    return openSync(file, 'a');
  } catch (err) {
    throw new LogFileError(file, err as NodeJS.ErrnoException);
  }
}

/** Resolves once everything buffered in `d` is written, or after `waitMs` whatever happened. */
function flushed(d: Flushable, waitMs: number): Promise<void> {
  const flush = d.flush?.bind(d);
  if (flush === undefined || d.destroyed === true) return Promise.resolve();
  return new Promise((done) => {
    const timer = setTimeout(done, waitMs);
    timer.unref();
    const finish = () => (clearTimeout(timer), done());
    try {
      flush(finish); // called on drain (after an fsync, whose error on a pipe does not matter here)
    } catch {
      finish();
    }
  });
}

export function createLoggers(level: string, destination?: DestinationStream, decisionFile?: string): Loggers {
  // Default: stdout through an asynchronous, buffered sonic-boom (pino flushes it on exit);
  // a synchronous write per access line cost ~8% of throughput in the benchmark.
  const buffered = { sync: false, minLength: 4096, periodicFlush: FLUSH_INTERVAL_MS };
  const out: Flushable = destination ?? pino.destination({ dest: 1, ...buffered });
  const decisionsOut: Flushable = decisionFile === undefined ? out : pino.destination({ dest: openForAppend(decisionFile), ...buffered });
  // pino's default epoch-millisecond `time`: formatting ISO dates costs on every access line.
  const base = { level, base: { svc: 'ztgw' } };
  return {
    logger: pino({ ...base, redact: { paths: REDACTED_PATHS, censor: '[redacted]' } }, out),
    access: { enabled: pino.levels.values[level]! <= pino.levels.values.info!, write: (line) => out.write(line) },
    // Each record carries log: 'decision' itself. A file of its own suits replay (`ztgw policy replay --log`).
    decisions: pino(base, decisionsOut),
    flush: async () => {
      await Promise.all((decisionsOut === out ? [out] : [out, decisionsOut]).map((d) => flushed(d, FINAL_FLUSH_WAIT_MS)));
    },
  };
}
