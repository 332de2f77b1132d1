// Scenario 1: inbound simultaneous ring. Two operators online on the number; the
// carrier calls; both pages ring; the second accepts; the first sees the call
// taken by the other; audio both ways (1 kHz from the carrier heard in the page,
// the page's 440 Hz fake microphone heard by the carrier).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Env, near } from './lib/harness.mjs';

test('inbound call rings two operators, the second answers, audio both ways', { timeout: 90000 }, async (t) => {
  const env = await Env.start('1-inbound-ring', {
    trunks: [{ name: 'carrier', peers: ['127.0.0.1:9'] }],
    numbers: [{ id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '30s' }] }],
  });
  t.after(() => env.stop());

  const alice = await env.operator('Alice');
  const bob = await env.operator('Bob');
  await alice.goOnline();
  await bob.goOnline();
  await alice.shot('online');
  await bob.shot('online');

  const carrier = await env.carrier('caller', ['call', '--sbc', env.sbcSip, '--to', '+15550100', '--from', '+15557770111', '--tone', '1000']);
  await carrier.waitFor((e) => e.event === 'progress' && e.sdp, { what: '183 with SDP (ringback)' });

  const inA = await alice.waitEvent((e) => e.type === 'incomingCall', { what: 'incomingCall' });
  const inB = await bob.waitEvent((e) => e.type === 'incomingCall', { what: 'incomingCall' });
  assert.equal(inA.callId, inB.callId, 'both pages ring for the same call');
  assert.equal(inA.from, '+15557770111');
  await alice.page.waitForSelector('#incoming:not([hidden])');
  await bob.page.waitForSelector('#incoming:not([hidden])');
  await alice.shot('ringing');
  await bob.shot('ringing');

  await bob.page.click('#answer');
  await bob.waitCallState('connected');
  const answered = await carrier.waitFor((e) => e.event === 'answered', { what: 'answered (200 OK)' });
  const ended = await alice.waitEvent((e) => e.type === 'callEnded', { what: 'callEnded' });
  assert.equal(ended.reason, 'taken_by_other', `Alice's call ended with ${ended.reason}`);
  await alice.page.waitForSelector('#incoming[hidden]', { state: 'attached' });
  assert.match(await alice.page.textContent('#call-state'), /answered by another operator/);
  await alice.shot('taken-by-other');
  await bob.shot('connected');

  // Carrier -> page: the 1 kHz tone in Bob's remote stream.
  const heard = await bob.hear(1000);
  assert.ok(heard.ok, `Bob should hear 1000 Hz, heard ${JSON.stringify(heard.readings.slice(-5))}`);
  t.diagnostic(`page hears ${heard.freq} Hz at ${heard.db} dB`);
  // Page -> carrier: the fake microphone's 440 Hz (reports from 1 s after the answer:
  // ringback is over).
  const tone = await carrier.hears(440, { afterMs: answered.t_ms + 1000 });
  t.diagnostic(`carrier hears ${tone.freq} Hz at ${tone.level_db} dB`);
  await bob.shot('audio-checked');

  // Bob hangs up: the carrier gets BYE.
  await bob.page.click('#hangup');
  const bye = await carrier.waitFor((e) => e.event === 'ended', { what: 'ended' });
  assert.equal(bye.reason, 'remote_bye');
  await bob.waitCallState('ended');
  assert.equal((await bob.callState()).endReason, 'hangup');
  await bob.shot('hung-up');
  assert.ok(near(tone.freq, 440));
});
