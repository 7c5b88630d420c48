// Rate-limit keys. A tier is keyed by any combination of the request's subject, device,
// claim:<name> values, client ip and route; its key is
//
//   <prefix>{<tag>}:<tier>:<dimensions>[:<value>...]
//
// e.g. ztgw:rl:{Q2hR…}:per-user:subject+device:x7Yk…
// - Every request value is stored as the first 128 bits of its SHA-256, base64url (22
//   characters): a 10 KB subject makes a key of the same length as a short one, a value
//   holding ':', '{' or '}' cannot break the layout or the hash tag, and no subject, ip or
//   claim is readable in Redis. A 128-bit collision needs ~2^64 chosen values, and only
//   shares a bucket.
// - The tag (between the braces, the only part Redis Cluster hashes) is the value of the
//   FIRST dimension the tier uses in the fixed order subject, device, claim, ip, route, so
//   every subject-keyed tier of one request lands on one slot and is checked atomically
//   in one script (store.ts). That value is not repeated after the tag.
// - Tier and claim names come from config: kept readable when they are plain
//   ([A-Za-z0-9_.-], up to 64), else hashed behind a '~', which a plain name cannot contain.
import { hash } from 'node:crypto';

export type Dimension = 'subject' | 'device' | 'route' | 'ip' | `claim:${string}`;

/** A request's values; undefined means the request has none (no device, no such claim). */
export interface KeyValues {
  subject?: string | undefined;
  device?: string | undefined;
  route?: string | undefined;
  ip?: string | undefined;
  /** Claim values as strings (the caller decides how a non-string claim is written). */
  claims?: Readonly<Record<string, string | undefined>> | undefined;
}

/**
 * Builds a tier's key from a request's values, or undefined when one of the tier's
 * dimensions has no value (the caller decides: skip the tier, or refuse the request).
 */
export type KeyBuilder = (values: KeyValues) => string | undefined;

export const DEFAULT_KEY_PREFIX = 'ztgw:rl:';

const PLAIN = /^[A-Za-z0-9_.-]{1,64}$/;
const RANK: Record<string, number> = { subject: 0, device: 1, claim: 2, ip: 3, route: 4 };

/** base64url of the first 16 bytes of SHA-256. */
export function digestValue(value: string): string {
  return hash('sha256', value, 'base64url').slice(0, 22);
}

function nameOf(name: string): string {
  return PLAIN.test(name) ? name : `~${digestValue(name)}`;
}

interface Parsed {
  rank: number;
  claim?: string;
  label: string;
}

function parseDimension(d: string): Parsed {
  if (d === 'subject' || d === 'device' || d === 'ip' || d === 'route') return { rank: RANK[d]!, label: d };
  if (d.startsWith('claim:') && d.length > 'claim:'.length) {
    const claim = d.slice('claim:'.length);
    return { rank: RANK.claim!, claim, label: `claim.${nameOf(claim)}` };
  }
  throw new RangeError(`unknown rate-limit key dimension ${JSON.stringify(d)} (subject, device, route, ip or claim:<name>)`);
}

export interface KeyBuilderOptions {
  /** Default "ztgw:rl:". Must not contain '{' or '}' (the tag must be the first braces). */
  prefix?: string;
  tier: string;
  keyBy: readonly Dimension[];
}

/** Compiles a tier's key layout once (at config compile time); the builder runs per request. */
export function createKeyBuilder(opts: KeyBuilderOptions): KeyBuilder {
  const prefix = opts.prefix ?? DEFAULT_KEY_PREFIX;
  if (/[{}]/.test(prefix)) throw new RangeError(`rate-limit key prefix must not contain '{' or '}', got ${JSON.stringify(prefix)}`);
  if (opts.keyBy.length === 0) throw new RangeError(`tier ${opts.tier}: keyBy needs at least one dimension`);
  if (new Set(opts.keyBy).size !== opts.keyBy.length) throw new RangeError(`tier ${opts.tier}: keyBy lists a dimension twice`);
  // Canonical order, so the key does not depend on how the config lists the dimensions;
  // claims among themselves by name.
  const dims = opts.keyBy.map(parseDimension).sort((a, b) => a.rank - b.rank || (a.claim! < b.claim! ? -1 : a.claim! > b.claim! ? 1 : 0));
  const middle = `:${nameOf(opts.tier)}:${dims.map((d) => d.label).join('+')}`;
  const read: ((v: KeyValues) => string | undefined)[] = dims.map((d) => {
    if (d.claim !== undefined) {
      const claim = d.claim;
      return (v) => (v.claims && Object.hasOwn(v.claims, claim) ? v.claims[claim] : undefined);
    }
    const field = d.label as 'subject' | 'device' | 'ip' | 'route';
    return (v) => v[field];
  });

  return (values) => {
    const first = read[0]!(values);
    if (first === undefined) return undefined;
    let key = `${prefix}{${digestValue(first)}}${middle}`;
    for (let i = 1; i < read.length; i++) {
      const v = read[i]!(values);
      if (v === undefined) return undefined;
      key += `:${digestValue(v)}`;
    }
    return key;
  };
}
