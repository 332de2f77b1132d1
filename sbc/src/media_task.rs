//! One task per call for its media: owns the call's sans-IO `MediaSession` and
//! its RTP sockets, takes commands from control and datagrams from its sockets and
//! the shared WebRTC port, sends what the session polls out, and reports media
//! events back to control as [`ControlIn::Media`], on an unbounded channel: a busy
//! control task never holds up media. Calls are spread over the runtime's workers
//! this way, and a slow call never holds up another.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use sip_bridge::bridge::{CallId, LegKey, MediaCommand, MediaEvent, RtcpQuality};
use sip_bridge::contract::RecordingId;
use sip_bridge::media::{
    MediaConfig, MediaSession, MuxUpdate, RECORD_FRAME_MAX, RecordOut, StreamIo, Via,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::agent_ws;
use crate::clock::Clock;
use crate::dual_stack;
use crate::fork_ws;
use crate::inbox::{AgentLink, ControlIn, ControlTx, MediaIn, MediaTx};
use crate::recorder::{Recorder, Tap};
use crate::rtp_ports::RtpPorts;
use crate::webrtc_port::{MuxCmd, WebRtcPort};

/// What every media task shares.
#[derive(Debug)]
pub struct MediaCtx {
    /// Every call's media settings (browser legs, media timeout, Opus, jitter
    /// buffering); each task takes a copy with its own seed.
    pub media: MediaConfig,
    /// The shared WebRTC port.
    pub port: WebRtcPort,
    /// Where RTP sockets bind.
    pub rtp_bind: IpAddr,
    /// RTP ports the control task reserved for legs (bound before the SDP).
    pub rtp_ports: RtpPorts,
    /// The clock.
    pub clock: Clock,
    /// Where recordings are written.
    pub recorder: Recorder,
}

/// Starts the media task of call `id`; its events go to `control`.
pub fn spawn(id: CallId, ctx: Arc<MediaCtx>, control: ControlTx, seed: u64) -> MediaTx {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(id, ctx, control, seed, tx.clone(), rx));
    tx
}

async fn run(
    id: CallId,
    ctx: Arc<MediaCtx>,
    control: ControlTx,
    seed: u64,
    me: MediaTx,
    mut rx: mpsc::UnboundedReceiver<MediaIn>,
) {
    let mut session = MediaSession::new(MediaConfig {
        seed,
        ..ctx.media.clone()
    });
    let mut rtp = RtpSockets::default();
    // On `::` the RTP sockets reach IPv4 peers at their mapped addresses.
    let ipv6_sockets = ctx.rtp_bind.is_ipv6();
    let mut legs_in_mux: Vec<LegKey> = Vec::new();
    let mut agents: HashMap<LegKey, AgentLink> = HashMap::new();
    let mut taps: HashMap<RecordingId, Sink> = HashMap::new();
    let mut pcm = [0i16; RECORD_FRAME_MAX];
    let number = id.0;
    let id_of_call = id;
    let mut exported = Exported::default();
    let mut export_tick = tokio::time::interval(Duration::from_secs(1));
    // One timer, moved when the session's deadline moves (not a new one per wake-up).
    let idle = || {
        ctx.clock
            .deadline(ctx.clock.now() + Duration::from_secs(3600))
    };
    let timer = tokio::time::sleep_until(idle());
    tokio::pin!(timer);
    let mut armed: Option<tokio::time::Instant> = None;
    loop {
        let deadline = session.poll_timeout().map(|t| ctx.clock.deadline(t));
        if deadline != armed {
            timer.as_mut().reset(deadline.unwrap_or_else(idle));
            armed = deadline;
        }
        let wake = tokio::select! {
            _ = export_tick.tick() => Wake::Export,
            msg = rx.recv() => Wake::Message(msg),
            (port, from, data, rtcp) = std::future::poll_fn(|cx| rtp.poll_recv(cx)) => Wake::Rtp { port, from, data, rtcp },
            _ = timer.as_mut() => Wake::Timer,
        };
        let mut ports_changed = false;
        match wake {
            Wake::Export => exported.export(&session),
            Wake::Timer => {
                // Spent: idle until the session asks again.
                timer.as_mut().reset(idle());
                armed = None;
                ports_changed = true; // a media timeout may end a leg
                session.handle_timeout(ctx.clock.now());
            }
            Wake::Rtp {
                port,
                from,
                data,
                rtcp: false,
            } => session.handle_rtp(ctx.clock.now(), port, dual_stack::canonical(from), data),
            Wake::Rtp {
                port,
                from,
                data,
                rtcp: true,
            } => session.handle_rtcp(ctx.clock.now(), port, dual_stack::canonical(from), &data),
            Wake::Message(None) => break,
            Wake::Message(Some(msg)) => {
                let now = ctx.clock.now();
                match msg {
                    MediaIn::Command(cmd) => {
                        ports_changed = true;
                        if let MediaCommand::AddRtp {
                            leg, local_port, ..
                        } = &cmd
                            && !rtp.map.contains_key(local_port)
                        {
                            let bound = match ctx.rtp_ports.take(*local_port) {
                                Some(r) => {
                                    // RTCP on port + 1 (RFC 3550 11), read here too.
                                    if let Ok(s) = UdpSocket::from_std(r.rtcp) {
                                        rtp.rtcp.insert(*local_port, Arc::new(s));
                                    }
                                    UdpSocket::from_std(r.rtp)
                                }
                                None => {
                                    // Not reserved (a port reused in this call): RTCP
                                    // beside it if it can be had.
                                    let bind = |port: u16| {
                                        dual_stack::bind_udp((ctx.rtp_bind, port).into())
                                            .and_then(UdpSocket::from_std)
                                    };
                                    if let Ok(s) = bind(local_port.wrapping_add(1)) {
                                        rtp.rtcp.insert(*local_port, Arc::new(s));
                                    }
                                    bind(*local_port)
                                }
                            };
                            match bound {
                                Ok(s) => {
                                    rtp.map.insert(*local_port, Arc::new(s));
                                }
                                Err(e) => {
                                    tracing::warn!(call = %id, port = local_port, error = %e, "cannot bind RTP port");
                                    let _ = control.send(ControlIn::Media {
                                        call: id,
                                        event: MediaEvent::PortFailed { leg: *leg },
                                    });
                                    continue;
                                }
                            }
                        }
                        if let MediaCommand::Remove { leg } = &cmd {
                            legs_in_mux.retain(|l| l != leg);
                        }
                        session.handle_command(now, cmd);
                    }
                    MediaIn::WebRtc {
                        leg,
                        from,
                        to,
                        data,
                    } => session.handle_webrtc(now, leg, from, to, &data),
                    MediaIn::StreamUp { leg, link } => {
                        agents.insert(leg, link);
                        session.handle_stream_connected(now, leg);
                    }
                    MediaIn::StreamMessage { leg, msg } => {
                        session.handle_stream_message(now, leg, msg)
                    }
                    MediaIn::StreamClosed { leg, reason } => {
                        if agents.remove(&leg).is_some() || !reason.is_empty() {
                            tracing::info!(call = %id, leg = %leg, %reason, "agent stream ended");
                        }
                        session.handle_stream_closed(now, leg, &reason);
                    }
                }
            }
        }
        while let Some(t) = session.poll_transmit() {
            match t.via {
                Via::Rtp(port) => {
                    if let Some(s) = rtp.map.get(&port) {
                        let _ = s.try_send_to(&t.bytes, dual_stack::toward(t.to, ipv6_sockets));
                    }
                }
                Via::Rtcp(port) => {
                    if let Some(s) = rtp.rtcp.get(&port) {
                        let _ = s.try_send_to(&t.bytes, dual_stack::toward(t.to, ipv6_sockets));
                    }
                }
                Via::WebRtc => {
                    let _ = ctx.port.socket.try_send_to(&t.bytes, t.to);
                }
            }
        }
        while let Some(io) = session.poll_stream_io() {
            match io {
                StreamIo::Connect { leg, url, headers } => {
                    agent_ws::spawn(leg, url, headers, me.clone())
                }
                StreamIo::Send { leg, msg } => {
                    if let Some(link) = agents.get(&leg)
                        && !link.send(msg)
                    {
                        agents.remove(&leg);
                        tracing::warn!(call = %id, leg = %leg, "agent stalled: closing its stream");
                        session.handle_stream_closed(ctx.clock.now(), leg, "agent stalled");
                    }
                }
                StreamIo::Close { leg } => {
                    agents.remove(&leg);
                }
            }
        }
        while let Some(u) = session.poll_mux_update() {
            match u {
                MuxUpdate::Insert { leg, credentials } => {
                    legs_in_mux.push(leg);
                    let _ = ctx.port.mux.send(MuxCmd::Insert {
                        key: (number, leg),
                        credentials,
                        to: me.clone(),
                    });
                }
                MuxUpdate::Remove { leg } => {
                    legs_in_mux.retain(|l| *l != leg);
                    let _ = ctx.port.mux.send(MuxCmd::Remove { key: (number, leg) });
                }
            }
        }
        // Recordings: frames to their writers' queues (never waiting).
        while let Some(out) = session.poll_record(&mut pcm) {
            match out {
                RecordOut::Started { id, spec } => {
                    if spec.fork.is_some() {
                        let link = fork_ws::spawn(id_of_call, id, spec, control.clone());
                        taps.insert(id, Sink::Fork(link));
                    } else if let Some(t) = ctx.recorder.start(id, &spec) {
                        taps.insert(id, Sink::File(t));
                    }
                }
                RecordOut::Frame { id, samples } => match taps.get(&id) {
                    Some(Sink::File(t)) => t.frame(&pcm[..samples]),
                    Some(Sink::Fork(f)) => f.frame(&pcm[..samples]),
                    None => {}
                },
                RecordOut::Note { id, at, note } => match taps.get(&id) {
                    Some(Sink::File(t)) => t.note(at, note),
                    Some(Sink::Fork(f)) => f.note(at, note),
                    None => {}
                },
                RecordOut::Stopped { id, duration } => match taps.remove(&id) {
                    Some(Sink::File(t)) => t.stop(duration),
                    Some(Sink::Fork(f)) => f.stop(),
                    None => {}
                },
                _ => {}
            }
        }
        while let Some(event) = session.poll_event() {
            if control.send(ControlIn::Media { call: id, event }).is_err() {
                break;
            }
        }
        while let Some((leg, q)) = session.poll_quality() {
            // A SIP peer's RTCP report: metrics now, the CDR at the end.
            metrics::histogram!("sbc_rtcp_fraction_lost_ratio")
                .record(f64::from(q.fraction_lost) / 256.0);
            metrics::histogram!("sbc_rtcp_jitter_seconds").record(q.jitter.as_secs_f64());
            if let Some(rtt) = q.rtt {
                metrics::histogram!("sbc_rtcp_rtt_seconds").record(rtt.as_secs_f64());
            }
            let quality = RtcpQuality {
                fraction_lost: q.fraction_lost,
                jitter_ms: q.jitter.as_millis() as u32,
                rtt_ms: q.rtt.map(|r| r.as_millis() as u32),
            };
            let _ = control.send(ControlIn::Media {
                call: id,
                event: MediaEvent::Quality { leg, quality },
            });
        }
        // Ports whose legs are gone are closed at once (only commands and
        // timeouts end legs).
        if ports_changed {
            let live = session.rtp_ports();
            rtp.map.retain(|port, _| live.contains(port));
            rtp.rtcp.retain(|port, _| live.contains(port));
        }
        if session.is_stopped() {
            break;
        }
    }
    exported.export(&session);
    count_call(&session);
    for leg in legs_in_mux {
        let _ = ctx.port.mux.send(MuxCmd::Remove { key: (number, leg) });
    }
}

/// How the call's media went, once it is over: mixed on the call clock,
/// transcoded (some packet went through a transcoding pipeline), or relayed as
/// it came; a call whose media never connected two legs is not counted.
fn count_call(session: &MediaSession) {
    let s = session.stats();
    let path = if s.mix_ticks > 0 {
        "mixed"
    } else if s.transcoded > 0 {
        "transcoded"
    } else if s.relayed > 0 {
        "relayed"
    } else {
        return;
    };
    metrics::counter!("sbc_calls_media_total", "path" => path).increment(1);
}

/// Where a recording's frames go: its file's writer, or a fork's socket.
enum Sink {
    File(Tap),
    Fork(fork_ws::ForkLink),
}

/// What woke the call's task.
enum Wake {
    Export,
    Message(Option<MediaIn>),
    Rtp {
        port: u16,
        from: SocketAddr,
        data: BytesMut,
        /// On the RTCP socket beside `port`.
        rtcp: bool,
    },
    Timer,
}

/// The call's RTP sockets, read by the call's own task: no reader task and
/// channel hop per packet (two task wake-ups), no unbounded queue a flood could
/// grow, and datagrams land in a reused buffer without zeroing (each packet is
/// split off it as `BytesMut`).
#[derive(Default)]
struct RtpSockets {
    map: HashMap<u16, Arc<UdpSocket>>,
    /// The RTCP sockets (port + 1), by their RTP port.
    rtcp: HashMap<u16, Arc<UdpSocket>>,
    buf: BytesMut,
    start: usize,
}

impl RtpSockets {
    /// Largest datagram taken (bigger ones are truncated, as before).
    const MAX_DATAGRAM: usize = 1500;

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<(u16, SocketAddr, BytesMut, bool)> {
        // Start one socket further each time, so a busy one cannot starve another.
        self.start = self.start.wrapping_add(1);
        let n = self.map.len();
        let rtp = self.map.iter().map(|(p, s)| (*p, s, false));
        let rtcp = self.rtcp.iter().map(|(p, s)| (*p, s, true));
        for (port, socket, is_rtcp) in rtp.cycle().skip(self.start % n.max(1)).take(n).chain(rtcp) {
            // Readiness first; `try_recv_buf_from` then fills spare capacity
            // (tokio handles the uninitialized memory).
            while let Poll::Ready(Ok(())) = socket.poll_recv_ready(cx) {
                // Room for a datagram; a relayed packet is gone by the next read, so
                // this mostly reclaims the same allocation, while buffered ones keep
                // only their own small chunk alive.
                if self.buf.capacity() - self.buf.len() < Self::MAX_DATAGRAM {
                    self.buf.reserve(2 * Self::MAX_DATAGRAM);
                }
                let mut room = (&mut self.buf).limit(Self::MAX_DATAGRAM);
                match socket.try_recv_buf_from(&mut room) {
                    Ok((len, from)) => {
                        return Poll::Ready((port, from, self.buf.split_to(len), is_rtcp));
                    }
                    // Stale readiness, cleared by tokio: poll again to register.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    // An error queued on the socket (e.g. ICMP): try the others.
                    Err(_) => break,
                }
            }
        }
        Poll::Pending
    }
}

/// What a media task already added to the process counters.
#[derive(Default)]
struct Exported {
    stats: sip_bridge::media::MediaStats,
    totals: sip_bridge::media::MediaTotals,
    /// The session was mixing at the last export.
    mixing: bool,
}

impl Exported {
    /// Adds what changed since the last export (pipelines may be rebuilt, so
    /// their counters only ever count up from what was exported).
    fn export(&mut self, session: &MediaSession) {
        let (s, t) = (session.stats(), session.totals());
        let d = |now: u64, was: u64| now.saturating_sub(was);
        metrics::counter!("sbc_rtp_packets_total", "direction" => "in")
            .increment(d(s.rtp_in, self.stats.rtp_in));
        metrics::counter!("sbc_rtp_packets_total", "direction" => "out")
            .increment(d(s.rtp_out, self.stats.rtp_out));
        metrics::counter!("sbc_rtp_bytes_total", "direction" => "in")
            .increment(d(s.rtp_bytes_in, self.stats.rtp_bytes_in));
        metrics::counter!("sbc_rtp_bytes_total", "direction" => "out")
            .increment(d(s.rtp_bytes_out, self.stats.rtp_bytes_out));
        metrics::counter!("sbc_rtp_foreign_source_total")
            .increment(d(s.foreign_source, self.stats.foreign_source));
        metrics::counter!("sbc_rtcp_packets_total", "direction" => "in")
            .increment(d(s.rtcp_in, self.stats.rtcp_in));
        metrics::counter!("sbc_rtcp_packets_total", "direction" => "out")
            .increment(d(s.rtcp_out, self.stats.rtcp_out));
        metrics::counter!("sbc_mix_ticks_total").increment(d(s.mix_ticks, self.stats.mix_ticks));
        metrics::counter!("sbc_mix_encodes_total")
            .increment(d(s.mix_encodes, self.stats.mix_encodes));
        metrics::counter!("sbc_media_lost_packets_total").increment(d(t.lost, self.totals.lost));
        metrics::counter!("sbc_media_late_packets_total").increment(d(t.late, self.totals.late));
        // Seconds, the base unit, from a process-wide sum of milliseconds: no
        // call's remainder is lost (`absolute` only ever raises the counter).
        static CONCEALED_MS: AtomicU64 = AtomicU64::new(0);
        let add = d(t.concealed_ms, self.totals.concealed_ms);
        let ms = CONCEALED_MS.fetch_add(add, Ordering::Relaxed) + add;
        metrics::counter!("sbc_media_concealed_seconds_total").absolute(ms / 1000);
        if t.max_jitter_delay_ms > 0 {
            metrics::histogram!("sbc_jitter_delay_seconds")
                .record(f64::from(t.max_jitter_delay_ms) / 1000.0);
        }
        // Transcoding pipelines: a gauge maintained by differences.
        let tr = t.transcoding as f64 - self.totals.transcoding as f64;
        if tr != 0.0 {
            metrics::gauge!("sbc_transcoding_pipelines").increment(tr);
        }
        // Calls mixed on their clock (more than two parties talking, or a
        // supervisor): a gauge maintained by differences too.
        let mixing = session.mixing().is_some() && !session.is_stopped();
        if mixing != self.mixing {
            metrics::gauge!("sbc_mixed_calls").increment(if mixing { 1.0 } else { -1.0 });
            self.mixing = mixing;
        }
        let mut totals = t;
        if session.is_stopped() {
            // Gone: its pipelines leave the gauge.
            metrics::gauge!("sbc_transcoding_pipelines").decrement(t.transcoding as f64);
            totals.transcoding = 0;
        }
        self.stats = s;
        self.totals = totals;
    }
}
