// The admin plane: health, readiness, metrics, profiling, and what logs never contain.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';

const ISS = 'https://idp.test.local/';
let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let token: string;

const config = (profiling: boolean) => ({
  server: { profiling },
  identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksUrl: jwks.url }] },
  routes: [{ name: 'echo', pathPrefix: '/echo/', upstream: echo.url }],
});

beforeAll(async () => {
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway(config(true));
  token = await idp.sign({}, { sub: 'alice', aud: 'zt-gateway' });
});
afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
});

describe('admin plane', () => {
  it('answers liveness at /healthz and /health', async () => {
    for (const path of ['/healthz', '/health']) {
      const res = await rawRequest(gw.adminUrl, path);
      expect(res.status).toBe(200);
      expect(res.json().status).toBe('ok');
    }
  });

  it('reports readiness with a named check per dependency', async () => {
    const res = await rawRequest(gw.adminUrl, '/readyz');
    expect(res.status).toBe(200);
    const names = res.json().checks.map((c: { name: string }) => c.name);
    expect(names).toEqual(['config', 'draining', 'issuer:corp']);
  });

  it('is not the data plane: gateway routes are not served there, admin routes not on the data plane', async () => {
    expect((await rawRequest(gw.adminUrl, '/echo/x')).status).toBe(404);
    const res = await rawRequest(gw.url, '/metrics', { headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(404);
    expect(res.text).not.toContain('ztgw_requests_total');
  });

  it('exposes Prometheus metrics for requests, latency, upstream and the event loop', async () => {
    await rawRequest(gw.url, '/echo/m', { headers: { authorization: `Bearer ${token}` } });
    await rawRequest(gw.url, '/echo/m');
    const res = await rawRequest(gw.adminUrl, '/metrics');
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    expect(res.text).toMatch(/ztgw_requests_total\{route="echo",status="200",decision="allow"\} [1-9]/);
    expect(res.text).toMatch(/ztgw_requests_total\{route="echo",status="401",decision="deny"\} [1-9]/);
    expect(res.text).toMatch(/ztgw_request_duration_seconds_count\{route="echo"\} [1-9]/);
    expect(res.text).toMatch(/ztgw_upstream_duration_seconds_count\{route="echo"\} [1-9]/);
    expect(res.text).toMatch(/ztgw_auth_failures_total\{reason="ERR_MISSING_TOKEN"\} [1-9]/);
    expect(res.text).toContain('nodejs_eventloop_lag_seconds');
  });

  it('returns a CPU profile loadable in DevTools when profiling is on', async () => {
    const res = await rawRequest(gw.adminUrl, '/debug/profile/cpu?seconds=0.2');
    expect(res.status).toBe(200);
    const profile = res.json();
    expect(Array.isArray(profile.nodes)).toBe(true);
    expect(profile.endTime).toBeGreaterThan(profile.startTime);
    expect((await rawRequest(gw.adminUrl, '/debug/profile/cpu?seconds=999')).status).toBe(400);
  });

  it('returns a heap snapshot when profiling is on', async () => {
    const res = await rawRequest(gw.adminUrl, '/debug/profile/heap', { timeoutMs: 60_000 });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text).snapshot.meta).toBeDefined();
  }, 60_000);

  it('has no profiling endpoints unless the config enables them', async () => {
    const plain = await startTestGateway(config(false));
    try {
      expect((await rawRequest(plain.adminUrl, '/debug/profile/cpu?seconds=1')).status).toBe(404);
    } finally {
      await plain.close();
    }
  });

  it('turns not-ready while draining', async () => {
    const draining = await startTestGateway(config(false));
    const slow = rawRequest(draining.url, '/echo/x?delay=500', { headers: { authorization: `Bearer ${token}` } });
    await new Promise((r) => setTimeout(r, 100));
    const closing = draining.close();
    const ready = await rawRequest(draining.adminUrl, '/readyz').catch(() => undefined);
    if (ready) expect(ready.status).toBe(503);
    expect((await slow).status).toBe(200);
    await closing;
  });
});

describe('logs', () => {
  it('writes one access line per request and never the token', async () => {
    const before = gw.logs.length;
    await rawRequest(gw.url, '/echo/log', { headers: { authorization: `Bearer ${token}`, cookie: 'session=s3cr3t' } });
    const lines = gw.logs.slice(before);
    expect(lines.filter((l) => l.msg === 'access')).toHaveLength(1);
    const text = JSON.stringify(gw.logs);
    expect(text).not.toContain(token);
    expect(text).not.toContain('s3cr3t');
  });

  it('redacts credentials even when a caller logs raw headers', () => {
    gw.logger.info({ headers: { authorization: `Bearer ${token}`, dpop: 'proof', cookie: 'a=b' } }, 'debug dump');
    const line = gw.logs.find((l) => l.msg === 'debug dump')!;
    expect(line.headers).toEqual({ authorization: '[redacted]', dpop: '[redacted]', cookie: '[redacted]' });
  });
});
