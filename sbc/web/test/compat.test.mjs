// The operator SDK 0.3.0 API through compat.js: the playbook's flows, written as its
// integration playbook shows them, against the fakes installed as the browser's globals.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { AudinOperator, CompatOperator, OperatorCall, operatorUrl } from '../compat.js';
import { makeEnv, flush, ready, connectedInbound } from './fakes.mjs';

const saved = {};
let env;
const fetched = [];
let numbersStatus = 200;

/** Install the fakes as browser globals; `construct` runs with the fake clock as setTimeout. */
function installGlobals() {
  env = makeEnv();
  for (const k of ['WebSocket', 'RTCPeerConnection', 'fetch', 'navigator']) if (!(k in saved)) saved[k] = Object.getOwnPropertyDescriptor(globalThis, k);
  globalThis.WebSocket = env.WebSocket;
  globalThis.RTCPeerConnection = env.RTCPeerConnection;
  Object.defineProperty(globalThis, 'navigator', { value: { mediaDevices: env.mediaDevices }, configurable: true, writable: true });
  globalThis.fetch = async (url, init = {}) => {
    fetched.push({ url: String(url), init });
    const json = (status, body) => ({ ok: status >= 200 && status < 300, status, json: async () => body });
    if (url === '/api/operator/token') return json(200, { token: `tok-${fetched.length}`, expiresAt: '2030-01-01T00:00:00Z' });
    if (String(url) === 'https://sbc.test/v1/numbers') {
      if (numbersStatus !== 200) return json(numbersStatus, { error: { code: numbersStatus === 401 ? 'UNAUTHORIZED' : 'INTERNAL', message: 'no' } });
      return json(200, { numbers: [{ id: 'support', e164: '+15550100', name: 'Support line' }, { id: 'sales', e164: '+15550101' }] });
    }
    return json(404, {});
  };
}

function restoreGlobals() {
  for (const [k, d] of Object.entries(saved)) {
    if (d) Object.defineProperty(globalThis, k, d);
    else delete globalThis[k];
  }
}

/** Construct with the fake clock standing in for the global timers (captured at construction). */
function withFakeTimers(fn) {
  const st = globalThis.setTimeout;
  const ct = globalThis.clearTimeout;
  globalThis.setTimeout = env.clock.setTimeout;
  globalThis.clearTimeout = env.clock.clearTimeout;
  try {
    return fn();
  } finally {
    globalThis.setTimeout = st;
    globalThis.clearTimeout = ct;
  }
}

const quietLogger = { debug() {}, info() {}, warn() {}, error() {} };

describe('operator SDK 0.3.0 compatibility', () => {
  before(installGlobals);
  after(restoreGlobals);

  test('the playbook flows run unchanged', async () => {
    // ---- the playbook's code (Principles 2 to 9), as written there ----
    const getToken = async () => {
      const r = await fetch('/api/operator/token', {
        method: 'POST',
        credentials: 'include', // or your bearer header — match your app's auth
      });
      if (!r.ok) throw new Error('token endpoint failed');
      return r.json(); // { token, expiresAt? }
    };
    const ui = { presence: [], availability: [], incoming: [], inCall: [], cleared: [], errors: [] };
    const updatePresenceUi = (s) => ui.presence.push(s);
    const showIncomingUi = (call) => ui.incoming.push(call);
    const showInCallUi = (call) => ui.inCall.push(call);
    const clearCallUi = (call) => ui.cleared.push(call);

    const op = withFakeTimers(
      () =>
        new AudinOperator({
          coreUrl: 'https://sbc.test', // http(s) is upgraded to ws(s) internally
          getToken,
          logger: quietLogger,
        }),
    );

    op.on('presenceStateChanged', (s) => updatePresenceUi(s));
    op.on('availabilityChanged', ({ accepted, rejected }) => {
      ui.availability.push({ accepted, rejected });
    });
    let operatorClickedAnswer = true;
    op.on('incomingCall', (call) => {
      showIncomingUi(call);
      if (operatorClickedAnswer) call.accept();
      else call.reject();
    });
    op.on('callStarted', (call) => showInCallUi(call));
    op.on('callEnded', (call) => clearCallUi(call)); // inspect call.endReason
    op.on('error', (e) => ui.errors.push([e.code, e.message]));

    const numbers = await op.listPhoneNumbers();
    assert.deepEqual(numbers, [
      { id: 'support', phoneNumber: '+15550100', displayName: 'Support line' },
      { id: 'sales', phoneNumber: '+15550101', displayName: null },
    ]);
    assert.equal(fetched[0].url, '/api/operator/token');
    assert.equal(fetched[1].init.headers.Authorization, `Bearer tok-1`);
    const mine = numbers[0];

    const online = op.goOnline([mine.id]);
    await flush();
    const ws = env.sockets[0];
    assert.equal(ws.url, 'wss://sbc.test/v1/operator');
    ws.open();
    assert.deepEqual(ws.sent[0], { type: 'hello', token: 'tok-3', protocol: 1 }, 'the object token is unwrapped');
    ws.push(ready());
    await flush();
    assert.deepEqual(ws.last().numbers, ['support']);
    ws.push({ type: 'availability', accepted: ['support'], rejected: [{ id: 'nope', code: 'FORBIDDEN_NUMBER' }], ref: ws.last().ref });
    assert.equal(await online, undefined, 'goOnline resolves with nothing');
    assert.deepEqual(ui.presence, ['connecting', 'online']);
    assert.deepEqual(ui.availability, [{ accepted: ['support'], rejected: ['nope'] }]);
    assert.equal(op.state, 'online');

    // Outbound: dial with caller ID.
    const dialing = op.dial('+39021234567', { callerId: mine.phoneNumber });
    await flush();
    const dial = ws.last();
    assert.deepEqual([dial.type, dial.to, dial.callerId], ['dial', '+39021234567', '+15550100']);
    ws.push({ type: 'answer', callId: 'c-9', sdp: 'v=0', ref: dial.ref });
    const call = await dialing;
    assert.ok(call instanceof OperatorCall);
    assert.equal(call.callSid, 'c-9');
    assert.equal(call.direction, 'outbound');
    assert.equal(call.state, 'connecting');
    assert.equal(op.currentCall, call, 'one wrapper per call');
    ws.push({ type: 'connected', callId: 'c-9' });
    await flush();
    assert.equal(call.state, 'active');
    assert.deepEqual(ui.inCall, [call]);
    call.mute(true);
    assert.equal(call.muted, true);
    assert.deepEqual([ws.last().type, ws.last().on], ['mute', true]);
    call.sendDtmf('5');
    assert.deepEqual([ws.last().type, ws.last().digits], ['dtmf', '5']);
    call.hangup();
    assert.equal(ws.last().type, 'hangup');
    ws.push({ type: 'ended', callId: 'c-9', reason: 'busy', code: 486 });
    await flush();
    assert.deepEqual(ui.cleared, [call]);
    assert.equal(call.state, 'ended');
    assert.equal(call.endReason, 'failed', '0.3.0 has no busy');
    assert.equal(op.currentCall, null);

    // Inbound: accept.
    ws.push({ type: 'incoming', callId: 'c-10', from: '+15550111', to: '+15550100', number: 'support' });
    await flush();
    const inbound = ui.incoming[0];
    assert.equal(inbound.callSid, 'c-10');
    assert.equal(inbound.from, '+15550111');
    assert.equal(inbound.to, '+15550100');
    const accept = ws.last();
    assert.deepEqual([accept.type, accept.callId], ['accept', 'c-10']);
    inbound.accept(); // not ringing any more: a no-op
    ws.push({ type: 'answer', callId: 'c-10', sdp: 'v=0', ref: accept.ref });
    ws.push({ type: 'connected', callId: 'c-10' });
    await flush();
    assert.equal(inbound.state, 'active');
    assert.deepEqual(ui.inCall, [call, inbound]);

    // goOffline during the call hangs it up first.
    const going = op.goOffline();
    await flush();
    assert.deepEqual([ws.last().type, ws.last().callId], ['hangup', 'c-10']);
    ws.push({ type: 'ended', callId: 'c-10', reason: 'hangup' });
    await going;
    assert.equal(inbound.endReason, 'hangup');
    assert.equal(ws.ofType('offline').length, 1);
    assert.equal(op.state, 'offline');

    // Inbound: reject.
    operatorClickedAnswer = false;
    const again = op.goOnline(['support']);
    await flush();
    const ws2 = env.sockets[1];
    ws2.open();
    ws2.push(ready());
    await flush();
    ws2.push({ type: 'availability', accepted: ['support'], rejected: [], ref: ws2.last().ref });
    await again;
    ws2.push({ type: 'incoming', callId: 'c-11', from: '+15550112', to: '+15550100', number: 'support' });
    await flush();
    assert.deepEqual([ws2.last().type, ws2.last().callId], ['reject', 'c-11']);
    ws2.push({ type: 'ended', callId: 'c-11', reason: 'rejected' });
    await flush();
    assert.equal(ui.cleared.at(-1).endReason, 'rejected');
    await op.goOffline();
    assert.deepEqual(ui.errors, []);
  });

  test("the call is heard: without the app's audioElement, the active call plays in an <audio> of compat's own", async () => {
    const fake = makeEnv();
    const inject = { WebSocket: fake.WebSocket, RTCPeerConnection: fake.RTCPeerConnection, mediaDevices: fake.mediaDevices, fetch: fake.fetch };
    const timers = { setTimeout: fake.clock.setTimeout, clearTimeout: fake.clock.clearTimeout, now: () => fake.clock.now, random: () => 0 };
    const op = new AudinOperator({ coreUrl: 'https://sbc.test', getToken: async () => 't', logger: quietLogger, ...inject, ...timers, Audio: fake.Audio });
    const { ws, call } = await connectedInbound(fake, op.native);
    const el = fake.audios.find((a) => a.srcObject === call.remoteStream);
    assert.ok(el, 'an <audio> plays the remote stream');
    assert.equal(el.plays, 1);
    ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
    await flush();
    assert.equal(el.srcObject, null);
    // The app's own element wins; no Audio (server-side rendering): none, and no error.
    const mine = new fake.Audio();
    assert.equal(new AudinOperator({ coreUrl: 'https://sbc.test', getToken: async () => 't', ...inject, ...timers, Audio: fake.Audio, audioElement: mine }).native._audioElement, mine);
    assert.equal(globalThis.Audio, undefined);
    assert.equal(new AudinOperator({ coreUrl: 'https://sbc.test', getToken: async () => 't', ...inject, ...timers }).native._audioElement, null);
  });

  test('listPhoneNumbers: a persistent 401 is UNAUTHORIZED (retried once), other failures REQUEST_FAILED', async () => {
    const op = withFakeTimers(() => new CompatOperator({ coreUrl: 'https://sbc.test', getToken: async () => 't', logger: quietLogger }));
    const errors = [];
    op.on('error', (e) => errors.push(e.code));
    fetched.length = 0;
    numbersStatus = 401;
    await assert.rejects(op.listPhoneNumbers(), { code: 'UNAUTHORIZED' });
    assert.equal(fetched.length, 2, 'one retry with a fresh token');
    numbersStatus = 503;
    await assert.rejects(op.listPhoneNumbers(), (err) => err.code === 'REQUEST_FAILED' && err.cause && err.cause.code === 'INTERNAL');
    globalThis.fetch = async () => {
      throw new TypeError('Failed to fetch');
    };
    await assert.rejects(op.listPhoneNumbers(), { code: 'REQUEST_FAILED' });
    assert.deepEqual(errors, ['UNAUTHORIZED', 'REQUEST_FAILED', 'REQUEST_FAILED']);
    numbersStatus = 200;
  });

  test('MIC_PERMISSION_DENIED reaches the error event; accept() never throws', async () => {
    installGlobals();
    const op = withFakeTimers(() => new AudinOperator({ coreUrl: 'http://sbc.test:8080/base/', getToken: async () => ({ token: 't' }), logger: quietLogger }));
    const errors = [];
    op.on('error', (e) => errors.push(e.code));
    const online = op.goOnline(['support']);
    await flush();
    const ws = env.sockets[0];
    assert.equal(ws.url, 'ws://sbc.test:8080/base/v1/operator');
    ws.open();
    ws.push(ready());
    await flush();
    ws.push({ type: 'availability', accepted: ['support'], rejected: [], ref: ws.last().ref });
    await online;
    env.mediaDevices.deny = 'NotAllowedError';
    let offered;
    op.on('incomingCall', (c) => (offered = c));
    ws.push({ type: 'incoming', callId: 'c-1', from: 'a', to: 'b', number: 'support' });
    assert.doesNotThrow(() => offered.accept());
    await flush();
    assert.deepEqual(errors, ['MIC_PERMISSION_DENIED']);
    assert.equal(offered.state, 'ringing');
    await op.goOffline();
  });

  test('operatorUrl and the defaults of 0.3.0', () => {
    assert.equal(operatorUrl('https://core.example.com'), 'wss://core.example.com/v1/operator');
    assert.equal(operatorUrl('http://localhost:8080/'), 'ws://localhost:8080/v1/operator');
    assert.equal(operatorUrl('wss://x.example/v1/operator'), 'wss://x.example/v1/operator');
    const op = new CompatOperator({ coreUrl: 'https://x.example', getToken: async () => 't', logger: quietLogger });
    assert.deepEqual(op.native._backoff, [1000, 2000, 5000, 10000, 30000]);
    assert.deepEqual(op.native._audio, { echoCancellation: true, noiseSuppression: true, autoGainControl: true });
    assert.throws(() => new CompatOperator({ getToken: async () => 't' }), TypeError);
  });
});
