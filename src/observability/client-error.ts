// Refusals written straight to a socket: requests Node's HTTP parser refused before any
// handler ran (malformed framing, oversized heads, timeouts), and refused upgrades, whose
// socket no longer has an HTTP response object. They get the same problem documents as
// every other refusal (observability/problem.ts), with a request id and Connection: close.
import { randomUUID } from 'node:crypto';
import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { BadRequestError, HeadersTooLargeError, RequestTimeoutError, ZtError } from '../core/errors.ts';
import { toProblem } from './problem.ts';

/**
 * Most header fields a request may carry (the listener's maxHeadersCount; Node's parser
 * refuses more with HPE_HEADER_OVERFLOW, answered 431 below). Node's default is 2000;
 * Envoy's is 100; 200 leaves room for browsers behind a few proxies.
 */
export const MAX_HEADER_FIELDS = 200;

/** A refused socket that the client does not close is closed after this long. */
const LINGER_MS = 5_000;

/** Serialises a status line and headers; values come from our own tables or Node's parser, never raw client bytes. */
export function responseHead(status: number, headers: Readonly<Record<string, string | readonly string[] | number | undefined>>): string {
  let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n`;
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) head += `${name}: ${v}\r\n`;
    else head += `${name}: ${value as string | number}\r\n`;
  }
  return head + '\r\n';
}

/**
 * Ends the connection gracefully: what the client sends from now on is read and dropped
 * (never parsed, never forwarded), so the close does not turn into a reset that could
 * discard the response before the client reads it.
 */
export function closeAfterWrite(socket: Duplex): void {
  socket.end();
  socket.on('data', () => {});
  socket.on('error', () => socket.destroy());
  socket.once('end', () => socket.destroy());
  const timer = setTimeout(() => socket.destroy(), LINGER_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/** Writes `err` as a complete problem response on a bare socket and closes the connection. */
export function writeProblemToSocket(socket: Duplex, requestId: string, err: unknown): number {
  const problem = toProblem(err, requestId);
  const body = JSON.stringify(problem.body);
  if (!socket.writable || socket.destroyed) {
    socket.destroy();
    return problem.status;
  }
  const headers = { ...problem.headers, 'x-request-id': requestId, 'content-length': Buffer.byteLength(body), connection: 'close' };
  socket.write(responseHead(problem.status, headers) + body);
  closeAfterWrite(socket);
  return problem.status;
}

/**
 * Node's parser and timeout errors, mapped onto the closed error set. The llhttp reason
 * ("Invalid header token", the offending bytes in rawPacket) stays in the cause, for logs.
 */
export function clientErrorToZt(err: Error & { code?: string }): ZtError {
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT': // headersTimeout and requestTimeout both report this
    case 'HPE_HEADER_TIMEOUT':
      return new RequestTimeoutError('client too slow', { cause: err });
    case 'HPE_HEADER_OVERFLOW':
      return new HeadersTooLargeError('request head over limit', { cause: err });
    default:
      // HPE_INVALID_* (framing, tokens, versions, chunk sizes), HPE_UNEXPECTED_CONTENT_LENGTH,
      // HPE_PAUSED_H2_UPGRADE (an HTTP/2 preface on this HTTP/1.1 listener), and the rest.
      return new BadRequestError('request refused by the HTTP parser', { cause: err });
  }
}

/** The request id, kept on the raw request by the data plane's genReqId so a late refusal can quote it. */
export const REQUEST_ID = Symbol('ztgw.requestId');

/** Marks a response the parser-error handler finished, so its access line carries the refusal. */
export const CLIENT_ERROR = Symbol('ztgw.clientError');

export interface ClientErrorOptions {
  /** Called for a refusal written here (not for one written through an in-flight response, which is logged as that request). */
  readonly onRefused?: (requestId: string, error: ZtError, status: number, client: string | undefined) => void;
  readonly onError?: (err: Error, requestId: string) => void;
}

/**
 * The listener for Node's 'clientError' (Fastify's clientErrorHandler). Two cases:
 * - the request head never parsed: no handler ran, so the problem and the access line are written here;
 * - a request is in flight (its body timed out or broke): the problem goes out through that
 *   request's own response, if nothing has been sent yet, and its normal access line records it.
 */
export function createClientErrorHandler(opts: ClientErrorOptions): (err: Error & { code?: string }, socket: Duplex) => void {
  // A parser that failed fails again on every later packet of the connection: one answer, one line.
  const answered = new WeakSet<Duplex>();
  return (err, socket) => {
    // The peer is gone (ECONNRESET): there is nobody to answer.
    if (err.code === 'ECONNRESET' || socket.destroyed || answered.has(socket)) return void socket.destroy();
    answered.add(socket);
    const zt = clientErrorToZt(err);
    const inFlight = (socket as Duplex & { _httpMessage?: ServerResponse | null })._httpMessage;
    if (inFlight) {
      if (inFlight.headersSent || !socket.writable || err.code === 'HPE_INVALID_EOF_STATE') return void socket.destroy(err);
      const requestId = (inFlight.req as { [REQUEST_ID]?: string } | undefined)?.[REQUEST_ID] ?? randomUUID();
      const problem = toProblem(zt, requestId);
      const body = JSON.stringify(problem.body);
      (inFlight as ServerResponse & { [CLIENT_ERROR]?: ZtError })[CLIENT_ERROR] = zt;
      opts.onError?.(err, requestId);
      inFlight.shouldKeepAlive = false;
      inFlight.writeHead(problem.status, { ...problem.headers, 'x-request-id': requestId, 'content-length': Buffer.byteLength(body), connection: 'close' });
      inFlight.end(body, () => socket.destroy());
      return;
    }
    const requestId = randomUUID();
    // A client that closed mid-head (HPE_INVALID_EOF_STATE) cannot read an answer.
    const status = err.code === 'HPE_INVALID_EOF_STATE' ? (socket.destroy(), zt.status) : writeProblemToSocket(socket, requestId, zt);
    opts.onError?.(err, requestId);
    opts.onRefused?.(requestId, zt, status, (socket as Duplex & { remoteAddress?: string }).remoteAddress);
  };
}
