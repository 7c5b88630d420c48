import { describe, expect, it } from 'vitest';
import type { RequestContext } from './context.ts';
import { toPolicyInput } from './policy-input.ts';

describe('toPolicyInput', () => {
  const ctx = {
    method: 'POST',
    host: 'code.example.com',
    path: '/api/merge',
    clientIp: '10.1.2.3',
    headers: { 'user-agent': 'git', authorization: 'Bearer secret', cookie: 'a=b', dpop: 'proof', 'x-many': ['a', 'b'] },
    route: { name: 'code' },
    identity: {
      subject: 'alice',
      issuer: 'https://idp.example.com/',
      issuerName: 'corp',
      groups: ['eng'],
      claims: { sub: 'alice', acr: 'phr', amr: ['pwd', 'hwk'], auth_time: 1717403400 },
      expiresAt: undefined,
    },
    device: {
      id: 'x'.repeat(43),
      binding: 'dpop',
      enrolled: true,
      ownerMatches: true,
      posture: { managed: true, diskEncrypted: false, os: 'macOS', osVersion: '14', lastCheckIn: '2024-06-01T00:00:00Z', trustLevel: 'medium' },
      stale: false,
      fingerprintChanged: true,
    },
  } as unknown as RequestContext;
  const now = new Date('2024-06-03T08:30:00Z');

  it('maps the request context, leaving credentials out of the headers', () => {
    expect(toPolicyInput(ctx, now)).toEqual({
      request: { method: 'POST', host: 'code.example.com', path: '/api/merge', route: 'code', ip: '10.1.2.3', headers: { 'user-agent': 'git', 'x-many': 'a, b' }, time: now },
      identity: {
        sub: 'alice',
        issuer: 'https://idp.example.com/',
        groups: ['eng'],
        claims: { sub: 'alice', acr: 'phr', amr: ['pwd', 'hwk'], auth_time: 1717403400 },
        amr: ['pwd', 'hwk'],
        acr: 'phr',
        auth_time: new Date('2024-06-03T08:30:00Z'),
      },
      device: {
        id: 'x'.repeat(43),
        binding: 'dpop',
        enrolled: true,
        owner_match: true,
        posture: { managed: true, disk_encrypted: false, os: 'macOS', os_version: '14', trust: 'medium', last_check_in: new Date('2024-06-01T00:00:00Z') },
        stale: false,
        fingerprint_changed: true,
      },
      risk: {},
    });
  });

  it('leaves what is unknown absent (never a default a condition could mistake for a fact)', () => {
    const anonymous = { ...ctx, identity: undefined, device: undefined, route: undefined } as unknown as RequestContext;
    const x = toPolicyInput(anonymous, now);
    expect(x.identity).toEqual({});
    expect(x.device).toEqual({});
    expect(x.request.route).toBeUndefined();
  });
});
