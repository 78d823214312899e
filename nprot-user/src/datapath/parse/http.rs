//! HTTP/1.x request head parsing: method, target, Host, User-Agent, proxy forms.
//!
//! Only the request line and header block are read. Parsing is strict about what
//! servers reject too (bad version, malformed lines) and lenient about what they accept
//! (bare `\n` line endings, folded headers, runs of spaces in the request line).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::{ParseOutcome, Parsed};

/// Largest request head (request line + headers + blank line) judged in full. Servers
/// accept far less by default (nginx 8 KiB per line, Apache 8 KiB per field); long
/// cookies and padding before `Host:` still fit.
pub const MAX_HEAD_LEN: usize = 64 * 1024;

/// Methods recognised when detecting HTTP by content. Methods are case-sensitive.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
];

/// An HTTP/1.x request head.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HttpRequest {
    /// Request method, one of [`METHODS`].
    pub method: String,
    /// From the Host header (lowercase, port stripped) — or for absolute-form/CONNECT, from the target.
    pub host: Option<String>,
    /// Explicit port in absolute URI / CONNECT authority / Host header, if any.
    pub port: Option<u16>,
    /// Request-target as sent.
    pub uri: String,
    /// Path+query ("/" for CONNECT/authority form, path part for absolute form).
    pub path: String,
    /// Request-target is absolute-form (`http://host/...`), i.e. sent to a forward proxy.
    pub absolute: bool,
    /// Method is CONNECT (request-target is an authority host:port).
    pub connect: bool,
    /// User-Agent header value, if any.
    pub user_agent: Option<String>,
    /// "HTTP/1.0", "HTTP/1.1", or "HTTP/0.9" for a request line without a version (no
    /// headers follow it); empty in [`parse_head_prefix`] when the line was cut.
    pub version: &'static str,
    /// Bytes up to and including the blank line ending the header block (so a caller can continue parsing what follows a CONNECT).
    pub header_len: usize,
    /// The request body that follows the head, as its headers announce it.
    #[serde(skip)]
    pub body: Body,
    /// The request asks to switch protocols (`Upgrade`, e.g. WebSocket or h2c): what the
    /// client sends after it is not HTTP/1.x.
    #[serde(skip)]
    pub upgrade: bool,
}

/// How long the body after a request head is (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    /// No body (no Content-Length, no Transfer-Encoding).
    #[default]
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding` chunked (or another coding): its end is not known from the head.
    Chunked,
}

impl HttpRequest {
    /// Bytes from the start of this request to the start of the next one on the
    /// connection, if the head says (`None` for a chunked body).
    pub fn total_len(&self) -> Option<u64> {
        match self.body {
            Body::None => Some(self.header_len as u64),
            Body::Length(n) => n.checked_add(self.header_len as u64),
            Body::Chunked => None,
        }
    }
}

impl HttpRequest {
    /// `http://host[:port]/path` for normal and absolute-form requests, `host:port` for CONNECT.
    ///
    /// An absolute-form target keeps its own scheme (a proxy may receive `https://…`).
    /// Without any host, the request-target is returned as sent.
    pub fn url(&self) -> String {
        let Some(host) = &self.host else {
            return self.uri.clone();
        };
        let mut authority = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        if let Some(port) = self.port {
            authority = format!("{authority}:{port}");
        }
        if self.connect {
            return authority;
        }
        let scheme = if self.absolute {
            self.uri
                .split_once("://")
                .map_or_else(|| "http".to_owned(), |(s, _)| s.to_ascii_lowercase())
        } else {
            "http".to_owned()
        };
        format!("{scheme}://{authority}{}", self.url_path())
    }

    /// [`HttpRequest::url`], with the server's address standing in for a Host the request
    /// does not name (HTTP/0.9, a Host-less HTTP/1.0 request): where it went, as
    /// `http://198.18.0.2/path` (`:port` unless 80, IPv6 in brackets).
    pub fn url_at(&self, server: SocketAddr) -> String {
        if self.host.is_some() {
            return self.url();
        }
        let authority = match (server.ip(), server.port()) {
            (IpAddr::V6(ip), 80) => format!("[{ip}]"),
            (ip, 80) => ip.to_string(),
            _ => server.to_string(),
        };
        format!("http://{authority}{}", self.url_path())
    }

    /// The path part of the effective request URL: the asterisk-form (`OPTIONS *`)
    /// names the server itself, so its URL has an empty path (RFC 9112 §3.3).
    fn url_path(&self) -> &str {
        if self.path == "*" { "" } else { &self.path }
    }
}

/// How the start of a buffer compares with the known method tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodMatch {
    /// The buffer starts with this method and a space.
    Method(&'static str),
    /// The buffer is too short to tell but could still become a method and a space.
    Prefix,
    /// The buffer does not start with a known method.
    No,
}

/// Compare the start of `buf` with each known method followed by a space.
pub fn match_method(buf: &[u8]) -> MethodMatch {
    let mut prefix = false;
    for method in METHODS {
        let token = method.as_bytes();
        match buf.get(..token.len()) {
            Some(head) if head == token => match buf.get(token.len()) {
                Some(b' ') => return MethodMatch::Method(method),
                None => prefix = true,
                Some(_) => {}
            },
            Some(_) => {}
            None => prefix |= token.starts_with(buf),
        }
    }
    if prefix {
        MethodMatch::Prefix
    } else {
        MethodMatch::No
    }
}

/// Parse an HTTP/1.x request head from the start of `buf`.
///
/// Returns `NeedMore` until the blank line ending the header block has arrived (or, for
/// an HTTP/0.9 request, the end of its line), `Oversized` for a valid start of a head
/// that does not end within [`MAX_HEAD_LEN`], and `NotRecognised` for anything malformed.
pub fn parse_http_request(buf: &[u8]) -> ParseOutcome {
    match parse_head(buf, false) {
        Ok(req) => ParseOutcome::Complete(Parsed::Http(req)),
        Err(Stop::NeedMore) => ParseOutcome::NeedMore,
        Err(Stop::TooLong) => ParseOutcome::Oversized,
        Err(Stop::Bad(why)) => ParseOutcome::NotRecognised(why),
    }
}

/// What the start of a request head that will not be seen in full says: the request
/// line and every complete header line in `buf` (up to [`MAX_HEAD_LEN`]), for a head
/// that is too long or whose bytes were not all captured. A cut request line gives the
/// target so far and an empty `version`; `header_len` is how far the parse got. `None`
/// unless `buf` starts with a method.
pub fn parse_head_prefix(buf: &[u8]) -> Option<HttpRequest> {
    parse_head(buf, true).ok()
}

/// Why parsing stopped without a request.
enum Stop {
    NeedMore,
    /// No end of the head within [`MAX_HEAD_LEN`].
    TooLong,
    Bad(&'static str),
}

/// Which header a folded continuation line extends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Host,
    UserAgent,
    Other,
}

/// A `Content-Length` value: digits only; a list of equal values counts as one (RFC 9110
/// §8.6), anything else is malformed.
fn content_length(value: &str) -> Option<u64> {
    let mut parts = value.split(',').map(str::trim);
    let first = parts.next()?;
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = first.parse().ok()?;
    parts.all(|p| p == first).then_some(n)
}

/// Parses the head at the start of `buf`; `prefix`: build the request from what is
/// there when the head is cut (see [`parse_head_prefix`]) instead of stopping.
fn parse_head(buf: &[u8], prefix: bool) -> Result<HttpRequest, Stop> {
    let method = match match_method(buf) {
        MethodMatch::Method(method) => method,
        MethodMatch::Prefix => return Err(Stop::NeedMore),
        MethodMatch::No => return Err(Stop::Bad("not an HTTP method")),
    };
    let window = buf.get(..MAX_HEAD_LEN).unwrap_or(buf);
    let mut lines = Lines { window, pos: 0 };

    let (request_line, line_cut) = match lines.next_line(buf.len()) {
        Ok(line) => (line, false),
        Err(Stop::NeedMore | Stop::TooLong) if prefix => {
            lines.pos = window.len();
            (window.strip_suffix(b"\r").unwrap_or(window), true)
        }
        Err(e) => return Err(e),
    };
    let mut parts = request_line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let (Some(_), Some(target), version, rest) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Stop::Bad("malformed HTTP request line"));
    };
    let version = match (version, rest) {
        _ if line_cut => "",
        (Some(b"HTTP/1.1"), None) => "HTTP/1.1",
        (Some(b"HTTP/1.0"), None) => "HTTP/1.0",
        // A request line without a version is HTTP/0.9's simple request: servers that
        // still answer it take the line as the whole request, so it is judged like one.
        (None, None) => "HTTP/0.9",
        (Some(_), None) => return Err(Stop::Bad("unsupported HTTP version")),
        (_, Some(_)) => return Err(Stop::Bad("malformed HTTP request line")),
    };
    if !target.iter().all(|&b| b > b' ' && b != 0x7f) {
        return Err(Stop::Bad("malformed HTTP request-target"));
    }

    // HTTP/0.9 has no header block, and a cut request line is all there is.
    let Headers {
        host: host_header,
        user_agent,
        length,
        chunked,
        upgrade,
    } = if line_cut || version == "HTTP/0.9" {
        Headers::default()
    } else {
        parse_headers(&mut lines, buf.len(), prefix)?
    };

    let uri = String::from_utf8_lossy(target).into_owned();
    let connect = method == "CONNECT";
    let (host, port, path, absolute) = if connect {
        let (host, port) =
            parse_authority(target).ok_or(Stop::Bad("malformed CONNECT authority"))?;
        (Some(host), port, "/".to_owned(), false)
    } else if target.starts_with(b"/") || target == b"*" {
        let (host, port) = host_header
            .as_deref()
            .and_then(|h| parse_authority(h.as_bytes()))
            .map_or((None, None), |(h, p)| (Some(h), p));
        (host, port, uri.clone(), false)
    } else {
        let (host, port, path) =
            parse_absolute(&uri).ok_or(Stop::Bad("malformed HTTP request-target"))?;
        // An absolute-form OPTIONS without a path asks about the server itself, as "*"
        // does (RFC 9112 §3.2.4); anything else without a path asks for "/".
        let path = match path {
            Some(path) => path,
            None if method == "OPTIONS" => "*".to_owned(),
            None => "/".to_owned(),
        };
        (Some(host), port, path, true)
    };

    Ok(HttpRequest {
        method: method.to_owned(),
        host,
        port,
        uri,
        path,
        absolute,
        connect,
        user_agent,
        version,
        header_len: lines.pos,
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
        body: match (chunked, length) {
            (true, _) => Body::Chunked,
            (false, Some(0) | None) => Body::None,
            (false, Some(n)) => Body::Length(n),
        },
        upgrade,
    })
}

/// What the header block says that matters here.
#[derive(Default)]
struct Headers {
    host: Option<String>,
    user_agent: Option<String>,
    length: Option<u64>,
    chunked: bool,
    upgrade: bool,
}

/// Reads header lines up to the blank line ending the head; `prefix`: up to the first
/// line that is not complete either.
fn parse_headers(lines: &mut Lines<'_>, total: usize, prefix: bool) -> Result<Headers, Stop> {
    let mut h = Headers::default();
    let mut last = None;
    loop {
        let line = match lines.next_line(total) {
            Ok(line) => line,
            Err(Stop::NeedMore | Stop::TooLong) if prefix => break,
            Err(e) => return Err(e),
        };
        if line.is_empty() {
            break;
        }
        if let Some(continuation) = line.strip_prefix(b" ").or_else(|| line.strip_prefix(b"\t")) {
            // Obsolete line folding: a proxy replaces it with a space (RFC 9112 5.2).
            let value = header_value(continuation);
            let target = match last {
                Some(Field::Host) => h.host.as_mut(),
                Some(Field::UserAgent) => h.user_agent.as_mut(),
                Some(Field::Other) => None,
                None => return Err(Stop::Bad("folded line before any HTTP header")),
            };
            if let Some(target) = target.filter(|_| !value.is_empty()) {
                target.push(' ');
                target.push_str(&value);
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(Stop::Bad("HTTP header line without a colon"));
        };
        let (name, value) = (line.get(..colon).unwrap_or_default(), line.get(colon + 1..));
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(Stop::Bad("malformed HTTP header name"));
        }
        let value = header_value(value.unwrap_or_default());
        // The first occurrence counts; servers reject a repeated Host anyway.
        let field = if name.eq_ignore_ascii_case(b"host") {
            h.host.get_or_insert(value);
            Field::Host
        } else if name.eq_ignore_ascii_case(b"user-agent") {
            h.user_agent.get_or_insert(value);
            Field::UserAgent
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(&value).ok_or(Stop::Bad("malformed Content-Length"))?;
            if h.length.is_some_and(|m| m != n) {
                return Err(Stop::Bad("conflicting Content-Length headers"));
            }
            h.length = Some(n);
            Field::Other
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            h.upgrade |= !value.is_empty();
            Field::Other
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Any coding makes the length unknowable from the head (RFC 9112 §6.3).
            h.chunked |= !value.is_empty();
            Field::Other
        } else {
            Field::Other
        };
        last = Some(field);
    }

    Ok(h)
}

/// Longest chunk-size line (with extensions) or trailer line accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// One step through a chunked request body (RFC 9112 §7.1), from the start of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStep {
    /// The chunk-size line (or the trailers) is not complete yet.
    NeedMore,
    /// A chunk: its size line, data and CRLF take this many bytes; skip them.
    Chunk(u64),
    /// The last chunk and the trailer section end after this many bytes: the next
    /// request starts there.
    End(u64),
    /// Not a chunked body.
    Bad(&'static str),
}

/// Reads the chunk that starts `buf`: only its size line (and, for the last chunk, the
/// trailers) needs to be there; the data is skipped unread.
pub fn chunk_step(buf: &[u8]) -> ChunkStep {
    let Some((line, rest_at)) = crlf_line(buf) else {
        return if buf.len() > MAX_CHUNK_LINE {
            ChunkStep::Bad("chunk-size line too long")
        } else {
            ChunkStep::NeedMore
        };
    };
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii_end();
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return ChunkStep::Bad("malformed chunk size");
    }
    let size = digits.iter().fold(0u64, |n, &d| {
        (n << 4) | u64::from((d as char).to_digit(16).unwrap_or(0))
    });
    if size > 0 {
        return match size.checked_add(rest_at as u64 + 2) {
            Some(n) => ChunkStep::Chunk(n),
            None => ChunkStep::Bad("chunk size overflows"),
        };
    }
    // The last chunk: trailer lines up to an empty one.
    let mut at = rest_at;
    loop {
        let Some((trailer, len)) = buf.get(at..).and_then(crlf_line) else {
            return if buf.len() - at > MAX_CHUNK_LINE {
                ChunkStep::Bad("chunked trailer too long")
            } else {
                ChunkStep::NeedMore
            };
        };
        at += len;
        if trailer.is_empty() {
            return ChunkStep::End(at as u64);
        }
    }
}

/// The line that starts `buf`, without its `\n` or `\r\n`, and the bytes it takes with
/// its line end; `None` if no line end is within [`MAX_CHUNK_LINE`] bytes.
fn crlf_line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let window = buf.get(..MAX_CHUNK_LINE + 2).unwrap_or(buf);
    let nl = window.iter().position(|&b| b == b'\n')?;
    let line = window.get(..nl).unwrap_or_default();
    Some((line.strip_suffix(b"\r").unwrap_or(line), nl + 1))
}

/// Line iterator over the inspected window of the head.
struct Lines<'a> {
    window: &'a [u8],
    pos: usize,
}

impl<'a> Lines<'a> {
    /// Next line without its `\n` or `\r\n`. `total` is the whole buffer's length, to tell
    /// "wait for more" from "head too long".
    fn next_line(&mut self, total: usize) -> Result<&'a [u8], Stop> {
        let rest = self.window.get(self.pos..).unwrap_or_default();
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if total >= MAX_HEAD_LEN {
                return Err(Stop::TooLong);
            }
            // Reject binary junk now rather than after 64 KiB of it.
            let partial = rest.strip_suffix(b"\r").unwrap_or(rest);
            if partial.iter().any(|&b| is_ctl(b)) {
                return Err(Stop::Bad("control byte in HTTP request head"));
            }
            return Err(Stop::NeedMore);
        };
        self.pos += nl + 1;
        let line = rest.get(..nl).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().any(|&b| is_ctl(b)) {
            return Err(Stop::Bad("control byte in HTTP request head"));
        }
        Ok(line)
    }
}

/// Control bytes other than HTAB, which may appear in header values.
fn is_ctl(b: u8) -> bool {
    (b < b' ' && b != b'\t') || b == 0x7f
}

/// RFC 9110 token character.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Header value with surrounding whitespace removed.
fn header_value(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw.trim_ascii()).into_owned()
}

/// Split an absolute-form target `scheme://[userinfo@]authority[/path][?query]` into
/// host, port and path (`None` when there is neither path nor query).
fn parse_absolute(uri: &str) -> Option<(String, Option<u16>, Option<String>)> {
    let (scheme, rest) = uri.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // Userinfo never names the destination: "http://allowed@blocked/" goes to "blocked".
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = parse_authority(authority.as_bytes())?;
    let path = if path.is_empty() {
        None
    } else if path.starts_with('/') {
        Some(path.to_owned())
    } else {
        Some(format!("/{path}"))
    };
    Some((host, port, path))
}

/// Parse `host[:port]` or `[ipv6][:port]` into a normalised host and optional port.
/// IPv6 literals come back without brackets, in canonical form.
fn parse_authority(raw: &[u8]) -> Option<(String, Option<u16>)> {
    let text = std::str::from_utf8(raw).ok()?;
    if let Some(bracketed) = text.strip_prefix('[') {
        let (literal, after) = bracketed.split_once(']')?;
        let addr: Ipv6Addr = literal.parse().ok()?;
        // An empty port is allowed (RFC 3986) and means none.
        let port = match after {
            "" | ":" => None,
            _ => Some(parse_port(after.strip_prefix(':')?)?),
        };
        return Some((addr.to_string(), port));
    }
    // More than one colon is a bare IPv6 literal or junk: both invalid here.
    let (host, port) = match text.split_once(':') {
        Some((host, "")) => (host, None),
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (text, None),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    valid.then(|| (host.to_ascii_lowercase(), port))
}

/// Port digits (non-empty: callers take an empty port as none); `None` if they are not
/// a port number.
fn parse_port(digits: &str) -> Option<u16> {
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(buf: &[u8]) -> HttpRequest {
        match parse_http_request(buf) {
            ParseOutcome::Complete(Parsed::Http(req)) => req,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn not_recognised(buf: &[u8]) -> bool {
        matches!(parse_http_request(buf), ParseOutcome::NotRecognised(_))
    }

    #[test]
    fn get_with_host_and_user_agent() {
        let buf = b"GET /index.html?q=1 HTTP/1.1\r\nHost: WWW.Example.com:8080\r\n\
                    User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
        let req = request(buf);
        assert_eq!(req.method, "GET");
        assert_eq!(req.host.as_deref(), Some("www.example.com"));
        assert_eq!(req.port, Some(8080));
        assert_eq!(req.uri, "/index.html?q=1");
        assert_eq!(req.path, "/index.html?q=1");
        assert!(!req.absolute && !req.connect);
        assert_eq!(req.user_agent.as_deref(), Some("curl/8.5.0"));
        assert_eq!(req.version, "HTTP/1.1");
        assert_eq!(req.header_len, buf.len());
        assert_eq!(req.url(), "http://www.example.com:8080/index.html?q=1");
    }

    #[test]
    fn header_names_are_case_insensitive_and_lf_is_tolerated() {
        let req = request(b"POST /api HTTP/1.0\nhOsT: lf.example\nUSER-AGENT:  x y \n\n");
        assert_eq!(req.host.as_deref(), Some("lf.example"));
        assert_eq!(req.port, None);
        assert_eq!(req.user_agent.as_deref(), Some("x y"));
        assert_eq!(req.version, "HTTP/1.0");
        assert_eq!(req.url(), "http://lf.example/api");
    }

    #[test]
    fn absolute_form() {
        let req = request(b"GET http://a.example:8080/x?y HTTP/1.1\r\nHost: other.example\r\n\r\n");
        assert!(req.absolute && !req.connect);
        assert_eq!(
            req.host.as_deref(),
            Some("a.example"),
            "the URI beats the Host header"
        );
        assert_eq!(req.port, Some(8080));
        assert_eq!(req.uri, "http://a.example:8080/x?y");
        assert_eq!(req.path, "/x?y");
        assert_eq!(req.url(), "http://a.example:8080/x?y");
    }

    #[test]
    fn absolute_form_edge_cases() {
        let req = request(b"GET HTTP://user:pw@B.Example HTTP/1.1\r\n\r\n");
        assert_eq!(
            req.host.as_deref(),
            Some("b.example"),
            "userinfo is not the host"
        );
        assert_eq!(req.path, "/");
        assert_eq!(req.url(), "http://b.example/");
        let req = request(b"GET http://c.example?q HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "/?q");
        let req = request(b"GET https://[2001:DB8::1]:8443/p HTTP/1.1\r\n\r\n");
        assert_eq!(req.host.as_deref(), Some("2001:db8::1"));
        assert_eq!(req.url(), "https://[2001:db8::1]:8443/p");
        assert!(not_recognised(b"GET http:///nohost HTTP/1.1\r\n\r\n"));
        assert!(not_recognised(b"GET relative/path HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn connect() {
        let buf = b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\
                    User-Agent: Go-http-client/1.1\r\n\r\n";
        let req = request(buf);
        assert!(req.connect && !req.absolute);
        assert_eq!(req.host.as_deref(), Some("b.example"));
        assert_eq!(req.port, Some(443));
        assert_eq!(req.uri, "b.example:443");
        assert_eq!(req.path, "/");
        assert_eq!(req.url(), "b.example:443");
    }

    #[test]
    fn connect_ipv6_literal() {
        let req = request(b"CONNECT [2001:db8::1]:8080 HTTP/1.1\r\n\r\n");
        assert_eq!(req.host.as_deref(), Some("2001:db8::1"));
        assert_eq!(req.port, Some(8080));
        assert_eq!(req.url(), "[2001:db8::1]:8080");
        assert!(not_recognised(
            b"CONNECT [2001:db8::zz]:80 HTTP/1.1\r\n\r\n"
        ));
        assert!(not_recognised(b"CONNECT 2001:db8::1:80 HTTP/1.1\r\n\r\n"));
        assert!(not_recognised(b"CONNECT b.example:99999 HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn host_header_ipv6_literal() {
        let req = request(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
        assert_eq!(req.host.as_deref(), Some("::1"));
        assert_eq!(req.port, Some(8080));
        assert_eq!(req.url(), "http://[::1]:8080/");
    }

    #[test]
    fn header_len_when_bytes_follow() {
        let head = b"CONNECT c.example:443 HTTP/1.1\r\nHost: c.example:443\r\n\r\n";
        let mut buf = head.to_vec();
        buf.extend_from_slice(b"\x16\x03\x01\x02\x00\x01");
        assert_eq!(request(&buf).header_len, head.len());
        let mut buf = b"POST /u HTTP/1.1\nHost: d.example\n\n".to_vec();
        let head_len = buf.len();
        buf.extend_from_slice(b"body bytes\r\n\r\n");
        assert_eq!(request(&buf).header_len, head_len);
    }

    #[test]
    fn body_length_from_the_head() {
        let get = request(b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n");
        assert_eq!(get.body, Body::None);
        assert_eq!(get.total_len(), Some(get.header_len as u64));
        let post = request(b"POST http://a.example/u HTTP/1.1\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(post.body, Body::Length(12));
        assert_eq!(post.total_len(), Some(post.header_len as u64 + 12));
        let same =
            request(b"POST /u HTTP/1.1\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(same.body, Body::Length(7));
        let chunked =
            request(b"POST /u HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.body, Body::Chunked);
        assert_eq!(chunked.total_len(), None);
        for bad in [
            &b"POST /u HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST /u HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST /u HTTP/1.1\r\nContent-Length: 1,2\r\n\r\n",
            b"POST /u HTTP/1.1\r\nContent-Length:\r\n\r\n",
            b"POST /u HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert!(
                matches!(parse_http_request(bad), ParseOutcome::NotRecognised(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn split_mid_header_needs_more() {
        let buf = b"GET /a HTTP/1.1\r\nHost: split.example\r\nUser-Agent: t\r\n\r\n";
        for cut in 0..buf.len() {
            assert_eq!(
                parse_http_request(&buf[..cut]),
                ParseOutcome::NeedMore,
                "cut {cut}"
            );
        }
        assert_eq!(request(buf).host.as_deref(), Some("split.example"));
    }

    #[test]
    fn missing_or_bad_host_header() {
        let req = request(b"GET /x HTTP/1.0\r\n\r\n");
        assert_eq!(req.host, None);
        assert_eq!(req.url(), "/x");
        let req = request(b"GET /x HTTP/1.1\r\nHost: bad host\r\n\r\n");
        assert_eq!(req.host, None);
    }

    #[test]
    fn folded_header_is_joined() {
        let req = request(b"GET / HTTP/1.1\r\nHost: f.example\r\nUser-Agent: a\r\n  b\r\n\r\n");
        assert_eq!(req.user_agent.as_deref(), Some("a b"));
    }

    #[test]
    fn bad_version_method_and_lines() {
        assert!(not_recognised(b"GET / HTTP/2.0\r\n\r\n"));
        assert!(not_recognised(b"GET / http/1.1\r\n\r\n"));
        assert!(not_recognised(b"GET / HTTP/1.1 x\r\n\r\n"));
        assert!(not_recognised(b"GET\r\n\r\n"));
        assert!(not_recognised(b"get / HTTP/1.1\r\n\r\n"));
        assert!(not_recognised(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"));
        assert!(not_recognised(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"));
        assert!(not_recognised(b"GET / HTTP/1.1\r\n folded-first\r\n\r\n"));
    }

    #[test]
    fn garbage_is_rejected_early() {
        assert!(not_recognised(b"\x00\x01\x02\x03"));
        assert!(
            not_recognised(b"GET /\x00\x01\x02"),
            "binary in an unfinished line"
        );
        assert!(not_recognised(b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n"));
        assert!(
            not_recognised(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"),
            "bare CR"
        );
    }

    #[test]
    fn head_size_limit() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        while buf.len() < MAX_HEAD_LEN + 100 {
            buf.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(
            parse_http_request(&buf[..MAX_HEAD_LEN - 1]),
            ParseOutcome::NeedMore
        );
        assert_eq!(parse_http_request(&buf), ParseOutcome::Oversized);
        // A malformed line before the bound is still malformed.
        let mut bad = b"GET / HTTP/1.1\r\nNo colon here\r\n".to_vec();
        bad.resize(MAX_HEAD_LEN + 10, b'a');
        assert!(not_recognised(&bad));
        // A head of exactly the limit still parses.
        let mut exact = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        exact.resize(MAX_HEAD_LEN - 4, b'p');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(request(&exact).header_len, MAX_HEAD_LEN);
    }

    #[test]
    fn method_matching() {
        assert_eq!(
            match_method(b"OPTIONS * HTTP/1.1"),
            MethodMatch::Method("OPTIONS")
        );
        assert_eq!(match_method(b"PU"), MethodMatch::Prefix);
        assert_eq!(match_method(b"PUT"), MethodMatch::Prefix);
        assert_eq!(match_method(b"PUTS"), MethodMatch::No);
        assert_eq!(match_method(b"G\x00"), MethodMatch::No);
        assert_eq!(match_method(b""), MethodMatch::Prefix);
    }

    #[test]
    fn asterisk_form_url() {
        let req = request(b"OPTIONS * HTTP/1.1\r\nHost: o.example\r\n\r\n");
        assert_eq!(req.path, "*");
        assert_eq!(req.url(), "http://o.example");
        let req = request(b"OPTIONS * HTTP/1.1\r\nHost: O.Example:8080\r\n\r\n");
        assert_eq!(req.url(), "http://o.example:8080");
        // Through a proxy: an absolute-form OPTIONS without a path is the asterisk-form
        // (RFC 9112 §3.2.4); with a path, or another method, it is that path or "/".
        let req = request(b"OPTIONS http://o.example:8080 HTTP/1.1\r\n\r\n");
        assert!(req.absolute);
        assert_eq!(
            (req.path.as_str(), req.url()),
            ("*", "http://o.example:8080".into())
        );
        let req = request(b"OPTIONS http://o.example/x HTTP/1.1\r\n\r\n");
        assert_eq!(req.url(), "http://o.example/x");
        let req = request(b"GET http://o.example HTTP/1.1\r\n\r\n");
        assert_eq!(req.url(), "http://o.example/");
        let req = request(b"OPTIONS http://o.example?q HTTP/1.1\r\n\r\n");
        assert_eq!(req.url(), "http://o.example/?q");
        // Without a Host, the server's address stands in.
        let req = request(b"OPTIONS * HTTP/1.0\r\n\r\n");
        assert_eq!(
            req.url_at("198.18.0.2:80".parse().unwrap()),
            "http://198.18.0.2"
        );
    }

    #[test]
    fn a_request_without_host_is_at_the_server_address() {
        let req = request(b"GET /x?y HTTP/1.0\r\n\r\n");
        assert_eq!(req.url(), "/x?y", "as sent");
        for (server, url) in [
            ("198.18.0.2:80", "http://198.18.0.2/x?y"),
            ("198.18.0.2:8080", "http://198.18.0.2:8080/x?y"),
            ("[2001:db8::2]:80", "http://[2001:db8::2]/x?y"),
            ("[2001:db8::2]:8080", "http://[2001:db8::2]:8080/x?y"),
        ] {
            assert_eq!(req.url_at(server.parse().unwrap()), url);
        }
        // A Host (or an absolute-form target) wins over the address.
        let req = request(b"GET /x HTTP/1.1\r\nHost: h.example\r\n\r\n");
        assert_eq!(
            req.url_at("198.18.0.2:8080".parse().unwrap()),
            "http://h.example/x"
        );
    }

    #[test]
    fn http_0_9_request_line_is_a_request() {
        let req = request(b"GET /path\r\n");
        assert_eq!(req.version, "HTTP/0.9");
        assert_eq!((req.method.as_str(), req.uri.as_str()), ("GET", "/path"));
        assert_eq!((req.host.as_ref(), req.user_agent.as_ref()), (None, None));
        assert_eq!((req.header_len, req.body), (11, Body::None));
        assert_eq!(
            req.url_at("198.18.0.2:80".parse().unwrap()),
            "http://198.18.0.2/path"
        );
        // A bare LF ends it too; what follows the line is not its header block.
        let buf = b"GET /\nHost: x.example\r\n\r\n";
        let req = request(buf);
        assert_eq!((req.header_len, req.host), (6, None));
        // Absolute-form names its host.
        let req = request(b"GET http://a.example/p\r\n");
        assert_eq!(
            (req.version, req.url()),
            ("HTTP/0.9", "http://a.example/p".into())
        );
        for cut in 0..b"GET /path\r\n".len() {
            assert_eq!(
                parse_http_request(&b"GET /path\r\n"[..cut]),
                ParseOutcome::NeedMore,
                "cut {cut}"
            );
        }
        assert!(not_recognised(b"GET /\x01\r\n"));
        assert!(not_recognised(b"GET relative\r\n"));
    }

    #[test]
    fn every_head_shape_keeps_the_incremental_contract() {
        // What the fuzz target checks, on the shapes added with HTTP/0.9 and long heads:
        // a complete head parses alone, and every prefix of it needs more.
        let mut long = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
        long.resize(MAX_HEAD_LEN - 4, b'c');
        long.extend_from_slice(b"\r\n\r\n");
        for head in [
            &b"GET /\r\n"[..],
            b"GET / \r\n",
            b"GET /\nGET / HTTP/1.1\r\n\r\n",
            b"OPTIONS *\r\n",
            b"OPTIONS http://o.example HTTP/1.1\r\n\r\n",
            b"CONNECT c.example:443\r\n",
            &long,
        ] {
            let ParseOutcome::Complete(Parsed::Http(req)) = parse_http_request(head) else {
                panic!("{:?}", String::from_utf8_lossy(head));
            };
            let exact = parse_http_request(&head[..req.header_len]);
            assert_eq!(exact, ParseOutcome::Complete(Parsed::Http(req.clone())));
            for cut in [0, 1, req.header_len / 2, req.header_len - 1] {
                assert_eq!(
                    parse_http_request(&head[..cut]),
                    ParseOutcome::NeedMore,
                    "{cut}"
                );
            }
        }
    }

    #[test]
    fn a_40_kb_cookie_before_host_is_one_head() {
        let mut buf = b"GET /c HTTP/1.1\r\nCookie: ".to_vec();
        buf.resize(40_000, b'k');
        buf.extend_from_slice(b"\r\nHost: late.example\r\nUser-Agent: u\r\n\r\n");
        let req = request(&buf);
        assert_eq!(req.host.as_deref(), Some("late.example"));
        assert_eq!(req.user_agent.as_deref(), Some("u"));
        assert_eq!(req.header_len, buf.len());
        assert_eq!(
            parse_http_request(&buf[..buf.len() - 1]),
            ParseOutcome::NeedMore
        );
    }

    #[test]
    fn the_start_of_an_unfinished_head_says_what_it_can() {
        let mut buf = b"POST /up HTTP/1.1\r\nHost: early.example\r\nX-Pad: ".to_vec();
        buf.resize(70_000, b'p');
        assert_eq!(parse_http_request(&buf), ParseOutcome::Oversized);
        let req = parse_head_prefix(&buf).expect("a start");
        assert_eq!((req.method.as_str(), req.uri.as_str()), ("POST", "/up"));
        assert_eq!(req.host.as_deref(), Some("early.example"));
        assert_eq!(req.header_len, 40, "up to the cut line");
        // Host after the cut: unknown.
        let mut buf = b"GET /a HTTP/1.1\r\nX-Pad: ".to_vec();
        buf.resize(70_000, b'p');
        buf.extend_from_slice(b"\r\nHost: late.example\r\n\r\n");
        assert_eq!(parse_http_request(&buf), ParseOutcome::Oversized);
        assert_eq!(parse_head_prefix(&buf).and_then(|r| r.host), None);
        // A cut request line: the target so far, no version; absolute-form has its host.
        let mut buf = b"GET http://p.example/".to_vec();
        buf.resize(70_000, b'a');
        assert_eq!(parse_http_request(&buf), ParseOutcome::Oversized);
        let req = parse_head_prefix(&buf).expect("a start");
        assert_eq!((req.version, req.host.as_deref()), ("", Some("p.example")));
        assert!(req.path.starts_with("/aaa"));
        // A short incomplete head (its bytes were not all captured).
        let req =
            parse_head_prefix(b"GET /s HTTP/1.1\r\nHost: s.example\r\nCook").expect("a start");
        assert_eq!(
            (req.version, req.host.as_deref()),
            ("HTTP/1.1", Some("s.example"))
        );
        assert_eq!(parse_head_prefix(b"\x16\x03\x01"), None);
    }

    #[test]
    fn chunked_bodies_are_walked_by_their_size_lines() {
        assert_eq!(chunk_step(b""), ChunkStep::NeedMore);
        assert_eq!(chunk_step(b"1a"), ChunkStep::NeedMore);
        // "1a\r\n" + 26 data bytes + "\r\n".
        assert_eq!(chunk_step(b"1a\r\nabc"), ChunkStep::Chunk(4 + 26 + 2));
        assert_eq!(chunk_step(b"A;ext=1\n"), ChunkStep::Chunk(8 + 10 + 2));
        assert_eq!(chunk_step(b"0\r\n\r\nGET"), ChunkStep::End(5));
        assert_eq!(chunk_step(b"0\r\nX-T: 1\r\n"), ChunkStep::NeedMore);
        assert_eq!(chunk_step(b"0\r\nX-T: 1\r\n\r\n"), ChunkStep::End(13));
        assert!(matches!(chunk_step(b"zz\r\n"), ChunkStep::Bad(_)));
        assert!(matches!(
            chunk_step(b"ffffffffffffffff\r\n"),
            ChunkStep::Bad(_)
        ));
        assert!(matches!(
            chunk_step(&[b'1'; MAX_CHUNK_LINE + 8]),
            ChunkStep::Bad(_)
        ));
    }

    #[test]
    fn upgrade_requests_are_marked() {
        let ParseOutcome::Complete(Parsed::Http(req)) = parse_http_request(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ) else {
            panic!("parses");
        };
        assert!(req.upgrade);
    }
}
