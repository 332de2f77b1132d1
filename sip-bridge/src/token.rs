//! Session tokens and API keys (see `sbc/docs/protocol.md` section 1).
//!
//! A customer's backend holds an API key; with it, it asks for a short-lived
//! session token for one operator and gives only the token to the browser. Tokens
//! are JWTs (RFC 7519) signed with HS256. API keys are kept as SHA-256 hashes and
//! compared in constant time, so neither the config nor a timing side channel
//! gives them away.
//!
//! Time is injected: `now` is Unix seconds from the driver. The JWT library's own
//! clock checks are switched off and done here.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Default token lifetime.
pub const DEFAULT_TTL_SECS: u64 = 3600;
/// Longest token lifetime.
pub const MAX_TTL_SECS: u64 = 86_400;
/// Clock skew tolerated on `nbf` (the issuer and the verifier may be two hosts).
const LEEWAY_SECS: u64 = 5;
const ISSUER: &str = "sbc";
const AUDIENCE: &str = "operator";

/// Why a token or token request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a JWT, or not ours in shape.
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify (wrong key, or altered).
    #[error("bad token signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// Another issuer, audience or algorithm.
    #[error("token not for this service")]
    WrongAudience,
    /// The request names a number the token or key does not allow.
    #[error("number not allowed: {0}")]
    ForbiddenNumber(String),
    /// An operatorRef outside `[A-Za-z0-9._@-]{1,64}`.
    #[error("bad operatorRef")]
    BadOperatorRef,
    /// A display name over 128 characters or with control characters.
    #[error("bad displayName")]
    BadDisplayName,
    /// `ttl` of zero or over the maximum.
    #[error("ttl must be 1..={MAX_TTL_SECS} seconds")]
    BadTtl,
    /// A capability that is not one of [`CAPABILITIES`].
    #[error("unknown capability (known: monitor)")]
    BadCapability,
}

/// The claims of a session token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The operator (`operatorRef`).
    pub sub: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Number ids the operator may use.
    pub nums: Vec<String>,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Expires.
    pub exp: u64,
    /// Issuer (`sbc`).
    pub iss: String,
    /// Audience (`operator`).
    pub aud: String,
    /// Rights beyond taking and placing calls (`monitor`: supervise others' calls).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
}

impl SessionClaims {
    /// Whether the token allows number id `id`.
    pub fn allows(&self, id: &str) -> bool {
        self.nums.iter().any(|n| n == id)
    }
}

/// What a token is asked for (the body of `POST /v1/tokens`, numbers resolved to ids).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    /// Operator id.
    pub operator_ref: String,
    /// Display name.
    pub display_name: String,
    /// Number ids.
    pub numbers: Vec<String>,
    /// Lifetime; `None` for the default.
    pub ttl_secs: Option<u64>,
    /// Rights beyond taking and placing calls: [`CAPABILITIES`].
    pub capabilities: Vec<String>,
}

/// The rights a token may carry: `monitor` (listen to, whisper in and barge
/// into other operators' calls on the token's numbers).
pub const CAPABILITIES: [&str; 1] = ["monitor"];

/// Issues and verifies session tokens with one HS256 secret.
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer").finish_non_exhaustive() // never the secret
    }
}

fn valid_ref(r: &str) -> bool {
    (1..=64).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

impl TokenIssuer {
    /// An issuer with `secret` (at least 32 random bytes in production).
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Clock checks are ours (injected time); shape checks stay on.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "nbf", "sub", "iss", "aud"]);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        TokenIssuer {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Signs a token for `grant` at `now` (Unix seconds). Returns it and its expiry.
    pub fn issue(&self, now: u64, grant: &TokenGrant) -> Result<(String, u64), TokenError> {
        if !valid_ref(&grant.operator_ref) {
            return Err(TokenError::BadOperatorRef);
        }
        if grant.display_name.chars().count() > 128
            || grant.display_name.chars().any(char::is_control)
        {
            return Err(TokenError::BadDisplayName);
        }
        if grant
            .capabilities
            .iter()
            .any(|c| !CAPABILITIES.contains(&c.as_str()))
        {
            return Err(TokenError::BadCapability);
        }
        let ttl = grant.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
        if ttl == 0 || ttl > MAX_TTL_SECS {
            return Err(TokenError::BadTtl);
        }
        let claims = SessionClaims {
            sub: grant.operator_ref.clone(),
            name: grant.display_name.clone(),
            nums: grant.numbers.clone(),
            iat: now,
            nbf: now,
            exp: now + ttl,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            caps: grant.capabilities.clone(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Malformed)?;
        Ok((token, claims.exp))
    }

    /// Verifies `token` at `now` (Unix seconds).
    pub fn verify(&self, now: u64, token: &str) -> Result<SessionClaims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.len() > 8192 {
            return Err(TokenError::Malformed);
        }
        let data = jsonwebtoken::decode::<SessionClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience | ErrorKind::InvalidAlgorithm => {
                TokenError::WrongAudience
            }
            _ => TokenError::Malformed,
        })?;
        let c = data.claims;
        if now >= c.exp {
            return Err(TokenError::Expired);
        }
        if c.nbf > now + LEEWAY_SECS {
            return Err(TokenError::NotYetValid);
        }
        if !valid_ref(&c.sub) {
            return Err(TokenError::Malformed);
        }
        Ok(c)
    }
}

/// SHA-256 of an API key, hex: what the config stores.
pub fn hash_api_key(key: &str) -> String {
    to_hex(&Sha256::digest(key.as_bytes()))
}

/// Lower-case hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from 64 hex digits (a SHA-256, an HMAC-SHA256).
pub(crate) fn hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One configured API key (by hash) and what it may grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// A name for logs (never the key).
    pub name: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// Number ids its tokens may carry; empty means all numbers.
    pub numbers: Vec<String>,
}

impl ApiKey {
    /// Parses a hex SHA-256 hash as written in the config.
    pub fn from_hex(name: &str, hex: &str, numbers: Vec<String>) -> Option<ApiKey> {
        let sha256 = hex32(hex.trim())?;
        Some(ApiKey {
            name: name.into(),
            sha256,
            numbers,
        })
    }
}

/// The configured API keys.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys(Vec<ApiKey>);

impl ApiKeys {
    /// From configured entries.
    pub fn new(keys: Vec<ApiKey>) -> Self {
        ApiKeys(keys)
    }

    /// The entry a presented key matches. Every stored hash is compared in
    /// constant time, whatever matches, so timing tells nothing.
    pub fn check(&self, presented: &str) -> Option<&ApiKey> {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for k in &self.0 {
            let diff = k
                .sha256
                .iter()
                .zip(h.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(k);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_000_000;

    fn grant() -> TokenGrant {
        TokenGrant {
            operator_ref: "alice".into(),
            display_name: "Alice Martin".into(),
            numbers: vec!["support".into()],
            ttl_secs: None,
            capabilities: Vec::new(),
        }
    }

    #[test]
    fn issues_and_verifies() {
        let t = TokenIssuer::new(b"0123456789abcdef0123456789abcdef");
        let (tok, exp) = t.issue(NOW, &grant()).unwrap();
        assert_eq!(exp, NOW + DEFAULT_TTL_SECS);
        let c = t.verify(NOW + 10, &tok).unwrap();
        assert_eq!((c.sub.as_str(), c.name.as_str()), ("alice", "Alice Martin"));
        assert!(c.allows("support") && !c.allows("sales"));
    }

    #[test]
    fn every_rejection() {
        let t = TokenIssuer::new(b"0123456789abcdef0123456789abcdef");
        let other = TokenIssuer::new(b"another secret of thirty-two b..");
        let (tok, exp) = t.issue(NOW, &grant()).unwrap();
        // Expired: at exp and after.
        assert_eq!(t.verify(exp, &tok), Err(TokenError::Expired));
        assert_eq!(t.verify(exp + 1000, &tok), Err(TokenError::Expired));
        // Not yet valid: issued "in the future" beyond the leeway.
        let (future, _) = t.issue(NOW + 100, &grant()).unwrap();
        assert_eq!(t.verify(NOW, &future), Err(TokenError::NotYetValid));
        assert!(t.verify(NOW + 96, &future).is_ok(), "within the leeway");
        // Badly signed: another key, or a payload altered.
        assert_eq!(other.verify(NOW, &tok), Err(TokenError::BadSignature));
        let mut parts: Vec<String> = tok.split('.').map(String::from).collect();
        let forged = {
            use base64::Engine;
            let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let mut claims: serde_json::Value =
                serde_json::from_slice(&e.decode(&parts[1]).unwrap()).unwrap();
            claims["nums"] = serde_json::json!(["support", "sales"]);
            e.encode(serde_json::to_vec(&claims).unwrap())
        };
        parts[1] = forged;
        assert_eq!(
            t.verify(NOW, &parts.join(".")),
            Err(TokenError::BadSignature)
        );
        // Malformed.
        for bad in ["", "abc", "a.b.c", &"x".repeat(9000)] {
            assert_eq!(t.verify(NOW, bad), Err(TokenError::Malformed), "{bad:.20}");
        }
        // alg=none and other audiences.
        let none = {
            use base64::Engine;
            let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "{}.{}.",
                e.encode(br#"{"alg":"none","typ":"JWT"}"#),
                tok.split('.').nth(1).unwrap()
            )
        };
        assert!(t.verify(NOW, &none).is_err());
        let wrong_aud = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub":"alice","nums":[],"iat":NOW,"nbf":NOW,"exp":NOW+60,"iss":"sbc","aud":"admin"}),
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        assert_eq!(t.verify(NOW, &wrong_aud), Err(TokenError::WrongAudience));
    }

    #[test]
    fn grant_checks() {
        let t = TokenIssuer::new(b"k");
        let mut g = grant();
        g.ttl_secs = Some(MAX_TTL_SECS + 1);
        assert_eq!(t.issue(NOW, &g), Err(TokenError::BadTtl));
        g.ttl_secs = Some(0);
        assert_eq!(t.issue(NOW, &g), Err(TokenError::BadTtl));
        g.ttl_secs = Some(MAX_TTL_SECS);
        assert!(t.issue(NOW, &g).is_ok());
        for r in ["", "a b", "x/y", &"a".repeat(65)] {
            g.operator_ref = r.into();
            assert_eq!(t.issue(NOW, &g), Err(TokenError::BadOperatorRef), "{r}");
        }
        g.operator_ref = "ok".into();
        g.display_name = "bell\u{7}".into();
        assert_eq!(t.issue(NOW, &g), Err(TokenError::BadDisplayName));
    }

    #[test]
    fn api_keys_by_hash() {
        let hash = hash_api_key("demo-key");
        assert_eq!(hash.len(), 64);
        let keys = ApiKeys::new(vec![ApiKey::from_hex("demo", &hash, vec![]).unwrap()]);
        assert_eq!(
            keys.check("demo-key").map(|k| k.name.as_str()),
            Some("demo")
        );
        assert!(keys.check("demo-key ").is_none());
        assert!(keys.check("").is_none());
        assert!(ApiKey::from_hex("x", "zz", vec![]).is_none());
        assert!(ApiKey::from_hex("x", &"g".repeat(64), vec![]).is_none());
    }
}
