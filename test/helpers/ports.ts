import { createServer, type AddressInfo } from 'node:net';

/**
 * A port that was free a moment ago. Only for processes we cannot ask to listen on 0
 * (redis-server); another process may take it before ours binds, so callers that spawn
 * should retry on "address in use".
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, host, () => resolve());
  });
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}
