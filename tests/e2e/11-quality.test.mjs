// Scenario 11: call quality under packet loss. The sbc advertises (media.webrtc_advertise) a
// UDP relay that the test runs in front of its WebRTC port (harness udpLossProxy), so the
// loss is on the SBC's side of the browser's media path: the relay drops a seeded 15 % of
// the SBC's RTP packets toward the browser (STUN, DTLS and RTCP pass). The SDK's quality
// samples (from getStats, every second) show the loss, `high-packet-loss` is raised within a
// few samples and cleared once the relay stops dropping, and the call's `ended` payload
// carries the summary (loss, MOS, every warning raised), which the SDK also sends to the
// server as `quality{callId, summary}`.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Env, freePort, sleep, udpLossProxy } from './lib/harness.mjs';

const LOSS = 0.15;

test('quality samples and warnings under loss injected at the SBC; ended carries the summary', { timeout: 120000 }, async (t) => {
  const [webrtcPort, relayPort] = [await freePort(), await freePort()];
  const env = await Env.start('11-quality', {
    demo: false,
    apps: 1,
    webrtcPort,
    webrtcAdvertise: `127.0.0.1:${relayPort}`,
    answerCarriers: { pstn: ['--tone', '600'] },
    trunks: [{ name: 'carrier', peers: ['pstn'] }],
    numbers: [{ id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '20s' }] }],
  });
  const relay = await udpLossProxy({ listen: { host: '127.0.0.1', port: relayPort }, target: { host: '127.0.0.1', port: webrtcPort }, seed: 20 });
  t.after(async () => {
    relay.close();
    await env.stop();
  });
  const pstn = env.carriers.pstn;
  const alice = await env.operator('Alice', { url: env.appUrl(env.apps[0], 'operator.html', { operator: 'alice' }), rawMic: false });
  await alice.page.click('#go-online');
  await alice.page.waitForSelector('#presence:text("online")', { timeout: 10000 });
  await alice.page.waitForSelector('#presence[data-available]', { timeout: 10000 }); // numbers taken: calls ring now

  const callId = await alice.page.evaluate(() => window.demo.operator.dial('+15557770001', { callerId: 'support' }).then((c) => c.callId));
  await pstn.waitFor((e) => e.event === 'answered', { what: 'answered' });
  await alice.waitCallState('connected');
  const heard = await alice.hear(600);
  assert.ok(heard.ok, `the page hears 600 Hz through the relay, heard ${JSON.stringify(heard.readings.slice(-5))}`);
  assert.ok(relay.stats.up > 0 && relay.stats.rtpDown > 0, `the media goes through the relay: ${JSON.stringify(relay.stats)}`);

  const callEvents = (type) => alice.page.evaluate(({ type, callId }) => window.app.callEvents.filter((e) => e.callId === callId && e.type === type), { type, callId });
  const waitCallEvent = async (pred, arg, what, timeout) => {
    const find = ({ src, arg, callId }) => window.app.callEvents.find((e) => e.callId === callId && new Function('e', 'arg', `return (${src})(e, arg)`)(e, arg));
    const q = { src: pred.toString(), arg, callId };
    try {
      await alice.page.waitForFunction(find, q, { timeout });
    } catch {
      throw new Error(`no ${what} within ${timeout} ms; samples: ${JSON.stringify((await callEvents('sample')).map((e) => e.p.packetLoss))}`);
    }
    return alice.page.evaluate(find, q);
  };

  // Clean first: a few samples without loss.
  await sleep(3000);
  const clean = (await callEvents('sample')).map((e) => e.p);
  assert.ok(clean.length >= 2, `samples every second: ${clean.length}`);
  assert.ok(
    clean.slice(1).every((s) => s.packetLoss === 0),
    JSON.stringify(clean.map((s) => s.packetLoss)),
  );
  const cleanMos = clean.at(-1).mos;
  t.diagnostic(`clean: rtt ${clean.at(-1).rtt} ms, jitter ${clean.at(-1).jitter} ms, loss ${clean.at(-1).packetLoss} %, MOS ${cleanMos}`);
  assert.ok(cleanMos > 4, `MOS on a clean path: ${cleanMos}`);

  // Loss on the SBC's side: the SBC's RTP toward the browser.
  const lossFrom = Math.round(await alice.page.evaluate(() => performance.now()));
  relay.setDrop(LOSS);
  const warning = await waitCallEvent((e) => e.type === 'warning' && e.p.name === 'high-packet-loss', null, 'high-packet-loss warning', 12000);
  t.diagnostic(`warning after ${warning.t - lossFrom} ms: ${JSON.stringify(warning.p)}`);
  assert.ok(warning.p.value > 1, JSON.stringify(warning.p));
  await sleep(2000);
  const lossy = (await callEvents('sample')).filter((e) => e.t > lossFrom + 1500).map((e) => e.p);
  const meanLoss = lossy.reduce((a, s) => a + s.packetLoss, 0) / lossy.length;
  t.diagnostic(
    `under ${LOSS * 100} % loss: per-second loss ${lossy.map((s) => s.packetLoss.toFixed(1)).join(', ')} %; MOS ${lossy.map((s) => s.mos.toFixed(2)).join(', ')}; relay dropped ${relay.stats.droppedDown} of ${relay.stats.rtpDown}`,
  );
  assert.ok(meanLoss > LOSS * 100 * 0.5 && meanLoss < LOSS * 100 * 1.6, `mean loss ${meanLoss} % for ${LOSS * 100} % dropped`);
  assert.ok(
    lossy.every((s) => s.mos < cleanMos),
    'the MOS estimate falls',
  );
  assert.ok((await alice.page.evaluate(() => window.demo.call.warnings)).includes('high-packet-loss'), 'call.warnings lists it');
  assert.equal(pstn.all('ended').length, 0, 'the call goes on');
  await alice.shot('under-loss');

  // The path heals: the warning is cleared.
  const healFrom = Math.round(await alice.page.evaluate(() => performance.now()));
  relay.setDrop(0);
  const cleared = await waitCallEvent((e) => e.type === 'warningCleared' && e.p.name === 'high-packet-loss', null, 'warningCleared', 12000);
  t.diagnostic(`cleared after ${cleared.t - healFrom} ms`);

  // Hang up: `ended` carries the summary, and the SDK reports it to the server.
  await alice.page.click('#hangup');
  await pstn.waitFor((e) => e.event === 'ended', { what: 'BYE' });
  const ended = await waitCallEvent((e) => e.type === 'ended', null, 'ended', 5000);
  const q = ended.p.quality;
  t.diagnostic(`ended: ${JSON.stringify(ended.p)}`);
  assert.ok(q, 'ended has a quality summary');
  assert.ok(q.samples >= 8, `samples: ${q.samples}`);
  assert.ok(q.packetsLost > 0 && q.packetLossPct > 1, JSON.stringify(q));
  // (constant-audio-input-level is raised too: the fake microphone is a perfectly steady tone.)
  assert.ok(q.warnings.includes('high-packet-loss'), JSON.stringify(q.warnings));
  assert.ok(q.mosMin < q.mosAvg && q.mosAvg <= 4.5, JSON.stringify(q));
  assert.deepEqual(await alice.page.evaluate(() => window.demo.call.qualitySummary), q, 'call.qualitySummary is the same');
  await sleep(300);
  const report = alice.wsSent.find((m) => m.type === 'quality');
  assert.ok(report, `a quality message to the server: ${JSON.stringify(alice.wsSent.map((m) => m.type))}`);
  assert.equal(report.callId, callId);
  assert.deepEqual(report.summary, q);
  await alice.shot('ended');
});
