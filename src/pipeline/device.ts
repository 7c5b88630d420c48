// Stage 4: which device is this, and is it allowed to be? A sender-constrained token
// (RFC 9449 cnf.jkt, RFC 8705 cnf.x5t#S256) must come with its proof on every request, so a
// stolen token is useless elsewhere; the device's posture comes from the registry.
import type { DeviceRecord, DeviceRegistry } from '../identity/devices/registry.ts';
import { isStale, ownsDevice } from '../identity/devices/registry.ts';
import { DpopProofError, DpopReplayStoreError, singleDpopHeader, type DpopFailureLabel, type DpopVerifier } from '../identity/dpop.ts';
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
  UntrustedCertificateError,
  UseDpopNonceError,
} from '../core/errors.ts';

export interface DeviceStageDeps {
  readonly dpop: DpopVerifier;
  readonly registry: DeviceRegistry;
  readonly fingerprints: FingerprintTracker | undefined;
  readonly staleAfterS: number;
  /**
   * The `iss` of the only configured issuer, undefined when there are several: a registry
   * record without an issuer is owned by a `sub` of that issuer alone (see ownsDevice).
   */
  readonly soleIssuer?: string;
  /** identity.dpop.algorithms, named in DPoP challenges (RFC 9449 §7.1 `algs`). */
  readonly dpopAlgorithms?: readonly string[];
  /** Told why a DPoP-bound request was refused (metrics, log); never given the proof or token. */
  readonly onDpopFailure?: (ctx: RequestContext, reason: DpopFailureLabel) => void;
  readonly now?: () => number;
}

interface Confirmation {
  jkt?: unknown;
  'x5t#S256'?: unknown;
}

/**
 * RFC 9449 §4.3 step 9: htu is the URI the client addressed, without query and fragment. The
 * origin is the one hygiene matched against server.publicOrigins / route hosts, never the raw
 * Host: otherwise a proof minted for another server would pass here once the client set Host
 * to that server's name (§11.1: a proof is for one resource server).
 */
function htuOf(ctx: RequestContext): string {
  return ctx.publicOrigin + ctx.rawPath;
}

export function createDeviceStage(deps: DeviceStageDeps): Stage {
  const now = deps.now ?? Date.now;
  // RFC 9449 §7.1 challenges, built once: `algs` tells a client which proof algorithms to use.
  const algs = `algs="${(deps.dpopAlgorithms ?? []).join(' ')}"`;
  const dpopChallenge = (error: string, description?: string) => ({
    'www-authenticate': `DPoP realm="zt-gateway", error="${error}"${description === undefined ? '' : `, error_description="${description}"`}, ${algs}`,
  });
  const bearerSentChallenge = dpopChallenge('invalid_token', 'The token is DPoP-bound: present it with the DPoP scheme and a proof');
  const invalidProofChallenge = dpopChallenge('invalid_dpop_proof');
  const nonceChallenge = dpopChallenge('use_dpop_nonce');
  const bindingRequiredChallenge = {
    'www-authenticate': `DPoP realm="zt-gateway", error="invalid_token", error_description="A device-bound token is required", ${algs}`,
  };
  const failed = deps.onDpopFailure ?? (() => {});

  async function proveDpop(ctx: RequestContext, jkt: string): Promise<void> {
    // RFC 9449 §7.1: a DPoP-bound token presented as a bearer token is refused, not downgraded,
    // with a DPoP challenge so the client switches scheme instead of fetching new tokens.
    if (ctx.tokenScheme !== 'dpop') {
      failed(ctx, 'scheme');
      throw new InvalidTokenError('DPoP-bound token sent with the Bearer scheme', { headers: bearerSentChallenge });
    }
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
      if (!(err instanceof DpopProofError)) throw err;
      failed(ctx, err.reason);
      if (err.kind === 'use_dpop_nonce') {
        throw new UseDpopNonceError(err.reason, { cause: err, headers: { ...nonceChallenge, 'dpop-nonce': deps.dpop.issueNonce() } });
      }
      throw new InvalidDpopProofError(err.reason, { cause: err, headers: invalidProofChallenge });
    }
  }

  /**
   * Proves the binding the token declares; returns the device id and method. Every
   * confirmation a token carries is proven (RFC 7800 §3.1: the presenter proves possession of
   * each key it names), under the one scheme that fits it: cnf.jkt → DPoP (RFC 9449 §7.1);
   * cnf.x5t#S256 alone → Bearer (RFC 8705 §3). Authn checked the shapes.
   */
  async function bind(ctx: RequestContext): Promise<Pick<DeviceContext, 'id' | 'binding'>> {
    const cnf = ctx.identity!.claims.cnf as Confirmation | undefined;
    if (cnf === undefined) {
      if (ctx.tokenScheme === 'dpop') throw new InvalidTokenError('DPoP scheme with a token that is not DPoP-bound');
      if (ctx.route!.deviceBinding === 'required') {
        throw new DeviceBindingRequiredError('unbound token on a device-bound route', { headers: bindingRequiredChallenge });
      }
      return { id: undefined, binding: 'none' };
    }
    if (typeof cnf !== 'object' || cnf === null) throw new InvalidTokenError('cnf is not an object');
    const jkt = typeof cnf.jkt === 'string' ? cnf.jkt : undefined;
    const x5t = typeof cnf['x5t#S256'] === 'string' ? cnf['x5t#S256'] : undefined;
    if (jkt === undefined && x5t === undefined) throw new InvalidTokenError('unsupported cnf confirmation method');
    if (jkt === undefined && ctx.tokenScheme === 'dpop') throw new InvalidTokenError('DPoP scheme with a certificate-bound token');
    // The certificate first: a synchronous check, and a refusal then burns no proof's jti.
    if (x5t !== undefined && ctx.clientCertThumbprint !== x5t) {
      if (ctx.clientCertUntrusted) throw new UntrustedCertificateError('client certificate does not chain to the device CA');
      throw new CertificateMismatchError('certificate-bound token without its certificate');
    }
    if (jkt !== undefined) {
      await proveDpop(ctx, jkt);
      // Both confirmations: the key proven on this very request names the device.
      return { id: jkt, binding: 'dpop' };
    }
    return { id: x5t, binding: 'mtls' };
  }

  async function lookup(id: string): Promise<DeviceRecord | undefined> {
    try {
      return await deps.registry.get(id);
    } catch (err) {
      // Never read a registry failure as "not revoked": fail closed.
      throw new DependencyUnavailableError('device registry unavailable', { cause: err });
    }
  }

  /**
   * A revoked device is refused wherever it shows itself, whatever the route's binding
   * (off and optional included): the key a verified proof used, and the certificate the
   * TLS handshake verified even when the token is not bound to it. Revocation is how
   * an operator ends a lost laptop's access; a route that does not need a device is no
   * exception to that.
   */
  async function presentedCertificate(ctx: RequestContext, except: string | undefined): Promise<void> {
    const cert = ctx.clientCertThumbprint;
    if (cert === undefined || cert === except) return;
    if ((await lookup(cert))?.revokedAt !== undefined) throw new DeviceRevokedError(`device certificate ${cert} revoked`);
  }

  async function boundDevice(ctx: RequestContext): Promise<void> {
    const { id, binding } = await bind(ctx);
    if (id === undefined) {
      await presentedCertificate(ctx, undefined);
      requireTrusted(ctx, UNBOUND);
      ctx.device = UNBOUND;
      return;
    }
    const [record] = await Promise.all([lookup(id), presentedCertificate(ctx, id)]);
    if (record?.revokedAt !== undefined) throw new DeviceRevokedError(`device ${id} revoked`);
    const identity = ctx.identity!;
    const device: DeviceContext = {
      id,
      binding,
      enrolled: record !== undefined,
      ownerMatches: record !== undefined && ownsDevice(record, identity.issuer, identity.subject, deps.soleIssuer),
      posture: record?.posture,
      stale: record !== undefined && isStale(record, new Date(now()), deps.staleAfterS),
      fingerprintChanged: deps.fingerprints?.observe(id, passiveFingerprint(ctx.headers)).changed ?? false,
    };
    requireTrusted(ctx, device);
    ctx.device = device;
  }

  return (ctx: RequestContext) => {
    const route = ctx.route!;
    // Public routes carry no identity to protect and serve what a revoked device still
    // needs (sign-in, help, key sets); they are not checked.
    if (route.public) return;
    // Fast path, no promise, no registry: a plain bearer token, no client certificate, on
    // a route that does not require a device. Nothing here names a device to look up.
    if (
      ctx.identity!.claims.cnf === undefined &&
      ctx.tokenScheme !== 'dpop' &&
      route.deviceBinding !== 'required' &&
      ctx.clientCertThumbprint === undefined
    ) {
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
