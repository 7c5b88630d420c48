import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { Writable } from 'node:stream';
import { createAccessRecorder, formatAccessLine, type AccessRecord } from './access-log.ts';
import { InvalidTokenError } from '../core/errors.ts';

const record = (over: Partial<AccessRecord> = {}): AccessRecord => ({
  reqId: 'r-1',
  method: 'GET',
  path: '/echo/a',
  route: 'echo',
  status: 200,
  ms: 1.23456,
  error: undefined,
  sub: 'alice',
  client: '127.0.0.1',
  ...over,
});

describe('formatAccessLine', () => {
  it('is one JSON line with the fields pino would write, the absent ones left out', () => {
    const line = formatAccessLine(record({ sub: undefined }), 'echo', 'allow');
    expect(line.endsWith('}\n')).toBe(true);
    expect(line.indexOf('\n')).toBe(line.length - 1);
    const parsed = JSON.parse(line);
    expect(parsed).toEqual({
      level: 30,
      time: expect.any(Number),
      svc: 'ztgw',
      log: 'access',
      reqId: 'r-1',
      method: 'GET',
      path: '/echo/a',
      route: 'echo',
      status: 200,
      ms: 1.23,
      decision: 'allow',
      client: '127.0.0.1',
      msg: 'access',
    });
    expect(Math.abs(parsed.time - Date.now())).toBeLessThan(60_000);
  });

  it('reads like the same record written through pino', async () => {
    const chunks: string[] = [];
    const sink = new Writable({ write: (c, _e, cb) => (chunks.push(String(c)), cb()) });
    const r = record({ error: new InvalidTokenError('no'), status: 401 });
    pino({ base: { svc: 'ztgw', log: 'access' } }, sink).info(
      { reqId: r.reqId, method: r.method, path: r.path, route: 'echo', status: 401, ms: 1.23, decision: 'deny', sub: r.sub, client: r.client, code: new InvalidTokenError('no').code },
      'access',
    );
    await new Promise((done) => setImmediate(done));
    const viaPino = JSON.parse(chunks.join(''));
    const handBuilt = JSON.parse(formatAccessLine(r, 'echo', 'deny'));
    expect({ ...handBuilt, time: 0 }).toEqual({ ...viaPino, time: 0 });
    expect(Object.keys(handBuilt)).toEqual(Object.keys(viaPino));
  });

  it('quotes what a client controls: quotes, backslashes, newlines and control characters stay inside their field', () => {
    const nasty = '/a"b\\c\n{"forged":1}\u0000\u2028é';
    const line = formatAccessLine(record({ path: nasty, sub: 'x","status":500', method: 'G"ET' }), 'r"oute', 'allow');
    expect(line.split('\n')).toHaveLength(2); // one line, whatever the path held
    const parsed = JSON.parse(line);
    expect(parsed.path).toBe(nasty);
    expect(parsed.sub).toBe('x","status":500');
    expect(parsed.status).toBe(200);
    expect(parsed.method).toBe('G"ET');
    expect(parsed.route).toBe('r"oute');
    expect(parsed.forged).toBeUndefined();
  });

  it('cuts the query and path-parameter values as every logged path is cut', () => {
    const parsed = JSON.parse(formatAccessLine(record({ path: '/a;jsessionid=s3cr3t/b?code=xyz' }), 'echo', 'allow'));
    expect(parsed.path).toBe('/a;…/b');
  });

  it('keeps the upgrade and leaves out ms when the start is unknown', () => {
    const parsed = JSON.parse(formatAccessLine(record({ ms: undefined, upgrade: 'websocket' }), 'echo', 'allow'));
    expect(parsed.upgrade).toBe('websocket');
    expect('ms' in parsed).toBe(false);
  });

  it("a WebSocket session's closing line: its own message, the bytes each way, same fields otherwise", () => {
    const parsed = JSON.parse(formatAccessLine(record({ status: 101, upgrade: 'websocket', session: { bytesIn: 12, bytesOut: 34 } }), 'echo', 'allow'));
    expect(parsed).toMatchObject({ log: 'access', status: 101, upgrade: 'websocket', bytesIn: 12, bytesOut: 34, msg: 'websocket closed' });
  });
});

describe('createAccessRecorder', () => {
  it('counts a request once: the closing line of its WebSocket session is written, not counted', () => {
    const lines: string[] = [];
    const counted: unknown[] = [];
    const metrics = {
      requests: { inc: (...a: unknown[]) => counted.push(a) },
      requestDuration: { series: () => ({ observe: () => {} }) },
      authFailures: { inc: () => {} },
    } as unknown as Parameters<typeof createAccessRecorder>[1];
    const recordLine = createAccessRecorder({ enabled: true, write: (l) => lines.push(l) }, metrics);
    recordLine(record({ status: 101, upgrade: 'websocket' }));
    recordLine(record({ status: 101, upgrade: 'websocket', session: { bytesIn: 1, bytesOut: 2 } }));
    expect(lines.map((l) => JSON.parse(l).msg)).toEqual(['access', 'websocket closed']);
    expect(counted).toHaveLength(1);
  });
});
