// WebSocket upgrades. One way in: an upgrade runs the same pipeline as any request (hygiene,
// route, authn, device, authz, assertion, over the same normalised path), then must be a
// valid RFC 6455 handshake on a route with `websocket: true`; only then is it relayed, and
// the two sockets are piped only once the upstream has really switched to WebSocket.
//
// Which requests get here is decided by the listener's shouldUpgradeCallback
// (isWebSocketUpgrade): a request asking for any other protocol (h2c, TLS/1.2, made-up ones)
// never becomes an upgrade. It is served as the plain HTTP/1.1 request it also is (RFC 9110
// §7.8 lets a server ignore Upgrade), with Upgrade and Connection dropped as hop-by-hop, and
// its connection closed after the answer. That is what stops h2c smuggling
// (upgrade to h2c, then talk HTTP/2 to paths the policy never saw): the upstream is never
// asked to switch, and the client never gets a tunnel.
//
// Written by hand because reply-from does not proxy upgrades and @fastify/http-proxy binds
// one upstream per prefix at registration, which cannot follow a hot-swapped Runtime.
import { createHash } from 'node:crypto';
import http, { type IncomingHttpHeaders, type IncomingMessage, type Server } from 'node:http';
import https from 'node:https';
import { Transform, type Duplex, type TransformCallback } from 'node:stream';
import type { Logger } from 'pino';
import type { RuntimeHolder } from '../config/compile.ts';
import { newContext, requestIdFor, type RequestContext } from '../pipeline/context.ts';
import { BadRequestError, ClientClosedRequestError, ShuttingDownError, UpstreamErrorResponse, UpstreamTimeoutError, UpstreamUnreachableError, ZtError } from '../core/errors.ts';
import { runPipeline } from '../pipeline/run.ts';
import type { AccessRecord, AccessRecorder } from '../observability/access-log.ts';
import { closeAfterWrite, responseHead, writeProblemToSocket } from '../observability/client-error.ts';
import type { GatewayMetrics } from '../observability/metrics.ts';
import { clientResponseHeaders, upstreamRequestHeaders, WEBSOCKET_HANDSHAKE, type ForwardingPolicy } from '../pipeline/upstream-headers.ts';
import { errorResponseHeaders } from '../pipeline/response-headers.ts';
import { callOptionsFor, type UpstreamCall } from '../pipeline/upstream-guard.ts';
import { upstreamPathFor } from '../pipeline/route.ts';

export interface UpgradeOptions {
  readonly holder: RuntimeHolder;
  readonly logger: Logger;
  readonly isDraining: () => boolean;
  readonly record: AccessRecorder;
  readonly metrics: GatewayMetrics;
  /** Aborted at the shutdown deadline: open sessions are then ended, each with its closing line. */
  readonly drainDeadline?: AbortSignal;
}

/** Does a comma-separated header value list `token` (ASCII case-insensitive)? */
function listsToken(value: string | string[] | undefined, token: string): boolean {
  if (value === undefined) return false;
  const joined = Array.isArray(value) ? value.join(',') : value;
  for (const part of joined.split(',')) if (part.trim().toLowerCase() === token) return true;
  return false;
}

/**
 * The listener's shouldUpgradeCallback (Node ≥ 24.9). Called only for requests llhttp saw
 * as upgrades (Upgrade plus Connection: upgrade). True sends the request to the 'upgrade'
 * listener below, which relays it or refuses it; false makes it an ordinary request.
 */
export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  return listsToken(req.headers.upgrade, 'websocket');
}

// RFC 6455 §4.1: the key is a base64-encoded 16-byte nonce, so exactly 22 characters of data and "==".
const WS_KEY = /^[A-Za-z0-9+/]{21}[AQgw]==$/;
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** RFC 6455 §4.2.1 client handshake requirements, beyond the Upgrade token the callback checked. */
export function checkHandshake(req: IncomingMessage): void {
  const h = req.headers;
  const bad = (why: string, headers?: Record<string, string>) => new BadRequestError(`not a websocket handshake: ${why}`, { headers });
  if (req.method !== 'GET') throw bad('method');
  if (req.httpVersion !== '1.1') throw bad('http version');
  if (!listsToken(h.connection, 'upgrade')) throw bad('connection');
  // §4.4: a version we do not speak is refused with the versions we do.
  if (h['sec-websocket-version'] !== '13') throw bad('version', { 'sec-websocket-version': '13' });
  const key = h['sec-websocket-key'];
  if (typeof key !== 'string' || !WS_KEY.test(key)) throw bad('key');
  // A handshake has no body; bytes after it are WebSocket frames, which must not reach an
  // upstream that has not switched (or be read as a smuggled request by one that did not).
  if (h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0')) throw bad('body');
}

function acceptFor(key: string): string {
  return createHash('sha1').update(key + WS_GUID).digest('base64');
}

function headersWithout(headers: IncomingHttpHeaders, drop: string): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const name in headers) if (name !== drop) out[name] = headers[name];
  return out;
}

// RFC 9110 §6.4.1, §15.3.5, §15.4.5: these carry no content.
const noBody = (status: number): boolean => status < 200 || status === 204 || status === 304;

/**
 * The upstream declined (any final status but 101): its answer goes to the client as valid
 * HTTP/1.1 — hop-by-hop headers filtered as for any proxied response, the body framed by its
 * Content-Length or re-chunked (Node's parser has de-chunked it, and a read-until-close body
 * has no length) — and then both connections close, so nothing the client sends next can
 * reach the upstream.
 */
function relayDeclined(ctx: RequestContext, res: IncomingMessage, client: Duplex, done: () => void): void {
  const status = res.statusCode ?? 502;
  const length = res.headers['content-length'];
  const chunked = !noBody(status) && (length === undefined || res.headers['transfer-encoding'] !== undefined);
  const headers: Record<string, string | string[] | undefined> = clientResponseHeaders(ctx, chunked ? headersWithout(res.headers, 'content-length') : res.headers);
  headers.connection = 'close';
  if (chunked) headers['transfer-encoding'] = 'chunked';
  client.write(responseHead(status, headers));
  if (noBody(status)) {
    res.resume();
    res.once('end', done);
    return;
  }
  // pipe() keeps back-pressure: a slow client slows the upstream down instead of filling memory.
  const body = chunked ? res.pipe(new ChunkedEncoder()) : res;
  body.pipe(client, { end: false });
  body.once('end', done);
  res.once('error', () => client.destroy());
}

/** RFC 9112 §7.1 chunked coding of a body whose length is not known up front. */
class ChunkedEncoder extends Transform {
  override _transform(chunk: Buffer, _enc: BufferEncoding, next: TransformCallback): void {
    if (chunk.length > 0) this.push(`${chunk.length.toString(16)}\r\n`), this.push(chunk), this.push('\r\n');
    next();
  }
  override _flush(next: TransformCallback): void {
    next(null, '0\r\n\r\n');
  }
}

function copyHandshake(from: IncomingHttpHeaders, to: Record<string, string | string[] | undefined>): void {
  for (const name of WEBSOCKET_HANDSHAKE) if (from[name] !== undefined) to[name] = from[name];
}

interface Attempt {
  readonly ctx: RequestContext;
  readonly started: number;
  readonly protocol: string;
}

export function attachUpgradeHandling(server: Server, opts: UpgradeOptions): void {
  const { holder, logger, record, metrics } = opts;
  // Relayed sessions, each with the function that ends it. Node's closeAllConnections does not
  // reach a socket after its upgrade, so at the shutdown deadline they are ended here.
  const sessions = new Set<(error: ZtError) => void>();
  opts.drainDeadline?.addEventListener('abort', () => {
    for (const end of sessions) end(new ShuttingDownError('websocket session cut at the shutdown deadline'));
  });

  const lineOf = (attempt: Attempt, status: number, error: ZtError | undefined): AccessRecord => {
    const { ctx } = attempt;
    return {
      reqId: ctx.id,
      method: ctx.method,
      path: ctx.path || ctx.rawUrl,
      route: ctx.route?.name,
      status,
      ms: performance.now() - attempt.started,
      error,
      sub: ctx.identity?.subject,
      client: ctx.clientIp || ctx.peerIp,
      upgrade: attempt.protocol,
    };
  };
  const finish = (attempt: Attempt, status: number, error: ZtError | undefined): void => record(lineOf(attempt, status, error));

  const refuse = (attempt: Attempt, socket: Duplex, err: unknown): void => {
    if (!(err instanceof ZtError)) logger.error({ reqId: attempt.ctx.id, err }, 'upgrade failed');
    const status = writeProblemToSocket(socket, attempt.ctx.id, err);
    finish(attempt, status, err instanceof ZtError ? err : undefined);
  };

  /**
   * A tunnel holds a slot of its upstream's bulkhead and of its principal's share for its whole
   * life (a WebSocket is a request in flight as long as it is open), and goes to an endpoint
   * chosen as for any request; the handshake is what its breaker sees (101 or another status,
   * a connection failure, the route's timeout). Never retried.
   */
  function relay(attempt: Attempt, key: string, policy: ForwardingPolicy, client: Duplex, head: Buffer, call: UpstreamCall): void {
    const { ctx } = attempt;
    const route = ctx.route!;
    const endpoint = call.first(); // throws UpstreamUnavailableError: the caller refuses
    ctx.upstreamOrigin = endpoint.origin;
    ctx.upstreamPath = upstreamPathFor(route, ctx.path, endpoint.basePath);
    const target = new URL(endpoint.origin);
    const headers = upstreamRequestHeaders(ctx, target.host, policy);
    copyHandshake(ctx.headers, headers); // checked by checkHandshake; never forwarded on plain requests
    headers.connection = 'Upgrade';
    headers.upgrade = 'websocket'; // the client may have listed more; only this one is relayed
    const upstreamStarted = performance.now();
    const request = (target.protocol === 'https:' ? https : http).request({
      host: target.hostname,
      port: target.port,
      method: 'GET',
      path: ctx.upstreamPath! + ctx.query,
      headers,
      agent: false, // its own connection: a declined handshake's socket is closed, never pooled
    });
    let settled = false;
    const settle = (): boolean => {
      if (settled) return false;
      settled = true;
      request.setTimeout(0);
      metrics.upstreamDuration.series(route.name).observe((performance.now() - upstreamStarted) / 1000);
      return true;
    };
    // The handshake must complete within the route's timeout; an open socket then lives as long as both ends want.
    request.setTimeout(route.timeoutMs, () => request.destroy(new UpstreamTimeoutError('websocket handshake timed out')));
    request.on('error', (err) => {
      if (!settle()) return void client.destroy();
      if (client.destroyed) return call.failed('cancelled');
      call.failed(err instanceof UpstreamTimeoutError ? 'timeout' : 'connect');
      const zt = err instanceof UpstreamTimeoutError ? err : new UpstreamUnreachableError('websocket upstream failed', { cause: err });
      metrics.upstreamErrors.inc({ route: route.name, code: zt.code });
      logger.warn({ reqId: ctx.id, route: route.name, code: zt.code, err }, 'websocket upstream error');
      refuse(attempt, client, zt);
    });
    client.once('close', () => {
      if (!settled) request.destroy();
    });
    request.on('response', (res: IncomingMessage) => {
      settle();
      const status = res.statusCode ?? 502;
      call.responded(status);
      if (status >= 500 && route.response.replaceErrorBodies) {
        // As for any proxied 5xx (proxy.ts): the gateway's problem, never the upstream's body,
        // which is read and dropped; then the handshake's own connection closes, as after a
        // relayed refusal.
        res.once('end', () => request.destroy());
        res.resume();
        logger.warn({ reqId: ctx.id, route: route.name, status }, 'upstream error response replaced');
        return refuse(attempt, client, new UpstreamErrorResponse(`upstream answered ${status}`, { status, headers: errorResponseHeaders(status, res.headers, route.response) }));
      }
      relayDeclined(ctx, res, client, () => {
        closeAfterWrite(client);
        request.destroy();
      });
      finish(attempt, status, undefined);
    });
    request.on('upgrade', (res: IncomingMessage, upstream: Duplex, upstreamHead: Buffer) => {
      settle();
      upstream.on('error', () => upstream.destroy());
      // A 101 is a tunnel: accept it only if the upstream switched to WebSocket for this
      // very handshake (RFC 6455 §4.1: Upgrade: websocket and the matching Accept), never to
      // whatever else it might offer.
      if (!listsToken(res.headers.upgrade, 'websocket') || res.headers['sec-websocket-accept'] !== acceptFor(key)) {
        call.responded(502); // an upstream that cannot do the handshake is failing
        upstream.destroy();
        const zt = new UpstreamUnreachableError('upstream switched to something other than this websocket');
        metrics.upstreamErrors.inc({ route: route.name, code: zt.code });
        logger.warn({ reqId: ctx.id, route: route.name, upgrade: res.headers.upgrade }, 'websocket upstream sent a bad 101');
        return refuse(attempt, client, zt);
      }
      call.responded(101);
      if (client.destroyed) return void upstream.destroy();
      const out: Record<string, string | string[] | undefined> = clientResponseHeaders(ctx, res.headers);
      copyHandshake(res.headers, out); // the accept was checked above; protocol and extensions are what the upstream chose
      out.upgrade = 'websocket';
      out.connection = 'Upgrade';
      client.write(responseHead(101, out));
      if (upstreamHead.length > 0) client.write(upstreamHead);
      if (head.length > 0) upstream.write(head);
      // Counted as they pass (one addition per chunk): the session's closing line says what it carried.
      const opened = performance.now();
      let bytesIn = head.length;
      let bytesOut = upstreamHead.length;
      client.on('data', (chunk: Buffer) => void (bytesIn += chunk.length));
      upstream.on('data', (chunk: Buffer) => void (bytesOut += chunk.length));
      let ended = false;
      const end = (error?: ZtError): void => {
        if (ended) return;
        ended = true;
        sessions.delete(end);
        client.destroy();
        upstream.destroy();
        record({ ...lineOf(attempt, 101, error), ms: performance.now() - opened, session: { bytesIn, bytesOut } });
      };
      const close = () => end();
      sessions.add(end);
      client.on('error', close).on('close', close);
      upstream.on('close', close);
      client.pipe(upstream).pipe(client);
      finish(attempt, 101, undefined);
    });
    request.end();
  }

  const onUpgrade = (protocol: string) => (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const runtime = holder.current;
    const ctx = newContext(req, requestIdFor(req, runtime.trust), true);
    const attempt: Attempt = { ctx, started: performance.now(), protocol };
    socket.on('error', () => socket.destroy());
    const run = async () => {
      if (opts.isDraining()) throw new ShuttingDownError('draining');
      // Every stage a plain request goes through, in the same order, on the same context.
      await runPipeline(runtime.stages, ctx);
      checkHandshake(req);
      if (!ctx.route!.websocket) throw new BadRequestError(`websocket not enabled on route ${ctx.route!.name}`);
    };
    run().then(
      () => {
        if (socket.destroyed) return finish(attempt, 499, new ClientClosedRequestError('client left during the checks'));
        let call: UpstreamCall | undefined;
        try {
          call = runtime.upstreamGuard.begin(callOptionsFor(ctx));
          // Whatever ends the handshake or the tunnel closes the client's socket: the slot returns then.
          socket.once('close', call.end);
          relay(attempt, req.headers['sec-websocket-key'] as string, runtime.forwarding, socket, head, call);
        } catch (err) {
          call?.end();
          refuse(attempt, socket, err);
        }
      },
      (err: unknown) => refuse(attempt, socket, err),
    );
  };
  server.on('upgrade', onUpgrade('websocket'));
  // CONNECT (forward-proxy tunnels) is never served, but it is refused like any request:
  // through the pipeline, so it gets the same problem, access line and metrics.
  server.on('connect', onUpgrade('connect'));
}
