import { describe, expect, it } from 'vitest';
import { RateLimitedError, RateLimitUnavailableError } from '../core/errors.ts';
import { createMemoryStore } from '../limits/memory-store.ts';
import { compileTiers } from '../limits/tiers.ts';
import { RateLimitStoreError, type LimitItem, type RateLimitStore } from '../limits/store.ts';
import { createResilientStore } from '../limits/resilient.ts';
import type { CompiledRoute, RequestContext } from './context.ts';
import { createLimitStage, type LimitResult } from './limit.ts';

const tiers = compileTiers({
  keyPrefix: 't:',
  tiers: {
    two: { limit: 2, per: '1h', key: ['subject'], onStoreFailure: 'local' },
    'by-device': { limit: 1, per: '1h', key: ['subject', 'device'], onStoreFailure: 'local' },
    closed: { limit: 100, per: '1h', key: ['subject'], onStoreFailure: 'deny' },
    open: { limit: 100, per: '1h', key: ['subject'], onStoreFailure: 'allow' },
  },
});

function ctx(opts: { sub?: string; device?: string; limits?: string[]; obligation?: string; rateLimiting?: boolean } = {}): RequestContext {
  return {
    clientIp: '10.0.0.1',
    identity: opts.sub === undefined ? undefined : { subject: opts.sub, claims: {} },
    device: opts.device === undefined ? undefined : { id: opts.device },
    route: { name: 'r', limits: (opts.limits ?? []).map((n) => tiers.get(n)!), rateLimiting: opts.rateLimiting ?? true } as unknown as CompiledRoute,
    decision: opts.obligation === undefined ? undefined : { obligations: { rateLimitTier: opts.obligation } },
  } as unknown as RequestContext;
}

const deadStore: RateLimitStore = {
  check: () => Promise.reject(new RateLimitStoreError('error', 'connection refused')),
  close: async () => {},
};

describe('the limit stage', () => {
  it('does nothing, synchronously, on a route without tiers or with rateLimiting off', () => {
    const stage = createLimitStage({ store: createMemoryStore(), tiers });
    expect(stage(ctx({ sub: 'a' }))).toBeUndefined();
    expect(stage(ctx({ sub: 'a', limits: ['two'], obligation: 'two', rateLimiting: false }))).toBeUndefined();
  });

  it('admits within the tier and leaves the RateLimit fields for the response, then refuses with 429 and Retry-After', async () => {
    const results: string[] = [];
    const stage = createLimitStage({ store: createMemoryStore(), tiers, onOutcome: (tier, r) => results.push(`${tier}:${r}`) });
    const first = ctx({ sub: 'a', limits: ['two'] });
    await stage(first);
    expect(first.rateLimit).toEqual({ policy: '"two";q=2;w=3600', rateLimit: '"two";r=1;t=1800' });
    await stage(ctx({ sub: 'a', limits: ['two'] }));
    const refused = await Promise.resolve(stage(ctx({ sub: 'a', limits: ['two'] }))).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(RateLimitedError);
    expect((refused as RateLimitedError).headers).toMatchObject({ 'retry-after': '1800', 'ratelimit-policy': '"two";q=2;w=3600' });
    expect(results).toEqual(['two:allowed', 'two:allowed', 'two:limited']);
  });

  it('adds a policy obligation\'s tier to the route\'s, in one check', async () => {
    const seen: LimitItem[][] = [];
    const memory = createMemoryStore();
    const stage = createLimitStage({ store: { check: (items) => (seen.push([...items]), memory.check(items)), close: async () => {} }, tiers });
    await stage(ctx({ sub: 'a', limits: ['two'], obligation: 'open' }));
    expect(seen).toHaveLength(1);
    expect(seen[0]!.map((i) => i.tier.name)).toEqual(['two', 'open']);
  });

  it('gives a missing value one shared bucket, never a free pass: two unbound tokens of one subject share by-device', async () => {
    const stage = createLimitStage({ store: createMemoryStore(), tiers });
    await stage(ctx({ sub: 'a', limits: ['by-device'] }));
    await expect(Promise.resolve(stage(ctx({ sub: 'a', limits: ['by-device'] })))).rejects.toBeInstanceOf(RateLimitedError);
    await stage(ctx({ sub: 'a', device: 'd1', limits: ['by-device'] })); // a bound device is its own bucket
  });

  it('answers by each tier\'s failure mode when the store fails: deny → 503, allow → passes, local → limited here', async () => {
    const results: LimitResult[] = [];
    const store = createResilientStore({ primary: deadStore, timeoutMs: 50 });
    const stage = createLimitStage({ store, tiers, onOutcome: (_t, r) => results.push(r) });
    await expect(Promise.resolve(stage(ctx({ sub: 'a', limits: ['closed'] })))).rejects.toBeInstanceOf(RateLimitUnavailableError);
    await stage(ctx({ sub: 'a', limits: ['open'] }));
    await stage(ctx({ sub: 'b', limits: ['two'] }));
    await stage(ctx({ sub: 'b', limits: ['two'] }));
    await expect(Promise.resolve(stage(ctx({ sub: 'b', limits: ['two'] })))).rejects.toBeInstanceOf(RateLimitedError);
    expect(results).toEqual(['degraded_deny', 'degraded_allow', 'local', 'local', 'local']);
  });
});
