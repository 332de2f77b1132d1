// Scenario 2: sequential fallback. The number rings its operators first; nobody
// answers within the step's timeout, so the call goes to the next step, a
// `pstn:` target through a second trunk, where a test-carrier answers. Audio
// crosses between the two carriers through the SBC.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Env } from './lib/harness.mjs';

const STEP_MS = 4000;

test('no operator answers in time: the call falls back to the pstn: target', { timeout: 90000 }, async (t) => {
  const env = await Env.start('2-fallback', {
    answerCarriers: { fallback: ['--tone', '600'] },
    trunks: [
      { name: 'carrier', peers: ['127.0.0.1:9'] },
      { name: 'fallback', peers: ['fallback'] },
    ],
    numbers: [
      {
        id: 'support',
        e164: '+15550100',
        name: 'Support',
        dial: [
          { ring: ['operators'], timeout: `${STEP_MS / 1000}s` },
          { ring: ['pstn:+15550111@fallback'], timeout: '20s' },
        ],
      },
    ],
  });
  t.after(() => env.stop());
  const fallback = env.carriers.fallback;

  const alice = await env.operator('Alice');
  await alice.goOnline();
  await alice.shot('online');

  const caller = await env.carrier('caller', ['call', '--sbc', env.sbcSip, '--to', '+15550100', '--tone', '1000']);
  const calling = await caller.waitFor((e) => e.event === 'calling');
  await alice.waitEvent((e) => e.type === 'incomingCall', { what: 'incomingCall' });
  await alice.page.waitForSelector('#incoming:not([hidden])');
  await alice.shot('ringing-not-answering');

  // Nobody answers: after the step timeout the operator's offer ends and the
  // fallback carrier is called.
  const ended = await alice.waitEvent((e) => e.type === 'callEnded', { timeout: STEP_MS + 5000, what: 'callEnded' });
  t.diagnostic(`Alice's offer ended: ${ended.reason}`);
  assert.equal(ended.reason, 'no_answer');
  const incoming = await fallback.waitFor((e) => e.event === 'incoming', { timeout: STEP_MS + 5000, what: 'incoming at the fallback' });
  const afterMs = incoming.at - calling.at;
  t.diagnostic(`fallback rung ${Math.round(afterMs)} ms after the call started (step timeout ${STEP_MS} ms)`);
  assert.ok(afterMs >= STEP_MS - 300, `the fallback rang after ${afterMs} ms, before the step timeout`);
  assert.match(incoming.uri, /^sip:\+15550111@/, 'the pstn: number is the Request-URI user');
  await alice.shot('offer-ended');

  const fbAnswered = await fallback.waitFor((e) => e.event === 'answered', { what: 'fallback answered' });
  const answered = await caller.waitFor((e) => e.event === 'answered', { what: 'caller answered' });
  assert.ok(answered.at >= fbAnswered.at, 'the caller is answered once the fallback answers');

  // Audio both ways through the SBC.
  const atCaller = await caller.hears(600, { afterMs: answered.t_ms + 500 });
  const atFallback = await fallback.hears(1000, { afterMs: fbAnswered.t_ms + 500 });
  t.diagnostic(`caller hears ${atCaller.freq} Hz (${atCaller.level_db} dB), fallback hears ${atFallback.freq} Hz (${atFallback.level_db} dB)`);

  // The page stays idle and can take the next call.
  assert.equal(await alice.page.getAttribute('#presence', 'data-state'), 'online');
  caller.send({ cmd: 'hangup' });
  const bye = await fallback.waitFor((e) => e.event === 'ended', { what: 'fallback ended' });
  assert.equal(bye.reason, 'remote_bye');
  await alice.shot('after-call');
});
