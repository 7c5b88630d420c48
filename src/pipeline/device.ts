// Stage 4: which device is this, and is it allowed to be? A sender-constrained token
// (RFC 9449 cnf.jkt, RFC 8705 cnf.x5t#S256) must come with its proof on every request, so a
// stolen token is useless elsewhere; the device's posture comes from the registry.
import type { DeviceRegistry } from '../identity/devices/registry.ts';
import { isStale } from '../identity/devices/registry.ts';
import { DpopProofError, DpopReplayStoreError, singleDpopHeader, type DpopVerifier } from '../identity/dpop.ts';
import { passiveFingerprint, type FingerprintTracker } from '../identity/fingerprint.ts';
import type { DeviceContext, RequestContext, Stage } from './context.ts';
import {
  CertificateMismatchError,
  DependencyUnavailableError,
  DeviceBindingRequiredError,
  DeviceNotTrustedError,
  DeviceRevokedError,
  InvalidDpopProofError,
  InvalidTokenError,
  UseDpopNonceError,
} from './errors.ts';

export interface DeviceStageDeps {
  readonly dpop: DpopVerifier;
  readonly registry: DeviceRegistry;
  readonly fingerprints: FingerprintTracker | undefined;
  readonly staleAfterS: number;
  readonly now?: () => number;
}

interface Confirmation {
  jkt?: unknown;
  'x5t#S256'?: unknown;
}

/** RFC 9449 §4.3 step 9: htu is the URI the client addressed, without query and fragment. */
function htuOf(ctx: RequestContext): string {
  return `${ctx.forwardedProto}://${ctx.forwardedHost}${ctx.rawPath}`;
}

export function createDeviceStage(deps: DeviceStageDeps): Stage {
  const now = deps.now ?? Date.now;

  async function proveDpop(ctx: RequestContext, jkt: string): Promise<void> {
    // RFC 9449 §7.1: a DPoP-bound token presented as a bearer token is refused, not downgraded.
    if (ctx.tokenScheme !== 'dpop') throw new InvalidTokenError('DPoP-bound token sent with the Bearer scheme');
    try {
      await deps.dpop.verify({
        proof: singleDpopHeader(ctx.headers),
        method: ctx.method,
        htu: htuOf(ctx),
        accessToken: ctx.accessToken!,
        expectedJkt: jkt,
      });
    } catch (err) {
      if (err instanceof DpopReplayStoreError) throw new DependencyUnavailableError('DPoP replay cache unavailable', { cause: err });
      if (err instanceof DpopProofError && err.kind === 'use_dpop_nonce') {
        throw new UseDpopNonceError(err.reason, { cause: err, headers: { 'dpop-nonce': deps.dpop.issueNonce() } });
      }
      if (err instanceof DpopProofError) throw new InvalidDpopProofError(err.reason, { cause: err });
      throw err;
    }
  }

  /** Proves the binding the token declares; returns the device id and method. */
  async function bind(ctx: RequestContext): Promise<Pick<DeviceContext, 'id' | 'binding'>> {
    const cnf = ctx.identity!.claims.cnf as Confirmation | undefined;
    if (typeof cnf?.jkt === 'string') {
      await proveDpop(ctx, cnf.jkt);
      return { id: cnf.jkt, binding: 'dpop' };
    }
    const x5t = cnf?.['x5t#S256'];
    if (typeof x5t === 'string') {
      if (ctx.clientCertThumbprint !== x5t) throw new CertificateMismatchError('certificate-bound token without its certificate');
      return { id: x5t, binding: 'mtls' };
    }
    if (cnf !== undefined) throw new InvalidTokenError('unsupported cnf confirmation method');
    if (ctx.tokenScheme === 'dpop') throw new InvalidTokenError('DPoP scheme with a token that is not DPoP-bound');
    if (ctx.route!.deviceBinding === 'required') throw new DeviceBindingRequiredError('unbound token on a device-bound route');
    return { id: undefined, binding: 'none' };
  }

  async function boundDevice(ctx: RequestContext): Promise<void> {
    const route = ctx.route!;
    const { id, binding } = await bind(ctx);
    let device: DeviceContext = { ...UNBOUND, id, binding };
    if (id !== undefined && (route.deviceBinding !== 'off' || route.requireEnrolledDevice)) {
      let record;
      try {
        record = await deps.registry.get(id);
      } catch (err) {
        // Never read a registry failure as "not revoked": fail closed.
        throw new DependencyUnavailableError('device registry unavailable', { cause: err });
      }
      if (record?.revokedAt !== undefined) throw new DeviceRevokedError(`device ${id} revoked`);
      device = {
        id,
        binding,
        enrolled: record !== undefined,
        ownerMatches: record !== undefined && record.owner === ctx.identity!.subject,
        posture: record?.posture,
        stale: record !== undefined && isStale(record, new Date(now()), deps.staleAfterS),
        fingerprintChanged: deps.fingerprints?.observe(id, passiveFingerprint(ctx.headers)).changed ?? false,
      };
    }
    requireTrusted(ctx, device);
    ctx.device = device;
  }

  return (ctx: RequestContext) => {
    const route = ctx.route!;
    if (route.public) return;
    // Fast path, no promise: a plain bearer token on a route that does not require a device.
    if (ctx.identity!.claims.cnf === undefined && ctx.tokenScheme !== 'dpop' && route.deviceBinding !== 'required') {
      requireTrusted(ctx, UNBOUND);
      ctx.device = UNBOUND;
      return;
    }
    return boundDevice(ctx);
  };
}

const UNBOUND: DeviceContext = Object.freeze({
  id: undefined,
  binding: 'none',
  enrolled: false,
  ownerMatches: false,
  posture: undefined,
  stale: false,
  fingerprintChanged: false,
});

function requireTrusted(ctx: RequestContext, device: DeviceContext): void {
  if (ctx.route!.requireEnrolledDevice && !(device.enrolled && device.ownerMatches && !device.stale)) {
    throw new DeviceNotTrustedError(
      `device ${device.id ?? 'none'} not trusted (enrolled=${device.enrolled} owner=${device.ownerMatches} stale=${device.stale})`,
    );
  }
}
