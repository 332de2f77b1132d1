// Scenario 3: outbound. The operator dials a PSTN number; the carrier sends 183
// with early media (a 700 Hz tone) before answering with a 1 kHz tone; the page
// hears both; sendDtmf("123#") reaches the carrier as RFC 4733 events; the page
// hangs up and the carrier gets BYE. Then the same through a trunk configured for
// SIP INFO DTMF.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Env } from './lib/harness.mjs';

test('outbound call: early media, answer, DTMF (RFC 4733, then SIP INFO), hangup', { timeout: 90000 }, async (t) => {
  const env = await Env.start('3-outbound', {
    answerCarriers: {
      pstn: ['--early-media-tone', '700', '--early-ms', '4000', '--tone', '1000'],
      info: ['--tone', '600'],
    },
    trunks: [
      { name: 'carrier', peers: ['pstn'] },
      { name: 'info', peers: ['info'], dtmf: 'info' },
    ],
    numbers: [{ id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '20s' }] }],
  });
  t.after(() => env.stop());
  const carrier = env.carriers.pstn;

  const alice = await env.operator('Alice');
  await alice.goOnline();
  await alice.page.fill('#dial-to', '+15557770001');
  await alice.page.selectOption('#caller-id', 'support');
  await alice.shot('dialing');
  await alice.page.click('#call');

  const incoming = await carrier.waitFor((e) => e.event === 'incoming', { what: 'INVITE at the carrier' });
  assert.match(incoming.uri, /^sip:\+15557770001@/);
  assert.match(incoming.from, /\+15550100/, 'caller ID is the support number');

  // Early media: the call rings with the far end's own audio, and the page hears it.
  await alice.page.waitForFunction(() => window.demo.call && window.demo.call.state === 'ringing' && window.demo.call.earlyMedia === true, null, {
    timeout: 10000,
  });
  assert.match(await alice.page.textContent('#call-state'), /early media/);
  const early = await alice.hear(700, { timeout: 3500 });
  assert.ok(early.ok, `the page should hear the 700 Hz early media, heard ${JSON.stringify(early.readings.slice(-5))}`);
  const notYet = await carrier.waitFor((e) => e.event === 'answered', { timeout: 1 }).catch(() => null);
  assert.equal(notYet, null, 'the early media was heard before the answer');
  t.diagnostic(`early media heard: ${early.freq} Hz at ${early.db} dB`);
  await alice.shot('early-media');

  // Answer.
  await carrier.waitFor((e) => e.event === 'answered', { timeout: 8000, what: 'answered' });
  await alice.waitCallState('connected');
  const talk = await alice.hear(1000);
  assert.ok(talk.ok, `the page should hear 1000 Hz once connected, heard ${JSON.stringify(talk.readings.slice(-5))}`);
  await alice.shot('connected');

  // DTMF as RFC 4733 events.
  await alice.page.evaluate(() => window.demo.call.sendDtmf('123#'));
  const digits = [];
  for (let i = 0; i < 4; i++) {
    const ev = await carrier.waitFor((e) => e.event === 'dtmf' && !digits.includes(e), { timeout: 5000, what: `DTMF digit ${i + 1}` });
    digits.push(ev);
  }
  assert.deepEqual(
    digits.map((d) => d.digit),
    ['1', '2', '3', '#'],
  );
  assert.ok(
    digits.every((d) => d.via === 'rfc4733'),
    'digits arrive as telephone-events',
  );
  t.diagnostic(`carrier got DTMF ${digits.map((d) => d.digit).join('')} via ${digits[0].via}`);
  await alice.shot('dtmf-sent');

  // The page hangs up: BYE to the carrier.
  await alice.page.click('#hangup');
  const ended = await carrier.waitFor((e) => e.event === 'ended', { what: 'ended (BYE)' });
  assert.equal(ended.reason, 'remote_bye');
  await alice.waitCallState('ended');
  assert.equal((await alice.callState()).endReason, 'hangup');
  await alice.shot('hung-up');

  // A trunk with `dtmf = "info"`: the digits go as SIP INFO (application/dtmf-relay).
  const info = env.carriers.info;
  await alice.page.fill('#dial-to', 'pstn:+15557770002@info');
  await alice.page.click('#call');
  await info.waitFor((e) => e.event === 'answered', { what: 'answered (info trunk)' });
  await alice.waitCallState('connected');
  await alice.page.evaluate(() => window.demo.call.sendDtmf('9*'));
  const got = [];
  for (let i = 0; i < 2; i++) got.push(await info.waitFor((e) => e.event === 'dtmf' && !got.includes(e), { timeout: 5000, what: `INFO digit ${i + 1}` }));
  assert.deepEqual(
    got.map((d) => `${d.digit}/${d.via}`),
    ['9/info', '*/info'],
  );
  t.diagnostic(`info trunk: carrier got DTMF ${got.map((d) => d.digit).join('')} via ${got[0].via}`);
  await alice.page.click('#hangup');
  await info.waitFor((e) => e.event === 'ended', { what: 'ended (info trunk)' });
  await alice.shot('info-dtmf');
});
