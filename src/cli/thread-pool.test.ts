import { describe, expect, it } from 'vitest';
import { DEFAULT_POOL_NICE, poolNice, threadPoolSize } from './thread-pool.ts';

describe('threadPoolSize', () => {
  it('is one thread per core', () => {
    expect(threadPoolSize({}, 2)).toBe('2');
    expect(threadPoolSize({}, 8)).toBe('8');
  });

  it('never goes below 2, so a slow DNS lookup cannot hold up every proof check', () => {
    expect(threadPoolSize({}, 1)).toBe('2');
  });

  it("stays within libuv's ceiling", () => {
    expect(threadPoolSize({}, 4096)).toBe('1024');
  });

  it("leaves an operator's UV_THREADPOOL_SIZE alone, and treats an empty one as unset", () => {
    expect(threadPoolSize({ UV_THREADPOOL_SIZE: '16' }, 2)).toBeUndefined();
    expect(threadPoolSize({ UV_THREADPOOL_SIZE: '' }, 2)).toBe('2');
  });
});

describe('poolNice', () => {
  it('is 10 unless the operator sets ZTGW_POOL_NICE', () => {
    expect(DEFAULT_POOL_NICE).toBe(10);
    expect(poolNice({})).toBe(10);
    expect(poolNice({ ZTGW_POOL_NICE: ' ' })).toBe(10);
    expect(poolNice({ ZTGW_POOL_NICE: '5' })).toBe(5);
  });

  it('takes 0 (leave the pool alone) through 19', () => {
    expect(poolNice({ ZTGW_POOL_NICE: '0' })).toBe(0);
    expect(poolNice({ ZTGW_POOL_NICE: '19' })).toBe(19);
  });

  it('refuses anything else with a message that names the variable', () => {
    for (const bad of ['20', '-5', '2.5', 'low', '1e1']) {
      expect(() => poolNice({ ZTGW_POOL_NICE: bad })).toThrow(/ZTGW_POOL_NICE must be an integer from 0 to 19/);
    }
  });
});
