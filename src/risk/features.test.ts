import { describe, expect, it } from 'vitest';
import {
  createFeatureExtractor,
  FEATURE_COUNT,
  FEATURE_GROUPS,
  FEATURE_NAMES,
  FEATURE_SPEC_HASH,
  networkOf,
  parsePath,
  replayLine,
  STATE_BYTES,
  type FeatureName,
  type RequestEvent,
} from './features.ts';

const T0 = Date.UTC(2025, 0, 6, 9); // a Monday, 09:00 UTC
const S = 1000;
const MIN = 60 * S;
const HOUR = 60 * MIN;

function req(over: Partial<RequestEvent> = {}): RequestEvent {
  return { ts: T0, principal: 'alice', device: 'laptop', ip: '203.0.113.7', method: 'GET', path: '/api/v1/me', ...over };
}

/** An extractor and a helper that observes a request (and its response) and returns named features. */
function harness() {
  const x = createFeatureExtractor({ maxPrincipals: 100 });
  const hit = (over: Partial<RequestEvent> = {}, resp: { status?: number; bytes?: number; denied?: boolean } = {}): Record<FeatureName, number> => {
    const e = req(over);
    const v = Array.from(x.observe(e));
    x.observeResponse({ ts: e.ts, principal: e.principal, status: resp.status ?? 200, bytes: resp.bytes ?? 1000, denied: resp.denied });
    return Object.fromEntries(FEATURE_NAMES.map((n, i) => [n, v[i]!])) as Record<FeatureName, number>;
  };
  return { x, hit };
}

/** A principal with a day of ordinary history: a request a minute, 09:00–17:00, known ids. */
function withHistory() {
  const h = harness();
  for (let t = 0; t < 8 * 60; t++) h.hit({ ts: T0 + t * MIN, path: `/api/v1/tickets/${100 + (t % 5) * 17}` });
  return { ...h, now: T0 + 8 * 60 * MIN };
}

describe('feature spec', () => {
  it('names every feature once, puts each in one group, and hashes the spec', () => {
    expect(new Set(FEATURE_NAMES).size).toBe(FEATURE_COUNT);
    const grouped = Object.values(FEATURE_GROUPS).flat();
    expect(grouped).toHaveLength(FEATURE_COUNT);
    expect(new Set(grouped)).toEqual(new Set(FEATURE_NAMES));
    expect(FEATURE_SPEC_HASH).toMatch(/^[0-9a-f]{16}$/);
  });

  it('writes into a caller buffer at an offset, and every value is finite', () => {
    const { x } = harness();
    const out = new Float32Array(FEATURE_COUNT * 3).fill(Number.NaN);
    x.observe(req(), out, FEATURE_COUNT);
    expect(out.subarray(FEATURE_COUNT, 2 * FEATURE_COUNT).every(Number.isFinite)).toBe(true);
    expect(Number.isNaN(out[0]!)).toBe(true);
    expect(Number.isNaN(out[2 * FEATURE_COUNT]!)).toBe(true);
  });

  it('replayLine scores after the request and before the response', () => {
    const { x } = harness();
    const line = { ...req(), status: 500, bytes: 10 };
    const seen = replayLine(x, line, (v) => v[FEATURE_NAMES.indexOf('err5xx_1m')]);
    expect(seen).toBe(0);
    const after = replayLine(x, { ...line, ts: T0 + S }, (v) => v[FEATURE_NAMES.indexOf('err5xx_1m')]);
    expect(after).toBeGreaterThan(0.5);
  });
});

describe('paths and networks', () => {
  it('collapses numeric ids, UUIDs and long hex ids into one template', () => {
    const a = { tpl: 0, idHash: 0, idNum: 0 };
    const b = { tpl: 0, idHash: 0, idNum: 0 };
    parsePath('/api/v1/customers/123/orders?page=2', a);
    parsePath('/api/v1/customers/98765/orders', b);
    expect(a.tpl).toBe(b.tpl);
    expect(a.idNum).toBe(123);
    expect(a.idHash).not.toBe(b.idHash);
    parsePath('/api/v1/invoices/550e8400-e29b-41d4-a716-446655440000', a);
    parsePath('/api/v1/invoices/6ba7b810-9dad-11d1-80b4-00c04fd430c8', b);
    expect(a.tpl).toBe(b.tpl);
    expect(Number.isNaN(a.idNum)).toBe(true);
    parsePath('/api/v1/blobs/deadbeefdeadbeef00', a);
    parsePath('/api/v1/blobs/0123456789abcdef11', b);
    expect(a.tpl).toBe(b.tpl);
    parsePath('/api/v1/me', a);
    expect(a.idHash).toBe(0);
    parsePath('/api/v1/customers', b);
    expect(a.tpl).not.toBe(b.tpl);
  });

  it('maps IPv4 to its /24 and IPv6 to its /48', () => {
    expect(networkOf('203.0.113.7')).toBe('203.0.113');
    expect(networkOf('::ffff:203.0.113.7')).toBe('203.0.113');
    expect(networkOf('2001:db8::1')).toBe('2001:db8:0');
    expect(networkOf('2001:0DB8:00aa:1::5')).toBe('2001:db8:aa');
  });
});

describe('per-principal features', () => {
  it('rate per window and ratio to the own baseline', () => {
    const { hit, now } = withHistory();
    let f = hit({ ts: now });
    expect(f.rate_ratio_1m).toBeLessThan(1);
    expect(Math.abs(f.rate_ratio_10m)).toBeLessThan(1); // a request a minute, as the baseline
    const before = f;
    for (let i = 1; i <= 100; i++) f = hit({ ts: now + i * 100, path: '/api/v1/tickets/100' });
    expect(f.rate_1s).toBeGreaterThan(Math.log1p(300));
    expect(f.rate_1m).toBeGreaterThan(Math.log1p(90)); // ~100 requests in the last 10 s, per minute
    expect(f.rate_ratio_10m).toBeGreaterThan(before.rate_ratio_10m + 1);
    expect(f.rate_10s).toBeGreaterThan(f.rate_10m);
    expect(f.rate_ratio_10s).toBeGreaterThan(3);
    expect(f.rate_ratio_1m).toBeGreaterThan(2);
  });

  it('4xx, 5xx and deny ratios come from earlier responses', () => {
    const { hit } = harness();
    for (let i = 0; i < 4; i++) hit({ ts: T0 + i * S }, { status: 404 });
    for (let i = 4; i < 8; i++) hit({ ts: T0 + i * S }, { status: 503 });
    for (let i = 8; i < 12; i++) hit({ ts: T0 + i * S }, { status: 403, denied: true });
    const f = hit({ ts: T0 + 12 * S });
    expect(f.err4xx_1m).toBeCloseTo(8 / 12.5, 1);
    expect(f.err5xx_1m).toBeCloseTo(4 / 12.5, 1);
    expect(f.deny_1m).toBeCloseTo(4 / 12.5, 1);
    expect(f.err4xx_10m).toBeCloseTo(8 / 12.5, 1);
    expect(f.err5xx_10m).toBeCloseTo(4 / 12.5, 1);
    expect(f.deny_10m).toBeGreaterThan(0.25);
    // The 1 min windows forget within minutes, the 10 min ones keep them.
    const later = hit({ ts: T0 + 5 * MIN });
    expect(later.err4xx_1m).toBeLessThan(0.15);
    expect(later.err4xx_10m).toBeGreaterThan(0.3);
  });

  it('distinct templates per window, ids collapsed', () => {
    const { hit } = harness();
    let f = hit();
    for (let i = 1; i < 50; i++) f = hit({ ts: T0 + i * S, path: `/api/v1/tickets/${i}` });
    expect(f.tpl_distinct_1m).toBeLessThan(Math.log1p(2.5));
    expect(f.tpl_distinct_10m).toBeLessThan(Math.log1p(2.5));
    for (let i = 0; i < 10; i++) f = hit({ ts: T0 + 50 * S + i * S, path: `/api/v1/area${i}/items` });
    expect(f.tpl_distinct_1m).toBeGreaterThan(Math.log1p(8));
    expect(f.tpl_distinct_10m).toBeGreaterThan(Math.log1p(8));
  });

  it('sequential-id enumeration', () => {
    const { hit, now } = withHistory();
    let f = hit({ ts: now });
    expect(f.seq_id_1m).toBeLessThan(0.3);
    for (let i = 0; i < 60; i++) f = hit({ ts: now + (i + 1) * 500, path: `/api/v1/customers/${5000 + i}` });
    expect(f.seq_id_1m).toBeGreaterThan(0.8);
    expect(f.seq_id_10m).toBeGreaterThan(0.1);
  });

  it('novelty of templates and ids is weighted by how rarely the principal meets new ones', () => {
    // A service account: the same endpoint for hours, no object ids.
    const svc = harness();
    for (let i = 0; i < 2000; i++) svc.hit({ ts: T0 + i * 10 * S, principal: 'svc', path: '/api/v1/queue/jobs' });
    const s = svc.hit({ ts: T0 + 2000 * 10 * S, principal: 'svc', path: '/api/v1/customers/42' });
    // A support agent meeting new tickets all day.
    const agent = harness();
    for (let i = 0; i < 2000; i++) agent.hit({ ts: T0 + i * 10 * S, path: i % 2 ? `/api/v1/tickets/${i}` : '/api/v1/customers/7' });
    const a = agent.hit({ ts: T0 + 2000 * 10 * S, path: '/api/v1/tickets/999999' });
    expect(s.tpl_novelty_now).toBeGreaterThan(3);
    expect(s.id_novelty_now).toBeGreaterThan(3);
    expect(a.tpl_novelty_now).toBe(0);
    expect(a.id_novelty_now).toBeGreaterThan(0);
    expect(a.id_novelty_now).toBeLessThan(1);
    expect(s.id_novelty_1m).toBeGreaterThan(a.id_novelty_1m);
    expect(s.tpl_novelty_10m).toBeGreaterThan(0);
    expect(s.id_novelty_10m).toBeGreaterThan(0);
    // Five minutes of usual polling later, the 1 min window has forgotten it, the 10 min one not.
    let back = s;
    for (let i = 1; i <= 30; i++) back = svc.hit({ ts: T0 + 2000 * 10 * S + i * 10 * S, principal: 'svc', path: '/api/v1/queue/jobs' });
    expect(back.id_novelty_1m).toBeLessThan(0.01);
    expect(back.id_novelty_10m).toBeGreaterThan(0.01);
    expect(back.tpl_novelty_10m).toBeGreaterThan(0.01);
    expect(a.tpl_novelty_10m).toBeLessThan(1e-6); // its two templates were new hours ago
    expect(a.id_new_10m).toBeGreaterThan(0.3);
  });

  it('bytes to the client and response size against own history', () => {
    const { hit, now } = withHistory();
    let f = hit({ ts: now });
    expect(Math.abs(f.resp_size_z)).toBeLessThan(1);
    const quiet = f.bytes_10m;
    const quiet1m = f.bytes_1m;
    for (let i = 1; i <= 5; i++) f = hit({ ts: now + i * 30 * S }, { bytes: 2_000_000 });
    expect(f.bytes_1m).toBeGreaterThan(quiet1m + 3);
    expect(f.resp_size_z).toBeGreaterThan(3);
    expect(f.resp_size_z_slow).toBeGreaterThan(1);
    expect(f.bytes_10m).toBeGreaterThan(quiet + 3);
    expect(f.bytes_ratio_10m).toBeGreaterThan(3);
  });

  it('share of writes in the last minute', () => {
    const { hit } = harness();
    let f = hit();
    expect(f.write_1m).toBe(0);
    for (const [i, method] of ['POST', 'PUT', 'PATCH', 'DELETE'].entries()) f = hit({ ts: T0 + (i + 1) * S, method });
    expect(f.write_1m).toBeGreaterThan(0.75);
    f = hit({ ts: T0 + 10 * MIN });
    expect(f.write_1m).toBeLessThan(0.05);
  });

  it('inter-arrival burstiness: regular is negative, bursty is positive', () => {
    const reg = harness();
    let r = reg.hit();
    for (let i = 1; i < 100; i++) r = reg.hit({ ts: T0 + i * 10 * S });
    const bur = harness();
    let b = bur.hit();
    let t = T0;
    for (let i = 1; i < 100; i++) b = bur.hit({ ts: (t += i % 10 === 0 ? 50 * S : 50) });
    expect(r.burstiness).toBeLessThan(-0.5);
    expect(b.burstiness).toBeGreaterThan(0.3);
    expect(r.ia_log_mean).toBeCloseTo(Math.log(10.001), 1);
    expect(r.dt_log_now).toBeCloseTo(Math.log1p(10), 3);
  });

  it('new IP, new network and its age, new device and its age', () => {
    const { hit, now } = withHistory();
    let f = hit({ ts: now, ip: '203.0.113.99' });
    expect(f.ip_new).toBe(1);
    expect(f.net_new).toBe(0);
    expect(f.net_age).toBeGreaterThan(1);
    f = hit({ ts: now + S, ip: '2001:db8:1::5', device: 'stolen' });
    expect(f.net_new).toBe(1);
    expect(f.net_age).toBe(0);
    expect(f.device_new).toBe(1);
    expect(f.device_age).toBe(0);
    f = hit({ ts: now + 2 * S, ip: '2001:db8:1::6', device: 'stolen' });
    expect(f.net_new).toBe(0);
    expect(f.device_new).toBe(0);
    expect(f.net_new_10m).toBeGreaterThan(0);
    expect(f.device_new_10m).toBeGreaterThan(0);
  });

  it('device fingerprint change is an input flag, remembered for 10 min', () => {
    const { hit } = harness();
    let f = hit({ fingerprintChanged: true });
    expect(f.fp_changed_now).toBe(1);
    f = hit({ ts: T0 + MIN });
    expect(f.fp_changed_now).toBe(0);
    expect(f.fp_changed_10m).toBeGreaterThan(0.3);
  });

  it('hour of day: unusual and far for this principal', () => {
    const { hit } = harness();
    for (let d = 0; d < 3; d++) for (let m = 0; m < 8 * 60; m += 5) hit({ ts: T0 + d * 24 * HOUR + m * MIN });
    const work = hit({ ts: T0 + 3 * 24 * HOUR + 2 * HOUR });
    const night = hit({ ts: T0 + 3 * 24 * HOUR + 17 * HOUR }); // 02:00 UTC
    expect(work.hour_unusual).toBeLessThan(0.2);
    expect(night.hour_unusual).toBeGreaterThan(2);
    expect(work.hour_gap).toBe(0);
    expect(night.hour_gap).toBe(7); // 09:00 is the nearest working hour
  });

  it('hour of day: a night session stays unusual while it lasts, and counts as one day after it', () => {
    const { hit } = harness();
    for (let d = 0; d < 3; d++) for (let m = 0; m < 8 * 60; m += 5) hit({ ts: T0 + d * 24 * HOUR + m * MIN });
    const nightStart = T0 + 3 * 24 * HOUR + 17 * HOUR; // 02:00 UTC
    let last = hit({ ts: nightStart });
    for (let i = 1; i < 300; i++) last = hit({ ts: nightStart + i * 10 * S }); // 50 min, 300 requests
    expect(last.hour_gap).toBe(7);
    expect(last.hour_unusual).toBeGreaterThan(2);
    // The next night at 02:00: one earlier day out of three, so less unusual, but still far from
    // the hours active on at least max(1, 3/5) earlier days, which 02:00 now is.
    const next = hit({ ts: nightStart + 24 * HOUR });
    expect(next.hour_gap).toBe(0);
    expect(next.hour_unusual).toBeLessThan(last.hour_unusual);
    expect(next.hour_unusual).toBeGreaterThan(0.5);
  });

  it('principal age, own authentication failures', () => {
    const { hit } = harness();
    let f = hit();
    expect(f.principal_events).toBeCloseTo(Math.log1p(1), 5);
    f = hit({ ts: T0 + 2 * HOUR, authFailure: true });
    expect(f.principal_age).toBeCloseTo(Math.log1p(2), 3);
    expect(f.auth_fail_now).toBe(1);
    expect(f.auth_fail_10m).toBeGreaterThan(0.9);
  });
});

describe('cross-principal signals', () => {
  it('counts failures and failing accounts per network and gateway-wide', () => {
    const { x, hit } = harness();
    let f = hit();
    // As the gateway records a refused token: no principal, the subject it claimed.
    for (let i = 0; i < 50; i++) f = hit({ ts: T0 + i * S, principal: '', claimedPrincipal: `victim${i}`, ip: `45.1.2.${i}`, authFailure: true, device: '' });
    expect(f.net_fail_1m).toBeGreaterThan(Math.log1p(30));
    expect(f.net_fail_accounts_10m).toBeGreaterThan(Math.log1p(40));
    expect(f.gw_fail_1m).toBeGreaterThan(Math.log1p(30));
    expect(f.gw_fail_share_1m).toBeGreaterThan(0.5);
    // The same account failing again is not a new account.
    const again = hit({ ts: T0 + 51 * S, principal: '', claimedPrincipal: 'victim0', ip: '45.1.2.200', authFailure: true });
    expect(again.net_fail_accounts_10m).toBeCloseTo(f.net_fail_accounts_10m, 1);
    // A successful request elsewhere is not made risky by the burst.
    const ok = hit({ ts: T0 + 52 * S });
    expect(ok.net_fail_1m).toBe(0);
    expect(ok.gw_fail_1m).toBe(0);
    // Unknown failing principals get no state: the LRU keeps the real users.
    expect(x.size).toBe(1);
  });

  it('a forged token claiming a real principal counts as a failing account, never in that principal\'s history', () => {
    const { x, hit } = harness();
    hit({ principal: 'alice' });
    let f = hit({ ts: T0 + S, principal: '', claimedPrincipal: 'alice', ip: '45.9.9.9', authFailure: true, device: '' });
    for (let i = 2; i < 30; i++) f = hit({ ts: T0 + i * S, principal: '', claimedPrincipal: 'alice', ip: '45.9.9.9', authFailure: true, device: '' });
    // One account (decayed a little over 29 s), not 29.
    expect(f.net_fail_accounts_10m).toBeGreaterThan(Math.log1p(0.9));
    expect(f.net_fail_accounts_10m).toBeLessThan(Math.log1p(1.01));
    expect(f.net_fail_10m).toBeGreaterThan(Math.log1p(25));
    const own = hit({ ts: T0 + 31 * S, principal: 'alice' });
    expect(own.auth_fail_10m).toBe(0);
    expect(own.principal_events).toBeCloseTo(Math.log1p(2), 5);
    expect(x.size).toBe(1);
  });
});

describe('bounded memory', () => {
  it('evicts the least recently seen principal beyond the maximum', () => {
    const x = createFeatureExtractor({ maxPrincipals: 3 });
    for (const p of ['a', 'b', 'c']) x.observe(req({ principal: p }));
    x.observe(req({ principal: 'a', ts: T0 + S }));
    x.observe(req({ principal: 'd', ts: T0 + 2 * S }));
    expect(x.size).toBe(3);
    // 'b' was evicted: it starts again as new; 'a' kept its history.
    const b = Array.from(x.observe(req({ principal: 'b', ts: T0 + 3 * S })));
    const a = Array.from(x.observe(req({ principal: 'a', ts: T0 + 4 * S })));
    expect(b[FEATURE_NAMES.indexOf('principal_events')]).toBeCloseTo(Math.log1p(1), 5);
    expect(a[FEATURE_NAMES.indexOf('principal_events')]).toBeCloseTo(Math.log1p(3), 5);
    // A response for an evicted principal is ignored, not a crash or a resurrection.
    x.observeResponse({ ts: T0 + 5 * S, principal: 'zzz', status: 200, bytes: 1 });
    expect(x.size).toBe(3);
  });

  it('holds a bounded number of bytes per principal', () => {
    const n = 20_000;
    globalThis.gc?.();
    const before = process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    const x = createFeatureExtractor({ maxPrincipals: n });
    for (let i = 0; i < n; i++) x.observe(req({ principal: `user-${i}@corp.example`, ts: T0 + i }));
    globalThis.gc?.();
    const after = process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    const perPrincipal = (after - before) / n;
    expect(x.size).toBe(n);
    expect(STATE_BYTES).toBeLessThan(2048);
    // State + typed array header + LRU slot + key; without gc() the figure only over-counts.
    expect(perPrincipal).toBeLessThan(4096);
  });
});
