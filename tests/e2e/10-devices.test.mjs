// Scenario 10: audio devices with Chromium's fake devices (--use-fake-device-for-media-stream,
// every fake microphone playing the test's 440 Hz WAV). The page on the customer's origin
// lists the inputs and outputs (labelled: the page has microphone permission), dials out,
// and switches the microphone mid-call: the sender's track is replaced by one from the
// chosen device (no renegotiation), the old one is stopped, and the call goes on: same call,
// same peer connection, the carrier still hears the page's 440 Hz and the page the
// carrier's 600 Hz. Then the speaker: the call's <audio> moves to another output (setSinkId).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Env, sleep } from './lib/harness.mjs';

test('device list, switching the microphone mid-call keeps the call and its audio', { timeout: 90000 }, async (t) => {
  const env = await Env.start('10-devices', {
    demo: false,
    apps: 1,
    answerCarriers: { pstn: ['--tone', '600'] },
    trunks: [{ name: 'carrier', peers: ['pstn'] }],
    numbers: [{ id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '20s' }] }],
  });
  t.after(() => env.stop());
  const pstn = env.carriers.pstn;
  const alice = await env.operator('Alice', { url: env.appUrl(env.apps[0], 'operator.html', { operator: 'alice' }), rawMic: false });
  await alice.page.click('#go-online');
  await alice.page.waitForSelector('#presence:text("online")', { timeout: 10000 });
  await alice.page.waitForSelector('#presence[data-available]', { timeout: 10000 }); // numbers taken: calls ring now

  // Record the operator's device events.
  await alice.page.evaluate(() => {
    const op = window.demo.operator;
    window.deviceEvents = [];
    for (const name of ['inputDeviceChanged', 'outputDeviceChanged', 'devicesChanged']) op.on(name, (p) => window.deviceEvents.push({ name, p }));
  });
  const devices = await alice.page.evaluate(() => window.demo.operator.listDevices());
  t.diagnostic(`inputs: ${devices.inputs.map((d) => `${d.deviceId.slice(0, 8)} "${d.label}"`).join(', ')}`);
  t.diagnostic(`outputs: ${devices.outputs.map((d) => `${d.deviceId.slice(0, 8)} "${d.label}"`).join(', ')}`);
  assert.ok(devices.inputs.length >= 2, `at least two microphones: ${JSON.stringify(devices.inputs)}`);
  assert.ok(
    devices.inputs.every((d) => d.kind === 'audioinput' && d.label),
    'audio inputs only, labelled',
  );
  assert.ok(devices.outputs.every((d) => d.kind === 'audiooutput'));

  // A call.
  await alice.page.evaluate(() => window.demo.operator.dial('+15557770001', { callerId: 'support' }));
  const answered = await pstn.waitFor((e) => e.event === 'answered', { what: 'answered' });
  await alice.waitCallState('connected');
  await pstn.hears(440, { afterMs: answered.t_ms + 500 });
  const mic = () =>
    alice.page.evaluate(() => {
      const call = window.demo.call;
      const sender = call.peerConnection.getSenders().find((s) => s.track && s.track.kind === 'audio');
      return {
        callId: call.callId,
        state: call.state,
        pc: call.peerConnection.connectionState,
        trackId: sender.track.id,
        deviceId: sender.track.getSettings().deviceId,
        label: sender.track.label,
        localTrackIds: call.localStream.getAudioTracks().map((tr) => tr.id),
      };
    });
  const before = await mic();
  await alice.shot('connected');

  // Switch to another microphone mid-call.
  const other = devices.inputs.find((d) => d.deviceId !== before.deviceId && d.deviceId !== 'default');
  assert.ok(other, 'another microphone to switch to');
  const switchedAt = pstn.events.length;
  const oldTrackEnded = await alice.page.evaluate(async (id) => {
    const call = window.demo.call;
    const old = call.localStream.getAudioTracks()[0];
    await window.demo.operator.setInputDevice(id);
    return old.readyState;
  }, other.deviceId);
  const after = await mic();
  t.diagnostic(`switched "${before.label}" -> "${after.label}"`);
  assert.equal(after.deviceId, other.deviceId, 'the sender sends the chosen device');
  assert.notEqual(after.trackId, before.trackId, 'a new track');
  assert.deepEqual(after.localTrackIds, [after.trackId], "the call's localStream is the new track");
  assert.equal(oldTrackEnded, 'ended', 'the old track is stopped');
  assert.equal(after.callId, before.callId, 'the same call');
  assert.equal(after.state, 'connected');
  assert.equal(after.pc, 'connected', 'the same peer connection, still connected');
  assert.equal(await alice.page.evaluate(() => window.demo.operator.inputDeviceId), other.deviceId);
  const events = await alice.page.evaluate(() => window.deviceEvents);
  assert.deepEqual(
    events.filter((e) => e.name === 'inputDeviceChanged').map((e) => e.p),
    [{ deviceId: other.deviceId, reason: 'selected' }],
  );
  // The audio after the switch: the carrier hears the page's microphone, the page the carrier.
  await sleep(300);
  const tone = await pstn.hears(440, { from: switchedAt, need: 3 });
  t.diagnostic(`after the switch the carrier hears ${tone.freq} Hz at ${tone.level_db} dB`);
  const heard = await alice.hear(600);
  assert.ok(heard.ok, `the page should still hear 600 Hz, heard ${JSON.stringify(heard.readings.slice(-5))}`);
  assert.equal(pstn.all('ended').length, 0, 'the carrier still has the call');
  await alice.shot('switched');

  // The speaker: the call's <audio> goes to another output.
  const out = devices.outputs.find((d) => d.deviceId !== 'default');
  if (out) {
    const sink = await alice.page.evaluate(async (id) => {
      await window.demo.operator.setOutputDevice(id);
      return { sinkId: document.getElementById('remote').sinkId, chosen: window.demo.operator.outputDeviceId };
    }, out.deviceId);
    assert.deepEqual(sink, { sinkId: out.deviceId, chosen: out.deviceId });
    const heard2 = await alice.hear(600);
    assert.ok(heard2.ok, 'still heard after the output change');
    t.diagnostic(`speaker: "${out.label}"`);
  } else {
    t.diagnostic('no second audio output in this Chromium: setOutputDevice not exercised');
  }

  await alice.page.click('#hangup');
  assert.equal((await pstn.waitFor((e) => e.event === 'ended', { what: 'BYE' })).reason, 'remote_bye');
  await alice.waitCallState('ended');
});
