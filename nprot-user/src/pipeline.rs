//! The inspection pipeline: kernel records in, events and verdicts out.
//!
//! Pure logic over decoded [`Record`]s, so that the live daemon, offline replay and unit
//! tests drive the same code. The kernel side is reached only through [`VerdictTarget`].

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use nprot_common::{FlowKey, RecordKind, Verdict, VerdictEntry};

use crate::{
    attribution::{ProcessColumns, ProcessInfo, ProcessSource},
    capture::{Record, ip_addr},
    events::{ActionType, Direction, Event, EventFactory, FlowEnds, ProxyFields, monotonic_ns},
    parse::{
        ParseOutcome, Parsed,
        http::{self, Body},
        parse_client_payload,
    },
    policy::{Policy, matcher::Subject},
    reassembly::{Reassembler, Stream, TableFull},
    stats::Histogram,
    verdict::{Mode, Outcome, outcome},
};

/// Where the pipeline's decisions go: the kernel verdict map, or nowhere in replay.
pub trait VerdictTarget {
    /// Records `verdict` for the flow `key`.
    fn set_verdict(&mut self, key: &FlowKey, verdict: VerdictEntry) -> anyhow::Result<()>;
}

/// Counters of what the pipeline did, for `nprot stats` and the exit summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PipelineStats {
    pub records: u64,
    pub tls_inspected: u64,
    pub http_inspected: u64,
    /// Flows whose first bytes were neither TLS nor HTTP (or malformed).
    pub not_recognised: u64,
    /// Flows that ended, or ran out of capture budget, before a parse completed.
    pub gave_up: u64,
    /// Flows not reassembled because the table was full.
    pub reassembly_overflows: u64,
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
    /// Connections whose client bytes stopped being HTTP/1.x (or TLS, in a tunnel) after
    /// a request without an `Upgrade`: what follows cannot be judged; counted, never silent.
    pub requests_not_http: u64,
    /// Connections that switched protocols (`Upgrade`): inspection ends after that request.
    pub upgraded: u64,
}

/// Per-flow facts kept while its client bytes are reassembled.
#[derive(Debug, Clone)]
struct Inspection {
    last_ns: u64,
    phase: Phase,
    /// HTTP requests parsed on the connection so far (`trans_depth` of the last one).
    requests: u32,
}

impl Inspection {
    /// True while bytes of `stream` await a decision; false for a kept-alive
    /// connection whose requests so far are all decided.
    fn awaits(&self, stream: &Stream) -> bool {
        matches!(self.phase, Phase::First) || !stream.contiguous().is_empty()
    }
}

/// Where a flow under inspection stands.
#[derive(Debug, Clone)]
enum Phase {
    /// Its first bytes.
    First,
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
    let Parsed::Http(req) = parsed else {
        return Next::Done;
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
}

/// What a flow's in-order bytes held: the items parsed, each with the phase it was
/// parsed in and its number among the connection's requests, and whether inspection
/// ends (`None`: more bytes are awaited).
struct Walk {
    items: Vec<(Phase, Parsed, u32)>,
    end: Option<End>,
    /// Client sequence number just past what was dealt with (the stream's start now).
    next_seq: u32,
    /// The stream's start moved (items, or body chunks skipped): the kernel is told, so
    /// that it neither holds nor captures for bytes that are decided.
    advanced: bool,
}

/// Parses everything that can be parsed from `stream`, moving it past each item: usually
/// one ClientHello or request; behind a forward proxy a CONNECT and what the tunnel
/// starts with, or several requests on one connection.
fn walk(stream: &mut Stream, inspection: &mut Inspection, budget_spent: bool) -> Walk {
    let mut items = Vec::new();
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
            Phase::Requests => http::parse_http_request(buf),
            Phase::First | Phase::Tunnel(_) => parse_client_payload(buf),
        };
        match outcome {
            ParseOutcome::Complete(parsed) => {
                let next = next_phase(&inspection.phase, &parsed);
                if let Parsed::Http(_) = parsed {
                    inspection.requests = inspection.requests.saturating_add(1);
                }
                items.push((inspection.phase.clone(), parsed, inspection.requests));
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
                let first = items.is_empty() && matches!(inspection.phase, Phase::First);
                break Some(End::NotRecognised { why, first });
            }
            // Decided items release what is held; the next one waits for its bytes.
            ParseOutcome::NeedMore if !items.is_empty() || stream.base_seq() != start => {
                break None;
            }
            ParseOutcome::NeedMore if stream.is_full() || budget_spent => {
                break Some(End::GaveUp);
            }
            ParseOutcome::NeedMore => break None,
        }
    };
    Walk {
        items,
        end,
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
    pub ip: IpAddr,
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
}

/// Flows reassembled at once at most.
const MAX_INSPECTED_FLOWS: usize = 65_536;

impl Pipeline {
    /// A pipeline deciding by `policy` under `mode`, holding `stream_limit` bytes per flow.
    pub fn new(
        factory: EventFactory,
        stream_limit: usize,
        policy: Arc<Policy>,
        mode: Mode,
    ) -> Pipeline {
        Pipeline {
            reassembly: Reassembler::new(MAX_INSPECTED_FLOWS, stream_limit),
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
        }
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
            RecordKind::Established => {
                let ev = self
                    .factory
                    .connection(ActionType::ConnectionSuccess, rec.ts_ns, &ends);
                self.events.push(ev);
            }
            RecordKind::Failed => {
                let ev = self
                    .factory
                    .connection(ActionType::ConnectionFailed, rec.ts_ns, &ends);
                self.events.push(ev);
            }
            RecordKind::Closed => self.forget(&rec.tuple.key()),
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
    fn forget(&mut self, key: &FlowKey) {
        if let Some((stream, inspection)) = self.reassembly.remove(key)
            && inspection.awaits(&stream)
        {
            self.stats.gave_up += 1;
        }
    }

    fn on_payload(&mut self, rec: &Record<'_>, ends: FlowEnds, verdicts: &mut dyn VerdictTarget) {
        self.wake_latency
            .record(monotonic_ns().saturating_sub(rec.ts_ns));
        let key = rec.tuple.key();
        let meta = || Inspection {
            last_ns: rec.ts_ns,
            phase: Phase::First,
            requests: 0,
        };
        let walked = match self.reassembly.insert(
            key,
            (rec.client_data_seq, rec.stream_seq),
            rec.seq,
            rec.payload,
            meta,
        ) {
            Ok(Some((stream, inspection))) => {
                inspection.last_ns = rec.ts_ns;
                walk(stream, inspection, rec.budget_spent)
            }
            // Nothing new in order; the kernel sends nothing more once the budget is spent.
            Ok(None) if rec.budget_spent => Walk {
                items: Vec::new(),
                end: Some(End::GaveUp),
                next_seq: 0,
                advanced: false,
            },
            Ok(None) => return,
            Err(TableFull) => {
                self.stats.gave_up += 1;
                return self.deliver(rec, &ends, &key, Verdict::Allow.into(), verdicts);
            }
        };

        // Judged in order; a blocked item ends the flow, and what follows it is moot.
        let policy = Arc::clone(&self.policy);
        let mut judged: Vec<Judged<'_>> = Vec::with_capacity(walked.items.len());
        for (phase, parsed, depth) in walked.items {
            let item = self.judge(&policy, rec, &ends, &phase, parsed, depth);
            let blocked = item.outcome.verdict == Verdict::Block;
            judged.push(item);
            if blocked {
                break;
            }
        }
        let blocked = judged
            .last()
            .is_some_and(|j| j.outcome.verdict == Verdict::Block);
        let verdict = match (&walked.end, blocked) {
            (_, true) => VerdictEntry::new(Verdict::Block),
            (Some(_), false) => VerdictEntry::new(Verdict::Allow),
            // Requests decided (or a body skipped), the connection goes on: release what
            // is held, and let the kernel skip what is decided.
            (None, false) if !judged.is_empty() || walked.advanced => {
                VerdictEntry::continue_after(walked.next_seq)
            }
            (None, false) => return,
        };
        if blocked || walked.end.is_some() {
            self.reassembly.remove(&key);
        }
        self.deliver(rec, &ends, &key, verdict, verdicts);
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
                Some(End::Done) | None => {}
            }
        }
        for item in &judged {
            self.log_judged(rec, &ends, item);
        }
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
        match verdicts.set_verdict(key, verdict) {
            Ok(()) => self
                .verdict_latency
                .record(monotonic_ns().saturating_sub(rec.ts_ns)),
            Err(e) => {
                self.stats.verdict_errors += 1;
                log::warn!("flow {}: verdict not delivered: {e:#}", describe(ends));
            }
        }
    }

    /// Matches what was parsed against the policy. Behind a forward proxy the subject is
    /// the real target; the proxy's own address still matches IP indicators.
    fn judge<'p>(
        &mut self,
        policy: &'p Policy,
        rec: &Record<'_>,
        ends: &FlowEnds,
        phase: &Phase,
        parsed: Parsed,
        depth: u32,
    ) -> Judged<'p> {
        let (host, http_path) = match &parsed {
            Parsed::Tls(hello) => (hello.server_name.as_deref(), None),
            Parsed::Http(req) => (
                req.host.as_deref(),
                (!req.connect).then_some(req.path.as_str()),
            ),
        };
        // Indicators are about destinations: the server's address, whichever side it is on.
        let subject = Subject {
            ip: ends.server.0,
            host,
            http_path,
        };
        // Judged at the packet's time, so that replay of an old capture sees the expiries
        // as they were then.
        // Only a process-scoped indicator makes the decision depend on the process.
        let process = if policy.has_process_scopes() {
            self.process_of(rec, ends, true)
        } else {
            None
        };
        let decision =
            policy.decide_for(&subject, process.as_deref(), self.factory.wall(rec.ts_ns));
        let outcome = outcome(&decision, self.mode);
        let proxy = self.proxy_fields(ends, phase, &parsed);
        Judged {
            parsed,
            outcome,
            proxy,
            depth,
        }
    }

    /// The `proxy…` fields of an event about `parsed`, seen in `phase`.
    fn proxy_fields(&self, ends: &FlowEnds, phase: &Phase, parsed: &Parsed) -> ProxyFields {
        // A forward proxy is asked in CONNECT or absolute form; what a tunnel carries
        // went through one.
        let via_proxy = match (phase, parsed) {
            (Phase::Tunnel(_), _) => true,
            (_, Parsed::Http(req)) => req.connect || req.absolute,
            (_, Parsed::Tls(_)) => false,
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
            };
            fields.fronting = match (named, connect.host.as_deref()) {
                (Some(named), Some(host)) => !same_host(named, host),
                _ => false,
            };
        }
        fields
    }

    /// Builds the events of a judged ClientHello or request, after its verdict went out.
    fn log_judged(&mut self, rec: &Record<'_>, ends: &FlowEnds, item: &Judged<'_>) {
        let event = match &item.parsed {
            Parsed::Tls(hello) => {
                self.stats.tls_inspected += 1;
                self.factory.tls(rec.ts_ns, ends, hello, item.proxy.clone())
            }
            Parsed::Http(req) => {
                self.stats.http_inspected += 1;
                self.factory
                    .http(rec.ts_ns, ends, req, item.proxy.clone(), item.depth)
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
        for enforcement in &item.outcome.enforcements {
            if enforcement.is_audit {
                self.stats.audited += 1;
            }
            let ev = self.factory.protection(
                rec.ts_ns,
                ends,
                remote_url.clone(),
                enforcement,
                self.mode,
            );
            self.events.push(ev);
        }
        if item.outcome.verdict == Verdict::Block {
            self.stats.blocked += 1;
        }
    }

    /// Forgets flows that sent nothing for `idle_ns` while bytes awaited a decision;
    /// returns how many. A kept-alive connection between requests is kept as long as the
    /// kernel keeps its flow ([`Pipeline::set_flow_idle_timeout`]): forgotten earlier,
    /// its next request would find no stream to continue.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) -> usize {
        let decided_idle_ns = self.flow_idle_ns;
        let n = self.reassembly.retain(|stream, i| {
            let idle = now_ns.saturating_sub(i.last_ns);
            if i.awaits(stream) {
                idle < idle_ns
            } else {
                idle < decided_idle_ns
            }
        });
        self.stats.gave_up += n as u64;
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
    }
}

fn describe(ends: &FlowEnds) -> String {
    let (c, s) = (ends.client, ends.server);
    format!("{}:{} -> {}:{}", c.0, c.1, s.0, s.1)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use nprot_common::FlowTuple;

    use super::*;
    use crate::{capture::raw_addr, events::Clock};

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
            _pad: [0; 3],
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
            socket_cookie: 0,
            ifindex: 1,
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

    struct Fake(Arc<crate::attribution::ProcessInfo>);

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
    fn spent_budget_gives_up_on_an_incomplete_request() {
        let (mut p, mut v) = (pipeline(), Verdicts::default());
        p.on_record(&record(RecordKind::Payload, 100, &REQUEST[..10]), &mut v);
        assert!(v.0.is_empty());
        let mut last = record(RecordKind::Payload, 110, &REQUEST[10..20]);
        last.budget_spent = true;
        p.on_record(&last, &mut v);
        assert!(p.events.is_empty());
        assert_eq!(v.0.len(), 1);
        assert_eq!(p.stats().gave_up, 1);
    }

    #[test]
    fn close_and_idle_expiry_forget_partial_streams() {
        let (mut p, mut v) = (pipeline(), Verdicts::default());
        p.on_record(&record(RecordKind::Payload, 100, &REQUEST[..10]), &mut v);
        p.on_record(&record(RecordKind::Closed, 0, b""), &mut v);
        assert_eq!(p.stats().gave_up, 1);
        p.on_record(&record(RecordKind::Payload, 100, &REQUEST[..10]), &mut v);
        assert_eq!(p.expire(1_000 + 10, 5), 1);
        assert_eq!(p.stats().gave_up, 2);
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

    fn json(p: &Pipeline, i: usize) -> serde_json::Value {
        serde_json::to_value(&p.events[i]).unwrap()
    }

    fn hello(sni: &str) -> Vec<u8> {
        crate::parse::testdata::ClientHelloBuilder::new()
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
        assert_eq!(p.stats().gave_up, 1, "only the expiry gave up");
    }
}

#[cfg(test)]
mod direction_tests {
    use std::collections::HashSet;

    use nprot_common::{FlowTuple, RecordKind};

    use super::flow_ends;
    use crate::{
        capture::{Record, raw_addr},
        events::Direction,
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
                _pad: [0; 3],
            },
            ts_ns: 0,
            outbound: false,
            seq: 0,
            client_data_seq: 0,
            stream_seq: 0,
            payload: b"",
            truncated: false,
            budget_spent: false,
            socket_cookie: 0,
            ifindex: 1,
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
