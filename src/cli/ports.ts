// A listener that cannot bind because another process holds its port: one line naming the
// port and the setting or variable that moves it, instead of Node's stack trace.

/** A port the command listens on and what an operator changes to move it. */
export interface PortOwner {
  readonly port: number;
  /** e.g. "ZTGW_PORT" or "server.listen.port in /etc/ztgw.yaml". */
  readonly setting: string;
}

export function isAddressInUse(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'EADDRINUSE';
}

/** The message for an EADDRINUSE listen error, undefined for any other error. */
export function portInUseMessage(err: unknown, owners: readonly PortOwner[]): string | undefined {
  if (!isAddressInUse(err)) return undefined;
  const { port, address } = err as { port?: number; address?: string };
  const where = `port ${port ?? '?'}${address === undefined ? '' : ` on ${address}`}`;
  const owner = owners.find((o) => o.port === port);
  return `${where} is in use by another process; ${owner === undefined ? 'stop it or choose another port' : `set ${owner.setting} to another port (or stop that process)`}`;
}
