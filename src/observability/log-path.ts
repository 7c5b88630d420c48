// The request path as logs may carry it. Logs are read by more people, and kept longer, than
// the credentials a URL can hold, so what a URL commonly carries besides the resource is cut:
// the query (OAuth `code=`, signed-URL signatures, `email=`), a fragment a client sent by
// mistake, and path parameters (`;jsessionid=…`, Java servlet session ids: a session in the
// path). A parameter's name stays (`;…` shows one was there), its value does not.

// A refused target can be as long as the head allows (16 KB by default); the log needs the
// start of it, not all of it.
export const MAX_LOGGED_PATH = 1024;

const PATH_PARAMETER = /;[^/]*/g;

export function loggedPath(target: string | undefined): string | undefined {
  if (target === undefined) return undefined;
  let end = target.length;
  const q = target.indexOf('?');
  if (q !== -1) end = q;
  const h = target.indexOf('#');
  if (h !== -1 && h < end) end = h;
  let path = end === target.length ? target : target.slice(0, end);
  if (path.includes(';')) path = path.replace(PATH_PARAMETER, ';…');
  return path.length > MAX_LOGGED_PATH ? path.slice(0, MAX_LOGGED_PATH) : path;
}
