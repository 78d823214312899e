//! Indicators: what they are, how they are validated, stored and loaded.
//!
//! [`Indicator`] is one indicator as an owned value (for building, listing, exporting).
//! [`Indicators`] is the compact store a policy is built from: 10^6 indicators as
//! owned structs with half a dozen heap strings each would take ~300 MiB, so the store keeps
//! one fixed-size record per indicator and all their text in a single arena, and hands
//! out [`IndicatorRef`] views. The JSON loader streams straight into the store, so the
//! owned form never exists for a large file.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt::{self, Write as _},
    fs::File,
    io::BufReader,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr,
    time::SystemTime,
};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor},
    ser::SerializeStruct,
};

use crate::time::{self, Timestamp};

/// Declares a closed set of names with serde names equal to the variant names.
macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident ($what:literal) { $($(#[$vm:meta])* $v:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The name as written in indicator files and events.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$v => stringify!($v)),+ }
            }

            /// The value with this exact (case-sensitive) name.
            pub fn from_name(name: &str) -> Option<$name> {
                match name { $(stringify!($v) => Some($name::$v),)+ _ => None }
            }

            /// "A, B or C", for error messages.
            fn expected() -> String {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                match names.split_last() {
                    Some((last, [])) => (*last).to_string(),
                    Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                    None => String::new(),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::from_name(s).ok_or_else(|| {
                    format!("unknown {} {s:?} (expected {})", $what, Self::expected())
                })
            }
        }
    };
}

named_enum! {
    /// What an indicator's value is.
    IndicatorType("type") {
        /// An IPv4 or IPv6 address or CIDR block.
        IpAddress,
        /// A DNS name; matches the name and all its subdomains.
        DomainName,
        /// An `http://` or `https://` URL; matches by host and path prefix.
        Url,
    }
}

named_enum! {
    /// What to do with a flow an indicator matches.
    Action("action") {
        /// Let it through, overriding less specific indicators.
        Allowed,
        /// Log it; never changes the outcome.
        Audit,
        /// Block, unless the operator has bypassed the warning.
        Warn,
        /// Block.
        Block,
    }
}

named_enum! {
    /// The severity reported with an indicator's events.
    Severity("severity") {
        /// Informational.
        Informational,
        /// Low.
        Low,
        /// Medium.
        Medium,
        /// High.
        High,
    }
}

impl Action {
    /// Tie-break among equally specific indicators: Allowed > Warn > Block (Audit last:
    /// it never decides).
    pub const fn precedence(self) -> u8 {
        match self {
            Action::Allowed => 3,
            Action::Warn => 2,
            Action::Block => 1,
            Action::Audit => 0,
        }
    }
}

/// An IP network: an address with its host bits cleared and a prefix length.
///
/// A thin wrapper over [`ipnet::IpNet`] that keeps nprot's rules: the host bits are
/// always clear, and IPv4-mapped IPv6 networks (`::ffff:0:0/96` and longer) are held as
/// IPv4 networks, as flows carry plain IPv4 addresses. The only ways to build one are
/// [`IpNet::new`] and [`FromStr`], so every value keeps both rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet(ipnet::IpNet);

impl IpNet {
    /// The network of `addr` with `prefix` bits (host bits cleared); `None` if the prefix
    /// is longer than the address. IPv4-mapped IPv6 networks (`::ffff:0:0/96` and
    /// longer) become IPv4 networks, as flows carry plain IPv4 addresses.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let addr = match addr {
            IpAddr::V6(a) if (96..=128).contains(&prefix) => match a.to_ipv4_mapped() {
                Some(v4) => return IpNet::new(IpAddr::V4(v4), prefix - 96),
                None => addr,
            },
            _ => addr,
        };
        ipnet::IpNet::new(addr, prefix)
            .ok()
            .map(|n| IpNet(n.trunc()))
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }

    /// The prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub fn prefix(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl From<IpNet> for ipnet::IpNet {
    fn from(net: IpNet) -> ipnet::IpNet {
        net.0
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for IpNet {
    type Err = String;

    /// Parses `addr` or `addr/len`; a CIDR block with host bits set is an error (it is
    /// usually a typo, and silently widening it would block more than meant).
    fn from_str(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| "not an IP address or CIDR block".to_string())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // Digits only: `u8::from_str` would also take "+8".
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("bad prefix length {p:?} (0..={max})")),
            },
        };
        // Checked in the original family, before a mapped IPv6 net is re-expressed as IPv4.
        let block =
            ipnet::IpNet::new(ip, prefix).map_err(|_| format!("bad prefix length {prefix}"))?;
        if block.trunc() != block {
            return Err(format!(
                "host bits set in CIDR block {s} (did you mean {}?)",
                block.trunc()
            ));
        }
        IpNet::new(ip, prefix).ok_or_else(|| format!("bad prefix length {prefix}"))
    }
}

/// An indicator's value, parsed and normalised for matching.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An address (as a /32 or /128) or a CIDR block.
    Ip(IpNet),
    /// A lower-case domain name without trailing dot or `*.` prefix.
    Domain(String),
    /// A URL: lower-case host (an IP literal in its canonical text form, IPv6 without
    /// brackets), path with query (at least "/"), and whether it was `https`. The port
    /// and any fragment are dropped: neither takes part in matching.
    Url {
        /// Host name or IP literal.
        host: String,
        /// Path prefix, with query; starts with '/'.
        path: String,
        /// The scheme was `https`.
        https: bool,
    },
}

/// [`Target`] while loading, borrowing from the input where it is already canonical.
#[derive(Debug, Clone)]
pub(crate) enum ParsedTarget<'a> {
    Ip(IpNet),
    Domain(Cow<'a, str>),
    Url {
        host: Cow<'a, str>,
        path: Cow<'a, str>,
        https: bool,
    },
}

/// The note attached to an https URL with a path.
pub const HTTPS_PATH_NOTE: &str = "https URL with a path: only the host can be enforced";

impl Target {
    /// Parses and normalises `value` as an indicator of type `kind`; the error is the
    /// reason, for messages like `not a valid domain name: …`.
    pub fn parse(kind: IndicatorType, value: &str) -> Result<Target, String> {
        Ok(ParsedTarget::parse(kind, value)?.into_owned())
    }

    /// The type of indicator this target belongs to.
    pub fn kind(&self) -> IndicatorType {
        match self {
            Target::Ip(_) => IndicatorType::IpAddress,
            Target::Domain(_) => IndicatorType::DomainName,
            Target::Url { .. } => IndicatorType::Url,
        }
    }

    /// A non-fatal note on how this target can be enforced, if any.
    pub fn note(&self) -> Option<&'static str> {
        match self {
            Target::Url { path, https, .. } if *https && path != "/" => Some(HTTPS_PATH_NOTE),
            _ => None,
        }
    }

    fn as_parsed(&self) -> ParsedTarget<'_> {
        match self {
            Target::Ip(n) => ParsedTarget::Ip(*n),
            Target::Domain(d) => ParsedTarget::Domain(Cow::Borrowed(d)),
            Target::Url { host, path, https } => ParsedTarget::Url {
                host: Cow::Borrowed(host),
                path: Cow::Borrowed(path),
                https: *https,
            },
        }
    }
}

/// The canonical text: `10.0.0.0/8`, `example.com`, `https://example.com/a?b`.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_parsed().fmt(f)
    }
}

impl fmt::Display for ParsedTarget<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParsedTarget::Ip(n) => n.fmt(f),
            ParsedTarget::Domain(d) => f.write_str(d),
            ParsedTarget::Url { host, path, https } => {
                let scheme = if *https { "https" } else { "http" };
                if host.contains(':') {
                    write!(f, "{scheme}://[{host}]{path}")
                } else {
                    write!(f, "{scheme}://{host}{path}")
                }
            }
        }
    }
}

impl<'a> ParsedTarget<'a> {
    pub(crate) fn parse(kind: IndicatorType, value: &'a str) -> Result<Self, String> {
        match kind {
            IndicatorType::IpAddress => value.parse().map(ParsedTarget::Ip),
            IndicatorType::DomainName => parse_domain(value, true)
                .map(ParsedTarget::Domain)
                .map_err(|r| format!("not a valid domain name: {r}")),
            IndicatorType::Url => parse_url(value),
        }
    }

    fn into_owned(self) -> Target {
        match self {
            ParsedTarget::Ip(n) => Target::Ip(n),
            ParsedTarget::Domain(d) => Target::Domain(d.into_owned()),
            ParsedTarget::Url { host, path, https } => Target::Url {
                host: host.into_owned(),
                path: path.into_owned(),
                https,
            },
        }
    }

    pub(crate) fn kind(&self) -> IndicatorType {
        match self {
            ParsedTarget::Ip(_) => IndicatorType::IpAddress,
            ParsedTarget::Domain(_) => IndicatorType::DomainName,
            ParsedTarget::Url { .. } => IndicatorType::Url,
        }
    }

    pub(crate) fn note(&self) -> Option<&'static str> {
        match self {
            ParsedTarget::Url { path, https, .. } if *https && path != "/" => Some(HTTPS_PATH_NOTE),
            _ => None,
        }
    }
}

/// Validates a DNS name and returns it in canonical form (lower case, no trailing dot,
/// no `*.` prefix, which means the same as the bare name since a domain indicator
/// covers all subdomains anyway).
fn parse_domain(value: &str, allow_wildcard: bool) -> Result<Cow<'_, str>, String> {
    let mut s = value;
    if let Some(rest) = s.strip_prefix("*.") {
        if !allow_wildcard {
            return Err("a wildcard is not allowed here".into());
        }
        s = rest;
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err("empty name".into());
    }
    if !s.is_ascii() {
        return Err("not ASCII (write internationalised names in their xn-- form)".into());
    }
    if s.len() > 253 {
        return Err(format!("{} characters long (at most 253)", s.len()));
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if label.contains('*') {
            return Err("a wildcard is only allowed as a leading \"*.\"".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("invalid character {c:?}"));
        }
    }
    if s.parse::<Ipv4Addr>().is_ok() {
        return Err("this is an IP address: use type IpAddress".into());
    }
    Ok(if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    })
}

/// Validates an `http(s)://host[:port][/path][?query][#fragment]` URL.
fn parse_url(value: &str) -> Result<ParsedTarget<'_>, String> {
    let bad = |r: &str| format!("not a valid URL: {r}");
    let (scheme, rest) = value
        .split_once("://")
        .ok_or_else(|| bad("expected http://host/path or https://host/path"))?;
    let https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return Err(bad(&format!("scheme {scheme:?} (expected http or https)")));
    };
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(&format!("contains {c:?}")));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(bad("user information (user@host) is not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inside, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed '[' in the host"))?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| bad(&format!("invalid IPv6 host {inside:?}")))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("unexpected text after ']'"))?,
            ),
        };
        (Cow::Owned(IpAddr::V6(ip).to_canonical().to_string()), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let host = match host.parse::<Ipv4Addr>() {
            Ok(ip) => Cow::Owned(ip.to_string()),
            Err(_) => parse_domain(host, false).map_err(|r| bad(&format!("host: {r}")))?,
        };
        (host, port)
    };
    if let Some(p) = port
        && !(!p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65_535).contains(&n)))
    {
        return Err(bad(&format!("invalid port {p:?}")));
    }
    // The fragment is never sent to the server.
    let tail = tail.split_once('#').map_or(tail, |(t, _)| t);
    Ok(ParsedTarget::Url {
        host,
        path: canonical_path(tail),
        https,
    })
}

/// Whether `b` stays as itself in a canonical path: printable ASCII other than '%'.
fn plain_path_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b'%'
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The form in which URL paths are compared, so that a path indicator cannot be
/// evaded by spelling the same resource differently (as servers such as nginx resolve
/// it): in the path part (before the first '?'), `%XX` escapes of printable ASCII other
/// than '%' are decoded, every other byte outside printable ASCII is escaped as `%XX`
/// (upper-case), `.` and `..` segments are resolved and repeated slashes merged; a path
/// always starts with '/'. The query is kept as it is. Case is kept: paths are
/// case-sensitive. Already canonical paths (the usual case) are borrowed.
pub(crate) fn canonical_path(raw: &str) -> Cow<'_, str> {
    let (path, query) = raw.split_at(raw.find('?').unwrap_or(raw.len()));
    let canonical = path.starts_with('/')
        && path.bytes().all(plain_path_byte)
        && !path.contains("//")
        && !path.contains("/.");
    if canonical {
        return Cow::Borrowed(raw);
    }
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(b.len() + 1);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let v = b
                .get(i + 1..i + 3)
                .and_then(|h| Some(hex_value(h[0])? << 4 | hex_value(h[1])?));
            match v {
                Some(v) if plain_path_byte(v) => decoded.push(char::from(v)),
                Some(v) => push_escaped(&mut decoded, v),
                // A lone '%' means itself.
                None => {
                    push_escaped(&mut decoded, b'%');
                    i += 1;
                    continue;
                }
            }
            i += 3;
        } else {
            if plain_path_byte(c) {
                decoded.push(char::from(c));
            } else {
                push_escaped(&mut decoded, c);
            }
            i += 1;
        }
    }
    // RFC 3986 §5.2.4 dot-segment removal, plus merging of empty segments.
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let mut parts = decoded.split('/').peekable();
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            "" | "." => trailing_slash = last,
            ".." => {
                segments.pop();
                trailing_slash = last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len() + query.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out.push_str(query);
    Cow::Owned(out)
}

/// FNV-1a 64 over everything written to it.
struct Fnv(u64);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl fmt::Write for Fnv {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        Ok(())
    }
}

/// Device groups as they count for an indicator's identity: trimmed, ASCII lower case
/// (groups match case-insensitively), without empty names, sorted, unique.
pub(crate) fn group_key<S: AsRef<str>>(groups: &[S]) -> Vec<String> {
    let mut g: Vec<String> = groups
        .iter()
        .map(|g| g.as_ref().trim().to_ascii_lowercase())
        .filter(|g| !g.is_empty())
        .collect();
    g.sort_unstable();
    g.dedup();
    g
}

/// FNV-1a 64 of everything that makes an indicator's rule distinct, the basis of derived
/// ids: `"<type>:<canonical value> action=<action>"`, then ` group=<bytes>:<name>` for
/// each device group (as [`group_key`] gives them; the length keeps names containing
/// separators apart), then ` process=<process>` for a process-scoped indicator.
/// Title, description, severity, alerting and expiration are left out: they describe
/// the rule rather than make another one, and a renewed expiry keeps the id.
fn derived_hash<S: AsRef<str>>(
    target: &ParsedTarget<'_>,
    action: Action,
    device_groups: &[S],
    process: Option<&str>,
) -> u64 {
    let mut h = Fnv(FNV_OFFSET);
    // Writing into Fnv cannot fail. Canonical values hold no spaces, so the parts
    // cannot run into each other.
    let _ = write!(h, "{}:{} action={action}", target.kind(), target);
    for g in group_key(device_groups) {
        let _ = write!(h, " group={}:{g}", g.len());
    }
    if let Some(p) = process {
        let _ = write!(h, " process={}", p.trim());
    }
    h.0
}

/// The id given to an indicator that has none: `ind-` and 16 hex digits of a hash of
/// its type, canonical value, action, device groups and process scope (see
/// `derived_hash`), so the same indicator keeps its id across reloads, spellings that
/// mean the same (`Example.COM.`, `*.example.com`) share it, and two rows that differ
/// in any of those never do.
pub fn derived_id<S: AsRef<str>>(
    target: &Target,
    action: Action,
    device_groups: &[S],
    process: Option<&str>,
) -> String {
    format!(
        "ind-{:016x}",
        derived_hash(&target.as_parsed(), action, device_groups, process)
    )
}

/// Longest `process` scope accepted (a Linux path).
pub const MAX_PROCESS: usize = 4096;

/// Checks an indicator's `process` scope: an executable's file name, or its absolute
/// path; trimmed.
pub fn check_process(process: &str) -> Result<&str, String> {
    let p = process.trim();
    if p.is_empty() {
        return Err("empty process".into());
    }
    if p.len() > MAX_PROCESS {
        return Err(format!("process is too long (at most {MAX_PROCESS} bytes)"));
    }
    if p.contains('\0') {
        return Err("process contains a NUL byte".into());
    }
    if p.contains('/') && !p.starts_with('/') {
        return Err(format!(
            "process {p:?} must be an executable's file name or its absolute path"
        ));
    }
    if p.ends_with('/') {
        return Err(format!(
            "process {p:?} names a directory, not an executable"
        ));
    }
    Ok(p)
}

/// One indicator, as an owned value.
#[derive(Debug, Clone, PartialEq)]
pub struct Indicator {
    /// Stable id: given in the file, or [`derived_id`].
    pub id: String,
    /// The type of `value`.
    pub kind: IndicatorType,
    /// The value as written (surrounding whitespace removed).
    pub value: String,
    /// `value` parsed and normalised; this is what matching uses.
    pub target: Target,
    /// What a match does.
    pub action: Action,
    /// From this instant on the indicator never matches.
    pub expiration: Option<SystemTime>,
    /// Shown as the event's `DisplayName`.
    pub title: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Reported with events.
    pub severity: Option<Severity>,
    /// Device groups this indicator applies to; empty means every device.
    pub device_groups: Vec<String>,
    /// Whether a match should raise an alert.
    pub generate_alert: bool,
    /// The program the indicator applies to (its executable's file name or absolute
    /// path); `None`: every flow.
    pub process: Option<String>,
}

impl Indicator {
    /// A new indicator with a derived id and no optional fields. Set `id` to "" after
    /// giving it device groups or a process scope, so that [`Indicators::push`] derives
    /// the id from those too.
    pub fn new(
        kind: IndicatorType,
        value: &str,
        action: Action,
    ) -> Result<Indicator, IndicatorError> {
        let value = value.trim();
        let invalid = |reason: String| IndicatorError::Invalid {
            value: clip(value),
            reason,
        };
        if value.is_empty() {
            return Err(invalid("empty value".into()));
        }
        let target = Target::parse(kind, value).map_err(invalid)?;
        Ok(Indicator {
            id: derived_id::<&str>(&target, action, &[], None),
            kind,
            value: value.to_string(),
            target,
            action,
            expiration: None,
            title: None,
            description: None,
            severity: None,
            device_groups: Vec::new(),
            generate_alert: false,
            process: None,
        })
    }

    /// Whether the indicator has expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expiration.is_some_and(|e| e <= now)
    }
}

/// Why indicators could not be loaded. Entry errors name the entry by its 1-based
/// position in the file (`#1` is the first), and its id and value when known.
#[derive(Debug, thiserror::Error)]
pub enum IndicatorError {
    /// The file could not be opened.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// Reading the file failed part-way.
    #[error("read error: {0}")]
    Read(String),
    /// Any error while loading a file, with the file's path.
    #[error("{}: {error}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        error: Box<IndicatorError>,
    },
    /// Not JSON, or not shaped like an indicator file.
    #[error("not a valid indicator file: {0}")]
    Json(String),
    /// One entry is invalid.
    #[error("indicator #{index}{}: {reason}", who(.id.as_deref(), .value.as_deref()))]
    Entry {
        /// 1-based position in the file.
        index: usize,
        /// The entry's id, if known.
        id: Option<String>,
        /// The entry's value, if known.
        value: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// An indicator built in code is invalid.
    #[error("invalid indicator (value {value:?}): {reason}")]
    Invalid {
        /// The value.
        value: String,
        /// What is wrong.
        reason: String,
    },
}

/// ` (id "…", value "…")`, whichever are known.
fn who(id: Option<&str>, value: Option<&str>) -> String {
    match (id, value) {
        (Some(i), Some(v)) => format!(" (id {:?}, value {:?})", clip(i), clip(v)),
        (Some(i), None) => format!(" (id {:?})", clip(i)),
        (None, Some(v)) => format!(" (value {:?})", clip(v)),
        (None, None) => String::new(),
    }
}

/// `s`, shortened for messages.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 100;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Limit on every text field of an indicator (ids, values, titles, descriptions).
pub const MAX_TEXT: usize = u16::MAX as usize;
/// Limit on the number of indicators in one set (indexes are `u32` with a tag bit).
pub const MAX_INDICATORS: usize = 1 << 30;
/// Warnings kept by one load; the rest are counted in a final line.
const MAX_WARNINGS: usize = 100;

const NO_EXPIRY: u32 = u32::MAX;

const F_ALERT: u8 = 1;
const F_HTTPS: u8 = 2;
const F_TITLE: u8 = 4;
const F_DESC: u8 = 8;
const F_CANON_APPENDED: u8 = 16;
const F_DERIVED_ID: u8 = 32;

/// One indicator in an [`Indicators`] store: 48 bytes, its text in the shared arena laid
/// out as `id | value | [canonical, if not found inside value] | [title] | [description]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    off: usize,
    exp_secs: i64,
    /// Nanoseconds of the expiration; `NO_EXPIRY` if none.
    exp_nanos: u32,
    /// Ip: index into `nets`; Url: host length within the canonical text.
    aux: u32,
    /// Index into `group_sets` (0 = every device).
    groups: u32,
    /// Index into `processes` (0 = every process).
    process: u32,
    id_len: u16,
    value_len: u16,
    /// Start of the canonical text relative to the value (if not appended).
    canon_rel: u16,
    canon_len: u16,
    title_len: u16,
    desc_len: u16,
    kind: IndicatorType,
    action: Action,
    severity: Option<Severity>,
    flags: u8,
}

impl Record {
    pub(crate) fn kind(&self) -> IndicatorType {
        self.kind
    }

    pub(crate) fn action(&self) -> Action {
        self.action
    }

    /// Whether the record is expired at `now` (expiration ≤ now).
    pub(crate) fn expired(&self, now: Timestamp) -> bool {
        self.exp_nanos != NO_EXPIRY && (self.exp_secs, self.exp_nanos) <= (now.secs, now.nanos)
    }

    pub(crate) fn https(&self) -> bool {
        self.flags & F_HTTPS != 0
    }

    /// Index of the process scope, 0 for none.
    pub(crate) fn process(&self) -> u32 {
        self.process
    }
}

/// A compact, append-only set of validated indicators.
#[derive(Clone)]
pub struct Indicators {
    records: Vec<Record>,
    text: String,
    nets: Vec<IpNet>,
    /// Interned device-group lists; `[0]` is the empty list.
    group_sets: Vec<Box<[String]>>,
    group_index: HashMap<Box<[String]>, u32>,
    /// Interned process scopes; `[0]` is the empty one (every process).
    processes: Vec<Box<str>>,
    process_index: HashMap<Box<str>, u32>,
}

/// A summary: a set can hold millions of indicators.
impl fmt::Debug for Indicators {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Indicators")
            .field("len", &self.records.len())
            .field("text_bytes", &self.text.len())
            .finish_non_exhaustive()
    }
}

impl Default for Indicators {
    fn default() -> Self {
        Indicators {
            records: Vec::new(),
            text: String::new(),
            nets: Vec::new(),
            group_sets: vec![Box::default()],
            group_index: HashMap::new(),
            processes: vec![Box::default()],
            process_index: HashMap::new(),
        }
    }
}

/// The parts of an indicator being added to a store.
struct Parts<'a> {
    id: Option<&'a str>,
    value: &'a str,
    target: &'a ParsedTarget<'a>,
    action: Action,
    expiration: Option<Timestamp>,
    title: Option<&'a str>,
    description: Option<&'a str>,
    severity: Option<Severity>,
    device_groups: &'a [&'a str],
    generate_alert: bool,
    process: Option<&'a str>,
}

fn text_len(what: &str, s: &str) -> Result<u16, String> {
    u16::try_from(s.len())
        .map_err(|_| format!("{what} is too long ({} bytes, at most {MAX_TEXT})", s.len()))
}

impl Indicators {
    /// An empty set.
    pub fn new() -> Indicators {
        Indicators::default()
    }

    /// How many indicators the set holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The indicator at `index`.
    pub fn get(&self, index: usize) -> Option<IndicatorRef<'_>> {
        (index < self.records.len()).then_some(IndicatorRef {
            set: self,
            index: index as u32,
        })
    }

    /// All indicators, in file order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = IndicatorRef<'_>> + '_ {
        (0..self.records.len() as u32).map(move |index| IndicatorRef { set: self, index })
    }

    /// Adds an indicator built in code. Its `target` is what matching uses; an empty
    /// `id` gets a derived one. Ids are not checked for uniqueness here (the loaders do).
    pub fn push(&mut self, indicator: &Indicator) -> Result<(), IndicatorError> {
        let groups: Vec<&str> = indicator.device_groups.iter().map(String::as_str).collect();
        let target = indicator.target.as_parsed();
        // Keep the store's invariants even for hand-made targets (an `IpNet` keeps its
        // own: it cannot be built with host bits set or as IPv4-mapped IPv6).
        let target = match target {
            ParsedTarget::Url { host, path, https } => ParsedTarget::Url {
                host,
                path: match path {
                    Cow::Borrowed(p) => canonical_path(p),
                    Cow::Owned(p) => Cow::Owned(canonical_path(&p).into_owned()),
                },
                https,
            },
            t => t,
        };
        let expiration = indicator.expiration.map(Timestamp::from_system_time);
        self.push_parts(&Parts {
            id: (!indicator.id.is_empty()).then_some(indicator.id.as_str()),
            value: &indicator.value,
            target: &target,
            action: indicator.action,
            expiration,
            title: indicator.title.as_deref(),
            description: indicator.description.as_deref(),
            severity: indicator.severity,
            device_groups: &groups,
            generate_alert: indicator.generate_alert,
            process: indicator.process.as_deref(),
        })
        .map_err(|reason| IndicatorError::Invalid {
            value: clip(&indicator.value),
            reason,
        })
    }

    fn push_parts(&mut self, p: &Parts<'_>) -> Result<(), String> {
        if self.records.len() >= MAX_INDICATORS {
            return Err(format!("too many indicators (at most {MAX_INDICATORS})"));
        }
        let value_len = text_len("value", p.value)?;
        let title_len = p
            .title
            .map(|t| text_len("title", t))
            .transpose()?
            .unwrap_or(0);
        let desc_len = p
            .description
            .map(|t| text_len("description", t))
            .transpose()?
            .unwrap_or(0);
        let groups = self.intern_groups(p.device_groups)?;
        let process = self.intern_process(p.process)?;

        let off = self.text.len();
        let id_len = match p.id {
            Some(id) => {
                let len = text_len("id", id)?;
                self.text.push_str(id);
                len
            }
            None => {
                // Writing into a String cannot fail.
                let _ = write!(
                    self.text,
                    "ind-{:016x}",
                    derived_hash(p.target, p.action, p.device_groups, p.process)
                );
                20
            }
        };
        self.text.push_str(p.value);

        let mut flags = 0;
        let mut aux = 0;
        let (host, path): (&str, &str) = match p.target {
            ParsedTarget::Ip(net) => {
                aux = self.nets.len() as u32;
                self.nets.push(*net);
                ("", "")
            }
            ParsedTarget::Domain(d) => (d, ""),
            ParsedTarget::Url { host, path, https } => {
                aux = u32::from(text_len("host", host)?);
                if *https {
                    flags |= F_HTTPS;
                }
                (host, path)
            }
        };
        let canon_len = text_len("value", host)?
            .checked_add(text_len("value", path)?)
            .ok_or_else(|| "value is too long".to_string())?;
        // Most values are already canonical: point into them instead of a second copy.
        let found = if path.is_empty() {
            p.value.find(host)
        } else {
            p.value
                .match_indices(host)
                .map(|(i, _)| i)
                .find(|&i| p.value[i + host.len()..].starts_with(path))
        };
        let canon_rel = match found.and_then(|i| u16::try_from(i).ok()) {
            Some(i) => i,
            None => {
                flags |= F_CANON_APPENDED;
                self.text.push_str(host);
                self.text.push_str(path);
                value_len
            }
        };
        if let Some(t) = p.title {
            flags |= F_TITLE;
            self.text.push_str(t);
        }
        if let Some(d) = p.description {
            flags |= F_DESC;
            self.text.push_str(d);
        }
        if p.generate_alert {
            flags |= F_ALERT;
        }
        if p.id.is_none() {
            flags |= F_DERIVED_ID;
        }
        let (exp_secs, exp_nanos) = p.expiration.map_or((0, NO_EXPIRY), |t| (t.secs, t.nanos));
        self.records.push(Record {
            off,
            exp_secs,
            exp_nanos,
            aux,
            groups,
            process,
            id_len,
            value_len,
            canon_rel,
            canon_len,
            title_len,
            desc_len,
            kind: p.target.kind(),
            action: p.action,
            severity: p.severity,
            flags,
        });
        Ok(())
    }

    fn intern_groups(&mut self, groups: &[&str]) -> Result<u32, String> {
        if groups.is_empty() {
            return Ok(0);
        }
        let mut list: Vec<String> = Vec::with_capacity(groups.len());
        for g in groups {
            let g = g.trim();
            if g.is_empty() {
                return Err("empty device group name".into());
            }
            text_len("device group", g)?;
            if !list.iter().any(|x| x == g) {
                list.push(g.to_string());
            }
        }
        let list = list.into_boxed_slice();
        if let Some(&i) = self.group_index.get(&list) {
            return Ok(i);
        }
        let i = self.group_sets.len() as u32;
        self.group_sets.push(list.clone());
        self.group_index.insert(list, i);
        Ok(i)
    }

    fn intern_process(&mut self, process: Option<&str>) -> Result<u32, String> {
        let Some(p) = process else {
            return Ok(0);
        };
        let p = check_process(p)?;
        if let Some(&i) = self.process_index.get(p) {
            return Ok(i);
        }
        let i = self.processes.len() as u32;
        self.processes.push(p.into());
        self.process_index.insert(p.into(), i);
        Ok(i)
    }

    /// The process scope with index `i` (from [`Record::process`]); "" for 0.
    pub(crate) fn process_scope(&self, i: u32) -> &str {
        self.processes.get(i as usize).map_or("", |p| p)
    }

    /// Whether any indicator is scoped to a process.
    pub fn has_process_scopes(&self) -> bool {
        self.processes.len() > 1
    }

    pub(crate) fn record(&self, index: u32) -> &Record {
        &self.records[index as usize]
    }

    pub(crate) fn records(&self) -> &[Record] {
        &self.records
    }

    pub(crate) fn net(&self, r: &Record) -> IpNet {
        self.nets[r.aux as usize]
    }

    fn slice(&self, start: usize, len: u16) -> &str {
        self.text.get(start..start + usize::from(len)).unwrap_or("")
    }

    fn value_start(r: &Record) -> usize {
        r.off + usize::from(r.id_len)
    }

    fn canon_start(r: &Record) -> usize {
        Self::value_start(r) + usize::from(r.canon_rel)
    }

    fn title_start(r: &Record) -> usize {
        let appended = if r.flags & F_CANON_APPENDED != 0 {
            r.canon_len
        } else {
            0
        };
        Self::value_start(r) + usize::from(r.value_len) + usize::from(appended)
    }

    /// The canonical domain (Domain) or host + path (Url) of a record.
    pub(crate) fn canon(&self, r: &Record) -> &str {
        self.slice(Self::canon_start(r), r.canon_len)
    }

    /// Host and path of a Url record.
    pub(crate) fn url_parts(&self, r: &Record) -> (&str, &str) {
        let c = self.canon(r);
        c.split_at_checked(r.aux as usize).unwrap_or((c, ""))
    }

    /// Keeps only the first `len` indicators, releasing their text and networks: the
    /// set as it was after its `len`-th push (interned groups and processes stay).
    pub fn truncate(&mut self, len: usize) {
        let Some(first_gone) = self.records.get(len) else {
            return;
        };
        self.text.truncate(first_gone.off);
        // Networks are appended in push order: the first dropped IP indicator's is
        // where the dropped ones start.
        if let Some(ip) = self.records[len..]
            .iter()
            .find(|r| r.kind == IndicatorType::IpAddress)
        {
            self.nets.truncate(ip.aux as usize);
        }
        self.records.truncate(len);
    }

    /// Drops the indicators scoped to device groups of which `device_groups` (the
    /// sensor's) names none. Group names compare ASCII case-insensitively.
    pub fn retain_device_groups(&mut self, device_groups: &[String]) {
        let keep: Vec<bool> = self
            .group_sets
            .iter()
            .map(|set| {
                set.is_empty()
                    || set.iter().any(|g| {
                        device_groups
                            .iter()
                            .any(|d| d.trim().eq_ignore_ascii_case(g))
                    })
            })
            .collect();
        self.records
            .retain(|r| keep.get(r.groups as usize).copied().unwrap_or(false));
    }
}

impl TryFrom<Vec<Indicator>> for Indicators {
    type Error = IndicatorError;

    fn try_from(list: Vec<Indicator>) -> Result<Self, IndicatorError> {
        let mut set = Indicators::new();
        for ind in &list {
            set.push(ind)?;
        }
        Ok(set)
    }
}

/// A view of one indicator in an [`Indicators`] store.
#[derive(Clone, Copy)]
pub struct IndicatorRef<'a> {
    set: &'a Indicators,
    index: u32,
}

impl PartialEq for IndicatorRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.set, other.set) && self.index == other.index
    }
}

impl Eq for IndicatorRef<'_> {}

impl fmt::Debug for IndicatorRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndicatorRef")
            .field("index", &self.index)
            .field("id", &self.id())
            .field("kind", &self.kind())
            .field("value", &self.value())
            .field("action", &self.action())
            .finish()
    }
}

impl<'a> IndicatorRef<'a> {
    pub(crate) fn new(set: &'a Indicators, index: u32) -> Self {
        IndicatorRef { set, index }
    }

    fn rec(&self) -> &'a Record {
        self.set.record(self.index)
    }

    /// Position in its set.
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// Stable id.
    pub fn id(&self) -> &'a str {
        let r = self.rec();
        self.set.slice(r.off, r.id_len)
    }

    /// Whether the id was derived (not given in the file).
    pub fn id_is_derived(&self) -> bool {
        self.rec().flags & F_DERIVED_ID != 0
    }

    /// The type of the value.
    pub fn kind(&self) -> IndicatorType {
        self.rec().kind
    }

    /// The value as written.
    pub fn value(&self) -> &'a str {
        let r = self.rec();
        self.set.slice(Indicators::value_start(r), r.value_len)
    }

    /// The parsed, normalised value.
    pub fn target(&self) -> Target {
        let r = self.rec();
        match r.kind {
            IndicatorType::IpAddress => Target::Ip(self.set.net(r)),
            IndicatorType::DomainName => Target::Domain(self.set.canon(r).to_string()),
            IndicatorType::Url => {
                let (host, path) = self.set.url_parts(r);
                Target::Url {
                    host: host.to_string(),
                    path: path.to_string(),
                    https: r.https(),
                }
            }
        }
    }

    /// What a match does.
    pub fn action(&self) -> Action {
        self.rec().action
    }

    /// When the indicator stops matching, if ever.
    pub fn expiration(&self) -> Option<SystemTime> {
        let r = self.rec();
        (r.exp_nanos != NO_EXPIRY)
            .then(|| {
                Timestamp {
                    secs: r.exp_secs,
                    nanos: r.exp_nanos,
                }
                .to_system_time()
            })
            .flatten()
    }

    /// Whether the indicator has expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.rec().expired(Timestamp::from_system_time(now))
    }

    /// Title (the event's `DisplayName`).
    pub fn title(&self) -> Option<&'a str> {
        let r = self.rec();
        (r.flags & F_TITLE != 0).then(|| self.set.slice(Indicators::title_start(r), r.title_len))
    }

    /// Description.
    pub fn description(&self) -> Option<&'a str> {
        let r = self.rec();
        (r.flags & F_DESC != 0).then(|| {
            self.set.slice(
                Indicators::title_start(r) + usize::from(r.title_len),
                r.desc_len,
            )
        })
    }

    /// Severity.
    pub fn severity(&self) -> Option<Severity> {
        self.rec().severity
    }

    /// Device groups the indicator is scoped to (empty: every device).
    pub fn device_groups(&self) -> &'a [String] {
        self.set
            .group_sets
            .get(self.rec().groups as usize)
            .map_or(&[], |g| &g[..])
    }

    /// Whether a match should raise an alert.
    pub fn generate_alert(&self) -> bool {
        self.rec().flags & F_ALERT != 0
    }

    /// The program the indicator is scoped to, if any.
    pub fn process(&self) -> Option<&'a str> {
        let i = self.rec().process;
        (i != 0).then(|| self.set.process_scope(i))
    }

    /// An owned copy.
    pub fn to_indicator(&self) -> Indicator {
        Indicator {
            id: self.id().to_string(),
            kind: self.kind(),
            value: self.value().to_string(),
            target: self.target(),
            action: self.action(),
            expiration: self.expiration(),
            title: self.title().map(str::to_string),
            description: self.description().map(str::to_string),
            severity: self.severity(),
            device_groups: self.device_groups().to_vec(),
            generate_alert: self.generate_alert(),
            process: self.process().map(str::to_string),
        }
    }
}

/// An indicator as written in the JSON file format.
#[derive(Serialize)]
struct WireOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: IndicatorType,
    value: &'a str,
    action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    severity: Option<Severity>,
    #[serde(skip_serializing_if = "is_empty_list")]
    device_groups: &'a [String],
    #[serde(skip_serializing_if = "is_false")]
    generate_alert: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<&'a str>,
}

fn is_empty_list(v: &&[String]) -> bool {
    v.is_empty()
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Serialises as one entry of the indicator file format.
impl Serialize for Indicator {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireOut {
            id: &self.id,
            kind: self.kind,
            value: &self.value,
            action: self.action,
            expiration: self.expiration.map(time::format),
            title: self.title.as_deref(),
            description: self.description.as_deref(),
            severity: self.severity,
            device_groups: &self.device_groups,
            generate_alert: self.generate_alert,
            process: self.process.as_deref(),
        }
        .serialize(s)
    }
}

/// Serialises as one entry of the indicator file format.
impl Serialize for IndicatorRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireOut {
            id: self.id(),
            kind: self.kind(),
            value: self.value(),
            action: self.action(),
            expiration: self.expiration().map(time::format),
            title: self.title(),
            description: self.description(),
            severity: self.severity(),
            device_groups: self.device_groups(),
            generate_alert: self.generate_alert(),
            process: self.process(),
        }
        .serialize(s)
    }
}

/// Serialises as a whole indicator file, `{"indicators": […]}`, which [`load_json`]
/// reads back.
impl Serialize for Indicators {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct List<'a>(&'a Indicators);
        impl Serialize for List<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter())
            }
        }
        let mut st = s.serialize_struct("IndicatorFile", 1)?;
        st.serialize_field("indicators", &List(self))?;
        st.end()
    }
}

/// The result of loading an indicator file.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The indicators, in file order.
    pub indicators: Indicators,
    /// The non-fatal notes produced while loading (e.g. "https URL with a path: only the
    /// host can be enforced"), at most about a hundred, the rest counted.
    pub warnings: Vec<String>,
}

/// A JSON string, borrowed from the input when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V).map(Str)
    }
}

/// One entry of the file, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "indicator")]
struct RawEntry<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(borrow)]
    value: Str<'a>,
    #[serde(borrow)]
    action: Str<'a>,
    #[serde(borrow, default)]
    expiration: Option<Str<'a>>,
    #[serde(borrow, default)]
    title: Option<Str<'a>>,
    #[serde(borrow, default)]
    description: Option<Str<'a>>,
    #[serde(borrow, default)]
    severity: Option<Str<'a>>,
    #[serde(borrow, default)]
    device_groups: Option<Vec<Str<'a>>>,
    #[serde(default)]
    generate_alert: Option<bool>,
    #[serde(borrow, default)]
    process: Option<Str<'a>>,
}

/// Accumulates a load; errors found inside serde callbacks are parked here, since a
/// serde error cannot carry them.
struct Builder {
    set: Indicators,
    warnings: Vec<String>,
    suppressed: usize,
    /// The 1-based entry being deserialised, for serde's own errors.
    current: Option<usize>,
    failure: Option<IndicatorError>,
    now: Timestamp,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            set: Indicators::new(),
            warnings: Vec::new(),
            suppressed: 0,
            current: None,
            failure: None,
            now: Timestamp::from_system_time(SystemTime::now()),
        }
    }

    fn warn(&mut self, msg: impl FnOnce() -> String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(msg());
        } else {
            self.suppressed += 1;
        }
    }

    fn add(&mut self, index: usize, raw: &RawEntry<'_>) -> Result<(), IndicatorError> {
        let value = raw.value.0.trim();
        let id = raw.id.as_ref().map(|s| &*s.0);
        let fail = |reason: String| IndicatorError::Entry {
            index,
            id: id.map(str::to_string),
            value: Some(value.to_string()),
            reason,
        };
        if id.is_some_and(|i| i.trim().is_empty()) {
            return Err(fail("empty id".into()));
        }
        let kind = IndicatorType::from_str(&raw.kind.0).map_err(&fail)?;
        let action = Action::from_str(&raw.action.0).map_err(&fail)?;
        let severity = raw
            .severity
            .as_ref()
            .map(|s| Severity::from_str(&s.0))
            .transpose()
            .map_err(&fail)?;
        if value.is_empty() {
            return Err(fail("empty value".into()));
        }
        let target = ParsedTarget::parse(kind, value).map_err(&fail)?;
        let expiration = match &raw.expiration {
            None => None,
            Some(s) => {
                let t = time::parse(&s.0)
                    .map_err(|e| fail(format!("bad expiration {:?}: {e}", s.0)))?;
                if t.to_system_time().is_none() {
                    return Err(fail(format!("bad expiration {:?}: out of range", s.0)));
                }
                Some(t)
            }
        };
        let groups: Vec<&str> = raw.device_groups.iter().flatten().map(|g| &*g.0).collect();
        self.set
            .push_parts(&Parts {
                id,
                value,
                target: &target,
                action,
                expiration,
                title: raw.title.as_ref().map(|s| &*s.0),
                description: raw.description.as_ref().map(|s| &*s.0),
                severity,
                device_groups: &groups,
                generate_alert: raw.generate_alert.unwrap_or(false),
                process: raw.process.as_ref().map(|s| &*s.0),
            })
            .map_err(&fail)?;

        let name = || who(id, Some(value));
        if let Some(note) = target.note() {
            self.warn(|| format!("indicator #{index}{}: {note}", name()));
        }
        if let Some(t) = expiration.filter(|t| *t <= self.now) {
            self.warn(|| {
                format!(
                    "indicator #{index}{}: already expired ({}); it will never match",
                    name(),
                    time::format_timestamp(t)
                )
            });
        }
        Ok(())
    }

    /// Turns a serde error into ours, blaming the entry being read if it is about data.
    fn json_error(&self, e: serde_json::Error) -> IndicatorError {
        use serde_json::error::Category;
        match (e.classify(), self.current) {
            (Category::Io, _) => IndicatorError::Read(e.to_string()),
            (Category::Data, Some(index)) => IndicatorError::Entry {
                index,
                id: None,
                value: None,
                reason: e.to_string(),
            },
            _ => IndicatorError::Json(e.to_string()),
        }
    }

    /// Checks ids for uniqueness and closes the warning list.
    fn finish(mut self) -> Result<Loaded, IndicatorError> {
        // Sort (hash, index) pairs instead of a map of strings: 16 bytes per indicator.
        let mut keys: Vec<(u64, u32)> = self
            .set
            .iter()
            .map(|r| {
                let mut h = Fnv(FNV_OFFSET);
                let _ = h.write_str(r.id());
                (h.0, r.index)
            })
            .collect();
        keys.sort_unstable();
        // (later, first) of the duplicate whose later occurrence comes first in the file.
        let mut dup: Option<(u32, u32)> = None;
        for run in keys.chunk_by(|a, b| a.0 == b.0).filter(|r| r.len() > 1) {
            for (n, &(_, later)) in run.iter().enumerate().skip(1) {
                let id = self.set.get(later as usize).map(|r| r.id());
                let first = run[..n]
                    .iter()
                    .find(|&&(_, i)| self.set.get(i as usize).map(|r| r.id()) == id);
                if let Some(&(_, first)) = first
                    && dup.is_none_or(|(l, _)| later < l)
                {
                    dup = Some((later, first));
                }
            }
        }
        if let Some((later, first)) = dup
            && let Some(r) = self.set.get(later as usize)
        {
            let mut reason = format!("duplicate id: also the id of indicator #{}", first + 1);
            if r.id_is_derived() {
                reason.push_str(
                    " (same type, value, action, device groups and process: the same \
                     indicator twice; give each an explicit id if both are meant)",
                );
            }
            return Err(IndicatorError::Entry {
                index: later as usize + 1,
                id: Some(r.id().to_string()),
                value: Some(r.value().to_string()),
                reason,
            });
        }
        if self.suppressed > 0 {
            self.warnings.push(format!(
                "… and {} more warnings like these",
                self.suppressed
            ));
        }
        Ok(Loaded {
            indicators: self.set,
            warnings: self.warnings,
        })
    }
}

/// The top-level object: `{"indicators": [...]}`.
struct FileSeed<'b>(&'b mut Builder);

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with an \"indicators\" array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            if key.0 != "indicators" {
                return Err(de::Error::unknown_field(&key.0, &["indicators"]));
            }
            if seen {
                return Err(de::Error::duplicate_field("indicators"));
            }
            seen = true;
            map.next_value_seed(ListSeed(&mut *self.0))?;
        }
        if !seen {
            return Err(de::Error::missing_field("indicators"));
        }
        Ok(())
    }
}

/// The `indicators` array, validated and stored entry by entry.
struct ListSeed<'b>(&'b mut Builder);

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of indicators")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let b = self.0;
        let mut index = 0;
        loop {
            index += 1;
            b.current = Some(index);
            let Some(raw) = seq.next_element::<RawEntry<'de>>()? else {
                break;
            };
            if let Err(e) = b.add(index, &raw) {
                b.failure = Some(e);
                // The message is discarded: `failure` is reported instead.
                return Err(de::Error::custom("invalid indicator"));
            }
        }
        b.current = None;
        Ok(())
    }
}

fn load_from<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
) -> Result<Loaded, IndicatorError> {
    let mut b = Builder::new();
    let res = FileSeed(&mut b).deserialize(&mut *de).and_then(|()| {
        b.current = None;
        de.end()
    });
    if let Some(e) = b.failure.take() {
        return Err(e);
    }
    if let Err(e) = res {
        return Err(b.json_error(e));
    }
    b.finish()
}

/// Loads indicators from the JSON file format, all or nothing.
pub fn load_json(text: &str) -> Result<Loaded, IndicatorError> {
    load_from(&mut serde_json::Deserializer::from_str(text))
}

/// Loads indicators from a JSON file, all or nothing. The file is streamed, not read
/// whole, so that a large file does not sit in memory next to the indicators.
pub fn load_file(path: &Path) -> Result<Loaded, IndicatorError> {
    let file = File::open(path).map_err(|error| IndicatorError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let reader = BufReader::with_capacity(1 << 16, file);
    load_from(&mut serde_json::Deserializer::from_reader(reader)).map_err(|e| {
        IndicatorError::File {
            path: path.to_path_buf(),
            error: Box::new(e),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[&str]) -> String {
        format!("{{\"indicators\":[{}]}}", entries.join(","))
    }

    fn load(entries: &[&str]) -> Result<Loaded, IndicatorError> {
        load_json(&file(entries))
    }

    fn load_err(entries: &[&str]) -> String {
        match load(entries) {
            Ok(_) => panic!("loaded {entries:?}"),
            Err(e) => e.to_string(),
        }
    }

    const OK: &str = r#"{"type":"DomainName","value":"ok.example","action":"Block"}"#;

    #[test]
    fn loads_all_fields() {
        let l = load(&[
            r#"{"id":"42","type":"DomainName","value":"Example.COM.","action":"Block",
            "title":"Bad site","description":"from feed","expiration":"2099-01-01T00:00:00Z",
            "severity":"High","device_groups":["g1","g1","g2"],"generate_alert":true}"#,
        ])
        .unwrap();
        assert!(l.warnings.is_empty());
        let i = l.indicators.get(0).unwrap().to_indicator();
        assert_eq!(i.id, "42");
        assert_eq!(i.kind, IndicatorType::DomainName);
        assert_eq!(i.value, "Example.COM.");
        assert_eq!(i.target, Target::Domain("example.com".into()));
        assert_eq!(i.action, Action::Block);
        assert_eq!(i.title.as_deref(), Some("Bad site"));
        assert_eq!(i.description.as_deref(), Some("from feed"));
        assert_eq!(i.severity, Some(Severity::High));
        assert_eq!(i.device_groups, ["g1", "g2"]);
        assert!(i.generate_alert);
        assert_eq!(
            i.expiration,
            Some(time::parse_system_time("2099-01-01T00:00:00Z").unwrap())
        );
    }

    #[test]
    fn truncate_returns_to_an_earlier_set() {
        let entry = |i: usize, kind: &str, value: &str| {
            format!(
                r#"{{"id":"{i}","type":"{kind}","value":"{value}","action":"Block","title":"t{i}"}}"#
            )
        };
        let all = [
            entry(1, "DomainName", "a.example"),
            entry(2, "IpAddress", "198.18.0.0/15"),
            entry(3, "Url", "http://u.example/p"),
            entry(4, "IpAddress", "2001:db8::/32"),
        ];
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut set = load(&refs).unwrap().indicators;
        let prefix = load(&refs[..2]).unwrap().indicators;
        set.truncate(2);
        let owned = |s: &Indicators| s.iter().map(|r| r.to_indicator()).collect::<Vec<_>>();
        assert_eq!(owned(&set), owned(&prefix));
        assert_eq!(
            (set.text.len(), set.nets.len()),
            (prefix.text.len(), prefix.nets.len())
        );
        // Pushing after a truncation gives what pushing onto the prefix gives.
        let extra = load(&refs[3..])
            .unwrap()
            .indicators
            .get(0)
            .unwrap()
            .to_indicator();
        let mut expected = prefix.clone();
        expected.push(&extra).unwrap();
        set.push(&extra).unwrap();
        assert_eq!(owned(&set), owned(&expected));
        set.truncate(10);
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn minimal_entry_and_null_optionals() {
        let l =
            load(&[r#"{"type":"IpAddress","value":" 198.18.0.1 ","action":"Audit","title":null}"#])
                .unwrap();
        let r = l.indicators.get(0).unwrap();
        assert_eq!(r.value(), "198.18.0.1");
        assert_eq!(r.target(), Target::Ip("198.18.0.1/32".parse().unwrap()));
        assert_eq!(r.title(), None);
        assert_eq!(r.expiration(), None);
        assert!(!r.generate_alert());
        assert!(r.id_is_derived());
        assert!(r.id().starts_with("ind-") && r.id().len() == 20);
    }

    #[test]
    fn derived_ids_are_stable_and_spelling_independent() {
        let id = |entry: &str| {
            load(&[entry])
                .unwrap()
                .indicators
                .get(0)
                .unwrap()
                .id()
                .to_owned()
        };
        let ida = id(r#"{"type":"DomainName","value":"*.Example.com.","action":"Block"}"#);
        assert_eq!(
            ida,
            id(r#"{"type":"DomainName","value":"example.com","action":"Block","title":"t"}"#)
        );
        assert_eq!(
            ida,
            derived_id::<&str>(
                &Target::Domain("example.com".into()),
                Action::Block,
                &[],
                None
            )
        );
        // FNV-1a 64 of "DomainName:example.com action=Block".
        let mut h = Fnv(FNV_OFFSET);
        h.write_str("DomainName:example.com action=Block").unwrap();
        assert_eq!(ida, format!("ind-{:016x}", h.0));
        // Groups count as a set, case-insensitively; renewing an expiry keeps the id.
        let grouped = id(
            r#"{"type":"DomainName","value":"example.com","action":"Block","device_groups":["B"," a","b"]}"#,
        );
        let mut h = Fnv(FNV_OFFSET);
        h.write_str("DomainName:example.com action=Block group=1:a group=1:b")
            .unwrap();
        assert_eq!(grouped, format!("ind-{:016x}", h.0));
        assert_eq!(
            ida,
            id(
                r#"{"type":"DomainName","value":"example.com","action":"Block","expiration":"2099-01-01T00:00:00Z"}"#
            )
        );
        // Whatever makes another rule makes another id.
        let others = [
            r#"{"type":"DomainName","value":"example.com","action":"Allowed"}"#,
            r#"{"type":"DomainName","value":"example.org","action":"Block"}"#,
            r#"{"type":"Url","value":"http://example.com/","action":"Block"}"#,
            r#"{"type":"DomainName","value":"example.com","action":"Block","device_groups":["a"]}"#,
            r#"{"type":"DomainName","value":"example.com","action":"Block","device_groups":["a,b"]}"#,
            r#"{"type":"DomainName","value":"example.com","action":"Block","process":"curl"}"#,
        ];
        let mut ids: Vec<String> = others.iter().map(|e| id(e)).collect();
        ids.extend([ida, grouped]);
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "{ids:?}");
    }

    #[test]
    fn error_bad_type() {
        let e = load_err(&[
            OK,
            r#"{"type":"Domain","value":"example.com","action":"Block"}"#,
        ]);
        assert_eq!(
            e,
            "indicator #2 (value \"example.com\"): unknown type \"Domain\" (expected IpAddress, DomainName or Url)"
        );
    }

    #[test]
    fn error_bad_action() {
        let e = load_err(&[
            r#"{"id":"x1","type":"DomainName","value":"example.com","action":"block"}"#,
        ]);
        assert_eq!(
            e,
            "indicator #1 (id \"x1\", value \"example.com\"): unknown action \"block\" (expected Allowed, Audit, Warn or Block)"
        );
    }

    #[test]
    fn error_bad_severity() {
        let e = load_err(&[
            r#"{"type":"DomainName","value":"example.com","action":"Block","severity":"Critical"}"#,
        ]);
        assert!(
            e.starts_with("indicator #1 (value \"example.com\"): unknown severity \"Critical\""),
            "{e}"
        );
    }

    #[test]
    fn error_bad_expiration() {
        let e = load_err(&[
            OK,
            OK.replace("ok.", "b.").as_str(),
            r#"{"type":"DomainName","value":"example.com","action":"Block","expiration":"2027-02-30T00:00:00Z"}"#,
        ]);
        assert_eq!(
            e,
            "indicator #3 (value \"example.com\"): bad expiration \"2027-02-30T00:00:00Z\": not an RFC 3339 timestamp: day out of range"
        );
    }

    #[test]
    fn error_bad_cidr() {
        let e = load_err(&[r#"{"type":"IpAddress","value":"10.1.2.3/8","action":"Block"}"#]);
        assert_eq!(
            e,
            "indicator #1 (value \"10.1.2.3/8\"): host bits set in CIDR block 10.1.2.3/8 (did you mean 10.0.0.0/8?)"
        );
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "2001:db8::/129",
            "10.0.0",
            "fe80::1%eth0",
            "example.com",
        ] {
            let e = load_err(&[&format!(
                r#"{{"type":"IpAddress","value":"{bad}","action":"Block"}}"#
            )]);
            assert!(e.starts_with("indicator #1 (value "), "{bad}: {e}");
        }
    }

    #[test]
    fn error_bad_domain() {
        let e = load_err(&[r#"{"type":"DomainName","value":"exa mple.com","action":"Block"}"#]);
        assert_eq!(
            e,
            "indicator #1 (value \"exa mple.com\"): not a valid domain name: invalid character ' '"
        );
        for bad in [
            "a..b",
            ".",
            "*.",
            "a.*.b",
            "*example.com",
            "é.example",
            "198.18.0.1",
            &format!("{}.com", "a".repeat(64)),
            &format!("{}com", "abcdefghi.".repeat(26)),
        ] {
            let e = load_err(&[&format!(
                r#"{{"type":"DomainName","value":"{bad}","action":"Block"}}"#
            )]);
            assert!(e.contains("not a valid domain name"), "{bad}: {e}");
        }
        // A single label and underscores are fine.
        load(&[r#"{"type":"DomainName","value":"localhost","action":"Block"}"#]).unwrap();
        load(&[r#"{"type":"DomainName","value":"_dmarc.example.com","action":"Block"}"#]).unwrap();
    }

    #[test]
    fn error_empty_value_and_id() {
        let e = load_err(&[r#"{"type":"DomainName","value":"  ","action":"Block"}"#]);
        assert_eq!(e, "indicator #1 (value \"\"): empty value");
        let e = load_err(&[r#"{"id":"","type":"DomainName","value":"a.b","action":"Block"}"#]);
        assert_eq!(e, "indicator #1 (id \"\", value \"a.b\"): empty id");
    }

    #[test]
    fn error_unknown_field() {
        let e = load_err(&[
            OK,
            r#"{"type":"DomainName","value":"example.com","action":"Block","titel":"x"}"#,
        ]);
        assert!(
            e.starts_with("indicator #2: unknown field `titel`, expected one of"),
            "{e}"
        );
        let e = load_json(r#"{"indicators":[],"version":1}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("not a valid indicator file: unknown field `version`"),
            "{e}"
        );
    }

    #[test]
    fn error_wrong_shapes() {
        let e = load_err(&[r#"{"type":"DomainName","action":"Block"}"#]);
        assert!(e.starts_with("indicator #1: missing field `value`"), "{e}");
        let e = load_err(&[
            r#"{"type":"DomainName","value":"a.b","action":"Block","generate_alert":"yes"}"#,
        ]);
        assert!(
            e.starts_with("indicator #1: invalid type: string \"yes\", expected a boolean"),
            "{e}"
        );
        let e = load_json(r#"{"indicators":{}}"#).unwrap_err().to_string();
        assert!(
            e.starts_with("not a valid indicator file: invalid type: map"),
            "{e}"
        );
        let e = load_json(r#"{}"#).unwrap_err().to_string();
        assert!(
            e.starts_with("not a valid indicator file: missing field `indicators`"),
            "{e}"
        );
    }

    #[test]
    fn error_duplicate_id() {
        let e = load_err(&[
            r#"{"id":"a","type":"DomainName","value":"one.example","action":"Block"}"#,
            r#"{"id":"b","type":"DomainName","value":"two.example","action":"Block"}"#,
            r#"{"id":"a","type":"DomainName","value":"three.example","action":"Block"}"#,
        ]);
        assert_eq!(
            e,
            "indicator #3 (id \"a\", value \"three.example\"): duplicate id: also the id of indicator #1"
        );
        let e = load_err(&[
            OK,
            r#"{"type":"DomainName","value":"x.example","action":"Block"}"#,
            r#"{"type":"DomainName","value":"*.X.example","action":"Block","title":"again"}"#,
        ]);
        assert!(e.starts_with("indicator #3 (id \"ind-"), "{e}");
        assert!(
            e.contains("duplicate id: also the id of indicator #2 (same type, value, action"),
            "{e}"
        );
        // Without ids, another action or device group is another indicator.
        load(&[
            r#"{"type":"DomainName","value":"x.example","action":"Block"}"#,
            r#"{"type":"DomainName","value":"x.example","action":"Allowed"}"#,
            r#"{"type":"DomainName","value":"x.example","action":"Block","device_groups":["g"]}"#,
        ])
        .unwrap();
        // Same value, distinct explicit ids: fine.
        load(&[
            r#"{"id":"p","type":"DomainName","value":"x.example","action":"Block"}"#,
            r#"{"id":"q","type":"DomainName","value":"x.example","action":"Allowed"}"#,
        ])
        .unwrap();
    }

    #[test]
    fn error_not_json() {
        let e = load_json("hello").unwrap_err();
        assert!(matches!(e, IndicatorError::Json(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("not a valid indicator file: expected value at line 1 column 1")
        );
        let e = load_json(&file(&[OK])[..20]).unwrap_err();
        assert!(matches!(e, IndicatorError::Json(_)), "{e:?}");
        let e = load_json(&format!("{} x", file(&[OK]))).unwrap_err();
        assert!(e.to_string().contains("trailing characters"), "{e}");
    }

    #[test]
    fn all_or_nothing() {
        // A bad entry after good ones yields no indicators at all (the Result is Err).
        assert!(load(&[OK, r#"{"type":"Url","value":"ftp://x","action":"Block"}"#]).is_err());
    }

    #[test]
    fn https_with_path_warns() {
        let l = load(&[
            r#"{"type":"Url","value":"https://example.com/login?x=1","action":"Block"}"#,
            r#"{"type":"Url","value":"https://example.com/","action":"Block"}"#,
            r#"{"type":"Url","value":"http://example.com/login","action":"Block"}"#,
            r#"{"type":"DomainName","value":"old.example","action":"Block","expiration":"2001-01-01T00:00:00Z"}"#,
        ])
        .unwrap();
        assert_eq!(
            l.warnings,
            [
                "indicator #1 (value \"https://example.com/login?x=1\"): https URL with a path: only the host can be enforced",
                "indicator #4 (value \"old.example\"): already expired (2001-01-01T00:00:00Z); it will never match",
            ]
        );
        assert_eq!(l.indicators.len(), 4);
    }

    #[test]
    fn warnings_are_capped() {
        let entries: Vec<String> = (0..150)
            .map(|i| {
                format!(r#"{{"type":"Url","value":"https://h{i}.example/p","action":"Block"}}"#)
            })
            .collect();
        let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let l = load(&refs).unwrap();
        assert_eq!(l.warnings.len(), MAX_WARNINGS + 1);
        assert_eq!(
            l.warnings.last().unwrap(),
            "… and 50 more warnings like these"
        );
    }

    #[test]
    fn url_parsing() {
        let t = |v: &str| Target::parse(IndicatorType::Url, v);
        let url = |host: &str, path: &str, https| Target::Url {
            host: host.into(),
            path: path.into(),
            https,
        };
        assert_eq!(t("http://Example.COM"), Ok(url("example.com", "/", false)));
        assert_eq!(
            t("HTTPS://example.com:8443/A/b?Q=1#frag"),
            Ok(url("example.com", "/A/b?Q=1", true))
        );
        assert_eq!(
            t("http://example.com?q"),
            Ok(url("example.com", "/?q", false))
        );
        assert_eq!(
            t("http://198.18.0.1:80/x"),
            Ok(url("198.18.0.1", "/x", false))
        );
        assert_eq!(
            t("http://[2001:DB8::1]:8080/x"),
            Ok(url("2001:db8::1", "/x", false))
        );
        assert_eq!(
            t("http://example.com./x"),
            Ok(url("example.com", "/x", false))
        );
        for bad in [
            "example.com/x",
            "ftp://example.com/",
            "http://",
            "http:///x",
            "http://user@example.com/",
            "http://example.com:0/",
            "http://example.com:99999/",
            "http://example.com:8a/",
            "http://exa mple.com/",
            "http://example.com/a b",
            "http://[2001:db8::1/",
            "http://*.example.com/",
            "http://a:1:2/",
        ] {
            assert!(t(bad).is_err(), "accepted {bad:?}");
        }
        assert_eq!(
            url("2001:db8::1", "/x", true).to_string(),
            "https://[2001:db8::1]/x"
        );
    }

    #[test]
    fn ipnet() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains("10.255.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("2001:db8::1".parse().unwrap()));
        let n: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(n.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!n.contains("2001:db9::1".parse().unwrap()));
        assert_eq!(
            "198.18.0.1".parse::<IpNet>().unwrap().to_string(),
            "198.18.0.1/32"
        );
        assert_eq!(
            "::ffff:198.18.0.1".parse::<IpNet>().unwrap().to_string(),
            "198.18.0.1/32"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<IpNet>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert_eq!("::/0".parse::<IpNet>().unwrap().to_string(), "::/0");
        assert_eq!(
            IpNet::new("10.1.2.3".parse().unwrap(), 16)
                .unwrap()
                .to_string(),
            "10.1.0.0/16"
        );
        assert!(IpNet::new("10.1.2.3".parse().unwrap(), 33).is_none());
    }

    #[test]
    fn record_is_compact() {
        assert!(size_of::<Record>() <= 48, "{}", size_of::<Record>());
    }

    #[test]
    fn text_layout_round_trips() {
        // Canonical text inside the value, appended after it, with and without title.
        let l = load(&[
            r#"{"type":"Url","value":"http://EX.com:81/p?q","action":"Block","title":"t","description":"d"}"#,
            r#"{"type":"Url","value":"http://ex.com/p","action":"Block","description":"only d"}"#,
            r#"{"type":"DomainName","value":"*.Ex.com","action":"Warn","title":"T2"}"#,
            r#"{"id":"é","type":"IpAddress","value":"2001:db8::/48","action":"Allowed","title":"ü"}"#,
        ])
        .unwrap();
        let s = &l.indicators;
        let r = s.get(0).unwrap();
        assert_eq!(
            (r.value(), r.title(), r.description()),
            ("http://EX.com:81/p?q", Some("t"), Some("d"))
        );
        assert_eq!(s.url_parts(s.record(0)), ("ex.com", "/p?q"));
        let r = s.get(1).unwrap();
        assert_eq!(
            (r.value(), r.title(), r.description()),
            ("http://ex.com/p", None, Some("only d"))
        );
        assert_eq!(s.url_parts(s.record(1)), ("ex.com", "/p"));
        let r = s.get(2).unwrap();
        assert_eq!(
            (r.value(), r.title(), r.target()),
            ("*.Ex.com", Some("T2"), Target::Domain("ex.com".into()))
        );
        let r = s.get(3).unwrap();
        assert_eq!(
            (r.id(), r.value(), r.title()),
            ("é", "2001:db8::/48", Some("ü"))
        );
    }

    #[test]
    fn serialises_back_to_the_same_set() {
        let l = load(&[
            r#"{"id":"1","type":"Url","value":"https://ex.com/p","action":"Block","title":"t","severity":"Low",
                "expiration":"2030-05-06T07:08:09.5+02:00","device_groups":["a"],"generate_alert":true}"#,
            r#"{"type":"IpAddress","value":"10.0.0.0/8","action":"Audit","description":"d \"quoted\""}"#,
        ])
        .unwrap();
        let json = serde_json::to_string(&l.indicators).unwrap();
        let again = load_json(&json).unwrap();
        let a: Vec<Indicator> = l.indicators.iter().map(|r| r.to_indicator()).collect();
        let b: Vec<Indicator> = again.indicators.iter().map(|r| r.to_indicator()).collect();
        assert_eq!(a, b);
        assert!(
            json.contains(r#""expiration":"2030-05-06T05:08:09.5Z""#),
            "{json}"
        );
    }

    #[test]
    fn owned_indicators_push() {
        let mut i =
            Indicator::new(IndicatorType::DomainName, "Example.com", Action::Block).unwrap();
        i.title = Some("x".into());
        i.device_groups = vec!["g".into()];
        let set = Indicators::try_from(vec![i.clone()]).unwrap();
        assert_eq!(set.get(0).unwrap().to_indicator(), i);
        let e = Indicator::new(IndicatorType::Url, "example.com", Action::Block).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid indicator (value \"example.com\"): not a valid URL: expected http://host/path or https://host/path"
        );
        let mut u = Indicator::new(IndicatorType::Url, "http://h.example/a", Action::Warn).unwrap();
        u.target = Target::Url {
            host: "h.example".into(),
            path: "/x/../%61".into(),
            https: false,
        };
        let set = Indicators::try_from(vec![u]).unwrap();
        assert_eq!(set.url_parts(set.record(0)), ("h.example", "/a"));
        let mut long = i.clone();
        long.title = Some("x".repeat(MAX_TEXT + 1));
        assert!(Indicators::try_from(vec![long]).is_err());
    }

    #[test]
    fn load_file_names_the_path() {
        let dir = std::env::temp_dir().join(format!("nprot-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, file(&[OK])).unwrap();
        assert_eq!(load_file(&good).unwrap().indicators.len(), 1);
        let bad = dir.join("bad.json");
        std::fs::write(
            &bad,
            file(&[
                OK,
                r#"{"type":"DomainName","value":"a b","action":"Block"}"#,
            ]),
        )
        .unwrap();
        let e = load_file(&bad).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: indicator #2 (value \"a b\"): not a valid domain name: invalid character ' '",
                bad.display()
            )
        );
        let missing = dir.join("missing.json");
        let e = load_file(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
        let e = load_file(&dir).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: read error", dir.display())),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
