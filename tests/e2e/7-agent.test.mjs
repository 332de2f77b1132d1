// Scenario 7: an AI agent takes the call, then hands it to a browser operator.
// The number rings a `stream:` target (test-agent, native PCM16 24 kHz); the
// agent hears the caller's 1 kHz, the caller hears the agent's 600 Hz; the agent
// sends `transfer{target: "operators"}`; its leg ends cleanly (stop, close
// frame); Alice's page rings, she answers and talks with the caller (1 kHz in
// the page, the page's 440 Hz at the carrier); the caller hangs up.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Env, freePort, near } from './lib/harness.mjs';

test('agent answers, transfers to the operators, a browser takes the call', { timeout: 90000 }, async (t) => {
  const agentPort = await freePort();
  const url = `ws://127.0.0.1:${agentPort}/agent`;
  const env = await Env.start('7-agent', {
    trunks: [{ name: 'carrier', peers: ['127.0.0.1:9'] }],
    streams: [{ url, format: 'pcm16-24k' }],
    numbers: [{ id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: [`stream:${url}`], timeout: '30s' }] }],
  });
  t.after(() => env.stop());
  const agent = await env.agent('voice', ['--listen', `127.0.0.1:${agentPort}`, '--on-start', '{"cmd":"tone","hz":600,"ms":4000}']);

  const alice = await env.operator('Alice');
  await alice.goOnline();

  const caller = await env.carrier('caller', ['call', '--sbc', env.sbcSip, '--to', '+15550100', '--from', '+15557770111', '--tone', '1000']);
  const start = await agent.waitFor((e) => e.event === 'message' && e.kind === 'start', { what: 'start at the agent' });
  t.diagnostic(`start: ${JSON.stringify(start.msg)}`);
  const answered = await caller.waitFor((e) => e.event === 'answered', { what: 'caller answered (by the agent)' });

  // The caller's 1 kHz reaches the agent as 24 kHz PCM16; the agent's 600 Hz reaches the caller.
  const atAgent = await agent.waitFor((e) => e.event === 'tone' && e.rate === 24000 && near(e.freq, 1000) && e.level_db > -40, {
    what: '1 kHz at the agent',
  });
  const atCaller = await caller.hears(600, { afterMs: answered.t_ms });
  t.diagnostic(`agent hears ${atAgent.freq} Hz (${atAgent.level_db} dB) at ${atAgent.rate} Hz; caller hears ${atCaller.freq} Hz`);
  assert.equal((await alice.events()).filter((e) => e.type === 'incomingCall').length, 0, 'no operator rings while the agent talks');

  // The agent hands the caller to the operators.
  agent.send({ cmd: 'transfer', target: 'operators' });
  const incoming = await alice.waitEvent((e) => e.type === 'incomingCall', { what: 'incomingCall after the transfer' });
  assert.equal(incoming.from, '+15557770111');
  await agent.waitFor((e) => e.event === 'message' && e.kind === 'stop', { what: 'stop at the agent' });
  const closed = await agent.waitFor((e) => e.event === 'closed', { what: "the agent's socket closed" });
  assert.equal(closed.how, 'close_frame', `the agent leg ends cleanly, not ${closed.how}`);
  await alice.page.waitForSelector('#incoming:not([hidden])');
  await alice.shot('transferred-ringing');

  await alice.page.click('#answer');
  await alice.waitCallState('connected');
  const from = caller.events.length;
  await alice.shot('connected');
  const heard = await alice.hear(1000);
  assert.ok(heard.ok, `Alice should hear 1000 Hz, heard ${JSON.stringify(heard.readings.slice(-5))}`);
  const tone = await caller.hears(440, { from });
  t.diagnostic(`page hears ${heard.freq} Hz at ${heard.db} dB; caller hears ${tone.freq} Hz at ${tone.level_db} dB`);
  assert.equal(caller.all('answered').length, 1, 'the caller was answered once, by the agent');

  // The caller hangs up: the page's call ends.
  caller.send({ cmd: 'hangup' });
  await alice.waitCallState('ended');
  await alice.shot('ended');
});
