/**
 * react.js: React hooks over the operator SDK (`@sbc/operator-sdk/react`). React 18 or newer
 * is an optional peer dependency: only this entry point imports it.
 *
 * ```jsx
 * const { operator, state } = useOperator({ url, getToken });   // created once, disposed on unmount
 * const offer = useIncomingCall(operator);                        // a ringing inbound Call or null
 * const call = useCall(operator);                                 // the active call's snapshot or null
 * ```
 *
 * Every hook takes the Operator (or Call) it watches; without one they use the operator of the
 * nearest `<OperatorProvider operator={...}>`. They return fresh snapshots of plain values that
 * re-render on the SDK's events; act through the objects (`call.mute()`, `operator.dial()`).
 */

import { createContext, createElement, useContext, useEffect, useReducer, useRef } from 'react';
import { Operator } from './operator.js';

const OperatorContext = createContext(null);

/** Makes `operator` the default of every hook below it. */
export function OperatorProvider({ operator, children }) {
  return createElement(OperatorContext.Provider, { value: operator }, children);
}

const OPERATOR_EVENTS = ['presenceStateChanged', 'availabilityChanged', 'incomingCall', 'callStarted', 'callEnded', 'currentCallChanged', 'error'];
const CALL_EVENTS = ['accepted', 'ringing', 'connected', 'updated', 'muted', 'ended', 'remoteStream', 'reconnecting', 'reconnected', 'participantsChanged', 'capabilitiesChanged', 'modeChanged', 'recording'];
const QUALITY_EVENTS = ['sample', 'warning', 'warningCleared', 'ended'];
const DEVICE_EVENTS = ['devicesChanged', 'inputDeviceChanged', 'outputDeviceChanged'];
const PARTY_EVENTS = ['participantsChanged', 'capabilitiesChanged', 'ended'];

const isOperator = (x) => !!x && typeof x.goOnline === 'function' && typeof x.on === 'function';

/** Re-render when `target` emits one of `events` (and once after subscribing, not to miss one). */
function useEvents(target, events) {
  const [, bump] = useReducer((n) => n + 1, 0);
  const key = events.join(' ');
  useEffect(() => {
    if (!target || typeof target.on !== 'function') return undefined;
    const offs = key.split(' ').map((name) => target.on(name, () => bump()));
    bump();
    return () => {
      for (const off of offs) off();
    };
  }, [target, key]);
}

function useOperatorArg(op) {
  const fromContext = useContext(OperatorContext);
  return op ?? fromContext;
}

/**
 * The operator: pass options to create one for the component's lifetime (goes offline and is
 * disposed on unmount), an Operator you own, or nothing for the provider's. Returns
 * `{operator, state, availability, currentCall, incomingCalls, error}` (the last `error` event).
 */
export function useOperator(optionsOrOperator) {
  const fromContext = useContext(OperatorContext);
  const ref = useRef(null);
  if (!ref.current) {
    if (isOperator(optionsOrOperator)) ref.current = { operator: optionsOrOperator, owned: false };
    else if (optionsOrOperator) ref.current = { operator: new Operator(optionsOrOperator), owned: true, disposing: false };
    else ref.current = { operator: fromContext, owned: false };
  }
  const holder = ref.current;
  const operator = holder.operator;
  const errorRef = useRef(null);
  useEffect(() => {
    if (!operator) return undefined;
    return operator.on('error', (e) => (errorRef.current = e));
  }, [operator]);
  useEffect(() => {
    if (!holder.owned) return undefined;
    holder.disposing = false; // a StrictMode remount cancels the dispose of its unmount
    return () => {
      holder.disposing = true;
      queueMicrotask(() => {
        if (holder.disposing) operator.dispose().catch(() => {});
      });
    };
  }, [holder, operator]);
  useEvents(operator, OPERATOR_EVENTS);
  if (!operator) return { operator: null, state: 'offline', availability: { accepted: [], rejected: [] }, currentCall: null, incomingCalls: [], error: null };
  return {
    operator,
    state: operator.state,
    availability: operator.availability,
    currentCall: operator.currentCall,
    incomingCalls: operator.calls.filter((c) => c.direction === 'inbound' && c.state === 'ringing'),
    error: errorRef.current,
  };
}

/** The first inbound call that rings and is not answered yet, or null. */
export function useIncomingCall(operator) {
  const op = useOperatorArg(operator);
  useEvents(op, OPERATOR_EVENTS);
  const offer = op ? op.calls.find((c) => c.direction === 'inbound' && c.state === 'ringing') ?? null : null;
  useEvents(offer, ['accepted', 'ended']);
  return offer;
}

/**
 * A call's state as plain values: `{call, callId, state, direction, from, to, muted, held,
 * remoteHeld, earlyMedia, reconnecting, endReason, connectedAt, participants, capabilities,
 * recording}`,
 * or null. Given an Operator (or none: the provider's), the active call.
 */
export function useCall(callOrOperator) {
  const fromContext = useContext(OperatorContext);
  const arg = callOrOperator ?? fromContext;
  const op = isOperator(arg) ? arg : null;
  useEvents(op, ['currentCallChanged', 'callStarted', 'callEnded']);
  const call = op ? op.currentCall : arg ?? null;
  useEvents(call, CALL_EVENTS);
  if (!call) return null;
  return {
    call,
    callId: call.callId,
    state: call.state,
    direction: call.direction,
    from: call.from,
    to: call.to,
    muted: call.muted,
    held: call.held,
    remoteHeld: call.remoteHeld,
    earlyMedia: call.earlyMedia,
    reconnecting: call.reconnecting,
    endReason: call.endReason,
    connectedAt: call.connectedAt,
    participants: call.participants,
    capabilities: call.capabilities,
    recording: call.recording,
  };
}

/** A call's quality: `{sample, warnings, summary}` (the latest sample, the active warnings, the summary once ended). */
export function useCallQuality(call) {
  useEvents(call, QUALITY_EVENTS);
  if (!call) return { sample: null, warnings: [], summary: null };
  return { sample: call.quality, warnings: call.warnings, summary: call.qualitySummary };
}

/**
 * The audio devices and the choice: `{inputs, outputs, inputDeviceId, outputDeviceId,
 * setInputDevice, setOutputDevice, refresh, error}`. Lists them on mount and on every change.
 */
export function useDevices(operator) {
  const op = useOperatorArg(operator);
  const [lists, setLists] = useReducer((_, next) => next, { inputs: [], outputs: [], error: null });
  useEffect(() => {
    if (!op) return undefined;
    let live = true;
    const load = () =>
      op.listDevices().then(
        (d) => live && setLists({ inputs: d.inputs, outputs: d.outputs, error: null }),
        (err) => live && setLists({ inputs: [], outputs: [], error: err }),
      );
    load();
    const off = op.on('devicesChanged', (d) => setLists({ inputs: d.inputs, outputs: d.outputs, error: null }));
    return () => {
      live = false;
      off();
    };
  }, [op]);
  useEvents(op, DEVICE_EVENTS);
  return {
    inputs: lists.inputs,
    outputs: lists.outputs,
    error: lists.error,
    inputDeviceId: op ? op.inputDeviceId : null,
    outputDeviceId: op ? op.outputDeviceId : null,
    setInputDevice: (id) => (op ? op.setInputDevice(id) : Promise.resolve()),
    setOutputDevice: (id) => (op ? op.setOutputDevice(id) : Promise.resolve()),
    refresh: () => (op ? op.listDevices().then((d) => setLists({ inputs: d.inputs, outputs: d.outputs, error: null })) : Promise.resolve()),
  };
}

/** A call's parties: `{participants, self, capabilities, can}`. */
export function useParticipants(call) {
  useEvents(call, PARTY_EVENTS);
  if (!call) return { participants: [], self: null, capabilities: [], can: () => false };
  return { participants: call.participants, self: call.self, capabilities: call.capabilities, can: (action) => call.can(action) };
}
