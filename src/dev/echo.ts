// The demo and test upstream. It answers every request with what it received, so a
// test can see exactly what the gateway forwarded (path as sent, headers after
// stripping/injection, body, source address). A few query parameters turn it into a
// slow, failing or streaming upstream for timeout, error-translation and
// back-pressure tests. Real node:http and real ws, never mocked.

import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';

export interface EchoRecord {
  method: string;
  /** req.url exactly as received: not normalised, not decoded. */
  url: string;
  /** As node parsed them: names lower-cased, repeated headers joined. */
  headers: IncomingHttpHeaders;
  /** UTF-8; empty for requests without a body and for WebSocket upgrades. */
  body: string;
  remoteAddress: string;
}

export interface EchoServer {
  url: string;
  port: number;
  close(): Promise<void>;
  /** The last MAX_RECORDS requests, oldest first, WebSocket upgrades included. */
  requests: EchoRecord[];
}

// A demo left running all day must not grow without bound; tests look at a handful.
const MAX_RECORDS = 1000;
// Longer than any gateway timeout we configure, short enough that a forgotten
// `?delay=` cannot pin a test run.
const MAX_DELAY_MS = 60_000;
const STREAM_CHUNK = 64 * 1024;

export async function startEchoServer(opts: { host?: string; port?: number } = {}): Promise<EchoServer> {
  const host = opts.host ?? '127.0.0.1';
  const requests: EchoRecord[] = [];
  const timers = new Set<NodeJS.Timeout>();

  const record = (rec: EchoRecord): void => {
    requests.push(rec);
    if (requests.length > MAX_RECORDS) requests.splice(0, requests.length - MAX_RECORDS);
  };

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('error', () => res.destroy());
    req.on('end', () => {
      const rec: EchoRecord = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
        remoteAddress: req.socket.remoteAddress ?? '',
      };
      record(rec);
      const q = queryOf(rec.url);
      const delay = boundedInt(q.get('delay'), 0, MAX_DELAY_MS);
      const answer = (): void => respond(res, rec, q);
      if (delay === undefined || delay === 0) return answer();
      const t = setTimeout(() => {
        timers.delete(t);
        answer();
      }, delay);
      timers.add(t);
      // A client that gives up (the gateway's upstream timeout) should not leave a
      // timer behind that later writes to a dead socket.
      res.on('close', () => {
        clearTimeout(t);
        timers.delete(t);
      });
    });
  });

  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req: IncomingMessage, socket, head) => {
    record({
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      body: '',
      remoteAddress: req.socket.remoteAddress ?? '',
    });
    socket.on('error', () => socket.destroy());
    wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
      ws.on('error', () => ws.terminate());
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });

  const port = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;

  return {
    url: `http://${urlHost(host)}:${port}`,
    port,
    requests,
    close() {
      closing ??= new Promise<void>((resolve) => {
        for (const t of timers) clearTimeout(t);
        timers.clear();
        for (const ws of wss.clients) ws.terminate();
        wss.close();
        server.close(() => resolve());
        // Keep-alive sockets would otherwise hold close() open until they time out.
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

function respond(res: ServerResponse, rec: EchoRecord, q: URLSearchParams): void {
  if (res.destroyed) return;
  // Out-of-range values are ignored rather than clamped: `?status=1000` answering 599
  // would hide a typo in a test.
  const asked = boundedInt(q.get('status'), 0, 1000);
  const status = asked !== undefined && asked >= 200 && asked <= 599 ? asked : 200;
  const bytes = boundedInt(q.get('bytes'), 0, Number.MAX_SAFE_INTEGER);

  // RFC 9110 §6.4.1: these statuses carry no content.
  if (status === 204 || status === 304) {
    res.writeHead(status).end();
    return;
  }

  if (bytes !== undefined) {
    // No content-length: the body goes out chunked, as a real streaming upstream's
    // would, so a gateway that buffers whole bodies shows up in tests.
    res.writeHead(status, { 'content-type': 'application/octet-stream' });
    streamBytes(res, bytes);
    return;
  }

  const body = JSON.stringify(rec);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

function streamBytes(res: ServerResponse, total: number): void {
  const full = Buffer.alloc(STREAM_CHUNK, 'x');
  let left = total;
  const pump = (): void => {
    while (left > 0) {
      if (res.destroyed) return;
      const n = Math.min(left, STREAM_CHUNK);
      left -= n;
      if (!res.write(n === STREAM_CHUNK ? full : full.subarray(0, n))) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

// Parse only the query: the path may be deliberately malformed (path-confusion tests)
// and must not stop the special parameters from working.
function queryOf(rawUrl: string): URLSearchParams {
  const i = rawUrl.indexOf('?');
  return new URLSearchParams(i === -1 ? '' : rawUrl.slice(i + 1));
}

function boundedInt(raw: string | null, min: number, max: number): number | undefined {
  if (raw === null || !/^\d+$/.test(raw)) return undefined;
  const n = Number(raw);
  return Math.min(Math.max(n, min), max);
}

function urlHost(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return host.includes(':') ? `[${host}]` : host;
}
