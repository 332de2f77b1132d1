// Module resolve hook for demo.test.mjs: on the server the page imports the SDK as
// `./sdk/operator.js` (it is served at /sdk/operator.js); in the source tree it is ../operator.js.
export async function resolve(specifier, context, next) {
  if (specifier === './sdk/operator.js' && context.parentURL && /\/web\/demo\.js(\?|$)/.test(context.parentURL)) {
    return next(new URL('../operator.js', import.meta.url).href, context);
  }
  return next(specifier, context);
}
