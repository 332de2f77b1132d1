// Scenario 15: a live media fork's insights on the operator's page. The number
// forks its calls (both tracks, native 16 kHz) to test-fork, which "transcribes"
// the customer's track by its dominant frequency every half second and sends
// `{"event":"insight","kind":"transcript","text":"1000 Hz"}` back. Alice answers
// the carrier's caller (1 kHz); her page lists the transcript lines beside the
// call (`#insights li`), the SDK's `insight` event carries them, and the
// consumer got the call's audio (start with two channels, frames).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Env, freePort } from './lib/harness.mjs';

test('a fork consumer\'s transcript reaches the operator\'s page', { timeout: 90000 }, async (t) => {
  const forkPort = await freePort();
  const url = `ws://127.0.0.1:${forkPort}/fork`;
  const env = await Env.start('15-insights', {
    trunks: [{ name: 'carrier', peers: ['127.0.0.1:9'] }],
    numbers: [{ id: 'support', e164: '+15550100', name: 'Support', fork: { url }, dial: [{ ring: ['operators'], timeout: '30s' }] }],
  });
  t.after(() => env.stop());
  const consumer = await env.fork('transcriber', ['--listen', `127.0.0.1:${forkPort}`]);

  const alice = await env.operator('Alice');
  await alice.goOnline();
  const caller = await env.carrier('caller', ['call', '--sbc', env.sbcSip, '--to', '+15550100', '--from', '+15557770111', '--tone', '1000']);
  await alice.waitEvent((e) => e.type === 'incomingCall', { what: 'incomingCall' });
  await alice.page.click('#answer');
  await alice.waitCallState('connected');
  await caller.waitFor((e) => e.event === 'answered', { what: 'answered' });

  const start = await consumer.waitFor((e) => e.event === 'start', { what: 'the fork starts at the consumer' });
  assert.equal(start.msg.rate, 16000);
  assert.equal(start.msg.channels.length, 2);
  assert.equal(start.msg.channels[0].role, 'customer');
  await consumer.waitFor((e) => e.event === 'stats' && e.insights >= 3, { what: 'insights sent', timeout: 20000 });

  // The page lists what the consumer said: the customer's 1 kHz, as a transcript.
  await alice.page.waitForFunction(
    () => [...document.querySelectorAll('#insights li')].some((li) => /1000 Hz/.test(li.textContent)),
    null,
    { timeout: 15000 },
  );
  const items = await alice.page.$$eval('#insights li', (lis) => lis.map((li) => li.textContent));
  t.diagnostic(`insights on the page: ${JSON.stringify(items.slice(-3))}`);
  assert.ok(items.length >= 2 && items.length <= 50, `${items.length} insights listed`);
  const events = (await alice.events()).filter((e) => e.type === 'insight');
  assert.ok(events.length >= 1, 'the SDK emitted insight');
  await alice.shot('insights');

  await alice.page.click('#hangup');
  await caller.waitFor((e) => e.event === 'ended', { what: 'ended' });
});
