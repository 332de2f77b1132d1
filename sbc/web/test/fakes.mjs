// Test doubles for operator.js: WebSocket, RTCPeerConnection, mediaDevices, fetch and a
// deterministic clock. No real sleeps: `flush()` only lets pending promise jobs run.

import { Operator } from '../operator.js';

/** Let queued promise jobs (and the client's async chains) run to quiescence. */
export async function flush() {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

/** setTimeout/clearTimeout on a virtual clock advanced by hand. */
export class FakeClock {
  constructor() {
    this.now = 0;
    this.seq = 0;
    this.timers = new Map(); // id -> {fn, at, ms}
    this.setTimeout = (fn, ms = 0) => {
      const id = ++this.seq;
      this.timers.set(id, { fn, at: this.now + ms, ms });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  /** Advance virtual time by `ms`, running every timer that falls due, in order. */
  async advance(ms) {
    const end = this.now + ms;
    for (;;) {
      await flush();
      let next = null;
      for (const [id, t] of this.timers) {
        if (t.at <= end && (!next || t.at < next.t.at || (t.at === next.t.at && id < next.id))) next = { id, t };
      }
      if (!next) break;
      this.timers.delete(next.id);
      this.now = next.t.at;
      next.t.fn();
    }
    this.now = end;
    await flush();
  }
}

export class FakeTrack {
  constructor(kind = 'audio', deviceId = 'default') {
    this.kind = kind;
    this.deviceId = deviceId;
    this.enabled = true;
    this.readyState = 'live';
  }
  stop() {
    this.readyState = 'ended';
  }
}

export class FakeStream {
  constructor(tracks) {
    this.tracks = tracks;
  }
  getTracks() {
    return [...this.tracks];
  }
  getAudioTracks() {
    return this.tracks.filter((t) => t.kind === 'audio');
  }
}

/** A fresh, isolated environment: every fake records what the client did. */
export function makeEnv() {
  const clock = new FakeClock();
  const sockets = [];
  const pcs = [];
  const env = {
    clock,
    sockets,
    pcs,
    iceGatheringState: 'complete',
    fetchCalls: [],
    fetchResponse: null,
    // getStats() of every peer connection: a function of the pc returning a list of stats objects.
    stats: null,
    audioContexts: [],
    audios: [],
  };

  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error('InvalidStateError: not open');
      this.sent.push(JSON.parse(data));
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }
    // ---- the server side, driven by the test ----
    open() {
      this.readyState = 1;
      this.onopen && this.onopen({});
    }
    push(msg) {
      this.onmessage && this.onmessage({ data: typeof msg === 'string' ? msg : JSON.stringify(msg) });
    }
    serverClose(code = 1006, reason = '') {
      this.readyState = 3;
      this.onclose && this.onclose({ code, reason, wasClean: code !== 1006 });
    }
    fail() {
      this.onerror && this.onerror({});
      this.serverClose(1006);
    }
    ofType(type) {
      return this.sent.filter((m) => m.type === type);
    }
    last() {
      return this.sent[this.sent.length - 1];
    }
  }

  class FakePeerConnection {
    constructor(config) {
      this.config = config;
      this.senders = [];
      this.localDescription = null;
      this.remoteDescription = null;
      this.iceGatheringState = env.iceGatheringState;
      this.connectionState = 'new';
      this.signalingState = 'stable';
      this.closed = false;
      this.listeners = {};
      this.remoteStream = new FakeStream([new FakeTrack('audio')]);
      this.index = pcs.length;
      pcs.push(this);
    }
    addEventListener(type, fn) {
      (this.listeners[type] ??= []).push(fn);
    }
    removeEventListener(type, fn) {
      this.listeners[type] = (this.listeners[type] ?? []).filter((f) => f !== fn);
    }
    dispatch(type, ev = {}) {
      for (const fn of [...(this.listeners[type] ?? [])]) fn(ev);
    }
    addTrack(track, stream) {
      const sender = {
        track,
        stream,
        replaced: [],
        async replaceTrack(t) {
          if (env.failReplaceTrack) throw new Error('replaceTrack refused');
          this.replaced.push(t);
          this.track = t;
        },
      };
      this.senders.push(sender);
      return sender;
    }
    /** Drive the connection state from the test, as the browser would. */
    setConnectionState(state) {
      this.connectionState = state;
      this.dispatch('connectionstatechange');
    }
    async getStats() {
      const list = env.stats ? env.stats(this) : [];
      return new Map(list.map((s, i) => [(s && s.id) ?? `s${i}`, s]));
    }
    getSenders() {
      return this.senders;
    }
    async createOffer() {
      return { type: 'offer', sdp: `v=0 offer-${this.index}` };
    }
    async setLocalDescription(desc) {
      this.localDescription = desc;
      this.signalingState = 'have-local-offer';
    }
    async setRemoteDescription(desc) {
      if (env.failRemoteDescription) throw new Error('bad sdp');
      this.remoteDescription = desc;
      this.signalingState = 'stable';
      this.connectionState = 'connected';
      this.dispatch('track', { track: this.remoteStream.getTracks()[0], streams: [this.remoteStream] });
    }
    close() {
      this.closed = true;
      this.connectionState = 'closed';
      this.signalingState = 'closed';
    }
  }

  const mediaDevices = {
    calls: [],
    streams: [],
    deny: null, // an error name to reject with, e.g. 'NotAllowedError'
    devices: [
      { kind: 'audioinput', deviceId: 'default', label: 'Default mic', groupId: 'g0' },
      { kind: 'audioinput', deviceId: 'headset-mic', label: 'Headset mic', groupId: 'g1' },
      { kind: 'audiooutput', deviceId: 'default', label: 'Default speaker', groupId: 'g0' },
      { kind: 'audiooutput', deviceId: 'headset-out', label: 'Headset', groupId: 'g1' },
      { kind: 'videoinput', deviceId: 'cam', label: 'Camera', groupId: 'g2' },
    ],
    listeners: {},
    async getUserMedia(constraints) {
      this.calls.push(constraints);
      if (this.deny) {
        const err = new Error('denied');
        err.name = this.deny;
        throw err;
      }
      const audio = constraints && constraints.audio;
      const wanted = audio && typeof audio === 'object' && audio.deviceId ? audio.deviceId.exact : 'default';
      if (!this.devices.some((d) => d.kind === 'audioinput' && d.deviceId === wanted)) {
        const err = new Error('no such device');
        err.name = 'OverconstrainedError';
        throw err;
      }
      const stream = new FakeStream([new FakeTrack('audio', wanted)]);
      this.streams.push(stream);
      return stream;
    },
    async enumerateDevices() {
      return this.devices.map((d) => ({ ...d }));
    },
    addEventListener(type, fn) {
      (this.listeners[type] ??= []).push(fn);
    },
    removeEventListener(type, fn) {
      this.listeners[type] = (this.listeners[type] ?? []).filter((f) => f !== fn);
    },
    /** Unplug (remove) or plug devices, then fire devicechange as the browser does. */
    change(devices) {
      this.devices = devices;
      for (const fn of [...(this.listeners.devicechange ?? [])]) fn({ type: 'devicechange' });
    },
  };

  /** WebAudio: every analyser reads the `level` (RMS) set on the stream it taps. */
  class FakeAudioContext {
    constructor() {
      this.state = 'running';
      this.closed = false;
      this.sources = [];
      env.audioContexts.push(this);
    }
    createMediaStreamSource(stream) {
      const src = {
        stream,
        disconnected: false,
        connect: (analyser) => (analyser.source = src),
        disconnect: () => (src.disconnected = true),
      };
      this.sources.push(src);
      return src;
    }
    createAnalyser() {
      const an = {
        fftSize: 2048,
        source: null,
        getFloatTimeDomainData(buf) {
          const level = (an.source && an.source.stream.level) ?? 0;
          for (let i = 0; i < buf.length; i++) buf[i] = i % 2 ? level : -level; // RMS = level
        },
      };
      return an;
    }
    close() {
      this.closed = true;
      this.state = 'closed';
    }
  }

  /** An <audio> element: play/pause/setSinkId recorded. */
  class FakeAudio {
    constructor(src) {
      this.src = src ?? '';
      this.srcObject = null;
      this.loop = false;
      this.paused = true;
      this.sinkId = '';
      this.plays = 0;
      env.audios.push(this);
    }
    async play() {
      this.plays++;
      this.paused = false;
    }
    pause() {
      this.paused = true;
    }
    async setSinkId(id) {
      if (id && !mediaDevices.devices.some((d) => d.kind === 'audiooutput' && d.deviceId === id)) {
        const err = new Error('not found');
        err.name = 'NotFoundError';
        throw err;
      }
      this.sinkId = id;
    }
  }

  /** The page (window): pagehide and friends. */
  const window = {
    listeners: {},
    addEventListener(type, fn) {
      (this.listeners[type] ??= []).push(fn);
    },
    removeEventListener(type, fn) {
      this.listeners[type] = (this.listeners[type] ?? []).filter((f) => f !== fn);
    },
    fire(type, init = {}) {
      for (const fn of [...(this.listeners[type] ?? [])]) fn({ type, ...init });
    },
  };

  async function fakeFetch(url, init) {
    env.fetchCalls.push({ url, init });
    const r = env.fetchResponse ?? { status: 200, body: {} };
    return { ok: r.status >= 200 && r.status < 300, status: r.status, json: async () => r.body };
  }

  Object.assign(env, {
    WebSocket: FakeWebSocket,
    RTCPeerConnection: FakePeerConnection,
    mediaDevices,
    fetch: fakeFetch,
    AudioContext: FakeAudioContext,
    Audio: FakeAudio,
    window,
  });
  return env;
}

export const OP_EVENTS = [
  'presenceStateChanged',
  'availabilityChanged',
  'incomingCall',
  'callStarted',
  'callEnded',
  'devicesChanged',
  'inputDeviceChanged',
  'outputDeviceChanged',
  'error',
];

/** An Operator wired to `env`, recording tokens handed out, log lines and every event. */
export function makeOperator(env, opts = {}) {
  const tokens = [];
  const logs = [];
  const events = [];
  const logger = {};
  for (const level of ['debug', 'info', 'warn', 'error']) logger[level] = (...a) => logs.push({ level, text: a.join(' ') });
  const op = new Operator({
    url: 'wss://sbc.test/v1/operator',
    getToken: async () => {
      const t = `tok-${tokens.length + 1}`;
      tokens.push(t);
      return t;
    },
    random: () => 0,
    WebSocket: env.WebSocket,
    RTCPeerConnection: env.RTCPeerConnection,
    mediaDevices: env.mediaDevices,
    fetch: env.fetch,
    setTimeout: env.clock.setTimeout,
    clearTimeout: env.clock.clearTimeout,
    now: () => env.clock.now,
    AudioContext: env.AudioContext,
    Audio: env.Audio,
    window: env.window,
    logger,
    ...opts,
  });
  for (const name of OP_EVENTS) op.on(name, (payload) => events.push({ name, payload }));
  const named = (name) => events.filter((e) => e.name === name).map((e) => e.payload);
  return { op, tokens, logs, events, named };
}

export function ready(over = {}) {
  return {
    type: 'ready',
    sessionId: 's-1',
    operator: { ref: 'alice', displayName: 'Alice' },
    numbers: [
      { id: 'support', e164: '+15550100', name: 'Support' },
      { id: 'sales', e164: '+15550101', name: 'Sales' },
    ],
    heartbeatIntervalMs: 15000,
    missedHeartbeats: 2,
    calls: [],
    ...over,
  };
}

/** Open the newest socket, answer its hello with `ready`; returns the socket. */
export async function serveReady(env, over = {}) {
  await flush();
  const ws = env.sockets[env.sockets.length - 1];
  ws.open();
  ws.push(ready(over));
  await flush();
  return ws;
}

/** goOnline(ids) all the way through hello/ready/online/availability; returns the socket. */
export async function goOnline(env, op, ids = ['support'], readyOver = {}) {
  const p = op.goOnline(ids);
  const ws = await serveReady(env, readyOver);
  const online = ws.last();
  ws.push({ type: 'availability', accepted: online.numbers, rejected: [], ref: online.ref });
  await p;
  await flush();
  return ws;
}

/** An inbound call rung, accepted and connected; returns {ws, call}. */
export async function connectedInbound(env, op, callId = 'c-2', incomingOver = {}) {
  const ws = await goOnline(env, op);
  let call = null;
  op.once('incomingCall', (c) => (call = c));
  ws.push({ type: 'incoming', callId, from: '+15550111', to: '+15550100', number: 'support', ...incomingOver });
  const accepted = call.accept();
  await flush();
  const acc = ws.last();
  ws.push({ type: 'answer', callId, sdp: 'v=0 answer', ref: acc.ref });
  await accepted;
  ws.push({ type: 'connected', callId });
  await flush();
  return { ws, call };
}

/** Record every event of a call: `seen(name)` lists the payloads of one event. */
export function recordCall(call, names) {
  const events = [];
  for (const name of names) call.on(name, (payload) => events.push({ name, payload }));
  return { events, seen: (name) => events.filter((e) => e.name === name).map((e) => e.payload) };
}

/** getStats() entries for one sample: cumulative packet counts, times in seconds as the browser gives them. */
export function audioStats({ received = 0, lost = 0, jitterMs = 5, rttMs = 40, inputLevel = null, pairRttMs = null } = {}) {
  const list = [
    { id: 'in', type: 'inbound-rtp', kind: 'audio', packetsReceived: received, packetsLost: lost, jitter: jitterMs / 1000, bytesReceived: received * 160 },
    { id: 'out', type: 'outbound-rtp', kind: 'audio', bytesSent: received * 160 },
  ];
  if (rttMs != null) list.push({ id: 'rin', type: 'remote-inbound-rtp', kind: 'audio', roundTripTime: rttMs / 1000 });
  if (pairRttMs != null) {
    list.push({ id: 't', type: 'transport', selectedCandidatePairId: 'cp' });
    list.push({ id: 'cp', type: 'candidate-pair', state: 'succeeded', currentRoundTripTime: pairRttMs / 1000 });
  }
  if (inputLevel != null) list.push({ id: 'ms', type: 'media-source', kind: 'audio', audioLevel: inputLevel });
  return list;
}
