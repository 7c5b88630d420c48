// The echo upstream in its own process, so its CPU is not the load generator's. Prints
// one JSON line, {"url","port"}, once listening; exits on SIGTERM/SIGINT or when the
// parent goes away (stdin closes), so a crashed harness leaves nothing behind.
import { startEchoServer } from '../../src/dev/echo.ts';

const echo = await startEchoServer({ host: '127.0.0.1', port: 0 });
process.stdout.write(`${JSON.stringify({ url: echo.url, port: echo.port })}\n`);

const stop = (): void => {
  void echo.close().then(() => process.exit(0));
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
process.stdin.on('close', stop).resume();
