// Circuit breakers, one per upstream endpoint, on opossum 10. opossum guards a promise-returning
// action, but the proxy (@fastify/reply-from) is callback based and an upstream's 5xx is a
// response that must still reach the client. So the proxy takes a Lease instead: `admit()`
// decides at once (null: answer 503 without contacting the upstream), and the lease's outcome
// settles the promise opossum is watching (`breaker.fire(lease)` → `lease.promise`). opossum
// keeps what it is good at: the rolling window, error percentage over a minimum volume, the
// reset timer, the single half-open probe, the per-request timeout and its events.
//
// Outcomes are decided when the upstream's response head arrives (status known), not when its
// body ends: a long download is not a slow upstream, and the timeout is the time to first
// answer. Failures are connection errors, timeouts and 5xx; a 4xx is the client's doing.
import type { EventEmitter } from 'node:events';
import CircuitBreaker from 'opossum';

export type BreakerState = 'closed' | 'open' | 'half-open';
export type FailureKind = 'connect' | 'timeout' | '5xx';

export interface BreakerOptions {
  /** false: admit() always hands out a lease that records nothing (the seed's circuit_breaker switch). */
  readonly enabled: boolean;
  /** Time to the upstream's response head; past it the lease's signal aborts and it counts as a failure. */
  readonly timeoutMs: number;
  /** Open when failures exceed this percentage of the requests in the window (opossum: strictly above). */
  readonly errorThresholdPercentage: number;
  /** Requests the window must hold before the percentage may open the breaker. */
  readonly volumeThreshold: number;
  readonly rollingCountTimeoutMs: number;
  readonly rollingCountBuckets: number;
  /** Time open before one probe is let through (half-open). */
  readonly resetTimeoutMs: number;
  /** Never open during the first rollingCountTimeoutMs after the breaker is built. */
  readonly allowWarmUp: boolean;
}

/**
 * Hystrix's numbers where opossum's own would misbehave behind a gateway: opossum's default
 * volumeThreshold 0 opens an endpoint on its very first failed request (1 of 1 = 100%);
 * Hystrix waits for 20 requests in the window. A 10 s reset (opossum: 30 s) keeps an edge on
 * its central fallback no longer than needed once the local endpoint is back.
 */
export const BREAKER_DEFAULTS: BreakerOptions = Object.freeze({
  enabled: true,
  timeoutMs: 10_000,
  errorThresholdPercentage: 50,
  volumeThreshold: 20,
  rollingCountTimeoutMs: 10_000,
  rollingCountBuckets: 10,
  resetTimeoutMs: 10_000,
  allowWarmUp: false,
});

export interface BreakerEndpoint {
  /** Unique in the set (e.g. "orders/local"); what admit() and state() take. */
  readonly id: string;
  /** For metric labels and logs. */
  readonly upstream: string;
  readonly options?: Partial<BreakerOptions>;
}

export interface Lease {
  /**
   * Aborts when the breaker's timeout fires (reason: a BreakerTimeoutError); pass it to the
   * upstream request. Created on first read: a request that never looks costs no controller.
   */
  readonly signal: AbortSignal;
  /** The upstream answered (any status below 500). */
  succeeded(): void;
  failed(kind: FailureKind): void;
  /** succeeded() below 500, failed('5xx') from 500. */
  responded(status: number): void;
  /**
   * The request ended before the upstream answered, for no fault of it (the client left).
   * No evidence: counted as a success while the breaker is closed (opossum has no neutral
   * outcome; it only thins the error rate), as a failure otherwise, so that a probe whose
   * client left never closes a breaker (the next probe comes one resetTimeout later).
   */
  cancelled(): void;
}

export interface BreakerHooks {
  /** Clock for retryAfterMs; Date.now by default. */
  now?(): number;
  /** Every transition, for `ztgw_upstream_breaker_state{upstream,endpoint}` and a log line. */
  onStateChange?(endpoint: { readonly id: string; readonly upstream: string }, from: BreakerState, to: BreakerState): void;
}

export interface Breakers {
  /** null: open, or half-open with its probe in flight — answer 503 now. Throws for an unknown id. */
  admit(endpointId: string): Lease | null;
  state(endpointId: string): BreakerState;
  /** Would admit() hand out a lease now? (closed, or half-open with the probe slot free.) For the picker. */
  available(endpointId: string): boolean;
  /**
   * Milliseconds until an open breaker lets its next probe through (for Retry-After on the
   * 503); 0 when it is not open. An estimate: opossum starts its reset timer on opening.
   */
  retryAfterMs(endpointId: string): number;
  /** Every endpoint's state, for /readyz and /upstreams. */
  states(): Array<{ id: string; upstream: string; state: BreakerState; enabled: boolean }>;
  /**
   * Stops every breaker's timers, except those a newer set adopted. Leases in flight keep
   * their own timeout timer until they settle (at most timeoutMs). Afterwards admit() hands
   * out no-op leases: a request that began on the old runtime is not refused for a reload.
   */
  shutdown(): void;
}

/** The lease's signal's abort reason when the breaker's timeout fired. */
export class BreakerTimeoutError extends Error {
  static readonly code = 'ERR_BREAKER_TIMEOUT';
  readonly code = BreakerTimeoutError.code;
  constructor(timeoutMs: number) {
    super(`no upstream response within the breaker's ${timeoutMs} ms`);
    this.name = 'BreakerTimeoutError';
  }
}

// What a lease's promise rejects with; opossum only passes it around. Shared and frozen: an
// outcome needs no stack trace, and a request path should not pay for one.
const FAILURES: Readonly<Record<FailureKind | 'cancelled', Readonly<{ kind: string }>>> = Object.freeze({
  connect: Object.freeze({ kind: 'connect' }),
  timeout: Object.freeze({ kind: 'timeout' }),
  '5xx': Object.freeze({ kind: '5xx' }),
  cancelled: Object.freeze({ kind: 'cancelled' }),
});
const CANCELLED_WHILE_CLOSED = Object.freeze({ kind: 'cancelled-while-closed' });
const ignore = (): void => {};
const SETTLED = Promise.resolve();

class BreakerLease implements Lease {
  readonly promise: Promise<void>;
  #resolve!: () => void;
  #reject!: (reason: unknown) => void;
  #settled = false;
  #controller: AbortController | undefined;
  #timeout: BreakerTimeoutError | undefined;
  readonly #breaker: CircuitBreaker | undefined;

  constructor(breaker: CircuitBreaker | undefined) {
    this.#breaker = breaker;
    this.promise = breaker === undefined ? SETTLED : new Promise<void>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    if (breaker === undefined) this.#settled = true;
  }

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.#timeout !== undefined) this.#controller.abort(this.#timeout);
    }
    return this.#controller.signal;
  }

  /** opossum's timer fired: it has counted the failure and ignores whatever we say next. */
  timedOut(error: BreakerTimeoutError): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#timeout = error;
    this.#controller?.abort(error);
  }

  succeeded(): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#resolve();
  }

  failed(kind: FailureKind): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#reject(FAILURES[kind]);
  }

  responded(status: number): void {
    if (status >= 500) this.failed('5xx');
    else this.succeeded();
  }

  cancelled(): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#reject(this.#breaker?.closed === true ? CANCELLED_WHILE_CLOSED : FAILURES.cancelled);
  }
}

interface Entry {
  readonly id: string;
  readonly upstream: string;
  readonly options: BreakerOptions;
  /** undefined when disabled. */
  readonly breaker: CircuitBreaker<[BreakerLease], void> | undefined;
  state: BreakerState;
  /** Re-pointed when a newer set adopts the entry, so transitions reach the live runtime's metrics. */
  hooks: BreakerHooks;
  /** The set that built or last adopted this entry: only its shutdown() stops the breaker. */
  owner: object | undefined;
  /** When it last opened (hooks.now()), for retryAfterMs. */
  openedAt: number;
}

function resolveOptions(partial: Partial<BreakerOptions> | undefined, id: string): BreakerOptions {
  const o: BreakerOptions = { ...BREAKER_DEFAULTS, ...partial };
  const positive = ['timeoutMs', 'rollingCountTimeoutMs', 'rollingCountBuckets', 'resetTimeoutMs'] as const;
  for (const key of positive) {
    if (!Number.isInteger(o[key]) || o[key] <= 0) throw new RangeError(`breaker ${id}: ${key} must be a positive integer`);
  }
  if (!Number.isInteger(o.volumeThreshold) || o.volumeThreshold < 0) throw new RangeError(`breaker ${id}: volumeThreshold must be a non-negative integer`);
  if (!(o.errorThresholdPercentage >= 0 && o.errorThresholdPercentage <= 100)) throw new RangeError(`breaker ${id}: errorThresholdPercentage must be within 0..100`);
  // opossum rotates a bucket every floor(window / buckets) ms; 0 would be a busy interval.
  if (o.rollingCountTimeoutMs < o.rollingCountBuckets) throw new RangeError(`breaker ${id}: rollingCountTimeoutMs must be at least rollingCountBuckets`);
  return Object.freeze(o);
}

function sameOptions(a: BreakerOptions, b: BreakerOptions): boolean {
  return (Object.keys(a) as Array<keyof BreakerOptions>).every((k) => a[k] === b[k]);
}

const leaseAction = (lease: BreakerLease): Promise<void> => lease.promise;

function createEntry(spec: BreakerEndpoint, options: BreakerOptions, hooks: BreakerHooks): Entry {
  if (!options.enabled) return { id: spec.id, upstream: spec.upstream, options, breaker: undefined, state: 'closed', hooks, owner: undefined, openedAt: 0 };
  const breaker = new CircuitBreaker<[BreakerLease], void>(leaseAction, {
    name: spec.id,
    group: spec.upstream,
    timeout: options.timeoutMs,
    errorThresholdPercentage: options.errorThresholdPercentage,
    volumeThreshold: options.volumeThreshold,
    rollingCountTimeout: options.rollingCountTimeoutMs,
    rollingCountBuckets: options.rollingCountBuckets,
    resetTimeout: options.resetTimeoutMs,
    allowWarmUp: options.allowWarmUp,
    // Percentiles would sort every latency in the window on each failure, and snapshots are
    // a second interval timer per breaker that nothing listens to.
    rollingPercentilesEnabled: false,
    enableSnapshots: false,
    // A cancellation while closed is no evidence: opossum counts a filtered error as a success.
    errorFilter: (error: unknown) => error === CANCELLED_WHILE_CLOSED,
    // No abortController: opossum has one per breaker and a timeout aborts it, which would cut
    // every request in flight on the endpoint. Each lease has its own, aborted from 'timeout'.
  });
  const entry: Entry = { id: spec.id, upstream: spec.upstream, options, breaker, state: 'closed', hooks, owner: undefined, openedAt: 0 };
  const label = Object.freeze({ id: spec.id, upstream: spec.upstream });
  const moveTo = (to: BreakerState) => () => {
    const from = entry.state;
    if (from === to) return;
    entry.state = to;
    if (to === 'open') entry.openedAt = (entry.hooks.now ?? Date.now)();
    entry.hooks.onStateChange?.(label, from, to);
  };
  breaker.on('open', moveTo('open'));
  breaker.on('halfOpen', moveTo('half-open'));
  breaker.on('close', moveTo('closed'));
  // opossum passes the fire() arguments along: the lease whose own timer this was
  // (lib/circuit.js: emit('timeout', error, latency, args); @types/opossum shows only error).
  const events: EventEmitter = breaker;
  events.on('timeout', (_error: unknown, _latency: number, args: [BreakerLease]) => {
    args[0].timedOut(new BreakerTimeoutError(options.timeoutMs));
  });
  return entry;
}

/**
 * Builds a breaker per endpoint. With `previous` (the set of the runtime being replaced), an
 * endpoint with the same id, upstream and options keeps its breaker, state and window: a
 * reload must not close an open breaker and send a burst to an endpoint known to be down.
 */
export function createBreakers(endpoints: readonly BreakerEndpoint[], hooks: BreakerHooks = {}, previous?: Breakers): Breakers {
  const prior = previous === undefined ? undefined : ENTRIES.get(previous);
  const entries = new Map<string, Entry>();
  for (const spec of endpoints) {
    if (entries.has(spec.id)) throw new Error(`breaker: duplicate endpoint id ${spec.id}`);
    const options = resolveOptions(spec.options, spec.id);
    const old = prior?.get(spec.id);
    const reusable = old !== undefined && old.owner === previous && old.upstream === spec.upstream && sameOptions(old.options, options);
    entries.set(spec.id, reusable ? old : createEntry(spec, options, hooks));
  }
  let down = false;

  const get = (id: string): Entry => {
    const entry = entries.get(id);
    if (entry === undefined) throw new Error(`breaker: unknown endpoint ${id}`);
    return entry;
  };

  const breakers: Breakers = {
    admit(endpointId) {
      const breaker = get(endpointId).breaker;
      if (breaker === undefined || down) return new BreakerLease(undefined);
      // opossum would refuse these too, but with a rejected promise a tick later; the proxy
      // must answer at once. Half-open: opossum clears pendingClose when it lets the probe
      // through, so concurrent requests during the probe see neither flag.
      if (!breaker.closed && !breaker.pendingClose) return null;
      const lease = new BreakerLease(breaker);
      breaker.fire(lease).catch(ignore); // the outcome is the lease's; opossum's copy of it is not needed
      return lease;
    },
    state: (endpointId) => get(endpointId).state,
    retryAfterMs(endpointId) {
      const entry = get(endpointId);
      if (entry.state !== 'open') return 0;
      return Math.max(0, entry.openedAt + entry.options.resetTimeoutMs - (hooks.now ?? Date.now)());
    },
    available(endpointId) {
      const breaker = get(endpointId).breaker;
      return breaker === undefined || down || breaker.closed || breaker.pendingClose;
    },
    states: () => [...entries.values()].map((e) => ({ id: e.id, upstream: e.upstream, state: e.state, enabled: e.breaker !== undefined })),
    shutdown() {
      if (down) return;
      down = true;
      for (const entry of entries.values()) if (entry.owner === breakers) entry.breaker?.shutdown();
    },
  };
  for (const entry of entries.values()) {
    entry.owner = breakers;
    entry.hooks = hooks;
  }
  ENTRIES.set(breakers, entries);
  return breakers;
}

// Each set's entries, for adoption by the next one. A WeakMap: a set no one holds is
// collected with them.
const ENTRIES = new WeakMap<Breakers, ReadonlyMap<string, Entry>>();
