// The decision input: the plain, typed context a policy is evaluated against (the same
// shape as POLICY_CONTEXT in cel.ts). The authz stage builds it from the request context
// (pipeline/policy-input.ts); the engine knows nothing of requests. Plain data so that a
// decision can be logged, explained and replayed without a request.
// Absence is meaningful: an unknown device or a missing risk score is an omitted field,
// never a default such as `false` or `0` that a condition could mistake for a fact.
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { celMap, type CelInput } from '@bufbuild/cel';
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
    readonly history?: number;
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
