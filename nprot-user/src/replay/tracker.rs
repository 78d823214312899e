//! The kernel's flow tracker, in user space: turns captured TCP segments into the
//! [`Record`]s that `nprot-ebpf` would have sent through its ring buffer, so that replay
//! feeds the [`Pipeline`](crate::datapath::pipeline::Pipeline) exactly what the live sensor gets.
//!
//! It follows `nprot-ebpf/src/main.rs` step for step, and takes the lifecycle rules from
//! the same code ([`nprot_common::lifecycle`]): flows keyed by [`FlowKey::canonical`],
//! created by a SYN (the opening SYN sent again leaves its flow alone, any other SYN on
//! the four-tuple starts a new flow), taken up mid-stream when first seen without a SYN,
//! retired when idle past the timeout, closed by a FIN or RST on every path; `Established` when the
//! client acknowledges the SYN-ACK, `Failed` when the server answers the SYN with a RST,
//! `Closed` once on the first FIN or RST after that; client payload captured while the
//! flow is inspecting, bounded per segment ([`CAPTURE_SEG_MAX`]) and per flow; server
//! payload before any client payload ends inspection (server-first protocols); in block
//! mode a pending verdict fails open after the verdict timeout.
//!
//! Verdicts come back through [`VerdictTarget`] and, as with the kernel's `VERDICTS` map,
//! are picked up by the flow's next packet: inspection ends there, and a blocked flow
//! reports nothing more (the kernel turns its packets into resets); `Continue` (a forward
//! proxy's connection) keeps the flow inspecting after the bytes the daemon decided.
//!
//! What replay cannot know, it assumes: every SYN is taken as leaving through an egress
//! hook, so the client is the local end (`direction` = `Outbound`); records carry no
//! socket cookie and interface index 0.

use std::collections::HashMap;

use nprot_common::{
    CAPTURE_FLOW_MAX_DEFAULT, CAPTURE_SEG_MAX, FLOW_IDLE_TIMEOUT_NS_DEFAULT, FlowKey, FlowTuple,
    Inspect, MAX_FLOWS, MAX_PENDING_VERDICTS, RecordKind, TcpPhase, VERDICT_TIMEOUT_NS_DEFAULT,
    Verdict, VerdictEntry,
    lifecycle::{self, SynStep, TCP_ACK, TCP_RST, TCP_SYN},
    seq_after,
};

use super::packet::Segment;
use crate::{datapath::pipeline::VerdictTarget, datapath::record::Record, datapath::verdict::Mode};

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
    /// Segments longer than what was captured (the 4096-byte bound, or the file's
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
}

/// Per-flow state, as in the kernel's `FlowState`.
#[derive(Debug, Clone, Copy)]
struct Flow {
    client_is_lo: bool,
    /// The SYN was taken as leaving through egress (always, in replay).
    syn_egress: bool,
    close_reported: bool,
    client_data_seq: u32,
    captured: u32,
    payload_ns: u64,
    /// The daemon answered `Continue`: bytes before `decided_seq` need no decision.
    continued: bool,
    decided_seq: u32,
    capture_end_seq: u32,
    last_ns: u64,
    /// A SYN on this live flow awaits its server's SYN-ACK: (its client is `lo`, its ISN).
    restart: Option<(bool, u32)>,
    phase: TcpPhase,
    inspect: Inspect,
    verdict: Verdict,
}

impl Flow {
    /// What every entry starts with, as the kernel's `base_state`: a SYN's entry once
    /// given its phase and inspection.
    fn base(client_is_lo: bool, client_data_seq: u32, ts_ns: u64) -> Flow {
        Flow {
            client_is_lo,
            // Replay cannot tell which side of a hook the client was on: every SYN is
            // taken as outbound, so the client is the local end.
            syn_egress: true,
            close_reported: false,
            client_data_seq,
            captured: 0,
            payload_ns: 0,
            continued: false,
            decided_seq: 0,
            capture_end_seq: client_data_seq,
            last_ns: ts_ns,
            restart: None,
            phase: TcpPhase::SynSent,
            inspect: Inspect::Done,
            verdict: Verdict::Pending,
        }
    }

    /// A flow taken up without its SYN (the kernel's `midstream_state`): its sender is
    /// taken as the client; tracked, never inspected.
    fn midstream(seg: &Segment<'_>, src_is_lo: bool, ts_ns: u64) -> Flow {
        Flow {
            phase: if lifecycle::ends_flow(seg.flags) {
                TcpPhase::Closed
            } else {
                TcpPhase::Established
            },
            verdict: Verdict::Allow,
            ..Flow::base(src_is_lo, seg.seq, ts_ns)
        }
    }
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
    config: TrackerConfig,
    flows: HashMap<FlowKey, Flow>,
    pending: HashMap<FlowKey, VerdictEntry>,
    max_flows: usize,
    stats: TrackerStats,
}

impl Tracker {
    /// An empty tracker with the kernel's table size.
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker::with_capacity(config, MAX_FLOWS as usize)
    }

    /// An empty tracker holding at most `max_flows` flows.
    pub fn with_capacity(config: TrackerConfig, max_flows: usize) -> Tracker {
        Tracker {
            config,
            flows: HashMap::new(),
            pending: HashMap::new(),
            max_flows: max_flows.max(1),
            stats: TrackerStats::default(),
        }
    }

    /// What the tracker did so far.
    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// Flows in the table now.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Tracks one segment seen at `ts_ns`; returns the records the kernel would emit.
    pub fn on_segment<'a>(&mut self, seg: &Segment<'a>, ts_ns: u64) -> Records<'a> {
        let mut out = Records::default();
        let (key, src_is_lo) =
            FlowKey::canonical(seg.family, &seg.src, seg.sport, &seg.dst, seg.dport);
        if seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            return self.new_flow(seg, key, src_is_lo, ts_ns);
        }
        let Tracker {
            config,
            flows,
            pending,
            stats,
            ..
        } = self;
        let Some(flow) = flows.get_mut(&key) else {
            if lifecycle::picks_up_midstream(seg.flags) {
                self.insert(key, Flow::midstream(seg, src_is_lo, ts_ns));
                self.stats.flows_midstream += 1;
            }
            return out;
        };
        if lifecycle::idle_expired(
            flow.verdict as u8,
            flow.last_ns,
            ts_ns,
            config.flow_idle_timeout_ns,
        ) {
            stats.flows_expired += 1;
            stats.flows_midstream += 1;
            pending.remove(&key);
            *flow = Flow::midstream(seg, src_is_lo, ts_ns);
        }
        if let Some((client_is_lo, isn)) = flow.restart
            && lifecycle::confirms_restart(seg.flags, src_is_lo != client_is_lo, seg.ack, isn)
        {
            // The server accepted the deferred SYN: a new connection supersedes the flow.
            let mut state = Flow::base(client_is_lo, isn.wrapping_add(1), ts_ns);
            state.phase = TcpPhase::SynAckSeen;
            state.inspect = if config.capture {
                Inspect::Capturing
            } else {
                Inspect::Done
            };
            if !flow.close_reported {
                stats.flows_superseded += 1;
            }
            *flow = state;
            pending.remove(&key);
            stats.flows_new += 1;
            return out;
        }
        let from_client = src_is_lo == flow.client_is_lo;
        flow.last_ns = ts_ns;

        if flow.verdict == Verdict::Block {
            if seg.flags & TCP_RST == 0 {
                stats.reset_packets += 1;
            }
            return out;
        }
        // As in the kernel: flows no longer inspected do not report their close, but
        // note it.
        if flow.inspect == Inspect::Done && phase_at_least(flow.phase, TcpPhase::Established) {
            if lifecycle::ends_flow(seg.flags)
                && flow.phase != TcpPhase::Closed
                && !flow.close_reported
            {
                flow.phase = TcpPhase::Closed;
                stats.flows_closed += 1;
            }
            return out;
        }

        handshake(&mut out, stats, seg, flow, from_client, ts_ns);

        if flow.inspect != Inspect::Capturing {
            return out;
        }
        // As in the kernel: only a flow with bytes awaiting a decision looks one up.
        let entry = if flow.payload_ns != 0 {
            pending.remove(&key)
        } else {
            None
        };
        if let Some(entry) = entry {
            stats.verdicts_applied += 1;
            let verdict = Verdict::from_raw(entry.verdict);
            if verdict == Verdict::Continue {
                flow.continued = true;
                flow.decided_seq = entry.decided_seq;
                flow.captured = 0;
                flow.payload_ns = if seq_after(flow.capture_end_seq, entry.decided_seq) {
                    ts_ns
                } else {
                    0
                };
            } else {
                flow.verdict = verdict;
                flow.inspect = Inspect::Done;
                if verdict == Verdict::Block {
                    flow.phase = TcpPhase::Closed;
                    stats.flows_closed += 1;
                    stats.flows_reset += 1;
                    if seg.flags & TCP_RST == 0 {
                        stats.reset_packets += 1;
                    }
                }
                return out;
            }
        }
        if seg.payload_len == 0 || seg.flags & TCP_RST != 0 {
            return out;
        }
        if from_client {
            let end = lifecycle::data_seq(seg.seq, seg.flags).wrapping_add(seg.payload_len);
            if flow.continued && !seq_after(end, flow.decided_seq) {
                return out;
            }
            if flow.payload_ns == 0 {
                flow.payload_ns = ts_ns;
            }
            capture(&mut out, config, stats, seg, flow, ts_ns);
        } else {
            hold(config, stats, flow, ts_ns);
        }
        out
    }

    fn new_flow<'a>(
        &mut self,
        seg: &Segment<'a>,
        key: FlowKey,
        src_is_lo: bool,
        ts_ns: u64,
    ) -> Records<'a> {
        let mut state = Flow::base(src_is_lo, seg.seq.wrapping_add(1), ts_ns);
        state.inspect = if self.config.capture {
            Inspect::Capturing
        } else {
            Inspect::Done
        };
        let mut out = Records::default();
        if let Some(old) = self.flows.get_mut(&key) {
            let same_client = src_is_lo == old.client_is_lo;
            let mut step =
                lifecycle::syn_step(old.phase as u8, old.client_data_seq, seg.seq, same_client);
            // As in the kernel: data in the SYN is captured now or never.
            if step == SynStep::Defer && seg.payload_len != 0 {
                self.stats.flows_superseded += 1;
                step = SynStep::Restart;
            }
            match step {
                SynStep::Retransmit => self.stats.syn_retransmits += 1,
                SynStep::Defer => {
                    old.restart = Some((src_is_lo, seg.seq));
                    self.stats.syns_deferred += 1;
                }
                SynStep::Restart => {
                    *old = state;
                    self.pending.remove(&key);
                    self.stats.flows_new += 1;
                    syn_payload(&mut out, &self.config, &mut self.stats, seg, old, ts_ns);
                }
            }
            return out;
        }
        self.insert(key, state);
        self.stats.flows_new += 1;
        if let Some(flow) = self.flows.get_mut(&key) {
            syn_payload(&mut out, &self.config, &mut self.stats, seg, flow, ts_ns);
        }
        out
    }

    /// Adds a flow not in the table, making room first if it is full.
    fn insert(&mut self, key: FlowKey, flow: Flow) {
        if self.flows.len() >= self.max_flows {
            self.evict_oldest();
        }
        self.flows.insert(key, flow);
    }

    /// Makes room like an LRU map would, an eighth of the table at a time so that a
    /// capture with more flows than the table does not rescan it for every SYN.
    fn evict_oldest(&mut self) {
        let mut ages: Vec<(u64, FlowKey)> =
            self.flows.iter().map(|(k, f)| (f.last_ns, *k)).collect();
        let n = (ages.len() / 8).max(1);
        ages.select_nth_unstable_by_key(n - 1, |(ns, _)| *ns);
        for (_, key) in &ages[..n] {
            self.flows.remove(key);
        }
        self.stats.flows_evicted += n as u64;
    }
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

fn phase_at_least(phase: TcpPhase, than: TcpPhase) -> bool {
    phase as u8 >= than as u8
}

fn handshake<'a>(
    out: &mut Records<'a>,
    stats: &mut TrackerStats,
    seg: &Segment<'a>,
    flow: &mut Flow,
    from_client: bool,
    ts_ns: u64,
) {
    match flow.phase {
        TcpPhase::SynSent if !from_client => {
            if seg.flags & TCP_RST != 0 {
                flow.phase = TcpPhase::Failed;
                flow.inspect = Inspect::Done;
                out.push(record(RecordKind::Failed, seg, flow, from_client, ts_ns));
            } else if seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                flow.phase = TcpPhase::SynAckSeen;
            }
        }
        TcpPhase::SynAckSeen if from_client && seg.flags & (TCP_ACK | TCP_RST) == TCP_ACK => {
            flow.phase = TcpPhase::Established;
            out.push(record(
                RecordKind::Established,
                seg,
                flow,
                from_client,
                ts_ns,
            ));
        }
        phase
            if phase_at_least(phase, TcpPhase::Established)
                && lifecycle::ends_flow(seg.flags)
                && flow.inspect == Inspect::Capturing =>
        {
            report_close(out, stats, seg, flow, from_client, ts_ns);
        }
        _ => {}
    }
}

fn report_close<'a>(
    out: &mut Records<'a>,
    stats: &mut TrackerStats,
    seg: &Segment<'a>,
    flow: &mut Flow,
    from_client: bool,
    ts_ns: u64,
) {
    if flow.close_reported {
        return;
    }
    // As in the kernel, the phase stays: the server may ignore this FIN or RST.
    flow.close_reported = true;
    stats.flows_closed += 1;
    out.push(record(RecordKind::Closed, seg, flow, from_client, ts_ns));
}

fn capture<'a>(
    out: &mut Records<'a>,
    config: &TrackerConfig,
    stats: &mut TrackerStats,
    seg: &Segment<'a>,
    flow: &mut Flow,
    ts_ns: u64,
) {
    let budget = config.capture_flow_max.saturating_sub(flow.captured);
    if budget == 0 {
        return;
    }
    let mut len = seg.payload_len;
    let mut truncated = false;
    if len > CAPTURE_SEG_MAX as u32 {
        len = CAPTURE_SEG_MAX as u32;
        truncated = true;
    }
    // A capture file's snapshot length may have cut the segment: take what is there.
    let available = u32::try_from(seg.payload.len()).unwrap_or(u32::MAX);
    if available < len {
        len = available;
        truncated = true;
    }
    if truncated {
        stats.segments_truncated += 1;
    }
    let mut budget_spent = false;
    if len >= budget {
        len = budget;
        budget_spent = true;
        stats.flow_budget_spent += 1;
    }
    if len == 0 {
        return;
    }
    flow.captured += len;
    let end = lifecycle::data_seq(seg.seq, seg.flags).wrapping_add(seg.payload_len);
    if seq_after(end, flow.capture_end_seq) {
        flow.capture_end_seq = end;
    }
    stats.segments_captured += 1;
    let mut rec = record(RecordKind::Payload, seg, flow, true, ts_ns);
    rec.payload = &seg.payload[..len as usize];
    rec.truncated = truncated;
    rec.budget_spent = budget_spent;
    out.push(rec);
}

/// Data in a SYN (TCP Fast Open), captured like a first client segment (the kernel's
/// `syn_payload`).
fn syn_payload<'a>(
    out: &mut Records<'a>,
    config: &TrackerConfig,
    stats: &mut TrackerStats,
    seg: &Segment<'a>,
    flow: &mut Flow,
    ts_ns: u64,
) {
    if seg.payload_len == 0 || flow.inspect != Inspect::Capturing {
        return;
    }
    stats.syn_payloads += 1;
    flow.payload_ns = ts_ns;
    capture(out, config, stats, seg, flow, ts_ns);
}

/// Server payload while the flow is inspecting.
fn hold(config: &TrackerConfig, stats: &mut TrackerStats, flow: &mut Flow, ts_ns: u64) {
    if flow.payload_ns == 0 {
        // Nothing awaits a decision on a continued flow.
        if flow.continued {
            return;
        }
        // The server spoke first: not a client-first protocol nprot can judge.
        flow.inspect = Inspect::Done;
        flow.verdict = Verdict::Allow;
        return;
    }
    if !config.hold {
        return;
    }
    if ts_ns.saturating_sub(flow.payload_ns) > config.verdict_timeout_ns {
        flow.inspect = Inspect::Done;
        flow.verdict = Verdict::Allow;
        stats.fail_open += 1;
        return;
    }
    stats.held_packets += 1;
}

/// A record of `kind` for the flow of `seg`.
fn record<'a>(
    kind: RecordKind,
    seg: &Segment<'a>,
    flow: &Flow,
    from_client: bool,
    ts_ns: u64,
) -> Record<'a> {
    let (client_addr, client_port, server_addr, server_port) = if from_client {
        (seg.src, seg.sport, seg.dst, seg.dport)
    } else {
        (seg.dst, seg.dport, seg.src, seg.sport)
    };
    Record {
        kind,
        tuple: FlowTuple {
            client_addr,
            server_addr,
            client_port,
            server_port,
            family: seg.family,
            _pad: [0; 3],
        },
        ts_ns,
        outbound: flow.syn_egress,
        seq: lifecycle::data_seq(seg.seq, seg.flags),
        client_data_seq: flow.client_data_seq,
        stream_seq: if flow.continued {
            flow.decided_seq
        } else {
            flow.client_data_seq
        },
        payload: &[],
        truncated: false,
        budget_spent: false,
        socket_cookie: 0,
        ifindex: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::UNIX_EPOCH};

    use super::*;
    use crate::{
        events::{ActionType, Clock, EventFactory},
        policy::{Policy, load_json},
        replay::packet::TCP_FIN,
        replay::{
            Replay,
            link::{LinkType, network_layer},
            packet::{
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
