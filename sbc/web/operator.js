/**
 * operator.js: browser client for the SBC operator signalling protocol v1
 * (see sbc/docs/protocol.md; the full SDK reference is sbc/docs/sdk.md). An ES module with
 * no dependencies and no build step, served by the SBC at `/sdk/operator.js` and published
 * as the npm package `@sbc/operator-sdk` (types in operator.d.ts).
 *
 * ```js
 * import { Operator } from '/sdk/operator.js';
 * const op = new Operator({ url: 'wss://sbc.example.com/v1/operator', getToken: () => myBackend.token() });
 * op.on('incomingCall', (call) => call.accept());
 * op.on('callStarted', (call) => { audio.srcObject = call.remoteStream; });
 * await op.goOnline(['support']);
 * ```
 *
 * Presence states (`operator.state`): `offline` | `connecting` | `online` | `reconnecting`.
 *
 * Call states (`call.state`):
 * - inbound:  `ringing` (offered, not accepted) -> `connecting` (accept sent, waiting for
 *   the answer / `connected`) -> `connected` -> `ended`
 * - outbound and monitor: `connecting` (request sent, answer applied) -> `ringing` (far end
 *   rings; outbound only) -> `connected` -> `ended`
 *
 * Error codes (`error.code`, and the `error` event's `code`): the server's codes
 * `UNAUTHORIZED`, `FORBIDDEN_NUMBER`, `FORBIDDEN` (a capability is missing), `BUSY`,
 * `TARGET_BUSY`, `NO_ANSWER`, `TARGET_FAILED` (an added participant did not join),
 * `BAD_REQUEST`, `RATE_LIMITED`, `INTERNAL`, and the client's own: `MIC_PERMISSION_DENIED`,
 * `MIC_UNAVAILABLE` (no microphone or no getUserMedia), `WS_ERROR` (socket could not be
 * opened, or the connection was lost while a request waited), `REPLACED` (closed 4009: this
 * operator connected elsewhere), `PROTOCOL_ERROR` (an unreadable server frame), `MEDIA_ERROR`
 * (WebRTC failed), `HTTP_ERROR` (an HTTP request could not be made), `DEVICE_ERROR` (an audio
 * device could not be used), `NOT_SUPPORTED` (the browser lacks the feature). Closes 4001, 4009
 * and 1002 (protocol version refused) stop reconnecting; any other unexpected close reconnects
 * with backoff. Promises about a call reject with `CALL_ENDED` (not emitted as an `error`
 * event) when the call ends first.
 *
 * Every error is emitted once through the `error` event; methods returning a promise also
 * reject with it (an `OperatorError`, whose `code` is the same).
 */

/** The wire protocol this client speaks (sent in `hello`). */
export const PROTOCOL_VERSION = 1;
/** The SDK's version; its major is the protocol version (package.json says the same). */
export const VERSION = '1.0.0';
const DEFAULT_ECHO_TARGET = '+15550001';
const MONITOR_MODES = ['listen', 'whisper', 'barge'];
const RECORD_CHANNELS = ['dual', 'mono'];
const PAUSE_BEHAVIORS = ['silence', 'skip'];
const RECORDING_STATUSES = ['in-progress', 'paused', 'stopped'];
const MAX_INSIGHTS = 50;
const DEFAULT_BACKOFF_MS = [500, 1000, 2000, 5000, 10000];
const DEFAULT_HEARTBEAT_MS = 15000;
const DEFAULT_MISSED_HEARTBEATS = 2;
const CLOSE_NORMAL = 1000;
const CLOSE_PROTOCOL = 1002;
const CLOSE_UNAUTHORIZED = 4001;
const CLOSE_HEARTBEAT = 4008;
const CLOSE_REPLACED = 4009;
const CLOSE_CONNECT_TIMEOUT = 4000;
const WS_OPEN = 1;
const DTMF_RE = /^[0-9*#A-D,]{1,32}$/;
const FIRE_AND_FORGET_REFS = 200;

const DEFAULT_LOGGER = { debug() {}, info() {}, warn: (...a) => console.warn(...a), error: (...a) => console.error(...a) };

/** An error with a stable `code` (see the module comment), and `callId` when about a call. */
export class OperatorError extends Error {
  constructor(code, message, extra) {
    super(message || code);
    this.name = 'OperatorError';
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}

/** Minimal event emitter: `on` returns an unsubscribe function. */
class Emitter {
  constructor(log) {
    this._listeners = new Map();
    this._emitterLog = log;
  }

  /** Subscribe; returns a function that unsubscribes. */
  on(event, fn) {
    if (typeof fn !== 'function') throw new TypeError('listener must be a function');
    let list = this._listeners.get(event);
    if (!list) this._listeners.set(event, (list = []));
    list.push(fn);
    return () => this.off(event, fn);
  }

  /** Unsubscribe a listener added with `on` or `once`. */
  off(event, fn) {
    const list = this._listeners.get(event);
    if (!list) return;
    const i = list.findIndex((l) => l === fn || l._once === fn);
    if (i >= 0) list.splice(i, 1);
  }

  /** Subscribe for the next emission only; returns an unsubscribe function. */
  once(event, fn) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      fn(...args);
    };
    wrapper._once = fn;
    return this.on(event, wrapper);
  }

  _emit(event, ...args) {
    const list = this._listeners.get(event);
    if (!list || list.length === 0) return false;
    for (const fn of [...list]) {
      try {
        fn(...args);
      } catch (err) {
        this._emitterLog('error', `listener for "${event}" threw:`, err);
      }
    }
    return true;
  }
}

/**
 * One call as this operator sees it. Obtained from the `incomingCall` event, from
 * `operator.dial()`, `operator.monitor()` or `operator.currentCall`.
 *
 * Events (`call.on(...)`): `accepted` (our accept's answer is applied), `ringing`
 * ({earlyMedia}), `connected`, `updated` ({muted, held, remoteHeld}), `dtmf` ({digit}),
 * `remoteStream` (MediaStream; also after a reoffer), `reconnecting` ({reason}) and
 * `reconnected` (the media path), `muted` ({muted}: our own mute, at once), `sample` (a quality sample, about every second),
 * `warning` ({name, value, threshold}) and `warningCleared` ({name}), `audioLevel`
 * ({input, output}, about 10 a second), `participantJoined` (Participant),
 * `participantUpdated` (Participant), `participantLeft` ({participantId, participant, reason}),
 * `participantsChanged` (Participant[]), `capabilitiesChanged` (string[]),
 * `transfer` ({state, target, participantId, reason, code}), `recording` ({id, status}:
 * the call's recording started, paused, resumed or stopped, whoever asked), `insight`
 * (insight, {forkId, at}: what a live media fork's consumer said about the call),
 * `ended` ({reason, code, message, quality}).
 */
export class Call extends Emitter {
  constructor(op, init) {
    super((level, ...a) => op._log(level, ...a));
    this._op = op;
    /** @type {string|null} server call id (null only while a dial awaits its answer) */
    this.callId = init.callId ?? null;
    /** @type {'inbound'|'outbound'|'monitor'} */
    this.direction = init.direction;
    this.from = init.from ?? null;
    this.to = init.to ?? null;
    /** number id the inbound call came in on */
    this.number = init.number ?? null;
    this.callerName = init.callerName ?? null;
    /** operatorRef of the operator who added us to a live call (multi-party), else null */
    this.invitedBy = init.invitedBy ?? null;
    /** @type {'blind'|'attended'|null} `invitedBy` transfers this call to us */
    this.transferredBy = init.transfer === 'blind' || init.transfer === 'attended' ? init.transfer : null;
    /** the last state of a transfer we started ({state, target, participantId, reason, code}), else null */
    this.transferState = null;
    /** @type {'ringing'|'connecting'|'connected'|'ended'} */
    this.state = init.state;
    this.endReason = null;
    this.endCode = null;
    this.endMessage = null;
    /** the local microphone is disabled (local truth, also sent to the server) */
    this.muted = false;
    /** we put the call on hold (from the server's `callUpdated`) */
    this.held = false;
    /** the far end put us on hold */
    this.remoteHeld = false;
    /** outbound: the far end's own early media (183) is playing */
    this.earlyMedia = false;
    /** the media path is down and being recovered (`reconnecting` / `reconnected` events) */
    this.reconnecting = false;
    /** @type {MediaStream|null} the far end's audio: attach it to an <audio> element */
    this.remoteStream = null;
    /** @type {MediaStream|null} the microphone stream */
    this.localStream = null;
    this.connectedAt = null;
    this.endedAt = null;
    /** @type {object[]} the call's parties (multi-party servers; empty before the first list) */
    this.participants = [];
    /** @type {string|null} my participant id in `participants` */
    this.self = null;
    /** @type {string[]} what I may do in this call (`add_participant`, `end_call`, `record`, ...) */
    this.capabilities = [];
    /** @type {{id: string, status: 'in-progress'|'paused'}|null} the call's recording (null: none, or stopped) */
    this.recording = null;
    /** @type {object[]} the last 50 insights of the call's live media forks, oldest first */
    this.insights = [];
    /** @type {object|null} the latest quality sample (see the `sample` event) */
    this.quality = null;
    /** @type {string[]} quality warnings raised and not cleared */
    this.warnings = [];
    /** @type {object|null} the quality summary, set when the call ends */
    this.qualitySummary = null;
    this._pc = null;
    this._remoteApplied = false;
    this._chain = Promise.resolve();
    this._monitor = null; // QualityMonitor while media flows
    this._meter = null; // LevelMeter while media flows
    this._recovery = null; // {timer, reoffered} while the media path is recovered
  }

  /** The RTCPeerConnection carrying this call's media (null before the offer / after the end). */
  get peerConnection() {
    return this._pc;
  }

  /** My own entry in `participants`, or null. */
  get selfParticipant() {
    return this.participants.find((p) => p.id === this.self) ?? null;
  }

  /** Whether my capabilities in this call include `action` (e.g. `add_participant`). */
  can(action) {
    return this.capabilities.includes(action);
  }

  /** Answer an inbound ringing call. Resolves with the call once the SDP answer is applied. */
  async accept() {
    const op = this._op;
    if (this.direction !== 'inbound' || this.state !== 'ringing') {
      throw op._report(new OperatorError('BAD_REQUEST', `cannot accept a call in state ${this.state}`), this.callId);
    }
    if (op._current && op._current !== this) {
      throw op._report(new OperatorError('BUSY', 'another call is active'), this.callId);
    }
    this.state = 'connecting';
    op._setCurrent(this);
    op._updateRingtone();
    op._warmAudio();
    try {
      const { pc, stream, sdp } = await op._prepareOffer(this, false);
      if (this.state === 'ended') {
        closePc(pc);
        stopStream(stream);
        throw callEndedError(this);
      }
      this._pc = pc;
      this.localStream = stream;
      await op._request({ type: 'accept', callId: this.callId, sdp }, { call: this, pc });
      return this;
    } catch (err) {
      if (this.state !== 'ended') {
        this._closeMedia();
        this.state = 'ringing';
        if (op._current === this) op._setCurrent(null);
        op._updateRingtone();
      }
      throw op._report(err, this.callId);
    }
  }

  /** Decline an inbound ringing call (the server answers with `ended{reason: rejected}`). */
  reject() {
    if (this.state === 'ended') return;
    this._op._sendCallMsg(this, { type: 'reject', callId: this.callId });
  }

  /** Mute (true) or unmute (false) the microphone: disables the local track and tells the server. */
  mute(on = true) {
    if (this.state === 'ended') return;
    const changed = this.muted !== !!on;
    this.muted = !!on;
    this._applyMute();
    if (changed) this._emit('muted', { muted: this.muted });
    if (this._monitor) this._monitor.resetInputLevel();
    if (this.state === 'connected') this._op._sendCallMsg(this, { type: 'mute', callId: this.callId, on: this.muted });
  }

  /** Put the call on hold (true) or resume it (false); `held` follows the server's `callUpdated`. */
  hold(on = true) {
    if (this.state === 'ended') return;
    this._op._sendCallMsg(this, { type: 'hold', callId: this.callId, on: !!on });
  }

  /**
   * Send DTMF digits (`0-9 * # A-D`, `,` = 500 ms pause, up to 32). The SBC sends them to the
   * far end as RFC 4733 events.
   */
  sendDtmf(digits) {
    const d = String(digits ?? '').toUpperCase();
    if (!DTMF_RE.test(d)) {
      throw this._op._report(new OperatorError('BAD_REQUEST', `invalid DTMF digits "${digits}"`), this.callId);
    }
    if (this.state === 'ended') return;
    this._op._sendCallMsg(this, { type: 'dtmf', callId: this.callId, digits: d });
  }

  /** Hang up (cancels an outbound call that rings; declines an inbound one that rings). */
  hangup() {
    if (this.state === 'ended') return;
    if (this.direction === 'inbound' && this.state === 'ringing') return this.reject();
    const op = this._op;
    if (!op._sendMsg({ type: 'hangup', callId: this.callId, ref: op._nextRef() })) {
      // The socket is down: end here, and hang up for real if the call is resumed.
      op._hangupOnResume.add(this.callId);
      this._end('hangup');
    }
  }

  /**
   * Leave a multi-party call: it goes on for the others (`hangup` means the same, and in a
   * two-party call ends it). Resolves when the call has ended for us.
   */
  leave() {
    return this._requestUntilEnded('leave');
  }

  /** End the call for everyone (needs the `end_call` capability). Resolves when it has ended. */
  end() {
    return this._requestUntilEnded('end');
  }

  /**
   * Add a party to this call: `operator:REF`, `operators`, `+E164`, `pstn:+E164[@trunk]`,
   * `sip:URI` or `stream:wss://...`. `timeout` in seconds (server default 30). Resolves with
   * the participant once it joined; rejects with `TARGET_BUSY`, `NO_ANSWER`, `TARGET_FAILED`
   * (it did not join), `FORBIDDEN` (no `add_participant` capability), `BAD_REQUEST`, ...
   */
  async addParticipant(target, { timeout } = {}) {
    const op = this._op;
    try {
      if (!target || typeof target !== 'string') throw new OperatorError('BAD_REQUEST', 'addParticipant(target): target is required');
      if (timeout !== undefined && !(Number.isFinite(timeout) && timeout > 0)) {
        throw new OperatorError('BAD_REQUEST', 'addParticipant: timeout must be a positive number of seconds');
      }
      this._assertLive('addParticipant');
      const msg = { type: 'addParticipant', callId: this.callId, target };
      if (timeout !== undefined) msg.timeout = timeout;
      return await op._request(msg, { call: this, participantId: null });
    } catch (err) {
      throw op._report(err, this.callId);
    }
  }

  /**
   * Transfer this call to `target` (the forms `addParticipant` takes; needs
   * `add_participant`). Blind (default): you are parked while the target rings and the
   * others hear ringback; resolves when it answered and the call is handed over (this call
   * then ends with reason `transferred`); rejects with `TARGET_BUSY`, `NO_ANSWER` or
   * `TARGET_FAILED` when it did not (you are back in the call), `TRANSFER_CANCELLED` after
   * `cancelTransfer()`. Attended (`{ attended: true }`): the others wait on hold; resolves once
   * the target answered, with a handle whose `complete()` hands them over and leaves,
   * `merge()` keeps all of you together and `cancel()` brings them back. Progress comes as
   * `transfer` events ({state, target, participantId, reason, code}).
   */
  async transfer(target, { attended = false, timeout, onHangup, fallback } = {}) {
    const op = this._op;
    try {
      if (!target || typeof target !== 'string') throw new OperatorError('BAD_REQUEST', 'transfer(target): target is required');
      if (timeout !== undefined && !(Number.isFinite(timeout) && timeout > 0)) {
        throw new OperatorError('BAD_REQUEST', 'transfer: timeout must be a positive number of seconds');
      }
      if (onHangup !== undefined && onHangup !== 'complete' && onHangup !== 'cancel') {
        throw new OperatorError('BAD_REQUEST', "transfer: onHangup must be 'complete' or 'cancel'");
      }
      if (fallback !== undefined && (typeof fallback !== 'string' || !fallback || attended)) {
        throw new OperatorError('BAD_REQUEST', 'transfer: fallback is a target, for blind transfers');
      }
      this._assertLive('transfer');
      const msg = { type: 'transfer', callId: this.callId, target, attended: !!attended };
      if (timeout !== undefined) msg.timeout = timeout;
      if (onHangup !== undefined) msg.onHangup = onHangup;
      if (fallback !== undefined) msg.fallback = fallback;
      await op._request(msg, { call: this, attended: !!attended });
      if (!attended) return undefined;
      const action = (type) => this._transferAction(type);
      return {
        participantId: this.transferState ? this.transferState.participantId : null,
        complete: () => action('transferComplete'),
        merge: () => action('transferMerge'),
        cancel: () => action('transferCancel'),
      };
    } catch (err) {
      throw op._report(err, this.callId);
    }
  }

  /** Stops a transfer in progress (ringing or consulting): the others come back. */
  cancelTransfer() {
    return this._transferAction('transferCancel');
  }

  /** `transferComplete`, `transferMerge`, `transferCancel`: resolves when the transfer ended so. */
  async _transferAction(type) {
    const op = this._op;
    try {
      this._assertLive(type);
      await op._request({ type, callId: this.callId }, { call: this, transferAction: true });
    } catch (err) {
      throw op._report(err, this.callId);
    }
  }

  /** Remove a participant (needs `remove_participant`). Resolves when it has left. */
  async removeParticipant(participantId) {
    const op = this._op;
    try {
      if (!participantId || typeof participantId !== 'string') throw new OperatorError('BAD_REQUEST', 'removeParticipant(id): id is required');
      this._assertLive('removeParticipant');
      await op._request({ type: 'removeParticipant', callId: this.callId, participantId }, { call: this, participantId });
    } catch (err) {
      throw op._report(err, this.callId);
    }
  }

  /** Hold (true) or resume (false) another participant (needs `hold_participant`). Resolves with it. */
  async holdParticipant(participantId, on = true) {
    const op = this._op;
    try {
      if (!participantId || typeof participantId !== 'string') throw new OperatorError('BAD_REQUEST', 'holdParticipant(id, on): id is required');
      this._assertLive('holdParticipant');
      return await op._request({ type: 'hold', callId: this.callId, on: !!on, participantId }, { call: this, participantId });
    } catch (err) {
      throw op._report(err, this.callId);
    }
  }

  /**
   * Start recording the call (needs the `record` capability). `channels`: `'dual'` (the
   * customer in one channel, the others in the other) or `'mono'`; absent, the server's
   * default. Resolves with `{id, status: 'in-progress'}` once the server records (the
   * `recording` answer carrying this request's ref); rejects `FORBIDDEN` without the
   * capability, `BAD_REQUEST` when the call already records or is not connected.
   */
  async startRecording({ channels } = {}) {
    if (channels !== undefined && !RECORD_CHANNELS.includes(channels)) {
      throw this._op._report(new OperatorError('BAD_REQUEST', `startRecording: channels must be one of ${RECORD_CHANNELS.join(', ')}`), this.callId);
    }
    return this._record('startRecording', 'start', channels === undefined ? {} : { channels });
  }

  /**
   * Pause the recording: `behavior` `'silence'` (the default: the pause is kept as silence,
   * the file keeps the call's time) or `'skip'` (the pause is cut out). Resolves with
   * `{id, status: 'paused'}`; `BAD_REQUEST` when nothing records or it is paused already.
   */
  async pauseRecording({ behavior } = {}) {
    if (behavior !== undefined && !PAUSE_BEHAVIORS.includes(behavior)) {
      throw this._op._report(new OperatorError('BAD_REQUEST', `pauseRecording: behavior must be one of ${PAUSE_BEHAVIORS.join(', ')}`), this.callId);
    }
    return this._record('pauseRecording', 'pause', behavior === undefined ? {} : { pauseBehavior: behavior });
  }

  /** Resume a paused recording. Resolves with `{id, status: 'in-progress'}`. */
  resumeRecording() {
    return this._record('resumeRecording', 'resume');
  }

  /** Stop the recording (the call goes on). Resolves with `{id, status: 'stopped'}`. */
  stopRecording() {
    return this._record('stopRecording', 'stop');
  }

  /** The quality summary so far (the same figures as the `ended` payload's `quality`). */
  getQualitySummary() {
    return this.qualitySummary ?? (this._monitor ? this._monitor.summary() : null);
  }

  // ---- internals ----

  _assertLive(what) {
    if (this.state === 'ended') throw callEndedError(this);
    if (!this.callId || this.state !== 'connected') throw new OperatorError('BAD_REQUEST', `${what}: the call is not connected`);
  }

  /** A `record` request: settled by the `recording` message with its ref (or its `error`). */
  async _record(what, action, extra = {}) {
    const op = this._op;
    try {
      this._assertLive(what);
      return await op._request({ type: 'record', callId: this.callId, action, ...extra }, { call: this });
    } catch (err) {
      throw op._report(err, this.callId);
    }
  }

  async _requestUntilEnded(type) {
    const op = this._op;
    if (this.state === 'ended') return;
    try {
      if (!this.callId) throw new OperatorError('BAD_REQUEST', `${type}: the call has no id yet`);
      await op._request({ type, callId: this.callId }, { call: this, resolveOnEnd: true });
    } catch (err) {
      if (err.code === 'CALL_ENDED') return;
      throw op._report(err, this.callId);
    }
  }

  _enqueue(task) {
    this._chain = this._chain.then(task).catch((err) => this._op._log('error', 'call task failed:', err));
    return this._chain;
  }

  _handle(msg) {
    if (this.state === 'ended') return;
    switch (msg.type) {
      case 'ringing':
        this.earlyMedia = !!msg.earlyMedia;
        if (this.direction === 'outbound' && this.state !== 'connected') this.state = 'ringing';
        this._emit('ringing', { earlyMedia: this.earlyMedia });
        break;
      case 'connected':
        this._setConnected();
        break;
      case 'callUpdated':
        if (typeof msg.held === 'boolean') this.held = msg.held;
        if (typeof msg.remoteHeld === 'boolean') this.remoteHeld = msg.remoteHeld;
        this._emit('updated', { muted: this.muted, held: this.held, remoteHeld: this.remoteHeld });
        break;
      case 'dtmf':
        this._emit('dtmf', { digit: msg.digit });
        break;
      case 'transfer': {
        const info = {
          state: typeof msg.state === 'string' ? msg.state : 'failed',
          target: msg.target ?? null,
          participantId: typeof msg.participantId === 'string' ? msg.participantId : null,
          reason: msg.reason ?? null,
          code: msg.code ?? null,
        };
        this.transferState = info;
        this._emit('transfer', info);
        break;
      }
      case 'recording': {
        const info = recordingOf(msg);
        if (!info) return this._op._log('debug', 'recording without a recordingId or a known status');
        this.recording = info.status === 'stopped' ? null : info;
        this._emit('recording', info);
        break;
      }
      case 'insight': {
        const insight = msg.insight;
        if (!insight || typeof insight !== 'object' || Array.isArray(insight)) return this._op._log('debug', 'insight without an object');
        this.insights = [...this.insights.slice(1 - MAX_INSIGHTS), insight];
        this._emit('insight', insight, {
          forkId: typeof msg.forkId === 'string' ? msg.forkId : null,
          at: typeof msg.at === 'number' ? msg.at : null,
        });
        break;
      }
      case 'participants':
        this._setParties(msg);
        break;
      case 'participantJoined':
      case 'participantUpdated': {
        const p = participantOf(msg.participant);
        if (!p) return this._op._log('debug', `${msg.type} without a participant`);
        this._upsertParty(p);
        this._emit(msg.type, p);
        this._emit('participantsChanged', this.participants);
        break;
      }
      case 'participantLeft': {
        const id = msg.participantId;
        if (typeof id !== 'string') return;
        const participant = this.participants.find((p) => p.id === id) ?? null;
        this.participants = this.participants.filter((p) => p.id !== id);
        this._emit('participantLeft', { participantId: id, participant, reason: msg.reason ?? null });
        this._emit('participantsChanged', this.participants);
        break;
      }
      case 'ended':
        this._end(msg.reason || 'failed', msg.code, msg.message);
        break;
    }
  }

  /** The recording as a `ready.calls[]` entry says (a reloaded page, a reconnect): `recording` on a change. */
  _setRecording(info) {
    const same = (this.recording && info && this.recording.id === info.id && this.recording.status === info.status) || (!this.recording && !info);
    if (same) return;
    const was = this.recording;
    this.recording = info;
    this._emit('recording', info ?? { id: was.id, status: 'stopped' });
  }

  /** A `participants` message (or a `ready.calls[]` entry): the whole list and my capabilities. */
  _setParties(info) {
    if (Array.isArray(info.participants)) {
      this.participants = info.participants.map(participantOf).filter(Boolean);
      if (typeof info.self === 'string') this.self = info.self;
      this._emit('participantsChanged', this.participants);
    }
    if (Array.isArray(info.capabilities)) {
      const caps = info.capabilities.filter((c) => typeof c === 'string');
      const changed = caps.length !== this.capabilities.length || caps.some((c) => !this.capabilities.includes(c));
      this.capabilities = caps;
      if (changed) this._emit('capabilitiesChanged', this.capabilities);
    }
  }

  _upsertParty(p) {
    const i = this.participants.findIndex((q) => q.id === p.id);
    this.participants = i >= 0 ? this.participants.map((q, j) => (j === i ? p : q)) : [...this.participants, p];
  }

  _setConnected() {
    if (this.state === 'connected' || this.state === 'ended') return;
    this.state = 'connected';
    this.connectedAt = this._op._now();
    if (this.muted) this._op._sendCallMsg(this, { type: 'mute', callId: this.callId, on: true });
    this._startMediaWatch();
    this._emit('connected');
    this._op._emit('callStarted', this);
  }

  _applyServerState(state) {
    if (state === 'connected') this._setConnected();
    else if (state === 'ringing' && this.direction === 'outbound' && this.state === 'connecting') this.state = 'ringing';
  }

  _watchPc(pc) {
    on(pc, 'track', (ev) => {
      let stream = ev.streams && ev.streams[0];
      if (!stream && this._op._MediaStream) stream = new this._op._MediaStream([ev.track]);
      if (!stream) return;
      this.remoteStream = stream;
      this._op._playRemote(this);
      if (this._meter) this._meter.setOutput(stream);
      this._emit('remoteStream', stream);
    });
    on(pc, 'connectionstatechange', () => this._onPcState(pc));
  }

  /** The media path's state: recover a lost path (reoffer) or end the call with `media_failed`. */
  _onPcState(pc) {
    const state = pc.connectionState;
    this._op._log('debug', `call ${this.callId}: ${state}`);
    if (pc !== this._pc || !this._remoteApplied || this.state === 'ended') return;
    if (state === 'connected') {
      this._mediaUp = true;
      if (!this._recovery) return;
      this._op._clearTimeout(this._recovery.timer);
      this._recovery = null;
      this.reconnecting = false;
      this._emit('reconnected');
      return;
    }
    if (state !== 'disconnected' && state !== 'failed') return;
    if (!this._recovery) {
      this.reconnecting = true;
      this._recovery = { reoffered: false, timer: this._op._setTimeout(() => this._mediaFailed(), this._op._mediaTimeoutMs) };
      this._emit('reconnecting', { reason: state });
    }
    // `disconnected` often heals by itself; `failed` does not: a new peer connection is needed.
    if (state === 'failed' && !this._recovery.reoffered && this._op._ready) {
      this._recovery.reoffered = true;
      this._op._reoffer(this, this.state, 'media_failed');
    }
  }

  _mediaFailed() {
    if (!this._recovery || this.state === 'ended') return;
    this._recovery.timer = null;
    this._op._log('warn', `call ${this.callId}: no media for ${this._op._mediaTimeoutMs} ms, hanging up`);
    const op = this._op;
    if (!op._sendMsg({ type: 'hangup', callId: this.callId, ref: op._nextRef() })) op._hangupOnResume.add(this.callId);
    this._end('media_failed');
  }

  async _applyAnswer(pc, sdp) {
    await pc.setRemoteDescription({ type: 'answer', sdp });
    if (this._pc && this._pc !== pc) closePc(this._pc);
    this._pc = pc;
    this._remoteApplied = true;
    if (this._monitor) this._monitor.setPc(pc);
    if (this._recovery && pc.connectionState === 'connected') this._onPcState(pc);
  }

  _hasLivePc() {
    const pc = this._pc;
    return !!pc && this._remoteApplied && !['closed', 'failed'].includes(pc.connectionState) && pc.signalingState !== 'closed';
  }

  _applyMute() {
    const tracks = new Set(audioTracks(this.localStream));
    if (this._pc && typeof this._pc.getSenders === 'function') {
      for (const s of this._pc.getSenders()) if (s.track) tracks.add(s.track);
    }
    for (const t of tracks) t.enabled = !this.muted;
  }

  /** Quality sampling and level metering, from `connected` to the end. */
  _startMediaWatch() {
    const op = this._op;
    if (!this._monitor && op._statsIntervalMs > 0) {
      this._monitor = new QualityMonitor(this, op);
      this._monitor.setPc(this._pc);
    }
    if (!this._meter && op._levelIntervalMs > 0) this._meter = LevelMeter.create(this, op);
  }

  _closeMedia() {
    if (this._recovery) this._op._clearTimeout(this._recovery.timer);
    this._recovery = null;
    this.reconnecting = false;
    if (this._monitor) this._monitor.stop();
    if (this._meter) this._meter.stop();
    this._meter = null;
    if (this._pc) closePc(this._pc);
    this._pc = null;
    this._remoteApplied = false;
    stopStream(this.localStream);
    this.localStream = null;
  }

  _end(reason, code, message) {
    if (this.state === 'ended') return;
    const wasConnected = this.connectedAt != null;
    this.state = 'ended';
    this.endReason = reason;
    this.endCode = code ?? null;
    this.endMessage = message ?? null;
    this.endedAt = this._op._now();
    if (this._monitor) this.qualitySummary = this._monitor.summary();
    this._closeMedia();
    this._monitor = null;
    this._op._forgetCall(this);
    if (wasConnected && this.qualitySummary && this.callId) this._op._sendQualityReport(this);
    this._emit('ended', { reason, code: this.endCode, message: this.endMessage, quality: this.qualitySummary });
    this._op._emit('callEnded', this);
  }
}

/**
 * A supervisor's handle on another operator's call (`operator.monitor()`): a Call whose
 * `direction` is `monitor`, with a `mode` it can switch without a new peer connection.
 */
export class MonitorCall extends Call {
  constructor(op, init) {
    super(op, { ...init, direction: 'monitor' });
    this._mode = init.mode;
    /** @type {string|null} the participant whispered to (null: the call's agents) */
    this.whisperTo = init.participantId ?? null;
  }

  /** `listen` | `whisper` | `barge`: the server's word (my participant's `monitor`) once known. */
  get mode() {
    const me = this.selfParticipant;
    return (me && me.monitor) || this._mode;
  }

  /** Switch to `listen`, `whisper` (to `participantId`, default the agents) or `barge`. */
  async setMode(mode, { participantId } = {}) {
    const op = this._op;
    try {
      if (!MONITOR_MODES.includes(mode)) throw new OperatorError('BAD_REQUEST', `monitor mode must be one of ${MONITOR_MODES.join(', ')}`);
      this._assertLive('setMode');
      const msg = { type: 'monitorMode', callId: this.callId, mode };
      if (participantId) msg.participantId = participantId;
      await op._request(msg, { call: this, participantId: this.self });
      this._setMode(mode, participantId ?? null);
    } catch (err) {
      throw op._report(err, this.callId);
    }
  }

  _setMode(mode, whisperTo) {
    const before = this._mode;
    this._mode = mode;
    this.whisperTo = whisperTo;
    if (before !== mode) this._emit('modeChanged', { mode });
  }

  _handle(msg) {
    const before = this.mode;
    super._handle(msg);
    const after = this.mode;
    if (after !== before && after === this.selfParticipant?.monitor) {
      this._mode = after;
      this._emit('modeChanged', { mode: after });
    }
  }
}

/**
 * An operator's signalling session: presence, availability, calls, audio devices.
 *
 * Events: `presenceStateChanged` ({state, previous}), `availabilityChanged` ({accepted,
 * rejected}), `incomingCall` (Call), `callStarted` (Call, once connected), `callEnded`
 * (Call, `endReason` set), `currentCallChanged` (Call or null: `currentCall` changed; a dial
 * becomes current when the server's answer names it), `devicesChanged` ({inputs, outputs}), `inputDeviceChanged` and
 * `outputDeviceChanged` ({deviceId, reason}), `error` ({code, message, callId?}).
 */
export class Operator extends Emitter {
  /**
   * @param {object} o
   * @param {string} o.url ws(s) URL of `/v1/operator`
   * @param {() => Promise<string|{token: string, expiresAt?: string}>} o.getToken called on every connect and reconnect
   * @param {number} [o.heartbeatIntervalMs] ping interval; default: the server's `ready` value
   * @param {number} [o.missedHeartbeats] silent intervals before the socket counts as dead (default 2)
   * @param {number[]} [o.reconnectBackoffMs] delays before each retry; the last one repeats
   * @param {number} [o.reconnectJitter] extra random fraction of each delay (default 0.2)
   * @param {boolean|MediaTrackConstraints} [o.audioConstraints] for getUserMedia (default true)
   * @param {RTCConfiguration} [o.rtcConfiguration]
   * @param {number} [o.iceGatheringTimeoutMs] wait at most this for ICE gathering (default 1000)
   * @param {number} [o.connectTimeoutMs] socket open + `ready` deadline (default 10000)
   * @param {boolean} [o.keepCallOnReload] page hide/close leaves the call to the server's grace
   *   period (a reloaded page resumes it) instead of hanging up (default false)
   * @param {number} [o.hangupTimeoutMs] goOffline waits this long for the hangup's `ended` (default 2000)
   * @param {number} [o.mediaTimeoutMs] a lost media path not back within this ends the call `media_failed` (default 10000)
   * @param {number} [o.statsIntervalMs] quality sample period, 0 = off (default 1000)
   * @param {number} [o.levelIntervalMs] audio level period, 0 = off (default 100)
   * @param {object} [o.qualityThresholds] warning thresholds (see sdk.md)
   * @param {boolean} [o.sendQualityReport] send the call's summary to the server at the end (default true)
   * @param {HTMLMediaElement} [o.audioElement] the SDK plays the remote audio there (and routes it with setOutputDevice)
   * @param {boolean|string} [o.ringtone] ring while an incoming call waits: true = built-in tone, or a sound URL
   * @param {{debug?, info?, warn?, error?}} [o.logger]
   * Environment (defaults to the browser's globals, injectable for tests): `WebSocket`,
   * `RTCPeerConnection`, `MediaStream`, `mediaDevices`, `fetch`, `setTimeout`,
   * `clearTimeout`, `random`, `now`, `AudioContext`, `Audio`, `window`.
   */
  constructor(o = {}) {
    super((level, ...a) => this._log(level, ...a));
    if (!o.url) throw new TypeError('Operator: url is required');
    if (typeof o.getToken !== 'function') throw new TypeError('Operator: getToken must be a function');
    const g = globalThis;
    this.url = String(o.url);
    this._getToken = o.getToken;
    this._heartbeatOverride = o.heartbeatIntervalMs ?? null;
    this._hbMissed = o.missedHeartbeats ?? DEFAULT_MISSED_HEARTBEATS;
    this._backoff = Array.isArray(o.reconnectBackoffMs) && o.reconnectBackoffMs.length ? [...o.reconnectBackoffMs] : DEFAULT_BACKOFF_MS;
    this._jitter = o.reconnectJitter ?? 0.2;
    this._audio = o.audioConstraints ?? true;
    this._rtcConfig = o.rtcConfiguration ?? { bundlePolicy: 'max-bundle' };
    this._iceTimeoutMs = o.iceGatheringTimeoutMs ?? 1000;
    this._connectTimeoutMs = o.connectTimeoutMs ?? 10000;
    this._keepCallOnReload = !!o.keepCallOnReload;
    this._hangupTimeoutMs = o.hangupTimeoutMs ?? 2000;
    this._mediaTimeoutMs = o.mediaTimeoutMs ?? 10000;
    this._statsIntervalMs = o.statsIntervalMs ?? 1000;
    this._levelIntervalMs = o.levelIntervalMs ?? 100;
    this._thresholds = { ...DEFAULT_THRESHOLDS, ...(o.qualityThresholds || {}) };
    this._sendQuality = o.sendQualityReport ?? true;
    this._audioElement = o.audioElement ?? null;
    this._ringtoneOpt = o.ringtone ?? false;
    this._logger = o.logger ?? DEFAULT_LOGGER;
    this._WebSocket = o.WebSocket ?? g.WebSocket;
    this._RTCPeerConnection = o.RTCPeerConnection ?? g.RTCPeerConnection;
    this._MediaStream = o.MediaStream ?? g.MediaStream;
    this._mediaDevices = o.mediaDevices ?? (g.navigator && g.navigator.mediaDevices);
    this._AudioContext = o.AudioContext ?? g.AudioContext ?? g.webkitAudioContext ?? null;
    this._Audio = o.Audio ?? g.Audio ?? null;
    this._window = o.window ?? (typeof g.addEventListener === 'function' ? g : null);
    // Called through locals so that browser globals never see a foreign `this`.
    const fetchFn = o.fetch ?? g.fetch;
    const st = o.setTimeout ?? g.setTimeout;
    const ct = o.clearTimeout ?? g.clearTimeout;
    const rnd = o.random ?? Math.random;
    const now = o.now ?? Date.now;
    this._fetch = fetchFn ? (url, init) => fetchFn(url, init) : null;
    this._setTimeout = (fn, ms) => st(fn, ms);
    this._clearTimeout = (id) => id != null && ct(id);
    this._random = () => rnd();
    this._now = () => now();

    this._state = 'offline';
    this._ws = null;
    this._ready = false;
    this._hadReady = false; // a `ready` was seen since going online: the next one is a reconnect
    this._gen = 0; // bumped to cancel an in-flight connect
    this._attempt = 0;
    this._reconnectTimer = null;
    this._connectTimer = null;
    this._pingTimer = null;
    this._watchdog = null;
    this._hbInterval = 0;
    this._authError = null;
    this._readyWaiters = [];
    this._refSeq = 0;
    this._pending = new Map(); // ref -> {type, callId, call, pc, resolve, reject}
    this._refCallIds = new Map(); // ref -> callId, for fire-and-forget requests
    this._calls = new Map(); // callId -> Call
    this._current = null;
    this._hangupOnResume = new Set();
    this._finished = new Set(); // ids of calls that ended here (never adopted by a dial)
    this._ids = null; // numbers to be online on (re-sent after a reconnect)
    this._resend = null; // {ids, promise} of the `online` re-sent after the last reconnect
    this._quietRefs = new Set(); // refs whose server errors are not reported (quality, settled requests)
    this._inputDeviceId = null; // null: the default microphone
    this._outputDeviceId = null; // null: the default speaker
    this._devices = null; // the last {inputs, outputs} seen
    this._audioCtx = null; // shared AudioContext for level meters (created on first use)
    this._ringtone = null; // {el} while an incoming call rings
    this._disposed = false;
    this._onPageHide = () => this._pageHidden();
    this._onDeviceChange = () => {
      this._devicesChanged().catch((err) => this._log('warn', 'devicechange handling failed:', err));
    };
    if (this._window) this._window.addEventListener('pagehide', this._onPageHide);
    if (this._mediaDevices && typeof this._mediaDevices.addEventListener === 'function') {
      this._mediaDevices.addEventListener('devicechange', this._onDeviceChange);
    }

    /** @type {{accepted: string[], rejected: {id: string, code: string}[]}} */
    this.availability = { accepted: [], rejected: [] };
    /** numbers from the last `ready`: [{id, e164, name}] */
    this.numbers = [];
    this.sessionId = null;
    /** {ref, displayName} from the last `ready` */
    this.operatorInfo = null;
    /** `expiresAt` of the last token, when getToken returned `{ token, expiresAt }` */
    this.tokenExpiresAt = null;
  }

  /**
   * Whether this browser has what the SDK needs: WebSocket, RTCPeerConnection, getUserMedia
   * and a secure context (https or localhost). `env` defaults to the browser's globals.
   */
  static isSupported(env = globalThis) {
    const nav = env.navigator;
    const md = env.mediaDevices ?? (nav && nav.mediaDevices);
    return !!(env.WebSocket && env.RTCPeerConnection && md && typeof md.getUserMedia === 'function' && env.isSecureContext !== false);
  }

  /**
   * A test call before real ones: connects with `options` (those of the constructor), dials
   * `target` (default `+15550001`, the demo's echo) with `callerId` (default the token's first
   * number), measures for `durationMs` (default 10000; `onSample` sees each sample), hangs up
   * and resolves with a report: `{ok, target, connectivity: {signalling, media}, samples, rtt,
   * jitter, packetLoss, mos, summary, error}`. It never rejects: a failure is in `error`.
   */
  static async preflight(options = {}) {
    const { target = DEFAULT_ECHO_TARGET, callerId, durationMs = 10000, onSample, ...opOptions } = options;
    const op = new Operator({ ringtone: false, ...opOptions });
    const report = {
      ok: false,
      target,
      connectivity: { signalling: false, media: false },
      samples: 0,
      rtt: null,
      jitter: null,
      packetLoss: null,
      mos: null,
      summary: null,
      error: null,
    };
    try {
      await op._ensureReady();
      report.connectivity.signalling = true;
      const from = callerId ?? (op.numbers[0] && op.numbers[0].id);
      if (!from) throw new OperatorError('FORBIDDEN_NUMBER', 'preflight: no caller ID (the token allows no number)');
      const call = await op.dial(target, { callerId: from });
      if (typeof onSample === 'function') call.on('sample', onSample);
      await op._waitCall(call, (c) => c.state === 'connected', op._connectTimeoutMs);
      if (call.state !== 'connected') throw new OperatorError(call.state === 'ended' ? 'CALL_ENDED' : 'MEDIA_ERROR', `the test call did not connect (${call.endReason || 'timeout'})`);
      await op._waitCall(call, () => false, durationMs);
      if (call.state === 'ended') throw new OperatorError('CALL_ENDED', `the test call ended early (${call.endReason})`);
      const live = call.getQualitySummary();
      call.hangup();
      await op._untilEnded(call, op._hangupTimeoutMs);
      const s = call.qualitySummary ?? live;
      report.summary = s;
      report.connectivity.media = !!call._mediaUp || (!!s && s.packetsReceived > 0);
      if (s) Object.assign(report, { samples: s.samples, rtt: s.rttAvgMs, jitter: s.jitterAvgMs, packetLoss: s.packetLossPct, mos: s.mosAvg });
      report.ok = report.connectivity.media;
      if (!report.ok) report.error = { code: 'MEDIA_ERROR', message: 'no media reached the browser' };
    } catch (err) {
      report.error = { code: (err && err.code) || 'INTERNAL', message: (err && err.message) || String(err) };
    } finally {
      await op.dispose().catch(() => {});
    }
    return report;
  }

  /** Resolves when `done(call)` holds (checked on each call event), the call ends, or after `ms`. */
  _waitCall(call, done, ms) {
    if (done(call) || call.state === 'ended') return Promise.resolve();
    return new Promise((resolve) => {
      const offs = [];
      const finish = () => {
        this._clearTimeout(timer);
        for (const off of offs) off();
        resolve();
      };
      for (const ev of ['connected', 'ringing', 'ended']) offs.push(call.on(ev, () => (done(call) || call.state === 'ended') && finish()));
      const timer = this._setTimeout(finish, ms);
    });
  }

  /** Presence state: `offline` | `connecting` | `online` | `reconnecting`. */
  get state() {
    return this._state;
  }

  /** The active call (accepted or dialed, not ended), or null. Ringing offers are not active. */
  get currentCall() {
    return this._current && this._current.callId ? this._current : null;
  }

  /** Every call known and not ended, ringing offers included. */
  get calls() {
    return [...this._calls.values()];
  }

  /** GET /v1/numbers with a fresh token: resolves with [{id, e164, name}]. */
  async listNumbers() {
    try {
      return await this._getNumbers();
    } catch (err) {
      throw this._report(err);
    }
  }

  /** listNumbers without the `error` event (the compat layer maps the codes itself). */
  async _getNumbers() {
    const token = await this._fetchToken();
    if (!this._fetch) throw new OperatorError('HTTP_ERROR', 'fetch is not available');
    let res;
    try {
      res = await this._fetch(`${httpBase(this.url)}/v1/numbers`, { headers: { Authorization: `Bearer ${token}` } });
    } catch (err) {
      throw new OperatorError('HTTP_ERROR', `GET /v1/numbers failed: ${err && err.message}`, { cause: err });
    }
    const body = await Promise.resolve()
      .then(() => res.json())
      .catch(() => null); // an error page may hold no JSON
    if (!res.ok) {
      const e = body && body.error;
      const code = (e && e.code) || (res.status === 401 ? 'UNAUTHORIZED' : res.status === 429 ? 'RATE_LIMITED' : 'INTERNAL');
      throw new OperatorError(code, (e && e.message) || `GET /v1/numbers: HTTP ${res.status}`, { status: res.status });
    }
    return Array.isArray(body && body.numbers) ? body.numbers : [];
  }

  /**
   * Connect if needed and take calls on `ids` (number ids or E.164; default: every number of
   * the token). The ids are remembered and re-sent after a reconnect.
   * @returns {Promise<{accepted: string[], rejected: {id: string, code: string}[]}>}
   */
  async goOnline(ids) {
    try {
      if (ids !== undefined && !Array.isArray(ids)) throw new OperatorError('BAD_REQUEST', 'goOnline(ids): ids must be an array');
      if (ids) this._ids = [...ids];
      const wasReady = this._ready && this._state === 'online';
      await this._ensureReady();
      // A reconnect we waited for already re-sent `online` with these ids.
      if (!wasReady && this._resend && this._resend.ids === this._ids) return await this._resend.promise;
      if (!this._ids) this._ids = this.numbers.map((n) => n.id);
      const msg = await this._request({ type: 'online', numbers: this._ids });
      return availabilityOf(msg);
    } catch (err) {
      throw this._report(err);
    }
  }

  /**
   * Hang up the active call (waiting up to `hangupTimeoutMs` for its `ended`), send `offline`,
   * close the socket (1000) and stop reconnecting. Ringing offers end (`offline`).
   */
  async goOffline() {
    this._ids = null;
    const call = this._current;
    if (call && call.callId && call.state !== 'ended' && this._ready) {
      call.hangup();
      await this._untilEnded(call, this._hangupTimeoutMs);
      if (call.state !== 'ended') call._end('hangup'); // no answer in time: it is over for us
    }
    if (this._ws && this._ready) this._sendMsg({ type: 'offline', ref: this._nextRef() });
    const err = new OperatorError('WS_ERROR', 'went offline');
    err.reported = true; // asked for: not an error event
    this._stop(err);
  }

  /** goOffline, then drop the page and device listeners and the audio context: the object is done. */
  async dispose() {
    if (this._disposed) return;
    await this.goOffline();
    this._disposed = true;
    if (this._window) this._window.removeEventListener('pagehide', this._onPageHide);
    if (this._mediaDevices && typeof this._mediaDevices.removeEventListener === 'function') {
      this._mediaDevices.removeEventListener('devicechange', this._onDeviceChange);
    }
    if (this._audioCtx) quietly(() => this._audioCtx.close());
    this._audioCtx = null;
  }

  /** Resolves when `call` has ended, or after `ms`. */
  _untilEnded(call, ms) {
    if (call.state === 'ended') return Promise.resolve();
    return new Promise((resolve) => {
      const off = call.once('ended', () => {
        this._clearTimeout(timer);
        resolve();
      });
      const timer = this._setTimeout(() => {
        off();
        resolve();
      }, ms);
    });
  }

  /**
   * The page is going away (tab closed, reload, navigation): hang up the active call and go
   * offline at once, unless `keepCallOnReload` leaves the call to the server's grace period.
   */
  _pageHidden() {
    if (this._keepCallOnReload || this._state === 'offline') return;
    const call = this._current;
    if (call && call.callId && call.state !== 'ended') {
      this._sendMsg({ type: 'hangup', callId: call.callId, ref: this._nextRef() });
      call._end('hangup');
    }
    this.goOffline().catch(() => {});
  }

  /**
   * The calls on numbers this token allows, for a supervisor: resolves with
   * [{callId, number, from, to, direction, startedAt, participants, recording, forks}]
   * (`recording`: {id, status} or null; `forks`: the ids of its live media forks).
   */
  async listCalls() {
    try {
      await this._ensureReady();
      const msg = await this._request({ type: 'listCalls' });
      return Array.isArray(msg.calls) ? msg.calls.filter((c) => c && typeof c.callId === 'string').map(callInfoOf) : [];
    } catch (err) {
      throw this._report(err);
    }
  }

  /**
   * Monitor another operator's call as a supervisor: `listen` (nobody hears you), `whisper`
   * (only `participantId`, default the call's agents, hears you) or `barge` (everyone does).
   * Needs the `monitor` right in the token. Resolves with a MonitorCall once the answer is
   * applied; you are then busy, as in any call.
   */
  async monitor(callId, { mode = 'listen', participantId } = {}) {
    try {
      if (!callId || typeof callId !== 'string') throw new OperatorError('BAD_REQUEST', 'monitor(callId): callId is required');
      if (!MONITOR_MODES.includes(mode)) throw new OperatorError('BAD_REQUEST', `monitor mode must be one of ${MONITOR_MODES.join(', ')}`);
      if (this._current || this._calls.has(callId)) throw new OperatorError('BUSY', 'another call is active');
      this._warmAudio();
      await this._ensureReady();
      if (this._current || this._calls.has(callId)) throw new OperatorError('BUSY', 'another call is active');
      const call = new MonitorCall(this, { callId, state: 'connecting', mode, participantId });
      this._setCurrent(call);
      this._calls.set(callId, call);
      try {
        const { pc, stream, sdp } = await this._prepareOffer(call, false);
        call._pc = pc;
        call.localStream = stream;
        const msg = { type: 'monitor', callId, mode, sdp };
        if (participantId) msg.participantId = participantId;
        await this._request(msg, { call, pc });
        return call;
      } catch (err) {
        if (call.state !== 'ended') {
          // The server has us in the call only if it answered (an answer we could not apply).
          if (call._answered) this._sendMsg({ type: 'hangup', callId, ref: this._nextRef() });
          call._closeMedia();
          call.state = 'ended';
          call.endReason = 'failed';
          this._forgetCall(call);
        }
        throw err;
      }
    } catch (err) {
      throw this._report(err);
    }
  }

  /**
   * Call `to` (E.164, `sip:` URI or `operator:REF`) with caller ID `callerId` (a number id or
   * E.164 the token allows). Connects if needed. Resolves with the Call once the server's SDP
   * answer is applied; rejects with an OperatorError (`code` from the server's `error`).
   */
  async dial(to, { callerId } = {}) {
    try {
      if (!to || typeof to !== 'string') throw new OperatorError('BAD_REQUEST', 'dial(to): to is required');
      if (this._current) throw new OperatorError('BUSY', 'another call is active');
      this._warmAudio();
      await this._ensureReady();
      if (this._current) throw new OperatorError('BUSY', 'another call is active');
      const call = new Call(this, { direction: 'outbound', from: callerId ?? null, to, state: 'connecting' });
      this._setCurrent(call);
      this._updateRingtone();
      try {
        const { pc, stream, sdp } = await this._prepareOffer(call, false);
        call._pc = pc;
        call.localStream = stream;
        const msg = { type: 'dial', to, sdp };
        if (callerId) msg.callerId = callerId;
        await this._request(msg, { call, pc });
        return call;
      } catch (err) {
        if (call.callId && call.state !== 'ended') {
          // The server has the call but we cannot use it: hang it up (on resume if the socket is down).
          if (!this._sendMsg({ type: 'hangup', callId: call.callId, ref: this._nextRef() })) this._hangupOnResume.add(call.callId);
          call._end('failed');
        } else if (call.state !== 'ended') {
          call._closeMedia();
          call.state = 'ended';
          call.endReason = 'failed';
          if (this._current === call) this._setCurrent(null);
        }
        throw err;
      }
    } catch (err) {
      throw this._report(err);
    }
  }

  // ---- connection ----

  _ensureReady() {
    if (this._ready && this._state === 'online') return Promise.resolve();
    const p = new Promise((resolve, reject) => this._readyWaiters.push({ resolve, reject }));
    if (this._state === 'offline') this._connect(false);
    return p;
  }

  async _connect(isReconnect) {
    const gen = ++this._gen;
    this._setState(isReconnect ? 'reconnecting' : 'connecting');
    let token;
    try {
      token = await this._fetchToken();
    } catch (err) {
      if (gen !== this._gen) return;
      if (isReconnect) {
        this._log('warn', `getToken failed, retrying: ${err.message}`);
        this._scheduleReconnect();
      } else {
        this._fatal(err);
      }
      return;
    }
    if (gen !== this._gen) return;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (err) {
      return this._connectFailed(isReconnect, `could not open WebSocket: ${err && err.message}`);
    }
    this._ws = ws;
    this._ready = false;
    this._authError = null;
    let opened = false;
    this._connectTimer = this._setTimeout(() => {
      this._connectTimer = null;
      this._log('warn', 'no ready before the connect timeout');
      this._teardownSocket(CLOSE_CONNECT_TIMEOUT, 'connect timeout');
      this._connectFailed(this._state === 'reconnecting', 'connect timeout');
    }, this._connectTimeoutMs);
    ws.onopen = () => {
      if (ws !== this._ws) return;
      opened = true;
      this._sendRaw(ws, { type: 'hello', token, protocol: PROTOCOL_VERSION });
    };
    ws.onmessage = (ev) => {
      if (ws === this._ws) this._onMessage(ev.data);
    };
    ws.onerror = () => {
      if (ws === this._ws) this._log('warn', 'WebSocket error');
    };
    ws.onclose = (ev) => {
      if (ws !== this._ws) return;
      this._onClose(ev.code, ev.reason, opened);
    };
  }

  _onClose(code, reason, opened) {
    this._log('info', `socket closed ${code} ${reason || ''}`);
    this._teardownSocket();
    this._rejectPending(new OperatorError('WS_ERROR', `connection lost (${code})`));
    if (code === CLOSE_UNAUTHORIZED) {
      // Usually after an `error UNAUTHORIZED`, already reported: report it once.
      return this._fatal(this._authError || new OperatorError('UNAUTHORIZED', reason || 'unauthorized (4001)'));
    }
    if (code === CLOSE_REPLACED) {
      return this._fatal(new OperatorError('REPLACED', 'this operator connected from another session'));
    }
    if (code === CLOSE_PROTOCOL) {
      return this._fatal(new OperatorError('PROTOCOL_ERROR', `the server refused protocol ${PROTOCOL_VERSION} (1002)`));
    }
    if (this._state === 'connecting') {
      return this._fatal(new OperatorError('WS_ERROR', opened ? `connection closed before ready (${code})` : 'could not open WebSocket'));
    }
    this._setState('reconnecting');
    this._scheduleReconnect();
  }

  _connectFailed(isReconnect, message) {
    this._ws = null;
    if (isReconnect) {
      this._log('warn', message);
      this._scheduleReconnect();
    } else {
      this._fatal(new OperatorError('WS_ERROR', message));
    }
  }

  _scheduleReconnect() {
    const base = this._backoff[Math.min(this._attempt, this._backoff.length - 1)];
    this._attempt++;
    const delay = Math.round(base + base * this._jitter * this._random());
    this._log('info', `reconnecting in ${delay} ms`);
    this._clearTimeout(this._reconnectTimer);
    this._reconnectTimer = this._setTimeout(() => {
      this._reconnectTimer = null;
      this._connect(true);
    }, delay);
  }

  /** Stop for good: no more reconnects; report `err`; calls end; state offline. */
  _fatal(err) {
    this._report(err);
    this._stop(err);
  }

  _stop(err) {
    this._gen++;
    this._clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._teardownSocket(CLOSE_NORMAL, 'offline');
    this._rejectPending(err);
    const waiters = this._readyWaiters.splice(0);
    for (const w of waiters) w.reject(err);
    for (const call of [...this._calls.values()]) call._end('offline');
    this._hangupOnResume.clear();
    this._stopRingtone();
    this._hadReady = false;
    this._attempt = 0;
    this._resend = null;
    if (this.availability.accepted.length || this.availability.rejected.length) {
      this.availability = { accepted: [], rejected: [] };
      this._emit('availabilityChanged', this.availability);
    }
    this._setState('offline');
  }

  /** Detach from the current socket (closing it if `code`), stop its timers. */
  _teardownSocket(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._ready = false;
    for (const t of ['_connectTimer', '_pingTimer', '_watchdog']) {
      this._clearTimeout(this[t]);
      this[t] = null;
    }
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    if (code && ws.readyState <= WS_OPEN) quietly(() => ws.close(code, reason));
  }

  /** Set the active call; `currentCallChanged` when `currentCall` (which needs a callId) changes. */
  _setCurrent(call) {
    const before = this.currentCall;
    this._current = call;
    if (this.currentCall !== before) this._emit('currentCallChanged', this.currentCall);
  }

  _setState(state) {
    const previous = this._state;
    if (state === previous) return;
    this._state = state;
    this._emit('presenceStateChanged', { state, previous });
  }

  // ---- heartbeat ----

  _startHeartbeat(intervalMs) {
    this._hbInterval = intervalMs;
    this._schedulePing();
    this._resetWatchdog();
  }

  _schedulePing() {
    this._pingTimer = this._setTimeout(() => {
      this._pingTimer = null;
      if (this._sendMsg({ type: 'ping' })) this._schedulePing();
    }, this._hbInterval);
  }

  _resetWatchdog() {
    if (!this._ready || !this._hbInterval) return;
    this._clearTimeout(this._watchdog);
    this._watchdog = this._setTimeout(() => {
      this._watchdog = null;
      this._log('warn', `no message from the server for ${this._hbMissed} heartbeat intervals: reconnecting`);
      this._teardownSocket(CLOSE_HEARTBEAT, 'heartbeat timeout');
      this._onClose(CLOSE_HEARTBEAT, 'heartbeat timeout', true);
    }, this._hbInterval * this._hbMissed);
  }

  // ---- sending ----

  _nextRef() {
    return String(++this._refSeq);
  }

  _sendRaw(ws, msg) {
    try {
      ws.send(JSON.stringify(msg));
      return true;
    } catch (err) {
      this._log('warn', 'send failed:', err);
      return false;
    }
  }

  _sendMsg(msg) {
    const ws = this._ws;
    if (!ws || !this._ready || ws.readyState !== WS_OPEN) return false;
    return this._sendRaw(ws, msg);
  }

  /** Send a message about `call` whose answer is not awaited; errors come back by ref. */
  _sendCallMsg(call, msg) {
    const ref = this._nextRef();
    if (!this._sendMsg({ ...msg, ref })) {
      this._report(new OperatorError('WS_ERROR', `not connected: ${msg.type} not sent`), call.callId);
      return false;
    }
    this._refCallIds.set(ref, call.callId);
    if (this._refCallIds.size > FIRE_AND_FORGET_REFS) this._refCallIds.delete(this._refCallIds.keys().next().value);
    return true;
  }

  _request(msg, extra = {}) {
    return new Promise((resolve, reject) => {
      const ref = this._nextRef();
      if (!this._sendMsg({ ...msg, ref })) {
        reject(new OperatorError('WS_ERROR', `not connected: ${msg.type} not sent`));
        return;
      }
      this._pending.set(ref, { type: msg.type, callId: msg.callId ?? null, resolve, reject, ...extra });
    });
  }

  /** The pending request answered by `ref`, or without a ref the first one `match` accepts. */
  _takePending(ref, match) {
    let key = null;
    if (ref != null) {
      if (this._pending.has(ref)) key = ref;
    } else {
      for (const [k, p] of this._pending) {
        if (match(p)) {
          key = k;
          break;
        }
      }
    }
    if (key == null) return null;
    const p = this._pending.get(key);
    this._pending.delete(key);
    return p;
  }

  _rejectPending(err) {
    const all = [...this._pending.values()];
    this._pending.clear();
    for (const p of all) p.reject(err);
  }

  // ---- receiving ----

  _onMessage(data) {
    this._resetWatchdog();
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this._report(new OperatorError('PROTOCOL_ERROR', `unreadable server frame: ${String(data).slice(0, 80)}`));
      return;
    }
    if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') {
      this._report(new OperatorError('PROTOCOL_ERROR', 'server frame without a type'));
      return;
    }
    try {
      this._dispatch(msg);
    } catch (err) {
      this._log('error', `handling ${msg.type} failed:`, err);
      this._report(new OperatorError('PROTOCOL_ERROR', `could not handle ${msg.type}: ${err && err.message}`));
    }
  }

  _dispatch(msg) {
    switch (msg.type) {
      case 'ready':
        return this._onReady(msg);
      case 'availability':
        return this._onAvailability(msg);
      case 'incoming':
        return this._onIncoming(msg);
      case 'answer':
        return this._onAnswer(msg);
      case 'ringing':
      case 'connected':
      case 'callUpdated':
      case 'dtmf':
      case 'ended': {
        const call = this._calls.get(msg.callId) ?? this._adoptDialed(msg.callId, msg.ref);
        if (call) call._enqueue(() => call._handle(msg));
        else this._log('debug', `${msg.type} for unknown call ${msg.callId}`);
        return;
      }
      case 'participants':
      case 'participantJoined':
      case 'participantUpdated':
      case 'participantLeft': {
        const call = this._calls.get(msg.callId);
        if (!call) return this._log('debug', `${msg.type} for unknown call ${msg.callId}`);
        call._enqueue(() => {
          call._handle(msg);
          this._settlePartyRequests(call, msg);
        });
        return;
      }
      case 'transfer': {
        const call = this._calls.get(msg.callId);
        if (!call) return this._log('debug', `transfer for unknown call ${msg.callId}`);
        call._enqueue(() => {
          call._handle(msg);
          this._settleTransfer(call, msg);
        });
        return;
      }
      case 'recording':
      case 'insight': {
        const call = this._calls.get(msg.callId);
        if (!call) return this._log('debug', `${msg.type} for unknown call ${msg.callId}`);
        call._enqueue(() => {
          call._handle(msg);
          if (msg.type === 'recording') this._settleRecord(call, msg);
        });
        return;
      }
      case 'calls': {
        const p = this._takePending(msg.ref, (q) => q.type === 'listCalls');
        if (p) p.resolve(msg);
        return;
      }
      case 'error':
        return this._onServerError(msg);
      case 'pong':
        return;
      default:
        this._log('debug', `ignoring message type ${msg.type}`);
    }
  }

  /**
   * A call message for a callId we do not know: a dial that ended before its `answer`
   * (`ended` carries the dial's `ref`), or an older server reporting a dial's progress
   * before the `answer`. Only one dial waits for its answer at a time, so the message is
   * about that call: take its callId now. Null when no dial is waiting.
   */
  _adoptDialed(callId, ref) {
    if (typeof callId !== 'string' || !callId || this._finished.has(callId)) return null;
    // Our server names the dial (`ended` with its `ref`); an older one did not.
    const named = ref != null ? this._pending.get(ref) : null;
    const candidates = named ? [named] : this._pending.values();
    for (const p of candidates) {
      const call = p.type === 'dial' ? p.call : null;
      if (call && !call.callId && call.state !== 'ended') {
        call.callId = callId;
        this._calls.set(callId, call);
        return call;
      }
    }
    return null;
  }

  /**
   * Requests answered by participant messages: `addParticipant` (its `participantUpdated`
   * carries the ref and names the participant; resolved when that one joins, rejected when it
   * leaves), `removeParticipant` (resolved when it left), `hold` of a participant and
   * `monitorMode` (resolved by the `participantUpdated` with their ref).
   */
  _settlePartyRequests(call, msg) {
    const byRef = msg.ref != null ? this._pending.get(msg.ref) : null;
    if (msg.type === 'participantUpdated' && byRef && byRef.call === call) {
      const p = participantOf(msg.participant);
      if (byRef.type === 'addParticipant') {
        if (p) byRef.participantId = p.id;
        if (!p || p.state !== 'joined') return;
      }
      this._pending.delete(msg.ref);
      return byRef.resolve(p);
    }
    for (const [ref, q] of this._pending) {
      if (q.call !== call || !q.participantId) continue;
      if (msg.type === 'participantJoined' && q.type === 'addParticipant' && msg.participant && msg.participant.id === q.participantId) {
        this._pending.delete(ref);
        return q.resolve(participantOf(msg.participant));
      }
      if (msg.type === 'participantLeft' && msg.participantId === q.participantId) {
        this._pending.delete(ref);
        if (q.type === 'removeParticipant') {
          q.resolve();
          continue;
        }
        if (q.type !== 'addParticipant') {
          q.reject(this._report(new OperatorError('BAD_REQUEST', 'the participant left', { callId: call.callId, participantId: q.participantId })));
          continue;
        }
        // The server's `error` (same ref) follows: it is this rejection, not a second error.
        this._quiet(ref);
        const code = ADD_FAILURES[msg.reason] || 'TARGET_FAILED';
        const err = new OperatorError(code, `the participant did not join (${msg.reason || 'failed'})`, { callId: call.callId, participantId: q.participantId });
        q.reject(this._report(err));
      }
    }
  }

  /**
   * A `transfer` message settles the `transfer` request it names (by ref): blind on
   * `completed`, attended on `consulting`; `failed` rejects with the reason's code. Its end
   * (`completed`, `merged`, `cancelled`, `failed`) settles `transferComplete`/`Merge`/`Cancel`.
   */
  _settleTransfer(call, msg) {
    const state = msg.state;
    const failure = () =>
      new OperatorError(ADD_FAILURES[msg.reason] || 'TARGET_FAILED', `the transfer failed (${msg.reason || 'failed'})`, {
        callId: call.callId,
        participantId: msg.participantId,
      });
    const q = msg.ref != null ? this._pending.get(msg.ref) : null;
    if (q && q.type === 'transfer' && q.call === call) {
      if (state === 'failed') {
        this._pending.delete(msg.ref);
        q.reject(this._report(failure()));
      } else if (state === 'cancelled') {
        this._pending.delete(msg.ref);
        q.reject(this._report(new OperatorError('TRANSFER_CANCELLED', 'the transfer was cancelled', { callId: call.callId })));
      } else if (state === 'completed' || state === 'merged' || (state === 'consulting' && q.attended)) {
        this._pending.delete(msg.ref);
        q.resolve();
      }
    }
    if (!['completed', 'merged', 'cancelled', 'failed'].includes(state)) return;
    for (const [ref, p] of this._pending) {
      if (p.call !== call || !p.transferAction) continue;
      this._pending.delete(ref);
      if (state === 'failed') p.reject(this._report(failure()));
      else p.resolve();
    }
  }

  /** A `recording` message with a `record` request's ref resolves it with `{id, status}`. */
  _settleRecord(call, msg) {
    const q = msg.ref != null ? this._pending.get(msg.ref) : null;
    const info = recordingOf(msg);
    if (!q || q.type !== 'record' || q.call !== call || !info) return;
    this._pending.delete(msg.ref);
    q.resolve(info);
  }

  _quiet(ref) {
    this._quietRefs.add(ref);
    if (this._quietRefs.size > FIRE_AND_FORGET_REFS) this._quietRefs.delete(this._quietRefs.values().next().value);
  }

  _onReady(msg) {
    if (this._ready) return this._log('warn', 'duplicate ready ignored');
    this._clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this._ready = true;
    this.sessionId = msg.sessionId ?? null;
    this.operatorInfo = msg.operator ?? null;
    this.numbers = Array.isArray(msg.numbers) ? msg.numbers : [];
    const reconnect = this._hadReady;
    this._hadReady = true;
    this._attempt = 0;
    // `ready.missedHeartbeats` is the server's own patience; ours is `missedHeartbeats` (2).
    this._startHeartbeat(this._heartbeatOverride ?? msg.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_MS);
    this._setState('online');
    this._resumeCalls(Array.isArray(msg.calls) ? msg.calls : []);
    this._resend = null;
    if (reconnect && this._ids) {
      const ids = this._ids;
      const promise = this._request({ type: 'online', numbers: ids }).then(availabilityOf);
      promise.catch((err) => this._log('warn', `re-sending online failed: ${err.message}`));
      this._resend = { ids, promise };
    }
    const waiters = this._readyWaiters.splice(0);
    for (const w of waiters) w.resolve();
  }

  /** After `ready`: keep the calls listed, end the others (`offline`), reoffer where media is gone. */
  _resumeCalls(list) {
    const listed = new Map();
    for (const info of list) if (info && info.callId) listed.set(info.callId, info);
    for (const call of [...this._calls.values()]) if (!listed.has(call.callId)) call._end('offline');
    for (const info of listed.values()) {
      if (this._hangupOnResume.has(info.callId)) {
        this._sendMsg({ type: 'hangup', callId: info.callId, ref: this._nextRef() });
        continue;
      }
      const state = serverCallState(info);
      let call = this._calls.get(info.callId);
      if (!call) {
        // Not ours yet (e.g. the page was reloaded): adopt it.
        const Kind = info.direction === 'monitor' ? MonitorCall : Call;
        call = new Kind(this, {
          callId: info.callId,
          direction: info.direction === 'outbound' ? 'outbound' : 'inbound',
          mode: info.mode,
          from: info.from,
          to: info.to,
          number: info.number,
          callerName: info.callerName,
          state: state === 'connected' ? 'connecting' : state,
        });
        if (typeof info.muted === 'boolean') call.muted = info.muted;
        this._calls.set(call.callId, call);
        if (call.direction === 'inbound' && state === 'ringing') {
          this._updateRingtone();
          this._emit('incomingCall', call);
          continue;
        }
      } else if (typeof info.muted === 'boolean' && info.muted !== call.muted && state === 'connected') {
        this._sendCallMsg(call, { type: 'mute', callId: call.callId, on: call.muted }); // our mic state wins
      }
      if (typeof info.held === 'boolean') call.held = info.held;
      if (typeof info.remoteHeld === 'boolean') call.remoteHeld = info.remoteHeld;
      call._setParties(info);
      call._setRecording(info.recording ? recordingOf({ recordingId: info.recording.id, status: info.recording.status }) : null);
      const offered = call.direction === 'inbound' && state === 'ringing';
      if (!offered) {
        if (!this._current) this._setCurrent(call);
        if (call.state === 'ringing' && call.direction === 'inbound') call.state = 'connecting'; // our accept won
      }
      if (!offered && !call._hasLivePc()) this._reoffer(call, state);
      else call._enqueue(() => call._applyServerState(state));
    }
    this._hangupOnResume.clear();
  }

  async _reoffer(call, state, failReason = 'failed') {
    let pc = null;
    try {
      const offer = await this._prepareOffer(call, true);
      pc = offer.pc;
      if (call.state === 'ended') {
        if (offer.stream !== call.localStream) stopStream(offer.stream);
        return closePc(pc);
      }
      call.localStream = offer.stream;
      await this._request({ type: 'reoffer', callId: call.callId, sdp: offer.sdp }, { call, pc });
      call._enqueue(() => call._applyServerState(state));
    } catch (err) {
      if (pc && call._pc !== pc) closePc(pc);
      if (call.state === 'ended') return;
      this._report(err, call.callId);
      if (err.code === 'WS_ERROR') return; // lost again: the next ready retries
      this._sendMsg({ type: 'hangup', callId: call.callId, ref: this._nextRef() });
      call._end(failReason);
    }
  }

  _onAvailability(msg) {
    const av = availabilityOf(msg);
    this.availability = av;
    const p = this._takePending(msg.ref, (q) => q.type === 'online' || q.type === 'offline');
    this._emit('availabilityChanged', av);
    if (p) p.resolve(msg);
  }

  _onIncoming(msg) {
    if (!msg.callId || this._calls.has(msg.callId)) return;
    const call = new Call(this, {
      callId: msg.callId,
      direction: 'inbound',
      from: msg.from,
      to: msg.to,
      number: msg.number,
      callerName: msg.callerName,
      invitedBy: typeof msg.invitedBy === 'string' ? msg.invitedBy : null,
      transfer: msg.transfer,
      state: 'ringing',
    });
    this._calls.set(call.callId, call);
    this._updateRingtone();
    this._emit('incomingCall', call);
  }

  _onAnswer(msg) {
    const p = this._takePending(
      msg.ref,
      (q) =>
        (q.type === 'dial' && (!q.call.callId || q.call.callId === msg.callId)) ||
        ((q.type === 'accept' || q.type === 'reoffer' || q.type === 'monitor') && q.callId === msg.callId),
    );
    if (!p || !p.call) return this._log('warn', `unexpected answer for ${msg.callId}`);
    const call = p.call;
    if (typeof msg.sdp !== 'string' || (p.type === 'dial' && !msg.callId)) {
      return p.reject(new OperatorError('PROTOCOL_ERROR', 'answer without sdp or callId'));
    }
    if (p.type === 'dial') {
      call.callId = msg.callId;
      this._calls.set(call.callId, call);
      if (this._current === call) this._emit('currentCallChanged', call);
    }
    call._answered = true;
    call._enqueue(async () => {
      if (call.state === 'ended') return p.reject(callEndedError(call));
      try {
        await call._applyAnswer(p.pc, msg.sdp);
      } catch (err) {
        return p.reject(new OperatorError('MEDIA_ERROR', `could not apply the SDP answer: ${err && err.message}`));
      }
      if (p.type === 'accept') call._emit('accepted');
      p.resolve(msg);
    });
  }

  _onServerError(msg) {
    if (msg.ref != null && this._quietRefs.has(msg.ref)) {
      this._quietRefs.delete(msg.ref);
      return this._log('debug', `server error for a settled request: ${msg.code} ${msg.message || ''}`);
    }
    const err = new OperatorError(typeof msg.code === 'string' ? msg.code : 'INTERNAL', msg.message);
    if (msg.callId) err.callId = msg.callId;
    if (typeof msg.participantId === 'string') err.participantId = msg.participantId;
    if (err.code === 'UNAUTHORIZED') this._authError = err;
    const p = this._takePending(msg.ref, (q) => msg.callId && q.callId === msg.callId);
    if (!err.callId) err.callId = (p && (p.callId || (p.call && p.call.callId))) || this._refCallIds.get(msg.ref) || undefined;
    this._report(err);
    if (p) p.reject(err);
  }

  // ---- audio devices and sounds ----

  /**
   * The audio devices: `{inputs, outputs}`, each `[{deviceId, label, groupId, kind}]` (labels are
   * empty until the page has had microphone permission).
   */
  async listDevices() {
    try {
      return await this._enumerate();
    } catch (err) {
      throw this._report(err);
    }
  }

  async _enumerate() {
    const md = this._mediaDevices;
    if (!md || typeof md.enumerateDevices !== 'function') throw new OperatorError('NOT_SUPPORTED', 'enumerateDevices is not available');
    let list;
    try {
      list = await md.enumerateDevices();
    } catch (err) {
      throw new OperatorError('DEVICE_ERROR', `enumerateDevices failed: ${err && err.message}`);
    }
    const pick = (kind) =>
      (Array.isArray(list) ? list : [])
        .filter((d) => d && d.kind === kind)
        .map((d) => ({ deviceId: d.deviceId, label: d.label || '', groupId: d.groupId || '', kind }));
    this._devices = { inputs: pick('audioinput'), outputs: pick('audiooutput') };
    return this._devices;
  }

  /** The chosen microphone's deviceId, or null for the default one. */
  get inputDeviceId() {
    return this._inputDeviceId;
  }

  /** The chosen speaker's deviceId, or null for the default one. */
  get outputDeviceId() {
    return this._outputDeviceId;
  }

  /**
   * Use this microphone (null or `default`: the default one) for the next calls and, during a
   * call, at once: the sender's track is replaced, no renegotiation. The mute state is kept.
   */
  async setInputDevice(deviceId) {
    try {
      await this._switchInput(!deviceId || deviceId === 'default' ? null : String(deviceId), 'selected');
    } catch (err) {
      throw this._report(err);
    }
  }

  async _switchInput(id, reason) {
    const previous = this._inputDeviceId;
    this._inputDeviceId = id;
    const call = this._current;
    if (call && call._pc && call.state !== 'ended') {
      let stream;
      try {
        stream = await this._getMic();
      } catch (err) {
        if (reason === 'selected') this._inputDeviceId = previous;
        throw err;
      }
      const sender = call.state !== 'ended' && call._pc ? audioSender(call._pc) : null;
      const track = audioTracks(stream)[0];
      if (!sender || !track || typeof sender.replaceTrack !== 'function') {
        stopStream(stream);
        if (call.state !== 'ended') {
          if (reason === 'selected') this._inputDeviceId = previous;
          throw new OperatorError('NOT_SUPPORTED', 'cannot replace the microphone track of this call');
        }
      } else {
        track.enabled = !call.muted;
        try {
          await sender.replaceTrack(track);
        } catch (err) {
          stopStream(stream);
          if (reason === 'selected') this._inputDeviceId = previous;
          throw new OperatorError('MEDIA_ERROR', `could not switch the microphone: ${err && err.message}`);
        }
        const old = call.localStream;
        call.localStream = stream;
        if (old !== stream) stopStream(old);
        if (call._meter) call._meter.setInput(stream);
        if (call._monitor) call._monitor.resetInputLevel();
      }
    }
    if (previous !== id || reason !== 'selected') this._emit('inputDeviceChanged', { deviceId: id, reason });
  }

  /**
   * Play the call (the `audioElement` option) and the ringtone on this speaker (null or
   * `default`: the default one), through `setSinkId`. `NOT_SUPPORTED` without an audio element
   * or without setSinkId (Firefox before 116, Safari).
   */
  async setOutputDevice(deviceId) {
    try {
      const id = !deviceId || deviceId === 'default' ? null : String(deviceId);
      if (!this._audioElement && !this._ringtoneOpt) {
        throw new OperatorError('NOT_SUPPORTED', 'the SDK plays no audio: pass the audioElement option, or call setSinkId on your own element');
      }
      const probe = this._audioElement ?? (this._Audio ? safely(() => new this._Audio()) : null);
      if (!probe || typeof probe.setSinkId !== 'function') throw new OperatorError('NOT_SUPPORTED', 'this browser cannot choose the audio output (no setSinkId)');
      try {
        await Promise.all(this._sinkElements().map((el) => el.setSinkId(id ?? '')));
      } catch (err) {
        throw new OperatorError('DEVICE_ERROR', `could not use the audio output ${id}: ${err && err.message}`);
      }
      const previous = this._outputDeviceId;
      this._outputDeviceId = id;
      if (previous !== id) this._emit('outputDeviceChanged', { deviceId: id, reason: 'selected' });
    } catch (err) {
      throw this._report(err);
    }
  }

  _sinkElements() {
    return [this._audioElement, this._ringtone && this._ringtone.el].filter((el) => el && typeof el.setSinkId === 'function');
  }

  /** `devicechange`: tell the app, and fall back to the default device when the chosen one is gone. */
  async _devicesChanged() {
    if (this._disposed) return;
    const devices = await this._enumerate();
    this._emit('devicesChanged', devices);
    const call = this._current;
    const track = call && call._pc ? audioTracks(call.localStream)[0] : null;
    if (this._inputDeviceId && !devices.inputs.some((d) => d.deviceId === this._inputDeviceId)) {
      await this._switchInput(null, 'unplugged');
    } else if (track && track.readyState === 'ended') {
      await this._switchInput(this._inputDeviceId, 'unplugged'); // the default device went away under us
    }
    if (this._outputDeviceId && !devices.outputs.some((d) => d.deviceId === this._outputDeviceId)) {
      this._outputDeviceId = null;
      await Promise.all(this._sinkElements().map((el) => Promise.resolve().then(() => el.setSinkId('')).catch(() => {})));
      this._emit('outputDeviceChanged', { deviceId: null, reason: 'unplugged' });
    }
  }

  /** The shared AudioContext of the level meters, created on first use (null without WebAudio). */
  _audioContext() {
    if (!this._audioCtx && this._AudioContext) {
      try {
        this._audioCtx = new this._AudioContext();
      } catch (err) {
        this._log('debug', 'no AudioContext:', err && err.message);
        this._AudioContext = null;
        return null;
      }
    }
    const ctx = this._audioCtx;
    if (ctx && ctx.state === 'suspended' && typeof ctx.resume === 'function') Promise.resolve().then(() => ctx.resume()).catch(() => {});
    return ctx;
  }

  /**
   * Create (or resume) the level meters' AudioContext now, while the click that accepts or
   * dials is still the current user activation: created later it would start suspended.
   */
  _warmAudio() {
    if (this._levelIntervalMs > 0) this._audioContext();
  }

  /** With the `audioElement` option: play the active call's remote audio there. */
  _playRemote(call) {
    const el = this._audioElement;
    if (!el || call !== this._current || !call.remoteStream) return;
    if (el.srcObject !== call.remoteStream) el.srcObject = call.remoteStream;
    if (typeof el.play === 'function') {
      Promise.resolve()
        .then(() => el.play())
        .catch((err) => this._log('info', `remote audio not played (autoplay policy?): ${err && err.message}`));
    }
  }

  /** Ring while an inbound offer waits and no call is active (the `ringtone` option). */
  _updateRingtone() {
    if (!this._ringtoneOpt) return;
    const ringing = !this._current && [...this._calls.values()].some((c) => c.direction === 'inbound' && c.state === 'ringing');
    if (ringing && !this._ringtone) this._startRingtone();
    else if (!ringing) this._stopRingtone();
  }

  _startRingtone() {
    if (!this._Audio) return this._log('debug', 'no Audio element: no ringtone');
    const url = typeof this._ringtoneOpt === 'string' ? this._ringtoneOpt : ringtoneDataUrl();
    const el = safely(() => new this._Audio(url));
    if (!el) return;
    el.loop = true;
    this._ringtone = { el };
    if (this._outputDeviceId && typeof el.setSinkId === 'function') {
      Promise.resolve()
        .then(() => el.setSinkId(this._outputDeviceId))
        .catch(() => {});
    }
    Promise.resolve()
      .then(() => el.play())
      .catch((err) => this._log('info', `ringtone not played (autoplay policy?): ${err && err.message}`));
  }

  _stopRingtone() {
    const r = this._ringtone;
    this._ringtone = null;
    if (!r) return;
    quietly(() => r.el.pause());
    quietly(() => (r.el.currentTime = 0));
  }

  /** The call's quality summary to the server (`quality`, for its CDR); errors about it stay quiet. */
  _sendQualityReport(call) {
    if (!this._sendQuality) return;
    const ref = this._nextRef();
    if (this._sendMsg({ type: 'quality', callId: call.callId, summary: call.qualitySummary, ref })) this._quiet(ref);
  }

  // ---- media ----

  async _getMic() {
    const md = this._mediaDevices;
    if (!md || typeof md.getUserMedia !== 'function') {
      throw new OperatorError('MIC_UNAVAILABLE', 'getUserMedia is not available (it needs a secure context: https)');
    }
    try {
      return await md.getUserMedia({ audio: this._audioConstraints() });
    } catch (err) {
      const name = err && err.name;
      if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') {
        throw new OperatorError('MIC_PERMISSION_DENIED', 'microphone permission denied');
      }
      throw new OperatorError('MIC_UNAVAILABLE', `no usable microphone: ${(err && err.message) || name}`);
    }
  }

  /** The audio constraints with the chosen input device, if any. */
  _audioConstraints(deviceId = this._inputDeviceId) {
    if (!deviceId) return this._audio;
    const base = this._audio && typeof this._audio === 'object' ? this._audio : {};
    return { ...base, deviceId: { exact: deviceId } };
  }

  /**
   * A new RTCPeerConnection with the microphone on one sendrecv audio transceiver, its offer
   * set as local description and ICE gathering done (or given up after the timeout).
   */
  async _prepareOffer(call, reuseStream) {
    const reuse = reuseStream && audioTracks(call.localStream).some((t) => t.readyState !== 'ended');
    const stream = reuse ? call.localStream : await this._getMic();
    let pc = null;
    try {
      const track = audioTracks(stream)[0];
      if (!track) throw new OperatorError('MIC_UNAVAILABLE', 'the microphone stream has no audio track');
      if (!this._RTCPeerConnection) throw new OperatorError('MEDIA_ERROR', 'RTCPeerConnection is not available');
      pc = new this._RTCPeerConnection(this._rtcConfig);
      call._watchPc(pc);
      track.enabled = !call.muted;
      pc.addTrack(track, stream);
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      await waitIceGathering(pc, this._iceTimeoutMs, this._setTimeout, this._clearTimeout);
      const sdp = (pc.localDescription && pc.localDescription.sdp) || offer.sdp;
      return { pc, stream, sdp };
    } catch (err) {
      if (pc) closePc(pc);
      if (!reuse) stopStream(stream);
      throw err instanceof OperatorError ? err : new OperatorError('MEDIA_ERROR', `could not create the offer: ${err && err.message}`);
    }
  }

  // ---- helpers ----

  async _fetchToken() {
    let token;
    try {
      token = await this._getToken();
    } catch (err) {
      throw new OperatorError('UNAUTHORIZED', `getToken failed: ${(err && err.message) || err}`, { cause: err });
    }
    if (token && typeof token === 'object') {
      // `{ token, expiresAt? }`, as the operator SDK 0.3.0 takes it.
      this.tokenExpiresAt = token.expiresAt ?? null;
      token = token.token;
    }
    if (typeof token !== 'string' || !token) throw new OperatorError('UNAUTHORIZED', 'getToken returned no token');
    return token;
  }

  _forgetCall(call) {
    if (call.callId && this._calls.get(call.callId) === call) this._calls.delete(call.callId);
    if (call.callId) {
      this._finished.add(call.callId);
      if (this._finished.size > FIRE_AND_FORGET_REFS) this._finished.delete(this._finished.values().next().value);
    }
    if (this._current === call) this._setCurrent(null);
    const el = this._audioElement;
    if (el && call.remoteStream && el.srcObject === call.remoteStream) el.srcObject = null;
    for (const [ref, p] of this._pending) {
      if (p.call === call) {
        this._pending.delete(ref);
        if (p.resolveOnEnd) p.resolve();
        else p.reject(callEndedError(call));
      }
    }
    this._updateRingtone();
  }

  /** Emit `err` through the `error` event (once per error) and return it as an OperatorError. */
  _report(err, callId) {
    if (!(err instanceof OperatorError)) {
      err = new OperatorError('INTERNAL', (err && err.message) || String(err), { cause: err });
    }
    if (callId && !err.callId) err.callId = callId;
    if (!err.reported) {
      err.reported = true;
      const payload = { code: err.code, message: err.message };
      if (err.callId) payload.callId = err.callId;
      this._log('warn', `${err.code}: ${err.message}`);
      this._emit('error', payload);
    }
    return err;
  }

  _log(level, ...args) {
    const fn = this._logger && this._logger[level];
    if (typeof fn === 'function') quietly(() => fn.call(this._logger, '[operator]', ...args));
  }
}

// ---- call quality ----

const DEFAULT_THRESHOLDS = {
  rtt: 400, // ms: `high-rtt` above
  jitter: 30, // ms: `high-jitter` above
  packetLoss: 1, // % of the packets of a sample lost: `high-packet-loss` above
  mos: 3.5, // `low-mos` below
  window: 5, // the last samples looked at
  count: 3, // how many of them must cross for a warning (fewer clears it)
  constantInputSamples: 10, // `constant-audio-input-level`: this many input levels with no variation
};

const ADD_FAILURES = { busy: 'TARGET_BUSY', no_answer: 'NO_ANSWER', failed: 'TARGET_FAILED', rejected: 'TARGET_FAILED', canceled: 'TARGET_FAILED' };

/**
 * An estimated MOS (1 to 4.5) from the E-model (ITU-T G.107), simplified as usual for VoIP
 * monitoring: the effective one-way delay d = rtt/2 + 2 * jitter + 10 ms (jitter buffer and
 * codec); the delay impairment Id = d/40 below 160 ms, else (d - 120)/10; the loss impairment
 * Ie = 2.5 per % of packets lost; R = 93.2 - Id - Ie (0 to 100); MOS = 1 + 0.035 R +
 * 7e-6 R (R - 60)(100 - R). A clean path gives 4.4; 100 ms RTT, 20 ms jitter and 1 % loss
 * 4.29; the same with 5 % loss 3.95; 600 ms RTT and 50 ms jitter 3.31. Inputs in ms and %.
 */
export function estimateMos({ rtt = 0, jitter = 0, packetLoss = 0 } = {}) {
  const d = Math.max(0, rtt) / 2 + 2 * Math.max(0, jitter) + 10;
  const id = d < 160 ? d / 40 : (d - 120) / 10;
  const r = Math.min(100, Math.max(0, 93.2 - id - 2.5 * Math.max(0, packetLoss)));
  const mos = 1 + 0.035 * r + 0.000007 * r * (r - 60) * (100 - r);
  return round(Math.min(4.5, Math.max(1, mos)), 2);
}

/** The audio figures of one `getStats()` report (times in ms, levels 0 to 1; null when absent). */
function readStats(report) {
  const out = { rtt: null, jitter: null, packetsReceived: null, packetsLost: null, bytesReceived: null, bytesSent: null, audioInputLevel: null, audioOutputLevel: null };
  const all = [];
  if (report && typeof report.forEach === 'function') report.forEach((s) => all.push(s));
  else if (report && typeof report === 'object') all.push(...Object.values(report));
  let pairRtt = null;
  const selected = new Set(all.filter((s) => s && s.type === 'transport' && s.selectedCandidatePairId).map((s) => s.selectedCandidatePairId));
  for (const s of all) {
    if (!s || typeof s !== 'object') continue;
    const audio = (s.kind ?? s.mediaType ?? 'audio') === 'audio';
    switch (s.type) {
      case 'inbound-rtp':
        if (!audio) break;
        out.jitter = msOf(s.jitter);
        out.packetsReceived = numOf(s.packetsReceived);
        out.packetsLost = numOf(s.packetsLost);
        out.bytesReceived = numOf(s.bytesReceived);
        if (numOf(s.audioLevel) != null) out.audioOutputLevel = s.audioLevel;
        break;
      case 'outbound-rtp':
        if (audio) out.bytesSent = numOf(s.bytesSent);
        break;
      case 'remote-inbound-rtp':
        if (audio && msOf(s.roundTripTime) != null) out.rtt = msOf(s.roundTripTime);
        break;
      case 'candidate-pair':
        if ((selected.has(s.id) || s.selected || s.nominated) && msOf(s.currentRoundTripTime) != null) pairRtt = msOf(s.currentRoundTripTime);
        break;
      case 'media-source':
        if (audio && numOf(s.audioLevel) != null) out.audioInputLevel = s.audioLevel;
        break;
      case 'track': // before media-source (older Chromium)
        if (audio && numOf(s.audioLevel) != null) out[s.remoteSource ? 'audioOutputLevel' : 'audioInputLevel'] = s.audioLevel;
        break;
    }
  }
  if (out.rtt == null) out.rtt = pairRtt;
  return out;
}

/** Samples a call's `getStats()` every `statsIntervalMs`: `sample` events, warnings, the summary. */
class QualityMonitor {
  constructor(call, op) {
    this._call = call;
    this._op = op;
    this._pc = null;
    this._prev = null; // the previous reading of this peer connection
    this._base = { received: 0, lost: 0 }; // packet counts of the peer connections before this one
    this._recent = [];
    this._levels = [];
    this._raised = new Set();
    this._everRaised = new Set();
    this._agg = { n: 0, rtt: [0, 0, null], jitter: [0, 0, null], mos: [0, 0, null], received: 0, lost: 0 };
    this._stopped = false;
    this._timer = null;
    this._schedule();
  }

  setPc(pc) {
    if (!pc || pc === this._pc) return;
    if (this._prev) {
      this._base.received += this._prev.packetsReceived ?? 0;
      this._base.lost += Math.max(0, this._prev.packetsLost ?? 0);
    }
    this._pc = pc;
    this._prev = null;
  }

  resetInputLevel() {
    this._levels = [];
  }

  stop() {
    this._stopped = true;
    this._op._clearTimeout(this._timer);
    this._timer = null;
  }

  _schedule() {
    this._timer = this._op._setTimeout(() => {
      this._timer = null;
      this._tick();
    }, this._op._statsIntervalMs);
  }

  async _tick() {
    const pc = this._pc;
    try {
      if (pc && typeof pc.getStats === 'function' && pc.connectionState !== 'closed') {
        const report = await pc.getStats();
        if (!this._stopped && pc === this._pc) this._add(readStats(report));
      }
    } catch (err) {
      this._op._log('debug', 'getStats failed:', err && err.message);
    }
    if (!this._stopped) this._schedule();
  }

  _add(st) {
    const prev = this._prev;
    let loss = null;
    if (st.packetsReceived != null && st.packetsLost != null) {
      const dr = st.packetsReceived - (prev ? prev.packetsReceived ?? 0 : 0);
      const dl = Math.max(0, st.packetsLost - (prev ? prev.packetsLost ?? 0 : 0));
      loss = dr + dl > 0 ? (100 * dl) / (dr + dl) : 0;
    }
    this._prev = st;
    const known = st.rtt != null || st.jitter != null || loss != null;
    const sample = {
      timestamp: this._op._now(),
      rtt: round(st.rtt, 1),
      jitter: round(st.jitter, 1),
      packetLoss: round(loss, 2),
      mos: known ? estimateMos({ rtt: st.rtt ?? 0, jitter: st.jitter ?? 0, packetLoss: loss ?? 0 }) : null,
      packetsReceived: st.packetsReceived == null ? null : this._base.received + st.packetsReceived,
      packetsLost: st.packetsLost == null ? null : this._base.lost + Math.max(0, st.packetsLost),
      bytesReceived: st.bytesReceived,
      bytesSent: st.bytesSent,
      audioInputLevel: st.audioInputLevel,
      audioOutputLevel: st.audioOutputLevel,
    };
    const a = this._agg;
    a.n++;
    for (const k of ['rtt', 'jitter', 'mos']) {
      const v = sample[k];
      if (v == null) continue;
      a[k][0] += v;
      a[k][1]++;
      a[k][2] = a[k][2] == null ? v : k === 'mos' ? Math.min(a[k][2], v) : Math.max(a[k][2], v);
    }
    if (sample.packetsReceived != null) a.received = sample.packetsReceived;
    if (sample.packetsLost != null) a.lost = sample.packetsLost;
    this._call.quality = sample;
    this._call._emit('sample', sample);
    this._checkWarnings(sample);
  }

  _checkWarnings(sample) {
    const t = this._op._thresholds;
    this._recent.push(sample);
    while (this._recent.length > t.window) this._recent.shift();
    const crossing = (key, above) => this._recent.filter((s) => s[key] != null && (above ? s[key] > t[key] : s[key] < t[key])).length >= t.count;
    this._set('high-rtt', crossing('rtt', true), sample.rtt, t.rtt);
    this._set('high-jitter', crossing('jitter', true), sample.jitter, t.jitter);
    this._set('high-packet-loss', crossing('packetLoss', true), sample.packetLoss, t.packetLoss);
    this._set('low-mos', crossing('mos', false), sample.mos, t.mos);
    // A live microphone's level always varies a little; a dead or hardware-muted one's does not.
    // Not judged while the call is muted (the SDK's own mute silences the track).
    if (this._call.muted || sample.audioInputLevel == null) return;
    this._levels.push(sample.audioInputLevel * 32767);
    while (this._levels.length > t.constantInputSamples) this._levels.shift();
    if (this._levels.length < t.constantInputSamples) return;
    const dev = stddev(this._levels);
    this._set('constant-audio-input-level', dev < 1, round(dev, 2), 1);
  }

  _set(name, on, value, threshold) {
    const call = this._call;
    if (on === this._raised.has(name)) return;
    if (on) {
      this._raised.add(name);
      this._everRaised.add(name);
    } else {
      this._raised.delete(name);
    }
    call.warnings = [...this._raised];
    if (on) call._emit('warning', { name, value, threshold });
    else call._emit('warningCleared', { name });
  }

  summary() {
    const a = this._agg;
    const call = this._call;
    const avg = (k, digits) => (a[k][1] ? round(a[k][0] / a[k][1], digits) : null);
    const total = a.received + a.lost;
    return {
      samples: a.n,
      durationMs: call.connectedAt == null ? 0 : Math.max(0, (call.endedAt ?? this._op._now()) - call.connectedAt),
      rttAvgMs: avg('rtt', 1),
      rttMaxMs: round(a.rtt[2], 1),
      jitterAvgMs: avg('jitter', 1),
      jitterMaxMs: round(a.jitter[2], 1),
      packetsReceived: a.received,
      packetsLost: a.lost,
      packetLossPct: total ? round((100 * a.lost) / total, 2) : a.n ? 0 : null,
      mosAvg: avg('mos', 2),
      mosMin: a.mos[2],
      warnings: [...this._everRaised],
    };
  }
}

/** Input and output levels (RMS, 0 to 1) of a call through WebAudio analysers: `audioLevel` events. */
class LevelMeter {
  static create(call, op) {
    const ctx = op._audioContext();
    return ctx ? new LevelMeter(call, op, ctx) : null;
  }

  constructor(call, op, ctx) {
    this._call = call;
    this._op = op;
    this._ctx = ctx;
    this._in = this._tap(call.localStream);
    this._out = this._tap(call.remoteStream);
    this._timer = null;
    this._schedule();
  }

  setInput(stream) {
    this._untap(this._in);
    this._in = this._tap(stream);
  }

  setOutput(stream) {
    this._untap(this._out);
    this._out = this._tap(stream);
  }

  stop() {
    this._op._clearTimeout(this._timer);
    this._timer = null;
    this._untap(this._in);
    this._untap(this._out);
    this._in = this._out = null;
  }

  _tap(stream) {
    if (!stream) return null;
    try {
      const src = this._ctx.createMediaStreamSource(stream);
      const an = this._ctx.createAnalyser();
      an.fftSize = 512;
      src.connect(an);
      return { src, an, buf: new Float32Array(an.fftSize) };
    } catch (err) {
      this._op._log('debug', 'no level meter:', err && err.message);
      return null;
    }
  }

  _untap(tap) {
    if (tap) quietly(() => tap.src.disconnect());
  }

  _level(tap) {
    if (!tap) return 0;
    tap.an.getFloatTimeDomainData(tap.buf);
    let sum = 0;
    for (const v of tap.buf) sum += v * v;
    return round(Math.min(1, Math.sqrt(sum / tap.buf.length)), 3);
  }

  _schedule() {
    this._timer = this._op._setTimeout(() => {
      this._timer = null;
      if (this._call.state === 'ended') return;
      try {
        this._call._emit('audioLevel', { input: this._level(this._in), output: this._level(this._out) });
      } catch (err) {
        this._op._log('debug', 'level meter failed:', err && err.message);
      }
      this._schedule();
    }, this._op._levelIntervalMs);
  }
}

let ringtoneUrl = null;

/** The built-in ringtone: one cycle of the North American ring (2 s of 440 + 480 Hz, 4 s off) as a WAV data URL. */
function ringtoneDataUrl() {
  if (ringtoneUrl) return ringtoneUrl;
  const rate = 8000;
  const on = 2 * rate;
  const total = 6 * rate;
  const bytes = new Uint8Array(44 + total);
  const v = new DataView(bytes.buffer);
  const text = (at, t) => {
    for (let i = 0; i < t.length; i++) bytes[at + i] = t.charCodeAt(i);
  };
  text(0, 'RIFF');
  v.setUint32(4, 36 + total, true);
  text(8, 'WAVEfmt ');
  v.setUint32(16, 16, true); // fmt chunk size
  v.setUint16(20, 1, true); // PCM
  v.setUint16(22, 1, true); // mono
  v.setUint32(24, rate, true);
  v.setUint32(28, rate, true); // bytes per second
  v.setUint16(32, 1, true); // block align
  v.setUint16(34, 8, true); // bits per sample (unsigned 8-bit)
  text(36, 'data');
  v.setUint32(40, total, true);
  for (let i = 0; i < on; i++) {
    const t = i / rate;
    bytes[44 + i] = Math.round(128 + 127 * 0.25 * (Math.sin(2 * Math.PI * 440 * t) + Math.sin(2 * Math.PI * 480 * t)));
  }
  bytes.fill(128, 44 + on);
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  ringtoneUrl = `data:audio/wav;base64,${btoa(bin)}`;
  return ringtoneUrl;
}

// ---- helpers ----

/** A participant from the server, with every field present (unknown ones kept). */
function participantOf(p) {
  if (!p || typeof p !== 'object' || typeof p.id !== 'string' || !p.id) return null;
  return {
    ...p,
    role: p.role ?? null,
    state: p.state ?? null,
    kind: p.kind ?? null,
    operatorRef: p.operatorRef ?? null,
    displayName: p.displayName ?? null,
    address: p.address ?? null,
    muted: !!p.muted,
    held: !!p.held,
    monitor: p.monitor ?? null,
    joinedAt: typeof p.joinedAt === 'number' ? p.joinedAt : null,
  };
}

/** `{id, status}` of a `recording` message, or null when it lacks them. */
function recordingOf(msg) {
  if (typeof msg.recordingId !== 'string' || !msg.recordingId || !RECORDING_STATUSES.includes(msg.status)) return null;
  return { id: msg.recordingId, status: msg.status };
}

/** An entry of the `calls` answer (listCalls). */
function callInfoOf(c) {
  return {
    callId: c.callId,
    number: c.number ?? null,
    from: c.from ?? null,
    to: c.to ?? null,
    direction: c.direction ?? null,
    startedAt: typeof c.startedAt === 'number' ? c.startedAt : null,
    participants: Array.isArray(c.participants) ? c.participants.map(participantOf).filter(Boolean) : [],
    recording: c.recording ? recordingOf({ recordingId: c.recording.id, status: c.recording.status }) : null,
    forks: Array.isArray(c.forks) ? c.forks.filter((f) => typeof f === 'string') : [],
  };
}

function audioSender(pc) {
  if (typeof pc.getSenders !== 'function') return null;
  const senders = pc.getSenders();
  return senders.find((s) => s.track && s.track.kind === 'audio') ?? senders[0] ?? null;
}

function numOf(v) {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function msOf(seconds) {
  const v = numOf(seconds);
  return v == null ? null : v * 1000;
}

function round(v, digits) {
  if (v == null || !Number.isFinite(v)) return null;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

function stddev(values) {
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
}

function safely(fn) {
  try {
    return fn();
  } catch {
    return null;
  }
}

function callEndedError(call) {
  const err = new OperatorError('CALL_ENDED', `the call ended (${call.endReason || 'ended'})`, { callId: call.callId, reason: call.endReason });
  err.reported = true; // the callEnded event says it
  return err;
}

function availabilityOf(msg) {
  return {
    accepted: Array.isArray(msg.accepted) ? msg.accepted : [],
    rejected: Array.isArray(msg.rejected) ? msg.rejected : [],
  };
}

/** A resumed call's server state as a Call state. */
function serverCallState(info) {
  switch (info.state) {
    case 'connected':
      return 'connected';
    case 'incoming':
    case 'ringing':
      return 'ringing';
    default:
      return 'connecting';
  }
}

/** http(s)://host[:port] of a ws(s) URL. */
function httpBase(wsUrl) {
  const u = new URL(wsUrl, globalThis.location ? globalThis.location.href : undefined);
  if (u.protocol === 'wss:') u.protocol = 'https:';
  else if (u.protocol === 'ws:') u.protocol = 'http:';
  return u.origin;
}

function audioTracks(stream) {
  if (!stream) return [];
  if (typeof stream.getAudioTracks === 'function') return stream.getAudioTracks();
  return typeof stream.getTracks === 'function' ? stream.getTracks().filter((t) => t.kind === 'audio') : [];
}

function stopStream(stream) {
  if (stream && typeof stream.getTracks === 'function') for (const t of stream.getTracks()) quietly(() => t.stop());
}

function closePc(pc) {
  quietly(() => pc.close());
}

function quietly(fn) {
  try {
    fn();
  } catch {
    /* already stopped or closed */
  }
}

function on(target, event, fn) {
  if (typeof target.addEventListener === 'function') target.addEventListener(event, fn);
  else target[`on${event}`] = fn;
}

/** Resolve when ICE gathering is complete (no trickle: the server is ICE-lite), or after `ms`. */
function waitIceGathering(pc, ms, setT, clearT) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    let timer = null;
    const done = () => {
      clearT(timer);
      if (typeof pc.removeEventListener === 'function') {
        pc.removeEventListener('icegatheringstatechange', onState);
        pc.removeEventListener('icecandidate', onCandidate);
      }
      resolve();
    };
    const onState = () => pc.iceGatheringState === 'complete' && done();
    const onCandidate = (ev) => !ev.candidate && done();
    timer = setT(done, ms);
    on(pc, 'icegatheringstatechange', onState);
    on(pc, 'icecandidate', onCandidate);
  });
}

export default Operator;
