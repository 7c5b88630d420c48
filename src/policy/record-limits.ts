// What a decision line may carry. A decision record holds the policy input so that it can
// be explained and replayed, but the input comes from the client: request headers carry
// credentials, and a client can make any field large. So request headers are recorded
// from an allow-list only, a header whose name says "credential" is never recorded
// whatever the list says, and every client-controlled string is cut to a bound, so one
// line stays a few kilobytes (a deny embedded up to 16 KB of client headers before).

/** Names whose values are credentials: never written to a decision line. */
const CREDENTIAL_NAME = /(^|-)(key|token)$|secret|password|passwd|cookie|auth|session|credential|^dpop$|signature|assertion/;

export function isCredentialHeader(name: string): boolean {
  return CREDENTIAL_NAME.test(name.toLowerCase());
}

/** Headers recorded when the config names none: routing and content hints, no identifiers. */
export const DEFAULT_RECORDED_HEADERS: readonly string[] = Object.freeze([
  'accept',
  'content-length',
  'content-type',
  'origin',
  'user-agent',
]);

export interface RecordLimits {
  /** Lower-case header names recorded (credential names already removed). */
  readonly headers: ReadonlySet<string>;
  /** Longest string kept from a client-controlled value (header value, path, host). */
  readonly maxValueChars: number;
  /** Longest JSON of the token's claims kept; beyond it the claims are left out. */
  readonly maxClaimsChars: number;
}

/** 8 KB lines at most: 8 headers × 256 + path 1 KB + claims 4 KB + the fixed fields. */
export function compileRecordLimits(headers: readonly string[] = DEFAULT_RECORDED_HEADERS): RecordLimits {
  const names = headers.map((h) => h.toLowerCase()).filter((h) => !isCredentialHeader(h));
  return Object.freeze({ headers: new Set(names), maxValueChars: 256, maxClaimsChars: 4096 });
}

export const DEFAULT_RECORD_LIMITS: RecordLimits = compileRecordLimits();
