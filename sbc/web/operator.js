/**
 * operator.js: browser client for the SBC operator signalling protocol v1
 * (see sbc/docs/protocol.md). An ES module with no dependencies and no build step,
 * served by the SBC at `/sdk/operator.js`.
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
 * - outbound: `connecting` (dial sent, answer applied) -> `ringing` (far end rings) ->
 *   `connected` -> `ended`
 *
 * Error codes (`error.code`, and the `error` event's `code`): the server's codes
 * `UNAUTHORIZED`, `FORBIDDEN_NUMBER`, `BUSY`, `BAD_REQUEST`, `RATE_LIMITED`, `INTERNAL`,
 * and the client's own: `MIC_PERMISSION_DENIED`, `MIC_UNAVAILABLE` (no microphone or no
 * getUserMedia), `WS_ERROR` (socket could not be opened, or the connection was lost while a
 * request waited), `REPLACED` (closed 4009: this operator connected elsewhere),
 * `PROTOCOL_ERROR` (an unreadable server frame), `MEDIA_ERROR` (WebRTC failed),
 * `HTTP_ERROR` (an HTTP request could not be made). Closes 4001, 4009 and 1002 (protocol
 * version refused) stop reconnecting; any other unexpected close reconnects with backoff. `accept()` and `dial()` reject
 * with `CALL_ENDED` (not emitted as an `error` event) when the call ends before the answer is applied.
 *
 * Every error is emitted once through the `error` event; methods returning a promise also
 * reject with it (an `OperatorError`, whose `code` is the same).
 */

const PROTOCOL_VERSION = 1;
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
 * `operator.dial()`, or `operator.currentCall`.
 *
 * Events (`call.on(...)`): `accepted` (our accept's answer is applied), `ringing`
 * ({earlyMedia}), `connected`, `updated` ({muted, held, remoteHeld}), `dtmf` ({digit}),
 * `remoteStream` (MediaStream; also after a reoffer), `ended` ({reason, code, message}).
 */
export class Call extends Emitter {
  constructor(op, init) {
    super((level, ...a) => op._log(level, ...a));
    this._op = op;
    /** @type {string|null} server call id (null only while a dial awaits its answer) */
    this.callId = init.callId ?? null;
    /** @type {'inbound'|'outbound'} */
    this.direction = init.direction;
    this.from = init.from ?? null;
    this.to = init.to ?? null;
    /** number id the inbound call came in on */
    this.number = init.number ?? null;
    this.callerName = init.callerName ?? null;
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
    /** @type {MediaStream|null} the far end's audio: attach it to an <audio> element */
    this.remoteStream = null;
    /** @type {MediaStream|null} the microphone stream */
    this.localStream = null;
    this.connectedAt = null;
    this.endedAt = null;
    this._pc = null;
    this._remoteApplied = false;
    this._chain = Promise.resolve();
  }

  /** The RTCPeerConnection carrying this call's media (null before the offer / after the end). */
  get peerConnection() {
    return this._pc;
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
    op._current = this;
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
        if (op._current === this) op._current = null;
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
    this.muted = !!on;
    this._applyMute();
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

  // ---- internals ----

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
      case 'ended':
        this._end(msg.reason || 'failed', msg.code, msg.message);
        break;
    }
  }

  _setConnected() {
    if (this.state === 'connected' || this.state === 'ended') return;
    this.state = 'connected';
    this.connectedAt = Date.now();
    if (this.muted) this._op._sendCallMsg(this, { type: 'mute', callId: this.callId, on: true });
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
      this._emit('remoteStream', stream);
    });
    on(pc, 'connectionstatechange', () => this._op._log('debug', `call ${this.callId}: ${pc.connectionState}`));
  }

  async _applyAnswer(pc, sdp) {
    await pc.setRemoteDescription({ type: 'answer', sdp });
    if (this._pc && this._pc !== pc) closePc(this._pc);
    this._pc = pc;
    this._remoteApplied = true;
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

  _closeMedia() {
    if (this._pc) closePc(this._pc);
    this._pc = null;
    this._remoteApplied = false;
    stopStream(this.localStream);
    this.localStream = null;
  }

  _end(reason, code, message) {
    if (this.state === 'ended') return;
    this.state = 'ended';
    this.endReason = reason;
    this.endCode = code ?? null;
    this.endMessage = message ?? null;
    this.endedAt = Date.now();
    this._closeMedia();
    this._op._forgetCall(this);
    this._emit('ended', { reason, code: this.endCode, message: this.endMessage });
    this._op._emit('callEnded', this);
  }
}

/**
 * An operator's signalling session: presence, availability and calls.
 *
 * Events: `presenceStateChanged` ({state, previous}), `availabilityChanged` ({accepted,
 * rejected}), `incomingCall` (Call), `callStarted` (Call, once connected), `callEnded`
 * (Call, `endReason` set), `error` ({code, message, callId?}).
 */
export class Operator extends Emitter {
  /**
   * @param {object} o
   * @param {string} o.url ws(s) URL of `/v1/operator`
   * @param {() => Promise<string>} o.getToken called on every connect and reconnect
   * @param {number} [o.heartbeatIntervalMs] ping interval; default: the server's `ready` value
   * @param {number} [o.missedHeartbeats] silent intervals before the socket counts as dead (default 2)
   * @param {number[]} [o.reconnectBackoffMs] delays before each retry; the last one repeats
   * @param {number} [o.reconnectJitter] extra random fraction of each delay (default 0.2)
   * @param {boolean|MediaTrackConstraints} [o.audioConstraints] for getUserMedia (default true)
   * @param {RTCConfiguration} [o.rtcConfiguration]
   * @param {number} [o.iceGatheringTimeoutMs] wait at most this for ICE gathering (default 1000)
   * @param {number} [o.connectTimeoutMs] socket open + `ready` deadline (default 10000)
   * @param {{debug?, info?, warn?, error?}} [o.logger]
   * Environment (defaults to the browser's globals, injectable for tests): `WebSocket`,
   * `RTCPeerConnection`, `MediaStream`, `mediaDevices`, `fetch`, `setTimeout`,
   * `clearTimeout`, `random`.
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
    this._logger = o.logger ?? DEFAULT_LOGGER;
    this._WebSocket = o.WebSocket ?? g.WebSocket;
    this._RTCPeerConnection = o.RTCPeerConnection ?? g.RTCPeerConnection;
    this._MediaStream = o.MediaStream ?? g.MediaStream;
    this._mediaDevices = o.mediaDevices ?? (g.navigator && g.navigator.mediaDevices);
    // Called through locals so that browser globals never see a foreign `this`.
    const fetchFn = o.fetch ?? g.fetch;
    const st = o.setTimeout ?? g.setTimeout;
    const ct = o.clearTimeout ?? g.clearTimeout;
    const rnd = o.random ?? Math.random;
    this._fetch = fetchFn ? (url, init) => fetchFn(url, init) : null;
    this._setTimeout = (fn, ms) => st(fn, ms);
    this._clearTimeout = (id) => id != null && ct(id);
    this._random = () => rnd();

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

    /** @type {{accepted: string[], rejected: {id: string, code: string}[]}} */
    this.availability = { accepted: [], rejected: [] };
    /** numbers from the last `ready`: [{id, e164, name}] */
    this.numbers = [];
    this.sessionId = null;
    /** {ref, displayName} from the last `ready` */
    this.operatorInfo = null;
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
      const token = await this._fetchToken();
      if (!this._fetch) throw new OperatorError('HTTP_ERROR', 'fetch is not available');
      let res;
      try {
        res = await this._fetch(`${httpBase(this.url)}/v1/numbers`, { headers: { Authorization: `Bearer ${token}` } });
      } catch (err) {
        throw new OperatorError('HTTP_ERROR', `GET /v1/numbers failed: ${err && err.message}`);
      }
      const body = await res.json().catch(() => null); // an error page may hold no JSON
      if (!res.ok) {
        const e = body && body.error;
        const code = (e && e.code) || (res.status === 401 ? 'UNAUTHORIZED' : res.status === 429 ? 'RATE_LIMITED' : 'INTERNAL');
        throw new OperatorError(code, (e && e.message) || `GET /v1/numbers: HTTP ${res.status}`);
      }
      return Array.isArray(body && body.numbers) ? body.numbers : [];
    } catch (err) {
      throw this._report(err);
    }
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

  /** Send `offline`, close the socket (1000) and stop reconnecting. Active calls end (`offline`). */
  async goOffline() {
    this._ids = null;
    if (this._ws && this._ready) this._sendMsg({ type: 'offline', ref: this._nextRef() });
    const err = new OperatorError('WS_ERROR', 'went offline');
    err.reported = true; // asked for: not an error event
    this._stop(err);
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
      await this._ensureReady();
      if (this._current) throw new OperatorError('BUSY', 'another call is active');
      const call = new Call(this, { direction: 'outbound', from: callerId ?? null, to, state: 'connecting' });
      this._current = call;
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
          if (this._current === call) this._current = null;
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
        call = new Call(this, {
          callId: info.callId,
          direction: info.direction === 'outbound' ? 'outbound' : 'inbound',
          from: info.from,
          to: info.to,
          number: info.number,
          callerName: info.callerName,
          state: state === 'connected' ? 'connecting' : state,
        });
        if (typeof info.muted === 'boolean') call.muted = info.muted;
        this._calls.set(call.callId, call);
        if (call.direction === 'inbound' && state === 'ringing') {
          this._emit('incomingCall', call);
          continue;
        }
      } else if (typeof info.muted === 'boolean' && info.muted !== call.muted && state === 'connected') {
        this._sendCallMsg(call, { type: 'mute', callId: call.callId, on: call.muted }); // our mic state wins
      }
      if (typeof info.held === 'boolean') call.held = info.held;
      if (typeof info.remoteHeld === 'boolean') call.remoteHeld = info.remoteHeld;
      const offered = call.direction === 'inbound' && state === 'ringing';
      if (!offered) {
        if (!this._current) this._current = call;
        if (call.state === 'ringing' && call.direction === 'inbound') call.state = 'connecting'; // our accept won
      }
      if (!offered && !call._hasLivePc()) this._reoffer(call, state);
      else call._enqueue(() => call._applyServerState(state));
    }
    this._hangupOnResume.clear();
  }

  async _reoffer(call, state) {
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
      call._end('failed');
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
      state: 'ringing',
    });
    this._calls.set(call.callId, call);
    this._emit('incomingCall', call);
  }

  _onAnswer(msg) {
    const p = this._takePending(
      msg.ref,
      (q) =>
        (q.type === 'dial' && (!q.call.callId || q.call.callId === msg.callId)) ||
        ((q.type === 'accept' || q.type === 'reoffer') && q.callId === msg.callId),
    );
    if (!p || !p.call) return this._log('warn', `unexpected answer for ${msg.callId}`);
    const call = p.call;
    if (typeof msg.sdp !== 'string' || (p.type === 'dial' && !msg.callId)) {
      return p.reject(new OperatorError('PROTOCOL_ERROR', 'answer without sdp or callId'));
    }
    if (p.type === 'dial') {
      call.callId = msg.callId;
      this._calls.set(call.callId, call);
    }
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
    const err = new OperatorError(typeof msg.code === 'string' ? msg.code : 'INTERNAL', msg.message);
    if (msg.callId) err.callId = msg.callId;
    if (err.code === 'UNAUTHORIZED') this._authError = err;
    const p = this._takePending(msg.ref, (q) => msg.callId && q.callId === msg.callId);
    if (!err.callId) err.callId = (p && (p.callId || (p.call && p.call.callId))) || this._refCallIds.get(msg.ref) || undefined;
    this._report(err);
    if (p) p.reject(err);
  }

  // ---- media ----

  async _getMic() {
    const md = this._mediaDevices;
    if (!md || typeof md.getUserMedia !== 'function') {
      throw new OperatorError('MIC_UNAVAILABLE', 'getUserMedia is not available (it needs a secure context: https)');
    }
    try {
      return await md.getUserMedia({ audio: this._audio });
    } catch (err) {
      const name = err && err.name;
      if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') {
        throw new OperatorError('MIC_PERMISSION_DENIED', 'microphone permission denied');
      }
      throw new OperatorError('MIC_UNAVAILABLE', `no usable microphone: ${(err && err.message) || name}`);
    }
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
    if (typeof token !== 'string' || !token) throw new OperatorError('UNAUTHORIZED', 'getToken returned no token');
    return token;
  }

  _forgetCall(call) {
    if (call.callId && this._calls.get(call.callId) === call) this._calls.delete(call.callId);
    if (call.callId) {
      this._finished.add(call.callId);
      if (this._finished.size > FIRE_AND_FORGET_REFS) this._finished.delete(this._finished.values().next().value);
    }
    if (this._current === call) this._current = null;
    for (const [ref, p] of this._pending) {
      if (p.call === call) {
        this._pending.delete(ref);
        p.reject(callEndedError(call));
      }
    }
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
