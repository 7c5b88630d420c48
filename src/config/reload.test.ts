// Reloads take turns and say which fields need a restart.
import { describe, expect, it } from 'vitest';
import { parseConfig } from './load.ts';
import { createReloadQueue, restartRequired, stableJson, type ReloadKind } from './reload.ts';

describe('createReloadQueue', () => {
  it('runs one reload at a time; requests made meanwhile coalesce into one run, a config request covering a policy one', async () => {
    const log: string[] = [];
    let n = 0;
    const gates: (() => void)[] = [];
    const queue = createReloadQueue(async (kind: ReloadKind) => {
      const id = ++n;
      log.push(`start ${id} ${kind}`);
      await new Promise<void>((r) => gates.push(r));
      log.push(`end ${id}`);
      return id;
    });
    const first = queue('policies');
    await Promise.resolve();
    await Promise.resolve();
    const second = queue('policies');
    const third = queue('config');
    await new Promise((r) => setTimeout(r, 20));
    expect(log).toEqual(['start 1 policies']); // the second waits for the first
    gates.shift()!();
    expect(await first).toBe(1);
    await new Promise((r) => setTimeout(r, 20));
    gates.shift()!();
    expect(await second).toBe(2);
    expect(await third).toBe(2);
    expect(log).toEqual(['start 1 policies', 'end 1', 'start 2 config', 'end 2']);
  });

  it('a failed reload does not stop the next one', async () => {
    let calls = 0;
    const queue = createReloadQueue(async () => {
      if (++calls === 1) throw new Error('boom');
      return calls;
    });
    const failed = queue('config');
    const next = queue('config').catch((e: Error) => e.message);
    await expect(failed).rejects.toThrow('boom');
    expect(await next).toBe('boom'); // coalesced with the failing one
    expect(await queue('config')).toBe(2);
  });
});

describe('restartRequired', () => {
  const config = (yaml: string) => parseConfig(`routes: [{ name: a, pathPrefix: /a/, upstream: 'http://127.0.0.1:9', public: true }]\n${yaml}`, '/tmp/t.yaml', {});

  it('names the restart-only fields that changed and nothing else', () => {
    const started = config('server: { listen: { port: 8080 } }');
    expect(restartRequired(started, config('server: { listen: { port: 8080 } }'))).toEqual([]);
    expect(restartRequired(started, config('server: { listen: { port: 8081 }, logLevel: debug }'))).toEqual(['server.listen', 'server.logLevel']);
    expect(restartRequired(started, config('server: { listen: { port: 8080 }, timeouts: { upstreamMs: 1000 } }'))).toEqual([]);
    expect(restartRequired(started, config('server: { listen: { port: 8080 } }\nredis: { url: "redis://127.0.0.1:6379" }'))).toEqual(['redis']);
  });

  it('compares sections by content, not key order', () => {
    expect(stableJson({ b: 1, a: { d: [2, { f: 1, e: 0 }], c: null } })).toBe(stableJson({ a: { c: null, d: [2, { e: 0, f: 1 }] }, b: 1 }));
  });
});
