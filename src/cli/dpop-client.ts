// `ztgw dpop curl`: a tiny development client for DPoP-bound tokens (RFC 9449). It sends one
// request with `Authorization: DPoP <token>` and a fresh proof signed by the device key (new
// jti, iat now, htm/htu of this request, ath of this token), retries once with the server's
// nonce when asked (§8), and prints the status and the body. curl cannot do this: a proof is
// good for one request only.
//
// The proof is made by the `dpop` package (panva/dpop), a devDependency: this command is for
// development and the walk-through, and works after `npm ci` in a checkout. It is imported
// only here, so the gateway itself never needs it.
import { parseArgs } from 'node:util';
import { importJWK, type CryptoKey } from 'jose';
import { readKeyFile, signingAlg, KeyFileError } from './keys.ts';

export const DPOP_USAGE = `usage: ztgw dpop curl --key FILE --token TOKEN [-X METHOD] [-H "Name: value"]... [-d BODY] URL

  curl    send one request with a DPoP-bound token and a fresh proof signed by the key in
          FILE (a private JWK or PEM key, e.g. from ztgw keys generate); print the status
          line and the body. Exit 0 for a 1xx-3xx answer, 1 for 4xx/5xx or no answer.
          TOKEN may be "-" to read it from stdin.
`;

/** A usage mistake in `ztgw dpop`: the caller prints it with DPOP_USAGE, exit 2. */
export class DpopUsageError extends Error {}

export async function runDpopCommand(args: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const [command, ...rest] = args;
  if (command !== 'curl') throw new DpopUsageError(command === undefined ? 'dpop: a command is required' : `unknown dpop command "${command}"`);
  const { values, positionals } = parseArgs({
    args: rest,
    strict: true,
    allowPositionals: true,
    options: {
      key: { type: 'string' },
      token: { type: 'string' },
      request: { type: 'string', short: 'X', default: 'GET' },
      header: { type: 'string', short: 'H', multiple: true, default: [] },
      data: { type: 'string', short: 'd' },
    },
  });
  if (values.key === undefined) throw new DpopUsageError('dpop curl: --key FILE is required');
  if (values.token === undefined) throw new DpopUsageError('dpop curl: --token TOKEN is required');
  if (positionals.length !== 1) throw new DpopUsageError('dpop curl: exactly one URL is required');
  let url: URL;
  try {
    url = new URL(positionals[0]!);
  } catch {
    throw new DpopUsageError(`dpop curl: "${positionals[0]}" is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new DpopUsageError('dpop curl: the URL must be http or https');
  const method = values.request.toUpperCase();
  const headers = new Headers();
  for (const h of values.header) {
    const colon = h.indexOf(':');
    if (colon <= 0) throw new DpopUsageError(`dpop curl: -H "${h}" is not "Name: value"`);
    headers.append(h.slice(0, colon).trim(), h.slice(colon + 1).trim());
  }
  const token = values.token === '-' ? (await readStdin()).trim() : values.token;
  const prove = await proofSigner(values.key);
  // RFC 9449 §4.2: htu is the URI without query and fragment.
  const htu = `${url.origin}${url.pathname}`;
  headers.set('authorization', `DPoP ${token}`);

  const send = async (nonce?: string) => {
    headers.set('dpop', await prove(htu, method, token, nonce));
    return fetch(url, { method, headers, ...(values.data !== undefined && { body: values.data }), redirect: 'manual' });
  };
  let res: Response;
  try {
    res = await send();
    const nonce = res.headers.get('dpop-nonce');
    if (res.status === 401 && nonce !== null && /use_dpop_nonce/.test(res.headers.get('www-authenticate') ?? '')) {
      await res.arrayBuffer();
      res = await send(nonce);
    }
  } catch (e) {
    err.write(`ztgw dpop curl: ${url.origin}: no answer (${((e as Error).cause as NodeJS.ErrnoException | undefined)?.code ?? (e as Error).message})\n`);
    return 1;
  }
  const body = await res.text();
  out.write(`HTTP ${res.status} ${res.statusText}\n${body}${body.endsWith('\n') || body === '' ? '' : '\n'}`);
  return res.status < 400 ? 0 : 1;
}

/** Makes fresh proofs (new jti, iat now) with the private key in `file`. */
export async function proofSigner(file: string): Promise<(htu: string, method: string, accessToken: string, nonce?: string) => Promise<string>> {
  const key = readKeyFile(file);
  if (key.privateJwk === undefined) throw new KeyFileError(`${file}: holds no private key; a proof must be signed with one`);
  const alg = signingAlg(key);
  const keypair = {
    privateKey: (await importJWK(key.privateJwk, alg)) as CryptoKey,
    publicKey: (await importJWK(key.publicJwk, alg, { extractable: true })) as CryptoKey,
  };
  const { generateProof } = await import('dpop');
  return (htu, method, accessToken, nonce) => generateProof(keypair, htu, method, nonce, accessToken);
}

async function readStdin(): Promise<string> {
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  return text;
}
