//! The README's "Embedding the crates" snippet, compiled: `tests/tests/project.rs` checks
//! that the lines between the README markers below are the README's block, so the two
//! cannot drift. Runs the SBC from `./sbc.toml` until Ctrl-C:
//!
//! ```text
//! cargo run -p sbc --example readme_embed
//! ```

use sbc::events::EventSink;
use sbc::router::{BoxFuture, Router};
use sip_bridge::bridge::{CallEvent, RouteDecision, RouteFacts};

/// The plan per call: here always the number's static plan.
struct MyRouter;

impl Router for MyRouter {
    fn route(&self, _facts: RouteFacts) -> BoxFuture<RouteDecision> {
        Box::pin(async { RouteDecision::Default })
    }
}

/// Call events: here one line each.
struct MyEventLog;

impl EventSink for MyEventLog {
    fn call_event(&self, event: &CallEvent) {
        println!("{} {:?}", event.call_id, event.kind);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // README: begin
    let cfg = sbc::config::SbcConfig::load(std::path::Path::new("sbc.toml"))?;
    let server = sbc::server::Server::builder(sbc::run::server_config(&cfg).await?)
        .router(std::sync::Arc::new(MyRouter)) // impl sbc::router::Router: the plan per call
        .events(std::sync::Arc::new(MyEventLog)) // impl sbc::events::EventSink: call events
        .start()
        .await?;
    tokio::signal::ctrl_c().await?;
    server.shutdown(std::time::Duration::from_secs(30)).await; // calls get 30 s, then BYE
    // README: end
    Ok(())
}
