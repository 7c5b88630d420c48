import { describe, expect, it } from 'vitest';
import { createBatcher } from '../risk/batcher.ts';
import { createFeatureExtractor, FEATURE_COUNT, FEATURE_NAMES, replayLine, type TraceEvent } from '../risk/features.ts';
import { RiskModelError, type ScoreResult } from '../risk/model.ts';
import type { CompiledRoute, RequestContext, RiskResult } from './context.ts';
import { toPolicyInput } from './policy-input.ts';
import { createRiskStage, observeRiskResponse } from './risk.ts';

/** score = sigmoid of the rate_1m feature: more requests a minute, higher; contribution on feature 2. */
function fakeModel(opts: { fail?: boolean } = {}) {
  const rows: Float32Array[] = [];
  return {
    rows,
    async score(batch: Float32Array, n: number): Promise<ScoreResult> {
      if (opts.fail) throw new RiskModelError('inference', 'boom');
      const scores = new Float32Array(n);
      const contributions = new Float32Array(n * FEATURE_COUNT);
      for (let r = 0; r < n; r++) {
        rows.push(batch.slice(r * FEATURE_COUNT, (r + 1) * FEATURE_COUNT));
        scores[r] = 1 / (1 + Math.exp(-(batch[r * FEATURE_COUNT + 2]! - 3)));
        contributions[r * FEATURE_COUNT + 2] = 0.7;
        contributions[r * FEATURE_COUNT + 5] = 0.2;
      }
      return { scores, contributions };
    },
  };
}

function ctx(opts: { sub?: string; isPublic?: boolean; path?: string; device?: string } = {}): RequestContext {
  return {
    id: 'r1',
    method: 'GET',
    path: opts.path ?? '/api/items/1',
    headers: {},
    clientIp: '10.1.2.3',
    host: 'gw',
    identity: opts.sub === undefined ? undefined : { subject: opts.sub, issuer: 'i', issuerName: 'i', groups: [], claims: {}, expiresAt: undefined },
    device: opts.device === undefined ? undefined : { id: opts.device, binding: 'dpop', enrolled: true, ownerMatches: true, posture: undefined, stale: false, fingerprintChanged: false },
    route: { name: 'api', public: opts.isPublic ?? false } as unknown as CompiledRoute,
  } as unknown as RequestContext;
}

describe('the risk stage', () => {
  it('observes the request, scores it in a batch and puts score, flag, top features, version and history on the context', async () => {
    const extractor = createFeatureExtractor();
    const model = fakeModel();
    const scored: RiskResult[] = [];
    let t = 1_000_000;
    const stage = createRiskStage({ extractor, batcher: createBatcher(model), threshold: 0.5, modelVersion: 'm1', now: () => t, onScore: (_c, r) => scored.push(r) });
    const results: RiskResult[] = [];
    for (let i = 0; i < 60; i++) {
      const c = ctx({ sub: 'alice', device: 'd1' });
      await stage(c);
      observeRiskResponse(extractor, c, 200, 100, () => t);
      results.push(c.risk!);
      t += 100; // ten a second: the rate feature climbs
    }
    expect(results[0]).toMatchObject({ flagged: false, modelVersion: 'm1', topFeatures: [FEATURE_NAMES[2], FEATURE_NAMES[5], FEATURE_NAMES[0]], history: 1 });
    // The history counts this principal's requests, and only theirs.
    expect(results.map((r) => r.history)).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
    expect(results[0]!.score).toBeLessThan(0.5);
    expect(results.at(-1)!.flagged).toBe(true);
    expect(results.at(-1)!.score).toBeGreaterThan(0.5);
    expect(scored).toHaveLength(60);
    expect(extractor.size).toBe(1);
  });

  it('feeds the extractor exactly as the offline replay does (request, score, response with the request ts)', async () => {
    const live = createFeatureExtractor();
    const model = fakeModel();
    const stage = createRiskStage({ extractor: live, batcher: createBatcher(model), threshold: 0.5, modelVersion: 'm1', now: () => t });
    let t = 5_000_000;
    const trace: TraceEvent[] = [];
    for (let i = 0; i < 30; i++) {
      const c = ctx({ sub: i % 3 === 0 ? 'bob' : 'alice', device: 'd', path: `/api/items/${i}` });
      await stage(c);
      t += 37; // the response ends later than the request: it is folded in at the request's ts
      const status = i % 7 === 0 ? 404 : 200;
      trace.push(observeRiskResponse(live, c, status, 10 * i, () => t)!);
      t += 500;
    }
    const offline = createFeatureExtractor();
    const rows = trace.map((line) => replayLine(offline, line, (f) => f.slice()));
    expect(model.rows).toHaveLength(30);
    rows.forEach((r, i) => expect(Array.from(model.rows[i]!)).toEqual(Array.from(r)));
  });

  it('leaves risk absent and counts it when inference fails; the request goes on', async () => {
    const extractor = createFeatureExtractor();
    const unscored: string[] = [];
    const stage = createRiskStage({
      extractor,
      batcher: createBatcher(fakeModel({ fail: true })),
      threshold: 0.5,
      modelVersion: 'm1',
      onUnscored: (_c, reason, err) => unscored.push(`${reason}:${(err as Error).message}`),
    });
    const c = ctx({ sub: 'alice' });
    await expect(stage(c)).resolves.toBeUndefined();
    expect(c.risk).toBeUndefined();
    expect(unscored).toEqual(['inference:boom']);
    expect(toPolicyInput(c, new Date()).risk).toEqual({});
  });

  it('degraded (no model): observes, does not score, reports unavailable, synchronously', () => {
    const extractor = createFeatureExtractor();
    const reasons: string[] = [];
    const stage = createRiskStage({ extractor, batcher: undefined, threshold: 1, modelVersion: undefined, onUnscored: (_c, r) => reasons.push(r) });
    const c = ctx({ sub: 'alice' });
    expect(stage(c)).toBeUndefined();
    expect(c.risk).toBeUndefined();
    expect(c.riskObserved).toBeDefined();
    expect(extractor.size).toBe(1);
    expect(reasons).toEqual(['unavailable']);
  });

  it('public routes and requests without identity are neither observed nor scored', () => {
    const extractor = createFeatureExtractor();
    const model = fakeModel();
    const stage = createRiskStage({ extractor, batcher: createBatcher(model), threshold: 0.5, modelVersion: 'm1' });
    const pub = ctx({ sub: 'alice', isPublic: true });
    expect(stage(pub)).toBeUndefined();
    expect(stage(ctx())).toBeUndefined();
    expect(extractor.size).toBe(0);
    expect(observeRiskResponse(extractor, pub, 401, 0, Date.now)).toBeUndefined();
  });

  it('the policy input carries the risk as policies read it', async () => {
    const c = ctx({ sub: 'alice' });
    c.risk = { score: 0.93, flagged: true, topFeatures: ['rate_1m'], modelVersion: 'm1', history: 12 };
    expect(toPolicyInput(c, new Date()).risk).toEqual({ score: 0.93, flagged: true, top_features: ['rate_1m'], model_version: 'm1', history: 12 });
  });
});

describe('observeRiskResponse after the stage', () => {
  it('a flagged request the policy refused is not folded in on the response side (no feedback loop), and the trace line says so', () => {
    const extractor = createFeatureExtractor();
    const errShare = FEATURE_NAMES.indexOf('err4xx_1m');
    const refused = (flagged: boolean, effect: 'deny' | 'step_up', t: number) => {
      const c = ctx({ sub: 'alice' });
      extractor.observe({ ts: t, principal: 'alice', device: '', ip: '10.1.2.3', method: 'GET', path: '/' });
      c.riskObserved = { ts: t, principal: 'alice' };
      c.risk = { score: flagged ? 0.95 : 0.1, flagged, topFeatures: [], modelVersion: 'm', history: 1 };
      c.decision = { effect } as RequestContext['decision'];
      return observeRiskResponse(extractor, c, effect === 'deny' ? 403 : 401, 10, () => t);
    };
    for (let i = 0; i < 5; i++) expect(refused(true, i % 2 ? 'deny' : 'step_up', 1_000 + i)).toMatchObject({ refusedOnRisk: true });
    const probe = (t: number) => extractor.observe({ ts: t, principal: 'alice', device: '', ip: '10.1.2.3', method: 'GET', path: '/' })[errShare]!;
    expect(probe(2_000)).toBe(0);
    // An unflagged refusal (a rule about something else) is evidence like any response.
    expect(refused(false, 'deny', 3_000)).not.toHaveProperty('refusedOnRisk');
    expect(probe(3_001)).toBeGreaterThan(0.5);
    // The offline replay skips the same responses.
    const offline = createFeatureExtractor();
    replayLine(offline, { ts: 1, principal: 'alice', device: '', ip: '10.1.2.3', method: 'GET', path: '/', status: 403, bytes: 0, refusedOnRisk: true }, () => undefined);
    expect(offline.observe({ ts: 2, principal: 'alice', device: '', ip: '10.1.2.3', method: 'GET', path: '/' })[errShare]).toBe(0);
  });
});

describe('observeRiskResponse for requests refused before the stage', () => {
  it('a 401 is one trace line with authFailure, feeding the cross-principal failure counters', () => {
    const extractor = createFeatureExtractor();
    let line: TraceEvent | undefined;
    for (let i = 0; i < 20; i++) line = observeRiskResponse(extractor, ctx(), 401, 50, () => 1_000_000 + i * 100);
    expect(line).toMatchObject({ principal: '', authFailure: true, status: 401, ip: '10.1.2.3' });
    expect(line).not.toHaveProperty('claimedPrincipal'); // no token presented
    // The network has failed 20 times: a new failing request from it shows it.
    const f = extractor.observe({ ts: 1_003_000, principal: 'x', device: '', ip: '10.1.2.9', method: 'GET', path: '/', authFailure: true });
    expect(f[FEATURE_NAMES.indexOf('net_fail_1m')]).toBeGreaterThan(Math.log1p(15));
    // An unknown principal's failures create no per-principal state (features.ts).
    expect(extractor.size).toBe(0);
  });

  it('a refused token\'s claimed subject is recorded apart from the principal, unverified and bounded', () => {
    const extractor = createFeatureExtractor();
    const jwt = (claims: object): string => `e30.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.sig`;
    const refused = (token: string | undefined): TraceEvent | undefined => {
      const c = ctx();
      c.accessToken = token;
      return observeRiskResponse(extractor, c, 401, 50, () => 1_000_000);
    };
    expect(refused(jwt({ sub: 'alice', iss: 'https://evil.example/' }))).toMatchObject({ principal: '', claimedPrincipal: 'alice', authFailure: true });
    expect(refused(jwt({ sub: 'x'.repeat(10_000) }))?.claimedPrincipal).toHaveLength(256);
    expect(refused('not-a-jwt')).not.toHaveProperty('claimedPrincipal');
    expect(refused(jwt({ sub: 42 }))).not.toHaveProperty('claimedPrincipal');
    expect(extractor.size).toBe(0);
  });

  it('a 403 from device trust is folded in for the known principal; a 200 never reached here is ignored', () => {
    const extractor = createFeatureExtractor();
    expect(observeRiskResponse(extractor, ctx({ sub: 'alice' }), 403, 0, () => 1)).toMatchObject({ principal: 'alice', status: 403 });
    expect(extractor.size).toBe(1);
    expect(observeRiskResponse(extractor, ctx({ sub: 'bob' }), 200, 0, () => 1)).toBeUndefined();
    expect(extractor.size).toBe(1);
  });
});
