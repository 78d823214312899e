//! What the daemon and a `nprot notify` agent say to each other: newline-delimited JSON
//! both ways, on the notify socket. The daemon sends [`Prompt`]s (and one [`Answer`] per
//! [`AllowAsk`], in order); the agent sends [`AllowAsk`]s.

use std::{fmt::Write as _, net::IpAddr};

use serde::{Deserialize, Serialize};

/// The longest line either side accepts: a prompt or an allow is a few hundred bytes, so
/// anything longer is not one of ours.
pub const MAX_LINE: usize = 8 * 1024;

/// What a prompt reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A Block indicator reset the flow.
    Blocked,
    /// A Warn indicator reset the flow; the user may ask for a bypass.
    Warned,
}

impl Kind {
    /// The word the notification starts with.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Blocked => "blocked",
            Kind::Warned => "warned",
        }
    }
}

/// Daemon → agent: one of the agent's user's flows was blocked or warned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    /// Blocked or warned.
    pub kind: Kind,
    /// What was stopped, as a bypass would name it: the host name (or URL, or address)
    /// the flow went to.
    pub target: String,
    /// The indicator's title, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The indicator's id.
    pub indicator_id: String,
    /// The program that opened the flow (`InitiatingProcessFileName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// The far end, `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

impl Prompt {
    /// The notification's body: `blocked: NAME (title)`, then the program on a line of
    /// its own.
    pub fn body(&self) -> String {
        let mut body = format!("{}: {}", self.kind.word(), self.target);
        if let Some(title) = &self.title {
            let _ = write!(body, " ({title})");
        }
        if let Some(process) = &self.process {
            let _ = write!(body, "\nby {process}");
        }
        body
    }
}

/// Agent → daemon: the user chose Allow on the Warn prompt of `allow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowAsk {
    /// The prompt's target.
    pub allow: String,
}

/// Daemon → agent: the answer to an [`AllowAsk`] (`{"ok": …}` or `{"error": …}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Granted: what, and until when.
    Ok(String),
    /// Refused, and why.
    Error(String),
}

/// Any line the daemon sends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FromDaemon {
    /// A blocked or warned flow.
    Prompt(Prompt),
    /// The answer to the oldest [`AllowAsk`] not answered yet.
    Answer(Answer),
}

/// The fields of an event line a prompt is made of (the rest is ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EventLine {
    action_type: String,
    #[serde(default)]
    initiating_process_account_name: Option<String>,
    #[serde(default)]
    initiating_process_file_name: Option<String>,
    #[serde(default)]
    remote_url: Option<String>,
    #[serde(default, rename = "RemoteIP")]
    remote_ip: Option<IpAddr>,
    #[serde(default)]
    remote_port: Option<u16>,
    additional_fields: ProtectionFields,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProtectionFields {
    #[serde(default)]
    is_audit: bool,
    #[serde(default)]
    indicator_id: String,
    #[serde(default)]
    indicator_value: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    display_name: Option<String>,
}

/// The ActionType of a flow an indicator reset (block mode). Audited flows were not
/// stopped, so nobody is prompted for them.
const BLOCKED: &str = "ExploitGuardNetworkProtectionBlocked";

/// The prompt an event line makes, with the account whose flow it was: only Blocked
/// events (not audits) of a Block or Warn indicator, of a flow attributed to an account.
pub fn prompt_of(line: &[u8]) -> Option<(String, Prompt)> {
    // Most lines are other events: a substring search is much cheaper than parsing them
    // on the verdict thread.
    let text = std::str::from_utf8(line).ok()?;
    if !text.contains(BLOCKED) {
        return None;
    }
    let ev: EventLine = serde_json::from_str(text).ok()?;
    let f = &ev.additional_fields;
    if ev.action_type != BLOCKED || f.is_audit {
        return None;
    }
    let kind = match f.action.as_str() {
        "Block" => Kind::Blocked,
        "Warn" => Kind::Warned,
        _ => return None,
    };
    let account = ev.initiating_process_account_name?;
    let target = target_of(&f.indicator_value, ev.remote_url.as_deref(), ev.remote_ip)?;
    let remote = ev.remote_ip.map(|ip| match (ip, ev.remote_port) {
        (IpAddr::V4(v4), Some(port)) => format!("{v4}:{port}"),
        (IpAddr::V6(v6), Some(port)) => format!("[{v6}]:{port}"),
        (ip, None) => ip.to_string(),
    });
    let prompt = Prompt {
        kind,
        target,
        title: f.display_name.clone(),
        indicator_id: f.indicator_id.clone(),
        process: ev.initiating_process_file_name,
        remote,
    };
    Some((account, prompt))
}

/// What a bypass of the flow would name, the narrowest thing that lets it through: the
/// address for an IP indicator, the URL for a URL indicator (when the flow has one), else
/// the host the flow went to.
fn target_of(
    indicator_value: &str,
    remote_url: Option<&str>,
    remote_ip: Option<IpAddr>,
) -> Option<String> {
    let is_url = indicator_value.contains("://");
    let is_ip =
        !is_url && (indicator_value.parse::<IpAddr>().is_ok() || indicator_value.contains('/'));
    if is_ip {
        return remote_ip.map(|ip| ip.to_string());
    }
    match remote_url {
        Some(url) if is_url && url.contains("://") => Some(url.to_owned()),
        Some(url) => host_of(url).map(str::to_ascii_lowercase),
        None => (!indicator_value.is_empty()).then(|| indicator_value.to_owned()),
    }
}

/// The host of a URL or of a bare host name (an SNI), without port or brackets.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']').map_or(v6, |(h, _)| h)
    } else {
        authority.split_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn line(action_type: &str, action: &str, is_audit: bool, url: &str, value: &str) -> Vec<u8> {
        serde_json::json!({
            "Timestamp": "2026-01-01T00:00:00.000000Z",
            "ActionType": action_type,
            "LocalIP": "10.0.0.1", "LocalPort": 40000,
            "RemoteIP": "10.0.0.2", "RemotePort": 443,
            "InitiatingProcessId": 7,
            "InitiatingProcessFileName": "curl",
            "InitiatingProcessAccountName": "alice",
            "RemoteUrl": url,
            "AdditionalFields": {
                "ResponseCategory": "CustomBlockList", "IsAudit": is_audit,
                "IndicatorId": "i1", "IndicatorValue": value, "Action": action,
                "DisplayName": "no shops", "Mode": "Block", "direction": "Outbound"
            },
            "ReportId": 3
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn blocks_and_warns_make_prompts_for_their_account() {
        let (account, p) =
            prompt_of(&line(BLOCKED, "Block", false, "Bad.Example", "bad.example")).unwrap();
        assert_eq!(account, "alice");
        assert_eq!(p.kind, Kind::Blocked);
        assert_eq!(p.target, "bad.example");
        assert_eq!(p.remote.as_deref(), Some("10.0.0.2:443"));
        assert_eq!(p.body(), "blocked: bad.example (no shops)\nby curl");
        let (_, w) = prompt_of(&line(
            BLOCKED,
            "Warn",
            false,
            "http://w.example:8080/x?y",
            "example",
        ))
        .unwrap();
        assert_eq!((w.kind, w.target.as_str()), (Kind::Warned, "w.example"));
        let (_, u) = prompt_of(&line(
            BLOCKED,
            "Warn",
            false,
            "http://w.example/x",
            "http://w.example/",
        ))
        .unwrap();
        assert_eq!(u.target, "http://w.example/x");
        let (_, ip) = prompt_of(&line(BLOCKED, "Warn", false, "w.example", "10.0.0.0/24")).unwrap();
        assert_eq!(ip.target, "10.0.0.2");
    }

    #[test]
    fn audits_other_events_and_garbage_make_none() {
        let audited = "ExploitGuardNetworkProtectionAudited";
        assert!(prompt_of(&line(audited, "Block", true, "bad.example", "bad.example")).is_none());
        assert!(prompt_of(&line(BLOCKED, "Block", true, "bad.example", "bad.example")).is_none());
        assert!(prompt_of(&line(BLOCKED, "Allowed", false, "x", "x")).is_none());
        assert!(prompt_of(br#"{"ActionType":"ConnectionSuccess"}"#).is_none());
        assert!(prompt_of(b"ExploitGuardNetworkProtectionBlocked {{{").is_none());
        assert!(prompt_of(&[0xff, 0xfe]).is_none());
        // A flow nobody is known to have made concerns no agent.
        let mut v: serde_json::Value =
            serde_json::from_slice(&line(BLOCKED, "Block", false, "b", "b")).unwrap();
        v.as_object_mut()
            .unwrap()
            .remove("InitiatingProcessAccountName");
        assert!(prompt_of(v.to_string().as_bytes()).is_none());
    }

    #[test]
    fn the_wire_forms_are_as_documented() {
        assert_eq!(
            serde_json::to_string(&Answer::Ok("x".into())).unwrap(),
            r#"{"ok":"x"}"#
        );
        let from: FromDaemon = serde_json::from_str(r#"{"error":"no"}"#).unwrap();
        assert_eq!(from, FromDaemon::Answer(Answer::Error("no".into())));
        let p: FromDaemon =
            serde_json::from_str(r#"{"kind":"warned","target":"t","indicator_id":"w"}"#).unwrap();
        assert!(matches!(
            p,
            FromDaemon::Prompt(Prompt {
                kind: Kind::Warned,
                ..
            })
        ));
        assert!(serde_json::from_str::<AllowAsk>(r#"{"allow":"t","x":1}"#).is_err());
        assert_eq!(host_of("[2001:db8::1]:443"), Some("2001:db8::1"));
        assert_eq!(host_of("https://u@h.example/"), Some("h.example"));
    }
}
