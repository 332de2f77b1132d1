// Scenario 12: teardown ends the call at the far end at once, not after the server's
// reconnect grace (30 s here). Alice, in an outbound call, clicks "Go offline"; Bob, in an
// inbound call, closes his tab (as a user does: beforeunload, pagehide, unload). Each time
// the carrier's BYE must come within a second of the click or the close, measured on one
// clock: the carrier's own timestamp of the BYE (`ended`, `t_ms`) mapped onto the test's
// clock (harness carrierToLocal), and the BYE's arrival at the test as a bound.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fs from 'node:fs';
import { Env, carrierToLocal, sleep } from './lib/harness.mjs';

test('goOffline() and closing the tab end the call at the far end within a second', { timeout: 90000 }, async (t) => {
  const env = await Env.start('12-teardown', {
    demo: false,
    apps: 1,
    grace: '30s',
    answerCarriers: { pstn: ['--tone', '600'] },
    trunks: [{ name: 'carrier', peers: ['pstn'] }],
    numbers: [{ id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '20s' }] }],
  });
  t.after(() => env.stop());
  // The sbc's CDR line of a call (`[log]` at info: one per call, with every party's end).
  const cdr = async (callId) => {
    const re = new RegExp(`cdr call=${callId} .*`);
    for (let i = 0; i < 20; i++) {
      const line = fs.readFileSync(env.sbc.logFile, 'utf8').match(re);
      if (line) return line[0];
      await sleep(100);
    }
    throw new Error(`no CDR for ${callId} in ${env.sbc.logFile}`);
  };
  const page = (name) => env.operator(name, { url: env.appUrl(env.apps[0], 'operator.html', { operator: name.toLowerCase() }), rawMic: false });

  await t.test('goOffline() during a call', async () => {
    const pstn = env.carriers.pstn;
    const alice = await page('Alice');
    await alice.page.click('#go-online');
    await alice.page.waitForSelector('#presence:text("online")', { timeout: 10000 });
    const callId = await alice.page.evaluate(() => window.demo.operator.dial('+15557770001', { callerId: 'support' }).then((c) => c.callId));
    const answered = await pstn.waitFor((e) => e.event === 'answered', { what: 'answered' });
    await alice.waitCallState('connected');
    await pstn.hears(440, { afterMs: answered.t_ms + 500 });
    await alice.shot('in-call');

    const clickAt = performance.now();
    await alice.page.click('#go-offline');
    const bye = await pstn.waitFor((e) => e.event === 'ended', { what: 'BYE at the carrier', timeout: 5000 });
    const byeAt = carrierToLocal(pstn, bye);
    t.diagnostic(`BYE ${Math.round(byeAt - clickAt)} ms after the click (arrived at the test ${Math.round(bye.at - clickAt)} ms after)`);
    assert.equal(bye.reason, 'remote_bye');
    assert.ok(byeAt - clickAt < 1000, `BYE ${byeAt - clickAt} ms after the click`);
    assert.ok(bye.at - clickAt < 1000, `BYE reported ${bye.at - clickAt} ms after the click`);
    await alice.page.waitForSelector('#presence:text("offline")', { timeout: 5000 });
    const call = await alice.callState();
    assert.deepEqual([call.state, call.endReason], ['ended', 'hangup']);
    // Hung up first (then the call's quality report), then offline.
    const order = alice.wsSent.filter((m) => m.at >= clickAt).map((m) => m.type);
    assert.deepEqual(
      order.filter((m) => m !== 'quality'),
      ['hangup', 'offline'],
      JSON.stringify(order),
    );
    assert.match(await cdr(callId), /:agent:operator:alice:[^,]*:hangup(,|"|$)/);
    await alice.shot('offline');
  });

  await t.test('closing the tab during a call', async () => {
    const bob = await page('Bob');
    await bob.page.click('#go-online');
    await bob.page.waitForSelector('#presence:text("online")', { timeout: 10000 });
    const caller = await env.carrier('caller', ['call', '--sbc', env.sbcSip, '--to', '+15550100', '--from', '+15557770111', '--tone', '1000']);
    const { callId } = await bob.waitEvent((e) => e.type === 'incomingCall', { what: 'incomingCall' });
    await bob.page.click('#accept');
    await bob.waitCallState('connected');
    const answered = await caller.waitFor((e) => e.event === 'answered', { what: 'answered' });
    await caller.hears(440, { afterMs: answered.t_ms + 1000 });
    await bob.shot('in-call');

    const closeAt = performance.now();
    await bob.page.close({ runBeforeUnload: true });
    const bye = await caller.waitFor((e) => e.event === 'ended', { what: 'BYE at the caller', timeout: 5000 });
    const byeAt = carrierToLocal(caller, bye);
    t.diagnostic(`BYE ${Math.round(byeAt - closeAt)} ms after the tab closed (arrived at the test ${Math.round(bye.at - closeAt)} ms after)`);
    assert.equal(bye.reason, 'remote_bye');
    assert.ok(byeAt - closeAt < 1000, `BYE ${byeAt - closeAt} ms after the close`);
    assert.ok(bye.at - closeAt < 1000, `BYE reported ${bye.at - closeAt} ms after the close`);
    // The page hung up as it went (its frames after the close are not observable; the
    // call's record says how the operator left): not a dropped socket waiting out the grace.
    assert.match(await cdr(callId), /:agent:operator:bob:[^,]*:hangup(,|"|$)/);
  });
});
