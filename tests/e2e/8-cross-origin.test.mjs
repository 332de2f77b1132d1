// Scenario 8: the SDK on the customer's own origin. The operator page is served by the
// customer's app (tests/e2e/app/operator.html on a second port, another origin), which
// takes its token from the SDK's sample Node backend (sbc/web/examples/token-express,
// started as its own process, asking the sbc's POST /v1/tokens with the API key and the
// playbook's body) and imports the SDK from the sbc (`/sdk/operator.js`: a module script,
// fetched in CORS mode). That page goes online, lists its numbers (a preflighted GET with
// Authorization), takes a carrier call and dials out, audio checked both ways each time.
// The same page from an origin not in `allowed_origins` cannot load the SDK (a CORS error,
// the sbc's 403), nor open the operator socket, nor call the API.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fs from 'node:fs';
import path from 'node:path';
import { Env, REPO } from './lib/harness.mjs';

test("the SDK from the sbc on the customer's origin; another origin is refused", { timeout: 120000 }, async (t) => {
  const env = await Env.start('8-cross-origin', {
    demo: false,
    apps: 1,
    refusedApps: 1,
    answerCarriers: { pstn: ['--tone', '600'] },
    trunks: [{ name: 'carrier', peers: ['pstn'] }],
    numbers: [
      { id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '20s' }] },
      { id: 'sales', e164: '+15550200', name: 'Sales', dial: [{ ring: ['operators'], timeout: '20s' }] },
    ],
  });
  t.after(() => env.stop());
  const [app] = env.apps;
  const [other] = env.refusedApps;
  t.diagnostic(`sbc ${env.sbcBase}; app ${app} (allowed); ${other} (not in allowed_origins); token backend ${env.backend.url}`);

  await t.test('allowed origin: online, listNumbers, an inbound and an outbound call', async () => {
    const alice = await env.operator('Alice', {
      url: env.appUrl(app, 'operator.html', { operator: 'alice', name: 'Alice', numbers: 'support' }),
      rawMic: false, // the page asks for the raw microphone itself (audioConstraints)
    });
    // The module came from the sbc, cross-origin, with the app's origin allowed.
    const sdk = alice.responses.find((r) => r.url === `${env.sbcBase}/sdk/operator.js`);
    assert.equal(sdk?.status, 200, JSON.stringify(alice.responses));
    assert.equal(sdk.allowOrigin, app);
    assert.match(await alice.page.textContent('#status'), /SDK 1\.\d+\.\d+ loaded from/);
    await alice.shot('loaded');

    await alice.page.click('#go-online');
    await alice.page.waitForSelector('#presence:text("online")', { timeout: 10000 });
    await alice.page.waitForSelector('#presence[data-available]', { timeout: 10000 }); // numbers taken: calls ring now
    const av = await alice.page.evaluate(() => window.demo.operator.availability);
    assert.deepEqual(av.accepted, ['support']);
    // The token came from the app's backend (the Express sample), only { token, expiresAt }.
    assert.deepEqual(await alice.page.evaluate(() => window.app.tokenAnswers[0]), ['expiresAt', 'token']);
    assert.match(await alice.page.evaluate(() => window.demo.operator.tokenExpiresAt), /Z$/);
    // GET /v1/numbers with Authorization from this origin: preflight, then the list (the
    // token is for `support` only: phoneNumberIds went through the backend to the sbc).
    const numbers = await alice.page.evaluate(() => window.demo.operator.listNumbers());
    assert.deepEqual(numbers, [{ id: 'support', e164: '+15550100', name: 'Support' }]);
    const preflight = alice.responses.filter((r) => r.url === `${env.sbcBase}/v1/numbers`);
    assert.ok(preflight.every((r) => r.status === 200 && r.allowOrigin === app), JSON.stringify(preflight));
    await alice.shot('online');

    // Inbound: the carrier calls the support number; the page accepts.
    const caller = await env.carrier('caller', ['call', '--sbc', env.sbcSip, '--to', '+15550100', '--from', '+15557770111', '--tone', '1000']);
    const offer = await alice.waitEvent((e) => e.type === 'incomingCall', { what: 'incomingCall' });
    assert.equal(offer.from, '+15557770111');
    await alice.page.click('#accept');
    await alice.waitCallState('connected');
    const answered = await caller.waitFor((e) => e.event === 'answered', { what: 'answered (200 OK)' });
    const heard = await alice.hear(1000);
    assert.ok(heard.ok, `the page should hear the caller's 1000 Hz, heard ${JSON.stringify(heard.readings.slice(-5))}`);
    const tone = await caller.hears(440, { afterMs: answered.t_ms + 1000 });
    t.diagnostic(`inbound: page hears ${heard.freq} Hz at ${heard.db} dB, carrier hears ${tone.freq} Hz at ${tone.level_db} dB`);
    await alice.shot('inbound-connected');
    await alice.page.click('#hangup');
    const bye = await caller.waitFor((e) => e.event === 'ended', { what: 'BYE at the caller' });
    assert.equal(bye.reason, 'remote_bye');
    await alice.waitCallState('ended');

    // Outbound, with the number as caller ID.
    const pstn = env.carriers.pstn;
    const callId = await alice.page.evaluate(() => window.demo.operator.dial('+15557770001', { callerId: 'support' }).then((c) => c.callId));
    const incoming = await pstn.waitFor((e) => e.event === 'incoming', { what: 'INVITE at the carrier' });
    assert.match(incoming.uri, /^sip:\+15557770001@/);
    assert.match(incoming.from, /\+15550100/);
    const answered2 = await pstn.waitFor((e) => e.event === 'answered', { what: 'answered' });
    await alice.waitCallState('connected');
    assert.equal(await alice.page.evaluate(() => window.demo.call.callId), callId);
    const heard2 = await alice.hear(600);
    assert.ok(heard2.ok, `the page should hear the carrier's 600 Hz, heard ${JSON.stringify(heard2.readings.slice(-5))}`);
    const tone2 = await pstn.hears(440, { afterMs: answered2.t_ms + 500 });
    t.diagnostic(`outbound: page hears ${heard2.freq} Hz, carrier hears ${tone2.freq} Hz at ${tone2.level_db} dB`);
    await alice.shot('outbound-connected');
    await alice.page.click('#hangup');
    assert.equal((await pstn.waitFor((e) => e.event === 'ended', { what: 'BYE at the carrier' })).reason, 'remote_bye');
    await alice.waitCallState('ended');
    await alice.shot('hung-up');
  });

  await t.test('an origin not in allowed_origins: the import fails with a CORS error, the socket and the API refuse it', async () => {
    const t0 = performance.now();
    const eve = await env.operator('Eve', { url: env.appUrl(other, 'operator.html', { operator: 'eve' }), sdk: false, rawMic: false });
    await eve.page.waitForFunction(() => window.app && window.app.loadError, null, { timeout: 10000 });
    const loadMs = Math.round(performance.now() - t0);
    const loadError = await eve.page.evaluate(() => window.app.loadError);
    assert.match(loadError, /Failed to fetch dynamically imported module/, loadError);
    assert.equal(await eve.page.evaluate(() => window.demo), undefined, 'no SDK in the page');
    assert.match(await eve.page.textContent('#status'), /could not be loaded/);
    // Chromium says why: the sbc's answer has no Access-Control-Allow-Origin for this origin.
    const cors = eve.console.find((l) => /blocked by CORS policy/.test(l));
    assert.ok(cors, `a CORS error in the console: ${JSON.stringify(eve.console)}`);
    assert.ok(cors.includes(`from origin '${other}'`), cors);
    // The request failed as a whole (Chromium does not hand a CORS-refused answer to the page).
    assert.deepEqual(
      eve.failed.filter((f) => f.url === `${env.sbcBase}/sdk/operator.js`),
      [{ url: `${env.sbcBase}/sdk/operator.js`, error: 'net::ERR_FAILED' }],
    );
    assert.equal(eve.responses.filter((r) => r.url.startsWith(env.sbcBase)).length, 0, 'nothing from the sbc reached the page');
    t.diagnostic(`refused in ${loadMs} ms (page load included): ${cors}`);
    await eve.shot('refused');

    // The operator socket and the API from that origin: refused at once, never a hang.
    const r = await eve.page.evaluate(async (sbc) => {
      const t0 = performance.now();
      const ws = await new Promise((resolve) => {
        const s = new WebSocket(`${sbc.replace(/^http/, 'ws')}/v1/operator`);
        s.onopen = () => resolve({ opened: true });
        s.onclose = (e) => resolve({ opened: false, code: e.code, ms: Math.round(performance.now() - t0) });
      });
      let fetchError = null;
      try {
        await fetch(`${sbc}/v1/numbers`, { headers: { Authorization: 'Bearer x' } });
      } catch (err) {
        fetchError = String(err);
      }
      return { ws, fetchError };
    }, env.sbcBase);
    assert.equal(r.ws.opened, false, JSON.stringify(r));
    assert.equal(r.ws.code, 1006);
    assert.ok(r.ws.ms < 2000, `the socket was refused in ${r.ws.ms} ms`);
    assert.match(r.fetchError, /Failed to fetch/);
    assert.ok(
      eve.console.some((l) => /WebSocket connection to .* failed: .*403/.test(l)),
      `the handshake's 403 in the console: ${JSON.stringify(eve.console)}`,
    );
    // The SDK bundled into the page instead (as from the npm package), with a token from the
    // app's backend: the sbc still refuses the origin, and goOnline says so at once.
    const source = fs.readFileSync(path.join(REPO, 'sbc/web/operator.js'), 'utf8');
    await eve.page.addScriptTag({ type: 'module', content: `${source}\nwindow.BundledOperator = Operator;` });
    // An inline module runs after the tag is in, not when addScriptTag returns: wait for it.
    await eve.page.waitForFunction(() => typeof window.BundledOperator === 'function', null, { timeout: 10000 });
    const bundled = await eve.page.evaluate(async (sbc) => {
      const t0 = performance.now();
      const op = new window.BundledOperator({
        url: `${sbc.replace(/^http/, 'ws')}/v1/operator`,
        getToken: () => fetch('/api/operator/token', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"operatorRef":"eve"}' }).then((r) => r.json()),
        logger: { debug() {}, info() {}, warn() {}, error() {} },
      });
      const r = await op.goOnline().then(
        () => ({ online: true }),
        (e) => ({ code: e.code, message: e.message }),
      );
      return { ...r, state: op.state, ms: Math.round(performance.now() - t0) };
    }, env.sbcBase);
    t.diagnostic(`bundled SDK from the refused origin: ${JSON.stringify(bundled)}`);
    assert.equal(bundled.code, 'WS_ERROR', JSON.stringify(bundled));
    assert.equal(bundled.state, 'offline');
    assert.ok(bundled.ms < 3000, `refused in ${bundled.ms} ms`);

    // What the sbc says to anyone who looks (here without a browser): a 403 with the reason.
    const plain = await fetch(`${env.sbcBase}/sdk/operator.js`, { headers: { Origin: other } });
    assert.equal(plain.status, 403);
    const body = await plain.json();
    assert.equal(body.error.code, 'FORBIDDEN_ORIGIN');
    t.diagnostic(`sbc: ${plain.status} ${JSON.stringify(body)}`);
    const metrics = await (await fetch(`${env.sbcBase}/metrics`)).text();
    assert.match(metrics, /sbc_http_rejected_total\{[^}]*reason="origin"[^}]*\} [1-9]/);
    assert.match(metrics, /sbc_ws_rejected_total\{[^}]*reason="origin"[^}]*\} [1-9]/);
  });
});
