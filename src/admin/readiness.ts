// /readyz: is this instance fit to take traffic? Config loaded, not draining, and every
// configured dependency reachable. Each check names itself so an operator sees which failed.
import type { Redis } from 'ioredis';
import type { Runtime } from '../config/compile.ts';

export interface CheckResult {
  readonly name: string;
  readonly ok: boolean;
  readonly detail?: string;
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
 * Serving the last good set is ready; a failed reload is shown, not fatal. The set is part
 * of the Runtime, so a reload refused for a config reason kept it too.
 */
function checkPolicies(policies: NonNullable<Runtime['policies']>, lastReloadError: string | undefined): CheckResult {
  const active = `set ${policies.evaluator.set.hash}`;
  return { name: 'policies', ok: true, detail: lastReloadError === undefined ? active : `${active}; last reload failed (kept the active set):\n${lastReloadError}` };
}

export async function checkReadiness(runtime: Runtime | undefined, draining: boolean, redis?: Redis, lastReloadError?: string): Promise<Readiness> {
  const checks: CheckResult[] = [
    { name: 'config', ok: runtime !== undefined, detail: runtime ? `version ${runtime.version}` : 'not loaded' },
    { name: 'draining', ok: !draining, detail: draining ? 'shutting down' : undefined },
  ];
  if (runtime !== undefined) checks.push(...(await checkIssuerKeys(runtime)));
  if (redis !== undefined) checks.push(await checkRedis(redis));
  if (runtime?.policies !== undefined) checks.push(checkPolicies(runtime.policies, lastReloadError));
  return { ready: checks.every((c) => c.ok), checks };
}
