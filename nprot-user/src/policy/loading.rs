//! Loading indicator files: the JSON format streamed straight into an [`Indicators`]
//! store (all or nothing, with warnings), and [`IndicatorError`], which names the file,
//! the entry and, for JSON errors, the line and column.

use std::{
    borrow::Cow,
    fmt::{self, Write as _},
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    str::FromStr,
    time::SystemTime,
};

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor},
};

use super::{
    indicator::{Action, FNV_OFFSET, Fnv, IndicatorType, Severity, clip},
    store::{Indicators, Parts},
    targets::ParsedTarget,
};
use crate::time::{self, Timestamp};

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

/// Warnings kept by one load; the rest are counted in a final line.
const MAX_WARNINGS: usize = 100;

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
    #[serde(borrow, default)]
    redirect_url: Option<Str<'a>>,
    #[serde(default)]
    bypass_duration_s: Option<u32>,
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
                redirect_url: raw.redirect_url.as_ref().map(|s| &*s.0),
                bypass_duration_s: raw.bypass_duration_s,
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
    #[allow(
        clippy::needless_pass_by_value,
        reason = "takes the error it turns into ours"
    )]
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
pub(crate) mod tests {
    use super::*;
    use crate::policy::Target;

    pub(crate) fn file(entries: &[&str]) -> String {
        format!("{{\"indicators\":[{}]}}", entries.join(","))
    }

    pub(crate) fn load(entries: &[&str]) -> Result<Loaded, IndicatorError> {
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
        let e = load_json(r"{}").unwrap_err().to_string();
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

    /// `redirect_url` and `bypass_duration_s` load, list back as written, and a
    /// `redirect_url` that is not an absolute http(s) URL fit for a header is refused.
    #[test]
    fn redirect_url_and_bypass_duration_load_and_round_trip() {
        let l = load(&[
            r#"{"id":"r","type":"DomainName","value":"a.example","action":"Block","redirect_url":"https://portal.example/blocked?x=1"}"#,
            r#"{"id":"w","type":"DomainName","value":"w.example","action":"Warn","bypass_duration_s":3600}"#,
            OK,
        ])
        .unwrap();
        let set = &l.indicators;
        let (r, w) = (set.get(0).unwrap(), set.get(1).unwrap());
        assert_eq!(r.redirect_url(), Some("https://portal.example/blocked?x=1"));
        assert_eq!(w.bypass_duration_s(), Some(3600));
        assert_eq!(set.get(2).unwrap().redirect_url(), None);
        let json = serde_json::to_string(set).unwrap();
        let again = load_json(&json).unwrap().indicators;
        assert_eq!(again.get(0).unwrap().redirect_url(), r.redirect_url());
        assert_eq!(again.get(1).unwrap().bypass_duration_s(), Some(3600));
        assert_eq!(again.get(0).unwrap().to_indicator(), r.to_indicator());
        for bad in [
            "portal.example/x",
            "ftp://portal.example/",
            "http://portal.example/a b",
            "http://portal.example/\\r\\nSet-Cookie: x",
        ] {
            let entry = format!(
                r#"{{"type":"DomainName","value":"a.example","action":"Block","redirect_url":"{bad}"}}"#
            );
            let e = load(&[&entry]).unwrap_err().to_string();
            assert!(e.contains("redirect_url"), "{bad}: {e}");
        }
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
