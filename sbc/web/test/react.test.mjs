// The React hooks (react.js) under react-test-renderer, against the fakes.

import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { ensureDevDeps } from './devdeps.mjs';
import { makeEnv, makeOperator, flush, goOnline, serveReady, connectedInbound, audioStats } from './fakes.mjs';


const deps = ensureDevDeps();
const skip = deps.ok ? false : deps.reason;
let h, act, create, el, StrictMode;

before(async () => {
  if (!deps.ok) return;
  globalThis.IS_REACT_ACT_ENVIRONMENT = true;
  const React = (await import('react')).default;
  const TestRenderer = (await import('react-test-renderer')).default;
  h = await import('../react.js');
  act = TestRenderer.act;
  create = TestRenderer.create;
  el = React.createElement;
  StrictMode = React.StrictMode;
});

/** Render a component calling `hook(...args)`; `last()` is the latest value it returned. */
async function probe(hook, args = [], wrap = (x) => x) {
  const seen = [];
  function Probe() {
    seen.push(hook(...args));
    return null;
  }
  let renderer;
  await act(async () => {
    renderer = create(wrap(el(Probe)));
  });
  return { seen, last: () => seen.at(-1), unmount: () => act(async () => renderer.unmount()) };
}

/** Drive the fakes inside act(), letting the SDK's promise chains settle. */
const step = (fn) =>
  act(async () => {
    await fn();
    await flush();
  });

/** Options for an Operator the hook creates itself, wired to env. */
function optionsFor(env) {
  return {
    url: 'wss://sbc.test/v1/operator',
    getToken: async () => 'tok',
    WebSocket: env.WebSocket,
    RTCPeerConnection: env.RTCPeerConnection,
    mediaDevices: env.mediaDevices,
    setTimeout: env.clock.setTimeout,
    clearTimeout: env.clock.clearTimeout,
    now: () => env.clock.now,
    AudioContext: env.AudioContext,
    window: env.window,
    logger: {},
  };
}

describe('React hooks', { skip }, () => {
  test('useOperator(options): one operator for the component, its presence state, disposed on unmount', async () => {
    const env = makeEnv();
    const opts = optionsFor(env);
    const p = await probe(h.useOperator, [opts]);
    const { operator } = p.last();
    assert.equal(p.last().state, 'offline');
    let online;
    await step(() => {
      online = operator.goOnline(['support']);
    });
    assert.equal(p.last().state, 'connecting');
    await step(async () => {
      const ws = await serveReady(env);
      ws.push({ type: 'availability', accepted: ['support'], rejected: [], ref: ws.last().ref });
      await online;
    });
    assert.equal(p.last().state, 'online');
    assert.deepEqual(p.last().availability.accepted, ['support']);
    assert.ok(p.seen.every((v) => v.operator === operator), 'the same operator on every render');
    await step(() => env.sockets[0].push({ type: 'incoming', callId: 'c-1', from: 'a', to: 'b', number: 'support' }));
    assert.deepEqual(p.last().incomingCalls.map((c) => c.callId), ['c-1']);
    await p.unmount();
    await flush();
    assert.equal(operator.state, 'offline');
    assert.equal(env.sockets[0].closedWith.code, 1000);
    assert.equal(env.window.listeners.pagehide.length, 0, 'disposed');
  });

  test('useOperator under StrictMode survives the double effects; an Operator passed in is not disposed', async () => {
    const env = makeEnv();
    const p = await probe(h.useOperator, [optionsFor(env)], (x) => el(StrictMode, null, x));
    await flush();
    const { operator } = p.last();
    assert.equal(env.window.listeners.pagehide.length >= 1, true, 'not disposed by the StrictMode remount');
    assert.equal(operator._disposed, false);

    const env2 = makeEnv();
    const { op } = makeOperator(env2);
    const q = await probe(h.useOperator, [op]);
    assert.equal(q.last().operator, op);
    await q.unmount();
    await flush();
    assert.equal(op._disposed, false);
  });

  test('useIncomingCall: the ringing offer, then null once accepted or ended', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op);
    const p = await probe(h.useIncomingCall, [op]);
    assert.equal(p.last(), null);
    await step(() => ws.push({ type: 'incoming', callId: 'c-2', from: '+15550111', to: '+15550100', number: 'support' }));
    assert.equal(p.last().callId, 'c-2');
    await step(() => {
      p.last().accept(); // resolves on the answer below
    });
    await step(() => ws.push({ type: 'answer', callId: 'c-2', sdp: 'v=0', ref: ws.last().ref }));
    assert.equal(p.last(), null);
    await step(() => ws.push({ type: 'incoming', callId: 'c-3', from: 'x', to: 'y', number: 'support' }));
    // Busy with c-2: c-3 still rings for us (the server decides), and is shown.
    assert.equal(p.last().callId, 'c-3');
    await step(() => ws.push({ type: 'ended', callId: 'c-3', reason: 'taken_by_other' }));
    assert.equal(p.last(), null);
  });

  test('useCall(operator): the active call from dialing to the end, mute at once', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op);
    const p = await probe(h.useCall, [op]);
    assert.equal(p.last(), null);
    let dialing;
    await step(() => {
      dialing = op.dial('+15550199', { callerId: 'support' });
    });
    assert.equal(p.last(), null, 'not current before the server names the call');
    await step(() => ws.push({ type: 'answer', callId: 'c-9', sdp: 'v=0', ref: ws.last().ref }));
    const call = await dialing;
    assert.equal(p.last().state, 'connecting');
    assert.equal(p.last().callId, 'c-9');
    await step(() => ws.push({ type: 'ringing', callId: 'c-9', earlyMedia: true }));
    assert.equal(p.last().state, 'ringing');
    assert.equal(p.last().earlyMedia, true);
    await step(() => ws.push({ type: 'connected', callId: 'c-9' }));
    assert.equal(p.last().state, 'connected');
    assert.equal(p.last().call, call);
    await step(() => call.mute(true));
    assert.equal(p.last().muted, true, 'without waiting for the server');
    assert.equal(p.last().recording, null);
    await step(() => ws.push({ type: 'recording', callId: 'c-9', recordingId: 'rec-1', status: 'paused' }));
    assert.deepEqual(p.last().recording, { id: 'rec-1', status: 'paused' }, 're-rendered on the recording event');
    await step(() => ws.push({ type: 'ended', callId: 'c-9', reason: 'remote_hangup' }));
    assert.equal(p.last(), null);
    // A Call given directly keeps showing it after the end.
    const q = await probe(h.useCall, [call]);
    assert.equal(q.last().endReason, 'remote_hangup');
  });

  test('useCallQuality: the latest sample, warnings, and the summary at the end', async () => {
    const env = makeEnv();
    const net = { received: 0, lost: 0, jitterMs: 50, rttMs: 40 };
    env.stats = () => {
      net.received += 50;
      return audioStats(net);
    };
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    const p = await probe(h.useCallQuality, [call]);
    assert.deepEqual(p.last(), { sample: null, warnings: [], summary: null });
    await step(() => env.clock.advance(3000));
    assert.equal(p.last().sample.jitter, 50);
    assert.deepEqual(p.last().warnings, ['high-jitter']);
    await step(() => ws.push({ type: 'ended', callId: 'c-2', reason: 'hangup' }));
    assert.equal(p.last().summary.samples, 3);
    assert.deepEqual(p.last().summary.warnings, ['high-jitter']);
  });

  test('useDevices: lists on mount, follows the choice and devicechange', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const p = await probe(h.useDevices, [op]);
    await step(() => {});
    assert.deepEqual(p.last().inputs.map((d) => d.deviceId), ['default', 'headset-mic']);
    assert.equal(p.last().inputDeviceId, null);
    await step(() => p.last().setInputDevice('headset-mic'));
    assert.equal(p.last().inputDeviceId, 'headset-mic');
    await step(() => env.mediaDevices.change(env.mediaDevices.devices.filter((d) => d.groupId !== 'g1')));
    assert.deepEqual(p.last().inputs.map((d) => d.deviceId), ['default']);
    assert.equal(p.last().inputDeviceId, null, 'unplugged: back to the default');
  });

  test('useParticipants and the OperatorProvider default', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    const p = await probe(h.useParticipants, [call]);
    assert.deepEqual(p.last().participants, []);
    assert.equal(p.last().can('add_participant'), false);
    await step(() =>
      ws.push({ type: 'participants', callId: 'c-2', self: 'p-1', participants: [{ id: 'p-0', role: 'customer' }, { id: 'p-1', role: 'agent' }], capabilities: ['add_participant'] }),
    );
    assert.deepEqual(p.last().participants.map((x) => x.role), ['customer', 'agent']);
    assert.equal(p.last().self, 'p-1');
    assert.equal(p.last().can('add_participant'), true);

    const q = await probe(h.useCall, [], (x) => el(h.OperatorProvider, { operator: op }, x));
    assert.equal(q.last().call, call, 'the provider operator current call');
    const none = await probe(h.useParticipants, [null]);
    assert.deepEqual(none.last().participants, []);
  });
});
