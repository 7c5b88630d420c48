// One HTTP/1.1 request written byte for byte on a node:net socket, and the response read back
// without Node's client in between: no normalisation of the target, the header names, their
// case, order or repetition. For attack tests whose point is exactly those bytes.
import net from 'node:net';

export interface NetResponse {
  status: number;
  /** Lower-cased names; repeated headers joined with ', '. */
  headers: Record<string, string>;
  body: string;
  json<T = any>(): T;
}

/** `lines` are header lines ("Name: value"); Connection: close is added unless one is given. */
export function netRequest(baseUrl: string, opts: { method?: string; target: string; lines?: string[]; body?: string; timeoutMs?: number }): Promise<NetResponse> {
  const url = new URL(baseUrl);
  const lines = [...(opts.lines ?? [])];
  if (!lines.some((l) => /^host:/i.test(l))) lines.unshift(`Host: ${url.host}`);
  if (!lines.some((l) => /^connection:/i.test(l))) lines.push('Connection: close');
  if (opts.body !== undefined) lines.push(`Content-Length: ${Buffer.byteLength(opts.body)}`);
  const head = `${opts.method ?? 'GET'} ${opts.target} HTTP/1.1\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n`;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: url.hostname, port: Number(url.port) });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no complete response to ${opts.target} within ${opts.timeoutMs ?? 10_000} ms`));
    }, opts.timeoutMs ?? 10_000);
    const finish = (): boolean => {
      const all = Buffer.concat(chunks);
      const end = all.indexOf('\r\n\r\n');
      if (end === -1) return false;
      const [statusLine, ...headerLines] = all.subarray(0, end).toString('latin1').split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of headerLines) {
        const colon = line.indexOf(':');
        const name = line.slice(0, colon).trim().toLowerCase();
        const value = line.slice(colon + 1).trim();
        headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
      }
      const length = headers['content-length'];
      const bodyBytes = all.subarray(end + 4);
      if (length !== undefined && bodyBytes.length < Number(length)) return false;
      if (length === undefined && headers['transfer-encoding'] !== undefined) return false; // read to the end
      const body = (length === undefined ? bodyBytes : bodyBytes.subarray(0, Number(length))).toString('utf8');
      clearTimeout(timer);
      socket.destroy();
      resolve({ status: Number(statusLine!.split(' ')[1]), headers, body, json: () => JSON.parse(body) });
      return true;
    };
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      if (chunks.length > 0) finish();
    });
    socket.on('end', () => {
      if (!finish()) {
        // chunked or cut: hand back what came, de-chunked naively
        const all = Buffer.concat(chunks).toString('utf8');
        clearTimeout(timer);
        const end = all.indexOf('\r\n\r\n');
        if (end === -1) return reject(new Error(`connection closed without a response to ${opts.target}: ${JSON.stringify(all.slice(0, 200))}`));
        const statusLine = all.slice(0, all.indexOf('\r\n'));
        resolve({ status: Number(statusLine.split(' ')[1]), headers: {}, body: all.slice(end + 4), json: () => JSON.parse(all.slice(end + 4)) });
      }
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.write(head);
    if (opts.body !== undefined) socket.write(opts.body);
  });
}
