//! The inspection pipeline: kernel records in, events and verdicts out.
//!
//! Pure logic over decoded [`Record`]s, so that the live daemon, offline replay and unit
//! tests drive the same code. The kernel side is reached only through [`VerdictTarget`].

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use nprot_common::{FlowKey, RecordKind, Verdict};

use crate::{
    attribution::{ProcessColumns, ProcessInfo, ProcessSource},
    capture::{Record, ip_addr},
    events::{ActionType, Direction, Event, EventFactory, FlowEnds, monotonic_ns},
    parse::{ParseOutcome, Parsed, parse_client_payload},
    policy::{Policy, matcher::Subject},
    reassembly::{Reassembler, TableFull},
    stats::Histogram,
    verdict::{Mode, outcome},
};

/// Where the pipeline's decisions go: the kernel verdict map, or nowhere in replay.
pub trait VerdictTarget {
    /// Records `verdict` for the flow `key`.
    fn set_verdict(&mut self, key: &FlowKey, verdict: Verdict) -> anyhow::Result<()>;
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
}

/// Per-flow facts kept while its first bytes are reassembled.
#[derive(Debug, Clone, Copy)]
struct Inspection {
    last_ns: u64,
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
    /// Who opened local flows (none in replay, or without the connect hooks).
    processes: Option<Box<dyn ProcessSource>>,
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
            processes: None,
        }
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
            ..self.stats
        }
    }

    /// Handles one kernel record.
    pub fn on_record(&mut self, rec: &Record<'_>, verdicts: &mut dyn VerdictTarget) {
        self.stats.records += 1;
        let ends = flow_ends(rec, self.local_addrs.as_ref());
        let first = self.events.len();
        match rec.kind {
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
            RecordKind::Closed => {
                if self.reassembly.remove(&rec.tuple.key()).is_some() {
                    self.stats.gave_up += 1;
                }
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

    fn on_payload(&mut self, rec: &Record<'_>, ends: FlowEnds, verdicts: &mut dyn VerdictTarget) {
        self.wake_latency
            .record(monotonic_ns().saturating_sub(rec.ts_ns));
        let key = rec.tuple.key();
        let meta = || Inspection { last_ns: rec.ts_ns };
        let outcome =
            match self
                .reassembly
                .insert(key, rec.client_data_seq, rec.seq, rec.payload, meta)
            {
                Ok(Some((stream, inspection))) => {
                    inspection.last_ns = rec.ts_ns;
                    match parse_client_payload(stream.contiguous()) {
                        ParseOutcome::NeedMore if stream.is_full() => None,
                        ParseOutcome::NeedMore => Some(ParseOutcome::NeedMore),
                        other => Some(other),
                    }
                }
                Ok(None) => Some(ParseOutcome::NeedMore),
                Err(TableFull) => None,
            };
        let verdict = match outcome {
            Some(ParseOutcome::Complete(parsed)) => {
                self.reassembly.remove(&key);
                return self.decide(rec, &ends, &parsed, &key, verdicts);
            }
            Some(ParseOutcome::NotRecognised(why)) => {
                log::debug!("flow {}: not inspected: {why}", describe(&ends));
                self.stats.not_recognised += 1;
                Verdict::Allow
            }
            // The kernel sends nothing more once the budget is spent: stop waiting.
            Some(ParseOutcome::NeedMore) if !rec.budget_spent => return,
            Some(ParseOutcome::NeedMore) | None => {
                self.stats.gave_up += 1;
                Verdict::Allow
            }
        };
        self.reassembly.remove(&key);
        self.deliver(rec, &ends, &key, verdict, verdicts);
    }

    /// Hands the verdict to the kernel; the hot path ends here.
    fn deliver(
        &mut self,
        rec: &Record<'_>,
        ends: &FlowEnds,
        key: &FlowKey,
        verdict: Verdict,
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

    /// Matches what was parsed against the policy, delivers the verdict, and only then
    /// builds the events, which do not hold up the kernel.
    fn decide(
        &mut self,
        rec: &Record<'_>,
        ends: &FlowEnds,
        parsed: &Parsed,
        key: &FlowKey,
        verdicts: &mut dyn VerdictTarget,
    ) {
        let (host, http_path) = match parsed {
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
        let policy = Arc::clone(&self.policy);
        // Only a process-scoped indicator makes the decision depend on the process.
        let process = if policy.has_process_scopes() {
            self.process_of(rec, ends, true)
        } else {
            None
        };
        let decision =
            policy.decide_for(&subject, process.as_deref(), self.factory.wall(rec.ts_ns));
        let outcome = outcome(&decision, self.mode);
        self.deliver(rec, ends, key, outcome.verdict, verdicts);

        let event = match parsed {
            Parsed::Tls(hello) => {
                self.stats.tls_inspected += 1;
                self.factory.tls(rec.ts_ns, ends, hello)
            }
            Parsed::Http(req) => {
                self.stats.http_inspected += 1;
                self.factory.http(rec.ts_ns, ends, req)
            }
        };
        let remote_url = event.remote_url.clone();
        self.events.push(event);
        for enforcement in &outcome.enforcements {
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
        if outcome.verdict == Verdict::Block {
            self.stats.blocked += 1;
        }
    }

    /// Forgets flows that sent nothing for `idle_ns`; returns how many.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) -> usize {
        let n = self
            .reassembly
            .retain(|i| now_ns.saturating_sub(i.last_ns) < idle_ns);
        self.stats.gave_up += n as u64;
        n
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

    #[derive(Default)]
    struct Verdicts(Vec<(FlowKey, Verdict)>);

    impl VerdictTarget for Verdicts {
        fn set_verdict(&mut self, key: &FlowKey, verdict: Verdict) -> anyhow::Result<()> {
            self.0.push((*key, verdict));
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
        assert_eq!(v.0, [(tuple().key(), Verdict::Allow)]);
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
        assert_eq!(v.0, [(tuple().key(), Verdict::Allow)]);
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
        assert_eq!(v.0, [(tuple().key(), Verdict::Allow)]);
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
        assert_eq!(v.0, [(tuple().key(), Verdict::Allow)]);
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
