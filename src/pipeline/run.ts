// The request pipeline, in order. Reading this file tells you what happens to a request
// before it is proxied; each stage is built once per Runtime by its factory.
import type { RequestContext, Stage } from './context.ts';

export interface PipelineStages {
  hygiene: Stage; // 1 normalise + reject ambiguous paths, forwarded headers from trusted peers only
  route: Stage; //   2 host + longest path prefix → route
  authn: Stage; //   3 access token (Bearer or DPoP) → identity
  device: Stage; //  4 DPoP proof / mTLS certificate binding → device (+ posture from the registry)
  risk: Stage | undefined; // 5 per-principal features → anomaly score (micro-batched) → risk; absent without a risk section
  authz: Stage | undefined; // 6 policy set (CEL, deny-overrides) → decision + obligations; absent without policies
  limit: Stage; //   7 rate-limit tiers of the route and the policy's obligation → 429 (one store round trip)
  assertion: Stage; // 8 signed identity assertion for the upstream (then the proxy forwards)
}

export function pipelineOf(stages: PipelineStages): readonly Stage[] {
  const ordered = [stages.hygiene, stages.route, stages.authn, stages.device, stages.risk, stages.authz, stages.limit, stages.assertion];
  return Object.freeze(ordered.filter((s): s is Stage => s !== undefined));
}

/** Runs stages until one throws. Stays synchronous while stages are (the cached-token fast path). */
export function runPipeline(stages: readonly Stage[], ctx: RequestContext, from = 0): void | Promise<void> {
  for (let i = from; i < stages.length; i++) {
    const pending = stages[i]!(ctx);
    if (pending !== undefined) return pending.then(() => runPipeline(stages, ctx, i + 1));
  }
}
