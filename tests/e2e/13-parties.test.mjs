// Scenario 13: a call of several parties, every step checked by tones. Alice (an operator,
// the fake microphone's 440 Hz) answers a carrier's caller (1000 Hz) and adds a phone through
// the trunk (`+15557770222`, a test-carrier answering with 600 Hz): all three hear each
// other and nobody hears itself. Sam, a supervisor (a token with the `monitor` right; his
// microphone an 800 Hz oscillator), lists the calls and monitors that one whispering to
// Alice (she hears him, the caller and the phone do not), barges (everyone hears him), and
// goes back to listening (nobody does), on one peer connection. The phone hangs up, the call
// goes on for Alice and the caller; Alice ends it for everyone; the CDR lists every party.
//
// A carrier reports only the dominant frequency of what it hears, so its checks silence the
// other sources (`{"cmd":"tone","hz":null}`, Alice's Mute button) to hear one at a time; the
// pages measure each tone's level at once (OperatorPage.tones).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { API_KEY, Env, sleep } from './lib/harness.mjs';

const CALLER = 1000;
const PHONE = 600;
const ALICE = 440; // the harness's fake microphone
const SAM = 800;

/** Sam's microphone: a Web Audio oscillator at `hz` (the browser's fake device plays 440 Hz). */
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
  await op.page.evaluate(() => document.getElementById('errors').replaceChildren()); // the 404 asked for the token
  await op.page.fill('#token-input', token);
  await op.page.click('#use-token');
  await op.page.waitForSelector('#presence[data-state="online"]', { timeout: 10000 });
}

/** The participants list as the page shows it: [{id, state, role, text}]. */
const shownParties = (op) =>
  op.page.$$eval('#participants li[data-participant]', (lis) =>
    lis.map((li) => ({ id: li.dataset.participant, state: li.dataset.state, role: li.querySelector('.role').textContent, text: li.textContent })),
  );

/** Waits until the page lists exactly `roles` (in any order), every one joined. */
async function waitParties(op, roles) {
  const want = [...roles].sort().join(',');
  try {
    await op.page.waitForFunction(
      (want) => {
        const lis = [...document.querySelectorAll('#participants li[data-participant]')];
        return lis.every((li) => li.dataset.state === 'joined') && lis.map((li) => li.querySelector('.role').textContent).sort().join(',') === want;
      },
      want,
      { timeout: 10000 },
    );
  } catch {
    throw new Error(`${op.name}: participants not ${want}: ${JSON.stringify(await shownParties(op))}`);
  }
  return shownParties(op);
}

const fmt = (r) => Object.entries(r.levels || {}).map(([hz, db]) => `${hz} Hz ${db} dB`).join(', ');
const fmtTone = (e) => `${e.freq == null ? 'nothing' : `${e.freq} Hz`} at ${e.level_db} dB (rms ${e.rms_db} dB, ${e.packets} packets)`;

test('three parties hear each other; a supervisor whispers, barges, listens; the phone leaves; end for all', { timeout: 90000 }, async (t) => {
  const t0 = performance.now();
  const env = await Env.start('13-parties', {
    demo: false,
    answerCarriers: { phone: ['--tone', String(PHONE)] },
    // One trunk both ways: the caller comes in from 127.0.0.1, `+E164` goes out to the phone.
    trunks: [{ name: 'carrier', peers: ['phone'] }],
    numbers: [{ id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '20s' }] }],
  });
  t.after(() => env.stop());
  const phone = env.carriers.phone;
  const cdr = async (callId) => {
    const re = new RegExp(`cdr call=${callId} .*`);
    for (let i = 0; i < 20; i++) {
      const line = fs.readFileSync(env.sbc.logFile, 'utf8').match(re);
      if (line) return line[0];
      await sleep(100);
    }
    throw new Error(`no CDR for ${callId} in ${env.sbc.logFile}`);
  };
  const step = (label) => t.diagnostic(`${label} at ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  // Tokens from the API: Alice may take calls, Sam may monitor them too.
  const aliceToken = await env.apiToken({ operatorRef: 'alice', displayName: 'Alice', numbers: ['support'] }, API_KEY);
  const samToken = await env.apiToken({ operatorRef: 'sam', displayName: 'Sam', numbers: ['support'], capabilities: ['monitor'] }, API_KEY);
  assert.equal(aliceToken.status, 200, JSON.stringify(aliceToken.body));
  assert.equal(samToken.status, 200, JSON.stringify(samToken.body));

  const alice = await env.operator('Alice');
  await online(alice, aliceToken.body.token);

  // ---- 1. Alice answers the caller and adds a phone: three parties. ----
  const caller = await env.carrier('caller', ['call', '--sbc', env.sbcSip, '--to', '+15550100', '--from', '+15557770111', '--tone', String(CALLER)]);
  const { callId } = await alice.waitEvent((e) => e.type === 'incomingCall', { what: 'incomingCall' });
  await alice.page.click('#answer');
  await alice.waitCallState('connected');
  await caller.waitFor((e) => e.event === 'answered', { what: 'answered' });
  await alice.page.evaluate(() => {
    const left = (window.__left = []);
    window.demo.call.on('participantLeft', (e) => left.push({ role: e.participant && e.participant.role, reason: e.reason }));
  });
  const two = await alice.tones({ present: [CALLER], absent: [ALICE] });
  assert.ok(two.ok, `Alice should hear the caller: ${JSON.stringify(two.readings.slice(-3))}`);
  await alice.shot('two-parties');

  // An operator without the monitor right may not list the calls.
  const denied = await alice.page.evaluate(() => window.demo.operator.listCalls().then(() => null, (e) => e.code));
  assert.equal(denied, 'FORBIDDEN');

  await alice.page.fill('#add-target', '+15557770222');
  await alice.page.click('#add-participant');
  const rung = await phone.waitFor((e) => e.event === 'incoming', { what: 'INVITE at the phone' });
  assert.match(rung.uri, /^sip:\+15557770222@/);
  await phone.waitFor((e) => e.event === 'answered', { what: 'the phone answered' });
  const parties = await waitParties(alice, ['customer', 'agent', 'phone']);
  assert.match(parties.find((p) => p.role === 'agent').text, /\(you\)/);
  assert.match(parties.find((p) => p.role === 'customer').text, /\+15557770111/);
  assert.match(parties.find((p) => p.role === 'phone').text, /15557770222/);
  await alice.page.waitForSelector('#add-participant:not([disabled])'); // the add resolved
  assert.equal(await alice.page.isVisible('#monitor-controls'), false, "an agent's page shows no monitoring controls");
  await alice.shot('three-parties');
  step('three parties joined');

  // Everyone talks: Alice hears the caller and the phone, not herself; each carrier's loudest
  // is Alice (her microphone is at -6 dBFS, theirs at -12).
  let from = { caller: caller.events.length, phone: phone.events.length };
  const [aHears, cHears, pHears] = await Promise.all([
    alice.tones({ present: [CALLER, PHONE], absent: [ALICE] }),
    caller.hears(ALICE, { from: from.caller }),
    phone.hears(ALICE, { from: from.phone }),
  ]);
  assert.ok(aHears.ok, `Alice should hear 1000 and 600 Hz and not 440 Hz: ${JSON.stringify(aHears.readings.slice(-3))}`);
  t.diagnostic(`3 parties: Alice hears ${fmt(aHears)}; the caller hears ${fmtTone(cHears)}; the phone hears ${fmtTone(pHears)}`);
  // Alice muted, the phone silent: the caller hears nothing (not its own tone), the phone hears the caller.
  await alice.page.click('#mute');
  phone.send({ cmd: 'tone', hz: null });
  from = { caller: caller.events.length, phone: phone.events.length };
  const [cQuiet, pHearsC] = await Promise.all([caller.quiet({ from: from.caller }), phone.hears(CALLER, { from: from.phone })]);
  t.diagnostic(`Alice muted, the phone silent: the caller hears ${fmtTone(cQuiet)}; the phone hears ${fmtTone(pHearsC)}`);
  // The caller silent, the phone talking: the caller hears the phone, the phone hears nothing.
  caller.send({ cmd: 'tone', hz: null });
  phone.send({ cmd: 'tone', hz: PHONE });
  from = { caller: caller.events.length, phone: phone.events.length };
  const [cHearsP, pQuiet] = await Promise.all([caller.hears(PHONE, { from: from.caller }), phone.quiet({ from: from.phone })]);
  t.diagnostic(`Alice muted, the caller silent: the caller hears ${fmtTone(cHearsP)}; the phone hears ${fmtTone(pQuiet)}`);
  await alice.shot('three-parties-audio');
  step('three-party audio checked');

  // ---- 2. Sam supervises: whisper to Alice, barge, listen. ----
  const sam = await env.operator('Sam', { rawMic: false, initScript: { content: toneMic(SAM, 0.25) } });
  await online(sam, samToken.body.token);
  caller.send({ cmd: 'tone', hz: CALLER });
  await alice.page.click('#mute'); // unmuted: everyone talks again
  await sam.page.click('#list-calls');
  const row = `#calls-list li[data-call-id="${callId}"]`;
  await sam.page.waitForSelector(row, { timeout: 5000 });
  const listed = await sam.page.evaluate(() => window.demo.operator.listCalls());
  const entry = listed.find((c) => c.callId === callId);
  assert.ok(entry, JSON.stringify(listed));
  assert.deepEqual(entry.participants.map((p) => p.role).sort(), ['agent', 'customer', 'phone']);
  await sam.shot('calls-listed');
  await sam.page.click(`${row} button[data-monitor="whisper"]`);
  await sam.waitCallState('connected');
  const mon = await sam.page.evaluate(() => {
    window.__pc = window.demo.call.peerConnection; // the same one to the end
    return { direction: window.demo.call.direction, mode: window.demo.call.mode };
  });
  assert.deepEqual(mon, { direction: 'monitor', mode: 'whisper' });
  await sam.page.waitForSelector('#mode-whisper[aria-pressed="true"]');
  assert.equal(await sam.page.isVisible('#monitor-controls'), true);
  const withSam = await waitParties(alice, ['customer', 'agent', 'phone', 'supervisor']);
  assert.match(withSam.find((p) => p.role === 'supervisor').text, /whisper/);
  await sam.shot('whisper');
  await alice.shot('whispered-to');

  // Everyone talks: Sam hears all three and not himself; Alice hears him, not herself.
  const [sHears, aWhisper] = await Promise.all([
    sam.tones({ present: [CALLER, PHONE, ALICE], absent: [SAM] }),
    alice.tones({ present: [CALLER, PHONE, SAM], absent: [ALICE] }),
  ]);
  assert.ok(sHears.ok, `Sam should hear 1000, 600 and 440 Hz and not 800 Hz: ${JSON.stringify(sHears.readings.slice(-3))}`);
  assert.ok(aWhisper.ok, `Alice should hear 1000, 600 and 800 Hz and not 440 Hz: ${JSON.stringify(aWhisper.readings.slice(-3))}`);
  t.diagnostic(`whisper: Sam hears ${fmt(sHears)}; Alice hears ${fmt(aWhisper)}`);
  // Only Sam talks: Alice hears him; the caller and the phone hear nothing.
  await alice.page.click('#mute');
  caller.send({ cmd: 'tone', hz: null });
  phone.send({ cmd: 'tone', hz: null });
  const [aOnlySam, sSelf] = await Promise.all([
    alice.tones({ present: [SAM], absent: [CALLER, PHONE, ALICE], maxDb: -60 }),
    sam.tones({ absent: [SAM], maxDb: -70 }),
  ]);
  assert.ok(aOnlySam.ok, `Alice should hear only Sam: ${JSON.stringify(aOnlySam.readings.slice(-3))}`);
  assert.ok(sSelf.ok, `Sam should not hear himself: ${JSON.stringify(sSelf.readings.slice(-3))}`);
  from = { caller: caller.events.length, phone: phone.events.length };
  const [cNoSam, pNoSam] = await Promise.all([caller.quiet({ from: from.caller }), phone.quiet({ from: from.phone })]);
  const aStill = await alice.tones({ present: [SAM], timeout: 3000 });
  assert.ok(aStill.ok, 'Sam went on whispering meanwhile');
  t.diagnostic(`whisper, only Sam talking: Alice hears ${fmt(aOnlySam)}; Sam hears ${fmt(sSelf)}; the caller hears ${fmtTone(cNoSam)}; the phone hears ${fmtTone(pNoSam)}`);
  step('whisper checked');

  // Barge: everyone hears Sam; he gets the agent's capabilities.
  await sam.page.click('#mode-barge');
  await sam.page.waitForSelector('#mode-barge[aria-pressed="true"]', { timeout: 5000 });
  from = { caller: caller.events.length, phone: phone.events.length };
  const [cBarge, pBarge, aBarge] = await Promise.all([
    caller.hears(SAM, { from: from.caller }),
    phone.hears(SAM, { from: from.phone }),
    alice.tones({ present: [SAM] }),
  ]);
  assert.ok(aBarge.ok, `Alice should hear Sam barging: ${JSON.stringify(aBarge.readings.slice(-3))}`);
  t.diagnostic(`barge: the caller hears ${fmtTone(cBarge)}; the phone hears ${fmtTone(pBarge)}; Alice hears ${fmt(aBarge)}`);
  const bargeCaps = await sam.page.evaluate(() => window.demo.call.capabilities);
  assert.ok(bargeCaps.includes('add_participant') && bargeCaps.includes('switch_monitor'), JSON.stringify(bargeCaps));
  await alice.page.waitForFunction(() => window.demo.call.participants.some((p) => p.role === 'supervisor' && p.monitor === 'barge'));
  await sam.shot('barge');
  step('barge checked');

  // Listen: nobody hears Sam.
  await sam.page.click('#mode-listen');
  await sam.page.waitForSelector('#mode-listen[aria-pressed="true"]', { timeout: 5000 });
  const aListen = await alice.tones({ absent: [SAM, CALLER, PHONE, ALICE], maxDb: -60 });
  assert.ok(aListen.ok, `Alice should not hear Sam listening: ${JSON.stringify(aListen.readings.slice(-3))}`);
  from = { caller: caller.events.length, phone: phone.events.length };
  const [cListen, pListen] = await Promise.all([caller.quiet({ from: from.caller }), phone.quiet({ from: from.phone })]);
  t.diagnostic(`listen: Alice hears ${fmt(aListen)}; the caller hears ${fmtTone(cListen)}; the phone hears ${fmtTone(pListen)}`);
  const listenCaps = await sam.page.evaluate(() => window.demo.call.capabilities);
  assert.deepEqual(listenCaps, ['switch_monitor', 'record']);
  // One peer connection throughout: the same object, still connected; one monitor request, two mode switches.
  const same = await sam.page.evaluate(() => ({ same: window.demo.call.peerConnection === window.__pc, state: window.__pc.connectionState }));
  assert.deepEqual(same, { same: true, state: 'connected' });
  const samSent = sam.wsSent.map((m) => m.type).filter((type) => ['monitor', 'monitorMode', 'reoffer'].includes(type));
  assert.deepEqual(samSent, ['monitor', 'monitorMode', 'monitorMode']);
  await sam.shot('listen');
  step('listen checked');

  // ---- 3. The phone leaves; the call goes on; Alice ends it for everyone. ----
  await alice.page.click('#mute');
  caller.send({ cmd: 'tone', hz: CALLER });
  phone.send({ cmd: 'hangup' });
  const phoneEnd = await phone.waitFor((e) => e.event === 'ended', { what: 'the phone hung up' });
  assert.equal(phoneEnd.reason, 'local');
  await waitParties(alice, ['customer', 'agent', 'supervisor']);
  const left = await alice.page.evaluate(() => window.__left);
  t.diagnostic(`Alice's participantLeft: ${JSON.stringify(left)}`);
  assert.deepEqual(left.map((l) => l.role), ['phone']);
  from = { caller: caller.events.length };
  const [aAfter, cAfter] = await Promise.all([alice.tones({ present: [CALLER], absent: [PHONE, ALICE] }), caller.hears(ALICE, { from: from.caller })]);
  assert.ok(aAfter.ok, `Alice should hear the caller after the phone left: ${JSON.stringify(aAfter.readings.slice(-3))}`);
  assert.equal((await alice.callState()).state, 'connected');
  assert.equal((await sam.callState()).state, 'connected');
  t.diagnostic(`the phone left: Alice hears ${fmt(aAfter)}; the caller hears ${fmtTone(cAfter)}`);
  await alice.shot('phone-left');
  step('phone left');

  await alice.page.evaluate(() => window.demo.call.end());
  const bye = await caller.waitFor((e) => e.event === 'ended', { what: 'BYE at the caller' });
  assert.equal(bye.reason, 'remote_bye');
  await alice.waitCallState('ended');
  await sam.waitCallState('ended');
  const aliceEnd = await alice.callState();
  const samEnd = await sam.callState();
  t.diagnostic(`ended: Alice ${aliceEnd.endReason}, Sam ${samEnd.endReason}`);
  assert.equal(aliceEnd.endReason, 'hangup');
  assert.equal(samEnd.endReason, 'remote_hangup');
  await alice.shot('ended');
  await sam.shot('ended');

  const record = await cdr(callId);
  t.diagnostic(`CDR: ${record.match(/parties=.*/)[0]}`);
  // id:role:who:joined_ms+talk_ms:reason[<parent], in order of arrival.
  const list = record.match(/parties="([^"]*)"/)[1].split(',');
  assert.equal(list.length, 4, record);
  const [customer, agent, phoneParty, supervisor] = list.map((p) => p.match(/^p-\d+:(\w+):(.+):(\d+)\+(\d+):(\w+)(?:<(p-\d+))?$/));
  // The phone came from alice, who added it.
  assert.equal(phoneParty[6], list[1].split(':')[0], record);
  assert.deepEqual(customer.slice(1, 3).concat(customer[5]), ['customer', '+15557770111', 'remote_hangup'], list[0]);
  assert.deepEqual(agent.slice(1, 3).concat(agent[5]), ['agent', 'operator:alice', 'hangup'], list[1]); // she ended it
  assert.deepEqual(supervisor.slice(1, 3).concat(supervisor[5]), ['supervisor', 'operator:sam', 'remote_hangup'], list[3]);
  // The phone hung up itself (its own BYE): `hangup`, as an operator who leaves; the customer
  // got our BYE when alice ended the call: `remote_hangup`. Its times agree: it left before
  // the end.
  assert.deepEqual(phoneParty.slice(1, 3).concat(phoneParty[5]), ['phone', 'pstn:+15557770222', 'hangup'], list[2]);
  const endOf = (m) => Number(m[3]) + Number(m[4]);
  assert.ok(endOf(phoneParty) < endOf(customer) - 500, `the phone left before the end: ${record}`);
  step('done');
});
