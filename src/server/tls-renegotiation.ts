// TLS 1.2 lets a client start a new handshake on a live connection. The data plane refuses it:
// each handshake costs the server far more CPU than the client (the renegotiation DoS, as
// testssl.sh flags it), and a new handshake could change the client certificate under
// requests already bound to the old one (pipeline/context.ts reads it per request, and
// trusts `authorized` from the first handshake). TLS 1.3 has no renegotiation at all.
import type { Server, TLSSocket } from 'node:tls';

/**
 * On every TLS connection of `server`: a client's renegotiation attempt ends the connection at
 * once (Node emits ERR_TLS_RENEGOTIATION_DISABLED as the new handshake starts). Nothing is
 * written back: the client is mid-handshake, and an HTTP answer is not what it waits for.
 * `onRefused` runs once per connection, for the log and the metric.
 */
export function refuseClientRenegotiation(server: Server, onRefused: (socket: TLSSocket) => void): void {
  const refused = new WeakSet<TLSSocket>();
  function onError(this: TLSSocket, err: Error & { code?: string }): void {
    if (err.code !== 'ERR_TLS_RENEGOTIATION_DISABLED') return; // the HTTP server's own handler deals with the rest
    // Destroyed before the HTTP server's 'clientError' handler runs (this listener comes
    // first), which then finds the socket gone and writes nothing.
    this.destroy();
    if (refused.has(this)) return; // Node may report the same attempt more than once
    refused.add(this);
    onRefused(this);
  }
  server.on('secureConnection', (socket: TLSSocket) => {
    socket.disableRenegotiation();
    socket.prependListener('error', onError);
  });
}
