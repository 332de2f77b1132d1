/**
 * compat.js: the operator SDK 0.3.0 API (`AudinOperator`) over this SDK, so that code written
 * for it runs unchanged; only the import changes:
 *
 * ```js
 * import { AudinOperator } from '@sbc/operator-sdk/compat';
 * const op = new AudinOperator({ coreUrl: 'https://sbc.example.com', getToken });
 * ```
 *
 * What it maps (sbc/docs/sdk.md, "Compatibility"): `coreUrl` (http(s) upgraded to ws(s),
 * `/v1/operator` appended); `listPhoneNumbers()` -> `{id, phoneNumber, displayName}`;
 * `goOnline`/`goOffline` resolve with nothing; the `presenceStateChanged` payload is the state;
 * `availabilityChanged.rejected` is a list of ids; a call's `callSid`, its state `active`
 * (our `connected`) and its end reasons (`busy` and `media_failed` are `failed`, `removed` is
 * `remote_hangup`); `accept()`/`reject()` never throw; error code `REQUEST_FAILED` for a failed
 * HTTP request (our `HTTP_ERROR`, or any non-401 failure of listPhoneNumbers). Everything else
 * of this SDK stays reachable through `operator.native` and `call.native`.
 */

import { Operator, OperatorError } from './operator.js';

const DEFAULT_BACKOFF_MS = [1000, 2000, 5000, 10000, 30000];
const DEFAULT_AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const END_REASONS = new Set(['hangup', 'remote_hangup', 'taken_by_other', 'rejected', 'no_answer', 'failed', 'offline']);
const END_REASON_MAP = { busy: 'failed', media_failed: 'failed', removed: 'remote_hangup' };

/** The `/v1/operator` WebSocket URL of an SBC base URL (http(s) or ws(s), with or without a path). */
export function operatorUrl(coreUrl) {
  const u = new URL(String(coreUrl), globalThis.location ? globalThis.location.href : undefined);
  if (u.protocol === 'https:') u.protocol = 'wss:';
  else if (u.protocol === 'http:') u.protocol = 'ws:';
  if (!/\/v1\/operator\/?$/.test(u.pathname)) u.pathname = `${u.pathname.replace(/\/+$/, '')}/v1/operator`;
  u.search = '';
  u.hash = '';
  return u.href;
}

/** An error payload / thrown error with 0.3.0's codes. */
function compatError(err) {
  const code = err && err.code === 'HTTP_ERROR' ? 'REQUEST_FAILED' : (err && err.code) || 'REQUEST_FAILED';
  const out = new OperatorError(code, (err && err.message) || String(err));
  if (err && err.cause !== undefined) out.cause = err.cause;
  else if (err instanceof Error && code !== err.code) out.cause = err;
  if (err && err.callId) out.callId = err.callId;
  return out;
}

class Listeners {
  constructor(log) {
    this._map = new Map();
    this._log = log;
  }
  on(event, fn) {
    if (typeof fn !== 'function') throw new TypeError('listener must be a function');
    if (!this._map.has(event)) this._map.set(event, []);
    this._map.get(event).push(fn);
    return () => this.off(event, fn);
  }
  off(event, fn) {
    const list = this._map.get(event);
    if (!list) return;
    const i = list.findIndex((l) => l === fn || l._once === fn);
    if (i >= 0) list.splice(i, 1);
  }
  once(event, fn) {
    const wrapper = (...a) => {
      this.off(event, wrapper);
      fn(...a);
    };
    wrapper._once = fn;
    return this.on(event, wrapper);
  }
  emit(event, payload) {
    for (const fn of [...(this._map.get(event) || [])]) {
      try {
        fn(payload);
      } catch (err) {
        this._log(`listener for "${event}" threw:`, err);
      }
    }
  }
}

/** A call as 0.3.0 showed it: `callSid`, state `active`, its end reasons. */
export class OperatorCall {
  constructor(call) {
    /** This SDK's Call, for everything 0.3.0 did not have (hold, participants, quality, ...). */
    this.native = call;
  }
  get callSid() {
    return this.native.callId;
  }
  get direction() {
    return this.native.direction;
  }
  get from() {
    return this.native.from ?? undefined;
  }
  get to() {
    return this.native.to ?? undefined;
  }
  /** `ringing` | `connecting` | `active` | `ended` */
  get state() {
    return this.native.state === 'connected' ? 'active' : this.native.state;
  }
  /** `hangup` | `remote_hangup` | `taken_by_other` | `rejected` | `no_answer` | `failed` | `offline` */
  get endReason() {
    const r = this.native.endReason;
    if (r == null) return undefined;
    return END_REASONS.has(r) ? r : END_REASON_MAP[r] || 'failed';
  }
  get muted() {
    return this.native.muted;
  }
  /** Answer an inbound offer (no-op unless ringing); failures go to the `error` event. */
  accept() {
    if (this.native.state !== 'ringing' || this.native.direction !== 'inbound') return;
    this.native.accept().catch(() => {}); // reported through the operator's error event
  }
  /** Decline an inbound offer (no-op unless ringing). */
  reject() {
    if (this.native.state !== 'ringing' || this.native.direction !== 'inbound') return;
    this.native.reject();
  }
  mute(on) {
    this.native.mute(on);
  }
  sendDtmf(digit) {
    this.native.sendDtmf(digit);
  }
  hangup() {
    this.native.hangup();
  }
}

/** The operator SDK 0.3.0's `AudinOperator`, over this SDK's Operator. */
export class CompatOperator {
  /**
   * @param {object} config `coreUrl`, `getToken` (string or `{token, expiresAt}`),
   *   `heartbeatIntervalMs`, `reconnectBackoffMs`, `audioConstraints`, `logger`; any other
   *   option of this SDK's Operator is passed through.
   */
  constructor(config = {}) {
    const { coreUrl, url, getToken, reconnectBackoffMs, audioConstraints, logger, ...rest } = config;
    if (!coreUrl && !url) throw new TypeError('AudinOperator: coreUrl is required');
    const log = logger ?? console;
    this._listeners = new Listeners((...a) => typeof log.error === 'function' && log.error(...a));
    this._calls = new WeakMap();
    // 0.3.0 played the call's audio itself: its API has no remote stream to attach, so code
    // written for it never plays one. Unless the app passes its own `audioElement`, the
    // active call plays in an <audio> of ours (outside the document).
    const AudioCtor = rest.Audio ?? globalThis.Audio;
    const audioElement = rest.audioElement ?? (typeof AudioCtor === 'function' ? new AudioCtor() : undefined);
    /** This SDK's Operator, for everything 0.3.0 did not have (devices, quality, monitor, ...). */
    this.native = new Operator({
      ...rest,
      audioElement,
      url: url ?? operatorUrl(coreUrl),
      getToken,
      reconnectBackoffMs: reconnectBackoffMs ?? DEFAULT_BACKOFF_MS,
      audioConstraints: audioConstraints ?? DEFAULT_AUDIO,
      logger: log,
    });
    const op = this.native;
    op.on('presenceStateChanged', ({ state }) => this._listeners.emit('presenceStateChanged', state));
    op.on('availabilityChanged', ({ accepted, rejected }) =>
      this._listeners.emit('availabilityChanged', { accepted: [...accepted], rejected: rejected.map((r) => (typeof r === 'string' ? r : r.id)) }),
    );
    op.on('incomingCall', (call) => this._listeners.emit('incomingCall', this._wrap(call)));
    op.on('callStarted', (call) => this._listeners.emit('callStarted', this._wrap(call)));
    op.on('callEnded', (call) => this._listeners.emit('callEnded', this._wrap(call)));
    op.on('error', (e) => {
      const err = compatError(e);
      const payload = { code: err.code, message: err.message };
      if (err.cause !== undefined) payload.cause = err.cause;
      this._listeners.emit('error', payload);
    });
  }

  _wrap(call) {
    if (!call) return null;
    let c = this._calls.get(call);
    if (!c) this._calls.set(call, (c = new OperatorCall(call)));
    return c;
  }

  /** `offline` | `connecting` | `online` | `reconnecting` */
  get state() {
    return this.native.state;
  }

  get currentCall() {
    return this._wrap(this.native.currentCall);
  }

  on(event, fn) {
    return this._listeners.on(event, fn);
  }

  off(event, fn) {
    this._listeners.off(event, fn);
  }

  once(event, fn) {
    return this._listeners.once(event, fn);
  }

  /**
   * The numbers this operator may use: `[{id, phoneNumber, displayName}]`. A 401 is retried
   * once with a fresh token, then `UNAUTHORIZED`; any other failure is `REQUEST_FAILED`.
   */
  async listPhoneNumbers() {
    let numbers;
    try {
      numbers = await this.native._getNumbers();
    } catch (first) {
      let err = first;
      if (first.code === 'UNAUTHORIZED') {
        try {
          numbers = await this.native._getNumbers();
          err = null;
        } catch (second) {
          err = second;
        }
      }
      if (err) {
        const out = err.code === 'UNAUTHORIZED' ? compatError(err) : new OperatorError('REQUEST_FAILED', err.message, { cause: err });
        this._listeners.emit('error', { code: out.code, message: out.message, cause: out.cause });
        throw out;
      }
    }
    return numbers.map((n) => ({ id: n.id, phoneNumber: n.e164 ?? n.id, displayName: n.name ?? null }));
  }

  /** Connect and take calls on these number ids (call again to change the set). */
  async goOnline(phoneNumberIds) {
    try {
      await this.native.goOnline(phoneNumberIds);
    } catch (err) {
      throw compatError(err);
    }
  }

  /** Hang up any active call, drop availability, close presence (no more reconnects). */
  async goOffline() {
    await this.native.goOffline();
  }

  /** Place an outbound call with an owned caller ID (a `phoneNumber` or an `id`). */
  async dial(to, options = {}) {
    try {
      return this._wrap(await this.native.dial(to, options));
    } catch (err) {
      throw compatError(err);
    }
  }
}

/** 0.3.0's name, so that its code runs unchanged. */
export { CompatOperator as AudinOperator };
export { OperatorError };
export default CompatOperator;
