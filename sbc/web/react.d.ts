// Types of react.js: React hooks over the operator SDK (React 18+; types from @types/react).

import type { ReactElement, ReactNode } from 'react';
import type {
  Operator,
  OperatorOptions,
  Call,
  PresenceState,
  Availability,
  ErrorEvent,
  CallState,
  CallDirection,
  EndReason,
  Participant,
  QualitySample,
  QualitySummary,
  QualityWarningName,
  AudioDevice,
  RecordingInfo,
} from './operator.js';

/** Makes `operator` the default of every hook below it. */
export declare function OperatorProvider(props: { operator: Operator; children?: ReactNode }): ReactElement;

export interface OperatorSnapshot {
  operator: Operator | null;
  state: PresenceState;
  availability: Availability;
  currentCall: Call | null;
  incomingCalls: Call[];
  /** The last `error` event. */
  error: ErrorEvent | null;
}

export declare function useOperator(optionsOrOperator?: OperatorOptions | Operator): OperatorSnapshot;

export declare function useIncomingCall(operator?: Operator | null): Call | null;

export interface CallSnapshot {
  call: Call;
  callId: string | null;
  state: CallState;
  direction: CallDirection;
  from: string | null;
  to: string | null;
  muted: boolean;
  held: boolean;
  remoteHeld: boolean;
  earlyMedia: boolean;
  reconnecting: boolean;
  endReason: EndReason | string | null;
  connectedAt: number | null;
  participants: Participant[];
  capabilities: string[];
  /** The call's recording (`{id, status}`), null when none or stopped. */
  recording: RecordingInfo | null;
}

export declare function useCall(callOrOperator?: Call | Operator | null): CallSnapshot | null;

export interface CallQualitySnapshot {
  sample: QualitySample | null;
  warnings: QualityWarningName[];
  summary: QualitySummary | null;
}

export declare function useCallQuality(call: Call | null | undefined): CallQualitySnapshot;

export interface DevicesSnapshot {
  inputs: AudioDevice[];
  outputs: AudioDevice[];
  error: unknown;
  inputDeviceId: string | null;
  outputDeviceId: string | null;
  setInputDevice(deviceId: string | null): Promise<void>;
  setOutputDevice(deviceId: string | null): Promise<void>;
  refresh(): Promise<void>;
}

export declare function useDevices(operator?: Operator | null): DevicesSnapshot;

export interface ParticipantsSnapshot {
  participants: Participant[];
  self: string | null;
  capabilities: string[];
  can(action: string): boolean;
}

export declare function useParticipants(call: Call | null | undefined): ParticipantsSnapshot;
