// Recording and live insights (protocol additions): the `recording` and `insight` server
// messages, the `record` request behind call.startRecording/pauseRecording/resumeRecording/
// stopRecording, and the `record` capability.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { makeEnv, makeOperator, flush, goOnline, connectedInbound, recordCall, serveReady } from './fakes.mjs';

const ME = { id: 'p-1', role: 'agent', state: 'joined', kind: 'operator', operatorRef: 'alice' };
const CUSTOMER = { id: 'p-0', role: 'customer', state: 'joined', kind: 'sip', address: '+15550111' };
const CAPS = ['add_participant', 'remove_participant', 'hold_participant', 'end_call', 'record'];
const REC = 'rec-0123456789abcdef';

/** A connected inbound call whose server granted `caps`; records its recording and insight events. */
async function recCall(caps = CAPS) {
  const env = makeEnv();
  const made = makeOperator(env);
  const { ws, call } = await connectedInbound(env, made.op);
  ws.push({ type: 'participants', callId: 'c-2', self: 'p-1', participants: [CUSTOMER, ME], capabilities: caps, at: 1 });
  await flush();
  return { env, ws, call, ...made, ...recordCall(call, ['recording', 'insight']) };
}

const recording = (status, extra = {}) => ({ type: 'recording', callId: 'c-2', recordingId: REC, status, ...extra });
const insight = (body, extra = {}) => ({ type: 'insight', callId: 'c-2', forkId: 'rec-fork1', insight: body, at: 1796472059000, ...extra });

/** Whether `promise` has settled after the pending jobs ran. */
async function settled(promise) {
  let done = false;
  promise.then(
    () => (done = true),
    () => (done = true),
  );
  await flush();
  return done;
}

describe('recording messages', () => {
  test('start, pause, resume and stop, whoever asked: call.recording follows and `recording` fires', async () => {
    const { ws, call, seen } = await recCall();
    assert.equal(call.recording, null, 'nothing records at first');
    ws.push(recording('in-progress'));
    await flush();
    assert.deepEqual(call.recording, { id: REC, status: 'in-progress' });
    ws.push(recording('paused'));
    await flush();
    assert.deepEqual(call.recording, { id: REC, status: 'paused' });
    ws.push(recording('in-progress'));
    await flush();
    assert.equal(call.recording.status, 'in-progress');
    ws.push(recording('stopped'));
    await flush();
    assert.equal(call.recording, null, 'null once stopped');
    assert.deepEqual(seen('recording'), [
      { id: REC, status: 'in-progress' },
      { id: REC, status: 'paused' },
      { id: REC, status: 'in-progress' },
      { id: REC, status: 'stopped' },
    ]);
    assert.equal(call.state, 'connected', 'the call goes on');
  });

  test('malformed or foreign recording messages change nothing and raise no error', async () => {
    const { ws, call, seen, named, logs } = await recCall();
    ws.push(recording('in-progress'));
    await flush();
    for (const bad of [
      recording('recording'),
      recording(undefined),
      { type: 'recording', callId: 'c-2', status: 'stopped' },
      { type: 'recording', callId: 'c-2', recordingId: 42, status: 'stopped' },
      recording('stopped', { callId: 'c-unknown' }),
    ]) {
      assert.doesNotThrow(() => ws.push(bad));
    }
    await flush();
    assert.deepEqual(call.recording, { id: REC, status: 'in-progress' });
    assert.equal(seen('recording').length, 1);
    assert.deepEqual(named('error'), []);
    assert.ok(logs.some((l) => l.level === 'debug' && /recording for unknown call c-unknown/.test(l.text)));
  });
});

describe('insight messages', () => {
  test('emitted with the consumer object and {forkId, at}; kept in call.insights, oldest first', async () => {
    const { ws, call, seen } = await recCall();
    const args = [];
    call.on('insight', (...a) => args.push(a));
    assert.deepEqual(call.insights, []);
    const first = { event: 'insight', kind: 'transcript', text: 'I would like to cancel', track: 'inbound' };
    const second = { event: 'insight', kind: 'hint', text: 'Offer the retention discount', extra: { score: 0.9 } };
    ws.push(insight(first));
    ws.push(insight(second, { forkId: 'rec-fork2', at: 1796472060000 }));
    await flush();
    assert.deepEqual(args, [
      [first, { forkId: 'rec-fork1', at: 1796472059000 }],
      [second, { forkId: 'rec-fork2', at: 1796472060000 }],
    ]);
    assert.deepEqual(seen('insight'), [first, second]);
    assert.deepEqual(call.insights, [first, second]);
  });

  test('call.insights keeps the last 50, each time a new array', async () => {
    const { ws, call, seen } = await recCall();
    const arrays = new Set();
    call.on('insight', () => arrays.add(call.insights));
    for (let i = 1; i <= 57; i++) ws.push(insight({ kind: 'transcript', text: `line ${i}` }));
    await flush();
    assert.equal(seen('insight').length, 57, 'every insight is emitted');
    assert.equal(call.insights.length, 50);
    assert.equal(call.insights[0].text, 'line 8', 'the oldest ones went');
    assert.equal(call.insights[49].text, 'line 57', 'the newest is last');
    assert.deepEqual(
      call.insights.map((x) => x.text),
      Array.from({ length: 50 }, (_, i) => `line ${i + 8}`),
    );
    assert.equal(arrays.size, 57, 'a fresh array per insight (snapshots for React)');
  });

  test('without an object, or for another call, an insight is dropped; a missing forkId or at is null', async () => {
    const { ws, call, seen, named } = await recCall();
    for (const bad of [insight('hello'), insight(null), insight([1, 2]), insight(undefined), insight({ kind: 'hint' }, { callId: 'c-9' })]) {
      assert.doesNotThrow(() => ws.push(bad));
    }
    await flush();
    assert.deepEqual(seen('insight'), []);
    assert.deepEqual(call.insights, []);
    const meta = [];
    call.on('insight', (_i, m) => meta.push(m));
    ws.push({ type: 'insight', callId: 'c-2', insight: { kind: 'hint', text: 'x' } });
    await flush();
    assert.deepEqual(meta, [{ forkId: null, at: null }]);
    assert.deepEqual(named('error'), []);
  });

  test('after the call ended, insights and recording messages are ignored', async () => {
    const { ws, call, seen } = await recCall();
    ws.push(insight({ kind: 'transcript', text: 'bye' }));
    ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
    ws.push(insight({ kind: 'transcript', text: 'late' }));
    ws.push(recording('in-progress'));
    await flush();
    assert.deepEqual(call.insights.map((x) => x.text), ['bye'], 'kept after the end, nothing added');
    assert.deepEqual(seen('recording'), []);
    assert.equal(call.recording, null);
  });
});

describe('record requests', () => {
  test('can("record") follows the capabilities', async () => {
    const granted = await recCall();
    assert.equal(granted.call.can('record'), true);
    const refused = await recCall(['add_participant', 'end_call']);
    assert.equal(refused.call.can('record'), false);
    refused.ws.push({ type: 'participants', callId: 'c-2', self: 'p-1', participants: [CUSTOMER, ME], capabilities: ['record'] });
    await flush();
    assert.equal(refused.call.can('record'), true, 'granted later');
  });

  test('the four requests as sent, each resolved by the recording answer with its ref', async () => {
    const { ws, call, seen } = await recCall();
    const start = call.startRecording({ channels: 'mono' });
    await flush();
    const req = ws.last();
    assert.deepEqual(req, { type: 'record', callId: 'c-2', action: 'start', channels: 'mono', ref: req.ref });
    ws.push(recording('in-progress', { ref: req.ref }));
    assert.deepEqual(await start, { id: REC, status: 'in-progress' });
    assert.deepEqual(call.recording, { id: REC, status: 'in-progress' }, 'set before the promise resolves');

    const pause = call.pauseRecording({ behavior: 'skip' });
    await flush();
    assert.deepEqual(ws.last(), { type: 'record', callId: 'c-2', action: 'pause', pauseBehavior: 'skip', ref: ws.last().ref });
    ws.push(recording('paused', { ref: ws.last().ref }));
    assert.deepEqual(await pause, { id: REC, status: 'paused' });

    const resume = call.resumeRecording();
    await flush();
    assert.deepEqual(ws.last(), { type: 'record', callId: 'c-2', action: 'resume', ref: ws.last().ref });
    ws.push(recording('in-progress', { ref: ws.last().ref }));
    assert.deepEqual(await resume, { id: REC, status: 'in-progress' });

    const stop = call.stopRecording();
    await flush();
    assert.deepEqual(ws.last(), { type: 'record', callId: 'c-2', action: 'stop', ref: ws.last().ref });
    ws.push(recording('stopped', { ref: ws.last().ref }));
    assert.deepEqual(await stop, { id: REC, status: 'stopped' });
    assert.equal(call.recording, null);
    assert.deepEqual(seen('recording').map((r) => r.status), ['in-progress', 'paused', 'in-progress', 'stopped']);

    // Without options: no channels, no pauseBehavior (the server's defaults).
    call.startRecording();
    await flush();
    assert.deepEqual(ws.last(), { type: 'record', callId: 'c-2', action: 'start', ref: ws.last().ref });
    call.pauseRecording();
    await flush();
    assert.deepEqual(ws.last(), { type: 'record', callId: 'c-2', action: 'pause', ref: ws.last().ref });
  });

  test('only the answer with its own ref settles a request', async () => {
    const { ws, call, seen } = await recCall();
    const start = call.startRecording({ channels: 'dual' });
    await flush();
    const ref = ws.last().ref;
    ws.push(recording('in-progress')); // someone else started it (no ref)
    ws.push(recording('in-progress', { ref: `${ref}0` })); // another request's ref
    assert.equal(await settled(start), false);
    assert.equal(seen('recording').length, 2, 'the others still update the call');
    ws.push(recording('in-progress', { ref }));
    assert.deepEqual(await start, { id: REC, status: 'in-progress' });
    // A recording answer never settles another kind of request, even with its ref.
    const adding = call.addParticipant('operator:bob');
    await flush();
    ws.push(recording('paused', { ref: ws.last().ref }));
    assert.equal(await settled(adding), false);
    assert.equal(call.recording.status, 'paused');
  });

  test('FORBIDDEN and BAD_REQUEST errors with the ref reject the request, reported once', async () => {
    const { ws, call, named } = await recCall(['end_call']);
    const start = call.startRecording();
    await flush();
    ws.push({ type: 'error', code: 'FORBIDDEN', message: 'you may not record in this call', callId: 'c-2', ref: ws.last().ref });
    await assert.rejects(start, { code: 'FORBIDDEN', callId: 'c-2' });
    const pause = call.pauseRecording();
    await flush();
    ws.push({ type: 'error', code: 'BAD_REQUEST', message: 'the call is not being recorded', ref: ws.last().ref });
    await assert.rejects(pause, { code: 'BAD_REQUEST', callId: 'c-2' });
    assert.deepEqual(named('error').map((e) => [e.code, e.callId]), [['FORBIDDEN', 'c-2'], ['BAD_REQUEST', 'c-2']]);
    assert.equal(call.recording, null);
    assert.equal(call.state, 'connected');
  });

  test('bad options and calls not connected are BAD_REQUEST locally; a call that ends rejects CALL_ENDED', async () => {
    const { ws, call, named } = await recCall();
    const before = ws.sent.length;
    await assert.rejects(call.startRecording({ channels: 'stereo' }), { code: 'BAD_REQUEST' });
    await assert.rejects(call.pauseRecording({ behavior: 'mute' }), { code: 'BAD_REQUEST' });
    assert.equal(ws.sent.length, before, 'nothing sent');
    assert.equal(named('error').length, 2);

    const pending = call.stopRecording();
    await flush();
    ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
    await assert.rejects(pending, { code: 'CALL_ENDED' });
    await assert.rejects(call.resumeRecording(), { code: 'CALL_ENDED' });
    assert.equal(named('error').length, 2, 'CALL_ENDED is not an error event');

    // An offer still ringing cannot record.
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws2 = await goOnline(env, op);
    let offer = null;
    op.once('incomingCall', (c) => (offer = c));
    ws2.push({ type: 'incoming', callId: 'c-4', from: '+15550112', to: '+15550100', number: 'support' });
    await flush();
    const n = ws2.sent.length;
    await assert.rejects(offer.startRecording(), { code: 'BAD_REQUEST', message: /startRecording: the call is not connected/ });
    assert.equal(ws2.sent.length, n);
  });
});

describe('recording across reconnects and in listCalls', () => {
  test('ready.calls[] carries the recording: a reloaded page shows it, a reconnect catches up on a change', async () => {
    // A reload: the adopted call knows its recording at once.
    const env = makeEnv();
    const { op } = makeOperator(env);
    op.goOnline(['support']);
    const ws = await serveReady(env, {
      calls: [{ callId: 'c-19', direction: 'inbound', state: 'connected', muted: false, held: false, recording: { id: REC, status: 'paused' } }],
    });
    ws.push({ type: 'answer', callId: 'c-19', sdp: 'v=0', ref: ws.ofType('reoffer')[0].ref });
    await flush();
    assert.deepEqual(op.currentCall.recording, { id: REC, status: 'paused' });

    // Reconnects: what changed while the socket was down fires `recording`, once.
    const { env: env2, ws: ws2, call, seen } = await recCall();
    ws2.push(recording('in-progress'));
    await flush();
    const reconnect = async (entry) => {
      env2.sockets[env2.sockets.length - 1].serverClose(1006);
      await env2.clock.advance(500);
      await serveReady(env2, { calls: [{ callId: 'c-2', direction: 'inbound', state: 'connected', muted: false, held: false, ...entry }] });
    };
    await reconnect({});
    assert.equal(call.recording, null, 'stopped while away');
    await reconnect({ recording: { id: REC, status: 'in-progress' } });
    assert.deepEqual(call.recording, { id: REC, status: 'in-progress' });
    await reconnect({ recording: { id: REC, status: 'in-progress' } });
    assert.equal(call.state, 'connected');
    assert.deepEqual(seen('recording'), [
      { id: REC, status: 'in-progress' },
      { id: REC, status: 'stopped' },
      { id: REC, status: 'in-progress' },
    ], 'one event per change, none for the same state');
  });

  test('listCalls gives each call its recording and forks', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op);
    const listing = op.listCalls();
    await flush();
    ws.push({
      type: 'calls',
      ref: ws.last().ref,
      calls: [
        { callId: 'c-7', participants: [], recording: { id: REC, status: 'in-progress' }, forks: ['rec-fork1', 3] },
        { callId: 'c-8', participants: [], recording: { id: REC, status: 'bogus' } },
        { callId: 'c-9', participants: [] },
      ],
    });
    const calls = await listing;
    assert.deepEqual(calls.map((c) => [c.recording, c.forks]), [
      [{ id: REC, status: 'in-progress' }, ['rec-fork1']],
      [null, []],
      [null, []],
    ]);
  });
});
