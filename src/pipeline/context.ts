import { hash, randomUUID } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { DeviceContext, Identity, RiskResult } from '../core/domain.ts';
import type { Decision } from '../policy/evaluate.ts';
import type { HeaderDenyList } from '../upstream/header-deny-list.ts';
import type { ResponsePolicy } from './response-headers.ts';
import type { CompiledTier } from '../limits/tiers.ts';
import type { RateLimitHeaders } from '../limits/headers.ts';

export type { DeviceContext, Identity, RiskResult } from '../core/domain.ts';

/** What a route compiles to: everything the request path needs, nothing it must re-derive. */
export interface CompiledRoute {
  readonly name: string;
  /** Lower-case host patterns; undefined = any host. "*.x.com" matches one or more labels. */
  readonly hosts: readonly string[] | undefined;
  /** Always ends without a trailing slash unless it is "/" itself; matching is segment-aware. */
  readonly pathPrefix: string;
  /** Name of the upstream (config/upstreams.ts: a named one, or "route:<route>" for a URL). */
  readonly upstream: string;
  /** Origin of the upstream's preferred endpoint, e.g. "http://10.0.0.5:8080". */
  readonly upstreamOrigin: string;
  /** Path of the upstream base URL without trailing slash ("" for none). */
  readonly upstreamBasePath: string;
  readonly stripPrefix: boolean;
  /** The upstream reads paths ignoring case: matched ignoring ASCII case, policies see the path lower-cased. */
  readonly caseInsensitive: boolean;
  readonly public: boolean;
  /** Issuer names accepted on this route. */
  readonly issuers: readonly string[];
  readonly timeoutMs: number;
  /** routes[].circuitBreaker: false passes the upstream's breakers by (outcomes not counted). */
  readonly circuitBreaker: boolean;
  readonly websocket: boolean;
  /** Device binding policy (see the route's `device` config). */
  readonly deviceBinding: 'required' | 'optional' | 'off';
  readonly requireEnrolledDevice: boolean;
  readonly forwardAuthorization: boolean;
  /** Client headers neither forwarded nor shown to the policy (deny list minus forwardHeaders). */
  readonly denyList: HeaderDenyList;
  /** What the upstream's responses may carry to clients, and which cookies it gets (routes[].response). */
  readonly response: ResponsePolicy;
  /** Rate-limit tiers every request of this route is checked against (routes[].limits). */
  readonly limits: readonly CompiledTier[];
  /** Off: neither the route's tiers nor a policy's rateLimitTier apply. */
  readonly rateLimiting: boolean;
}

/**
 * One request's journey through the pipeline. The fields above the line exist from the start;
 * each stage fills in its own result below it. Stages read earlier results, never raw config.
 */
export interface RequestContext {
  readonly id: string;
  readonly method: string;
  /** Request target as received, before any normalisation. */
  readonly rawUrl: string;
  readonly headers: IncomingHttpHeaders;
  /** Header lines as received, name/value alternating: the only place a repeated Host shows. */
  readonly rawHeaders: readonly string[];
  /** The client connection, as an identity for per-connection memos (never read from). */
  readonly connection: object;
  /** Address of the TCP peer (maybe a proxy). */
  readonly peerIp: string;
  /** True when the data plane terminated TLS for this connection. */
  readonly tls: boolean;
  /** Address and port of our end of the connection: what the client actually reached. */
  readonly localAddress: string;
  readonly localPort: number;
  readonly isUpgrade: boolean;
  /** As the request line said it: "1.1", "1.0" (Node's parser also lets "2.0" through). */
  readonly httpVersion: string;

  // hygiene
  /** Normalised path: dot segments resolved, duplicate slashes merged, unreserved chars decoded. */
  path: string;
  /** Path exactly as the client sent it, minus the query. */
  rawPath: string;
  /** Query string including the leading "?", or "". */
  query: string;
  /** Lower-case host without port, from Host (or X-Forwarded-Host from a trusted proxy). */
  host: string;
  /** The real client: the peer, or the first untrusted hop of X-Forwarded-For. */
  clientIp: string;
  /** X-Forwarded-For value to send upstream. */
  forwardedFor: string;
  /** Scheme the client used (http/https), trusted-proxy aware. */
  forwardedProto: string;
  /** Host the client addressed, with port, for X-Forwarded-Host: a configured origin's, never a raw client value. */
  forwardedHost: string;
  /** The gateway origin this request addressed ("https://gw.example.com"): DPoP htu is checked against it. */
  publicOrigin: string;
  /** Header names the client listed in Connection (RFC 9110 §7.6.1): neither forwarded nor shown to the policy. */
  connectionListed: ReadonlySet<string> | undefined;

  // route
  route?: CompiledRoute;
  /** Path to request from the upstream (base path + maybe-stripped path). */
  upstreamPath?: string;

  // authn
  identity?: Identity;
  /** The access token as presented (for DPoP's ath); never logged. */
  accessToken?: string;
  /** Authorization scheme used: DPoP-bound tokens must come as "DPoP". */
  tokenScheme?: 'bearer' | 'dpop';

  // device
  device?: DeviceContext;
  /** SHA-256 thumbprint (base64url) of the verified client certificate, when mTLS presented one. */
  clientCertThumbprint?: string;
  /** A client certificate was presented but does not chain to the device CA (it has no thumbprint above). */
  clientCertUntrusted?: boolean;

  // risk
  /** The anomaly score (absent: public route, no risk section, degraded, or the run failed). */
  risk?: RiskResult;
  /** The request was folded into its principal's feature history at `ts` (the response is folded in with it). */
  riskObserved?: { readonly ts: number; readonly principal: string };

  // authz
  /** The policy decision (absent on public routes and without a policies section). */
  decision?: Decision;
  /** Content hash of the policy set that decided. */
  policySet?: string;
  /** Header names the policy set may set as obligations: never taken from the client. */
  obligationHeaders?: ReadonlySet<string>;

  // limit
  /** The RateLimit fields of the tiers this request passed, for the response. */
  rateLimit?: RateLimitHeaders;

  // upstream
  /** The upstream a policy obligation sends this request to, instead of the route's (a name in upstreams). */
  upstreamName?: string;
  /** Origin of the endpoint the request went to (pipeline/upstream-guard.ts chose it). */
  upstreamOrigin?: string;
  /** The signed identity assertion for the upstream (absent on public routes). */
  assertion?: string;
}

/** A stage adds its result to the context or throws a ZtError. Sync when it can be: no promise on the fast path. */
export type Stage = (ctx: RequestContext) => void | Promise<void>;

// A request id from a trusted proxy is kept (so one id follows the request across hops)
// only if it looks like an id, not like a log-injection payload.
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

interface ClientCert {
  readonly thumbprint: string | undefined;
  readonly untrusted: boolean;
}
const NO_CERT: ClientCert = Object.freeze({ thumbprint: undefined, untrusted: false });
const UNTRUSTED_CERT: ClientCert = Object.freeze({ thumbprint: undefined, untrusted: true });

/**
 * RFC 8705 §3.1 x5t#S256 of a client certificate the handshake verified against the device
 * CA. The listener asks for a certificate without refusing the handshake, so a certificate
 * that failed verification is noted as such: "untrusted", never "bound to another one".
 * Read from the TLS session on every request, never remembered per socket: what binds a
 * request is the certificate of the session it came on (a memo from the connection's first
 * handshake would outlive a renegotiation). About 5 µs here (getPeerX509Certificate, its DER,
 * SHA-256), against ~50 µs for getPeerCertificate(), which builds every field as a JS object.
 * `authorized` is set once, at the handshake: right only because the listener refuses
 * renegotiation (server/tls-renegotiation.ts), so there is no later handshake it could miss.
 */
function clientCert(socket: IncomingMessage['socket']): ClientCert {
  if (!('encrypted' in socket)) return NO_CERT;
  const tlsSocket = socket as TLSSocket;
  // undefined when the client sent none (or the listener asked for none).
  const cert = tlsSocket.getPeerX509Certificate();
  if (cert === undefined) return NO_CERT;
  if (!tlsSocket.authorized) return UNTRUSTED_CERT;
  return { thumbprint: hash('sha256', cert.raw, 'base64url'), untrusted: false };
}

export function newContext(raw: IncomingMessage, id: string, isUpgrade: boolean): RequestContext {
  const cert = clientCert(raw.socket);
  return {
    clientCertThumbprint: cert.thumbprint,
    clientCertUntrusted: cert.untrusted,
    id,
    method: raw.method ?? 'GET',
    rawUrl: raw.url ?? '',
    headers: raw.headers,
    rawHeaders: raw.rawHeaders,
    connection: raw.socket,
    peerIp: raw.socket.remoteAddress ?? '',
    tls: 'encrypted' in raw.socket && raw.socket.encrypted === true,
    localAddress: raw.socket.localAddress ?? '',
    localPort: raw.socket.localPort ?? 0,
    isUpgrade,
    httpVersion: raw.httpVersion,
    path: '',
    rawPath: '',
    query: '',
    host: '',
    clientIp: '',
    forwardedFor: '',
    forwardedProto: '',
    forwardedHost: '',
    publicOrigin: '',
    connectionListed: undefined,
  };
}

export function requestIdFor(raw: IncomingMessage, trust: (addr: string, hop: number) => boolean): string {
  const incoming = raw.headers['x-request-id'];
  if (typeof incoming === 'string' && REQUEST_ID.test(incoming) && trust(raw.socket.remoteAddress ?? '', 0)) {
    return incoming;
  }
  return randomUUID();
}
