import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { ALL_ERRORS, InvalidTokenError, MissingTokenError, UpstreamTimeoutError } from '../core/errors.ts';
import { PROBLEMS, toProblem } from './problem.ts';

describe('problem mapping', () => {
  it('maps every error code to a problem, with the error status', () => {
    for (const ErrorClass of ALL_ERRORS) {
      expect(PROBLEMS[ErrorClass.code], ErrorClass.code).toBeDefined();
      const err = new ErrorClass('internal detail');
      expect(err.code).toBe(ErrorClass.code);
      const problem = toProblem(err, 'rid');
      expect(problem.body.code).toBe(ErrorClass.code);
      expect(problem.status).toBe(err.status);
      expect(problem.headers['content-type']).toBe('application/problem+json');
    }
  });

  it('has no stale entries for codes that no longer exist', () => {
    const codes = new Set<string>(ALL_ERRORS.map((e) => e.code));
    expect(Object.keys(PROBLEMS).filter((c) => !codes.has(c))).toEqual([]);
  });

  it('documents every code, with its status, in the README (and nothing else there)', () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const table = readme.slice(readme.indexOf('### Error codes'), readme.indexOf('\n## ', readme.indexOf('### Error codes')));
    const rows = new Map([...table.matchAll(/^\| `(ERR_[A-Z_]+)` \| (\d{3}) \|/gm)].map((m) => [m[1], Number(m[2])]));
    expect(Object.fromEntries(rows)).toEqual(Object.fromEntries(ALL_ERRORS.map((e) => [e.code, new e('x').status])));
  });

  it('never sends the error message or cause to the client', () => {
    const secret = 'signature verification failed for key kid-123';
    const problem = toProblem(new InvalidTokenError(secret, { cause: new Error('JWSSignatureVerificationFailed') }), 'rid');
    const json = JSON.stringify(problem);
    expect(json).not.toContain('kid-123');
    expect(json).not.toContain('JWSSignature');
  });

  it('turns unknown errors into a 500 with a generic body', () => {
    const problem = toProblem(new TypeError('cannot read x of undefined at /src/secret.ts:12'), 'rid-1');
    expect(problem.status).toBe(500);
    expect(problem.body.requestId).toBe('rid-1');
    expect(JSON.stringify(problem)).not.toContain('secret.ts');
  });

  it('sets RFC 6750 challenges: none for a missing token, invalid_token for a bad one', () => {
    expect(toProblem(new MissingTokenError('x'), 'r').headers['www-authenticate']).toBe('Bearer realm="zt-gateway"');
    expect(toProblem(new InvalidTokenError('x'), 'r').headers['www-authenticate']).toMatch(/^Bearer .*error="invalid_token"/);
    expect(toProblem(new UpstreamTimeoutError('x'), 'r').status).toBe(504);
  });
});
