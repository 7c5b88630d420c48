// Stage 6: the security team's policies decide. Default deny, deny-overrides, step_up per
// RFC 9470; the decision, its deciding rules and the policy-set hash go to the decision log
// (denies and step-ups always, allows sampled) and stay on the context for the assertion.
import type { Logger } from 'pino';
import type { Decision, Evaluator } from '../policy/evaluate.ts';
import { toPolicyInput } from './policy-input.ts';
import { decisionRecord } from '../policy/record.ts';
import type { RecordLimits } from '../policy/record-limits.ts';
import type { LineBudget } from '../observability/line-budget.ts';
import type { StepUpRequirement } from '../policy/schema.ts';
import type { RequestContext, Stage } from './context.ts';
import { AccessDeniedError, StepUpRequiredError } from '../core/errors.ts';

export interface AuthzDeps {
  /** The set's evaluator; read once per decision (the Runtime holds a fixed one). */
  readonly policies: { readonly current: Evaluator };
  /** Named upstreams an obligation may send a request to (the proxy picks one of its endpoints). */
  readonly upstreams: ReadonlySet<string>;
  readonly decisionLog: Logger;
  readonly allowSampleRate: number;
  /** What a decision line may carry (headers allow-list, bounded values). */
  readonly recordLimits?: RecordLimits;
  /** Lines per principal; a line over budget is not written but counted (onSuppressed). */
  readonly lineBudget?: LineBudget;
  readonly onSuppressed?: () => void;
  readonly onDecision?: (decision: Decision) => void;
  readonly now?: () => number;
  readonly random?: () => number;
}

const REALM = 'zt-gateway';

/** RFC 9470 §3: the challenge names the acceptable acr values and the maximum authentication age. */
export function stepUpChallenge(stepUp: StepUpRequirement | undefined): string {
  const parts = [
    `Bearer realm="${REALM}"`,
    'error="insufficient_user_authentication"',
    'error_description="A stronger or more recent authentication is required"',
  ];
  if (stepUp !== undefined) {
    parts.push(`acr_values="${stepUp.acrValues.join(' ')}"`);
    if (stepUp.maxAgeS !== undefined) parts.push(`max_age=${stepUp.maxAgeS}`);
  }
  return parts.join(', ');
}

export function createAuthzStage(deps: AuthzDeps): Stage {
  const now = deps.now ?? Date.now;
  const random = deps.random ?? Math.random;

  function log(ctx: RequestContext, decision: Decision, input: ReturnType<typeof toPolicyInput>, hash: string): void {
    // Allows are sampled; denies, step-ups and any decision where a condition failed at run
    // time (the team must see those) are always written.
    if (decision.effect === 'allow' && decision.errors.length === 0 && random() >= deps.allowSampleRate) return;
    // Denies are never sampled, so one client looping on a denied route would flood the
    // log: each principal has a line budget, and the next line says what was suppressed.
    const suppressed = deps.lineBudget === undefined ? 0 : deps.lineBudget.take(ctx.identity?.subject ?? ctx.clientIp);
    if (suppressed === undefined) return deps.onSuppressed?.();
    const record = decisionRecord(ctx.id, decision, input, hash, deps.recordLimits);
    deps.decisionLog.info(suppressed > 0 ? { ...record, suppressed } : record, 'decision');
  }

  return (ctx: RequestContext) => {
    // One read: the whole decision is made against the set that was current here.
    const evaluator = deps.policies.current;
    // Public routes too: a client's own `x-access-grant` must not reach any upstream looking
    // like an obligation, and the policy does not see it either (it sees what the upstream gets).
    ctx.obligationHeaders = evaluator.obligationHeaders;
    if (ctx.route!.public) return;
    const input = toPolicyInput(ctx, new Date(now()));
    const decision = evaluator.evaluate(input);
    ctx.decision = decision;
    ctx.policySet = evaluator.set.hash;
    deps.onDecision?.(decision);
    log(ctx, decision, input, evaluator.set.hash);

    if (decision.effect === 'deny') throw new AccessDeniedError(`denied by ${decision.rules.map((r) => `${r.policy}/${r.rule}`).join(', ') || 'default deny'}`);
    if (decision.effect === 'step_up') {
      throw new StepUpRequiredError('step-up required', { headers: { 'www-authenticate': stepUpChallenge(decision.stepUp) } });
    }
    const alternate = decision.obligations.upstream;
    // The loader only accepts names the config defines; a reload that dropped one is refused
    // there. Its endpoint (and so the upstream path) is chosen by the proxy, like the route's.
    if (alternate !== undefined && deps.upstreams.has(alternate)) ctx.upstreamName = alternate;
  };
}
