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
  errors: $('errors'),
  audio: $('remote-audio'),
};

let pastedToken = null;
let numbers = []; // [{id, e164, name}] from listNumbers
let selected = null; // Set of checked number ids; null: all of them
let ringing = []; // inbound calls offered and not ended
let lastCall = null; // the latest call seen, kept after it ends for the status line
let dialing = false;
let dtmfDigits = '';

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

const operator = new Operator({ url: wsUrl.href, getToken });

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
  render();
});

const watched = new WeakSet();
function watch(call) {
  if (watched.has(call)) return;
  watched.add(call);
  for (const ev of ['accepted', 'ringing', 'connected', 'updated', 'ended', 'remoteStream']) call.on(ev, render);
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

const END_TEXT = {
  hangup: 'you hung up',
  remote_hangup: 'the other side hung up',
  taken_by_other: 'answered by another operator',
  rejected: 'declined',
  no_answer: 'no answer',
  busy: 'busy',
  failed: 'failed',
  offline: 'connection lost',
};

function duration(since) {
  const s = Math.max(0, Math.floor((Date.now() - since) / 1000));
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}

function callStatus(call) {
  if (!call) return dialing ? ['dialing', 'Calling…'] : ['idle', 'No call'];
  const peer = call.direction === 'inbound' ? call.callerName || call.from : call.to;
  switch (call.state) {
    case 'ringing':
      if (call.direction === 'inbound') return ['ringing', `Incoming call from ${peer}`];
      return ['ringing', `Ringing ${peer}${call.earlyMedia ? ' (early media)' : ''}`];
    case 'connecting':
      return ['connecting', `Connecting with ${peer}…`];
    case 'connected': {
      const flags = [call.muted && 'muted', call.held && 'on hold', call.remoteHeld && 'held by the other side'].filter(Boolean);
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

  const stream = live ? current.remoteStream : null;
  if (ui.audio.srcObject !== stream) {
    ui.audio.srcObject = stream;
    if (stream) ui.audio.play().catch(() => {}); // autoplay may need the click that answered
  }
}

setInterval(render, 1000); // the call timer
render();
