//! The indicator itself: its type, action and severity names, the owned [`Indicator`],
//! derived ids and the process scope check, and the JSON form it is written in.

use std::{
    fmt::{self, Write as _},
    str::FromStr,
    time::SystemTime,
};

use serde::{Deserialize, Serialize, Serializer};

use super::targets::ParsedTarget;
// Paths from before the split of this module (`policy::indicator::Indicators`, …).
pub use super::{
    loading::{IndicatorError, Loaded, load_file, load_json},
    store::{IndicatorRef, Indicators},
    targets::{IpNet, Target},
};
use crate::time;

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

/// FNV-1a 64 over everything written to it.
pub(super) struct Fnv(pub(super) u64);

pub(super) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
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
pub(super) fn derived_hash<S: AsRef<str>>(
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
    /// Block and Warn: a blocked plain-HTTP request is redirected here (302) instead of
    /// shown the page.
    pub redirect_url: Option<String>,
    /// Warn: how long a user's bypass lasts (seconds); unset, a day.
    pub bypass_duration_s: Option<u32>,
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
            redirect_url: None,
            bypass_duration_s: None,
        })
    }

    /// Whether the indicator has expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expiration.is_some_and(|e| e <= now)
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

/// An indicator as written in the JSON file format.
#[derive(Serialize)]
pub(super) struct WireOut<'a> {
    pub(super) id: &'a str,
    #[serde(rename = "type")]
    pub(super) kind: IndicatorType,
    pub(super) value: &'a str,
    pub(super) action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) expiration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) severity: Option<Severity>,
    #[serde(skip_serializing_if = "is_empty_list")]
    pub(super) device_groups: &'a [String],
    #[serde(skip_serializing_if = "is_false")]
    pub(super) generate_alert: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) process: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) redirect_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) bypass_duration_s: Option<u32>,
}

fn is_empty_list(v: &&[String]) -> bool {
    v.is_empty()
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
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
            redirect_url: self.redirect_url.as_deref(),
            bypass_duration_s: self.bypass_duration_s,
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::loading::tests::load;
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
}
