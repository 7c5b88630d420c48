// Prometheus metrics, on a registry owned by one gateway instance (never prom-client's
// global one), so two gateways in one process — tests, benchmarks — do not collide.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { LeanCounter, LeanHistogram } from './lean-metrics.ts';

// Latency buckets in seconds: sub-millisecond resolution for the gateway's own overhead,
// up to the default upstream timeout.
const BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export type Decision = 'allow' | 'deny' | 'error';

export interface GatewayMetrics {
  readonly registry: Registry;
  // Touched on every request: the lean versions (see lean-metrics.ts for why).
  readonly requests: LeanCounter<'route' | 'status' | 'decision'>;
  readonly requestDuration: LeanHistogram;
  readonly upstreamDuration: LeanHistogram;
  readonly upstreamErrors: Counter<'route' | 'code'>;
  readonly authFailures: Counter<'reason'>;
  readonly configReloads: Counter<'result'>;
  /** 1 while the config file holds a change to a field only a restart applies (config/reload.ts). */
  readonly configRestartRequired: Gauge;
  readonly dependencyErrors: Counter<'dependency'>;
  /** DPoP refusals by the verifier's closed reason set (identity/dpop.ts DpopFailureReason). */
  readonly dpopFailures: Counter<'reason'>;
  readonly replayRefusals: Counter<'reason'>;
  readonly policyDecisions: LeanCounter<'effect'>;
  readonly policyRuleErrors: LeanCounter<'policy' | 'rule'>;
  readonly policyReloads: Counter<'result'>;
  readonly decisionLinesSuppressed: Counter;
  /** TLS connections closed for trying to renegotiate (server/tls-renegotiation.ts). */
  readonly tlsRenegotiationsRefused: Counter;
  /** Rate-limit checks by tier and result (allowed, limited, degraded_allow, degraded_deny, local). */
  readonly rateLimitChecks: LeanCounter<'tier' | 'result'>;
  /** 1 while the rate-limit store answers, 0 while it is failing (each tier's onStoreFailure applies). */
  readonly rateLimitStoreUp: Gauge;
  /** Circuit breaker state per upstream endpoint: 0 closed, 1 half-open, 2 open. */
  readonly breakerState: Gauge<'upstream' | 'endpoint'>;
  /** Requests answered by the gateway without contacting the upstream, by reason. */
  readonly upstreamRefusals: Counter<'upstream' | 'reason'>;
  /** Retries of upstream requests, by result (sent, refused_by_budget). */
  readonly upstreamRetries: Counter<'upstream' | 'result'>;
  /** Admin-plane requests refused: host (a foreign Host: DNS rebinding), origin (a web page elsewhere), token, bad_host. */
  readonly adminRefusals: Counter<'reason'>;
  /** Anomaly scores of scored requests, by route. */
  readonly riskScore: LeanHistogram;
  /** Scored requests over the flag threshold, by route. */
  readonly riskFlagged: LeanCounter<'route'>;
  /** Requests left without a score, by reason: inference (the run failed), unavailable (no model: degraded). */
  readonly riskUnscored: Counter<'reason'>;
  /** Rows per model run (micro-batch sizes). */
  readonly riskBatchRows: Histogram;
  readonly riskStageSeconds: Histogram;
  /** 1 while a model scores, 0 in degraded mode (risk.onModelError: degraded and no model). */
  readonly riskModelUp: Gauge;
  /** Model (re)loads, by result (ok, failed: the running model, or none, stays). */
  readonly riskModelLoads: Counter<'result'>;
}

export function createMetrics(): GatewayMetrics {
  const registry = new Registry();
  // Process, GC and event-loop-lag metrics (nodejs_eventloop_lag_seconds…).
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    registry,
    requests: new LeanCounter({
      name: 'ztgw_requests_total',
      help: 'Requests answered, by route, HTTP status and access decision.',
      labelNames: ['route', 'status', 'decision'],
      registers,
    }),
    requestDuration: new LeanHistogram({
      name: 'ztgw_request_duration_seconds',
      help: 'Time from request received to response finished, including the upstream.',
      label: 'route',
      buckets: BUCKETS,
      registers,
    }),
    upstreamDuration: new LeanHistogram({
      name: 'ztgw_upstream_duration_seconds',
      help: 'Time from forwarding a request to receiving the upstream response headers.',
      label: 'route',
      buckets: BUCKETS,
      registers,
    }),
    upstreamErrors: new Counter({
      name: 'ztgw_upstream_errors_total',
      help: 'Upstream requests that failed without a response, by error code.',
      labelNames: ['route', 'code'],
      registers,
    }),
    authFailures: new Counter({
      name: 'ztgw_auth_failures_total',
      help: 'Requests refused by authentication (401) or authorization (403: policy deny, revoked or untrusted device), by error code: the series to alert on for replays and denies.',
      labelNames: ['reason'],
      registers,
    }),
    dpopFailures: new Counter({
      name: 'ztgw_dpop_failures_total',
      help: 'DPoP-bound requests refused, by reason: jti_replay (a captured proof replayed), htu, htm, iat, ath, jkt_mismatch (another key), signature, nonce/nonce_missing (normal nonce round trip), scheme (a DPoP-bound token sent as Bearer), and the other proof checks.',
      labelNames: ['reason'],
      registers,
    }),
    dependencyErrors: new Counter({
      name: 'ztgw_dependency_errors_total',
      help: 'Errors talking to a dependency (redis, device registry); requests needing it fail closed.',
      labelNames: ['dependency'],
      registers,
    }),
    replayRefusals: new Counter({
      name: 'ztgw_dpop_replay_cache_refusals_total',
      help: 'DPoP proofs refused (503) because the in-memory replay cache could not remember their jti without forgetting a live one: reason cache_full (every entry live: raise identity.dpop.replayCacheMaxEntries or use Redis) or key_full (one key holds its identity.dpop.replayCacheKeyShare: a client flooding proofs).',
      labelNames: ['reason'],
      registers,
    }),
    policyDecisions: new LeanCounter({
      name: 'ztgw_policy_decisions_total',
      help: 'Policy decisions, by effect (allow, deny, step_up).',
      labelNames: ['effect'],
      registers,
    }),
    policyRuleErrors: new LeanCounter({
      name: 'ztgw_policy_rule_errors_total',
      help: 'Conditions that failed at run time (never granting: not matched for allow, matched for deny/step_up).',
      labelNames: ['policy', 'rule'],
      registers,
    }),
    policyReloads: new Counter({
      name: 'ztgw_policy_reloads_total',
      help: 'Policy set reloads, by result (failed: the last good set stays active).',
      labelNames: ['result'],
      registers,
    }),
    decisionLinesSuppressed: new Counter({
      name: 'ztgw_decision_lines_suppressed_total',
      help: 'Decision lines not written because their principal was over its line budget (policies.decisionLog.perPrincipalPerSecond); the next line written for that principal carries "suppressed".',
      registers,
    }),
    rateLimitChecks: new LeanCounter({
      name: 'ztgw_rate_limit_checks_total',
      help: 'Rate-limit tier checks, by tier and result: allowed, limited (429), degraded_allow / degraded_deny (the store failed and onStoreFailure decided), local (the store failed, an in-process limit decided).',
      labelNames: ['tier', 'result'],
      registers,
    }),
    rateLimitStoreUp: new Gauge({
      name: 'ztgw_rate_limit_store_up',
      help: '1 while the rate-limit store (Redis) answers within limits.timeoutMs, 0 while it fails (each tier\'s onStoreFailure applies); always 1 for the memory store.',
      registers,
    }),
    breakerState: new Gauge({
      name: 'ztgw_upstream_breaker_state',
      help: 'Circuit breaker state per upstream endpoint: 0 closed (traffic flows), 1 half-open (one probe in flight), 2 open (refused at once, the endpoint is not contacted).',
      labelNames: ['upstream', 'endpoint'],
      registers,
    }),
    upstreamRefusals: new Counter({
      name: 'ztgw_upstream_refusals_total',
      help: 'Requests answered without contacting the upstream, by reason: upstream_busy (bulkhead full, 503), principal_busy (fair share, 429), unavailable (every endpoint\'s breaker open, 503).',
      labelNames: ['upstream', 'reason'],
      registers,
    }),
    upstreamRetries: new Counter({
      name: 'ztgw_upstream_retries_total',
      help: 'Upstream retries of idempotent requests, by result: sent, or refused_by_budget (the retry budget kept them from multiplying load).',
      labelNames: ['upstream', 'result'],
      registers,
    }),
    adminRefusals: new Counter({
      name: 'ztgw_admin_refusals_total',
      help: 'Admin-plane requests refused, by reason: host (Host not one the admin plane answers: DNS rebinding), origin (a foreign Origin or Sec-Fetch-Site: a web page elsewhere), token (missing or wrong admin token), bad_host (missing, repeated or malformed Host).',
      labelNames: ['reason'],
      registers,
    }),
    riskScore: new LeanHistogram({
      name: 'ztgw_risk_score',
      help: 'Anomaly scores in [0, 1] of scored requests, by route.',
      label: 'route',
      buckets: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99],
      registers,
    }),
    riskFlagged: new LeanCounter({
      name: 'ztgw_risk_flagged_total',
      help: 'Requests whose anomaly score was over the flag threshold (risk.flagged), by route.',
      labelNames: ['route'],
      registers,
    }),
    riskUnscored: new Counter({
      name: 'ztgw_risk_unscored_total',
      help: 'Requests on non-public routes left without a risk score (risk empty; policies reading it fail closed), by reason: inference (the model run failed), unavailable (no model loaded: degraded mode).',
      labelNames: ['reason'],
      registers,
    }),
    riskBatchRows: new Histogram({
      name: 'ztgw_risk_batch_rows',
      help: 'Rows scored per model run: concurrent requests share one run (micro-batching).',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers,
    }),
    riskStageSeconds: new Histogram({
      name: 'ztgw_risk_stage_seconds',
      help: 'Time a scored request spent in the risk stage: feature extraction, waiting for its batch and the model run (the latency the stage adds).',
      buckets: [0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1],
      registers,
    }),
    riskModelUp: new Gauge({
      name: 'ztgw_risk_model_up',
      help: '1 while the anomaly model scores requests, 0 while it is configured but not loaded (degraded mode).',
      registers,
    }),
    riskModelLoads: new Counter({
      name: 'ztgw_risk_model_loads_total',
      help: 'Anomaly model loads at start and on reload, by result (failed: the running model, if any, stays; the reason is on /readyz).',
      labelNames: ['result'],
      registers,
    }),
    tlsRenegotiationsRefused: new Counter({
      name: 'ztgw_tls_renegotiations_refused_total',
      help: 'Data-plane TLS connections closed because the client tried to renegotiate (TLS 1.2): an old client or a handshake-flooding one.',
      registers,
    }),
    configReloads: new Counter({
      name: 'ztgw_config_reloads_total',
      help: 'Configuration reload attempts, by result (ok or failed: the old config and policy set stay, the reason is on /readyz).',
      labelNames: ['result'],
      registers,
    }),
    configRestartRequired: new Gauge({
      name: 'ztgw_config_restart_required',
      help: '1 when the last applied reload changed fields that only a restart applies (listen addresses, admin plane, Redis URL, log level and files, device registry…); /readyz names them.',
      registers,
    }),
  };
}
