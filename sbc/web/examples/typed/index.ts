// Uses the whole public API of @sbc/operator-sdk under `tsc --strict` (sbc/web/test/package.test.mjs
// runs it): a type error here means operator.d.ts, compat.d.ts or the API changed.

import Operator, {
  Operator as NamedOperator,
  Call,
  MonitorCall,
  OperatorError,
  PROTOCOL_VERSION,
  VERSION,
  estimateMos,
  type Availability,
  type AudioDevices,
  type CallInfo,
  type EndedEvent,
  type ErrorCode,
  type OperatorOptions,
  type Participant,
  type PreflightReport,
  type QualitySample,
  type QualitySummary,
  type QualityWarning,
  type RecordingInfo,
  type Insight,
} from '@sbc/operator-sdk';
import { AudinOperator, CompatOperator, OperatorCall, operatorUrl, type OperatorPhoneNumber } from '@sbc/operator-sdk/compat';

const protocol: 1 = PROTOCOL_VERSION;
const version: string = VERSION;
const same: typeof Operator = NamedOperator;

async function ownApi(audio: HTMLAudioElement): Promise<void> {
  const options: OperatorOptions = {
    url: 'wss://sbc.example.com/v1/operator',
    getToken: async () => ({ token: 'eyJ...', expiresAt: '2030-01-01T00:00:00Z' }),
    heartbeatIntervalMs: 15000,
    missedHeartbeats: 2,
    reconnectBackoffMs: [500, 1000],
    reconnectJitter: 0.2,
    audioConstraints: { echoCancellation: true },
    rtcConfiguration: { bundlePolicy: 'max-bundle' },
    iceGatheringTimeoutMs: 1000,
    connectTimeoutMs: 10000,
    keepCallOnReload: false,
    hangupTimeoutMs: 2000,
    mediaTimeoutMs: 10000,
    statsIntervalMs: 1000,
    levelIntervalMs: 100,
    qualityThresholds: { rtt: 400, jitter: 30, packetLoss: 1, mos: 3.5, window: 5, count: 3, constantInputSamples: 10 },
    sendQualityReport: true,
    audioElement: audio,
    ringtone: true,
    logger: console,
  };
  if (!Operator.isSupported()) return;
  const op = new Operator(options);
  const off = op.on('presenceStateChanged', ({ state, previous }) => console.log(previous, '->', state));
  off();
  op.once('availabilityChanged', (av: Availability) => console.log(av.accepted, av.rejected.map((r) => `${r.id}:${r.code}`)));
  op.on('incomingCall', (call) => {
    console.log(call.from, call.to, call.number, call.callerName, call.invitedBy);
    void call.accept().catch((err: OperatorError) => console.log(err.code));
  });
  op.on('callStarted', (call) => watch(call));
  op.on('callEnded', (call) => console.log(call.endReason, call.endCode, call.endMessage, call.qualitySummary?.mosAvg));
  op.on('currentCallChanged', (call) => console.log(call?.callId));
  op.on('devicesChanged', ({ inputs, outputs }: AudioDevices) => console.log(inputs.length, outputs.length));
  op.on('inputDeviceChanged', ({ deviceId, reason }) => console.log(deviceId, reason));
  op.on('outputDeviceChanged', ({ deviceId, reason }) => console.log(deviceId, reason));
  op.on('error', ({ code, message, callId }) => {
    const known: ErrorCode | string = code;
    console.log(known, message, callId);
  });

  const numbers = await op.listNumbers();
  const av = await op.goOnline(numbers.map((n) => n.id));
  console.log(av.accepted, op.state, op.availability, op.numbers, op.sessionId, op.operatorInfo?.ref, op.tokenExpiresAt, op.url);
  const devices = await op.listDevices();
  await op.setInputDevice(devices.inputs[0]?.deviceId ?? null);
  await op.setOutputDevice('default');
  console.log(op.inputDeviceId, op.outputDeviceId);

  const call: Call = await op.dial('+15550123', { callerId: 'support' });
  call.mute(true);
  call.hold(false);
  call.sendDtmf('12#');
  if (call.can('add_participant')) {
    const p: Participant = await call.addParticipant('operator:bob', { timeout: 20 });
    const held = await call.holdParticipant(p.id, true);
    console.log(held?.held);
    await call.removeParticipant(p.id);
  }
  if (call.can('record')) {
    const rec: RecordingInfo = await call.startRecording({ channels: 'dual' });
    await call.pauseRecording({ behavior: 'skip' });
    await call.resumeRecording();
    const stopped = await call.stopRecording();
    console.log(rec.id, rec.status === 'in-progress', stopped.status, call.recording?.status, call.insights.length);
  }
  console.log(call.participants, call.self, call.selfParticipant, call.capabilities, call.peerConnection, call.localStream, call.remoteStream);
  console.log(call.getQualitySummary(), call.quality, call.warnings, call.reconnecting, call.earlyMedia, call.held, call.remoteHeld);
  console.log(call.connectedAt, call.endedAt, call.direction, call.state, call.muted, op.currentCall === call, op.calls.length);
  await call.leave();
  await call.end();
  call.hangup();
  call.reject();

  const calls: CallInfo[] = await op.listCalls();
  const first = calls[0];
  if (first) {
    const mon: MonitorCall = await op.monitor(first.callId, { mode: 'listen' });
    await mon.setMode('whisper', { participantId: first.participants[0]?.id });
    console.log(mon.mode, mon.whisperTo, mon.direction);
    mon.on('modeChanged', ({ mode }) => console.log(mode));
    mon.hangup();
  }
  await op.goOffline();
  await op.dispose();

  const report: PreflightReport = await Operator.preflight({ url: options.url, getToken: options.getToken, target: '+15550001', durationMs: 5000, onSample: (s) => console.log(s.mos) });
  console.log(report.ok, report.connectivity.signalling, report.connectivity.media, report.rtt, report.jitter, report.packetLoss, report.mos, report.samples, report.summary, report.error?.code);
  console.log(estimateMos({ rtt: 100, jitter: 20, packetLoss: 1 }));
  const err = new OperatorError('BUSY', 'busy');
  console.log(err.code, err.callId, err instanceof Error);
}

function watch(call: Call): void {
  call.on('accepted', () => console.log('accepted'));
  call.on('ringing', ({ earlyMedia }) => console.log(earlyMedia));
  call.on('connected', () => console.log('connected'));
  call.on('updated', ({ muted, held, remoteHeld }) => console.log(muted, held, remoteHeld));
  call.on('muted', ({ muted }) => console.log(muted));
  call.on('dtmf', ({ digit }) => console.log(digit));
  call.on('remoteStream', (stream: MediaStream) => console.log(stream.id));
  call.on('reconnecting', ({ reason }) => console.log(reason));
  call.on('reconnected', () => console.log('reconnected'));
  call.on('sample', (s: QualitySample) => console.log(s.rtt, s.jitter, s.packetLoss, s.mos, s.audioInputLevel));
  call.on('warning', (w: QualityWarning) => console.log(w.name, w.value, w.threshold));
  call.on('warningCleared', ({ name }) => console.log(name));
  call.on('audioLevel', ({ input, output }) => console.log(input, output));
  call.on('participantJoined', (p) => console.log(p.role, p.state, p.kind, p.address, p.displayName, p.operatorRef, p.monitor, p.joinedAt));
  call.on('participantUpdated', (p) => console.log(p.muted, p.held));
  call.on('participantLeft', ({ participantId, participant, reason }) => console.log(participantId, participant?.role, reason));
  call.on('participantsChanged', (list) => console.log(list.length));
  call.on('capabilitiesChanged', (caps) => console.log(caps));
  call.on('recording', ({ id, status }) => console.log(id, status));
  call.on('insight', (insight: Insight, { forkId, at }) => console.log(insight.kind, insight.text, insight.track, forkId, at));
  call.on('ended', ({ reason, code, message, quality }: EndedEvent) => {
    const q: QualitySummary | null = quality;
    console.log(reason, code, message, q?.samples, q?.rttAvgMs, q?.rttMaxMs, q?.jitterAvgMs, q?.jitterMaxMs, q?.packetLossPct, q?.packetsReceived, q?.packetsLost, q?.mosAvg, q?.mosMin, q?.warnings, q?.durationMs);
  });
}

async function playbookApi(): Promise<void> {
  const op = new AudinOperator({
    coreUrl: 'https://sbc.example.com',
    getToken: async () => ({ token: 'eyJ...', expiresAt: '2030-01-01T00:00:00Z' }),
    heartbeatIntervalMs: 25000,
    reconnectBackoffMs: [1000, 2000, 5000, 10000, 30000],
    audioConstraints: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    logger: console,
  });
  op.on('presenceStateChanged', (s) => console.log(s === 'online'));
  op.on('availabilityChanged', ({ accepted, rejected }) => console.log(accepted, rejected.join(',')));
  op.on('incomingCall', (call) => (call.from ? call.accept() : call.reject()));
  op.on('callStarted', (call: OperatorCall) => console.log(call.callSid, call.state === 'active'));
  op.on('callEnded', (call) => console.log(call.endReason));
  op.on('error', (e) => console.error(e.code, e.message, e.cause));
  const numbers: OperatorPhoneNumber[] = await op.listPhoneNumbers();
  const mine = numbers[0];
  if (!mine) return;
  await op.goOnline([mine.id]);
  const call = await op.dial('+39021234567', { callerId: mine.phoneNumber });
  call.mute(true);
  call.sendDtmf('5');
  call.hangup();
  console.log(op.state, op.currentCall?.callSid, call.direction, call.to, call.muted, call.native.callId, op.native.state);
  await op.goOffline();
  const c: CompatOperator = op;
  console.log(c, operatorUrl('https://sbc.example.com'));
}

export { ownApi, playbookApi, protocol, version, same };
