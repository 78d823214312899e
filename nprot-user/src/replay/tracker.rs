//! The kernel's flow tracker, in user space: turns captured TCP segments into the
//! [`Record`]s that `nprot-ebpf` would have sent through its ring buffer, so that replay
//! feeds the [`Pipeline`](crate::datapath::pipeline::Pipeline) exactly what the live sensor
//! gets.
//!
//! Each segment takes the step the eBPF programs take, by the same code
//! ([`nprot_common::track`]); this module holds only what is replay's own: the flow
//! table (a bounded map evicting like the kernel's LRU), the verdicts waiting for their
//! flow's next packet (like the kernel's `VERDICTS` map), the counters, and records made
//! from the capture's bytes instead of a ring buffer.
//!
//! What replay cannot know, it assumes: every SYN is taken as leaving through an egress
//! hook, so the client is the local end (`direction` = `Outbound`); records carry no
//! socket cookie and interface index 0.

use std::collections::HashMap;

use nprot_common::{
    CAPTURE_FLOW_MAX_DEFAULT, FLOW_CLIENT_IS_LO, FLOW_IDLE_TIMEOUT_NS_DEFAULT, FLOW_SYN_EGRESS,
    FlowKey, FlowState, MAX_FLOWS, MAX_PENDING_VERDICTS, PROTO_UDP, RECORD_FROM_SERVER,
    REQUEUE_NS_DEFAULT, RecordHeader, RecordKind, SensorConfig, VERDICT_TIMEOUT_NS_DEFAULT,
    Verdict, VerdictEntry,
    dns::{self, Answered, DNS_QUERY_READ, DnsHost, NameVerdicts, QueryScratch},
    quic::{self, QuicMode},
    stat,
    track::{self, Action, Host},
};

use super::packet::Segment;
use crate::{datapath::pipeline::VerdictTarget, mode::Mode, record::Record};

/// The kernel settings replay mirrors (`SensorConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Capture client payload (false in `disabled` mode).
    pub capture: bool,
    /// Hold server payload while a verdict is pending (block mode): only the fail-open
    /// timeout depends on it in replay.
    pub hold: bool,
    /// Client payload bytes captured per flow at most.
    pub capture_flow_max: u32,
    /// A flow still pending this long after its first client payload is released.
    pub verdict_timeout_ns: u64,
    /// A flow idle this long is retired on its next packet.
    pub flow_idle_timeout_ns: u64,
    /// What is done with QUIC (`quic = ...`).
    pub quic: QuicMode,
    /// Answer DNS queries for blocked names (block mode; see [`Tracker::set_dns_names`]).
    pub dns_block: bool,
}

impl TrackerConfig {
    /// The settings the daemon would give the kernel under `mode`.
    pub fn for_mode(mode: Mode) -> TrackerConfig {
        TrackerConfig {
            capture: mode != Mode::Disabled,
            hold: mode == Mode::Block,
            capture_flow_max: CAPTURE_FLOW_MAX_DEFAULT,
            verdict_timeout_ns: VERDICT_TIMEOUT_NS_DEFAULT,
            flow_idle_timeout_ns: FLOW_IDLE_TIMEOUT_NS_DEFAULT,
            quic: QuicMode::Inspect,
            dns_block: mode == Mode::Block,
        }
    }

    /// The kernel's form of these settings.
    fn sensor_config(&self) -> SensorConfig {
        SensorConfig {
            capture: u8::from(self.capture),
            hold: u8::from(self.hold),
            capture_flow_max: self.capture_flow_max,
            verdict_timeout_ns: self.verdict_timeout_ns,
            requeue_ns: REQUEUE_NS_DEFAULT,
            flow_idle_timeout_ns: self.flow_idle_timeout_ns,
            quic: self.quic as u8,
            dns_block: u8::from(self.dns_block),
            // Replay has no summary of the policy: everything waits for the pipeline.
            ..SensorConfig::default()
        }
    }
}

/// What the tracker did, named like the kernel's `STATS` counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrackerStats {
    /// Flows created on a SYN.
    pub flows_new: u64,
    /// Payload records produced.
    pub segments_captured: u64,
    /// Segments longer than what was captured (the per-segment bound, or the file's
    /// snapshot length).
    pub segments_truncated: u64,
    /// Flows whose capture budget ran out.
    pub flow_budget_spent: u64,
    /// Verdicts picked up by a flow's next packet.
    pub verdicts_applied: u64,
    /// Server payload packets the kernel would have held back (block mode).
    pub held_packets: u64,
    /// Flows released because their verdict took longer than the timeout.
    pub fail_open: u64,
    /// Flows the kernel would have reset.
    pub flows_reset: u64,
    /// Packets of blocked flows the kernel would have turned into resets.
    pub reset_packets: u64,
    /// Flows dropped because the table was full (the kernel's LRU eviction).
    pub flows_evicted: u64,
    /// SYNs taken as retransmissions of their flow's opening SYN.
    pub syn_retransmits: u64,
    /// SYNs on a live flow that waited for their server's SYN-ACK.
    pub syns_deferred: u64,
    /// SYNs that carried data (TCP Fast Open).
    pub syn_payloads: u64,
    /// Flows replaced by a new connection on their four-tuple before their end was seen.
    pub flows_superseded: u64,
    /// Flows first seen without their SYN.
    pub flows_midstream: u64,
    /// Flow entries retired idle.
    pub flows_expired: u64,
    /// Flows seen to end (FIN or RST).
    pub flows_closed: u64,
    /// QUIC flows opened by a client Initial.
    pub quic_flows: u64,
    /// QUIC flows started again by a new connection on their 4-tuple.
    pub quic_restarts: u64,
    /// QUIC long headers that neither opened nor joined a flow.
    pub quic_not_tracked: u64,
    /// QUIC flows blocked.
    pub quic_blocked: u64,
    /// Datagrams of blocked QUIC flows the kernel would have dropped.
    pub quic_dropped: u64,
    /// Client Initials the kernel would have dropped under `quic = "block"`.
    pub quic_refused: u64,
    /// DNS queries for blocked names the kernel would have answered NXDOMAIN.
    pub dns_forged: u64,
}

/// At most two records come out of one packet (a handshake or close record, then payload).
#[derive(Debug, Default)]
pub struct Records<'a> {
    items: [Option<Record<'a>>; 2],
}

impl<'a> Records<'a> {
    fn push(&mut self, rec: Record<'a>) {
        if let Some(slot) = self.items.iter_mut().find(|s| s.is_none()) {
            *slot = Some(rec);
        }
    }
}

impl<'a> IntoIterator for Records<'a> {
    type Item = Record<'a>;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<Record<'a>>, 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter().flatten()
    }
}

/// The flow table and the verdicts waiting for their flow's next packet.
#[derive(Debug)]
pub struct Tracker {
    config: SensorConfig,
    flows: HashMap<FlowKey, FlowState>,
    pending: HashMap<FlowKey, VerdictEntry>,
    max_flows: usize,
    /// Indexed by `nprot_common::stat`, as the kernel's `STATS`.
    counters: [u64; stat::COUNT as usize],
    flows_evicted: u64,
    dns_names: DnsNames,
    query: QueryScratch,
}

/// The kernel's `DNS_NAMES` map, in replay.
#[derive(Debug, Default)]
pub struct DnsNames(pub HashMap<u64, u8>);

impl NameVerdicts for DnsNames {
    fn name_verdict(&self, hash: u64) -> Option<u8> {
        self.0.get(&hash).copied()
    }
}

/// The tracker's view of one segment: everything but the flow table.
struct Replay<'t, 'a> {
    dns_names: &'t DnsNames,
    query: &'t mut QueryScratch,
    config: &'t SensorConfig,
    pending: &'t mut HashMap<FlowKey, VerdictEntry>,
    counters: &'t mut [u64; stat::COUNT as usize],
    out: Records<'a>,
    payload: &'a [u8],
    now: u64,
}

impl Host for Replay<'_, '_> {
    fn config(&self) -> Option<&SensorConfig> {
        Some(self.config)
    }

    fn now(&self) -> u64 {
        self.now
    }

    /// Replay cannot tell a hook's direction; server payload is taken as coming in.
    fn egress(&self) -> bool {
        false
    }

    fn bump(&mut self, index: u32) {
        if let Some(c) = self.counters.get_mut(index as usize) {
            *c += 1;
        }
    }

    /// Every SYN is taken as outbound; no socket, no interface.
    fn base(&self, client_is_lo: bool, _egress: bool) -> FlowState {
        FlowState {
            first_ns: self.now,
            last_ns: self.now,
            verdict: Verdict::Pending as u8,
            flags: FLOW_SYN_EGRESS | if client_is_lo { FLOW_CLIENT_IS_LO } else { 0 },
            ..FlowState::default()
        }
    }

    fn on_flow_interface(&self, _flow: &FlowState) -> bool {
        true
    }

    fn take_verdict(&mut self, key: &FlowKey) -> Option<VerdictEntry> {
        self.pending.remove(key)
    }

    fn drop_verdict(&mut self, key: &FlowKey) {
        self.pending.remove(key);
    }

    fn available(&self) -> u32 {
        u32::try_from(self.payload.len()).unwrap_or(u32::MAX)
    }

    fn emit(
        &mut self,
        seg: &track::Segment,
        flow: &FlowState,
        from_client: bool,
        kind: RecordKind,
    ) {
        let rec = record(seg, flow, from_client, kind, self.now, &[], 0);
        self.out.push(rec);
    }

    fn capture(&mut self, seg: &track::Segment, flow: &FlowState, len: u32, flags: u8) -> bool {
        let Some(payload) = self.payload.get(..len as usize) else {
            return false;
        };
        let from_client = flags & RECORD_FROM_SERVER == 0;
        let rec = record(
            seg,
            flow,
            from_client,
            RecordKind::Payload,
            self.now,
            payload,
            flags,
        );
        self.out.push(rec);
        true
    }
}

impl DnsHost for Replay<'_, '_> {
    type Names = DnsNames;

    fn dns_query(&mut self, seg: &track::Segment) -> Option<(&mut QueryScratch, &DnsNames)> {
        let n = self
            .payload
            .len()
            .min(DNS_QUERY_READ)
            .min(seg.payload_len as usize);
        self.query.bytes[..n].copy_from_slice(&self.payload[..n]);
        self.query.len = u32::try_from(n).unwrap_or(0);
        Some((self.query, self.dns_names))
    }

    /// Replay sends nothing: what the kernel would answer is counted (`dns_forged`).
    fn answer(&mut self, _seg: &track::Segment, _old: u16, _new: u16) -> Answered {
        Answered::Sent
    }
}

/// The record the kernel would send, with the header it would fill.
fn record<'a>(
    seg: &track::Segment,
    flow: &FlowState,
    from_client: bool,
    kind: RecordKind,
    now: u64,
    payload: &'a [u8],
    flags: u8,
) -> Record<'a> {
    let mut hdr = RecordHeader::default();
    track::fill_header(&mut hdr, seg, flow, from_client, kind, now);
    hdr.len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    hdr.flags |= flags;
    Record::from_header(&hdr, kind, payload)
}

impl Tracker {
    /// An empty tracker with the kernel's table size.
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker::with_capacity(config, MAX_FLOWS as usize)
    }

    /// An empty tracker holding at most `max_flows` flows.
    pub fn with_capacity(config: TrackerConfig, max_flows: usize) -> Tracker {
        Tracker {
            config: config.sensor_config(),
            flows: HashMap::new(),
            pending: HashMap::new(),
            max_flows: max_flows.max(1),
            counters: [0; stat::COUNT as usize],
            flows_evicted: 0,
            dns_names: DnsNames::default(),
            query: QueryScratch::default(),
        }
    }

    /// The names the kernel's `DNS_NAMES` map would hold (the daemon's
    /// `datapath::dns_block`).
    pub fn set_dns_names(&mut self, names: HashMap<u64, u8>) {
        self.dns_names = DnsNames(names);
    }

    /// What the tracker did so far.
    pub fn stats(&self) -> TrackerStats {
        let c = |index: u32| self.counters[index as usize];
        TrackerStats {
            flows_new: c(stat::FLOWS_NEW),
            segments_captured: c(stat::SEGMENTS_CAPTURED),
            segments_truncated: c(stat::SEGMENTS_TRUNCATED),
            flow_budget_spent: c(stat::FLOW_BUDGET_SPENT),
            verdicts_applied: c(stat::VERDICTS_APPLIED),
            held_packets: c(stat::HELD_PACKETS),
            fail_open: c(stat::FAIL_OPEN),
            flows_reset: c(stat::FLOWS_RESET),
            reset_packets: c(stat::RESET_PACKETS),
            flows_evicted: self.flows_evicted,
            syn_retransmits: c(stat::SYN_RETRANSMITS),
            syns_deferred: c(stat::SYNS_DEFERRED),
            syn_payloads: c(stat::SYN_PAYLOADS),
            flows_superseded: c(stat::FLOWS_SUPERSEDED),
            flows_midstream: c(stat::FLOWS_MIDSTREAM),
            flows_expired: c(stat::FLOWS_EXPIRED),
            flows_closed: c(stat::FLOWS_CLOSED),
            quic_flows: c(stat::QUIC_FLOWS),
            quic_restarts: c(stat::QUIC_RESTARTS),
            quic_not_tracked: c(stat::QUIC_NOT_TRACKED),
            quic_blocked: c(stat::QUIC_BLOCKED),
            quic_dropped: c(stat::QUIC_DROPPED),
            quic_refused: c(stat::QUIC_REFUSED),
            dns_forged: c(stat::DNS_FORGED),
        }
    }

    /// Flows in the table now.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Tracks one segment seen at `ts_ns`; returns the records the kernel would emit.
    pub fn on_segment<'a>(&mut self, seg: &Segment<'a>, ts_ns: u64) -> Records<'a> {
        let tcp = &seg.tcp;
        let (key, src_is_lo) = tcp.key();
        let Tracker {
            config,
            flows,
            pending,
            counters,
            max_flows,
            flows_evicted,
            dns_names,
            query,
        } = self;
        let mut host = Replay {
            dns_names,
            query,
            config,
            pending,
            counters,
            out: Records::default(),
            payload: seg.payload,
            now: ts_ns,
        };
        if tcp.proto == PROTO_UDP && dns::is_dns(tcp) {
            // An answered query goes no further than the kernel: nothing to replay of it
            // but its record and the count.
            dns::step(&mut host, tcp, src_is_lo);
            return host.out;
        }
        if tcp.proto == PROTO_UDP {
            let hdr = quic::header(seg.payload);
            let action = if let Some(flow) = flows.get_mut(&key) {
                quic::step(&mut host, tcp, &hdr, &key, src_is_lo, flow)
            } else {
                let (action, state) = quic::unknown(&mut host, tcp, &hdr, src_is_lo);
                if let Some(state) = state {
                    let flow = insert(flows, *max_flows, flows_evicted, key, state);
                    quic::started(&mut host, tcp, flow);
                }
                action
            };
            if let Action::Hold { .. } = action {
                host.bump(stat::HELD_PACKETS);
            }
            return host.out;
        }
        if tcp.is_syn() {
            let state = track::syn_state(&host, tcp, src_is_lo);
            if let Some(old) = flows.get_mut(&key) {
                track::syn_on_entry(&mut host, tcp, &key, src_is_lo, old, state);
            } else {
                let flow = insert(flows, *max_flows, flows_evicted, key, state);
                track::flow_started(&mut host, tcp, flow);
            }
            return host.out;
        }
        let Some(flow) = flows.get_mut(&key) else {
            if let Some(state) = track::midstream(&host, tcp, src_is_lo) {
                insert(flows, *max_flows, flows_evicted, key, state);
                host.bump(stat::FLOWS_MIDSTREAM);
            }
            return host.out;
        };
        match track::step(&mut host, tcp, &key, src_is_lo, flow) {
            // What the kernel does to the packet changes nothing replay reports; the
            // step counted it.
            Action::Pass | Action::Reset | Action::Page { .. } | Action::Drop | Action::Answer => {}
            Action::Hold { .. } => host.bump(stat::HELD_PACKETS),
            // Replay's config never turns the pre-filter on; if it did, the bytes would be
            // captured as the pre-filter program does, and judged undecided.
            Action::Prefilter => track::prefiltered(&mut host, tcp, flow),
        }
        host.out
    }
}

/// Adds a flow not in the table, making room first if it is full, like an LRU map would:
/// an eighth of the table at a time, so that a capture with more flows than the table
/// does not rescan it for every SYN.
fn insert<'f>(
    flows: &'f mut HashMap<FlowKey, FlowState>,
    max_flows: usize,
    evicted: &mut u64,
    key: FlowKey,
    state: FlowState,
) -> &'f mut FlowState {
    if flows.len() >= max_flows {
        let mut ages: Vec<(u64, FlowKey)> = flows.iter().map(|(k, f)| (f.last_ns, *k)).collect();
        let n = (ages.len() / 8).max(1);
        ages.select_nth_unstable_by_key(n - 1, |(ns, _)| *ns);
        for (_, old) in &ages[..n] {
            flows.remove(old);
        }
        *evicted += n as u64;
    }
    flows.entry(key).insert_entry(state).into_mut()
}

impl VerdictTarget for Tracker {
    /// Stores the verdict for the flow's next packet, like the kernel's `VERDICTS` map
    /// (and, like it, refuses a new key when full).
    fn set_verdict(&mut self, key: &FlowKey, verdict: VerdictEntry) -> anyhow::Result<()> {
        if !self.pending.contains_key(key) && self.pending.len() >= MAX_PENDING_VERDICTS as usize {
            anyhow::bail!("verdict map full ({MAX_PENDING_VERDICTS} entries)");
        }
        self.pending.insert(*key, verdict);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::UNIX_EPOCH};

    use super::*;
    use crate::{
        events::{ActionType, Clock, EventFactory},
        policy::{Policy, load_json},
        replay::{
            Replay,
            link::{LinkType, network_layer},
            packet::{
                TCP_ACK, TCP_FIN, TCP_RST,
                build::{Conv, client_hello},
                tcp_segment,
            },
            pcap::Frame,
        },
    };

    const BLOCK_BAD: &str = r#"{"indicators": [
        {"id": "b", "type": "DomainName", "value": "bad.example", "action": "Block"}
    ]}"#;

    /// A replay fed IP packets 1 ms apart.
    struct Run {
        replay: Replay,
        ts: u64,
    }

    impl Run {
        fn new(mode: Mode, indicators: &str) -> Run {
            let policy = Policy::new(load_json(indicators).unwrap().indicators, &[]);
            let factory = EventFactory::new("h", "d", Clock::anchored(UNIX_EPOCH));
            Run {
                replay: Replay::new(factory, Arc::new(policy), mode),
                ts: 1_700_000_000_000_000_000,
            }
        }

        fn audit() -> Run {
            Run::new(Mode::Audit, r#"{"indicators": []}"#)
        }

        fn feed(&mut self, pkt: &[u8]) {
            self.feed_after(1_000_000, pkt);
        }

        fn feed_after(&mut self, delay_ns: u64, pkt: &[u8]) {
            self.ts += delay_ns;
            self.replay.feed(&Frame {
                link: LinkType::RawIp,
                ts_ns: self.ts,
                data: pkt,
                orig_len: pkt.len() as u32,
                offset: 0,
            });
        }

        fn feed_all(&mut self, pkts: &[Vec<u8>]) {
            for p in pkts {
                self.feed(p);
            }
        }

        /// (ActionType, RemoteUrl) of every event so far.
        fn actions(&mut self) -> Vec<(ActionType, Option<String>)> {
            self.replay
                .events()
                .iter()
                .map(|e| (e.action_type, e.remote_url.clone()))
                .collect()
        }

        fn stats(&self) -> TrackerStats {
            self.replay.summary().tracker
        }
    }

    fn conv() -> Conv {
        Conv::new("198.18.0.1", 40000, "198.18.0.2", 80)
    }

    /// In block mode replay counts the queries the kernel would answer NXDOMAIN, and the
    /// pipeline reports them blocked; an allowed subdomain goes to the resolver.
    #[test]
    fn blocked_dns_queries_are_counted_as_forged() {
        let indicators = r#"{"indicators": [
            {"id": "blk", "type": "DomainName", "value": "blocked.test", "action": "Block"},
            {"id": "ok", "type": "DomainName", "value": "ok.blocked.test", "action": "Allowed"}
        ]}"#;
        let query = crate::datapath::dns_block::tests::query;
        for (mode, forged) in [(Mode::Block, 1), (Mode::Audit, 0)] {
            let mut run = Run::new(mode, indicators);
            run.feed(&crate::replay::packet::build::udp(
                false,
                53,
                &query("www.blocked.test"),
            ));
            run.feed(&crate::replay::packet::build::udp(
                false,
                53,
                &query("ok.blocked.test"),
            ));
            assert_eq!(run.stats().dns_forged, forged, "{mode}");
            let actions = run.actions();
            let protection = if mode == Mode::Block {
                ActionType::ExploitGuardNetworkProtectionBlocked
            } else {
                ActionType::ExploitGuardNetworkProtectionAudited
            };
            assert!(
                actions.contains(&(protection, Some("www.blocked.test".into()))),
                "{actions:?}"
            );
            assert_eq!(run.replay.summary().pipeline.dns_blocked, forged);
        }
    }

    const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: a.example\r\nUser-Agent: t\r\n\r\n";

    #[test]
    fn out_of_order_retransmitted_and_overlapping_http_segments() {
        let c = conv();
        let mut run = Run::audit();
        run.feed_all(&c.handshake());
        // Bytes 20.., then a retransmission of them, then an overlap 10..30, then 0..12.
        run.feed(&c.client(20, &REQUEST[20..]));
        run.feed(&c.client(20, &REQUEST[20..]));
        run.feed(&c.client(10, &REQUEST[10..30]));
        assert_eq!(
            run.actions().len(),
            1,
            "only ConnectionSuccess before the gap fills"
        );
        run.feed(&c.client(0, &REQUEST[..12]));
        assert_eq!(
            run.actions(),
            [
                (ActionType::ConnectionSuccess, None),
                (
                    ActionType::HttpConnectionInspected,
                    Some("http://a.example/x".into())
                ),
            ]
        );
        // The verdict (Continue) is picked up by the next packet; a retransmission of
        // decided bytes is not captured, the next request on the connection is.
        let captured = run.stats().segments_captured;
        run.feed(&c.client(0, &REQUEST[..12]));
        assert_eq!(run.stats().segments_captured, captured);
        run.feed(&c.client(
            REQUEST.len() as u32,
            b"GET /y HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ));
        assert_eq!(run.stats().segments_captured, captured + 1);
        assert_eq!(run.stats().verdicts_applied, 1);
        assert_eq!(run.actions().len(), 3);
    }

    /// `GET / HTTP/1.0` for `host`.
    fn get(host: &str) -> Vec<u8> {
        format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").into_bytes()
    }

    fn urls(run: &mut Run, action: ActionType) -> Vec<String> {
        run.actions()
            .into_iter()
            .filter(|(a, _)| *a == action)
            .filter_map(|(_, u)| u)
            .collect()
    }

    #[test]
    fn a_reused_four_tuple_is_a_new_flow_after_an_allowed_one() {
        let first = conv();
        let mut run = Run::new(Mode::Block, BLOCK_BAD);
        run.feed_all(&first.handshake());
        run.feed(&first.client(0, &get("good.example")));
        // The verdict (allow) is picked up; the flow takes the fast path and ends there.
        run.feed(&first.server(0, b"HTTP/1.0 200 OK\r\n\r\n"));
        run.feed(&first.flags(false, TCP_FIN | TCP_ACK));
        // Same ports, a new ISN: a new connection that must be judged on its own.
        let second = Conv {
            cisn: 900_000,
            sisn: 700_000,
            ..first
        };
        run.feed_all(&second.handshake());
        run.feed(&second.client(0, &get("bad.example")));
        run.feed(&second.server(0, b"HTTP/1.0 200 OK\r\n\r\n"));
        assert_eq!(
            urls(&mut run, ActionType::HttpConnectionInspected),
            ["http://good.example/", "http://bad.example/"]
        );
        assert_eq!(
            urls(&mut run, ActionType::ExploitGuardNetworkProtectionBlocked),
            ["http://bad.example/"]
        );
        let s = run.stats();
        assert_eq!(
            (
                s.flows_new,
                s.flows_closed,
                s.flows_superseded,
                s.flows_reset
            ),
            (2, 2, 0, 1),
            "the allowed flow's FIN closed it on the fast path, the block closed the other"
        );
    }

    #[test]
    fn a_syn_with_a_new_isn_supersedes_a_flow_whose_end_was_unseen() {
        let first = conv();
        let mut run = Run::audit();
        run.feed_all(&first.handshake());
        run.feed(&first.client(0, &get("a.example")));
        let second = Conv {
            cisn: 77_000,
            ..first
        };
        // The opening SYN again is a retransmission; another ISN is a new connection.
        run.feed(&first.syn());
        run.feed_all(&second.handshake());
        run.feed(&second.client(0, &get("b.example")));
        let s = run.stats();
        assert_eq!(
            (s.flows_new, s.syn_retransmits, s.flows_superseded),
            (2, 1, 1)
        );
        assert_eq!(
            urls(&mut run, ActionType::HttpConnectionInspected),
            ["http://a.example/", "http://b.example/"]
        );
        assert_eq!(
            run.actions()
                .iter()
                .filter(|(a, _)| *a == ActionType::ConnectionSuccess)
                .count(),
            2
        );
    }

    #[test]
    fn a_forged_syn_the_server_ignores_does_not_end_inspection() {
        let real = conv();
        let mut run = Run::new(Mode::Block, BLOCK_BAD);
        run.feed_all(&real.handshake());
        run.feed(&real.client(0, &get("good.example")));
        run.feed(&real.server(0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        // Another ISN on the live connection; the server answers with a challenge ACK.
        let forged = Conv {
            cisn: 4_000_000,
            ..real
        };
        run.feed(&forged.syn());
        run.feed(&real.flags(false, TCP_ACK));
        // The real connection's next request is still judged.
        let at = get("good.example").len() as u32;
        run.feed(&real.client(at, &get("bad.example")));
        run.feed(&real.server(40, b"HTTP/1.1 200 OK\r\n\r\n"));
        assert_eq!(
            urls(&mut run, ActionType::ExploitGuardNetworkProtectionBlocked),
            ["http://bad.example/"]
        );
        let s = run.stats();
        assert_eq!(
            (s.syns_deferred, s.flows_superseded, s.flows_new),
            (1, 0, 1)
        );
    }

    #[test]
    fn a_reset_the_server_ignores_does_not_hide_the_next_request() {
        let c = conv();
        let mut run = Run::new(Mode::Block, BLOCK_BAD);
        run.feed_all(&c.handshake());
        let first = b"GET / HTTP/1.1\r\nHost: good.example\r\n\r\n";
        run.feed(&c.client(0, first));
        run.feed(&c.server(0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        // A reset with a bad checksum: reported as a close, ignored by the server.
        run.feed(&c.flags(true, TCP_RST | TCP_ACK));
        run.feed(&c.client(first.len() as u32, &get("bad.example")));
        run.feed(&c.server(40, b"HTTP/1.1 200 OK\r\n\r\n"));
        assert_eq!(
            urls(&mut run, ActionType::ExploitGuardNetworkProtectionBlocked),
            ["http://bad.example/"]
        );
    }

    #[test]
    fn fast_open_data_in_the_syn_is_judged() {
        let c = conv();
        let mut run = Run::new(Mode::Block, BLOCK_BAD);
        run.feed(&c.syn_with(&get("bad.example")));
        run.feed(&c.syn_ack());
        run.feed(&c.flags(true, TCP_ACK));
        run.feed(&c.server(0, b"HTTP/1.0 200 OK\r\n\r\n"));
        assert_eq!(
            urls(&mut run, ActionType::ExploitGuardNetworkProtectionBlocked),
            ["http://bad.example/"]
        );
        let s = run.stats();
        assert_eq!((s.syn_payloads, s.flows_reset), (1, 1));
    }

    #[test]
    fn a_flow_without_its_syn_is_tracked_midstream_and_not_inspected() {
        let c = conv();
        let mut run = Run::new(Mode::Block, BLOCK_BAD);
        run.feed(&c.client(0, &get("bad.example")));
        run.feed(&c.server(0, b"HTTP/1.0 200 OK\r\n\r\n"));
        // A reset of an unknown flow starts nothing.
        let other = Conv::new("198.18.0.1", 40100, "198.18.0.2", 80);
        run.feed(&other.flags(true, TCP_RST));
        let s = run.stats();
        assert_eq!((s.flows_new, s.flows_midstream), (0, 1));
        assert_eq!(run.replay.summary().pipeline.records, 0);
    }

    #[test]
    fn an_idle_flow_is_retired_and_taken_up_midstream() {
        let c = conv();
        let mut run = Run::audit();
        run.feed_all(&c.handshake());
        run.feed_after(
            FLOW_IDLE_TIMEOUT_NS_DEFAULT + 1,
            &c.client(0, &get("a.example")),
        );
        let s = run.stats();
        assert_eq!((s.flows_expired, s.flows_midstream), (1, 1));
        assert_eq!(
            urls(&mut run, ActionType::HttpConnectionInspected),
            Vec::<String>::new(),
            "a retired flow is no longer inspected (and counted as such)"
        );
    }

    #[test]
    fn conflicting_overlap_keeps_the_first_copy() {
        let c = conv();
        let mut run = Run::audit();
        run.feed_all(&c.handshake());
        let host_at = REQUEST.windows(9).position(|w| w == b"a.example").unwrap();
        let mut forged = REQUEST.to_vec();
        forged[host_at..host_at + 9].copy_from_slice(b"z.example");
        run.feed(&c.client(0, &REQUEST[..host_at + 4]));
        // A later copy of the same bytes (and the rest) says z.example: ignored.
        run.feed(&c.client(0, &forged));
        run.feed(&c.client(host_at as u32, &REQUEST[host_at..]));
        let urls: Vec<_> = run.actions().into_iter().filter_map(|(_, u)| u).collect();
        assert_eq!(urls, ["http://a.example/x"]);
    }

    #[test]
    fn tls_hello_over_segments_is_blocked_and_capture_ends() {
        let c = Conv::new("198.18.0.1", 40001, "198.18.0.2", 443);
        let mut run = Run::new(Mode::Block, BLOCK_BAD);
        run.feed_all(&c.handshake());
        let hello = client_hello("www.bad.example", 3000);
        // Out of order, with a retransmitted middle part and an overlapping tail.
        run.feed(&c.client(1400, &hello[1400..2800]));
        run.feed(&c.client(1400, &hello[1400..2800]));
        run.feed(&c.client(2000, &hello[2000..]));
        run.feed(&c.client(0, &hello[..1400]));
        assert_eq!(
            run.actions(),
            [
                (ActionType::ConnectionSuccess, None),
                (
                    ActionType::SslConnectionInspected,
                    Some("www.bad.example".into())
                ),
                (
                    ActionType::ExploitGuardNetworkProtectionBlocked,
                    Some("www.bad.example".into())
                ),
            ]
        );
        // The server's answer picks up the block; nothing of the flow is reported after.
        run.feed(&c.server(0, b"\x16\x03\x03 server hello"));
        run.feed(&c.client(hello.len() as u32, b"more"));
        run.feed(&c.flags(true, TCP_FIN | TCP_ACK));
        let s = run.stats();
        assert_eq!((s.flows_reset, s.reset_packets), (1, 3));
        assert_eq!(run.replay.summary().pipeline.records, 1 + 4);
        assert_eq!(run.replay.summary().pipeline.blocked, 1);
    }

    #[test]
    fn proxy_tunnel_continues_until_its_client_hello() {
        let c = Conv::new("198.18.0.1", 40004, "198.18.1.1", 3128);
        let mut run = Run::new(Mode::Block, BLOCK_BAD);
        run.feed_all(&c.handshake());
        let connect = b"CONNECT good.example:443 HTTP/1.1\r\n\r\n";
        run.feed(&c.client(0, connect));
        // The proxy's answer is not held: the CONNECT was decided (Continue).
        run.feed(&c.server(0, b"HTTP/1.1 200 Connection established\r\n\r\n"));
        assert_eq!(run.stats().held_packets, 0);
        let hello = client_hello("bad.example", 600);
        run.feed(&c.client(connect.len() as u32, &hello));
        run.feed(&c.server(40, b"\x16\x03\x03 server hello"));
        assert_eq!(
            run.actions(),
            [
                (ActionType::ConnectionSuccess, None),
                (
                    ActionType::HttpConnectionInspected,
                    Some("good.example:443".into())
                ),
                (
                    ActionType::SslConnectionInspected,
                    Some("bad.example".into())
                ),
                (
                    ActionType::ExploitGuardNetworkProtectionBlocked,
                    Some("bad.example".into())
                ),
            ]
        );
        let s = run.stats();
        assert_eq!((s.verdicts_applied, s.flows_reset), (2, 1));
    }

    #[test]
    fn proxy_request_body_is_skipped_without_capture() {
        let c = Conv::new("198.18.0.1", 40005, "198.18.1.1", 3128);
        let mut run = Run::new(Mode::Block, BLOCK_BAD);
        run.feed_all(&c.handshake());
        let post = b"POST http://a.example/u HTTP/1.1\r\nContent-Length: 4000\r\n\r\n";
        run.feed(&c.client(0, post));
        run.feed(&c.server(0, b"HTTP/1.1 100 Continue\r\n\r\n"));
        let captured = run.stats().segments_captured;
        let body = vec![b'x'; 2000];
        run.feed(&c.client(post.len() as u32, &body));
        run.feed(&c.client(post.len() as u32 + 2000, &body));
        assert_eq!(run.stats().segments_captured, captured, "body not captured");
        let next = b"GET http://b.example/ HTTP/1.1\r\n\r\n";
        run.feed(&c.client(post.len() as u32 + 4000, next));
        let urls: Vec<_> = run.actions().into_iter().filter_map(|a| a.1).collect();
        assert_eq!(urls, ["http://a.example/u", "http://b.example/"]);
        assert_eq!(run.stats().held_packets, 0);
    }

    #[test]
    fn rst_to_syn_is_connection_failed() {
        let c = Conv::new("198.18.0.1", 40002, "198.18.0.2", 9);
        let mut run = Run::audit();
        run.feed(&c.syn());
        run.feed(&c.flags(false, TCP_RST | TCP_ACK));
        assert_eq!(run.actions(), [(ActionType::ConnectionFailed, None)]);
        // The client's retransmitted SYN starts the flow afresh and fails again.
        run.feed(&c.syn());
        run.feed(&c.flags(false, TCP_RST | TCP_ACK));
        assert_eq!(run.actions().len(), 2);
        assert_eq!(run.stats().flows_new, 2);
    }

    #[test]
    fn ipv6_flow_is_tracked_and_inspected() {
        let c = Conv::new("2001:db8:1::1", 50000, "2001:db8:1::2", 8443);
        let mut run = Run::audit();
        run.feed_all(&c.handshake());
        run.feed(&c.client(0, &client_hello("v6.example", 0)));
        let events = run.replay.events().clone();
        assert_eq!(events.len(), 2);
        let ev = serde_json::to_value(&events[1]).unwrap();
        assert_eq!(ev["ActionType"], "SslConnectionInspected");
        assert_eq!(ev["RemoteUrl"], "v6.example");
        assert_eq!(ev["LocalIP"], "2001:db8:1::1");
        assert_eq!(ev["RemoteIP"], "2001:db8:1::2");
        assert_eq!(ev["LocalPort"], 50000);
        assert_eq!(ev["RemotePort"], 8443);
        assert_eq!(ev["AdditionalFields"]["direction"], "Outbound");
    }

    #[test]
    fn syn_retransmission_keeps_the_flow_and_close_is_reported_once() {
        let c = conv();
        let mut run = Run::audit();
        run.feed(&c.syn());
        run.feed(&c.syn());
        run.feed(&c.syn_ack());
        run.feed(&c.ack());
        assert_eq!(run.stats().flows_new, 1);
        run.feed(&c.client(0, &REQUEST[..10]));
        run.feed(&c.flags(true, TCP_FIN | TCP_ACK));
        run.feed(&c.flags(false, TCP_FIN | TCP_ACK));
        run.feed(&c.flags(true, TCP_RST));
        // One ConnectionSuccess and one close; the half request is given up once the
        // close's grace has passed (its server might have ignored it).
        assert_eq!(run.actions().len(), 1);
        run.feed_after(3_000_000_000, &c.flags(true, TCP_ACK));
        let p = run.replay.summary().pipeline;
        assert_eq!((p.records, p.gave_up), (3, 1));
    }

    #[test]
    fn server_first_protocol_ends_inspection() {
        let c = Conv::new("198.18.0.1", 40003, "198.18.0.2", 22);
        let mut run = Run::audit();
        run.feed_all(&c.handshake());
        run.feed(&c.server(0, b"SSH-2.0-OpenSSH_9.2\r\n"));
        run.feed(&c.client(0, b"SSH-2.0-client\r\n"));
        assert_eq!(run.stats().segments_captured, 0);
        assert_eq!(run.actions(), [(ActionType::ConnectionSuccess, None)]);
    }

    #[test]
    fn disabled_mode_reports_connections_only() {
        let c = conv();
        let mut run = Run::new(Mode::Disabled, BLOCK_BAD);
        run.feed_all(&c.handshake());
        run.feed(&c.client(0, REQUEST));
        assert_eq!(run.stats().segments_captured, 0);
        assert_eq!(run.actions(), [(ActionType::ConnectionSuccess, None)]);
    }

    #[test]
    fn block_mode_holds_then_fails_open_after_the_timeout() {
        let c = conv();
        let mut run = Run::new(Mode::Block, BLOCK_BAD);
        run.feed_all(&c.handshake());
        run.feed(&c.client(0, &REQUEST[..10]));
        run.feed(&c.server(0, b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert_eq!(run.stats().held_packets, 1);
        run.feed_after(
            VERDICT_TIMEOUT_NS_DEFAULT + 1,
            &c.server(0, b"HTTP/1.1 200"),
        );
        assert_eq!(run.stats().fail_open, 1);
        // Released: the rest of the request is no longer captured.
        run.feed(&c.client(10, &REQUEST[10..]));
        assert_eq!(run.stats().segments_captured, 1);
    }

    #[test]
    fn capture_is_bounded_per_segment_and_per_flow() {
        let c = conv();
        let mut tracker = Tracker::new(TrackerConfig::for_mode(Mode::Audit));
        let mut sizes = Vec::new();
        let mut flags = Vec::new();
        // GSO-sized segments are captured whole, until the flow's budget is spent.
        let sizes_sent = [20_000usize, 20_000, 30_000, 10_000];
        let mut packets = c.handshake();
        let mut at = 0u32;
        for n in sizes_sent {
            packets.push(c.client(at, &vec![b'x'; n]));
            at += n as u32;
        }
        for pkt in &packets {
            let (v, ip) = network_layer(LinkType::RawIp, pkt).unwrap();
            let seg = tcp_segment(v, ip).unwrap();
            for rec in tracker.on_segment(&seg, 1) {
                if rec.kind == RecordKind::Payload {
                    assert_eq!(rec.client_data_seq, c.cisn + 1);
                    assert!(rec.outbound);
                    sizes.push(rec.payload.len());
                    flags.push((rec.truncated, rec.budget_spent));
                }
            }
        }
        let budget = CAPTURE_FLOW_MAX_DEFAULT as usize;
        assert_eq!(sizes, [20_000, 20_000, budget - 40_000]);
        assert_eq!(flags, [(false, false), (false, false), (false, true)]);
        let s = tracker.stats();
        assert_eq!((s.segments_truncated, s.flow_budget_spent), (0, 1));
    }

    #[test]
    fn table_is_bounded_like_an_lru_map() {
        let mut tracker = Tracker::with_capacity(TrackerConfig::for_mode(Mode::Audit), 8);
        for port in 0..20u16 {
            let c = Conv::new("198.18.0.1", 30000 + port, "198.18.0.2", 80);
            let pkt = c.syn();
            let (v, ip) = network_layer(LinkType::RawIp, &pkt).unwrap();
            let _ = tracker.on_segment(&tcp_segment(v, ip).unwrap(), u64::from(port));
        }
        assert!(tracker.flows() <= 8);
        assert_eq!(tracker.stats().flows_new, 20);
        assert_eq!(tracker.stats().flows_evicted, 12);
    }
}
