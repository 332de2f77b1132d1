// Scenario 14: transfers between two operators, every step checked by tones. Alice (the fake
// microphone's 440 Hz) answers a carrier's caller (1000 Hz) and blind-transfers it to Bob (an
// 800 Hz oscillator, online on another number): Bob is offered the call as a transfer from
// Alice, answers, the caller hears Bob, and Alice's call ends `transferred`. Then an attended
// transfer of a second call: while Bob rings and then talks to Alice, the caller waits on hold
// and hears neither; Alice completes it; the caller and Bob talk.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { API_KEY, Env, near, sleep } from './lib/harness.mjs';

const CALLER = 1000;
const ALICE = 440; // the harness's fake microphone
const BOB = 800;

/** Bob's microphone: a Web Audio oscillator at `hz` (the browser's fake device plays 440 Hz). */
const toneMic = (hz, gain) => `(() => {
  let ctx = null;
  navigator.mediaDevices.getUserMedia = async () => {
    ctx ||= new AudioContext();
    if (ctx.state !== 'running') await ctx.resume();
    const dest = ctx.createMediaStreamDestination();
    dest.channelCount = 1;
    const osc = ctx.createOscillator();
    osc.frequency.value = ${hz};
    const g = ctx.createGain();
    g.gain.value = ${gain};
    osc.connect(g).connect(dest);
    osc.start();
    return dest.stream;
  };
})();`;

/** Clicks "Go online" (no demo endpoint here: the page asks for a token) and pastes `token`. */
async function online(op, token) {
  await op.page.fill('#operator-name', op.name);
  await op.page.click('#go-online');
  await op.page.waitForSelector('#token-paste:not([hidden])', { timeout: 10000 });
  await op.page.evaluate(() => document.getElementById('errors').replaceChildren());
  await op.page.fill('#token-input', token);
  await op.page.click('#use-token');
  await op.page.waitForSelector('#presence[data-state="online"]', { timeout: 10000 });
}

/** Tone reports of the carrier since event `from` that name `hz` loud enough to be heard. */
const heardSince = (carrier, from, hz) =>
  carrier.events.slice(from).filter((e) => e.event === 'tone' && near(e.freq, hz) && e.level_db > -40);

const fmt = (r) => Object.entries(r.levels || {}).map(([hz, db]) => `${hz} Hz ${db} dB`).join(', ');

test('blind, then attended transfer from one operator to another', { timeout: 120000 }, async (t) => {
  const env = await Env.start('14-transfer', {
    demo: false,
    trunks: [{ name: 'carrier', peers: ['127.0.0.1:9'] }],
    numbers: [
      { id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '20s' }] },
      { id: 'sales', e164: '+15550101', name: 'Sales', dial: [{ ring: ['operators'], timeout: '20s' }] },
    ],
  });
  t.after(() => env.stop());

  const aliceToken = await env.apiToken({ operatorRef: 'alice', displayName: 'Alice', numbers: ['support'] }, API_KEY);
  const bobToken = await env.apiToken({ operatorRef: 'bob', displayName: 'Bob', numbers: ['sales'] }, API_KEY);
  assert.equal(aliceToken.status, 200, JSON.stringify(aliceToken.body));
  assert.equal(bobToken.status, 200, JSON.stringify(bobToken.body));
  const alice = await env.operator('Alice');
  await online(alice, aliceToken.body.token);
  const bob = await env.operator('Bob', { rawMic: false, initScript: { content: toneMic(BOB, 0.25) } });
  await online(bob, bobToken.body.token);

  const incomingCount = async (op) => (await op.events()).filter((e) => e.type === 'incomingCall').length;

  /** A carrier call to support answered by Alice. */
  const answeredByAlice = async (name) => {
    const before = await incomingCount(alice);
    const caller = await env.carrier(name, ['call', '--sbc', env.sbcSip, '--to', '+15550100', '--from', '+15557770111', '--tone', String(CALLER)]);
    await alice.page.waitForFunction((n) => window.__events.filter((e) => e.type === 'incomingCall').length > n, before, { timeout: 10000 });
    await alice.page.click('#answer');
    await alice.waitCallState('connected');
    await caller.waitFor((e) => e.event === 'answered', { what: 'answered' });
    const two = await alice.tones({ present: [CALLER], absent: [ALICE] });
    assert.ok(two.ok, `Alice should hear the caller: ${JSON.stringify(two.readings.slice(-3))}`);
    return caller;
  };

  /** Bob (who had `before` incoming calls) is offered the call as a transfer from Alice
   * (`kind`) and answers it. */
  const bobAnswers = async (kind, before) => {
    await bob.page.waitForFunction((n) => window.__events.filter((e) => e.type === 'incomingCall').length > n, before, { timeout: 10000 });
    const offered = await bob.page.evaluate(() => {
      const c = window.demo.operator.calls.find((c) => c.state === 'ringing');
      return c && { invitedBy: c.invitedBy, transferredBy: c.transferredBy };
    });
    assert.deepEqual(offered, { invitedBy: 'alice', transferredBy: kind });
    await bob.page.click('#answer');
    await bob.waitCallState('connected');
  };

  // ---- 1. Blind. ----
  const caller = await answeredByAlice('caller');
  let bobBefore = await incomingCount(bob);
  await alice.page.evaluate(() => {
    window.__blind = window.demo.call.transfer('operator:bob').then(
      () => 'done',
      (e) => e.code,
    );
  });
  await bobAnswers('blind', bobBefore);
  assert.equal(await alice.page.evaluate(() => window.__blind), 'done');
  const ended = await alice.waitEvent((e) => e.type === 'callEnded', { what: 'callEnded' });
  assert.equal(ended.reason, 'transferred');
  const from = caller.events.length;
  const [cHearsBob, bHears] = await Promise.all([caller.hears(BOB, { from }), bob.tones({ present: [CALLER], absent: [ALICE, BOB] })]);
  assert.ok(bHears.ok, `Bob should hear the caller, not Alice: ${JSON.stringify(bHears.readings.slice(-3))}`);
  t.diagnostic(`blind: the caller hears ${cHearsBob.freq} Hz at ${cHearsBob.level_db} dB; Bob hears ${fmt(bHears)}`);
  await bob.shot('blind-transferred');
  caller.send({ cmd: 'hangup' });
  const bobEnded = await bob.waitEvent((e) => e.type === 'callEnded', { what: 'callEnded (caller hung up)' });
  assert.equal(bobEnded.reason, 'remote_hangup');

  // ---- 2. Attended: consult with the caller on hold, then complete. ----
  const caller2 = await answeredByAlice('caller2');
  bobBefore = await incomingCount(bob);
  await alice.page.evaluate(() => {
    window.__attended = window.demo.call.transfer('operator:bob', { attended: true }).then(
      (h) => ((window.__handle = h), 'consulting'),
      (e) => e.code,
    );
  });
  await bobAnswers('attended', bobBefore);
  await alice.page.waitForFunction(() => window.__handle != null, null, { timeout: 10000 });
  assert.equal(await alice.page.evaluate(() => window.demo.call.transferState.state), 'consulting');
  const [aConsult, bConsult] = await Promise.all([
    alice.tones({ present: [BOB], absent: [CALLER, ALICE] }),
    bob.tones({ present: [ALICE], absent: [CALLER, BOB] }),
  ]);
  assert.ok(aConsult.ok, `Alice should hear Bob only while consulting: ${JSON.stringify(aConsult.readings.slice(-3))}`);
  assert.ok(bConsult.ok, `Bob should hear Alice only while consulting: ${JSON.stringify(bConsult.readings.slice(-3))}`);
  // The report of the second the hold began may still name Alice; from then on the caller
  // is sent nothing (our hold toward it), so no tone report may name Alice or Bob.
  await sleep(1000);
  const from2 = caller2.events.length;
  await sleep(1500);
  assert.deepEqual(
    [...heardSince(caller2, from2, ALICE), ...heardSince(caller2, from2, BOB)],
    [],
    'the caller on hold hears neither Alice nor Bob',
  );
  t.diagnostic(`consulting: Alice hears ${fmt(aConsult)}; Bob hears ${fmt(bConsult)}`);
  await alice.shot('consulting');
  await alice.page.evaluate(() => window.__handle.complete());
  const ended2 = await alice.page.waitForFunction(() => window.__events.filter((e) => e.type === 'callEnded').length === 2, null, { timeout: 10000 });
  assert.ok(ended2);
  const reasons = (await alice.events()).filter((e) => e.type === 'callEnded').map((e) => e.reason);
  assert.deepEqual(reasons, ['transferred', 'transferred']);
  const from3 = caller2.events.length;
  const [c2HearsBob, b2Hears] = await Promise.all([caller2.hears(BOB, { from: from3 }), bob.tones({ present: [CALLER], absent: [ALICE, BOB] })]);
  assert.ok(b2Hears.ok, `Bob should hear the caller after completion: ${JSON.stringify(b2Hears.readings.slice(-3))}`);
  t.diagnostic(`completed: the caller hears ${c2HearsBob.freq} Hz; Bob hears ${fmt(b2Hears)}`);
  await bob.shot('attended-completed');
  caller2.send({ cmd: 'hangup' });
  await bob.page.waitForFunction(() => window.__events.filter((e) => e.type === 'callEnded').length === 2, null, { timeout: 10000 });
});
