// The baseline: Fastify 5 + @fastify/http-proxy with its defaults and the logger off —
// what a reverse proxy costs in this stack before any zero-trust work. The gateway's
// ratio to this is the number the benchmark is about. Usage: bare-proxy.ts UPSTREAM_URL.
// Prints one JSON line, {"url","port"}, once listening; exits like echo-server.ts.
import type { AddressInfo } from 'node:net';
import Fastify from 'fastify';
import httpProxy from '@fastify/http-proxy';

const upstream = process.argv[2];
if (upstream === undefined) {
  process.stderr.write('usage: bare-proxy.ts UPSTREAM_URL\n');
  process.exit(2);
}

const app = Fastify({ logger: false });
// Same path upstream as the gateway's /echo/ route (no prefix stripping), so the echo
// answers the same request in both cases.
await app.register(httpProxy, { upstream, prefix: '/echo', rewritePrefix: '/echo' });
await app.listen({ host: '127.0.0.1', port: 0 });
const { port } = app.server.address() as AddressInfo;
process.stdout.write(`${JSON.stringify({ url: `http://127.0.0.1:${port}`, port })}\n`);

const stop = (): void => {
  void app.close().then(() => process.exit(0));
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
process.stdin.on('close', stop).resume();
