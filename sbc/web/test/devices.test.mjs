// Audio devices (list, choose before and during a call, devicechange), the SDK-managed audio
// element, level meters and the ringtone.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { makeEnv, makeOperator, flush, goOnline, connectedInbound, recordCall } from './fakes.mjs';

describe('devices', () => {
  test('listDevices: audio inputs and outputs only', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { inputs, outputs } = await op.listDevices();
    assert.deepEqual(inputs.map((d) => d.deviceId), ['default', 'headset-mic']);
    assert.deepEqual(outputs.map((d) => d.deviceId), ['default', 'headset-out']);
    assert.deepEqual(inputs[1], { deviceId: 'headset-mic', label: 'Headset mic', groupId: 'g1', kind: 'audioinput' });
  });

  test('listDevices without enumerateDevices is NOT_SUPPORTED', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env, { mediaDevices: { getUserMedia: env.mediaDevices.getUserMedia } });
    await assert.rejects(op.listDevices(), { code: 'NOT_SUPPORTED' });
    assert.equal(named('error')[0].code, 'NOT_SUPPORTED');
  });

  test('setInputDevice before a call: the next getUserMedia asks for that device', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env, { audioConstraints: { echoCancellation: true } });
    await op.setInputDevice('headset-mic');
    assert.equal(op.inputDeviceId, 'headset-mic');
    assert.deepEqual(named('inputDeviceChanged'), [{ deviceId: 'headset-mic', reason: 'selected' }]);
    await connectedInbound(env, op);
    assert.deepEqual(env.mediaDevices.calls[0], { audio: { echoCancellation: true, deviceId: { exact: 'headset-mic' } } });
    await op.setInputDevice('default');
    assert.equal(op.inputDeviceId, null);
  });

  test('setInputDevice during a call replaces the track, keeps the mute, no renegotiation', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    call.mute(true);
    const oldTrack = env.mediaDevices.streams[0].tracks[0];
    const sent = ws.sent.length;
    await op.setInputDevice('headset-mic');
    const sender = env.pcs[0].senders[0];
    const newTrack = sender.track;
    assert.notEqual(newTrack, oldTrack);
    assert.equal(newTrack.deviceId, 'headset-mic');
    assert.equal(newTrack.enabled, false, 'still muted');
    assert.equal(oldTrack.readyState, 'ended', 'the old microphone is released');
    assert.equal(call.localStream, env.mediaDevices.streams[1]);
    assert.equal(env.pcs.length, 1, 'same peer connection');
    assert.equal(ws.sent.length, sent, 'no message: no reoffer');
    call.mute(false);
    assert.equal(newTrack.enabled, true, 'mute acts on the new track');
  });

  test('a device that cannot be opened: MIC_UNAVAILABLE, the call keeps its track and choice', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const { call } = await connectedInbound(env, op);
    const track = env.pcs[0].senders[0].track;
    await assert.rejects(op.setInputDevice('gone-mic'), { code: 'MIC_UNAVAILABLE' });
    assert.equal(op.inputDeviceId, null);
    assert.equal(env.pcs[0].senders[0].track, track);
    assert.equal(track.readyState, 'live');
    assert.equal(call.state, 'connected');
    assert.deepEqual(named('inputDeviceChanged'), []);
    env.failReplaceTrack = true;
    await assert.rejects(op.setInputDevice('headset-mic'), { code: 'MEDIA_ERROR' });
    assert.equal(op.inputDeviceId, null);
    assert.equal(env.mediaDevices.streams.at(-1).tracks[0].readyState, 'ended', 'the unused stream is stopped');
  });

  test('the headset unplugged during a call: back to the default microphone', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    await op.setInputDevice('headset-mic');
    await connectedInbound(env, op);
    env.mediaDevices.change(env.mediaDevices.devices.filter((d) => d.groupId !== 'g1'));
    await flush();
    assert.deepEqual(named('devicesChanged').at(-1).inputs.map((d) => d.deviceId), ['default']);
    assert.equal(op.inputDeviceId, null);
    assert.deepEqual(named('inputDeviceChanged').at(-1), { deviceId: null, reason: 'unplugged' });
    assert.equal(env.pcs[0].senders[0].track.deviceId, 'default');
    assert.deepEqual(env.mediaDevices.calls.at(-1), { audio: true });
  });

  test('the default device gone under a live call (its track ended): a new default track', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    await connectedInbound(env, op);
    const track = env.pcs[0].senders[0].track;
    track.stop();
    env.mediaDevices.change([...env.mediaDevices.devices]);
    await flush();
    assert.notEqual(env.pcs[0].senders[0].track, track);
    assert.equal(env.pcs[0].senders[0].track.readyState, 'live');
    assert.deepEqual(named('inputDeviceChanged').at(-1), { deviceId: null, reason: 'unplugged' });
  });

  test('setOutputDevice routes the audio element through setSinkId; unplugged falls back', async () => {
    const env = makeEnv();
    const el = new env.Audio();
    const { op, named } = makeOperator(env, { audioElement: el });
    await op.setOutputDevice('headset-out');
    assert.equal(el.sinkId, 'headset-out');
    assert.equal(op.outputDeviceId, 'headset-out');
    await assert.rejects(op.setOutputDevice('nope'), { code: 'DEVICE_ERROR' });
    assert.equal(op.outputDeviceId, 'headset-out');
    env.mediaDevices.change(env.mediaDevices.devices.filter((d) => d.deviceId !== 'headset-out'));
    await flush();
    assert.equal(el.sinkId, '');
    assert.equal(op.outputDeviceId, null);
    assert.deepEqual(named('outputDeviceChanged'), [
      { deviceId: 'headset-out', reason: 'selected' },
      { deviceId: null, reason: 'unplugged' },
    ]);
  });

  test('setOutputDevice without an element or without setSinkId is NOT_SUPPORTED', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    await assert.rejects(op.setOutputDevice('headset-out'), { code: 'NOT_SUPPORTED' });
    const { op: op2 } = makeOperator(env, { audioElement: { srcObject: null } });
    await assert.rejects(op2.setOutputDevice('headset-out'), { code: 'NOT_SUPPORTED' });
  });
});

describe('audio', () => {
  test('the audioElement plays the call and is emptied at the end', async () => {
    const env = makeEnv();
    const el = new env.Audio();
    const { op } = makeOperator(env, { audioElement: el });
    const { ws, call } = await connectedInbound(env, op);
    assert.equal(el.srcObject, call.remoteStream);
    assert.equal(el.plays, 1);
    ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
    await flush();
    assert.equal(el.srcObject, null);
  });

  test('audioLevel events, 10 a second, from WebAudio analysers; stopped at the end', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    const { seen } = recordCall(call, ['audioLevel']);
    call.localStream.level = 0.25;
    call.remoteStream.level = 0.5;
    await env.clock.advance(1000);
    assert.equal(seen('audioLevel').length, 10);
    assert.deepEqual(seen('audioLevel')[0], { input: 0.25, output: 0.5 });
    // A new microphone is metered from then on.
    await op.setInputDevice('headset-mic');
    call.localStream.level = 0.125;
    await env.clock.advance(100);
    assert.deepEqual(seen('audioLevel').at(-1), { input: 0.125, output: 0.5 });
    ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
    await flush();
    const n = seen('audioLevel').length;
    await env.clock.advance(1000);
    assert.equal(seen('audioLevel').length, n);
    assert.ok(env.audioContexts[0].sources.every((s) => s.disconnected));
  });

  test('the AudioContext is created inside the click that dials or accepts (autoplay policy)', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op);
    assert.equal(env.audioContexts.length, 0);
    op.dial('+15550199', { callerId: 'support' }).catch(() => {});
    assert.equal(env.audioContexts.length, 1, 'synchronously, before any await');
    await flush();
    ws.push({ type: 'error', code: 'BUSY', message: 'x', ref: ws.last().ref });
    await flush();
    const { op: op2 } = makeOperator(env, { levelIntervalMs: 0 });
    const ws2 = await goOnline(env, op2);
    ws2.push({ type: 'incoming', callId: 'c-5', from: 'a', to: 'b', number: 'support' });
    op2.calls[0].accept().catch(() => {});
    assert.equal(env.audioContexts.length, 1, 'meters off: no AudioContext');
  });

  test('no AudioContext: no level events and no failure', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env, { AudioContext: null });
    const { call } = await connectedInbound(env, op);
    const { seen } = recordCall(call, ['audioLevel']);
    await env.clock.advance(1000);
    assert.deepEqual(seen('audioLevel'), []);
    assert.equal(call.state, 'connected');
  });

  test('ringtone: rings while an offer waits, stops on accept and on the end of the offer', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env, { ringtone: true });
    const ws = await goOnline(env, op);
    ws.push({ type: 'incoming', callId: 'c-3', from: 'a', to: 'b', number: 'support' });
    await flush();
    const ring = env.audios[0];
    assert.match(ring.src, /^data:audio\/wav;base64,UklGR/);
    assert.equal(ring.loop, true);
    assert.equal(ring.paused, false);
    ws.push({ type: 'ended', callId: 'c-3', reason: 'taken_by_other' });
    await flush();
    assert.equal(ring.paused, true);

    ws.push({ type: 'incoming', callId: 'c-4', from: 'a', to: 'b', number: 'support' });
    await flush();
    const ring2 = env.audios[1];
    assert.equal(ring2.paused, false);
    op.calls[0].accept();
    assert.equal(ring2.paused, true, 'stops when we answer');
  });

  test('ringtone: a URL of your own; none by default', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env, { ringtone: '/sounds/ring.mp3' });
    const ws = await goOnline(env, op);
    ws.push({ type: 'incoming', callId: 'c-3', from: 'a', to: 'b', number: 'support' });
    await flush();
    assert.equal(env.audios[0].src, '/sounds/ring.mp3');
    const env2 = makeEnv();
    const { op: op2 } = makeOperator(env2);
    const ws2 = await goOnline(env2, op2);
    ws2.push({ type: 'incoming', callId: 'c-3', from: 'a', to: 'b', number: 'support' });
    await flush();
    assert.equal(env2.audios.length, 0);
  });
});
