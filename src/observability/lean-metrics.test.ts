import { describe, expect, it } from 'vitest';
import { Counter, Histogram, Registry } from 'prom-client';
import { LeanCounter, LeanHistogram } from './lean-metrics.ts';

const BUCKETS = [0.001, 0.01, 0.1, 1];
const lines = (text: string, name: string) => text.split('\n').filter((l) => l.startsWith(name)).sort();

describe('lean metrics', () => {
  it('expose exactly what prom-client’s own histogram would for the same observations', async () => {
    const lean = new Registry();
    const reference = new Registry();
    const mine = new LeanHistogram({ name: 'h_seconds', help: 'h', label: 'route', buckets: BUCKETS, registers: [lean] });
    const theirs = new Histogram({ name: 'h_seconds', help: 'h', labelNames: ['route'], buckets: BUCKETS, registers: [reference] });
    const samples: [string, number][] = [['a', 0.0005], ['a', 0.001], ['a', 0.05], ['b', 2], ['a', 0.5], ['b', 0.009]];
    for (const [route, v] of samples) {
      mine.series(route).observe(v);
      theirs.observe({ route }, v);
    }
    expect(lines(await lean.metrics(), 'h_seconds')).toEqual(lines(await reference.metrics(), 'h_seconds'));
    expect(await lean.metrics()).toContain('# TYPE h_seconds histogram');
  });

  it('count like prom-client’s counter, per label combination', async () => {
    const lean = new Registry();
    const reference = new Registry();
    const mine = new LeanCounter({ name: 'c_total', help: 'c', labelNames: ['route', 'status'], registers: [lean] });
    const theirs = new Counter({ name: 'c_total', help: 'c', labelNames: ['route', 'status'], registers: [reference] });
    for (const [route, status] of [['a', 200], ['a', 200], ['b', 401], ['a', 503]] as const) {
      mine.inc(route, status);
      theirs.inc({ route, status });
    }
    expect(lines(await lean.metrics(), 'c_total')).toEqual(lines(await reference.metrics(), 'c_total'));
  });
});
