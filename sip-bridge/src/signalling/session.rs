//! One operator WebSocket connection: the gate between raw frames and the
//! operator/call layer. It authenticates (`hello` first, within a deadline),
//! limits size and rate, watches heartbeats, answers `ping` and malformed input
//! itself, and hands every valid request of an authenticated connection up as a
//! [`Request`]. Whatever the layer above answers goes out through [`Session::send`].

use std::collections::VecDeque;
use std::time::Duration;

use media_core::Instant;

use super::close;
use super::message::{ClientMessage, ErrorCode, ServerMessage, decode};
use crate::token::{SessionClaims, TokenIssuer};

/// Connection limits and timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// `hello` must arrive within this.
    pub hello_timeout: Duration,
    /// Client ping interval announced in `ready`.
    pub heartbeat_interval: Duration,
    /// Silent intervals before the connection is closed (4008).
    pub missed_heartbeats: u32,
    /// Sustained messages per second.
    pub rate_per_sec: u32,
    /// Burst allowance.
    pub burst: u32,
    /// Rate-limited messages tolerated before closing (4029).
    pub max_strikes: u32,
    /// Largest text frame.
    pub max_message: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hello_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(15),
            missed_heartbeats: 3,
            rate_per_sec: 20,
            burst: 40,
            max_strikes: 20,
            max_message: 64 * 1024,
        }
    }
}

/// Where the connection is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Connected, not authenticated.
    AwaitingHello,
    /// Authenticated as these claims.
    Ready(Box<SessionClaims>),
    /// Closed (a close was emitted); everything is ignored.
    Closed,
}

/// What to do on the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOutput {
    /// Send this message.
    Send(ServerMessage),
    /// Close with this code and reason.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Reason text.
        reason: &'static str,
    },
}

/// A valid request of an authenticated connection, for the operator/call layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `hello` verified: answer with `ready`.
    Hello(Box<SessionClaims>),
    /// Any other message (never `hello` or `ping`).
    Message {
        /// The client's `ref`.
        reference: Option<String>,
        /// The message.
        message: ClientMessage,
    },
}

/// A token bucket in microseconds of credit.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One connection. See the module docs.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    state: SessionState,
    opened: Instant,
    last_rx: Instant,
    bucket: Bucket,
    strikes: u32,
    out: VecDeque<SessionOutput>,
}

impl Session {
    /// A connection opened at `now`.
    pub fn new(now: Instant, cfg: SessionConfig) -> Self {
        Session {
            cfg,
            state: SessionState::AwaitingHello,
            opened: now,
            last_rx: now,
            bucket: Bucket {
                tokens: f64::from(cfg.burst),
                at: now,
            },
            strikes: 0,
            out: VecDeque::new(),
        }
    }

    /// The state.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The claims, once authenticated.
    pub fn claims(&self) -> Option<&SessionClaims> {
        match &self.state {
            SessionState::Ready(c) => Some(c),
            _ => None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// A text frame arrived. `unix_now` is wall-clock seconds for token checks.
    pub fn handle_text(
        &mut self,
        now: Instant,
        unix_now: u64,
        text: &str,
        tokens: &TokenIssuer,
    ) -> Option<Request> {
        if self.state == SessionState::Closed {
            return None;
        }
        self.last_rx = now;
        if text.len() > self.cfg.max_message {
            self.close(close::TOO_BIG, "message too big");
            return None;
        }
        if !self.take_token(now) {
            self.strikes += 1;
            if self.strikes > self.cfg.max_strikes {
                self.close(close::RATE_LIMITED, "rate limited");
            } else {
                self.error(ErrorCode::RateLimited, "too many messages; slow down", None);
            }
            return None;
        }
        let env = match decode(text) {
            Ok(e) => e,
            Err(e) => {
                if self.state == SessionState::AwaitingHello {
                    self.error(
                        ErrorCode::Unauthorized,
                        "the first message must be a valid hello",
                        e.reference,
                    );
                    self.close(close::UNAUTHORIZED, "no hello");
                } else {
                    self.error(ErrorCode::BadRequest, &e.message, e.reference);
                }
                return None;
            }
        };
        let reference = env.reference;
        match (&self.state, env.message) {
            (_, ClientMessage::Ping) => {
                self.send(ServerMessage::Pong);
                None
            }
            (SessionState::AwaitingHello, ClientMessage::Hello { token, protocol }) => {
                if protocol != 1 {
                    self.error(
                        ErrorCode::BadRequest,
                        &format!("protocol {protocol} is not supported; this server speaks 1"),
                        reference,
                    );
                    self.close(close::PROTOCOL, "unsupported protocol");
                    return None;
                }
                match tokens.verify(unix_now, &token) {
                    Ok(claims) => {
                        let claims = Box::new(claims);
                        self.state = SessionState::Ready(claims.clone());
                        Some(Request::Hello(claims))
                    }
                    Err(e) => {
                        // The same words as the HTTP API's for the same token.
                        self.error(ErrorCode::Unauthorized, &e.to_string(), reference);
                        self.close(close::UNAUTHORIZED, "unauthorized");
                        None
                    }
                }
            }
            (SessionState::AwaitingHello, _) => {
                self.error(ErrorCode::Unauthorized, "send hello first", reference);
                self.close(close::UNAUTHORIZED, "no hello");
                None
            }
            (SessionState::Ready(_), ClientMessage::Hello { .. }) => {
                self.error(ErrorCode::BadRequest, "already authenticated", reference);
                None
            }
            (SessionState::Ready(_), message) => Some(Request::Message { reference, message }),
            (SessionState::Closed, _) => None,
        }
    }

    /// A binary frame arrived: not part of protocol v1.
    pub fn handle_binary(&mut self, now: Instant, len: usize) {
        if self.state == SessionState::Closed {
            return;
        }
        self.last_rx = now;
        if len > self.cfg.max_message {
            self.close(close::TOO_BIG, "message too big");
        } else {
            self.error(
                ErrorCode::BadRequest,
                "binary frames are not part of protocol v1",
                None,
            );
        }
    }

    /// Queues a message for the client (ignored once closed).
    pub fn send(&mut self, msg: ServerMessage) {
        if self.state != SessionState::Closed {
            self.out.push_back(SessionOutput::Send(msg));
        }
    }

    /// Queues an `error`.
    pub fn error(&mut self, code: ErrorCode, message: &str, reference: Option<String>) {
        self.send(ServerMessage::Error {
            code,
            message: message.into(),
            reference,
            call_id: None,
        });
    }

    /// Closes the connection (everything after is ignored).
    pub fn close(&mut self, code: u16, reason: &'static str) {
        if self.state != SessionState::Closed {
            self.out.push_back(SessionOutput::Close { code, reason });
            self.state = SessionState::Closed;
        }
    }

    /// When [`Session::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            SessionState::AwaitingHello => Some(self.opened + self.cfg.hello_timeout),
            SessionState::Ready(_) => {
                Some(self.last_rx + self.cfg.heartbeat_interval * self.cfg.missed_heartbeats)
            }
            SessionState::Closed => None,
        }
    }

    /// Closes a connection that never said hello or went silent.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            SessionState::AwaitingHello if now >= self.opened + self.cfg.hello_timeout => {
                self.error(ErrorCode::Unauthorized, "no hello in time", None);
                self.close(close::UNAUTHORIZED, "no hello");
            }
            SessionState::Ready(_)
                if now
                    >= self.last_rx + self.cfg.heartbeat_interval * self.cfg.missed_heartbeats =>
            {
                self.close(close::HEARTBEAT, "heartbeat timeout")
            }
            _ => {}
        }
    }

    /// The next thing to do on the socket.
    pub fn poll_output(&mut self) -> Option<SessionOutput> {
        self.out.pop_front()
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.bucket.at).as_secs_f64();
        self.bucket.at = now;
        self.bucket.tokens = (self.bucket.tokens + elapsed * f64::from(self.cfg.rate_per_sec))
            .min(f64::from(self.cfg.burst));
        if self.bucket.tokens >= 1.0 {
            self.bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signalling::message::EndReason;
    use crate::token::TokenGrant;

    const UNIX: u64 = 1_795_000_000;

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(b"0123456789abcdef0123456789abcdef")
    }

    fn token(t: &TokenIssuer) -> String {
        t.issue(
            UNIX,
            &TokenGrant {
                operator_ref: "alice".into(),
                display_name: "Alice".into(),
                numbers: vec!["support".into()],
                ttl_secs: None,
                capabilities: Vec::new(),
            },
        )
        .unwrap()
        .0
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn drain(s: &mut Session) -> Vec<SessionOutput> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn hello(t: &TokenIssuer) -> String {
        format!(r#"{{"type":"hello","token":"{}","protocol":1}}"#, token(t))
    }

    fn ready(t: &TokenIssuer) -> Session {
        let mut s = Session::new(at(0), SessionConfig::default());
        assert!(
            matches!(s.handle_text(at(1), UNIX, &hello(t), t), Some(Request::Hello(c)) if c.sub == "alice")
        );
        assert!(drain(&mut s).is_empty(), "the layer above answers ready");
        s
    }

    fn is_error(o: &SessionOutput, want: ErrorCode) -> bool {
        matches!(o, SessionOutput::Send(ServerMessage::Error { code, .. }) if *code == want)
    }

    #[test]
    fn every_message_before_hello_is_unauthorized_but_ping() {
        let t = issuer();
        let others = [
            r#"{"type":"online","numbers":["support"]}"#,
            r#"{"type":"offline"}"#,
            r#"{"type":"dial","to":"+1555","callerId":"support","sdp":"v=0"}"#,
            r#"{"type":"accept","callId":"c","sdp":"v=0"}"#,
            r#"{"type":"reject","callId":"c"}"#,
            r#"{"type":"hangup","callId":"c"}"#,
            r#"{"type":"mute","callId":"c","on":true}"#,
            r#"{"type":"hold","callId":"c","on":true}"#,
            r#"{"type":"dtmf","callId":"c","digits":"1"}"#,
            r#"{"type":"reoffer","callId":"c","sdp":"v=0"}"#,
            "garbage",
        ];
        for text in others {
            let mut s = Session::new(at(0), SessionConfig::default());
            assert_eq!(s.handle_text(at(1), UNIX, text, &t), None);
            let out = drain(&mut s);
            assert!(
                is_error(&out[0], ErrorCode::Unauthorized),
                "{text}: {out:?}"
            );
            assert_eq!(
                out[1],
                SessionOutput::Close {
                    code: close::UNAUTHORIZED,
                    reason: "no hello"
                },
                "{text}"
            );
            // Closed: nothing more happens.
            assert_eq!(s.handle_text(at(2), UNIX, &hello(&t), &t), None);
            assert!(drain(&mut s).is_empty());
        }
        let mut s = Session::new(at(0), SessionConfig::default());
        assert_eq!(s.handle_text(at(1), UNIX, r#"{"type":"ping"}"#, &t), None);
        assert_eq!(
            drain(&mut s),
            vec![SessionOutput::Send(ServerMessage::Pong)]
        );
        assert_eq!(s.state(), &SessionState::AwaitingHello);
    }

    #[test]
    fn bad_tokens_and_versions_close() {
        let t = issuer();
        let other = TokenIssuer::new(b"ffffffffffffffffffffffffffffffff");
        // The error's words are the token error's, as the HTTP API says them.
        for (text, now, code, words) in [
            (
                format!(
                    r#"{{"type":"hello","token":"{}","protocol":1}}"#,
                    token(&other)
                ),
                UNIX,
                close::UNAUTHORIZED,
                "bad token signature",
            ),
            (hello(&t), UNIX + 3600, close::UNAUTHORIZED, "token expired"),
            (
                r#"{"type":"hello","token":"x.y.z","protocol":1}"#.to_string(),
                UNIX,
                close::UNAUTHORIZED,
                "malformed token",
            ),
            (
                format!(r#"{{"type":"hello","token":"{}","protocol":2}}"#, token(&t)),
                UNIX,
                close::PROTOCOL,
                "",
            ),
        ] {
            let mut s = Session::new(at(0), SessionConfig::default());
            assert_eq!(s.handle_text(at(1), now, &text, &t), None);
            let out = drain(&mut s);
            assert!(
                matches!(out.last(), Some(SessionOutput::Close { code: c, .. }) if *c == code),
                "{out:?}"
            );
            assert!(format!("{out:?}").contains(words), "{out:?}");
            assert_eq!(s.state(), &SessionState::Closed);
        }
    }

    #[test]
    fn ready_connections_pass_requests_up_and_refuse_a_second_hello() {
        let t = issuer();
        let mut s = ready(&t);
        let r = s.handle_text(
            at(5),
            UNIX,
            r#"{"type":"online","numbers":["support"],"ref":"r1"}"#,
            &t,
        );
        assert_eq!(
            r,
            Some(Request::Message {
                reference: Some("r1".into()),
                message: ClientMessage::Online {
                    numbers: vec!["support".into()]
                }
            })
        );
        assert_eq!(s.handle_text(at(6), UNIX, &hello(&t), &t), None);
        assert!(is_error(&drain(&mut s)[0], ErrorCode::BadRequest));
        // Malformed input on a ready connection: BAD_REQUEST, the connection stays.
        assert_eq!(s.handle_text(at(7), UNIX, r#"{"type":"hangup"}"#, &t), None);
        assert!(is_error(&drain(&mut s)[0], ErrorCode::BadRequest));
        s.handle_binary(at(8), 10);
        assert!(is_error(&drain(&mut s)[0], ErrorCode::BadRequest));
        assert!(matches!(s.state(), SessionState::Ready(_)));
        // The layer above speaks through send().
        s.send(ServerMessage::Ended {
            call_id: "c".into(),
            reason: EndReason::Hangup,
            code: None,
            message: None,
            reference: None,
        });
        assert_eq!(drain(&mut s).len(), 1);
    }

    #[test]
    fn oversize_frames_close_1009() {
        let t = issuer();
        let mut s = ready(&t);
        let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(s.handle_text(at(2), UNIX, &big, &t), None);
        assert_eq!(
            drain(&mut s),
            vec![SessionOutput::Close {
                code: close::TOO_BIG,
                reason: "message too big"
            }]
        );
    }

    #[test]
    fn rate_limit_then_close() {
        let t = issuer();
        let mut s = ready(&t);
        let ping = r#"{"type":"ping"}"#;
        // The burst (minus the hello) passes at one instant; then errors, then a close.
        let mut pongs = 0;
        for _ in 0..39 {
            s.handle_text(at(10), UNIX, ping, &t);
        }
        for o in drain(&mut s) {
            pongs += usize::from(o == SessionOutput::Send(ServerMessage::Pong));
        }
        assert_eq!(pongs, 39);
        s.handle_text(at(10), UNIX, ping, &t);
        assert!(is_error(&drain(&mut s)[0], ErrorCode::RateLimited));
        // A second later there is credit for 20 more.
        for _ in 0..20 {
            s.handle_text(at(1010), UNIX, ping, &t);
        }
        assert!(
            drain(&mut s)
                .iter()
                .all(|o| *o == SessionOutput::Send(ServerMessage::Pong))
        );
        for _ in 0..25 {
            s.handle_text(at(1010), UNIX, ping, &t);
        }
        let out = drain(&mut s);
        assert_eq!(
            out.last(),
            Some(&SessionOutput::Close {
                code: close::RATE_LIMITED,
                reason: "rate limited"
            })
        );
    }

    #[test]
    fn hello_deadline_and_heartbeat_timeout() {
        let t = issuer();
        let mut s = Session::new(at(0), SessionConfig::default());
        assert_eq!(s.poll_timeout(), Some(at(10_000)));
        s.handle_timeout(at(9_999));
        assert!(drain(&mut s).is_empty());
        s.handle_timeout(at(10_000));
        assert_eq!(
            drain(&mut s).last(),
            Some(&SessionOutput::Close {
                code: close::UNAUTHORIZED,
                reason: "no hello"
            })
        );

        let mut s = ready(&t);
        // Pings keep it alive; 45 s (3 x 15 s) of silence closes it.
        s.handle_text(at(30_000), UNIX, r#"{"type":"ping"}"#, &t);
        drain(&mut s);
        assert_eq!(s.poll_timeout(), Some(at(75_000)));
        s.handle_timeout(at(74_999));
        assert!(drain(&mut s).is_empty());
        s.handle_timeout(at(75_000));
        assert_eq!(
            drain(&mut s),
            vec![SessionOutput::Close {
                code: close::HEARTBEAT,
                reason: "heartbeat timeout"
            }]
        );
        assert_eq!(s.poll_timeout(), None);
    }
}
