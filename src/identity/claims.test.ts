import { describe, expect, it } from 'vitest';
import { claimProblem, groupsOf } from './claims.ts';

const now = 1_800_000_000;
const rules = { groupsClaim: 'groups', clockToleranceS: 30, maxTokenLifetimeS: 3600 };
const good = { sub: 'alice', exp: now + 300, iat: now - 10, nbf: now - 10 };
const thumb = 'A'.repeat(43);

describe('claims by type', () => {
  it('accepts a well-typed payload, with or without the optional claims', () => {
    expect(claimProblem(good, rules, now)).toBeUndefined();
    expect(claimProblem({ sub: 'a', exp: now + 1 }, rules, now)).toBeUndefined();
    const full = { ...good, groups: ['eng', 'ops'], acr: 'urn:mace:incommon:iap:silver', amr: ['pwd', 'hwk'], auth_time: now - 100, cnf: { jkt: thumb, 'x5t#S256': thumb } };
    expect(claimProblem(full, rules, now)).toBeUndefined();
    expect(claimProblem({ ...good, groups: 'eng ops' }, rules, now)).toBeUndefined();
  });

  const refused: [string, Record<string, unknown>][] = [
    ['sub missing', { sub: undefined }],
    ['sub empty', { sub: '' }],
    ['sub a number', { sub: 123 }],
    ['sub an object', { sub: { id: 'alice' } }],
    ['exp missing', { exp: undefined }],
    ['exp a string', { exp: String(now + 300) }],
    ['exp Infinity (JSON 1e400)', { exp: Infinity }],
    ['exp NaN', { exp: NaN }],
    ['exp just passed', { exp: now - 0.5 }],
    ['exp now', { exp: now }],
    ['nbf an object', { nbf: {} }],
    ['nbf -Infinity', { nbf: -Infinity }],
    ['iat a string', { iat: 'yesterday' }],
    ['iat Infinity', { iat: Infinity }],
    ['iat beyond the tolerance', { iat: now + 31, exp: now + 300 }],
    ['a lifetime over the maximum', { iat: now, exp: now + 3601 }],
    ['no iat and exp beyond the maximum from now', { iat: undefined, exp: now + 3601 }],
    ['a huge exp', { exp: 1e300 }],
    ['groups a number', { groups: 5 }],
    ['groups an object', { groups: { admin: true } }],
    ['groups null', { groups: null }],
    ['groups with non-strings', { groups: ['eng', 7] }],
    ['groups nested arrays', { groups: [['admin']] }],
    ['acr a number', { acr: 2 }],
    ['amr a string', { amr: 'pwd' }],
    ['amr with non-strings', { amr: ['pwd', 1] }],
    ['auth_time absurd', { auth_time: 1e20 }],
    ['auth_time negative', { auth_time: -1 }],
    ['auth_time a string', { auth_time: '2026-01-01' }],
    ['auth_time in the future', { auth_time: now + 31 }],
    ['cnf a string', { cnf: 'jkt' }],
    ['cnf an array', { cnf: [thumb] }],
    ['cnf.jkt a number', { cnf: { jkt: 1 } }],
    ['cnf.jkt not a thumbprint', { cnf: { jkt: 'abc' } }],
    ['cnf.x5t#S256 with padding', { cnf: { 'x5t#S256': `${'A'.repeat(42)}=` } }],
    ['cnf with no method the gateway checks', { cnf: { jwk: { kty: 'EC' } } }],
  ];
  for (const [what, change] of refused) {
    it(`refuses ${what}`, () => {
      expect(claimProblem({ ...good, ...change }, rules, now)).toBeTypeOf('string');
    });
  }

  it('allows iat and auth_time within the clock tolerance', () => {
    expect(claimProblem({ ...good, iat: now + 30, auth_time: now + 30 }, rules, now)).toBeUndefined();
  });

  it('uses the configured groups claim', () => {
    const roles = { ...rules, groupsClaim: 'roles' };
    expect(claimProblem({ ...good, roles: 5, groups: ['x'] }, roles, now)).toMatch(/roles/);
    expect(groupsOf({ roles: ['a'], groups: ['x'] }, 'roles')).toEqual(['a']);
    expect(groupsOf({ roles: ' a  b ' }, 'roles')).toEqual(['a', 'b']);
    expect(groupsOf({}, 'roles')).toEqual([]);
  });
});
