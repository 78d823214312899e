//! What a person sees of a blocked plain-HTTP request (`block_page`): instead of a bare
//! reset, the kernel forges the server's answer from a response built here — a page
//! naming what was blocked and why (403), for a Warn with a Continue link that grants
//! the bypass, or a 302 to the indicator's `redirect_url`. HTTPS keeps the reset: there
//! is no certificate to answer with.
//!
//! A Continue link carries a one-time token bound to the host and the client that was
//! warned; following it grants the bypass (through the daemon, which logs it) and
//! answers with a 302 back to the page first asked for.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    net::IpAddr,
    time::SystemTime,
};

use nprot_common::{PAGE_MAX, PageEntry};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{datapath::parse::http::HttpRequest, events::rfc3339_micros, policy::IndicatorRef};

/// The path prefix of Continue links, on the warned host itself (so that the request
/// comes through the sensor, on the same name).
pub const CONTINUE_PATH: &str = "/.nprot-continue/";
/// How long a Continue link works.
const TOKEN_LIFETIME_NS: u64 = 10 * 60 * 1_000_000_000;
/// Continue links outstanding at most; the oldest make room.
const MAX_TOKENS: usize = 4096;
/// Longest text of a name or title shown on a page.
const MAX_SHOWN: usize = 200;

/// A request the page answers, as far as the answer depends on it.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// `HTTP/1.0`, `HTTP/1.1`, or `HTTP/0.9` (no status line, no headers).
    pub version: &'a str,
    /// A HEAD request gets the head only.
    pub head_only: bool,
    /// The host asked for.
    pub host: &'a str,
    /// The path and query asked for.
    pub path: &'a str,
}

impl<'a> Asked<'a> {
    /// The parts of `req` an answer depends on, with the host it was judged by.
    pub fn of(req: &'a HttpRequest, host: &'a str) -> Asked<'a> {
        Asked {
            version: req.version,
            head_only: req.method == "HEAD",
            host,
            path: &req.path,
        }
    }
}

/// A bypass a Continue link asks for: granted by the daemon before the redirect that
/// answers the link goes out, so that the next load passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinueGrant {
    /// What was warned: the host.
    pub target: String,
    /// The client that followed the link.
    pub client: IpAddr,
}

/// An outstanding Continue link.
#[derive(Debug, Clone)]
struct Token {
    host: String,
    client: IpAddr,
    /// Where the redirect after the grant goes: the path first asked for.
    path: String,
    issued_ns: u64,
}

/// The page settings and the Continue links handed out.
#[derive(Default)]
pub struct Pages {
    /// Pages on (`block_page = "page"`); off, every block is a reset.
    pub enabled: bool,
    /// Users may bypass a Warn (`warn_bypass = "user"`): the warning page offers Continue.
    pub user_bypass: bool,
    tokens: HashMap<String, Token>,
    order: VecDeque<String>,
    rng: Option<SystemRandom>,
}

/// What a blocked request is answered with.
pub struct Answer {
    /// The response for the kernel's `PAGES` map.
    pub page: PageEntry,
    /// The bypass to grant first (a Continue link followed).
    pub grant: Option<ContinueGrant>,
}

impl Pages {
    /// The answer to a blocked request `asked` by `client` at `now_ns` (monotonic) and
    /// `wall`, decided by `indicator` (None: blocked by a setting, not an indicator).
    pub fn answer(
        &mut self,
        asked: Asked<'_>,
        client: IpAddr,
        indicator: Option<IndicatorRef<'_>>,
        warned: bool,
        now_ns: u64,
        wall: SystemTime,
    ) -> Option<Answer> {
        if !self.enabled {
            return None;
        }
        if let Some(token) = asked.path.strip_prefix(CONTINUE_PATH)
            && let Some(t) = self.redeem(token, asked.host, client, now_ns)
        {
            let location = format!("http://{}{}", t.host, t.path);
            let grant = ContinueGrant {
                target: t.host,
                client,
            };
            return Some(Answer {
                page: PageEntry::new(&redirect(asked, &location))?,
                grant: Some(grant),
            });
        }
        if let Some(url) = indicator.and_then(|i| i.redirect_url()) {
            return PageEntry::new(&redirect(asked, url)).map(|page| Answer { page, grant: None });
        }
        let link = if warned && self.user_bypass {
            self.issue(asked, client, now_ns)
                .map(|t| format!("{CONTINUE_PATH}{t}"))
        } else {
            None
        };
        let shown = Shown {
            name: format!("{}{}", asked.host, asked.path),
            title: indicator.and_then(|i| i.title()).unwrap_or("").to_owned(),
            indicator: indicator.map_or(String::new(), |i| i.id().to_owned()),
            time: rfc3339_micros(wall),
        };
        let response = page(asked, &shown, warned, link.as_deref());
        PageEntry::new(&response).map(|page| Answer { page, grant: None })
    }

    /// A new Continue link's token for `asked`, or None without a random source.
    fn issue(&mut self, asked: Asked<'_>, client: IpAddr, now_ns: u64) -> Option<String> {
        let rng = self.rng.get_or_insert_with(SystemRandom::new);
        let mut bytes = [0u8; 16];
        rng.fill(&mut bytes).ok()?;
        let mut token = String::with_capacity(32);
        for b in bytes {
            let _ = write!(token, "{b:02x}");
        }
        while self.tokens.len() >= MAX_TOKENS {
            match self.order.pop_front() {
                Some(old) => {
                    self.tokens.remove(&old);
                }
                None => break,
            }
        }
        // The path to come back to, cut where a long one would not fit the redirect.
        let path = clip(asked.path, MAX_SHOWN * 4).to_owned();
        self.tokens.insert(
            token.clone(),
            Token {
                host: asked.host.to_owned(),
                client,
                path,
                issued_ns: now_ns,
            },
        );
        self.order.push_back(token.clone());
        Some(token)
    }

    /// The token's link, once, if it was handed out for this host and client and is
    /// still fresh.
    fn redeem(&mut self, token: &str, host: &str, client: IpAddr, now_ns: u64) -> Option<Token> {
        let t = self.tokens.get(token)?;
        if t.host != host || t.client != client {
            return None;
        }
        let t = self.tokens.remove(token)?;
        self.order.retain(|o| o != token);
        (now_ns.saturating_sub(t.issued_ns) <= TOKEN_LIFETIME_NS).then_some(t)
    }
}

/// What a page shows.
struct Shown {
    name: String,
    title: String,
    indicator: String,
    time: String,
}

/// The status line and headers for `asked`, with `status` and `extra` headers; nothing
/// for HTTP/0.9, which has neither.
fn head(asked: Asked<'_>, status: &str, extra: &str, body_len: usize) -> String {
    if asked.version == "HTTP/0.9" {
        return String::new();
    }
    let version = if asked.version == "HTTP/1.0" {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    format!(
        "{version} {status}\r\n{extra}Content-Length: {body_len}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
}

/// A 302 to `location`.
fn redirect(asked: Asked<'_>, location: &str) -> Vec<u8> {
    let mut out = head(asked, "302 Found", &format!("Location: {location}\r\n"), 0);
    if asked.version == "HTTP/0.9" {
        // No headers to carry a Location: a page with the link.
        out = format!(
            "<a href=\"{}\">{}</a>\n",
            escape(location),
            escape(location)
        );
    }
    out.into_bytes()
}

/// The 403 page, cutting what it shows until it fits one forged segment.
fn page(asked: Asked<'_>, shown: &Shown, warned: bool, link: Option<&str>) -> Vec<u8> {
    let mut limit = MAX_SHOWN;
    loop {
        let body = body(shown, warned, link, limit);
        let len = if asked.head_only { 0 } else { body.len() };
        let mut out = head(
            asked,
            "403 Forbidden",
            "Content-Type: text/html; charset=utf-8\r\n",
            body.len(),
        );
        if len > 0 {
            out.push_str(&body);
        }
        if out.len() <= PAGE_MAX || limit == 0 {
            return out.into_bytes();
        }
        limit /= 2;
    }
}

fn body(shown: &Shown, warned: bool, link: Option<&str>, limit: usize) -> String {
    let name = escape(clip(&shown.name, limit));
    let title = escape(clip(&shown.title, limit));
    let indicator = escape(clip(&shown.indicator, limit));
    let (heading, what) = if warned {
        ("Warning: this site may be unsafe", "was warned about")
    } else {
        ("This site is blocked", "was blocked")
    };
    let mut b = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{heading}</title></head>\
         <body><h1>{heading}</h1><p id=\"name\"><b>{name}</b> {what} by network protection.</p>"
    );
    if !title.is_empty() {
        let _ = write!(b, "<p id=\"title\">{title}</p>");
    }
    if !indicator.is_empty() {
        let _ = write!(b, "<p>Indicator: <code>{indicator}</code></p>");
    }
    let _ = write!(b, "<p>Time: {}</p>", escape(&shown.time));
    match (warned, link) {
        (true, Some(link)) => {
            let _ = write!(
                b,
                "<p><a id=\"continue\" href=\"{}\">Continue</a> (allowed for a while; logged)</p>",
                escape(link)
            );
        }
        (true, None) => b.push_str("<p>To continue, ask an administrator.</p>"),
        _ => {}
    }
    b.push_str("</body></html>\n");
    b
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Text for HTML: the five characters that could end an element or attribute escaped.
/// Hand-written: five replacements, not worth a crate.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked<'a>(version: &'a str, path: &'a str) -> Asked<'a> {
        Asked {
            version,
            head_only: false,
            host: "blocked.test",
            path,
        }
    }

    fn text(page: &PageEntry) -> String {
        String::from_utf8_lossy(&page.bytes[..page.len as usize]).into_owned()
    }

    fn pages() -> Pages {
        Pages {
            enabled: true,
            user_bypass: true,
            ..Pages::default()
        }
    }

    fn ask(p: &mut Pages, a: Asked<'_>, client: IpAddr, warned: bool, now: u64) -> Answer {
        p.answer(a, client, None, warned, now, SystemTime::UNIX_EPOCH)
            .unwrap()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 2));

    #[test]
    fn a_block_page_names_what_and_says_how_long_it_is() {
        let a = ask(&mut pages(), asked("HTTP/1.1", "/x?<y>"), CLIENT, false, 0);
        let t = text(&a.page);
        assert!(t.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{t}");
        assert!(t.contains("Connection: close\r\n"), "{t}");
        assert!(t.contains("blocked.test/x?&lt;y&gt;"), "{t}");
        let (head, body) = t.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{t}"
        );
        assert!(a.grant.is_none());
        // The page's checksum part is the sum of its words.
        assert_eq!(a.page.sum, PageEntry::new(t.as_bytes()).unwrap().sum);
    }

    #[test]
    fn http_1_0_and_head_and_0_9_get_what_they_understand() {
        let mut p = pages();
        let t = text(&ask(&mut p, asked("HTTP/1.0", "/"), CLIENT, false, 0).page);
        assert!(t.starts_with("HTTP/1.0 403 Forbidden\r\n"), "{t}");
        let head = Asked {
            head_only: true,
            ..asked("HTTP/1.1", "/")
        };
        let t = text(&ask(&mut p, head, CLIENT, false, 0).page);
        assert!(t.ends_with("\r\n\r\n") && !t.contains("<html>"), "{t}");
        let t = text(&ask(&mut p, asked("HTTP/0.9", "/"), CLIENT, false, 0).page);
        assert!(t.starts_with("<!doctype html>"), "{t}");
    }

    #[test]
    fn a_long_name_is_cut_to_fit_one_segment() {
        let long = format!("/{}", "a".repeat(5000));
        let a = ask(&mut pages(), asked("HTTP/1.1", &long), CLIENT, false, 0);
        assert!(a.page.len as usize <= PAGE_MAX);
    }

    #[test]
    fn a_continue_link_works_once_for_its_host_and_client() {
        let mut p = pages();
        let warned = ask(&mut p, asked("HTTP/1.1", "/start"), CLIENT, true, 0);
        let t = text(&warned.page);
        let link = t
            .split("href=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned();
        assert!(link.starts_with(CONTINUE_PATH), "{t}");
        // Another client cannot use it.
        let other: IpAddr = "198.18.0.9".parse().unwrap();
        let a = ask(&mut p, asked("HTTP/1.1", &link), other, true, 1);
        assert!(a.grant.is_none());
        let a = ask(&mut p, asked("HTTP/1.1", &link), CLIENT, true, 1);
        assert_eq!(
            a.grant,
            Some(ContinueGrant {
                target: "blocked.test".into(),
                client: CLIENT
            })
        );
        let t = text(&a.page);
        assert!(
            t.starts_with("HTTP/1.1 302 Found\r\nLocation: http://blocked.test/start\r\n"),
            "{t}"
        );
        // Once only.
        let a = ask(&mut p, asked("HTTP/1.1", &link), CLIENT, true, 2);
        assert!(a.grant.is_none());
    }

    #[test]
    fn without_user_bypass_a_warning_offers_no_link() {
        let mut p = Pages {
            user_bypass: false,
            ..pages()
        };
        let t = text(&ask(&mut p, asked("HTTP/1.1", "/"), CLIENT, true, 0).page);
        assert!(
            !t.contains(CONTINUE_PATH) && t.contains("ask an administrator"),
            "{t}"
        );
    }

    #[test]
    fn an_expired_link_grants_nothing() {
        let mut p = pages();
        let token = p.issue(asked("HTTP/1.1", "/"), CLIENT, 0).unwrap();
        let link = format!("{CONTINUE_PATH}{token}");
        let a = ask(
            &mut p,
            asked("HTTP/1.1", &link),
            CLIENT,
            true,
            TOKEN_LIFETIME_NS + 1,
        );
        assert!(a.grant.is_none());
    }
}
