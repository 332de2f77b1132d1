// Types of operator.js (the SDK served at /sdk/operator.js and published as @sbc/operator-sdk).
// Reference: sbc/docs/sdk.md. Protocol: sbc/docs/protocol.md.

/** The wire protocol this client speaks. */
export declare const PROTOCOL_VERSION: 1;
/** The SDK version; its major is the protocol version. */
export declare const VERSION: string;

export type PresenceState = 'offline' | 'connecting' | 'online' | 'reconnecting';
export type CallState = 'ringing' | 'connecting' | 'connected' | 'ended';
export type CallDirection = 'inbound' | 'outbound' | 'monitor';
export type EndReason =
  | 'hangup'
  | 'remote_hangup'
  | 'taken_by_other'
  | 'rejected'
  | 'no_answer'
  | 'busy'
  | 'failed'
  | 'offline'
  | 'removed'
  | 'transferred'
  | 'media_failed';

/** Stable error codes: the server's, then the client's own. */
export type ErrorCode =
  | 'UNAUTHORIZED'
  | 'FORBIDDEN_NUMBER'
  | 'FORBIDDEN'
  | 'BUSY'
  | 'TARGET_BUSY'
  | 'NO_ANSWER'
  | 'TARGET_FAILED'
  | 'TRANSFER_CANCELLED'
  | 'BAD_REQUEST'
  | 'RATE_LIMITED'
  | 'INTERNAL'
  | 'MIC_PERMISSION_DENIED'
  | 'MIC_UNAVAILABLE'
  | 'WS_ERROR'
  | 'REPLACED'
  | 'PROTOCOL_ERROR'
  | 'MEDIA_ERROR'
  | 'HTTP_ERROR'
  | 'DEVICE_ERROR'
  | 'NOT_SUPPORTED'
  | 'CALL_ENDED';

export type Capability = 'add_participant' | 'remove_participant' | 'hold_participant' | 'end_call' | 'switch_monitor' | 'record';
export type MonitorMode = 'listen' | 'whisper' | 'barge';
export type ParticipantRole = 'customer' | 'agent' | 'supervisor' | 'phone' | 'ai';
export type ParticipantState = 'ringing' | 'joined' | 'held' | 'left';
export type ParticipantKind = 'sip' | 'operator' | 'agent' | 'echo' | 'tone';
export type ParticipantLeftReason = 'hangup' | 'removed' | 'busy' | 'no_answer' | 'failed' | 'rejected' | 'canceled';
export type RecordingStatus = 'in-progress' | 'paused' | 'stopped';
/** A paused recording keeps the pause as silence (its time) or cuts it out. */
export type RecordingPauseBehavior = 'silence' | 'skip';
/** `dual`: the customer in one channel, the others in the other; `mono`: one mix. */
export type RecordingChannels = 'dual' | 'mono';
export type QualityWarningName = 'high-rtt' | 'high-jitter' | 'high-packet-loss' | 'low-mos' | 'constant-audio-input-level';

/** An error with a stable `code`; `callId` (and `participantId`) when about a call. */
export declare class OperatorError extends Error {
  constructor(code: ErrorCode | string, message?: string, extra?: Record<string, unknown>);
  readonly name: 'OperatorError';
  code: ErrorCode | string;
  callId?: string;
  participantId?: string;
  /** CALL_ENDED: the call's end reason. */
  reason?: EndReason | string;
  /** HTTP failures: the status. */
  status?: number;
  cause?: unknown;
}

/** What getToken resolves with: the token, or the operator SDK 0.3.0 shape. */
export type TokenResult = string | { token: string; expiresAt?: string };

export interface Logger {
  debug?(...args: unknown[]): void;
  info?(...args: unknown[]): void;
  warn?(...args: unknown[]): void;
  error?(...args: unknown[]): void;
}

export interface QualityThresholds {
  /** ms: `high-rtt` above (400) */
  rtt?: number;
  /** ms: `high-jitter` above (30) */
  jitter?: number;
  /** % of a sample's packets lost: `high-packet-loss` above (1) */
  packetLoss?: number;
  /** `low-mos` below (3.5) */
  mos?: number;
  /** samples looked at (5) */
  window?: number;
  /** of which at least this many must cross (3) */
  count?: number;
  /** samples of constant input level for `constant-audio-input-level` (10) */
  constantInputSamples?: number;
}

/** The browser objects the SDK uses, injectable (tests, other runtimes). */
export interface OperatorEnvironment {
  WebSocket?: unknown;
  RTCPeerConnection?: unknown;
  MediaStream?: unknown;
  mediaDevices?: unknown;
  fetch?: (url: string, init?: unknown) => Promise<unknown>;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: unknown) => void;
  random?: () => number;
  now?: () => number;
  AudioContext?: unknown;
  Audio?: unknown;
  window?: unknown;
}

export interface OperatorOptions extends OperatorEnvironment {
  /** ws(s) URL of the SBC's `/v1/operator`. */
  url: string;
  /** Called on every connect and reconnect (and for listNumbers): ask your backend. */
  getToken: () => TokenResult | Promise<TokenResult>;
  /** Ping interval; default the server's `ready` value. */
  heartbeatIntervalMs?: number;
  /** Silent intervals before the socket counts as dead (2). */
  missedHeartbeats?: number;
  /** Delays before each reconnect attempt; the last repeats ([500, 1000, 2000, 5000, 10000]). */
  reconnectBackoffMs?: number[];
  /** Random extra fraction of each delay (0.2). */
  reconnectJitter?: number;
  /** For getUserMedia (true). */
  audioConstraints?: boolean | MediaTrackConstraints;
  rtcConfiguration?: RTCConfiguration;
  /** Wait at most this for ICE gathering (1000). */
  iceGatheringTimeoutMs?: number;
  /** Socket open + `ready` deadline (10000). */
  connectTimeoutMs?: number;
  /** Page hide/close leaves the call to the server's grace period instead of hanging up (false). */
  keepCallOnReload?: boolean;
  /** goOffline waits this long for the hangup's `ended` (2000). */
  hangupTimeoutMs?: number;
  /** A lost media path not back within this ends the call `media_failed` (10000). */
  mediaTimeoutMs?: number;
  /** Quality sample period; 0 turns sampling off (1000). */
  statsIntervalMs?: number;
  /** Audio level period; 0 turns the meters off (100). */
  levelIntervalMs?: number;
  qualityThresholds?: QualityThresholds;
  /** Send the call's quality summary to the server when it ends (true). */
  sendQualityReport?: boolean;
  /** The SDK plays the active call's audio there; setOutputDevice routes it. */
  audioElement?: HTMLMediaElement | null;
  /** Ring while an incoming call waits: true = built-in tone, or a sound URL (false). */
  ringtone?: boolean | string;
  logger?: Logger;
}

export interface NumberInfo {
  id: string;
  e164: string;
  name?: string;
}

export interface Availability {
  accepted: string[];
  rejected: { id: string; code: ErrorCode | string }[];
}

export interface OperatorInfo {
  ref: string;
  displayName?: string;
}

export interface AudioDevice {
  deviceId: string;
  label: string;
  groupId: string;
  kind: 'audioinput' | 'audiooutput';
}

export interface AudioDevices {
  inputs: AudioDevice[];
  outputs: AudioDevice[];
}

export interface DeviceChangedEvent {
  /** null: the default device */
  deviceId: string | null;
  /** `selected` by the app, or `unplugged` (the SDK fell back to the default) */
  reason: 'selected' | 'unplugged';
}

export interface ErrorEvent {
  code: ErrorCode | string;
  message: string;
  callId?: string;
}

export interface PresenceChange {
  state: PresenceState;
  previous: PresenceState;
}

export interface Participant {
  /** Stable within the call. */
  id: string;
  role: ParticipantRole | null;
  state: ParticipantState | null;
  kind: ParticipantKind | null;
  /** Operators only. */
  operatorRef: string | null;
  displayName: string | null;
  /** SIP/PSTN parties: the number or sip: URI; agents: the stream: URL. */
  address: string | null;
  muted: boolean;
  /** Held by someone in the call (hears nothing, nobody hears it). */
  held: boolean;
  /** Supervisors only. */
  monitor: MonitorMode | null;
  /** Unix ms, when joined. */
  joinedAt: number | null;
}

export interface CallInfo {
  callId: string;
  number: string | null;
  from: string | null;
  to: string | null;
  direction: 'inbound' | 'outbound' | string | null;
  startedAt: number | null;
  participants: Participant[];
  /** Its recording, or null. */
  recording: RecordingInfo | null;
  /** The ids of its live media forks. */
  forks: string[];
}

/** One quality sample (about every second while the call is connected). Times in ms. */
export interface QualitySample {
  timestamp: number;
  rtt: number | null;
  jitter: number | null;
  /** % of the packets of this sample's interval lost */
  packetLoss: number | null;
  /** E-model estimate, 1 to 4.5 */
  mos: number | null;
  packetsReceived: number | null;
  packetsLost: number | null;
  bytesReceived: number | null;
  bytesSent: number | null;
  /** 0 to 1 */
  audioInputLevel: number | null;
  /** 0 to 1 */
  audioOutputLevel: number | null;
}

/** A call's quality, in `ended` and sent to the server as `quality{callId, summary}`. */
export interface QualitySummary {
  samples: number;
  durationMs: number;
  rttAvgMs: number | null;
  rttMaxMs: number | null;
  jitterAvgMs: number | null;
  jitterMaxMs: number | null;
  packetsReceived: number;
  packetsLost: number;
  packetLossPct: number | null;
  mosAvg: number | null;
  mosMin: number | null;
  /** Every warning raised during the call. */
  warnings: QualityWarningName[];
}

export interface QualityWarning {
  name: QualityWarningName;
  value: number | null;
  threshold: number;
}

export interface EndedEvent {
  reason: EndReason | string;
  /** SIP status when one explains it */
  code: number | null;
  message: string | null;
  /** null when the call never sampled (not connected, or statsIntervalMs 0) */
  quality: QualitySummary | null;
}

/** How a transfer this operator started goes (`transfer` event, `call.transferState`). */
export interface TransferInfo {
  state: 'ringing' | 'consulting' | 'completed' | 'merged' | 'cancelled' | 'failed';
  /** The target as asked. */
  target: string | null;
  /** The target's participant id, once it rings. */
  participantId: string | null;
  /** Why it failed: busy, no_answer, rejected, failed, target_left, transferee_left. */
  reason: string | null;
  /** A SIP status that explains it. */
  code: number | null;
}

/** An attended transfer whose target answered: the others wait on hold meanwhile. */
export interface AttendedTransfer {
  readonly participantId: string | null;
  /** The others and the target talk; you leave (the call ends with `transferred`). */
  complete(): Promise<void>;
  /** Everyone together; you stay. */
  merge(): Promise<void>;
  /** The target goes; the others come back. */
  cancel(): Promise<void>;
}

/** The call's recording (`call.recording`, the `recording` event, what the recording methods resolve with). */
export interface RecordingInfo {
  /** `rec-...` */
  id: string;
  /** `stopped` only in the event and in what `stopRecording()` resolves with: `call.recording` is then null. */
  status: RecordingStatus;
}

/**
 * What a live media fork's consumer (a transcriber, a coaching engine) sent about the call:
 * its JSON object as sent. The fields below are the usual ones, none is guaranteed.
 */
export interface Insight {
  event?: string;
  kind?: 'transcript' | 'hint' | string;
  text?: string;
  /** Whose audio: `inbound` (the customer), `outbound` (the call's other side). */
  track?: 'inbound' | 'outbound' | string;
  [key: string]: unknown;
}

/** Where an insight came from: the fork (`rec-...`) and when the server got it (Unix ms). */
export interface InsightSource {
  forkId: string | null;
  at: number | null;
}

export interface ParticipantLeftEvent {
  participantId: string;
  /** The last known state of the participant, if it was known. */
  participant: Participant | null;
  reason: ParticipantLeftReason | string | null;
}

export interface CallEvents {
  accepted: void;
  ringing: { earlyMedia: boolean };
  connected: void;
  updated: { muted: boolean; held: boolean; remoteHeld: boolean };
  muted: { muted: boolean };
  dtmf: { digit: string };
  remoteStream: MediaStream;
  reconnecting: { reason: 'disconnected' | 'failed' };
  reconnected: void;
  sample: QualitySample;
  warning: QualityWarning;
  warningCleared: { name: QualityWarningName };
  audioLevel: { input: number; output: number };
  participantJoined: Participant;
  participantUpdated: Participant;
  participantLeft: ParticipantLeftEvent;
  participantsChanged: Participant[];
  capabilitiesChanged: string[];
  modeChanged: { mode: MonitorMode };
  transfer: TransferInfo;
  recording: RecordingInfo;
  insight: EventArgs<[insight: Insight, source: InsightSource]>;
  ended: EndedEvent;
}

export interface OperatorEvents {
  presenceStateChanged: PresenceChange;
  availabilityChanged: Availability;
  incomingCall: Call;
  callStarted: Call;
  callEnded: Call;
  currentCallChanged: Call | null;
  devicesChanged: AudioDevices;
  inputDeviceChanged: DeviceChangedEvent;
  outputDeviceChanged: DeviceChangedEvent;
  error: ErrorEvent;
}

/** An event whose listeners get several arguments (`insight`). */
interface EventArgs<A extends unknown[]> {
  readonly __eventArgs: A;
}

type Listener<T> = [T] extends [void] ? () => void : [T] extends [EventArgs<infer A>] ? (...args: A) => void : (payload: T) => void;

/** on/off/once; `on` and `once` return an unsubscribe function. */
declare class Emitter<Events> {
  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void;
  off<K extends keyof Events>(event: K, listener: Listener<Events[K]>): void;
  once<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void;
}

export declare class Call extends Emitter<CallEvents> {
  /** Server call id; null only while a dial waits for its answer. */
  callId: string | null;
  readonly direction: CallDirection;
  readonly from: string | null;
  readonly to: string | null;
  /** Number id an inbound call came in on. */
  readonly number: string | null;
  readonly callerName: string | null;
  /** operatorRef of who added us to a live call. */
  readonly invitedBy: string | null;
  /** `invitedBy` transfers this call to us (blind or attended), else null. */
  readonly transferredBy: 'blind' | 'attended' | null;
  /** The last state of a transfer we started, else null. */
  readonly transferState: TransferInfo | null;
  readonly state: CallState;
  readonly endReason: EndReason | string | null;
  readonly endCode: number | null;
  readonly endMessage: string | null;
  readonly muted: boolean;
  readonly held: boolean;
  readonly remoteHeld: boolean;
  readonly earlyMedia: boolean;
  /** The media path is being recovered. */
  readonly reconnecting: boolean;
  readonly remoteStream: MediaStream | null;
  readonly localStream: MediaStream | null;
  /** ms (the operator's clock) */
  readonly connectedAt: number | null;
  readonly endedAt: number | null;
  readonly participants: Participant[];
  /** My participant id. */
  readonly self: string | null;
  readonly capabilities: string[];
  /** The call's recording; null when none, or once stopped. */
  readonly recording: RecordingInfo | null;
  /** The last 50 insights of the call's live media forks, oldest first. */
  readonly insights: Insight[];
  readonly quality: QualitySample | null;
  /** Warnings raised and not cleared. */
  readonly warnings: QualityWarningName[];
  /** Set when the call ends. */
  readonly qualitySummary: QualitySummary | null;
  readonly peerConnection: RTCPeerConnection | null;
  readonly selfParticipant: Participant | null;

  can(action: Capability | string): boolean;
  accept(): Promise<Call>;
  reject(): void;
  mute(on?: boolean): void;
  hold(on?: boolean): void;
  sendDtmf(digits: string): void;
  hangup(): void;
  leave(): Promise<void>;
  end(): Promise<void>;
  addParticipant(target: string, options?: { timeout?: number }): Promise<Participant>;
  /**
   * Blind: resolves once handed over. `fallback`: a target rung when the first does
   * not answer, is busy or fails, before you are recalled. `onHangup`: what your
   * hanging up mid-transfer does (default `'complete'`).
   */
  transfer(
    target: string,
    options?: { attended?: false; timeout?: number; onHangup?: 'complete' | 'cancel'; fallback?: string },
  ): Promise<void>;
  /** Attended: resolves once the target answered. */
  transfer(
    target: string,
    options: { attended: true; timeout?: number; onHangup?: 'complete' | 'cancel' },
  ): Promise<AttendedTransfer>;
  cancelTransfer(): Promise<void>;
  removeParticipant(participantId: string): Promise<void>;
  holdParticipant(participantId: string, on?: boolean): Promise<Participant | null>;
  /** Needs `record`; resolves once the server records (`{id, status: 'in-progress'}`). */
  startRecording(options?: { channels?: RecordingChannels }): Promise<RecordingInfo>;
  /** `behavior`: `silence` (default) or `skip`; resolves with `{id, status: 'paused'}`. */
  pauseRecording(options?: { behavior?: RecordingPauseBehavior }): Promise<RecordingInfo>;
  resumeRecording(): Promise<RecordingInfo>;
  /** Resolves with `{id, status: 'stopped'}`; the call goes on. */
  stopRecording(): Promise<RecordingInfo>;
  getQualitySummary(): QualitySummary | null;
}

export declare class MonitorCall extends Call {
  readonly direction: 'monitor';
  readonly mode: MonitorMode;
  /** The participant whispered to; null: the call's agents. */
  readonly whisperTo: string | null;
  setMode(mode: MonitorMode, options?: { participantId?: string }): Promise<void>;
}

export interface PreflightOptions extends Partial<OperatorOptions> {
  url: string;
  getToken: OperatorOptions['getToken'];
  /** What to dial (`+15550001`, the demo's echo). */
  target?: string;
  /** Caller ID; default the token's first number. */
  callerId?: string;
  /** How long to measure (10000). */
  durationMs?: number;
  onSample?: (sample: QualitySample) => void;
}

export interface PreflightReport {
  ok: boolean;
  target: string;
  connectivity: { signalling: boolean; media: boolean };
  samples: number;
  rtt: number | null;
  jitter: number | null;
  packetLoss: number | null;
  mos: number | null;
  summary: QualitySummary | null;
  error: { code: ErrorCode | string; message: string } | null;
}

export interface SupportEnvironment {
  WebSocket?: unknown;
  RTCPeerConnection?: unknown;
  navigator?: { mediaDevices?: unknown };
  mediaDevices?: unknown;
  isSecureContext?: boolean;
}

export declare class Operator extends Emitter<OperatorEvents> {
  constructor(options: OperatorOptions);
  static isSupported(env?: SupportEnvironment): boolean;
  static preflight(options: PreflightOptions): Promise<PreflightReport>;

  readonly url: string;
  readonly state: PresenceState;
  /** The active call (accepted, dialed or monitored, with a callId), or null. */
  readonly currentCall: Call | null;
  /** Every call known and not ended, ringing offers included. */
  readonly calls: Call[];
  readonly availability: Availability;
  /** Numbers of the last `ready`. */
  readonly numbers: NumberInfo[];
  readonly sessionId: string | null;
  readonly operatorInfo: OperatorInfo | null;
  readonly tokenExpiresAt: string | null;
  readonly inputDeviceId: string | null;
  readonly outputDeviceId: string | null;

  listNumbers(): Promise<NumberInfo[]>;
  goOnline(ids?: string[]): Promise<Availability>;
  goOffline(): Promise<void>;
  dispose(): Promise<void>;
  dial(to: string, options?: { callerId?: string }): Promise<Call>;
  listCalls(): Promise<CallInfo[]>;
  monitor(callId: string, options?: { mode?: MonitorMode; participantId?: string }): Promise<MonitorCall>;
  listDevices(): Promise<AudioDevices>;
  setInputDevice(deviceId: string | null): Promise<void>;
  setOutputDevice(deviceId: string | null): Promise<void>;
}

/** The E-model MOS estimate the SDK uses (ms and %). */
export declare function estimateMos(figures?: { rtt?: number; jitter?: number; packetLoss?: number }): number;

export default Operator;
