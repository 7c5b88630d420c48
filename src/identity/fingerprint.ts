// Passive client fingerprint: a risk signal, not an identity. A device's key proves which
// device it is; this says whether the software presenting that key still looks like the
// software that presented it before. A stolen DPoP key or client certificate replayed
// from another tool usually changes the user agent, the client hints or the TLS hello,
// and the risk stage can weigh that. Every input is client-controlled, so a match proves
// nothing; only a change is informative.
import { hash } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { LRUCache } from 'lru-cache';

// Traits a browser or client library sends identically on every request and that vary
// between clients. Not Accept (varies by request), not cookies or ids (they are the
// credentials, not the client), not sec-ch-ua-full-version-list (sent only on request).
const TRAITS = ['user-agent', 'accept-language', 'sec-ch-ua', 'sec-ch-ua-platform', 'sec-ch-ua-mobile'] as const;

/**
 * base64url SHA-256 of the traits (and the TLS fingerprint, e.g. JA4, when known), first
 * 16 characters: 96 bits, plenty to tell one client's traits from another's, and short
 * enough for logs and features. A missing header differs from an empty one.
 */
export function passiveFingerprint(headers: IncomingHttpHeaders, tlsFingerprint?: string): string {
  const values: (string | null)[] = TRAITS.map((name) => {
    const v = headers[name];
    if (v === undefined) return null;
    return (Array.isArray(v) ? v.join(', ') : v).trim();
  });
  values.push(tlsFingerprint ?? null);
  // JSON keeps the fields apart: no value can be crafted to shift into its neighbour.
  return hash('sha256', JSON.stringify(values), 'base64url').slice(0, 16);
}

export interface FingerprintObservation {
  /** A different fingerprint from the last one seen for this device. A first sighting is not a change. */
  changed: boolean;
  /** The fingerprint seen before this one, if any. */
  previous: string | undefined;
}

export interface FingerprintTracker {
  observe(deviceId: string, fingerprint: string): FingerprintObservation;
}

/**
 * Remembers the last fingerprint per device, for at most `maxDevices` devices (least
 * recently seen forgotten first, so memory stays bounded whatever ids arrive). A device
 * forgotten and seen again counts as a first sighting: the signal errs towards silence.
 * Per process: with N instances each notices a change on its own.
 */
export function createFingerprintTracker(opts: { maxDevices: number }): FingerprintTracker {
  if (!Number.isInteger(opts.maxDevices) || opts.maxDevices < 1) {
    throw new RangeError(`maxDevices must be a positive integer, got ${opts.maxDevices}`);
  }
  const last = new LRUCache<string, string>({ max: opts.maxDevices });
  return {
    observe(deviceId, fingerprint) {
      const previous = last.get(deviceId);
      if (previous !== fingerprint) last.set(deviceId, fingerprint);
      return { changed: previous !== undefined && previous !== fingerprint, previous };
    },
  };
}
