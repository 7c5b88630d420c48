// Retries that cannot multiply load during an outage: Envoy's retry budget
// (envoy/config/cluster/v3/circuit_breaker.proto RetryBudget). A fixed "retry up to N times"
// turns every failing request into N+1 requests exactly when the upstream is weakest; a budget
// lets retries be at most a share of the requests in flight, plus a small floor so that a
// quiet upstream can still retry at all. Envoy computes the allowance as an integer
// (uint64 of percent × active), so the share is rounded down here too.

export interface RetryBudgetOptions {
  /** Concurrent retries as a percentage of active requests (Envoy's default 20). */
  readonly budgetPercent: number;
  /** Retries always allowed concurrently, whatever the traffic (Envoy's default 3). */
  readonly minRetryConcurrency: number;
}

export const RETRY_BUDGET_DEFAULTS: RetryBudgetOptions = Object.freeze({ budgetPercent: 20, minRetryConcurrency: 3 });

export interface RetryBudget {
  /**
   * A client request bound for the upstream begins (once per request, not per attempt); the
   * returned release (idempotent) ends it. The budget is a share of these.
   */
  begin(): () => void;
  /** A retry slot while activeRetries < max(minRetryConcurrency, ⌊budgetPercent% × active⌋); its release ends the retry. undefined: no retry. */
  tryRetry(): (() => void) | undefined;
  readonly active: number;
  readonly activeRetries: number;
}

/** How many retries may be in flight with `active` requests in flight. */
export function retryAllowance(active: number, options: RetryBudgetOptions): number {
  return Math.max(options.minRetryConcurrency, Math.floor((options.budgetPercent * active) / 100));
}

/** One per upstream, like Envoy's per-cluster budget. */
export function createRetryBudget(partial: Partial<RetryBudgetOptions> = {}): RetryBudget {
  const options: RetryBudgetOptions = { ...RETRY_BUDGET_DEFAULTS, ...partial };
  if (!(options.budgetPercent >= 0 && options.budgetPercent <= 100)) throw new RangeError('retry budget: budgetPercent must be within 0..100');
  if (!Number.isInteger(options.minRetryConcurrency) || options.minRetryConcurrency < 0) {
    throw new RangeError('retry budget: minRetryConcurrency must be a non-negative integer');
  }
  let active = 0;
  let activeRetries = 0;
  return {
    begin() {
      active++;
      let done = false;
      return () => {
        if (done) return;
        done = true;
        active--;
      };
    },
    tryRetry() {
      if (activeRetries >= retryAllowance(active, options)) return undefined;
      activeRetries++;
      let done = false;
      return () => {
        if (done) return;
        done = true;
        activeRetries--;
      };
    },
    get active() {
      return active;
    },
    get activeRetries() {
      return activeRetries;
    },
  };
}

// RFC 9110 §9.2.2: the idempotent methods. POST and PATCH are not; CONNECT is a tunnel.
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);

/**
 * May a failed attempt be sent again? Idempotent methods only, and only without a request
 * body: a streamed body has been consumed by the first attempt and is not kept to be replayed
 * (buffering every PUT to allow a retry would let a client park large bodies in the gateway).
 */
export function isRetryable(method: string, hasBody: boolean): boolean {
  return !hasBody && IDEMPOTENT.has(method);
}
