//! Indicator values: IP networks, domain names and URLs, parsed, validated and
//! canonicalised for matching ([`Target`]), and the canonical form of URL paths.

use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use super::indicator::IndicatorType;

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

    pub(super) fn as_parsed(&self) -> ParsedTarget<'_> {
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
