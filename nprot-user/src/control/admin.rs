//! Operator commands (`nprot status`, `mode`, `indicator …`, `stats`): turn arguments
//! into control requests and print the daemon's answers for people or, with `--json`,
//! for scripts.
//!
//! Everything is written through [`emit`], so a reader that goes away (`nprot status |
//! head -0`) ends the output quietly instead of panicking the CLI.

use std::io::{self, Write};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    control::cli::{ClientArgs, IndicatorCommand},
    control::socket::{Request, Response, call},
    mode::Mode,
};

fn send(client: &ClientArgs, request: &Request) -> anyhow::Result<Value> {
    let Response { ok, error, data } = call(&client.socket, request)?;
    if !ok {
        bail!("{}", error.unwrap_or_else(|| "the daemon refused".into()));
    }
    Ok(data)
}

/// How a command renders the daemon's answer for people.
type Human<'a> = &'a dyn Fn(&mut dyn Write, &Value) -> io::Result<()>;

/// Prints the daemon's answer on stdout: as one JSON line with `--json`, else `human`.
fn print(client: &ClientArgs, data: &Value, human: Human<'_>) -> anyhow::Result<()> {
    emit(&mut io::stdout().lock(), |out| {
        if client.json {
            writeln!(out, "{data}")
        } else {
            human(out, data)
        }
    })
}

/// Runs `write` on `out` and flushes it. A closed reader (EPIPE) is the end of the
/// output, not a failure: the command exits 0 without a message (docs/decisions.md).
/// Any other write error is one, with context.
fn emit(
    out: &mut dyn Write,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> anyhow::Result<()> {
    match write(&mut *out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("cannot write to standard output"),
    }
}

/// `nprot status`.
pub fn status(client: &ClientArgs) -> anyhow::Result<()> {
    let data = send(client, &Request::Status)?;
    print(client, &data, &human_status)
}

fn human_status(out: &mut dyn Write, d: &Value) -> io::Result<()> {
    writeln!(out, "mode:        {}", d["mode"].as_str().unwrap_or("?"))?;
    for i in d["interfaces"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "interface:   {} ({})",
            i["name"].as_str().unwrap_or("?"),
            i["attach"].as_str().unwrap_or("?")
        )?;
    }
    writeln!(
        out,
        "indicators:  {} in force, {} added at run time",
        d["indicators"], d["runtime_indicators"]
    )?;
    writeln!(
        out,
        "state dir:   {}",
        d["state_dir"].as_str().unwrap_or("?")
    )?;
    writeln!(out, "uptime:      {} s (pid {})", d["uptime_s"], d["pid"])
}

/// `nprot stats`.
pub fn stats(client: &ClientArgs) -> anyhow::Result<()> {
    let data = send(client, &Request::Stats)?;
    print(client, &data, &human_stats)
}

fn human_stats(out: &mut dyn Write, d: &Value) -> io::Result<()> {
    let l = &d["verdict_latency"];
    writeln!(
        out,
        "verdict latency: p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  (n={})",
        l["p50_us"].as_f64().unwrap_or(0.0),
        l["p99_us"].as_f64().unwrap_or(0.0),
        l["p999_us"].as_f64().unwrap_or(0.0),
        l["count"]
    )?;
    writeln!(
        out,
        "events: written {}  dropped {}",
        d["events_written"], d["events_dropped"]
    )?;
    for sink in d["sinks"].as_array().into_iter().flatten() {
        writeln!(out, "{}", sink_line(sink))?;
    }
    for section in ["flows", "pipeline", "kernel"] {
        if let Some(map) = d[section].as_object() {
            for (k, v) in map {
                writeln!(out, "{section:<9} {k:<24} {v}")?;
            }
        }
    }
    Ok(())
}

/// One sink of `nprot stats`: `sink <name>  dropped N  <its own counters>`.
fn sink_line(sink: &Value) -> String {
    let mut line = format!(
        "sink      {}  dropped {}",
        sink["sink"].as_str().unwrap_or("?"),
        sink["dropped"]
    );
    if let Some(own) = sink["stats"].as_object() {
        for (k, v) in own {
            if k != "dropped" {
                line.push_str(&format!("  {k} {v}"));
            }
        }
    }
    line
}

/// `nprot mode MODE`.
pub fn mode(client: &ClientArgs, mode: Mode) -> anyhow::Result<()> {
    let data = send(
        client,
        &Request::Mode {
            mode: mode.as_str().into(),
        },
    )?;
    print(client, &data, &|out, _| writeln!(out, "mode set to {mode}"))
}

/// `nprot indicator …`.
pub fn indicator(cmd: IndicatorCommand) -> anyhow::Result<()> {
    match cmd {
        IndicatorCommand::Add {
            kind,
            value,
            action,
            id,
            title,
            expiration,
            process,
            client,
        } => {
            let mut ind = json!({ "type": kind, "value": value, "action": action });
            for (key, v) in [
                ("id", id),
                ("title", title),
                ("expiration", expiration),
                ("process", process),
            ] {
                if let Some(v) = v {
                    ind[key] = json!(v);
                }
            }
            let json = json!({ "indicators": [ind] }).to_string();
            let data = send(&client, &Request::IndicatorAdd { json })?;
            print(&client, &data, &report_added)
        }
        IndicatorCommand::Remove { ids, client } => {
            let data = send(&client, &Request::IndicatorRemove { ids })?;
            print(&client, &data, &|out, d| {
                writeln!(out, "removed {}", d["removed"])?;
                for id in d["not_found"].as_array().into_iter().flatten() {
                    writeln!(out, "not found: {id}")?;
                }
                Ok(())
            })
        }
        IndicatorCommand::List(client) => {
            let data = send(&client, &Request::IndicatorList)?;
            print(&client, &data, &human_list)
        }
        IndicatorCommand::Export(client) => {
            let data = send(&client, &Request::IndicatorList)?;
            // Always the file format, whatever `--json` says.
            let text = serde_json::to_string_pretty(&data)?;
            emit(&mut io::stdout().lock(), |out| writeln!(out, "{text}"))
        }
        IndicatorCommand::Import {
            file,
            list_action,
            client,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let ext = file
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            let format = match ext.as_deref() {
                Some("json") => "json",
                Some("csv") => "csv",
                _ => "list",
            };
            let data = send(
                &client,
                &Request::IndicatorImport {
                    format: format.into(),
                    text,
                    action: Some(list_action),
                },
            )?;
            print(&client, &data, &report_added)
        }
    }
}

fn human_list(out: &mut dyn Write, d: &Value) -> io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<11} {:<8} {:<40} TITLE",
        "ID", "TYPE", "ACTION", "VALUE"
    )?;
    for i in d["indicators"].as_array().into_iter().flatten() {
        let f = |k: &str| i[k].as_str().unwrap_or("");
        writeln!(
            out,
            "{:<24} {:<11} {:<8} {:<40} {}",
            f("id"),
            f("type"),
            f("action"),
            f("value"),
            f("title")
        )?;
    }
    Ok(())
}

/// `nprot bypass TARGET --for DURATION`.
pub fn bypass(client: &ClientArgs, target: &str, duration: &str) -> anyhow::Result<()> {
    let for_secs = parse_duration(duration)?;
    let data = send(
        client,
        &Request::Bypass {
            target: target.to_owned(),
            for_secs,
        },
    )?;
    print(client, &data, &|out, d| {
        writeln!(
            out,
            "{target} allowed until {} (bypassing Warn indicator {})",
            d["until"].as_str().unwrap_or("?"),
            d["warned_by"].as_str().unwrap_or("?")
        )
    })
}

/// `90s`, `30m`, `24h`, `7d` or plain seconds.
fn parse_duration(text: &str) -> anyhow::Result<u64> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .with_context(|| format!("bad duration '{text}': expected e.g. 90s, 30m, 24h, 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => bail!("bad duration unit '{other}' in '{text}': use s, m, h or d"),
    };
    n.checked_mul(scale)
        .filter(|&s| s > 0)
        .with_context(|| format!("duration '{text}' must be positive and not absurdly long"))
}

fn report_added(out: &mut dyn Write, d: &Value) -> io::Result<()> {
    writeln!(
        out,
        "added {}, replaced {}, unchanged {}",
        d["added"],
        d["replaced"],
        d["unchanged"].as_u64().unwrap_or(0)
    )?;
    // Replacing an existing run-time indicator is said by id, never silently.
    for id in d["replaced_ids"].as_array().into_iter().flatten() {
        writeln!(out, "replaced: {}", id.as_str().unwrap_or_default())?;
    }
    for w in d["warnings"].as_array().into_iter().flatten() {
        writeln!(out, "warning: {}", w.as_str().unwrap_or_default())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};

    use super::{
        Human, emit, human_list, human_stats, human_status, parse_duration, report_added, sink_line,
    };
    use serde_json::json;

    /// A writer that fails every write with `kind`, counting the attempts.
    struct Failing(io::ErrorKind, usize);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.1 += 1;
            Err(self.0.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Issue 11: `nprot status | head -0` panicked. A closed reader ends every
    /// command's output quietly, after one failed write; other errors are errors.
    #[test]
    fn a_closed_stdout_ends_the_output_without_an_error() {
        let data = json!({"mode": "Block", "interfaces": [{"name": "eth0", "attach": "tcx"}],
            "verdict_latency": {"count": 1}, "sinks": [{"sink": "stdout", "dropped": 0}],
            "pipeline": {"flows": 1}, "indicators": [{"id": "a", "type": "DomainName"}],
            "added": 1, "replaced": 1, "replaced_ids": ["a"], "warnings": ["w"]});
        let renderers: [(&str, Human<'_>); 4] = [
            ("status", &human_status),
            ("stats", &human_stats),
            ("list", &human_list),
            ("added", &report_added),
        ];
        for (name, human) in renderers {
            let mut text = Vec::new();
            emit(&mut text, |out| human(out, &data)).unwrap();
            assert!(!text.is_empty(), "{name}");

            let mut closed = Failing(io::ErrorKind::BrokenPipe, 0);
            emit(&mut closed, |out| human(out, &data)).unwrap();
            assert_eq!(closed.1, 1, "{name} went on writing after EPIPE");

            let mut full = Failing(io::ErrorKind::StorageFull, 0);
            let e = emit(&mut full, |out| human(out, &data)).unwrap_err();
            assert!(
                format!("{e:#}").starts_with("cannot write to standard output: "),
                "{name}: {e:#}"
            );
        }
    }

    #[test]
    fn replaced_indicators_are_named() {
        let mut text = Vec::new();
        let d = json!({"added": 1, "replaced": 2, "replaced_ids": ["a", "b"], "warnings": []});
        report_added(&mut text, &d).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "added 1, replaced 2, unchanged 0\nreplaced: a\nreplaced: b\n"
        );
    }

    #[test]
    fn sink_lines_show_drops_and_own_counters() {
        let collector = json!({"sink": "tcp collector 198.18.0.9:514", "dropped": 3,
            "stats": {"queued": 1, "sent": 40, "dropped": 3, "connected": true}});
        assert_eq!(
            sink_line(&collector),
            "sink      tcp collector 198.18.0.9:514  dropped 3  connected true  queued 1  sent 40"
        );
        let stdout = json!({"sink": "stdout", "dropped": 0, "stats": null});
        assert_eq!(sink_line(&stdout), "sink      stdout  dropped 0");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("24h").unwrap(), 86_400);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
