// Scenario 4: reconnect. Mid-call the page's signalling WebSocket is closed under
// the SDK; it reconnects with a fresh token within the grace period, the server
// resumes the call (`ready.calls`), and the media, which never depended on the
// socket, keeps flowing both ways. The call is then hung up over the new socket.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Env, sleep } from './lib/harness.mjs';

test('the signalling socket drops mid-call: reconnect, the call and its audio continue', { timeout: 90000 }, async (t) => {
  const env = await Env.start('4-reconnect', {
    answerCarriers: { pstn: ['--tone', '1000'] },
    trunks: [{ name: 'carrier', peers: ['pstn'] }],
    numbers: [{ id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '20s' }] }],
    grace: '20s',
  });
  t.after(() => env.stop());
  const carrier = env.carriers.pstn;

  const alice = await env.operator('Alice');
  await alice.goOnline();
  await alice.page.fill('#dial-to', '+15557770001');
  await alice.page.click('#call');
  const answered = await carrier.waitFor((e) => e.event === 'answered', { what: 'answered' });
  await alice.waitCallState('connected');
  const before = await alice.hear(1000);
  assert.ok(before.ok, `before: the page should hear 1000 Hz, heard ${JSON.stringify(before.readings.slice(-5))}`);
  await carrier.hears(440, { afterMs: answered.t_ms + 500 });
  await alice.shot('connected');

  const s0 = await alice.page.evaluate(() => ({
    sessionId: window.demo.operator.sessionId,
    callId: window.demo.call.callId,
    pc: window.demo.call.peerConnection.connectionState,
  }));
  const tokens0 = alice.tokenRequests;

  // Drop the socket under the SDK (as a network blip would), and keep the token
  // endpoint failing for a few seconds so the outage lasts: the SDK retries with backoff.
  await alice.context.route('**/demo/token', (r) => r.abort('connectionfailed'));
  const dropAt = performance.now();
  await alice.page.evaluate(() => window.demo.operator._ws.close());
  await alice.waitEvent((e) => e.type === 'presence' && e.state === 'reconnecting', { what: 'reconnecting' });
  await alice.shot('reconnecting');
  // Media does not depend on the socket: both directions flow during the outage.
  const outage = carrier.events.length;
  const during = await alice.hear(1000);
  assert.ok(during.ok, `during the outage the page should hear 1000 Hz, heard ${JSON.stringify(during.readings.slice(-5))}`);
  await carrier.hears(440, { from: outage, need: 3 });
  await sleep(Math.max(0, 3000 - (performance.now() - dropAt)));
  assert.equal(await alice.page.evaluate(() => window.demo.operator.state), 'reconnecting', 'still disconnected');
  await alice.context.unroute('**/demo/token');
  await alice.page.waitForFunction(() => window.demo.operator.state === 'online', null, { timeout: 15000 });
  const backMs = Math.round(performance.now() - dropAt);
  t.diagnostic(`reconnected ${backMs} ms after the drop (token endpoint blocked for the first 3 s)`);

  const s1 = await alice.page.evaluate(() => ({
    sessionId: window.demo.operator.sessionId,
    callId: window.demo.call && window.demo.call.callId,
    state: window.demo.call && window.demo.call.state,
    pc: window.demo.call && window.demo.call.peerConnection && window.demo.call.peerConnection.connectionState,
    availability: window.demo.operator.availability,
  }));
  assert.notEqual(s1.sessionId, s0.sessionId, 'a new signalling session');
  assert.equal(s1.callId, s0.callId, 'the same call');
  assert.equal(s1.state, 'connected');
  assert.equal(s1.pc, 'connected', 'the same peer connection, still connected');
  assert.ok(alice.tokenRequests > tokens0, 'a fresh token was fetched for the reconnect');
  assert.deepEqual(s1.availability.accepted, ['support'], 'online again on its numbers');
  const ended = (await alice.events()).filter((e) => e.type === 'callEnded');
  assert.deepEqual(ended, [], 'no call ended');
  assert.equal(carrier.all('ended').length, 0, 'the carrier still has the call');
  await alice.shot('reconnected');

  // Audio after the reconnect: the carrier hears the page, the page hears the carrier.
  const mark = carrier.events.length;
  await sleep(300);
  const tone = await carrier.hears(440, { from: mark, need: 3 });
  t.diagnostic(`after reconnect the carrier hears ${tone.freq} Hz at ${tone.level_db} dB`);
  const after = await alice.hear(1000);
  assert.ok(after.ok, `after: the page should hear 1000 Hz, heard ${JSON.stringify(after.readings.slice(-5))}`);

  // Control works over the new socket: hang up.
  await alice.page.click('#hangup');
  const bye = await carrier.waitFor((e) => e.event === 'ended', { what: 'BYE' });
  assert.equal(bye.reason, 'remote_bye');
  await alice.waitCallState('ended');
  await alice.shot('hung-up');
});
