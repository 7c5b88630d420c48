// The client half of DPoP (RFC 9449) for the benchmark: one ES256 device key, proofs
// minted ahead of a load run, and a microbenchmark of the gateway's own verifier.
//
// Signing a proof costs ~150 µs here, more than the gateway spends on a whole request, so
// it never happens in the load generator's hot loop: a pool is minted before each run and
// the load generator sends each once (see proofPool, runAutocannon, runWrk). Proofs are signed with
// node:crypto (ieee-p1363, as JWS wants) on the libuv pool, a batch at a time: about half
// the cost of jose's CompactSign here, and both cores are used while the servers idle.
import { createHash, generateKeyPairSync, randomUUID, sign, type KeyObject } from 'node:crypto';
import { createDpopVerifier } from '../../src/identity/dpop.ts';
import { createMemoryReplayCache } from '../../src/identity/replay-cache.ts';
import { threadCpuMicros, type HeaderPool } from './lib.ts';

export interface ProofRequest {
  readonly method: string;
  /** The URI exactly as the client addresses it (RFC 9449 §4.2), e.g. http://127.0.0.1:PORT/echo/bench. */
  readonly htu: string;
  /** The token sent as `Authorization: DPoP <token>`; its hash is the proof's `ath`. */
  readonly accessToken: string;
}

export interface DpopClient {
  /** RFC 7638 thumbprint of the public key: the token's cnf.jkt and the device id in the registry. */
  readonly jkt: string;
  /** `count` proofs for one request shape, each with its own jti and iat = now. */
  mint(count: number, req: ProofRequest): Promise<string[]>;
}

// Signatures in flight at once: enough to keep both cores' libuv threads busy, few enough
// that a pool of 50k proofs is not 50k pending promises.
const MINT_BATCH = 512;

/** ES256 is what most DPoP clients use; RS256 verifies ~5x cheaper (45 vs 210 µs here). */
export type ProofAlg = 'ES256' | 'RS256';

function deviceKey(alg: ProofAlg): { privateKey: KeyObject; jwk: Record<string, string> } {
  if (alg === 'RS256') {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const { e, n } = publicKey.export({ format: 'jwk' });
    // RFC 7638 §3.2: the required members only, in lexicographic order.
    return { privateKey, jwk: { e: e!, kty: 'RSA', n: n! } };
  }
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const { crv, x, y } = publicKey.export({ format: 'jwk' });
  return { privateKey, jwk: { crv: crv!, kty: 'EC', x: x!, y: y! } };
}

export function createDpopClient(alg: ProofAlg = 'ES256'): DpopClient {
  const { privateKey, jwk } = deviceKey(alg);
  const jkt = createHash('sha256').update(JSON.stringify(jwk)).digest('base64url');
  // Only the public members: a jwk header with "d" is refused (jwk_private).
  const header = b64url(JSON.stringify({ typ: 'dpop+jwt', alg, jwk }));

  async function mintOne(req: ProofRequest, ath: string): Promise<string> {
    const payload = b64url(JSON.stringify({ htm: req.method, htu: req.htu, iat: Math.floor(Date.now() / 1000), jti: randomUUID(), ath }));
    const signingInput = `${header}.${payload}`;
    return `${signingInput}.${(await signJws(alg, privateKey, Buffer.from(signingInput))).toString('base64url')}`;
  }

  return {
    jkt,
    async mint(count, req) {
      const ath = createHash('sha256').update(req.accessToken).digest('base64url');
      const proofs: string[] = [];
      for (let done = 0; done < count; done += MINT_BATCH) {
        const n = Math.min(MINT_BATCH, count - done);
        proofs.push(...(await Promise.all(Array.from({ length: n }, () => mintOne(req, ath)))));
      }
      return proofs;
    },
  };
}

const b64url = (s: string): string => Buffer.from(s).toString('base64url');

/** ES256 as JWS signs it: r‖s (RFC 7518 §3.4), not DER; RS256 is PKCS#1 v1.5. The callback form runs off the main thread. */
function signJws(alg: ProofAlg, key: KeyObject, data: Buffer): Promise<Buffer> {
  const keyInput = alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' as const } : key;
  return new Promise((resolve, reject) => {
    sign('sha256', data, keyInput, (err, sig) => (err ? reject(err) : resolve(sig)));
  });
}

/** One `DPoP` header per request, each to be sent once: the gateway refuses a jti it has seen (see runAutocannon, runWrk). */
export function proofPool(proofs: readonly string[]): HeaderPool {
  return { sets: proofs.map((dpop) => ({ dpop })), singleUse: true };
}

/**
 * The in-process cost of one DPoP verification as the gateway does it (its verifier, a
 * memory replay cache, the key-import cache warm): `ops` verify() calls after `warmup`,
 * each with a fresh proof, `concurrency` in flight as under load. Returns microseconds
 * per call: the CPU of every thread of this process (the signature check runs on libuv's
 * pool), and of the event loop alone (/proc, Linux; undefined elsewhere).
 */
export async function measureDpopVerify(opts: {
  ops: number;
  warmup: number;
  concurrency: number;
  accessToken: string;
  maxAgeS: number;
}): Promise<{ cpuUs: number; eventLoopUs: number | undefined }> {
  const client = createDpopClient();
  const req: ProofRequest = { method: 'GET', htu: 'http://127.0.0.1:8080/echo/bench', accessToken: opts.accessToken };
  const verifier = createDpopVerifier({
    algorithms: ['ES256'],
    maxAgeS: opts.maxAgeS,
    futureSkewS: 5,
    replay: createMemoryReplayCache({ maxEntries: 2 * (opts.ops + opts.warmup) }),
  });
  const proofs = await client.mint(opts.warmup + opts.ops, req);
  const run = async (from: number, to: number): Promise<void> => {
    let next = from;
    const lane = async (): Promise<void> => {
      while (next < to) {
        const proof = proofs[next++]!;
        await verifier.verify({ proof, method: req.method, htu: req.htu, accessToken: req.accessToken, expectedJkt: client.jkt });
      }
    };
    await Promise.all(Array.from({ length: opts.concurrency }, lane));
  };
  await run(0, opts.warmup);
  const cpu0 = process.cpuUsage();
  const loop0 = threadCpuMicros(process.pid, process.pid);
  await run(opts.warmup, proofs.length);
  const cpu = process.cpuUsage(cpu0);
  const loop1 = threadCpuMicros(process.pid, process.pid);
  return {
    cpuUs: (cpu.user + cpu.system) / opts.ops,
    eventLoopUs: loop0 === undefined || loop1 === undefined ? undefined : (loop1 - loop0) / opts.ops,
  };
}
