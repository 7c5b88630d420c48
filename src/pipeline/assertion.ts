// The last stage before forwarding: attach the signed identity assertion the upstream will
// trust. Public routes have no identity to assert.
import type { AssertionSigner } from '../identity/assertion.ts';
import type { RequestContext, Stage } from './context.ts';

export function createAssertionStage(signer: AssertionSigner, now: () => number = Date.now): Stage {
  return (ctx: RequestContext) => {
    if (ctx.route!.public) return;
    const assertion = signer.assertionFor(ctx, now());
    if (typeof assertion === 'string') {
      ctx.assertion = assertion;
      return;
    }
    return assertion.then((jwt) => {
      ctx.assertion = jwt;
    });
  };
}
