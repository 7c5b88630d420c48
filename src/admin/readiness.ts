// /readyz: is this instance fit to take traffic? Config loaded, not draining, and every
// configured dependency reachable. Each check names itself so an operator sees which failed.
import type { Redis } from 'ioredis';
import type { Runtime } from '../config/compile.ts';

export interface CheckResult {
  readonly name: string;
  readonly ok: boolean;
  readonly detail?: string;
  /** Working, but not as configured (a fallback is answering): shown, not a reason to take the instance out. */
  readonly degraded?: boolean;
}

export interface Readiness {
  readonly ready: boolean;
  readonly checks: readonly CheckResult[];
}

async function checkIssuerKeys(runtime: Runtime): Promise<CheckResult[]> {
  return Promise.all(
    runtime.issuers.map(async (issuer): Promise<CheckResult> => {
      const name = `issuer:${issuer.name}`;
      if (issuer.remote === undefined) return { name, ok: true, detail: 'static keys' };
      if (issuer.remote.fresh) return { name, ok: true, detail: 'jwks cached' };
      try {
        await issuer.remote.reload(); // bounded by the issuer's jwksTimeoutMs
        return { name, ok: true, detail: 'jwks fetched' };
      } catch (err) {
        return { name, ok: false, detail: `jwks unreachable: ${(err as Error).message}` };
      }
    }),
  );
}

async function checkRedis(redis: Redis): Promise<CheckResult> {
  try {
    await redis.ping(); // bounded by redis.commandTimeoutMs
    return { name: 'redis', ok: true };
  } catch (err) {
    return { name: 'redis', ok: false, detail: `unreachable: ${(err as Error).message}` };
  }
}

/**
 * The rate-limit store. A failing one leaves the instance ready: each tier's onStoreFailure
 * answers for it, and a Redis outage must not take every instance out of the load balancer
 * at once; the check shows it as degraded instead.
 */
export function checkRateLimitStore(limits: { readonly kind: string; state(): 'ok' | 'failing' }): CheckResult {
  if (limits.state() === 'ok') return { name: 'rate-limit-store', ok: true, detail: limits.kind };
  return { name: 'rate-limit-store', ok: true, degraded: true, detail: `${limits.kind} failing: each tier applies its onStoreFailure (allow, deny or local)` };
}

/**
 * Each endpoint's circuit breaker, as a check that never fails: an open breaker is an
 * upstream's trouble, not this instance's. Every instance sees the same dead upstream, so
 * taking them out of the load balancer for it would turn one upstream's outage into the
 * whole gateway's (every other route too), while this instance is doing exactly its job:
 * answering 503 at once, or failing over. Shown with its state so an operator sees it here.
 */
function checkBreakers(runtime: Runtime): CheckResult[] {
  return runtime.upstreamGuard.states().map((s) => ({
    name: `breaker:${s.id}`,
    ok: true,
    detail: s.enabled ? s.state : 'disabled',
    ...(s.state === 'closed' ? {} : { degraded: true }),
  }));
}

/**
 * Serving the last good set is ready; a failed reload is shown, not fatal. The set is part
 * of the Runtime, so a reload refused for a config reason kept it too.
 */
function checkPolicies(policies: NonNullable<Runtime['policies']>, lastReloadError: string | undefined): CheckResult {
  const active = `set ${policies.evaluator.set.hash}`;
  return { name: 'policies', ok: true, detail: lastReloadError === undefined ? active : `${active}; last reload failed (kept the active set):\n${lastReloadError}` };
}

/**
 * The anomaly model. Never a reason to take the instance out: without scores requests are
 * still authenticated and decided (policies reading risk fail closed). Degraded when no model
 * scores, or when a new model was refused and the running one kept.
 */
function checkRisk(risk: NonNullable<Runtime['risk']>): CheckResult {
  const loaded = risk.loaded;
  const active = loaded === undefined ? 'no model: requests are not scored' : `model ${loaded.model.version} (${loaded.contentHash}), threshold ${risk.threshold}`;
  if (risk.error === undefined) return { name: 'risk-model', ok: true, detail: active };
  return { name: 'risk-model', ok: true, degraded: true, detail: `${active}; ${risk.error}` };
}

export async function checkReadiness(runtime: Runtime | undefined, draining: boolean, redis?: Redis, lastReloadError?: string): Promise<Readiness> {
  const checks: CheckResult[] = [
    { name: 'config', ok: runtime !== undefined, detail: runtime ? `version ${runtime.version}` : 'not loaded' },
    { name: 'draining', ok: !draining, detail: draining ? 'shutting down' : undefined },
  ];
  if (runtime !== undefined) checks.push(...(await checkIssuerKeys(runtime)));
  if (redis !== undefined) checks.push(await checkRedis(redis));
  if (runtime?.policies !== undefined) checks.push(checkPolicies(runtime.policies, lastReloadError));
  if (runtime?.risk !== undefined) checks.push(checkRisk(runtime.risk));
  if (runtime !== undefined) checks.push(...checkBreakers(runtime));
  return { ready: checks.every((c) => c.ok), checks };
}
