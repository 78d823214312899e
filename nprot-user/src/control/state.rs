//! State: what the operator changed at run time (mode, indicators added or imported
//! through the control socket), persisted atomically in the state directory so that the
//! sensor comes back the same after a restart.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};
use thiserror::Error;

use crate::{
    mode::Mode,
    policy::{Indicator, IndicatorError, Indicators, load_json},
};

/// The state file inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// Why the state could not be read or written.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    /// The file could not be read or written.
    Io {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid state: {reason}")]
    /// The file is not state nprot wrote.
    Invalid {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    #[error("{path}: {source}")]
    /// The indicators the state holds are not valid.
    Indicators {
        /// The state file.
        path: PathBuf,
        /// What is wrong with them.
        #[source]
        source: IndicatorError,
    },
}

/// What [`State::upsert`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upserted {
    /// Indicators whose id was new.
    pub added: usize,
    /// Ids of indicators that replaced one with the same id, in order.
    pub replaced: Vec<String>,
    /// Indicators identical to the one already there (re-importing an export).
    pub unchanged: usize,
}

/// The operator's run-time changes.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The mode last set through the control socket, if any.
    pub mode: Option<Mode>,
    /// Indicators added or imported through the control socket.
    pub indicators: Vec<Indicator>,
}

impl State {
    /// Reads `dir/state.json`; a missing file is an empty state.
    pub fn load(dir: &Path) -> Result<State, StateError> {
        let path = dir.join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let invalid = |reason: String| StateError::Invalid {
            path: path.clone(),
            reason,
        };
        let value: Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let mode = match value.get("mode") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) => Some(m.parse::<Mode>().map_err(invalid)?),
            Some(other) => return Err(invalid(format!("mode must be a string, not {other}"))),
        };
        let list = value.get("indicators").cloned().unwrap_or(json!([]));
        let loaded = load_json(&json!({ "indicators": list }).to_string()).map_err(|source| {
            StateError::Indicators {
                path: path.clone(),
                source,
            }
        })?;
        Ok(State {
            mode,
            indicators: loaded.indicators.iter().map(|i| i.to_indicator()).collect(),
        })
    }

    /// Writes `dir/state.json` atomically ([`write_atomic`]).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let body = json!({
            "mode": self.mode.map(Mode::as_str),
            "indicators": self.indicators,
        });
        let body = serde_json::to_string_pretty(&body).unwrap_or_default();
        write_atomic(dir, STATE_FILE, body.as_bytes())
            .map_err(|(path, source)| StateError::Io { path, source })
    }

    /// Adds or replaces (by id) `new` indicators; says which ids replaced one already
    /// there, so that a replacement is never silent.
    pub fn upsert(&mut self, new: Vec<Indicator>) -> Upserted {
        let mut done = Upserted::default();
        for ind in new {
            match self.indicators.iter_mut().find(|i| i.id == ind.id) {
                Some(old) if *old == ind => done.unchanged += 1,
                Some(old) => {
                    done.replaced.push(ind.id.clone());
                    *old = ind;
                }
                None => {
                    self.indicators.push(ind);
                    done.added += 1;
                }
            }
        }
        done
    }

    /// Removes the indicators with these ids; returns the ids that were not there.
    pub fn remove(&mut self, ids: &[String]) -> Vec<String> {
        let missing = ids
            .iter()
            .filter(|id| !self.indicators.iter().any(|i| &i.id == *id))
            .cloned()
            .collect();
        self.indicators.retain(|i| !ids.contains(&i.id));
        missing
    }

    /// The file indicators plus this state's, as one set for the policy.
    pub fn merged(&self, files: Indicators) -> Result<Indicators, IndicatorError> {
        let mut all = files;
        for ind in &self.indicators {
            all.push(ind)?;
        }
        Ok(all)
    }
}

/// Writes `dir/name` atomically: a temporary file, fsync, rename, fsync of the
/// directory. A crash leaves either the old file or the new one, never half. An error
/// names the path it happened on.
pub fn write_atomic(dir: &Path, name: &str, body: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    let at = |path: &Path| {
        let path = path.to_owned();
        move |e| (path, e)
    };
    fs::create_dir_all(dir).map_err(at(dir))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = fs::File::create(&tmp).map_err(at(&tmp))?;
    file.write_all(body)
        .and_then(|()| file.sync_all())
        .map_err(at(&tmp))?;
    fs::rename(&tmp, &path).map_err(at(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, IndicatorType};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nprot-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_missing_file() {
        let d = dir("rt");
        assert!(State::load(&d).unwrap().indicators.is_empty());
        let mut s = State {
            mode: Some(Mode::Block),
            ..State::default()
        };
        let ind = Indicator::new(IndicatorType::DomainName, "bad.example", Action::Block).unwrap();
        let done = s.upsert(vec![ind.clone(), ind.clone()]);
        assert_eq!((done.added, done.unchanged), (1, 1));
        let mut renamed = ind.clone();
        renamed.title = Some("new title".into());
        let done = s.upsert(vec![renamed]);
        assert_eq!(done.replaced, vec![ind.id.clone()]);
        s.save(&d).unwrap();
        let back = State::load(&d).unwrap();
        assert_eq!(back.mode, Some(Mode::Block));
        assert_eq!(back.indicators.len(), 1);
        assert_eq!(back.indicators[0].value, "bad.example");
        let id = back.indicators[0].id.clone();
        let mut back = back;
        assert_eq!(back.remove(&[id, "nope".into()]), vec!["nope".to_owned()]);
        assert!(back.indicators.is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let d = dir("bad");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(STATE_FILE), "{\"mode\": \"fast\"}").unwrap();
        let err = State::load(&d).unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("unknown mode"),
            "{err}"
        );
        let _ = fs::remove_dir_all(&d);
    }
}
