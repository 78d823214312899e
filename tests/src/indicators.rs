//! Indicator files for the sensor's `--indicators` option (DESIGN §3, §5).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// An indicator object with `id`, `type` (IpAddress | DomainName | Url), `value` and
/// `action` (Allowed | Audit | Warn | Block). Add optional fields with [`with`].
pub fn indicator(id: &str, kind: &str, value: &str, action: &str) -> Value {
    json!({ "id": id, "type": kind, "value": value, "action": action })
}

/// `indicator` with the extra field `key` set to `value` (e.g. `title`, `expiration`).
pub fn with(mut indicator: Value, key: &str, value: impl Into<Value>) -> Value {
    indicator[key] = value.into();
    indicator
}

/// Writes `{"indicators": [...]}` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, indicators: &[Value]) -> Result<PathBuf> {
    let text = serde_json::to_string_pretty(&json!({ "indicators": indicators }))
        .context("cannot serialise indicators")?;
    write_raw(dir, name, &text)
}

/// Writes `text` verbatim (for malformed files) to `dir/name` and returns the path.
pub fn write_raw(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
