//! Signing what the SBC sends to a customer's backend (call-event webhooks, the
//! routing webhook): HMAC-SHA256 over a timestamp and the body, so the receiver
//! can trust it and refuse replays.

use hmac::{KeyInit, Mac};

/// `sha256=<hex>` of HMAC-SHA256(secret, `timestamp.body`): what a receiver
/// recomputes to trust a webhook (the timestamp stops replays).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hmac_hex(secret, &[timestamp.to_string().as_bytes(), b".", body])
    )
}

/// A JSON POST of `body` to `url`, signed with `secret` when there is one
/// (`X-Sbc-Timestamp`: `ts`, Unix seconds; `X-Sbc-Signature`): every request
/// to a customer's backend.
pub fn signed_post(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&[u8]>,
    ts: u64,
    body: String,
) -> reqwest::RequestBuilder {
    let mut req = client.post(url).header("content-type", "application/json");
    if let Some(secret) = secret {
        req = req
            .header("x-sbc-timestamp", ts.to_string())
            .header("x-sbc-signature", signature(secret, ts, body.as_bytes()));
    }
    req.body(body)
}

/// A customer's backend that answers what the SBC asks (the routing
/// webhook, phone accounts): one URL, POSTs signed with `secret`, each
/// given at most `timeout` to be sent and answered.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Where requests go.
    pub url: String,
    secret: Vec<u8>,
    /// How long a request and its answer may take.
    pub timeout: std::time::Duration,
    client: reqwest::Client,
}

/// Why a backend gave no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AskError {
    /// None within the timeout.
    Timeout,
    /// Not reachable, or the connection broke.
    Request(String),
}

impl Backend {
    /// A backend at `url`.
    pub fn new(url: String, secret: Vec<u8>, timeout: std::time::Duration) -> Self {
        Backend {
            url,
            secret,
            timeout,
            client: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
        }
    }

    /// POSTs `body` (stamped `ts`, Unix seconds): the status and body.
    pub async fn ask(&self, ts: u64, body: String) -> Result<(u16, bytes::Bytes), AskError> {
        let send = signed_post(&self.client, &self.url, Some(&self.secret), ts, body).send();
        let r = match tokio::time::timeout(self.timeout, send).await {
            Err(_) => return Err(AskError::Timeout),
            Ok(Err(e)) if e.is_timeout() => return Err(AskError::Timeout),
            Ok(Err(e)) => return Err(AskError::Request(e.to_string())),
            Ok(Ok(r)) => r,
        };
        let status = r.status().as_u16();
        let body = tokio::time::timeout(self.timeout, r.bytes())
            .await
            .map_err(|_| AskError::Timeout)?
            .map_err(|e| AskError::Request(e.to_string()))?;
        Ok((status, body))
    }
}

/// Hex HMAC-SHA256 of the concatenated `parts`.
pub fn hmac_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // RFC 4231 section 4.3 (test case 2).
        assert_eq!(
            hmac_hex(b"Jefe", &[b"what do ya want", b" for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            signature(b"k", 1700000000, b"{}"),
            format!("sha256={}", hmac_hex(b"k", &[b"1700000000.{}"]))
        );
        assert_ne!(
            signature(b"k", 1, b"x"),
            signature(b"k", 2, b"x"),
            "the timestamp is signed"
        );
    }
}
