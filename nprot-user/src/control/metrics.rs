//! `/metrics` in the Prometheus text format (`metrics_listen`): every counter of
//! `nprot stats`, the per-sink counters, the verdict and wake-up latency histograms and
//! the policy's size and fleet revision.
//!
//! A thread of its own serves the requests (tiny_http), so a slow scraper never touches
//! the verdict loop; the loop hands it a snapshot once a second ([`MetricsServer::update`]),
//! which is as fresh as a scrape sees the figures.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use anyhow::Context as _;
use log::warn;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use serde_json::Value;

use crate::histogram::Histogram;

/// Upper bounds of the latency histograms' buckets, in ns: 5 µs to 1 s.
const LATENCY_BOUNDS_NS: [u64; 14] = [
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    200_000_000,
    1_000_000_000,
];

/// One latency histogram, as scraped.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    buckets: Vec<(f64, u64)>,
    sum_s: f64,
    count: u64,
}

impl From<&Histogram> for Latency {
    fn from(h: &Histogram) -> Latency {
        Latency {
            buckets: h.buckets(&LATENCY_BOUNDS_NS),
            sum_s: h.sum_s(),
            count: h.count(),
        }
    }
}

/// What a scrape shows: the `nprot stats` report and the latency histograms.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The `nprot stats` report, as JSON.
    pub report: Value,
    /// Capture → verdict written.
    pub verdict: Latency,
    /// Capture → the daemon woken.
    pub wake: Latency,
}

/// The running endpoint.
pub struct MetricsServer {
    shared: Arc<Mutex<Snapshot>>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr`; an address that cannot be bound stops the start.
    pub fn start(addr: SocketAddr) -> anyhow::Result<MetricsServer> {
        let server = Arc::new(
            tiny_http::Server::http(addr)
                .map_err(|e| anyhow::anyhow!("metrics_listen {addr}: {e}"))?,
        );
        let shared = Arc::new(Mutex::new(Snapshot::default()));
        let (srv, snap) = (Arc::clone(&server), Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("nprot-metrics".into())
            .spawn(move || serve(&srv, &snap))
            .context("starting the metrics thread")?;
        Ok(MetricsServer {
            shared,
            server,
            thread: Some(thread),
        })
    }

    /// What the next scrapes show.
    pub fn update(&self, snapshot: Snapshot) {
        *self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, shared: &Mutex<Snapshot>) {
    for request in server.incoming_requests() {
        let response = if request.url() == "/metrics" {
            let snapshot = shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let text = render(snapshot);
            let header = tiny_http::Header::from_bytes(
                &b"Content-Type"[..],
                &b"text/plain; version=0.0.4; charset=utf-8"[..],
            );
            let mut r = tiny_http::Response::from_string(text);
            if let Ok(h) = header {
                r.add_header(h);
            }
            r
        } else {
            tiny_http::Response::from_string("not found: try /metrics\n").with_status_code(404)
        };
        if let Err(e) = request.respond(response) {
            warn!("metrics: answering a scrape: {e}");
        }
    }
}

/// The snapshot in the Prometheus text format (0.0.4).
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::with_prefix("nprot");
    registry.register_collector(Box::new(Report(snapshot)));
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

#[derive(Debug)]
struct Report(Snapshot);

/// Counters of one section of the report: every numeric field.
fn section_counters(
    encoder: &mut DescriptorEncoder,
    section: &Value,
    prefix: &str,
    what: &str,
) -> Result<(), std::fmt::Error> {
    let Some(fields) = section.as_object() else {
        return Ok(());
    };
    for (key, v) in fields {
        if let Some(n) = v.as_u64() {
            let name = format!("{prefix}_{key}");
            let help = format!("{what}: {key} (nprot stats)");
            let c = ConstCounter::new(n);
            c.encode(encoder.encode_descriptor(&name, &help, None, c.metric_type())?)?;
        }
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &Latency,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum_s, h.count, &h.buckets, None,
    )
}

impl Collector for Report {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = &self.0.report;
        section_counters(&mut encoder, &r["kernel"], "kernel", "kernel counter")?;
        section_counters(&mut encoder, &r["pipeline"], "pipeline", "pipeline counter")?;
        section_counters(&mut encoder, &r["flows"], "flows", "flow account")?;
        section_counters(&mut encoder, &r["quic"], "quic", "QUIC account")?;
        for (key, help) in [
            ("events_written", "Events written"),
            ("events_dropped", "Events dropped by a sink"),
            (
                "decode_errors",
                "Ring-buffer records that could not be decoded",
            ),
        ] {
            let c = ConstCounter::new(r[key].as_u64().unwrap_or(0));
            c.encode(encoder.encode_descriptor(key, help, None, c.metric_type())?)?;
        }
        for (field, help) in [
            ("written", "Events a sink took"),
            ("dropped", "Events a sink dropped"),
        ] {
            let name = format!("sink_{field}");
            let mut family = encoder.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for sink in r["sinks"].as_array().into_iter().flatten() {
                let labels = [("sink", sink["sink"].as_str().unwrap_or("?").to_owned())];
                let c = ConstCounter::new(sink[field].as_u64().unwrap_or(0));
                c.encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut encoder,
            "indicators",
            "Indicators in force",
            r["indicators"].as_i64().unwrap_or(0),
        )?;
        gauge(
            &mut encoder,
            "prefilter_keys",
            "Keys in the kernel pre-filter's summary",
            r["prefilter"]["keys"].as_i64().unwrap_or(0),
        )?;
        let c = ConstCounter::new(r["prefilter"]["rebuilds"].as_u64().unwrap_or(0));
        c.encode(encoder.encode_descriptor(
            "policy_changes",
            "Policy changes applied (summary rebuilds)",
            None,
            c.metric_type(),
        )?)?;
        let mut modes = encoder.encode_descriptor(
            "mode",
            "The sensor's mode (1 for the one in force)",
            None,
            MetricType::Gauge,
        )?;
        for m in ["Disabled", "Audit", "Block"] {
            let g = ConstGauge::new(i64::from(r["mode"] == m));
            g.encode(modes.encode_family(&[("mode", m.to_lowercase())])?)?;
        }
        if r["fleet"].is_object() {
            let f = &r["fleet"];
            gauge(
                &mut encoder,
                "fleet_revision",
                "Policy bucket revision applied",
                f["revision"].as_i64().unwrap_or(0),
            )?;
            gauge(
                &mut encoder,
                "fleet_connected",
                "1 while connected to NATS",
                i64::from(f["connected"] == true),
            )?;
            section_counters(&mut encoder, f, "fleet", "fleet link counter")?;
        }
        histogram(
            &mut encoder,
            "verdict_latency_seconds",
            "Capture to verdict written, for flows a verdict was waited for",
            &self.0.verdict,
        )?;
        histogram(
            &mut encoder,
            "wake_latency_seconds",
            "Capture to the daemon woken, for flows a verdict was waited for",
            &self.0.wake,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_report_renders_as_prometheus_text() {
        let mut h = Histogram::default();
        h.record(30_000);
        h.record(3_000_000);
        let text = render(Snapshot {
            report: json!({
                "mode": "Block",
                "indicators": 3,
                "kernel": { "flows_new": 7 },
                "pipeline": { "blocked": 2 },
                "sinks": [{ "sink": "file x", "written": 9, "dropped": 1 }],
                "events_written": 9,
            }),
            verdict: Latency::from(&h),
            wake: Latency::default(),
        });
        for line in [
            "nprot_kernel_flows_new_total 7",
            "nprot_pipeline_blocked_total 2",
            "nprot_sink_written_total{sink=\"file x\"} 9",
            "nprot_mode{mode=\"block\"} 1",
            "nprot_mode{mode=\"audit\"} 0",
            "nprot_indicators 3",
            "nprot_verdict_latency_seconds_bucket{le=\"5e-05\"} 1",
            "nprot_verdict_latency_seconds_bucket{le=\"0.002\"} 1",
            "nprot_verdict_latency_seconds_bucket{le=\"0.005\"} 2",
            "nprot_verdict_latency_seconds_bucket{le=\"+Inf\"} 2",
            "nprot_verdict_latency_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }
}
