// Structured JSON logs. Credentials never reach a log line: pino's redaction removes them
// wherever the request headers are logged, whatever the caller passes.
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
}

/**
 * How often buffered lines are written out whatever their amount. minLength holds lines until
 * 4 KB have gathered, which on a quiet gateway is forever: a single deny stayed unwritten for
 * minutes, and a crash (SIGKILL, OOM) would have lost it. A second bounds both.
 */
export const FLUSH_INTERVAL_MS = 1_000;

type Flushable = DestinationStream & { flush?: (cb?: (err?: Error | null) => void) => void; destroyed?: boolean };

function flushEvery(destinations: readonly Flushable[], ms: number): void {
  const timer = setInterval(() => {
    if (destinations.every((d) => d.destroyed === true)) return clearInterval(timer);
    for (const d of destinations) {
      if (d.destroyed === true || typeof d.flush !== 'function') continue;
      // A flush while a write is in flight waits for it; an error surfaces on the stream itself.
      try {
        d.flush(() => {});
      } catch {
        // sonic-boom throws while it is still opening its file; the next tick flushes.
      }
    }
  }, ms);
  timer.unref(); // never keeps the process alive; SIGTERM's close flushes the rest
}

export function createLoggers(level: string, destination?: DestinationStream, decisionFile?: string): Loggers {
  // Default: stdout through an asynchronous, buffered sonic-boom (pino flushes it on exit);
  // a synchronous write per access line cost ~8% of throughput in the benchmark.
  const out: Flushable = destination ?? pino.destination({ dest: 1, sync: false, minLength: 4096 });
  const decisionsOut: Flushable = decisionFile === undefined ? out : pino.destination({ dest: decisionFile, sync: false, minLength: 4096, mkdir: true });
  flushEvery(decisionsOut === out ? [out] : [out, decisionsOut], FLUSH_INTERVAL_MS);
  // pino's default epoch-millisecond `time`: formatting ISO dates costs on every access line.
  const base = { level, base: { svc: 'ztgw' } };
  return {
    logger: pino({ ...base, redact: { paths: REDACTED_PATHS, censor: '[redacted]' } }, out),
    access: { enabled: pino.levels.values[level]! <= pino.levels.values.info!, write: (line) => out.write(line) },
    // Each record carries log: 'decision' itself. A file of its own suits replay (`ztgw policy replay --log`).
    decisions: pino(base, decisionsOut),
  };
}
