// The one place that turns errors into what a client sees: RFC 9457 problem documents,
// with the RFC 6750 challenge on 401 and Retry-After on 503. Nothing internal leaks: the
// detail is fixed per code, the error's cause stays in the logs.
import {
  ALL_ERRORS,
  InternalError,
  ZtError,
  BadPathError,
  BadRequestError,
  IssuerUnavailableError,
  InvalidTokenError,
  InvalidDpopProofError,
  UseDpopNonceError,
  DeviceBindingRequiredError,
  CertificateMismatchError,
  UntrustedCertificateError,
  DeviceRevokedError,
  DeviceNotTrustedError,
  DependencyUnavailableError,
  AccessDeniedError,
  StepUpRequiredError,
  MissingTokenError,
  PayloadTooLargeError,
  RequestTimeoutError,
  HeadersTooLargeError,
  RouteNotFoundError,
  MethodNotAllowedError,
  ClientClosedRequestError,
  MisdirectedRequestError,
  ShuttingDownError,
  UpstreamTimeoutError,
  UpstreamUnreachableError,
  UpstreamErrorResponse,
  AdminTokenRequiredError,
  ForeignOriginError,
  ProfileBusyError,
  RateLimitedError,
  RateLimitUnavailableError,
  PrincipalBusyError,
  UpstreamBusyError,
  UpstreamUnavailableError,
} from '../core/errors.ts';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';
const REALM = 'zt-gateway';

interface ProblemSpec {
  slug: string;
  title: string;
  detail: string;
  headers?: Record<string, string>;
}

// Keyed by error code; the test in problem.test.ts fails when a code has no entry.
export const PROBLEMS: Readonly<Record<string, ProblemSpec>> = {
  [BadPathError.code]: {
    slug: 'bad-path',
    title: 'Bad request path',
    detail: 'The request path is ambiguous or malformed and was not forwarded.',
  },
  [BadRequestError.code]: {
    slug: 'bad-request',
    title: 'Bad request',
    detail: 'The request is malformed and was not forwarded.',
  },
  [MisdirectedRequestError.code]: {
    slug: 'misdirected-request',
    title: 'Misdirected request',
    detail: 'This gateway does not serve the host named in the request.',
  },
  [RouteNotFoundError.code]: {
    slug: 'route-not-found',
    title: 'Not found',
    detail: 'No route is configured for this host and path.',
  },
  [MethodNotAllowedError.code]: {
    slug: 'method-not-allowed',
    title: 'Method not allowed',
    detail: 'This gateway does not forward requests with this method; the Allow header lists the ones it does.',
    headers: { allow: 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS' },
  },
  [PayloadTooLargeError.code]: {
    slug: 'payload-too-large',
    title: 'Payload too large',
    detail: 'The request body exceeds the size this gateway accepts.',
  },
  [RequestTimeoutError.code]: {
    slug: 'request-timeout',
    title: 'Request timeout',
    // A slow body may already be partly streamed to the upstream when the clock runs out.
    detail: 'The request was not received in time; it was not forwarded, or its forwarding was cut off.',
    headers: { connection: 'close' },
  },
  [HeadersTooLargeError.code]: {
    slug: 'headers-too-large',
    title: 'Request header fields too large',
    detail: 'The request head exceeds the size this gateway accepts.',
    headers: { connection: 'close' },
  },
  [MissingTokenError.code]: {
    slug: 'authentication-required',
    title: 'Authentication required',
    detail: 'Send an access token in the Authorization header: "Authorization: Bearer <token>".',
    // RFC 6750 §3.1: no error code when the request carried no credentials at all.
    headers: { 'www-authenticate': `Bearer realm="${REALM}"` },
  },
  [InvalidTokenError.code]: {
    slug: 'invalid-token',
    title: 'Invalid access token',
    detail: 'The access token is invalid, expired, or not accepted here. Sign in again to get a new one.',
    headers: {
      'www-authenticate': `Bearer realm="${REALM}", error="invalid_token", error_description="The access token is invalid or expired"`,
    },
  },
  [IssuerUnavailableError.code]: {
    slug: 'issuer-unavailable',
    title: 'Cannot verify credentials right now',
    detail: 'The identity provider could not be reached to verify the token. Try again shortly.',
    headers: { 'retry-after': '5' },
  },
  [InvalidDpopProofError.code]: {
    slug: 'invalid-dpop-proof',
    title: 'Invalid device proof',
    detail: 'The DPoP proof is missing, malformed, expired, replayed, or does not match this request or token.',
    headers: { 'www-authenticate': `DPoP realm="${REALM}", error="invalid_dpop_proof"` },
  },
  [UseDpopNonceError.code]: {
    slug: 'use-dpop-nonce',
    title: 'Device proof needs a nonce',
    detail: 'Repeat the request with a DPoP proof that includes the nonce from the DPoP-Nonce header.',
    headers: { 'www-authenticate': `DPoP realm="${REALM}", error="use_dpop_nonce"` },
  },
  [DeviceBindingRequiredError.code]: {
    slug: 'device-binding-required',
    title: 'Device-bound token required',
    detail: 'This route accepts only tokens bound to your device (DPoP or a client certificate).',
    headers: {
      'www-authenticate': `DPoP realm="${REALM}", error="invalid_token", error_description="A device-bound token is required"`,
    },
  },
  [CertificateMismatchError.code]: {
    slug: 'certificate-mismatch',
    // One answer for "no certificate" and "another certificate": the token names the one it needs.
    title: 'Client certificate required by the token',
    detail: 'The access token is bound to a client certificate that was not presented on this connection. Connect with that device certificate.',
    headers: {
      'www-authenticate': `Bearer realm="${REALM}", error="invalid_token", error_description="The token is bound to a client certificate not presented"`,
    },
  },
  [UntrustedCertificateError.code]: {
    slug: 'untrusted-certificate',
    title: 'Client certificate not trusted',
    detail: 'The client certificate presented is not issued by the device certificate authority this gateway trusts.',
    headers: {
      'www-authenticate': `Bearer realm="${REALM}", error="invalid_token", error_description="The client certificate is not trusted"`,
    },
  },
  [DeviceRevokedError.code]: {
    slug: 'device-revoked',
    title: 'Device revoked',
    detail: 'This device has been revoked. Contact IT to enroll it again.',
  },
  [DeviceNotTrustedError.code]: {
    slug: 'device-not-trusted',
    title: 'Device not trusted for this route',
    detail: 'This route requires an enrolled device, registered to you, that has checked in recently.',
  },
  [DependencyUnavailableError.code]: {
    slug: 'dependency-unavailable',
    title: 'Cannot verify the request right now',
    detail: 'A service the gateway needs to check this request is unavailable. Try again shortly.',
    headers: { 'retry-after': '2' },
  },
  [AccessDeniedError.code]: {
    slug: 'access-denied',
    title: 'Access denied',
    detail: 'Your access policy does not allow this request. Quote the request id if you think it should.',
  },
  [StepUpRequiredError.code]: {
    slug: 'step-up-required',
    title: 'Stronger authentication required',
    detail: 'Sign in again with the authentication method named in the WWW-Authenticate header, then retry.',
    // The challenge itself (acr_values, max_age) is per decision: the error carries it.
  },
  [UpstreamUnreachableError.code]: {
    slug: 'upstream-unreachable',
    title: 'Bad gateway',
    detail: 'The service behind this route could not be reached.',
  },
  [UpstreamTimeoutError.code]: {
    slug: 'upstream-timeout',
    title: 'Gateway timeout',
    detail: 'The service behind this route did not answer in time.',
  },
  [UpstreamErrorResponse.code]: {
    slug: 'upstream-error',
    title: 'Upstream error',
    detail: 'The service behind this route failed to process the request. Quote the request id when reporting it.',
  },
  [RateLimitedError.code]: {
    slug: 'rate-limited',
    title: 'Too many requests',
    detail: 'This request is over a rate limit. Retry after the time the Retry-After header gives; the RateLimit header shows the quota.',
  },
  [RateLimitUnavailableError.code]: {
    slug: 'rate-limit-unavailable',
    title: 'Service unavailable',
    detail: 'The rate limiter could not be consulted, and this limit refuses requests then. Retry shortly.',
    headers: { 'retry-after': '1' },
  },
  [PrincipalBusyError.code]: {
    slug: 'too-many-in-flight',
    title: 'Too many requests in progress',
    detail: 'You already have the most requests in progress this service allows one client. Finish or cancel some, then retry.',
    headers: { 'retry-after': '1' },
  },
  [UpstreamBusyError.code]: {
    slug: 'upstream-busy',
    title: 'Service busy',
    detail: 'The service behind this gateway has as many requests in progress as it takes. Retry shortly.',
    headers: { 'retry-after': '1' },
  },
  [UpstreamUnavailableError.code]: {
    slug: 'upstream-unavailable',
    title: 'Service unavailable',
    detail: 'The service behind this gateway is failing and is being given time to recover. Retry after the time the Retry-After header gives.',
  },
  [AdminTokenRequiredError.code]: {
    slug: 'admin-token-required',
    title: 'Admin token required',
    detail: 'This admin endpoint needs the admin token: "Authorization: Bearer <token>".',
    headers: { 'www-authenticate': 'Bearer realm="zt-gateway-admin"' },
  },
  [ForeignOriginError.code]: {
    slug: 'foreign-origin',
    title: 'Cross-origin request refused',
    detail: 'The admin plane does not answer requests a web page sends on another origin\'s behalf.',
  },
  [ProfileBusyError.code]: {
    slug: 'profile-busy',
    title: 'Profile already running',
    detail: 'One profile or heap snapshot is taken at a time on an instance. Retry when the running one is done.',
    headers: { 'retry-after': '5' },
  },
  [ShuttingDownError.code]: {
    slug: 'shutting-down',
    title: 'Service unavailable',
    detail: 'This gateway instance is shutting down. Retry the request.',
    headers: { 'retry-after': '1', connection: 'close' },
  },
  [ClientClosedRequestError.code]: {
    slug: 'client-closed-request',
    title: 'Client closed request',
    detail: 'The client closed the connection before the answer was complete; the request to the upstream was cancelled.',
  },
  [InternalError.code]: {
    slug: 'internal',
    title: 'Internal error',
    detail: 'The gateway failed to process the request. Quote the request id when reporting it.',
  },
};

export interface Problem {
  status: number;
  headers: Record<string, string>;
  body: {
    type: string;
    title: string;
    status: number;
    detail: string;
    code: string;
    requestId: string;
  };
}

/** Unknown errors become a 500 with no detail; the caller logs the original. */
export function toProblem(err: unknown, requestId: string): Problem {
  const zt = err instanceof ZtError ? err : new InternalError('unexpected error', { cause: err });
  const spec = PROBLEMS[zt.code] ?? PROBLEMS[InternalError.code]!;
  return {
    status: zt.status,
    headers: { 'content-type': PROBLEM_CONTENT_TYPE, 'cache-control': 'no-store', ...spec.headers, ...zt.headers },
    body: {
      type: `urn:zt-gateway:problem:${spec.slug}`,
      title: spec.title,
      status: zt.status,
      detail: spec.detail,
      code: zt.code,
      requestId,
    },
  };
}

export const ERROR_CODES: readonly string[] = ALL_ERRORS.map((e) => e.code);
