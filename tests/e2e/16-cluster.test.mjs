// Scenario 16: two nodes of a cluster (a Redis, `[cluster]` on both). The carrier
// calls node A, where nobody is online; the operator's page is on node B. A forks
// the call to B (a signed INVITE over TCP), the page rings and answers, and the
// audio crosses both nodes both ways: the carrier's 1 kHz is heard in the page
// (carrier -> A -> B -> WebRTC), the page's 440 Hz at the carrier. The page hangs
// up; the carrier gets the BYE through A.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { Env, Proc, SBC_BIN, freePort, near, sbcToml, sleep } from './lib/harness.mjs';

const NUMBERS = [{ id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '30s' }] }];

const cluster = (node, redis) =>
  [
    '[cluster]',
    `node = "${node}"`,
    `redis_url = "redis://127.0.0.1:${redis}/0"`,
    'heartbeat = "200ms"',
    'lease = "600ms"',
    'redis_timeout = "100ms"',
    'allow = ["127.0.0.0/8"]',
  ].join('\n');

/** Redis, node B (the harness's sbc, Bob's page on it) and node A (the carrier's). */
async function twoNodes(t, name) {
  const redisPort = await freePort();
  // Node B: the page's node (the harness's own sbc).
  const env = await Env.start(name, {
    tcp: true,
    extra: cluster('b', redisPort),
    trunks: [{ name: 'carrier', peers: ['127.0.0.1:9'] }],
    numbers: NUMBERS,
  });
  t.after(() => env.stop());
  const redis = new Proc('redis', 'redis-server', ['--bind', '127.0.0.1', '--port', String(redisPort), '--save', '', '--appendonly', 'no'], {
    logDir: env.dir,
  });
  env.procs.unshift(redis); // stopped last
  await redis.waitLine(/Ready to accept connections/);

  // Node A: where the carrier calls; its admin listener shows the cluster.
  const [sipA, webrtcA, httpA, adminA] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const tomlA = sbcToml({
    sip: sipA,
    webrtc: webrtcA,
    http: httpA,
    rtpLo: env.ports.rtpLo + 200,
    tcp: true,
    extra: `${cluster('a', redisPort)}\n\n[admin]\nlisten = "127.0.0.1:${adminA}"`,
    trunks: [{ name: 'carrier', peers: ['127.0.0.1:9'] }],
    numbers: NUMBERS,
  });
  const fileA = path.join(env.dir, 'sbc-a.toml');
  fs.writeFileSync(fileA, tomlA);
  const a = new Proc('sbc-a', SBC_BIN, ['--config', fileA, '--drain', '1'], {
    logDir: env.dir,
    env: { RUST_LOG: 'info,sbc=debug,sip_bridge=debug', NO_COLOR: '1' },
  });
  env.procs.push(a);
  await a.waitLine(/HTTP\s/);

  const bob = await env.operator('Bob');
  await bob.goOnline();
  // A learns that B has an operator ready on `support` (B writes its record at
  // once on the change; A reads it at its next heartbeat).
  let view = null;
  for (let i = 0; i < 50; i++) {
    view = await fetch(`http://127.0.0.1:${adminA}/cluster`).then((r) => r.json()).catch(() => null);
    if (view?.nodes?.some((n) => n.node === 'b' && n.ready?.includes('support'))) break;
    await sleep(100);
  }
  assert.ok(view?.nodes?.some((n) => n.node === 'b' && n.ready?.includes('support')), `A's view: ${JSON.stringify(view)}`);
  return { env, a, adminA, sipA, bob };
}

test('a call to node A rings a page on node B; audio both ways across the nodes', { timeout: 120000 }, async (t) => {
  const { env, adminA, sipA, bob } = await twoNodes(t, '16-cluster');
  const carrier = await env.carrier('caller', ['call', '--sbc', `127.0.0.1:${sipA}`, '--to', '+15550100', '--from', '+15557770111', '--tone', '1000']);
  const inc = await bob.waitEvent((e) => e.type === 'incomingCall', { what: 'incomingCall on node B' });
  assert.equal(inc.from, '+15557770111', 'the caller is shown on the other node');
  await bob.shot('ringing-on-b');
  await bob.page.click('#answer');
  await bob.waitCallState('connected');
  const answered = await carrier.waitFor((e) => e.event === 'answered', { what: 'answered (200 OK through A)' });

  // Carrier -> A -> B -> page.
  const heard = await bob.hear(1000);
  assert.ok(heard.ok, `Bob should hear 1000 Hz across the nodes, heard ${JSON.stringify(heard.readings.slice(-5))}`);
  t.diagnostic(`page on B hears ${heard.freq} Hz at ${heard.db} dB`);
  // Page -> B -> A -> carrier.
  const tone = await carrier.hears(440, { afterMs: answered.t_ms + 1000 });
  t.diagnostic(`carrier on A hears ${tone.freq} Hz at ${tone.level_db} dB`);
  assert.ok(near(tone.freq, 440));
  await bob.shot('connected-across-nodes');

  await bob.page.click('#hangup');
  const bye = await carrier.waitFor((e) => e.event === 'ended', { what: 'ended' });
  assert.equal(bye.reason, 'remote_bye');
  await bob.waitCallState('ended');
  // Only one node transcodes (B, to Opus for the page): A relayed RTP between
  // the carrier and B untouched.
  const metrics = await fetch(`http://127.0.0.1:${adminA}/metrics`).then((r) => r.text());
  assert.match(metrics, /sbc_calls_media_total\{node="a",path="relayed"\} 1\n/);
  assert.doesNotMatch(metrics, /sbc_calls_media_total\{node="a",path="transcoded"\}/);
});

test('node A dies mid-call: node B carries the call on, audio back', { timeout: 120000 }, async (t) => {
  const { env, a, adminA, sipA, bob } = await twoNodes(t, '16-cluster-failover');
  const carrier = await env.carrier('caller', ['call', '--sbc', `127.0.0.1:${sipA}`, '--to', '+15550100', '--from', '+15557770111', '--tone', '1000']);
  await bob.waitEvent((e) => e.type === 'incomingCall', { what: 'incomingCall on node B' });
  await bob.page.click('#answer');
  await bob.waitCallState('connected');
  const answered = await carrier.waitFor((e) => e.event === 'answered', { what: 'answered (200 OK through A)' });
  await carrier.hears(440, { afterMs: answered.t_ms + 1000 });
  // A's anchor for the call is in Redis before A dies.
  let anchored = false;
  for (let i = 0; i < 50 && !anchored; i++) {
    const m = await fetch(`http://127.0.0.1:${adminA}/metrics`).then((r) => r.text());
    anchored = /sbc_calls_active\{node="a"\} 1/.test(m);
    await sleep(50);
  }
  assert.ok(anchored, 'the call is up on A');
  await sleep(300);

  // kill -9 of the call's owner.
  const killedAt = performance.now();
  a.child.kill('SIGKILL');
  // B sees A's lease lapse and its port closed, takes the caller's dialog over
  // and re-INVITEs the carrier to its own address.
  const re = await carrier.waitFor((e) => e.event === 'reinvite', { what: 're-INVITE from node B', timeout: 15000 });
  t.diagnostic(`carrier re-INVITEd ${Math.round(re.at - killedAt)} ms after kill -9 of A`);
  // Audio both ways again: the page's 440 Hz at the carrier, the carrier's
  // 1 kHz in the page.
  const back = await carrier.hears(440, { afterMs: re.t_ms });
  const gap = back.at - killedAt;
  t.diagnostic(`carrier hears the page again ${Math.round(gap)} ms after the kill (${back.freq} Hz)`);
  const heard = await bob.hear(1000);
  assert.ok(heard.ok, `Bob should hear 1000 Hz after the takeover, heard ${JSON.stringify(heard.readings.slice(-5))}`);
  assert.equal((await bob.callState()).state, 'connected', 'the page never saw the call end');
  // The page hangs up: the carrier's BYE now comes from B.
  await bob.page.click('#hangup');
  const bye = await carrier.waitFor((e) => e.event === 'ended', { what: 'ended' });
  assert.equal(bye.reason, 'remote_bye');
});
