//! `nprot replay`: runs a capture file through the sensor's own pipeline (DESIGN §5).
//!
//! The file is read frame by frame ([`pcap`]: pcap or pcapng), the innermost TCP
//! segment is found through link headers, VLAN tags, PPPoE, GRE, VXLAN, GENEVE and IPv6
//! extension headers ([`link`], [`packet`]; a frame without one is counted by why), and
//! a user-space copy of the kernel's flow tracker ([`tracker`]) turns the segments into
//! the same [`Record`](crate::record::Record)s the eBPF programs would have emitted.
//! Those go through the live sensor's [`Pipeline`] — reassembly, parsing, policy, mode —
//! and its events are printed as JSON lines. Verdicts go back to the tracker, which ends
//! capture of a decided flow as the kernel would.
//!
//! Differences from a live run, by necessity:
//! - every SYN is taken as outbound (the client is the local end);
//! - event timestamps are the capture's: record times are nanoseconds since the Unix
//!   epoch and the event clock is anchored there;
//! - a verdict is ready on the flow's very next packet (no ring-buffer or wake-up delay);
//! - indicator expiry is checked against the current time, as the pipeline does.

pub mod link;
pub mod packet;
pub mod pcap;
pub mod tracker;

use std::{
    fmt,
    fs::File,
    io::{self, BufReader, Read, Write},
    path::PathBuf,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use anyhow::Context as _;
use log::warn;
use nprot_common::PROTO_UDP;

use self::{
    packet::{Skipped, decode},
    pcap::{CaptureFileError, CaptureReader, Frame},
    tracker::{Tracker, TrackerConfig, TrackerStats},
};
use crate::{
    datapath::pipeline::{Pipeline, PipelineStats, STREAM_LIMIT},
    events::{Clock, Event, EventFactory},
    mode::Mode,
    policy::{Policy, indicator},
};

/// Reassembly state of a flow that sent nothing for this long (capture time) is
/// dropped, as the daemon does.
const STREAM_IDLE: Duration = Duration::from_secs(30);
/// How often (capture time) idle streams are expired.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Events are written in batches of about this many.
const BATCH: usize = 256;

/// What `nprot replay` was asked to do.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The capture file (pcap or pcapng); `-` reads standard input.
    pub file: PathBuf,
    /// Indicator file; none means an empty policy.
    pub indicators: Option<PathBuf>,
    /// Network-protection level to replay under.
    pub mode: Mode,
    /// Device groups the replaying sensor belongs to.
    pub device_groups: Vec<String>,
}

/// Counts of a replay, printed as one line at the end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Frames read from the file.
    pub packets: u64,
    /// Frames that held a TCP segment the tracker looked at.
    pub tcp_segments: u64,
    /// Of those, segments found inside an encapsulation (PPPoE, GRE, VXLAN, GENEVE).
    pub tunnelled: u64,
    /// Frames that held a UDP datagram (not a tunnel's) the tracker looked at, for QUIC.
    pub udp_datagrams: u64,
    /// Frames without either, by reason:
    /// `packets = tcp_segments + udp_datagrams + skipped.total()`.
    pub skipped: Skipped,
    /// Events written.
    pub events: u64,
    /// What the flow tracker did.
    pub tracker: TrackerStats,
    /// What the pipeline did.
    pub pipeline: PipelineStats,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.pipeline;
        write!(
            f,
            "nprot replay: {} packets ({} TCP, {} tunnelled), {} UDP, {} flows, {} QUIC \
             flows, {} events (tls={} quic={} http={} blocked={} audited={} \
             not_recognised={} gave_up={}), skipped: {}",
            self.packets,
            self.tcp_segments,
            self.tunnelled,
            self.udp_datagrams,
            self.tracker.flows_new,
            self.tracker.quic_flows,
            self.events,
            p.tls_inspected,
            p.quic_inspected,
            p.http_inspected,
            p.blocked,
            p.audited,
            p.not_recognised,
            p.gave_up,
            self.skipped,
        )
    }
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The capture file is unreadable from some point on.
    #[error(transparent)]
    File(#[from] CaptureFileError),
    /// Events could not be written.
    #[error("cannot write events to standard output")]
    Output(#[source] io::Error),
    /// The reader of standard output went away (`nprot replay f | head -1`): the end
    /// of the output, which [`run`] takes as success.
    #[error("standard output was closed")]
    OutputClosed,
}

/// The tracker and the pipeline, fed frame by frame.
pub struct Replay {
    tracker: Tracker,
    pipeline: Pipeline,
    packets: u64,
    tcp_segments: u64,
    tunnelled: u64,
    udp_datagrams: u64,
    skipped: Skipped,
    next_housekeeping_ns: u64,
}

impl Replay {
    /// A replay producing events with `factory`, deciding by `policy` under `mode`.
    pub fn new(factory: EventFactory, policy: Arc<Policy>, mode: Mode) -> Replay {
        let mut tracker = Tracker::new(TrackerConfig::for_mode(mode));
        // The kernel's DNS name map as the daemon would write it now.
        let (names, _) =
            crate::datapath::dns_block::wanted(&policy, mode, std::time::SystemTime::now());
        tracker.set_dns_names(names);
        Replay {
            tracker,
            pipeline: Pipeline::new(factory, STREAM_LIMIT, policy, mode),
            packets: 0,
            tcp_segments: 0,
            tunnelled: 0,
            udp_datagrams: 0,
            skipped: Skipped::default(),
            next_housekeeping_ns: 0,
        }
    }

    /// Runs one captured frame through the tracker and the pipeline.
    pub fn feed(&mut self, frame: &Frame<'_>) {
        self.packets += 1;
        let seg = match decode(frame.link, frame.data) {
            Ok(decoded) if decoded.segment.tcp.proto == PROTO_UDP => {
                self.udp_datagrams += 1;
                decoded.segment
            }
            Ok(decoded) => {
                self.tcp_segments += 1;
                if decoded.tunnels > 0 {
                    self.tunnelled += 1;
                }
                decoded.segment
            }
            Err(why) => return self.skipped.count(why),
        };
        if frame.ts_ns >= self.next_housekeeping_ns {
            self.pipeline
                .expire(frame.ts_ns, STREAM_IDLE.as_nanos() as u64);
            // Saturating: a capture's times are input, up to u64::MAX ns (year 2554).
            self.next_housekeeping_ns = frame.ts_ns.saturating_add(HOUSEKEEPING.as_nanos() as u64);
        }
        for rec in self.tracker.on_segment(&seg, frame.ts_ns) {
            self.pipeline.on_record(&rec, &mut self.tracker);
        }
    }

    /// Events produced and not yet taken.
    pub fn events(&mut self) -> &mut Vec<Event> {
        &mut self.pipeline.events
    }

    /// Counts so far; `events` is left 0 for the caller, who knows what it wrote.
    pub fn summary(&self) -> Summary {
        Summary {
            packets: self.packets,
            tcp_segments: self.tcp_segments,
            tunnelled: self.tunnelled,
            udp_datagrams: self.udp_datagrams,
            skipped: self.skipped,
            events: 0,
            tracker: self.tracker.stats(),
            pipeline: self.pipeline.stats(),
        }
    }

    /// Replays everything `input` holds, handing events to `publish` in batches (and
    /// the last ones also when the file turns out to be corrupt part-way).
    pub fn run<R: Read>(
        &mut self,
        input: R,
        mut publish: impl FnMut(&mut Vec<Event>) -> Result<(), ReplayError>,
    ) -> Result<(), ReplayError> {
        let result = self.run_inner(input, &mut publish);
        let flushed = publish(&mut self.pipeline.events);
        result.and(flushed)
    }

    fn run_inner<R: Read>(
        &mut self,
        input: R,
        publish: &mut impl FnMut(&mut Vec<Event>) -> Result<(), ReplayError>,
    ) -> Result<(), ReplayError> {
        let mut reader = CaptureReader::new(input)?;
        while let Some(frame) = reader.next_frame()? {
            self.feed(&frame);
            if self.pipeline.events.len() >= BATCH {
                publish(&mut self.pipeline.events)?;
            }
        }
        Ok(())
    }
}

/// `nprot replay`: prints the events of `opts.file` on stdout and a summary on stderr.
/// A closed stdout ends the replay early, successfully (docs/decisions.md).
pub fn run(opts: &ReplayOptions) -> anyhow::Result<()> {
    let policy = Arc::new(load_policy(opts)?);
    let stdin = opts.file.as_os_str() == "-";
    let input: Box<dyn Read> = if stdin {
        Box::new(io::stdin().lock())
    } else {
        Box::new(
            File::open(&opts.file)
                .with_context(|| format!("cannot open capture file {}", opts.file.display()))?,
        )
    };
    let factory = EventFactory::for_this_host_with(Clock::anchored(UNIX_EPOCH));
    let mut replay = Replay::new(factory, policy, opts.mode);
    let mut out = EventWriter::new(io::stdout().lock());
    let result = replay.run(BufReader::with_capacity(1 << 18, input), |events| {
        out.write(events)
    });
    let summary = Summary {
        events: out.written,
        ..replay.summary()
    };
    // `eprintln!` would panic on a closed stderr; the summary is not worth that.
    let _ = writeln!(io::stderr(), "{summary}");
    match result {
        Err(ReplayError::OutputClosed) => Ok(()),
        result => result.with_context(|| {
            if stdin {
                "replaying standard input".to_owned()
            } else {
                format!("replaying {}", opts.file.display())
            }
        }),
    }
}

/// Writes batches of events as JSON lines, one write per batch, as the daemon's sinks
/// do; counts the events that were written.
struct EventWriter<W> {
    out: W,
    buf: Vec<u8>,
    /// Events written so far.
    written: u64,
}

impl<W: Write> EventWriter<W> {
    fn new(out: W) -> EventWriter<W> {
        EventWriter {
            out,
            buf: Vec::with_capacity(64 * 1024),
            written: 0,
        }
    }

    /// Writes `events` and drains them. A closed reader is [`ReplayError::OutputClosed`]
    /// (told by the error kind, EPIPE), any other failure [`ReplayError::Output`].
    fn write(&mut self, events: &mut Vec<Event>) -> Result<(), ReplayError> {
        if events.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        let mut n = 0;
        for event in events.drain(..) {
            let start = self.buf.len();
            // Serialising our own plain types cannot fail; if it did, that event is
            // left out whole rather than ending the replay.
            if serde_json::to_writer(&mut self.buf, &event).is_ok() {
                self.buf.push(b'\n');
                n += 1;
            } else {
                self.buf.truncate(start);
            }
        }
        match self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush())
        {
            Ok(()) => {
                self.written += n;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(ReplayError::OutputClosed),
            Err(e) => Err(ReplayError::Output(e)),
        }
    }
}

/// Loads the indicator file, or an empty policy without one (as the daemon does).
fn load_policy(opts: &ReplayOptions) -> anyhow::Result<Policy> {
    let indicators = match &opts.indicators {
        Some(path) => {
            let loaded = indicator::load_file(path)?;
            for warning in &loaded.warnings {
                warn!("{}: {warning}", path.display());
            }
            loaded.indicators
        }
        None => indicator::Indicators::new(),
    };
    if opts.mode == Mode::Disabled && !indicators.is_empty() {
        warn!("mode disabled: indicators are loaded but nothing is inspected");
    }
    Ok(Policy::new(indicators, &opts.device_groups))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::{
        packet::{
            Skipped,
            build::{Conv, client_hello, ethernet, ethernet_with, framings, gre, ipv6_ext, vxlan},
        },
        pcap::build::{Order, epb, idb, pcap, shb},
        *,
    };
    use crate::policy::load_json;

    const T: u32 = 1_795_000_000;

    /// Replays `file` under `mode` with bad.example blocked; returns the events as JSON.
    fn replay_bytes(file: &[u8], mode: Mode) -> (Vec<Value>, Summary, Result<(), ReplayError>) {
        let indicators = r#"{"indicators": [
            {"id": "b", "type": "DomainName", "value": "bad.example", "action": "Block", "title": "Bad"}
        ]}"#;
        let policy = Policy::new(load_json(indicators).unwrap().indicators, &[]);
        let factory = EventFactory::new("host", "id", Clock::anchored(UNIX_EPOCH));
        let mut replay = Replay::new(factory, Arc::new(policy), mode);
        let mut out = Vec::new();
        let result = replay.run(file, |events| {
            out.extend(events.drain(..).map(|e| serde_json::to_value(&e).unwrap()));
            Ok(())
        });
        (out, replay.summary(), result)
    }

    /// An HTTPS flow to `sni` and an HTTP flow to good.example, as IP packets.
    fn traffic(v6: bool, sni: &str) -> Vec<Vec<u8>> {
        let (c, s) = if v6 {
            ("2001:db8:9::1", "2001:db8:9::2")
        } else {
            ("198.18.9.1", "198.18.9.2")
        };
        let tls = Conv::new(c, 41000, s, 443);
        let http = Conv::new(c, 41001, s, 80);
        let mut p = tls.handshake();
        p.push(tls.client(0, &client_hello(sni, 0)));
        p.push(tls.server(0, b"\x16\x03\x03\x00\x10server hello...."));
        p.extend(http.handshake());
        p.push(http.client(0, b"GET /good HTTP/1.1\r\nHost: good.example\r\n\r\n"));
        p.push(http.server(0, b"HTTP/1.1 200 OK\r\n\r\n"));
        p.push(http.flags(true, packet::TCP_FIN | packet::TCP_ACK));
        p
    }

    fn summary_of(events: &[Value]) -> Vec<(String, String, u64)> {
        events
            .iter()
            .map(|e| {
                (
                    e["ActionType"].as_str().unwrap().to_owned(),
                    e["RemoteUrl"].as_str().unwrap_or("").to_owned(),
                    e["LocalPort"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    fn expected(sni: &str, blocked: bool) -> Vec<(String, String, u64)> {
        let mut want = vec![
            ("ConnectionSuccess".into(), String::new(), 41000),
            ("SslConnectionInspected".into(), sni.into(), 41000),
        ];
        if blocked {
            want.push((
                "ExploitGuardNetworkProtectionBlocked".into(),
                sni.into(),
                41000,
            ));
        }
        want.push(("ConnectionSuccess".into(), String::new(), 41001));
        want.push((
            "HttpConnectionInspected".into(),
            "http://good.example/good".into(),
            41001,
        ));
        want
    }

    /// Every link type, VLAN tag, tunnel, IPv4 option and IPv6 extension header that
    /// [`packet::build::framings`] knows gives the events of the plain packets.
    #[test]
    fn every_link_type_encapsulation_and_file_format_gives_the_same_events() {
        for v6 in [false, true] {
            let packets = traffic(v6, "bad.example");
            for (name, code, framing, tunnels) in framings() {
                let frames: Vec<Vec<u8>> = packets.iter().map(|p| framing(p)).collect();
                // Classic pcap, µs, one packet per millisecond.
                let records: Vec<(u32, u32, &[u8])> = frames
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (T, i as u32 * 1000, f.as_slice()))
                    .collect();
                let order = if v6 { Order::Be } else { Order::Le };
                let file = pcap(order, false, code, &records);
                let (events, summary, result) = replay_bytes(&file, Mode::Block);
                result.unwrap();
                let what = format!("pcap {name} (link {code}) v6={v6}");
                assert_eq!(summary_of(&events), expected("bad.example", true), "{what}");
                assert_eq!(summary.packets, frames.len() as u64, "{what}");
                assert_eq!(summary.tcp_segments, frames.len() as u64, "{what}");
                let tunnelled = if tunnels > 0 { frames.len() as u64 } else { 0 };
                assert_eq!(summary.tunnelled, tunnelled, "{what}");
                assert_eq!(summary.skipped, Skipped::default(), "{what}");
                assert_eq!(summary.tracker.flows_new, 2, "{what}");
                assert_eq!(summary.pipeline.blocked, 1, "{what}");

                // pcapng, nanoseconds, the other byte order.
                let order = if v6 { Order::Le } else { Order::Be };
                let mut file = shb(order);
                file.extend(idb(order, code as u16, Some(9), None));
                for (i, f) in frames.iter().enumerate() {
                    file.extend(epb(order, 0, u64::from(T) * 1_000_000_000 + i as u64, f));
                }
                let (events, _, result) = replay_bytes(&file, Mode::Audit);
                result.unwrap();
                let mut want = expected("bad.example", false);
                want.insert(
                    2,
                    (
                        "ExploitGuardNetworkProtectionAudited".into(),
                        "bad.example".into(),
                        41000,
                    ),
                );
                assert_eq!(
                    summary_of(&events),
                    want,
                    "pcapng {name} (link {code}) v6={v6}"
                );
            }
        }
    }

    #[test]
    fn events_carry_the_capture_time_and_the_flow() {
        let packets = traffic(false, "good.example");
        let records: Vec<(u32, u32, &[u8])> = packets
            .iter()
            .enumerate()
            .map(|(i, p)| (T, 123_000 + i as u32, p.as_slice()))
            .collect();
        let (events, _, result) = replay_bytes(&pcap(Order::Le, false, 101, &records), Mode::Audit);
        result.unwrap();
        let tls = &events[1];
        assert_eq!(tls["ActionType"], "SslConnectionInspected");
        // The ClientHello is the 4th packet.
        assert_eq!(tls["Timestamp"], "2026-11-18T11:06:40.123003Z");
        assert_eq!(tls["LocalIP"], "198.18.9.1");
        assert_eq!(tls["RemoteIP"], "198.18.9.2");
        assert_eq!(tls["RemotePort"], 443);
        assert_eq!(tls["DeviceName"], "host");
        assert_eq!(tls["AdditionalFields"]["direction"], "Outbound");
        let ids: Vec<u64> = events
            .iter()
            .map(|e| e["ReportId"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [1, 2, 3, 4]);
    }

    #[test]
    fn a_truncated_last_packet_is_an_error_after_the_events_before_it() {
        let packets = traffic(false, "bad.example");
        let records: Vec<(u32, u32, &[u8])> =
            packets.iter().map(|p| (T, 0, p.as_slice())).collect();
        let file = pcap(Order::Le, false, 101, &records);
        let cut = &file[..file.len() - 5];
        let (events, summary, result) = replay_bytes(cut, Mode::Block);
        let last_at = file.len() - 16 - packets.last().unwrap().len();
        let e = result.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("truncated packet record at offset {last_at}:")),
            "{e}"
        );
        assert_eq!(summary.packets, packets.len() as u64 - 1);
        // Everything up to the HTTP flow's FIN was replayed and published.
        assert_eq!(summary_of(&events), expected("bad.example", true));
    }

    /// A UDP datagram from `src:sport` to `dst:dport`, as an Ethernet frame.
    fn udp_frame(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut udp = sport.to_be_bytes().to_vec();
        udp.extend_from_slice(&dport.to_be_bytes());
        udp.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        let ip = packet::build::ip(src.parse().unwrap(), dst.parse().unwrap(), 17, &udp);
        ethernet(&[], &ip)
    }

    /// A QUIC flow in a capture goes through the same kernel steps and pipeline as live:
    /// its two Initials make one judged ClientHello, the block drops what follows.
    #[test]
    fn a_quic_client_hello_in_a_capture_is_judged_and_its_flow_dropped() {
        use crate::datapath::parse::quic::{
            QuicVersion,
            testdata::{chromium_client_hello, chromium_like_datagrams},
        };
        let hello = chromium_client_hello("bad.example");
        let initials = chromium_like_datagrams(QuicVersion::V2, &[9; 8], &hello);
        let (c, s) = ("198.18.9.1", "198.18.9.2");
        let mut answer = vec![0xd0, 0x6b, 0x33, 0x43, 0xcf, 0, 8];
        answer.resize(1200, 0x11);
        let frames = [
            udp_frame(c, 50000, s, 443, &initials[0]),
            udp_frame(c, 50000, s, 443, &initials[1]),
            udp_frame(s, 443, c, 50000, &answer),
            udp_frame(c, 50000, s, 443, &[0x40, 1, 2, 3]),
            udp_frame(c, 50001, s, 53, b"not quic"),
        ];
        let records: Vec<(u32, u32, &[u8])> = frames.iter().map(|f| (T, 0, f.as_slice())).collect();
        let (events, summary, result) =
            replay_bytes(&pcap(Order::Le, false, 1, &records), Mode::Block);
        result.unwrap();
        let ssl: Vec<&Value> = events
            .iter()
            .filter(|e| e["ActionType"] == "SslConnectionInspected")
            .collect();
        assert_eq!(ssl.len(), 1, "{events:?}");
        assert_eq!(ssl[0]["Protocol"], "Udp");
        assert_eq!(ssl[0]["AdditionalFields"]["quic_version"], "v2");
        assert!(
            events
                .iter()
                .any(|e| e["ActionType"] == "ExploitGuardNetworkProtectionBlocked"),
            "{events:?}"
        );
        assert_eq!((summary.udp_datagrams, summary.tcp_segments), (5, 0));
        let t = summary.tracker;
        assert_eq!((t.quic_flows, t.quic_blocked, t.flows_new), (1, 1, 0));
        assert_eq!(
            t.quic_dropped, 2,
            "the server's answer and the client's next packet"
        );
        assert_eq!(summary.pipeline.quic_inspected, 1);
    }

    /// A DNS query and its response in a capture: one `DnsConnectionInspected`, and the
    /// TCP flow that follows to the answer carries the name.
    #[test]
    fn a_dns_lookup_in_a_capture_is_reported_and_names_the_next_flow() {
        let question = [1, b'a', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1];
        let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        query.extend_from_slice(&question);
        let mut answer = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        answer.extend_from_slice(&question);
        answer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 9, 2]);
        let (c, s) = ("198.18.9.1", "198.18.9.2");
        let mut frames = vec![
            udp_frame(c, 50000, "198.18.9.53", 53, &query),
            udp_frame("198.18.9.53", 53, c, 50000, &answer),
        ];
        let tcp = Conv::new(c, 41000, s, 22);
        frames.extend(tcp.handshake().iter().map(|p| ethernet(&[], p)));
        let records: Vec<(u32, u32, &[u8])> = frames.iter().map(|f| (T, 0, f.as_slice())).collect();
        let (events, summary, result) =
            replay_bytes(&pcap(Order::Le, false, 1, &records), Mode::Audit);
        result.unwrap();
        let dns: Vec<&Value> = events
            .iter()
            .filter(|e| e["ActionType"] == "DnsConnectionInspected")
            .collect();
        assert_eq!(dns.len(), 1, "{events:?}");
        assert_eq!(dns[0]["AdditionalFields"]["query"], "a.test");
        assert_eq!(dns[0]["AdditionalFields"]["answers"][0], "198.18.9.2");
        let success = events
            .iter()
            .find(|e| e["ActionType"] == "ConnectionSuccess")
            .expect("the TCP flow");
        assert_eq!(
            success["AdditionalFields"]["dns_name"], "a.test",
            "{success}"
        );
        assert_eq!(summary.tracker.flows_new, 1);
        assert_eq!(
            (summary.pipeline.dns_queries, summary.pipeline.dns_responses),
            (1, 1)
        );
    }

    #[test]
    fn frames_without_tcp_are_counted_by_reason() {
        let syn = Conv::new("198.18.9.1", 1, "198.18.9.2", 80).syn();
        let arp = ethernet_with(&[], 0x0806, &[0; 28]);
        // A TCP header taken for UDP: its "length" is the sequence number's top half.
        let udp = {
            let mut p = syn.clone();
            p[9] = 17;
            ethernet(&[], &p)
        };
        let icmp = {
            let mut p = syn.clone();
            p[9] = 1;
            ethernet(&[], &p)
        };
        let later_fragment = {
            let mut p = syn.clone();
            p[7] = 0x10;
            ethernet(&[], &p)
        };
        let later_fragment6 = {
            let p = Conv::new("2001:db8:9::1", 1, "2001:db8:9::2", 80).syn();
            let mut p = ipv6_ext(&p, &[44]);
            p[43] = 0x08;
            ethernet(&[], &p)
        };
        let snapped = ethernet(&[], &syn)[..30].to_vec();
        let no_vni = {
            let mut p = vxlan(false, &ethernet(&[], &syn));
            p[28] = 0;
            ethernet(&[], &p)
        };
        let too_deep = {
            let mut p = syn.clone();
            // One tunnel more than the kernel program enters.
            for _ in 0..=nprot_common::encap::MAX_TUNNELS {
                p = gre(false, 0, 0x0800, &p);
            }
            ethernet(&[], &p)
        };
        let frames = [
            &arp,
            &udp,
            &icmp,
            &later_fragment,
            &later_fragment6,
            &snapped,
            &no_vni,
            &too_deep,
            &ethernet(&[], &syn),
        ];
        let records: Vec<(u32, u32, &[u8])> = frames.iter().map(|f| (T, 0, f.as_slice())).collect();
        let file = pcap(Order::Le, false, 1, &records);
        let (events, summary, result) = replay_bytes(&file, Mode::Audit);
        result.unwrap();
        assert!(events.is_empty());
        assert_eq!((summary.packets, summary.tcp_segments), (9, 1));
        assert_eq!(
            summary.skipped,
            Skipped {
                not_ip: 1,
                not_tcp: 1,
                fragments: 2,
                truncated: 1,
                malformed: 2,
                too_deep: 1,
            }
        );
        assert_eq!(
            summary.packets,
            summary.tcp_segments + summary.skipped.total()
        );
        let line = Summary {
            events: 0,
            ..summary
        }
        .to_string();
        assert!(
            line.starts_with(
                "nprot replay: 9 packets (1 TCP, 0 tunnelled), 0 UDP, 1 flows, 0 QUIC flows, \
                 0 events"
            ),
            "{line}"
        );
        assert!(
            line.ends_with(
                "skipped: not_ip=1 not_tcp=1 fragments=2 truncated=1 malformed=2 too_deep=1"
            ),
            "{line}"
        );
    }

    /// Issue 11: a pcapng whose `if_tsoffset` saturated the time to u64::MAX panicked
    /// replay's housekeeping in builds with overflow checks (and wrapped it in release).
    /// Such an offset is now an error at its first packet; the latest time that fits
    /// (u64::MAX ns, no offset) replays normally.
    #[test]
    fn extreme_pcapng_times_neither_panic_nor_wrap() {
        let packets = traffic(false, "bad.example");
        let o = Order::Le;
        let mut file = shb(o);
        file.extend(idb(o, 101, Some(9), Some(i64::MAX)));
        let first = file.len();
        for p in &packets {
            file.extend(epb(o, 0, 1, p));
        }
        let (events, summary, result) = replay_bytes(&file, Mode::Block);
        let e = result.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "corrupt pcapng block at offset {first}: timestamp out of range"
            )),
            "{e}"
        );
        assert!(events.is_empty());
        assert_eq!(summary.packets, 0);

        let mut file = shb(o);
        file.extend(idb(o, 101, Some(9), None));
        for p in &packets {
            file.extend(epb(o, 0, u64::MAX, p));
        }
        let (events, _, result) = replay_bytes(&file, Mode::Block);
        result.unwrap();
        assert_eq!(summary_of(&events), expected("bad.example", true));
        assert_eq!(events[0]["Timestamp"], "2554-07-21T23:34:33.709551Z");
    }

    /// A writer that fails every write with `kind`.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn some_events() -> Vec<Event> {
        let packets = traffic(false, "bad.example");
        let records: Vec<(u32, u32, &[u8])> =
            packets.iter().map(|p| (T, 0, p.as_slice())).collect();
        let policy = Policy::new(indicator::Indicators::new(), &[]);
        let factory = EventFactory::new("host", "id", Clock::anchored(UNIX_EPOCH));
        let mut replay = Replay::new(factory, Arc::new(policy), Mode::Audit);
        let mut all = Vec::new();
        replay
            .run(&pcap(Order::Le, false, 101, &records)[..], |events| {
                all.append(events);
                Ok(())
            })
            .unwrap();
        assert!(!all.is_empty());
        all
    }

    /// `nprot replay f | head -1`: a closed stdout ends the output (`run` exits 0),
    /// told from other write errors by its kind.
    #[test]
    fn a_closed_stdout_ends_the_output_and_other_errors_fail() {
        let mut events = some_events();
        let n = events.len() as u64;
        let mut out = EventWriter::new(Vec::new());
        out.write(&mut events.clone()).unwrap();
        assert_eq!(out.written, n);
        let lines: Vec<Value> = out
            .out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len() as u64, n);

        let mut closed = EventWriter::new(Failing(io::ErrorKind::BrokenPipe));
        assert!(matches!(
            closed.write(&mut events.clone()),
            Err(ReplayError::OutputClosed)
        ));
        assert_eq!(closed.written, 0);
        let mut full = EventWriter::new(Failing(io::ErrorKind::StorageFull));
        let e = full.write(&mut events).unwrap_err();
        assert!(matches!(&e, ReplayError::Output(io) if io.kind() == io::ErrorKind::StorageFull));
        assert!(events.is_empty(), "a batch is consumed either way");
    }

    #[test]
    fn corrupted_packets_never_panic_the_replay() {
        let packets = traffic(false, "bad.example");
        let records: Vec<(u32, u32, &[u8])> =
            packets.iter().map(|p| (T, 0, p.as_slice())).collect();
        let file = pcap(Order::Le, false, 101, &records);
        for at in 24..file.len() {
            for byte in [0x00, 0x45, 0xff] {
                let mut bad = file.clone();
                bad[at] = byte;
                let _ = replay_bytes(&bad, Mode::Block);
            }
        }
    }

    /// The same over the most tunnels decoded (GENEVE around PPPoE, GRE, …) around IPv6:
    /// every header of every layer corrupted in turn.
    #[test]
    fn corrupted_tunnel_headers_never_panic_the_replay() {
        let (_, code, framing, _) = framings().into_iter().find(|f| f.0 == "deepest").unwrap();
        let packets = traffic(true, "bad.example");
        // The ClientHello's flow: handshake and hello.
        let frames: Vec<Vec<u8>> = packets[..4].iter().map(|p| framing(p)).collect();
        let records: Vec<(u32, u32, &[u8])> = frames.iter().map(|f| (T, 0, f.as_slice())).collect();
        let file = pcap(Order::Le, false, code, &records);
        let (events, _, result) = replay_bytes(&file, Mode::Block);
        result.unwrap();
        assert_eq!(events.len(), 3, "{events:?}");
        for at in 24..file.len() {
            for byte in [0x00, 0x08, 0xff] {
                let mut bad = file.clone();
                bad[at] = byte;
                let _ = replay_bytes(&bad, Mode::Block);
            }
        }
    }
}
