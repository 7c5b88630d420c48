import { describe, expect, it } from 'vitest';
import { quantileBetween, readHistogram } from './histogram.ts';

const scrape = (counts: number[]): string =>
  ['0.001', '0.01', '+Inf'].map((le, i) => `x_seconds_bucket{le="${le}"} ${counts[i]}`).join('\n') + '\nx_seconds_count 1\ny_bucket{le="1"} 5\n';

describe('histogram quantiles between two scrapes', () => {
  it('reads the named histogram only, and takes the quantile of the difference', () => {
    const before = readHistogram(scrape([10, 10, 10]), 'x_seconds');
    expect([...before]).toEqual([[0.001, 10], [0.01, 10], [Infinity, 10]]);
    const after = readHistogram(scrape([108, 119, 120]), 'x_seconds');
    // 110 new observations: 98 under 1 ms, 109 under 10 ms, one over.
    expect(quantileBetween(before, after, 0.5)).toEqual({ bound: 0.001, count: 110 });
    expect(quantileBetween(before, after, 0.99)).toEqual({ bound: 0.01, count: 110 });
    expect(quantileBetween(before, after, 0.999)).toEqual({ bound: Infinity, count: 110 });
    expect(quantileBetween(after, after, 0.5)).toBeUndefined();
  });
});
