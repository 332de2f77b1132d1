// Multi-party calls (protocol additions): participants, capabilities, adding, removing and
// holding parties, leave vs end, listCalls and monitoring as a supervisor.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { MonitorCall, OperatorError } from '../operator.js';
import { makeEnv, makeOperator, flush, goOnline, serveReady, connectedInbound, recordCall } from './fakes.mjs';

const ME = { id: 'p-1', role: 'agent', state: 'joined', kind: 'operator', operatorRef: 'alice', displayName: 'Alice', muted: false, held: false, joinedAt: 1795000012345 };
const CUSTOMER = { id: 'p-0', role: 'customer', state: 'joined', kind: 'sip', address: '+15550111', muted: false, held: false, joinedAt: 1795000010000 };
const AGENT_CAPS = ['add_participant', 'remove_participant', 'hold_participant', 'end_call'];
const PARTY_EVENTS = ['participantJoined', 'participantUpdated', 'participantLeft', 'participantsChanged', 'capabilitiesChanged', 'ended', 'modeChanged'];

/** A connected inbound call whose server sent the participants list. */
async function partyCall(env, op) {
  const { ws, call } = await connectedInbound(env, op);
  const rec = recordCall(call, PARTY_EVENTS);
  ws.push({ type: 'participants', callId: 'c-2', self: 'p-1', participants: [CUSTOMER, ME], capabilities: AGENT_CAPS, at: 1 });
  await flush();
  return { ws, call, ...rec };
}

describe('participants and capabilities', () => {
  test('the participants message sets the list, self and capabilities', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { call, seen } = await partyCall(env, op);
    assert.deepEqual(call.participants.map((p) => p.id), ['p-0', 'p-1']);
    assert.equal(call.self, 'p-1');
    assert.equal(call.selfParticipant.role, 'agent');
    assert.equal(call.participants[0].address, '+15550111');
    assert.equal(call.participants[0].monitor, null, 'absent fields are null');
    assert.deepEqual(call.capabilities, AGENT_CAPS);
    assert.ok(call.can('add_participant'));
    assert.ok(!call.can('switch_monitor'));
    assert.equal(seen('participantsChanged').length, 1);
    assert.deepEqual(seen('capabilitiesChanged'), [AGENT_CAPS]);
  });

  test('joined, updated and left events keep the list current', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call, seen } = await partyCall(env, op);
    const bob = { id: 'p-3', role: 'phone', state: 'joined', kind: 'sip', address: '+15550199', muted: false, held: false };
    ws.push({ type: 'participantJoined', callId: 'c-2', participant: bob, at: 2 });
    ws.push({ type: 'participantUpdated', callId: 'c-2', participant: { ...bob, held: true, state: 'held' }, at: 3 });
    await flush();
    assert.equal(seen('participantJoined')[0].id, 'p-3');
    assert.equal(seen('participantUpdated')[0].held, true);
    assert.equal(call.participants.find((p) => p.id === 'p-3').state, 'held');
    ws.push({ type: 'participantLeft', callId: 'c-2', participantId: 'p-3', reason: 'hangup', at: 4 });
    await flush();
    assert.deepEqual(call.participants.map((p) => p.id), ['p-0', 'p-1']);
    const left = seen('participantLeft')[0];
    assert.equal(left.participantId, 'p-3');
    assert.equal(left.reason, 'hangup');
    assert.equal(left.participant.held, true, 'the last known participant');
    assert.equal(seen('participantsChanged').length, 4);
  });

  test('malformed participant messages change nothing and throw nothing', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const { ws, call } = await partyCall(env, op);
    const before = call.participants;
    for (const bad of [
      { type: 'participantJoined', callId: 'c-2' },
      { type: 'participantUpdated', callId: 'c-2', participant: { role: 'phone' } },
      { type: 'participantLeft', callId: 'c-2', participantId: 42 },
      { type: 'participants', callId: 'c-2', participants: 'nope', capabilities: 'nope' },
      { type: 'participantJoined', callId: 'unknown', participant: ME },
      { type: 'calls', calls: 'x' },
    ]) {
      assert.doesNotThrow(() => ws.push(bad));
    }
    await flush();
    assert.equal(call.participants, before);
    assert.deepEqual(call.capabilities, AGENT_CAPS);
    assert.deepEqual(named('error'), []);
    assert.equal(call.state, 'connected');
  });

  test('incoming carries invitedBy; ended reason removed', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op, 'c-5', { invitedBy: 'bob' });
    assert.equal(call.invitedBy, 'bob');
    ws.push({ type: 'ended', callId: 'c-5', reason: 'removed' });
    await flush();
    assert.equal(call.endReason, 'removed');
  });

  test('ready.calls[] entries bring participants, self and capabilities back', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await connectedInbound(env, op);
    ws.serverClose(1006);
    await env.clock.advance(500);
    await serveReady(env, {
      calls: [{ callId: 'c-2', direction: 'inbound', state: 'connected', self: 'p-1', participants: [CUSTOMER, ME], capabilities: ['end_call'] }],
    });
    assert.deepEqual(call.participants.map((p) => p.id), ['p-0', 'p-1']);
    assert.deepEqual(call.capabilities, ['end_call']);
    assert.ok(call.can('end_call'));
  });
});

describe('adding, removing and holding parties', () => {
  test('addParticipant resolves with the participant when it joins', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await partyCall(env, op);
    const adding = call.addParticipant('+15550199', { timeout: 20 });
    await flush();
    const req = ws.last();
    assert.deepEqual(req, { type: 'addParticipant', callId: 'c-2', target: '+15550199', timeout: 20, ref: req.ref });
    const ringing = { id: 'p-4', role: 'phone', state: 'ringing', kind: 'sip', address: '+15550199' };
    ws.push({ type: 'participantUpdated', callId: 'c-2', participant: ringing, ref: req.ref, at: 5 });
    // Someone else joining in between is not our participant.
    ws.push({ type: 'participantJoined', callId: 'c-2', participant: { id: 'p-9', role: 'supervisor', state: 'joined' }, at: 6 });
    let settled = false;
    adding.then(() => (settled = true));
    await flush();
    assert.equal(settled, false);
    ws.push({ type: 'participantJoined', callId: 'c-2', participant: { ...ringing, state: 'joined', joinedAt: 7 }, at: 7 });
    const p = await adding;
    assert.equal(p.id, 'p-4');
    assert.equal(p.state, 'joined');
    assert.ok(call.participants.some((q) => q.id === 'p-4' && q.state === 'joined'));
  });

  test('a target that is busy: participantLeft rejects TARGET_BUSY, the error that follows is not a second one', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const { ws, call } = await partyCall(env, op);
    const adding = call.addParticipant('operator:bob');
    await flush();
    const req = ws.last();
    assert.equal(req.timeout, undefined, 'the server default');
    ws.push({ type: 'participantUpdated', callId: 'c-2', participant: { id: 'p-5', role: 'agent', state: 'ringing', operatorRef: 'bob' }, ref: req.ref });
    ws.push({ type: 'participantLeft', callId: 'c-2', participantId: 'p-5', reason: 'busy' });
    await assert.rejects(adding, (err) => err instanceof OperatorError && err.code === 'TARGET_BUSY' && err.participantId === 'p-5' && err.callId === 'c-2');
    ws.push({ type: 'error', code: 'TARGET_BUSY', message: 'bob is busy', callId: 'c-2', participantId: 'p-5', ref: req.ref });
    await flush();
    assert.deepEqual(named('error').map((e) => e.code), ['TARGET_BUSY']);
  });

  test('the error first (NO_ANSWER) rejects with its code; reasons map to codes', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const { ws, call } = await partyCall(env, op);
    const adding = call.addParticipant('+15550199');
    await flush();
    const req = ws.last();
    ws.push({ type: 'participantUpdated', callId: 'c-2', participant: { id: 'p-6', state: 'ringing' }, ref: req.ref });
    ws.push({ type: 'error', code: 'NO_ANSWER', message: 'no answer', callId: 'c-2', participantId: 'p-6', ref: req.ref });
    await assert.rejects(adding, { code: 'NO_ANSWER', participantId: 'p-6' });
    ws.push({ type: 'participantLeft', callId: 'c-2', participantId: 'p-6', reason: 'no_answer' });
    await flush();
    assert.deepEqual(named('error').map((e) => e.code), ['NO_ANSWER']);
    // failed / rejected / canceled are TARGET_FAILED
    const again = call.addParticipant('sip:x@example.com');
    await flush();
    ws.push({ type: 'participantUpdated', callId: 'c-2', participant: { id: 'p-7', state: 'ringing' }, ref: ws.last().ref });
    ws.push({ type: 'participantLeft', callId: 'c-2', participantId: 'p-7', reason: 'rejected' });
    await assert.rejects(again, { code: 'TARGET_FAILED' });
  });

  test('FORBIDDEN (no capability) rejects; not connected is BAD_REQUEST locally; the call ending rejects CALL_ENDED', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await partyCall(env, op);
    const adding = call.addParticipant('+15550199');
    await flush();
    ws.push({ type: 'error', code: 'FORBIDDEN', message: 'no add_participant', callId: 'c-2', ref: ws.last().ref });
    await assert.rejects(adding, { code: 'FORBIDDEN' });
    await assert.rejects(call.addParticipant(''), { code: 'BAD_REQUEST' });
    await assert.rejects(call.addParticipant('+1', { timeout: -1 }), { code: 'BAD_REQUEST' });
    const pending = call.addParticipant('+15550199');
    await flush();
    ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
    await assert.rejects(pending, { code: 'CALL_ENDED' });

    ws.push({ type: 'incoming', callId: 'c-8', from: 'a', to: 'b', number: 'support' });
    const ringing = op.calls.find((c) => c.callId === 'c-8');
    const sent = ws.sent.length;
    await assert.rejects(ringing.addParticipant('+15550199'), { code: 'BAD_REQUEST' });
    assert.equal(ws.sent.length, sent, 'nothing sent for a call that is not connected');
  });

  test('removeParticipant resolves when it left; holdParticipant with the updated participant', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await partyCall(env, op);
    const holding = call.holdParticipant('p-0', true);
    await flush();
    const hold = ws.last();
    assert.deepEqual(hold, { type: 'hold', callId: 'c-2', on: true, participantId: 'p-0', ref: hold.ref });
    ws.push({ type: 'participantUpdated', callId: 'c-2', participant: { ...CUSTOMER, held: true, state: 'held' }, ref: hold.ref });
    const held = await holding;
    assert.equal(held.held, true);

    const removing = call.removeParticipant('p-0');
    await flush();
    const rm = ws.last();
    assert.deepEqual(rm, { type: 'removeParticipant', callId: 'c-2', participantId: 'p-0', ref: rm.ref });
    ws.push({ type: 'participantLeft', callId: 'c-2', participantId: 'p-0', reason: 'removed' });
    await removing;
    assert.ok(!call.participants.some((p) => p.id === 'p-0'));

    const denied = call.removeParticipant('p-1');
    await flush();
    ws.push({ type: 'error', code: 'FORBIDDEN', message: 'no', callId: 'c-2', ref: ws.last().ref });
    await assert.rejects(denied, { code: 'FORBIDDEN' });
  });

  test('leave() sends leave and resolves at ended; end() sends end; a refused end rejects', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await partyCall(env, op);
    const ending = call.end();
    await flush();
    assert.equal(ws.last().type, 'end');
    ws.push({ type: 'error', code: 'FORBIDDEN', message: 'no end_call', callId: 'c-2', ref: ws.last().ref });
    await assert.rejects(ending, { code: 'FORBIDDEN' });
    assert.equal(call.state, 'connected');
    const leaving = call.leave();
    await flush();
    assert.deepEqual(ws.last(), { type: 'leave', callId: 'c-2', ref: ws.last().ref });
    ws.push({ type: 'ended', callId: 'c-2', reason: 'hangup' });
    await leaving;
    assert.equal(call.endReason, 'hangup');
    await call.leave(); // already ended: resolves
  });
});

describe('supervisor', () => {
  test('listCalls sends listCalls and resolves with the calls', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const ws = await goOnline(env, op);
    const listing = op.listCalls();
    await flush();
    const req = ws.last();
    assert.deepEqual(req, { type: 'listCalls', ref: req.ref });
    ws.push({
      type: 'calls',
      ref: req.ref,
      calls: [
        { callId: 'c-7', number: 'support', from: '+15550111', to: '+15550100', direction: 'inbound', startedAt: 1795000000000, participants: [CUSTOMER, { id: 'p-2', role: 'agent', operatorRef: 'bob' }] },
        { nope: true },
      ],
    });
    const calls = await listing;
    assert.equal(calls.length, 1);
    assert.equal(calls[0].callId, 'c-7');
    assert.deepEqual(calls[0].participants.map((p) => p.role), ['customer', 'agent']);
  });

  test('monitor: listen, then whisper; the handle is busy like a call', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    const monitoring = op.monitor('c-7', { mode: 'listen' });
    await flush();
    const req = ws.last();
    assert.deepEqual(req, { type: 'monitor', callId: 'c-7', mode: 'listen', sdp: 'v=0 offer-0', ref: req.ref });
    ws.push({ type: 'answer', callId: 'c-7', sdp: 'v=0 answer', ref: req.ref });
    const mon = await monitoring;
    assert.ok(mon instanceof MonitorCall);
    assert.equal(mon.direction, 'monitor');
    assert.equal(mon.mode, 'listen');
    assert.equal(op.currentCall, mon);
    const { seen } = recordCall(mon, PARTY_EVENTS);
    ws.push({ type: 'connected', callId: 'c-7' });
    const sup = { id: 'p-8', role: 'supervisor', state: 'joined', operatorRef: 'alice', monitor: 'listen' };
    ws.push({ type: 'participants', callId: 'c-7', self: 'p-8', participants: [CUSTOMER, sup], capabilities: ['switch_monitor'] });
    await flush();
    assert.deepEqual(named('callStarted'), [mon]);
    assert.ok(mon.can('switch_monitor'));
    await assert.rejects(op.dial('+15550199', { callerId: 'support' }), { code: 'BUSY' });

    const switching = mon.setMode('whisper', { participantId: 'p-2' });
    await flush();
    const mm = ws.last();
    assert.deepEqual(mm, { type: 'monitorMode', callId: 'c-7', mode: 'whisper', participantId: 'p-2', ref: mm.ref });
    ws.push({ type: 'participantUpdated', callId: 'c-7', participant: { ...sup, monitor: 'whisper' }, ref: mm.ref });
    await switching;
    assert.equal(mon.mode, 'whisper');
    assert.equal(mon.whisperTo, 'p-2');
    assert.deepEqual(seen('modeChanged'), [{ mode: 'whisper' }], 'once');
    assert.equal(env.pcs.length, 1, 'no new peer connection');
    // The server may switch us too (e.g. a barge by policy).
    ws.push({ type: 'participantUpdated', callId: 'c-7', participant: { ...sup, monitor: 'barge' } });
    await flush();
    assert.equal(mon.mode, 'barge');
    assert.deepEqual(seen('modeChanged').at(-1), { mode: 'barge' });
    await assert.rejects(mon.setMode('shout'), { code: 'BAD_REQUEST' });
    mon.hangup();
    assert.deepEqual(ws.last(), { type: 'hangup', callId: 'c-7', ref: ws.last().ref });
  });

  test('a refused monitor rejects, frees the operator and closes the media', async () => {
    const env = makeEnv();
    const { op, named } = makeOperator(env);
    const ws = await goOnline(env, op);
    await assert.rejects(op.monitor('c-7', { mode: 'spy' }), { code: 'BAD_REQUEST' });
    const monitoring = op.monitor('c-7');
    await flush();
    assert.equal(ws.last().mode, 'listen', 'listen by default');
    ws.push({ type: 'error', code: 'FORBIDDEN', message: 'no monitor right', ref: ws.last().ref });
    await assert.rejects(monitoring, { code: 'FORBIDDEN' });
    assert.equal(ws.ofType('hangup').length, 0, 'not in the call: nothing to hang up');
    assert.equal(op.currentCall, null);
    assert.ok(env.pcs[0].closed);
    assert.deepEqual(op.calls, []);
    assert.deepEqual(named('callEnded'), []);
    // An answer that cannot be applied: the server has us in the call, so we hang up.
    env.failRemoteDescription = true;
    const again = op.monitor('c-7');
    await flush();
    ws.push({ type: 'answer', callId: 'c-7', sdp: 'garbage', ref: ws.last().ref });
    await assert.rejects(again, { code: 'MEDIA_ERROR' });
    assert.deepEqual(ws.last(), { type: 'hangup', callId: 'c-7', ref: ws.last().ref });
    assert.equal(op.currentCall, null);
  });
});

describe('transfer', () => {
  test('blind: resolves when handed over, then the call ends with transferred', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await partyCall(env, op);
    const events = [];
    call.on('transfer', (t) => events.push(t.state));
    const moving = call.transfer('operator:bob', { timeout: 20 });
    await flush();
    const req = ws.last();
    assert.deepEqual(req, { type: 'transfer', callId: 'c-2', target: 'operator:bob', attended: false, timeout: 20, ref: req.ref });
    ws.push({ type: 'transfer', callId: 'c-2', state: 'ringing', target: 'operator:bob', participantId: 'p-4', ref: req.ref, at: 5 });
    let settled = false;
    moving.then(() => (settled = true));
    await flush();
    assert.equal(settled, false, 'ringing is not done');
    assert.equal(call.transferState.participantId, 'p-4');
    ws.push({ type: 'transfer', callId: 'c-2', state: 'completed', target: 'operator:bob', participantId: 'p-4', ref: req.ref, at: 6 });
    ws.push({ type: 'ended', callId: 'c-2', reason: 'transferred' });
    assert.equal(await moving, undefined);
    await flush();
    assert.deepEqual(events, ['ringing', 'completed']);
    assert.equal(call.endReason, 'transferred');
  });

  test('blind: a target that does not answer rejects NO_ANSWER and the call goes on', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await partyCall(env, op);
    const moving = call.transfer('+15550199');
    await flush();
    const ref = ws.last().ref;
    ws.push({ type: 'transfer', callId: 'c-2', state: 'ringing', target: '+15550199', participantId: 'p-4', ref });
    ws.push({ type: 'transfer', callId: 'c-2', state: 'failed', target: '+15550199', participantId: 'p-4', reason: 'no_answer', ref });
    await assert.rejects(moving, { code: 'NO_ANSWER', callId: 'c-2' });
    assert.equal(call.state, 'connected');
    assert.equal(call.transferState.reason, 'no_answer');
  });

  test('blind with a fallback and onHangup: sent as asked; the fallback ringing is a new target, then completed', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await partyCall(env, op);
    await assert.rejects(call.transfer('operator:bob', { onHangup: 'later' }), { code: 'BAD_REQUEST' });
    await assert.rejects(call.transfer('operator:bob', { attended: true, fallback: 'operators' }), { code: 'BAD_REQUEST' });
    const moving = call.transfer('operator:bob', { fallback: 'operators:support', onHangup: 'cancel' });
    await flush();
    const req = ws.last();
    assert.deepEqual(req, { type: 'transfer', callId: 'c-2', target: 'operator:bob', attended: false, onHangup: 'cancel', fallback: 'operators:support', ref: req.ref });
    ws.push({ type: 'transfer', callId: 'c-2', state: 'ringing', target: 'operator:bob', participantId: 'p-4', ref: req.ref });
    ws.push({ type: 'transfer', callId: 'c-2', state: 'ringing', target: 'operators:support', participantId: 'p-5', ref: req.ref });
    await flush();
    assert.equal(call.transferState.participantId, 'p-5');
    ws.push({ type: 'transfer', callId: 'c-2', state: 'completed', target: 'operators:support', participantId: 'p-5', ref: req.ref });
    assert.equal(await moving, undefined);
  });

  test('attended: resolves on consulting with a handle; complete, merge and cancel settle on the transfer end', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { ws, call } = await partyCall(env, op);
    const consult = async () => {
      const moving = call.transfer('operator:bob', { attended: true });
      await flush();
      const ref = ws.last().ref;
      assert.equal(ws.last().attended, true);
      ws.push({ type: 'transfer', callId: 'c-2', state: 'ringing', target: 'operator:bob', participantId: 'p-4', ref });
      ws.push({ type: 'transfer', callId: 'c-2', state: 'consulting', target: 'operator:bob', participantId: 'p-4', ref });
      const handle = await moving;
      assert.equal(handle.participantId, 'p-4');
      return { handle, ref };
    };
    for (const [action, type, state] of [
      ['merge', 'transferMerge', 'merged'],
      ['cancel', 'transferCancel', 'cancelled'],
      ['complete', 'transferComplete', 'completed'],
    ]) {
      const { handle, ref } = await consult();
      const done = handle[action]();
      await flush();
      assert.deepEqual(ws.last(), { type, callId: 'c-2', ref: ws.last().ref });
      ws.push({ type: 'transfer', callId: 'c-2', state, target: 'operator:bob', participantId: 'p-4', ref });
      assert.equal(await done, undefined, action);
    }
    // complete before the target answered: the server's error rejects it.
    const moving = call.transfer('operator:bob', { attended: true });
    await flush();
    const early = call.cancelTransfer();
    await flush();
    ws.push({ type: 'error', code: 'BAD_REQUEST', message: 'no transfer in progress', callId: 'c-2', ref: ws.last().ref });
    await assert.rejects(early, { code: 'BAD_REQUEST' });
    ws.push({ type: 'transfer', callId: 'c-2', state: 'cancelled', target: 'operator:bob', ref: ws.sent[ws.sent.length - 2].ref });
    await assert.rejects(moving, { code: 'TRANSFER_CANCELLED' });
  });

  test('bad arguments are BAD_REQUEST locally; the target sees transferredBy', async () => {
    const env = makeEnv();
    const { op } = makeOperator(env);
    const { call } = await partyCall(env, op);
    await assert.rejects(call.transfer(''), { code: 'BAD_REQUEST' });
    await assert.rejects(call.transfer('+1', { timeout: 0 }), { code: 'BAD_REQUEST' });
    const env2 = makeEnv();
    const { op: op2 } = makeOperator(env2);
    const other = await connectedInbound(env2, op2, 'c-9', { invitedBy: 'alice', transfer: 'attended' });
    assert.equal(other.call.invitedBy, 'alice');
    assert.equal(other.call.transferredBy, 'attended');
  });
});
