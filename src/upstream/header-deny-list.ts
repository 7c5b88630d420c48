// Request headers an upstream might believe about who is calling, from where, over what
// connection, for which URL or with which method. The gateway is the only party allowed to
// say such things (in the signed assertion and the X-Forwarded-* it writes itself), so a
// client's own copies never reach an upstream, and the policy never sees them either
// (it sees what the upstream gets). Stripping, not refusing: browsers, SDKs and other proxies
// add some of these innocently (X-Real-IP, X-Forwarded-*), and refusing would break them
// while gaining nothing, since a stripped header cannot mislead anyone.
//
// Maintained list: add the product and where its documentation names the header. Names are
// lower case; a prefix entry ends with '-' and covers every header that starts with it.
// A route may forward a named one anyway (routes[].forwardHeaders), except GATEWAY_OWNED.

export interface DenyGroup {
  /** Who sets or trusts these headers. */
  readonly source: string;
  readonly names?: readonly string[];
  readonly prefixes?: readonly string[];
}

export const DENY_GROUPS: readonly DenyGroup[] = [
  // oauth2-proxy: --pass-user-headers / --set-xauthrequest (oauth2-proxy.github.io, "Configuration").
  {
    source: 'oauth2-proxy',
    names: ['x-forwarded-email', 'x-forwarded-groups', 'x-forwarded-preferred-username', 'x-forwarded-access-token', 'x-forwarded-user'],
    prefixes: ['x-auth-request-'],
  },
  // Apache mod_auth_* / REMOTE_USER conventions, Grafana auth.proxy (X-WEBAUTH-USER), Gitea/
  // Jenkins reverse-proxy auth, Authelia/Authentik (Remote-User, Remote-Groups, Remote-Email,
  // Remote-Name), Traefik forward-auth examples (X-Authenticated-User).
  {
    source: 'reverse-proxy auth (Apache, Grafana, Authelia, Authentik, Gitea, Jenkins, Traefik)',
    names: ['remote-user', 'remote-groups', 'remote-email', 'remote-name', 'x-remote-user', 'x-remote-group', 'x-authenticated-user', 'x-authenticated-userid', 'x-authenticated-groups', 'x-webauth-user', 'x-webauth-groups', 'x-webauth-email', 'x-webauth-name', 'x-forwarded-auth-user', 'x-auth-user', 'x-auth-email', 'x-credential-username', 'x-consumer-username', 'x-consumer-id', 'x-consumer-custom-id', 'x-anonymous-consumer'],
  },
  // Identity-aware proxies and auth front-ends: Authentik's proxy outpost (X-Authentik-Username,
  // -Groups, -Email, -Jwt…), Vouch Proxy (X-Vouch-User, X-Vouch-IdP-Claims-*), Azure App Service
  // Easy Auth (X-MS-CLIENT-PRINCIPAL, -NAME, -ID, -IDP, and X-MS-TOKEN-<provider>-ACCESS-TOKEN…),
  // Tailscale Serve (Tailscale-User-Login, -Name, -Profile-Pic), the legacy oauth2_proxy
  // (Gap-Auth, Gap-Upstream-Address), Kubernetes front-proxy extras (X-Remote-Extra-*), and the
  // token headers Kong's and nginx's OIDC plugins pass on (X-Id-Token, X-Access-Token, X-Userinfo).
  {
    source: 'identity-aware proxies (Authentik, Vouch, Azure Easy Auth, Tailscale, oauth2_proxy, Kong/nginx OIDC)',
    names: ['gap-auth', 'gap-upstream-address', 'x-id-token', 'x-access-token', 'x-userinfo', 'x-credential-identifier'],
    prefixes: ['x-authentik-', 'x-vouch-', 'x-ms-client-principal', 'x-ms-token-', 'tailscale-', 'x-remote-extra-'],
  },
  // Cloudflare Access: Cf-Access-Jwt-Assertion, Cf-Access-Authenticated-User-Email, and the rest.
  { source: 'Cloudflare Access', prefixes: ['cf-access-'] },
  // Google Cloud IAP: x-goog-authenticated-user-{id,email}, x-goog-iap-jwt-assertion.
  { source: 'Google Cloud IAP', names: ['x-goog-iap-jwt-assertion'], prefixes: ['x-goog-authenticated-user-'] },
  // AWS ALB authenticate-oidc: x-amzn-oidc-data, -identity, -accesstoken.
  { source: 'AWS Application Load Balancer', prefixes: ['x-amzn-oidc-'] },
  // Pomerium: X-Pomerium-Jwt-Assertion and X-Pomerium-Claim-*.
  { source: 'Pomerium', prefixes: ['x-pomerium-'] },
  // Kubernetes API server user impersonation (kubernetes.io "Authenticating", User impersonation).
  { source: 'Kubernetes impersonation', names: ['impersonate-user', 'impersonate-group', 'impersonate-uid'], prefixes: ['impersonate-extra-'] },
  // Client-certificate facts written by a TLS terminator: Envoy XFCC, nginx ($ssl_client_*
  // conventionally as X-SSL-Client-*), HAProxy, F5, Traefik passTLSClientCert, AWS ALB mTLS.
  {
    source: 'TLS terminators (Envoy, nginx, HAProxy, F5, Traefik, AWS ALB)',
    names: ['x-forwarded-client-cert', 'x-client-cert', 'x-client-certificate', 'x-tls-client-cert', 'x-client-verify', 'x-client-dn', 'x-ssl-cert', 'x-forwarded-tls-client-cert', 'x-forwarded-tls-client-cert-info', 'client-cert', 'client-cert-chain'],
    prefixes: ['x-ssl-client-', 'ssl-client-', 'x-amzn-mtls-', 'x-arr-clientcert'],
  },
  // The client's address as a CDN or load balancer reports it: Akamai/Cloudflare True-Client-IP,
  // Cloudflare CF-Connecting-IP(v6), nginx X-Real-IP, Fastly, Rackspace/Riverbed X-Cluster-Client-IP,
  // Microsoft X-Originating-IP, and the usual variants frameworks read.
  {
    source: 'CDNs and load balancers (client address)',
    // X-Original-Forwarded-For is ingress-nginx's copy of the client's X-Forwarded-For;
    // Forwarded-For and X-ProxyUser-Ip are read by common client-IP libraries (request-ip).
    names: ['true-client-ip', 'x-original-forwarded-for', 'forwarded-for', 'x-proxyuser-ip', 'cf-connecting-ip', 'cf-connecting-ipv6', 'cf-pseudo-ipv4', 'x-client-ip', 'x-real-ip', 'x-cluster-client-ip', 'fastly-client-ip', 'x-originating-ip', 'x-remote-ip', 'x-remote-addr', 'client-ip'],
  },
  // The URL as the client supposedly asked for it: IIS/ARR and Symfony (X-Original-URL,
  // X-Rewrite-URL), nginx auth_request (X-Original-URI), Traefik (X-Forwarded-Uri), Envoy
  // (X-Envoy-Original-Path and the whole x-envoy- family Envoy itself trusts from internal
  // peers), Spring/ASP.NET (X-Forwarded-Prefix, X-Forwarded-Path).
  {
    source: 'rewriting proxies (IIS, Symfony, nginx, Traefik, Envoy, Spring)',
    names: ['x-original-uri', 'x-original-url', 'x-rewrite-url', 'x-original-host', 'x-host', 'x-original-method'],
    prefixes: ['x-envoy-'],
  },
  // Forwarding headers: the gateway writes X-Forwarded-For/-Proto/-Host itself (from trusted
  // proxies only); every other X-Forwarded-* (-Port, -Server, -Prefix, -Path, -Uri, -Ssl,
  // -Scheme, -Method…) and Forwarded (RFC 7239) would contradict them.
  { source: 'forwarding (RFC 7239, de-facto X-Forwarded-*)', names: ['forwarded', 'x-forwarded', 'front-end-https', 'x-url-scheme', 'x-forwarded-scheme'], prefixes: ['x-forwarded-'] },
  // Method override (Rails/Rack, Express method-override, ASP.NET, Google APIs, Symfony): a
  // request the policy saw as GET would act as DELETE.
  { source: 'method override (Rack, Express, ASP.NET, Symfony)', names: ['x-http-method-override', 'x-method-override', 'x-http-method'] },
  // This gateway's own namespace and the legacy user-hint prefix (x-user, x-userid, x-user-email…).
  { source: 'zt-gateway', names: ['x-request-id'], prefixes: ['x-zt-', 'x-user'] },
];

/**
 * Connection-specific headers (RFC 9110 §7.6.1): they describe one hop and never cross the
 * proxy in either direction. The one list both this module and headers.ts use; it lives here
 * because this module imports nothing, so headers.ts can import it without a cycle.
 */
export const HOP_BY_HOP: readonly string[] = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
];

/**
 * Written by the gateway on every forwarded request, or meaningful only on one connection:
 * a route cannot opt in to receive the client's copy (the config loader says so).
 */
export const GATEWAY_OWNED: ReadonlySet<string> = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-request-id', 'host', ...HOP_BY_HOP]);

export interface HeaderDenyList {
  /** True when a client's header by this (lower-case) name must not be forwarded nor shown to the policy. */
  denies(name: string): boolean;
}

// Header names repeat request after request; a bounded memo turns the prefix scan into one
// Map lookup. Junk names from a client fill it at most once: past the bound, names are
// computed and not remembered.
const MEMO_MAX = 2048;

/**
 * `extra` names (server.stripHeaders, the assertion header) are denied too; `allow` names (a
 * route's forwardHeaders) are let through. Names must be lower case.
 */
export function compileDenyList(opts: { extra?: readonly string[]; allow?: readonly string[] } = {}): HeaderDenyList {
  const names = new Set<string>();
  const prefixes: string[] = [];
  for (const group of DENY_GROUPS) {
    for (const n of group.names ?? []) names.add(n);
    for (const p of group.prefixes ?? []) prefixes.push(p);
  }
  for (const n of opts.extra ?? []) names.add(n.toLowerCase());
  const allow = new Set((opts.allow ?? []).map((n) => n.toLowerCase()));
  const memo = new Map<string, boolean>();
  const compute = (name: string): boolean => {
    if (allow.has(name)) return false;
    // CGI, WSGI, Rack and PHP-FPM read `_` and `-` as the same character: `x_zt_assertion` is
    // HTTP_X_ZT_ASSERTION to them. RFC 9110 allows `_` in a name, nothing common needs it.
    if (name.includes('_')) return true;
    if (names.has(name)) return true;
    for (const p of prefixes) if (name.startsWith(p)) return true;
    return false;
  };
  return {
    denies(name) {
      const known = memo.get(name);
      if (known !== undefined) return known;
      const result = compute(name);
      if (memo.size < MEMO_MAX) memo.set(name, result);
      return result;
    },
  };
}

/** Names a route may not list in forwardHeaders, with why; empty when all are allowed. */
export function unforwardable(names: readonly string[], assertionHeader: string): string[] {
  const problems: string[] = [];
  for (const raw of names) {
    const n = raw.toLowerCase();
    if (GATEWAY_OWNED.has(n)) problems.push(`${raw}: written by the gateway or hop-by-hop, never forwarded from the client`);
    else if (n === assertionHeader.toLowerCase() || n.startsWith('x-zt-')) problems.push(`${raw}: the gateway's own assertion namespace`);
    else if (n.includes('_')) problems.push(`${raw}: header names with '_' are never forwarded`);
  }
  return problems;
}
