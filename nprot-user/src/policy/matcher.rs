//! Matching flows against indicators (DESIGN §3).
//!
//! A [`Policy`] is built once from an [`Indicators`] set and never changes; the daemon
//! shares it behind an `Arc` and swaps it on reload. Every lookup is a handful of hash
//! probes, whatever the number of indicators:
//! - domains: one probe per label boundary of the host (`a.b.example.com`,
//!   `b.example.com`, `example.com`, `com`), hashing the host once from its end;
//! - URLs: by exact host, then one probe per distinct path length of that host's URL
//!   indicators;
//! - IPs: one probe per prefix length present in the set, for IPv4 and IPv6 separately.
//!
//! Index keys are 64-bit hashes of the text, not the text itself (which stays in the
//! indicator store), and every hit is verified against the stored text.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, Hasher},
    io::Write as _,
    net::IpAddr,
    time::SystemTime,
};

use nprot_common::name_hash;

use super::{
    indicator::{Action, IndicatorType},
    store::{IndicatorRef, Indicators},
    targets::canonical_path,
};
use crate::{process::ProcessInfo, time::Timestamp};

/// What a flow offers for matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    /// The flow's remote address.
    pub ip: IpAddr,
    /// The destination name: TLS SNI, HTTP Host, or the target of a proxy request.
    /// Case, one trailing dot and a `:port` suffix are ignored; an IP literal (IPv6
    /// possibly in brackets) is matched against IP indicators (and URL indicators
    /// written with that literal), never against domain indicators.
    pub host: Option<&'a str>,
    /// The request target's path with query (`/a/b?c`; an absolute-form target is cut
    /// down to its path). Some only for plain-HTTP requests; `None` where only the host
    /// is visible (TLS, CONNECT). Compared in canonical form, like the indicators' paths:
    /// escapes of printable ASCII decoded, dot segments resolved, slashes merged.
    pub http_path: Option<&'a str>,
}

/// The outcome of matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    /// The deciding non-Audit indicator, if any.
    pub winner: Option<IndicatorRef<'a>>,
    /// Every matching Audit indicator, most specific first. They never change the
    /// outcome; each adds an audited event.
    pub audits: Vec<IndicatorRef<'a>>,
}

impl Decision<'_> {
    /// The winner's action: `None` if no (non-Audit) indicator matched.
    pub fn action(&self) -> Option<Action> {
        self.winner.map(|w| w.action())
    }
}

/// Specificity classes, least specific first.
const CLASS_IP: u64 = 0;
const CLASS_PARENT_DOMAIN: u64 = 1;
const CLASS_EXACT_DOMAIN: u64 = 2;
const CLASS_URL: u64 = 3;

/// Orders matches: class, then length within the class, then process-scoped before
/// unscoped, then action precedence.
fn rank(class: u64, len: usize, scoped: bool, action: Action) -> u64 {
    (class << 40)
        | ((len as u64 & 0xffff_ffff) << 8)
        | (u64::from(scoped) << 4)
        | u64::from(action.precedence() & 0xf)
}

/// `a` with all but the first `prefix` bits cleared: the key of an IPv4 lookup at that
/// prefix length (stored networks have their host bits cleared, by `IpNet`).
fn mask4(a: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => a & (u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

/// `a` with all but the first `prefix` bits cleared, as [`mask4`] for IPv6.
fn mask6(a: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => a & (u128::MAX << (128 - u32::from(p.min(128)))),
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One FNV-1a step.
fn step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
}

/// Key of a domain: [`name_hash`] (FNV-1a over its case-folded bytes from last to
/// first), so that the keys of all suffixes of a host come out of one pass over it, and
/// the kernel's walks (DNS queries) find the same keys.
fn domain_key(d: &str) -> u64 {
    name_hash::hash_name(d)
}

/// Key of a URL host: FNV-1a over its lower-cased bytes.
fn host_key(host: &str) -> u64 {
    host.bytes()
        .fold(FNV_OFFSET, |h, b| step(h, b.to_ascii_lowercase()))
}

/// Separates host and path in URL keys (a byte no host contains).
const HOST_END: u8 = 0xff;

/// Key of a URL path prefix: continues the host key over a separator and the path.
fn path_key(host_key: u64, path: &[u8]) -> u64 {
    path.iter()
        .fold(step(host_key, HOST_END), |h, &b| step(h, b))
}

/// Finalises keys that are already hashes (or small integers) into well-mixed hash
/// values (murmur3's fmix64). No per-process seed: keys come from the operator's
/// indicators, not from traffic, and flows can only probe.
#[derive(Debug, Clone, Copy, Default)]
struct Mix;

#[derive(Debug, Default)]
struct MixHasher(u64);

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = step(self.0, b);
        }
        self.0 = fmix64(self.0);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = fmix64(self.0 ^ v.wrapping_add(0x9e37_79b9_7f4a_7c15));
    }
    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
}

impl BuildHasher for Mix {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher(0)
    }
}

/// Marks a multimap value that points into `spill` rather than at an indicator.
const SPILL: u32 = 1 << 31;

/// An immutable multimap from keys to indicator indexes. A key with one indicator (the
/// usual case) costs one map entry; more spill into a shared array as `[n, i1, …, in]`.
#[derive(Debug)]
struct Multi<K> {
    heads: HashMap<K, u32, Mix>,
    spill: Vec<u32>,
}

impl<K: Hash + Eq + Ord + Copy> Multi<K> {
    fn build(mut pairs: Vec<(K, u32)>) -> Self {
        pairs.sort_unstable();
        let keys = pairs.chunk_by(|a, b| a.0 == b.0).count();
        let mut heads = HashMap::with_capacity_and_hasher(keys, Mix);
        let mut spill = Vec::new();
        for run in pairs.chunk_by(|a, b| a.0 == b.0) {
            let v = if let [(_, i)] = run {
                *i
            } else {
                let start = spill.len() as u32;
                spill.push(run.len() as u32);
                spill.extend(run.iter().map(|p| p.1));
                SPILL | start
            };
            heads.insert(run[0].0, v);
        }
        Multi { heads, spill }
    }

    fn get(&self, k: &K) -> &[u32] {
        match self.heads.get(k) {
            None => &[],
            Some(v) if v & SPILL == 0 => std::slice::from_ref(v),
            Some(v) => {
                let start = (v & !SPILL) as usize;
                let n = self.spill.get(start).map_or(0, |&n| n as usize);
                self.spill.get(start + 1..start + 1 + n).unwrap_or(&[])
            }
        }
    }

    fn bytes(&self) -> usize {
        // hashbrown: one control byte per bucket, buckets a power of two ≥ 8/7 entries.
        self.heads.capacity().next_power_of_two() * (size_of::<(K, u32)>() + 1)
            + self.spill.capacity() * 4
    }
}

/// The indicators in effect, indexed for matching.
pub struct Policy {
    set: Indicators,
    domains: Multi<u64>,
    /// Url indicators by host and full path.
    url_paths: Multi<u64>,
    /// Per host key, the distinct path lengths of its Url indicators: `(start, count)`
    /// in `path_lengths`, ascending.
    url_lengths: HashMap<u64, (u32, u32), Mix>,
    path_lengths: Vec<u16>,
    /// Url indicators that apply when only the host is visible (https, or path "/").
    url_hosts: Multi<u64>,
    /// Per prefix length present, longest first.
    ip4: Vec<(u8, Multi<u32>)>,
    ip6: Vec<(u8, Multi<u128>)>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("indicators", &self.set.len())
            .field(
                "ip4_prefixes",
                &self.ip4.iter().map(|p| p.0).collect::<Vec<_>>(),
            )
            .field(
                "ip6_prefixes",
                &self.ip6.iter().map(|p| p.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(Indicators::new(), &[])
    }
}

/// Per prefix length present (index = length), longest first.
fn by_prefix<K: Hash + Eq + Ord + Copy>(lists: Vec<Vec<(K, u32)>>) -> Vec<(u8, Multi<K>)> {
    let mut out: Vec<(u8, Multi<K>)> = lists
        .into_iter()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(p, l)| (p as u8, Multi::build(l)))
        .collect();
    out.reverse();
    out
}

/// A host as a flow names it.
enum Host<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

/// Strips a trailing dot and a port, and recognises IP literals.
fn normalise_host(host: &str) -> Option<Host<'_>> {
    let h = host.trim();
    if let Some(rest) = h.strip_prefix('[') {
        let inside = rest.split_once(']').map_or(rest, |(i, _)| i);
        return inside
            .parse::<IpAddr>()
            .ok()
            .map(|ip| Host::Ip(ip.to_canonical()));
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(Host::Ip(ip.to_canonical()));
    }
    // A single ':' is a port; more would be an IPv6 literal, already tried above.
    let h = match h.split_once(':') {
        Some((name, port)) if !port.contains(':') => name,
        _ => h,
    };
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.is_empty() {
        return None;
    }
    match h.parse::<IpAddr>() {
        Ok(ip) => Some(Host::Ip(ip.to_canonical())),
        Err(_) => Some(Host::Name(h)),
    }
}

/// The path of a request target: absolute-form (`http://host/p`, sent to proxies) is
/// cut down to its path.
fn origin_form(target: &str) -> &str {
    match target.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphabetic()) =>
        {
            rest.find(['/', '?']).map_or("/", |i| &rest[i..])
        }
        _ => target,
    }
}

/// The state of one decision.
struct Matcher<'a> {
    set: &'a Indicators,
    /// The process behind the flow, if known: process-scoped indicators match only it.
    process: Option<&'a ProcessInfo>,
    now: Timestamp,
    best: Option<(u64, u32)>,
    audits: Vec<(u64, u32)>,
}

impl Matcher<'_> {
    fn consider(&mut self, index: u32, class: u64, len: usize) {
        let r = self.set.record(index);
        if r.expired(self.now) {
            return;
        }
        let scope = r.process();
        if scope != 0
            && !self
                .process
                .is_some_and(|p| p.is_named(self.set.process_scope(scope)))
        {
            return;
        }
        let key = rank(class, len, scope != 0, r.action());
        if r.action() == Action::Audit {
            if !self.audits.iter().any(|a| a.1 == index) {
                self.audits.push((key, index));
            }
            return;
        }
        // Equal rank and action: the earlier indicator wins, for determinism.
        if self
            .best
            .is_none_or(|(k, i)| key > k || (key == k && index < i))
        {
            self.best = Some((key, index));
        }
    }
}

impl Policy {
    /// Indexes `indicators`, dropping those scoped to device groups that the sensor
    /// (member of `device_groups`) is not in.
    pub fn new(mut indicators: Indicators, device_groups: &[String]) -> Policy {
        indicators.retain_device_groups(device_groups);
        let set = indicators;
        let mut domains = Vec::new();
        let mut url_paths = Vec::new();
        let mut url_hosts = Vec::new();
        let mut lengths: Vec<(u64, u16)> = Vec::new();
        let mut ip4: Vec<Vec<(u32, u32)>> = vec![Vec::new(); 33];
        let mut ip6: Vec<Vec<(u128, u32)>> = vec![Vec::new(); 129];
        for (i, r) in set.records().iter().enumerate() {
            let i = i as u32;
            match r.kind() {
                IndicatorType::DomainName => domains.push((domain_key(set.canon(r)), i)),
                IndicatorType::Url => {
                    let (host, path) = set.url_parts(r);
                    let hk = host_key(host);
                    url_paths.push((path_key(hk, path.as_bytes()), i));
                    lengths.push((hk, path.len() as u16));
                    if r.https() || path == "/" {
                        url_hosts.push((hk, i));
                    }
                }
                IndicatorType::IpAddress => {
                    let net = set.net(r);
                    match net.addr() {
                        IpAddr::V4(a) => {
                            if let Some(v) = ip4.get_mut(usize::from(net.prefix())) {
                                v.push((u32::from(a), i));
                            }
                        }
                        IpAddr::V6(a) => {
                            if let Some(v) = ip6.get_mut(usize::from(net.prefix())) {
                                v.push((u128::from(a), i));
                            }
                        }
                    }
                }
            }
        }
        lengths.sort_unstable();
        lengths.dedup();
        let mut url_lengths =
            HashMap::with_capacity_and_hasher(lengths.chunk_by(|a, b| a.0 == b.0).count(), Mix);
        let mut path_lengths = Vec::with_capacity(lengths.len());
        for run in lengths.chunk_by(|a, b| a.0 == b.0) {
            url_lengths.insert(run[0].0, (path_lengths.len() as u32, run.len() as u32));
            path_lengths.extend(run.iter().map(|p| p.1));
        }
        Policy {
            domains: Multi::build(domains),
            url_paths: Multi::build(url_paths),
            url_lengths,
            path_lengths,
            url_hosts: Multi::build(url_hosts),
            ip4: by_prefix(ip4),
            ip6: by_prefix(ip6),
            set,
        }
    }

    /// Number of indicators in effect.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether no indicator is in effect.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The indicators in effect.
    pub fn indicators(&self) -> &Indicators {
        &self.set
    }

    /// Approximate heap bytes of the indexes (not counting the indicators themselves).
    pub fn index_bytes(&self) -> usize {
        self.domains.bytes()
            + self.url_paths.bytes()
            + self.url_hosts.bytes()
            + self.url_lengths.capacity().next_power_of_two() * 17
            + self.path_lengths.capacity() * 2
            + self.ip4.iter().map(|p| p.1.bytes()).sum::<usize>()
            + self.ip6.iter().map(|p| p.1.bytes()).sum::<usize>()
    }

    /// Matches a flow: the most specific non-expired indicator wins (URL path length,
    /// then exact host, then longer parent domain, then longer IP prefix), ties going
    /// Allowed > Warn > Block; Audit indicators are only collected.
    pub fn decide(&self, subject: &Subject<'_>, now: SystemTime) -> Decision<'_> {
        self.decide_for(subject, None, now)
    }

    /// Whether some indicator is scoped to a process (so that a decision needs to know
    /// the flow's executable).
    pub fn has_process_scopes(&self) -> bool {
        self.set.has_process_scopes()
    }

    /// [`Policy::decide`] for a flow opened by `process` (if known). An indicator scoped
    /// to a process matches only flows of that process ([`ProcessInfo::is_named`]);
    /// among equally specific matches a process-scoped one goes before an unscoped one,
    /// then Allowed > Warn > Block.
    pub fn decide_for<'p>(
        &'p self,
        subject: &Subject<'_>,
        process: Option<&ProcessInfo>,
        now: SystemTime,
    ) -> Decision<'p> {
        let mut m = Matcher {
            set: &self.set,
            process,
            now: Timestamp::from_system_time(now),
            best: None,
            audits: Vec::new(),
        };
        let ip = subject.ip.to_canonical();
        match subject.host.and_then(normalise_host) {
            Some(Host::Name(host)) => {
                self.match_urls(&mut m, host, subject.http_path);
                self.match_domains(&mut m, host);
            }
            Some(Host::Ip(literal)) => {
                let mut buf = [0u8; 64];
                let mut cur = std::io::Cursor::new(&mut buf[..]);
                if write!(cur, "{literal}").is_ok() {
                    let n = cur.position() as usize;
                    if let Ok(text) = std::str::from_utf8(&buf[..n]) {
                        self.match_urls(&mut m, text, subject.http_path);
                    }
                }
                // Behind a forward proxy `ip` is the proxy: the literal is the target.
                if literal != ip {
                    self.match_ip(&mut m, literal);
                }
            }
            None => {}
        }
        self.match_ip(&mut m, ip);

        self.decision(m)
    }

    /// A DNS lookup of `name` sent to the resolver at `resolver`: Domain indicators match
    /// the name, IP indicators the resolver. URL indicators never match a lookup: a
    /// blocked URL is a path on its host, not the host.
    pub fn decide_lookup(&self, resolver: IpAddr, name: &str, now: SystemTime) -> Decision<'_> {
        let mut m = Matcher {
            set: &self.set,
            process: None,
            now: Timestamp::from_system_time(now),
            best: None,
            audits: Vec::new(),
        };
        if let Some(Host::Name(host)) = normalise_host(name) {
            self.match_domains(&mut m, host);
        }
        self.match_ip(&mut m, resolver.to_canonical());
        self.decision(m)
    }

    /// What the matches collected in `m` decide.
    fn decision(&self, mut m: Matcher<'_>) -> Decision<'_> {
        m.audits
            .sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        Decision {
            winner: m.best.map(|(_, i)| IndicatorRef::new(&self.set, i)),
            audits: m
                .audits
                .iter()
                .map(|&(_, i)| IndicatorRef::new(&self.set, i))
                .collect(),
        }
    }

    fn match_urls(&self, m: &mut Matcher<'_>, host: &str, path: Option<&str>) {
        if self.url_lengths.is_empty() {
            return;
        }
        let hk = host_key(host);
        let Some(path) = path else {
            // Only the host is visible: all such URL indicators are equally specific.
            for &i in self.url_hosts.get(&hk) {
                let (h, _) = self.set.url_parts(self.set.record(i));
                if h.eq_ignore_ascii_case(host) {
                    m.consider(i, CLASS_URL, 0);
                }
            }
            return;
        };
        let Some(&(start, count)) = self.url_lengths.get(&hk) else {
            return;
        };
        let path = canonical_path(origin_form(path));
        let path = path.as_bytes();
        let lens = self
            .path_lengths
            .get(start as usize..(start + count) as usize)
            .unwrap_or(&[]);
        let mut key = step(hk, HOST_END);
        let mut done = 0;
        for &len in lens {
            let len = usize::from(len);
            let Some(more) = path.get(done..len) else {
                break;
            };
            key = more.iter().fold(key, |h, &b| step(h, b));
            done = len;
            for &i in self.url_paths.get(&key) {
                let (h, p) = self.set.url_parts(self.set.record(i));
                if h.eq_ignore_ascii_case(host) && p.as_bytes() == &path[..len] {
                    m.consider(i, CLASS_URL, len);
                }
            }
        }
    }

    fn match_domains(&self, m: &mut Matcher<'_>, host: &str) {
        let b = host.as_bytes();
        let mut h = name_hash::SEED;
        for i in (0..b.len()).rev() {
            h = name_hash::step(h, b[i]);
            if i > 0 && b[i - 1] != b'.' {
                continue;
            }
            // `i` follows a '.' (ASCII), so it is a char boundary.
            let Some(suffix) = host.get(i..) else {
                continue;
            };
            for &k in self.domains.get(&h) {
                if self
                    .set
                    .canon(self.set.record(k))
                    .eq_ignore_ascii_case(suffix)
                {
                    if i == 0 {
                        m.consider(k, CLASS_EXACT_DOMAIN, 0);
                    } else {
                        m.consider(k, CLASS_PARENT_DOMAIN, suffix.len());
                    }
                }
            }
        }
    }

    fn match_ip(&self, m: &mut Matcher<'_>, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                for (prefix, map) in &self.ip4 {
                    for &k in map.get(&mask4(a, *prefix)) {
                        m.consider(k, CLASS_IP, usize::from(*prefix));
                    }
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                for (prefix, map) in &self.ip6 {
                    for &k in map.get(&mask6(a, *prefix)) {
                        m.consider(k, CLASS_IP, usize::from(*prefix));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
        time::{Duration, Instant, UNIX_EPOCH},
    };

    use super::*;
    use crate::policy::load_json;

    /// `(id, type, value, action)` and optional extra JSON fields.
    fn policy_with(entries: &[(&str, &str, &str, &str, &str)], groups: &[&str]) -> Policy {
        let list: Vec<String> = entries
            .iter()
            .map(|(id, kind, value, action, extra)| {
                format!(r#"{{"id":"{id}","type":"{kind}","value":"{value}","action":"{action}"{extra}}}"#)
            })
            .collect();
        let loaded = load_json(&format!("{{\"indicators\":[{}]}}", list.join(","))).unwrap();
        let groups: Vec<String> = groups.iter().map(ToString::to_string).collect();
        Policy::new(loaded.indicators, &groups)
    }

    fn policy(entries: &[(&str, &str, &str, &str)]) -> Policy {
        let e: Vec<_> = entries
            .iter()
            .map(|&(a, b, c, d)| (a, b, c, d, ""))
            .collect();
        policy_with(&e, &[])
    }

    const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_hours(500_000) // 2027-01-15
    }

    /// The winner's id for a TLS flow to `host` (or a bare IP flow if `host` is empty).
    fn tls(p: &Policy, host: &str) -> Option<String> {
        let host = (!host.is_empty()).then_some(host);
        let d = p.decide(
            &Subject {
                ip: ELSEWHERE,
                host,
                http_path: None,
            },
            now(),
        );
        d.winner.map(|w| w.id().to_string())
    }

    fn http(p: &Policy, host: &str, path: &str) -> Option<String> {
        let d = p.decide(
            &Subject {
                ip: ELSEWHERE,
                host: Some(host),
                http_path: Some(path),
            },
            now(),
        );
        d.winner.map(|w| w.id().to_string())
    }

    fn ip(p: &Policy, addr: &str) -> Option<String> {
        let d = p.decide(
            &Subject {
                ip: addr.parse().unwrap(),
                host: None,
                http_path: None,
            },
            now(),
        );
        d.winner.map(|w| w.id().to_string())
    }

    #[allow(
        clippy::unnecessary_wraps,
        reason = "reads as the Option it stands for"
    )]
    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn a_lookup_matches_domains_and_the_resolver_never_urls() {
        let p = policy(&[
            ("d", "DomainName", "example.com", "Block"),
            ("a", "DomainName", "ok.example.com", "Allowed"),
            ("u", "Url", "http://url-only.test/path", "Block"),
            ("r", "IpAddress", "198.18.9.9", "Block"),
        ]);
        let lookup = |resolver: &str, name: &str| {
            p.decide_lookup(resolver.parse().unwrap(), name, now())
                .winner
                .map(|w| w.id().to_string())
        };
        assert_eq!(lookup("203.0.113.7", "www.Example.com."), some("d"));
        assert_eq!(lookup("203.0.113.7", "ok.example.com"), some("a"));
        assert_eq!(lookup("203.0.113.7", "url-only.test"), None);
        assert_eq!(lookup("198.18.9.9", "other.test"), some("r"));
        assert_eq!(
            lookup("203.0.113.7", "198.18.9.9"),
            None,
            "a literal is no name"
        );
    }

    #[test]
    fn domain_matches_itself_and_subdomains_only() {
        let p = policy(&[("d", "DomainName", "example.com", "Block")]);
        assert_eq!(tls(&p, "example.com"), some("d"));
        assert_eq!(tls(&p, "sub.example.com"), some("d"));
        assert_eq!(tls(&p, "a.b.sub.example.com"), some("d"));
        assert_eq!(tls(&p, "notexample.com"), None);
        assert_eq!(tls(&p, "example.com.evil.test"), None);
        assert_eq!(tls(&p, "com"), None);
        assert_eq!(tls(&p, ""), None);
        assert_eq!(
            p.decide(
                &Subject {
                    ip: ELSEWHERE,
                    host: Some("example.com"),
                    http_path: None
                },
                now()
            )
            .action(),
            Some(Action::Block)
        );
    }

    #[test]
    fn exact_host_beats_parent_domain() {
        let p = policy(&[
            ("parent", "DomainName", "example.com", "Allowed"),
            ("exact", "DomainName", "sub.example.com", "Block"),
        ]);
        assert_eq!(tls(&p, "sub.example.com"), some("exact"));
        assert_eq!(tls(&p, "other.example.com"), some("parent"));
    }

    #[test]
    fn longer_parent_beats_shorter_parent() {
        let p = policy(&[
            ("short", "DomainName", "example.com", "Allowed"),
            ("long", "DomainName", "b.example.com", "Block"),
        ]);
        assert_eq!(tls(&p, "a.b.example.com"), some("long"));
        assert_eq!(tls(&p, "c.example.com"), some("short"));
        // Exact beats the longer parent too.
        let p = policy(&[
            ("exact", "DomainName", "a.b.example.com", "Warn"),
            ("long", "DomainName", "b.example.com", "Allowed"),
        ]);
        assert_eq!(tls(&p, "a.b.example.com"), some("exact"));
    }

    #[test]
    fn allowed_beats_warn_beats_block_on_one_value() {
        let p = policy(&[
            ("b", "DomainName", "example.com", "Block"),
            ("w", "DomainName", "example.com", "Warn"),
            ("a", "DomainName", "example.com", "Allowed"),
        ]);
        assert_eq!(tls(&p, "www.example.com"), some("a"));
        let p = policy(&[
            ("b", "DomainName", "example.com", "Block"),
            ("w", "DomainName", "example.com", "Warn"),
        ]);
        assert_eq!(tls(&p, "www.example.com"), some("w"));
        let p = policy(&[
            ("b", "IpAddress", "198.18.0.0/15", "Block"),
            ("a", "IpAddress", "198.18.0.0/15", "Allowed"),
        ]);
        assert_eq!(ip(&p, "198.19.1.1"), some("a"));
    }

    #[test]
    fn longest_url_path_wins() {
        let p = policy(&[
            ("root", "Url", "http://h.example/", "Allowed"),
            ("a", "Url", "http://h.example/a", "Block"),
            ("ab", "Url", "http://h.example/a/b", "Allowed"),
            ("q", "Url", "http://h.example/a/b?x=1", "Block"),
        ]);
        assert_eq!(http(&p, "h.example", "/a/b/c"), some("ab"));
        assert_eq!(http(&p, "h.example", "/a/b?x=12"), some("q"));
        assert_eq!(http(&p, "h.example", "/a/x"), some("a"));
        assert_eq!(http(&p, "h.example", "/abc"), some("a"));
        assert_eq!(http(&p, "h.example", "/x"), some("root"));
        assert_eq!(http(&p, "h.example", ""), some("root"));
        // Paths are case-sensitive; hosts are not; the port is ignored.
        assert_eq!(http(&p, "H.Example:8080", "/A"), some("root"));
        // Exact host only: a subdomain is another host.
        assert_eq!(http(&p, "www.h.example", "/a"), None);
    }

    #[test]
    fn url_beats_domain() {
        let p = policy(&[
            ("dom", "DomainName", "example.com", "Allowed"),
            ("exact", "DomainName", "www.example.com", "Allowed"),
            ("url", "Url", "http://www.example.com/bad", "Block"),
        ]);
        assert_eq!(http(&p, "www.example.com", "/bad/x"), some("url"));
        assert_eq!(http(&p, "www.example.com", "/good"), some("exact"));
        assert_eq!(http(&p, "other.example.com", "/bad"), some("dom"));
    }

    #[test]
    fn longest_ip_prefix_wins() {
        let p = policy(&[
            ("net", "IpAddress", "198.18.0.0/24", "Block"),
            ("wide", "IpAddress", "198.18.0.0/15", "Allowed"),
            ("host", "IpAddress", "198.18.0.5", "Allowed"),
            ("net6", "IpAddress", "2001:db8::/32", "Block"),
            ("host6", "IpAddress", "2001:db8::5", "Allowed"),
            ("mid6", "IpAddress", "2001:db8:1::/48", "Warn"),
        ]);
        assert_eq!(ip(&p, "198.18.0.5"), some("host"));
        assert_eq!(ip(&p, "198.18.0.6"), some("net"));
        assert_eq!(ip(&p, "198.19.0.6"), some("wide"));
        assert_eq!(ip(&p, "198.20.0.6"), None);
        assert_eq!(ip(&p, "::ffff:198.18.0.6"), some("net"));
        assert_eq!(ip(&p, "2001:db8::5"), some("host6"));
        assert_eq!(ip(&p, "2001:db8::6"), some("net6"));
        assert_eq!(ip(&p, "2001:db8:1::6"), some("mid6"));
        assert_eq!(ip(&p, "2001:db9::6"), None);
    }

    #[test]
    fn domain_beats_ip() {
        let p = policy(&[
            ("ip", "IpAddress", "198.18.0.1", "Allowed"),
            ("dom", "DomainName", "evil.test", "Block"),
        ]);
        let d = p.decide(
            &Subject {
                ip: "198.18.0.1".parse().unwrap(),
                host: Some("www.evil.test"),
                http_path: None,
            },
            now(),
        );
        assert_eq!(d.winner.map(|w| w.id()), Some("dom"));
        let d = p.decide(
            &Subject {
                ip: "198.18.0.1".parse().unwrap(),
                host: Some("good.test"),
                http_path: None,
            },
            now(),
        );
        assert_eq!(d.winner.map(|w| w.id()), Some("ip"));
    }

    #[test]
    fn ip_literal_hosts() {
        let p = policy(&[
            ("ip", "IpAddress", "198.18.0.9", "Block"),
            ("dom", "DomainName", "example.com", "Block"),
            ("url", "Url", "http://[2001:db8::9]/x", "Warn"),
        ]);
        // Through a proxy: the flow goes to the proxy, the literal names the target.
        assert_eq!(tls(&p, "198.18.0.9"), some("ip"));
        assert_eq!(tls(&p, "198.18.0.9:443"), some("ip"));
        assert_eq!(http(&p, "[2001:DB8::9]:8080", "/x/y"), some("url"));
        assert_eq!(http(&p, "2001:db8::9", "/x"), some("url"));
        assert_eq!(tls(&p, "2001:db8::9"), None);
    }

    #[test]
    fn expired_indicators_are_ignored() {
        let past = r#","expiration":"2020-01-01T00:00:00Z""#;
        let future = r#","expiration":"2030-01-01T00:00:00Z""#;
        let p = policy_with(
            &[
                ("old-allow", "DomainName", "example.com", "Allowed", past),
                ("block", "DomainName", "example.com", "Block", future),
                ("old-ip", "IpAddress", "198.18.0.0/16", "Block", past),
                ("old-audit", "DomainName", "example.com", "Audit", past),
            ],
            &[],
        );
        assert_eq!(tls(&p, "example.com"), some("block"));
        assert_eq!(ip(&p, "198.18.1.1"), None);
        let d = p.decide(
            &Subject {
                ip: ELSEWHERE,
                host: Some("example.com"),
                http_path: None,
            },
            now(),
        );
        assert!(d.audits.is_empty());
        // At the expiration instant itself it no longer matches.
        let at = crate::time::parse_system_time("2030-01-01T00:00:00Z").unwrap();
        let d = p.decide(
            &Subject {
                ip: ELSEWHERE,
                host: Some("example.com"),
                http_path: None,
            },
            at,
        );
        assert_eq!(d.winner, None);
        let before = at - Duration::from_nanos(1);
        let d = p.decide(
            &Subject {
                ip: ELSEWHERE,
                host: Some("example.com"),
                http_path: None,
            },
            before,
        );
        assert_eq!(d.winner.map(|w| w.id()), Some("block"));
    }

    #[test]
    fn device_groups_scope_indicators() {
        let entries = [
            (
                "scoped",
                "DomainName",
                "example.com",
                "Block",
                r#","device_groups":["Servers","lab"]"#,
            ),
            ("everywhere", "DomainName", "other.test", "Block", ""),
        ];
        let p = policy_with(&entries, &["servers"]);
        assert_eq!(p.len(), 2);
        assert_eq!(tls(&p, "example.com"), some("scoped"));
        assert_eq!(tls(&p, "other.test"), some("everywhere"));
        let p = policy_with(&entries, &["desktops"]);
        assert_eq!(p.len(), 1);
        assert_eq!(tls(&p, "example.com"), None);
        assert_eq!(tls(&p, "other.test"), some("everywhere"));
        let p = policy_with(&entries, &[]);
        assert_eq!(tls(&p, "example.com"), None);
        assert_eq!(tls(&p, "other.test"), some("everywhere"));
        assert_eq!(p.indicators().get(0).map(|r| r.id()), Some("everywhere"));
    }

    fn proc_named(exe: &str) -> ProcessInfo {
        ProcessInfo {
            pid: 1,
            file_name: exe.rsplit('/').next().unwrap_or(exe).to_string(),
            folder_path: Some(exe.to_string()),
            ..Default::default()
        }
    }

    /// The winner's id for a TLS flow to `host` opened by `process`.
    fn tls_by(p: &Policy, host: &str, process: Option<&ProcessInfo>) -> Option<String> {
        let s = Subject {
            ip: ELSEWHERE,
            host: Some(host),
            http_path: None,
        };
        p.decide_for(&s, process, now())
            .winner
            .map(|w| w.id().to_string())
    }

    #[test]
    fn process_scoped_indicators_match_only_their_process() {
        let p = policy_with(
            &[
                (
                    "curl",
                    "DomainName",
                    "bad.test",
                    "Block",
                    r#","process":"curl""#,
                ),
                (
                    "path",
                    "DomainName",
                    "other.test",
                    "Block",
                    r#","process":"/usr/bin/wget""#,
                ),
            ],
            &[],
        );
        assert!(p.has_process_scopes());
        let curl = proc_named("/usr/bin/curl");
        let python = proc_named("/usr/bin/python3.11");
        let wget = proc_named("/usr/bin/wget");
        let other_wget = proc_named("/opt/bin/wget");
        assert_eq!(tls_by(&p, "bad.test", Some(&curl)), some("curl"));
        assert_eq!(tls_by(&p, "www.bad.test", Some(&curl)), some("curl"));
        assert_eq!(tls_by(&p, "bad.test", Some(&python)), None);
        // Unknown process: a scoped indicator never matches.
        assert_eq!(tls_by(&p, "bad.test", None), None);
        assert_eq!(tls(&p, "bad.test"), None);
        // An absolute path matches that executable only; a name matches any path.
        assert_eq!(tls_by(&p, "other.test", Some(&wget)), some("path"));
        assert_eq!(tls_by(&p, "other.test", Some(&other_wget)), None);
        assert_eq!(
            tls_by(&p, "bad.test", Some(&proc_named("/opt/curl"))),
            some("curl")
        );
        let unscoped = policy(&[("d", "DomainName", "bad.test", "Block")]);
        assert!(!unscoped.has_process_scopes());
    }

    #[test]
    fn process_scope_ranks_after_specificity_and_before_the_action() {
        let p = policy_with(
            &[
                ("allow-all", "DomainName", "example.com", "Allowed", ""),
                (
                    "block-curl",
                    "DomainName",
                    "example.com",
                    "Block",
                    r#","process":"curl""#,
                ),
                ("exact", "DomainName", "www.example.com", "Warn", ""),
            ],
            &[],
        );
        let curl = proc_named("/usr/bin/curl");
        let python = proc_named("/usr/bin/python3");
        // Equally specific: the process-scoped one wins, whatever the actions.
        assert_eq!(tls_by(&p, "a.example.com", Some(&curl)), some("block-curl"));
        assert_eq!(
            tls_by(&p, "a.example.com", Some(&python)),
            some("allow-all")
        );
        // A more specific destination still wins over a process scope.
        assert_eq!(tls_by(&p, "www.example.com", Some(&curl)), some("exact"));
    }

    #[test]
    fn process_scope_is_validated_and_part_of_derived_ids() {
        for (process, ok) in [
            ("curl", true),
            ("/usr/bin/curl", true),
            ("", false),
            ("bin/curl", false),
            ("/usr/bin/", false),
        ] {
            let text = format!(
                r#"{{"indicators":[{{"type":"DomainName","value":"a.test","action":"Block","process":"{process}"}}]}}"#
            );
            assert_eq!(load_json(&text).is_ok(), ok, "{process:?}");
        }
        // The same target for two programs, and unscoped: three distinct derived ids.
        let text = r#"{"indicators":[
            {"type":"DomainName","value":"a.test","action":"Block","process":"curl"},
            {"type":"DomainName","value":"a.test","action":"Block","process":"wget"},
            {"type":"DomainName","value":"a.test","action":"Block"}]}"#;
        let loaded = load_json(text).unwrap();
        let set = &loaded.indicators;
        let plain = crate::policy::derived_id::<&str>(
            &set.get(2).unwrap().target(),
            Action::Block,
            &[],
            None,
        );
        assert_eq!(set.get(2).unwrap().id(), plain);
        assert_ne!(set.get(0).unwrap().id(), set.get(1).unwrap().id());
        // Round trip through export.
        let again = load_json(&serde_json::to_string(set).unwrap()).unwrap();
        assert_eq!(again.indicators.get(0).unwrap().process(), Some("curl"));
        assert_eq!(again.indicators.get(2).unwrap().process(), None);
    }

    #[test]
    fn audit_never_decides() {
        let p = policy(&[
            ("audit-parent", "DomainName", "example.com", "Audit"),
            ("block", "DomainName", "www.example.com", "Block"),
            ("audit-exact", "DomainName", "www.example.com", "Audit"),
            ("audit-ip", "IpAddress", "203.0.113.0/24", "Audit"),
        ]);
        let d = p.decide(
            &Subject {
                ip: ELSEWHERE,
                host: Some("www.example.com"),
                http_path: None,
            },
            now(),
        );
        assert_eq!(d.winner.map(|w| w.id()), Some("block"));
        assert_eq!(d.action(), Some(Action::Block));
        let audits: Vec<&str> = d.audits.iter().map(IndicatorRef::id).collect();
        assert_eq!(audits, ["audit-exact", "audit-parent", "audit-ip"]);

        let d = p.decide(
            &Subject {
                ip: ELSEWHERE,
                host: Some("example.com"),
                http_path: None,
            },
            now(),
        );
        assert_eq!(d.winner, None);
        assert_eq!(d.action(), None);
        let audits: Vec<&str> = d.audits.iter().map(IndicatorRef::id).collect();
        assert_eq!(audits, ["audit-parent", "audit-ip"]);
    }

    #[test]
    fn url_indicators_on_tls_flows() {
        let p = policy(&[
            ("https-path", "Url", "https://a.example/login", "Block"),
            ("http-path", "Url", "http://b.example/login", "Block"),
            ("http-root", "Url", "http://c.example/", "Block"),
            ("https-root", "Url", "https://d.example", "Block"),
            ("d-dom", "DomainName", "d.example", "Allowed"),
        ]);
        // Only the host is visible: https URLs (any path) and root URLs match by host.
        assert_eq!(tls(&p, "a.example"), some("https-path"));
        assert_eq!(tls(&p, "b.example"), None);
        assert_eq!(tls(&p, "c.example"), some("http-root"));
        // A URL indicator is more specific than a domain one.
        assert_eq!(tls(&p, "d.example"), some("https-root"));
        assert_eq!(tls(&p, "www.a.example"), None);
        // Where the path is visible it is enforced, whatever the scheme.
        assert_eq!(http(&p, "a.example", "/login?u=1"), some("https-path"));
        assert_eq!(http(&p, "a.example", "/home"), None);
        assert_eq!(http(&p, "b.example", "/login"), some("http-path"));
        // All host-only URL matches are equally specific: Allowed > Warn > Block.
        let p = policy(&[
            ("long", "Url", "https://a.example/very/long/path", "Block"),
            ("root", "Url", "https://a.example/", "Allowed"),
        ]);
        assert_eq!(tls(&p, "a.example"), some("root"));
        assert_eq!(http(&p, "a.example", "/very/long/path/x"), some("long"));
    }

    #[test]
    fn url_paths_cannot_be_evaded_by_spelling() {
        let p = policy(&[
            ("admin", "Url", "http://h.example/admin", "Block"),
            ("enc", "Url", "http://h.example/caf%c3%a9/%7Euser", "Block"),
        ]);
        for path in [
            "/admin",
            "/%61dmin",
            "/%61%64min/x",
            "//admin",
            "/x/../admin",
            "/./admin",
            "/%2e%2e/admin",
            "/x/%2E%2E/admin",
            "/x%2F..%2Fadmin",
            "http://h.example/admin?x",
            "HTTP://other/admin",
        ] {
            assert_eq!(http(&p, "h.example", path), some("admin"), "{path}");
        }
        for path in ["/Admin", "/adm", "/%2561dmin", "/x/admin", "/admin/.."] {
            assert_eq!(http(&p, "h.example", path), None, "{path}");
        }
        assert_eq!(http(&p, "h.example", "/café/~user"), some("enc"));
        assert_eq!(http(&p, "h.example", "/caf%C3%A9/~user/x"), some("enc"));
    }

    #[test]
    fn canonical_paths() {
        for (raw, canonical) in [
            ("", "/"),
            ("/", "/"),
            ("?q=1", "/?q=1"),
            ("/a/b?x=%41", "/a/b?x=%41"),
            ("/a//b/", "/a/b/"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/%7e%41%2f%25%20%", "/~A/%25%20%25"),
            ("/\u{e9} x", "/%C3%A9%20x"),
            ("/%zz", "/%25zz"),
            ("*", "/*"),
        ] {
            assert_eq!(canonical_path(raw), canonical, "{raw:?}");
            assert_eq!(
                canonical_path(canonical),
                canonical,
                "not idempotent: {canonical:?}"
            );
        }
        assert!(matches!(
            canonical_path("/a/b.c/d?e"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn matching_is_case_insensitive_for_hosts() {
        let p = policy(&[
            ("d", "DomainName", "Example.COM", "Block"),
            ("u", "Url", "http://WWW.Shop.Example/Cart", "Warn"),
        ]);
        assert_eq!(tls(&p, "SUB.example.Com"), some("d"));
        assert_eq!(tls(&p, "example.com."), some("d"));
        assert_eq!(http(&p, "www.SHOP.example", "/Cart/1"), some("u"));
        assert_eq!(http(&p, "www.shop.example", "/cart"), None);
    }

    #[test]
    fn hostile_hosts_do_not_panic() {
        let p = policy(&[
            ("d", "DomainName", "example.com", "Block"),
            ("u", "Url", "http://example.com/x", "Block"),
        ]);
        for host in [
            "",
            ".",
            "..",
            ":",
            "[",
            "[]",
            "é.example.com",
            "exämple.com",
            "a..example.com",
            "[::1",
            ":::",
        ] {
            for path in [None, Some(""), Some("x"), Some("é"), Some("/x")] {
                let _ = p.decide(
                    &Subject {
                        ip: ELSEWHERE,
                        host: Some(host),
                        http_path: path,
                    },
                    now(),
                );
            }
        }
        assert_eq!(tls(&p, "é.example.com"), some("d"));
    }

    #[test]
    fn empty_policy() {
        let p = Policy::default();
        assert!(p.is_empty());
        assert_eq!(tls(&p, "example.com"), None);
    }

    /// Deterministic pseudo-random numbers (splitmix64).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            fmix64(self.0)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn rss_kib(field: &str) -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    #[test]
    #[ignore = "scale test: run in release with --ignored --nocapture"]
    fn scale_million_indicators() {
        use std::fmt::Write as _;
        const TLDS: [&str; 6] = ["com", "net", "org", "test", "example", "info"];
        let mut rng = Rng(42);
        let action = |rng: &mut Rng| match rng.below(100) {
            0..=84 => "Block",
            85..=89 => "Audit",
            90..=94 => "Warn",
            _ => "Allowed",
        };
        let mut json = String::with_capacity(130 << 20);
        json.push_str("{\"indicators\":[\n");
        let mut n = 0usize;
        let mut push = |json: &mut String, kind: &str, value: &str, action: &str, extra: &str| {
            if n > 0 {
                json.push_str(",\n");
            }
            n += 1;
            let _ = write!(
                json,
                r#"{{"type":"{kind}","value":"{value}","action":"{action}"{extra}}}"#
            );
        };
        let mut domains = Vec::with_capacity(600_000);
        for i in 0..600_000u64 {
            let d = match i % 3 {
                0 => format!("d{i}.{}", TLDS[(i % 6) as usize]),
                1 => format!("host{i}.cdn{}.{}", i % 5000, TLDS[(i % 4) as usize]),
                _ => format!(
                    "x{:x}.y{}.z{}.{}",
                    rng.next() & 0xffff_ffff,
                    i,
                    i % 77,
                    TLDS[(i % 5) as usize]
                ),
            };
            let title = format!(r#","title":"feed {}""#, i % 1000);
            let a = action(&mut rng);
            push(&mut json, "DomainName", &d, a, &title);
            domains.push(d);
        }
        // All values distinct: the loader rejects a repeated type and value.
        let mut v4 = Vec::with_capacity(200_000);
        for i in 0..200_000u32 {
            let k = i / 10;
            let (value, a) = match i % 10 {
                0 => {
                    let net = 0x6440_0000 + (k << 8);
                    (
                        format!("{}/24", Ipv4Addr::from(net)),
                        Ipv4Addr::from(net | (i & 0xff)),
                    )
                }
                1 => {
                    let net = (k + 1000) << 16;
                    (
                        format!("{}/16", Ipv4Addr::from(net)),
                        Ipv4Addr::from(net | 0x0102),
                    )
                }
                // An odd multiplier is a bijection of u32: no repeats.
                _ => {
                    let a = Ipv4Addr::from(i.wrapping_mul(2_654_435_761));
                    (a.to_string(), a)
                }
            };
            push(&mut json, "IpAddress", &value, action(&mut rng), "");
            v4.push(a);
        }
        let mut v6 = Vec::with_capacity(100_000);
        for i in 0..100_000u128 {
            let low = u128::from(rng.next());
            let (value, a) = match i % 4 {
                0 => {
                    let net = (0x2002_0000_0000_0000 + i) << 64;
                    (
                        format!("{}/64", Ipv6Addr::from(net)),
                        Ipv6Addr::from(net | low),
                    )
                }
                1 => {
                    let net = (0x2001_0000_0000 + i) << 80;
                    (
                        format!("{}/48", Ipv6Addr::from(net)),
                        Ipv6Addr::from(net | low),
                    )
                }
                _ => {
                    let a = Ipv6Addr::from((0x2003u128 << 112) | (i << 64) | low);
                    (a.to_string(), a)
                }
            };
            push(&mut json, "IpAddress", &value, action(&mut rng), "");
            v6.push(a);
        }
        let mut urls = Vec::with_capacity(100_000);
        for i in 0..100_000u64 {
            let host = format!("site{}.{}", i % 20_000, TLDS[(i % 6) as usize]);
            let path =
                format!("/p{}/{}", i % 97, "seg/".repeat((i % 4) as usize)) + &format!("{i}");
            let scheme = if i % 3 == 0 { "https" } else { "http" };
            push(
                &mut json,
                "Url",
                &format!("{scheme}://{host}{path}"),
                action(&mut rng),
                r#","expiration":"2099-01-01T00:00:00Z""#,
            );
            urls.push((host, path));
        }
        json.push_str("\n]}\n");
        assert_eq!(n, 1_000_000);
        let json_mib = json.len() as f64 / f64::from(1 << 20);

        let t = Instant::now();
        let loaded = load_json(&json).unwrap();
        let load = t.elapsed();
        let warnings = loaded.warnings.len();
        let t = Instant::now();
        let p = Policy::new(loaded.indicators, &[]);
        let build = t.elapsed();
        assert_eq!(p.len(), 1_000_000);

        // Lookups: a quarter each of domain hits (via a subdomain), IP hits, URL requests,
        // and misses.
        let mut subjects: Vec<(String, Option<String>, IpAddr)> = Vec::with_capacity(100_000);
        for i in 0..100_000u64 {
            let miss_ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, (i % 250) as u8));
            match i % 5 {
                0 => {
                    let d = &domains[rng.below(domains.len() as u64) as usize];
                    subjects.push((format!("www.{d}"), None, miss_ip));
                }
                1 => subjects.push((
                    String::new(),
                    None,
                    IpAddr::V4(v4[rng.below(v4.len() as u64) as usize]),
                )),
                2 => subjects.push((
                    String::new(),
                    None,
                    IpAddr::V6(v6[rng.below(v6.len() as u64) as usize]),
                )),
                3 => {
                    let (h, path) = &urls[rng.below(urls.len() as u64) as usize];
                    subjects.push((h.clone(), Some(format!("{path}/more?q=1")), miss_ip));
                }
                _ => subjects.push((format!("a{i}.b.unknown-{i}.com"), None, miss_ip)),
            }
        }
        let now = SystemTime::now();
        let mut hits = 0usize;
        let t = Instant::now();
        for (host, path, addr) in &subjects {
            let s = Subject {
                ip: *addr,
                host: (!host.is_empty()).then_some(host.as_str()),
                http_path: path.as_deref(),
            };
            let d = p.decide(&s, now);
            if d.winner.is_some() || !d.audits.is_empty() {
                hits += 1;
            }
        }
        let decide = t.elapsed();
        assert!(hits > 75_000, "{hits} hits");
        drop(p);
        drop(subjects);

        // Memory of the streaming file load, without the JSON text in memory.
        let path = std::env::temp_dir().join(format!("nprot-scale-{}.json", std::process::id()));
        std::fs::write(&path, &json).unwrap();
        drop(json);
        let base = rss_kib("VmRSS:");
        // Reset the peak so that VmHWM covers only what follows (Linux ≥ 4.0).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let t = Instant::now();
        let loaded = crate::policy::load_file(&path).unwrap();
        let load_file = t.elapsed();
        let p = Policy::new(loaded.indicators, &[]);
        let after = rss_kib("VmRSS:");
        let peak = rss_kib("VmHWM:");
        let _ = std::fs::remove_file(&path);
        let probe = p.decide(
            &Subject {
                ip: IpAddr::V4(v4[0]),
                host: None,
                http_path: None,
            },
            now,
        );
        assert!(probe.winner.is_some() || !probe.audits.is_empty());

        println!("scale: 1,000,000 indicators, {json_mib:.1} MiB of JSON, {warnings} warnings");
        println!("  load_json      {:>7.0} ms", load.as_secs_f64() * 1e3);
        println!("  Policy::new    {:>7.0} ms", build.as_secs_f64() * 1e3);
        println!(
            "  total          {:>7.0} ms",
            (load + build).as_secs_f64() * 1e3
        );
        println!(
            "  decide         {:>7.0} ns/lookup over {} lookups ({hits} matched)",
            decide.as_secs_f64() * 1e9 / 100_000.0,
            100_000
        );
        println!(
            "  load_file      {:>7.0} ms (streamed)",
            load_file.as_secs_f64() * 1e3
        );
        println!(
            "  memory         {} MiB RSS added by load_file + Policy::new, peak {} MiB above the {} MiB before (index ≈ {} MiB)",
            after.saturating_sub(base) / 1024,
            peak.saturating_sub(base) / 1024,
            base / 1024,
            p.index_bytes() >> 20
        );
    }
}
