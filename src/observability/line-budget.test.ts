import { describe, expect, it } from 'vitest';
import { createLineBudget } from './line-budget.ts';

describe('line budget', () => {
  it('lets a burst through, then one line per earned token, and reports what it suppressed', () => {
    let t = 0;
    const budget = createLineBudget({ perSecond: 2, burst: 3, maxKeys: 10, now: () => t });
    expect([budget.take('a'), budget.take('a'), budget.take('a')]).toEqual([0, 0, 0]);
    expect(budget.take('a')).toBeUndefined();
    expect(budget.take('a')).toBeUndefined();
    t += 499;
    expect(budget.take('a')).toBeUndefined();
    t += 1; // half a second: one token
    expect(budget.take('a')).toBe(3);
    expect(budget.take('a')).toBeUndefined();
  });

  it('keeps keys apart: one flooding key does not silence another', () => {
    const budget = createLineBudget({ perSecond: 1, burst: 1, maxKeys: 10, now: () => 0 });
    expect(budget.take('flood')).toBe(0);
    for (let i = 0; i < 100; i++) expect(budget.take('flood')).toBeUndefined();
    expect(budget.take('other')).toBe(0);
  });

  it('never holds more than maxKeys buckets', () => {
    const budget = createLineBudget({ perSecond: 1, burst: 1, maxKeys: 2, now: () => 0 });
    budget.take('a');
    budget.take('b');
    budget.take('c'); // forgets a
    expect(budget.take('a')).toBe(0);
  });
});
