//! The control protocol: what the CLI asks ([`Request`]), the envelope of every answer
//! ([`Response`]) and one typed reply per request, shared by both ends. The daemon
//! serialises these types and the CLI deserialises into the same ones, so a field
//! renamed on one side is a compile error on the other.
//!
//! The wire form is one JSON object per line each way; `Response::data` carries the
//! reply, whose field names are the ones scripts read from `nprot … --json`.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{
    capture::attribution::AttributionReport,
    datapath::{pipeline::PipelineStats, prefilter::PrefilterReport},
    histogram::LatencySummary,
    mode::Mode,
    policy::{Action, IndicatorType},
};

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Mode, interfaces, indicator counts ([`StatusReply`]).
    Status,
    /// Kernel and pipeline counters, latency percentiles ([`RunReport`]).
    Stats,
    /// Switch the enforcement mode ([`ModeReply`]).
    Mode {
        /// The mode's command-line name: disabled, audit or block.
        mode: String,
    },
    /// Add (or replace by id) indicators given in the JSON file format ([`AddedReply`]).
    IndicatorAdd {
        /// An indicator file, `{"indicators": […]}`.
        json: String,
    },
    /// Remove run-time indicators by id ([`RemovedReply`]).
    IndicatorRemove {
        /// The ids to remove.
        ids: Vec<String>,
    },
    /// List every indicator in force, files and run-time ones ([`IndicatorList`]).
    IndicatorList,
    /// Allow a target that a Warn indicator resets, for `for_secs` ([`BypassReply`]).
    Bypass {
        /// An address, network, domain or URL.
        target: String,
        /// How long the bypass lasts.
        for_secs: u64,
    },
    /// Import a file's content ([`AddedReply`]).
    IndicatorImport {
        /// json, csv or list.
        format: String,
        /// The file's content.
        text: String,
        /// The action of a plain list's entries (default Block).
        action: Option<String>,
    },
}

/// The daemon's answer: `ok` with the request's reply in `data`, or an `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The reply (one of this module's types), `null` on a refusal.
    #[serde(default)]
    pub data: Value,
}

impl Response {
    /// A successful answer carrying `data`.
    pub fn ok(data: Value) -> Response {
        Response {
            ok: true,
            error: None,
            data,
        }
    }

    /// A successful answer carrying `reply`; a reply that cannot be serialised (never
    /// for this module's types) is an error answer.
    pub fn reply(reply: &impl Serialize) -> Response {
        match serde_json::to_value(reply) {
            Ok(data) => Response::ok(data),
            Err(e) => Response::error(format!("cannot encode the reply: {e}")),
        }
    }

    /// A refusal saying why.
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            data: Value::Null,
        }
    }
}

/// Reads a reply of type `T` out of a response's `data`.
pub fn decode<T: DeserializeOwned>(data: &Value) -> Result<T, serde_json::Error> {
    T::deserialize(data)
}

/// One guarded interface in [`StatusReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    /// The interface's name.
    pub name: String,
    /// How the programs are attached: tcx or clsact.
    pub attach: String,
}

/// The answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The enforcement mode in force.
    pub mode: Mode,
    /// The guarded interfaces.
    pub interfaces: Vec<InterfaceStatus>,
    /// Indicators in force (files and run-time ones).
    pub indicators: usize,
    /// Of those, the ones added through the control socket.
    pub runtime_indicators: usize,
    /// The indicator files and the action their plain-list entries get.
    pub indicator_files: Vec<(PathBuf, Action)>,
    /// Where run-time changes are persisted.
    pub state_dir: PathBuf,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// The daemon's process id.
    pub pid: u32,
}

/// The answer to [`Request::Mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeReply {
    /// The mode now in force.
    pub mode: Mode,
}

/// The answer to [`Request::IndicatorAdd`] and [`Request::IndicatorImport`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AddedReply {
    /// New run-time indicators.
    pub added: usize,
    /// Indicators already in force with the same row.
    pub unchanged: usize,
    /// Run-time indicators replaced by id.
    pub replaced: usize,
    /// Their ids.
    pub replaced_ids: Vec<String>,
    /// Non-fatal notes from loading the indicators.
    pub warnings: Vec<String>,
}

/// The answer to [`Request::IndicatorRemove`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedReply {
    /// How many run-time indicators were removed.
    pub removed: usize,
    /// The ids that named none.
    pub not_found: Vec<String>,
}

/// The answer to [`Request::Bypass`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BypassReply {
    /// The id of the Allowed indicator that does the bypass.
    pub id: String,
    /// When it expires (RFC 3339).
    pub until: String,
    /// The Warn indicator it overrides.
    pub warned_by: String,
}

/// The answer to [`Request::IndicatorList`], as the CLI reads it. The daemon sends the
/// policy's [`crate::policy::Indicators`], whose serialisation is the indicator file
/// format (`nprot indicator export` prints it whole); this is the part `list` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndicatorList {
    /// Every indicator in force.
    pub indicators: Vec<ListedIndicator>,
}

/// One row of [`IndicatorList`]; the file format's other fields are ignored here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListedIndicator {
    /// Its id.
    pub id: String,
    /// What its value is.
    #[serde(rename = "type")]
    pub kind: IndicatorType,
    /// What a match does.
    pub action: Action,
    /// The address, network, domain or URL.
    pub value: String,
    /// Its title, if it has one.
    #[serde(default)]
    pub title: Option<String>,
}

/// What the sensor did: the answer to [`Request::Stats`], and what `--stats` writes on
/// exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The enforcement mode in force.
    pub mode: Mode,
    /// Indicators in force.
    pub indicators: usize,
    /// How long loading the indicator files took at start.
    pub indicator_load_ms: f64,
    /// Record to verdict.
    pub verdict_latency: LatencySummary,
    /// Of which the wake-up of the verdict loop.
    pub wake_latency: LatencySummary,
    /// What the pipeline did.
    pub pipeline: PipelineStats,
    /// The kernel's counters by name.
    pub kernel: BTreeMap<String, u64>,
    /// Events written to every sink.
    pub events_written: u64,
    /// Events lost.
    pub events_dropped: u64,
    /// Every sink's name, drops and own counters: `Fanout::sink_stats`, built in the
    /// events module, read through [`SinkReport`].
    pub sinks: Value,
    /// Ring-buffer records that could not be decoded.
    pub decode_errors: u64,
    /// Where every connection went.
    pub flows: FlowAccount,
    /// Where every QUIC flow went.
    #[serde(default)]
    pub quic: QuicAccount,
    /// The kernel pre-filter's summary (its judgements are `kernel.prefilter_*`).
    #[serde(default)]
    pub prefilter: PrefilterReport,
    /// Whether the verdict loop busy-polls the ring buffer (`ring_poll`).
    #[serde(default)]
    pub busy_poll: bool,
    /// Process attribution; absent when it is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<AttributionReport>,
    /// The fleet link; absent without `[fleet]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Value>,
}

/// One entry of [`RunReport::sinks`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkReport {
    /// What the sink is, e.g. `tcp collector 198.18.0.9:514`.
    pub sink: String,
    /// Events it took.
    #[serde(default)]
    pub written: u64,
    /// Events it lost.
    pub dropped: u64,
    /// The sink's own counters (they differ by kind of sink), `null` if it has none.
    #[serde(default)]
    pub stats: Value,
}

/// Where every QUIC flow went. Every flow the kernel opened (`flows`, restarts included)
/// is, once its Initials reached the daemon, `inspected`, `invalid`, `gave_up` or an
/// `overflow`; `not_tracked` are QUIC packets the kernel could not give a flow, `refused`
/// client Initials dropped by `quic = "block"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuicAccount {
    /// QUIC flows the kernel opened on a client Initial.
    pub flows: u64,
    /// Of those, flows started again by a new connection on their 4-tuple.
    pub restarts: u64,
    /// Long-header packets that neither opened nor joined a flow.
    pub not_tracked: u64,
    /// ClientHellos read from Initials and judged.
    pub inspected: u64,
    /// Flows whose datagrams were no valid Initials.
    pub invalid: u64,
    /// Flows whose Initials ended before a whole ClientHello.
    pub gave_up: u64,
    /// Flows not read because the daemon's table was full.
    pub overflows: u64,
    /// Flows blocked.
    pub blocked: u64,
    /// Datagrams of blocked flows dropped.
    pub dropped: u64,
    /// Client Initials dropped by `quic = "block"`.
    pub refused: u64,
}

/// Where every connection went: tracked, or counted as not tracked or not reported.
/// `tracked + not_tracked` is every new connection through a guarded interface; compare
/// `tracked_local` with `connect_hook_connects` (which also counts connections that use
/// no guarded interface) to see a gap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowAccount {
    /// TCP connects the cgroup hooks saw, on any interface (absent without attribution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_hook_connects: Option<u64>,
    /// Flows tracked from their SYN.
    pub tracked: u64,
    /// Of those, flows opened by a socket on this host.
    pub tracked_local: u64,
    /// SYNs that found no room in the flow table: connections not tracked.
    pub not_tracked: u64,
    /// Flows first seen without their SYN: tracked, not inspected.
    pub midstream: u64,
    /// SYNs taken as retransmissions (not new connections).
    pub syn_retransmits: u64,
    /// Flows replaced by a new connection on their four-tuple before their end was seen.
    pub superseded: u64,
    /// Flows seen to end.
    pub closed: u64,
    /// Flow entries retired idle.
    pub expired: u64,
    /// Connection records (established, failed, closed) lost in a full ring buffer:
    /// flows whose connection events are missing.
    pub records_lost: u64,
    /// Verdicts removed because their flow ended before picking them up.
    pub stale_verdicts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request::Mode {
            mode: "block".into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"cmd":"mode","mode":"block"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }

    /// The replies keep the field names scripts read from `--json`.
    #[test]
    fn replies_have_a_stable_wire_form() {
        let status = StatusReply {
            mode: Mode::Block,
            interfaces: vec![InterfaceStatus {
                name: "eth0".into(),
                attach: "tcx".into(),
            }],
            indicators: 3,
            runtime_indicators: 1,
            indicator_files: vec![("/etc/nprot/i.json".into(), Action::Block)],
            state_dir: "/var/lib/nprot".into(),
            uptime_s: 5,
            pid: 42,
        };
        let text = serde_json::to_string(&status).unwrap();
        assert_eq!(
            text,
            r#"{"mode":"Block","interfaces":[{"name":"eth0","attach":"tcx"}],"indicators":3,"runtime_indicators":1,"indicator_files":[["/etc/nprot/i.json","Block"]],"state_dir":"/var/lib/nprot","uptime_s":5,"pid":42}"#
        );
        assert_eq!(serde_json::from_str::<StatusReply>(&text).unwrap(), status);

        let added = AddedReply {
            added: 1,
            unchanged: 2,
            replaced: 1,
            replaced_ids: vec!["a".into()],
            warnings: vec!["w".into()],
        };
        assert_eq!(
            serde_json::to_string(&added).unwrap(),
            r#"{"added":1,"unchanged":2,"replaced":1,"replaced_ids":["a"],"warnings":["w"]}"#
        );
        let removed = RemovedReply {
            removed: 1,
            not_found: vec!["x".into()],
        };
        assert_eq!(
            serde_json::to_string(&removed).unwrap(),
            r#"{"removed":1,"not_found":["x"]}"#
        );
        let bypass = BypassReply {
            id: "bypass:a.example".into(),
            until: "2030-01-01T00:00:00.000000Z".into(),
            warned_by: "w1".into(),
        };
        assert_eq!(
            serde_json::to_string(&bypass).unwrap(),
            r#"{"id":"bypass:a.example","until":"2030-01-01T00:00:00.000000Z","warned_by":"w1"}"#
        );
        assert_eq!(
            serde_json::to_string(&ModeReply { mode: Mode::Audit }).unwrap(),
            r#"{"mode":"Audit"}"#
        );
    }

    #[test]
    fn a_stats_report_reads_back() {
        let report = RunReport {
            mode: Mode::Audit,
            indicators: 0,
            indicator_load_ms: 1.5,
            verdict_latency: LatencySummary {
                count: 1,
                p50_us: 2.0,
                p99_us: 3.0,
                p999_us: 4.0,
                max_us: 5.0,
            },
            wake_latency: LatencySummary {
                count: 0,
                p50_us: 0.0,
                p99_us: 0.0,
                p999_us: 0.0,
                max_us: 0.0,
            },
            pipeline: PipelineStats::default(),
            kernel: [("flows_new".to_owned(), 7)].into_iter().collect(),
            events_written: 9,
            events_dropped: 0,
            sinks: serde_json::json!([{"sink": "stdout", "written": 9, "dropped": 0, "stats": null}]),
            decode_errors: 0,
            flows: FlowAccount::default(),
            quic: QuicAccount::default(),
            prefilter: PrefilterReport::default(),
            busy_poll: false,
            attribution: None,
            fleet: None,
        };
        let value = serde_json::to_value(&report).unwrap();
        assert!(value.get("attribution").is_none());
        assert!(value["flows"].get("connect_hook_connects").is_none());
        assert_eq!(decode::<RunReport>(&value).unwrap(), report);
        let sinks: Vec<SinkReport> = decode(&value["sinks"]).unwrap();
        assert_eq!(sinks[0].sink, "stdout");
    }
}
