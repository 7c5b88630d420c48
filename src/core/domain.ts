// The domain vocabulary every layer speaks: who made a request (Identity), from which
// device (DeviceContext, DevicePosture). Plain, readonly data: the identity library fills
// it, the pipeline carries it, policies and the assertion read it.

export type TrustLevel = 'low' | 'medium' | 'high';

/** A device's posture as the registry holds it (MDM check-in). */
export interface DevicePosture {
  managed: boolean;
  diskEncrypted: boolean;
  /** '' when unknown. */
  os: string;
  /** '' when unknown. */
  osVersion: string;
  /** ISO 8601 with a zone (`Z` or an offset). */
  lastCheckIn: string;
  trustLevel: TrustLevel;
}

/** What the gateway knows about the device a request came from; what policies will read. */
export interface DeviceContext {
  /** The cryptographic fingerprint: RFC 7638 JWK thumbprint (DPoP) or x5t#S256 (mTLS); undefined when unbound. */
  readonly id: string | undefined;
  readonly binding: 'dpop' | 'mtls' | 'none';
  readonly enrolled: boolean;
  /** The registry's owner is the token's subject. */
  readonly ownerMatches: boolean;
  readonly posture: DevicePosture | undefined;
  readonly stale: boolean;
  /** Passive client traits differ from the last request of this device (a risk signal only). */
  readonly fingerprintChanged: boolean;
}

export interface Identity {
  readonly subject: string;
  readonly issuer: string;
  /** The configured issuer name (not the URL), for logs and metrics. */
  readonly issuerName: string;
  readonly groups: readonly string[];
  readonly claims: Readonly<Record<string, unknown>>;
  /** Seconds since epoch. */
  readonly expiresAt: number | undefined;
}

/** The anomaly model's view of one request (pipeline/risk.ts); policies read it as `risk`. */
export interface RiskResult {
  /** In [0, 1]; higher is more unusual for this principal. */
  readonly score: number;
  /** Over the configured threshold (risk.threshold, else the model's). */
  readonly flagged: boolean;
  /** Feature names contributing most to the score, largest first. */
  readonly topFeatures: readonly string[];
  readonly modelVersion: string;
  /**
   * Requests this principal's feature history holds, this one included. A short history (a
   * new user, or everyone after a restart) scores high because everything about it is new.
   */
  readonly history: number;
}

/** A posture as policies and the identity assertion name its fields (snake case, `trust`). */
export function postureFields(p: DevicePosture): { managed: boolean; disk_encrypted: boolean; os: string; os_version: string; trust: TrustLevel } {
  return { managed: p.managed, disk_encrypted: p.diskEncrypted, os: p.os, os_version: p.osVersion, trust: p.trustLevel };
}
