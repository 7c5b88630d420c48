// Starts a real gateway in-process on 127.0.0.1:0 (data and admin planes) from a config
// object, with its log lines captured so tests can assert on them.
import { Writable } from 'node:stream';
import { startGateway, type Gateway, type GatewayOptions } from '../../src/gateway.ts';
import type { Config } from '../../src/config/schema.ts';
import { parseConfig } from '../../src/config/load.ts';
import { stringify } from 'yaml';
import { join } from 'node:path';

export interface TestGateway extends Gateway {
  logs: Record<string, any>[];
}

/** `config` is YAML-shaped input: defaults are filled by the real loader, as for a file. */
export async function startTestGateway(
  config: Record<string, unknown>,
  opts: { dir?: string; now?: () => number; onRiskTrace?: GatewayOptions['onRiskTrace'] } = {},
): Promise<TestGateway> {
  const withPorts = {
    ...config,
    server: {
      ...(config.server as object),
      listen: { host: '127.0.0.1', port: 0 },
      admin: { ...(config.server as { admin?: object } | undefined)?.admin, host: '127.0.0.1', port: 0 },
    },
  };
  const dir = opts.dir ?? process.cwd();
  const parsed: Config = parseConfig(stringify(withPorts), join(dir, 'test.yaml'), {});
  const logs: Record<string, any>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line));
      done();
    },
  });
  const gateway = await startGateway({ source: { config: parsed, dir }, logDestination: sink, now: opts.now, onRiskTrace: opts.onRiskTrace });
  return Object.assign(gateway, { logs });
}
