// Scenario 5: documented error codes in the page. A deployment without the demo
// token endpoint (tokens come from POST /v1/tokens with an API key): a bad token
// gives UNAUTHORIZED (over HTTP and at the WebSocket hello); a token limited to
// one number gives FORBIDDEN_NUMBER when dialing with another caller ID.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { API_KEY, Env, jwt } from './lib/harness.mjs';

const NUMBERS = [
  { id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '20s' }] },
  { id: 'sales', e164: '+15550200', name: 'Sales', dial: [{ ring: ['operators'], timeout: '20s' }] },
];

/** The error codes shown in the page's error list, newest first. */
const shownCodes = (op) => op.page.$$eval('#errors li', (lis) => lis.map((li) => li.dataset.code));

/** Types the name, clicks "Go online" (the demo endpoint is absent: the page asks for a token), pastes `token`. */
async function pasteToken(op, token) {
  await op.page.fill('#operator-name', op.name);
  await op.page.click('#go-online');
  await op.page.waitForSelector('#token-paste:not([hidden])', { timeout: 10000 });
  await op.page.evaluate(() => document.getElementById('errors').replaceChildren()); // the 404 is not what we test
  await op.page.fill('#token-input', token);
  await op.page.click('#use-token');
}

test('bad token: UNAUTHORIZED; caller ID outside the token: FORBIDDEN_NUMBER', { timeout: 90000 }, async (t) => {
  const env = await Env.start('5-errors', {
    demo: false,
    trunks: [{ name: 'carrier', peers: ['127.0.0.1:9'] }],
    numbers: NUMBERS,
  });
  t.after(() => env.stop());

  // The token API itself: a wrong key is 401 UNAUTHORIZED.
  const wrongKey = await env.apiToken({ operatorRef: 'mallory' }, 'not-the-key');
  assert.equal(wrongKey.status, 401);
  assert.equal(wrongKey.body.error.code, 'UNAUTHORIZED');

  await t.test('a bad token is UNAUTHORIZED', async () => {
    const mallory = await env.operator('Mallory');
    // Well formed, right claims, signed with another secret.
    const now = Math.floor(Date.now() / 1000);
    const forged = jwt({ sub: 'mallory', name: 'Mallory', nums: ['support', 'sales'], iat: now, nbf: now, exp: now + 600, iss: 'sbc', aud: 'operator' }, 'not-the-sbc-secret-not-the-sbc-secret');
    await pasteToken(mallory, forged);
    await mallory.page.waitForSelector('#errors li[data-code="UNAUTHORIZED"]', { timeout: 10000 });
    assert.equal(await mallory.page.getAttribute('#presence', 'data-state'), 'offline');
    await mallory.shot('bad-token');

    // At the WebSocket: hello with the bad token is refused (error UNAUTHORIZED, close 4001)
    // and the SDK stops (no reconnect loop).
    const r = await mallory.page.evaluate(() =>
      window.demo.operator.goOnline(['support']).then(
        () => ({ ok: true }),
        (e) => ({ code: e.code, message: e.message, state: window.demo.operator.state }),
      ),
    );
    assert.equal(r.code, 'UNAUTHORIZED', JSON.stringify(r));
    assert.equal(r.state, 'offline');
    const wsErrors = (await mallory.events()).filter((e) => e.type === 'error').map((e) => e.code);
    assert.ok(wsErrors.includes('UNAUTHORIZED'), JSON.stringify(wsErrors));
    assert.deepEqual([...new Set(await shownCodes(mallory))], ['UNAUTHORIZED']);
    await mallory.shot('bad-token-hello');
  });

  await t.test('a caller ID the token does not allow is FORBIDDEN_NUMBER', async () => {
    const issued = await env.apiToken({ operatorRef: 'alice', displayName: 'Alice', numbers: ['support'] }, API_KEY);
    assert.equal(issued.status, 200, JSON.stringify(issued.body));
    const alice = await env.operator('Alice');
    await pasteToken(alice, issued.body.token);
    await alice.page.waitForSelector('#presence[data-state="online"]', { timeout: 10000 });
    await alice.page.waitForSelector('#numbers li[data-number="support"][data-status="accepted"]');
    // The caller-ID list offers only the token's number.
    assert.deepEqual(await alice.page.$$eval('#caller-id option', (os) => os.map((o) => o.value)), ['support']);
    await alice.shot('online-support-only');

    // Going online on a number outside the token: rejected with FORBIDDEN_NUMBER.
    const av = await alice.page.evaluate(() => window.demo.operator.goOnline(['support', 'sales']));
    assert.deepEqual(av.accepted, ['support']);
    assert.deepEqual(av.rejected, [{ id: 'sales', code: 'FORBIDDEN_NUMBER' }]);

    // Dialing with another number as caller ID (by id and by E.164).
    for (const callerId of ['sales', '+15550200']) {
      const r = await alice.page.evaluate(
        (cid) =>
          window.demo.operator.dial('+15557770001', { callerId: cid }).then(
            () => ({ ok: true }),
            (e) => ({ code: e.code, message: e.message }),
          ),
        callerId,
      );
      assert.equal(r.code, 'FORBIDDEN_NUMBER', `${callerId}: ${JSON.stringify(r)}`);
    }
    await alice.page.waitForSelector('#errors li[data-code="FORBIDDEN_NUMBER"]');
    assert.equal(await alice.page.evaluate(() => window.demo.operator.currentCall), null, 'no call left behind');
    assert.equal(await alice.page.getAttribute('#presence', 'data-state'), 'online', 'the session survives the error');
    await alice.shot('forbidden-number');
  });
});
