//! Embedding the SBC in an existing axum service.
//!
//! The service keeps its own HTTP API (here `/status`, on its own port) and runs
//! the whole SBC in-process: SIP, browsers, media. Calls are routed by business
//! hours: operators by day with a phone number as fallback; at night an AI agent
//! first, then the on-call phone. Call events are logged by the service.
//!
//! ```text
//! cargo run -p sbc --example embed_axum            # the demo config on loopback
//! cargo run -p sbc --example embed_axum sbc.toml   # a real config
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sbc::clock::Clock;
use sbc::config::SbcConfig;
use sbc::events::EventSink;
use sbc::inbox::ControlIn;
use sbc::router::{BoxFuture, Router};
use sbc::server::Server;
use sip_bridge::bridge::{
    CallEvent, CallEventKind, DialPlan, Direction, RouteDecision, RouteFacts, Step, Target,
};

/// Operators 08:00-18:00 UTC, an agent and the on-call phone outside.
struct BusinessHours {
    agent: String,
    on_call: String,
}

impl BusinessHours {
    fn plan(&self, hour_utc: u64) -> DialPlan {
        let step = |targets: Vec<Target>, secs| Step::new(targets, Duration::from_secs(secs));
        let phone = Target::Pstn {
            number: self.on_call.clone(),
            trunk: None,
        };
        if (8..18).contains(&hour_utc) {
            DialPlan::new(vec![
                step(vec![Target::Operators], 20),
                step(vec![phone], 30),
            ])
        } else {
            DialPlan::new(vec![
                step(vec![Target::Stream(self.agent.clone())], 10),
                step(vec![phone], 30),
            ])
        }
    }
}

impl Router for BusinessHours {
    fn route(&self, facts: RouteFacts) -> BoxFuture<RouteDecision> {
        // Operators dialling out keep their own target.
        let decision = if facts.direction == Direction::Outbound {
            RouteDecision::Default
        } else {
            RouteDecision::Plan(self.plan(Clock::unix_secs() / 3600 % 24))
        };
        Box::pin(async move { decision })
    }
}

/// The service's own view of calls.
#[derive(Default)]
struct CallLog {
    completed: AtomicU64,
}

impl EventSink for CallLog {
    fn call_event(&self, e: &CallEvent) {
        if e.kind == CallEventKind::Completed {
            self.completed.fetch_add(1, Ordering::Relaxed);
        }
        println!(
            "call {} {}: {:?} from {} to {} ({:?})",
            e.call_id,
            e.kind.as_str(),
            e.status,
            e.from,
            e.to,
            e.answered_by
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = match std::env::args().nth(1) {
        Some(path) => SbcConfig::load(path.as_ref())?,
        None => SbcConfig::demo(),
    };
    let log = Arc::new(CallLog::default());
    let sbc = Server::builder(sbc::run::server_config(&cfg).await?)
        .router(Arc::new(BusinessHours {
            agent: "wss://agent.example.com/voice".into(),
            on_call: "+15550111".into(),
        }))
        .events(log.clone())
        .start()
        .await?;
    println!(
        "SBC: SIP {:?}, browsers and API on http://{}",
        sbc.sip_udp, sbc.http
    );

    // The service's own API, next to the SBC.
    let app = axum::Router::new().route(
        "/status",
        axum::routing::get({
            let log = log.clone();
            let control = sbc.control.clone();
            move || async move {
                let status = control.ask(|reply| ControlIn::Status { reply }).await;
                let active = status.map_or(0, |s| s.calls);
                format!(
                    "active calls: {active}, completed: {}\n",
                    log.completed.load(Ordering::Relaxed)
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
    println!("service: http://127.0.0.1:8090/status");
    tokio::select! {
        r = axum::serve(listener, app) => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    let ended = sbc.shutdown(Duration::from_secs(30)).await;
    println!("stopped ({ended} calls had to be ended)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_hours() {
        let r = BusinessHours {
            agent: "wss://a".into(),
            on_call: "+15550111".into(),
        };
        assert_eq!(r.plan(9).steps[0].targets, vec![Target::Operators]);
        assert_eq!(
            r.plan(23).steps[0].targets,
            vec![Target::Stream("wss://a".into())]
        );
    }
}
