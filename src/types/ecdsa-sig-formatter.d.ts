// ecdsa-sig-formatter ships no types (and there is no @types package); the two functions
// of its README, as its source (src/ecdsa-sig-formatter.js) implements them.
declare module 'ecdsa-sig-formatter' {
  /** r||s (JOSE) → ASN.1 DER; throws a TypeError when the length does not fit `alg`. */
  export function joseToDer(signature: Buffer | string, alg: string): Buffer;
  /** ASN.1 DER → r||s, base64url-encoded. */
  export function derToJose(signature: Buffer | string, alg: string): string;
}
