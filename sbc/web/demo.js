// The demo softphone: a thin page over the operator SDK (served at /sdk/operator.js).
// Every URL is relative to the page, so the demo works behind any prefix.

import { Operator } from './sdk/operator.js';

const $ = (id) => document.getElementById(id);
const ui = {
  name: $('operator-name'),
  goOnline: $('go-online'),
  goOffline: $('go-offline'),
  presence: $('presence'),
  operatorInfo: $('operator-info'),
  tokenPaste: $('token-paste'),
  tokenInput: $('token-input'),
  useToken: $('use-token'),
  numbers: $('numbers'),
  incoming: $('incoming'),
  incomingFrom: $('incoming-from'),
  incomingTo: $('incoming-to'),
  incomingVia: $('incoming-via'),
  answer: $('answer'),
  decline: $('decline'),
  dialTo: $('dial-to'),
  callerId: $('caller-id'),
  call: $('call'),
  callState: $('call-state'),
  dialpad: $('dialpad'),
  dtmfSent: $('dtmf-sent'),
  mute: $('mute'),
  hold: $('hold'),
  hangup: $('hangup'),
  endAll: $('end-all'),
  record: $('record'),
  recordPause: $('record-pause'),
  recordingState: $('recording-state'),
  insights: $('insights'),
  errors: $('errors'),
  audio: $('remote-audio'),
  participants: $('participants'),
  addTarget: $('add-target'),
  addParticipant: $('add-participant'),
  monitorControls: $('monitor-controls'),
  modeButtons: { listen: $('mode-listen'), whisper: $('mode-whisper'), barge: $('mode-barge') },
  listCalls: $('list-calls'),
  callsList: $('calls-list'),
  inputDevice: $('input-device'),
  outputDevice: $('output-device'),
  inputLevel: $('input-level'),
  outputLevel: $('output-level'),
  quality: $('quality'),
};

let pastedToken = null;
let numbers = []; // [{id, e164, name}] from listNumbers
let selected = null; // Set of checked number ids; null: all of them
let ringing = []; // inbound calls offered and not ended
let lastCall = null; // the latest call seen, kept after it ends for the status line
let dialing = false;
let dtmfDigits = '';
let supervised = []; // the calls listCalls found
let adding = false;
let recordBusy = false; // a record request waits for its answer
let shownInsights = null; // the insights array #insights shows
const NO_INSIGHTS = [];

// ---- the SDK ----

const wsUrl = new URL('v1/operator', location.href);
wsUrl.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';

/** operatorRef from a display name: 1-64 chars of [A-Za-z0-9._@-]. */
function operatorRefOf(name) {
  const ref = name
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .trim()
    .replace(/\s+/g, '.')
    .replace(/[^a-z0-9._@-]/g, '')
    .slice(0, 64);
  return ref || 'operator';
}

async function getToken() {
  if (pastedToken) return pastedToken;
  const displayName = ui.name.value.trim();
  const res = await fetch(new URL('demo/token', location.href), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ operatorRef: operatorRefOf(displayName), displayName }),
  });
  if (res.status === 404) {
    ui.tokenPaste.hidden = false;
    throw new Error('the demo token endpoint is only in the demo configuration: paste a token');
  }
  if (!res.ok) throw new Error(`POST demo/token answered HTTP ${res.status}`);
  const body = await res.json();
  return body.token;
}

const operator = new Operator({ url: wsUrl.href, getToken, audioElement: ui.audio, ringtone: true });

operator.on('presenceStateChanged', render);
operator.on('availabilityChanged', renderNumbers);
operator.on('error', (e) => showError(e.code, e.message, e.callId));
operator.on('incomingCall', (call) => {
  ringing.push(call);
  watch(call);
  render();
});
operator.on('callStarted', (call) => {
  ringing = ringing.filter((c) => c !== call);
  lastCall = call;
  watch(call);
  render();
});
operator.on('callEnded', (call) => {
  ringing = ringing.filter((c) => c !== call);
  if (!operator.currentCall) lastCall = call; // the status line tells how it ended
  ui.inputLevel.value = 0;
  ui.outputLevel.value = 0;
  render();
});
operator.on('devicesChanged', renderDevices);
operator.on('inputDeviceChanged', () => renderDevices());
operator.on('outputDeviceChanged', () => renderDevices());

const watched = new WeakSet();
function watch(call) {
  if (watched.has(call)) return;
  watched.add(call);
  const events = ['accepted', 'ringing', 'connected', 'updated', 'muted', 'ended', 'remoteStream', 'reconnecting', 'reconnected'];
  for (const ev of [...events, 'participantsChanged', 'capabilitiesChanged', 'modeChanged', 'recording', 'insight', 'sample', 'warning', 'warningCleared']) call.on(ev, render);
  call.on('audioLevel', ({ input, output }) => {
    ui.inputLevel.value = input;
    ui.outputLevel.value = output;
  });
}

/** For end-to-end tests. */
window.demo = {
  operator,
  /** The active call, else the ringing offer, else the last call (possibly ended). */
  get call() {
    return operator.currentCall ?? offered() ?? lastCall;
  },
};

// ---- actions ----

/** Errors with a `code` came from the SDK and were shown by its `error` event already. */
function showUncoded(err) {
  if (!err || !err.code) showError('ERROR', (err && err.message) || String(err));
}

async function goOnline() {
  if (!pastedToken && !ui.name.value.trim()) {
    showError('NAME_REQUIRED', 'Enter your name first.');
    ui.name.focus();
    return;
  }
  ui.goOnline.disabled = true;
  try {
    numbers = await operator.listNumbers();
    renderNumbers();
    await operator.goOnline(selectedIds());
    operator.listDevices().then(renderDevices, () => {}); // labels once the mic was allowed
  } catch (err) {
    showUncoded(err);
  } finally {
    render();
  }
}

function selectedIds() {
  return numbers.map((n) => n.id).filter((id) => !selected || selected.has(id));
}

async function dial() {
  const to = ui.dialTo.value.trim();
  if (!to) return showError('BAD_REQUEST', 'Enter a number to call.');
  dialing = true;
  render();
  try {
    const call = await operator.dial(to, { callerId: ui.callerId.value || undefined });
    lastCall = call;
    watch(call);
  } catch (err) {
    showUncoded(err);
  } finally {
    dialing = false;
    render();
  }
}

ui.goOnline.addEventListener('click', goOnline);
ui.goOffline.addEventListener('click', () => operator.goOffline().catch(showUncoded));
ui.useToken.addEventListener('click', () => {
  pastedToken = ui.tokenInput.value.trim() || null;
  if (!pastedToken) return showError('BAD_REQUEST', 'Paste a token first.');
  ui.tokenPaste.hidden = true;
  goOnline();
});
const offered = () => ringing.find((c) => c.state === 'ringing');
ui.answer.addEventListener('click', () => {
  const call = offered();
  if (!call) return;
  lastCall = call;
  call.accept().catch(showUncoded).finally(render);
  render();
});
ui.decline.addEventListener('click', () => offered() && offered().reject());
ui.call.addEventListener('click', dial);
ui.dialTo.addEventListener('keydown', (e) => e.key === 'Enter' && dial());
ui.hangup.addEventListener('click', () => operator.currentCall && operator.currentCall.hangup());
// Hang up leaves a call of several parties; this ends it for every party (capability end_call).
ui.endAll.addEventListener('click', () => operator.currentCall && operator.currentCall.end().catch(showUncoded));
ui.mute.addEventListener('click', () => {
  const call = operator.currentCall;
  if (call) call.mute(!call.muted);
  render();
});
ui.hold.addEventListener('click', () => {
  const call = operator.currentCall;
  if (call) call.hold(!call.held);
});
ui.dialpad.addEventListener('click', (e) => {
  const button = e.target.closest('[data-digit]');
  if (!button) return;
  const digit = button.dataset.digit;
  const call = operator.currentCall;
  if (call && call.state === 'connected') {
    try {
      call.sendDtmf(digit);
      dtmfDigits = (dtmfDigits + digit).slice(-24);
      ui.dtmfSent.textContent = `Sent: ${dtmfDigits}`;
    } catch (err) {
      showUncoded(err);
    }
  } else {
    ui.dialTo.value += digit;
  }
});

// Recording (capability record): start/stop, pause/resume. The indicator follows the
// server's `recording` messages, whoever asked (this page, the REST API, the dial plan).
async function recordAction(act) {
  const call = operator.currentCall;
  if (!call) return;
  recordBusy = true;
  render();
  try {
    await act(call);
  } catch (err) {
    showUncoded(err);
  } finally {
    recordBusy = false;
    render();
  }
}
ui.record.addEventListener('click', () => recordAction((call) => (call.recording ? call.stopRecording() : call.startRecording())));
ui.recordPause.addEventListener('click', () =>
  recordAction((call) => (call.recording && call.recording.status === 'paused' ? call.resumeRecording() : call.pauseRecording())),
);

// Multi-party: add a party to the current call, hold or remove one.
ui.addParticipant.addEventListener('click', async () => {
  const call = operator.currentCall;
  const target = ui.addTarget.value.trim();
  if (!call) return;
  if (!target) return showError('BAD_REQUEST', 'Enter a number, sip: URI or operator:NAME to add.');
  adding = true;
  render();
  try {
    await call.addParticipant(target);
    ui.addTarget.value = '';
  } catch (err) {
    showUncoded(err);
  } finally {
    adding = false;
    render();
  }
});
ui.addTarget.addEventListener('keydown', (e) => e.key === 'Enter' && ui.addParticipant.click());
ui.participants.addEventListener('click', (e) => {
  const button = e.target.closest('[data-party]');
  const call = operator.currentCall;
  if (!button || !call) return;
  const { party, action } = button.dataset;
  const p = call.participants.find((x) => x.id === party);
  const done = action === 'remove' ? call.removeParticipant(party) : call.holdParticipant(party, !(p && p.held));
  done.catch(showUncoded);
});

// Supervisor: list the calls, monitor one, switch the mode.
ui.listCalls.addEventListener('click', async () => {
  try {
    supervised = await operator.listCalls();
  } catch (err) {
    showUncoded(err);
  }
  render();
});
ui.callsList.addEventListener('click', async (e) => {
  const button = e.target.closest('[data-monitor]');
  if (!button) return;
  try {
    const call = await operator.monitor(button.dataset.call, { mode: button.dataset.monitor });
    lastCall = call;
    watch(call);
  } catch (err) {
    showUncoded(err);
  }
  render();
});
for (const [mode, button] of Object.entries(ui.modeButtons)) {
  button.addEventListener('click', () => {
    const call = operator.currentCall;
    if (call && call.direction === 'monitor') call.setMode(mode).catch(showUncoded);
  });
}

// Devices.
ui.inputDevice.addEventListener('change', () => operator.setInputDevice(ui.inputDevice.value).catch(showUncoded));
ui.outputDevice.addEventListener('change', () => operator.setOutputDevice(ui.outputDevice.value).catch(showUncoded));

ui.numbers.addEventListener('change', (e) => {
  if (!e.target.matches('input[type=checkbox]')) return;
  selected = new Set([...ui.numbers.querySelectorAll('input[type=checkbox]:checked')].map((i) => i.value));
  if (operator.state === 'online') operator.goOnline(selectedIds()).catch(showUncoded);
});

// ---- rendering ----

/** A new element with a class and text. */
function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text != null) e.textContent = text;
  return e;
}

function showError(code, message, callId) {
  const li = el('li');
  li.dataset.code = code;
  const msg = callId ? `${message} (call ${callId})` : message;
  li.append(el('time', '', new Date().toLocaleTimeString()), el('span', 'code', code), el('span', 'msg', ` ${msg}`));
  ui.errors.prepend(li);
  while (ui.errors.children.length > 20) ui.errors.lastElementChild.remove();
}

function renderNumbers() {
  if (!numbers.length) {
    ui.numbers.replaceChildren(el('li', 'muted', 'No numbers for this operator.'));
  } else {
    const { accepted, rejected } = operator.availability;
    ui.numbers.replaceChildren(
      ...numbers.map((n) => {
        const box = el('input');
        box.type = 'checkbox';
        box.value = n.id;
        box.checked = !selected || selected.has(n.id);
        const label = el('label');
        label.append(box, el('span', '', `${n.name || n.id} `), el('span', 'muted', n.e164 || ''));
        const rej = rejected.find((r) => r.id === n.id || r.id === n.e164);
        const ok = accepted.includes(n.id) || accepted.includes(n.e164);
        const li = el('li');
        li.dataset.number = n.id;
        li.dataset.status = ok ? 'accepted' : rej ? 'rejected' : 'off';
        li.append(label, el('span', `status ${ok ? 'ok' : rej ? 'rejected' : ''}`, ok ? 'taking calls' : rej ? rej.code : ''));
        return li;
      }),
    );
  }
  const current = ui.callerId.value;
  ui.callerId.replaceChildren(
    ...numbers.map((n) => {
      const o = el('option', '', n.e164 ? `${n.name || n.id} (${n.e164})` : n.name || n.id);
      o.value = n.id;
      return o;
    }),
  );
  if (numbers.some((n) => n.id === current)) ui.callerId.value = current;
}

let lastDevices = { inputs: [], outputs: [] };

function renderDevices(devices) {
  if (devices && devices.inputs) lastDevices = devices;
  const fill = (select, list, chosen) => {
    select.replaceChildren(
      ...list.map((d, i) => {
        const o = el('option', '', d.label || (d.deviceId === 'default' ? 'Default' : `Device ${i + 1}`));
        o.value = d.deviceId;
        return o;
      }),
    );
    select.value = chosen || 'default';
  };
  fill(ui.inputDevice, lastDevices.inputs, operator.inputDeviceId);
  fill(ui.outputDevice, lastDevices.outputs, operator.outputDeviceId);
}

function partyName(p) {
  return p.displayName || p.operatorRef || p.address || p.id;
}

function renderParticipants(call) {
  const live = !!call && call.state === 'connected';
  if (!call || !call.participants.length) {
    ui.participants.replaceChildren(el('li', 'muted', call && call.state !== 'ended' ? 'Just the two of you.' : 'No call.'));
  } else {
    ui.participants.replaceChildren(
      ...call.participants.map((p) => {
        const li = el('li');
        li.dataset.participant = p.id;
        li.dataset.state = p.state || '';
        const me = p.id === call.self;
        const flags = [p.state, p.muted && 'muted', p.held && 'held', p.monitor].filter(Boolean).join(', ');
        li.append(el('span', '', `${partyName(p)}${me ? ' (you)' : ''}`), el('span', 'role', p.role || '?'), el('span', 'muted small', flags));
        if (live && !me && call.can('hold_participant')) {
          const b = el('button', '', p.held ? 'Resume' : 'Hold');
          b.type = 'button';
          Object.assign(b.dataset, { party: p.id, action: 'hold' });
          li.append(b);
        }
        if (live && !me && call.can('remove_participant')) {
          const b = el('button', 'bad', 'Remove');
          b.type = 'button';
          Object.assign(b.dataset, { party: p.id, action: 'remove' });
          li.append(b);
        }
        return li;
      }),
    );
  }
  const canAdd = live && call.can('add_participant') && !adding;
  ui.addTarget.disabled = !canAdd;
  ui.addParticipant.disabled = !canAdd;
}

function renderSupervisor(current) {
  ui.listCalls.disabled = operator.state !== 'online';
  ui.callsList.replaceChildren(
    ...supervised.map((c) => {
      const li = el('li');
      li.dataset.callId = c.callId;
      const parties = c.participants.map(partyName).join(', ');
      li.append(el('span', '', `${c.from || '?'} → ${c.to || '?'}`), el('span', 'muted small', parties));
      for (const mode of ['listen', 'whisper', 'barge']) {
        const b = el('button', '', mode[0].toUpperCase() + mode.slice(1));
        b.type = 'button';
        b.disabled = !!current;
        Object.assign(b.dataset, { monitor: mode, call: c.callId });
        li.append(b);
      }
      return li;
    }),
  );
  const monitoring = !!current && current.direction === 'monitor' && current.state !== 'ended';
  ui.monitorControls.hidden = !monitoring;
  for (const [mode, button] of Object.entries(ui.modeButtons)) {
    button.setAttribute('aria-pressed', String(monitoring && current.mode === mode));
    button.disabled = !monitoring || current.state !== 'connected' || !current.can('switch_monitor');
  }
}

function renderRecording(call) {
  const live = !!call && call.state !== 'ended';
  const rec = live ? call.recording : null;
  const paused = !!rec && rec.status === 'paused';
  const can = live && call.state === 'connected' && call.can('record') && !recordBusy;
  ui.record.disabled = !can;
  ui.record.textContent = rec ? 'Stop recording' : 'Record';
  ui.record.setAttribute('aria-pressed', String(!!rec));
  ui.recordPause.disabled = !can || !rec;
  ui.recordPause.textContent = paused ? 'Resume recording' : 'Pause recording';
  ui.recordPause.setAttribute('aria-pressed', String(paused));
  ui.recordingState.hidden = !rec;
  ui.recordingState.dataset.state = rec ? rec.status : 'off';
  ui.recordingState.textContent = rec ? (paused ? 'REC paused' : '●REC') : '';
}

/** The call's insights (transcript lines, hints) as `kind: text`, newest at the bottom; rebuilt only when they change. */
function renderInsights(call) {
  const list = call ? call.insights : NO_INSIGHTS;
  if (list === shownInsights) return;
  shownInsights = list;
  ui.insights.replaceChildren(
    ...list.map((insight) => {
      const kind = String(insight.kind ?? insight.event ?? 'insight');
      const text = typeof insight.text === 'string' ? insight.text : JSON.stringify(insight);
      const li = el('li');
      li.dataset.kind = kind;
      if (typeof insight.track === 'string') li.dataset.track = insight.track;
      li.append(el('span', 'kind', `${kind}:`), el('span', '', ` ${text}`));
      return li;
    }),
  );
  ui.insights.scrollTop = ui.insights.scrollHeight;
}

function renderQuality(call) {
  const q = call && call.state === 'connected' ? call.quality : null;
  const warnings = call && call.state === 'connected' ? call.warnings : [];
  const fmt = (v, unit) => (v == null ? '–' : `${v}${unit}`);
  ui.quality.textContent = q
    ? `MOS ${fmt(q.mos, '')} · RTT ${fmt(q.rtt, ' ms')} · jitter ${fmt(q.jitter, ' ms')} · loss ${fmt(q.packetLoss, ' %')}${warnings.length ? ` · ${warnings.join(', ')}` : ''}`
    : '';
  ui.quality.dataset.warn = String(warnings.length > 0);
}

const END_TEXT = {
  hangup: 'you hung up',
  remote_hangup: 'the other side hung up',
  taken_by_other: 'answered by another operator',
  rejected: 'declined',
  no_answer: 'no answer',
  busy: 'busy',
  failed: 'failed',
  offline: 'connection lost',
  removed: 'removed from the call',
  media_failed: 'the audio connection was lost',
};

function duration(since) {
  const s = Math.max(0, Math.floor((Date.now() - since) / 1000));
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}

function callStatus(call) {
  if (!call) return dialing ? ['dialing', 'Calling…'] : ['idle', 'No call'];
  if (call.direction === 'monitor' && call.state !== 'ended') {
    return [call.state === 'connected' ? 'connected' : 'connecting', `Monitoring call ${call.callId} (${call.mode})`];
  }
  const peer = call.direction === 'inbound' ? call.callerName || call.from : call.to;
  switch (call.state) {
    case 'ringing':
      if (call.direction === 'inbound') return ['ringing', `Incoming call from ${peer}`];
      return ['ringing', `Ringing ${peer}${call.earlyMedia ? ' (early media)' : ''}`];
    case 'connecting':
      return ['connecting', `Connecting with ${peer}…`];
    case 'connected': {
      const flags = [call.muted && 'muted', call.held && 'on hold', call.remoteHeld && 'held by the other side', call.reconnecting && 'reconnecting audio…'].filter(Boolean);
      return ['connected', `Connected with ${peer} · ${duration(call.connectedAt)}${flags.length ? ` · ${flags.join(', ')}` : ''}`];
    }
    default: {
      const why = END_TEXT[call.endReason] || call.endReason;
      return ['ended', `Call ended: ${why}${call.endCode ? ` (${call.endCode})` : ''}`];
    }
  }
}

function render() {
  const state = operator.state;
  ui.presence.textContent = state;
  ui.presence.dataset.state = state;
  const info = operator.operatorInfo;
  ui.operatorInfo.textContent = state !== 'offline' && info ? info.displayName || info.ref : '';
  ui.goOnline.disabled = state !== 'offline';
  ui.goOffline.disabled = state === 'offline';
  ui.name.disabled = state !== 'offline';

  const offer = offered();
  ui.incoming.hidden = !offer;
  if (offer) {
    ui.incomingFrom.textContent = offer.callerName ? `${offer.callerName} (${offer.from})` : offer.from;
    ui.incomingTo.textContent = `to ${offer.to}${offer.number ? ` · ${offer.number}` : ''}`;
    // Transferred or added by a colleague: who hands it over, and how.
    const kind = offer.transferredBy === 'attended' ? 'Attended' : 'Blind';
    const via = offer.transferredBy
      ? `${kind} transfer from ${offer.invitedBy || 'a colleague'}`
      : offer.invitedBy
        ? `Added to a call by ${offer.invitedBy}`
        : '';
    ui.incomingVia.textContent = via;
    ui.incomingVia.hidden = !via;
  }

  const current = operator.currentCall;
  const shown = current || (dialing ? null : lastCall);
  const [callState, text] = callStatus(shown);
  ui.callState.dataset.state = callState;
  ui.callState.textContent = text;
  const live = !!current && current.state !== 'ended';
  ui.call.disabled = live || dialing;
  ui.answer.disabled = live && current !== offer;
  ui.hangup.disabled = !live;
  ui.endAll.hidden = !live || !current.can('end_call') || current.participants.length < 3;
  ui.endAll.disabled = !live;
  ui.mute.disabled = !live;
  ui.hold.disabled = !live || current.state !== 'connected';
  ui.mute.textContent = live && current.muted ? 'Unmute' : 'Mute';
  ui.mute.setAttribute('aria-pressed', String(live && current.muted));
  ui.hold.textContent = live && current.held ? 'Resume' : 'Hold';
  ui.hold.setAttribute('aria-pressed', String(live && current.held));
  if (!live) {
    dtmfDigits = '';
    ui.dtmfSent.textContent = '';
  }

  renderParticipants(current || null);
  renderSupervisor(current);
  renderRecording(current);
  renderInsights(shown);
  renderQuality(current);

  const stream = live ? current.remoteStream : null;
  if (ui.audio.srcObject !== stream) {
    ui.audio.srcObject = stream;
    if (stream) ui.audio.play().catch(() => {}); // autoplay may need the click that answered
  }
}

setInterval(render, 1000); // the call timer
render();
