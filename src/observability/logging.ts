// Structured JSON logs. Credentials never reach a log line: pino's redaction removes them
// wherever the request headers are logged, whatever the caller passes.
import { pino, type DestinationStream, type Logger } from 'pino';

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

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { svc: 'ztgw' },
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      // pino's default epoch-millisecond `time`: formatting ISO dates costs on every access line.
    },
    destination,
  );
}
