// Rate limits through real gateways: the 429 and its headers, tiers from routes and policy
// obligations, exactness across two instances sharing one Redis, a Redis Cluster, and Redis
// killed under load (each failure mode, bounded waits, recovery after a restart). Every Redis
// here is a private redis-server this file starts and kills by PID.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEchoServer, type EchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest, type RawResponse } from '../helpers/http.ts';
import { startRedis, type RedisProcess } from '../helpers/redis.ts';
import { startRedisCluster, type RedisClusterProcess } from '../helpers/redis-cluster.ts';

const ISS = 'https://idp.test.local/';
let echo: EchoServer;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
const dirs: string[] = [];
const tokens: Record<string, string> = {};

beforeAll(async () => {
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS });
  jwks = await serveJwks(() => idp.publicJwks());
  for (const [sub, tenant] of [['alice', 'acme'], ['bob', 'acme'], ['carol', 'globex']] as const) {
    tokens[sub] = await idp.sign({ groups: ['eng'], tenant }, { sub, aud: 'zt-gateway', expiresIn: '10m' });
  }
});

afterAll(async () => {
  await jwks?.close();
  await echo?.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function config(extra: Record<string, any> = {}): Record<string, any> {
  return {
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [
      { name: 'limited', pathPrefix: '/limited/', upstream: echo.url, limits: ['five'] },
      { name: 'open', pathPrefix: '/open/', upstream: echo.url },
      { name: 'public', pathPrefix: '/public/', upstream: echo.url, public: true, limits: ['per-ip'] },
    ],
    limits: {
      tiers: {
        five: { limit: 5, per: '1h', key: ['subject'] },
        'per-ip': { limit: 3, per: '1h', key: ['ip'] },
        strict: { limit: 2, per: '1h', key: ['subject'] },
        tenant: { limit: 4, per: '1h', key: ['claim:tenant'] },
      },
      ...extra.limits,
    },
    ...Object.fromEntries(Object.entries(extra).filter(([k]) => k !== 'limits')),
  };
}

const get = (gw: TestGateway, path: string, sub?: string): Promise<RawResponse> =>
  rawRequest(gw.url, path, { headers: sub === undefined ? {} : { authorization: `Bearer ${tokens[sub]}` } });

const upstreamHits = (path: string): number => echo.requests.filter((r) => r.url.startsWith(path)).length;

describe('limits in memory (the embedded default)', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway(config());
  });
  afterAll(() => gw?.close());

  it('passes a tier\'s burst with RateLimit headers, then answers 429 with Retry-After and a problem, without contacting the upstream', async () => {
    const path = '/limited/alice-burst';
    const passed: RawResponse[] = [];
    for (let i = 0; i < 5; i++) passed.push(await get(gw, path, 'alice'));
    expect(passed.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    expect(passed[0]!.headers['ratelimit-policy']).toBe('"five";q=5;w=3600');
    expect(passed.map((r) => r.headers.ratelimit)).toEqual([4, 3, 2, 1, 0].map((r) => expect.stringMatching(new RegExp(`^"five";r=${r};t=\\d+$`))));
    const hits = upstreamHits(path);

    const refused = await get(gw, path, 'alice');
    expect(refused.status).toBe(429);
    expect(refused.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(refused.json()).toMatchObject({ status: 429, code: 'ERR_RATE_LIMITED', type: 'urn:zt-gateway:problem:rate-limited' });
    expect(refused.text).not.toMatch(/five|subject|redis/i); // the tier's name is in the headers, not the body
    // 1 h / 5 = 720 s between requests once the burst is spent.
    expect(Number(refused.headers['retry-after'])).toBeGreaterThan(700);
    expect(Number(refused.headers['retry-after'])).toBeLessThanOrEqual(720);
    expect(refused.headers['ratelimit-policy']).toBe('"five";q=5;w=3600');
    expect(refused.headers.ratelimit).toMatch(/^"five";r=0;t=\d+$/);
    expect(upstreamHits(path)).toBe(hits);
  });

  it('keeps one bucket per key: another subject is not limited by alice, a route without tiers is not limited', async () => {
    for (let i = 0; i < 6; i++) await get(gw, '/limited/x', 'bob');
    expect((await get(gw, '/limited/x', 'bob')).status).toBe(429);
    expect((await get(gw, '/limited/x', 'carol')).status).toBe(200);
    const open = await get(gw, '/open/x', 'bob');
    expect(open.status).toBe(200);
    expect(open.headers['ratelimit-policy']).toBeUndefined();
  });

  it('limits a public route per client IP', async () => {
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await get(gw, '/public/x')).status);
    expect(statuses).toEqual([200, 200, 200, 429]);
  });

  it('counts checks in ztgw_rate_limit_checks_total by tier and result', async () => {
    const metrics = (await rawRequest(gw.adminUrl, '/metrics')).text;
    expect(metrics).toMatch(/ztgw_rate_limit_checks_total\{tier="five",result="allowed"\} \d+/);
    expect(metrics).toMatch(/ztgw_rate_limit_checks_total\{tier="five",result="limited"\} \d+/);
    expect(metrics).toMatch(/ztgw_rate_limit_store_up 1/);
  });
});

describe('tiers from policies', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ztgw-limits-'));
    dirs.push(dir);
    writeFileSync(
      join(dir, 'p.yaml'),
      `apiVersion: zt-gateway/v1
name: tiers
rules:
  - name: carol-strict
    effect: allow
    when: 'identity.sub == "carol"'
    obligations: { rateLimitTier: strict }
  - name: tenants
    effect: allow
    when: 'identity.sub != "carol"'
    obligations: { rateLimitTier: tenant }
`,
    );
    gw = await startTestGateway(
      config({
        policies: { dir },
        routes: [
          { name: 'open', pathPrefix: '/open/', upstream: echo.url },
          { name: 'unlimited', pathPrefix: '/unlimited/', upstream: echo.url, rateLimiting: false },
        ],
      }),
      { dir },
    );
  });
  afterAll(() => gw?.close());

  it('applies a policy obligation\'s tier on a route that has none', async () => {
    const statuses = [];
    for (let i = 0; i < 3; i++) statuses.push((await get(gw, '/open/x', 'carol')).status);
    expect(statuses).toEqual([200, 200, 429]);
  });

  it('keys a tier by a claim: two subjects of one tenant share its bucket', async () => {
    const statuses = [];
    for (const sub of ['alice', 'bob', 'alice', 'bob', 'alice']) statuses.push((await get(gw, '/open/t', sub)).status);
    expect(statuses).toEqual([200, 200, 200, 200, 429]);
  });

  it('applies nothing on a route with rateLimiting: false, obligation or not', async () => {
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await get(gw, '/unlimited/x', 'carol')).status);
    expect(statuses).toEqual([200, 200, 200, 200]);
  });
});

describe('limits shared through Redis', () => {
  let redis: RedisProcess;
  beforeAll(async () => {
    redis = await startRedis();
  }, 20_000);
  afterAll(() => redis?.stop());

  it('is exact across two gateway instances: many concurrent clients on one key admit exactly the limit', async () => {
    // A deadline no busy machine misses: past it a check would take its failure mode (local),
    // which is the next test's subject, not this one's.
    const shared = config({ redis: { url: redis.url }, limits: { timeoutMs: 2000, tiers: { twenty: { limit: 20, per: '1h', key: ['route'] } } }, routes: [
      { name: 'hot', pathPrefix: '/hot/', upstream: echo.url, limits: ['twenty'] },
    ] });
    const [a, b] = await Promise.all([startTestGateway(shared), startTestGateway(shared)]);
    try {
      const subs = ['alice', 'bob', 'carol'];
      const answers = await Promise.all(Array.from({ length: 120 }, (_, i) => get(i % 2 === 0 ? a : b, `/hot/${i}`, subs[i % 3])));
      const statuses = answers.map((r) => r.status);
      expect(statuses.filter((s) => s === 200)).toHaveLength(20);
      expect(statuses.filter((s) => s === 429)).toHaveLength(100);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  }, 30_000);

  describe('when Redis dies under load', () => {
    let own: RedisProcess;
    let gw: TestGateway;
    const TIMEOUT_MS = 100;
    beforeAll(async () => {
      own = await startRedis();
      gw = await startTestGateway(
        config({
          redis: { url: own.url },
          limits: {
            timeoutMs: TIMEOUT_MS,
            tiers: {
              'fail-open': { limit: 1000, per: '1h', key: ['subject'], onStoreFailure: 'allow' },
              'fail-closed': { limit: 1000, per: '1h', key: ['subject'], onStoreFailure: 'deny' },
              'fail-local': { limit: 3, per: '1h', key: ['subject'], onStoreFailure: 'local' },
            },
          },
          routes: [
            { name: 'open', pathPrefix: '/a/', upstream: echo.url, limits: ['fail-open'] },
            { name: 'closed', pathPrefix: '/d/', upstream: echo.url, limits: ['fail-closed'] },
            { name: 'local', pathPrefix: '/l/', upstream: echo.url, limits: ['fail-local'] },
          ],
        }),
      );
    }, 20_000);
    afterAll(async () => {
      await gw?.close();
      await own?.stop();
    });

    it('answers each tier by its failure mode within the timeout, reports it once, and limits through Redis again after a restart', async () => {
      expect((await get(gw, '/l/x', 'alice')).status).toBe(200); // one of alice's 3 spent in Redis
      const port = own.port;
      // Load running while Redis dies: nothing may crash or hang.
      let stop = false;
      const load = (async () => {
        const seen: { status: number; ms: number }[] = [];
        while (!stop) {
          const t0 = performance.now();
          const { status } = await get(gw, '/a/load', 'bob');
          seen.push({ status, ms: performance.now() - t0 });
        }
        return seen;
      })();
      await own.stop();

      const timed = async (path: string, sub: string): Promise<{ status: number; ms: number; body: RawResponse }> => {
        const t0 = performance.now();
        const body = await get(gw, path, sub);
        return { status: body.status, ms: performance.now() - t0, body };
      };
      const open = await timed('/a/x', 'alice');
      const closed = await timed('/d/x', 'alice');
      expect(open.status).toBe(200);
      expect(closed.status).toBe(503);
      expect(closed.body.json()).toMatchObject({ code: 'ERR_RATE_LIMIT_UNAVAILABLE' });
      expect(closed.body.headers['retry-after']).toBe('1');
      // Bounded: the store's deadline plus a generous margin for a busy machine, never a hang.
      expect(Math.max(open.ms, closed.ms)).toBeLessThan(TIMEOUT_MS + 1000);
      // local: this instance alone allows the tier's limit (expectedInstances 1): 3, then 429.
      const local = [];
      for (let i = 0; i < 4; i++) local.push((await timed('/l/y', 'carol')).status);
      expect(local).toEqual([200, 200, 200, 429]);

      stop = true;
      const during = await load;
      expect(during.length).toBeGreaterThan(0);
      expect(during.every((r) => r.status === 200)).toBe(true); // fail-open: the load saw no errors
      expect(Math.max(...during.map((r) => r.ms))).toBeLessThan(TIMEOUT_MS + 1000);

      const ready = (await rawRequest(gw.adminUrl, '/readyz')).json();
      expect(ready.checks).toContainEqual(expect.objectContaining({ name: 'rate-limit-store', degraded: true }));
      expect((await rawRequest(gw.adminUrl, '/metrics')).text).toMatch(/ztgw_rate_limit_store_up 0/);
      expect((await rawRequest(gw.adminUrl, '/metrics')).text).toMatch(/ztgw_rate_limit_checks_total\{tier="fail-closed",result="degraded_deny"\} [1-9]/);
      const failing = gw.logs.filter((l) => /rate-limit store failing/.test(l.msg));
      expect(failing).toHaveLength(1);

      // Back on the same port: the client reconnects by itself and limits are shared again.
      own = await startRedis({ port });
      const deadline = Date.now() + 10_000;
      while (!gw.logs.some((l) => /rate-limit store answering again/.test(l.msg))) {
        if (Date.now() > deadline) throw new Error('the store did not recover within 10 s');
        await get(gw, '/a/probe', 'bob');
        await new Promise((r) => setTimeout(r, 100));
      }
      // The restarted Redis is empty: alice has 3 again, counted in Redis.
      const after = [];
      for (let i = 0; i < 4; i++) after.push((await get(gw, '/l/z', 'alice')).status);
      expect(after).toEqual([200, 200, 200, 429]);
      expect((await rawRequest(gw.adminUrl, '/metrics')).text).toMatch(/ztgw_rate_limit_store_up 1/);
    }, 40_000);
  });
});

describe('when Redis stalls (a frozen process: connected, never answering)', () => {
  let frozen: RedisProcess;
  let gw: TestGateway;
  const TIMEOUT_MS = 100;
  beforeAll(async () => {
    frozen = await startRedis();
    gw = await startTestGateway(
      config({
        limits: { redis: { url: frozen.url }, timeoutMs: TIMEOUT_MS, tiers: { 'fail-open': { limit: 1000, per: '1h', key: ['subject'], onStoreFailure: 'allow' } } },
        routes: [{ name: 'open', pathPrefix: '/a/', upstream: echo.url, limits: ['fail-open'] }],
      }),
    );
  }, 20_000);
  afterAll(async () => {
    await gw?.close();
    await frozen?.stop();
  });

  it('answers within the deadline, concurrent requests included, and shares limits again once it thaws', async () => {
    expect((await get(gw, '/a/warm', 'alice')).status).toBe(200);
    process.kill(frozen.pid, 'SIGSTOP');
    try {
      const t0 = performance.now();
      const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => get(gw, `/a/${i}`, ['alice', 'bob', 'carol'][i % 3])));
      const ms = performance.now() - t0;
      expect(answers.map((a) => a.status)).toEqual(Array(20).fill(200));
      // 20 requests at once, each waiting at most the deadline (most take their failure mode
      // at once while one probe waits): the whole batch, not one request per deadline.
      expect(ms).toBeLessThan(TIMEOUT_MS + 1500);
    } finally {
      process.kill(frozen.pid, 'SIGCONT');
    }
    const deadline = Date.now() + 10_000;
    while (!gw.logs.some((l) => /rate-limit store answering again/.test(l.msg))) {
      if (Date.now() > deadline) throw new Error('the store did not recover within 10 s');
      await get(gw, '/a/probe', 'bob');
      await new Promise((r) => setTimeout(r, 100));
    }
    expect((await get(gw, '/a/after', 'alice')).headers.ratelimit).toMatch(/^"fail-open";r=\d+;t=\d+$/);
  }, 30_000);
});

describe('limits on a Redis Cluster', () => {
  let cluster: RedisClusterProcess;
  beforeAll(async () => {
    cluster = await startRedisCluster();
  }, 40_000);
  afterAll(() => cluster?.stop());

  it('limits across the cluster from two instances, a subject\'s tiers checked together', async () => {
    const seeds = cluster.startupNodes.map((n) => `redis://${n.host}:${n.port}`);
    const clustered = config({
      limits: {
        redis: { cluster: seeds },
        timeoutMs: 2000, // as above: exactness here, not the failure modes
        tiers: { five: { limit: 5, per: '1h', key: ['subject'] }, 'five-route': { limit: 50, per: '1h', key: ['subject', 'route'] } },
      },
      routes: [{ name: 'limited', pathPrefix: '/limited/', upstream: echo.url, limits: ['five', 'five-route'] }],
    });
    const [a, b] = await Promise.all([startTestGateway(clustered), startTestGateway(clustered)]);
    try {
      const answers = await Promise.all(
        Array.from({ length: 30 }, (_, i) => get(i % 2 === 0 ? a : b, `/limited/${i}`, ['alice', 'bob', 'carol'][i % 3])),
      );
      // Three subjects, 5 each, whichever instance they reached.
      expect(answers.filter((r) => r.status === 200)).toHaveLength(15);
      expect(answers.filter((r) => r.status === 429)).toHaveLength(15);
      expect(answers.find((r) => r.status === 200)!.headers['ratelimit-policy']).toBe('"five";q=5;w=3600, "five-route";q=50;w=3600');
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  }, 40_000);
});
