import { request, type IncomingMessage } from 'node:http';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { startEchoServer, type EchoRecord, type EchoServer } from './echo.ts';

let echo: EchoServer;
beforeEach(async () => {
  echo = await startEchoServer();
});
afterEach(async () => {
  await echo.close();
});

// node:http, not fetch: fetch normalises the path, and the point of the echo is to
// show the path exactly as sent.
function rawRequest(
  path: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ res: IncomingMessage; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: echo.port, path, method: opts.method ?? 'GET', headers: opts.headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ res, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

describe('echo server', () => {
  it('echoes method, raw url, lower-cased headers, body and remote address', async () => {
    const path = '/api/../v1/%2e%2e/items;x=1?q=a%20b&q=c';
    const { res, body } = await rawRequest(path, {
      method: 'POST',
      headers: { 'X-Forwarded-User': 'alice', 'Content-Type': 'text/plain' },
      body: 'héllo wörld',
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    const rec = JSON.parse(body) as EchoRecord;
    expect(rec.method).toBe('POST');
    expect(rec.url).toBe(path);
    expect(rec.headers['x-forwarded-user']).toBe('alice');
    expect(rec.headers['content-type']).toBe('text/plain');
    expect(rec.body).toBe('héllo wörld');
    expect(rec.remoteAddress).toBe('127.0.0.1');
    expect(echo.requests).toHaveLength(1);
    expect(echo.requests[0]).toEqual(rec);
  });

  it('reports an empty body for a GET', async () => {
    const r = await fetch(`${echo.url}/x`);
    expect(((await r.json()) as EchoRecord).body).toBe('');
  });

  it('waits ?delay=MS before answering', async () => {
    const t0 = performance.now();
    const r = await fetch(`${echo.url}/slow/thing?delay=250`);
    const elapsed = performance.now() - t0;
    expect(r.status).toBe(200);
    expect(elapsed).toBeGreaterThanOrEqual(240);
    expect(((await r.json()) as EchoRecord).url).toBe('/slow/thing?delay=250');
  });

  it('answers ?status=NNN with that status and still echoes', async () => {
    const r = await fetch(`${echo.url}/any/path?status=503`);
    expect(r.status).toBe(503);
    expect(((await r.json()) as EchoRecord).method).toBe('GET');

    const empty = await fetch(`${echo.url}/?status=204`);
    expect(empty.status).toBe(204);
    expect(await empty.text()).toBe('');

    // Out of range: ignored, not clamped.
    expect((await fetch(`${echo.url}/?status=1000`)).status).toBe(200);
  });

  it('streams ?bytes=N of "x" in several chunks', async () => {
    const n = 1_000_000;
    const r = await fetch(`${echo.url}/download?bytes=${n}`);
    expect(r.status).toBe(200);
    expect(r.headers.get('transfer-encoding')).toBe('chunked');
    expect(r.headers.get('content-length')).toBeNull();
    const reader = r.body!.getReader();
    let total = 0;
    let chunks = 0;
    let allX = true;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks++;
      total += value.length;
      if (value.some((b) => b !== 0x78)) allX = false;
    }
    expect(total).toBe(n);
    expect(allX).toBe(true);
    expect(chunks).toBeGreaterThan(1);
  });

  it('streams zero bytes for ?bytes=0', async () => {
    const r = await fetch(`${echo.url}/?bytes=0`);
    expect((await r.arrayBuffer()).byteLength).toBe(0);
  });

  it('accepts WebSocket upgrades on any path, echoes messages and records the upgrade', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${echo.port}/deep/ws/path?t=1`, { headers: { 'x-trace': 'abc' } });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    const received: Array<{ data: string; binary: boolean }> = [];
    const two = new Promise<void>((resolve) => {
      ws.on('message', (data, binary) => {
        received.push({ data: Buffer.from(data as Buffer).toString('utf8'), binary });
        if (received.length === 2) resolve();
      });
    });
    ws.send('ping-1');
    ws.send(Buffer.from('bin-2'), { binary: true });
    await two;
    expect(received).toEqual([
      { data: 'ping-1', binary: false },
      { data: 'bin-2', binary: true },
    ]);
    const rec = echo.requests.at(-1)!;
    expect(rec.url).toBe('/deep/ws/path?t=1');
    expect(rec.headers.upgrade?.toLowerCase()).toBe('websocket');
    expect(rec.headers['x-trace']).toBe('abc');
    ws.close();
  });

  it('close() ends open WebSockets, keep-alive sockets and delayed requests promptly', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${echo.port}/`);
    await new Promise((resolve) => ws.once('open', resolve));
    const wsClosed = new Promise((resolve) => ws.once('close', resolve));

    // A keep-alive connection that is idle, and one waiting on a long delay.
    await fetch(`${echo.url}/warm`).then((r) => r.text());
    const pending = fetch(`${echo.url}/?delay=60000`).then(
      () => 'answered',
      () => 'failed',
    );
    await new Promise((r) => setTimeout(r, 50));

    const t0 = performance.now();
    await echo.close();
    expect(performance.now() - t0).toBeLessThan(1000);
    await wsClosed;
    expect(await pending).toBe('failed');
  });

  it('keeps only the last 1000 requests', async () => {
    for (let batch = 0; batch < 21; batch++) {
      await Promise.all(Array.from({ length: 50 }, (_, i) => fetch(`${echo.url}/n/${batch * 50 + i}`).then((r) => r.arrayBuffer())));
    }
    expect(echo.requests).toHaveLength(1000);
    const urls = new Set(echo.requests.map((r) => r.url));
    expect(urls.has('/n/1049')).toBe(true);
    // 1050 sent; the oldest 50 are gone (batches complete in order).
    for (let i = 0; i < 50; i++) expect(urls.has(`/n/${i}`)).toBe(false);
  });
});
