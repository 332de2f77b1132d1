// The demo page: static checks of index.html/demo.js/demo.css, then demo.js driven through a
// tiny DOM shim against the real SDK and the fakes (a smoke test; Playwright does the rest).

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { register } from 'node:module';
import { makeEnv, flush, ready } from './fakes.mjs';

register('./sdk-path-hook.mjs', import.meta.url);

const web = new URL('../', import.meta.url);
const html = readFileSync(new URL('index.html', web), 'utf8');
const demoJs = readFileSync(new URL('demo.js', web), 'utf8');
const css = readFileSync(new URL('demo.css', web), 'utf8');

const REQUIRED_IDS = [
  'operator-name', 'go-online', 'go-offline', 'presence', 'numbers', 'incoming', 'answer', 'decline',
  'dial-to', 'caller-id', 'call', 'hangup', 'end-all', 'mute', 'hold', 'dialpad', 'call-state', 'errors', 'remote-audio',
  'participants', 'add-target', 'add-participant', 'monitor-controls', 'mode-listen', 'mode-whisper', 'mode-barge',
  'list-calls', 'calls-list', 'input-device', 'output-device', 'input-level', 'output-level', 'quality',
  'record', 'record-pause', 'recording-state', 'insights',
];

const htmlIds = [...html.matchAll(/\sid="([^"]+)"/g)].map((m) => m[1]);

test('index.html has every stable id, once, and a full dial pad', () => {
  for (const id of REQUIRED_IDS) assert.equal(htmlIds.filter((x) => x === id).length, 1, `#${id}`);
  const digits = [...html.matchAll(/data-digit="([^"]+)"/g)].map((m) => m[1]);
  assert.deepEqual(digits.sort(), ['#', '*', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
  assert.match(html, /<audio id="remote-audio" autoplay>/);
});

test('every element demo.js looks up exists in index.html', () => {
  for (const [, id] of demoJs.matchAll(/\$\('([^']+)'\)/g)) assert.ok(htmlIds.includes(id), `#${id}`);
});

test('no external resources, relative URLs only', () => {
  for (const [, url] of html.matchAll(/(?:src|href)="([^"]+)"/g)) assert.doesNotMatch(url, /^(\/|[a-z]+:)/i, url);
  assert.doesNotMatch(css, /@import|url\(/);
  assert.doesNotMatch(demoJs, /https?:\/\//);
  assert.match(demoJs, /from '\.\/sdk\/operator\.js'/);
});

test('the hidden attribute hides an element whatever its class displays it as', () => {
  // demo.js shows and hides with `hidden` (#monitor-controls is a flex .row, #incoming too).
  assert.match(css, /(^|\n)\[hidden\]\s*\{\s*display:\s*none\s*!important;?\s*\}/);
});

// ---- a DOM just big enough for demo.js ----

class FakeElement {
  constructor(tag) {
    this.tagName = tag.toUpperCase();
    this.children = [];
    this.parent = null;
    this.listeners = {};
    this.dataset = {};
    this.attributes = {};
    this.hidden = false;
    this.disabled = false;
    this.className = '';
    this.type = '';
    this.checked = false;
    this.srcObject = null;
    this._text = '';
    this._value = '';
  }
  get textContent() {
    return this.children.length ? this.children.map((c) => c.textContent).join('') : this._text;
  }
  set textContent(v) {
    this.children = [];
    this._text = String(v);
  }
  get value() {
    if (this.tagName !== 'SELECT') return this._value;
    return this.children.some((o) => o.value === this._value) ? this._value : (this.children[0]?.value ?? '');
  }
  set value(v) {
    this._value = String(v);
  }
  setAttribute(k, v) {
    this.attributes[k] = String(v);
  }
  getAttribute(k) {
    return this.attributes[k] ?? null;
  }
  addEventListener(type, fn) {
    (this.listeners[type] ??= []).push(fn);
  }
  dispatch(type, init = {}) {
    const ev = { type, target: this, ...init };
    for (let n = this; n; n = n.parent) for (const fn of n.listeners[type] ?? []) fn(ev);
  }
  click() {
    if (this.disabled) return;
    if (this.type === 'checkbox') this.checked = !this.checked;
    this.dispatch('click');
    if (this.type === 'checkbox') this.dispatch('change');
  }
  append(...nodes) {
    for (const n of nodes) {
      n.remove();
      n.parent = this;
      this.children.push(n);
    }
  }
  prepend(...nodes) {
    for (const n of nodes.reverse()) {
      n.remove();
      n.parent = this;
      this.children.unshift(n);
    }
  }
  replaceChildren(...nodes) {
    for (const c of this.children) c.parent = null;
    this.children = [];
    this.append(...nodes);
  }
  remove() {
    if (!this.parent) return;
    this.parent.children = this.parent.children.filter((c) => c !== this);
    this.parent = null;
  }
  get lastElementChild() {
    return this.children[this.children.length - 1] ?? null;
  }
  *descendants() {
    for (const c of this.children) {
      yield c;
      yield* c.descendants();
    }
  }
  querySelectorAll(sel) {
    return [...this.descendants()].filter((e) => e.matches(sel));
  }
  /** Supports `tag`, `[attr]`, `[attr=value]` and `:checked`, combined. */
  matches(sel) {
    const m = /^(\w+)?(?:\[([\w-]+)(?:=(\w+))?\])?(:checked)?$/.exec(sel);
    if (!m) throw new Error(`selector not supported by the shim: ${sel}`);
    const [, tag, attr, val, checked] = m;
    if (tag && this.tagName !== tag.toUpperCase()) return false;
    if (attr) {
      const v = attr.startsWith('data-') ? this.dataset[attr.slice(5)] : attr === 'type' ? this.type : this.attributes[attr];
      if (v == null || (val !== undefined && v !== val)) return false;
    }
    return !checked || this.checked;
  }
  closest(sel) {
    for (let n = this; n; n = n.parent) if (n.matches(sel)) return n;
    return null;
  }
  focus() {}
  play() {
    return Promise.resolve();
  }
}

function buildDocument() {
  const byId = new Map();
  for (const m of html.matchAll(/<(\w+)([^>]*)\sid="([^"]+)"([^>]*)>/g)) {
    const e = new FakeElement(m[1]);
    e.id = m[3];
    const attrs = m[2] + m[4];
    e.hidden = /\shidden(\s|$)/.test(attrs);
    e.disabled = /\sdisabled(\s|$)/.test(attrs);
    byId.set(e.id, e);
  }
  for (const [, d] of html.matchAll(/<button[^>]*data-digit="([^"]+)"/g)) {
    const b = new FakeElement('button');
    b.dataset.digit = d;
    byId.get('dialpad').append(b);
  }
  return { getElementById: (id) => byId.get(id) ?? null, createElement: (tag) => new FakeElement(tag) };
}

function response(status, body) {
  return { ok: status >= 200 && status < 300, status, json: async () => body };
}

const NUMBERS = [
  { id: 'support', e164: '+15550100', name: 'Support' },
  { id: 'sales', e164: '+15550101', name: 'Sales' },
];

let loads = 0;

/** Load a fresh copy of demo.js on a fresh DOM, with `env`'s fakes as the browser globals. */
async function loadDemo(env, fetchImpl) {
  const doc = buildDocument();
  globalThis.document = doc;
  globalThis.window = globalThis;
  globalThis.location = new URL('http://localhost:8080/');
  globalThis.fetch = fetchImpl;
  globalThis.WebSocket = env.WebSocket;
  globalThis.RTCPeerConnection = env.RTCPeerConnection;
  Object.defineProperty(globalThis, 'navigator', { value: { mediaDevices: env.mediaDevices }, configurable: true, writable: true });
  const realSetInterval = globalThis.setInterval;
  globalThis.setInterval = () => 0; // no call-timer ticking in tests
  try {
    await import(`../demo.js?load=${++loads}`);
  } finally {
    globalThis.setInterval = realSetInterval;
  }
  return { $: (id) => doc.getElementById(id), demo: globalThis.demo };
}

// A test that fails half-way leaves its page online, on real timers (heartbeats) that would
// keep the run alive: take it offline whatever happened.
afterEach(async () => {
  const op = globalThis.demo && globalThis.demo.operator;
  if (op && op.state !== 'offline') await op.dispose();
});

test('demo page: go online, answer, DTMF, mute, hold, hang up, dial error, go offline', async () => {
  const env = makeEnv();
  const calls = [];
  const { $, demo } = await loadDemo(env, async (url, init) => {
    calls.push({ url: String(url), init });
    const path = new URL(url).pathname;
    if (path === '/demo/token') return response(200, { token: `demo-tok-${calls.length}`, expiresAt: '2030-01-01T00:00:00Z' });
    if (path === '/v1/numbers') return response(200, { numbers: NUMBERS });
    return response(404, {});
  });
  assert.equal($('presence').textContent, 'offline');
  assert.equal($('go-offline').disabled, true);
  assert.equal(demo.call, null);

  $('go-online').click(); // no name yet
  assert.equal($('errors').children[0].dataset.code, 'NAME_REQUIRED');

  $('operator-name').value = 'Alice Martin';
  $('go-online').click();
  await flush();
  assert.equal(calls[0].url, 'http://localhost:8080/demo/token');
  assert.equal(calls[0].init.method, 'POST');
  assert.deepEqual(JSON.parse(calls[0].init.body), { operatorRef: 'alice.martin', displayName: 'Alice Martin' });
  assert.equal(calls[1].url, 'http://localhost:8080/v1/numbers');
  assert.equal(calls[1].init.headers.Authorization, 'Bearer demo-tok-1');
  const ws = env.sockets[0];
  assert.equal(ws.url, 'ws://localhost:8080/v1/operator');
  ws.open();
  assert.equal(ws.sent[0].token, 'demo-tok-3');
  ws.push(ready());
  await flush();
  const online = ws.last();
  assert.deepEqual(online.numbers, ['support', 'sales']);
  ws.push({ type: 'availability', accepted: ['support', 'sales'], rejected: [], ref: online.ref });
  await flush();
  assert.equal($('presence').textContent, 'online');
  assert.equal($('presence').dataset.state, 'online');
  assert.equal($('go-online').disabled, true);
  assert.equal($('operator-name').disabled, true);
  const boxes = $('numbers').querySelectorAll('input[type=checkbox]');
  assert.deepEqual(boxes.map((b) => [b.value, b.checked]), [['support', true], ['sales', true]]);
  assert.deepEqual($('numbers').children.map((li) => li.dataset.status), ['accepted', 'accepted']);
  assert.equal($('caller-id').value, 'support');

  boxes[1].click(); // uncheck sales
  await flush();
  assert.deepEqual(ws.last().numbers, ['support']);
  ws.push({ type: 'availability', accepted: ['support'], rejected: [], ref: ws.last().ref });
  await flush();
  assert.deepEqual($('numbers').children.map((li) => li.dataset.status), ['accepted', 'off']);

  // Inbound call.
  ws.push({ type: 'incoming', callId: 'c-2', from: '+15550111', to: '+15550100', number: 'support' });
  await flush();
  assert.equal($('incoming').hidden, false);
  assert.match($('incoming-from').textContent, /\+15550111/);
  assert.equal($('incoming-via').hidden, true, 'a plain call says nothing of a transfer');
  assert.equal(demo.call.callId, 'c-2');
  $('answer').click();
  await flush();
  const accept = ws.last();
  assert.equal(accept.type, 'accept');
  ws.push({ type: 'answer', callId: 'c-2', sdp: 'v=0', ref: accept.ref });
  ws.push({ type: 'connected', callId: 'c-2' });
  await flush();
  assert.equal($('incoming').hidden, true);
  assert.equal($('call-state').dataset.state, 'connected');
  assert.match($('call-state').textContent, /Connected with \+15550111 · 00:0\d/);
  assert.equal($('remote-audio').srcObject, env.pcs[0].remoteStream);
  assert.equal($('hangup').disabled, false);
  assert.equal(demo.call.state, 'connected');

  $('dialpad').children.find((b) => b.dataset.digit === '5').click();
  assert.deepEqual([ws.last().type, ws.last().digits], ['dtmf', '5']);
  $('mute').click();
  assert.deepEqual([ws.last().type, ws.last().on], ['mute', true]);
  assert.equal($('mute').textContent, 'Unmute');
  assert.equal(env.mediaDevices.streams[0].tracks[0].enabled, false);
  $('hold').click();
  assert.deepEqual([ws.last().type, ws.last().on], ['hold', true]);
  ws.push({ type: 'callUpdated', callId: 'c-2', muted: true, held: true, remoteHeld: false });
  await flush();
  assert.equal($('hold').textContent, 'Resume');
  assert.match($('call-state').textContent, /on hold/);

  $('hangup').click();
  assert.deepEqual([ws.last().type, ws.last().callId], ['hangup', 'c-2']);
  ws.push({ type: 'ended', callId: 'c-2', reason: 'hangup' });
  await flush();
  assert.equal($('call-state').dataset.state, 'ended');
  assert.match($('call-state').textContent, /you hung up/);
  assert.equal($('remote-audio').srcObject, null);
  assert.equal(demo.call.endReason, 'hangup');

  // The dial pad types the number when there is no call; a refused dial shows the error.
  $('dialpad').children.find((b) => b.dataset.digit === '1').click();
  assert.equal($('dial-to').value, '1');
  $('dial-to').value = '+15550199';
  $('call').click();
  await flush();
  const dial = ws.last();
  assert.deepEqual([dial.type, dial.to, dial.callerId], ['dial', '+15550199', 'support']);
  ws.push({ type: 'error', code: 'FORBIDDEN_NUMBER', message: 'not allowed', ref: dial.ref });
  await flush();
  assert.equal($('errors').children[0].dataset.code, 'FORBIDDEN_NUMBER');
  assert.equal($('errors').children.filter((li) => li.dataset.code === 'FORBIDDEN_NUMBER').length, 1, 'shown once');
  assert.equal($('call').disabled, false);

  $('go-offline').click();
  await flush();
  assert.equal($('presence').textContent, 'offline');
  assert.equal(ws.closedWith.code, 1000);
});

test('demo page: a 404 from the demo token endpoint offers to paste a token', async () => {
  const env = makeEnv();
  const calls = [];
  const { $ } = await loadDemo(env, async (url, init) => {
    calls.push({ url: String(url), init });
    const path = new URL(url).pathname;
    if (path === '/v1/numbers') return response(200, { numbers: NUMBERS });
    return response(404, {});
  });
  $('operator-name').value = 'Bob';
  $('go-online').click();
  await flush();
  assert.equal($('token-paste').hidden, false);
  assert.equal($('presence').textContent, 'offline');
  assert.equal(env.sockets.length, 0);
  assert.ok($('errors').children.length >= 1);
  $('token-input').value = ' pasted-token ';
  $('use-token').click();
  await flush();
  assert.equal($('token-paste').hidden, true);
  const numbersCall = calls.find((c) => c.url.endsWith('/v1/numbers'));
  assert.equal(numbersCall.init.headers.Authorization, 'Bearer pasted-token');
  const ws = env.sockets[0];
  ws.open();
  assert.deepEqual(ws.sent[0], { type: 'hello', token: 'pasted-token', protocol: 1 });
  ws.push(ready());
  await flush();
  assert.equal($('presence').textContent, 'online');
  $('go-offline').click();
  await flush();
});

/** Load the demo, go online as Alice; returns {$, demo, ws}. */
async function onlineDemo(env) {
  const { $, demo } = await loadDemo(env, async (url) => {
    const path = new URL(url).pathname;
    if (path === '/demo/token') return response(200, { token: 'demo-tok', expiresAt: '2030-01-01T00:00:00Z' });
    if (path === '/v1/numbers') return response(200, { numbers: NUMBERS });
    return response(404, {});
  });
  $('operator-name').value = 'Alice';
  $('go-online').click();
  await flush();
  const ws = env.sockets[0];
  ws.open();
  ws.push(ready());
  await flush();
  ws.push({ type: 'availability', accepted: ['support', 'sales'], rejected: [], ref: ws.last().ref });
  await flush();
  return { $, demo, ws };
}

test('demo page: participants of the call, add one, hold and remove; devices', async () => {
  const env = makeEnv();
  const { $, ws } = await onlineDemo(env);
  assert.deepEqual($('input-device').children.map((o) => o.value), ['default', 'headset-mic']);
  assert.deepEqual($('output-device').children.map((o) => o.value), ['default', 'headset-out']);
  assert.equal($('add-participant').disabled, true, 'no call');

  ws.push({ type: 'incoming', callId: 'c-2', from: '+15550111', to: '+15550100', number: 'support' });
  await flush();
  $('answer').click();
  await flush();
  ws.push({ type: 'answer', callId: 'c-2', sdp: 'v=0', ref: ws.last().ref });
  ws.push({ type: 'connected', callId: 'c-2' });
  await flush();
  assert.equal($('add-participant').disabled, true, 'no add_participant capability yet');
  ws.push({
    type: 'participants',
    callId: 'c-2',
    self: 'p-1',
    participants: [
      { id: 'p-0', role: 'customer', state: 'joined', address: '+15550111' },
      { id: 'p-1', role: 'agent', state: 'joined', operatorRef: 'alice', displayName: 'Alice' },
    ],
    capabilities: ['add_participant', 'remove_participant', 'hold_participant', 'end_call'],
  });
  await flush();
  const items = $('participants').children;
  assert.deepEqual(items.map((li) => li.dataset.participant), ['p-0', 'p-1']);
  assert.match(items[1].textContent, /Alice \(you\)agent/);
  assert.equal($('add-participant').disabled, false);

  $('add-target').value = 'operator:bob';
  $('add-participant').click();
  await flush();
  const add = ws.last();
  assert.deepEqual([add.type, add.callId, add.target], ['addParticipant', 'c-2', 'operator:bob']);
  assert.equal($('add-participant').disabled, true, 'while adding');
  const bob = { id: 'p-3', role: 'agent', state: 'ringing', operatorRef: 'bob' };
  ws.push({ type: 'participantUpdated', callId: 'c-2', participant: bob, ref: add.ref });
  ws.push({ type: 'participantJoined', callId: 'c-2', participant: { ...bob, state: 'joined' } });
  await flush();
  assert.equal($('add-target').value, '');
  assert.deepEqual($('participants').children.map((li) => [li.dataset.participant, li.dataset.state]), [['p-0', 'joined'], ['p-1', 'joined'], ['p-3', 'joined']]);
  assert.equal($('end-all').hidden, false, 'three parties and end_call: End for everyone');

  const customer = $('participants').children[0];
  customer.children.find((b) => b.dataset.action === 'hold').click();
  assert.deepEqual([ws.last().type, ws.last().participantId, ws.last().on], ['hold', 'p-0', true]);
  $('participants').children[2].children.find((b) => b.dataset.action === 'remove').click();
  assert.deepEqual([ws.last().type, ws.last().participantId], ['removeParticipant', 'p-3']);
  ws.push({ type: 'participantLeft', callId: 'c-2', participantId: 'p-3', reason: 'removed' });
  await flush();
  assert.equal($('participants').children.length, 2);
  assert.equal($('end-all').hidden, true, 'two parties: hang up is enough');

  // A refused add shows its error.
  $('add-target').value = '+15550199';
  $('add-participant').click();
  await flush();
  ws.push({ type: 'error', code: 'FORBIDDEN', message: 'not allowed', callId: 'c-2', ref: ws.last().ref });
  await flush();
  assert.equal($('errors').children[0].dataset.code, 'FORBIDDEN');
  assert.equal($('add-participant').disabled, false);

  // End for everyone, once a third party is back.
  ws.push({ type: 'participantJoined', callId: 'c-2', participant: { id: 'p-4', role: 'supervisor', state: 'joined', operatorRef: 'carol' } });
  await flush();
  $('end-all').click();
  assert.deepEqual([ws.last().type, ws.last().callId], ['end', 'c-2']);

  // Switching the microphone mid-call.
  $('input-device').value = 'headset-mic';
  $('input-device').dispatch('change');
  await flush();
  assert.equal(env.pcs[0].senders[0].track.deviceId, 'headset-mic');
  assert.equal(ws.ofType('reoffer').length, 0);
  $('go-offline').click();
  await flush();
  assert.equal(ws.ofType('hangup').length, 1, 'going offline hangs up first');
  ws.push({ type: 'ended', callId: 'c-2', reason: 'hangup' });
  await flush();
  assert.equal($('presence').textContent, 'offline');
});

test('demo page: an incoming transfer says who hands it over and how', async () => {
  const env = makeEnv();
  const { $, ws } = await onlineDemo(env);
  ws.push({ type: 'incoming', callId: 'c-7', from: '+15550111', to: '+15550100', number: 'support', invitedBy: 'alice', transfer: 'attended' });
  await flush();
  assert.equal($('incoming').hidden, false);
  assert.equal($('incoming-via').hidden, false);
  assert.equal($('incoming-via').textContent, 'Attended transfer from alice');
  $('decline').click();
  await flush();
  ws.push({ type: 'ended', callId: 'c-7', reason: 'rejected' });
  await flush();
  assert.equal($('incoming').hidden, true);
  ws.push({ type: 'incoming', callId: 'c-8', from: '+15550111', to: '+15550100', number: 'support', invitedBy: 'bob' });
  await flush();
  assert.equal($('incoming-via').textContent, 'Added to a call by bob');
  $('go-offline').click();
  await flush();
  ws.push({ type: 'ended', callId: 'c-8', reason: 'rejected' });
  await flush();
  assert.equal($('presence').textContent, 'offline');
});

/** Answer an incoming call c-2 on the online demo, connected, with `capabilities`. */
async function answeredCall($, ws, capabilities) {
  ws.push({ type: 'incoming', callId: 'c-2', from: '+15550111', to: '+15550100', number: 'support' });
  await flush();
  $('answer').click();
  await flush();
  ws.push({ type: 'answer', callId: 'c-2', sdp: 'v=0', ref: ws.last().ref });
  ws.push({ type: 'connected', callId: 'c-2' });
  await flush();
  const parties = [{ id: 'p-0', role: 'customer', state: 'joined' }, { id: 'p-1', role: 'agent', state: 'joined', operatorRef: 'alice' }];
  ws.push({ type: 'participants', callId: 'c-2', self: 'p-1', participants: parties, capabilities });
  await flush();
}

const REC = 'rec-0123456789abcdef';

test('demo page: Record and Pause follow the record capability and the server; the indicator says REC or paused', async () => {
  const env = makeEnv();
  const { $, ws } = await onlineDemo(env);
  assert.equal($('record').disabled, true, 'no call');
  assert.equal($('record-pause').disabled, true);
  assert.equal($('recording-state').hidden, true);

  await answeredCall($, ws, ['end_call']);
  assert.equal($('record').disabled, true, 'no record capability');
  assert.equal($('record-pause').disabled, true);
  // Recording started elsewhere (the dial plan, the REST API) still shows.
  ws.push({ type: 'recording', callId: 'c-2', recordingId: REC, status: 'in-progress' });
  await flush();
  assert.equal($('recording-state').hidden, false);
  assert.equal($('recording-state').textContent, '●REC');
  assert.equal($('record').disabled, true, 'still without the capability');
  ws.push({ type: 'recording', callId: 'c-2', recordingId: REC, status: 'stopped' });
  ws.push({ type: 'participants', callId: 'c-2', capabilities: ['end_call', 'record'] });
  await flush();
  assert.equal($('recording-state').hidden, true);
  assert.equal($('record').disabled, false, 'granted');
  assert.equal($('record').textContent, 'Record');
  assert.equal($('record-pause').disabled, true, 'nothing to pause');

  $('record').click();
  await flush();
  const start = ws.last();
  assert.deepEqual([start.type, start.callId, start.action], ['record', 'c-2', 'start']);
  assert.equal($('record').disabled, true, 'while the request waits');
  ws.push({ type: 'recording', callId: 'c-2', recordingId: REC, status: 'in-progress', ref: start.ref });
  await flush();
  assert.equal($('record').disabled, false);
  assert.equal($('record').textContent, 'Stop recording');
  assert.equal($('record').getAttribute('aria-pressed'), 'true');
  assert.equal($('recording-state').hidden, false);
  assert.equal($('recording-state').dataset.state, 'in-progress');
  assert.equal($('recording-state').textContent, '●REC');
  assert.equal($('record-pause').disabled, false);
  assert.equal($('record-pause').textContent, 'Pause recording');

  $('record-pause').click();
  await flush();
  assert.deepEqual([ws.last().type, ws.last().action], ['record', 'pause']);
  ws.push({ type: 'recording', callId: 'c-2', recordingId: REC, status: 'paused', ref: ws.last().ref });
  await flush();
  assert.equal($('recording-state').dataset.state, 'paused');
  assert.equal($('recording-state').textContent, 'REC paused');
  assert.equal($('record-pause').textContent, 'Resume recording');
  assert.equal($('record-pause').getAttribute('aria-pressed'), 'true');

  $('record-pause').click();
  await flush();
  assert.deepEqual([ws.last().type, ws.last().action], ['record', 'resume']);
  ws.push({ type: 'recording', callId: 'c-2', recordingId: REC, status: 'in-progress', ref: ws.last().ref });
  await flush();
  assert.equal($('recording-state').textContent, '●REC');

  $('record').click();
  await flush();
  assert.deepEqual([ws.last().type, ws.last().action], ['record', 'stop']);
  ws.push({ type: 'recording', callId: 'c-2', recordingId: REC, status: 'stopped', ref: ws.last().ref });
  await flush();
  assert.equal($('recording-state').hidden, true);
  assert.equal($('record').textContent, 'Record');
  assert.equal($('record').getAttribute('aria-pressed'), 'false');
  assert.equal($('record-pause').disabled, true);

  // A refused start shows its error once, and the button comes back.
  $('record').click();
  await flush();
  ws.push({ type: 'error', code: 'BAD_REQUEST', message: 'the call is already recorded', callId: 'c-2', ref: ws.last().ref });
  await flush();
  assert.equal($('errors').children[0].dataset.code, 'BAD_REQUEST');
  assert.equal($('errors').children.filter((li) => li.dataset.code === 'BAD_REQUEST').length, 1, 'shown once');
  assert.equal($('record').disabled, false);

  // The end of the call takes the indicator and the buttons away.
  ws.push({ type: 'recording', callId: 'c-2', recordingId: REC, status: 'in-progress' });
  await flush();
  assert.equal($('recording-state').hidden, false);
  ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
  await flush();
  assert.equal($('recording-state').hidden, true);
  assert.equal($('record').disabled, true);
  assert.equal($('record-pause').disabled, true);
  $('go-offline').click();
  await flush();
});

test('demo page: the Insights list shows kind: text, newest at the bottom, at most 50', async () => {
  const env = makeEnv();
  const { $, ws } = await onlineDemo(env);
  assert.equal($('insights').querySelectorAll('li').length, 0, 'no placeholder item');
  await answeredCall($, ws, ['record']);
  const push = (insight) => ws.push({ type: 'insight', callId: 'c-2', forkId: 'rec-fork1', insight, at: 1796472059000 });
  push({ event: 'insight', kind: 'transcript', text: 'I would like to cancel my plan', track: 'inbound' });
  push({ event: 'insight', kind: 'hint', text: 'Offer the retention discount' });
  push({ event: 'insight', score: 0.4 }); // neither kind nor text
  await flush();
  const items = $('insights').querySelectorAll('li');
  assert.deepEqual(items.map((li) => li.textContent), [
    'transcript: I would like to cancel my plan',
    'hint: Offer the retention discount',
    'insight: {"event":"insight","score":0.4}',
  ]);
  assert.deepEqual(items.map((li) => li.dataset.kind), ['transcript', 'hint', 'insight']);
  assert.equal(items[0].dataset.track, 'inbound');

  for (let i = 1; i <= 55; i++) push({ kind: 'transcript', text: `line ${i}` });
  await flush();
  const all = $('insights').querySelectorAll('li');
  assert.equal(all.length, 50, 'at most 50 kept');
  assert.equal(all[0].textContent, 'transcript: line 6');
  assert.equal(all[49].textContent, 'transcript: line 55', 'newest at the bottom');

  // Kept for reading after the call ends; a new call starts an empty list.
  ws.push({ type: 'ended', callId: 'c-2', reason: 'remote_hangup' });
  await flush();
  assert.equal($('insights').querySelectorAll('li').length, 50);
  $('dial-to').value = '+15550199';
  $('call').click();
  await flush();
  ws.push({ type: 'answer', callId: 'c-5', sdp: 'v=0', ref: ws.last().ref });
  await flush();
  assert.equal($('insights').querySelectorAll('li').length, 0);
  ws.push({ type: 'connected', callId: 'c-5' });
  ws.push({ type: 'insight', callId: 'c-5', forkId: 'rec-fork2', insight: { kind: 'transcript', text: 'Hello?' }, at: 1796472099000 });
  await flush();
  assert.deepEqual($('insights').querySelectorAll('li').map((li) => li.textContent), ['transcript: Hello?']);
  $('go-offline').click();
  await flush();
  ws.push({ type: 'ended', callId: 'c-5', reason: 'hangup' });
  await flush();
});

test('demo page: supervisor lists calls, listens, switches to whisper', async () => {
  const env = makeEnv();
  const { $, ws, demo } = await onlineDemo(env);
  assert.equal($('monitor-controls').hidden, true);
  $('list-calls').click();
  await flush();
  assert.equal(ws.last().type, 'listCalls');
  ws.push({
    type: 'calls',
    ref: ws.last().ref,
    calls: [{ callId: 'c-7', number: 'support', from: '+15550111', to: '+15550100', direction: 'inbound', startedAt: 1, participants: [{ id: 'p-0', role: 'customer', address: '+15550111' }, { id: 'p-2', role: 'agent', operatorRef: 'bob' }] }],
  });
  await flush();
  const row = $('calls-list').children[0];
  assert.equal(row.dataset.callId, 'c-7');
  assert.match(row.textContent, /\+15550111 → \+15550100/);
  row.children.find((b) => b.dataset.monitor === 'listen').click();
  await flush();
  const mon = ws.last();
  assert.deepEqual([mon.type, mon.callId, mon.mode], ['monitor', 'c-7', 'listen']);
  ws.push({ type: 'answer', callId: 'c-7', sdp: 'v=0', ref: mon.ref });
  ws.push({ type: 'connected', callId: 'c-7' });
  const me = { id: 'p-9', role: 'supervisor', state: 'joined', operatorRef: 'alice', monitor: 'listen' };
  ws.push({ type: 'participants', callId: 'c-7', self: 'p-9', participants: [{ id: 'p-0', role: 'customer' }, { id: 'p-2', role: 'agent' }, me], capabilities: ['switch_monitor'] });
  await flush();
  assert.equal(demo.call.direction, 'monitor');
  assert.equal($('monitor-controls').hidden, false);
  assert.match($('call-state').textContent, /Monitoring call c-7 \(listen\)/);
  assert.equal($('mode-listen').getAttribute('aria-pressed'), 'true');
  assert.ok($('calls-list').children[0].children.filter((b) => b.dataset.monitor).every((b) => b.disabled), 'busy: no second monitor');
  $('mode-whisper').click();
  await flush();
  const mm = ws.last();
  assert.deepEqual([mm.type, mm.callId, mm.mode], ['monitorMode', 'c-7', 'whisper']);
  ws.push({ type: 'participantUpdated', callId: 'c-7', participant: { ...me, monitor: 'whisper' }, ref: mm.ref });
  await flush();
  assert.equal($('mode-whisper').getAttribute('aria-pressed'), 'true');
  assert.match($('call-state').textContent, /\(whisper\)/);
  $('hangup').click();
  assert.deepEqual([ws.last().type, ws.last().callId], ['hangup', 'c-7']);
  ws.push({ type: 'ended', callId: 'c-7', reason: 'hangup' });
  await flush();
  assert.equal($('monitor-controls').hidden, true);
  $('go-offline').click();
  await flush();
});
