// Upstream protection for one Runtime, on the request path: the fair share and bulkhead
// (upstream/concurrency.ts), endpoint choice with failover (upstream/endpoints.ts), a breaker
// per endpoint (upstream/breaker.ts) and a retry budget per upstream (upstream/retry-budget.ts),
// put together as one call per client request. The proxy and the WebSocket relay ask the call
// for an endpoint, report what the upstream did, maybe ask for a retry, and end it when the
// response ends, however it ends; the call releases every slot it took exactly once.
//
// Each part is built with the previous Runtime's guard as `previous`, so a reload keeps the
// breakers' state and windows, the in-flight counts and the retry budgets: a reload must not
// close an open breaker nor briefly allow twice the bulkhead.
import type { Logger } from 'pino';
import { createBreakers, type Breakers, type BreakerState, type FailureKind, type Lease } from '../upstream/breaker.ts';
import { createPicker, isNoHealthyEndpoint, type Endpoint, type Picker } from '../upstream/endpoints.ts';
import { createConcurrencyLimits, isRefusal, principalKey, PRINCIPAL_FULL, type ConcurrencyLimits } from '../upstream/concurrency.ts';
import { createRetryBudget, isRetryable, type RetryBudget, type RetryBudgetOptions } from '../upstream/retry-budget.ts';
import { PrincipalBusyError, UpstreamBusyError, UpstreamUnavailableError } from '../core/errors.ts';
import type { GatewayMetrics } from '../observability/metrics.ts';
import type { RequestContext } from './context.ts';

/** An endpoint as config/upstreams.ts compiles it (CompiledEndpoint): this stage's own view of it. */
export interface GuardEndpoint {
  /** "<upstream>/<endpoint>". */
  readonly id: string;
  readonly upstream: string;
  readonly name: string;
  readonly origin: string;
  /** Prepended to forwarded paths; "" for none. */
  readonly basePath: string;
  readonly priority: number;
}

/** An upstream as config/upstreams.ts compiles it (CompiledUpstream), defaults applied. */
export interface GuardUpstream {
  readonly name: string;
  readonly endpoints: readonly GuardEndpoint[];
  readonly maxInFlight: number;
  readonly maxInFlightPerPrincipal: number;
  readonly breaker: {
    readonly enabled: boolean;
    readonly errorThresholdPercentage: number;
    readonly volumeThreshold: number;
    readonly rollingCountTimeoutMs: number;
    readonly rollingCountBuckets: number;
    readonly resetTimeoutMs: number;
  };
  readonly retry: { readonly attempts: number; readonly budgetPercent: number; readonly minRetryConcurrency: number };
}

export interface CallOptions {
  /** The upstream's name: a policy obligation's, or the route's. */
  readonly upstream: string;
  /** The fair-share key (callOptionsFor): subject + device, or the client IP on a public route. */
  readonly principal: string;
  /** routes[].circuitBreaker: false picks endpoints whatever their breakers say and reports nothing to them. */
  readonly breakers: boolean;
  /** Idempotent method without a request body (retry-budget.ts isRetryable). */
  readonly retryable: boolean;
}

/** What a failed attempt was: an upstream failure the breaker counts, or the request's own end (the client left, its body failed). */
export type AttemptFailure = FailureKind | 'cancelled';

export interface UpstreamCall {
  readonly upstream: GuardUpstream;
  /**
   * The endpoint of the first attempt, its breaker admitted. Throws UpstreamUnavailableError
   * (Retry-After: until the next probe) when every endpoint is out.
   */
  first(): GuardEndpoint;
  /** The attempt's upstream answered with this status (its head arrived). */
  responded(status: number): void;
  /** The attempt failed before any response. */
  failed(kind: AttemptFailure): void;
  /**
   * After failed(): the endpoint of one more attempt, or undefined (no attempts left, not
   * retryable, the retry budget refused, or no endpoint is in): then the original failure is
   * the answer. Another endpoint when there is one.
   */
  retry(): GuardEndpoint | undefined;
  /** The response ended (finished, closed, refused): every slot is released; an attempt still open counts as cancelled. Idempotent. */
  end(): void;
}

export interface EndpointState {
  /** "<upstream>/<endpoint>". */
  readonly id: string;
  readonly upstream: string;
  readonly endpoint: string;
  readonly state: BreakerState;
  readonly enabled: boolean;
}

export interface UpstreamGuard {
  /** A slot in the upstream's bulkhead and the principal's share; throws UpstreamBusyError (503) or PrincipalBusyError (429). */
  begin(options: CallOptions): UpstreamCall;
  /** Every endpoint's breaker, for /readyz. */
  states(): EndpointState[];
  /** Requests holding a slot of the upstream, and the principals among them (tests, /upstreams). */
  inFlight(upstream: string): number;
  principals(upstream: string): number;
  /** Stops the breakers' timers (except those a newer guard adopted); requests in flight finish unrefused. */
  shutdown(): void;
}

export interface GuardDeps {
  readonly metrics: Pick<GatewayMetrics, 'breakerState' | 'upstreamRefusals' | 'upstreamRetries'>;
  readonly logger: Logger;
  /**
   * The breaker's own per-request timer. The one upstream timeout is the route's (timeoutMs,
   * to the response head, which the proxy applies and reports as a 'timeout' failure); opossum
   * insists on a timer of its own, so it is set past any route's timeout as a backstop (see
   * BREAKER_BACKSTOP_MS) rather than made a second, competing setting.
   */
  readonly breakerTimeoutMs?: number;
  readonly now?: () => number;
}

/**
 * Past the longest routes[].timeoutMs the schema allows (1 h): the backstop only fires for a
 * request that waited in the connection pool's queue that long (undici starts the route's
 * head timeout when the request is written), and is then a failure of a saturated upstream.
 * A constant, not derived from the routes, so that editing a route's timeout does not change
 * every breaker's options and reset their state on reload.
 */
export const BREAKER_BACKSTOP_MS = 3_600_000 + 1_000;

const STATE_VALUE: Readonly<Record<BreakerState, number>> = { closed: 0, 'half-open': 1, open: 2 };

interface Parts {
  readonly breakers: Breakers;
  readonly picker: Picker;
  readonly limits: ConcurrencyLimits;
  readonly budgets: ReadonlyMap<string, { readonly options: RetryBudgetOptions; readonly budget: RetryBudget }>;
  readonly endpoints: ReadonlyMap<string, GuardEndpoint>;
}
const PARTS = new WeakMap<UpstreamGuard, Parts>();

/** The fair-share key of a request: subject + device; on a public route (no subject) the client's address. */
export function principalOf(ctx: RequestContext): string {
  const subject = ctx.identity?.subject;
  // "ip:" cannot collide with principalKey's "<length>:" form.
  return subject === undefined ? `ip:${ctx.clientIp}` : principalKey(subject, ctx.device?.id);
}

/** The call options for a proxied request (or a WebSocket handshake, which is never retried). */
export function callOptionsFor(ctx: RequestContext): CallOptions {
  const route = ctx.route!;
  const h = ctx.headers;
  const hasBody = h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0');
  return {
    upstream: ctx.upstreamName ?? route.upstream,
    principal: principalOf(ctx),
    breakers: route.circuitBreaker,
    retryable: !ctx.isUpgrade && isRetryable(ctx.method, hasBody),
  };
}

const sameBudget = (a: RetryBudgetOptions, b: RetryBudgetOptions): boolean => a.budgetPercent === b.budgetPercent && a.minRetryConcurrency === b.minRetryConcurrency;

export function createUpstreamGuard(upstreams: ReadonlyMap<string, GuardUpstream>, deps: GuardDeps, previous?: UpstreamGuard): UpstreamGuard {
  const { metrics, logger } = deps;
  const prior = previous === undefined ? undefined : PARTS.get(previous);
  const endpoints = new Map<string, GuardEndpoint>();
  for (const u of upstreams.values()) for (const e of u.endpoints) endpoints.set(e.id, e);

  const breakers = createBreakers(
    [...endpoints.values()].map((e) => ({
      id: e.id,
      upstream: e.upstream,
      options: { ...upstreams.get(e.upstream)!.breaker, timeoutMs: deps.breakerTimeoutMs ?? BREAKER_BACKSTOP_MS, allowWarmUp: false },
    })),
    {
      now: deps.now,
      onStateChange(endpoint, from, to) {
        const e = endpoints.get(endpoint.id);
        const labels = { upstream: endpoint.upstream, endpoint: e?.name ?? endpoint.id };
        metrics.breakerState.set(labels, STATE_VALUE[to]);
        const line = { ...labels, from, to };
        if (to === 'open') logger.warn(line, 'circuit breaker opened: endpoint taken out until a probe succeeds');
        else if (to === 'closed') logger.info(line, 'circuit breaker closed: endpoint back in');
        else logger.info(line, 'circuit breaker half-open: next request is the probe');
      },
    },
    prior?.breakers,
  );
  // circuitBreaker: false on a route: its requests pick endpoints whatever their breakers say.
  // One picker for both (so in-flight counts are one), asked with this flag set around a pick.
  let bypassBreakers = false;
  const asPicked = new Map<string, Endpoint>();
  for (const e of endpoints.values()) asPicked.set(e.id, { id: e.id, url: e.origin + e.basePath, priority: e.priority });
  const picker = createPicker(
    [...upstreams.values()].map((u) => ({ name: u.name, endpoints: u.endpoints.map((e) => asPicked.get(e.id)!) })),
    { available: (id) => bypassBreakers || breakers.available(id) },
    prior?.picker,
  );
  const limits = createConcurrencyLimits(
    new Map([...upstreams.values()].map((u) => [u.name, { maxInFlight: u.maxInFlight, maxInFlightPerPrincipal: u.maxInFlightPerPrincipal }])),
    prior?.limits,
  );
  const budgets = new Map<string, { options: RetryBudgetOptions; budget: RetryBudget }>();
  for (const u of upstreams.values()) {
    const options = { budgetPercent: u.retry.budgetPercent, minRetryConcurrency: u.retry.minRetryConcurrency };
    const old = prior?.budgets.get(u.name);
    // The budget counts requests in flight: kept across a reload, or the retries of requests
    // begun before it would be allowed again on top of those begun after.
    budgets.set(u.name, old !== undefined && sameBudget(old.options, options) ? old : { options, budget: createRetryBudget(options) });
  }

  // Every endpoint shows as a series from the start (an alert on state 2 works before the
  // first opening), with its present state when its breaker was kept over a reload.
  for (const s of breakers.states()) metrics.breakerState.set({ upstream: s.upstream, endpoint: endpoints.get(s.id)!.name }, STATE_VALUE[s.state]);
  for (const id of prior?.endpoints.keys() ?? []) {
    if (endpoints.has(id)) continue;
    const gone = prior!.endpoints.get(id)!;
    metrics.breakerState.remove({ upstream: gone.upstream, endpoint: gone.name });
  }

  const refuse = (upstream: string, reason: 'upstream_busy' | 'principal_busy' | 'unavailable'): void => metrics.upstreamRefusals.inc({ upstream, reason });

  /** Seconds until the first of the upstream's open breakers lets a probe through; 1 when none is open (a probe is in flight). */
  const retryAfterOf = (upstream: GuardUpstream): string => {
    let ms = Infinity;
    for (const e of upstream.endpoints) if (breakers.state(e.id) === 'open') ms = Math.min(ms, breakers.retryAfterMs(e.id));
    return String(ms === Infinity ? 1 : Math.max(1, Math.ceil(ms / 1000)));
  };

  function pickAndAdmit(upstream: GuardUpstream, useBreakers: boolean, tried: ReadonlySet<string> | undefined): { endpoint: GuardEndpoint; lease: Lease | undefined } | undefined {
    let refused: Set<string> | undefined;
    for (;;) {
      let exclude: ReadonlySet<string> | undefined = tried;
      if (refused !== undefined) exclude = tried === undefined ? refused : new Set([...tried, ...refused]);
      bypassBreakers = !useBreakers;
      let picked;
      try {
        picked = picker.pick(upstream.name, exclude);
        // A retry goes to another endpoint when there is one, else to the same one again.
        if (isNoHealthyEndpoint(picked) && tried !== undefined) picked = picker.pick(upstream.name, refused);
      } finally {
        bypassBreakers = false;
      }
      if (isNoHealthyEndpoint(picked)) return undefined;
      const endpoint = endpoints.get(picked.id)!;
      if (!useBreakers) return { endpoint, lease: undefined };
      // available() said yes a moment ago; admit() can still say no when another request
      // took the half-open probe slot in between: that endpoint is out, try the next.
      const lease = breakers.admit(endpoint.id);
      if (lease !== null) return { endpoint, lease };
      (refused ??= new Set()).add(endpoint.id);
    }
  }

  const guard: UpstreamGuard = {
    begin(options) {
      const upstream = upstreams.get(options.upstream);
      if (upstream === undefined) throw new Error(`upstream guard: unknown upstream ${options.upstream}`); // compile checks every name
      const slot = limits.tryAcquire(upstream.name, options.principal);
      if (isRefusal(slot)) {
        if (slot === PRINCIPAL_FULL) {
          refuse(upstream.name, 'principal_busy');
          throw new PrincipalBusyError(`principal holds ${upstream.maxInFlightPerPrincipal} requests to ${upstream.name}`);
        }
        refuse(upstream.name, 'upstream_busy');
        throw new UpstreamBusyError(`${upstream.maxInFlight} requests in flight to ${upstream.name}`);
      }
      const budgetEntry = budgets.get(upstream.name)!;
      const endBudget = budgetEntry.budget.begin();
      let retriesLeft = options.retryable ? upstream.retry.attempts : 0;
      let tried: Set<string> | undefined;
      // The attempt in flight.
      let lease: Lease | undefined;
      let untrack: (() => void) | undefined;
      let endRetry: (() => void) | undefined;
      let ended = false;
      // The endpoint of the attempt in flight, which a retry avoids when it failed.
      let current = '';

      const closeAttempt = (): void => {
        untrack?.();
        endRetry?.();
        lease = untrack = endRetry = undefined;
      };
      const open = (chosen: { endpoint: GuardEndpoint; lease: Lease | undefined }): GuardEndpoint => {
        lease = chosen.lease;
        current = chosen.endpoint.id;
        untrack = picker.track(asPicked.get(chosen.endpoint.id)!);
        return chosen.endpoint;
      };

      const call: UpstreamCall = {
        upstream,
        first() {
          const chosen = pickAndAdmit(upstream, options.breakers, undefined);
          if (chosen === undefined) {
            refuse(upstream.name, 'unavailable');
            throw new UpstreamUnavailableError(`every endpoint of ${upstream.name} is out`, { headers: { 'retry-after': retryAfterOf(upstream) } });
          }
          return open(chosen);
        },
        responded(status) {
          lease?.responded(status);
        },
        failed(kind) {
          if (kind === 'cancelled') lease?.cancelled();
          else lease?.failed(kind);
          // Only an endpoint that failed is avoided by a retry; the attempt's slots end now.
          (tried ??= new Set()).add(current);
          closeAttempt();
        },
        retry() {
          if (ended || retriesLeft <= 0) return undefined;
          const slotOfRetry = budgetEntry.budget.tryRetry();
          if (slotOfRetry === undefined) {
            metrics.upstreamRetries.inc({ upstream: upstream.name, result: 'refused_by_budget' });
            return undefined;
          }
          const chosen = pickAndAdmit(upstream, options.breakers, tried);
          if (chosen === undefined) {
            slotOfRetry();
            return undefined;
          }
          retriesLeft--;
          metrics.upstreamRetries.inc({ upstream: upstream.name, result: 'sent' });
          const endpoint = open(chosen);
          endRetry = slotOfRetry;
          return endpoint;
        },
        end() {
          if (ended) return;
          ended = true;
          lease?.cancelled(); // a settled lease ignores it
          closeAttempt();
          endBudget();
          slot();
        },
      };
      return call;
    },
    states: () => breakers.states().map((s) => ({ ...s, endpoint: endpoints.get(s.id)!.name })),
    inFlight: (upstream) => limits.inFlight(upstream),
    principals: (upstream) => limits.principals(upstream),
    shutdown: () => breakers.shutdown(),
  };
  PARTS.set(guard, { breakers, picker, limits, budgets, endpoints });
  return guard;
}
