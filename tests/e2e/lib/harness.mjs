// The end-to-end harness: the real `sbc` binary on free loopback ports with a
// generated config, `test-carrier` processes on the SIP side, and Chromium
// (playwright-core, Debian's /usr/bin/chromium) running the served demo page.
// Every process's output goes to the run's artifacts folder with the screenshots.

import { spawn } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const TARGET = process.env.CARGO_TARGET_DIR ? path.resolve(REPO, process.env.CARGO_TARGET_DIR) : path.join(REPO, 'target');
export const SBC_BIN = process.env.SBC_BIN || path.join(TARGET, 'debug', 'sbc');
export const CARRIER_BIN = process.env.CARRIER_BIN || path.join(TARGET, 'debug', 'test-carrier');
export const AGENT_BIN = process.env.AGENT_BIN || path.join(TARGET, 'debug', 'test-agent');
export const FORK_BIN = process.env.FORK_BIN || path.join(TARGET, 'debug', 'test-fork');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const API_KEY = 'e2e-backend-key';
const TOKEN_SECRET = 'e2e-token-secret-0123456789abcdef-0123456789';

/** The run's artifacts folder (E2E_ARTIFACTS, else a new temp dir), printed once. */
export function artifactsRoot() {
  if (!process.env.E2E_ARTIFACTS) {
    // `node --test` runs each file in a child: share one folder per run (the runner's pid).
    process.env.E2E_ARTIFACTS = path.join(os.tmpdir(), `sbc-e2e-${process.ppid}`);
  }
  fs.mkdirSync(process.env.E2E_ARTIFACTS, { recursive: true });
  return process.env.E2E_ARTIFACTS;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const near = (f, hz, tol = 20) => typeof f === 'number' && Math.abs(f - hz) <= tol;

/** A port free for both UDP and TCP on 127.0.0.1 (not reserved: good enough on a test box). */
export async function freePort() {
  for (let i = 0; i < 50; i++) {
    const udp = dgram.createSocket('udp4');
    const port = await new Promise((res, rej) => {
      udp.once('error', rej);
      udp.bind(0, '127.0.0.1', () => res(udp.address().port));
    });
    const tcpOk = await new Promise((res) => {
      const s = net.createServer();
      s.once('error', () => res(false));
      s.listen(port, '127.0.0.1', () => s.close(() => res(true)));
    });
    udp.close();
    if (tcpOk) return port;
  }
  throw new Error('no free port');
}

/** Writes a 16-bit mono PCM WAV of a sine tone (the fake microphone). */
export function writeToneWav(file, { hz = 440, seconds = 10, rate = 48000, amplitude = 0.5 } = {}) {
  const n = Math.round(seconds * rate);
  const buf = Buffer.alloc(44 + n * 2);
  buf.write('RIFF', 0);
  buf.writeUInt32LE(36 + n * 2, 4);
  buf.write('WAVE', 8);
  buf.write('fmt ', 12);
  buf.writeUInt32LE(16, 16);
  buf.writeUInt16LE(1, 20); // PCM
  buf.writeUInt16LE(1, 22); // mono
  buf.writeUInt32LE(rate, 24);
  buf.writeUInt32LE(rate * 2, 28);
  buf.writeUInt16LE(2, 32);
  buf.writeUInt16LE(16, 34);
  buf.write('data', 36);
  buf.writeUInt32LE(n * 2, 40);
  for (let i = 0; i < n; i++) {
    buf.writeInt16LE(Math.round(amplitude * 32767 * Math.sin((2 * Math.PI * hz * i) / rate)), 44 + i * 2);
  }
  fs.writeFileSync(file, buf);
  return file;
}

/** Every child still running, killed if this test process exits early. */
const LIVE = new Set();
process.on('exit', () => {
  for (const child of LIVE) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
});

/** A child process whose stdout lines are collected (JSON-parsed when they are JSON). */
export class Proc {
  constructor(name, cmd, args, { logDir, env } = {}) {
    this.name = name;
    this.lines = [];
    this.events = [];
    this.waiters = new Set();
    this.exited = null;
    const logFile = path.join(logDir, `${name}.log`);
    this.log = fs.createWriteStream(logFile);
    this.logFile = logFile;
    this.log.write(`$ ${cmd} ${args.join(' ')}\n`);
    this.child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    LIVE.add(this.child);
    this.child.stdin.on('error', () => {}); // EPIPE after an exit: the exit is what matters
    this.child.on('error', (err) => {
      this.exited = { error: err.message };
      this._wake();
    });
    this.child.on('exit', (code, signal) => {
      LIVE.delete(this.child);
      this.exited = { code, signal };
      this.log.write(`[exit code=${code} signal=${signal}]\n`);
      this._wake();
    });
    let out = '';
    this.child.stdout.on('data', (d) => {
      out += d;
      let i;
      while ((i = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, i);
        out = out.slice(i + 1);
        this._line(line);
      }
    });
    this.child.stderr.on('data', (d) => this.log.write(d));
  }

  _line(line) {
    // Each line is stamped with this process's clock too (performance.now, ms).
    this.log.write(`${line}\n`);
    this.lines.push(line);
    let ev = null;
    try {
      ev = JSON.parse(line);
    } catch {
      /* not JSON: a banner line */
    }
    if (ev && typeof ev === 'object') {
      ev.at = performance.now();
      this.events.push(ev);
    }
    this._wake();
  }

  _wake() {
    for (const w of [...this.waiters]) w();
  }

  /** Resolves with the first event (from `from` on) for which `pred` holds. */
  waitFor(pred, { timeout = 10000, what = 'event', from = 0 } = {}) {
    return new Promise((resolve, reject) => {
      let timer = null;
      const check = () => {
        for (let i = from; i < this.events.length; i++) {
          if (pred(this.events[i])) {
            this.waiters.delete(check);
            clearTimeout(timer);
            resolve(this.events[i]);
            return;
          }
        }
        if (this.exited) {
          this.waiters.delete(check);
          clearTimeout(timer);
          reject(new Error(`${this.name} exited (${JSON.stringify(this.exited)}) while waiting for ${what}; log: ${this.logFile}`));
        }
      };
      timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`${this.name}: timed out after ${timeout} ms waiting for ${what}; log: ${this.logFile}\nlast events:\n${this.events.slice(-8).map((e) => JSON.stringify(e)).join('\n')}`));
      }, timeout);
      this.waiters.add(check);
      check();
    });
  }

  /** Resolves with the first stdout line matching `re`. */
  waitLine(re, { timeout = 15000 } = {}) {
    return new Promise((resolve, reject) => {
      let timer = null;
      const check = () => {
        const l = this.lines.find((x) => re.test(x));
        if (l || this.exited) {
          this.waiters.delete(check);
          clearTimeout(timer);
          if (l) resolve(l);
          else reject(new Error(`${this.name} exited (${JSON.stringify(this.exited)}) before printing ${re}; log: ${this.logFile}`));
        }
      };
      timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`${this.name}: no line ${re} within ${timeout} ms; log: ${this.logFile}`));
      }, timeout);
      this.waiters.add(check);
      check();
    });
  }

  send(obj) {
    if (!this.exited) this.child.stdin.write(`${JSON.stringify(obj)}\n`);
  }

  async stop(signal = 'SIGTERM', graceMs = 3000) {
    if (this.exited) return;
    const done = new Promise((r) => this.child.once('exit', r));
    this.child.kill(signal);
    const timer = sleep(graceMs).then(() => 'timeout');
    if ((await Promise.race([done, timer])) === 'timeout' && !this.exited) {
      this.child.kill('SIGKILL');
      await done;
    }
    await new Promise((r) => this.log.end(r));
  }
}

/** A test-carrier process. */
export class Carrier extends Proc {
  /** Events whose `event` is `name` (optionally only from process time `afterMs` on). */
  all(name, afterMs = -Infinity) {
    return this.events.filter((e) => e.event === name && e.t_ms >= afterMs);
  }

  /** Waits for `need` consecutive tone reports near `hz` (after carrier time `afterMs`). */
  async hears(hz, { afterMs = -Infinity, from = 0, need = 2, minDb = -40, timeout = 10000, tol = 20 } = {}) {
    let run = 0;
    const ev = await this.waitFor(
      (e) => {
        if (e.event !== 'tone' || e.t_ms < afterMs) return false;
        run = near(e.freq, hz, tol) && e.level_db > minDb ? run + 1 : 0;
        return run >= need;
      },
      { timeout, from, what: `${need} tone reports of ${hz} Hz after t=${afterMs}` },
    );
    return ev;
  }

  /**
   * Waits for `need` consecutive tone reports (from event index `from` on) of a leg that
   * receives media (`packets` > 0) and hears nothing: no dominant frequency, or one at most
   * `maxDb`. Its own tone or anyone else's would be the dominant one.
   */
  async quiet({ from = 0, need = 2, maxDb = -50, timeout = 10000 } = {}) {
    let run = 0;
    return this.waitFor(
      (e) => {
        if (e.event !== 'tone') return false;
        run = e.packets > 0 && !(e.level_db > maxDb) ? run + 1 : 0;
        return run >= need;
      },
      { timeout, from, what: `${need} quiet tone reports (nothing above ${maxDb} dB)` },
    );
  }

  /** Stops (closing stdin first makes it hang up and exit on its own). */
  async stop() {
    if (!this.exited) {
      this.child.stdin.end();
      await Promise.race([new Promise((r) => this.child.once('exit', r)), sleep(1500)]);
    }
    await super.stop();
  }
}

/** The TOML of an sbc config. */
export function sbcToml(o) {
  const q = (s) => JSON.stringify(String(s));
  const list = (a) => `[${a.map(q).join(', ')}]`;
  const lines = [
    '# generated by tests/e2e/lib/harness.mjs',
    '[sip]',
    `udp = ${q(`127.0.0.1:${o.sip}`)}`,
    ...(o.tcp ? [`tcp = ${q(`127.0.0.1:${o.sip}`)}`] : []),
    `user_agent = "sbc-e2e"`,
    '',
    '[media]',
    `rtp_bind = "127.0.0.1"`,
    `rtp_ports = ${q(`${o.rtpLo}-${o.rtpLo + 199}`)}`,
    `webrtc = ${q(`127.0.0.1:${o.webrtc}`)}`,
    ...(o.webrtcAdvertise ? [`webrtc_advertise = ${q(o.webrtcAdvertise)}`] : []),
    `media_timeout = "30s"`,
    '',
    '[http]',
    `listen = ${q(`127.0.0.1:${o.http}`)}`,
    `allowed_origins = ${list([`http://127.0.0.1:${o.http}`, ...(o.origins || [])])}`,
    '',
    '[auth]',
    `token_secret = ${q(TOKEN_SECRET)}`,
    '',
    '[[auth.api_keys]]',
    'name = "e2e"',
    `sha256 = ${q(createHash('sha256').update(API_KEY).digest('hex'))}`,
    '',
    '[limits]',
    `reconnect_grace = ${q(o.grace || '30s')}`,
    '',
  ];
  for (const t of o.trunks || []) {
    lines.push(
      '[[trunks]]',
      `name = ${q(t.name)}`,
      `host = ${q(t.host || `${t.name}.test`)}`,
      `peers = ${list(t.peers)}`,
      `inbound = ${list(t.inbound || ['127.0.0.1'])}`,
      `codecs = ${list(t.codecs || ['PCMU'])}`,
      `dtmf = ${q(t.dtmf || 'rfc4733')}`,
      '',
    );
  }
  for (const st of o.streams || []) {
    lines.push('[[streams]]', `url = ${q(st.url)}`, `format = ${q(st.format || 'pcm16-24k')}`, '');
  }
  for (const n of o.numbers || []) {
    const steps = n.dial.map((s) => `{ ring = ${list(s.ring)}${s.timeout ? `, timeout = ${q(s.timeout)}` : ''} }`);
    const fork = n.fork ? [`fork = { url = ${q(n.fork.url)}, tracks = ${q(n.fork.tracks || 'both')}, rate = ${n.fork.rate || 16000} }`] : [];
    lines.push('[[numbers]]', `id = ${q(n.id)}`, `e164 = ${q(n.e164)}`, `name = ${q(n.name || n.id)}`, ...fork, `dial = [${steps.join(', ')}]`, '');
  }
  // More sections as they are (`[cluster]`, `[admin]`).
  if (o.extra) lines.push(o.extra, '');
  lines.push('[log]', `level = ${q(o.logLevel || 'info,sbc=debug,sip_bridge=debug')}`, '', '[demo]', `enabled = ${o.demo === false ? 'false' : 'true'}`, '');
  return lines.join('\n');
}

/** An HS256 JWT signed with `secret` (for bad-token tests: a foreign secret). */
export function jwt(claims, secret) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

/**
 * The customer's web app on 127.0.0.1:`port` (its own origin): serves tests/e2e/app/*.html
 * and passes `POST /api/operator/token` to its token backend (`backendUrl`), as an app
 * with its API behind the same origin would. Every request is logged to app-<port>.log.
 */
export function appServer(port, backendUrl, logDir) {
  const root = path.join(REPO, 'tests/e2e/app');
  const log = fs.createWriteStream(path.join(logDir, `app-${port}.log`));
  const server = http.createServer(async (req, res) => {
    log.write(`${req.method} ${req.url}\n`);
    const url = new URL(req.url, `http://127.0.0.1:${port}`);
    try {
      if (req.method === 'POST' && url.pathname === '/api/operator/token') {
        let body = '';
        for await (const chunk of req) body += chunk;
        const r = await fetch(`${backendUrl}/api/operator/token`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body });
        const text = await r.text();
        log.write(`  -> backend ${r.status}\n`);
        res.writeHead(r.status, { 'Content-Type': r.headers.get('content-type') || 'application/json' });
        return res.end(text);
      }
      const file = path.join(root, path.basename(url.pathname));
      if (req.method === 'GET' && url.pathname.endsWith('.html') && fs.existsSync(file)) {
        res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
        return res.end(fs.readFileSync(file));
      }
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found\n');
    } catch (err) {
      res.writeHead(502, { 'Content-Type': 'text/plain' });
      res.end(String(err));
    }
  });
  server.on('close', () => log.end());
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

/**
 * A UDP relay in front of the SBC's WebRTC port (the sbc advertises `listen`), to lose
 * packets on the SBC's side of the browser's media path: `dropDown` is the share of the
 * SBC's RTP packets toward the browser that are dropped (seeded, so runs are alike). Only
 * RTP: STUN, DTLS and RTCP always pass (RFC 7983 and RFC 5761 demultiplexing). One upstream
 * socket per browser address. `setDrop(share)` changes it; `stats` counts.
 */
export async function udpLossProxy({ listen, target, dropDown = 0, seed = 1 }) {
  const front = dgram.createSocket('udp4');
  const clients = new Map();
  const stats = { up: 0, down: 0, rtpDown: 0, droppedDown: 0 };
  let drop = dropDown;
  let x = seed >>> 0 || 1;
  const random = () => {
    // xorshift32
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
  const isRtp = (b) => b.length >= 12 && b[0] >= 128 && b[0] <= 191 && !(b[1] >= 192 && b[1] <= 223);
  front.on('message', (msg, rinfo) => {
    const key = `${rinfo.address}:${rinfo.port}`;
    let up = clients.get(key);
    if (!up) {
      up = dgram.createSocket('udp4');
      up.bind(0, '127.0.0.1');
      up.on('message', (m) => {
        stats.down++;
        if (isRtp(m)) {
          stats.rtpDown++;
          if (drop > 0 && random() < drop) {
            stats.droppedDown++;
            return;
          }
        }
        front.send(m, rinfo.port, rinfo.address);
      });
      clients.set(key, up);
    }
    stats.up++;
    up.send(msg, target.port, target.host);
  });
  await new Promise((resolve) => front.bind(listen.port, listen.host, resolve));
  return {
    stats,
    setDrop(share) {
      drop = share;
    },
    close() {
      for (const c of clients.values()) c.close();
      front.close();
    },
  };
}

/**
 * A carrier event's time on this process's `performance.now()` clock: its own `t_ms` plus
 * the smallest (arrival - t_ms) seen over its events (the pipe's delay, at most).
 */
export function carrierToLocal(carrier, ev) {
  let offset = Infinity;
  for (const e of carrier.events) if (typeof e.t_ms === 'number') offset = Math.min(offset, e.at - e.t_ms);
  return ev.t_ms + offset;
}

const CHROMIUM_ARGS = (wav) => [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  `--use-file-for-fake-audio-capture=${wav}`,
  '--autoplay-policy=no-user-gesture-required',
];

/**
 * Runs in every operator page before its scripts: the SDK's default `getUserMedia({audio:
 * true})` gets Chromium's voice processing, whose noise suppressor takes a steady test tone
 * for noise and fades it by about 6 dB a second; ask for the raw fake microphone instead.
 */
const RAW_MIC = () => {
  const md = navigator.mediaDevices;
  if (!md || !md.getUserMedia) return;
  const orig = md.getUserMedia.bind(md);
  md.getUserMedia = (c) =>
    orig(c && c.audio === true ? { ...c, audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } } : c);
};

/**
 * One scenario's world: an sbc, carriers, a Chromium. `stop()` ends them all
 * (registered with the test's `after`).
 */
export class Env {
  static async start(name, o = {}) {
    const env = new Env(name);
    try {
      await env._start(o);
    } catch (err) {
      await env.stop();
      throw err;
    }
    return env;
  }

  constructor(name) {
    this.name = name;
    this.dir = path.join(artifactsRoot(), name);
    fs.mkdirSync(this.dir, { recursive: true });
    this.procs = [];
    this.pages = [];
    this.shotSeq = 0;
    this.browser = null;
    console.log(`# ${name}: screenshots and logs in ${this.dir}`);
  }

  async _start(o) {
    const [sip, webrtc, http] = [await freePort(), o.webrtcPort || (await freePort()), await freePort()];
    // RTP below the kernel's ephemeral range (32768+), where carriers bind.
    const rtpLo = 20000 + 2 * Math.floor(Math.random() * 5000);
    this.ports = { sip, webrtc, http, rtpLo };
    // Trunk peers are answering carriers, started before the sbc (`o.answerCarriers`:
    // name -> extra args); a trunk names them in `peers`.
    this.carriers = {};
    for (const [key, args] of Object.entries(o.answerCarriers || {})) {
      const port = await freePort();
      this.carriers[key] = await this.carrier(key, ['answer', '--listen', `127.0.0.1:${port}`, ...args]);
      this.carriers[key].sip = `127.0.0.1:${port}`;
    }
    const trunks = (o.trunks || []).map((t) => ({ ...t, peers: t.peers.map((p) => this.carriers[p]?.sip || p) }));
    // The customer's app (`o.apps`: how many origins in allowed_origins, `o.refusedApps`:
    // how many not): its origins are known before the sbc starts, its servers start after.
    const appPorts = [];
    for (let i = 0; i < (o.apps || 0) + (o.refusedApps || 0); i++) appPorts.push(await freePort());
    const appOrigins = appPorts.map((p) => `http://127.0.0.1:${p}`);
    const origins = appOrigins.slice(0, o.apps || 0);
    const toml = sbcToml({ ...o, sip, webrtc, http, rtpLo, trunks, origins, webrtcAdvertise: o.webrtcAdvertise });
    this.configFile = path.join(this.dir, 'sbc.toml');
    fs.writeFileSync(this.configFile, toml);
    this.sbc = new Proc('sbc', SBC_BIN, ['--config', this.configFile, '--drain', '1'], {
      logDir: this.dir,
      env: { RUST_LOG: process.env.E2E_RUST_LOG || 'info,sbc=debug,sip_bridge=debug', NO_COLOR: '1' },
    });
    this.procs.push(this.sbc);
    await this.sbc.waitLine(/HTTP\s/);
    this.sbcSip = `127.0.0.1:${sip}`;
    this.url = `http://127.0.0.1:${http}/`;
    this.sbcBase = `http://127.0.0.1:${http}`;
    if (appPorts.length) {
      this.backend = await this.tokenBackend();
      this.servers = [];
      for (const port of appPorts) this.servers.push(await appServer(port, this.backend.url, this.dir));
      this.apps = appOrigins.slice(0, o.apps || 0);
      this.refusedApps = appOrigins.slice(o.apps || 0);
    }
    // Chromium, with the fake microphone playing a 440 Hz tone.
    this.wav = writeToneWav(path.join(this.dir, 'mic-440.wav'), { hz: 440, seconds: 10 });
    this.browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS(this.wav),
    });
  }

  /**
   * The SDK's sample token backend (`sbc/web/examples/token-express/server.mjs`, unchanged)
   * as its own process, with this sbc's URL and API key in its environment.
   */
  async tokenBackend() {
    const port = await freePort();
    const server = path.join(REPO, 'sbc/web/examples/token-express/server.mjs');
    const p = new Proc('token-backend', process.execPath, [server], {
      logDir: this.dir,
      env: { SBC_URL: this.sbcBase, SBC_API_KEY: API_KEY, PORT: String(port) },
    });
    this.procs.push(p);
    await p.waitLine(/token endpoint on/);
    p.url = `http://127.0.0.1:${port}`;
    return p;
  }

  /** The URL of a page of the customer's app (tests/e2e/app/) on `origin`, for this sbc. */
  appUrl(origin, file, params = {}) {
    return `${origin}/${file}?${new URLSearchParams({ sbc: this.sbcBase, ...params })}`;
  }

  /** Starts a test-carrier and waits until it listens. */
  async carrier(name, args) {
    const c = new Carrier(`carrier-${name}`, CARRIER_BIN, args, { logDir: this.dir });
    this.procs.push(c);
    await c.waitFor((e) => e.event === 'ready', { timeout: 10000, what: 'ready' });
    return c;
  }

  /** Starts a test-fork (a live media fork's consumer) and waits until it listens. */
  async fork(name, args) {
    const f = new Proc(`fork-${name}`, FORK_BIN, args, { logDir: this.dir });
    this.procs.push(f);
    await f.waitFor((e) => e.event === 'ready', { timeout: 10000, what: 'ready' });
    return f;
  }

  /** Starts a test-agent (AI voice agent over WebSocket) and waits until it listens. */
  async agent(name, args) {
    const a = new Proc(`agent-${name}`, AGENT_BIN, args, { logDir: this.dir });
    this.procs.push(a);
    await a.waitFor((e) => e.event === 'ready', { timeout: 10000, what: 'ready' });
    return a;
  }

  /**
   * A new browser context + page with an event recorder: the demo page, or `url` (a page
   * that sets `window.demo = {operator, call}` like the demo; with `sdk: false`, one that
   * is not expected to load the SDK, and nothing is recorded).
   */
  async operator(name, { initScript, rawMic = true, url = this.url, sdk = true } = {}) {
    const context = await this.browser.newContext({ permissions: ['microphone'], viewport: { width: 1100, height: 900 } });
    if (rawMic) await context.addInitScript(RAW_MIC);
    if (initScript) await context.addInitScript(initScript);
    const page = await context.newPage();
    const log = fs.createWriteStream(path.join(this.dir, `page-${name}.log`));
    page.on('console', (m) => log.write(`[${m.type()}] ${m.text()}\n`));
    page.on('pageerror', (e) => log.write(`[pageerror] ${e.stack || e}\n`));
    // Every signalling frame, for post-mortems (SDP bodies shortened).
    const short = (p) => String(p).replace(/"sdp":"(?:[^"\\]|\\.)*"/, '"sdp":"..."');
    const sent = []; // every frame the page sent, parsed (OperatorPage.wsSent)
    page.on('websocket', (ws) => {
      const t = () => (performance.now() / 1000).toFixed(3);
      log.write(`[ws ${t()}] open ${ws.url()}\n`);
      ws.on('framesent', (f) => {
        log.write(`[ws ${t()}] > ${short(f.payload)}\n`);
        try {
          sent.push({ ...JSON.parse(f.payload), at: performance.now() });
        } catch {
          /* not JSON */
        }
      });
      ws.on('framereceived', (f) => log.write(`[ws ${t()}] < ${short(f.payload)}\n`));
      ws.on('close', () => log.write(`[ws ${t()}] closed\n`));
    });
    page.on('requestfailed', (r) => log.write(`[requestfailed] ${r.method()} ${r.url()}: ${r.failure()?.errorText}\n`));
    const op = new OperatorPage(this, name, context, page, log);
    op.wsSent = sent;
    this.pages.push(op);
    await op.open(url, sdk);
    return op;
  }

  async shot(page, label) {
    const file = path.join(this.dir, `${String(++this.shotSeq).padStart(2, '0')}-${label}.png`);
    await page.screenshot({ path: file }).catch(() => {});
    return file;
  }

  /** POST /v1/tokens with the configured (or another) API key. */
  async apiToken(body, key = API_KEY) {
    const res = await fetch(`${this.url}v1/tokens`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': key },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: await res.json().catch(() => null) };
  }

  async stop() {
    for (const p of this.pages) await p.close().catch(() => {});
    if (this.browser) await this.browser.close().catch(() => {});
    for (const s of this.servers || []) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
    for (const p of [...this.procs].reverse()) await p.stop().catch(() => {});
  }
}

/** One operator: a browser context on the demo page. */
export class OperatorPage {
  constructor(env, name, context, page, log) {
    this.env = env;
    this.name = name;
    this.context = context;
    this.page = page;
    this.log = log;
    this.tokenRequests = 0;
    // What the page saw: console lines and HTTP responses (status, CORS header).
    this.console = [];
    this.responses = [];
    this.failed = [];
    page.on('console', (m) => this.console.push(m.text()));
    page.on('requestfailed', (r) => this.failed.push({ url: r.url(), error: r.failure()?.errorText }));
    page.on('response', (r) =>
      this.responses.push({ url: r.url(), status: r.status(), allowOrigin: r.headers()['access-control-allow-origin'] ?? null }),
    );
    page.on('request', (r) => {
      if (r.url().endsWith('/demo/token') || r.url().endsWith('/api/operator/token')) this.tokenRequests++;
    });
  }

  async open(url = this.env.url, sdk = true) {
    await this.page.goto(url);
    if (!sdk) return;
    await this.page.waitForFunction(() => (window.demo && window.demo.operator) || (window.app && window.app.loadError));
    const loadError = await this.page.evaluate(() => window.app && window.app.loadError);
    if (loadError) throw new Error(`${this.name}: the page could not load the SDK: ${loadError}`);
    // Record what the SDK emits, for assertions.
    await this.page.evaluate(() => {
      const ev = (window.__events = []);
      const op = window.demo.operator;
      const t = () => Math.round(performance.now());
      // A call's live-fork insights (the SDK's call.on('insight')).
      const watched = new WeakSet();
      const watch = (c) => {
        if (!c || typeof c.on !== 'function' || watched.has(c)) return;
        watched.add(c);
        c.on('insight', (i) => ev.push({ type: 'insight', callId: c.callId, kind: i && i.kind, text: i && i.text, t: t() }));
      };
      op.on('incomingCall', (c) => {
        watch(c);
        ev.push({ type: 'incomingCall', callId: c.callId, from: c.from, to: c.to, t: t() });
      });
      op.on('callStarted', (c) => {
        watch(c);
        ev.push({ type: 'callStarted', callId: c.callId, t: t() });
      });
      op.on('callEnded', (c) => ev.push({ type: 'callEnded', callId: c.callId, reason: c.endReason, code: c.endCode, t: t() }));
      op.on('error', (e) => ev.push({ type: 'error', code: e.code, message: e.message, callId: e.callId, t: t() }));
      op.on('presenceStateChanged', (s) => ev.push({ type: 'presence', state: s.state, previous: s.previous, t: t() }));
    });
  }

  shot(label) {
    return this.env.shot(this.page, `${this.name}-${label}`);
  }

  events() {
    return this.page.evaluate(() => window.__events);
  }

  /** Waits for a recorded SDK event matching `pred` (a function source run in the page). */
  async waitEvent(pred, { timeout = 10000, what = 'event' } = {}) {
    try {
      await this.page.waitForFunction((src) => window.__events.some(new Function('e', `return (${src})(e)`)), pred.toString(), { timeout });
    } catch (err) {
      throw new Error(`${this.name}: no ${what} within ${timeout} ms; events: ${JSON.stringify(await this.events().catch(() => null))}`);
    }
    return this.page.evaluate((src) => window.__events.find(new Function('e', `return (${src})(e)`)), pred.toString());
  }

  /** Types the name and clicks "Go online"; waits until online with numbers taken. */
  async goOnline() {
    await this.page.fill('#operator-name', this.name);
    await this.page.click('#go-online');
    await this.page.waitForSelector('#presence[data-state="online"]', { timeout: 10000 });
    await this.page.waitForSelector('#numbers li[data-status="accepted"]', { timeout: 10000 });
  }

  async callState() {
    return this.page.evaluate(() => {
      const c = window.demo.call;
      return c && { callId: c.callId, state: c.state, direction: c.direction, earlyMedia: c.earlyMedia, endReason: c.endReason };
    });
  }

  async waitCallState(state, timeout = 10000) {
    try {
      await this.page.waitForFunction((s) => window.demo.call && window.demo.call.state === s, state, { timeout });
    } catch {
      throw new Error(`${this.name}: call not ${state} within ${timeout} ms: ${JSON.stringify(await this.callState())}`);
    }
  }

  /**
   * Listens to the call's remote stream with an AnalyserNode until `need` consecutive
   * 100 ms readings have their peak (100-4000 Hz) within `tol` of `hz`. Returns
   * `{ok, freq, db, readings}`.
   */
  hear(hz, { timeout = 8000, need = 3, tol = 20, minDb = -70 } = {}) {
    return this.page.evaluate(
      async ({ hz, timeout, need, tol, minDb }) => {
        const stream = window.demo.call && window.demo.call.remoteStream;
        if (!stream) return { ok: false, error: 'no remote stream', readings: [] };
        const ctx = (window.__ac ||= new AudioContext());
        if (ctx.state !== 'running') await ctx.resume();
        const src = ctx.createMediaStreamSource(stream);
        const an = ctx.createAnalyser();
        an.fftSize = 8192;
        an.smoothingTimeConstant = 0;
        src.connect(an);
        const bins = new Float32Array(an.frequencyBinCount);
        const hzPerBin = ctx.sampleRate / an.fftSize;
        const readings = [];
        let run = 0;
        const t0 = performance.now();
        try {
          while (performance.now() - t0 < timeout) {
            await new Promise((r) => setTimeout(r, 100));
            an.getFloatFrequencyData(bins);
            let best = -1;
            for (let i = Math.ceil(100 / hzPerBin); i < Math.min(bins.length - 1, 4000 / hzPerBin); i++) {
              if (best < 0 || bins[i] > bins[best]) best = i;
            }
            // Parabolic interpolation around the peak bin.
            const [a, b, c] = [bins[best - 1], bins[best], bins[best + 1]];
            const p = a - 2 * b + c === 0 ? 0 : (0.5 * (a - c)) / (a - 2 * b + c);
            const freq = Math.round((best + p) * hzPerBin);
            const db = Math.round(b * 10) / 10;
            readings.push({ freq, db });
            run = Math.abs(freq - hz) <= tol && db > minDb ? run + 1 : 0;
            if (run >= need) return { ok: true, freq, db, readings };
          }
          const last = readings[readings.length - 1] || {};
          return { ok: false, freq: last.freq, db: last.db, readings };
        } finally {
          src.disconnect();
        }
      },
      { hz, timeout, need, tol, minDb },
    );
  }

  /**
   * Listens to the call's remote stream (an AnalyserNode as `hear` has, kept for the stream)
   * for several tones at once: each frequency's level is the loudest FFT bin within 10 Hz of
   * it. Waits until `need` consecutive 100 ms readings have every `present` frequency above
   * `minDb` and every `absent` one below `maxDb`. Returns `{ok, levels, readings}`, `levels`
   * the last reading (`{hz: dB}`). On this scale a tone at -12 dBFS (a carrier's) reads
   * about -26 dB; with three tones mixed, Opus's noise in the bins between them reads -50 to
   * -75 dB (so `maxDb` -45 means "not there"), and with nothing playing, about -145 dB.
   */
  tones({ present = [], absent = [], timeout = 8000, need = 3, minDb = -40, maxDb = -45 } = {}) {
    return this.page.evaluate(
      async ({ present, absent, timeout, need, minDb, maxDb }) => {
        const stream = window.demo.call && window.demo.call.remoteStream;
        if (!stream) return { ok: false, error: 'no remote stream', readings: [] };
        const ctx = (window.__ac ||= new AudioContext());
        if (ctx.state !== 'running') await ctx.resume();
        let t = window.__tones;
        if (!t || t.stream !== stream) {
          if (t) t.src.disconnect();
          const src = ctx.createMediaStreamSource(stream);
          const an = ctx.createAnalyser();
          an.fftSize = 8192;
          an.smoothingTimeConstant = 0;
          src.connect(an);
          t = window.__tones = { stream, src, an, bins: new Float32Array(an.frequencyBinCount) };
        }
        const hzPerBin = ctx.sampleRate / t.an.fftSize;
        const level = (hz) => {
          let best = -Infinity;
          for (let i = Math.floor((hz - 10) / hzPerBin); i <= Math.ceil((hz + 10) / hzPerBin); i++) best = Math.max(best, t.bins[i]);
          return Math.round(best * 10) / 10;
        };
        const readings = [];
        let run = 0;
        const t0 = performance.now();
        while (performance.now() - t0 < timeout) {
          await new Promise((r) => setTimeout(r, 100));
          t.an.getFloatFrequencyData(t.bins);
          const levels = {};
          for (const hz of [...present, ...absent]) levels[hz] = level(hz);
          readings.push(levels);
          const good = present.every((hz) => levels[hz] > minDb) && absent.every((hz) => !(levels[hz] >= maxDb));
          run = good ? run + 1 : 0;
          if (run >= need) return { ok: true, levels, readings };
        }
        return { ok: false, levels: readings[readings.length - 1], readings };
      },
      { present, absent, timeout, need, minDb, maxDb },
    );
  }

  async close() {
    await this.context.close().catch(() => {});
    this.log.end();
  }
}
