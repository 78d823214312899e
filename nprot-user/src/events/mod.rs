//! Events: what the sensor reports, in the shape of Microsoft Defender's advanced-hunting
//! tables (DESIGN §4), one JSON object per line.

pub mod append;
pub mod collector;
pub mod outbox;
pub mod rotate;
pub mod sink;

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{mode::Mode, process::ProcessColumns};

/// The advanced-hunting table an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Table {
    /// Connections and inspected ClientHellos and requests.
    DeviceNetworkEvents,
    /// Network-protection blocks, audits and bypasses.
    DeviceEvents,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ActionType {
    /// The TCP handshake completed.
    ConnectionSuccess,
    /// The server refused the connection.
    ConnectionFailed,
    /// A TLS ClientHello was parsed.
    SslConnectionInspected,
    /// An HTTP/1.x request was parsed.
    HttpConnectionInspected,
    /// An indicator blocked the flow (block mode).
    ExploitGuardNetworkProtectionBlocked,
    /// An indicator would have blocked the flow (audit mode), or an Audit indicator matched.
    ExploitGuardNetworkProtectionAudited,
    /// The operator bypassed a Warn indicator for a while (`nprot bypass`).
    NetworkProtectionUserBypassEvent,
    /// A DNS response (with its query) was parsed.
    DnsConnectionInspected,
}

impl ActionType {
    fn table(self) -> Table {
        match self {
            ActionType::ExploitGuardNetworkProtectionBlocked
            | ActionType::ExploitGuardNetworkProtectionAudited
            | ActionType::NetworkProtectionUserBypassEvent => Table::DeviceEvents,
            _ => Table::DeviceNetworkEvents,
        }
    }
}

/// Which side of the guarded interface opened the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Direction {
    /// The client is on this side (its SYN left through an egress hook).
    Outbound,
    /// The client is on the far side and the server is this host.
    Inbound,
    /// Neither end is this host: a flow routed (or bridged) through it.
    Forwarded,
}

/// Per-action details, the `AdditionalFields` column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AdditionalFields {
    /// `ExploitGuardNetworkProtectionBlocked` / `…Audited`, named as Defender names them.
    #[serde(rename_all = "PascalCase")]
    NetworkProtection {
        /// What decided: `CustomBlockList` (an operator's indicator), or
        /// `EncryptedClientHello` (the `ech = "block"` setting).
        response_category: &'static str,
        /// Audited rather than blocked.
        is_audit: bool,
        /// The indicator's id.
        indicator_id: String,
        /// The indicator's value (the domain, URL, address or range it names).
        indicator_value: String,
        /// The indicator's action, by its name in indicator files.
        action: &'static str,
        /// The indicator's title.
        display_name: Option<String>,
        /// The sensor's mode when the flow was judged.
        mode: Mode,
        /// Lower case like every other event's `direction`.
        #[serde(rename = "direction")]
        direction: Direction,
    },
    /// TCP-level events.
    Connection {
        /// Which side opened the flow.
        direction: Direction,
        /// The name the client resolved the server's address from, seen in DNS (the flow
        /// itself names nothing yet).
        #[serde(skip_serializing_if = "Option::is_none")]
        dns_name: Option<String>,
        /// `dns_name` (and `RemoteUrl`) come from a DNS answer, not from the flow.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        dns_derived: bool,
    },
    /// `DnsConnectionInspected`.
    Dns {
        /// The name asked for.
        query: Option<String>,
        /// Its type (`A`, `AAAA`, `HTTPS`, …).
        qtype: Option<String>,
        /// The response code (`NOERROR`, `NXDOMAIN`, …); null for a query whose answer
        /// is not seen (DNS over TCP: only the client's bytes are captured).
        rcode: Option<String>,
        /// The answer records, one string each: an address, `CNAME target`, or
        /// `HTTPS priority target alpn=… ech`.
        answers: Vec<String>,
        /// The smallest TTL of the answers, in seconds.
        ttl: Option<u32>,
        /// An HTTPS/SVCB answer carries an `ech` parameter (ECH configuration).
        ech_config: bool,
        /// The answer was forged by the sensor (NXDOMAIN for a blocked name, block
        /// mode): the resolver was never asked.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        forged: bool,
        /// Which side asked.
        direction: Direction,
    },
    /// `SslConnectionInspected`.
    Ssl {
        /// The SNI.
        server_name: Option<String>,
        /// The offered ALPN protocols.
        alpn: Vec<String>,
        /// The highest version offered.
        tls_version: &'static str,
        /// Encrypted ClientHello: `none`, `grease_or_real` (an extension, perhaps
        /// GREASE: the SNI is taken as the name) or `real` (with evidence, then the SNI
        /// is only an outer name).
        ech: Ech,
        /// What says the ECH is real (`dns_https_record` or `ech_public_names`).
        #[serde(skip_serializing_if = "Option::is_none")]
        ech_evidence: Option<&'static str>,
        /// The name the client resolved the server's address from, when the flow names
        /// none on the wire or hides it (real ECH).
        #[serde(skip_serializing_if = "Option::is_none")]
        dns_name: Option<String>,
        /// `dns_name` comes from a DNS answer.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        dns_derived: bool,
        /// The QUIC version (`v1`, `v2`) of a ClientHello read from QUIC Initials.
        #[serde(skip_serializing_if = "Option::is_none")]
        quic_version: Option<&'static str>,
        /// Which side opened the flow.
        direction: Direction,
        /// What the flow says about a forward proxy.
        #[serde(flatten)]
        proxy: ProxyFields,
    },
    /// `NetworkProtectionUserBypassEvent`.
    #[serde(rename_all = "PascalCase")]
    Bypass {
        /// Id of the Warn indicator bypassed.
        indicator_id: String,
        /// Value of the Warn indicator bypassed.
        indicator_value: String,
        /// Id of the bypass.
        bypass_id: String,
        /// When the bypass ends (RFC 3339, UTC).
        bypass_until: String,
        /// How it was granted.
        granted_via: GrantedVia,
        /// Who granted it: the local account (or, for a Continue link followed from
        /// another host, the client's address); absent for `nprot bypass`, which only
        /// root can run.
        #[serde(skip_serializing_if = "Option::is_none")]
        granted_by: Option<String>,
    },
    /// `HttpConnectionInspected`.
    Http {
        /// The method.
        method: String,
        /// The Host header.
        host: Option<String>,
        /// The request target as sent.
        uri: String,
        /// The User-Agent header.
        user_agent: Option<String>,
        /// The name the client resolved the server's address from, for a request that
        /// names no host.
        #[serde(skip_serializing_if = "Option::is_none")]
        dns_name: Option<String>,
        /// `dns_name` comes from a DNS answer.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        dns_derived: bool,
        /// Which side opened the flow.
        direction: Direction,
        /// The request's number on its connection, from 1 (Zeek's `trans_depth`).
        trans_depth: u32,
        /// What the request says about a forward proxy.
        #[serde(flatten)]
        proxy: ProxyFields,
        /// Present only for a head that was not judged in full.
        #[serde(flatten)]
        oversized: Option<OversizedFields>,
    },
}

/// What an `HttpConnectionInspected` says of a request head that could not be judged in
/// full (too long, or not all captured): it was judged by its start, and by the
/// `oversized` setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OversizedFields {
    /// Always true: the mark to hunt for.
    pub oversized: bool,
    /// `head_too_long` (over 64 KiB) or `head_not_captured` (bytes the capture missed).
    pub reason: &'static str,
    /// Bytes of the head seen, in order from its start.
    pub head_bytes: usize,
    /// The `oversized` setting in force: `allow` or `block`.
    pub oversized_action: &'static str,
    /// Whether the connection was reset (block mode: the setting, or what the head's
    /// start matched).
    pub reset: bool,
}

/// What an inspected request or ClientHello says about a forward proxy (the
/// `proxy…` keys of `AdditionalFields`). Behind a proxy `RemoteIP`/`RemotePort` are the
/// proxy's and `RemoteUrl` is the real target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyFields {
    /// The flow goes to a forward proxy: a CONNECT, an absolute-form request, or the
    /// ClientHello inside a CONNECT tunnel.
    pub proxy: bool,
    /// The proxy as `ip:port` (IPv6 in brackets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_authority: Option<String>,
    /// Whether the proxy is one of the configured `proxies`; absent when none are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_known: Option<bool>,
    /// Inside a tunnel: the CONNECT target (`host:port`) the tunnel was opened for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_target: Option<String>,
    /// Inside a tunnel: the SNI names another host than the CONNECT target, a
    /// domain-fronting signal.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fronting: bool,
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Event {
    /// Wall-clock time of the event, RFC 3339 UTC with microseconds.
    pub timestamp: String,
    /// The table the event belongs to (follows from `action_type`).
    pub table: Table,
    /// What happened.
    pub action_type: ActionType,
    /// This host's name.
    pub device_name: Arc<str>,
    /// This host's id (/etc/machine-id).
    pub device_id: Arc<str>,
    /// The flow's columns; absent on events about no flow (a bypass granted).
    #[serde(flatten)]
    pub flow: Option<FlowColumns>,
    /// `InitiatingProcess*`: the local program that opened the flow, where known.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessColumns>,
    /// The SNI, the request's URL, or the bypassed target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_url: Option<String>,
    /// Per-action details.
    pub additional_fields: AdditionalFields,
    /// Number of the event, from 1, in the order this sensor made them.
    pub report_id: u64,
}

/// The connection columns of a flow event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FlowColumns {
    /// Address of this host's end (the client's for a forwarded flow).
    #[serde(rename = "LocalIP")]
    pub local_ip: IpAddr,
    /// Port of this host's end.
    pub local_port: u16,
    /// Address of the far end (the server's unless the flow is inbound).
    #[serde(rename = "RemoteIP")]
    pub remote_ip: IpAddr,
    /// Port of the far end.
    pub remote_port: u16,
    /// `Tcp`, or `Udp` for QUIC.
    pub protocol: &'static str,
}

/// The transport of a flow, as events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// TCP.
    #[default]
    Tcp,
    /// UDP (QUIC).
    Udp,
}

impl Transport {
    /// The `Protocol` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "Tcp",
            Transport::Udp => "Udp",
        }
    }
}

/// A flow as events describe it: both ends, and which one is local.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEnds {
    /// The end that sent the SYN.
    pub client: (IpAddr, u16),
    /// The end that answered it.
    pub server: (IpAddr, u16),
    /// Which side of the guarded interface the client is on.
    pub direction: Direction,
    /// TCP, or UDP for QUIC.
    pub transport: Transport,
}

impl FlowEnds {
    fn local_remote(&self) -> ((IpAddr, u16), (IpAddr, u16)) {
        // Local is this host's side: the server for inbound flows, else the client, so
        // that RemoteIP and RemoteUrl name the destination as a SOC's hunts expect.
        match self.direction {
            Direction::Inbound => (self.server, self.client),
            Direction::Outbound | Direction::Forwarded => (self.client, self.server),
        }
    }
}

/// Stamps events with this sensor's identity, wall-clock time and report ids.
#[derive(Debug)]
pub struct EventFactory {
    device_name: Arc<str>,
    device_id: Arc<str>,
    next_report_id: u64,
    clock: Clock,
}

impl EventFactory {
    /// A factory for this host (hostname, /etc/machine-id) on the kernel's clock.
    pub fn for_this_host() -> EventFactory {
        EventFactory::for_this_host_with(Clock::now())
    }

    /// A factory for this host with another clock (replay: the capture's).
    pub fn for_this_host_with(clock: Clock) -> EventFactory {
        EventFactory::new(&host_name(), &machine_id(), clock)
    }

    /// Wall-clock time of an event timestamp: the time a policy is judged at.
    pub fn wall(&self, ts_ns: u64) -> SystemTime {
        self.clock.wall(ts_ns)
    }

    /// A factory with a given identity and clock.
    pub fn new(device_name: &str, device_id: &str, clock: Clock) -> EventFactory {
        EventFactory {
            device_name: device_name.into(),
            device_id: device_id.into(),
            next_report_id: 1,
            clock,
        }
    }

    /// Builds an event for `flow` seen at monotonic time `ts_ns`.
    pub fn event(
        &mut self,
        action_type: ActionType,
        ts_ns: u64,
        flow: &FlowEnds,
        remote_url: Option<String>,
        additional_fields: AdditionalFields,
    ) -> Event {
        let ((local_ip, local_port), (remote_ip, remote_port)) = flow.local_remote();
        let report_id = self.next_report_id;
        self.next_report_id += 1;
        Event {
            timestamp: rfc3339_micros(self.clock.wall(ts_ns)),
            table: action_type.table(),
            action_type,
            device_name: self.device_name.clone(),
            device_id: self.device_id.clone(),
            flow: Some(FlowColumns {
                local_ip,
                local_port,
                remote_ip,
                remote_port,
                protocol: flow.transport.as_str(),
            }),
            process: None,
            remote_url,
            additional_fields,
            report_id,
        }
    }

    /// `ConnectionSuccess` / `ConnectionFailed`.
    pub fn connection(&mut self, action_type: ActionType, ts_ns: u64, flow: &FlowEnds) -> Event {
        self.connection_named(action_type, ts_ns, flow, None)
    }

    /// `ConnectionSuccess` / `ConnectionFailed` of a flow whose server address its client
    /// resolved from `dns_name`: the name is the event's `RemoteUrl` too, marked derived.
    pub fn connection_named(
        &mut self,
        action_type: ActionType,
        ts_ns: u64,
        flow: &FlowEnds,
        dns_name: Option<&str>,
    ) -> Event {
        let fields = AdditionalFields::Connection {
            direction: flow.direction,
            dns_name: dns_name.map(str::to_owned),
            dns_derived: dns_name.is_some(),
        };
        self.event(
            action_type,
            ts_ns,
            flow,
            dns_name.map(str::to_owned),
            fields,
        )
    }

    /// `DnsConnectionInspected`; `RemoteUrl` is the name asked for.
    pub fn dns(&mut self, ts_ns: u64, flow: &FlowEnds, seen: DnsSeen) -> Event {
        let url = seen.query.clone();
        let fields = AdditionalFields::Dns {
            query: seen.query,
            qtype: seen.qtype,
            rcode: seen.rcode,
            answers: seen.answers,
            ttl: seen.ttl,
            ech_config: seen.ech_config,
            forged: seen.forged,
            direction: flow.direction,
        };
        self.event(ActionType::DnsConnectionInspected, ts_ns, flow, url, fields)
    }

    /// `SslConnectionInspected`; `RemoteUrl` is the SNI.
    pub fn tls(
        &mut self,
        ts_ns: u64,
        flow: &FlowEnds,
        hello: TlsSeen,
        proxy: ProxyFields,
    ) -> Event {
        let url = hello.server_name.clone();
        let fields = AdditionalFields::Ssl {
            server_name: hello.server_name,
            alpn: hello.alpn,
            tls_version: hello.tls_version,
            ech: hello.ech,
            ech_evidence: hello.ech_evidence.map(EchEvidence::as_str),
            dns_derived: hello.dns_name.is_some(),
            dns_name: hello.dns_name,
            quic_version: hello.quic_version,
            direction: flow.direction,
            proxy,
        };
        self.event(ActionType::SslConnectionInspected, ts_ns, flow, url, fields)
    }

    /// `HttpConnectionInspected`; `RemoteUrl` is the request's full URL.
    pub fn http(
        &mut self,
        ts_ns: u64,
        flow: &FlowEnds,
        req: HttpSeen,
        proxy: ProxyFields,
        trans_depth: u32,
        oversized: Option<OversizedFields>,
    ) -> Event {
        let fields = AdditionalFields::Http {
            method: req.method,
            host: req.host,
            uri: req.uri,
            user_agent: req.user_agent,
            dns_derived: req.dns_name.is_some(),
            dns_name: req.dns_name,
            direction: flow.direction,
            trans_depth,
            proxy,
            oversized,
        };
        self.event(
            ActionType::HttpConnectionInspected,
            ts_ns,
            flow,
            Some(req.url),
            fields,
        )
    }
}

impl EventFactory {
    /// `ExploitGuardNetworkProtectionBlocked` or `…Audited` for one indicator.
    pub fn protection(
        &mut self,
        ts_ns: u64,
        flow: &FlowEnds,
        remote_url: Option<String>,
        protection: Protection,
        mode: Mode,
    ) -> Event {
        let action_type = if protection.is_audit {
            ActionType::ExploitGuardNetworkProtectionAudited
        } else {
            ActionType::ExploitGuardNetworkProtectionBlocked
        };
        let fields = AdditionalFields::NetworkProtection {
            response_category: protection.response_category,
            is_audit: protection.is_audit,
            indicator_id: protection.indicator_id,
            indicator_value: protection.indicator_value,
            action: protection.action,
            display_name: protection.display_name,
            mode,
            direction: flow.direction,
        };
        self.event(action_type, ts_ns, flow, remote_url, fields)
    }
}

/// What a ClientHello says about Encrypted ClientHello, as events report it (`ech`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ech {
    /// No encrypted_client_hello extension.
    None,
    /// The extension is there, but nothing says it is more than GREASE (RFC 9849 §6.2:
    /// clients send a fake one to every server): the SNI seen is taken as the name.
    GreaseOrReal,
    /// The extension is there and the sensor has evidence that it is real: the SNI is
    /// an outer name, the real one is hidden.
    Real,
}

/// Why a ClientHello's ECH is taken as real.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchEvidence {
    /// The client resolved the server's name with an HTTPS record carrying an ECH
    /// configuration, or one whose public name is the SNI.
    Dns,
    /// The SNI is one of the config's `ech_public_names`.
    Config,
}

impl EchEvidence {
    /// The `ech_evidence` of events.
    pub fn as_str(self) -> &'static str {
        match self {
            EchEvidence::Dns => "dns_https_record",
            EchEvidence::Config => "ech_public_names",
        }
    }
}

/// What a ClientHello showed, for `SslConnectionInspected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSeen {
    /// The SNI.
    pub server_name: Option<String>,
    /// The offered ALPN protocols.
    pub alpn: Vec<String>,
    /// The highest version offered.
    pub tls_version: &'static str,
    /// Encrypted ClientHello, as far as the sensor can tell.
    pub ech: Ech,
    /// Why `ech` is `Real`.
    pub ech_evidence: Option<EchEvidence>,
    /// The name the client resolved the server from, if the SNI is missing or hidden.
    pub dns_name: Option<String>,
    /// The QUIC version, for a ClientHello read from QUIC Initials.
    pub quic_version: Option<&'static str>,
}

/// What a DNS response showed, for `DnsConnectionInspected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSeen {
    /// The name asked for.
    pub query: Option<String>,
    /// Its type.
    pub qtype: Option<String>,
    /// The response code (None: the answer is not seen).
    pub rcode: Option<String>,
    /// The answer records as text.
    pub answers: Vec<String>,
    /// The smallest TTL of the answers.
    pub ttl: Option<u32>,
    /// An HTTPS/SVCB answer carries an ECH configuration.
    pub ech_config: bool,
    /// The sensor answered (NXDOMAIN), not the resolver.
    pub forged: bool,
}

/// What a request head showed, for `HttpConnectionInspected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSeen {
    /// The method.
    pub method: String,
    /// The Host header.
    pub host: Option<String>,
    /// The request target as sent.
    pub uri: String,
    /// The User-Agent header.
    pub user_agent: Option<String>,
    /// The full URL (`RemoteUrl`), or the CONNECT authority.
    pub url: String,
    /// The name the client resolved the server from, if the request names no host.
    pub dns_name: Option<String>,
}

/// The indicator behind a protection event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    /// What decided: `CustomBlockList` for an indicator, `EncryptedClientHello` for the
    /// `ech = "block"` setting.
    pub response_category: &'static str,
    /// The indicator's id.
    pub indicator_id: String,
    /// The indicator's value.
    pub indicator_value: String,
    /// Its action, by its name in indicator files.
    pub action: &'static str,
    /// Its title.
    pub display_name: Option<String>,
    /// Audited rather than blocked.
    pub is_audit: bool,
}

/// How a bypass of a Warn indicator was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantedVia {
    /// An administrator's `nprot bypass`.
    Admin,
    /// The Continue link of the warning page.
    ContinueLink,
    /// The Allow action of the desktop prompt (`nprot notify`).
    DesktopPrompt,
}

/// Who granted a bypass, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// How.
    pub via: GrantedVia,
    /// The account (or address) that did.
    pub by: Option<String>,
}

impl EventFactory {
    /// `NetworkProtectionUserBypassEvent`: `target` is allowed despite the Warn indicator
    /// `warned_by` (id, value) until `until`, as `grant` says. It concerns no flow, so it
    /// has no connection columns.
    pub fn bypass(
        &mut self,
        target: &str,
        warned_by: (&str, &str),
        bypass_id: &str,
        until: SystemTime,
        grant: Grant,
    ) -> Event {
        let report_id = self.next_report_id;
        self.next_report_id += 1;
        Event {
            timestamp: rfc3339_micros(SystemTime::now()),
            table: Table::DeviceEvents,
            action_type: ActionType::NetworkProtectionUserBypassEvent,
            device_name: self.device_name.clone(),
            device_id: self.device_id.clone(),
            flow: None,
            process: None,
            remote_url: Some(target.to_owned()),
            additional_fields: AdditionalFields::Bypass {
                indicator_id: warned_by.0.to_owned(),
                indicator_value: warned_by.1.to_owned(),
                bypass_id: bypass_id.to_owned(),
                bypass_until: rfc3339_micros(until),
                granted_via: grant.via,
                granted_by: grant.by,
            },
            report_id,
        }
    }
}

/// Maps the kernel's monotonic timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall-clock time at monotonic 0.
    epoch: SystemTime,
}

impl Clock {
    /// Anchors the monotonic clock to the wall clock now.
    pub fn now() -> Clock {
        let mono = monotonic_ns();
        Clock {
            epoch: SystemTime::now() - Duration::from_nanos(mono),
        }
    }

    /// A clock for which monotonic 0 is `epoch` (tests, replay).
    pub fn anchored(epoch: SystemTime) -> Clock {
        Clock { epoch }
    }

    /// Wall-clock time of monotonic `ts_ns`.
    pub fn wall(&self, ts_ns: u64) -> SystemTime {
        self.epoch + Duration::from_nanos(ts_ns)
    }
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC always exists on Linux; 0 if it somehow failed, as before.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

/// `2026-11-23T10:00:00.123456Z`: always six fractional digits (truncated), as Defender
/// writes them; an instant before the epoch is written as the epoch.
pub fn rfc3339_micros(t: SystemTime) -> String {
    let t = crate::time::Timestamp::from_system_time(t.max(UNIX_EPOCH));
    format!("{:.6}Z", crate::time::utc_datetime(t))
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .map_or_else(|_| "unknown".into(), |h| h.to_string_lossy().into_owned())
}

fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_micros() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456);
        assert_eq!(rfc3339_micros(t), "2026-11-18T11:06:40.123456Z");
        assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_hours(264_384); // 2000-02-29
        assert_eq!(rfc3339_micros(leap), "2000-02-29T00:00:00.000000Z");
        // Truncated, not rounded; before the epoch is the epoch.
        let t = UNIX_EPOCH + Duration::from_nanos(999_999_999);
        assert_eq!(rfc3339_micros(t), "1970-01-01T00:00:00.999999Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339_micros(before), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn outbound_event_puts_the_client_local() {
        let mut f = EventFactory::new("host", "id", Clock::anchored(UNIX_EPOCH));
        let flow = FlowEnds {
            client: ("198.18.0.1".parse().unwrap(), 40000),
            server: ("198.18.0.2".parse().unwrap(), 443),
            direction: Direction::Outbound,
            transport: Transport::Tcp,
        };
        let ev = f.connection(ActionType::ConnectionSuccess, 5_000, &flow);
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["LocalIP"], "198.18.0.1");
        assert_eq!(json["RemotePort"], 443);
        assert_eq!(json["Table"], "DeviceNetworkEvents");
        assert_eq!(json["ActionType"], "ConnectionSuccess");
        assert_eq!(json["Protocol"], "Tcp");
        assert_eq!(json["AdditionalFields"]["direction"], "Outbound");
        assert_eq!(json["Timestamp"], "1970-01-01T00:00:00.000005Z");
        assert!(json.get("RemoteUrl").is_none());
        let second = f.connection(ActionType::ConnectionFailed, 0, &flow);
        assert_eq!(second.report_id, ev.report_id + 1);
    }

    #[test]
    fn inbound_event_puts_the_server_local() {
        let mut f = EventFactory::new("host", "id", Clock::anchored(UNIX_EPOCH));
        let flow = FlowEnds {
            client: ("2001:db8:1::9".parse().unwrap(), 50000),
            server: ("2001:db8:1::1".parse().unwrap(), 80),
            direction: Direction::Inbound,
            transport: Transport::Tcp,
        };
        let ev = f.connection(ActionType::ConnectionSuccess, 0, &flow);
        let flow = ev.flow.unwrap();
        assert_eq!(flow.local_port, 80);
        assert_eq!(flow.remote_ip.to_string(), "2001:db8:1::9");
    }
}
