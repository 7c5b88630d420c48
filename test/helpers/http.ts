// A client that sends the request target exactly as given (fetch would normalise
// "/a/../b" and "\\" before the gateway ever saw them, hiding what these tests check).
import http, { type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import https from 'node:https';

export interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  json<T = any>(): T;
}

export function rawRequest(
  baseUrl: string,
  path: string,
  opts: {
    method?: string;
    headers?: OutgoingHttpHeaders;
    body?: string | Buffer;
    timeoutMs?: number;
    /** For https URLs: the CA to trust, and a client certificate to present (mTLS). */
    tls?: { ca: string; cert?: string; key?: string };
  } = {},
): Promise<RawResponse> {
  const url = new URL(baseUrl);
  const client = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = client.request(
      { host: url.hostname, port: url.port, method: opts.method ?? 'GET', path, headers: opts.headers, agent: false, ...opts.tls },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json: () => JSON.parse(text) });
        });
        res.on('error', reject);
      },
    );
    req.setTimeout(opts.timeoutMs ?? 10_000, () => req.destroy(new Error(`request to ${path} timed out`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}
