import { describe, expect, it } from 'vitest';
import { createFingerprintTracker, passiveFingerprint } from './fingerprint.ts';

const chrome = {
  'user-agent': 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36',
  'accept-language': 'en-GB,en;q=0.9',
  'sec-ch-ua': '"Chromium";v="126", "Google Chrome";v="126"',
  'sec-ch-ua-platform': '"macOS"',
  'sec-ch-ua-mobile': '?0',
};

describe('passiveFingerprint', () => {
  it('is 16 base64url characters and deterministic', () => {
    const fp = passiveFingerprint(chrome);
    expect(fp).toMatch(/^[A-Za-z0-9_-]{16}$/);
    expect(passiveFingerprint({ ...chrome })).toBe(fp);
  });

  it('ignores per-request and credential headers', () => {
    const fp = passiveFingerprint(chrome);
    expect(passiveFingerprint({ ...chrome, accept: 'application/json', cookie: 'sid=1', authorization: 'DPoP x', 'x-request-id': 'r1', host: 'a' })).toBe(fp);
  });

  it.each(Object.keys(chrome))('changes when %s changes', (name) => {
    expect(passiveFingerprint({ ...chrome, [name]: 'something else' })).not.toBe(passiveFingerprint(chrome));
  });

  it('tells a missing header from an empty one, and trims whitespace', () => {
    const { 'accept-language': _, ...without } = chrome;
    expect(passiveFingerprint(without)).not.toBe(passiveFingerprint({ ...without, 'accept-language': '' }));
    expect(passiveFingerprint({ ...chrome, 'sec-ch-ua-mobile': ' ?0 ' })).toBe(passiveFingerprint(chrome));
  });

  it('keeps fields apart: a value cannot spill into its neighbour', () => {
    const a = passiveFingerprint({ 'user-agent': 'curl/8', 'accept-language': 'en' });
    const b = passiveFingerprint({ 'user-agent': 'curl/8","en', 'accept-language': '' });
    expect(a).not.toBe(b);
  });

  it('joins a repeated header', () => {
    expect(passiveFingerprint({ ...chrome, 'accept-language': ['en-GB', 'en;q=0.9'] } as never)).toBe(
      passiveFingerprint({ ...chrome, 'accept-language': 'en-GB, en;q=0.9' }),
    );
  });

  it('includes the TLS fingerprint when given', () => {
    const plain = passiveFingerprint(chrome);
    const ja4 = passiveFingerprint(chrome, 't13d1516h2_8daaf6152771_02713d6af862');
    expect(ja4).not.toBe(plain);
    expect(passiveFingerprint(chrome, 't13d1516h2_8daaf6152771_02713d6af862')).toBe(ja4);
    expect(passiveFingerprint(chrome, 't13d1516h2_8daaf6152771_e5627efa2ab1')).not.toBe(ja4);
  });

  it('works on no headers at all', () => {
    expect(passiveFingerprint({})).toMatch(/^[A-Za-z0-9_-]{16}$/);
  });
});

describe('createFingerprintTracker', () => {
  it('a first sighting is not a change; the same fingerprint again is not either', () => {
    const t = createFingerprintTracker({ maxDevices: 10 });
    expect(t.observe('dev1', 'fpA')).toEqual({ changed: false, previous: undefined });
    expect(t.observe('dev1', 'fpA')).toEqual({ changed: false, previous: 'fpA' });
  });

  it('a different fingerprint is a change, and becomes the one compared against', () => {
    const t = createFingerprintTracker({ maxDevices: 10 });
    t.observe('dev1', 'fpA');
    expect(t.observe('dev1', 'fpB')).toEqual({ changed: true, previous: 'fpA' });
    expect(t.observe('dev1', 'fpB').changed).toBe(false);
    expect(t.observe('dev1', 'fpA').changed).toBe(true);
  });

  it('tracks devices independently', () => {
    const t = createFingerprintTracker({ maxDevices: 10 });
    t.observe('dev1', 'fpA');
    expect(t.observe('dev2', 'fpB').changed).toBe(false);
    expect(t.observe('dev1', 'fpA').changed).toBe(false);
  });

  it('forgets the least recently seen device beyond maxDevices', () => {
    const t = createFingerprintTracker({ maxDevices: 2 });
    t.observe('dev1', 'fpA');
    t.observe('dev2', 'fpB');
    t.observe('dev1', 'fpA'); // dev1 is now the most recent
    t.observe('dev3', 'fpC'); // evicts dev2
    expect(t.observe('dev2', 'fpX')).toEqual({ changed: false, previous: undefined });
    expect(t.observe('dev3', 'fpX').changed).toBe(true); // dev3 was kept
  });

  it('rejects a bound that is not a positive integer', () => {
    expect(() => createFingerprintTracker({ maxDevices: 0 })).toThrow(RangeError);
    expect(() => createFingerprintTracker({ maxDevices: 1.5 })).toThrow(RangeError);
  });
});
