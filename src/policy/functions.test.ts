import { describe, it, expect } from 'vitest';
import { cidrProblem, glob, globProblem, hourIn, ipIn, ipProblem, timeZoneProblem, weekdayIn } from './functions.ts';

describe('ip_in', () => {
  it('IPv4 networks, single addresses and /0', () => {
    expect(ipIn('10.1.2.3', '10.0.0.0/8')).toBe(true);
    expect(ipIn('11.1.2.3', '10.0.0.0/8')).toBe(false);
    expect(ipIn('192.168.1.255', '192.168.1.0/24')).toBe(true);
    expect(ipIn('192.168.2.0', '192.168.1.0/24')).toBe(false);
    expect(ipIn('203.0.113.7', '203.0.113.7')).toBe(true);
    expect(ipIn('203.0.113.8', '203.0.113.7')).toBe(false);
    expect(ipIn('1.2.3.4', '0.0.0.0/0')).toBe(true);
    // Host bits in the network are ignored, as in Go's net.ParseCIDR.
    expect(ipIn('10.9.9.9', '10.1.2.3/8')).toBe(true);
  });

  it('IPv6 networks, compressed forms and zones', () => {
    expect(ipIn('2001:db8::1', '2001:db8::/32')).toBe(true);
    expect(ipIn('2001:db9::1', '2001:db8::/32')).toBe(false);
    expect(ipIn('2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::/126')).toBe(true);
    expect(ipIn('::1', '::1/128')).toBe(true);
    expect(ipIn('fe80::1%eth0', 'fe80::/10')).toBe(true);
    expect(ipIn('fd00::5', '::/0')).toBe(true);
  });

  it('IPv4-mapped IPv6 addresses (a dual-stack listener) count as IPv4', () => {
    expect(ipIn('::ffff:10.1.2.3', '10.0.0.0/8')).toBe(true);
    expect(ipIn('::ffff:11.1.2.3', '10.0.0.0/8')).toBe(false);
    expect(ipIn('10.1.2.3', '::ffff:10.0.0.0/104')).toBe(true);
  });

  it('never matches across families', () => {
    expect(ipIn('10.1.2.3', '::/0')).toBe(false);
    expect(ipIn('2001:db8::1', '0.0.0.0/0')).toBe(false);
  });

  it('throws on an invalid address or network (a runtime error in a condition)', () => {
    expect(() => ipIn('10.1.2', '10.0.0.0/8')).toThrow(/not an IPv4 or IPv6 address/);
    expect(() => ipIn('', '10.0.0.0/8')).toThrow(/not an IPv4 or IPv6 address/);
    expect(() => ipIn('10.1.2.3', '10.0.0.0/33')).toThrow(/prefix length from 0 to 32/);
    expect(() => ipIn('10.1.2.3', '10.0.0.0/')).toThrow(/prefix length/);
    expect(() => ipIn('::1', '::/129')).toThrow(/prefix length from 0 to 128/);
    expect(() => ipIn('10.1.2.3', 'ten/8')).toThrow(/not an IPv4 or IPv6 address/);
  });

  it('load-time checks for literal arguments', () => {
    expect(cidrProblem('10.0.0.0/8')).toBeUndefined();
    expect(cidrProblem('2001:db8::/32')).toBeUndefined();
    expect(cidrProblem('10.0.0.0/8 ')).toMatch(/prefix length/);
    expect(ipProblem('300.1.1.1')).toMatch(/not an IPv4/);
    expect(ipProblem('::1')).toBeUndefined();
  });
});

describe('hour_in and weekday_in', () => {
  // Sunday 2024-03-31 23:30 UTC: already Monday 01:30 in Berlin (summer time, +02:00, began
  // that morning), still Sunday 19:30 in New York (EDT, -04:00).
  const t = new Date('2024-03-31T23:30:00Z');

  it('read the hour and weekday in the named zone', () => {
    expect(hourIn(t, 'UTC')).toBe(23);
    expect(weekdayIn(t, 'UTC')).toBe(0);
    expect(hourIn(t, 'Europe/Berlin')).toBe(1);
    expect(weekdayIn(t, 'Europe/Berlin')).toBe(1);
    expect(hourIn(t, 'America/New_York')).toBe(19);
    expect(weekdayIn(t, 'America/New_York')).toBe(0);
    expect(hourIn(t, 'Asia/Kolkata')).toBe(5);
    expect(hourIn(t, '+02:00')).toBe(1);
  });

  it('apply daylight saving time', () => {
    expect(hourIn(new Date('2024-01-15T12:00:00Z'), 'Europe/Berlin')).toBe(13);
    expect(hourIn(new Date('2024-07-15T12:00:00Z'), 'Europe/Berlin')).toBe(14);
  });

  it('midnight is hour 0, not 24', () => {
    expect(hourIn(new Date('2024-06-03T00:00:00Z'), 'UTC')).toBe(0);
  });

  it('every weekday from Sunday = 0 to Saturday = 6', () => {
    const days = Array.from({ length: 7 }, (_, i) => weekdayIn(new Date(Date.UTC(2024, 5, 2 + i, 12)), 'UTC'));
    expect(days).toEqual([0, 1, 2, 3, 4, 5, 6]); // 2024-06-02 is a Sunday
  });

  it('an unknown zone throws, and is caught at load time when literal', () => {
    expect(() => hourIn(t, 'Europe/Berln')).toThrow(RangeError);
    expect(timeZoneProblem('Europe/Berln')).toMatch(/not a time zone/);
    expect(timeZoneProblem('Europe/Berlin')).toBeUndefined();
  });
});

describe('glob', () => {
  it('"*" stays within one segment', () => {
    expect(glob('/api/users', '/api/*')).toBe(true);
    expect(glob('/api/users/1', '/api/*')).toBe(false);
    expect(glob('/api/users/1', '/api/*/1')).toBe(true);
    expect(glob('/api/report.pdf', '/api/*.pdf')).toBe(true);
    expect(glob('/api/report.pdf.exe', '/api/*.pdf')).toBe(false);
    expect(glob('/api/', '/api/*')).toBe(true);
  });

  it('"**" is any number of segments, none included: a segment-aware prefix', () => {
    expect(glob('/admin', '/admin/**')).toBe(true);
    expect(glob('/admin/', '/admin/**')).toBe(true);
    expect(glob('/admin/users/1', '/admin/**')).toBe(true);
    expect(glob('/administrator', '/admin/**')).toBe(false);
    expect(glob('/a/b', '/a/**/b')).toBe(true);
    expect(glob('/a/x/y/b', '/a/**/b')).toBe(true);
    expect(glob('/a/x/y/c', '/a/**/b')).toBe(false);
    expect(glob('/deep/path/secret.key', '**/*.key')).toBe(true);
    expect(glob('anything/at/all', '**')).toBe(true);
  });

  it('is anchored and case-sensitive; other characters are literal', () => {
    expect(glob('/API/x', '/api/**')).toBe(false);
    expect(glob('/x/api', '/api/**')).toBe(false);
    expect(glob('/a.c', '/a?c')).toBe(false);
    expect(glob('/a?c', '/a?c')).toBe(true);
    expect(glob('/a+b', '/a+b')).toBe(true);
  });

  it('matches host names with "*" across labels', () => {
    expect(glob('a.b.example.com', '*.example.com')).toBe(true);
    expect(glob('example.com', '*.example.com')).toBe(false);
  });

  it('stays fast on patterns that make regex engines backtrack', () => {
    const started = performance.now();
    expect(glob(`/${'a'.repeat(5000)}`, '/*a*a*a*a*a*a*a*b')).toBe(false);
    expect(performance.now() - started).toBeLessThan(500);
  });

  it('rejects "**" inside a segment', () => {
    expect(globProblem('/a**')).toMatch(/whole path segment/);
    expect(() => glob('/a', '/a**')).toThrow(/whole path segment/);
    expect(globProblem('/a/**/b/*')).toBeUndefined();
  });
});

describe('the caches behind the helpers answer as if there were none', () => {
  /** hour and weekday from a formatter made for this one question. */
  function uncached(date: Date, tz: string): [number, number] {
    const parts = new Intl.DateTimeFormat('en-US', { timeZone: tz, hourCycle: 'h23', hour: 'numeric', weekday: 'short' }).formatToParts(date);
    const hour = Number(parts.find((p) => p.type === 'hour')!.value);
    const weekday = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'].indexOf(parts.find((p) => p.type === 'weekday')!.value);
    return [hour, weekday];
  }

  it('hour_in and weekday_in: around daylight-saving changes and midnight, on and beside minute edges, zones interleaved', () => {
    const zones = ['Europe/Berlin', 'America/New_York', 'Asia/Kolkata', 'Australia/Lord_Howe', 'UTC', '+05:45'];
    const instants = [
      '2024-03-31T01:00:00Z', // Berlin springs forward
      '2024-10-27T01:00:00Z', // and falls back
      '2024-11-03T06:00:00Z', // New York falls back
      '2024-04-06T15:00:00Z', // Lord Howe: a half-hour change
      '2024-06-02T23:59:00Z',
      '2024-06-02T18:30:00Z', // midnight in Kolkata
    ].map((t) => Date.parse(t));
    const mismatches: string[] = [];
    for (const at of instants) {
      // Both sides of the change, and across the minute before and after it, in steps
      // that land on minute edges as well as inside minutes.
      for (let ms = at - 61_000; ms <= at + 61_000; ms += 997) {
        for (const edge of [ms, Math.floor(ms / 60_000) * 60_000, Math.floor(ms / 60_000) * 60_000 - 1]) {
          for (const tz of zones) {
            const d = new Date(edge);
            const [hour, weekday] = uncached(d, tz);
            if (hourIn(d, tz) !== hour || weekdayIn(d, tz) !== weekday) mismatches.push(`${d.toISOString()} ${tz}`);
          }
        }
      }
    }
    expect(mismatches).toEqual([]);
  });

  it('hour_in before 1973: offsets that were not whole minutes (Monrovia, -0:44:30) are not shared within a minute', () => {
    const mismatches: string[] = [];
    // 1960-06-01 12:44:30 UTC is 12:00:00 in Monrovia: the local hour changes 30 s into a UTC minute.
    const change = Date.parse('1960-06-01T12:44:30Z');
    for (let ms = change - 40_000; ms <= change + 40_000; ms += 500) {
      const d = new Date(ms);
      if (hourIn(d, 'Africa/Monrovia') !== uncached(d, 'Africa/Monrovia')[0]) mismatches.push(d.toISOString());
    }
    expect(mismatches).toEqual([]);
  });

  it('ip_in: the last address remembered never answers for another', () => {
    for (let n = 0; n < 3; n++) {
      expect(ipIn('10.1.2.3', '10.0.0.0/8')).toBe(true);
      expect(ipIn('11.1.2.3', '10.0.0.0/8')).toBe(false);
      expect(() => ipIn('not-an-ip', '10.0.0.0/8')).toThrow(/not an IPv4 or IPv6 address/);
      expect(ipIn('::ffff:10.1.2.3', '10.0.0.0/8')).toBe(true);
      expect(ipIn('10.1.2.3', '2001:db8::/32')).toBe(false);
    }
  });

  it('glob: a checked pattern is reused, a bad one fails every time', () => {
    for (let n = 0; n < 3; n++) {
      expect(glob('/admin/users', '/admin/**')).toBe(true);
      expect(glob('/administrator', '/admin/**')).toBe(false);
      expect(() => glob('/a', '/a**')).toThrow(/whole path segment/);
      expect(glob('/api/x.pdf', '/api/*.pdf')).toBe(true);
    }
  });
});
