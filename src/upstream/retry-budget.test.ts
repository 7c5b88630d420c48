import { describe, expect, it } from 'vitest';
import { createRetryBudget, isRetryable, retryAllowance, RETRY_BUDGET_DEFAULTS } from './retry-budget.ts';

describe('retryAllowance', () => {
  it('is max(minRetryConcurrency, ⌊budgetPercent% of active⌋)', () => {
    const d = RETRY_BUDGET_DEFAULTS;
    expect(retryAllowance(0, d)).toBe(3);
    expect(retryAllowance(14, d)).toBe(3); // 2.8 → 2, the floor wins
    expect(retryAllowance(20, d)).toBe(4);
    expect(retryAllowance(24, d)).toBe(4); // 4.8 rounds down
    expect(retryAllowance(100, d)).toBe(20);
    expect(retryAllowance(1000, { budgetPercent: 50, minRetryConcurrency: 0 })).toBe(500);
    expect(retryAllowance(5, { budgetPercent: 0, minRetryConcurrency: 0 })).toBe(0);
  });
});

describe('createRetryBudget', () => {
  it('allows retries while they stay under the allowance, and again once one ends', () => {
    const budget = createRetryBudget();
    for (let i = 0; i < 20; i++) budget.begin();
    const slots = [budget.tryRetry(), budget.tryRetry(), budget.tryRetry(), budget.tryRetry()];
    expect(slots.every((s) => s !== undefined)).toBe(true);
    expect(budget.tryRetry()).toBeUndefined(); // 4 of 20 × 20%
    expect(budget.activeRetries).toBe(4);
    slots[0]!();
    slots[0]!(); // idempotent
    expect(budget.activeRetries).toBe(3);
    expect(budget.tryRetry()).toBeDefined();
    expect(budget.tryRetry()).toBeUndefined();
  });

  it('shrinks the allowance as requests end, down to the floor', () => {
    const budget = createRetryBudget({ budgetPercent: 50, minRetryConcurrency: 1 });
    const ends = Array.from({ length: 10 }, () => budget.begin());
    expect(budget.active).toBe(10);
    const held = [1, 2, 3, 4, 5].map(() => budget.tryRetry());
    expect(held.every((h) => h !== undefined)).toBe(true);
    for (const end of ends.slice(0, 8)) {
      end();
      end();
    }
    expect(budget.active).toBe(2);
    for (const h of held) h!();
    expect(budget.tryRetry()).toBeDefined(); // floor 1
    expect(budget.tryRetry()).toBeUndefined();
  });

  it('rejects nonsense options', () => {
    expect(() => createRetryBudget({ budgetPercent: 101 })).toThrow(/budgetPercent/);
    expect(() => createRetryBudget({ minRetryConcurrency: -1 })).toThrow(/minRetryConcurrency/);
    expect(() => createRetryBudget({ minRetryConcurrency: 1.5 })).toThrow(/minRetryConcurrency/);
  });
});

describe('isRetryable', () => {
  it.each([
    ['GET', false, true],
    ['HEAD', false, true],
    ['OPTIONS', false, true],
    ['PUT', false, true],
    ['DELETE', false, true],
    ['TRACE', false, true],
    ['PUT', true, false],
    ['GET', true, false],
    ['POST', false, false],
    ['PATCH', false, false],
    ['CONNECT', false, false],
    ['get', false, false], // methods are case-sensitive (RFC 9110 §9.1)
  ] as const)('%s with body=%s → %s', (method, hasBody, expected) => {
    expect(isRetryable(method, hasBody)).toBe(expected);
  });
});
