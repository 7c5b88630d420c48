// A real OAuth 2.0 authorization server (panva/oidc-provider) for end-to-end tests.
// Tokens come out of the actual token endpoint via the client_credentials grant, so the
// gateway sees exactly what a production IdP would send: RFC 9068 JWT access tokens
// (typ at+jwt, ES256, kid from the provider's own jwks_uri), DPoP-bound ones (RFC 9449,
// cnf.jkt) and certificate-bound ones (RFC 8705, cnf["x5t#S256"]).
//
// Subjects. For client_credentials RFC 9068 makes `sub` the client_id, so bearer and
// DPoP tokens come from a client *named after the subject* (client_id === sub, default
// 'zt-test-client'); clients are created on demand through a tiny in-memory adapter,
// so any subject works without restarting. Certificate-bound tokens need a client
// registered with that certificate, so they come from a per-(subject, certificate)
// client `${sub}/mtls/<x5t prefix>` and a `formats.customizers.jwt` hook rewrites `sub`
// back to the requested subject (the `client_id` claim keeps the real client id).
//
// mTLS. Besides the plain-HTTP issuer listener, the helper runs a second, HTTPS
// listener (requestCert, any client certificate accepted at the TLS layer) serving the
// same provider, advertised as the RFC 8705 `mtls_endpoint_aliases.token_endpoint`.
// `features.mTLS.getCertificate` reads the peer certificate from that TLS socket, so the
// client really proves possession of `keyPem` in the handshake (no trusted header that
// anyone could forge). Clients use `self_signed_tls_client_auth`: the certificate is
// registered in the client's `jwks` (x5c) and matched by x5t#S256, so no CA has to be
// known to the provider — any certificate (e.g. one from createDeviceCa().issue()) works.

import { randomBytes, X509Certificate } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import { TLSSocket } from 'node:tls';
import * as DPoP from 'dpop';
import { exportJWK, generateKeyPair } from 'jose';
import Provider, { errors, type Adapter, type AdapterPayload, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';
import { certThumbprint, createDeviceCa, createServerCert } from './certs.ts';

export interface TokenOptions {
  /** The token's `sub`; default 'zt-test-client'. */
  sub?: string;
}

export interface OidcProvider {
  /** http://127.0.0.1:PORT — the `iss` of every token. */
  issuer: string;
  /** The provider's own jwks_uri (as advertised in discovery). */
  jwksUrl: string;
  /** The `aud` of every token. */
  audience: string;
  /** client_credentials token bound to the DPoP key (cnf.jkt); present it with `Authorization: DPoP <token>` + a proof. */
  dpopBoundToken(keyPair: CryptoKeyPair, opts?: TokenOptions): Promise<string>;
  /** client_credentials token bound to the client certificate (cnf["x5t#S256"]), obtained over mutual TLS. */
  certBoundToken(certPem: string, keyPem: string, opts?: TokenOptions): Promise<string>;
  /** A plain bearer token (no cnf). */
  bearerToken(opts?: TokenOptions): Promise<string>;
  close(): Promise<void>;
}

const DEFAULT_SUBJECT = 'zt-test-client';
const SCOPE = 'api';

export async function startOidcProvider(opts: { audience?: string } = {}): Promise<OidcProvider> {
  const audience = opts.audience ?? 'zt-gateway';
  // Resource indicators must be absolute URIs (the provider rejects e.g. 'zt-gateway'),
  // but the `aud` it puts in the token is whatever getResourceServerInfo says.
  const resource = URL.parse(audience) ? audience : `urn:zt-gateway:resource:${encodeURIComponent(audience)}`;

  // The provider's signing key: ES256, published at its jwks_uri.
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const signingJwk = { ...(await exportJWK(privateKey)), kid: `es256-${randomBytes(6).toString('hex')}`, alg: 'ES256', use: 'sig' };

  // TLS identity of the mTLS listener; certBoundToken trusts this CA only.
  const serverCa = createDeviceCa('zt-gateway test oidc-provider CA');
  const serverCert = createServerCert(serverCa, ['127.0.0.1']);

  // Client registry + everything else the provider stores, per instance.
  const clientSecret = randomBytes(24).toString('base64url');
  const clients = new Map<string, AdapterPayload>();
  const subjectByClient = new Map<string, string>();
  const stores = new Map<string, Map<string, AdapterPayload>>();
  class TestAdapter implements Adapter {
    readonly name: string;
    readonly store: Map<string, AdapterPayload>;
    constructor(name: string) {
      this.name = name;
      let store = stores.get(name);
      if (!store) stores.set(name, (store = new Map()));
      this.store = store;
    }
    async upsert(id: string, payload: AdapterPayload): Promise<void> {
      this.store.set(id, payload);
    }
    async find(id: string): Promise<AdapterPayload | undefined> {
      return this.name === 'Client' ? clients.get(id) : this.store.get(id);
    }
    async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
      return [...this.store.values()].find((p) => p.userCode === userCode);
    }
    async findByUid(uid: string): Promise<AdapterPayload | undefined> {
      return [...this.store.values()].find((p) => p.uid === uid);
    }
    async consume(id: string): Promise<void> {
      const p = this.store.get(id);
      if (p) p.consumed = Math.floor(Date.now() / 1000);
    }
    async destroy(id: string): Promise<void> {
      this.store.delete(id);
    }
    async revokeByGrantId(grantId: string): Promise<void> {
      for (const [id, p] of this.store) if (p.grantId === grantId) this.store.delete(id);
    }
  }

  // Listen first: the issuer URL needs the port.
  let handler: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => res.writeHead(503).end();
  const dispatch = (req: IncomingMessage, res: ServerResponse) => handler(req, res);
  const httpServer = createHttpServer(dispatch);
  const mtlsServer = createHttpsServer(
    { cert: serverCert.certPem, key: serverCert.keyPem, requestCert: true, rejectUnauthorized: false },
    dispatch,
  );
  await Promise.all([listen(httpServer), listen(mtlsServer)]);
  const issuer = `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;
  const mtlsOrigin = `https://127.0.0.1:${(mtlsServer.address() as AddressInfo).port}`;
  const tokenEndpoint = `${issuer}/token`;
  const mtlsTokenEndpoint = `${mtlsOrigin}/token`;

  const configuration: Configuration = {
    adapter: TestAdapter,
    jwks: { keys: [signingJwk] },
    clientDefaults: {
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      id_token_signed_response_alg: 'ES256',
    },
    // Enabling features.mTLS.selfSignedTlsClientAuth alone is not enough: the method
    // must also be listed here or client metadata using it is rejected.
    clientAuthMethods: ['client_secret_basic', 'self_signed_tls_client_auth'],
    discovery: { mtls_endpoint_aliases: { token_endpoint: mtlsTokenEndpoint } },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      dPoP: { enabled: true },
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        selfSignedTlsClientAuth: true,
        // Only the HTTPS listener has a peer certificate; the TLS layer accepted any
        // certificate, self_signed_tls_client_auth then pins it via the client's jwks.
        getCertificate(ctx) {
          const socket = ctx.socket;
          if (!(socket instanceof TLSSocket)) return undefined;
          return socket.getPeerX509Certificate()?.toString();
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => resource,
        useGrantedResource: () => true,
        getResourceServerInfo(_ctx, indicator) {
          if (indicator !== resource) throw new errors.InvalidTarget();
          return {
            audience,
            scope: SCOPE,
            accessTokenFormat: 'jwt',
            accessTokenTTL: 600,
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
    formats: {
      customizers: {
        jwt(_ctx, token, parts) {
          const sub = token.clientId === undefined ? undefined : subjectByClient.get(token.clientId);
          if (sub !== undefined) parts.payload.sub = sub;
        },
      },
    },
    // Explicit so the provider doesn't print "you SHOULD change" notices.
    ttl: { AccessToken: 600, ClientCredentials: 600 },
    clientBasedCORS: () => true,
  };

  const provider = new Provider(issuer, configuration);
  let lastServerError: unknown;
  provider.on('server_error', (_ctx: KoaContextWithOIDC, err: unknown) => {
    lastServerError = err;
  });
  handler = provider.callback();

  const jwksUrl = `${issuer}/jwks`;

  /** Registers (or refreshes) the shared-secret client for `sub`; its id *is* the subject. */
  function secretClient(sub: string): string {
    clients.set(sub, {
      client_id: sub,
      client_secret: clientSecret,
      token_endpoint_auth_method: 'client_secret_basic',
    });
    return sub;
  }

  async function tokenRequest(res: { status: number; body: string }): Promise<string> {
    let json: { access_token?: unknown; error?: unknown; error_description?: unknown } = {};
    try {
      json = JSON.parse(res.body) as typeof json;
    } catch {
      // fall through to the error below
    }
    if (res.status !== 200 || typeof json.access_token !== 'string') {
      const detail = lastServerError instanceof Error ? ` (server error: ${lastServerError.message})` : '';
      lastServerError = undefined;
      throw new Error(`token request failed: HTTP ${res.status} ${res.body}${detail}`);
    }
    return json.access_token;
  }

  async function postSecret(clientId: string, headers: Record<string, string> = {}): Promise<string> {
    const basic = Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString('base64');
    const res = await fetch(tokenEndpoint, {
      method: 'POST',
      headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded', ...headers },
      body: new URLSearchParams({ grant_type: 'client_credentials' }).toString(),
    });
    return tokenRequest({ status: res.status, body: await res.text() });
  }

  return {
    issuer,
    jwksUrl,
    audience,

    async bearerToken(o = {}) {
      return postSecret(secretClient(o.sub ?? DEFAULT_SUBJECT));
    },

    async dpopBoundToken(keyPair, o = {}) {
      const clientId = secretClient(o.sub ?? DEFAULT_SUBJECT);
      // dpop types its KeyPair with its own CryptoKey alias; it is the WebCrypto pair.
      const proof = await DPoP.generateProof(keyPair as DPoP.KeyPair, tokenEndpoint, 'POST');
      return postSecret(clientId, { dpop: proof });
    },

    async certBoundToken(certPem, keyPem, o = {}) {
      const sub = o.sub ?? DEFAULT_SUBJECT;
      const x509 = new X509Certificate(certPem);
      const x5t = certThumbprint(certPem);
      const clientId = `${sub}/mtls/${x5t.slice(0, 16)}`;
      const jwk = x509.publicKey.export({ format: 'jwk' });
      clients.set(clientId, {
        client_id: clientId,
        token_endpoint_auth_method: 'self_signed_tls_client_auth',
        tls_client_certificate_bound_access_tokens: true,
        jwks: { keys: [{ ...jwk, x5c: [x509.raw.toString('base64')] }] },
      });
      subjectByClient.set(clientId, sub);

      const body = new URLSearchParams({ grant_type: 'client_credentials', client_id: clientId }).toString();
      const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = httpsRequest(
          mtlsTokenEndpoint,
          {
            method: 'POST',
            cert: certPem,
            key: keyPem,
            ca: serverCa.caCertPem,
            agent: false, // no pooled connection/TLS session shared between client certificates
            headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body) },
          },
          (r) => {
            const chunks: Buffer[] = [];
            r.on('data', (c: Buffer) => chunks.push(c));
            r.on('end', () => resolve({ status: r.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
            r.on('error', reject);
          },
        );
        req.on('error', reject);
        req.end(body);
      });
      return tokenRequest(res);
    },

    async close() {
      await Promise.all([closeServer(httpServer), closeServer(mtlsServer)]);
    },
  };
}

function listen(server: Server): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
