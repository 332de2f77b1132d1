// Teardown (goOffline and page hide hang up first), media-path recovery, and getToken's
// `{ token, expiresAt }` shape.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { makeEnv, makeOperator, flush, goOnline, connectedInbound, recordCall } from './fakes.mjs';

const types = (ws) => ws.sent.map((m) => m.type);

describe('goOffline during a call', () => {
  test('hangs up first, waits for ended, then sends offline and closes', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    const going = op.goOffline();
    await flush();
    assert.equal(ws.last().type, 'hangup');
    assert.equal(ws.last().callId, 'c-2');
    assert.equal(ws.ofType('offline').length, 0, 'not before the hangup is answered');
    assert.equal(ws.closedWith, null);
    ws.push({ type: 'ended', callId: 'c-2', reason: 'hangup' });
    await going;
    assert.deepEqual(types(ws).slice(-3), ['hangup', 'quality', 'offline']);
    assert.equal(ws.closedWith.code, 1000);
    assert.equal(call.endReason, 'hangup');
    assert.equal(op.state, 'offline');
    assert.deepEqual(named('callEnded'), [call]);
    assert.deepEqual(named('error'), []);
  });

  test('a server that does not answer the hangup: offline after hangupTimeoutMs, the call ends hangup', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env, { hangupTimeoutMs: 2000 });
    const { ws, call } = await connectedInbound(env, op);
    const going = op.goOffline();
    await env.clock.advance(1999);
    assert.equal(ws.ofType('offline').length, 0);
    assert.equal(call.state, 'connected');
    await env.clock.advance(1);
    await going;
    assert.equal(ws.ofType('offline').length, 1);
    assert.equal(call.endReason, 'hangup');
    assert.equal(ws.closedWith.code, 1000);
  });

  test('without a call goOffline sends offline at once (no hangup)', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op);
    await op.goOffline();
    assert.deepEqual(types(ws).slice(-1), ['offline']);
    assert.equal(ws.ofType('hangup').length, 0);
  });
});

describe('page hide', () => {
  test('hangs up the call and goes offline by default', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    env.window.fire('pagehide', { persisted: false });
    await flush();
    assert.deepEqual(types(ws).slice(-3), ['hangup', 'quality', 'offline']);
    assert.equal(call.state, 'ended');
    assert.equal(call.endReason, 'hangup');
    assert.equal(ws.closedWith.code, 1000);
    assert.equal(op.state, 'offline');
    await env.clock.advance(60000);
    assert.equal(env.sockets.length, 1, 'no reconnect');
  });

  test('keepCallOnReload leaves the call to the grace period', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env, { keepCallOnReload: true });
    const { ws, call } = await connectedInbound(env, op);
    const sent = ws.sent.length;
    env.window.fire('pagehide', { persisted: false });
    await flush();
    assert.equal(ws.sent.length, sent, 'nothing sent');
    assert.equal(ws.closedWith, null);
    assert.equal(call.state, 'connected');
    assert.equal(op.state, 'online');
  });

  test('while offline it does nothing; dispose() removes the listener', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    env.window.fire('pagehide');
    assert.equal(env.sockets.length, 0);
    assert.equal(env.window.listeners.pagehide.length, 1);
    await op.dispose();
    assert.equal(env.window.listeners.pagehide.length, 0);
    assert.equal(env.mediaDevices.listeners.devicechange.length, 0);
  });
});

describe('media path', () => {
  const CALL_EVENTS = ['reconnecting', 'reconnected', 'ended'];

  test('disconnected then connected again: reconnecting, reconnected, no reoffer', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    const { seen } = recordCall(call, CALL_EVENTS);
    const pc = call.peerConnection;
    pc.setConnectionState('disconnected');
    assert.deepEqual(seen('reconnecting'), [{ reason: 'disconnected' }]);
    assert.equal(call.reconnecting, true);
    await env.clock.advance(3000);
    pc.setConnectionState('connected');
    assert.equal(seen('reconnected').length, 1);
    assert.equal(call.reconnecting, false);
    assert.equal(ws.ofType('reoffer').length, 0);
    await env.clock.advance(60000);
    assert.equal(call.state, 'connected', 'the recovery timer was cleared');
  });

  test('failed: a reoffer on a new peer connection, reconnected when it connects', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    const { seen } = recordCall(call, CALL_EVENTS);
    const oldPc = call.peerConnection;
    oldPc.setConnectionState('failed');
    await flush();
    assert.deepEqual(seen('reconnecting'), [{ reason: 'failed' }]);
    const reoffer = ws.ofType('reoffer')[0];
    assert.ok(reoffer, 'reoffer sent');
    assert.equal(env.mediaDevices.calls.length, 1, 'the microphone is reused');
    ws.push({ type: 'answer', callId: 'c-2', sdp: 'v=0 answer 2', ref: reoffer.ref });
    await flush();
    const pc = call.peerConnection;
    assert.notEqual(pc, oldPc);
    assert.ok(oldPc.closed);
    // The fake's setRemoteDescription makes it 'connected' (no event): the recovery sees it.
    assert.equal(seen('reconnected').length, 1);
    assert.equal(call.reconnecting, false);
    assert.equal(call.state, 'connected');
  });

  test('not back within mediaTimeoutMs: hangup sent, the call ends media_failed', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env, { mediaTimeoutMs: 8000 });
    const { ws, call } = await connectedInbound(env, op);
    const { seen } = recordCall(call, CALL_EVENTS);
    call.peerConnection.setConnectionState('disconnected');
    await env.clock.advance(7999);
    assert.equal(call.state, 'connected');
    await env.clock.advance(1);
    assert.equal(call.state, 'ended');
    assert.equal(call.endReason, 'media_failed');
    assert.equal(ws.ofType('hangup').at(-1).callId, 'c-2');
    assert.equal(seen('ended')[0].reason, 'media_failed');
    assert.deepEqual(named('callEnded'), [call]);
  });

  test('a reoffer the server refuses ends the call media_failed', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    call.peerConnection.setConnectionState('failed');
    await flush();
    const reoffer = ws.ofType('reoffer')[0];
    ws.push({ type: 'error', code: 'BAD_REQUEST', message: 'no', ref: reoffer.ref, callId: 'c-2' });
    await flush();
    assert.equal(call.endReason, 'media_failed');
  });

  test('states of a replaced or ended peer connection are ignored', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    const { seen } = recordCall(call, CALL_EVENTS);
    const pc = call.peerConnection;
    ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
    await flush();
    pc.setConnectionState('failed');
    await flush();
    assert.deepEqual(seen('reconnecting'), []);
    assert.equal(ws.ofType('reoffer').length, 0);
  });
});

describe('getToken', () => {
  test('may return { token, expiresAt } (the operator SDK 0.3.0 shape)', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env, { getToken: async () => ({ token: 'obj-tok', expiresAt: '2030-01-01T00:00:00Z' }) });
    const ws = await goOnline(env, op);
    assert.deepEqual(ws.sent[0], { type: 'hello', token: 'obj-tok', protocol: 1 });
    assert.equal(op.tokenExpiresAt, '2030-01-01T00:00:00Z');
    env.fetchResponse = { status: 200, body: { numbers: [] } };
    await op.listNumbers();
    assert.equal(env.fetchCalls[0].init.headers.Authorization, 'Bearer obj-tok');
  });

  test('an object without a token string is UNAUTHORIZED', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env, { getToken: async () => ({ expiresAt: 'x' }) });
    await assert.rejects(op.goOnline(['support']), { code: 'UNAUTHORIZED', message: 'getToken returned no token' });
    assert.equal(env.sockets.length, 0);
    assert.equal(named('error').length, 1);
  });
});
