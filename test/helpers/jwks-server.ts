// A real HTTP JWKS endpoint for identity tests: the gateway fetches it over the
// network exactly as in production, so caching, refetch-on-unknown-kid and the
// JWKS-down failure mode are tested end to end. `getJwks` is called per request, so
// a rotated Issuer is served without restarting anything.

import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface JwksServer {
  /** Full URL of the key set: http://127.0.0.1:PORT/jwks.json */
  url: string;
  /** Requests to /jwks.json so far, failed ones included. */
  readonly hits: number;
  close(): Promise<void>;
  /** While true, /jwks.json answers 500. */
  setFailing(b: boolean): void;
}

export async function serveJwks(getJwks: () => unknown): Promise<JwksServer> {
  let hits = 0;
  let failing = false;

  const server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/jwks.json') {
      res.writeHead(404).end();
      return;
    }
    hits++;
    if (failing) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end('jwks unavailable');
      return;
    }
    const body = JSON.stringify(getJwks());
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(req.method === 'HEAD' ? undefined : body);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}/jwks.json`,
    get hits() {
      return hits;
    },
    setFailing(b: boolean) {
      failing = b;
    },
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
