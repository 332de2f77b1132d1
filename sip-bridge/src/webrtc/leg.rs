//! One browser leg: an ICE-lite, DTLS-SRTP, audio-only str0m `Rtc` in RTP mode
//! behind the house `handle_*` / `poll_*` interface.
//!
//! Life: [`WebRtcLeg::accept_offer`] -> `Connected` -> `Rtp`... -> one terminal
//! `Disconnected` or `Failed` event (none after [`WebRtcLeg::close`]). str0m has no
//! ICE "failed" state, so the two timeouts of [`WebRtcConfig`] end a leg whose
//! browser never came or went away.

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use media_core::Instant;
use media_core::codec::OpusFmtp;
use media_core::rtp::{
    FIXED_HEADER_LEN, PayloadType, RtpHeader, RtpTimestamp, RtpWriter, SeqNo, SeqUnwrapper, Ssrc,
};
use str0m::change::SdpOffer;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcError};

use super::offer::{self, PayloadTypes};
use super::stun::{self, Check, Kind};
use super::{MuxCredentials, Transmit, WebRtcConfig, WebRtcError};

/// What a leg reports to its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebRtcEvent {
    /// ICE, DTLS and SRTP are up: media flows from now on.
    Connected,
    /// A decrypted inbound RTP packet, rebuilt as a plain RTP packet (fixed header
    /// and CSRCs; header extensions dropped) for `media_core::rtp::RtpPacket::parse`.
    /// Opus and RFC 4733 telephone-events both come this way: tell them apart with
    /// [`PayloadTypes::is_telephone_event`] and decode events with `media_core::dtmf`.
    Rtp(Bytes),
    /// The leg was connected and ended: the owner removes it.
    Disconnected(DisconnectReason),
    /// The leg never got connected, or broke: the owner removes it.
    Failed(FailReason),
}

/// Why a connected leg ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The browser closed the PeerConnection (DTLS close_notify).
    PeerClosed,
    /// No authenticated STUN and no RTP for the idle timeout: the browser vanished.
    Idle,
}

/// Why a leg failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailReason {
    /// Not connected within the connect timeout.
    ConnectTimeout,
    /// ICE/DTLS/SRTP broke (e.g. the certificate did not match the offer's
    /// fingerprint); str0m's message.
    Protocol(String),
}

/// Counters of one leg.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebRtcStats {
    /// RTP packets decrypted and delivered as [`WebRtcEvent::Rtp`].
    pub packets_in: u64,
    /// Their bytes (rebuilt RTP header + payload).
    pub bytes_in: u64,
    /// RTP packets handed to SRTP by `send_rtp`.
    pub packets_out: u64,
    /// Their bytes as given to `send_rtp`.
    pub bytes_out: u64,
    /// Datagrams taken in (passed the `accepts` gate).
    pub datagrams_in: u64,
    /// Datagrams to send (STUN, DTLS, SRTP, SRTCP).
    pub datagrams_out: u64,
    /// Datagrams dropped because their source was not validated by a signed STUN
    /// check (the CVE-2023-49786 gate), or STUN not signed for this leg.
    pub dropped_unverified: u64,
    /// Datagrams that are neither STUN, DTLS nor RTP/RTCP.
    pub dropped_malformed: u64,
    /// `send_rtp` calls before `Connected` (dropped, as str0m would).
    pub dropped_before_connect: u64,
    /// Outbound packets with nowhere to go (we only receive, or a sequence number
    /// from before the stream's start).
    pub dropped_outbound: u64,
    /// Errors str0m reported while handling input.
    pub errors: u64,
}

/// Where the leg is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Answer sent; waiting for ICE + DTLS.
    Connecting,
    /// Media flows.
    Connected,
    /// Over: inert, nothing more comes out.
    Ended,
}

/// Maps the caller's outbound sequence numbers onto the one stream the answer
/// announced. A new caller SSRC (the far end changed source) continues where the
/// last one stopped, so the browser sees one gapless stream and the SRTP rollover
/// counter stays right ([RFC 3711 section 3.3.1]).
///
/// [RFC 3711 section 3.3.1]: https://www.rfc-editor.org/rfc/rfc3711#section-3.3.1
#[derive(Clone, Debug, Default)]
struct OutSeq {
    ssrc: Option<u32>,
    unwrap: SeqUnwrapper,
    offset: i64,
    highest: Option<i64>,
}

impl OutSeq {
    fn map(&mut self, ssrc: u32, seq: u16) -> Option<u64> {
        if self.ssrc != Some(ssrc) {
            self.ssrc = Some(ssrc);
            self.unwrap.reset();
            // The first stream keeps its numbers: below 65536, so ROC 0.
            self.offset = self.highest.map_or(0, |h| h + 1 - seq as i64);
        }
        let ext = self.unwrap.unwrap(seq) + self.offset;
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        u64::try_from(ext).ok()
    }
}

/// The server side of one browser's PeerConnection. See the module docs.
pub struct WebRtcLeg {
    rtc: Rtc,
    config: WebRtcConfig,
    mid: Mid,
    pts: PayloadTypes,
    /// What the browser's offer asks of our Opus encoder.
    remote_opus: OpusFmtp,
    ssrc: Option<u32>,
    credentials: MuxCredentials,
    state: State,
    created: Instant,
    /// Last authenticated sign of life from the browser (signed STUN or SRTP).
    last_heard: Instant,
    last_now: Instant,
    rtc_deadline: Option<Instant>,
    out_seq: OutSeq,
    transmits: VecDeque<Transmit>,
    events: VecDeque<WebRtcEvent>,
    stats: WebRtcStats,
}

impl std::fmt::Debug for WebRtcLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcLeg")
            .field("ufrag", &self.credentials.local_ufrag())
            .field("mid", &self.mid)
            .field("state", &self.state)
            .field("pts", &self.pts)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Our telephone-event payload types when the offer has none to reuse (the answer
/// takes the offer's numbers). Chromium's, so logs read the same.
const TELEPHONE_EVENT_48K: u8 = 110;
const TELEPHONE_EVENT_8K: u8 = 126;

/// A run of str0m errors this long in one drain ends the leg rather than spin.
const MAX_ERRORS_PER_DRAIN: u32 = 16;

impl WebRtcLeg {
    /// Answers a browser's offer: a new leg and the answer SDP to send back.
    ///
    /// Costs about 1 ms of CPU (measured 1.03 ms: str0m builds and validates a
    /// DTLS context per `Rtc`), so create legs on the call's task, not the socket's.
    pub fn accept_offer(
        now: Instant,
        offer_sdp: &str,
        config: &WebRtcConfig,
    ) -> Result<(WebRtcLeg, String), WebRtcError> {
        let info = offer::inspect(offer_sdp)?;
        let offer = SdpOffer::from_sdp_string(offer_sdp)
            .map_err(|e| WebRtcError::BadOffer(e.to_string()))?;

        let mut rtc_config = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .set_ice_lite(true)
            // Whole RTP packets in and out, no str0m reordering: media-core's jitter
            // buffer does that.
            .set_rtp_mode(true)
            .set_dtls_cert(config.identity.cert());
        for (pt, rate) in [
            (TELEPHONE_EVENT_48K, Frequency::FORTY_EIGHT_KHZ),
            (TELEPHONE_EVENT_8K, Frequency::EIGHT_KHZ),
        ] {
            // RFC 4733 section 7.1.1: one telephone-event format per clock rate.
            rtc_config.codec_config().add_config(
                pt.into(),
                None,
                Codec::Tele,
                rate,
                None,
                FormatParams::default(),
            );
        }
        let mut rtc = rtc_config.build(config.to_std(now));
        let candidate = Candidate::host(config.public_addr, "udp")
            .map_err(|e| WebRtcError::Candidate(e.to_string()))?;
        if rtc.add_local_candidate(candidate).is_none() {
            return Err(WebRtcError::Candidate(config.public_addr.to_string()));
        }
        let answer = rtc.sdp_api().accept_offer(offer)?;
        let answer = offer::reject_applications(&answer.to_sdp_string(), &info.application_mids);
        let pts = offer::payload_types(&answer, &info.audio_mid).ok_or(WebRtcError::NoOpus)?;

        let remote_opus = info
            .opus_fmtp
            .iter()
            .find(|(pt, _)| *pt == pts.opus)
            .map(|(_, f)| *f)
            .unwrap_or_default();
        let mid = Mid::from(info.audio_mid.as_str());
        let ssrc = rtc
            .direct_api()
            .stream_tx_by_mid(mid, None)
            .map(|tx| *tx.ssrc());
        let local = rtc.direct_api().local_ice_credentials();
        let credentials = MuxCredentials::new(local.ufrag, local.pass, info.remote_ufrag);
        let mut leg = WebRtcLeg {
            rtc,
            config: config.clone(),
            mid,
            pts,
            remote_opus,
            ssrc,
            credentials,
            state: State::Connecting,
            created: now,
            last_heard: now,
            last_now: now,
            rtc_deadline: None,
            out_seq: OutSeq::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: WebRtcStats::default(),
        };
        leg.drain(now);
        Ok((leg, answer))
    }

    /// Our ICE username fragment: the key of STUN checks in the shared-port mux.
    pub fn local_ufrag(&self) -> &str {
        self.credentials.local_ufrag()
    }

    /// What [`super::WebRtcMux::insert`] needs to route and verify this leg's checks.
    pub fn mux_credentials(&self) -> MuxCredentials {
        self.credentials.clone()
    }

    /// The payload types the answer negotiated.
    pub fn payload_types(&self) -> PayloadTypes {
        self.pts
    }

    /// What the browser's `fmtp` for Opus asks of the Opus we send it.
    pub fn remote_opus_fmtp(&self) -> OpusFmtp {
        self.remote_opus
    }

    /// The SSRC our answer announced: every outbound packet goes out with it.
    /// `None` if the browser only sends (we answered `recvonly`).
    pub fn local_ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// Whether media flows.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Whether the leg is over (after a terminal event or `close`).
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Counters.
    pub fn stats(&self) -> WebRtcStats {
        self.stats
    }

    fn receive<'a>(&self, source: SocketAddr, datagram: &'a [u8]) -> Option<Receive<'a>> {
        // A single candidate: whatever local address the datagram came in on (a
        // 0.0.0.0 bind, the private side of 1:1 NAT) is the advertised one for
        // str0m, which drops STUN to any other address.
        Receive::new(Protocol::Udp, source, self.config.public_addr, datagram).ok()
    }

    /// Whether a datagram from `source` may be handed to this leg: STUN checks
    /// signed with our ICE password, and DTLS/SRTP/SRTCP only from an address such a
    /// check came from ([RFC 8445 section 7.3], [RFC 7983]). Everything else must be
    /// dropped unread: CVE-2023-49786 was a DTLS ClientHello from anywhere.
    /// [`WebRtcLeg::handle_input`] applies this itself.
    ///
    /// [RFC 8445 section 7.3]: https://www.rfc-editor.org/rfc/rfc8445#section-7.3
    /// [RFC 7983]: https://www.rfc-editor.org/rfc/rfc7983
    pub fn accepts(&self, source: SocketAddr, datagram: &[u8]) -> bool {
        if self.state == State::Ended {
            return false;
        }
        self.receive(source, datagram)
            .is_some_and(|r| self.rtc.accepts(&Input::Receive(self.config.epoch, r)))
    }

    /// One datagram from the shared port. `destination` is the local address it
    /// arrived on; the leg has one candidate ([`WebRtcConfig::public_addr`]) and
    /// treats every datagram as sent to it. Datagrams that fail [`Self::accepts`]
    /// or are not STUN/DTLS/RTP are dropped and counted, not errors. An error means
    /// str0m failed on a datagram it accepted; if that broke the leg, a `Failed`
    /// event follows.
    pub fn handle_input(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), WebRtcError> {
        let _ = destination;
        if self.state == State::Ended {
            return Ok(());
        }
        self.last_now = self.last_now.max(now);
        let Some(receive) = self.receive(source, datagram) else {
            self.stats.dropped_malformed += 1;
            return Ok(());
        };
        let input = Input::Receive(self.config.to_std(now), receive);
        if !self.rtc.accepts(&input) {
            self.stats.dropped_unverified += 1;
            return Ok(());
        }
        self.stats.datagrams_in += 1;
        // A consent check signed for us proves the browser is there (RFC 7675);
        // `accepts` lets anything through from the nominated address, so check.
        if stun::classify(datagram) == Kind::Stun
            && Check::parse(datagram).is_some_and(|c| {
                c.is_signed(
                    self.credentials.local_ufrag(),
                    self.credentials.remote_ufrag(),
                    self.credentials.password(),
                )
            })
        {
            self.last_heard = self.last_heard.max(now);
        }
        let result = self.rtc.handle_input(input);
        self.after_input(now, result)
    }

    /// Drives timers: str0m's (STUN, DTLS retransmits, RTCP) and ours (connect and
    /// idle timeouts). Call at [`Self::poll_timeout`] or later; early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Ended {
            return;
        }
        self.last_now = self.last_now.max(now);
        if self.own_deadline().is_some_and(|d| now >= d) {
            match self.state {
                State::Connecting => self.end(WebRtcEvent::Failed(FailReason::ConnectTimeout)),
                _ => self.end(WebRtcEvent::Disconnected(DisconnectReason::Idle)),
            }
            return;
        }
        let result = self
            .rtc
            .handle_input(Input::Timeout(self.config.to_std(now)));
        // Errors are counted and, if fatal, reported as `Failed`.
        let _ = self.after_input(now, result);
    }

    /// When [`Self::handle_timeout`] wants to be called next; `None` once ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Ended {
            return None;
        }
        match (self.rtc_deadline, self.own_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next datagram to send from the shared port.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<WebRtcEvent> {
        self.events.pop_front()
    }

    /// Encrypts and sends one RTP packet built by the bridge (e.g. with
    /// `media_core::rtp::RtpWriter`): its payload type must be one of
    /// [`Self::payload_types`]; marker, sequence number and timestamp are kept; its
    /// SSRC is replaced by the one the answer announced. Before `Connected` the
    /// packet is dropped and counted, as there are no keys yet.
    pub fn send_rtp(&mut self, now: Instant, packet: &[u8]) -> Result<(), WebRtcError> {
        if self.state != State::Connected {
            self.stats.dropped_before_connect += 1;
            return Ok(());
        }
        self.last_now = self.last_now.max(now);
        let header = RtpHeader::parse(packet)?;
        let pt = header.payload_type.value();
        if !self.pts.contains(pt) {
            return Err(WebRtcError::PayloadType(pt));
        }
        let Some(seq) = self.out_seq.map(header.ssrc.0, header.sequence_number.0) else {
            self.stats.dropped_outbound += 1;
            return Ok(());
        };
        let wallclock = self.config.to_std(now);
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(self.mid, None) else {
            self.stats.dropped_outbound += 1;
            return Ok(());
        };
        let payload = packet.get(header.payload_range()).unwrap_or_default();
        tx.write_rtp(
            RtpWrite::new(
                pt.into(),
                seq.into(),
                header.timestamp.0,
                wallclock,
                payload,
            )
            .marker(header.marker),
        );
        self.stats.packets_out += 1;
        self.stats.bytes_out += packet.len() as u64;
        // str0m releases queued packets on its next tick; tick now so the packet
        // leaves with this call instead of waiting for the next timer.
        let result = self.rtc.handle_input(Input::Timeout(wallclock));
        self.after_input(now, result)
    }

    /// Ends the leg from our side: queues RTCP BYE and a DTLS close_notify (poll
    /// them out and send them), then goes inert. No event follows.
    pub fn close(&mut self) {
        if self.state == State::Ended {
            return;
        }
        if self.rtc.close().is_ok() {
            self.drain(self.last_now);
        }
        self.rtc.disconnect();
        self.state = State::Ended;
    }

    fn own_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Connecting => Some(self.created + self.config.connect_timeout),
            State::Connected => Some(self.last_heard + self.config.idle_timeout),
            State::Ended => None,
        }
    }

    fn after_input(
        &mut self,
        now: Instant,
        result: Result<(), RtcError>,
    ) -> Result<(), WebRtcError> {
        let result = result.map_err(|e| {
            self.stats.errors += 1;
            WebRtcError::from(e)
        });
        if let Err(e) = &result
            && !self.rtc.is_alive()
        {
            self.end(WebRtcEvent::Failed(FailReason::Protocol(e.to_string())));
            return result;
        }
        self.drain(now);
        result
    }

    /// Polls str0m until it has nothing but a deadline ([str0m's contract]).
    fn drain(&mut self, now: Instant) {
        let mut errors = 0;
        while self.state != State::Ended {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.rtc_deadline = self.config.ours_from_std(t);
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    self.stats.datagrams_out += 1;
                    self.transmits.push_back(Transmit {
                        to: t.destination,
                        bytes: Bytes::from(Vec::from(t.contents)),
                    });
                }
                Ok(Output::Event(e)) => self.on_event(now, e),
                Err(e) => {
                    self.stats.errors += 1;
                    errors += 1;
                    if !self.rtc.is_alive() || errors >= MAX_ERRORS_PER_DRAIN {
                        self.end(WebRtcEvent::Failed(FailReason::Protocol(e.to_string())));
                    }
                }
            }
        }
    }

    fn on_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Connected if self.state == State::Connecting => {
                self.state = State::Connected;
                self.last_heard = self.last_heard.max(now);
                self.events.push_back(WebRtcEvent::Connected);
            }
            Event::RtpPacket(p) => {
                let h = &p.header;
                let pt = *h.payload_type;
                if !self.pts.contains(pt) {
                    return;
                }
                self.last_heard = self.last_heard.max(now);
                let csrcs = &h.csrc[..h.csrc_count.min(h.csrc.len())];
                let Some(packet) = rebuild_rtp(h, csrcs, &p.payload) else {
                    return;
                };
                self.stats.packets_in += 1;
                self.stats.bytes_in += packet.len() as u64;
                self.events.push_back(WebRtcEvent::Rtp(packet));
            }
            Event::Closed => self.end(WebRtcEvent::Disconnected(DisconnectReason::PeerClosed)),
            _ => {}
        }
    }

    fn end(&mut self, event: WebRtcEvent) {
        self.rtc.disconnect();
        self.state = State::Ended;
        self.events.push_back(event);
    }
}

/// A plain RTP packet from str0m's parsed header and payload.
fn rebuild_rtp(h: &str0m::rtp::RtpHeader, csrcs: &[u32], payload: &[u8]) -> Option<Bytes> {
    let mut writer = RtpWriter::new(
        PayloadType::new(*h.payload_type)?,
        SeqNo(h.sequence_number),
        RtpTimestamp(h.timestamp),
        Ssrc(*h.ssrc),
    );
    writer.marker = h.marker;
    writer.csrcs = csrcs;
    let mut buf = BytesMut::zeroed(FIXED_HEADER_LEN + 4 * csrcs.len() + payload.len());
    let n = writer.write_packet(payload, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webrtc::DtlsIdentity;
    use crate::webrtc::stun::binding_request;
    use std::time::Duration;
    use str0m::change::SdpAnswer;
    use str0m::media::{Direction, MediaKind};

    const SERVER: &str = "192.0.2.10:3478";
    const BROWSER: &str = "198.51.100.7:50000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn config() -> WebRtcConfig {
        let identity = DtlsIdentity::generate().expect("certificate");
        WebRtcConfig::new(addr(SERVER), identity, crate::webrtc::config::test_epoch())
    }

    /// The browser offers in the shared test data, by file name.
    fn browser_offers() -> Vec<(String, String)> {
        let dir = media_core::testdata::path("sdp-browser-offers");
        let mut offers: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("_sdp.txt"))
            .map(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (name, std::fs::read_to_string(&p).expect("readable"))
            })
            .collect();
        offers.sort();
        assert_eq!(offers.len(), 3, "chromium, firefox, obs");
        offers
    }

    /// The m= line of each section, in order.
    fn m_lines(sdp: &str) -> Vec<&str> {
        sdp.lines()
            .filter(|l| l.starts_with("m="))
            .map(|l| l.trim_end())
            .collect()
    }

    #[test]
    fn answers_every_browser_offer() {
        let cfg = config();
        for (name, offer) in browser_offers() {
            let (leg, answer) = WebRtcLeg::accept_offer(Instant::ZERO, &offer, &cfg)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            // str0m, as the browser side, takes it.
            SdpAnswer::from_sdp_string(&answer).unwrap_or_else(|e| panic!("{name}: {e}"));
            let session = crate::sdp::SessionDescription::parse(&answer).expect("our parser too");
            assert!(
                session.attributes.iter().any(|a| a.name == "ice-lite"),
                "{name}"
            );
            assert!(
                answer.contains("a=setup:passive"),
                "{name}: we are the DTLS server"
            );
            assert!(
                answer.contains(&format!("a=fingerprint:{}", cfg.identity.fingerprint())),
                "{name}"
            );
            assert!(answer.contains("a=candidate:"), "{name}");
            assert!(answer.contains(" 192.0.2.10 3478 typ host"), "{name}");
            assert!(
                answer.contains(&format!("a=ice-ufrag:{}", leg.local_ufrag())),
                "{name}"
            );
            let m = m_lines(&answer);
            assert_eq!(
                m.len(),
                m_lines(&offer).len(),
                "{name}: one answer section per offer section"
            );
            assert!(
                m[0].starts_with("m=audio 9 UDP/TLS/RTP/SAVPF"),
                "{name}: {m:?}"
            );
            assert!(
                m[1].starts_with("m=video 0 "),
                "{name}: video rejected: {m:?}"
            );
            let pts = leg.payload_types();
            // Both browsers' offers ask for Opus in-band FEC (RFC 7587 section 6.1).
            assert!(leg.remote_opus_fmtp().useinbandfec, "{name}");
            assert!(
                answer.contains(&format!("a=rtpmap:{} opus/48000/2", pts.opus)),
                "{name}"
            );
            let audio_pts: Vec<&str> = m[0].split(' ').skip(3).collect();
            assert!(
                audio_pts
                    .iter()
                    .all(|p| p.parse().is_ok_and(|p| pts.contains(p))),
                "{name}: only Opus and telephone-event: {m:?}"
            );
            match name.as_str() {
                n if n.contains("chromium") => {
                    assert_eq!(
                        pts,
                        PayloadTypes {
                            opus: 111,
                            telephone_event_48k: Some(110),
                            telephone_event_8k: Some(126)
                        }
                    );
                }
                n if n.contains("firefox") => {
                    // Firefox offers telephone-event only at 8 kHz, range 0-15.
                    assert_eq!(
                        pts,
                        PayloadTypes {
                            opus: 109,
                            telephone_event_48k: None,
                            telephone_event_8k: Some(101)
                        }
                    );
                    assert!(answer.contains("a=fmtp:101 0-15"), "{answer}");
                }
                _ => {
                    // OBS: Opus only, sendonly; we receive only, and announce no SSRC.
                    assert_eq!(
                        pts,
                        PayloadTypes {
                            opus: 111,
                            telephone_event_48k: None,
                            telephone_event_8k: None
                        }
                    );
                    assert!(answer.contains("a=recvonly"));
                    assert_eq!(leg.local_ssrc(), None);
                }
            }
            if !name.contains("obs") {
                let ssrc = leg.local_ssrc().expect("we send");
                assert!(answer.contains(&format!("a=ssrc:{ssrc} ")), "{name}");
                assert!(answer.contains("a=sendrecv"), "{name}");
            }
        }
    }

    /// A str0m client offering audio, video and a data channel: video and data are
    /// rejected, and the client accepts the answer.
    #[test]
    fn rejects_video_and_data_sections() {
        let cfg = config();
        let mut client = Rtc::builder().build(cfg.epoch);
        client.add_local_candidate(Candidate::host(addr(BROWSER), "udp").expect("candidate"));
        let mut change = client.sdp_api();
        change.add_channel("chat".into());
        change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        change.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().expect("an offer");
        let (_leg, answer) =
            WebRtcLeg::accept_offer(Instant::ZERO, &offer.to_sdp_string(), &cfg).expect("answered");
        let m = m_lines(&answer);
        assert!(m[0].starts_with("m=application 0 UDP/DTLS/SCTP"), "{m:?}");
        assert!(m[1].starts_with("m=audio 9 "), "{m:?}");
        assert!(m[2].starts_with("m=video 0 "), "{m:?}");
        assert!(!answer.contains("a=sctp-port"));
        let bundle = answer
            .lines()
            .find(|l| l.starts_with("a=group:BUNDLE"))
            .expect("bundle");
        assert_eq!(
            bundle.trim_end().split(' ').count(),
            2,
            "only audio bundled: {bundle}"
        );
        client
            .sdp_api()
            .accept_answer(
                pending,
                SdpAnswer::from_sdp_string(&answer).expect("parses"),
            )
            .expect("client accepts the answer");
    }

    #[test]
    fn bad_offers_are_errors_not_panics() {
        let cfg = config();
        let (_, chromium) = browser_offers().into_iter().next().expect("an offer");
        assert!(matches!(
            WebRtcLeg::accept_offer(Instant::ZERO, "", &cfg),
            Err(WebRtcError::BadOffer(_))
        ));
        let no_opus = chromium.replace("opus/48000/2", "speex/16000");
        assert!(matches!(
            WebRtcLeg::accept_offer(Instant::ZERO, &no_opus, &cfg),
            Err(WebRtcError::NoOpus)
        ));
        let no_fingerprint: String = chromium
            .lines()
            .filter(|l| !l.starts_with("a=fingerprint"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(WebRtcLeg::accept_offer(Instant::ZERO, &no_fingerprint, &cfg).is_err());
        // Every truncation of a real offer, and byte noise: never a panic.
        for cut in (0..chromium.len()).step_by(37) {
            let _ = WebRtcLeg::accept_offer(Instant::ZERO, &chromium[..cut], &cfg);
        }
        let noise: String = (0..2000u32)
            .map(|i| char::from(b' ' + (i * 7 % 90) as u8))
            .collect();
        assert!(WebRtcLeg::accept_offer(Instant::ZERO, &noise, &cfg).is_err());
    }

    fn chromium_leg(cfg: &WebRtcConfig) -> (WebRtcLeg, String) {
        let (_, offer) = browser_offers().into_iter().next().expect("chromium");
        let (leg, _answer) = WebRtcLeg::accept_offer(Instant::ZERO, &offer, cfg).expect("answered");
        let remote = leg.mux_credentials().remote_ufrag().to_string();
        (leg, remote)
    }

    /// The CVE gate: DTLS/SRTP only from an address a signed check came from.
    #[test]
    fn accepts_only_after_a_signed_check() {
        let cfg = config();
        let (mut leg, remote) = chromium_leg(&cfg);
        let creds = leg.mux_credentials();
        let browser = addr(BROWSER);
        let attacker = addr("203.0.113.66:666");
        let hello = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        let srtp = [0x80u8, 111, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9];
        assert!(
            !leg.accepts(browser, &hello),
            "no DTLS before ICE, even from the signalled address"
        );
        assert!(!leg.accepts(browser, &srtp));
        let unsigned = binding_request(creds.local_ufrag(), &remote, Some("not-the-password"));
        assert!(!leg.accepts(attacker, &unsigned));
        let other_leg = binding_request("someone-else", &remote, Some(creds.password()));
        assert!(!leg.accepts(attacker, &other_leg));

        let signed = binding_request(creds.local_ufrag(), &remote, Some(creds.password()));
        assert!(leg.accepts(browser, &signed));
        leg.handle_input(Instant::from_millis(5), browser, addr(SERVER), &signed)
            .expect("handled");
        let reply = leg.poll_transmit().expect("a binding response");
        assert_eq!(reply.to, browser);
        assert!(leg.accepts(browser, &hello), "validated now");
        assert!(!leg.accepts(attacker, &hello), "still not the attacker");

        // handle_input applies the gate itself and counts what it drops.
        let before = leg.stats();
        leg.handle_input(Instant::from_millis(6), attacker, addr(SERVER), &hello)
            .expect("dropped");
        leg.handle_input(Instant::from_millis(6), attacker, addr(SERVER), &srtp)
            .expect("dropped");
        leg.handle_input(Instant::from_millis(6), browser, addr(SERVER), &[0xff; 30])
            .expect("dropped");
        leg.handle_input(Instant::from_millis(6), browser, addr(SERVER), &[])
            .expect("dropped");
        let after = leg.stats();
        assert_eq!(after.dropped_unverified, before.dropped_unverified + 2);
        assert_eq!(after.dropped_malformed, before.dropped_malformed + 2);
        assert_eq!(after.datagrams_in, before.datagrams_in);
        assert!(leg.poll_event().is_none());
    }

    #[test]
    fn garbage_from_a_validated_address_does_not_panic() {
        let cfg = config();
        let (mut leg, remote) = chromium_leg(&cfg);
        let creds = leg.mux_credentials();
        let browser = addr(BROWSER);
        let signed = binding_request(creds.local_ufrag(), &remote, Some(creds.password()));
        leg.handle_input(Instant::from_millis(1), browser, addr(SERVER), &signed)
            .expect("ok");
        let mut rng = media_core::SeededRng::new(4733);
        for i in 0..2000u64 {
            let len = (rng.next_u32() % 300) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
            if let Some(first) = d.first_mut() {
                // Steer the first byte into the DTLS and RTP ranges.
                *first = [20u8, 22, 23, 128, 0x80, 0x90, 0xc8, 0][i as usize % 8];
            }
            let _ = leg.handle_input(Instant::from_millis(2 + i), browser, addr(SERVER), &d);
            leg.handle_timeout(Instant::from_millis(2 + i));
            while leg.poll_transmit().is_some() {}
            while let Some(ev) = leg.poll_event() {
                assert!(
                    !matches!(ev, WebRtcEvent::Rtp(_)),
                    "garbage decrypted: {ev:?}"
                );
            }
        }
    }

    #[test]
    fn a_browser_that_never_comes_fails_at_the_connect_timeout() {
        let mut cfg = config();
        cfg.connect_timeout = Duration::from_secs(10);
        let (mut leg, _) = chromium_leg(&cfg);
        let mut now = Instant::ZERO;
        let mut events = Vec::new();
        while let Some(t) = leg.poll_timeout() {
            assert!(t >= now && t <= Instant::from_millis(10_000), "{t:?}");
            now = t;
            leg.handle_timeout(now);
            events.extend(std::iter::from_fn(|| leg.poll_event()));
        }
        assert_eq!(now, Instant::from_millis(10_000));
        assert_eq!(events, [WebRtcEvent::Failed(FailReason::ConnectTimeout)]);
        assert!(leg.is_ended());
        assert!(!leg.accepts(addr(BROWSER), &[22u8; 20]));
    }

    #[test]
    fn sending_before_connected_is_dropped_and_counted() {
        let cfg = config();
        let (mut leg, _) = chromium_leg(&cfg);
        let packet = [0x80u8, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xfc];
        leg.send_rtp(Instant::ZERO, &packet)
            .expect("dropped, not an error");
        assert_eq!(leg.stats().dropped_before_connect, 1);
        assert!(leg.poll_transmit().is_none());
    }

    #[test]
    fn close_makes_the_leg_inert() {
        let cfg = config();
        let (mut leg, _) = chromium_leg(&cfg);
        leg.close();
        assert!(leg.is_ended());
        assert_eq!(leg.poll_timeout(), None);
        assert!(leg.poll_event().is_none());
        leg.handle_timeout(Instant::from_millis(20_000));
        assert!(leg.poll_event().is_none());
    }

    #[test]
    fn outbound_sequence_numbers_continue_across_sources() {
        let mut seq = OutSeq::default();
        for s in 65_530..=65_535u16 {
            assert_eq!(seq.map(1, s), Some(u64::from(s)));
        }
        assert_eq!(seq.map(1, 0), Some(65536), "wraps into ROC 1");
        // A new source continues right after the highest number sent.
        assert_eq!(seq.map(2, 40_000), Some(65537));
        assert_eq!(seq.map(2, 40_001), Some(65538));
        // A packet from before a stream's first is not sendable.
        let mut seq = OutSeq::default();
        assert_eq!(seq.map(9, 3), Some(3));
        assert_eq!(seq.map(9, 65_000), None);
    }
}
