//! The compact indicator store: 10^6 indicators as owned structs with half a dozen heap
//! strings each would take ~300 MiB, so [`Indicators`] keeps one fixed-size record per
//! indicator and all their text in a single arena, and hands out [`IndicatorRef`] views.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt::{self, Write as _},
    time::SystemTime,
};

use serde::{Serialize, Serializer, ser::SerializeStruct};

use super::{
    indicator::{
        Action, Indicator, IndicatorType, Severity, WireOut, check_process, clip, derived_hash,
    },
    loading::IndicatorError,
    targets::{IpNet, ParsedTarget, Target, canonical_path},
};
use crate::time::{self, Timestamp};

/// Limit on every text field of an indicator (ids, values, titles, descriptions).
pub const MAX_TEXT: usize = u16::MAX as usize;
/// Limit on the number of indicators in one set (indexes are `u32` with a tag bit).
pub const MAX_INDICATORS: usize = 1 << 30;
const NO_EXPIRY: u32 = u32::MAX;

const F_ALERT: u8 = 1;
const F_HTTPS: u8 = 2;
const F_TITLE: u8 = 4;
const F_DESC: u8 = 8;
const F_CANON_APPENDED: u8 = 16;
const F_DERIVED_ID: u8 = 32;
const F_EXTRA: u8 = 64;

/// What few indicators carry, kept beside the records (by their text offset) rather than
/// in each of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Extra {
    redirect_url: Option<Box<str>>,
    bypass_duration_s: Option<u32>,
}

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
    /// [`Extra`]s of the records flagged [`F_EXTRA`], by the record's `off`.
    extras: HashMap<usize, Extra>,
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
            extras: HashMap::new(),
        }
    }
}

/// The parts of an indicator being added to a store.
pub(super) struct Parts<'a> {
    pub(super) id: Option<&'a str>,
    pub(super) value: &'a str,
    pub(super) target: &'a ParsedTarget<'a>,
    pub(super) action: Action,
    pub(super) expiration: Option<Timestamp>,
    pub(super) title: Option<&'a str>,
    pub(super) description: Option<&'a str>,
    pub(super) severity: Option<Severity>,
    pub(super) device_groups: &'a [&'a str],
    pub(super) generate_alert: bool,
    pub(super) process: Option<&'a str>,
    pub(super) redirect_url: Option<&'a str>,
    pub(super) bypass_duration_s: Option<u32>,
}

/// Longest `redirect_url`: the 302 that carries it must fit one forged segment.
pub const MAX_REDIRECT_URL: usize = 1024;

/// A `redirect_url` must be an absolute http(s) URL that can go into a `Location` header
/// as it is: no spaces or control characters, not too long for the forged answer.
fn check_redirect_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_REDIRECT_URL {
        return Err(format!(
            "redirect_url is too long ({} bytes, at most {MAX_REDIRECT_URL})",
            url.len()
        ));
    }
    if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "redirect_url {url:?} holds a space or a control character"
        ));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("redirect_url {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(format!(
            "redirect_url {url:?} is not an absolute http:// or https:// URL"
        ));
    }
    Ok(())
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
            redirect_url: indicator.redirect_url.as_deref(),
            bypass_duration_s: indicator.bypass_duration_s,
        })
        .map_err(|reason| IndicatorError::Invalid {
            value: clip(&indicator.value),
            reason,
        })
    }

    pub(super) fn push_parts(&mut self, p: &Parts<'_>) -> Result<(), String> {
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
        if let Some(url) = p.redirect_url {
            check_redirect_url(url)?;
        }
        let groups = self.intern_groups(p.device_groups)?;
        let process = self.intern_process(p.process)?;

        let off = self.text.len();
        let id_len = if let Some(id) = p.id {
            let len = text_len("id", id)?;
            self.text.push_str(id);
            len
        } else {
            // Writing into a String cannot fail.
            let _ = write!(
                self.text,
                "ind-{:016x}",
                derived_hash(p.target, p.action, p.device_groups, p.process)
            );
            20
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
        let canon_rel = if let Some(i) = found.and_then(|i| u16::try_from(i).ok()) {
            i
        } else {
            flags |= F_CANON_APPENDED;
            self.text.push_str(host);
            self.text.push_str(path);
            value_len
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
        if p.redirect_url.is_some() || p.bypass_duration_s.is_some() {
            flags |= F_EXTRA;
            let extra = Extra {
                redirect_url: p.redirect_url.map(Box::from),
                bypass_duration_s: p.bypass_duration_s,
            };
            self.extras.insert(off, extra);
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
        let first_gone_off = first_gone.off;
        self.records.truncate(len);
        self.extras.retain(|off, _| *off < first_gone_off);
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
    pub(super) index: u32,
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

    fn extra(&self) -> Option<&'a Extra> {
        let r = self.rec();
        if r.flags & F_EXTRA == 0 {
            return None;
        }
        self.set.extras.get(&r.off)
    }

    /// Where a blocked plain-HTTP request is redirected instead of shown the page.
    pub fn redirect_url(&self) -> Option<&'a str> {
        self.extra().and_then(|e| e.redirect_url.as_deref())
    }

    /// How long a user's bypass of this Warn indicator lasts, if it says.
    pub fn bypass_duration_s(&self) -> Option<u32> {
        self.extra().and_then(|e| e.bypass_duration_s)
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
            redirect_url: self.redirect_url().map(str::to_string),
            bypass_duration_s: self.bypass_duration_s(),
        }
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
            redirect_url: self.redirect_url(),
            bypass_duration_s: self.bypass_duration_s(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{load_json, loading::tests::load};
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
}
