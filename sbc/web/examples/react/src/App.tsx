import { useEffect, useRef, useState, type RefObject } from 'react';
import type { Call, CallInfo, MonitorMode } from '@sbc/operator-sdk';
import {
  OperatorProvider,
  useCall,
  useCallQuality,
  useDevices,
  useIncomingCall,
  useOperator,
  useParticipants,
} from '@sbc/operator-sdk/react';

export function App({ sbcUrl, tokenEndpoint }: { sbcUrl: string; tokenEndpoint: string }) {
  const audio = useRef<HTMLAudioElement>(null);
  const { operator, state, availability, error } = useOperator({
    url: sbcUrl,
    getToken: async () => {
      const r = await fetch(tokenEndpoint, { method: 'POST', credentials: 'include' });
      if (!r.ok) throw new Error(`token endpoint: HTTP ${r.status}`);
      return (await r.json()) as { token: string; expiresAt?: string };
    },
    ringtone: true,
  });
  if (!operator) return null;
  return (
    <OperatorProvider operator={operator}>
      <header>
        <strong>Softphone</strong> <span data-state={state}>{state}</span>
        {state === 'offline' ? (
          <button onClick={() => operator.goOnline().catch(() => {})}>Go online</button>
        ) : (
          <button onClick={() => operator.goOffline()}>Go offline</button>
        )}
        <span> taking calls on {availability.accepted.join(', ') || 'nothing'}</span>
        {error && <p role="alert">{error.code}: {error.message}</p>}
      </header>
      <IncomingBanner />
      <Dialer />
      <ActiveCall />
      <Devices />
      <Supervisor />
      <audio ref={audio} autoPlay />
      <RemoteAudio element={audio} />
    </OperatorProvider>
  );
}

function IncomingBanner() {
  const offer = useIncomingCall();
  if (!offer) return null;
  return (
    <section role="alert">
      Incoming call from {offer.callerName ?? offer.from}
      {offer.invitedBy && <> (added by {offer.invitedBy})</>}
      <button onClick={() => offer.accept().catch(() => {})}>Answer</button>
      <button onClick={() => offer.reject()}>Decline</button>
    </section>
  );
}

function Dialer() {
  const { operator } = useOperator();
  const [to, setTo] = useState('');
  if (!operator) return null;
  const callerId = operator.numbers[0]?.id;
  return (
    <form
      onSubmit={(e) => {
        e.preventDefault();
        operator.dial(to, { callerId }).catch(() => {});
      }}
    >
      <input value={to} onChange={(e) => setTo(e.target.value)} placeholder="+15550123" />
      <button type="submit">Call</button>
    </form>
  );
}

function ActiveCall() {
  const snap = useCall();
  const quality = useCallQuality(snap?.call);
  const { participants, can } = useParticipants(snap?.call);
  const [target, setTarget] = useState('');
  if (!snap) return <p>No call</p>;
  const { call } = snap;
  return (
    <section>
      <p>
        {snap.state} with {snap.direction === 'inbound' ? snap.from : snap.to}
        {snap.reconnecting && ' (reconnecting audio…)'}
        {snap.muted && ' · muted'}
        {snap.held && ' · on hold'}
      </p>
      <button onClick={() => call.mute(!snap.muted)}>{snap.muted ? 'Unmute' : 'Mute'}</button>
      <button onClick={() => call.hold(!snap.held)}>{snap.held ? 'Resume' : 'Hold'}</button>
      <button onClick={() => call.hangup()}>Hang up</button>
      {can('end_call') && <button onClick={() => call.end().catch(() => {})}>End for everyone</button>}
      <p>
        MOS {quality.sample?.mos ?? '–'} · RTT {quality.sample?.rtt ?? '–'} ms · jitter {quality.sample?.jitter ?? '–'} ms
        {quality.warnings.length > 0 && <strong> · {quality.warnings.join(', ')}</strong>}
      </p>
      <LevelMeter call={call} />
      <ul>
        {participants.map((p) => (
          <li key={p.id}>
            {p.displayName ?? p.operatorRef ?? p.address ?? p.id} ({p.role}, {p.state}
            {p.monitor ? `, ${p.monitor}` : ''})
            {can('hold_participant') && p.id !== call.self && (
              <button onClick={() => call.holdParticipant(p.id, !p.held).catch(() => {})}>{p.held ? 'Resume' : 'Hold'}</button>
            )}
            {can('remove_participant') && p.id !== call.self && <button onClick={() => call.removeParticipant(p.id).catch(() => {})}>Remove</button>}
          </li>
        ))}
      </ul>
      {can('add_participant') && (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            call.addParticipant(target, { timeout: 30 }).catch(() => {});
            setTarget('');
          }}
        >
          <input value={target} onChange={(e) => setTarget(e.target.value)} placeholder="operator:bob or +15550123" />
          <button type="submit">Add</button>
        </form>
      )}
    </section>
  );
}

function LevelMeter({ call }: { call: Call }) {
  const [level, setLevel] = useState({ input: 0, output: 0 });
  useEffect(() => call.on('audioLevel', setLevel), [call]);
  return (
    <p>
      mic <meter min={0} max={1} value={level.input} /> speaker <meter min={0} max={1} value={level.output} />
    </p>
  );
}

function Devices() {
  const { inputs, outputs, inputDeviceId, outputDeviceId, setInputDevice, setOutputDevice } = useDevices();
  return (
    <section>
      <select value={inputDeviceId ?? 'default'} onChange={(e) => setInputDevice(e.target.value).catch(() => {})}>
        {inputs.map((d) => (
          <option key={d.deviceId} value={d.deviceId}>
            {d.label || d.deviceId}
          </option>
        ))}
      </select>
      <select value={outputDeviceId ?? 'default'} onChange={(e) => setOutputDevice(e.target.value).catch(() => {})}>
        {outputs.map((d) => (
          <option key={d.deviceId} value={d.deviceId}>
            {d.label || d.deviceId}
          </option>
        ))}
      </select>
    </section>
  );
}

function Supervisor() {
  const { operator, currentCall } = useOperator();
  const [calls, setCalls] = useState<CallInfo[]>([]);
  if (!operator) return null;
  const monitorIn = (callId: string, mode: MonitorMode) => operator.monitor(callId, { mode }).catch(() => {});
  return (
    <section>
      <button onClick={() => operator.listCalls().then(setCalls, () => {})}>List calls</button>
      <ul>
        {calls.map((c) => (
          <li key={c.callId}>
            {c.from} → {c.to} ({c.participants.length} parties)
            {(['listen', 'whisper', 'barge'] as const).map((mode) => (
              <button key={mode} disabled={!!currentCall} onClick={() => monitorIn(c.callId, mode)}>
                {mode}
              </button>
            ))}
          </li>
        ))}
      </ul>
    </section>
  );
}

/** Plays the active call in our <audio> (the SDK's audioElement option would do the same). */
function RemoteAudio({ element }: { element: RefObject<HTMLAudioElement> }) {
  const snap = useCall();
  const stream = snap?.call.remoteStream ?? null;
  useEffect(() => {
    if (element.current) element.current.srcObject = stream;
  }, [element, stream]);
  return null;
}
