// One way out for every request the data plane answered: plain requests, WebSocket upgrades,
// requests the router refused and requests Node's parser refused before any route ran all
// write the same access line and count in the same metrics. A second, hand-rolled logger in
// one of those paths is how a refused (and interesting) request goes unseen.
import type { ZtError } from '../core/errors.ts';
import type { Decision, GatewayMetrics } from './metrics.ts';
import { loggedPath } from './log-path.ts';

/** What one answered request contributes to the access log and the request metrics. */
export interface AccessRecord {
  readonly reqId: string;
  /** undefined when the parser refused the request before its method was known. */
  readonly method: string | undefined;
  /** Normalised path, or the raw target: cut by loggedPath here, whatever the caller passes. */
  readonly path: string | undefined;
  /** Route name; undefined when none was matched. */
  readonly route: string | undefined;
  readonly status: number;
  /** Time to answer; undefined when the start is unknown (parser errors). */
  readonly ms: number | undefined;
  /** The refusal, when the gateway refused the request itself. */
  readonly error: ZtError | undefined;
  readonly sub: string | undefined;
  readonly client: string | undefined;
  /** Set for WebSocket upgrades (and CONNECT): the protocol that was asked for. */
  readonly upgrade?: string;
  /**
   * Set on the second line of a relayed WebSocket: written when the session ends (the
   * handshake had its own line, which counted the request). `ms` is then how long it lasted.
   */
  readonly session?: SessionTotals;
}

/** Payload bytes a WebSocket session carried each way, frames included, handshake not. */
export interface SessionTotals {
  /** Client to upstream. */
  readonly bytesIn: number;
  /** Upstream to client. */
  readonly bytesOut: number;
}

export type AccessRecorder = (record: AccessRecord) => void;

function decisionOf(status: number, error: ZtError | undefined, routed: boolean): Decision {
  // An upstream's own 5xx, its body replaced by the gateway's problem (ERR_UPSTREAM_ERROR):
  // the request was allowed and forwarded, as when the upstream's body is passed.
  if (error === undefined || error.code === 'ERR_UPSTREAM_ERROR') return status >= 500 && !routed ? 'error' : 'allow';
  return status === 401 || status === 403 ? 'deny' : 'error';
}

/** Where access lines go: one JSON line per call, newline included. */
export interface AccessLineSink {
  /** False below the `info` level: no line is built. */
  readonly enabled: boolean;
  write(line: string): void;
}

// Strings from the request (path, method, sub, client) are quoted by JSON.stringify: a
// path or a token's sub can hold quotes, backslashes and control characters.
const str = (name: string, value: string | undefined): string => (value === undefined ? '' : `,"${name}":${JSON.stringify(value)}`);

/**
 * The access line, built by hand from its fixed fields rather than through pino: pino's
 * generic serialisation cost more than the rest of the line's work (5-8 µs against ~1 µs
 * in process; docs/performance.md). Same shape as a pino line (level, time, svc, log, msg),
 * so the two kinds read alike in one stream.
 */
export function formatAccessLine(r: AccessRecord, route: string, decision: Decision): string {
  const ms = r.ms === undefined ? '' : `,"ms":${Math.round(r.ms * 100) / 100}`;
  return (
    `{"level":30,"time":${Date.now()},"svc":"ztgw","log":"access"${str('reqId', r.reqId)}${str('method', r.method)}${str('path', loggedPath(r.path))}` +
    `${str('route', route)},"status":${r.status}${ms},"decision":"${decision}"${str('sub', r.sub)}${str('client', r.client)}${str('code', r.error?.code)}` +
    `${str('upgrade', r.upgrade)}${sessionFields(r.session)}}\n`
  );
}

// A session's end is not another request: its own message, so "msg":"access" still counts requests.
const sessionFields = (s: SessionTotals | undefined): string =>
  s === undefined ? ',"msg":"access"' : `,"bytesIn":${s.bytesIn},"bytesOut":${s.bytesOut},"msg":"websocket closed"`;

export function createAccessRecorder(sink: AccessLineSink, metrics: GatewayMetrics): AccessRecorder {
  return (r: AccessRecord): void => {
    const route = r.route ?? 'none';
    const { status, error } = r;
    const decision = decisionOf(status, error, r.route !== undefined);
    // The session's handshake was counted; its end only adds a line.
    if (r.session !== undefined) return void (sink.enabled && sink.write(formatAccessLine(r, route, decision)));
    metrics.requests.inc(route, status, decision);
    if (r.ms !== undefined) metrics.requestDuration.series(route).observe(r.ms / 1000);
    // 401s and 403s by code: credential stuffing, DPoP replays, policy denies and revoked
    // devices are each one series to alert on.
    if (error !== undefined && (status === 401 || status === 403)) metrics.authFailures.inc({ reason: error.code });
    if (sink.enabled) sink.write(formatAccessLine(r, route, decision));
  };
}
