// The sample token endpoints (examples/token-express, examples/token-fastapi) against a tiny
// fake SBC token endpoint on loopback, and the token they hand out used by the SDK.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { spawnSync } from 'node:child_process';
import { ensureDevDeps, webDir } from './devdeps.mjs';
import { makeEnv, makeOperator, flush } from './fakes.mjs';

const KEY = 'test-api-key';
const deps = ensureDevDeps();

/** A fake SBC: POST /v1/tokens checks X-API-Key and answers a token named after the operator. */
function fakeSbc() {
  const seen = [];
  const server = createServer((req, res) => {
    let data = '';
    req.on('data', (c) => (data += c));
    req.on('end', () => {
      const body = JSON.parse(data || '{}');
      seen.push({ method: req.method, path: req.url, key: req.headers['x-api-key'], body });
      const ok = req.headers['x-api-key'] === KEY;
      res.writeHead(ok ? 200 : 401, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(ok ? { token: `jwt-for-${body.operatorRef}`, expiresAt: '2030-01-01T00:00:00Z' } : { error: { code: 'UNAUTHORIZED', message: 'bad key' } }));
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, seen, url: `http://127.0.0.1:${server.address().port}` })));
}

function listen(app) {
  return new Promise((resolve) => {
    const server = app.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${server.address().port}` }));
  });
}

const post = (url, body) => fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });

describe('Node/Express token endpoint', { skip: deps.ok ? false : deps.reason }, () => {
  let sbc;
  let good;
  let bad;
  before(async () => {
    const { createApp } = await import('../examples/token-express/server.mjs');
    sbc = await fakeSbc();
    good = await listen(createApp({ sbcUrl: sbc.url, apiKey: KEY }));
    bad = await listen(createApp({ sbcUrl: sbc.url, apiKey: 'wrong-key' }));
  });
  after(() => {
    for (const s of [sbc, good, bad]) s?.server.close();
  });

  test('forwards the playbook body with the key and answers only { token, expiresAt }', async () => {
    sbc.seen.length = 0;
    const r = await post(`${good.url}/api/operator/token`, { operatorRef: 'alice', displayName: 'Alice', phoneNumberIds: ['support'] });
    assert.equal(r.status, 200);
    const text = await r.text();
    assert.deepEqual(JSON.parse(text), { token: 'jwt-for-alice', expiresAt: '2030-01-01T00:00:00Z' });
    assert.ok(!text.includes(KEY));
    assert.deepEqual(sbc.seen, [{ method: 'POST', path: '/v1/tokens', key: KEY, body: { operatorRef: 'alice', displayName: 'Alice', phoneNumberIds: ['support'] } }]);
  });

  test('a bad operatorRef never reaches the SBC; a refused key is a 502 without the key', async () => {
    sbc.seen.length = 0;
    assert.equal((await post(`${good.url}/api/operator/token`, { operatorRef: 'no spaces!' })).status, 400);
    assert.equal((await post(`${good.url}/api/operator/token`, {})).status, 400);
    assert.equal(sbc.seen.length, 0);
    const r = await post(`${bad.url}/api/operator/token`, { operatorRef: 'alice' });
    assert.equal(r.status, 502);
    const text = await r.text();
    assert.deepEqual(JSON.parse(text).error, { code: 'TOKEN_REFUSED', message: 'bad key', sbcStatus: 401 });
    assert.ok(!text.includes('wrong-key'));
  });

  test('an SBC that cannot be reached is a 502', async () => {
    const { createApp } = await import('../examples/token-express/server.mjs');
    const down = await listen(createApp({ sbcUrl: 'http://127.0.0.1:9', apiKey: KEY }));
    try {
      const r = await post(`${down.url}/api/operator/token`, { operatorRef: 'alice' });
      assert.equal(r.status, 502);
      assert.equal((await r.json()).error.code, 'SBC_UNREACHABLE');
    } finally {
      down.server.close();
    }
  });

  test("the SDK's getToken takes the endpoint's answer as it is", async () => {
    const env = makeEnv();
    let fetched;
    const gotToken = new Promise((resolve) => (fetched = resolve));
    const { op } = makeOperator(env, {
      getToken: async () => {
        const answer = await (await post(`${good.url}/api/operator/token`, { operatorRef: 'alice', displayName: 'Alice' })).json();
        fetched();
        return answer;
      },
    });
    const online = op.goOnline(['support']);
    await gotToken; // real HTTP
    await flush();
    const ws = env.sockets[0];
    ws.open();
    assert.deepEqual(ws.sent[0], { type: 'hello', token: 'jwt-for-alice', protocol: 1 });
    assert.equal(op.tokenExpiresAt, '2030-01-01T00:00:00Z');
    ws.serverClose(4001);
    await assert.rejects(online, { code: 'UNAUTHORIZED' });
  });
});

const python = spawnSync('python3', ['-c', 'import fastapi, httpx'], { encoding: 'utf8' });
const pythonSkip = python.status === 0 ? false : 'python3 with fastapi and httpx is needed (pip install -r sbc/web/examples/token-fastapi/requirements.txt)';

describe('Python/FastAPI token endpoint', { skip: pythonSkip }, () => {
  test('its unit tests pass against a fake SBC', () => {
    const r = spawnSync('python3', ['-m', 'unittest', '-v'], { cwd: `${webDir}examples/token-fastapi`, encoding: 'utf8', timeout: 120000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /Ran 5 tests/);
    assert.match(r.stderr, /\nOK\n/);
  });
});
