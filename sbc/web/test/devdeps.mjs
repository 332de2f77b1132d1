// The package's devDependencies (typescript, react, react-test-renderer, express) for the tests
// that need them. When sbc/web/node_modules is missing they are installed once from the lock
// file (`npm ci`, serialized across the test files with flock); SBC_WEB_NO_INSTALL=1 turns that
// off, and those tests are then skipped with the reason.

import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const webDir = fileURLToPath(new URL('../', import.meta.url));
const NEEDED = ['typescript', 'react', 'react-test-renderer', 'express', '@types/react'];
const present = () => NEEDED.every((name) => existsSync(`${webDir}node_modules/${name}/package.json`));

let result = null;

/** `{ok: true}` once the devDependencies are installed, else `{ok: false, reason}`. */
export function ensureDevDeps() {
  if (result) return result;
  if (present()) return (result = { ok: true });
  if (process.env.SBC_WEB_NO_INSTALL) return (result = { ok: false, reason: 'sbc/web/node_modules is missing (SBC_WEB_NO_INSTALL is set): run npm ci in sbc/web' });
  try {
    const script = `cd "$1" && { [ -f node_modules/.package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error; }`;
    execFileSync('flock', [`${webDir}.npm-ci.lock`, 'sh', '-c', script, 'sh', webDir], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 300000 });
  } catch (err) {
    return (result = { ok: false, reason: `npm ci in sbc/web failed: ${err.message}` });
  }
  return (result = present() ? { ok: true } : { ok: false, reason: 'npm ci did not install the devDependencies' });
}
