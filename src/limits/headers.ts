// The IETF RateLimit header fields, draft-ietf-httpapi-ratelimit-headers-10 (structured
// fields, RFC 9651): one Item per tier, as a List.
//   RateLimit-Policy: "per-user";q=100;w=60, "per-ip";q=1000;w=3600
//   RateLimit: "per-user";r=42;t=36, "per-ip";r=998;t=8
// q: the tier's limit (quota units are requests, the default, so no qu); w: its period in
// seconds. r: requests left after this one; t: seconds until the quota resets, which for
// GCRA is when the bucket is full again (draft-10 §4.1's reading: after t the client has
// its whole quota back; a refused request also gets Retry-After, the time until the next
// one passes). Policy names are SF Strings, as the draft's examples use.
//
// Degraded outcomes (the shared store did not answer): 'local' ones carry this
// instance's own figures and are reported; 'allow' and 'deny' ones have no figures, so
// they appear in RateLimit-Policy only.
import type { LimitOutcome } from './store.ts';

export interface RateLimitHeaders {
  /** RateLimit-Policy value; '' when there were no outcomes. */
  policy: string;
  /** RateLimit value; '' when no outcome has figures to report. */
  rateLimit: string;
  /**
   * Seconds for Retry-After when a tier refused the request (rounded up, at least 1): the
   * longest wait among the refusing tiers, since the request passes only when all allow.
   * Undefined when no tier refused it on its figures (a degraded 'deny' has none).
   */
  retryAfter?: number;
}

/** RFC 9651 §3.3.3 sf-string: printable ASCII, '"' and '\' escaped; anything else replaced. */
export function sfString(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (c >= 0x20 && c <= 0x7e) out += ch;
    else out += '?';
  }
  return `${out}"`;
}

/** From one request's outcomes (several tiers) to the header values. */
export function rateLimitHeaders(outcomes: readonly LimitOutcome[]): RateLimitHeaders {
  const policies: string[] = [];
  const limits: string[] = [];
  const seen = new Set<string>();
  let retryMs = -1;
  for (const o of outcomes) {
    // The same tier may be applied twice (a route and an obligation); one entry each.
    if (seen.has(o.key)) continue;
    seen.add(o.key);
    const name = sfString(o.tier.name);
    policies.push(`${name};q=${o.tier.limit};w=${Math.max(1, Math.ceil(o.tier.periodMs / 1000))}`);
    if (o.degraded === 'allow' || o.degraded === 'deny') continue;
    limits.push(`${name};r=${o.remaining};t=${Math.ceil(o.resetMs / 1000)}`);
    if (!o.allowed) retryMs = Math.max(retryMs, o.retryAfterMs);
  }
  const headers: RateLimitHeaders = { policy: policies.join(', '), rateLimit: limits.join(', ') };
  if (retryMs >= 0) headers.retryAfter = Math.max(1, Math.ceil(retryMs / 1000));
  return headers;
}
