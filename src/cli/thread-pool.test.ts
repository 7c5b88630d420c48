import { describe, expect, it } from 'vitest';
import { threadPoolSize } from './thread-pool.ts';

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
