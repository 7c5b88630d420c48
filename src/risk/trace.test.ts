import { describe, expect, it } from 'vitest';
import { parseTraceLine } from './trace.ts';

const BASE = { ts: 1, principal: '', device: '', ip: '45.1.2.3', method: 'GET', path: '/api/v1/me', status: 401, bytes: 120 };

describe('parseTraceLine', () => {
  it('reads a refused token\'s claimed subject only when it is a string', () => {
    expect(parseTraceLine(JSON.stringify({ ...BASE, authFailure: true, claimedPrincipal: 'alice' }))).toMatchObject({ authFailure: true, claimedPrincipal: 'alice' });
    for (const odd of [42, null, ['alice'], { sub: 'alice' }, true]) {
      const line = parseTraceLine(JSON.stringify({ ...BASE, claimedPrincipal: odd }));
      expect(typeof line).toBe('object');
      expect(line).not.toHaveProperty('claimedPrincipal');
    }
  });

  it('reads the flags only as booleans, and refuses a line whose contract fields have the wrong type', () => {
    expect(parseTraceLine(JSON.stringify({ ...BASE, authFailure: 'true', denied: 1 }))).not.toHaveProperty('authFailure');
    expect(parseTraceLine(JSON.stringify({ ...BASE, principal: 7 }))).toBe('"principal" must be a string');
    expect(parseTraceLine(JSON.stringify({ ...BASE, ts: '1' }))).toBe('"ts" must be a number');
  });
});
