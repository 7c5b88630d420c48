// Raw HTTP/1.1 over node:net, for attacks a well-behaved client library would not send:
// targets and header names written byte for byte, smuggled bytes after a head, bad framing,
// upgrades to made-up protocols. Responses are parsed here by hand, strictly (status, headers,
// body by Content-Length or chunked), so a test sees exactly how the gateway framed them.
//   netRequest     one request, its first response (the common case);
//   exchange       a scripted conversation on one connection, read until the server closes;
//   parseResponses every response in what an exchange received;
//   startRawUpstream  an upstream that records bytes and answers with canned ones.
import net from 'node:net';
import { createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';

export interface ParsedResponse {
  status: number;
  /** Lower-cased names; repeated fields joined with ", ". */
  headers: Record<string, string>;
  body: string;
  /** How the body was delimited. */
  framing: 'length' | 'chunked' | 'none';
}

/** Thrown while `text` ends before the response does: a reader can wait for more bytes. */
class IncompleteResponse extends Error {}

/** Parses every complete response in `text` (latin1); throws on bytes that are not valid HTTP/1.1 responses. */
export function parseResponses(text: string): ParsedResponse[] {
  const out: ParsedResponse[] = [];
  let rest = text;
  while (rest.length > 0) {
    const next = parseResponse(rest);
    out.push(next.response);
    rest = next.rest;
    if (next.response.status === 101) break; // what follows is the other protocol
  }
  return out;
}

/** The first response in `text` (latin1) and the bytes after it. */
function parseResponse(text: string): { response: ParsedResponse; rest: string } {
  let rest = text;
  const end = rest.indexOf('\r\n\r\n');
  if (end === -1) throw new IncompleteResponse(`incomplete response head: ${JSON.stringify(rest.slice(0, 200))}`);
  const [statusLine, ...lines] = rest.slice(0, end).split('\r\n');
  const m = /^HTTP\/1\.1 (\d{3}) .*$/.exec(statusLine!);
  if (!m) throw new Error(`bad status line: ${JSON.stringify(statusLine)}`);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw new Error(`bad header line: ${JSON.stringify(line)}`);
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  const status = Number(m[1]);
  rest = rest.slice(end + 4);
  let body = '';
  let framing: ParsedResponse['framing'] = 'none';
  if (status === 101 || status === 100 || status === 204 || status === 304) {
    // no body
  } else if (headers['transfer-encoding'] !== undefined) {
    if (headers['transfer-encoding'] !== 'chunked' || headers['content-length'] !== undefined) throw new Error('ambiguous framing');
    framing = 'chunked';
    for (;;) {
      const lineEnd = rest.indexOf('\r\n');
      if (lineEnd === -1) throw new IncompleteResponse('incomplete chunk size');
      const size = parseInt(rest.slice(0, lineEnd), 16);
      if (!Number.isFinite(size)) throw new Error('bad chunk size');
      rest = rest.slice(lineEnd + 2);
      if (rest.length < size + 2) throw new IncompleteResponse('incomplete chunk');
      if (size === 0) {
        if (!rest.startsWith('\r\n')) throw new Error('trailers or missing final CRLF');
        rest = rest.slice(2);
        break;
      }
      body += rest.slice(0, size);
      if (rest.slice(size, size + 2) !== '\r\n') throw new Error('chunk not followed by CRLF');
      rest = rest.slice(size + 2);
    }
  } else if (headers['content-length'] !== undefined) {
    framing = 'length';
    const n = Number(headers['content-length']);
    if (rest.length < n) throw new IncompleteResponse('incomplete body');
    body = rest.slice(0, n);
    rest = rest.slice(n);
  } else {
    throw new Error(`response ${status} without framing: read-until-close is not what the gateway should send`);
  }
  return { response: { status, headers, body, framing }, rest };
}

export interface NetResponse extends ParsedResponse {
  json<T = any>(): T;
}

/**
 * One request written byte for byte (no normalisation of the target, the header names, their
 * case, order or repetition) and its first response, returned as soon as it is complete, so
 * a keep-alive connection does not hold the test. `lines` are header lines ("Name: value");
 * Host and Connection: close are added unless given. The body is decoded as UTF-8.
 */
export function netRequest(baseUrl: string, opts: { method?: string; target: string; lines?: string[]; body?: string; timeoutMs?: number }): Promise<NetResponse> {
  const url = new URL(baseUrl);
  const lines = [...(opts.lines ?? [])];
  if (!lines.some((l) => /^host:/i.test(l))) lines.unshift(`Host: ${url.host}`);
  if (!lines.some((l) => /^connection:/i.test(l))) lines.push('Connection: close');
  if (opts.body !== undefined) lines.push(`Content-Length: ${Buffer.byteLength(opts.body)}`);
  // Written as UTF-8, so a target with raw non-ASCII characters reaches the parser as a client would send it.
  const head = `${opts.method ?? 'GET'} ${opts.target} HTTP/1.1\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n`;
  const timeoutMs = opts.timeoutMs ?? 10_000;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: url.hostname, port: Number(url.port) });
    let text = '';
    let settled = false;
    const settle = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      outcome();
    };
    const timer = setTimeout(() => settle(() => reject(new Error(`no complete response to ${opts.target} within ${timeoutMs} ms`))), timeoutMs);
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      text += d;
      try {
        const { response } = parseResponse(text);
        const body = Buffer.from(response.body, 'latin1').toString('utf8');
        settle(() => resolve({ ...response, body, json: () => JSON.parse(body) }));
      } catch (err) {
        if (!(err instanceof IncompleteResponse)) settle(() => reject(err));
      }
    });
    socket.on('end', () => settle(() => reject(new Error(`connection closed without a complete response to ${opts.target}: ${JSON.stringify(text.slice(0, 200))}`))));
    socket.on('error', (err) => settle(() => reject(err)));
    socket.write(head);
    if (opts.body !== undefined) socket.write(opts.body);
  });
}

export interface Exchange {
  /** Everything received, latin1. */
  text: string;
  /** True when the gateway closed the connection before the deadline. */
  closed: boolean;
}

/**
 * Connects, writes each part in order (a function part is called with what was received so
 * far and may wait for it), then reads until the server closes or `deadlineMs` passes.
 */
export async function exchange(
  url: string,
  parts: readonly (string | Buffer | ((received: () => string) => Promise<string | Buffer | undefined>))[],
  opts: { deadlineMs?: number; endAfterWrite?: boolean } = {},
): Promise<Exchange> {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  let text = '';
  let closed = false;
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => (text += d));
  socket.on('error', () => {});
  const done = new Promise<void>((resolve) => socket.once('close', () => ((closed = true), resolve())));
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  for (const part of parts) {
    const data = typeof part === 'function' ? await part(() => text) : part;
    if (data !== undefined && !socket.destroyed) socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }
  if (opts.endAfterWrite) socket.end();
  let timer: NodeJS.Timeout | undefined;
  // Under the 5 s test timeout, so that a connection left open fails an assertion, not the clock.
  const deadline = new Promise<void>((resolve) => (timer = setTimeout(resolve, opts.deadlineMs ?? 4_000)));
  await Promise.race([done, deadline]);
  clearTimeout(timer);
  socket.destroy();
  return { text, closed };
}

/** Resolves once `received()` satisfies `test`, polling until a deadline. */
export async function waitFor(received: () => string, test: (s: string) => boolean, deadlineMs = 5_000): Promise<void> {
  const until = Date.now() + deadlineMs;
  while (!test(received())) {
    if (Date.now() > until) throw new Error(`timed out waiting; received ${JSON.stringify(received().slice(0, 300))}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export interface RawUpstream {
  url: string;
  /** Bytes received on each connection, latin1, in connection order. */
  connections: string[];
  close(): Promise<void>;
}

/**
 * A TCP upstream that records every byte it receives and answers each connection with
 * `answer(received)` once `ready(received)` is true (default: a complete head arrived).
 * With `end`, it closes after answering (read-until-close bodies).
 */
export async function startRawUpstream(
  answer: (received: string) => string,
  opts: { end?: boolean; ready?: (received: string) => boolean } = {},
): Promise<RawUpstream> {
  const connections: string[] = [];
  const sockets = new Set<net.Socket>();
  const ready = opts.ready ?? ((r: string) => r.includes('\r\n\r\n'));
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    const index = connections.push('') - 1;
    let answered = false;
    socket.setEncoding('latin1');
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
    socket.on('data', (d: string) => {
      connections[index] += d;
      if (answered || !ready(connections[index]!)) return;
      answered = true;
      const reply = answer(connections[index]!);
      if (opts.end) socket.end(Buffer.from(reply, 'latin1'));
      else socket.write(Buffer.from(reply, 'latin1'));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    connections,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
