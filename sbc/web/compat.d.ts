// Types of compat.js: the operator SDK 0.3.0 API over this SDK.

import type { Operator, Call, OperatorOptions, Logger } from './operator.js';
import { OperatorError } from './operator.js';

export { OperatorError };

export type PresenceState = 'offline' | 'connecting' | 'online' | 'reconnecting';
export type CallDirection = 'inbound' | 'outbound';
export type CallState = 'ringing' | 'connecting' | 'active' | 'ended';
export type CallEndReason = 'hangup' | 'remote_hangup' | 'taken_by_other' | 'rejected' | 'no_answer' | 'failed' | 'offline';
export type OperatorLogger = Logger;

export interface OperatorPhoneNumber {
  id: string;
  phoneNumber: string;
  displayName: string | null;
}

export interface OperatorConfig extends Partial<Omit<OperatorOptions, 'url' | 'getToken'>> {
  /** The SBC's base URL; http(s) is upgraded to ws(s) and `/v1/operator` appended. */
  coreUrl: string;
  getToken: () => Promise<{ token: string; expiresAt?: string } | string>;
  heartbeatIntervalMs?: number;
  reconnectBackoffMs?: number[];
  audioConstraints?: MediaTrackConstraints | boolean;
  logger?: OperatorLogger;
}

export interface CompatErrorEvent {
  code: string;
  message: string;
  cause?: unknown;
}

export interface CompatEvents {
  presenceStateChanged: PresenceState;
  availabilityChanged: { accepted: string[]; rejected: string[] };
  incomingCall: OperatorCall;
  callStarted: OperatorCall;
  callEnded: OperatorCall;
  error: CompatErrorEvent;
}

export declare class OperatorCall {
  /** This SDK's Call. */
  readonly native: Call;
  readonly callSid: string;
  readonly direction: CallDirection;
  readonly from?: string;
  readonly to?: string;
  readonly state: CallState;
  readonly endReason?: CallEndReason;
  readonly muted: boolean;
  accept(): void;
  reject(): void;
  mute(on: boolean): void;
  sendDtmf(digit: string): void;
  hangup(): void;
}

export declare class CompatOperator {
  constructor(config: OperatorConfig);
  /** This SDK's Operator. */
  readonly native: Operator;
  readonly state: PresenceState;
  readonly currentCall: OperatorCall | null;
  listPhoneNumbers(): Promise<OperatorPhoneNumber[]>;
  goOnline(phoneNumberIds: string[]): Promise<void>;
  goOffline(): Promise<void>;
  dial(to: string, options: { callerId: string }): Promise<OperatorCall>;
  on<K extends keyof CompatEvents>(event: K, listener: (payload: CompatEvents[K]) => void): () => void;
  off<K extends keyof CompatEvents>(event: K, listener: (payload: CompatEvents[K]) => void): void;
  once<K extends keyof CompatEvents>(event: K, listener: (payload: CompatEvents[K]) => void): () => void;
}

export { CompatOperator as AudinOperator };

/** The `/v1/operator` WebSocket URL of an SBC base URL. */
export declare function operatorUrl(coreUrl: string): string;

export default CompatOperator;
