import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BreakerTimeoutError, createBreakers, type BreakerEndpoint, type BreakerOptions, type BreakerState, type Breakers } from './breaker.ts';

// Windows long enough that a slow machine cannot roll them over mid-test, except where the
// reset timer is the subject (then short, and waited for with a deadline).
const QUICK: Partial<BreakerOptions> = {
  volumeThreshold: 4,
  errorThresholdPercentage: 50,
  rollingCountTimeoutMs: 10_000,
  rollingCountBuckets: 10,
  resetTimeoutMs: 60_000,
};

const open: Breakers[] = [];
afterEach(() => {
  for (const b of open.splice(0)) b.shutdown();
  vi.restoreAllMocks();
});

interface Transition {
  id: string;
  upstream: string;
  from: BreakerState;
  to: BreakerState;
}

function build(options: Partial<BreakerOptions>, ids = ['orders/local'], previous?: Breakers) {
  const transitions: Transition[] = [];
  const specs: BreakerEndpoint[] = ids.map((id) => ({ id, upstream: 'orders', options }));
  const breakers = createBreakers(specs, { onStateChange: (e, from, to) => transitions.push({ id: e.id, upstream: e.upstream, from, to }) }, previous);
  open.push(breakers);
  return { breakers, transitions };
}

async function until(what: string, condition: () => boolean, deadlineMs = 5_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!condition()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Runs `n` requests one after another, each settled by `settle`, and lets opossum's promise callbacks run. */
async function run(breakers: Breakers, n: number, settle: (lease: NonNullable<ReturnType<Breakers['admit']>>) => void, id = 'orders/local') {
  for (let i = 0; i < n; i++) {
    const lease = breakers.admit(id);
    if (lease === null) throw new Error('refused');
    settle(lease);
    await new Promise((resolve) => setImmediate(resolve)); // opossum counts in .then callbacks
  }
}

async function opened(options: Partial<BreakerOptions>) {
  const built = build(options);
  await run(built.breakers, options.volumeThreshold ?? 1, (l) => l.failed('connect'));
  expect(built.breakers.state('orders/local')).toBe('open');
  return built;
}

describe('opening', () => {
  it('opens once the window holds the minimum volume and the error rate exceeds the threshold', async () => {
    const { breakers, transitions } = build(QUICK);
    await run(breakers, 3, (l) => l.failed('connect'));
    expect(breakers.state('orders/local')).toBe('closed'); // 3 of 3 failed, but fewer than 4 requests
    await run(breakers, 1, (l) => l.failed('timeout'));
    expect(breakers.state('orders/local')).toBe('open');
    expect(transitions).toEqual([{ id: 'orders/local', upstream: 'orders', from: 'closed', to: 'open' }]);
  });

  it('stays closed at or below the error percentage', async () => {
    const { breakers } = build(QUICK);
    await run(breakers, 4, (l) => l.succeeded());
    await run(breakers, 4, (l) => l.responded(502)); // 4 of 8: 50% is not above 50%
    expect(breakers.state('orders/local')).toBe('closed');
    await run(breakers, 1, (l) => l.responded(500));
    expect(breakers.state('orders/local')).toBe('open');
  });

  it('does not count 4xx as failures', async () => {
    const { breakers } = build(QUICK);
    await run(breakers, 10, (l) => l.responded(404));
    await run(breakers, 3, (l) => l.responded(429));
    await run(breakers, 5, (l) => l.failed('5xx')); // 5 of 18
    expect(breakers.state('orders/local')).toBe('closed');
    await run(breakers, 8, (l) => l.responded(503)); // 13 of 26: 50%, not above
    expect(breakers.state('orders/local')).toBe('closed');
    await run(breakers, 1, (l) => l.responded(503)); // 14 of 27
    expect(breakers.state('orders/local')).toBe('open');
  });

  it('refuses at once while open, without a promise, a thousand times within a second', async () => {
    const { breakers } = await opened(QUICK);
    const start = performance.now();
    for (let i = 0; i < 1000; i++) expect(breakers.admit('orders/local')).toBeNull();
    expect(performance.now() - start).toBeLessThan(1000); // < 1 ms each on average
    expect(breakers.available('orders/local')).toBe(false);
  });

  it('counts a cancelled request as a success while closed', async () => {
    const { breakers } = build(QUICK);
    await run(breakers, 3, (l) => l.cancelled());
    await run(breakers, 2, (l) => l.failed('connect')); // 2 of 5; as failures the cancels would make 5 of 5
    expect(breakers.state('orders/local')).toBe('closed');
  });

  it('ignores all but the first outcome of a lease', async () => {
    const { breakers } = build(QUICK);
    await run(breakers, 4, (l) => {
      l.succeeded();
      l.failed('connect');
      l.cancelled();
    });
    await run(breakers, 3, (l) => {
      l.failed('connect');
      l.succeeded();
    }); // 3 of 7
    expect(breakers.state('orders/local')).toBe('closed');
  });
});

describe('half-open', () => {
  const RESET: Partial<BreakerOptions> = { ...QUICK, volumeThreshold: 1, resetTimeoutMs: 500 };

  it('lets exactly one probe through, and its success closes the breaker', async () => {
    const { breakers, transitions } = await opened(RESET);
    await until('half-open', () => breakers.state('orders/local') === 'half-open');
    expect(breakers.available('orders/local')).toBe(true);
    const probe = breakers.admit('orders/local');
    expect(probe).not.toBeNull();
    for (let i = 0; i < 20; i++) expect(breakers.admit('orders/local')).toBeNull();
    expect(breakers.available('orders/local')).toBe(false);
    probe!.responded(200);
    await until('closed', () => breakers.state('orders/local') === 'closed');
    expect(breakers.admit('orders/local')).not.toBeNull();
    expect(transitions.map((t) => `${t.from}>${t.to}`)).toEqual(['closed>open', 'open>half-open', 'half-open>closed']);
  });

  it('re-opens when the probe fails, and probes again after the reset timeout', async () => {
    const { breakers, transitions } = await opened(RESET);
    await until('half-open', () => breakers.state('orders/local') === 'half-open');
    breakers.admit('orders/local')!.failed('5xx');
    await until('re-opened', () => breakers.state('orders/local') === 'open');
    expect(breakers.admit('orders/local')).toBeNull();
    await until('half-open again', () => breakers.state('orders/local') === 'half-open');
    breakers.admit('orders/local')!.succeeded();
    await until('closed', () => breakers.state('orders/local') === 'closed');
    expect(transitions.map((t) => `${t.from}>${t.to}`)).toEqual([
      'closed>open',
      'open>half-open',
      'half-open>open',
      'open>half-open',
      'half-open>closed',
    ]);
  });

  it('does not close for a probe whose client left', async () => {
    const { breakers } = await opened(RESET);
    await until('half-open', () => breakers.state('orders/local') === 'half-open');
    breakers.admit('orders/local')!.cancelled();
    await until('re-opened', () => breakers.state('orders/local') === 'open');
  });
});

describe('timeout', () => {
  it('aborts the lease signal with a BreakerTimeoutError and counts a failure', async () => {
    const { breakers } = build({ ...QUICK, volumeThreshold: 1, timeoutMs: 50 }, ['orders/local', 'orders/other']);
    const lease = breakers.admit('orders/local')!;
    const other = breakers.admit('orders/other')!;
    other.succeeded(); // settled in time: its signal never aborts
    await Promise.race([
      once(lease.signal, 'abort'),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no abort within 5 s')), 5_000)),
    ]);
    expect(lease.signal.reason).toBeInstanceOf(BreakerTimeoutError);
    expect((lease.signal.reason as BreakerTimeoutError).code).toBe('ERR_BREAKER_TIMEOUT');
    await until('open', () => breakers.state('orders/local') === 'open');
    lease.succeeded(); // too late: ignored
    expect(breakers.state('orders/local')).toBe('open');
    expect(other.signal.aborted).toBe(false);
  });

  it('hands out an already aborted signal when read after the timeout', async () => {
    const transitions: string[] = [];
    const breakers = createBreakers([{ id: 'e', upstream: 'u', options: { ...QUICK, volumeThreshold: 1, timeoutMs: 50 } }], {
      onStateChange: (_e, _from, to) => transitions.push(to),
    });
    open.push(breakers);
    const lease = breakers.admit('e')!;
    await until('open', () => transitions.includes('open'));
    expect(lease.signal.aborted).toBe(true);
    expect(lease.signal.reason).toBeInstanceOf(BreakerTimeoutError);
  });
});

describe('retryAfterMs', () => {
  it('is the time left until the next probe while open, else 0', async () => {
    let now = 1_000_000;
    const breakers = createBreakers([{ id: 'e', upstream: 'u', options: { ...QUICK, volumeThreshold: 1, resetTimeoutMs: 30_000 } }], { now: () => now });
    open.push(breakers);
    expect(breakers.retryAfterMs('e')).toBe(0);
    await run(breakers, 1, (l) => l.failed('connect'), 'e');
    expect(breakers.state('e')).toBe('open');
    expect(breakers.retryAfterMs('e')).toBe(30_000);
    now += 12_000;
    expect(breakers.retryAfterMs('e')).toBe(18_000);
    now += 60_000;
    expect(breakers.retryAfterMs('e')).toBe(0);
  });
});

describe('disabled', () => {
  it('hands out leases that record nothing and never time out', async () => {
    const { breakers } = build({ ...QUICK, enabled: false, volumeThreshold: 1, timeoutMs: 1 });
    await run(breakers, 50, (l) => l.failed('connect'));
    expect(breakers.state('orders/local')).toBe('closed');
    expect(breakers.admit('orders/local')).not.toBeNull();
    expect(breakers.states()).toEqual([{ id: 'orders/local', upstream: 'orders', state: 'closed', enabled: false }]);
  });
});

describe('set', () => {
  it('refuses unknown ids, duplicate ids and nonsense options', () => {
    const { breakers } = build(QUICK);
    expect(() => breakers.admit('nope')).toThrow(/unknown endpoint/);
    expect(() => createBreakers([{ id: 'a', upstream: 'u' }, { id: 'a', upstream: 'u' }])).toThrow(/duplicate/);
    expect(() => createBreakers([{ id: 'a', upstream: 'u', options: { timeoutMs: 0 } }])).toThrow(/timeoutMs/);
    expect(() => createBreakers([{ id: 'a', upstream: 'u', options: { errorThresholdPercentage: 120 } }])).toThrow(/errorThreshold/);
    expect(() => createBreakers([{ id: 'a', upstream: 'u', options: { rollingCountTimeoutMs: 5, rollingCountBuckets: 10 } }])).toThrow(/rollingCount/);
  });

  it('keeps an unchanged endpoint\'s breaker across a reload, and reports through the new hooks', async () => {
    const first = await opened({ ...QUICK, volumeThreshold: 1, resetTimeoutMs: 500 });
    const second = build({ ...QUICK, volumeThreshold: 1, resetTimeoutMs: 500 }, ['orders/local'], first.breakers);
    const changed = build({ ...QUICK, volumeThreshold: 2 }, ['orders/local'], first.breakers);
    first.breakers.shutdown(); // must not stop the breaker the second set adopted
    expect(second.breakers.state('orders/local')).toBe('open');
    expect(second.breakers.admit('orders/local')).toBeNull();
    expect(changed.breakers.state('orders/local')).toBe('closed'); // other options: a new breaker
    await until('half-open', () => second.breakers.state('orders/local') === 'half-open');
    expect(second.transitions.map((t) => t.to)).toEqual(['half-open']);
    expect(first.transitions.map((t) => t.to)).toEqual(['open']);
    // The old set, shut down, no longer refuses: a request begun before the swap is not failed for it.
    expect(first.breakers.admit('orders/local')).not.toBeNull();
  });

  it('leaves no timer behind after shutdown', async () => {
    const timers = trackTimers();
    const breakers = createBreakers([
      { id: 'warm', upstream: 'u', options: { ...QUICK, volumeThreshold: 1, allowWarmUp: true } },
      { id: 'tripped', upstream: 'u', options: { ...QUICK, volumeThreshold: 1, resetTimeoutMs: 60_000 } },
      { id: 'busy', upstream: 'u', options: QUICK },
    ]);
    await run(breakers, 2, (l) => l.failed('connect'), 'warm'); // warming up: counted, not opened
    expect(breakers.state('warm')).toBe('closed');
    await run(breakers, 1, (l) => l.responded(500), 'tripped'); // open: its reset timer runs
    expect(breakers.state('tripped')).toBe('open');
    await run(breakers, 3, (l) => l.succeeded(), 'busy');
    expect(timers.pending().length).toBeGreaterThan(0);
    breakers.shutdown();
    expect(timers.pending()).toEqual([]);
  });
});

/** Every timer opossum creates from here on; pending: neither cleared nor (for a timeout) fired. */
function trackTimers() {
  const live = new Map<unknown, string>();
  let count = 0;
  const realSetTimeout = globalThis.setTimeout;
  const realSetInterval = globalThis.setInterval;
  const realClearTimeout = globalThis.clearTimeout;
  const realClearInterval = globalThis.clearInterval;
  vi.spyOn(globalThis, 'setTimeout').mockImplementation(((fn: () => void, ms?: number) => {
    const timer = realSetTimeout(() => {
      live.delete(timer);
      fn();
    }, ms);
    live.set(timer, `timeout ${ms}`);
    count++;
    return timer;
  }) as typeof setTimeout);
  vi.spyOn(globalThis, 'setInterval').mockImplementation(((fn: () => void, ms?: number) => {
    const timer = realSetInterval(fn, ms);
    live.set(timer, `interval ${ms}`);
    count++;
    return timer;
  }) as typeof setInterval);
  vi.spyOn(globalThis, 'clearTimeout').mockImplementation(((t: Parameters<typeof clearTimeout>[0]) => {
    live.delete(t);
    realClearTimeout(t);
  }) as typeof clearTimeout);
  vi.spyOn(globalThis, 'clearInterval').mockImplementation(((t: Parameters<typeof clearInterval>[0]) => {
    live.delete(t);
    realClearInterval(t);
  }) as typeof clearInterval);
  return { created: () => count, pending: () => [...live.values()] };
}
