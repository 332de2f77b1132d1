// The one backend endpoint the operator SDK needs, in Node/Express: it asks the SBC for a
// short-lived session token with the API key, which stays here (an environment variable), and
// hands the browser only `{ token, expiresAt }`.
//
//   SBC_URL=https://sbc.example.com SBC_API_KEY=... PORT=3000 node server.mjs
//
// The request body is the operator SDK playbook's: `{ operatorRef, displayName, phoneNumberIds }`,
// forwarded to the SBC's `POST /v1/tokens`. In this sample whoever calls the endpoint names the
// operator: put it behind your own authentication and take the operator from the session
// (`identify`), never from the browser alone.

import express from 'express';
import { pathToFileURL } from 'node:url';

const REF = /^[A-Za-z0-9._@-]{1,64}$/;

/** Sample only: the operator the request asks for. Replace with your session's user. */
export function identifyFromBody(req) {
  const { operatorRef, displayName, phoneNumberIds } = req.body ?? {};
  return { operatorRef, displayName, phoneNumberIds };
}

export function createApp({ sbcUrl = process.env.SBC_URL, apiKey = process.env.SBC_API_KEY, identify = identifyFromBody } = {}) {
  if (!sbcUrl || !apiKey) throw new Error('set SBC_URL and SBC_API_KEY');
  const app = express();
  app.use(express.json());
  app.post('/api/operator/token', async (req, res) => {
    const who = await identify(req);
    if (!who || typeof who.operatorRef !== 'string' || !REF.test(who.operatorRef)) {
      return res.status(400).json({ error: { code: 'BAD_REQUEST', message: 'operatorRef: 1-64 of A-Z a-z 0-9 . _ @ -' } });
    }
    let r;
    try {
      r = await fetch(new URL('/v1/tokens', sbcUrl), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-API-Key': apiKey },
        body: JSON.stringify({ operatorRef: who.operatorRef, displayName: who.displayName, phoneNumberIds: who.phoneNumberIds }),
      });
    } catch (err) {
      return res.status(502).json({ error: { code: 'SBC_UNREACHABLE', message: err.message } });
    }
    const body = await r.json().catch(() => null);
    if (!r.ok || typeof body?.token !== 'string') {
      return res.status(502).json({ error: { code: 'TOKEN_REFUSED', message: body?.error?.message ?? `the SBC answered HTTP ${r.status}`, sbcStatus: r.status } });
    }
    res.json({ token: body.token, expiresAt: body.expiresAt });
  });
  return app;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const port = Number(process.env.PORT ?? 3000);
  createApp().listen(port, () => console.log(`token endpoint on http://localhost:${port}/api/operator/token`));
}
