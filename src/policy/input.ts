// The decision input: the plain, typed context a policy is evaluated against (the same
// shape as POLICY_CONTEXT in cel.ts), built from the pipeline's RequestContext. Plain
// data so that a decision can be logged, explained and replayed without a request.
// Absence is meaningful: an unknown device or a missing risk score is an omitted field,
// never a default such as `false` or `0` that a condition could mistake for a fact.
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { celMap, type CelInput } from '@bufbuild/cel';
import type { RequestContext } from '../pipeline/context.ts';
import type { PolicyBindings } from './cel.ts';

export interface PolicyInput {
  readonly request: {
    readonly method: string;
    readonly host: string;
    readonly path: string;
    readonly route?: string;
    readonly ip: string;
    readonly headers: Readonly<Record<string, string>>;
    readonly time: Date;
  };
  readonly identity: {
    readonly sub?: string;
    readonly issuer?: string;
    readonly groups?: readonly string[];
    readonly claims?: Readonly<Record<string, unknown>>;
    readonly amr?: readonly string[];
    readonly acr?: string;
    readonly auth_time?: Date;
  };
  readonly device: {
    readonly id?: string;
    readonly binding?: 'dpop' | 'mtls' | 'none';
    readonly enrolled?: boolean;
    readonly owner_match?: boolean;
    readonly posture?: {
      readonly managed: boolean;
      readonly disk_encrypted: boolean;
      readonly os: string;
      readonly os_version: string;
      readonly trust: 'low' | 'medium' | 'high';
      readonly last_check_in?: Date;
    };
    readonly stale?: boolean;
    readonly fingerprint_changed?: boolean;
  };
  /** Empty until the risk model scores requests. */
  readonly risk: {
    readonly score?: number;
    readonly flagged?: boolean;
    readonly top_features?: readonly string[];
    readonly model_version?: string;
  };
}

// Credentials stay out: the input is written to decision logs and replayed. What they
// prove is in `identity` and `device`.
const WITHHELD_HEADERS = new Set(['authorization', 'proxy-authorization', 'cookie', 'dpop']);

/**
 * The headers as the upstream will get them (upstream/headers.ts): without those the client
 * listed in Connection (RFC 9110 §7.6.1) and those on the route's deny list (identity,
 * client-address, original-URL, method-override, underscore names…), with the forwarding
 * values the gateway writes instead of the client's. One value per name, as Node joined
 * repeats (', ') or kept the first of a singleton (RFC 9110 §5.3); the upstream gets that
 * same one value, so a repeated `x-tenant` cannot read one way here and another there.
 */
function policyHeaders(ctx: RequestContext): Record<string, string> {
  const { headers, connectionListed } = ctx;
  const deny = ctx.route?.denyList;
  const obligations = ctx.obligationHeaders;
  const out: Record<string, string> = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || WITHHELD_HEADERS.has(name)) continue;
    if ((connectionListed !== undefined && connectionListed.has(name)) || deny?.denies(name)) continue;
    if (obligations !== undefined && obligations.has(name)) continue; // never forwarded from the client (upstream/headers.ts)
    out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  if (ctx.forwardedHost) {
    out['x-forwarded-for'] = ctx.forwardedFor;
    out['x-forwarded-proto'] = ctx.forwardedProto;
    out['x-forwarded-host'] = ctx.forwardedHost;
  }
  return out;
}

const strings = (value: unknown): string[] | undefined =>
  Array.isArray(value) && value.every((v) => typeof v === 'string') ? value : undefined;

function validDate(text: string | undefined): Date | undefined {
  if (text === undefined) return undefined;
  const d = new Date(text);
  return Number.isNaN(d.getTime()) ? undefined : d;
}

/** The decision input for a request that has been through route, authn and device. */
export function toPolicyInput(ctx: RequestContext, now: Date): PolicyInput {
  const identity = ctx.identity;
  const claims = identity?.claims;
  const device = ctx.device;
  const posture = device?.posture;
  return {
    request: {
      method: ctx.method,
      host: ctx.host,
      // On a route whose upstream ignores case, `/API/Admin` is `/api/admin` to it: conditions
      // (and appliesTo.pathPrefixes) see it that way, so a rule written in lower case holds.
      path: ctx.route?.caseInsensitive === true ? ctx.path.toLowerCase() : ctx.path,
      route: ctx.route?.name,
      ip: ctx.clientIp,
      headers: policyHeaders(ctx),
      time: now,
    },
    identity:
      identity === undefined
        ? {}
        : {
            sub: identity.subject,
            issuer: identity.issuer,
            groups: identity.groups,
            claims: identity.claims,
            amr: strings(claims?.amr),
            acr: typeof claims?.acr === 'string' ? claims.acr : undefined,
            auth_time: typeof claims?.auth_time === 'number' ? new Date(claims.auth_time * 1000) : undefined,
          },
    device:
      device === undefined
        ? {}
        : {
            id: device.id,
            binding: device.binding,
            enrolled: device.enrolled,
            owner_match: device.ownerMatches,
            posture: posture && {
              managed: posture.managed,
              disk_encrypted: posture.diskEncrypted,
              os: posture.os,
              os_version: posture.osVersion,
              trust: posture.trustLevel,
              last_check_in: validDate(posture.lastCheckIn),
            },
            stale: device.stale,
            fingerprint_changed: device.fingerprintChanged,
          },
    risk: {},
  };
}

/** One decision's input, and its CEL bindings, converted only if a condition needs them (see cel.ts evalCondition). */
export interface DecisionScope {
  readonly input: PolicyInput;
  bindings(): PolicyBindings;
}

/**
 * A scope per decision, never shared: the bindings it converts belong to this input only.
 * toBindings() throws for an input it cannot convert (an invalid Date such as a token's
 * absurd auth_time, a record that is not an object). It did so for every decision when
 * it ran eagerly, so for such an input it still runs eagerly, and throws as before.
 */
export function decisionScope(input: PolicyInput): DecisionScope {
  let bindings: PolicyBindings | undefined = convertible(input) ? undefined : toBindings(input);
  return { input, bindings: () => (bindings ??= toBindings(input)) };
}

const isObject = (v: unknown) => typeof v === 'object' && v !== null;
const validDateOrNot = (v: unknown) => !(v instanceof Date) || !Number.isNaN(v.getTime());

function convertible({ request, identity, device, risk }: PolicyInput): boolean {
  return (
    isObject(request) &&
    isObject(request.headers) &&
    isObject(identity) &&
    isObject(device) &&
    isObject(risk) &&
    validDateOrNot(request.time) &&
    validDateOrNot(identity.auth_time) &&
    (!device.posture || validDateOrNot(device.posture.last_check_in))
  );
}

/**
 * The input as @bufbuild/cel takes it, converted once per decision: given a plain object,
 * @bufbuild/cel copies it into a new map on every read (about a microsecond per field
 * access). Dates become protobuf Timestamps. An `undefined` field is left out, so it
 * reads as absent: has() is false and reading it is an error.
 */
export function toBindings(input: PolicyInput): PolicyBindings {
  const { request, identity, device, risk } = input;
  return {
    request: celRecord({ ...request, headers: celRecord(request.headers) }),
    // claims stay a plain object: converted only if a condition reads them, and most do not.
    identity: celRecord(identity),
    device: celRecord({ ...device, posture: device.posture && celRecord(device.posture) }),
    risk: celRecord(risk),
  };
}

function celRecord(record: object): CelInput {
  const entries = new Map<string, unknown>();
  for (const [k, v] of Object.entries(record)) {
    if (v !== undefined) entries.set(k, v instanceof Date ? timestampFromDate(v) : v);
  }
  // Arrays and nested objects are converted by @bufbuild/cel when read.
  return celMap(entries as Map<string, CelInput>);
}
