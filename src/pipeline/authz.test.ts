import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { Writable } from 'node:stream';
import { compilePolicyFiles } from '../policy/load.ts';
import { createEvaluator, type Evaluator } from '../policy/evaluate.ts';
import type { CompiledRoute, RequestContext } from './context.ts';
import { AccessDeniedError, StepUpRequiredError } from '../core/errors.ts';
import { createAuthzStage } from './authz.ts';

const POLICY = `apiVersion: zt-gateway/v1
name: p
rules:
  - name: eng
    effect: allow
    when: '"eng" in identity.groups'
  - name: broken-for-some
    effect: allow
    when: 'identity.claims.level > 3'
  - name: admin-step-up
    effect: step_up
    when: 'request.path.startsWith("/admin")'
    stepUp: { acrValues: [mfa], maxAgeS: 60 }
`;

function source(): { current: Evaluator } {
  const result = compilePolicyFiles([{ file: 'p.yaml', text: POLICY }], undefined);
  if (!result.ok) throw new Error(JSON.stringify(result.issues));
  const evaluator = createEvaluator(result.set);
  return { current: evaluator };
}

function stage(random: number) {
  const lines: Record<string, any>[] = [];
  const sink = new Writable({ write: (c, _e, done) => (lines.push(JSON.parse(String(c))), done()) });
  const authz = createAuthzStage({ policies: source(), upstreams: new Set(), decisionLog: pino(sink), allowSampleRate: 0.1, random: () => random });
  return { authz, lines };
}

function ctx(groups: string[], path = '/x', claims: Record<string, unknown> = {}, isPublic = false): RequestContext {
  return {
    id: 'r1',
    method: 'GET',
    path,
    host: 'h',
    clientIp: '10.0.0.1',
    headers: {},
    route: { name: 'r', public: isPublic, stripPrefix: false, pathPrefix: '/', upstreamBasePath: '' } as unknown as CompiledRoute,
    identity: { subject: 'alice', issuer: 'i', issuerName: 'i', groups, claims: { ...claims }, expiresAt: undefined },
  } as unknown as RequestContext;
}

describe('authz stage', () => {
  it('allows, records the policy set, and samples the allow out of the decision log', () => {
    const { authz, lines } = stage(0.5);
    const c = ctx(['eng'], '/x', { level: 5 });
    authz(c);
    expect(c.decision?.effect).toBe('allow');
    expect(c.policySet).toMatch(/^[0-9a-f]{12}$/);
    expect(lines).toEqual([]);
  });

  it('writes an allow that the sample picks', () => {
    const { authz, lines } = stage(0.05);
    authz(ctx(['eng'], '/x', { level: 5 }));
    expect(lines).toEqual([expect.objectContaining({ log: 'decision', effect: 'allow' })]);
  });

  it('always writes a decision in which a condition failed at run time', () => {
    const { authz, lines } = stage(0.99);
    authz(ctx(['eng'])); // identity.claims.level is missing: the second allow errors
    expect(lines).toEqual([expect.objectContaining({ effect: 'allow', errors: [expect.objectContaining({ rule: 'broken-for-some' })] })]);
  });

  it('denies by default and always logs it', () => {
    const { authz, lines } = stage(0.99);
    expect(() => authz(ctx(['sales'], '/x', { level: 1 }))).toThrow(AccessDeniedError);
    expect(lines).toEqual([expect.objectContaining({ effect: 'deny', rules: [] })]);
  });

  it('steps up with the RFC 9470 challenge', () => {
    const { authz } = stage(0.99);
    try {
      authz(ctx(['eng'], '/admin/x', { level: 5 }));
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(StepUpRequiredError);
      expect((err as StepUpRequiredError).headers?.['www-authenticate']).toContain('acr_values="mfa", max_age=60');
    }
  });

  it('leaves public routes alone', () => {
    const { authz, lines } = stage(0.99);
    const c = ctx([], '/x', {}, true);
    authz(c);
    expect(c.decision).toBeUndefined();
    expect(lines).toEqual([]);
  });
});
