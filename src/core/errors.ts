// Every failure a client can see is one of these classes. Stages throw them; only
// observability/problem.ts turns them into responses. The `code` is stable (logs,
// metrics, the problem `code` member); the `cause` is for logs and never leaves the
// process. Shape follows jose's src/util/errors.ts.

export abstract class ZtError extends Error {
  static readonly code: string;
  abstract readonly code: string;
  abstract readonly status: number;
  /** Per-instance response headers (e.g. a fresh DPoP-Nonce); static ones live in the problem table. */
  readonly headers: Readonly<Record<string, string>> | undefined;

  constructor(message: string, options?: { cause?: unknown; headers?: Record<string, string> }) {
    super(message, options);
    this.name = new.target.name;
    this.headers = options?.headers;
  }
}

/** The request target is ambiguous or malformed (path confusion, bad encoding). */
export class BadPathError extends ZtError {
  static override readonly code = 'ERR_BAD_PATH';
  readonly code = BadPathError.code;
  readonly status = 400;
}

/** A header or framing problem that makes the request unsafe to interpret. */
export class BadRequestError extends ZtError {
  static override readonly code = 'ERR_BAD_REQUEST';
  readonly code = BadRequestError.code;
  readonly status = 400;
}

/** The client took longer than the configured time to send its request head or body (Node headersTimeout/requestTimeout). */
export class RequestTimeoutError extends ZtError {
  static override readonly code = 'ERR_REQUEST_TIMEOUT';
  readonly code = RequestTimeoutError.code;
  readonly status = 408;
}

/** The request head is over server.limits.maxHeaderBytes (RFC 6585 §5). */
export class HeadersTooLargeError extends ZtError {
  static override readonly code = 'ERR_HEADERS_TOO_LARGE';
  readonly code = HeadersTooLargeError.code;
  readonly status = 431;
}

/**
 * The request's authority (Host, or a trusted proxy's X-Forwarded-Host/-Proto) is not one this
 * gateway serves: not in server.publicOrigins nor a route's hosts (RFC 9110 §15.5.20).
 */
export class MisdirectedRequestError extends ZtError {
  static override readonly code = 'ERR_MISDIRECTED_REQUEST';
  readonly code = MisdirectedRequestError.code;
  readonly status = 421;
}

export class RouteNotFoundError extends ZtError {
  static override readonly code = 'ERR_ROUTE_NOT_FOUND';
  readonly code = RouteNotFoundError.code;
  readonly status = 404;
}

/**
 * The method is not one the gateway routes (RFC 9110 §15.5.6): TRACE, WebDAV's PROPFIND or
 * MKCOL, PURGE, … are never forwarded, whatever the path.
 */
export class MethodNotAllowedError extends ZtError {
  static override readonly code = 'ERR_METHOD_NOT_ALLOWED';
  readonly code = MethodNotAllowedError.code;
  readonly status = 405;
}

export class PayloadTooLargeError extends ZtError {
  static override readonly code = 'ERR_PAYLOAD_TOO_LARGE';
  readonly code = PayloadTooLargeError.code;
  readonly status = 413;
}

/** No credentials were presented (RFC 6750 §3.1: answer without an error code). */
export class MissingTokenError extends ZtError {
  static override readonly code = 'ERR_MISSING_TOKEN';
  readonly code = MissingTokenError.code;
  readonly status = 401;
}

/** A token was presented and refused. The message is generic on purpose; detail goes in `cause`. */
export class InvalidTokenError extends ZtError {
  static override readonly code = 'ERR_INVALID_TOKEN';
  readonly code = InvalidTokenError.code;
  readonly status = 401;
}

/** The issuer's keys could not be fetched: the token could not be checked, so it is refused. */
export class IssuerUnavailableError extends ZtError {
  static override readonly code = 'ERR_ISSUER_UNAVAILABLE';
  readonly code = IssuerUnavailableError.code;
  readonly status = 503;
}

/** A DPoP proof is missing or fails an RFC 9449 §4.3 check. */
export class InvalidDpopProofError extends ZtError {
  static override readonly code = 'ERR_INVALID_DPOP_PROOF';
  readonly code = InvalidDpopProofError.code;
  readonly status = 401;
}

/** The proof lacks a current server nonce; the response carries a fresh DPoP-Nonce (RFC 9449 §8). */
export class UseDpopNonceError extends ZtError {
  static override readonly code = 'ERR_USE_DPOP_NONCE';
  readonly code = UseDpopNonceError.code;
  readonly status = 401;
}

/** The route requires a device-bound token and this one is a plain bearer token. */
export class DeviceBindingRequiredError extends ZtError {
  static override readonly code = 'ERR_DEVICE_BINDING_REQUIRED';
  readonly code = DeviceBindingRequiredError.code;
  readonly status = 401;
}

/** The token is bound to a certificate the client did not present (RFC 8705 §3). */
export class CertificateMismatchError extends ZtError {
  static override readonly code = 'ERR_CERTIFICATE_MISMATCH';
  readonly code = CertificateMismatchError.code;
  readonly status = 401;
}

/**
 * The client presented a certificate that does not chain to the device CA (RFC 8705 §2: the
 * TLS layer must validate it), so nothing it says can bind a token, whatever its thumbprint.
 */
export class UntrustedCertificateError extends ZtError {
  static override readonly code = 'ERR_UNTRUSTED_CERTIFICATE';
  readonly code = UntrustedCertificateError.code;
  readonly status = 401;
}

/** The device was revoked: refused everywhere, at once. */
export class DeviceRevokedError extends ZtError {
  static override readonly code = 'ERR_DEVICE_REVOKED';
  readonly code = DeviceRevokedError.code;
  readonly status = 403;
}

/** The route requires an enrolled device owned by the caller, with fresh posture; this one is not. */
export class DeviceNotTrustedError extends ZtError {
  static override readonly code = 'ERR_DEVICE_NOT_TRUSTED';
  readonly code = DeviceNotTrustedError.code;
  readonly status = 403;
}

/** A dependency needed to decide (Redis, the device registry) failed; the request is refused, not waved through. */
export class DependencyUnavailableError extends ZtError {
  static override readonly code = 'ERR_DEPENDENCY_UNAVAILABLE';
  readonly code = DependencyUnavailableError.code;
  readonly status = 503;
}

/** The policy set decided deny (or nothing allowed the request: default deny). */
export class AccessDeniedError extends ZtError {
  static override readonly code = 'ERR_ACCESS_DENIED';
  readonly code = AccessDeniedError.code;
  readonly status = 403;
}

/** A policy asks for stronger or fresher authentication (RFC 9470); the challenge says what. */
export class StepUpRequiredError extends ZtError {
  static override readonly code = 'ERR_STEP_UP_REQUIRED';
  readonly code = StepUpRequiredError.code;
  readonly status = 401;
}

/** A rate-limit tier (limits.tiers) refused the request; Retry-After and the RateLimit headers say when to come back. */
export class RateLimitedError extends ZtError {
  static override readonly code = 'ERR_RATE_LIMITED';
  readonly code = RateLimitedError.code;
  readonly status = 429;
}

/** The rate-limit store failed and a tier's onStoreFailure is deny: refused, not waved through. */
export class RateLimitUnavailableError extends ZtError {
  static override readonly code = 'ERR_RATE_LIMIT_UNAVAILABLE';
  readonly code = RateLimitUnavailableError.code;
  readonly status = 503;
}

/** This principal (subject + device) already has the upstream's fair share of requests in flight. */
export class PrincipalBusyError extends ZtError {
  static override readonly code = 'ERR_TOO_MANY_IN_FLIGHT';
  readonly code = PrincipalBusyError.code;
  readonly status = 429;
}

/** The upstream's bulkhead is full: answered at once instead of queued. */
export class UpstreamBusyError extends ZtError {
  static override readonly code = 'ERR_UPSTREAM_BUSY';
  readonly code = UpstreamBusyError.code;
  readonly status = 503;
}

/** Every endpoint of the upstream is out (breakers open): answered at once, the upstream is not contacted. */
export class UpstreamUnavailableError extends ZtError {
  static override readonly code = 'ERR_UPSTREAM_UNAVAILABLE';
  readonly code = UpstreamUnavailableError.code;
  readonly status = 503;
}

export class UpstreamUnreachableError extends ZtError {
  static override readonly code = 'ERR_UPSTREAM_UNREACHABLE';
  readonly code = UpstreamUnreachableError.code;
  readonly status = 502;
}

export class UpstreamTimeoutError extends ZtError {
  static override readonly code = 'ERR_UPSTREAM_TIMEOUT';
  readonly code = UpstreamTimeoutError.code;
  readonly status = 504;
}

/**
 * The upstream answered with a 5xx and the route does not pass upstream error bodies through
 * (routes[].response.errorBodies): the gateway answers with the upstream's status and its own
 * problem document, since many internal APIs print stack traces and internal names there.
 */
export class UpstreamErrorResponse extends ZtError {
  static override readonly code = 'ERR_UPSTREAM_ERROR';
  readonly code = UpstreamErrorResponse.code;
  readonly status: number;

  constructor(message: string, options?: { cause?: unknown; headers?: Record<string, string>; status?: number }) {
    super(message, options);
    const status = options?.status ?? 500;
    this.status = status >= 500 && status <= 599 ? status : 500;
  }
}

/** Admin plane: an endpoint beyond health, readiness (and metrics, unless configured) was asked without the admin token. */
export class AdminTokenRequiredError extends ZtError {
  static override readonly code = 'ERR_ADMIN_TOKEN_REQUIRED';
  readonly code = AdminTokenRequiredError.code;
  readonly status = 401;
}

/** Admin plane: the request carries an Origin (or Sec-Fetch-Site) of a web page elsewhere: a browser sent it on a page's behalf. */
export class ForeignOriginError extends ZtError {
  static override readonly code = 'ERR_FOREIGN_ORIGIN';
  readonly code = ForeignOriginError.code;
  readonly status = 403;
}

/** Admin plane: a profile or heap snapshot is already being taken; one at a time. */
export class ProfileBusyError extends ZtError {
  static override readonly code = 'ERR_PROFILE_BUSY';
  readonly code = ProfileBusyError.code;
  readonly status = 409;
}

/** The gateway is draining for shutdown and takes no new work. */
export class ShuttingDownError extends ZtError {
  static override readonly code = 'ERR_SHUTTING_DOWN';
  readonly code = ShuttingDownError.code;
  readonly status = 503;
}

/**
 * The client closed its connection before its answer was complete (mid-body, while the
 * gateway or the upstream worked, or mid-response). Logged and counted with nginx's 499;
 * never sent, as nobody is left to read it. The upstream request was aborted.
 */
export class ClientClosedRequestError extends ZtError {
  static override readonly code = 'ERR_CLIENT_CLOSED_REQUEST';
  readonly code = ClientClosedRequestError.code;
  readonly status = 499;
}

/** Anything unexpected. Never carries detail to the client. */
export class InternalError extends ZtError {
  static override readonly code = 'ERR_INTERNAL';
  readonly code = InternalError.code;
  readonly status = 500;
}

/** The closed set, for the problem mapper and for the test that every code is mapped. */
export const ALL_ERRORS = [
  BadPathError,
  BadRequestError,
  MisdirectedRequestError,
  RouteNotFoundError,
  MethodNotAllowedError,
  PayloadTooLargeError,
  RequestTimeoutError,
  HeadersTooLargeError,
  MissingTokenError,
  InvalidTokenError,
  IssuerUnavailableError,
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
  UpstreamUnreachableError,
  UpstreamTimeoutError,
  UpstreamErrorResponse,
  AdminTokenRequiredError,
  ForeignOriginError,
  ProfileBusyError,
  ShuttingDownError,
  ClientClosedRequestError,
  RateLimitedError,
  RateLimitUnavailableError,
  PrincipalBusyError,
  UpstreamBusyError,
  UpstreamUnavailableError,
  InternalError,
] as const;
