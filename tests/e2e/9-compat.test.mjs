// Scenario 9: the operator SDK 0.3.0 playbook's flows, unchanged, through the compatibility
// entry point the sbc serves (`/sdk/compat.js`, which imports `./operator.js`), in a page
// on the customer's origin (tests/e2e/app/compat.html) whose getToken asks the app's
// backend (the Express sample) and returns `{ token, expiresAt }`: subscribe before going
// online, listPhoneNumbers, goOnline, dial with a phoneNumber as caller ID (callSid, state
// `active`), mute (the carrier hears silence, then the microphone again), DTMF, hang up;
// an incoming call rejected, another accepted (audio both ways) and hung up by the far
// end; goOffline. Every payload is checked in 0.3.0's shape.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Env, sleep } from './lib/harness.mjs';

test('the operator SDK 0.3.0 playbook through /sdk/compat.js, unchanged', { timeout: 120000 }, async (t) => {
  const env = await Env.start('9-compat', {
    demo: false,
    apps: 1,
    answerCarriers: { pstn: ['--tone', '600'] },
    trunks: [{ name: 'carrier', peers: ['pstn'] }],
    numbers: [
      { id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '20s' }] },
      { id: 'sales', e164: '+15550200', name: 'Sales', dial: [{ ring: ['operators'], timeout: '20s' }] },
    ],
  });
  t.after(() => env.stop());
  const pstn = env.carriers.pstn;
  const alice = await env.operator('Alice', { url: env.appUrl(env.apps[0], 'compat.html', { operator: 'alice', name: 'Alice' }), rawMic: false });
  const compat = alice.responses.find((r) => r.url === `${env.sbcBase}/sdk/compat.js`);
  assert.equal(compat?.status, 200);
  assert.equal(compat.allowOrigin, env.apps[0]);
  const events = (type) => alice.page.evaluate((ty) => window.app.events.filter((e) => !ty || e.type === ty), type);
  // Waits for an app event for which `pred(e, arg)` holds (`pred` runs in the page).
  const waitApp = async (pred, what, arg = null, timeout = 10000) => {
    const find = ({ src, arg }) => window.app.events.find((e) => new Function('e', 'arg', `return (${src})(e, arg)`)(e, arg));
    try {
      await alice.page.waitForFunction(find, { src: pred.toString(), arg }, { timeout });
    } catch {
      throw new Error(`no ${what} within ${timeout} ms; events: ${JSON.stringify(await events())}`);
    }
    return alice.page.evaluate(find, { src: pred.toString(), arg });
  };

  // Principle 4: pick a number, then go online.
  const online = await alice.page.evaluate(async () => {
    const numbers = await op.listPhoneNumbers();
    const mine = numbers[0];
    const r = await op.goOnline([mine.id]);
    return { numbers, mine, result: r ?? null, state: op.state };
  });
  assert.deepEqual(online.numbers, [
    { id: 'support', phoneNumber: '+15550100', displayName: 'Support' },
    { id: 'sales', phoneNumber: '+15550200', displayName: 'Sales' },
  ]);
  assert.equal(online.result, null, 'goOnline resolves with nothing');
  assert.equal(online.state, 'online');
  const presence = (await events('presenceStateChanged')).map((e) => e.payload);
  assert.deepEqual(presence, ['connecting', 'online'], 'presenceStateChanged carries the state string');
  const av = await waitApp((e) => e.type === 'availabilityChanged' && e.payload.accepted.length > 0, 'availabilityChanged');
  assert.deepEqual(av.payload, { accepted: ['support'], rejected: [] });
  await alice.shot('online');

  await t.test('outbound: dial with a phoneNumber as caller ID, mute, DTMF, hang up', async () => {
    // Principle 5.
    const dialed = await alice.page.evaluate(async (mine) => {
      const call = await op.dial('+15557770001', { callerId: mine.phoneNumber });
      window.outbound = call;
      return { ...callView(call), same: op.currentCall === call };
    }, online.mine);
    assert.match(dialed.callSid, /\S/);
    assert.equal(dialed.direction, 'outbound');
    assert.ok(['connecting', 'ringing', 'active'].includes(dialed.state), dialed.state);
    assert.equal(dialed.same, true, 'currentCall is the call dial resolved with');
    const incoming = await pstn.waitFor((e) => e.event === 'incoming', { what: 'INVITE at the carrier' });
    assert.match(incoming.from, /\+15550100/, 'the caller ID is the phoneNumber');
    const answered = await pstn.waitFor((e) => e.event === 'answered', { what: 'answered' });
    await alice.page.waitForFunction(() => window.outbound.state === 'active', null, { timeout: 10000 });
    const started = await waitApp((e) => e.type === 'callStarted', 'callStarted');
    assert.equal(started.payload.callSid, dialed.callSid);
    assert.equal(started.payload.state, 'active');
    const heard = await alice.hear(600);
    assert.ok(heard.ok, `the page should hear 600 Hz, heard ${JSON.stringify(heard.readings.slice(-5))}`);
    await pstn.hears(440, { afterMs: answered.t_ms + 500 });

    // Principle 7: mute. The carrier stops hearing the microphone, then hears it again.
    await alice.page.evaluate(() => window.outbound.mute(true));
    assert.equal(await alice.page.evaluate(() => window.outbound.muted), true);
    await sleep(800);
    const mark = pstn.events.length;
    await sleep(1500);
    const during = pstn.events.slice(mark).filter((e) => e.event === 'tone');
    assert.ok(during.length >= 2, `tone reports while muted: ${JSON.stringify(during)}`);
    assert.deepEqual(
      during.filter((e) => e.level_db > -60),
      [],
      'silence at the carrier while muted',
    );
    await alice.page.evaluate(() => window.outbound.mute(false));
    await pstn.hears(440, { from: pstn.events.length });
    t.diagnostic(`muted: the carrier heard ${during.map((e) => e.level_db).join(', ')} dB; unmuted: 440 Hz again`);

    // DTMF (0.3.0 did not forward it; here it reaches the far end).
    await alice.page.evaluate(() => window.outbound.sendDtmf('5'));
    const digit = await pstn.waitFor((e) => e.event === 'dtmf', { what: 'DTMF at the carrier' });
    assert.equal(digit.digit, '5');

    await alice.page.evaluate(() => window.outbound.hangup());
    assert.equal((await pstn.waitFor((e) => e.event === 'ended', { what: 'BYE' })).reason, 'remote_bye');
    const ended = await waitApp((e, sid) => e.type === 'callEnded' && e.payload.callSid === sid, 'callEnded', dialed.callSid);
    assert.equal(ended.payload.state, 'ended');
    assert.equal(ended.payload.endReason, 'hangup');
    assert.equal(await alice.page.evaluate(() => op.currentCall), null);
    await alice.shot('outbound-done');
  });

  await t.test('inbound: one offer rejected, the next accepted, the far end hangs up', async () => {
    // Principle 6: incomingCall -> reject(). The app keeps the offers it is given.
    await alice.page.evaluate(() => {
      window.offers = [];
      op.on('incomingCall', (call) => window.offers.push(call));
    });
    const first = await env.carrier('caller1', ['call', '--sbc', env.sbcSip, '--to', '+15550100', '--from', '+15557770111', '--tone', '1000']);
    const offer = await waitApp((e) => e.type === 'incomingCall', 'incomingCall');
    assert.equal(offer.payload.direction, 'inbound');
    assert.equal(offer.payload.from, '+15557770111');
    assert.equal(offer.payload.state, 'ringing');
    assert.equal(await alice.page.evaluate(() => op.currentCall), null, 'a ringing offer is not the current call');
    await alice.page.evaluate(() => window.offers[0].reject());
    const rejected = await waitApp((e, sid) => e.type === 'callEnded' && e.payload.callSid === sid, 'callEnded (rejected)', offer.payload.callSid);
    assert.equal(rejected.payload.endReason, 'rejected');
    const gone = await first.waitFor((e) => e.event === 'ended' || e.event === 'failed', { what: 'the first caller refused', timeout: 25000 });
    t.diagnostic(`the rejected caller: ${JSON.stringify(gone)}`);
    await alice.shot('rejected');

    // incomingCall -> accept(): callStarted, state active, audio both ways.
    const second = await env.carrier('caller2', ['call', '--sbc', env.sbcSip, '--to', '+15550100', '--from', '+15557770222', '--tone', '1000']);
    await waitApp((e) => e.type === 'incomingCall' && e.payload.from === '+15557770222', 'second incomingCall');
    await alice.page.evaluate(() => window.offers[1].accept());
    const started = await waitApp((e) => e.type === 'callStarted' && e.payload.direction === 'inbound', 'callStarted (inbound)');
    assert.equal(started.payload.state, 'active');
    assert.equal(started.payload.from, '+15557770222');
    const answered = await second.waitFor((e) => e.event === 'answered', { what: 'answered' });
    const heard = await alice.hear(1000);
    assert.ok(heard.ok, `the page should hear 1000 Hz, heard ${JSON.stringify(heard.readings.slice(-5))}`);
    await second.hears(440, { afterMs: answered.t_ms + 1000 });
    assert.equal(await alice.page.evaluate(() => op.currentCall.callSid), started.payload.callSid);
    await alice.shot('inbound-active');
    second.send({ cmd: 'hangup' });
    const ended = await waitApp((e, sid) => e.type === 'callEnded' && e.payload.callSid === sid, 'callEnded (remote)', started.payload.callSid);
    assert.equal(ended.payload.endReason, 'remote_hangup');
  });

  // Principle 9: goOffline.
  const off = await alice.page.evaluate(async () => ({ result: (await op.goOffline()) ?? null, state: op.state }));
  assert.deepEqual(off, { result: null, state: 'offline' });
  await waitApp((e) => e.type === 'presenceStateChanged' && e.payload === 'offline', 'presenceStateChanged offline');
  assert.equal((await events('firstCallStarted')).length, 1, 'once() fired once');
  assert.deepEqual(
    (await events('error')).map((e) => e.payload.code),
    [],
    'no error on the way',
  );
  await alice.shot('offline');
});
