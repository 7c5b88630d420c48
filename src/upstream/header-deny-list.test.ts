import { describe, expect, it } from 'vitest';
import { compileDenyList, DENY_GROUPS, GATEWAY_OWNED, unforwardable } from './header-deny-list.ts';

describe('compileDenyList', () => {
  const list = compileDenyList({ extra: ['X-Employee-Id', 'x-zt-assertion'] });

  it('denies every listed name and every name under a listed prefix', () => {
    for (const group of DENY_GROUPS) {
      for (const name of group.names ?? []) expect(list.denies(name), `${group.source}: ${name}`).toBe(true);
      for (const prefix of group.prefixes ?? []) expect(list.denies(`${prefix}anything`), `${group.source}: ${prefix}`).toBe(true);
    }
  });

  it('denies configured extras and any name with an underscore', () => {
    expect(list.denies('x-employee-id')).toBe(true);
    for (const name of ['x_zt_assertion', 'x_remote_user', 'authorization_', 'accept_language']) expect(list.denies(name), name).toBe(true);
  });

  it('lets ordinary headers through', () => {
    for (const name of ['accept', 'user-agent', 'content-type', 'traceparent', 'x-tenant', 'x-custom', 'authorization', 'cookie', 'x-forwardedish']) {
      expect(list.denies(name), name).toBe(false);
    }
  });

  it('lets a route forward the names it opts in to, and only those', () => {
    const route = compileDenyList({ extra: ['x-employee-id'], allow: ['X-Forwarded-Prefix', 'remote-user', 'x-employee-id'] });
    expect(route.denies('x-forwarded-prefix')).toBe(false);
    expect(route.denies('remote-user')).toBe(false);
    expect(route.denies('x-employee-id')).toBe(false);
    expect(route.denies('x-forwarded-path')).toBe(true);
    expect(route.denies('remote-groups')).toBe(true);
  });

  it('answers the same for a name past the memo bound', () => {
    const fresh = compileDenyList();
    for (let i = 0; i < 5000; i++) fresh.denies(`x-junk-${i}`);
    expect(fresh.denies('cf-access-jwt-assertion')).toBe(true);
    expect(fresh.denies('accept')).toBe(false);
  });
});

describe('unforwardable', () => {
  it('refuses the gateway’s own and hop-by-hop names, with a reason', () => {
    for (const name of [...GATEWAY_OWNED, 'X-Forwarded-For', 'x-zt-assertion', 'x-zt-other', 'my-assertion']) {
      expect(unforwardable([name], 'my-assertion'), name).toHaveLength(1);
    }
    expect(unforwardable(['x-forwarded-for'], 'x-zt-assertion')[0]).toMatch(/written by the gateway/);
  });

  it('allows deny-listed identity headers a route may decide to trust', () => {
    expect(unforwardable(['x-forwarded-prefix', 'remote-user', 'x-forwarded-client-cert'], 'x-zt-assertion')).toEqual([]);
  });
});
