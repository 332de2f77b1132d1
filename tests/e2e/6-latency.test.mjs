// Latency, measured and reported (not asserted). The page's microphone is
// replaced by a Web Audio graph that injects short 1 kHz clicks into the outgoing
// track; an AudioWorklet on the call's remote stream timestamps their return in
// the same AudioContext, so the round trip needs no clock mapping.
//
// What the SBC adds is measured on one clock, in the echoing test-carrier: it
// also relays the browser's WebRTC datagrams to the SBC (`--udp-proxy`, the SBC
// advertises the relay as its ICE candidate) and timestamps the first large SRTP
// packet of each click each way (silence encodes to small Opus packets, a click
// to large ones), while its RTP side timestamps the click arriving in PCMU and
// echoes that packet straight back:
//
//   page --Opus/SRTP--> relay(up) --> SBC --PCMU--> carrier(onset, echo) --> SBC --> relay(down) --> page
//   SBC share, uplink   = onset - up     (jitter buffer, Opus decode, PCMU encode, two loopback hops)
//   SBC share, downlink = down - onset   (jitter buffer, PCMU decode, Opus encode, SRTP)
//
// Then, on the same call, one 100 ms stall (the relay holds the browser's packets,
// or the carrier holds its own, and releases the burst) followed by clicks: how
// fast the SBC's adaptive jitter buffer comes back after an isolated stall.
//
// A second call to the SBC's built-in echo number gives the SBC's own echo path
// (down - up at the relay). Results go to the test's diagnostics and latency.json
// in the artifacts folder. Real time on a shared box: the figures move with its
// load (the packet-gap figures show how regular the arrivals were).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { Env, freePort, sleep } from './lib/harness.mjs';

const CLICKS = 8;
const GAP_MS = 900;

/** Page init script: microphone = Web Audio clicks; a worklet to time their return. */
const LATENCY_PAGE = () => {
  const L = (window.__lat = { sent: [], returned: [] });
  L.ctx = null;
  const context = async () => {
    if (!L.ctx) L.ctx = new AudioContext({ latencyHint: 'interactive' });
    if (L.ctx.state !== 'running') await L.ctx.resume();
    return L.ctx;
  };
  navigator.mediaDevices.getUserMedia = async () => {
    const ctx = await context();
    const dest = ctx.createMediaStreamDestination();
    dest.channelCount = 1;
    const osc = ctx.createOscillator();
    osc.frequency.value = 1000;
    const gain = ctx.createGain();
    gain.gain.value = 0;
    osc.connect(gain).connect(dest);
    osc.start();
    L.gain = gain;
    return dest.stream;
  };
  /** Schedules a 30 ms click 50 ms from now; returns its context time. */
  L.click = () => {
    const t = L.ctx.currentTime + 0.05;
    L.gain.gain.setValueAtTime(0.5, t);
    L.gain.gain.setValueAtTime(0, t + 0.03);
    L.sent.push(t);
    return t;
  };
  /** Starts timing what comes back on `stream` (the first loud sample after 200 ms of quiet). */
  L.listen = async (stream) => {
    const ctx = await context();
    const code = `class Det extends AudioWorkletProcessor {
      constructor() { super(); this.quiet = 0; }
      process(inputs) {
        const x = inputs[0] && inputs[0][0];
        if (!x) return true;
        let idx = -1;
        for (let i = 0; i < x.length; i++) if (Math.abs(x[i]) > 0.05) { idx = i; break; }
        if (idx >= 0) {
          if (this.quiet >= sampleRate * 0.2) this.port.postMessage((currentFrame + idx) / sampleRate);
          this.quiet = 0;
        } else this.quiet += x.length;
        return true;
      }
    }
    registerProcessor('click-detector', Det);`;
    const url = URL.createObjectURL(new Blob([code], { type: 'application/javascript' }));
    await ctx.audioWorklet.addModule(url);
    const det = new AudioWorkletNode(ctx, 'click-detector');
    det.port.onmessage = (e) => L.returned.push(e.data);
    const mute = ctx.createGain();
    mute.gain.value = 0;
    L.src = ctx.createMediaStreamSource(stream);
    L.src.connect(det).connect(mute).connect(ctx.destination);
    L.det = det;
  };
  L.stop = () => {
    if (L.src) L.src.disconnect();
    L.sent = [];
    L.returned = [];
  };
};

const median = (a) => {
  if (!a.length) return null;
  const s = [...a].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const r1 = (v) => (v == null ? null : Math.round(v * 10) / 10);
const summary = (a) => ({ n: a.length, median: r1(median(a)), min: r1(Math.min(...a)), max: r1(Math.max(...a)) });

/** Browser-side receive and RTCP figures of the call's peer connection. */
async function browserStats(page) {
  return page.evaluate(async () => {
    const pc = window.demo.call && window.demo.call.peerConnection;
    if (!pc) return null;
    const out = {};
    for (const s of (await pc.getStats()).values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        out.jitterBufferMs = s.jitterBufferEmittedCount ? (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount : null;
        out.jitterBufferTargetMs = s.jitterBufferEmittedCount ? (1000 * s.jitterBufferTargetDelay) / s.jitterBufferEmittedCount : null;
        out.jitterMs = s.jitter != null ? 1000 * s.jitter : null;
        out.packetsReceived = s.packetsReceived;
        out.packetsLost = s.packetsLost;
        out.concealedSamples = s.concealedSamples;
      }
      if (s.type === 'remote-inbound-rtp' && s.kind === 'audio' && s.roundTripTime != null) out.rtcpRttMs = 1000 * s.roundTripTime;
      if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime != null) out.iceRttMs = 1000 * s.currentRoundTripTime;
    }
    const ctx = window.__lat.ctx;
    out.audioContext = { sampleRate: ctx.sampleRate, baseLatencyMs: 1000 * ctx.baseLatency, outputLatencyMs: 1000 * (ctx.outputLatency || 0) };
    return out;
  });
}

/** Page round trips (ms) of the clicks sent since index `from`: the first return 30-800 ms later. */
async function pageRoundTrips(op, from = 0) {
  const lat = await op.page.evaluate(() => ({ sent: window.__lat.sent, returned: window.__lat.returned }));
  const rtt = [];
  for (const t of lat.sent.slice(from)) {
    const back = lat.returned.find((r) => r > t + 0.03 && r < t + 0.8);
    rtt.push(back == null ? null : 1000 * (back - t));
  }
  return { rtt, sent: lat.sent.length };
}

/**
 * Pairs relay and carrier timestamps (carrier clock, ms) per click: `up` (relay up ->
 * carrier onset), `down` (carrier onset -> relay down), or for the SBC echo number
 * `echo` (relay up -> relay down).
 */
function pairClicks(evs, viaCarrier) {
  const ups = evs.filter((e) => e.event === 'proxy_onset' && e.dir === 'up');
  const downs = evs.filter((e) => e.event === 'proxy_onset' && e.dir === 'down');
  const onsets = evs.filter((e) => e.event === 'onset');
  const out = [];
  for (const u of ups) {
    if (viaCarrier) {
      const o = onsets.find((x) => x.t_ms > u.t_ms && x.t_ms < u.t_ms + 400);
      if (!o) continue;
      const d = downs.find((x) => x.t_ms > o.t_ms && x.t_ms < o.t_ms + 400);
      out.push({ t_ms: u.t_ms, up: o.t_ms - u.t_ms, down: d ? d.t_ms - o.t_ms : null });
    } else {
      const d = downs.find((x) => x.t_ms > u.t_ms && x.t_ms < u.t_ms + 600);
      if (d) out.push({ t_ms: u.t_ms, echo: d.t_ms - u.t_ms });
    }
  }
  return { clicks: out, counts: { up: ups.length, down: downs.length, carrierOnsets: onsets.length } };
}

/** Summary of the longest packet gap per 500 ms window (20 ms when paced perfectly). */
function gaps(list) {
  const g = list.map((e) => e.max_gap_ms).filter((v) => typeof v === 'number');
  if (!g.length) return { windows: 0 };
  const s = [...g].sort((a, b) => a - b);
  return { windows: g.length, median: r1(median(g)), p90: r1(s[Math.floor(0.9 * (s.length - 1))]), max: r1(s[s.length - 1]) };
}

const values = (clicks, k) => clicks.map((c) => c[k]).filter((v) => v != null);
const stat = (a) => (a.length ? summary(a) : { n: 0 });

/** Clicks every `gapMs`; returns the carrier events from before the first one. */
async function clickTrain(op, carrier, n, gapMs) {
  const from = carrier.events.length;
  for (let i = 0; i < n; i++) {
    await op.page.evaluate(() => window.__lat.click());
    await sleep(gapMs);
  }
  await sleep(500);
  return carrier.events.slice(from);
}

/**
 * One stall of `ms` on `dir` (`up`: the browser's packets to the SBC, held by the relay;
 * `rtp`: the carrier's packets to the SBC), then clicks: how the SBC's delay that way
 * comes back. Returns [{afterStallS, upMs, downMs, pageMs}].
 */
async function stallSeries(op, carrier, dir, { ms = 100, clicks = 10, gapMs = 700 } = {}) {
  const from = carrier.events.length;
  const pageFrom = (await pageRoundTrips(op)).sent;
  carrier.send({ cmd: 'stall', dir, ms });
  const released = await carrier.waitFor((e) => e.event === 'stall' && e.dir === dir, { from, what: `stall ${dir} released` });
  const stallAt = released.t_ms - ms;
  await sleep(150);
  const evs = await clickTrain(op, carrier, clicks, gapMs);
  const { rtt } = await pageRoundTrips(op, pageFrom);
  const paired = pairClicks(evs, true).clicks;
  // Relative transit (arrival - RTP timestamp) of what the SBC sends, before and after
  // the stall: a lasting step means its output timeline moved against its timestamps.
  const all = carrier.events;
  const step = (pick) => {
    const level = (lo, hi) =>
      median(
        all
          .filter((e) => pick(e) && e.t_ms >= stallAt + lo && e.t_ms <= stallAt + hi && typeof e.transit_min_ms === 'number')
          .map((e) => e.transit_min_ms),
      );
    const before = level(-2600, -100);
    const after = level(2000, 7000);
    return before == null || after == null ? null : r1(after - before);
  };
  const markers = (pick) => all.filter((e) => pick(e) && e.t_ms >= stallAt - 100 && e.t_ms <= stallAt + 1100).reduce((n, e) => n + (e.markers || 0), 0);
  const toCarrier = (e) => e.event === 'tone';
  const toBrowser = (e) => e.event === 'proxy_stats' && e.dir === 'down';
  return {
    dir,
    ms,
    held: released.held,
    sbcOutputTransitStepMs: { toCarrier: step(toCarrier), toBrowser: step(toBrowser) },
    sbcOutputMarkersAroundStall: { toCarrier: markers(toCarrier), toBrowser: markers(toBrowser) },
    series: paired.map((c, i) => ({ afterStallS: r1((c.t_ms - stallAt) / 1000), upMs: r1(c.up), downMs: r1(c.down), pageMs: r1(rtt[i]) })),
  };
}

/** Dials `to`, measures steady clicks, optionally stall recovery, and hangs up. */
async function measure(env, op, carrier, to, label, { viaCarrier }) {
  await op.page.fill('#dial-to', to);
  await op.page.click('#call');
  await op.waitCallState('connected', 15000);
  await op.page.evaluate(() => window.__lat.listen(window.demo.call.remoteStream));
  await sleep(2500); // let both jitter buffers settle on the steady stream
  await op.shot(`${label}-connected`);
  const evs = await clickTrain(op, carrier, CLICKS, GAP_MS);
  const { rtt } = await pageRoundTrips(op);
  const stats = await browserStats(op.page);
  const stalls = viaCarrier ? [await stallSeries(op, carrier, 'up'), await stallSeries(op, carrier, 'rtp')] : [];
  await op.page.click('#hangup');
  await op.waitCallState('ended');
  await op.page.evaluate(() => window.__lat.stop());

  const { clicks, counts } = pairClicks(evs, viaCarrier);
  const both = clicks.filter((c) => c.down != null).map((c) => c.up + c.down);
  const packetGapsMs = {
    browserToSbc: gaps(evs.filter((e) => e.event === 'proxy_stats' && e.dir === 'up')),
    sbcToBrowser: gaps(evs.filter((e) => e.event === 'proxy_stats' && e.dir === 'down')),
    ...(viaCarrier ? { sbcToCarrier: gaps(evs.filter((e) => e.event === 'tone')) } : {}),
  };
  const pageRtt = rtt.filter((v) => v != null);
  return {
    to,
    clicks: rtt.length,
    pageRoundTripMs: stat(pageRtt),
    ...(viaCarrier
      ? { sbcUplinkMs: stat(values(clicks, 'up')), sbcDownlinkMs: stat(values(clicks, 'down')), sbcBothWaysMs: stat(both) }
      : { sbcEchoRoundTripMs: stat(values(clicks, 'echo')) }),
    packetGapsMs,
    relayOnsets: counts,
    browser: stats,
    stalls,
    raw: {
      rtt: pageRtt.map(r1),
      up: values(clicks, 'up').map(r1),
      down: values(clicks, 'down').map(r1),
      both: both.map(r1),
      echo: values(clicks, 'echo').map(r1),
    },
  };
}

test('latency: mouth-to-ear round trip and the SBC share (reported)', { timeout: 120000 }, async (t) => {
  const webrtcPort = await freePort();
  const relayPort = await freePort();
  const env = await Env.start('6-latency', {
    webrtcPort,
    webrtcAdvertise: `127.0.0.1:${relayPort}`,
    answerCarriers: { echo: ['--echo', '--udp-proxy', `127.0.0.1:${relayPort}=127.0.0.1:${webrtcPort}`] },
    trunks: [{ name: 'carrier', peers: ['echo'] }],
    numbers: [
      { id: 'support', e164: '+15550100', name: 'Support', dial: [{ ring: ['operators'], timeout: '20s' }] },
      { id: 'echo', e164: '+15550001', name: 'Echo test', dial: [{ ring: ['echo'] }] },
    ],
  });
  t.after(() => env.stop());
  const carrier = env.carriers.echo;
  await carrier.waitFor((e) => e.event === 'proxy', { what: 'relay up' });

  const op = await env.operator('Latency', { rawMic: false, initScript: LATENCY_PAGE });
  await op.goOnline();

  const viaCarrier = await measure(env, op, carrier, '+15557770001', 'carrier-echo', { viaCarrier: true });
  const viaEcho = await measure(env, op, carrier, '+15550001', 'sbc-echo', { viaCarrier: false });
  const metrics = await fetch(`${env.url}metrics`).then((r) => r.text());
  const jitterMetrics = metrics.split('\n').filter((l) => /jitter|delay|latency/i.test(l) && !l.startsWith('#'));
  const report = { viaCarrier, viaEcho, sbcJitterMetrics: jitterMetrics };
  fs.writeFileSync(path.join(env.dir, 'latency.json'), JSON.stringify(report, null, 2));

  const f = (s) => (s && s.n ? `${s.median} ms (min ${s.min}, max ${s.max}, n=${s.n})` : 'no data');
  t.diagnostic(`carrier echo: page round trip ${f(viaCarrier.pageRoundTripMs)}`);
  t.diagnostic(`carrier echo: SBC uplink (browser->carrier) ${f(viaCarrier.sbcUplinkMs)}`);
  t.diagnostic(`carrier echo: SBC downlink (carrier->browser) ${f(viaCarrier.sbcDownlinkMs)}`);
  t.diagnostic(`carrier echo: SBC both ways, per click ${f(viaCarrier.sbcBothWaysMs)}`);
  t.diagnostic(`carrier echo: browser jitter buffer ${r1(viaCarrier.browser?.jitterBufferMs)} ms (target ${r1(viaCarrier.browser?.jitterBufferTargetMs)}), RTCP RTT ${r1(viaCarrier.browser?.rtcpRttMs)} ms`);
  const g = (x) => (x && x.windows ? `${x.median}/${x.p90}/${x.max}` : '-');
  const pg = viaCarrier.packetGapsMs;
  t.diagnostic(`carrier echo: longest packet gap per 500 ms (median/p90/max ms): browser->SBC ${g(pg.browserToSbc)}, SBC->carrier ${g(pg.sbcToCarrier)}, SBC->browser ${g(pg.sbcToBrowser)}`);
  t.diagnostic(`SBC echo number: page round trip ${f(viaEcho.pageRoundTripMs)}; SBC in+out at the relay ${f(viaEcho.sbcEchoRoundTripMs)}`);
  for (const st of viaCarrier.stalls) {
    const k = st.dir === 'up' ? 'upMs' : 'downMs';
    const series = st.series.map((x) => `${x.afterStallS}s:${x[k]}`).join(' ');
    t.diagnostic(`after one ${st.ms} ms stall of the ${st.dir === 'up' ? "browser's packets (SBC uplink)" : "carrier's packets (SBC downlink)"}: SBC delay ${series}`);
    t.diagnostic(
      `  lasting transit step of the SBC's output (ms): to the carrier ${st.sbcOutputTransitStepMs.toCarrier}, to the browser ${st.sbcOutputTransitStepMs.toBrowser}; marker bits within 1 s: ${st.sbcOutputMarkersAroundStall.toCarrier} / ${st.sbcOutputMarkersAroundStall.toBrowser}`,
    );
  }
  t.diagnostic(`SBC jitter-buffer metrics in /metrics: ${jitterMetrics.length ? jitterMetrics.join('; ') : 'none'}`);
  t.diagnostic(`details: ${path.join(env.dir, 'latency.json')}`);

  // Reported, not asserted; but the measurement itself must have worked.
  assert.ok(viaCarrier.pageRoundTripMs.n >= 3, `clicks came back through the carrier: ${JSON.stringify(viaCarrier.raw)}`);
  assert.ok(viaEcho.pageRoundTripMs.n >= 3, `clicks came back through the echo number: ${JSON.stringify(viaEcho.raw)}`);
});
