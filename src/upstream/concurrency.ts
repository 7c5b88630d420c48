// Fair share of an upstream: a bulkhead (at most N requests in flight to an upstream) and a
// per-principal cap inside it (one subject on one device holds at most M of them). Both
// refuse at once rather than queue: a queue in front of a saturated upstream only adds
// latency and memory, and the starvation this stops — one token holding every connection
// with downloads it never reads — is precisely a principal that would fill any queue too.
// Counters are plain numbers per upstream and a Map per principal that holds only principals
// with a request in flight (deleted at zero), so memory follows in-flight requests, not the
// number of principals ever seen.

export interface ConcurrencyLimit {
  /** Requests in flight to the upstream; undefined: no bulkhead. */
  readonly maxInFlight?: number;
  /** Requests in flight per principal (subject + device) to the upstream; undefined: no cap. */
  readonly maxInFlightPerPrincipal?: number;
}

export type Refusal = Readonly<{ reason: 'upstream_full' | 'principal_full' }>;

/** The upstream is at its bulkhead: 503 (it is the upstream that is busy). */
export const UPSTREAM_FULL: Refusal = Object.freeze({ reason: 'upstream_full' });
/** This principal holds its share: 429 (it is the client that is asking too much). */
export const PRINCIPAL_FULL: Refusal = Object.freeze({ reason: 'principal_full' });

export type Release = () => void;

export interface ConcurrencyLimits {
  /**
   * A slot, released by the returned function (idempotent; call it when the response ends,
   * however it ends), or a refusal. `principal` undefined (an anonymous route): the bulkhead
   * only. An upstream without limits always gets a slot (it is still counted).
   */
  tryAcquire(upstream: string, principal: string | undefined): Release | Refusal;
  inFlight(upstream: string): number;
  /** Principals with a request in flight to the upstream (the per-principal map's size). */
  principals(upstream: string): number;
}

/**
 * The principal key for tryAcquire: subject and device joined so that no two pairs collide
 * whatever characters a subject holds (the subject's length goes first).
 */
export function principalKey(subject: string, device: string | undefined): string {
  return device === undefined ? `${subject.length}:${subject}` : `${subject.length}:${subject}:${device}`;
}

export function isRefusal(value: Release | Refusal): value is Refusal {
  return typeof value !== 'function';
}

interface Counters {
  inFlight: number;
  readonly byPrincipal: Map<string, number>;
}

interface UpstreamState {
  readonly max: number;
  readonly maxPerPrincipal: number;
  readonly counters: Counters;
}

function limitValue(value: number | undefined, what: string, upstream: string): number {
  if (value === undefined) return Infinity;
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`concurrency: ${what} of ${upstream} must be a positive integer`);
  return value;
}

/**
 * `previous`: the limits of the runtime being replaced. An upstream that keeps its name keeps
 * its counters, so the requests in flight across a reload still count against the new limits
 * (without it, a reload would briefly allow twice the bulkhead), and their releases land on
 * the same counters.
 */
export function createConcurrencyLimits(limits: ReadonlyMap<string, ConcurrencyLimit>, previous?: ConcurrencyLimits): ConcurrencyLimits {
  const prior = previous === undefined ? undefined : COUNTERS.get(previous);
  const states = new Map<string, UpstreamState>();
  const shared = new Map<string, Counters>();
  for (const [upstream, limit] of limits) {
    const counters = prior?.get(upstream) ?? { inFlight: 0, byPrincipal: new Map() };
    shared.set(upstream, counters);
    states.set(upstream, {
      max: limitValue(limit.maxInFlight, 'maxInFlight', upstream),
      maxPerPrincipal: limitValue(limit.maxInFlightPerPrincipal, 'maxInFlightPerPrincipal', upstream),
      counters,
    });
  }

  const get = (upstream: string): UpstreamState => {
    const state = states.get(upstream);
    if (state === undefined) throw new Error(`concurrency: unknown upstream ${upstream}`);
    return state;
  };

  const limitsApi: ConcurrencyLimits = {
    tryAcquire(upstream, principal) {
      const { max, maxPerPrincipal, counters } = get(upstream);
      if (counters.inFlight >= max) return UPSTREAM_FULL;
      if (principal !== undefined) {
        // The per-principal map is kept even when uncapped: the count is what /upstreams and a
        // later reload that adds a cap would need, and it costs one Map update.
        const held = counters.byPrincipal.get(principal) ?? 0;
        if (held >= maxPerPrincipal) return PRINCIPAL_FULL;
        counters.byPrincipal.set(principal, held + 1);
      }
      counters.inFlight++;
      let done = false;
      return () => {
        if (done) return;
        done = true;
        counters.inFlight--;
        if (principal === undefined) return;
        const now = (counters.byPrincipal.get(principal) ?? 1) - 1;
        if (now === 0) counters.byPrincipal.delete(principal);
        else counters.byPrincipal.set(principal, now);
      };
    },
    inFlight: (upstream) => get(upstream).counters.inFlight,
    principals: (upstream) => get(upstream).counters.byPrincipal.size,
  };
  COUNTERS.set(limitsApi, shared);
  return limitsApi;
}

const COUNTERS = new WeakMap<ConcurrencyLimits, ReadonlyMap<string, Counters>>();
