// X.509 material for mutual-TLS tests, made with the `openssl` CLI (OpenSSL 3's
// `req -x509 -CA` signs in one call, so each certificate costs a single ~10 ms spawn).
// Everything is synchronous so callers may use it with or without `await`; keys are
// EC P-256, PEM, PKCS#8 and unencrypted. Work files live in a private tmp dir that is
// removed before each function returns.

import { execFileSync } from 'node:child_process';
import { X509Certificate, hash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface IssuedCert {
  certPem: string;
  keyPem: string;
  /** base64url SHA-256 of the certificate's DER: the RFC 8705 `x5t#S256` / `cnf["x5t#S256"]` value. */
  thumbprint: string;
}

export interface DeviceCa {
  caCertPem: string;
  caKeyPem: string;
  /** A client (device) certificate signed by this CA: subject CN=cn, EKU clientAuth. */
  issue(cn: string): IssuedCert;
}

/** RFC 8705 x5t#S256 of a PEM certificate. */
export function certThumbprint(certPem: string): string {
  return hash('sha256', new X509Certificate(certPem).raw, 'base64url');
}

/** A CA for device (client) certificates; also usable as the trust root for `createServerCert`. */
export function createDeviceCa(commonName = 'zt-gateway test device CA'): DeviceCa {
  const { certPem: caCertPem, keyPem: caKeyPem } = openssl(commonName, [
    'basicConstraints=critical,CA:TRUE',
    'keyUsage=critical,keyCertSign,cRLSign',
    'subjectKeyIdentifier=hash',
  ]);
  return {
    caCertPem,
    caKeyPem,
    issue(cn: string): IssuedCert {
      return openssl(
        cn,
        [
          'basicConstraints=critical,CA:FALSE',
          'keyUsage=critical,digitalSignature',
          'extendedKeyUsage=clientAuth',
          'subjectKeyIdentifier=hash',
          'authorityKeyIdentifier=keyid',
        ],
        { certPem: caCertPem, keyPem: caKeyPem },
      );
    },
  };
}

/** A TLS server certificate for `hostnames` (DNS names and/or IP literals in subjectAltName), signed by `ca`. */
export function createServerCert(
  ca: Pick<DeviceCa, 'caCertPem' | 'caKeyPem'>,
  hostnames: readonly string[],
): IssuedCert {
  if (hostnames.length === 0) throw new Error('createServerCert: at least one hostname is required');
  const san = hostnames.map((h) => (isIP(h) ? `IP:${h}` : `DNS:${h}`)).join(',');
  return openssl(
    hostnames[0]!,
    [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth',
      `subjectAltName=${san}`,
      'subjectKeyIdentifier=hash',
      'authorityKeyIdentifier=keyid',
    ],
    { certPem: ca.caCertPem, keyPem: ca.caKeyPem },
  );
}

/** New P-256 key + certificate; self-signed when `issuer` is absent. */
function openssl(cn: string, extensions: string[], issuer?: { certPem: string; keyPem: string }): IssuedCert {
  const dir = mkdtempSync(join(tmpdir(), 'zt-certs-'));
  try {
    const keyFile = join(dir, 'key.pem');
    const certFile = join(dir, 'cert.pem');
    const args = [
      'req', '-x509', '-new',
      '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
      '-noenc', '-keyout', keyFile, '-out', certFile,
      '-sha256', '-days', '2',
      '-subj', `/CN=${escapeRdnValue(cn)}`,
      // `req -x509` adds its own default extensions; replace them with exactly ours.
      '-config', writeConfig(dir),
    ];
    for (const ext of extensions) args.push('-addext', ext);
    if (issuer) {
      const caCert = join(dir, 'ca.pem');
      const caKey = join(dir, 'ca.key');
      writeFileSync(caCert, issuer.certPem);
      writeFileSync(caKey, issuer.keyPem, { mode: 0o600 });
      args.push('-CA', caCert, '-CAkey', caKey);
    }
    execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const certPem = readFileSync(certFile, 'utf8');
    return { certPem, keyPem: readFileSync(keyFile, 'utf8'), thumbprint: certThumbprint(certPem) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A minimal openssl.cnf so the system config's x509 extensions don't leak in. */
function writeConfig(dir: string): string {
  const file = join(dir, 'openssl.cnf');
  writeFileSync(file, '[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n');
  return file;
}

/** `-subj` syntax: `/` separates RDNs and `\` escapes; escape the characters it treats specially. */
function escapeRdnValue(v: string): string {
  if (!v || /[\0\r\n]/.test(v)) throw new Error(`invalid certificate common name: ${JSON.stringify(v)}`);
  return v.replace(/[\\/,=+<>#;"]/g, (c) => `\\${c}`);
}
