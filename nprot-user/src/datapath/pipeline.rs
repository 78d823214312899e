//! The inspection pipeline: kernel records in, events and verdicts out.
//!
//! Pure logic over decoded [`Record`]s, so that the live daemon, offline replay and unit
//! tests drive the same code. The kernel side is reached only through [`VerdictTarget`].

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use nprot_common::{
    FlowKey, PROTO_TCP, PROTO_UDP, PageEntry, RecordKind, Verdict, VerdictEntry, dns::DNS_PORT,
};

use crate::{
    capture::attribution::ProcessSource,
    datapath::{
        dns_block,
        names::{Client, DnsNames, Ech, EchAction, EchEvidence, NameCache, NameSettings},
        page::{Asked, ContinueGrant, Pages},
        parse::{
            ParseOutcome, Parsed, dns,
            http::{self, Body, HttpRequest},
            parse_client_payload,
            quic::QuicVersion,
            tls::ClientHelloInfo,
        },
        quic::{QuicFlows, Step},
        reassembly::{Reassembler, Stream},
        verdict::{Enforcement, Outcome, outcome},
    },
    events::{
        ActionType, Direction, DnsSeen, Event, EventFactory, FlowEnds, HttpSeen, OversizedFields,
        Protection, ProxyFields, TlsSeen, Transport, monotonic_ns,
    },
    histogram::Histogram,
    mode::Mode,
    policy::{Action, Policy, matcher::Subject},
    process::{ProcessColumns, ProcessInfo},
    record::{Prefiltered, Record, ip_addr},
};

/// Where the pipeline's decisions go: the kernel verdict map, or nowhere in replay.
pub trait VerdictTarget {
    /// Records `verdict` for the flow `key`.
    fn set_verdict(&mut self, key: &FlowKey, verdict: VerdictEntry) -> anyhow::Result<()>;
    /// Puts the page a blocked flow's client gets, before the verdict that asks for it
    /// (replay and tests keep none).
    fn set_page(&mut self, _key: &FlowKey, _page: &PageEntry) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Counters of what the pipeline did, for `nprot stats` and the exit summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PipelineStats {
    /// Kernel records handled.
    pub records: u64,
    /// ClientHellos parsed and judged.
    pub tls_inspected: u64,
    /// HTTP requests parsed and judged.
    pub http_inspected: u64,
    /// Flows whose first bytes were neither TLS nor HTTP (or malformed).
    pub not_recognised: u64,
    /// Flows that ended, or ran out of capture budget, before a parse completed.
    pub gave_up: u64,
    /// Flows not reassembled because the table was full.
    pub reassembly_overflows: u64,
    /// Verdicts that could not be written to the kernel verdict map.
    pub verdict_errors: u64,
    /// Flows given a block verdict.
    pub blocked: u64,
    /// Block or Warn decisions logged without enforcement (audit mode).
    pub audited: u64,
    /// Requests and tunnelled ClientHellos inspected behind a forward proxy.
    pub proxy_inspected: u64,
    /// Tunnels whose ClientHello named another host than their CONNECT.
    pub fronting: u64,
    /// Connections left uninspected after a request whose end could not be found (a
    /// body over [`MAX_BODY_SKIP`], or a malformed chunked body).
    pub requests_gave_up: u64,
    /// Decided flows not remembered because the table of them was full: a segment of
    /// such a flow captured before its verdict applied may start a stream again.
    pub decided_overflows: u64,
    /// Connections whose client bytes stopped being HTTP/1.x (or TLS, in a tunnel) after
    /// a request without an `Upgrade`: what follows cannot be judged; counted, never silent.
    pub requests_not_http: u64,
    /// Connections that switched protocols (`Upgrade`): inspection ends after that request.
    pub upgraded: u64,
    /// Request heads longer than [`http::MAX_HEAD_LEN`]: judged by what their start says
    /// and by the `oversized` setting.
    pub oversized: u64,
    /// Request heads with bytes the kernel did not capture (a segment cut to its capture
    /// bound, the capture budget spent, or no room to hold more): treated like oversized
    /// ones.
    pub heads_not_captured: u64,
    /// Capture budgets renewed for a long request head still incomplete.
    pub budget_renewals: u64,
    /// ClientHellos read from QUIC Initials and judged (also in `tls_inspected`).
    pub quic_inspected: u64,
    /// QUIC flows whose client datagrams were no valid Initials (garbled, truncated,
    /// replayed with other keys, an unknown version, a frame an Initial may not carry):
    /// inspection ended, the flow allowed.
    pub quic_invalid: u64,
    /// QUIC flows whose Initials ended (budget spent, or idle) before a whole
    /// ClientHello (also in `gave_up`).
    pub quic_gave_up: u64,
    /// QUIC flows not read because their table was full: allowed unjudged.
    pub quic_overflows: u64,
    /// Datagrams of QUIC connections already decided, captured before the kernel picked
    /// the verdict up.
    pub quic_late: u64,
    /// DNS queries read.
    pub dns_queries: u64,
    /// DNS responses read (each a `DnsConnectionInspected` event).
    pub dns_responses: u64,
    /// DNS messages that did not parse (malformed, cut by the capture bound, compression
    /// loops, too many records): not reported.
    pub dns_malformed: u64,
    /// DNS queries whose response never came (or was not seen) within 5 s.
    pub dns_unanswered: u64,
    /// Blocked plain-HTTP requests answered with a page or a redirect (`block_page`).
    pub pages: u64,
    /// Pages that could not be built or handed to the kernel: those flows were reset
    /// instead.
    pub page_errors: u64,
    /// Continue links followed: bypasses asked of the daemon.
    pub continue_links: u64,
    /// Connection events that carry a name from DNS (`dns_name`).
    pub dns_named_flows: u64,
    /// DNS queries read from TCP flows to port 53 (each a `DnsConnectionInspected`).
    pub dns_tcp_queries: u64,
    /// Flows whose first bytes are neither TLS, HTTP nor DNS, judged by their address
    /// (and, with `dns_names = "enforce"`, by the name their client resolved).
    pub unnamed_judged: u64,
    /// Flows whose server spoke first, judged from the kernel's `ServerFirst` record (by
    /// address and DNS name; counted in `unnamed_judged` too).
    pub server_first: u64,
    /// Flows judged by a name from DNS (`dns_names = "enforce"`; nothing on the wire).
    pub dns_name_judged: u64,
    /// ClientHellos with an encrypted_client_hello extension and nothing to say it is
    /// real (`ech` = `grease_or_real`).
    pub ech_grease_or_real: u64,
    /// ClientHellos whose ECH is known to be real (`ech` = `real`).
    pub ech_real: u64,
    /// Flows reset for real ECH (`ech = "block"`, block mode).
    pub ech_blocked: u64,
    /// DNS queries for blocked names the kernel answered NXDOMAIN (block mode).
    pub dns_blocked: u64,
    /// DNS queries for names the policy blocks that the kernel let through in block
    /// mode (inside a tunnel, not a standard query, the name map out of date or full).
    pub dns_block_missed: u64,
    /// Flows the kernel pre-filter sent here as possible matches that matched no
    /// indicator: the summary's false positives (ECH candidates not counted).
    pub prefilter_false_positives: u64,
    /// Flows the kernel pre-filter let go on that the policy blocks: a summary out of
    /// step with the policy. Always 0 unless something is wrong; the verdict still
    /// resets what follows.
    pub prefilter_misses: u64,
}

/// What block mode does with a request head that cannot be judged in full (config key
/// `oversized`): one over [`http::MAX_HEAD_LEN`], or one whose bytes were not all
/// captured. Either way the head's start is judged, and the flow is counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OversizedAction {
    /// Let it through (unless what its start says is blocked).
    #[default]
    Allow,
    /// Reset it.
    Block,
}

impl std::str::FromStr for OversizedAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(OversizedAction::Allow),
            "block" => Ok(OversizedAction::Block),
            other => Err(format!("{other:?} is neither \"allow\" nor \"block\"")),
        }
    }
}

impl OversizedAction {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OversizedAction::Allow => "allow",
            OversizedAction::Block => "block",
        }
    }
}

/// Bytes a stream may hold while a long request head is incomplete: the longest head
/// judged, and one segment's capture past it (what pipelines behind it).
pub const HEAD_STREAM_LIMIT: usize = http::MAX_HEAD_LEN + 4096;

/// Bytes a stream holds normally (one request head or ClientHello, with room to spare);
/// raised to [`HEAD_STREAM_LIMIT`] while a long head is incomplete.
pub const STREAM_LIMIT: usize = 16 * 1024;

/// Per-flow facts kept while its client bytes are reassembled.
#[derive(Debug, Clone)]
struct Inspection {
    last_ns: u64,
    phase: Phase,
    /// HTTP requests parsed on the connection so far (`trans_depth` of the last one).
    requests: u32,
    /// Payload bytes received since the last `Continue` was sent: at least what the
    /// kernel counted against its capture budget since it applied that `Continue`.
    since_continue: usize,
    /// Sequence number just past the captured part of the last segment the kernel cut
    /// (to its per-segment bound, or its budget): the bytes after it never come.
    cut_at: Option<u32>,
    /// When the kernel reported a FIN or RST while bytes awaited a decision: the stream
    /// is kept for [`CLOSE_GRACE_NS`], since the server may have ignored it (a bad
    /// checksum, out of window) and the request go on.
    closed_ns: Option<u64>,
}

impl Inspection {
    /// True while bytes of `stream` await a decision; false for a kept-alive
    /// connection whose requests so far are all decided.
    fn awaits(&self, stream: &Stream) -> bool {
        matches!(self.phase, Phase::First)
            || matches!(self.phase, Phase::Dns) && self.requests == 0
            || !stream.contiguous().is_empty()
    }
}

/// Where a flow under inspection stands.
#[derive(Debug, Clone)]
enum Phase {
    /// Its first bytes.
    First,
    /// At the next DNS message of a TCP flow to port 53.
    Dns,
    /// After an allowed CONNECT: the first bytes inside the tunnel.
    Tunnel(Arc<ConnectTarget>),
    /// Between requests on a kept-alive HTTP/1.x connection (to a server or a proxy).
    Requests,
    /// In a chunked request body, at the start of a chunk.
    Chunked,
}

/// What a CONNECT asked for.
#[derive(Debug)]
struct ConnectTarget {
    /// `host:port` as in the request.
    authority: String,
    host: Option<String>,
}

/// A ClientHello or request head and what the policy made of it.
struct Judged<'p> {
    parsed: Parsed,
    outcome: Outcome<'p>,
    proxy: ProxyFields,
    /// Its number among the connection's HTTP requests.
    depth: u32,
    /// A request head judged by its start only.
    unfinished: Option<Unfinished>,
    /// The QUIC version of a ClientHello read from QUIC Initials.
    quic_version: Option<QuicVersion>,
    /// What the ClientHello says of ECH, and why `Real`.
    ech: (Ech, Option<EchEvidence>),
    /// The name the client resolved the server from, where the wire names none (or
    /// hides it behind real ECH).
    dns_name: Option<String>,
    /// Reset (or, in audit mode, audited) by `ech = "block"`.
    ech_policy: bool,
    /// An indicator other than an Allow one matched (the policy's own decision).
    matched: bool,
}

/// A request head that cannot be judged in full, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unfinished {
    why: Why,
    /// Its bytes seen (in order, from its start).
    seen: usize,
}

/// Why a request head cannot be judged in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Longer than [`http::MAX_HEAD_LEN`].
    TooLong,
    /// Bytes of it were not captured.
    NotCaptured,
}

impl Why {
    /// The `reason` of its event.
    fn reason(self) -> &'static str {
        match self {
            Why::TooLong => "head_too_long",
            Why::NotCaptured => "head_not_captured",
        }
    }
}

/// One item a walk found, to judge: what was parsed, in which phase, its number among
/// the connection's requests, and whether it is a head judged by its start only.
struct Item {
    phase: Phase,
    parsed: Parsed,
    depth: u32,
    unfinished: Option<Unfinished>,
}

/// What follows a judged request on its flow.
enum Next {
    /// Nothing more to inspect.
    Done,
    /// The request switched protocols: what follows is not HTTP/1.x.
    Upgraded,
    /// More requests may follow, but where they start is unknown.
    Unknown,
    /// Inspection goes on in this phase after this many more bytes.
    Phase(Phase, usize),
}

/// The longest request body skipped to reach the next request on a connection.
pub const MAX_BODY_SKIP: u64 = 1 << 30;

/// What comes after `parsed`, parsed in `phase`: every HTTP/1.x request may be followed
/// by another one on its connection (after its body), a CONNECT opens a tunnel whose
/// first bytes are inspected, and a ClientHello or what a tunnel starts with ends
/// inspection.
fn next_phase(phase: &Phase, parsed: &Parsed) -> Next {
    let req = match parsed {
        Parsed::Http(req) => req,
        Parsed::Dns(query) => return Next::Phase(Phase::Dns, query.frame_len),
        Parsed::Tls(_) => return Next::Done,
    };
    if let Phase::Tunnel(_) = phase {
        return Next::Done;
    }
    if req.connect {
        return Next::Phase(
            Phase::Tunnel(Arc::new(ConnectTarget {
                authority: req.url(),
                host: req.host.clone(),
            })),
            req.header_len,
        );
    }
    if req.upgrade {
        return Next::Upgraded;
    }
    match req.body {
        Body::Chunked => Next::Phase(Phase::Chunked, req.header_len),
        Body::None | Body::Length(_) => match req.total_len() {
            Some(n) if n <= MAX_BODY_SKIP => Next::Phase(Phase::Requests, n as usize),
            _ => Next::Unknown,
        },
    }
}

/// Why a walk over a flow's bytes ended its inspection.
enum End {
    /// The last item parsed was all there is to inspect.
    Done,
    /// Bytes that are neither TLS nor HTTP; `first`: the flow's very first bytes.
    NotRecognised { why: &'static str, first: bool },
    /// The stream is full, or the kernel's capture budget is spent, before an item
    /// completed.
    GaveUp,
    /// A request whose end could not be found (body too long, or badly chunked).
    RequestsGaveUp,
    /// A request switched protocols.
    Upgraded,
    /// A request head that cannot be judged in full (the last item, judged by its start).
    Unfinished,
}

/// What a flow's in-order bytes held: the items parsed, and whether inspection ends
/// (`None`: more bytes are awaited).
struct Walk {
    items: Vec<Item>,
    end: Option<End>,
    /// Bytes of an incomplete HTTP request head the walk stopped in, if it did.
    head_pending: Option<usize>,
    /// Client sequence number just past what was dealt with (the stream's start now).
    next_seq: u32,
    /// The stream's start moved (items, or body chunks skipped): the kernel is told, so
    /// that it neither holds nor captures for bytes that are decided.
    advanced: bool,
}

/// Whether `buf`, awaited in `phase`, is the start of an HTTP request head.
fn http_head(phase: &Phase, buf: &[u8]) -> bool {
    match phase {
        Phase::Requests => !buf.is_empty(),
        Phase::First | Phase::Tunnel(_) => {
            matches!(http::match_method(buf), http::MethodMatch::Method(_))
        }
        Phase::Chunked | Phase::Dns => false,
    }
}

/// Parses everything that can be parsed from `stream`, moving it past each item: usually
/// one ClientHello or request; behind a forward proxy a CONNECT and what the tunnel
/// starts with, or several requests on one connection. `budget_spent`: the kernel
/// captures nothing more.
fn walk(stream: &mut Stream, inspection: &mut Inspection, budget_spent: bool) -> Walk {
    let mut items = Vec::new();
    let mut head_pending = None;
    let start = stream.base_seq();
    let end = loop {
        let buf = stream.contiguous();
        let outcome = match inspection.phase {
            Phase::Requests | Phase::Chunked if buf.is_empty() => ParseOutcome::NeedMore,
            Phase::Chunked => match http::chunk_step(buf) {
                http::ChunkStep::Chunk(n) | http::ChunkStep::End(n) if n > MAX_BODY_SKIP => {
                    break Some(End::RequestsGaveUp);
                }
                http::ChunkStep::Chunk(n) => {
                    stream.advance(n as usize);
                    continue;
                }
                http::ChunkStep::End(n) => {
                    stream.advance(n as usize);
                    inspection.phase = Phase::Requests;
                    continue;
                }
                http::ChunkStep::Bad(_) => break Some(End::RequestsGaveUp),
                http::ChunkStep::NeedMore => ParseOutcome::NeedMore,
            },
            Phase::Dns => dns::parse_tcp_query(buf),
            Phase::Requests => http::parse_http_request(buf),
            Phase::First | Phase::Tunnel(_) => parse_client_payload(buf),
        };
        // A head that will never be seen in full is judged by its start.
        let unfinished = |why: Why, items: &mut Vec<Item>, inspection: &mut Inspection| {
            let Some(req) = http::parse_head_prefix(buf) else {
                // Unreachable: the bytes so far were a valid start of a head.
                return End::NotRecognised {
                    why: "malformed HTTP request head",
                    first: false,
                };
            };
            inspection.requests = inspection.requests.saturating_add(1);
            items.push(Item {
                phase: inspection.phase.clone(),
                parsed: Parsed::Http(req),
                depth: inspection.requests,
                unfinished: Some(Unfinished {
                    why,
                    seen: buf.len(),
                }),
            });
            End::Unfinished
        };
        match outcome {
            ParseOutcome::Complete(parsed) => {
                let next = next_phase(&inspection.phase, &parsed);
                if let Parsed::Http(_) | Parsed::Dns(_) = parsed {
                    inspection.requests = inspection.requests.saturating_add(1);
                }
                items.push(Item {
                    phase: inspection.phase.clone(),
                    parsed,
                    depth: inspection.requests,
                    unfinished: None,
                });
                match next {
                    Next::Done => break Some(End::Done),
                    Next::Upgraded => break Some(End::Upgraded),
                    Next::Unknown => break Some(End::RequestsGaveUp),
                    Next::Phase(phase, consumed) => {
                        stream.advance(consumed);
                        inspection.phase = phase;
                    }
                }
            }
            ParseOutcome::NotRecognised(why) => {
                // Not DNS on port 53 is as unknown as any other protocol.
                let first = items.is_empty()
                    && (matches!(inspection.phase, Phase::First)
                        || matches!(inspection.phase, Phase::Dns) && inspection.requests == 0);
                break Some(End::NotRecognised { why, first });
            }
            ParseOutcome::Oversized => {
                break Some(unfinished(Why::TooLong, &mut items, inspection));
            }
            ParseOutcome::NeedMore => {
                // The missing bytes never come: no room for them, no budget left in the
                // kernel, or the segment that carried them was cut.
                let stuck =
                    stream.is_full() || budget_spent || inspection.cut_at == Some(stream.end_seq());
                let head = http_head(&inspection.phase, buf);
                if stuck && head {
                    break Some(unfinished(Why::NotCaptured, &mut items, inspection));
                }
                // Decided items release what is held; the next one waits for its bytes.
                if !items.is_empty() || stream.base_seq() != start {
                    head_pending = head.then_some(buf.len());
                    break None;
                }
                if stuck {
                    break Some(End::GaveUp);
                }
                head_pending = head.then_some(buf.len());
                break None;
            }
        }
    };
    Walk {
        items,
        end,
        head_pending,
        next_seq: stream.base_seq(),
        advanced: stream.base_seq() != start,
    }
}

/// Two host names are the same, ignoring case and one trailing dot.
fn same_host(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// A configured forward proxy: its address, and its port if given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownProxy {
    /// Address of the proxy.
    pub ip: IpAddr,
    /// Port of the proxy; `None` matches any port on `ip`.
    pub port: Option<u16>,
}

/// Turns records into events and verdicts.
pub struct Pipeline {
    reassembly: Reassembler<Inspection>,
    factory: EventFactory,
    policy: Arc<Policy>,
    mode: Mode,
    /// Events produced and not yet published.
    pub events: Vec<Event>,
    stats: PipelineStats,
    /// Kernel capture of the deciding bytes → verdict written, in ns.
    pub verdict_latency: Histogram,
    /// This host's addresses, to tell inbound from forwarded flows (`None`: unknown).
    local_addrs: Option<HashSet<IpAddr>>,
    /// Kernel capture of a payload segment → its record in user space, in ns: the part
    /// of the verdict latency spent waking the daemon.
    pub wake_latency: Histogram,
    /// Proxies named in the configuration (`proxy_known` in events).
    known_proxies: Vec<KnownProxy>,
    /// Who opened local flows (none in replay, or without the connect hooks).
    processes: Option<Box<dyn ProcessSource>>,
    /// How long the kernel keeps an idle flow: decided streams are kept as long.
    flow_idle_ns: u64,
    /// What block mode does with a head that cannot be judged in full.
    oversized: OversizedAction,
    /// A long head incomplete after this many bytes raises its stream's limit, and gets
    /// the kernel's capture budget renewed each time as many more came: a quarter of the
    /// budget, so that a renewal lands with most of the last one left.
    renew_after: usize,
    /// Flows given a final verdict lately, with their first client sequence number and
    /// the time: segments the kernel captured before it picked the verdict up are still
    /// in the ring, and must not start a stream whose verdict would replace it.
    decided: HashMap<FlowKey, (u32, u64)>,
    /// QUIC flows whose Initials are read.
    quic: QuicFlows,
    /// DNS queries awaiting their response: (flow, message id) → when asked.
    dns_pending: HashMap<(FlowKey, u16), u64>,
    /// Queries the kernel answered NXDOMAIN: (flow, message id) → when. The answer passes
    /// a hook on its way back and is copied as a response; it is not reported again.
    dns_forged: HashMap<(FlowKey, u16), u64>,
    /// Names clients resolved, by (client, address).
    names: NameCache,
    /// What names from DNS and ECH evidence may decide.
    name_settings: NameSettings,
    /// Pages for blocked plain-HTTP requests, and the Continue links handed out.
    pub pages: Pages,
    /// Verdicts that wait for a bypass a Continue link asked for: the daemon grants it,
    /// then delivers them ([`Pipeline::deliver_granted`]).
    pub grants: Vec<Granted>,
}

/// A verdict answering a Continue link, held until its bypass is granted.
#[derive(Debug)]
pub struct Granted {
    /// What the link asks.
    pub grant: ContinueGrant,
    /// The account of the local program that followed it, where known.
    pub account: Option<String>,
    key: FlowKey,
    verdict: VerdictEntry,
    ends: FlowEnds,
    ts_ns: u64,
    awaited: bool,
}

/// DNS queries remembered at once at most.
const MAX_DNS_PENDING: usize = 65_536;

/// How long a DNS query waits for its response before it counts as unanswered.
const DNS_ANSWER_NS: u64 = 5_000_000_000;

/// Decided flows remembered at once at most.
const MAX_DECIDED_FLOWS: usize = 65_536;

/// How long a stream whose flow reported a close is kept while bytes of it await a
/// decision: long enough for a request to go on past a RST or FIN its server ignored.
pub const CLOSE_GRACE_NS: u64 = 2_000_000_000;

/// How long a decided flow is remembered: its late segments were captured before the
/// verdict was written, so they are in the ring by then.
const DECIDED_KEEP_NS: u64 = 2_000_000_000;

/// Flows reassembled at once at most.
const MAX_INSPECTED_FLOWS: usize = 65_536;

impl Pipeline {
    /// A pipeline deciding by `policy` under `mode`. `capture_budget` is the kernel's
    /// per-flow capture budget (`SensorConfig::capture_flow_max`): a stream holds as
    /// much, and up to [`HEAD_STREAM_LIMIT`] while a long request head is incomplete,
    /// for which the pipeline renews the kernel's budget (a `Continue` at the head's
    /// start).
    pub fn new(
        factory: EventFactory,
        capture_budget: usize,
        policy: Arc<Policy>,
        mode: Mode,
    ) -> Pipeline {
        Pipeline {
            reassembly: Reassembler::new(MAX_INSPECTED_FLOWS, capture_budget),
            factory,
            policy,
            mode,
            events: Vec::new(),
            stats: PipelineStats::default(),
            verdict_latency: Histogram::default(),
            wake_latency: Histogram::default(),
            local_addrs: None,
            known_proxies: Vec::new(),
            processes: None,
            flow_idle_ns: nprot_common::FLOW_IDLE_TIMEOUT_NS_DEFAULT,
            oversized: OversizedAction::default(),
            renew_after: (capture_budget / 4).max(1),
            decided: HashMap::new(),
            quic: QuicFlows::default(),
            dns_pending: HashMap::new(),
            dns_forged: HashMap::new(),
            names: NameCache::default(),
            name_settings: NameSettings::default(),
            pages: Pages::default(),
            grants: Vec::new(),
        }
    }

    /// Sets `dns_names`, `ech` and `ech_public_names`.
    pub fn set_name_settings(&mut self, settings: NameSettings) {
        self.name_settings = settings;
    }

    /// Sets what block mode does with request heads that cannot be judged in full.
    pub fn set_oversized(&mut self, action: OversizedAction) {
        self.oversized = action;
    }

    /// Names the forward proxies the operator knows of; events mark whether a proxy
    /// flow went to one of them.
    pub fn set_known_proxies(&mut self, proxies: Vec<KnownProxy>) {
        self.known_proxies = proxies;
    }

    /// Names the processes behind local flows from now on.
    pub fn set_processes(&mut self, source: Box<dyn ProcessSource>) {
        self.processes = Some(source);
    }

    /// The process that opened the flow of `rec`: only outbound flows have a local
    /// socket. `need_exe`: a decision depends on it, read /proc now if need be.
    fn process_of(
        &mut self,
        rec: &Record<'_>,
        ends: &FlowEnds,
        need_exe: bool,
    ) -> Option<Arc<ProcessInfo>> {
        if rec.socket_cookie == 0 || ends.direction != Direction::Outbound {
            return None;
        }
        self.processes
            .as_mut()?
            .process(rec.socket_cookie, need_exe)
    }

    /// Queues an event that concerns no flow (the control plane's), built by `make`.
    pub fn log(&mut self, make: impl FnOnce(&mut EventFactory) -> Event) {
        let ev = make(&mut self.factory);
        self.events.push(ev);
    }

    /// Tells the pipeline this host's addresses (refreshed as interfaces change).
    pub fn set_local_addrs(&mut self, addrs: HashSet<IpAddr>) {
        self.local_addrs = Some(addrs);
    }

    /// Switches the enforcement mode for the flows decided from now on.
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// Switches the policy for the flows decided from now on.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.policy = policy;
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What the pipeline did so far.
    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            reassembly_overflows: self.reassembly.overflows,
            // A stream replaced by a new connection on its four-tuple ended undecided.
            gave_up: self.stats.gave_up + self.reassembly.superseded,
            quic_overflows: self.quic.overflows,
            ..self.stats
        }
    }

    /// Handles one kernel record.
    pub fn on_record(&mut self, rec: &Record<'_>, verdicts: &mut dyn VerdictTarget) {
        self.stats.records += 1;
        let ends = flow_ends(rec, self.local_addrs.as_ref());
        let first = self.events.len();
        match rec.kind {
            // A stream left by an earlier connection on this four-tuple is replaced when
            // the new one's first bytes come (the reassembler tells them apart by their
            // first sequence number), not here: with Fast Open they come first.
            RecordKind::Established => self.connection(ActionType::ConnectionSuccess, rec, &ends),
            RecordKind::Failed => self.connection(ActionType::ConnectionFailed, rec, &ends),
            RecordKind::Closed => self.closed(&rec.tuple.key(), rec.ts_ns),
            RecordKind::ServerFirst => self.on_server_first(rec, &ends, verdicts),
            RecordKind::Payload
                if rec.tuple.proto == PROTO_UDP && rec.tuple.server_port == DNS_PORT =>
            {
                self.on_dns(rec, &ends);
            }
            RecordKind::Payload if rec.tuple.proto == PROTO_UDP => {
                self.on_datagram(rec, ends, verdicts);
            }
            RecordKind::Payload => self.on_payload(rec, ends, verdicts),
        }
        if self.events.len() > first
            && let Some(process) = self.process_of(rec, &ends, false)
        {
            for ev in &mut self.events[first..] {
                ev.process = Some(ProcessColumns(Arc::clone(&process)));
            }
        }
    }

    /// Drops the stream of a flow that ended, counting it if bytes still awaited a
    /// decision.
    /// A FIN or RST of a flow under inspection: a stream with bytes awaiting a decision
    /// is kept for a grace period (the rest of its request may still come), any other
    /// is forgotten.
    fn closed(&mut self, key: &FlowKey, ts_ns: u64) {
        if let Some((stream, inspection)) = self.reassembly.get_mut(key)
            && inspection.awaits(stream)
            && !stream.contiguous().is_empty()
        {
            inspection.closed_ns = Some(ts_ns);
            return;
        }
        self.forget(key);
    }

    fn forget(&mut self, key: &FlowKey) {
        self.decided.remove(key);
        if let Some((stream, inspection)) = self.reassembly.remove(key)
            && inspection.awaits(&stream)
        {
            self.stats.gave_up += 1;
        }
    }

    fn on_payload(&mut self, rec: &Record<'_>, ends: FlowEnds, verdicts: &mut dyn VerdictTarget) {
        // A pre-allowed flow's record wakes nobody and is read with the next drain: no
        // one waited for it, and the latency figures are those of verdicts waited for.
        if rec.awaited() {
            self.wake_latency
                .record(monotonic_ns().saturating_sub(rec.ts_ns));
        }
        let key = rec.tuple.key();
        if self
            .decided
            .get(&key)
            .is_some_and(|&(origin, _)| origin == rec.client_data_seq)
        {
            return;
        }
        let dns_over_tcp = rec.tuple.proto == PROTO_TCP && rec.tuple.server_port == DNS_PORT;
        let meta = || Inspection {
            last_ns: rec.ts_ns,
            phase: if dns_over_tcp {
                Phase::Dns
            } else {
                Phase::First
            },
            requests: 0,
            since_continue: 0,
            cut_at: None,
            closed_ns: None,
        };
        let (walked, since_continue) = if let Ok(((stream, inspection), grew)) =
            self.reassembly.insert(
                key,
                (rec.client_data_seq, rec.stream_seq),
                rec.seq,
                rec.payload,
                meta,
            ) {
            inspection.last_ns = rec.ts_ns;
            // Bytes after a reported close: the server ignored it.
            inspection.closed_ns = None;
            inspection.since_continue += rec.payload.len();
            let cut = rec.truncated || rec.budget_spent;
            if cut {
                inspection.cut_at = Some(rec.seq.wrapping_add(rec.payload.len() as u32));
            }
            // Nothing new in order: only a cut changes what the bytes held say.
            if !grew && !cut {
                return;
            }
            let walked = walk(stream, inspection, rec.budget_spent);
            (walked, inspection.since_continue)
        } else {
            self.stats.gave_up += 1;
            return self.deliver(rec, &ends, &key, Verdict::Allow.into(), verdicts);
        };

        // A long head keeps the kernel capturing: its stream may hold more, and the
        // kernel's budget is renewed (a Continue at the head's start, which keeps the
        // server's answer held) before it runs out. Without room for the stream, the
        // budget runs out and the head is judged by its start.
        let mut renew = false;
        match walked.head_pending {
            Some(len) if walked.end.is_none() && len >= self.renew_after => {
                renew = self.reassembly.raise_limit(&key, HEAD_STREAM_LIMIT)
                    && since_continue >= self.renew_after;
            }
            _ => self.reassembly.lower_limit(&key),
        }

        // Judged in order; a blocked item ends the flow, and what follows it is moot.
        let policy = Arc::clone(&self.policy);
        let mut judged: Vec<Judged<'_>> = Vec::with_capacity(walked.items.len());
        for item in walked.items {
            let item = self.judge(&policy, rec, &ends, item);
            let blocked = item.outcome.verdict == Verdict::Block;
            judged.push(item);
            if blocked {
                break;
            }
        }
        // First bytes no parser knows name nothing: the flow is judged by where it goes.
        let unnamed_blocked = judged.is_empty()
            && matches!(walked.end, Some(End::NotRecognised { first: true, .. }))
            && self.judge_unnamed(rec, &ends) == Verdict::Block;
        let blocked = unnamed_blocked
            || judged
                .last()
                .is_some_and(|j| j.outcome.verdict == Verdict::Block);
        self.count_prefiltered(rec, &ends, &judged, blocked);
        let mut granted = None;
        let verdict = match (&walked.end, blocked) {
            (_, true) => {
                let (verdict, grant) =
                    self.blocked_verdict(rec, &ends, &key, judged.last(), verdicts);
                granted = grant;
                verdict
            }
            (Some(_), false) => VerdictEntry::new(Verdict::Allow),
            // Requests decided (or a body skipped), the connection goes on: release what
            // is held, and let the kernel skip what is decided.
            (None, false) if !judged.is_empty() || walked.advanced || renew => {
                VerdictEntry::continue_after(walked.next_seq)
            }
            (None, false) => return,
        };
        if blocked || walked.end.is_some() {
            self.reassembly.remove(&key);
            if self.decided.len() < MAX_DECIDED_FLOWS || self.decided.contains_key(&key) {
                self.decided.insert(key, (rec.client_data_seq, rec.ts_ns));
            } else {
                self.stats.decided_overflows += 1;
            }
        } else if let Some((_, inspection)) = self.reassembly.get_mut(&key) {
            // Every Continue gives the kernel a fresh budget.
            inspection.since_continue = 0;
        }
        if let Some(grant) = granted {
            self.stats.continue_links += 1;
            let account = self
                .process_of(rec, &ends, true)
                .and_then(|p| p.account_name.as_deref().map(str::to_owned));
            self.grants.push(Granted {
                grant,
                account,
                key,
                verdict,
                ends,
                ts_ns: rec.ts_ns,
                awaited: rec.awaited(),
            });
        } else {
            self.deliver(rec, &ends, &key, verdict, verdicts);
        }
        if renew && !blocked && walked.end.is_none() {
            self.stats.budget_renewals += 1;
        }
        if !blocked {
            match walked.end {
                Some(End::NotRecognised { why, first: true }) => {
                    log::debug!("flow {}: not inspected: {why}", describe(&ends));
                    self.stats.not_recognised += 1;
                }
                Some(End::NotRecognised { why, first: false }) => {
                    log::debug!("flow {}: no longer HTTP/1.x: {why}", describe(&ends));
                    self.stats.requests_not_http += 1;
                }
                Some(End::GaveUp) => self.stats.gave_up += 1,
                Some(End::RequestsGaveUp) => self.stats.requests_gave_up += 1,
                Some(End::Upgraded) => self.stats.upgraded += 1,
                Some(End::Done | End::Unfinished) | None => {}
            }
        }
        for item in &judged {
            self.log_judged(rec, &ends, item);
        }
    }

    /// The server spoke first: the flow is judged by its address (and DNS name) now, as
    /// first bytes no parser knows are; the kernel holds the server's bytes meanwhile.
    fn on_server_first(
        &mut self,
        rec: &Record<'_>,
        ends: &FlowEnds,
        verdicts: &mut dyn VerdictTarget,
    ) {
        self.stats.server_first += 1;
        let verdict = self.judge_unnamed(rec, ends);
        let key = rec.tuple.key();
        self.deliver(rec, ends, &key, verdict.into(), verdicts);
    }

    /// A connection event, with the name the client resolved the server from, if any.
    fn connection(&mut self, action: ActionType, rec: &Record<'_>, ends: &FlowEnds) {
        let name = self.names.name(client_of(ends), ends.server.0, rec.ts_ns);
        if name.is_some() {
            self.stats.dns_named_flows += 1;
        }
        let ev = self.factory.connection_named(action, rec.ts_ns, ends, name);
        self.events.push(ev);
    }

    /// A DNS message: a query is remembered, a response reported with its query and its
    /// addresses noted for the flows that follow.
    fn on_dns(&mut self, rec: &Record<'_>, ends: &FlowEnds) {
        if rec.dns_forged {
            return self.on_dns_forged(rec, ends);
        }
        let msg = match dns::parse_message(rec.payload) {
            Ok(msg) if msg.response == rec.from_server => msg,
            Ok(_) => {
                self.stats.dns_malformed += 1;
                return;
            }
            Err(e) => {
                log::debug!("flow {}: DNS message not read: {e}", describe(ends));
                self.stats.dns_malformed += 1;
                return;
            }
        };
        let key = (rec.tuple.key(), msg.id);
        if !msg.response {
            self.stats.dns_queries += 1;
            self.dns_query_judged(rec, ends, &msg);
            if self.dns_pending.len() < MAX_DNS_PENDING || self.dns_pending.contains_key(&key) {
                self.dns_pending.insert(key, rec.ts_ns);
            } else {
                self.stats.dns_unanswered += 1;
            }
            return;
        }
        if self.dns_forged.remove(&key).is_some() {
            return;
        }
        self.stats.dns_responses += 1;
        self.dns_pending.remove(&key);
        if let Some(q) = &msg.query {
            let client = client_of(ends);
            for (addr, ttl) in dns::resolved_addresses(&msg) {
                self.names.insert(client, addr, &q.name, ttl, rec.ts_ns);
            }
            // An ECH configuration: this client's flows to the name (and to its public
            // names) will carry real ECH.
            for a in &msg.answers {
                if let dns::AnswerData::Svcb {
                    ech: true,
                    ech_public_names,
                    ..
                } = &a.data
                {
                    self.names
                        .insert_ech(client, &a.name, ech_public_names, a.ttl, rec.ts_ns);
                }
            }
        }
        let ev = self.factory.dns(rec.ts_ns, ends, dns_seen(&msg));
        self.events.push(ev);
    }

    /// A client datagram of a QUIC flow: its Initials are read until the ClientHello,
    /// which is judged as over TCP.
    fn on_datagram(&mut self, rec: &Record<'_>, ends: FlowEnds, verdicts: &mut dyn VerdictTarget) {
        self.wake_latency
            .record(monotonic_ns().saturating_sub(rec.ts_ns));
        let key = rec.tuple.key();
        let (version, info) = match self.quic.push(key, rec.ts_ns, rec.payload) {
            Step::Hello { version, info } => (version, info),
            Step::Late => {
                self.stats.quic_late += 1;
                return;
            }
            Step::NeedMore if !rec.budget_spent => return,
            Step::NeedMore => {
                self.stats.gave_up += 1;
                self.stats.quic_gave_up += 1;
                self.quic.decide(&key, Verdict::Allow.into());
                return self.deliver(rec, &ends, &key, Verdict::Allow.into(), verdicts);
            }
            Step::Overflow => {
                return self.deliver(rec, &ends, &key, Verdict::Allow.into(), verdicts);
            }
            Step::Invalid(why) => {
                log::debug!("flow {}: QUIC not inspected: {why}", describe(&ends));
                self.stats.quic_invalid += 1;
                self.quic.decide(&key, Verdict::Allow.into());
                return self.deliver(rec, &ends, &key, Verdict::Allow.into(), verdicts);
            }
        };
        let policy = Arc::clone(&self.policy);
        let item = Item {
            phase: Phase::First,
            parsed: Parsed::Tls(info),
            depth: 0,
            unfinished: None,
        };
        let mut judged = self.judge(&policy, rec, &ends, item);
        judged.quic_version = Some(version);
        let verdict = if judged.outcome.verdict == Verdict::Block {
            Verdict::Block
        } else {
            Verdict::Allow
        };
        self.quic.decide(&key, verdict.into());
        self.deliver(rec, &ends, &key, verdict.into(), verdicts);
        self.log_judged(rec, &ends, &judged);
    }

    /// Hands the verdict to the kernel; the hot path ends here.
    fn deliver(
        &mut self,
        rec: &Record<'_>,
        ends: &FlowEnds,
        key: &FlowKey,
        verdict: VerdictEntry,
        verdicts: &mut dyn VerdictTarget,
    ) {
        self.deliver_at(rec.ts_ns, rec.awaited(), ends, key, verdict, verdicts);
    }

    /// Delivers a verdict held for its Continue link's bypass, once that is granted (or
    /// refused: the redirect goes out either way).
    pub fn deliver_granted(&mut self, granted: &Granted, verdicts: &mut dyn VerdictTarget) {
        let g = granted;
        self.deliver_at(g.ts_ns, g.awaited, &g.ends, &g.key, g.verdict, verdicts);
    }

    /// The verdict of a blocked flow: with its page (`block_page`) for a plain-HTTP
    /// request in block mode, and the bypass its Continue link asks for, if it is one.
    fn blocked_verdict(
        &mut self,
        rec: &Record<'_>,
        ends: &FlowEnds,
        key: &FlowKey,
        last: Option<&Judged<'_>>,
        verdicts: &mut dyn VerdictTarget,
    ) -> (VerdictEntry, Option<ContinueGrant>) {
        let reset = VerdictEntry::new(Verdict::Block);
        let Some(Judged {
            parsed: Parsed::Http(req),
            outcome,
            ..
        }) = last
        else {
            return (reset, None);
        };
        if req.connect || self.mode != Mode::Block || !self.pages.enabled {
            return (reset, None);
        }
        let server_host;
        let host = if let Some(host) = &req.host {
            host.as_str()
        } else {
            server_host = ends.server.0.to_string();
            server_host.as_str()
        };
        let indicator = outcome
            .enforcements
            .iter()
            .find(|e| !e.is_audit)
            .map(|e| e.indicator);
        let warned = indicator.is_some_and(|i| i.action() == Action::Warn);
        let wall = self.factory.wall(rec.ts_ns);
        let Some(answer) = self.pages.answer(
            Asked::of(req, host),
            ends.client.0,
            indicator,
            warned,
            rec.ts_ns,
            wall,
        ) else {
            // Pages are on (checked above): the response did not fit one segment.
            self.stats.page_errors += 1;
            return (reset, None);
        };
        match verdicts.set_page(key, &answer.page) {
            Ok(()) => {
                self.stats.pages += 1;
                (VerdictEntry::block_with_page(), answer.grant)
            }
            Err(e) => {
                self.stats.page_errors += 1;
                log::warn!(
                    "flow {}: page not delivered, reset instead: {e:#}",
                    describe(ends)
                );
                (reset, None)
            }
        }
    }

    fn deliver_at(
        &mut self,
        ts_ns: u64,
        awaited: bool,
        ends: &FlowEnds,
        key: &FlowKey,
        verdict: VerdictEntry,
        verdicts: &mut dyn VerdictTarget,
    ) {
        match verdicts.set_verdict(key, verdict) {
            Ok(()) if !awaited => {}
            Ok(()) => self
                .verdict_latency
                .record(monotonic_ns().saturating_sub(ts_ns)),
            Err(e) => {
                self.stats.verdict_errors += 1;
                log::warn!("flow {}: verdict not delivered: {e:#}", describe(ends));
            }
        }
    }

    /// Matches what was parsed against the policy. Behind a forward proxy the subject is
    /// the real target; the proxy's own address still matches IP indicators.
    /// A head judged by its start only is blocked in block mode if its start is, or if
    /// `oversized = "block"`.
    fn judge<'p>(
        &mut self,
        policy: &'p Policy,
        rec: &Record<'_>,
        ends: &FlowEnds,
        item: Item,
    ) -> Judged<'p> {
        let Item {
            phase,
            parsed,
            depth,
            unfinished,
        } = item;
        let client = client_of(ends);
        let ech = match &parsed {
            Parsed::Tls(hello) if hello.ech => {
                let evidence = self.names.ech_evidence(
                    client,
                    ends.server.0,
                    hello.server_name.as_deref(),
                    &self.name_settings,
                    rec.ts_ns,
                );
                let ech = if evidence.is_some() {
                    Ech::Real
                } else {
                    Ech::GreaseOrReal
                };
                (ech, evidence)
            }
            _ => (Ech::None, None),
        };
        // The name the client resolved the server from, where the wire names none or
        // real ECH hides it. A name on the wire always wins.
        let wire_named = match &parsed {
            Parsed::Tls(hello) => hello.server_name.is_some(),
            Parsed::Http(req) => req.host.is_some(),
            Parsed::Dns(_) => true,
        };
        let dns_name = (!wire_named || ech.0 == Ech::Real)
            .then(|| self.names.name(client, ends.server.0, rec.ts_ns))
            .flatten()
            .map(str::to_owned);
        let by_dns_name =
            self.name_settings.dns_names == DnsNames::Enforce && !wire_named && dns_name.is_some();
        // A request that names no host (HTTP/0.9, a Host-less HTTP/1.0 one) goes to the
        // server's address, as its RemoteUrl says: URL indicators written with it match.
        let server_host;
        let (host, http_path) = match &parsed {
            Parsed::Tls(hello) => (hello.server_name.as_deref(), None),
            Parsed::Http(req) => {
                let host = if let Some(host) = &req.host {
                    host.as_str()
                } else {
                    server_host = ends.server.0.to_string();
                    server_host.as_str()
                };
                (Some(host), (!req.connect).then_some(req.path.as_str()))
            }
            Parsed::Dns(query) => (query.message.query.as_ref().map(|q| q.name.as_str()), None),
        };
        let host = if by_dns_name {
            self.stats.dns_name_judged += 1;
            dns_name.as_deref()
        } else {
            host
        };
        // Indicators are about destinations: the server's address, whichever side it is on.
        let subject = Subject {
            ip: ends.server.0,
            host,
            http_path,
        };
        // Judged at the packet's time, so that replay of an old capture sees the expiries
        // as they were then.
        let now = self.factory.wall(rec.ts_ns);
        let decision = if let Parsed::Dns(_) = &parsed {
            policy.decide_lookup(ends.server.0, host.unwrap_or_default(), now)
        } else {
            // Only a process-scoped indicator makes the decision depend on the process.
            let process = if policy.has_process_scopes() {
                self.process_of(rec, ends, true)
            } else {
                None
            };
            policy.decide_for(&subject, process.as_deref(), now)
        };
        let matched = decision
            .winner
            .is_some_and(|w| w.action() != Action::Allowed)
            || !decision.audits.is_empty();
        let mut outcome = outcome(&decision, self.mode);
        if unfinished.is_some()
            && self.mode == Mode::Block
            && self.oversized == OversizedAction::Block
        {
            outcome.verdict = Verdict::Block;
        }
        // Real ECH hides where the flow goes; `ech = "block"` stops it (never on a mere
        // extension: every Chromium sends a GREASE one).
        let ech_policy = ech.0 == Ech::Real && self.name_settings.ech == EchAction::Block;
        if ech_policy && self.mode == Mode::Block {
            outcome.verdict = Verdict::Block;
        }
        let proxy = self.proxy_fields(ends, &phase, &parsed);
        Judged {
            parsed,
            outcome,
            proxy,
            depth,
            unfinished,
            quic_version: None,
            ech,
            dns_name,
            ech_policy,
            matched,
        }
    }

    /// Checks the kernel pre-filter's judgement of `rec` against the policy's: counts
    /// its false positives, and (loudly) any flow it let go on that the policy blocks.
    fn count_prefiltered(
        &mut self,
        rec: &Record<'_>,
        ends: &FlowEnds,
        judged: &[Judged<'_>],
        blocked: bool,
    ) {
        match rec.prefilter {
            Prefiltered::Allowed if blocked => {
                self.stats.prefilter_misses += 1;
                log::warn!(
                    "flow {}: pre-allowed by the kernel but blocked by the policy",
                    describe(ends)
                );
            }
            Prefiltered::Candidate if !judged.iter().any(|j| j.matched || j.ech.0 != Ech::None) => {
                self.stats.prefilter_false_positives += 1;
            }
            _ => {}
        }
    }

    /// Judges a flow whose first bytes are neither TLS, HTTP nor DNS: by its server's
    /// address, and with `dns_names = "enforce"` by the name its client resolved that
    /// address from. Logs what matched; returns the verdict.
    fn judge_unnamed(&mut self, rec: &Record<'_>, ends: &FlowEnds) -> Verdict {
        self.stats.unnamed_judged += 1;
        let name = self
            .names
            .name(client_of(ends), ends.server.0, rec.ts_ns)
            .map(str::to_owned);
        let enforce = self.name_settings.dns_names == DnsNames::Enforce;
        if enforce && name.is_some() {
            self.stats.dns_name_judged += 1;
        }
        let subject = Subject {
            ip: ends.server.0,
            host: name.as_deref().filter(|_| enforce),
            http_path: None,
        };
        let policy = Arc::clone(&self.policy);
        let process = if policy.has_process_scopes() {
            self.process_of(rec, ends, true)
        } else {
            None
        };
        let decision =
            policy.decide_for(&subject, process.as_deref(), self.factory.wall(rec.ts_ns));
        let outcome = outcome(&decision, self.mode);
        self.log_enforcements(rec, ends, name.as_deref(), &outcome);
        outcome.verdict
    }

    /// The protection events of an outcome (and its counts).
    fn log_enforcements(
        &mut self,
        rec: &Record<'_>,
        ends: &FlowEnds,
        remote_url: Option<&str>,
        outcome: &Outcome<'_>,
    ) {
        for enforcement in &outcome.enforcements {
            if enforcement.is_audit {
                self.stats.audited += 1;
            }
            let ev = self.factory.protection(
                rec.ts_ns,
                ends,
                remote_url.map(str::to_owned),
                protection(enforcement),
                self.mode,
            );
            self.events.push(ev);
        }
        if outcome.verdict == Verdict::Block {
            self.stats.blocked += 1;
        }
    }

    /// The `proxy…` fields of an event about `parsed`, seen in `phase`.
    fn proxy_fields(&self, ends: &FlowEnds, phase: &Phase, parsed: &Parsed) -> ProxyFields {
        // A forward proxy is asked in CONNECT or absolute form; what a tunnel carries
        // went through one.
        let via_proxy = match (phase, parsed) {
            (Phase::Tunnel(_), _) => true,
            (_, Parsed::Http(req)) => req.connect || req.absolute,
            (_, Parsed::Tls(_) | Parsed::Dns(_)) => false,
        };
        if !via_proxy {
            return ProxyFields::default();
        }
        let (ip, port) = ends.server;
        let mut fields = ProxyFields {
            proxy: true,
            proxy_authority: Some(SocketAddr::new(ip, port).to_string()),
            proxy_known: (!self.known_proxies.is_empty()).then(|| {
                self.known_proxies
                    .iter()
                    .any(|p| p.ip == ip && p.port.is_none_or(|p| p == port))
            }),
            ..ProxyFields::default()
        };
        if let Phase::Tunnel(connect) = phase {
            fields.connect_target = Some(connect.authority.clone());
            let named = match parsed {
                Parsed::Tls(hello) => hello.server_name.as_deref(),
                Parsed::Http(req) => req.host.as_deref(),
                Parsed::Dns(_) => None,
            };
            fields.fronting = match (named, connect.host.as_deref()) {
                (Some(named), Some(host)) => !same_host(named, host),
                _ => false,
            };
        }
        fields
    }

    /// Builds the events of a judged ClientHello, request or DNS query, after its
    /// verdict went out.
    fn log_judged(&mut self, rec: &Record<'_>, ends: &FlowEnds, item: &Judged<'_>) {
        if item.dns_name.is_some() {
            self.stats.dns_named_flows += 1;
        }
        let event = match &item.parsed {
            Parsed::Tls(hello) => {
                self.stats.tls_inspected += 1;
                match item.ech.0 {
                    Ech::None => {}
                    Ech::GreaseOrReal => self.stats.ech_grease_or_real += 1,
                    Ech::Real => self.stats.ech_real += 1,
                }
                let mut seen = tls_seen(hello);
                (seen.ech, seen.ech_evidence) = item.ech;
                seen.dns_name.clone_from(&item.dns_name);
                if let Some(version) = item.quic_version {
                    self.stats.quic_inspected += 1;
                    seen.quic_version = Some(version.as_str());
                }
                self.factory.tls(rec.ts_ns, ends, seen, item.proxy.clone())
            }
            Parsed::Http(req) => {
                self.stats.http_inspected += 1;
                let oversized = item.unfinished.map(|u| {
                    match u.why {
                        Why::TooLong => self.stats.oversized += 1,
                        Why::NotCaptured => self.stats.heads_not_captured += 1,
                    }
                    log::debug!(
                        "flow {}: request head not judged in full ({}, {} bytes seen)",
                        describe(ends),
                        u.why.reason(),
                        u.seen
                    );
                    OversizedFields {
                        oversized: true,
                        reason: u.why.reason(),
                        head_bytes: u.seen,
                        oversized_action: self.oversized.as_str(),
                        reset: item.outcome.verdict == Verdict::Block,
                    }
                });
                let mut seen = http_seen(req, ends);
                seen.dns_name.clone_from(&item.dns_name);
                self.factory.http(
                    rec.ts_ns,
                    ends,
                    seen,
                    item.proxy.clone(),
                    item.depth,
                    oversized,
                )
            }
            Parsed::Dns(query) => {
                self.stats.dns_tcp_queries += 1;
                self.factory.dns(rec.ts_ns, ends, dns_seen(&query.message))
            }
        };
        if item.proxy.proxy {
            self.stats.proxy_inspected += 1;
        }
        if item.proxy.fronting {
            self.stats.fronting += 1;
        }
        let remote_url = event.remote_url.clone();
        self.events.push(event);
        self.log_enforcements(rec, ends, remote_url.as_deref(), &item.outcome);
        if item.ech_policy {
            let blocked = self.mode == Mode::Block;
            if blocked {
                self.stats.ech_blocked += 1;
            } else {
                self.stats.audited += 1;
            }
            let outer = match &item.parsed {
                Parsed::Tls(hello) => hello.server_name.clone(),
                _ => None,
            };
            let ev = self.factory.protection(
                rec.ts_ns,
                ends,
                remote_url,
                ech_protection(outer, !blocked),
                self.mode,
            );
            self.events.push(ev);
        }
    }

    /// Forgets flows that sent nothing for `idle_ns` while bytes awaited a decision;
    /// returns how many. A kept-alive connection between requests is kept as long as the
    /// kernel keeps its flow ([`Pipeline::set_flow_idle_timeout`]): forgotten earlier,
    /// its next request would find no stream to continue.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) -> usize {
        let decided_idle_ns = self.flow_idle_ns;
        // Only a stream with bytes awaiting a decision gave up; a kept-alive connection
        // between requests that went quiet did not.
        let mut gave_up = 0;
        let n = self.reassembly.retain(|stream, i| {
            let awaits = i.awaits(stream);
            let keep = if let Some(closed) = i.closed_ns {
                now_ns.saturating_sub(closed) < CLOSE_GRACE_NS
            } else {
                let idle = now_ns.saturating_sub(i.last_ns);
                idle < if awaits { idle_ns } else { decided_idle_ns }
            };
            if !keep && awaits {
                gave_up += 1;
            }
            keep
        });
        self.stats.gave_up += gave_up;
        self.decided
            .retain(|_, &mut (_, at)| now_ns.saturating_sub(at) < DECIDED_KEEP_NS);
        let before = self.dns_pending.len();
        self.dns_pending
            .retain(|_, &mut at| now_ns.saturating_sub(at) < DNS_ANSWER_NS);
        self.stats.dns_unanswered += (before - self.dns_pending.len()) as u64;
        self.dns_forged
            .retain(|_, &mut at| now_ns.saturating_sub(at) < DNS_ANSWER_NS);
        let quic_gave_up = self.quic.expire(now_ns, idle_ns);
        self.stats.gave_up += quic_gave_up;
        self.stats.quic_gave_up += quic_gave_up;
        n
    }

    /// How long the kernel keeps an idle flow (`flow_idle_timeout_s`).
    pub fn set_flow_idle_timeout(&mut self, idle_ns: u64) {
        self.flow_idle_ns = idle_ns;
    }
}

/// A flow's ends; `local` are this host's addresses, when known (not in replay).
fn flow_ends(rec: &Record<'_>, local: Option<&HashSet<IpAddr>>) -> FlowEnds {
    let t = &rec.tuple;
    let server = ip_addr(t.family, &t.server_addr);
    // A SYN that came in through an ingress hook is inbound only if it was for us.
    let direction = match (rec.outbound, local) {
        (true, _) => Direction::Outbound,
        (false, Some(local)) if !local.contains(&server) => Direction::Forwarded,
        (false, _) => Direction::Inbound,
    };
    FlowEnds {
        client: (ip_addr(t.family, &t.client_addr), t.client_port),
        server: (server, t.server_port),
        direction,
        transport: if t.proto == PROTO_UDP {
            Transport::Udp
        } else {
            Transport::Tcp
        },
    }
}

fn describe(ends: &FlowEnds) -> String {
    let (c, s) = (ends.client, ends.server);
    format!("{}:{} -> {}:{}", c.0, c.1, s.0, s.1)
}

/// What events report of a ClientHello.
fn tls_seen(hello: &ClientHelloInfo) -> TlsSeen {
    TlsSeen {
        server_name: hello.server_name.clone(),
        alpn: hello.alpn.clone(),
        tls_version: hello.tls_version,
        ech: if hello.ech {
            Ech::GreaseOrReal
        } else {
            Ech::None
        },
        ech_evidence: None,
        dns_name: None,
        quic_version: None,
    }
}

/// Who a flow's client is, for the name cache: this host for outbound flows, else its
/// address.
fn client_of(ends: &FlowEnds) -> Client {
    if ends.direction == Direction::Outbound {
        Client::Local
    } else {
        Client::Addr(ends.client.0)
    }
}

/// DNS blocking (issue 15): the kernel answers queries for blocked names itself
/// (`datapath::dns_block`); here they are reported, and a query for a blocked name the
/// kernel let through is audited or counted as missed.
impl Pipeline {
    /// A query the kernel answered NXDOMAIN: the protection event (Blocked, with the
    /// indicator) and the lookup with its forged answer.
    fn on_dns_forged(&mut self, rec: &Record<'_>, ends: &FlowEnds) {
        self.stats.dns_queries += 1;
        self.stats.dns_blocked += 1;
        self.stats.blocked += 1;
        // The kernel sends the answer it made (QR set), replay the query: either reads.
        let msg = match dns::parse_message(rec.payload) {
            Ok(msg) => msg,
            Err(e) => {
                log::debug!("flow {}: forged DNS answer not read: {e}", describe(ends));
                self.stats.dns_malformed += 1;
                return;
            }
        };
        let Some(q) = &msg.query else {
            self.stats.dns_malformed += 1;
            return;
        };
        if self.dns_forged.len() < MAX_DNS_PENDING {
            self.dns_forged.insert((rec.tuple.key(), msg.id), rec.ts_ns);
        }
        let mut seen = dns_seen(&msg);
        seen.rcode = Some("NXDOMAIN".to_owned());
        seen.answers.clear();
        seen.ttl = None;
        seen.forged = true;
        let event = self.factory.dns(rec.ts_ns, ends, seen);
        let remote_url = event.remote_url.clone();
        self.events.push(event);
        let policy = Arc::clone(&self.policy);
        let now = self.factory.wall(rec.ts_ns);
        match dns_block::blocking_indicator(&policy, &q.name, now) {
            Some(indicator) => {
                let ev = self.factory.protection(
                    rec.ts_ns,
                    ends,
                    remote_url,
                    protection(&Enforcement {
                        indicator,
                        is_audit: false,
                    }),
                    self.mode,
                );
                self.events.push(ev);
            }
            // The policy changed since the kernel's map was written.
            None => log::debug!(
                "flow {}: {} answered NXDOMAIN by a name no longer blocked",
                describe(ends),
                q.name
            ),
        }
    }

    /// A query that went to the resolver: if the policy blocks its name, it is audited in
    /// audit mode, and in block mode counted as missed (the kernel did not answer it).
    fn dns_query_judged(&mut self, rec: &Record<'_>, ends: &FlowEnds, msg: &dns::DnsMessage) {
        if self.mode == Mode::Disabled {
            return;
        }
        let Some(q) = &msg.query else {
            return;
        };
        let policy = Arc::clone(&self.policy);
        let now = self.factory.wall(rec.ts_ns);
        let Some(indicator) = dns_block::blocking_indicator(&policy, &q.name, now) else {
            return;
        };
        if self.mode == Mode::Block {
            self.stats.dns_block_missed += 1;
            // Warned at the 1st, 2nd, 4th, … miss: a tunnel full of them must not flood.
            let level = if self.stats.dns_block_missed.is_power_of_two() {
                log::Level::Warn
            } else {
                log::Level::Debug
            };
            log::log!(
                level,
                "flow {}: DNS query for {} (blocked by {}) was not answered by the kernel \
                 ({} so far, dns_block_missed)",
                describe(ends),
                q.name,
                indicator.id(),
                self.stats.dns_block_missed
            );
            return;
        }
        self.stats.audited += 1;
        let ev = self.factory.protection(
            rec.ts_ns,
            ends,
            Some(q.name.clone()),
            protection(&Enforcement {
                indicator,
                is_audit: true,
            }),
            self.mode,
        );
        self.events.push(ev);
    }
}

/// What events report of a DNS response.
fn dns_seen(msg: &dns::DnsMessage) -> DnsSeen {
    let answers = msg
        .answers
        .iter()
        .map(|a| match &a.data {
            dns::AnswerData::Addr(ip) => ip.to_string(),
            dns::AnswerData::Cname(target) => format!("CNAME {target}"),
            dns::AnswerData::Svcb {
                priority,
                target,
                alpn,
                ech,
                ech_public_names,
            } => {
                let mut text = format!("{} {priority} {target}", a.rtype);
                if !alpn.is_empty() {
                    text.push_str(" alpn=");
                    text.push_str(&alpn.join(","));
                }
                if *ech {
                    text.push_str(" ech");
                }
                if !ech_public_names.is_empty() {
                    text.push('=');
                    text.push_str(&ech_public_names.join(","));
                }
                text
            }
            dns::AnswerData::Other(_) => a.rtype.to_string(),
        })
        .collect();
    DnsSeen {
        query: msg.query.as_ref().map(|q| q.name.clone()),
        qtype: msg.query.as_ref().map(|q| q.qtype.to_string()),
        rcode: msg.response.then(|| msg.rcode.to_string()),
        answers,
        ttl: msg.min_ttl,
        ech_config: msg
            .answers
            .iter()
            .any(|a| matches!(a.data, dns::AnswerData::Svcb { ech: true, .. })),
        forged: false,
    }
}

/// What events report of a request head; a host the request does not name is the
/// server's address.
fn http_seen(req: &HttpRequest, ends: &FlowEnds) -> HttpSeen {
    HttpSeen {
        method: req.method.clone(),
        host: req.host.clone(),
        uri: req.uri.clone(),
        user_agent: req.user_agent.clone(),
        url: req.url_at(SocketAddr::from(ends.server)),
        dns_name: None,
    }
}

/// What events report of a flow stopped by `ech = "block"` (no indicator decides it: the
/// setting stands in for one, with the outer name as its value).
fn ech_protection(outer_name: Option<String>, is_audit: bool) -> Protection {
    Protection {
        response_category: "EncryptedClientHello",
        indicator_id: "ech".to_owned(),
        indicator_value: outer_name.unwrap_or_default(),
        action: "Block",
        display_name: Some("real Encrypted ClientHello (ech = \"block\")".to_owned()),
        is_audit,
    }
}

/// What events report of the indicator behind an enforcement.
fn protection(enforcement: &Enforcement<'_>) -> Protection {
    let ind = enforcement.indicator;
    Protection {
        response_category: "CustomBlockList",
        indicator_id: ind.id().to_owned(),
        indicator_value: ind.value().to_owned(),
        action: ind.action().as_str(),
        display_name: ind.title().map(str::to_owned),
        is_audit: enforcement.is_audit,
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use nprot_common::FlowTuple;
    use serde_json::Value;

    use super::*;
    use crate::{events::Clock, record::raw_addr};

    /// Verdicts in order, and the decided sequence number of each `Continue`.
    #[derive(Default)]
    struct Verdicts(Vec<(FlowKey, Verdict)>, Vec<u32>);

    impl VerdictTarget for Verdicts {
        fn set_verdict(&mut self, key: &FlowKey, entry: VerdictEntry) -> anyhow::Result<()> {
            let verdict = Verdict::from_raw(entry.verdict);
            self.0.push((*key, verdict));
            if verdict == Verdict::Continue {
                self.1.push(entry.decided_seq);
            }
            Ok(())
        }
    }

    fn tuple() -> FlowTuple {
        let (family, client_addr) = raw_addr("198.18.0.1".parse().unwrap());
        let (_, server_addr) = raw_addr("198.18.0.2".parse().unwrap());
        FlowTuple {
            client_addr,
            server_addr,
            client_port: 40000,
            server_port: 8080,
            family,
            proto: PROTO_TCP,
            _pad: [0; 2],
        }
    }

    fn record(kind: RecordKind, seq: u32, payload: &[u8]) -> Record<'_> {
        Record {
            kind,
            tuple: tuple(),
            ts_ns: 1_000,
            outbound: true,
            seq,
            client_data_seq: 100,
            stream_seq: 100,
            payload,
            truncated: false,
            budget_spent: false,
            from_server: false,
            dns_forged: false,
            socket_cookie: 0,
            ifindex: 1,
            prefilter: Prefiltered::No,
        }
    }

    fn pipeline_with(indicators: &str, mode: Mode) -> Pipeline {
        let loaded = crate::policy::load_json(indicators).unwrap();
        Pipeline::new(
            EventFactory::new("h", "d", Clock::anchored(UNIX_EPOCH)),
            4096,
            Arc::new(Policy::new(loaded.indicators, &[])),
            mode,
        )
    }

    fn pipeline() -> Pipeline {
        pipeline_with(r#"{"indicators": []}"#, Mode::Block)
    }

    /// A client datagram of a QUIC flow from 198.18.0.1:40000 to 198.18.0.2:443.
    fn datagram(payload: &[u8]) -> Record<'_> {
        let mut rec = record(RecordKind::Payload, 0, payload);
        rec.tuple.proto = PROTO_UDP;
        rec.tuple.server_port = 443;
        rec
    }

    /// Chromium's two Initial datagrams, ClientHello scattered over both, are judged
    /// once: a blocked name gets a Block and events with `Protocol` `Udp`.
    #[test]
    fn a_quic_client_hello_over_two_datagrams_is_judged_like_tls() {
        use crate::datapath::parse::quic::testdata::{
            chromium_client_hello, chromium_like_datagrams,
        };
        let mut p = pipeline_with(
            r#"{"indicators": [{"id": "q", "type": "DomainName", "value": "quic.test", "action": "Block"}]}"#,
            Mode::Block,
        );
        let mut v = Verdicts::default();
        let hello = chromium_client_hello("quic.test");
        let datagrams = chromium_like_datagrams(QuicVersion::V1, &[7; 8], &hello);
        assert_eq!(datagrams.len(), 2);
        p.on_record(&datagram(&datagrams[0]), &mut v);
        assert!(v.0.is_empty(), "half a ClientHello decides nothing");
        p.on_record(&datagram(&datagrams[1]), &mut v);
        assert_eq!(v.0.len(), 1);
        assert_eq!(v.0[0].0.proto, PROTO_UDP);
        assert_eq!(v.0[0].1, Verdict::Block);
        let e = json(&p, 0);
        assert_eq!(e["ActionType"], "SslConnectionInspected");
        assert_eq!(e["Protocol"], "Udp");
        assert_eq!(e["AdditionalFields"]["server_name"], "quic.test");
        assert_eq!(e["AdditionalFields"]["quic_version"], "v1");
        assert_eq!(e["AdditionalFields"]["alpn"][0], "h3");
        assert_eq!(
            json(&p, 1)["ActionType"],
            "ExploitGuardNetworkProtectionBlocked"
        );
        // A retransmission of the first datagram, captured before the verdict applied.
        p.on_record(&datagram(&datagrams[0]), &mut v);
        assert_eq!(v.0.len(), 1, "the same connection is not judged again");
        let s = p.stats();
        assert_eq!((s.quic_inspected, s.tls_inspected, s.quic_late), (1, 1, 1));
    }

    /// A datagram that is no Initial ends inspection of its flow, counted, allowed.
    #[test]
    fn a_datagram_that_is_no_initial_is_counted_and_allowed() {
        let mut p = pipeline();
        let mut v = Verdicts::default();
        let mut junk = vec![0xc0, 0, 0, 0, 1, 8];
        junk.resize(1200, 0x55);
        p.on_record(&datagram(&junk), &mut v);
        assert_eq!(
            v.0.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            [Verdict::Allow]
        );
        assert_eq!(p.stats().quic_invalid, 1);
        assert!(p.events.is_empty());
    }

    const INDICATORS: &str = r#"{"indicators": [
        {"id": "b", "type": "Url", "value": "http://a.example/x", "action": "Block", "title": "no x"},
        {"id": "a", "type": "DomainName", "value": "a.example", "action": "Audit"}
    ]}"#;

    fn actions(p: &Pipeline) -> Vec<ActionType> {
        p.events.iter().map(|e| e.action_type).collect()
    }

    #[test]
    fn block_mode_blocks_and_logs_with_the_indicator() {
        let (mut p, mut v) = (pipeline_with(INDICATORS, Mode::Block), Verdicts::default());
        p.on_record(&record(RecordKind::Payload, 100, REQUEST), &mut v);
        assert_eq!(v.0, [(tuple().key(), Verdict::Block)]);
        assert_eq!(
            actions(&p),
            [
                ActionType::HttpConnectionInspected,
                ActionType::ExploitGuardNetworkProtectionBlocked,
                ActionType::ExploitGuardNetworkProtectionAudited,
            ]
        );
        let blocked = serde_json::to_value(&p.events[1]).unwrap();
        assert_eq!(blocked["Table"], "DeviceEvents");
        assert_eq!(blocked["RemoteUrl"], "http://a.example/x");
        let f = &blocked["AdditionalFields"];
        assert_eq!(f["ResponseCategory"], "CustomBlockList");
        assert_eq!(f["IsAudit"], false);
        assert_eq!(f["IndicatorId"], "b");
        assert_eq!(f["IndicatorValue"], "http://a.example/x");
        assert_eq!(f["Action"], "Block");
        assert_eq!(f["DisplayName"], "no x");
        assert_eq!(f["Mode"], "Block");
        assert_eq!(f["direction"], "Outbound");
        assert_eq!(p.stats().blocked, 1);
        assert_eq!(p.verdict_latency.count(), 1);
    }

    #[test]
    fn audit_mode_allows_and_logs_audited() {
        let (mut p, mut v) = (pipeline_with(INDICATORS, Mode::Audit), Verdicts::default());
        p.on_record(&record(RecordKind::Payload, 100, REQUEST), &mut v);
        assert_eq!(v.0, [(tuple().key(), Verdict::Continue)]);
        let audited = serde_json::to_value(&p.events[1]).unwrap();
        assert_eq!(
            audited["ActionType"],
            "ExploitGuardNetworkProtectionAudited"
        );
        assert_eq!(audited["AdditionalFields"]["IsAudit"], true);
        assert_eq!(audited["AdditionalFields"]["Mode"], "Audit");
        assert_eq!(p.stats().blocked, 0);
    }

    #[test]
    fn other_path_is_allowed_with_only_the_audit_event() {
        let (mut p, mut v) = (pipeline_with(INDICATORS, Mode::Block), Verdicts::default());
        let req = b"GET /y HTTP/1.1\r\nHost: a.example\r\n\r\n";
        p.on_record(&record(RecordKind::Payload, 100, req), &mut v);
        assert_eq!(v.0, [(tuple().key(), Verdict::Continue)]);
        assert_eq!(
            actions(&p),
            [
                ActionType::HttpConnectionInspected,
                ActionType::ExploitGuardNetworkProtectionAudited
            ]
        );
    }

    const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: a.example\r\nUser-Agent: t\r\n\r\n";

    struct Fake(Arc<ProcessInfo>);

    impl ProcessSource for Fake {
        fn process(&mut self, cookie: u64, _need_exe: bool) -> Option<Arc<ProcessInfo>> {
            (cookie == 42).then(|| Arc::clone(&self.0))
        }
    }

    fn curl() -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo {
            pid: 7,
            file_name: "curl".into(),
            folder_path: Some("/usr/bin/curl".into()),
            ..Default::default()
        })
    }

    #[test]
    fn outbound_flows_carry_their_process_and_others_do_not() {
        let (mut p, mut v) = (pipeline(), Verdicts::default());
        p.set_processes(Box::new(Fake(curl())));
        let mut rec = record(RecordKind::Established, 0, b"");
        rec.socket_cookie = 42;
        p.on_record(&rec, &mut v);
        let json = serde_json::to_value(&p.events[0]).unwrap();
        assert_eq!(json["InitiatingProcessId"], 7);
        assert_eq!(json["InitiatingProcessFolderPath"], "/usr/bin/curl");
        // A flow whose SYN came in (inbound or forwarded) has no local initiator, even
        // if a cookie were reported.
        rec.outbound = false;
        p.on_record(&rec, &mut v);
        // Unknown cookie: nothing said.
        rec.outbound = true;
        rec.socket_cookie = 41;
        p.on_record(&rec, &mut v);
        for ev in &p.events[1..] {
            let json = serde_json::to_value(ev).unwrap();
            assert!(json.get("InitiatingProcessId").is_none(), "{json}");
            assert!(json.get("InitiatingProcessFileName").is_none(), "{json}");
        }
    }

    #[test]
    fn a_process_scoped_block_decides_by_the_flow_s_process() {
        let indicators = r#"{"indicators": [
            {"id": "c", "type": "DomainName", "value": "a.example", "action": "Block", "process": "curl"}
        ]}"#;
        let (mut p, mut v) = (pipeline_with(indicators, Mode::Block), Verdicts::default());
        p.set_processes(Box::new(Fake(curl())));
        let mut rec = record(RecordKind::Payload, 100, REQUEST);
        rec.socket_cookie = 42;
        p.on_record(&rec, &mut v);
        assert_eq!(v.0, [(tuple().key(), Verdict::Block)]);
        let blocked = serde_json::to_value(&p.events[1]).unwrap();
        assert_eq!(
            blocked["ActionType"],
            "ExploitGuardNetworkProtectionBlocked"
        );
        assert_eq!(blocked["InitiatingProcessFileName"], "curl");
        // Another program (unknown cookie) to the same name passes.
        let (mut p, mut v) = (pipeline_with(indicators, Mode::Block), Verdicts::default());
        p.set_processes(Box::new(Fake(curl())));
        rec.socket_cookie = 41;
        p.on_record(&rec, &mut v);
        assert_eq!(v.0, [(tuple().key(), Verdict::Continue)]);
    }

    #[test]
    fn connection_records_become_connection_events() {
        let (mut p, mut v) = (pipeline(), Verdicts::default());
        p.on_record(&record(RecordKind::Established, 0, b""), &mut v);
        p.on_record(&record(RecordKind::Failed, 0, b""), &mut v);
        let kinds: Vec<_> = p.events.iter().map(|e| e.action_type).collect();
        assert_eq!(
            kinds,
            [ActionType::ConnectionSuccess, ActionType::ConnectionFailed]
        );
        assert!(v.0.is_empty());
    }

    #[test]
    fn request_split_out_of_order_is_inspected_once_and_released() {
        let (mut p, mut v) = (pipeline(), Verdicts::default());
        let (head, tail) = REQUEST.split_at(20);
        p.on_record(&record(RecordKind::Payload, 120, tail), &mut v);
        assert!(p.events.is_empty() && v.0.is_empty());
        p.on_record(&record(RecordKind::Payload, 100, head), &mut v);
        assert_eq!(p.events.len(), 1);
        let ev = &p.events[0];
        assert_eq!(ev.action_type, ActionType::HttpConnectionInspected);
        assert_eq!(ev.remote_url.as_deref(), Some("http://a.example/x"));
        assert_eq!(v.0, [(tuple().key(), Verdict::Continue)]);
        assert_eq!(p.stats().http_inspected, 1);
    }

    #[test]
    fn unrecognised_payload_ends_inspection_without_event() {
        let (mut p, mut v) = (pipeline(), Verdicts::default());
        p.on_record(
            &record(RecordKind::Payload, 100, b"\x00\x01garbage"),
            &mut v,
        );
        assert!(p.events.is_empty());
        assert_eq!(v.0.len(), 1);
        assert_eq!(p.stats().not_recognised, 1);
    }

    #[test]
    fn spent_budget_ends_an_incomplete_head_judged_by_its_start() {
        let (mut p, mut v) = (pipeline(), Verdicts::default());
        p.on_record(&record(RecordKind::Payload, 100, &REQUEST[..10]), &mut v);
        assert!(v.0.is_empty());
        let mut last = record(RecordKind::Payload, 110, &REQUEST[10..20]);
        last.budget_spent = true;
        p.on_record(&last, &mut v);
        assert_eq!(v.0, [(tuple().key(), Verdict::Allow)]);
        let ev = json(&p, 0);
        assert_eq!(ev["ActionType"], "HttpConnectionInspected");
        assert_eq!(ev["AdditionalFields"]["reason"], "head_not_captured");
        assert_eq!(ev["AdditionalFields"]["head_bytes"], 20);
        assert_eq!(p.stats().heads_not_captured, 1);
        // What is not an HTTP head is given up, as before.
        let (mut p, mut v) = (pipeline(), Verdicts::default());
        let ch = hello("a.example");
        let mut part = record(RecordKind::Payload, 100, &ch[..40]);
        part.budget_spent = true;
        p.on_record(&part, &mut v);
        assert_eq!(v.0, [(tuple().key(), Verdict::Allow)]);
        assert!(p.events.is_empty());
        assert_eq!(p.stats().gave_up, 1);
    }

    #[test]
    fn close_and_idle_expiry_forget_partial_streams() {
        let (mut p, mut v) = (pipeline(), Verdicts::default());
        p.on_record(&record(RecordKind::Payload, 100, &REQUEST[..10]), &mut v);
        p.on_record(&record(RecordKind::Closed, 0, b""), &mut v);
        // The server may have ignored that close: the half request waits a while.
        assert_eq!(p.stats().gave_up, 0);
        assert_eq!(p.expire(1_000 + CLOSE_GRACE_NS - 1, u64::MAX), 0);
        assert_eq!(p.expire(1_000 + CLOSE_GRACE_NS, u64::MAX), 1);
        assert_eq!(p.stats().gave_up, 1);
        p.on_record(&record(RecordKind::Payload, 100, &REQUEST[..10]), &mut v);
        assert_eq!(p.expire(1_000 + 10, 5), 1);
        assert_eq!(p.stats().gave_up, 2);
    }

    #[test]
    fn a_request_goes_on_past_a_close_its_server_ignored() {
        let (mut p, mut v) = (
            pipeline_with(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        let req = b"GET / HTTP/1.1\r\nHost: blocked.example\r\n\r\n";
        p.on_record(&record(RecordKind::Payload, 100, &req[..20]), &mut v);
        p.on_record(&record(RecordKind::Closed, 0, b""), &mut v);
        p.on_record(&record(RecordKind::Payload, 120, &req[20..]), &mut v);
        assert_eq!(v.0, [(tuple().key(), Verdict::Block)]);
    }

    const PROXY_INDICATORS: &str = r#"{"indicators": [
        {"id": "bad", "type": "DomainName", "value": "blocked.example", "action": "Block"},
        {"id": "ok", "type": "DomainName", "value": "good.example", "action": "Allowed"},
        {"id": "seen", "type": "DomainName", "value": "watched.example", "action": "Audit"}
    ]}"#;

    /// Feeds `chunks` as consecutive client segments from sequence number 100.
    fn feed(p: &mut Pipeline, v: &mut Verdicts, chunks: &[&[u8]]) -> u32 {
        let mut seq = 100u32;
        for chunk in chunks {
            p.on_record(&record(RecordKind::Payload, seq, chunk), v);
            seq += chunk.len() as u32;
        }
        seq
    }

    fn json(p: &Pipeline, i: usize) -> Value {
        serde_json::to_value(&p.events[i]).unwrap()
    }

    fn hello(sni: &str) -> Vec<u8> {
        crate::datapath::parse::testdata::ClientHelloBuilder::new()
            .sni(sni)
            .build()
    }

    #[test]
    fn connect_then_tunnelled_client_hello_is_judged_on_both() {
        let connect = b"CONNECT good.example:443 HTTP/1.1\r\nHost: good.example:443\r\n\r\n";
        let (mut p, mut v) = (
            pipeline_with(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        p.set_known_proxies(vec![KnownProxy {
            ip: "198.18.0.2".parse().unwrap(),
            port: Some(8080),
        }]);
        feed(&mut p, &mut v, &[connect]);
        // The proxy's "200" must pass, and the tunnel's first bytes stay under inspection.
        assert_eq!(v.0, [(tuple().key(), Verdict::Continue)]);
        assert_eq!(v.1, [100 + connect.len() as u32]);
        let ev = json(&p, 0);
        assert_eq!(ev["ActionType"], "HttpConnectionInspected");
        assert_eq!(ev["RemoteIP"], "198.18.0.2");
        assert_eq!(ev["RemoteUrl"], "good.example:443");
        assert_eq!(ev["AdditionalFields"]["proxy"], true);
        assert_eq!(ev["AdditionalFields"]["proxy_authority"], "198.18.0.2:8080");
        assert_eq!(ev["AdditionalFields"]["proxy_known"], true);

        // The ClientHello names another host: fronting, and that name is blocked.
        let ch = hello("blocked.example");
        p.on_record(
            &record(RecordKind::Payload, 100 + connect.len() as u32, &ch),
            &mut v,
        );
        assert_eq!(v.0[1], (tuple().key(), Verdict::Block));
        let ssl = json(&p, 1);
        assert_eq!(ssl["ActionType"], "SslConnectionInspected");
        assert_eq!(ssl["RemoteUrl"], "blocked.example");
        let f = &ssl["AdditionalFields"];
        assert_eq!(f["proxy"], true);
        assert_eq!(f["connect_target"], "good.example:443");
        assert_eq!(f["fronting"], true);
        let blocked = json(&p, 2);
        assert_eq!(
            blocked["ActionType"],
            "ExploitGuardNetworkProtectionBlocked"
        );
        assert_eq!(blocked["RemoteUrl"], "blocked.example");
        assert_eq!(p.stats().fronting, 1);
        assert_eq!(p.stats().proxy_inspected, 2);
    }

    #[test]
    fn connect_to_a_blocked_host_is_blocked_at_once() {
        let connect = b"CONNECT blocked.example:443 HTTP/1.1\r\n\r\n";
        let (mut p, mut v) = (
            pipeline_with(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        feed(&mut p, &mut v, &[connect]);
        assert_eq!(v.0, [(tuple().key(), Verdict::Block)]);
        assert_eq!(json(&p, 0)["AdditionalFields"].get("proxy_known"), None);
        // A tunnel matching its CONNECT is no fronting; allowed, it leaves inspection.
        let (mut p, mut v) = (
            pipeline_with(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        let connect = b"CONNECT Good.Example.:443 HTTP/1.1\r\n\r\n";
        let ch = hello("good.example");
        feed(&mut p, &mut v, &[connect, &ch]);
        assert_eq!(
            v.0.iter().map(|e| e.1).collect::<Vec<_>>(),
            [Verdict::Continue, Verdict::Allow]
        );
        assert_eq!(json(&p, 1)["AdditionalFields"].get("fronting"), None);
    }

    #[test]
    fn every_request_on_a_kept_alive_proxy_connection_is_judged() {
        let first = b"GET http://good.example/ HTTP/1.1\r\nHost: good.example\r\n\r\n";
        let post = b"POST http://watched.example/u HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        let last = b"GET http://www.blocked.example/x HTTP/1.1\r\n\r\n";
        let (mut p, mut v) = (
            pipeline_with(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        feed(&mut p, &mut v, &[first, post, b"ab", b"cde", last]);
        let key = tuple().key();
        // The body's two segments complete nothing: no verdict for them.
        assert_eq!(
            v.0,
            [
                (key, Verdict::Continue),
                (key, Verdict::Continue),
                (key, Verdict::Block)
            ]
        );
        let after_post = 100 + (first.len() + post.len()) as u32 + 5;
        assert_eq!(v.1, [100 + first.len() as u32, after_post]);
        let urls: Vec<_> = p
            .events
            .iter()
            .map(|e| (e.action_type, e.remote_url.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            urls,
            [
                (
                    ActionType::HttpConnectionInspected,
                    "http://good.example/".into()
                ),
                (
                    ActionType::HttpConnectionInspected,
                    "http://watched.example/u".into()
                ),
                (
                    ActionType::ExploitGuardNetworkProtectionAudited,
                    "http://watched.example/u".into()
                ),
                (
                    ActionType::HttpConnectionInspected,
                    "http://www.blocked.example/x".into()
                ),
                (
                    ActionType::ExploitGuardNetworkProtectionBlocked,
                    "http://www.blocked.example/x".into()
                ),
            ]
        );
    }

    #[test]
    fn pipelined_requests_in_one_segment_get_one_verdict() {
        let two = b"GET http://good.example/ HTTP/1.1\r\n\r\nGET http://blocked.example/ HTTP/1.1\r\n\r\n";
        let (mut p, mut v) = (
            pipeline_with(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        feed(&mut p, &mut v, &[two]);
        assert_eq!(v.0, [(tuple().key(), Verdict::Block)]);
        assert_eq!(p.events.len(), 3);
        // Audit mode: the same events, nothing reset, inspection goes on.
        let (mut p, mut v) = (
            pipeline_with(PROXY_INDICATORS, Mode::Audit),
            Verdicts::default(),
        );
        let half = b"GET http://blocked.example/ HTT";
        feed(&mut p, &mut v, &[two, half]);
        assert_eq!(v.0, [(tuple().key(), Verdict::Continue)]);
        assert_eq!(v.1, [100 + two.len() as u32]);
        assert_eq!(
            json(&p, 2)["ActionType"],
            "ExploitGuardNetworkProtectionAudited"
        );
    }

    #[test]
    fn a_chunked_body_is_skipped_and_the_next_request_is_judged() {
        let head = b"POST http://good.example/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let next = b"GET http://blocked.example/ HTTP/1.1\r\n\r\n";
        let (mut p, mut v) = (
            pipeline_with(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        feed(
            &mut p,
            &mut v,
            &[
                head,
                b"5\r\nhel",
                b"lo\r\n1A\r\n",
                &[b'x'; 26],
                b"\r\n0\r\n\r\n",
                next,
            ],
        );
        let verdicts: Vec<Verdict> = v.0.iter().map(|(_, v)| *v).collect();
        assert_eq!(verdicts.last(), Some(&Verdict::Block), "{verdicts:?}");
        assert!(
            verdicts[..verdicts.len() - 1]
                .iter()
                .all(|v| *v == Verdict::Continue)
        );
        // The kernel is told where each skipped chunk ends, so it captures none of it.
        assert!(v.1.contains(&(100 + head.len() as u32 + 10)), "{:?}", v.1);
        assert_eq!(json(&p, 1)["AdditionalFields"]["trans_depth"], 2);
        assert_eq!(p.stats().requests_gave_up, 0);
    }

    #[test]
    fn a_malformed_chunked_body_is_counted() {
        let head = b"POST / HTTP/1.1\r\nHost: good.example\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (mut p, mut v) = (
            pipeline_with(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        feed(&mut p, &mut v, &[head, b"zz\r\n"]);
        assert_eq!(v.0.last().map(|(_, v)| *v), Some(Verdict::Allow));
        assert_eq!(p.stats().requests_gave_up, 1);
    }

    #[test]
    fn every_request_to_a_server_is_judged_with_its_depth() {
        let good = b"GET /a HTTP/1.1\r\nHost: good.example\r\n\r\n";
        let bad = b"GET /b HTTP/1.1\r\nHost: blocked.example\r\n\r\n";
        let (mut p, mut v) = (
            pipeline_with(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        feed(&mut p, &mut v, &[good, bad]);
        assert_eq!(
            v.0.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            [Verdict::Continue, Verdict::Block]
        );
        assert_eq!(v.1, [100 + good.len() as u32]);
        let http: Vec<_> = p
            .events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .filter(|e| e["ActionType"] == "HttpConnectionInspected")
            .collect();
        assert_eq!(http.len(), 2);
        assert_eq!(http[0]["AdditionalFields"]["proxy"], false);
        assert_eq!(http[1]["AdditionalFields"]["trans_depth"], 2);
        assert_eq!(http[1]["RemoteUrl"], "http://blocked.example/b");
    }

    #[test]
    fn an_upgrade_ends_inspection_and_is_counted() {
        let ws = b"GET /ws HTTP/1.1\r\nHost: good.example\r\nUpgrade: websocket\r\n\r\n";
        let (mut p, mut v) = (pipeline(), Verdicts::default());
        feed(&mut p, &mut v, &[ws, b"\x81\x05hello"]);
        assert_eq!(
            v.0.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            [Verdict::Allow]
        );
        assert_eq!(p.stats().upgraded, 1);
    }

    #[test]
    fn a_decided_connection_idles_as_long_as_the_kernel_flow_and_closes_quietly() {
        let first = b"GET http://good.example/ HTTP/1.1\r\n\r\n";
        let (mut p, mut v) = (
            pipeline_with(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        p.set_flow_idle_timeout(100);
        feed(&mut p, &mut v, &[first]);
        assert_eq!(p.expire(1_000 + 10, 5), 0, "between requests");
        assert_eq!(p.expire(1_000 + 101, 5), 1);
        feed(&mut p, &mut v, &[first]);
        p.on_record(&record(RecordKind::Closed, 0, b""), &mut v);
        assert_eq!(
            p.stats().gave_up,
            0,
            "a quiet connection between requests, and its close, give nothing up"
        );
    }

    /// A pipeline with the kernel's real capture budget (16 KiB).
    fn pipeline_16k(indicators: &str, mode: Mode) -> Pipeline {
        let loaded = crate::policy::load_json(indicators).unwrap();
        Pipeline::new(
            EventFactory::new("h", "d", Clock::anchored(UNIX_EPOCH)),
            STREAM_LIMIT,
            Arc::new(Policy::new(loaded.indicators, &[])),
            mode,
        )
    }

    /// `n` bytes of request head: a request line, `pad` bytes of header (a cookie) and
    /// `host` after it.
    fn long_head(path: &str, pad: usize, host: &str) -> Vec<u8> {
        let mut head = format!("GET {path} HTTP/1.1\r\nCookie: ").into_bytes();
        head.resize(head.len() + pad, b'c');
        head.extend_from_slice(format!("\r\nHost: {host}\r\n\r\n").as_bytes());
        head
    }

    /// Feeds `bytes` in `mss`-byte segments from sequence number 100, as the kernel
    /// records them: each segment counts against a budget of `budget` bytes that every
    /// `Continue` renews, and no segment is captured once it is spent.
    fn feed_segments(
        p: &mut Pipeline,
        v: &mut Verdicts,
        bytes: &[u8],
        mss: usize,
        budget: usize,
    ) -> usize {
        let mut captured = 0;
        let mut seen = v.0.len();
        for (i, seg) in bytes.chunks(mss).enumerate() {
            if v.0[seen..].iter().any(|(_, v)| *v == Verdict::Continue) {
                captured = 0;
            }
            seen = v.0.len();
            if v.0.last().is_some_and(|(_, v)| *v != Verdict::Continue) {
                break;
            }
            let len = seg.len().min(budget - captured);
            if len == 0 {
                break;
            }
            captured += len;
            let mut rec = record(RecordKind::Payload, 100 + (i * mss) as u32, &seg[..len]);
            rec.budget_spent = captured == budget;
            p.on_record(&rec, v);
        }
        captured
    }

    #[test]
    fn a_40_kb_cookie_before_host_is_judged_in_full() {
        let budget = STREAM_LIMIT;
        let (mut p, mut v) = (
            pipeline_16k(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        let head = long_head("/x", 40_000, "blocked.example");
        feed_segments(&mut p, &mut v, &head, 1448, budget);
        let verdicts: Vec<Verdict> = v.0.iter().map(|(_, v)| *v).collect();
        assert_eq!(verdicts.last(), Some(&Verdict::Block), "{verdicts:?}");
        // Renewals are Continues at the head's start: nothing before it is decided, and
        // the server's answer stays held. A few, not one per segment.
        let renewals = &v.1;
        assert!(renewals.iter().all(|&seq| seq == 100), "{renewals:?}");
        assert!((2..=12).contains(&renewals.len()), "{renewals:?}");
        assert_eq!(p.stats().budget_renewals, renewals.len() as u64);
        let ev = json(&p, 0);
        assert_eq!(ev["RemoteUrl"], "http://blocked.example/x");
        assert_eq!(ev["AdditionalFields"].get("oversized"), None);
        assert_eq!(
            json(&p, 1)["ActionType"],
            "ExploitGuardNetworkProtectionBlocked"
        );
        assert_eq!(p.stats().oversized + p.stats().heads_not_captured, 0);
        assert_eq!(p.reassembly.raised(), 0, "the raised stream is gone");
    }

    #[test]
    fn a_small_head_costs_no_renewal() {
        let (mut p, mut v) = (
            pipeline_16k(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        let head = long_head("/", 3000, "good.example");
        feed_segments(&mut p, &mut v, &head, 1448, 16 * 1024);
        assert_eq!(
            v.0.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            [Verdict::Continue]
        );
        assert_eq!(p.stats().budget_renewals, 0);
        assert_eq!(p.reassembly.raised(), 0);
    }

    #[test]
    fn a_70_kb_head_is_oversized_and_follows_the_setting() {
        let head = long_head("/big", 70_000, "good.example");
        let budget = STREAM_LIMIT;
        for (mode, setting, expect, reset) in [
            (Mode::Block, OversizedAction::Allow, Verdict::Allow, false),
            (Mode::Block, OversizedAction::Block, Verdict::Block, true),
            // Audit mode never resets.
            (Mode::Audit, OversizedAction::Block, Verdict::Allow, false),
        ] {
            let (mut p, mut v) = (pipeline_16k(PROXY_INDICATORS, mode), Verdicts::default());
            p.set_oversized(setting);
            let captured = feed_segments(&mut p, &mut v, &head, 1448, budget);
            assert_eq!(
                v.0.last().map(|(_, v)| *v),
                Some(expect),
                "{mode:?} {setting:?}"
            );
            assert!(captured < budget, "renewed in time");
            let ev = json(&p, 0);
            assert_eq!(ev["ActionType"], "HttpConnectionInspected");
            let f = &ev["AdditionalFields"];
            assert_eq!(f["oversized"], true);
            assert_eq!(f["reason"], "head_too_long");
            assert!(f["head_bytes"].as_u64().unwrap() >= http::MAX_HEAD_LEN as u64);
            assert_eq!(f["oversized_action"], setting.as_str());
            assert_eq!(f["reset"], reset);
            assert_eq!(f["uri"], "/big");
            // The Host comes after the padding: not seen, the server's address stands in.
            assert_eq!(f["host"], Value::Null);
            assert_eq!(ev["RemoteUrl"], "http://198.18.0.2:8080/big");
            assert_eq!(p.events.len(), 1, "no indicator event: none matched");
            assert_eq!(p.stats().oversized, 1);
            assert_eq!(p.stats().blocked, u64::from(reset));
        }
    }

    #[test]
    fn an_oversized_head_whose_start_names_a_blocked_host_is_blocked() {
        let mut head = b"GET / HTTP/1.1\r\nHost: blocked.example\r\nX-Pad: ".to_vec();
        head.resize(70_000, b'p');
        let (mut p, mut v) = (
            pipeline_16k(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        feed_segments(&mut p, &mut v, &head, 1448, 16 * 1024);
        assert_eq!(v.0.last().map(|(_, v)| *v), Some(Verdict::Block));
        assert_eq!(json(&p, 0)["AdditionalFields"]["reset"], true);
        assert_eq!(json(&p, 0)["RemoteUrl"], "http://blocked.example/");
        assert_eq!(
            json(&p, 1)["ActionType"],
            "ExploitGuardNetworkProtectionBlocked"
        );
    }

    #[test]
    fn a_cut_segment_ends_the_head_at_once() {
        // A GSO segment cut to the per-segment bound: the rest of the head never comes.
        let head = long_head("/", 9000, "blocked.example");
        let (mut p, mut v) = (
            pipeline_16k(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        let mut rec = record(RecordKind::Payload, 100, &head[..4096]);
        rec.truncated = true;
        p.on_record(&rec, &mut v);
        assert_eq!(v.0, [(tuple().key(), Verdict::Allow)]);
        assert_eq!(
            json(&p, 0)["AdditionalFields"]["reason"],
            "head_not_captured"
        );
        assert_eq!(p.stats().heads_not_captured, 1);
        // Out of order: the cut waits for the bytes before it, then counts.
        let (mut p, mut v) = (
            pipeline_16k(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        p.set_oversized(OversizedAction::Block);
        let mut late = record(RecordKind::Payload, 1100, &head[1000..2000]);
        late.truncated = true;
        p.on_record(&late, &mut v);
        assert!(v.0.is_empty());
        p.on_record(&record(RecordKind::Payload, 100, &head[..1000]), &mut v);
        assert_eq!(v.0, [(tuple().key(), Verdict::Block)]);
    }

    #[test]
    fn a_long_head_after_a_kept_alive_request_renews_from_its_own_start() {
        let first = b"GET /a HTTP/1.1\r\nHost: good.example\r\n\r\n";
        let mut bytes = first.to_vec();
        bytes.extend(long_head("/b", 30_000, "blocked.example"));
        let (mut p, mut v) = (
            pipeline_16k(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        feed_segments(&mut p, &mut v, &bytes, 1448, 16 * 1024);
        assert_eq!(v.0.last().map(|(_, v)| *v), Some(Verdict::Block));
        let second_start = 100 + first.len() as u32;
        assert!(v.1.len() >= 2, "{:?}", v.1);
        assert!(v.1.iter().all(|&s| s == second_start), "{:?}", v.1);
        assert_eq!(json(&p, 1)["AdditionalFields"]["trans_depth"], 2);
    }

    #[test]
    fn options_asterisk_and_http_0_9_have_their_remote_url() {
        let (mut p, mut v) = (pipeline(), Verdicts::default());
        feed(
            &mut p,
            &mut v,
            &[b"OPTIONS * HTTP/1.1\r\nHost: good.example\r\n\r\n"],
        );
        assert_eq!(json(&p, 0)["RemoteUrl"], "http://good.example");
        assert_eq!(json(&p, 0)["AdditionalFields"]["uri"], "*");
        let (mut p, mut v) = (pipeline(), Verdicts::default());
        feed(&mut p, &mut v, &[b"GET /old\r\n"]);
        assert_eq!(v.0, [(tuple().key(), Verdict::Continue)]);
        let ev = json(&p, 0);
        assert_eq!(ev["RemoteUrl"], "http://198.18.0.2:8080/old");
        assert_eq!(ev["AdditionalFields"]["method"], "GET");
        assert_eq!(ev["AdditionalFields"]["host"], Value::Null);
        assert_eq!(p.stats().http_inspected, 1);
    }

    #[test]
    fn a_host_less_request_matches_url_indicators_of_the_server_address() {
        let indicators = r#"{"indicators": [
            {"id": "ip", "type": "Url", "value": "http://198.18.0.2:8080/admin", "action": "Block"}
        ]}"#;
        for req in [&b"GET /admin/x\r\n"[..], b"GET /admin HTTP/1.0\r\n\r\n"] {
            let (mut p, mut v) = (pipeline_with(indicators, Mode::Block), Verdicts::default());
            feed(&mut p, &mut v, &[req]);
            assert_eq!(v.0, [(tuple().key(), Verdict::Block)], "{req:?}");
        }
    }

    #[test]
    fn segments_captured_before_the_verdict_do_not_replace_it() {
        // The kernel captured more of the burst before it picked the Block up.
        let head = long_head("/", 9000, "x.example");
        let mut start = b"GET / HTTP/1.1\r\nHost: blocked.example\r\n".to_vec();
        start.extend_from_slice(&head[16..]);
        let (mut p, mut v) = (
            pipeline_16k(PROXY_INDICATORS, Mode::Block),
            Verdicts::default(),
        );
        let mut first = record(RecordKind::Payload, 100, &start[..4096]);
        first.truncated = true;
        p.on_record(&first, &mut v);
        assert_eq!(v.0, [(tuple().key(), Verdict::Block)]);
        let mut late = record(RecordKind::Payload, 100 + 7240, &start[7240..8000]);
        late.budget_spent = true;
        p.on_record(&late, &mut v);
        assert_eq!(v.0.len(), 1, "no second verdict: {:?}", v.0);
        // A new connection on the four-tuple is inspected; expiry forgets the old one.
        let mut next = record(RecordKind::Payload, 5000, REQUEST);
        next.client_data_seq = 5000;
        next.stream_seq = 5000;
        p.on_record(&next, &mut v);
        assert_eq!(v.0.len(), 2);
        p.expire(1_000 + DECIDED_KEEP_NS, 5);
        assert!(p.decided.is_empty());
    }
}

#[cfg(test)]
mod direction_tests {
    use std::collections::HashSet;

    use nprot_common::{FlowTuple, PROTO_TCP, RecordKind};

    use super::flow_ends;
    use crate::{
        events::Direction,
        record::{Record, raw_addr},
    };

    fn inbound_syn() -> Record<'static> {
        let (family, client_addr) = raw_addr("198.18.1.1".parse().unwrap());
        let (_, server_addr) = raw_addr("198.18.2.2".parse().unwrap());
        Record {
            kind: RecordKind::Established,
            tuple: FlowTuple {
                client_addr,
                server_addr,
                client_port: 40000,
                server_port: 443,
                family,
                proto: PROTO_TCP,
                _pad: [0; 2],
            },
            ts_ns: 0,
            outbound: false,
            seq: 0,
            client_data_seq: 0,
            stream_seq: 0,
            payload: b"",
            truncated: false,
            budget_spent: false,
            from_server: false,
            dns_forged: false,
            socket_cookie: 0,
            ifindex: 1,
            prefilter: crate::record::Prefiltered::No,
        }
    }

    #[test]
    fn ingress_syn_is_inbound_only_when_the_server_is_this_host() {
        let rec = inbound_syn();
        let server: HashSet<_> = ["198.18.2.2".parse().unwrap()].into();
        let other: HashSet<_> = ["198.18.1.254".parse().unwrap()].into();
        assert_eq!(flow_ends(&rec, Some(&server)).direction, Direction::Inbound);
        assert_eq!(
            flow_ends(&rec, Some(&other)).direction,
            Direction::Forwarded
        );
        assert_eq!(flow_ends(&rec, None).direction, Direction::Inbound);
        let outbound = Record {
            outbound: true,
            ..inbound_syn()
        };
        assert_eq!(
            flow_ends(&outbound, Some(&other)).direction,
            Direction::Outbound
        );
    }
}

#[cfg(test)]
#[path = "pipeline_names_tests.rs"]
mod names_tests;
