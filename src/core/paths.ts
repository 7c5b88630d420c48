// Path-prefix rules shared by the route table, policy scopes (appliesTo.pathPrefixes) and
// config checks, so that "under /api" means the same thing to all three.

/** "/api/" and "/api" both mean the "/api" subtree; "/" means everything. */
export function canonicalPrefix(prefix: string): string {
  return prefix.length > 1 && prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
}

/** Segment-aware: "/api" covers "/api" and "/api/x", never "/apix". */
export function pathHasPrefix(path: string, prefix: string): boolean {
  if (prefix === '/') return true;
  return path.startsWith(prefix) && (path.length === prefix.length || path.charCodeAt(prefix.length) === 47 /* / */);
}
