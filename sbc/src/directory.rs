//! Phone accounts the config does not list, asked of the customer's backend:
//! the [`PhoneDirectory`] trait (an embedding service answers in-process) and
//! [`HttpDirectory`], which POSTs to `[registrar] accounts_url` (signed like
//! webhooks). The registrar asks once per username per `accounts_ttl`, found
//! or not, while the phone's REGISTER (or INVITE) waits.
//!
//! Request: `{"username": "carol-desk", "realm": "sbc"}`. Answers:
//! * 200 `{"operator": "carol", "numbers": ["support"], "ha1Md5": "<32 hex>",
//!   "ha1Sha256": "<64 hex>"}`: the account (HA1s of
//!   `username:realm:password`; the password never travels);
//! * 404: no such account (refused like a wrong password);
//! * anything else, a timeout or a bad body: unavailable; the phone gets 503
//!   with `Retry-After` and nothing counts against it.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sip_bridge::registrar::{Lookup, PhoneAccount};

use crate::clock::Clock;
use crate::router::BoxFuture;
use crate::sign::Backend;

/// Who a phone account is, asked by username.
pub trait PhoneDirectory: Send + Sync + 'static {
    /// The account `username` in `realm`, none, or unavailable.
    fn lookup(&self, username: String, realm: String) -> BoxFuture<Lookup>;
}

/// Asks an HTTP endpoint; see the module docs.
#[derive(Debug, Clone)]
pub struct HttpDirectory(Backend);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAccount {
    operator: String,
    #[serde(default)]
    numbers: Vec<String>,
    ha1_md5: String,
    ha1_sha256: String,
}

/// Reads a 200's body: the account, or why it is not one.
pub fn parse_account(username: &str, body: &[u8]) -> Result<PhoneAccount, String> {
    let a: WireAccount = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&a.ha1_md5, 32) || !hex(&a.ha1_sha256, 64) {
        return Err("ha1Md5 must be 32 hex digits, ha1Sha256 64".into());
    }
    if a.operator.is_empty() || a.operator.len() > 64 || a.numbers.len() > 64 {
        return Err("operator must be 1-64 characters, numbers at most 64".into());
    }
    Ok(PhoneAccount {
        username: username.to_string(),
        operator: a.operator,
        ha1_md5: a.ha1_md5.to_ascii_lowercase(),
        ha1_sha256: a.ha1_sha256.to_ascii_lowercase(),
        numbers: a.numbers,
    })
}

impl HttpDirectory {
    /// A directory POSTing to `url`, signing with `secret`, waiting at most
    /// `timeout`.
    pub fn new(url: String, secret: Vec<u8>, timeout: Duration) -> Self {
        HttpDirectory(Backend::new(url, secret, timeout))
    }

    async fn ask(&self, username: &str, realm: &str) -> Result<Lookup, String> {
        let body = serde_json::json!({"username": username, "realm": realm}).to_string();
        let (status, body) = self
            .0
            .ask(Clock::unix_secs(), body)
            .await
            .map_err(|e| format!("{e:?}"))?;
        match status {
            404 => Ok(Lookup::NotFound),
            200..=299 => parse_account(username, &body).map(Lookup::Found),
            s => Err(format!("status {s}")),
        }
    }
}

impl PhoneDirectory for HttpDirectory {
    fn lookup(&self, username: String, realm: String) -> BoxFuture<Lookup> {
        let me = self.clone();
        Box::pin(async move {
            match me.ask(&username, &realm).await {
                Ok(l) => {
                    let found = if matches!(l, Lookup::Found(_)) {
                        "found"
                    } else {
                        "not_found"
                    };
                    metrics::counter!("sbc_registrar_lookups_total", "result" => found)
                        .increment(1);
                    l
                }
                Err(e) => {
                    metrics::counter!("sbc_registrar_lookups_total", "result" => "unavailable")
                        .increment(1);
                    tracing::warn!(%username, url = %me.0.url, error = %e, "phone account lookup failed");
                    Lookup::Unavailable
                }
            }
        })
    }
}

/// A directory from the config, if it names one.
pub fn from_config(url: Option<(String, Vec<u8>, Duration)>) -> Option<Arc<dyn PhoneDirectory>> {
    url.map(|(u, s, t)| Arc::new(HttpDirectory::new(u, s, t)) as Arc<dyn PhoneDirectory>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_an_account_only_with_hex_ha1s_of_the_right_lengths() {
        let good = format!(
            r#"{{"operator": "carol", "numbers": ["support"], "ha1Md5": "{}", "ha1Sha256": "{}"}}"#,
            "A".repeat(32),
            "b".repeat(64)
        );
        let a = parse_account("carol-desk", good.as_bytes()).unwrap();
        assert_eq!(
            (a.username.as_str(), a.operator.as_str()),
            ("carol-desk", "carol")
        );
        assert_eq!(a.ha1_md5, "a".repeat(32), "kept in lower case");
        for bad in [
            r#"{"operator": "carol", "ha1Md5": "xyz", "ha1Sha256": "00"}"#.to_string(),
            good.replace("\"carol\"", "\"\""),
            "not json".into(),
            r#"{"operator": "carol"}"#.into(),
        ] {
            assert!(
                parse_account("carol-desk", bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }
}
