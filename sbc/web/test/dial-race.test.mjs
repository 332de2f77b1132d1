// The SDK against a server that reports a dial's progress (`ringing`, `ended`)
// before the `answer` that names the call. Our server no longer does (it holds
// `ringing` back and puts the dial's `ref` on an early `ended`), but an older
// one did, found by the browser end-to-end suite: the SDK must cope either way.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { makeEnv, makeOperator, flush, goOnline } from './fakes.mjs';

/** An inbound call rung, accepted and connected; returns {ws, call}. */
async function connectedInbound(env, op, callId = 'c-2') {
  const ws = await goOnline(env, op);
  let call = null;
  op.once('incomingCall', (c) => (call = c));
  ws.push({ type: 'incoming', callId, from: '+15550111', to: '+15550100', number: 'support' });
  const accepted = call.accept();
  await flush();
  const acc = ws.last();
  ws.push({ type: 'answer', callId, sdp: 'v=0 answer', ref: acc.ref });
  await accepted;
  ws.push({ type: 'connected', callId });
  await flush();
  return { ws, call };
}

describe('SDK: call messages before the dial answer', () => {
  test('outbound: ringing that arrives before the answer is kept', async () => {
    // The far end's 183 can reach the server before the media answer is ready.
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op);
    const dialing = op.dial('+15550199', { callerId: 'support' });
    await flush();
    const dial = ws.last();
    ws.push({ type: 'ringing', callId: 'c-9', earlyMedia: true });
    ws.push({ type: 'answer', callId: 'c-9', sdp: 'v=0 answer', ref: dial.ref });
    const call = await dialing;
    await flush();
    assert.equal(call.callId, 'c-9');
    assert.equal(call.state, 'ringing');
    assert.equal(call.earlyMedia, true);
    assert.equal(env.pcs[0].remoteDescription.sdp, 'v=0 answer');
    ws.push({ type: 'connected', callId: 'c-9' });
    await flush();
    assert.equal(call.state, 'connected');
  });

  test('outbound: ended before the answer rejects the dial with CALL_ENDED and keeps the reason', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    const dialing = op.dial('+15550199', { callerId: 'support' });
    await flush();
    const dial = ws.last();
    ws.push({ type: 'ended', callId: 'c-9', reason: 'busy', code: 486 });
    await assert.rejects(dialing, (err) => err.code === 'CALL_ENDED');
    const [call] = named('callEnded');
    assert.equal(call.callId, 'c-9');
    assert.equal(call.endReason, 'busy');
    assert.equal(call.endCode, 486);
    assert.equal(op.currentCall, null);
    assert.deepEqual(named('error'), []);
    assert.ok(env.pcs[0].closed);
    ws.push({ type: 'answer', callId: 'c-9', sdp: 'v=0', ref: dial.ref }); // late: ignored
    await flush();
    assert.equal(ws.ofType('hangup').length, 0);
  });

  test('outbound: ended with the dial ref (our server) ends that dial', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    const dialing = op.dial('+15550199', { callerId: 'support' });
    await flush();
    const dial = ws.last();
    ws.push({ type: 'ended', callId: 'c-4', reason: 'failed', code: 404, ref: dial.ref });
    await assert.rejects(dialing, (err) => err.code === 'CALL_ENDED');
    const [call] = named('callEnded');
    assert.equal(call.callId, 'c-4');
    assert.equal(call.endCode, 404);
  });

  test('a late message about a finished call is not taken for a pending dial', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call: first } = await connectedInbound(env, op, 'c-2');
    ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
    await flush();
    assert.equal(first.state, 'ended');
    const dialing = op.dial('+15550199', { callerId: 'support' });
    await flush();
    const dial = ws.last();
    ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' }); // a duplicate
    ws.push({ type: 'answer', callId: 'c-3', sdp: 'v=0', ref: dial.ref });
    const call = await dialing;
    assert.equal(call.callId, 'c-3');
    assert.equal(call.state, 'connecting');
  });

});
