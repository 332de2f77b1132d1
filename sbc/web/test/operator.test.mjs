// Unit tests of sbc/web/operator.js against fakes. Run from the repository root:
//   node --test sbc/web/test/

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Operator, OperatorError } from '../operator.js';
import { makeEnv, makeOperator, flush, ready, serveReady, goOnline } from './fakes.mjs';

/** Advance the clock and assert a new socket appears exactly `delay` ms later. */
async function expectSocketAfter(env, delay) {
  const before = env.sockets.length;
  await env.clock.advance(delay - 1);
  assert.equal(env.sockets.length, before, `no socket before ${delay} ms`);
  await env.clock.advance(1);
  assert.equal(env.sockets.length, before + 1, `a socket at ${delay} ms`);
  return env.sockets[env.sockets.length - 1];
}

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

describe('connection and presence', () => {
  test('hello, ready, online, availability', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    assert.equal(op.state, 'offline');
    const p = op.goOnline(['support', 'nope']);
    await flush();
    assert.equal(op.state, 'connecting');
    const ws = env.sockets[0];
    assert.equal(ws.url, 'wss://sbc.test/v1/operator');
    ws.open();
    assert.deepEqual(ws.sent, [{ type: 'hello', token: 'tok-1', protocol: 1 }]);
    ws.push(ready());
    await flush();
    assert.equal(op.state, 'online');
    assert.equal(op.sessionId, 's-1');
    assert.deepEqual(op.numbers.map((n) => n.id), ['support', 'sales']);
    const online = ws.last();
    assert.equal(online.type, 'online');
    assert.deepEqual(online.numbers, ['support', 'nope']);
    assert.equal(typeof online.ref, 'string');
    ws.push({ type: 'availability', accepted: ['support'], rejected: [{ id: 'nope', code: 'FORBIDDEN_NUMBER' }], ref: online.ref });
    const av = await p;
    assert.deepEqual(av, { accepted: ['support'], rejected: [{ id: 'nope', code: 'FORBIDDEN_NUMBER' }] });
    assert.deepEqual(named('availabilityChanged'), [av]);
    assert.deepEqual(op.availability, av);
    assert.deepEqual(named('presenceStateChanged'), [
      { state: 'connecting', previous: 'offline' },
      { state: 'online', previous: 'connecting' },
    ]);
    // An unsolicited change (config reload) is reported too.
    ws.push({ type: 'availability', accepted: [], rejected: [{ id: 'support', code: 'FORBIDDEN_NUMBER' }] });
    assert.equal(named('availabilityChanged').length, 2);
    assert.deepEqual(named('error'), []);
  });

  test('goOnline() without ids takes every number of the ready', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const p = op.goOnline();
    const ws = await serveReady(env);
    assert.deepEqual(ws.last().numbers, ['support', 'sales']);
    ws.push({ type: 'availability', accepted: ['support', 'sales'], rejected: [], ref: ws.last().ref });
    assert.deepEqual((await p).accepted, ['support', 'sales']);
  });

  test('a second goOnline on a live socket only sends online', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op, ['support']);
    const p = op.goOnline(['sales']);
    await flush();
    assert.equal(env.sockets.length, 1);
    assert.equal(ws.ofType('hello').length, 1);
    assert.deepEqual(ws.last().numbers, ['sales']);
    ws.push({ type: 'availability', accepted: ['sales'], rejected: [], ref: ws.last().ref });
    assert.deepEqual((await p).accepted, ['sales']);
  });

  test('reconnects with the backoff schedule, a fresh token each time, and re-sends online', async () => {
    const env = makeEnv();
    const { op, tokens, named } = makeOperator(env, { reconnectBackoffMs: [500, 1000, 2000, 5000, 10000] });
    const ws1 = await goOnline(env, op, ['support']);
    ws1.serverClose(1006);
    assert.equal(op.state, 'reconnecting');
    for (const delay of [500, 1000, 2000, 5000, 10000, 10000]) {
      const ws = await expectSocketAfter(env, delay);
      ws.fail(); // could not open
      assert.equal(op.state, 'reconnecting');
    }
    assert.equal(tokens.length, 7, 'getToken called on every attempt');
    const ws = await expectSocketAfter(env, 10000);
    ws.open();
    assert.deepEqual(ws.sent[0], { type: 'hello', token: 'tok-8', protocol: 1 });
    ws.push(ready());
    await flush();
    assert.equal(op.state, 'online');
    const online = ws.last();
    assert.equal(online.type, 'online');
    assert.deepEqual(online.numbers, ['support']);
    ws.push({ type: 'availability', accepted: ['support'], rejected: [], ref: online.ref });
    await flush();
    assert.deepEqual(named('presenceStateChanged').map((e) => e.state), ['connecting', 'online', 'reconnecting', 'online']);
    // The schedule starts over after a good ready.
    ws.serverClose(1011);
    await expectSocketAfter(env, 500);
  });

  test('goOnline while reconnecting waits for ready and uses the re-sent online', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws1 = await goOnline(env, op, ['support']);
    ws1.serverClose(1006);
    const p = op.goOnline(['sales']);
    await env.clock.advance(500);
    const ws = await serveReady(env);
    assert.deepEqual(ws.ofType('online').map((m) => m.numbers), [['sales']], 'one online, with the new ids');
    ws.push({ type: 'availability', accepted: ['sales'], rejected: [], ref: ws.last().ref });
    assert.deepEqual(await p, { accepted: ['sales'], rejected: [] });
    assert.deepEqual(named('availabilityChanged').at(-1), { accepted: ['sales'], rejected: [] });
  });

  test('jitter is added from the injected random source', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env, { random: () => 0.5, reconnectJitter: 0.2 });
    const ws = await goOnline(env, op);
    ws.serverClose(1006);
    await expectSocketAfter(env, 550);
  });

  test('getToken failing during a reconnect is retried with backoff', async () => {
    const env = makeEnv();
    let fail = false;
    let n = 0;
    const { op } = makeOperator(env, {
      getToken: async () => {
        n++;
        if (fail) throw new Error('backend unreachable');
        return `t${n}`;
      },
    });
    const ws = await goOnline(env, op);
    fail = true;
    ws.serverClose(1006);
    await env.clock.advance(500);
    assert.equal(n, 2);
    assert.equal(op.state, 'reconnecting');
    fail = false;
    await env.clock.advance(1000);
    assert.equal(n, 3);
    assert.equal(env.sockets.length, 2);
  });

  test('4001 stops: no reconnect, offline, one UNAUTHORIZED error', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    ws.push({ type: 'error', code: 'UNAUTHORIZED', message: 'token expired' });
    ws.serverClose(4001, 'unauthorized');
    await env.clock.advance(60000);
    assert.equal(env.sockets.length, 1);
    assert.equal(op.state, 'offline');
    assert.deepEqual(named('error').map((e) => e.code), ['UNAUTHORIZED']);
  });

  test('a rejected hello rejects goOnline with UNAUTHORIZED', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const p = op.goOnline(['support']);
    await flush();
    env.sockets[0].open();
    env.sockets[0].serverClose(4001);
    await assert.rejects(p, (err) => err instanceof OperatorError && err.code === 'UNAUTHORIZED');
    assert.equal(op.state, 'offline');
    assert.equal(named('error').length, 1);
    await env.clock.advance(60000);
    assert.equal(env.sockets.length, 1);
  });

  test('getToken failing on connect is UNAUTHORIZED and opens no socket', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env, { getToken: async () => { throw new Error('no session'); } });
    await assert.rejects(op.goOnline(['support']), { code: 'UNAUTHORIZED' });
    assert.equal(env.sockets.length, 0);
    assert.equal(op.state, 'offline');
    assert.equal(named('error')[0].code, 'UNAUTHORIZED');
  });

  test('a socket that cannot open is WS_ERROR', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const p = op.goOnline(['support']);
    await flush();
    env.sockets[0].fail();
    await assert.rejects(p, { code: 'WS_ERROR' });
    assert.equal(op.state, 'offline');
    assert.deepEqual(named('error').map((e) => e.code), ['WS_ERROR']);
  });

  test('goOffline sends offline, closes with 1000 and never reconnects', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    await op.goOffline();
    assert.equal(ws.last().type, 'offline');
    assert.equal(ws.closedWith.code, 1000);
    assert.equal(op.state, 'offline');
    assert.deepEqual(op.availability, { accepted: [], rejected: [] });
    await env.clock.advance(120000);
    assert.equal(env.sockets.length, 1);
    assert.equal(ws.ofType('ping').length, 0, 'no heartbeat after going offline');
    assert.deepEqual(named('error'), []);
    // It can go online again, as a first connect.
    await goOnline(env, op);
    assert.equal(op.state, 'online');
    assert.equal(env.sockets.length, 2);
  });

  test('4009 replaced stops with REPLACED', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    ws.serverClose(4009, 'replaced');
    await env.clock.advance(60000);
    assert.equal(env.sockets.length, 1);
    assert.equal(op.state, 'offline');
    assert.deepEqual(named('error').map((e) => e.code), ['REPLACED']);
  });

  test('heartbeat: ping every interval, dead after 2 silent intervals', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    // The server's own patience (missedHeartbeats: 3) does not change the client's 2 intervals.
    const ws = await goOnline(env, op, ['support'], { heartbeatIntervalMs: 15000, missedHeartbeats: 3 });
    const pings = () => ws.ofType('ping').length;
    await env.clock.advance(14999);
    assert.equal(pings(), 0);
    await env.clock.advance(1);
    assert.equal(pings(), 1);
    assert.deepEqual(ws.last(), { type: 'ping' });
    ws.push({ type: 'pong' }); // t = 15000: the server is alive
    await env.clock.advance(15000);
    assert.equal(pings(), 2);
    await env.clock.advance(14999); // t = 44999: 29999 ms of silence
    assert.equal(op.state, 'online');
    assert.equal(ws.closedWith, null);
    await env.clock.advance(1);
    assert.equal(op.state, 'reconnecting');
    assert.equal(ws.closedWith.code, 4008);
    await expectSocketAfter(env, 500);
  });

  test('missedHeartbeats option', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env, { missedHeartbeats: 3 });
    await goOnline(env, op, ['support'], { heartbeatIntervalMs: 1000 });
    await env.clock.advance(2999);
    assert.equal(op.state, 'online');
    await env.clock.advance(1);
    assert.equal(op.state, 'reconnecting');
  });

  test('1002 (protocol version refused) stops', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    ws.serverClose(1002, 'unsupported protocol');
    await env.clock.advance(60000);
    assert.equal(env.sockets.length, 1);
    assert.equal(op.state, 'offline');
    assert.deepEqual(named('error').map((e) => e.code), ['PROTOCOL_ERROR']);
  });

  test('heartbeatIntervalMs option overrides the server value', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env, { heartbeatIntervalMs: 1000 });
    const ws = await goOnline(env, op);
    await env.clock.advance(1000);
    assert.equal(ws.ofType('ping').length, 1);
    await env.clock.advance(1000);
    assert.equal(op.state, 'reconnecting');
  });

  test('no ready within the connect timeout is a failed connect', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env, { connectTimeoutMs: 5000 });
    const p = op.goOnline(['support']);
    await flush();
    env.sockets[0].open();
    const rejected = assert.rejects(p, { code: 'WS_ERROR', message: 'connect timeout' });
    await env.clock.advance(4999);
    assert.equal(env.sockets[0].closedWith, null);
    await env.clock.advance(1);
    await rejected;
    assert.equal(op.state, 'offline');
    assert.equal(env.sockets[0].closedWith.code, 4000);
  });

  test('listNumbers: GET /v1/numbers on the ws host with a bearer token', async () => {
    const env = makeEnv();
    const { op, tokens } = makeOperator(env);
    env.fetchResponse = { status: 200, body: { numbers: [{ id: 'support', e164: '+15550100', name: 'Support line' }] } };
    const numbers = await op.listNumbers();
    assert.deepEqual(numbers, [{ id: 'support', e164: '+15550100', name: 'Support line' }]);
    assert.equal(env.fetchCalls[0].url, 'https://sbc.test/v1/numbers');
    assert.equal(env.fetchCalls[0].init.headers.Authorization, `Bearer ${tokens[0]}`);

    const { op: op2, named } = makeOperator(env, { url: 'ws://127.0.0.1:8080/v1/operator' });
    env.fetchResponse = { status: 401, body: { error: { code: 'UNAUTHORIZED', message: 'bad token' } } };
    await assert.rejects(op2.listNumbers(), { code: 'UNAUTHORIZED' });
    assert.equal(env.fetchCalls[1].url, 'http://127.0.0.1:8080/v1/numbers');
    assert.equal(named('error').length, 1);
  });
});

describe('calls', () => {
  test('inbound: incomingCall, accept, answer applied, callStarted, callEnded', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env, { audioConstraints: { echoCancellation: true } });
    const ws = await goOnline(env, op);
    const order = [];
    let call = null;
    op.on('incomingCall', (c) => {
      call = c;
      order.push('incomingCall');
      for (const e of ['accepted', 'connected', 'ended']) c.on(e, () => order.push(`call.${e}`));
    });
    op.on('callStarted', () => order.push('callStarted'));
    op.on('callEnded', (c) => order.push(`callEnded:${c.endReason}`));

    ws.push({ type: 'incoming', callId: 'c-2', from: '+15550111', to: '+15550100', number: 'support', callerName: 'Bob' });
    assert.equal(call.direction, 'inbound');
    assert.equal(call.state, 'ringing');
    assert.equal(call.from, '+15550111');
    assert.equal(call.callerName, 'Bob');
    assert.equal(op.currentCall, null, 'a ringing offer is not the current call');

    const accepted = call.accept();
    assert.equal(call.state, 'connecting');
    await flush();
    assert.deepEqual(env.mediaDevices.calls, [{ audio: { echoCancellation: true } }]);
    const pc = env.pcs[0];
    assert.equal(pc.senders.length, 1, 'one audio track');
    assert.equal(pc.senders[0].track.kind, 'audio');
    const acc = ws.last();
    assert.equal(acc.type, 'accept');
    assert.equal(acc.callId, 'c-2');
    assert.equal(acc.sdp, 'v=0 offer-0');
    order.push('accept sent');

    ws.push({ type: 'answer', callId: 'c-2', sdp: 'v=0 answer', ref: acc.ref });
    assert.equal(await accepted, call);
    assert.deepEqual(pc.remoteDescription, { type: 'answer', sdp: 'v=0 answer' });
    assert.equal(call.remoteStream, pc.remoteStream);
    assert.equal(op.currentCall, call);

    ws.push({ type: 'connected', callId: 'c-2' });
    await flush();
    assert.equal(call.state, 'connected');
    ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
    await flush();
    assert.deepEqual(order, ['incomingCall', 'accept sent', 'call.accepted', 'call.connected', 'callStarted', 'call.ended', 'callEnded:remote_hangup']);
    assert.equal(call.state, 'ended');
    assert.equal(call.endReason, 'remote_hangup');
    assert.equal(op.currentCall, null);
    assert.ok(pc.closed, 'peer connection closed');
    assert.equal(env.mediaDevices.streams[0].tracks[0].readyState, 'ended', 'microphone released');
  });

  test('connected queued behind an answer still applies the answer first', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op);
    let call;
    op.on('incomingCall', (c) => (call = c));
    const order = [];
    op.on('callStarted', (c) => order.push(`started:${env.pcs[0].remoteDescription ? 'answered' : 'no answer'}`));
    ws.push({ type: 'incoming', callId: 'c-3', from: 'a', to: 'b', number: 'support' });
    call.on('accepted', () => order.push('accepted'));
    call.accept();
    await flush();
    ws.push({ type: 'answer', callId: 'c-3', sdp: 'v=0 a', ref: ws.last().ref });
    ws.push({ type: 'connected', callId: 'c-3' }); // same tick
    await flush();
    assert.deepEqual(order, ['accepted', 'started:answered']);
  });

  test('outbound: dial, answer, ringing with early media, connected, hangup', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    const dialing = op.dial('+15550199', { callerId: 'support' });
    await flush();
    const dial = ws.last();
    assert.equal(dial.type, 'dial');
    assert.equal(dial.to, '+15550199');
    assert.equal(dial.callerId, 'support');
    assert.equal(dial.sdp, 'v=0 offer-0');
    ws.push({ type: 'answer', callId: 'c-9', sdp: 'v=0 answer', ref: dial.ref });
    const call = await dialing;
    assert.equal(call.callId, 'c-9');
    assert.equal(call.direction, 'outbound');
    assert.equal(call.from, 'support');
    assert.equal(call.to, '+15550199');
    assert.equal(call.state, 'connecting');
    assert.equal(op.currentCall, call);
    assert.equal(env.pcs[0].remoteDescription.sdp, 'v=0 answer');

    const ringing = [];
    call.on('ringing', (e) => ringing.push(e));
    ws.push({ type: 'ringing', callId: 'c-9', earlyMedia: true });
    await flush();
    assert.equal(call.state, 'ringing');
    assert.equal(call.earlyMedia, true);
    assert.deepEqual(ringing, [{ earlyMedia: true }]);

    ws.push({ type: 'connected', callId: 'c-9' });
    await flush();
    assert.equal(call.state, 'connected');
    assert.deepEqual(named('callStarted'), [call]);

    call.hangup();
    assert.deepEqual(ws.last(), { type: 'hangup', callId: 'c-9', ref: ws.last().ref });
    ws.push({ type: 'ended', callId: 'c-9', reason: 'hangup' });
    await flush();
    assert.deepEqual(named('callEnded'), [call]);
    assert.equal(call.endReason, 'hangup');
    assert.equal(op.currentCall, null);
    assert.ok(env.pcs[0].closed);
  });

  test('outbound busy keeps the SIP code', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op);
    const dialing = op.dial('+15550199', { callerId: 'support' });
    await flush();
    ws.push({ type: 'answer', callId: 'c-10', sdp: 'v=0', ref: ws.last().ref });
    const call = await dialing;
    ws.push({ type: 'ended', callId: 'c-10', reason: 'busy', code: 486 });
    await flush();
    assert.equal(call.endReason, 'busy');
    assert.equal(call.endCode, 486);
  });

  test('dial connects first when offline, without going online on numbers', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const dialing = op.dial('operator:bob', { callerId: 'support' });
    const ws = await serveReady(env);
    assert.deepEqual(ws.sent.map((m) => m.type), ['hello', 'dial']);
    ws.push({ type: 'answer', callId: 'c-1', sdp: 'v=0', ref: ws.last().ref });
    assert.equal((await dialing).callId, 'c-1');
  });

  test('taken_by_other ends a ringing call', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    ws.push({ type: 'incoming', callId: 'c-4', from: 'a', to: 'b', number: 'support' });
    const call = named('incomingCall')[0];
    ws.push({ type: 'ended', callId: 'c-4', reason: 'taken_by_other' });
    await flush();
    assert.equal(call.state, 'ended');
    assert.equal(call.endReason, 'taken_by_other');
    assert.deepEqual(named('callEnded'), [call]);
    assert.deepEqual(named('error'), []);
    assert.deepEqual(op.calls, []);
  });

  test('taken_by_other while our accept waits: accept rejects CALL_ENDED, no error event', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    ws.push({ type: 'incoming', callId: 'c-5', from: 'a', to: 'b', number: 'support' });
    const call = named('incomingCall')[0];
    const accepting = call.accept();
    await flush();
    assert.equal(ws.last().type, 'accept');
    ws.push({ type: 'ended', callId: 'c-5', reason: 'taken_by_other' });
    await assert.rejects(accepting, { code: 'CALL_ENDED', reason: 'taken_by_other' });
    assert.equal(call.endReason, 'taken_by_other');
    assert.ok(env.pcs[0].closed);
    assert.equal(op.currentCall, null);
    assert.deepEqual(named('error'), []);
  });

  test('dial rejected with FORBIDDEN_NUMBER rejects with .code and cleans up', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    const dialing = op.dial('+15550199', { callerId: 'not-mine' });
    await flush();
    ws.push({ type: 'error', code: 'FORBIDDEN_NUMBER', message: 'caller ID not allowed', ref: ws.last().ref });
    await assert.rejects(dialing, (err) => err instanceof OperatorError && err.code === 'FORBIDDEN_NUMBER' && err.message === 'caller ID not allowed');
    assert.deepEqual(named('error'), [{ code: 'FORBIDDEN_NUMBER', message: 'caller ID not allowed' }]);
    assert.ok(env.pcs[0].closed);
    assert.equal(env.mediaDevices.streams[0].tracks[0].readyState, 'ended');
    assert.equal(op.currentCall, null);
    assert.deepEqual(named('callEnded'), []);
    // Free to dial again.
    const again = op.dial('+15550199', { callerId: 'support' });
    await flush();
    assert.equal(ws.last().type, 'dial');
    ws.push({ type: 'answer', callId: 'c-11', sdp: 'v=0', ref: ws.last().ref });
    assert.equal((await again).callId, 'c-11');
  });

  test('dial while a call is active is BUSY locally', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws } = await connectedInbound(env, op);
    const sent = ws.sent.length;
    await assert.rejects(op.dial('+15550199', { callerId: 'support' }), { code: 'BUSY' });
    assert.equal(ws.sent.length, sent);
  });

  test('MIC_PERMISSION_DENIED on dial and on accept', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    env.mediaDevices.deny = 'NotAllowedError';
    await assert.rejects(op.dial('+15550199', { callerId: 'support' }), { code: 'MIC_PERMISSION_DENIED' });
    assert.equal(ws.ofType('dial').length, 0);
    assert.equal(op.currentCall, null);

    env.mediaDevices.deny = 'SecurityError';
    ws.push({ type: 'incoming', callId: 'c-6', from: 'a', to: 'b', number: 'support' });
    const call = named('incomingCall')[0];
    await assert.rejects(call.accept(), { code: 'MIC_PERMISSION_DENIED', callId: 'c-6' });
    assert.equal(call.state, 'ringing', 'still ringing: it can be declined or retried');
    assert.equal(ws.ofType('accept').length, 0);
    assert.deepEqual(named('error').map((e) => [e.code, e.callId]), [['MIC_PERMISSION_DENIED', undefined], ['MIC_PERMISSION_DENIED', 'c-6']]);

    env.mediaDevices.deny = 'NotFoundError';
    await assert.rejects(call.accept(), { code: 'MIC_UNAVAILABLE' });
  });

  test('reject sends reject and the call ends rejected', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    ws.push({ type: 'incoming', callId: 'c-7', from: 'a', to: 'b', number: 'support' });
    const call = named('incomingCall')[0];
    call.reject();
    assert.equal(ws.last().type, 'reject');
    assert.equal(ws.last().callId, 'c-7');
    ws.push({ type: 'ended', callId: 'c-7', reason: 'rejected' });
    await flush();
    assert.equal(call.endReason, 'rejected');
  });

  test('mute disables the track and sends mute; unmute restores it', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    const track = env.mediaDevices.streams[0].tracks[0];
    call.mute(true);
    assert.equal(track.enabled, false);
    assert.equal(call.muted, true);
    assert.deepEqual(ws.last(), { type: 'mute', callId: 'c-2', on: true, ref: ws.last().ref });
    call.mute(false);
    assert.equal(track.enabled, true);
    assert.equal(ws.last().on, false);
  });

  test('hold sends hold; callUpdated updates held/remoteHeld', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    const updates = [];
    call.on('updated', (u) => updates.push(u));
    call.hold(true);
    assert.deepEqual(ws.last(), { type: 'hold', callId: 'c-2', on: true, ref: ws.last().ref });
    ws.push({ type: 'callUpdated', callId: 'c-2', muted: false, held: true, remoteHeld: false });
    ws.push({ type: 'callUpdated', callId: 'c-2', muted: false, held: true, remoteHeld: true });
    await flush();
    assert.equal(call.held, true);
    assert.equal(call.remoteHeld, true);
    assert.deepEqual(updates, [
      { muted: false, held: true, remoteHeld: false },
      { muted: false, held: true, remoteHeld: true },
    ]);
  });

  test('sendDtmf sends the digits; received DTMF is an event; bad digits throw', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    call.sendDtmf('12#');
    assert.deepEqual(ws.last(), { type: 'dtmf', callId: 'c-2', digits: '12#', ref: ws.last().ref });
    call.sendDtmf('a,5');
    assert.equal(ws.last().digits, 'A,5');
    assert.throws(() => call.sendDtmf('12x'), { code: 'BAD_REQUEST' });
    assert.throws(() => call.sendDtmf('1'.repeat(33)), { code: 'BAD_REQUEST' });
    assert.equal(named('error').length, 2);
    const got = [];
    call.on('dtmf', (e) => got.push(e.digit));
    ws.push({ type: 'dtmf', callId: 'c-2', digit: '5' });
    await flush();
    assert.deepEqual(got, ['5']);
  });

  test('a server error on a fire-and-forget request carries the callId', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    call.sendDtmf('1');
    ws.push({ type: 'error', code: 'RATE_LIMITED', message: 'slow down', ref: ws.last().ref });
    assert.deepEqual(named('error'), [{ code: 'RATE_LIMITED', message: 'slow down', callId: 'c-2' }]);
  });

  test('ICE gathering is awaited, at most iceGatheringTimeoutMs', async () => {
    const env = makeEnv();
    env.iceGatheringState = 'gathering';
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op);
    op.dial('+15550199', { callerId: 'support' }).catch(() => {});
    await flush();
    assert.equal(ws.ofType('dial').length, 0, 'not before gathering completes');
    await env.clock.advance(999);
    assert.equal(ws.ofType('dial').length, 0);
    await env.clock.advance(1);
    assert.equal(ws.ofType('dial').length, 1, 'sent after 1 s anyway');

    // Completed gathering sends at once.
    const env2 = makeEnv();
    env2.iceGatheringState = 'gathering';
    const { op: op2 } = makeOperator(env2);
    const ws2 = await goOnline(env2, op2);
    op2.dial('+15550199', { callerId: 'support' }).catch(() => {});
    await flush();
    const pc = env2.pcs[0];
    pc.iceGatheringState = 'complete';
    pc.dispatch('icegatheringstatechange');
    await flush();
    assert.equal(ws2.ofType('dial').length, 1);
  });

  test('an answer that cannot be applied fails the dial and hangs up', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op);
    env.failRemoteDescription = true;
    const dialing = op.dial('+15550199', { callerId: 'support' });
    await flush();
    ws.push({ type: 'answer', callId: 'c-12', sdp: 'garbage', ref: ws.last().ref });
    await assert.rejects(dialing, { code: 'MEDIA_ERROR' });
    assert.deepEqual(ws.last(), { type: 'hangup', callId: 'c-12', ref: ws.last().ref });
    assert.equal(op.currentCall, null);
  });
});

describe('resuming after a reconnect', () => {
  test('a resumed call keeps its Call object and peer connection', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    const pc = call.peerConnection;
    ws.serverClose(1006);
    assert.equal(op.state, 'reconnecting');
    assert.equal(call.state, 'connected', 'media does not depend on the socket');
    await env.clock.advance(500);
    const ws2 = await serveReady(env, {
      calls: [{ callId: 'c-2', direction: 'inbound', from: '+15550111', to: '+15550100', state: 'connected', muted: false, held: false, remoteHeld: true }],
    });
    assert.equal(op.state, 'online');
    assert.equal(op.currentCall, call);
    assert.equal(call.peerConnection, pc);
    assert.ok(!pc.closed);
    assert.equal(call.remoteHeld, true);
    assert.equal(ws2.ofType('reoffer').length, 0);
    assert.deepEqual(named('callEnded'), []);
    assert.equal(named('callStarted').length, 1, 'not started twice');
    // Still usable on the new socket.
    call.sendDtmf('9');
    assert.equal(ws2.last().type, 'dtmf');
  });

  test('a call absent from ready.calls ends with offline', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    ws.serverClose(1006);
    await env.clock.advance(500);
    await serveReady(env, { calls: [] });
    assert.equal(call.state, 'ended');
    assert.equal(call.endReason, 'offline');
    assert.deepEqual(named('callEnded'), [call]);
    assert.equal(op.currentCall, null);
    assert.ok(env.pcs[0].closed);
  });

  test('a resumed call whose peer connection died is reoffered', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    const oldPc = call.peerConnection;
    oldPc.connectionState = 'failed';
    ws.serverClose(1006);
    await env.clock.advance(500);
    const ws2 = await serveReady(env, { calls: [{ callId: 'c-2', direction: 'inbound', state: 'connected', muted: false, held: false }] });
    const reoffer = ws2.ofType('reoffer')[0];
    assert.ok(reoffer, 'reoffer sent');
    assert.equal(reoffer.callId, 'c-2');
    assert.equal(reoffer.sdp, 'v=0 offer-1');
    assert.equal(env.mediaDevices.calls.length, 1, 'the live microphone is reused');
    const streams = [];
    call.on('remoteStream', (s) => streams.push(s));
    ws2.push({ type: 'answer', callId: 'c-2', sdp: 'v=0 answer 2', ref: reoffer.ref });
    await flush();
    assert.equal(call.peerConnection, env.pcs[1]);
    assert.ok(oldPc.closed);
    assert.deepEqual(streams, [env.pcs[1].remoteStream]);
    assert.equal(call.state, 'connected');
  });

  test('after a reload the resumed call is adopted and reoffered', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const p = op.goOnline(['support']);
    const ws = await serveReady(env, {
      calls: [{ callId: 'c-19', direction: 'inbound', from: '+15550111', to: '+15550100', state: 'connected', muted: true, held: false }],
    });
    const reoffer = ws.ofType('reoffer')[0];
    assert.ok(reoffer);
    ws.push({ type: 'answer', callId: 'c-19', sdp: 'v=0', ref: reoffer.ref });
    await flush();
    const call = op.currentCall;
    assert.equal(call.callId, 'c-19');
    assert.equal(call.state, 'connected');
    assert.equal(call.muted, true);
    assert.equal(env.mediaDevices.streams[0].tracks[0].enabled, false, 'muted mic stays muted');
    assert.deepEqual(named('callStarted'), [call]);
    const online = ws.ofType('online')[0];
    ws.push({ type: 'availability', accepted: ['support'], rejected: [], ref: online.ref });
    await p;
  });

  test('hangup while disconnected ends locally and hangs up on resume', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    ws.serverClose(1006);
    call.hangup();
    assert.equal(call.state, 'ended');
    assert.equal(call.endReason, 'hangup');
    await env.clock.advance(500);
    const ws2 = await serveReady(env, { calls: [{ callId: 'c-2', direction: 'inbound', state: 'connected' }] });
    assert.deepEqual(ws2.ofType('hangup').map((m) => m.callId), ['c-2']);
    assert.equal(ws2.ofType('reoffer').length, 0);
  });

  test('a dial pending when the socket drops is rejected with WS_ERROR', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op);
    const dialing = op.dial('+15550199', { callerId: 'support' });
    await flush();
    ws.serverClose(1006);
    await assert.rejects(dialing, { code: 'WS_ERROR' });
    assert.equal(op.currentCall, null);
    assert.ok(env.pcs[0].closed);
  });
});

describe('events and robustness', () => {
  test('on returns an unsubscribe function; off; once', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const seen = { on: 0, off: 0, once: 0 };
    const unsubscribe = op.on('availabilityChanged', () => seen.on++);
    const fn = () => seen.off++;
    op.on('availabilityChanged', fn);
    op.once('availabilityChanged', () => seen.once++);
    const ws = await goOnline(env, op);
    assert.deepEqual(seen, { on: 1, off: 1, once: 1 });
    unsubscribe();
    op.off('availabilityChanged', fn);
    ws.push({ type: 'availability', accepted: [], rejected: [] });
    assert.deepEqual(seen, { on: 1, off: 1, once: 1 });
    // once can be cancelled before it fires, by off or by its returned function.
    const f2 = () => seen.once++;
    op.once('availabilityChanged', f2);
    op.off('availabilityChanged', f2);
    op.once('availabilityChanged', () => seen.once++)();
    ws.push({ type: 'availability', accepted: [], rejected: [] });
    assert.equal(seen.once, 1);
  });

  test('a throwing listener does not break the client', async () => {
    const env = makeEnv();
    const { op, logs } = makeOperator(env);
    op.on('presenceStateChanged', () => {
      throw new Error('boom');
    });
    await goOnline(env, op);
    assert.equal(op.state, 'online');
    assert.ok(logs.some((l) => l.level === 'error' && l.text.includes('boom')));
  });

  test('malformed server frames are reported, not thrown', async () => {
    const env = makeEnv();
    const { op, named, logs } = makeOperator(env);
    const ws = await goOnline(env, op);
    assert.doesNotThrow(() => ws.push('{not json'));
    assert.doesNotThrow(() => ws.push('[1,2]'));
    assert.doesNotThrow(() => ws.push('null'));
    assert.doesNotThrow(() => ws.push({ type: 'answer' })); // nothing pending: ignored
    assert.doesNotThrow(() => ws.push({ type: 'ended', callId: 'nope', reason: 'hangup' }));
    assert.doesNotThrow(() => ws.push({ type: 'something-new' }));
    assert.deepEqual(named('error').map((e) => e.code), ['PROTOCOL_ERROR', 'PROTOCOL_ERROR', 'PROTOCOL_ERROR']);
    assert.ok(logs.some((l) => l.level === 'warn' && l.text.includes('PROTOCOL_ERROR')));
    // Still working.
    ws.push({ type: 'incoming', callId: 'c-8', from: 'a', to: 'b', number: 'support' });
    assert.equal(named('incomingCall').length, 1);
    assert.equal(op.state, 'online');
  });

  test('constructor validates its options', () => {
    assert.throws(() => new Operator({ getToken: async () => 't' }), TypeError);
    assert.throws(() => new Operator({ url: 'wss://x/v1/operator' }), TypeError);
  });
});
