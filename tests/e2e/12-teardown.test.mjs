// Scenario 12: teardown ends the call at the far end at once, not after the server's
// reconnect grace (30 s here). Alice, in an outbound call, clicks "Go offline"; Bob, in an
// inbound call, closes his tab (as a user does: beforeunload, pagehide, unload). Each time
// the carrier's BYE must come within a second of the click or the close, measured on one
// clock: the carrier's own timestamp of the BYE (`ended`, `t_ms`) mapped onto the test's
// clock (harness carrierToLocal), and the BYE's arrival at the test as a bound. The control:
// Carol's page opts into keepCallOnReload, and closing it leaves the call up (the grace).
// Dave's reload with keepCallOnReload keeps the call: his new page reconnects and offers
// a new peer connection within the grace.

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
  const page = (name, keep = false) =>
    env.operator(name, { url: env.appUrl(env.apps[0], 'operator.html', { operator: name.toLowerCase(), ...(keep ? { keep: '1' } : {}) }), rawMic: false });

  await t.test('goOffline() during a call', async () => {
    const pstn = env.carriers.pstn;
    const alice = await page('Alice');
    await alice.page.click('#go-online');
    await alice.page.waitForSelector('#presence:text("online")', { timeout: 10000 });
    await alice.page.waitForSelector('#presence[data-available]', { timeout: 10000 }); // numbers taken: calls ring now
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

  /** `name` online on the app page (`keep`: keepCallOnReload), in an accepted inbound call. */
  async function inboundCall(name, keep) {
    const op = await page(name, keep);
    await op.page.click('#go-online');
    await op.page.waitForSelector('#presence:text("online")', { timeout: 10000 });
    await op.page.waitForSelector('#presence[data-available]', { timeout: 10000 }); // numbers taken: calls ring now
    const caller = await env.carrier(`caller-${name}`, ['call', '--sbc', env.sbcSip, '--to', '+15550100', '--from', '+15557770111', '--tone', '1000']);
    const { callId } = await op.waitEvent((e) => e.type === 'incomingCall', { what: 'incomingCall' });
    await op.page.click('#accept');
    await op.waitCallState('connected');
    const answered = await caller.waitFor((e) => e.event === 'answered', { what: 'answered' });
    await caller.hears(440, { afterMs: answered.t_ms + 1000 });
    await op.shot('in-call');
    return { op, caller, callId };
  }

  await t.test('closing the tab during a call', async () => {
    const { op: bob, caller, callId } = await inboundCall('Bob', false);
    const closeAt = performance.now();
    await bob.page.close({ runBeforeUnload: true });
    const bye = await caller.waitFor((e) => e.event === 'ended', { what: 'BYE at the caller', timeout: 5000 });
    const byeAt = carrierToLocal(caller, bye);
    t.diagnostic(`BYE ${Math.round(byeAt - closeAt)} ms after the tab closed (arrived at the test ${Math.round(bye.at - closeAt)} ms after)`);
    assert.equal(bye.reason, 'remote_bye');
    assert.ok(byeAt - closeAt < 1000, `BYE ${byeAt - closeAt} ms after the close`);
    assert.ok(bye.at - closeAt < 1000, `BYE reported ${bye.at - closeAt} ms after the close`);
    // The page's own teardown ended it (its frames after the close are not observable): the
    // SDK sends `hangup` on pagehide and closes the peer connection right after, and the
    // server records whichever it handles first (`hangup`, or the WebRTC leg's DTLS
    // close_notify as `failed`). Never the socket's loss waiting out the grace: see next.
    const record = await cdr(callId);
    t.diagnostic(`CDR: ${record.match(/parties=.*/)[0]}`);
    assert.match(record, /:agent:operator:bob:[^,]*:(hangup|failed)(,|"|$)/);
  });

  await t.test('closing the tab with keepCallOnReload: the grace keeps the call', async () => {
    const { op: carol, caller } = await inboundCall('Carol', true);
    await carol.page.close({ runBeforeUnload: true });
    const bye = await caller.waitFor((e) => e.event === 'ended', { timeout: 3000 }).catch(() => null);
    assert.equal(bye, null, 'no BYE within 3 s: the server holds the call for the operator to come back');
    caller.send({ cmd: 'hangup' });
    await caller.waitFor((e) => e.event === 'ended', { what: 'the caller hung up' });
  });

  await t.test('reloading with keepCallOnReload keeps the call', async () => {
      const { op: dave, caller, callId } = await inboundCall('Dave', true);
      await dave.page.reload();
      const bye = await caller.waitFor((e) => e.event === 'ended', { timeout: 2000 }).catch(() => null);
      if (bye) {
        const record = await cdr(callId);
        t.diagnostic(`reload: BYE at once; CDR ${record.match(/parties=.*/)[0]}`);
      }
      assert.equal(bye, null, 'no BYE after the reload');
      await dave.page.click('#go-online');
      await dave.waitCallState('connected', 15000);
      await caller.hears(440, { from: caller.events.length, need: 3 });
      caller.send({ cmd: 'hangup' });
  });
});
