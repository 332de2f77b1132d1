// Call quality from getStats(): samples, the E-model MOS, warnings, the summary in `ended`
// and the `quality` message; preflight and isSupported.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Operator, estimateMos } from '../operator.js';
import { makeEnv, makeOperator, flush, connectedInbound, recordCall, audioStats } from './fakes.mjs';

const Q_EVENTS = ['sample', 'warning', 'warningCleared', 'ended'];

/** A connected call whose getStats() reads `net` (mutable), counting packets at 50 per second. */
async function measuredCall(opts = {}) {
  const env = makeEnv();
  const net = { received: 0, lost: 0, jitterMs: 5, rttMs: 40, inputLevel: null, lossPct: 0 };
  env.stats = () => audioStats(net);
  const made = makeOperator(env, opts);
  const { ws, call } = await connectedInbound(env, made.op);
  const rec = recordCall(call, Q_EVENTS);
  /** One second: 50 packets, lossPct of them lost. */
  const second = async () => {
    const lost = Math.round(50 * net.lossPct / 100);
    net.received += 50 - lost;
    net.lost += lost;
    await env.clock.advance(1000);
  };
  return { env, net, ws, call, second, ...made, ...rec };
}

describe('quality', () => {
  test('estimateMos follows the documented E-model simplification', () => {
    assert.equal(estimateMos({}), 4.4);
    assert.equal(estimateMos({ rtt: 100, jitter: 20, packetLoss: 1 }), 4.29);
    assert.equal(estimateMos({ rtt: 100, jitter: 20, packetLoss: 5 }), 3.95);
    assert.equal(estimateMos({ rtt: 600, jitter: 50 }), 3.31);
    assert.equal(estimateMos({ packetLoss: 100 }), 1);
    assert.ok(estimateMos({ rtt: 300 }) < estimateMos({ rtt: 100 }));
  });

  test('a sample about every second: RTT, jitter, loss over the second, MOS', async () => {
    const { net, call, second, seen } = await measuredCall();
    await second();
    net.lossPct = 10;
    net.jitterMs = 12;
    await second();
    const [a, b] = seen('sample');
    assert.equal(a.rtt, 40);
    assert.equal(a.jitter, 5);
    assert.equal(a.packetLoss, 0);
    assert.equal(a.mos, estimateMos({ rtt: 40, jitter: 5, packetLoss: 0 }));
    assert.equal(a.packetsReceived, 50);
    assert.equal(b.packetLoss, 10, 'loss of that second only');
    assert.equal(b.jitter, 12);
    assert.equal(b.packetsLost, 5);
    assert.equal(b.mos, estimateMos({ rtt: 40, jitter: 12, packetLoss: 10 }));
    assert.equal(call.quality, b);
  });

  test('RTT from the selected candidate pair when there is no remote-inbound-rtp', async () => {
    const { net, second, seen } = await measuredCall();
    net.rttMs = null;
    net.pairRttMs = 25;
    await second();
    assert.equal(seen('sample')[0].rtt, 25);
  });

  test('warnings are raised at 3 of the last 5 samples and cleared below', async () => {
    const { net, call, second, seen } = await measuredCall();
    net.lossPct = 4;
    await second();
    await second();
    assert.deepEqual(seen('warning'), []);
    await second();
    assert.deepEqual(seen('warning'), [{ name: 'high-packet-loss', value: 4, threshold: 1 }]);
    assert.deepEqual(call.warnings, ['high-packet-loss']);
    net.lossPct = 0;
    await second();
    await second();
    assert.deepEqual(seen('warningCleared'), [], '3 of the last 5 still lossy');
    await second();
    assert.deepEqual(seen('warningCleared'), [{ name: 'high-packet-loss' }]);
    assert.deepEqual(call.warnings, []);

    net.rttMs = 900;
    net.jitterMs = 80;
    for (let i = 0; i < 3; i++) await second();
    assert.deepEqual(seen('warning').slice(1).map((w) => w.name).sort(), ['high-jitter', 'high-rtt', 'low-mos']);
    const rtt = seen('warning').find((w) => w.name === 'high-rtt');
    assert.deepEqual(rtt, { name: 'high-rtt', value: 900, threshold: 400 });
  });

  test('a constant input level (dead microphone) warns, not while muted, and clears when it moves', async () => {
    const { net, call, second, seen } = await measuredCall();
    net.inputLevel = 0;
    for (let i = 0; i < 9; i++) await second();
    assert.deepEqual(seen('warning'), []);
    await second();
    assert.deepEqual(seen('warning').map((w) => w.name), ['constant-audio-input-level']);
    net.inputLevel = 0.2;
    await second();
    assert.deepEqual(seen('warningCleared'), [{ name: 'constant-audio-input-level' }]);

    call.mute(true);
    net.inputLevel = 0;
    for (let i = 0; i < 15; i++) await second();
    assert.equal(seen('warning').length, 1, 'muted: not judged');
  });

  test('thresholds are options', async () => {
    const { net, second, seen } = await measuredCall({ qualityThresholds: { rtt: 30, count: 1, window: 1 } });
    net.rttMs = 31;
    await second();
    assert.deepEqual(seen('warning').map((w) => w.name), ['high-rtt']);
  });

  test('the ended payload carries the summary, and quality{callId, summary} goes to the server', async () => {
    const { env, net, ws, call, second, seen, named } = await measuredCall();
    await second();
    net.lossPct = 10;
    net.rttMs = 60;
    await second();
    ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
    await flush();
    const { quality } = seen('ended')[0];
    assert.deepEqual(quality, {
      samples: 2,
      durationMs: 2000,
      rttAvgMs: 50,
      rttMaxMs: 60,
      jitterAvgMs: 5,
      jitterMaxMs: 5,
      packetsReceived: 95,
      packetsLost: 5,
      packetLossPct: 5,
      mosAvg: Math.round(((estimateMos({ rtt: 40, jitter: 5 }) + estimateMos({ rtt: 60, jitter: 5, packetLoss: 10 })) / 2) * 100) / 100,
      mosMin: estimateMos({ rtt: 60, jitter: 5, packetLoss: 10 }),
      warnings: [],
    });
    assert.equal(call.qualitySummary, quality);
    const q = ws.ofType('quality')[0];
    assert.deepEqual(q, { type: 'quality', callId: 'c-2', summary: quality, ref: q.ref });
    // A server that does not know the message answers an error: not the app's business.
    ws.push({ type: 'error', code: 'BAD_REQUEST', message: 'unknown type quality', ref: q.ref });
    assert.deepEqual(named('error'), []);
    const n = seen('sample').length;
    await env.clock.advance(5000);
    assert.equal(seen('sample').length, n, 'sampling stopped');
  });

  test('sendQualityReport: false sends nothing; statsIntervalMs: 0 samples nothing', async () => {
    const a = await measuredCall({ sendQualityReport: false });
    await a.second();
    a.ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
    await flush();
    assert.equal(a.ws.ofType('quality').length, 0);
    assert.equal(a.seen('ended')[0].quality.samples, 1);
    const b = await measuredCall({ statsIntervalMs: 0 });
    await b.second();
    assert.deepEqual(b.seen('sample'), []);
    b.ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
    await flush();
    assert.equal(b.seen('ended')[0].quality, null);
  });

  test('getStats failing or returning junk never throws out of the SDK', async () => {
    const { env, call, second, seen } = await measuredCall();
    env.stats = () => {
      throw new Error('boom');
    };
    await second();
    env.stats = () => [null, 7, { type: 'inbound-rtp', jitter: 'x' }];
    await second();
    assert.equal(seen('sample').length, 1);
    assert.equal(seen('sample')[0].jitter, null);
    assert.equal(call.state, 'connected');
  });
});

describe('preflight and support', () => {
  test('isSupported looks for WebSocket, RTCPeerConnection, getUserMedia and a secure context', () => {
    const env = makeEnv();
    const ok = { WebSocket: env.WebSocket, RTCPeerConnection: env.RTCPeerConnection, navigator: { mediaDevices: env.mediaDevices }, isSecureContext: true };
    assert.equal(Operator.isSupported(ok), true);
    assert.equal(Operator.isSupported({ ...ok, isSecureContext: false }), false);
    assert.equal(Operator.isSupported({ ...ok, RTCPeerConnection: undefined }), false);
    assert.equal(Operator.isSupported({ ...ok, navigator: {} }), false);
  });

  /** Operator options for preflight on `env`, and a server that answers what preflight sends. */
  function preflightEnv(serve) {
    const env = makeEnv();
    const net = { received: 0, lost: 0, jitterMs: 8, rttMs: 30 };
    env.stats = () => {
      net.received += 50;
      return audioStats(net);
    };
    const options = {
      url: 'wss://sbc.test/v1/operator',
      getToken: async () => 'tok',
      WebSocket: env.WebSocket,
      RTCPeerConnection: env.RTCPeerConnection,
      mediaDevices: env.mediaDevices,
      setTimeout: env.clock.setTimeout,
      clearTimeout: env.clock.clearTimeout,
      now: () => env.clock.now,
      AudioContext: null,
      window: env.window,
      logger: {},
    };
    return { env, options, serve };
  }

  test('preflight dials the echo target, measures, hangs up and reports', async () => {
    const { env, options } = preflightEnv();
    const samples = [];
    const running = Operator.preflight({ ...options, durationMs: 3000, onSample: (s) => samples.push(s) });
    await flush();
    const ws = env.sockets[0];
    ws.open();
    ws.push({ type: 'ready', sessionId: 's', numbers: [{ id: 'support', e164: '+15550100' }], heartbeatIntervalMs: 15000, calls: [] });
    await flush();
    const dial = ws.last();
    assert.deepEqual([dial.type, dial.to, dial.callerId], ['dial', '+15550001', 'support']);
    ws.push({ type: 'answer', callId: 'c-1', sdp: 'v=0', ref: dial.ref });
    ws.push({ type: 'connected', callId: 'c-1' });
    await env.clock.advance(2999);
    assert.equal(ws.ofType('hangup').length, 0);
    await env.clock.advance(1);
    assert.equal(ws.ofType('hangup').length, 1);
    ws.push({ type: 'ended', callId: 'c-1', reason: 'hangup' });
    await flush();
    const report = await running;
    assert.equal(report.ok, true);
    assert.deepEqual(report.connectivity, { signalling: true, media: true });
    assert.equal(report.target, '+15550001');
    assert.equal(report.samples, 3);
    assert.equal(samples.length, 3);
    assert.equal(report.rtt, 30);
    assert.equal(report.jitter, 8);
    assert.equal(report.packetLoss, 0);
    assert.equal(report.mos, estimateMos({ rtt: 30, jitter: 8 }));
    assert.equal(report.error, null);
    assert.equal(ws.closedWith.code, 1000, 'disposed');
  });

  test('a refused dial: signalling ok, media not, the error in the report', async () => {
    const { env, options } = preflightEnv();
    const running = Operator.preflight({ ...options, target: '+15559999', callerId: 'sales' });
    await flush();
    const ws = env.sockets[0];
    ws.open();
    ws.push({ type: 'ready', sessionId: 's', numbers: [], heartbeatIntervalMs: 15000, calls: [] });
    await flush();
    assert.deepEqual([ws.last().to, ws.last().callerId], ['+15559999', 'sales']);
    ws.push({ type: 'error', code: 'FORBIDDEN_NUMBER', message: 'no', ref: ws.last().ref });
    const report = await running;
    assert.equal(report.ok, false);
    assert.deepEqual(report.connectivity, { signalling: true, media: false });
    assert.deepEqual(report.error, { code: 'FORBIDDEN_NUMBER', message: 'no' });
  });

  test('no signalling: the report says so', async () => {
    const { env, options } = preflightEnv();
    const running = Operator.preflight(options);
    await flush();
    env.sockets[0].fail();
    const report = await running;
    assert.equal(report.ok, false);
    assert.deepEqual(report.connectivity, { signalling: false, media: false });
    assert.equal(report.error.code, 'WS_ERROR');
  });
});
