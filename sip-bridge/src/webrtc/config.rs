//! What every leg of a process shares: the public candidate, the DTLS identity, the
//! clock epoch and the timeouts.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use media_core::Instant;
use sha2::{Digest, Sha256};
use str0m::config::DtlsCert;

use super::WebRtcError;

/// The DTLS certificate and key every leg presents (ECDSA P-256, self-signed, valid
/// one year). Made once per process: browsers only check it against the
/// `a=fingerprint` of the answer ([RFC 8122]), so one identity can serve all legs.
///
/// [RFC 8122]: https://www.rfc-editor.org/rfc/rfc8122#section-5
#[derive(Clone)]
pub struct DtlsIdentity {
    cert: Arc<DtlsCert>,
    fingerprint: Arc<str>,
}

impl DtlsIdentity {
    /// A fresh identity. The only call here that reads the wall clock (inside the
    /// certificate generator, for the validity period): do it at startup and again
    /// before a year has passed.
    pub fn generate() -> Result<Self, WebRtcError> {
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .ok_or(WebRtcError::Certificate)?;
        Ok(Self::from_cert(cert))
    }

    fn from_cert(cert: DtlsCert) -> Self {
        let digest = Sha256::digest(&cert.certificate);
        let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
        DtlsIdentity {
            cert: Arc::new(cert),
            fingerprint: format!("sha-256 {}", hex.join(":")).into(),
        }
    }

    /// The value of `a=fingerprint` in every answer, e.g. `sha-256 AB:CD:...`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn cert(&self) -> DtlsCert {
        DtlsCert::clone(&self.cert)
    }
}

impl fmt::Debug for DtlsIdentity {
    // Never print the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Settings for every browser leg of a process.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WebRtcConfig {
    /// The shared UDP port as browsers reach it: our only ICE candidate. Behind 1:1
    /// NAT this is the public address, not the bind address.
    pub public_addr: SocketAddr,
    /// The DTLS identity all legs share.
    pub identity: DtlsIdentity,
    /// The `std::time::Instant` that `media_core::Instant::ZERO` stands for.
    pub epoch: std::time::Instant,
    /// A leg that is not connected this long after its answer fails: the browser
    /// never came (blocked UDP, closed tab).
    pub connect_timeout: Duration,
    /// A connected leg that hears no authenticated STUN and no RTP for this long is
    /// disconnected. Browsers send a consent check at least every 5 s
    /// ([RFC 7675 section 5.1]) even when muted, so 15 s means three missed checks.
    ///
    /// [RFC 7675 section 5.1]: https://www.rfc-editor.org/rfc/rfc7675#section-5.1
    pub idle_timeout: Duration,
}

impl WebRtcConfig {
    /// Defaults: 10 s to connect, 15 s of silence to disconnect.
    pub fn new(public_addr: SocketAddr, identity: DtlsIdentity, epoch: std::time::Instant) -> Self {
        WebRtcConfig {
            public_addr,
            identity,
            epoch,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
        }
    }

    /// `now` on the std clock str0m uses. Clamped to a century past the epoch so
    /// hostile or buggy times cannot overflow.
    pub(crate) fn to_std(&self, now: Instant) -> std::time::Instant {
        let micros = now.as_micros().min(FAR_FUTURE.as_micros() as u64);
        self.epoch
            .checked_add(Duration::from_micros(micros))
            .unwrap_or(self.epoch)
    }

    /// A str0m deadline on our clock; `None` for "never" (str0m says so with a
    /// time a century ahead).
    pub(crate) fn ours_from_std(&self, t: std::time::Instant) -> Option<Instant> {
        if t.saturating_duration_since(self.epoch) >= FAR_FUTURE {
            return None;
        }
        Some(deadline_from_std(self.epoch, t))
    }
}

/// A str0m deadline `t` on the clock that starts at `epoch` (saturating),
/// rounded up to the microsecond: rounded down, a deadline with nanoseconds
/// would be handed back before it is due, str0m would do nothing and ask for
/// the same instant again, and a virtual clock would never move past it. For
/// every driver of an `Rtc`, ours and the test browsers'.
pub fn deadline_from_std(epoch: std::time::Instant, t: std::time::Instant) -> Instant {
    let micros = t.saturating_duration_since(epoch).as_nanos().div_ceil(1000);
    Instant::from_micros(micros.min(u128::from(u64::MAX)) as u64)
}

/// Beyond this, a deadline means "never" (str0m's is 100 years ahead).
const FAR_FUTURE: Duration = Duration::from_secs(50 * 365 * 24 * 3600);

/// The unit tests' one clock read: str0m counts in `std::time::Instant`, so
/// virtual time needs a real instant to hang from; its value never matters.
#[cfg(test)]
pub(crate) fn test_epoch() -> std::time::Instant {
    #[allow(clippy::disallowed_methods)]
    std::time::Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_fingerprint_matches_str0m() {
        let id = DtlsIdentity::generate().expect("cert");
        let rtc = str0m::Rtc::builder()
            .set_dtls_cert(id.cert())
            .build(epoch());
        let mut rtc = rtc;
        let theirs = rtc.direct_api().local_dtls_fingerprint().to_string();
        assert_eq!(theirs, id.fingerprint());
        assert!(!format!("{id:?}").contains("private"));
    }

    #[test]
    fn time_maps_both_ways_and_saturates() {
        let id = DtlsIdentity::generate().expect("cert");
        let cfg = WebRtcConfig::new("192.0.2.1:3478".parse().unwrap(), id, epoch());
        let t = Instant::from_millis(1234);
        assert_eq!(cfg.ours_from_std(cfg.to_std(t)), Some(t));
        assert_eq!(cfg.ours_from_std(cfg.epoch), Some(Instant::ZERO));
        // Far future is "never", and huge inputs do not overflow.
        let far = cfg.to_std(Instant::from_micros(u64::MAX));
        assert_eq!(cfg.ours_from_std(far), None);
    }

    #[test]
    fn a_deadline_between_microseconds_is_not_handed_back_early() {
        let id = DtlsIdentity::generate().expect("cert");
        let cfg = WebRtcConfig::new("192.0.2.1:3478".parse().unwrap(), id, epoch());
        let deadline = cfg.epoch + Duration::from_nanos(1_206_015_400);
        let ours = cfg.ours_from_std(deadline).unwrap();
        assert_eq!(ours, Instant::from_micros(1_206_016));
        assert!(cfg.to_std(ours) >= deadline);
    }

    use super::test_epoch as epoch;
}
