// Spike 3: within one page ("one call"), a peer connection is replaced by a
// new one (as the SDK's `resume` would after a node died): how long until the
// new one carries audio? Two in-page peers stand for browser and node; the
// "node" side is renewed each round. Loopback, headless Chromium.
import { chromium } from '/work/main/tests/e2e/node_modules/playwright-core/index.mjs';
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', '--no-sandbox'] });
const page = await browser.newPage();
await page.setContent('<html><body>spike</body></html>');
const results = await page.evaluate(async () => {
  const ctx = new AudioContext();
  const osc = ctx.createOscillator(); osc.frequency.value = 440;
  const dst = ctx.createMediaStreamDestination(); osc.connect(dst); osc.start();
  const track = dst.stream.getAudioTracks()[0];   // the browser's microphone, kept across
  const out = [];
  let browserPc = null;
  for (let round = 0; round < 6; round++) {
    const t0 = performance.now();
    if (browserPc) browserPc.close();              // the old leg is gone (its node died)
    const a = new RTCPeerConnection(); const b = new RTCPeerConnection();
    browserPc = a;
    a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
    b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
    a.addTrack(track);
    b.addTransceiver('audio', { direction: 'recvonly' });
    const offer = await a.createOffer(); await a.setLocalDescription(offer);
    await b.setRemoteDescription(offer);
    const answer = await b.createAnswer(); await b.setLocalDescription(answer);
    await a.setRemoteDescription(answer);
    let firstAudio = null;
    while (performance.now() - t0 < 5000) {
      const stats = await b.getStats();
      let got = 0;
      stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') got = s.packetsReceived; });
      if (got > 0) { firstAudio = performance.now() - t0; break; }
      await new Promise((r) => setTimeout(r, 5));
    }
    out.push(Math.round(firstAudio ?? -1));
    b.close();
  }
  return out;
});
console.log('ms from a new peer connection to its first audio packet, per round:', results.join(', '));
await browser.close();
