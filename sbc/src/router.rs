//! Per-call routing decided outside the static config: the [`Router`] trait (an
//! embedding service implements it in-process), and [`HttpRouter`], which asks the
//! customer's backend over HTTP (body signed like webhooks) and falls back to the
//! static plan on a timeout, a non-2xx answer or bad JSON.
//!
//! Request (POST, `application/json`):
//! ```json
//! {"callId": "c-12", "direction": "inbound", "from": "+15550111", "to": "+15550100",
//!  "number": "support", "trunk": "carrier", "operator": null,
//!  "headers": {"P-Asserted-Identity": "<sip:+15550111@carrier.example>"},
//!  "defaultPlan": [{"ring": ["operators"], "timeout": "30s"}]}
//! ```
//! Answers: `{"dial": [{"ring": ["operators"], "timeout": "15s"}, {"ring": ["pstn:+15550111"]}]}`,
//! `{"reject": 486}`, or `{}` for the static plan.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Deserialize;
use sip_bridge::bridge::{
    DialPlan, Join, Ringback, RouteDecision, RouteFacts, Step, Target, parse_duration,
};

use crate::clock::Clock;
use crate::sign::{AskError, Backend};

/// A boxed future, for the object-safe trait.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Decides each call's dial plan. Called once per call, before anything rings.
pub trait Router: Send + Sync + 'static {
    /// The plan for a call (or `Default` for the static one, or a rejection).
    fn route(&self, facts: RouteFacts) -> BoxFuture<RouteDecision>;
}

/// Why an HTTP router answer was not used (for logs and metrics).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Not reachable.
    #[error("request failed: {0}")]
    Request(String),
    /// A non-2xx status.
    #[error("status {0}")]
    Status(u16),
    /// A body we cannot read.
    #[error("bad answer: {0}")]
    BadJson(String),
}

impl RouterError {
    fn kind(&self) -> &'static str {
        match self {
            RouterError::Timeout(_) => "timeout",
            RouterError::Request(_) => "request",
            RouterError::Status(_) => "status",
            RouterError::BadJson(_) => "json",
        }
    }
}

/// JSON of a dial plan (the config's `dial` shape).
pub fn plan_json(plan: &DialPlan) -> serde_json::Value {
    serde_json::Value::Array(
        plan.steps
            .iter()
            .map(|s| serde_json::json!({"ring": s.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>(), "timeout": format!("{}s", s.timeout.as_secs()), "join": s.join.as_str()}))
            .collect(),
    )
}

/// The request body for `facts`.
pub fn facts_json(facts: &RouteFacts) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = facts
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "callId": facts.call_id.to_string(),
        "direction": facts.direction.as_str(),
        "from": facts.from,
        "to": facts.to,
        "number": facts.number,
        "trunk": facts.trunk,
        "operator": facts.operator,
        "headers": headers,
        "defaultPlan": plan_json(&facts.default_plan),
        "transfer": facts.transfer,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireStep {
    ring: Vec<String>,
    #[serde(default)]
    timeout: Option<String>,
    /// `first` (default) or `all`.
    #[serde(default)]
    join: Option<String>,
    /// Record the call once this step answers.
    #[serde(default)]
    record: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireAnswer {
    #[serde(default)]
    dial: Option<Vec<WireStep>>,
    #[serde(default)]
    reject: Option<u16>,
    /// With `dial`: `relay` or `local` (what the caller hears while it rings).
    #[serde(default)]
    ringback: Option<String>,
    /// With `dial`: record the call from its answer (`true`, or options).
    #[serde(default)]
    record: Option<crate::config::RecordEntry>,
    /// With `dial`: stream the call's audio live from its answer.
    #[serde(default)]
    fork: Option<crate::config::ForkEntry>,
    /// With `dial`: record through this SIPREC server (instead of the
    /// number's or trunk's; without it, theirs stands).
    #[serde(default)]
    siprec: Option<crate::config::SiprecEntry>,
}

/// Reads a router's answer.
pub fn parse_answer(body: &[u8]) -> Result<RouteDecision, RouterError> {
    let a: WireAnswer =
        serde_json::from_slice(body).map_err(|e| RouterError::BadJson(e.to_string()))?;
    match (a.dial, a.reject) {
        (Some(_), Some(_)) => Err(RouterError::BadJson("both dial and reject".into())),
        (None, Some(status)) if (400..700).contains(&status) => Ok(RouteDecision::Reject(status)),
        (None, Some(status)) => Err(RouterError::BadJson(format!(
            "reject status {status} is not 4xx-6xx"
        ))),
        (None, None) => Ok(RouteDecision::Default),
        (Some(steps), None) => {
            if steps.is_empty() || steps.len() > 16 {
                return Err(RouterError::BadJson("dial needs 1 to 16 steps".into()));
            }
            let record = match a.record {
                Some(r) => r
                    .options()
                    .map_err(|e| RouterError::BadJson(format!("record: {e}")))?,
                None => None,
            };
            let fork = match a.fork {
                Some(f) => Some(
                    f.options()
                        .map_err(|e| RouterError::BadJson(format!("fork: {e}")))?,
                ),
                None => None,
            };
            let siprec = match a.siprec {
                Some(s) => Some(
                    s.options()
                        .map_err(|e| RouterError::BadJson(format!("siprec: {e}")))?,
                ),
                None => None,
            };
            let mut plan = DialPlan {
                record,
                fork,
                siprec,
                ..DialPlan::default()
            };
            if let Some(r) = a.ringback.as_deref() {
                plan.ringback = Some(Ringback::parse(r).ok_or_else(|| {
                    RouterError::BadJson(format!("ringback `{r}`: expected relay or local"))
                })?);
            }
            for s in steps {
                if s.ring.is_empty() || s.ring.len() > 32 {
                    return Err(RouterError::BadJson("a step rings 1 to 32 targets".into()));
                }
                let targets = s
                    .ring
                    .iter()
                    .map(|t| {
                        t.parse::<Target>()
                            .map_err(|e| RouterError::BadJson(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let timeout = match s.timeout {
                    Some(t) => parse_duration(&t)
                        .filter(|d| !d.is_zero() && *d <= Duration::from_secs(3600))
                        .ok_or_else(|| RouterError::BadJson(format!("bad timeout `{t}`")))?,
                    None => Duration::from_secs(30),
                };
                let join = match s.join.as_deref() {
                    None => Join::First,
                    Some(j) => Join::parse(j).ok_or_else(|| {
                        RouterError::BadJson(format!("join `{j}`: expected first or all"))
                    })?,
                };
                plan.steps.push(Step {
                    targets,
                    timeout,
                    join,
                    record: s.record,
                });
            }
            Ok(RouteDecision::Plan(plan))
        }
    }
}

/// Asks an HTTP endpoint; see the module docs.
#[derive(Debug, Clone)]
pub struct HttpRouter(Backend);

impl HttpRouter {
    /// A router POSTing to `url`, signing with `secret`, waiting at most `timeout`.
    pub fn new(url: String, secret: Vec<u8>, timeout: Duration) -> Self {
        HttpRouter(Backend::new(url, secret, timeout))
    }

    /// One request: the decision, or why the static plan applies.
    pub async fn ask(&self, facts: &RouteFacts) -> Result<RouteDecision, RouterError> {
        let body = facts_json(facts).to_string();
        let (status, body) = match self.0.ask(Clock::unix_secs(), body).await {
            Err(AskError::Timeout) => return Err(RouterError::Timeout(self.0.timeout)),
            Err(AskError::Request(e)) => return Err(RouterError::Request(e)),
            Ok(a) => a,
        };
        if !(200..300).contains(&status) {
            return Err(RouterError::Status(status));
        }
        parse_answer(&body)
    }
}

impl Router for HttpRouter {
    fn route(&self, facts: RouteFacts) -> BoxFuture<RouteDecision> {
        let me = self.clone();
        Box::pin(async move {
            match me.ask(&facts).await {
                Ok(d) => {
                    metrics::counter!("sbc_router_answers_total").increment(1);
                    d
                }
                Err(e) => {
                    metrics::counter!("sbc_router_errors_total", "kind" => e.kind()).increment(1);
                    tracing::warn!(call = %facts.call_id, url = %me.0.url, error = %e, "routing webhook failed; using the static plan");
                    RouteDecision::Default
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip_bridge::plan::RecordOptions;

    #[test]
    fn a_plan_may_name_a_siprec_server() {
        let plan = |body: &[u8]| match parse_answer(body) {
            Ok(RouteDecision::Plan(p)) => p,
            other => panic!("{other:?}"),
        };
        let p = plan(br#"{"dial": [{"ring": ["operators"]}], "siprec": {"srs": "sip:srs@192.0.2.9", "failClosed": true}}"#);
        let s = p.siprec.unwrap();
        assert_eq!((s.srs.as_str(), s.fail_closed), ("sip:srs@192.0.2.9", true));
        assert_eq!(plan(br#"{"dial": [{"ring": ["operators"]}]}"#).siprec, None);
        let bad = parse_answer(
            br#"{"dial": [{"ring": ["operators"]}], "siprec": {"srs": "sip:x@name.example"}}"#,
        );
        assert!(matches!(bad, Err(RouterError::BadJson(e)) if e.starts_with("siprec:")));
    }

    #[test]
    fn a_plan_may_record() {
        let plan = |body: &[u8]| match parse_answer(body) {
            Ok(RouteDecision::Plan(p)) => p,
            other => panic!("{other:?}"),
        };
        let p = plan(br#"{"dial": [{"ring": ["operators"]}], "record": true}"#);
        assert_eq!(p.record, Some(RecordOptions::default()));
        let p = plan(br#"{"dial": [{"ring": ["operators"], "record": true}], "record": {"channels": "mono"}}"#);
        assert!(p.steps[0].record);
        assert_eq!(
            p.record.map(|r| r.channels),
            Some(sip_bridge::contract::RecordChannels::Mono)
        );
        assert_eq!(plan(br#"{"dial": [{"ring": ["operators"]}]}"#).record, None);
        let bad =
            parse_answer(br#"{"dial": [{"ring": ["operators"]}], "record": {"format": "mp3"}}"#);
        assert!(matches!(bad, Err(RouterError::BadJson(e)) if e.contains("mp3")));
    }

    #[test]
    fn answers() {
        assert_eq!(parse_answer(b"{}"), Ok(RouteDecision::Default));
        assert_eq!(
            parse_answer(br#"{"reject": 486}"#),
            Ok(RouteDecision::Reject(486))
        );
        let RouteDecision::Plan(p) = parse_answer(br#"{"dial": [{"ring": ["operators"], "timeout": "15s"}, {"ring": ["pstn:+15550111"]}]}"#).unwrap() else {
            panic!("a plan");
        };
        assert_eq!(p.steps.len(), 2);
        assert_eq!(p.steps[0].timeout, Duration::from_secs(15));
        assert_eq!(p.steps[1].timeout, Duration::from_secs(30));
        assert_eq!(p.ringback, None, "the trunk's, else relay");
        let RouteDecision::Plan(p) =
            parse_answer(br#"{"dial": [{"ring": ["pstn:+15550111"]}], "ringback": "local"}"#)
                .unwrap()
        else {
            panic!("a plan");
        };
        assert_eq!(p.ringback, Some(Ringback::Local));
        for bad in [
            br#"{"dial": [{"ring": ["echo"]}], "ringback": "music"}"#,
            &b"nope"[..],
            br#"{"dial": []}"#,
            br#"{"dial": [{"ring": ["fax:1"]}]}"#,
            br#"{"reject": 200}"#,
            br#"{"dial": [{"ring": ["echo"]}], "reject": 486}"#,
            br#"{"extra": 1}"#,
        ] {
            assert!(
                parse_answer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn facts_round_trip_the_default_plan() {
        let facts = RouteFacts {
            call_id: sip_bridge::bridge::CallId(1),
            direction: sip_bridge::bridge::Direction::Inbound,
            from: "+1".into(),
            to: "+2".into(),
            number: None,
            trunk: None,
            operator: None,
            headers: vec![("X-Campaign".into(), "spring".into())],
            default_plan: DialPlan::single(vec![Target::Operators], Duration::from_secs(20)),
            transfer: false,
        };
        let j = facts_json(&facts);
        assert_eq!(j["headers"]["X-Campaign"], "spring");
        let again = parse_answer(
            serde_json::json!({"dial": j["defaultPlan"]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(again, RouteDecision::Plan(facts.default_plan));
    }
}
