//! HTTP Digest authentication as a SIP client (RFC 3261 section 22, RFC 7616):
//! answers 401/407 challenges with MD5, MD5-sess, SHA-256 or SHA-256-sess, qop
//! `auth` (or no qop for RFC 2069-style servers), and keeps the nonce count per
//! nonce so a reused nonce is answered with an incremented `nc`.

use std::fmt::Write as _;

use md5::{Digest as _, Md5};
use media_core::SeededRng;
use sha2::Sha256;

/// Digest algorithm (RFC 7616 section 3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (the RFC 2617 default).
    Md5,
    /// MD5 with session key.
    Md5Sess,
    /// SHA-256.
    Sha256,
    /// SHA-256 with session key.
    Sha256Sess,
}

impl Algorithm {
    pub(crate) fn parse(s: &str) -> Option<Algorithm> {
        Some(match s.to_ascii_uppercase().as_str() {
            "MD5" => Algorithm::Md5,
            "MD5-SESS" => Algorithm::Md5Sess,
            "SHA-256" => Algorithm::Sha256,
            "SHA-256-SESS" => Algorithm::Sha256Sess,
            _ => return None,
        })
    }

    /// The token as written in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// Hex digest of `data`.
    pub(crate) fn hash(self, data: &str) -> String {
        let bytes: Vec<u8> = match self {
            Algorithm::Md5 | Algorithm::Md5Sess => Md5::digest(data.as_bytes()).to_vec(),
            Algorithm::Sha256 | Algorithm::Sha256Sess => Sha256::digest(data.as_bytes()).to_vec(),
        };
        let mut hex = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }

    fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }
}

/// Why a challenge cannot be answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Not a Digest challenge (e.g. Basic, or an unknown scheme: RFC 4475 regaut01).
    #[error("unsupported authentication scheme")]
    Scheme,
    /// A Digest challenge without realm or nonce, or with a bad quoted string.
    #[error("malformed digest challenge: {0}")]
    Malformed(&'static str),
    /// An algorithm we do not implement.
    #[error("unsupported digest algorithm")]
    Algorithm,
    /// qop offered, but not `auth` (auth-int is not offered by SIP servers in practice).
    #[error("unsupported qop")]
    Qop,
}

/// A parsed `WWW-Authenticate` / `Proxy-Authenticate` Digest challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Protection space.
    pub realm: String,
    /// Server nonce.
    pub nonce: String,
    /// Opaque value to echo.
    pub opaque: Option<String>,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Whether qop=auth was offered (else the RFC 2069 form is used).
    pub qop_auth: bool,
    /// `stale=true`: only the nonce was wrong, credentials are fine.
    pub stale: bool,
}

/// Splits `a=b, c="d, e"` into pairs, honouring quotes and escapes.
pub(crate) fn digest_params(s: &str) -> Result<Vec<(String, String)>, AuthError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' || c.is_whitespace() {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            out.push((name.to_ascii_lowercase(), String::new()));
            continue;
        }
        chars.next();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.push(
                        chars
                            .next()
                            .ok_or(AuthError::Malformed("dangling escape"))?,
                    ),
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(AuthError::Malformed("unterminated quoted string"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((name.to_ascii_lowercase(), value));
    }
    Ok(out)
}

impl Challenge {
    /// Parses a challenge header value (`Digest realm="..", nonce="..", ..`).
    pub fn parse(value: &str) -> Result<Challenge, AuthError> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("digest") {
            return Err(AuthError::Scheme);
        }
        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut algorithm = Algorithm::Md5;
        let mut qop = None;
        let mut stale = false;
        for (k, v) in digest_params(rest)? {
            match k.as_str() {
                "realm" => realm = Some(v),
                "nonce" => nonce = Some(v),
                "opaque" => opaque = Some(v),
                "algorithm" => algorithm = Algorithm::parse(&v).ok_or(AuthError::Algorithm)?,
                "qop" => qop = Some(v),
                "stale" => stale = v.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        let qop_auth = match qop {
            None => false,
            Some(q) if q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")) => true,
            Some(_) => return Err(AuthError::Qop),
        };
        Ok(Challenge {
            realm: realm.ok_or(AuthError::Malformed("no realm"))?,
            nonce: nonce.ok_or(AuthError::Malformed("no nonce"))?,
            opaque,
            algorithm,
            qop_auth,
            stale,
        })
    }
}

/// Username and password for one trunk.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Computes the `response` value (RFC 7616 section 3.4.1).
pub fn response(
    alg: Algorithm,
    creds: &Credentials,
    realm: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    qop: Option<(&str, u32, &str)>, // (qop, nc, cnonce)
) -> String {
    let ha1 = alg.hash(&format!("{}:{}:{}", creds.username, realm, creds.password));
    response_with_ha1(alg, &ha1, nonce, method, uri, qop)
}

/// The `response` value from a stored HA1 (a registrar keeps HA1, never the
/// password).
pub fn response_with_ha1(
    alg: Algorithm,
    ha1: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    qop: Option<(&str, u32, &str)>,
) -> String {
    let mut ha1 = ha1.to_string();
    if alg.is_sess() {
        let cnonce = qop.map_or("", |q| q.2);
        ha1 = alg.hash(&format!("{ha1}:{nonce}:{cnonce}"));
    }
    let ha2 = alg.hash(&format!("{method}:{uri}"));
    match qop {
        Some((q, nc, cnonce)) => alg.hash(&format!("{ha1}:{nonce}:{nc:08x}:{cnonce}:{q}:{ha2}")),
        None => alg.hash(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// Answers challenges for one set of credentials, tracking the nonce count.
#[derive(Clone, Debug)]
pub struct DigestClient {
    creds: Credentials,
    rng: SeededRng,
    /// (realm, nonce, last nc) per realm.
    nonces: Vec<(String, String, u32)>,
}

impl DigestClient {
    /// A client for `creds`; `seed` makes the cnonces (tests fix it, the SBC seeds
    /// it from the OS).
    pub fn new(creds: Credentials, seed: u64) -> Self {
        DigestClient {
            creds,
            rng: SeededRng::new(seed),
            nonces: Vec::new(),
        }
    }

    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// The `Authorization` / `Proxy-Authorization` value answering `challenge`
    /// for a request `method` to `uri`.
    pub fn authorize(&mut self, challenge: &Challenge, method: &str, uri: &str) -> String {
        let nc = match self
            .nonces
            .iter_mut()
            .find(|(r, _, _)| *r == challenge.realm)
        {
            Some(entry) if entry.1 == challenge.nonce => {
                entry.2 += 1;
                entry.2
            }
            Some(entry) => {
                entry.1 = challenge.nonce.clone();
                entry.2 = 1;
                1
            }
            None => {
                if self.nonces.len() >= 16 {
                    self.nonces.remove(0);
                }
                self.nonces
                    .push((challenge.realm.clone(), challenge.nonce.clone(), 1));
                1
            }
        };
        let cnonce = format!("{:016x}", self.rng.next_u64());
        let qop = challenge.qop_auth.then_some(("auth", nc, cnonce.as_str()));
        let resp = response(
            challenge.algorithm,
            &self.creds,
            &challenge.realm,
            &challenge.nonce,
            method,
            uri,
            qop,
        );
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut v = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{}\", algorithm={}",
            q(&self.creds.username),
            q(&challenge.realm),
            q(&challenge.nonce),
            q(uri),
            resp,
            challenge.algorithm.as_str()
        );
        if let Some((qop, nc, cnonce)) = qop {
            let _ = write!(v, ", qop={qop}, nc={nc:08x}, cnonce=\"{cnonce}\"");
        }
        if let Some(o) = &challenge.opaque {
            let _ = write!(v, ", opaque=\"{}\"", q(o));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mufasa(password: &str) -> Credentials {
        Credentials {
            username: "Mufasa".into(),
            password: password.into(),
        }
    }

    #[test]
    fn rfc_2617_example() {
        // RFC 2617 section 3.5.
        let r = response(
            Algorithm::Md5,
            &mufasa("Circle Of Life"),
            "testrealm@host.com",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "GET",
            "/dir/index.html",
            Some(("auth", 1, "0a4f113b")),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc_7616_examples_md5_and_sha256() {
        // RFC 7616 section 3.9.1.
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let args = |alg| {
            response(
                alg,
                &mufasa("Circle of Life"),
                "http-auth@example.org",
                nonce,
                "GET",
                "/dir/index.html",
                Some(("auth", 1, cnonce)),
            )
        };
        assert_eq!(args(Algorithm::Md5), "8ca523f5e9506fed4657c9700eebdbec");
        assert_eq!(
            args(Algorithm::Sha256),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn parses_challenges_and_rejects_the_rest() {
        let c = Challenge::parse(r#"Digest realm="atlanta.example.com", qop="auth,auth-int", nonce="ea9c8e88df84f1cec4341ae6cbe5a359", opaque="", stale=FALSE, algorithm=MD5"#).unwrap();
        assert_eq!(c.realm, "atlanta.example.com");
        assert!(c.qop_auth && !c.stale);
        assert_eq!(c.opaque.as_deref(), Some(""));
        let c =
            Challenge::parse("digest realm=\"a\\\"b\",nonce=n1,algorithm=SHA-256-sess,stale=true")
                .unwrap();
        assert_eq!(
            (c.realm.as_str(), c.algorithm, c.stale, c.qop_auth),
            ("a\"b", Algorithm::Sha256Sess, true, false)
        );
        assert_eq!(
            Challenge::parse("Basic realm=\"x\""),
            Err(AuthError::Scheme)
        );
        // RFC 4475 regaut01: an unknown scheme.
        assert_eq!(
            Challenge::parse("NoOneKnowsThisScheme opaque-data=here"),
            Err(AuthError::Scheme)
        );
        assert_eq!(
            Challenge::parse("Digest realm=\"x\""),
            Err(AuthError::Malformed("no nonce"))
        );
        assert_eq!(
            Challenge::parse("Digest realm=\"x, nonce=y"),
            Err(AuthError::Malformed("unterminated quoted string"))
        );
        assert_eq!(
            Challenge::parse("Digest realm=x, nonce=y, algorithm=SHA-512"),
            Err(AuthError::Algorithm)
        );
        assert_eq!(
            Challenge::parse("Digest realm=x, nonce=y, qop=\"auth-int\""),
            Err(AuthError::Qop)
        );
    }

    #[test]
    fn authorization_counts_nonce_uses_and_verifies() {
        let mut client = DigestClient::new(mufasa("secret"), 7);
        let ch = Challenge::parse(r#"Digest realm="sip.example", nonce="abc", qop="auth", opaque="xyz", algorithm=SHA-256"#).unwrap();
        let first = client.authorize(&ch, "INVITE", "sip:+15550100@sip.example");
        assert!(
            first.contains("nc=00000001")
                && first.contains("algorithm=SHA-256")
                && first.contains("opaque=\"xyz\"")
        );
        let second = client.authorize(&ch, "INVITE", "sip:+15550100@sip.example");
        assert!(second.contains("nc=00000002"));
        // A server can verify: recompute from the sent parameters.
        let p: Vec<(String, String)> = digest_params(second.trim_start_matches("Digest ")).unwrap();
        let get = |k: &str| {
            p.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        let expect = response(
            Algorithm::Sha256,
            &mufasa("secret"),
            "sip.example",
            "abc",
            "INVITE",
            get("uri"),
            Some(("auth", 2, get("cnonce"))),
        );
        assert_eq!(get("response"), expect);
        // A new nonce restarts the count; no qop gives the RFC 2069 form.
        let ch2 = Challenge::parse(r#"Digest realm="sip.example", nonce="def""#).unwrap();
        let v = client.authorize(&ch2, "REGISTER", "sip:sip.example");
        assert!(!v.contains("nc=") && !v.contains("qop"));
        assert!(!format!("{:?}", client.credentials()).contains("secret"));
    }
}
