// WebSocket upgrades: the same pipeline as any request (so a socket opens only after
// authentication), then the HTTP/1.1 upgrade handshake is relayed and the two sockets are
// piped. Written by hand because reply-from does not proxy upgrades and
// @fastify/http-proxy binds one upstream per prefix at registration, which cannot follow a
// hot-swapped Runtime; the relay itself is the few lines node-http-proxy also uses.
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { RuntimeHolder } from '../config/compile.ts';
import { newContext, requestIdFor, type RequestContext } from '../pipeline/context.ts';
import { BadRequestError, ShuttingDownError, UpstreamTimeoutError, UpstreamUnreachableError } from '../pipeline/errors.ts';
import { runPipeline } from '../pipeline/run.ts';
import { toProblem } from '../observability/problem.ts';
import { upstreamRequestHeaders, type ForwardingPolicy } from './headers.ts';

export interface WebSocketProxyOptions {
  readonly holder: RuntimeHolder;
  readonly logger: Logger;
  readonly isDraining: () => boolean;
}

function writeHead(socket: Duplex, status: number, statusText: string, rawHeaders: readonly string[]): void {
  let head = `HTTP/1.1 ${status} ${statusText}\r\n`;
  for (let i = 0; i < rawHeaders.length; i += 2) head += `${rawHeaders[i]}: ${rawHeaders[i + 1]}\r\n`;
  socket.write(head + '\r\n');
}

function refuse(socket: Duplex, requestId: string, err: unknown): void {
  const problem = toProblem(err, requestId);
  const body = JSON.stringify(problem.body);
  const headers = Object.entries({ ...problem.headers, 'content-length': String(Buffer.byteLength(body)), connection: 'close' }).flat();
  if (!socket.writable) return void socket.destroy();
  writeHead(socket, problem.status, http.STATUS_CODES[problem.status] ?? '', headers);
  socket.end(body);
}

function relay(ctx: RequestContext, policy: ForwardingPolicy, clientSocket: Duplex, head: Buffer, logger: Logger): void {
  const route = ctx.route!;
  const target = new URL(ctx.upstreamOrigin ?? route.upstreamOrigin);
  const headers = upstreamRequestHeaders(ctx, target.host, policy);
  headers.connection = 'Upgrade';
  headers.upgrade = ctx.headers.upgrade;
  const request = (target.protocol === 'https:' ? https : http).request({
    host: target.hostname,
    port: target.port,
    method: ctx.method,
    path: ctx.upstreamPath! + ctx.query,
    headers,
  });
  // The handshake must complete within the route's timeout; an open socket then lives as long as both ends want.
  request.setTimeout(route.timeoutMs, () => request.destroy(new UpstreamTimeoutError('websocket handshake timed out')));
  request.on('error', (err) => {
    logger.warn({ reqId: ctx.id, route: route.name, err }, 'websocket upstream error');
    refuse(clientSocket, ctx.id, err instanceof UpstreamTimeoutError ? err : new UpstreamUnreachableError('websocket upstream failed', { cause: err }));
  });
  request.on('response', (res: IncomingMessage) => {
    // The upstream declined the upgrade: pass its answer through and close.
    writeHead(clientSocket, res.statusCode ?? 502, res.statusMessage ?? '', res.rawHeaders);
    res.pipe(clientSocket);
  });
  request.on('upgrade', (res: IncomingMessage, upstreamSocket: Duplex, upstreamHead: Buffer) => {
    request.setTimeout(0);
    writeHead(clientSocket, 101, 'Switching Protocols', res.rawHeaders);
    if (upstreamHead.length > 0) clientSocket.write(upstreamHead);
    if (head.length > 0) upstreamSocket.write(head);
    const close = () => {
      clientSocket.destroy();
      upstreamSocket.destroy();
    };
    clientSocket.on('error', close).on('close', close);
    upstreamSocket.on('error', close).on('close', close);
    clientSocket.pipe(upstreamSocket).pipe(clientSocket);
    logger.info({ reqId: ctx.id, route: route.name, sub: ctx.identity?.subject, client: ctx.clientIp }, 'websocket opened');
  });
  request.end();
}

export function attachWebSocketProxy(app: FastifyInstance, opts: WebSocketProxyOptions): void {
  app.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const runtime = opts.holder.current;
    const ctx = newContext(req, requestIdFor(req, runtime.trust), true);
    socket.on('error', () => socket.destroy());
    const run = async () => {
      if (opts.isDraining()) throw new ShuttingDownError('draining');
      await runPipeline(runtime.stages, ctx);
      if (!ctx.route!.websocket) throw new BadRequestError(`websocket not enabled on route ${ctx.route!.name}`);
    };
    run().then(
      () => relay(ctx, runtime.forwarding, socket, head, opts.logger),
      (err: unknown) => {
        opts.logger.info({ reqId: ctx.id, route: ctx.route?.name, code: (err as { code?: string }).code, client: ctx.clientIp }, 'websocket refused');
        refuse(socket, ctx.id, err);
      },
    );
  });
}
