// The authz stage's half of the policy contract: a request context mapped onto the policy
// engine's own input type (policy/input.ts), so the engine never sees a request.
import { postureFields } from '../core/domain.ts';
import type { PolicyInput } from '../policy/input.ts';
import type { RequestContext } from './context.ts';

// Credentials stay out: the input is written to decision logs and replayed. What they
// prove is in `identity` and `device`.
const WITHHELD_HEADERS = new Set(['authorization', 'proxy-authorization', 'cookie', 'dpop']);

/**
 * The headers as the upstream will get them (upstream-headers.ts): without those the client
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
    if (obligations !== undefined && obligations.has(name)) continue; // never forwarded from the client (upstream-headers.ts)
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
            posture: posture && { ...postureFields(posture), last_check_in: validDate(posture.lastCheckIn) },
            stale: device.stale,
            fingerprint_changed: device.fingerprintChanged,
          },
    risk:
      ctx.risk === undefined
        ? {}
        : { score: ctx.risk.score, flagged: ctx.risk.flagged, top_features: ctx.risk.topFeatures, model_version: ctx.risk.modelVersion, history: ctx.risk.history },
  };
}
