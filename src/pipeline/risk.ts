// Stage 5: the anomaly model. The request is folded into its principal's feature history
// (src/risk/features.ts) and the row scored in the next micro-batch; the result is ctx.risk
// for the policy (risk.score, risk.flagged…), the decision log and the assertion. The
// response side (status, bytes, deny) is folded in when the response ends (observeRiskResponse,
// called by the data plane), with the request's own timestamp: one event per trace line, the
// order `ztgw model score` replays (request, score, response), so the CLI reproduces what the
// gateway computed.
//
// Scoring is advice, never a gate of its own: an inference error leaves risk empty (counted,
// logged at most at the 1st, 10th, 100th… failure) and the request goes on to the policy,
// whose conditions on an absent score fail closed (a deny on it matches, an allow does not).
// Public routes have no principal: they are neither observed nor scored (a shared blank
// history for every anonymous client would mean nothing), and policies see risk empty there.
import { decodeJwt } from 'jose';
import type { RiskResult } from '../core/domain.ts';
import type { Batcher } from '../risk/batcher.ts';
import { FEATURE_NAMES, type FeatureExtractor, type RequestEvent, type TraceEvent } from '../risk/features.ts';
import type { RequestContext, Stage } from './context.ts';

/** principal_events is log1p(requests seen): the history length policies read as risk.history. */
const PRINCIPAL_EVENTS = FEATURE_NAMES.indexOf('principal_events');

export interface RiskStageDeps {
  readonly extractor: FeatureExtractor;
  /** undefined in degraded mode: requests are observed (histories stay warm), not scored. */
  readonly batcher: Batcher | undefined;
  readonly threshold: number;
  readonly modelVersion: string | undefined;
  readonly now?: () => number;
  /** `seconds`: the time the stage held the request (extraction, waiting for its batch, the run). */
  readonly onScore?: (ctx: RequestContext, risk: RiskResult, seconds: number) => void;
  /** A request left unscored: 'inference' (the run failed, `err`), 'unavailable' (no model). */
  readonly onUnscored?: (ctx: RequestContext, reason: 'inference' | 'unavailable', err?: unknown) => void;
}

/** What the response side needs to fold the response into the same history. */
export interface RiskObservation {
  readonly ts: number;
  readonly principal: string;
}

export function requestEvent(ctx: RequestContext, ts: number, authFailure: boolean): RequestEvent {
  return {
    ts,
    principal: ctx.identity?.subject ?? '',
    device: ctx.device?.id ?? '',
    ip: ctx.clientIp,
    method: ctx.method,
    path: ctx.path,
    ...(authFailure && { authFailure }),
    ...(ctx.device?.fingerprintChanged === true && { fingerprintChanged: true }),
  };
}

export function createRiskStage(deps: RiskStageDeps): Stage {
  const now = deps.now ?? Date.now;
  const { extractor, batcher, threshold } = deps;
  const version = deps.modelVersion ?? '';
  return (ctx: RequestContext) => {
    if (ctx.route!.public || ctx.identity === undefined) return;
    const ts = now();
    const started = performance.now();
    const event = requestEvent(ctx, ts, false);
    // The row is valid until the next observe(); the batcher copies it at once.
    const row = extractor.observe(event);
    const history = Math.round(Math.expm1(row[PRINCIPAL_EVENTS]!));
    ctx.riskObserved = { ts, principal: event.principal };
    if (batcher === undefined) {
      deps.onUnscored?.(ctx, 'unavailable');
      return;
    }
    return batcher.score(row).then(
      (scored) => {
        const risk: RiskResult = {
          score: scored.score,
          flagged: scored.score > threshold,
          topFeatures: scored.top.map((i) => FEATURE_NAMES[i]!),
          modelVersion: version,
          history,
        };
        ctx.risk = risk;
        deps.onScore?.(ctx, risk, (performance.now() - started) / 1000);
      },
      (err: unknown) => {
        deps.onUnscored?.(ctx, 'inference', err);
      },
    );
  };
}

/** Longest claimed subject kept: the failing-accounts counter is keyed by it. */
const MAX_CLAIMED = 256;

/** The `sub` a refused token claims, unverified (features.ts says what it is used for). */
function claimedSubject(token: string | undefined): string | undefined {
  if (token === undefined) return undefined;
  try {
    const sub = decodeJwt(token).sub;
    return typeof sub === 'string' && sub !== '' ? sub.slice(0, MAX_CLAIMED) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The response side, when the response has ended. A request the stage observed gets its
 * status, bytes and the policy's deny. A request refused before the stage (401 by authn,
 * 403 by device trust) is folded in here as a whole: a 401 as an authentication failure
 * (the cross-principal failure counters, and the principal's own if it is known), so that
 * credential stuffing and a token probed on many routes are visible to the model.
 */
export function observeRiskResponse(extractor: FeatureExtractor, ctx: RequestContext, status: number, bytes: number, now: () => number): TraceEvent | undefined {
  const seen = ctx.riskObserved;
  if (seen !== undefined) {
    const effect = ctx.decision?.effect;
    // The model's own verdict is not evidence. A refusal of a flagged request (deny or
    // step-up) folded in would raise the 4xx and deny shares that flagged it, and a flagged
    // principal would stay flagged: measured, a step-up rule on risk.flagged kept a user
    // refused a whole day after a one-minute flood. Its request side is history already.
    if (ctx.risk?.flagged === true && (effect === 'deny' || effect === 'step_up')) {
      return { ...requestEvent(ctx, seen.ts, false), status, bytes, denied: effect === 'deny', refusedOnRisk: true };
    }
    const line: TraceEvent = { ...requestEvent(ctx, seen.ts, false), status, bytes, denied: effect === 'deny' };
    extractor.observeResponse(line);
    return line;
  }
  if ((status !== 401 && status !== 403) || ctx.route === undefined || ctx.route.public) return undefined;
  const claimed = status === 401 && ctx.identity === undefined ? claimedSubject(ctx.accessToken) : undefined;
  const line: TraceEvent = { ...requestEvent(ctx, now(), status === 401), ...(claimed !== undefined && { claimedPrincipal: claimed }), status, bytes };
  // Observed once: a refused request is one trace line too (request, then response).
  ctx.riskObserved = { ts: line.ts, principal: line.principal };
  extractor.observe(line);
  extractor.observeResponse(line);
  return line;
}
