//! Every metric `sbc` exports, in one table: name, kind, help and the label
//! sets known in advance. The recorder describes them all and sets them to zero
//! at start, so an idle node's `/metrics` already lists `sbc_calls_active 0`
//! (dashboards and alerts see a zero, not a missing series). Conventions
//! (<https://prometheus.io/docs/practices/naming/>): counters end in `_total`,
//! units are seconds and bytes, delays are histograms with buckets, and every
//! series carries the node's name (`node="..."`).

use metrics::Unit;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// What a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution, with [`Metric::buckets`].
    Histogram,
}

/// One exported metric.
#[derive(Debug)]
pub struct Metric {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// `# HELP`.
    pub help: &'static str,
    /// Label sets that exist from the start (empty: one unlabelled series, unless
    /// `dynamic`).
    pub labels: &'static [&'static [(&'static str, &'static str)]],
    /// Its labels are only known when it happens (a trunk's name, a reason):
    /// described, but no series until then.
    pub dynamic: bool,
    /// Histogram bucket bounds.
    pub buckets: &'static [f64],
}

const IN_OUT: &[&[(&str, &str)]] = &[&[("direction", "in")], &[("direction", "out")]];
const INBOUND_OUTBOUND: &[&[(&str, &str)]] =
    &[&[("direction", "inbound")], &[("direction", "outbound")]];

const fn m(kind: Kind, name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        help,
        labels: &[],
        dynamic: false,
        buckets: &[],
    }
}

const fn labelled(
    kind: Kind,
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static [(&'static str, &'static str)]],
) -> Metric {
    Metric {
        labels,
        ..m(kind, name, help)
    }
}

const fn dynamic(kind: Kind, name: &'static str, help: &'static str) -> Metric {
    Metric {
        dynamic: true,
        ..m(kind, name, help)
    }
}

const fn histogram(name: &'static str, help: &'static str, buckets: &'static [f64]) -> Metric {
    Metric {
        buckets,
        ..m(Kind::Histogram, name, help)
    }
}

use Kind::{Counter as C, Gauge as G};

/// Every metric (a project test checks the code uses no other name).
pub const METRICS: &[Metric] = &[
    // Calls.
    m(G, "sbc_calls_active", "Calls in progress."),
    labelled(
        C,
        "sbc_calls_started_total",
        "Calls started, by direction.",
        INBOUND_OUTBOUND,
    ),
    labelled(
        C,
        "sbc_calls_answered_total",
        "Calls answered, by direction.",
        INBOUND_OUTBOUND,
    ),
    dynamic(
        C,
        "sbc_calls_ended_total",
        "Calls ended, by direction and final status.",
    ),
    dynamic(
        C,
        "sbc_calls_media_total",
        "Calls by media path: relayed, transcoded or mixed.",
    ),
    dynamic(
        C,
        "sbc_participants_joined_total",
        "Parties that joined a call, by role.",
    ),
    dynamic(
        C,
        "sbc_participants_left_total",
        "Parties that left a call, by reason.",
    ),
    dynamic(C, "sbc_transfers_total", "Transfers, by state reached."),
    // Operators.
    m(
        G,
        "sbc_operator_sessions",
        "Operator WebSocket sessions open.",
    ),
    m(
        G,
        "sbc_operators",
        "Operators present (browsers and phones).",
    ),
    // SIP.
    m(G, "sbc_sip_legs", "SIP call legs."),
    m(G, "sbc_sip_dialogs", "SIP dialogs (early and confirmed)."),
    m(G, "sbc_sip_transactions", "SIP transactions in progress."),
    m(
        C,
        "sbc_sip_retransmissions_total",
        "SIP retransmissions sent.",
    ),
    m(
        C,
        "sbc_sip_dropped_total",
        "SIP messages dropped at the front door (floods).",
    ),
    dynamic(
        C,
        "sbc_sip_rejected_total",
        "SIP requests refused statelessly, by status.",
    ),
    m(C, "sbc_sip_bans_total", "Sources banned by the front door."),
    m(
        C,
        "sbc_sip_banned_drops_total",
        "SIP messages dropped from banned sources.",
    ),
    m(
        C,
        "sbc_sip_scanner_drops_total",
        "SIP messages dropped as from scanners.",
    ),
    dynamic(
        G,
        "sbc_trunk_peer_up",
        "1 while a trunk peer answers its OPTIONS probes.",
    ),
    // Registrar.
    m(G, "sbc_registrations_active", "Phone bindings registered."),
    m(C, "sbc_registrar_accepted_total", "REGISTERs accepted."),
    m(
        C,
        "sbc_registrar_challenges_total",
        "Digest challenges sent (REGISTER and INVITE).",
    ),
    m(
        C,
        "sbc_registrar_auth_failures_total",
        "Digest answers that failed.",
    ),
    m(
        C,
        "sbc_registrar_bans_total",
        "Sources banned for repeated authentication failures.",
    ),
    m(
        C,
        "sbc_registrar_banned_drops_total",
        "Requests dropped from banned sources.",
    ),
    m(
        C,
        "sbc_registrations_expired_total",
        "Bindings that lapsed.",
    ),
    m(
        C,
        "sbc_registrar_keepalives_total",
        "Keep-alive OPTIONS sent to phones.",
    ),
    m(
        C,
        "sbc_registrations_unreachable_total",
        "Bindings ended for missed keep-alives.",
    ),
    dynamic(
        C,
        "sbc_registrar_lookups_total",
        "Phone accounts asked of the backend, by result.",
    ),
    // Media.
    m(G, "sbc_media_sessions", "Calls with a media task."),
    m(
        G,
        "sbc_transcoding_pipelines",
        "Media pipelines transcoding.",
    ),
    m(G, "sbc_mixed_calls", "Calls mixing on the call clock."),
    labelled(
        C,
        "sbc_rtp_packets_total",
        "RTP packets, by direction.",
        IN_OUT,
    ),
    labelled(C, "sbc_rtp_bytes_total", "RTP bytes, by direction.", IN_OUT),
    labelled(
        C,
        "sbc_rtcp_packets_total",
        "RTCP packets, by direction.",
        IN_OUT,
    ),
    m(
        C,
        "sbc_rtp_foreign_source_total",
        "RTP packets from an unexpected source, dropped.",
    ),
    m(G, "sbc_rtp_ports_in_use", "RTP ports allocated."),
    m(
        C,
        "sbc_rtp_ports_skipped_total",
        "RTP ports skipped because another process held them.",
    ),
    m(
        C,
        "sbc_rtp_ports_exhausted_total",
        "Calls refused for want of an RTP port.",
    ),
    m(
        C,
        "sbc_media_lost_packets_total",
        "Packets never received (sequence gaps).",
    ),
    m(
        C,
        "sbc_media_late_packets_total",
        "Packets that came too late to play.",
    ),
    m(
        C,
        "sbc_media_concealed_seconds_total",
        "Audio concealed (packet loss concealment).",
    ),
    m(
        C,
        "sbc_mix_ticks_total",
        "Call clock ticks of mixing calls.",
    ),
    m(C, "sbc_mix_encodes_total", "Encodes of mixed audio."),
    histogram(
        "sbc_jitter_delay_seconds",
        "Largest jitter buffer delay of a call.",
        &[0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0],
    ),
    histogram(
        "sbc_rtcp_rtt_seconds",
        "Round-trip times from RTCP receiver reports.",
        &[0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0],
    ),
    histogram(
        "sbc_rtcp_jitter_seconds",
        "Interarrival jitter from RTCP receiver reports.",
        &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32],
    ),
    histogram(
        "sbc_rtcp_fraction_lost_ratio",
        "Fraction lost from RTCP receiver reports.",
        &[0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0],
    ),
    // Recording, forks, SIPREC.
    m(G, "sbc_recordings_active", "Recordings in progress."),
    dynamic(C, "sbc_recordings_total", "Recordings ended, by result."),
    m(C, "sbc_recordings_deleted_total", "Recordings deleted."),
    m(
        C,
        "sbc_recording_bytes_total",
        "Bytes written to recordings.",
    ),
    m(
        C,
        "sbc_recording_frames_dropped_total",
        "Frames a slow disk made recordings drop.",
    ),
    m(G, "sbc_forks_active", "Live media forks."),
    m(
        G,
        "sbc_fork_consumers_connected",
        "Media fork consumers connected.",
    ),
    m(
        C,
        "sbc_fork_messages_total",
        "Messages from media fork consumers.",
    ),
    m(
        C,
        "sbc_fork_messages_dropped_total",
        "Messages from media fork consumers dropped.",
    ),
    m(
        C,
        "sbc_fork_frames_dropped_total",
        "Frames a slow fork consumer made us drop.",
    ),
    m(C, "sbc_fork_reconnects_total", "Media fork reconnects."),
    m(C, "sbc_forks_failed_total", "Media forks given up."),
    m(
        G,
        "sbc_siprec_sessions_active",
        "SIPREC sessions in progress.",
    ),
    dynamic(
        C,
        "sbc_siprec_sessions_total",
        "SIPREC sessions, by state reached.",
    ),
    // Cluster ([cluster]; zero without one).
    m(
        G,
        "sbc_cluster_nodes_alive",
        "Nodes whose lease is live, as this node last read them.",
    ),
    m(
        G,
        "sbc_cluster_nodes_draining",
        "Live nodes that are draining.",
    ),
    m(
        G,
        "sbc_cluster_redis_up",
        "1 while this node's heartbeats reach Redis.",
    ),
    m(
        C,
        "sbc_cluster_redis_errors_total",
        "Heartbeats Redis did not answer in time or refused.",
    ),
    m(
        C,
        "sbc_cluster_bad_records_total",
        "Node records read from Redis that were malformed or outside cluster.allow, skipped.",
    ),
    m(
        C,
        "sbc_cluster_peer_calls_total",
        "Calls other nodes forked here to ring operators of this node.",
    ),
    m(
        C,
        "sbc_cluster_peer_refused_total",
        "INVITEs claiming to come from a node, refused (bad or stale signature, unknown address).",
    ),
    m(
        C,
        "sbc_cluster_peer_calls_orphaned_total",
        "Forks of calls whose owner node died, ended here.",
    ),
    m(
        C,
        "sbc_cluster_calls_reanchored_total",
        "Calls whose owner node died, carried on by this node (their caller re-INVITEd here).",
    ),
    m(
        C,
        "sbc_cluster_calls_lost_total",
        "Calls whose owner node died that this node could not carry on: ended cleanly.",
    ),
    m(
        C,
        "sbc_cluster_records_dropped_total",
        "Ringing-call records not written to Redis (queue full, Redis slow or gone).",
    ),
    m(
        C,
        "sbc_cluster_nodes_lost_total",
        "Nodes whose lease lapsed and that did not answer a probe: dead.",
    ),
    m(
        C,
        "sbc_cluster_ringing_retried_total",
        "A dead node's ringing calls handed back to the proxy (503) by this node.",
    ),
    m(
        G,
        "sbc_cluster_peers_ready",
        "Other serving nodes with an operator ready, as this node last read them.",
    ),
    // HTTP, API, webhooks, routing.
    dynamic(
        C,
        "sbc_http_rejected_total",
        "HTTP requests refused, by reason.",
    ),
    m(
        C,
        "sbc_http_unauthorized_total",
        "HTTP requests with a missing or wrong credential.",
    ),
    dynamic(
        C,
        "sbc_ws_rejected_total",
        "Operator WebSockets refused, by reason.",
    ),
    dynamic(
        C,
        "sbc_api_requests_total",
        "REST API requests, by request and result.",
    ),
    m(
        C,
        "sbc_api_idempotent_replays_total",
        "REST API requests answered from the idempotency cache.",
    ),
    m(
        C,
        "sbc_webhook_delivered_total",
        "Call-event webhooks delivered.",
    ),
    m(
        C,
        "sbc_webhook_failed_total",
        "Call-event webhooks given up after retries.",
    ),
    m(
        C,
        "sbc_webhook_dropped_total",
        "Call-event webhooks dropped (queue full).",
    ),
    dynamic(
        C,
        "sbc_status_callbacks_total",
        "Status callbacks, by result.",
    ),
    m(
        C,
        "sbc_router_answers_total",
        "Routing webhook answers used.",
    ),
    dynamic(
        C,
        "sbc_router_errors_total",
        "Routing webhook failures, by kind.",
    ),
];

/// The metric named `name`.
pub fn metric(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

/// A recorder for `METRICS`, every series labelled `node`.
pub fn recorder(node: &str) -> PrometheusRecorder {
    let base = || PrometheusBuilder::new().add_global_label("node", node);
    let with_buckets = METRICS
        .iter()
        .filter(|m| m.kind == Kind::Histogram)
        .try_fold(base(), |b, m| {
            b.set_buckets_for_metric(Matcher::Full(m.name.into()), m.buckets)
        });
    match with_buckets {
        Ok(b) => b,
        // Only an empty bucket list fails, which the table's test rules out.
        Err(e) => {
            tracing::error!(error = %e, "metric buckets refused: histograms render as summaries");
            base()
        }
    }
    .build_recorder()
}

/// Describes every metric and creates its known series at zero, on the
/// recorder in effect.
pub fn register_all() {
    for m in METRICS {
        let unit = m
            .name
            .contains("_seconds")
            .then_some(Unit::Seconds)
            .or_else(|| m.name.contains("_bytes").then_some(Unit::Bytes));
        let sets: &[&[(&str, &str)]] = match (m.labels, m.dynamic) {
            (_, true) => &[],
            ([], false) => &[&[]],
            (sets, false) => sets,
        };
        match m.kind {
            Kind::Counter => {
                match unit {
                    Some(u) => metrics::describe_counter!(m.name, u, m.help),
                    None => metrics::describe_counter!(m.name, m.help),
                }
                for labels in sets {
                    metrics::counter!(m.name, *labels).absolute(0);
                }
            }
            Kind::Gauge => {
                metrics::describe_gauge!(m.name, m.help);
                for labels in sets {
                    metrics::gauge!(m.name, *labels).set(0.0);
                }
            }
            Kind::Histogram => {
                match unit {
                    Some(u) => metrics::describe_histogram!(m.name, u, m.help),
                    None => metrics::describe_histogram!(m.name, m.help),
                }
                // A histogram with no sample yet shows no series; that is the
                // exporter's rule and dashboards' rate() copes.
            }
        }
    }
}

/// The process's Prometheus recorder, installed once (the `metrics` crate has
/// one global recorder: the first server's `node` names the process).
pub fn install(node: &str) -> Option<PrometheusHandle> {
    use std::sync::OnceLock;
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = recorder(node);
            let handle = recorder.handle();
            let installed = metrics::set_global_recorder(recorder).ok().map(|_| handle);
            if installed.is_some() {
                register_all();
            }
            installed
        })
        .clone()
}

/// This machine's name, for the `node` label when the config names none.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sbc".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render() -> String {
        let recorder = recorder("n1");
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            register_all();
            metrics::histogram!("sbc_rtcp_rtt_seconds").record(0.042);
        });
        handle.render()
    }

    #[test]
    fn the_table_follows_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(m.name.starts_with("sbc_"), "{}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
            assert_eq!(
                m.kind == Kind::Histogram,
                !m.buckets.is_empty(),
                "{}",
                m.name
            );
            assert!(!m.name.contains("_ms"), "{}: seconds, not ms", m.name);
            assert!(m.help.ends_with('.'), "{}", m.name);
        }
    }

    #[test]
    fn an_idle_node_shows_every_fixed_series_with_help_type_and_node() {
        let text = render();
        assert!(text.contains("sbc_calls_active{node=\"n1\"} 0"), "{text}");
        assert!(
            text.contains("sbc_rtp_packets_total{node=\"n1\",direction=\"in\"} 0")
                || text.contains("sbc_rtp_packets_total{direction=\"in\",node=\"n1\"} 0"),
            "{text}"
        );
        for m in METRICS
            .iter()
            .filter(|m| !m.dynamic && m.kind != Kind::Histogram)
        {
            assert!(
                text.contains(&format!("# HELP {} {}", m.name, m.help)),
                "{}: {text}",
                m.name
            );
            let kind = if m.kind == Kind::Counter {
                "counter"
            } else {
                "gauge"
            };
            assert!(
                text.contains(&format!("# TYPE {} {kind}", m.name)),
                "{}: {text}",
                m.name
            );
        }
        // Every sample line carries the node.
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.contains("node=\"n1\""), "{line}");
        }
    }

    #[test]
    fn delays_are_histograms_with_buckets_not_summaries() {
        let text = render();
        assert!(
            text.contains("# TYPE sbc_rtcp_rtt_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("sbc_rtcp_rtt_seconds_bucket{node=\"n1\",le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sbc_rtcp_rtt_seconds_bucket{node=\"n1\",le=\"0.025\"} 0"),
            "{text}"
        );
        assert!(!text.contains("summary"), "{text}");
    }

    /// `sbc_...` names in `text`, a histogram's series named by its metric.
    fn names_in(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("sbc_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.push(base.to_string());
            rest = &tail[end..];
        }
        out
    }

    #[test]
    fn the_code_and_the_deploy_files_use_only_metrics_of_the_table() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut used = 0;
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("telemetry.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for kind in ["counter!(", "gauge!(", "histogram!("] {
                for (i, _) in text.match_indices(&format!("metrics::{kind}")) {
                    let call = &text[i..];
                    let name = call.split('"').nth(1).unwrap_or("");
                    assert!(
                        metric(name).is_some(),
                        "{}: {name} is not in METRICS",
                        path.display()
                    );
                    used += 1;
                }
            }
        }
        assert!(used > 50, "found only {used} uses");
        for file in [
            include_str!("../deploy/prometheus/alerts.yml"),
            include_str!("../deploy/grafana/sbc-dashboard.json"),
        ] {
            let names = names_in(file);
            assert!(names.len() > 10);
            for n in names {
                assert!(metric(&n).is_some(), "{n} is not in METRICS");
            }
        }
    }
}
