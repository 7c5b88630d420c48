import { afterEach, describe, expect, it } from 'vitest';
import pino from 'pino';
import { createMetrics } from '../observability/metrics.ts';
import { PrincipalBusyError, UpstreamBusyError, UpstreamUnavailableError } from '../core/errors.ts';
import { createUpstreamGuard, type CallOptions, type GuardUpstream, type UpstreamGuard } from './upstream-guard.ts';

function upstream(name: string, over: Partial<GuardUpstream> = {}, priorities: number[] = [0]): GuardUpstream {
  return {
    name,
    endpoints: priorities.map((priority, i) => ({ id: `${name}/e${i}`, upstream: name, name: `e${i}`, origin: `http://10.0.0.${i + 1}:80`, basePath: '', priority })),
    maxInFlight: 100,
    maxInFlightPerPrincipal: 100,
    breaker: { enabled: true, errorThresholdPercentage: 50, volumeThreshold: 2, rollingCountTimeoutMs: 10_000, rollingCountBuckets: 10, resetTimeoutMs: 60_000 },
    retry: { attempts: 0, budgetPercent: 20, minRetryConcurrency: 3 },
    ...over,
  };
}

const guards: UpstreamGuard[] = [];
function guardOf(list: GuardUpstream[], previous?: UpstreamGuard, metrics = createMetrics()) {
  const guard = createUpstreamGuard(new Map(list.map((u) => [u.name, u])), { metrics, logger: pino({ level: 'silent' }) }, previous);
  guards.push(guard);
  return { guard, metrics };
}
afterEach(() => {
  for (const g of guards.splice(0)) g.shutdown();
});

const call = (over: Partial<CallOptions> = {}): CallOptions => ({ upstream: 'u', principal: 'p', breakers: true, retryable: true, ...over });

/** opossum learns an outcome when the lease's promise settles: a turn of the loop later. */
const settled = () => new Promise((resolve) => setImmediate(resolve));

/** Two failed attempts on the endpoint picked first: with volumeThreshold 2 its breaker opens. */
async function openFirstEndpoint(guard: UpstreamGuard): Promise<string> {
  let id = '';
  for (let i = 0; i < 2; i++) {
    const c = guard.begin(call());
    id = c.first().id;
    c.failed('connect');
    c.end();
    await settled();
  }
  return id;
}

describe('upstream guard', () => {
  it('refuses beyond the principal share (429) and the bulkhead (503), counting each', async () => {
    const { guard, metrics } = guardOf([upstream('u', { maxInFlight: 3, maxInFlightPerPrincipal: 2 })]);
    const held = [guard.begin(call()), guard.begin(call())];
    expect(() => guard.begin(call())).toThrow(PrincipalBusyError);
    held.push(guard.begin(call({ principal: 'q' })));
    expect(() => guard.begin(call({ principal: 'r' }))).toThrow(UpstreamBusyError);
    const refusals = (await metrics.upstreamRefusals.get()).values.map((v) => [v.labels.reason, v.value]);
    expect(refusals).toEqual(expect.arrayContaining([['principal_busy', 1], ['upstream_busy', 1]]));
    for (const c of held) c.end();
    expect(guard.inFlight('u')).toBe(0);
    expect(guard.principals('u')).toBe(0);
  });

  it('releases a call once, however often it is ended', () => {
    const { guard } = guardOf([upstream('u')]);
    const a = guard.begin(call());
    const b = guard.begin(call());
    a.first();
    a.end();
    a.end();
    expect(guard.inFlight('u')).toBe(1);
    b.end();
    expect(guard.inFlight('u')).toBe(0);
  });

  it('opens an endpoint at its threshold and fails over to the next priority; none left: 503 with Retry-After', async () => {
    const { guard, metrics } = guardOf([upstream('u', {}, [0, 1])]);
    expect(await openFirstEndpoint(guard)).toBe('u/e0');
    const c = guard.begin(call());
    expect(c.first().id).toBe('u/e1');
    c.failed('timeout');
    c.end();
    await settled();
    const d = guard.begin(call());
    expect(d.first().id).toBe('u/e1'); // one failure of two: not above 50 %
    d.failed('timeout');
    d.end();
    await settled();
    const e = guard.begin(call());
    let error: unknown;
    try {
      e.first();
    } catch (err) {
      error = err;
    }
    e.end();
    expect(error).toBeInstanceOf(UpstreamUnavailableError);
    expect(Number((error as UpstreamUnavailableError).headers!['retry-after'])).toBeGreaterThanOrEqual(59);
    const states = (await metrics.breakerState.get()).values.map((v) => [v.labels.endpoint, v.value]);
    expect(states).toEqual(expect.arrayContaining([['e0', 2], ['e1', 2]]));
    expect(guard.inFlight('u')).toBe(0);
  });

  it('counts nothing for a route with circuitBreaker off, and picks past open breakers for it', async () => {
    const { guard } = guardOf([upstream('u')]);
    for (let i = 0; i < 5; i++) {
      const c = guard.begin(call({ breakers: false }));
      c.first();
      c.failed('connect');
      c.end();
      await settled();
    }
    expect(guard.states()[0]!.state).toBe('closed');
    await openFirstEndpoint(guard);
    expect(guard.states()[0]!.state).toBe('open');
    const c = guard.begin(call({ breakers: false }));
    expect(c.first().id).toBe('u/e0');
    c.end();
  });

  it('retries only what may be retried: attempts, another endpoint first, the budget', async () => {
    const { guard, metrics } = guardOf([upstream('u', { retry: { attempts: 1, budgetPercent: 0, minRetryConcurrency: 1 } }, [0, 0])]);
    const a = guard.begin(call());
    const first = a.first().id;
    a.failed('connect');
    const again = a.retry();
    expect(again?.id).toBe(first === 'u/e0' ? 'u/e1' : 'u/e0');
    a.failed('connect');
    expect(a.retry()).toBeUndefined(); // attempts: 1
    // The budget: one retry at a time (minRetryConcurrency 1, budgetPercent 0).
    const b = guard.begin(call());
    b.first();
    b.failed('connect');
    const held = b.retry();
    expect(held).toBeDefined();
    const c = guard.begin(call());
    c.first();
    c.failed('connect');
    expect(c.retry()).toBeUndefined();
    const d = guard.begin(call({ retryable: false }));
    d.first();
    d.failed('connect');
    expect(d.retry()).toBeUndefined();
    for (const x of [a, b, c, d]) x.end();
    const retries = (await metrics.upstreamRetries.get()).values.map((v) => [v.labels.result, v.value]);
    expect(retries).toEqual(expect.arrayContaining([['sent', 2], ['refused_by_budget', 1]]));
    expect(guard.inFlight('u')).toBe(0);
  });

  it('keeps breaker state and in-flight counts across a reload (previous), and stops only what it owns', async () => {
    const { guard: old } = guardOf([upstream('u', {}, [0, 1])]);
    await openFirstEndpoint(old);
    const running = old.begin(call());
    running.first();
    const { guard: next } = guardOf([upstream('u', {}, [0, 1])], old);
    old.shutdown();
    expect(next.states().find((s) => s.id === 'u/e0')!.state).toBe('open');
    expect(next.inFlight('u')).toBe(1);
    running.end(); // begun on the old one, released on the shared counters
    expect(next.inFlight('u')).toBe(0);
    const c = next.begin(call());
    expect(c.first().id).toBe('u/e1');
    c.end();
  });
});
