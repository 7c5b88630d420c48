// Reloads take turns and say which fields need a restart; a policy edit recompiles only what reads the policy set.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { createMetrics } from '../observability/metrics.ts';
import { createServices } from './services.ts';
import { compilePolicyEdit, compileRuntime, type CompileDeps } from './compile.ts';
import { parseConfig } from './load.ts';
import { ConfigError, formatIssue } from '../core/diagnostics.ts';
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

describe('compilePolicyEdit', () => {
  const POLICY = (name: string, when: string) =>
    `apiVersion: zt-gateway/v1\nname: ${name}\nappliesTo: { routes: [a] }\nrules:\n  - name: r\n    effect: allow\n    when: '${when}'\n`;

  async function running() {
    const dir = mkdtempSync(join(tmpdir(), 'zt-policy-edit-'));
    mkdirSync(join(dir, 'policies'));
    writeFileSync(join(dir, 'policies', 'a.yaml'), POLICY('a', '"eng" in identity.groups'));
    writeFileSync(join(dir, 'policies', 'b.yaml'), POLICY('b', '"ops" in identity.groups'));
    const config = parseConfig(
      [
        'identity: { issuers: [{ name: t, issuer: "https://t/", audiences: [zt], algorithms: [HS256], secret: "0123456789abcdef0123456789abcdef" }] }',
        "routes: [{ name: a, pathPrefix: /a/, upstream: 'http://127.0.0.1:9' }, { name: b, pathPrefix: /b/, upstream: 'http://127.0.0.1:9' }]",
        'policies: { dir: policies }',
      ].join('\n'),
      join(dir, 'ztgw.yaml'),
      {},
    );
    const logger = pino({ level: 'silent' });
    const metrics = createMetrics();
    const services = await createServices(config, dir, logger, metrics);
    const deps: CompileDeps = { configDir: dir, services, decisionLog: logger, logger, metrics };
    return { dir, deps, runtime: await compileRuntime(config, deps), close: () => services.close() };
  }

  it('recompiles the policy set and the authz stage only; routes, issuers, caches and the other stages are the running ones', async () => {
    const { dir, deps, runtime, close } = await running();
    try {
      writeFileSync(join(dir, 'policies', 'b.yaml'), POLICY('b', '"sre" in identity.groups'));
      const next = await compilePolicyEdit(runtime, deps);
      expect(next.policies!.evaluator.set.hash).not.toBe(runtime.policies!.evaluator.set.hash);
      expect(next.policies!.evaluator.set.policies[1]!.rules[0]!.condition.source).toBe('"sre" in identity.groups');
      expect(next.config).toBe(runtime.config);
      expect(next.routes).toBe(runtime.routes);
      expect(next.issuers).toBe(runtime.issuers);
      expect(next.parts.tokenCache).toBe(runtime.parts.tokenCache);
      expect(next.parts.dpop).toBe(runtime.parts.dpop);
      expect(next.parts.decisionLines).toBe(runtime.parts.decisionLines); // line budgets carry over
      const authz = runtime.parts.pipeline.authz!;
      expect(next.parts.pipeline.authz).not.toBe(authz);
      expect(next.stages.length).toBe(runtime.stages.length);
      runtime.stages.forEach((stage, i) => (stage === authz ? expect(next.stages[i]).toBe(next.parts.pipeline.authz) : expect(next.stages[i]).toBe(stage)));
      expect(Object.isFrozen(next)).toBe(true);
      // The running Runtime is untouched: requests that started on it finish on the old set.
      expect(runtime.policies!.evaluator.set.policies[1]!.rules[0]!.condition.source).toBe('"ops" in identity.groups');
    } finally {
      await close();
    }
  });

  it('an edit that does not check against the running config is refused whole, with file:line', async () => {
    const { dir, deps, runtime, close } = await running();
    try {
      writeFileSync(join(dir, 'policies', 'b.yaml'), POLICY('b', '"sre" in identity.groups').replace('routes: [a]', 'routes: [nope]'));
      const refused = await compilePolicyEdit(runtime, deps).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(ConfigError);
      expect((refused as ConfigError).issues.map(formatIssue).join('\n')).toMatch(/b\.yaml:3:\d+: .*unknown route "nope"/);
    } finally {
      await close();
    }
  });

  it('an unchanged set keeps the running evaluator and stages', async () => {
    const { deps, runtime, close } = await running();
    try {
      const next = await compilePolicyEdit(runtime, deps);
      expect(next.policies!.evaluator).toBe(runtime.policies!.evaluator);
      expect(next.stages).toBe(runtime.stages);
    } finally {
      await close();
    }
  });
});
