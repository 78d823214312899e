//! The fleet's policy bucket as a sensor sees it: the key layout, what an entry means,
//! and the entries a sensor applied (persisted, so that a restart while NATS is away
//! still enforces them).
//!
//! Keys of the `nprot-policy` key-value bucket:
//! - `ind.<group>.<id>` — one indicator (the indicator file's JSON object) for the
//!   device group `<group>`, or for every sensor with the group `all`;
//! - `mode.<group>` — `disabled`, `audit` or `block` for the sensors of `<group>` (`all`:
//!   every sensor).
//!
//! Groups and ids in keys are tokens of `[A-Za-z0-9_-]` (what NATS allows in a key
//! token, less the `=` and `/` it also allows, which would make keys ambiguous to read).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::{
    control::state::write_atomic,
    mode::Mode,
    policy::{Indicator, load_json},
};

/// The key-value bucket of indicators and modes.
pub const POLICY_BUCKET: &str = "nprot-policy";
/// The key-value bucket of heartbeats, one key per sensor.
pub const STATUS_BUCKET: &str = "nprot-status";
/// The JetStream stream of every sensor's events.
pub const EVENTS_STREAM: &str = "NPROT_EVENTS";
/// Events of device `D` are published to `nprot.events.D`.
pub const EVENTS_SUBJECT: &str = "nprot.events";
/// The group every sensor is in.
pub const ALL: &str = "all";
/// Where a sensor keeps the fleet policy it applied, in its state directory.
pub const FLEET_FILE: &str = "fleet.json";

/// A key of the policy bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `ind.<group>.<id>`.
    Indicator {
        /// The device group (or [`ALL`]).
        group: String,
        /// The indicator's id.
        id: String,
    },
    /// `mode.<group>`.
    Mode {
        /// The device group (or [`ALL`]).
        group: String,
    },
}

impl Key {
    /// Reads a bucket key.
    pub fn parse(key: &str) -> Result<Key, String> {
        let parts: Vec<&str> = key.split('.').collect();
        match parts.as_slice() {
            ["ind", group, id] => {
                check_token("group", group)?;
                check_token("id", id)?;
                Ok(Key::Indicator {
                    group: (*group).to_owned(),
                    id: (*id).to_owned(),
                })
            }
            ["mode", group] => {
                check_token("group", group)?;
                Ok(Key::Mode {
                    group: (*group).to_owned(),
                })
            }
            _ => Err("not an nprot policy key (ind.<group>.<id> or mode.<group>)".into()),
        }
    }

    /// The key of indicator `id` for `group`; an error names a bad token.
    pub fn indicator(group: &str, id: &str) -> Result<String, String> {
        check_token("group", group)?;
        check_token("id", id)?;
        Ok(format!("ind.{group}.{id}"))
    }

    /// The key of the mode of `group`.
    pub fn mode(group: &str) -> Result<String, String> {
        check_token("group", group)?;
        Ok(format!("mode.{group}"))
    }

    /// The group the key is for.
    pub fn group(&self) -> &str {
        match self {
            Key::Indicator { group, .. } | Key::Mode { group } => group,
        }
    }

    /// Whether it applies to a sensor in `groups`.
    pub fn applies_to(&self, groups: &[String]) -> bool {
        let g = self.group();
        g == ALL || groups.iter().any(|mine| mine == g)
    }
}

/// A device group or indicator id usable in a key.
pub fn check_token(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("empty {what}"));
    }
    if s.len() > 128 {
        return Err(format!("{what} longer than 128 bytes"));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        Some(c) => Err(format!(
            "{what} {s:?} has {c:?}: fleet keys take letters, digits, '-' and '_'"
        )),
        None => Ok(()),
    }
}

/// What an entry of the bucket says.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// An indicator, scoped to its key's group.
    Indicator(Box<Indicator>),
    /// The mode of a group.
    Mode(Mode),
}

/// Reads the value stored under `key`.
pub fn parse_entry(key: &Key, value: &[u8]) -> Result<Entry, String> {
    let text = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_owned())?;
    match key {
        Key::Mode { .. } => {
            // A bare word, or a JSON string.
            let word = match serde_json::from_str::<Value>(text) {
                Ok(Value::String(s)) => s,
                _ => text.trim().to_owned(),
            };
            word.parse().map(Entry::Mode)
        }
        Key::Indicator { group, id } => {
            let mut object: Value =
                serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
            let Some(fields) = object.as_object_mut() else {
                return Err("an indicator must be a JSON object".into());
            };
            match fields.get("id") {
                None => {
                    fields.insert("id".into(), Value::String(id.clone()));
                }
                Some(Value::String(given)) if given == id => {}
                Some(other) => {
                    return Err(format!("id {other} differs from the key's id {id:?}"));
                }
            }
            // The key scopes the indicator; groups of its own would contradict it.
            match fields.get("device_groups") {
                None => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(Value::Array(a)) if group != ALL && a.len() == 1 && a[0] == **group => {}
                Some(other) => {
                    return Err(format!(
                        "device_groups {other} contradicts the key's group {group:?}"
                    ));
                }
            }
            if group != ALL {
                fields.insert("device_groups".into(), Value::from(vec![group.clone()]));
            }
            let loaded = load_json(&serde_json::json!({ "indicators": [object] }).to_string())
                .map_err(|e| e.to_string())?;
            match loaded.indicators.iter().next() {
                Some(ind) if loaded.indicators.len() == 1 => {
                    Ok(Entry::Indicator(Box::new(ind.to_indicator())))
                }
                _ => Err("expected exactly one indicator".into()),
            }
        }
    }
}

/// A change seen in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `key` now holds `value`.
    Put {
        /// The key.
        key: String,
        /// Its value.
        value: Vec<u8>,
        /// The bucket's revision of this change.
        revision: u64,
    },
    /// `key` was deleted or purged.
    Delete {
        /// The key.
        key: String,
        /// The bucket's revision of this change.
        revision: u64,
    },
}

impl Change {
    /// The bucket's revision of the change.
    pub fn revision(&self) -> u64 {
        match self {
            Change::Put { revision, .. } | Change::Delete { revision, .. } => *revision,
        }
    }
}

/// An entry applied: its raw value (persisted) and what it says.
#[derive(Debug, Clone)]
struct Applied {
    raw: String,
    entry: Entry,
}

/// The fleet policy a sensor applied: the last good value of every key that applies to
/// it, the bucket revision it has seen up to, and the keys whose latest value it refused.
#[derive(Debug, Clone, Default)]
pub struct FleetPolicy {
    groups: Vec<String>,
    entries: BTreeMap<String, Applied>,
    revision: u64,
    refused: BTreeMap<String, String>,
}

/// What the sensor persists of its fleet policy ([`FLEET_FILE`]).
#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    revision: u64,
    entries: BTreeMap<String, String>,
}

/// Why the persisted fleet policy could not be read or written.
#[derive(Debug, Error)]
#[error("{path}: {reason}")]
pub struct FleetFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

impl FleetPolicy {
    /// An empty policy for a sensor in `groups`.
    pub fn new(groups: &[String]) -> FleetPolicy {
        FleetPolicy {
            groups: groups.to_vec(),
            ..FleetPolicy::default()
        }
    }

    /// Applies changes in order; returns whether anything in force changed. A value
    /// that cannot be read is refused (listed in [`FleetPolicy::refused`]) and the key
    /// keeps its last good value.
    pub fn apply(&mut self, changes: &[Change]) -> bool {
        let mut changed = false;
        for change in changes {
            self.revision = self.revision.max(change.revision());
            let key = match change {
                Change::Put { key, .. } | Change::Delete { key, .. } => key,
            };
            let parsed = match Key::parse(key) {
                Ok(k) => k,
                Err(e) => {
                    self.refused.insert(key.clone(), e);
                    continue;
                }
            };
            if !parsed.applies_to(&self.groups) {
                continue;
            }
            match change {
                Change::Delete { .. } => {
                    self.refused.remove(key);
                    changed |= self.entries.remove(key).is_some();
                }
                Change::Put { value, .. } => match parse_entry(&parsed, value) {
                    Ok(entry) => {
                        self.refused.remove(key);
                        let raw = String::from_utf8_lossy(value).into_owned();
                        if self.entries.get(key).is_none_or(|a| a.raw != raw) {
                            self.entries.insert(key.clone(), Applied { raw, entry });
                            changed = true;
                        }
                    }
                    Err(e) => {
                        self.refused.insert(key.clone(), e);
                    }
                },
            }
        }
        changed
    }

    /// Replaces everything with a full snapshot of the bucket (every live key) at
    /// `revision`: keys gone from it are removed. Returns whether anything changed.
    pub fn replace(&mut self, snapshot: &[Change], revision: u64) -> bool {
        let live: std::collections::BTreeSet<&str> = snapshot
            .iter()
            .filter_map(|c| match c {
                Change::Put { key, .. } => Some(key.as_str()),
                Change::Delete { .. } => None,
            })
            .collect();
        let before = self.entries.len();
        self.entries.retain(|k, _| live.contains(k.as_str()));
        self.refused.retain(|k, _| live.contains(k.as_str()));
        let mut changed = self.entries.len() != before;
        changed |= self.apply(snapshot);
        self.revision = self.revision.max(revision);
        changed
    }

    /// Refuses the entry of `key` after all (it conflicts with the rest of the policy):
    /// it leaves the policy and is listed in [`FleetPolicy::refused`].
    pub fn refuse(&mut self, key: &str, reason: String) {
        self.entries.remove(key);
        self.refused.insert(key.to_owned(), reason);
    }

    /// The indicators in force, with their keys.
    pub fn indicators(&self) -> impl Iterator<Item = (&str, &Indicator)> + '_ {
        self.entries.iter().filter_map(|(k, a)| match &a.entry {
            Entry::Indicator(i) => Some((k.as_str(), &**i)),
            Entry::Mode(_) => None,
        })
    }

    /// The mode the fleet sets for this sensor, and the key that sets it: a group's own
    /// mode over `all`'s; among several groups of the sensor, the strictest.
    pub fn mode(&self) -> Option<(Mode, &str)> {
        let mut best: Option<(Mode, &str, bool)> = None;
        for (k, a) in &self.entries {
            let Entry::Mode(mode) = a.entry else {
                continue;
            };
            let specific = !k.ends_with(&format!(".{ALL}"));
            let better = match best {
                None => true,
                Some((m, _, s)) => {
                    (specific && !s) || (specific == s && strictness(mode) > strictness(m))
                }
            };
            if better {
                best = Some((mode, k.as_str(), specific));
            }
        }
        best.map(|(m, k, _)| (m, k))
    }

    /// The bucket revision seen so far.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Keys whose latest value was refused, with why.
    pub fn refused(&self) -> &BTreeMap<String, String> {
        &self.refused
    }

    /// Keys in force.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is in force.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads `dir/fleet.json` for a sensor in `groups`; a missing file is an empty
    /// policy. Every entry is read again as if it came from the bucket.
    pub fn load(dir: &Path, groups: &[String]) -> Result<FleetPolicy, FleetFileError> {
        let path = dir.join(FLEET_FILE);
        let err = |reason: String| FleetFileError {
            path: path.clone(),
            reason,
        };
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FleetPolicy::new(groups));
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let p: Persisted = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut policy = FleetPolicy::new(groups);
        let changes: Vec<Change> = p
            .entries
            .into_iter()
            .map(|(key, value)| Change::Put {
                key,
                value: value.into_bytes(),
                revision: 0,
            })
            .collect();
        policy.apply(&changes);
        if let Some((key, reason)) = policy.refused.iter().next() {
            return Err(err(format!("entry {key}: {reason}")));
        }
        policy.revision = p.revision;
        Ok(policy)
    }

    /// Writes `dir/fleet.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), FleetFileError> {
        let p = Persisted {
            revision: self.revision,
            entries: self
                .entries
                .iter()
                .map(|(k, a)| (k.clone(), a.raw.clone()))
                .collect(),
        };
        let body = serde_json::to_vec_pretty(&p).unwrap_or_default();
        write_atomic(dir, FLEET_FILE, &body).map_err(|(path, e)| FleetFileError {
            path,
            reason: e.to_string(),
        })
    }
}

/// Block > Audit > Disabled.
fn strictness(mode: Mode) -> u8 {
    match mode {
        Mode::Disabled => 0,
        Mode::Audit => 1,
        Mode::Block => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Action;

    fn put(key: &str, value: &str, revision: u64) -> Change {
        Change::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            revision,
        }
    }

    #[test]
    fn keys_are_read_and_checked() {
        assert_eq!(
            Key::parse("ind.lab.c2-1"),
            Ok(Key::Indicator {
                group: "lab".into(),
                id: "c2-1".into()
            })
        );
        assert_eq!(
            Key::parse("mode.all"),
            Ok(Key::Mode {
                group: "all".into()
            })
        );
        assert!(Key::parse("ind.lab").is_err());
        assert!(Key::parse("other.x").is_err());
        let e = Key::indicator("my group", "x").unwrap_err();
        assert!(e.contains("group \"my group\" has ' '"), "{e}");
    }

    #[test]
    fn an_indicator_entry_is_scoped_to_its_group() {
        let key = Key::parse("ind.lab.c2").unwrap();
        let Entry::Indicator(i) = parse_entry(
            &key,
            br#"{"type":"DomainName","value":"c2.example","action":"Block"}"#,
        )
        .unwrap() else {
            panic!("not an indicator");
        };
        assert_eq!(i.id, "c2");
        assert_eq!(i.action, Action::Block);
        assert_eq!(i.device_groups, vec!["lab".to_string()]);
        let all = Key::parse("ind.all.c2").unwrap();
        let Entry::Indicator(i) = parse_entry(
            &all,
            br#"{"type":"DomainName","value":"c2.example","action":"Block"}"#,
        )
        .unwrap() else {
            panic!("not an indicator");
        };
        assert!(i.device_groups.is_empty());
        for (value, why) in [
            (&br#"{"id":"other","type":"DomainName","value":"a.example","action":"Block"}"#[..], "differs"),
            (br#"{"type":"DomainName","value":"a.example","action":"Block","device_groups":["x"]}"#, "contradicts"),
            (br#"{"type":"DomainName","value":"","action":"Block"}"#, "empty"),
            (b"not json", "not JSON"),
        ] {
            let e = parse_entry(&key, value).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn a_bad_value_keeps_the_last_good_one_and_is_reported_by_key() {
        let mut p = FleetPolicy::new(&["lab".into()]);
        let good = r#"{"type":"DomainName","value":"c2.example","action":"Block"}"#;
        assert!(p.apply(&[put("ind.lab.c2", good, 3), put("ind.other.x", good, 4)]));
        assert_eq!(
            p.indicators().count(),
            1,
            "other groups' entries are not kept"
        );
        assert!(!p.apply(&[put("ind.lab.c2", "{garbage", 5)]));
        assert_eq!(p.indicators().count(), 1);
        assert!(p.refused()["ind.lab.c2"].contains("not JSON"));
        assert_eq!(p.revision(), 5);
        assert!(p.apply(&[Change::Delete {
            key: "ind.lab.c2".into(),
            revision: 6
        }]));
        assert!(p.is_empty());
        assert!(p.refused().is_empty());
    }

    #[test]
    fn a_groups_mode_wins_over_all_and_the_strictest_group_wins() {
        let mut p = FleetPolicy::new(&["lab".into(), "pilot".into()]);
        assert_eq!(p.mode(), None);
        p.apply(&[put("mode.all", "block", 1)]);
        assert_eq!(p.mode(), Some((Mode::Block, "mode.all")));
        p.apply(&[put("mode.pilot", "audit", 2)]);
        assert_eq!(p.mode(), Some((Mode::Audit, "mode.pilot")));
        p.apply(&[put("mode.lab", "\"block\"", 3)]);
        assert_eq!(p.mode(), Some((Mode::Block, "mode.lab")));
    }

    #[test]
    fn a_snapshot_removes_keys_gone_and_the_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("nprot-fleet-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let good = r#"{"type":"DomainName","value":"c2.example","action":"Block"}"#;
        let mut p = FleetPolicy::new(&[]);
        p.apply(&[put("ind.all.a", good, 1), put("ind.all.b", good, 2)]);
        assert!(p.replace(&[put("ind.all.b", good, 2)], 9));
        assert_eq!(p.len(), 1);
        p.save(&dir).unwrap();
        let back = FleetPolicy::load(&dir, &[]).unwrap();
        assert_eq!(back.revision(), 9);
        assert_eq!(
            back.indicators().map(|(k, _)| k).collect::<Vec<_>>(),
            ["ind.all.b"]
        );
        fs::write(dir.join(FLEET_FILE), "{").unwrap();
        let e = FleetPolicy::load(&dir, &[]).unwrap_err();
        assert!(e.to_string().contains("fleet.json"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
