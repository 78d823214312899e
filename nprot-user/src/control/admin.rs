//! Operator commands (`nprot status`, `mode`, `indicator …`, `stats`): turn arguments
//! into control requests and print the daemon's answers for people or, with `--json`,
//! for scripts.
//!
//! Everything is written through [`emit`], so a reader that goes away (`nprot status |
//! head -0`) ends the output quietly instead of panicking the CLI.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{
    control::{
        cli::{ClientArgs, IndicatorCommand},
        protocol::{
            AddedReply, BypassReply, IndicatorList, ModeReply, RemovedReply, Request, Response,
            RunReport, SinkReport, StatusReply, decode,
        },
        socket::call,
    },
    mode::Mode,
};

/// Sends `request` and returns the daemon's reply as it came (what `--json` prints)
/// and read into its type `T` (what people are shown).
fn send<T: DeserializeOwned>(client: &ClientArgs, request: &Request) -> anyhow::Result<(Value, T)> {
    let Response { ok, error, data } = call(&client.socket, request)?;
    if !ok {
        bail!("{}", error.unwrap_or_else(|| "the daemon refused".into()));
    }
    let reply = decode(&data).context("the daemon's reply does not have the expected form")?;
    Ok((data, reply))
}

/// How a command renders the daemon's reply for people.
type Human<'a, T> = &'a dyn Fn(&mut dyn Write, &T) -> io::Result<()>;

/// Prints the daemon's reply on stdout: as one JSON line (as sent) with `--json`, else
/// `human`.
fn print<T>(
    client: &ClientArgs,
    (data, reply): &(Value, T),
    human: Human<'_, T>,
) -> anyhow::Result<()> {
    emit(&mut io::stdout().lock(), |out| {
        if client.json {
            writeln!(out, "{data}")
        } else {
            human(out, reply)
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
    let reply = send(client, &Request::Status)?;
    print(client, &reply, &human_status)
}

fn human_status(out: &mut dyn Write, d: &StatusReply) -> io::Result<()> {
    // The mode as it is sent (`Block`), as this line always showed it.
    writeln!(out, "mode:        {:?}", d.mode)?;
    for i in &d.interfaces {
        writeln!(out, "interface:   {} ({})", i.name, i.attach)?;
    }
    writeln!(
        out,
        "indicators:  {} in force, {} added at run time",
        d.indicators, d.runtime_indicators
    )?;
    writeln!(out, "state dir:   {}", d.state_dir.display())?;
    writeln!(out, "uptime:      {} s (pid {})", d.uptime_s, d.pid)
}

/// `nprot stats`.
pub fn stats(client: &ClientArgs) -> anyhow::Result<()> {
    let (data, report): (Value, RunReport) = send(client, &Request::Stats)?;
    // Each kind of sink has counters of its own: read as far as they are common.
    let sinks: Vec<SinkReport> = decode(&report.sinks)
        .context("the daemon's sink counters do not have the expected form")?;
    print(client, &(data, (report, sinks)), &human_stats)
}

fn human_stats(out: &mut dyn Write, (d, sinks): &(RunReport, Vec<SinkReport>)) -> io::Result<()> {
    let l = &d.verdict_latency;
    writeln!(
        out,
        "verdict latency: p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  (n={})",
        l.p50_us, l.p99_us, l.p999_us, l.count
    )?;
    writeln!(
        out,
        "events: written {}  dropped {}",
        d.events_written, d.events_dropped
    )?;
    for sink in sinks {
        writeln!(out, "{}", sink_line(sink))?;
    }
    // Every counter by name, in name order.
    let sections = [
        ("flows", serde_json::to_value(&d.flows)),
        ("quic", serde_json::to_value(d.quic)),
        ("prefilter", serde_json::to_value(&d.prefilter)),
        ("pipeline", serde_json::to_value(d.pipeline)),
        ("kernel", serde_json::to_value(&d.kernel)),
    ];
    for (section, counters) in sections {
        // Plain counters by name: serialising them cannot fail.
        if let Ok(Value::Object(map)) = counters {
            for (k, v) in map {
                writeln!(out, "{section:<9} {k:<24} {v}")?;
            }
        }
    }
    Ok(())
}

/// One sink of `nprot stats`: `sink <name>  dropped N  <its own counters>`.
fn sink_line(sink: &SinkReport) -> String {
    let mut line = format!("sink      {}  dropped {}", sink.sink, sink.dropped);
    if let Some(own) = sink.stats.as_object() {
        for (k, v) in own {
            if k != "dropped" {
                let _ = write!(line, "  {k} {v}");
            }
        }
    }
    line
}

/// `nprot mode MODE`.
pub fn mode(client: &ClientArgs, mode: Mode) -> anyhow::Result<()> {
    let reply = send(
        client,
        &Request::Mode {
            mode: mode.as_str().into(),
        },
    )?;
    print(client, &reply, &|out, r: &ModeReply| {
        writeln!(out, "mode set to {}", r.mode)
    })
}

/// `nprot indicator …`.
pub fn indicator(cmd: IndicatorCommand) -> anyhow::Result<()> {
    match cmd {
        IndicatorCommand::Add {
            spec,
            process,
            client,
        } => {
            let mut ind = spec.to_json();
            for (key, v) in [("id", spec.id), ("process", process)] {
                if let Some(v) = v {
                    ind[key] = json!(v);
                }
            }
            let json = json!({ "indicators": [ind] }).to_string();
            let reply = send(&client, &Request::IndicatorAdd { json })?;
            print(&client, &reply, &report_added)
        }
        IndicatorCommand::Remove { ids, client } => {
            let reply = send(&client, &Request::IndicatorRemove { ids })?;
            print(&client, &reply, &|out, d: &RemovedReply| {
                writeln!(out, "removed {}", d.removed)?;
                for id in &d.not_found {
                    // Quoted, as the JSON string it always was printed as.
                    writeln!(out, "not found: {}", Value::from(id.as_str()))?;
                }
                Ok(())
            })
        }
        IndicatorCommand::List(client) => {
            let reply = send(&client, &Request::IndicatorList)?;
            print(&client, &reply, &human_list)
        }
        IndicatorCommand::Export(client) => {
            let (data, _): (Value, IndicatorList) = send(&client, &Request::IndicatorList)?;
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
            let reply = send(
                &client,
                &Request::IndicatorImport {
                    format: format.into(),
                    text,
                    action: Some(list_action),
                },
            )?;
            print(&client, &reply, &report_added)
        }
    }
}

fn human_list(out: &mut dyn Write, d: &IndicatorList) -> io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<11} {:<8} {:<40} TITLE",
        "ID", "TYPE", "ACTION", "VALUE"
    )?;
    for i in &d.indicators {
        writeln!(
            out,
            "{:<24} {:<11} {:<8} {:<40} {}",
            i.id,
            i.kind.as_str(),
            i.action.as_str(),
            i.value,
            i.title.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

/// `nprot bypass TARGET --for DURATION`.
pub fn bypass(client: &ClientArgs, target: &str, duration: &str) -> anyhow::Result<()> {
    let for_secs = parse_duration(duration)?;
    let reply = send(
        client,
        &Request::Bypass {
            target: target.to_owned(),
            for_secs,
        },
    )?;
    print(client, &reply, &|out, d: &BypassReply| {
        writeln!(
            out,
            "{target} allowed until {} (bypassing Warn indicator {})",
            d.until, d.warned_by
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

fn report_added(out: &mut dyn Write, d: &AddedReply) -> io::Result<()> {
    writeln!(
        out,
        "added {}, replaced {}, unchanged {}",
        d.added, d.replaced, d.unchanged
    )?;
    // Replacing an existing run-time indicator is said by id, never silently.
    for id in &d.replaced_ids {
        writeln!(out, "replaced: {id}")?;
    }
    for w in &d.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};

    use serde_json::json;

    use super::{
        Human, emit, human_list, human_stats, human_status, parse_duration, report_added, sink_line,
    };
    use crate::control::protocol::{
        AddedReply, IndicatorList, RunReport, SinkReport, StatusReply, decode,
    };

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

    /// `human` on `reply`: some text, one write only to a closed reader, and other
    /// write errors reported with context.
    fn ends_quietly<T>(name: &str, reply: &T, human: Human<'_, T>) {
        let mut text = Vec::new();
        emit(&mut text, |out| human(out, reply)).unwrap();
        assert!(!text.is_empty(), "{name}");

        let mut closed = Failing(io::ErrorKind::BrokenPipe, 0);
        emit(&mut closed, |out| human(out, reply)).unwrap();
        assert_eq!(closed.1, 1, "{name} went on writing after EPIPE");

        let mut full = Failing(io::ErrorKind::StorageFull, 0);
        let e = emit(&mut full, |out| human(out, reply)).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("cannot write to standard output: "),
            "{name}: {e:#}"
        );
    }

    fn stats() -> (RunReport, Vec<SinkReport>) {
        let latency =
            json!({"count": 1, "p50_us": 1.0, "p99_us": 2.0, "p999_us": 3.0, "max_us": 4.0});
        let report = decode(
            &json!({"mode": "Block", "indicators": 1, "indicator_load_ms": 0.5,
            "verdict_latency": latency, "wake_latency": latency,
            "pipeline": crate::datapath::pipeline::PipelineStats::default(),
            "kernel": {"flows_new": 2}, "events_written": 3, "events_dropped": 0,
            "sinks": [{"sink": "stdout", "written": 3, "dropped": 0, "stats": null}],
            "decode_errors": 0, "flows": {"tracked": 2, "tracked_local": 1, "not_tracked": 0,
            "midstream": 0, "syn_retransmits": 0, "superseded": 0, "closed": 0, "expired": 0,
            "records_lost": 0, "stale_verdicts": 0}}),
        );
        let report: RunReport = report.unwrap();
        let sinks = decode(&report.sinks).unwrap();
        (report, sinks)
    }

    /// Issue 11: `nprot status | head -0` panicked. A closed reader ends every
    /// command's output quietly, after one failed write; other errors are errors.
    #[test]
    fn a_closed_stdout_ends_the_output_without_an_error() {
        let status: StatusReply = decode(&json!({"mode": "Block",
            "interfaces": [{"name": "eth0", "attach": "tcx"}], "indicators": 1,
            "runtime_indicators": 0, "indicator_files": [], "state_dir": "/var/lib/nprot",
            "uptime_s": 1, "pid": 2}))
        .unwrap();
        ends_quietly("status", &status, &human_status);
        ends_quietly("stats", &stats(), &human_stats);
        let list: IndicatorList = decode(&json!({"indicators": [{"id": "a",
            "type": "DomainName", "value": "a.example", "action": "Block"}]}))
        .unwrap();
        ends_quietly("list", &list, &human_list);
        let added: AddedReply = decode(&json!({"added": 1, "unchanged": 0, "replaced": 1,
            "replaced_ids": ["a"], "warnings": ["w"]}))
        .unwrap();
        ends_quietly("added", &added, &report_added);
    }

    #[test]
    fn status_and_stats_read_as_before() {
        let status: StatusReply = decode(&json!({"mode": "Block",
            "interfaces": [{"name": "eth0", "attach": "tcx"}], "indicators": 3,
            "runtime_indicators": 1, "indicator_files": [["/etc/i.json", "Block"]],
            "state_dir": "/var/lib/nprot", "uptime_s": 7, "pid": 42}))
        .unwrap();
        let mut text = Vec::new();
        human_status(&mut text, &status).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "mode:        Block\ninterface:   eth0 (tcx)\nindicators:  3 in force, 1 added at run time\nstate dir:   /var/lib/nprot\nuptime:      7 s (pid 42)\n"
        );
        let mut text = Vec::new();
        human_stats(&mut text, &stats()).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with("verdict latency: p50 1.0 µs  p99 2.0 µs  p99.9 3.0 µs  (n=1)\nevents: written 3  dropped 0\nsink      stdout  dropped 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\nflows     tracked                  2\n"),
            "{text}"
        );
        assert!(
            text.contains("\npipeline  records                  0\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\nkernel    flows_new                2\n"),
            "{text}"
        );
    }

    #[test]
    fn replaced_indicators_are_named() {
        let mut text = Vec::new();
        let d = AddedReply {
            added: 1,
            replaced: 2,
            replaced_ids: vec!["a".into(), "b".into()],
            ..AddedReply::default()
        };
        report_added(&mut text, &d).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "added 1, replaced 2, unchanged 0\nreplaced: a\nreplaced: b\n"
        );
    }

    #[test]
    fn sink_lines_show_drops_and_own_counters() {
        let collector: SinkReport = decode(&json!({"sink": "tcp collector 198.18.0.9:514",
            "dropped": 3, "stats": {"queued": 1, "sent": 40, "dropped": 3, "connected": true}}))
        .unwrap();
        assert_eq!(
            sink_line(&collector),
            "sink      tcp collector 198.18.0.9:514  dropped 3  connected true  queued 1  sent 40"
        );
        let stdout: SinkReport =
            decode(&json!({"sink": "stdout", "dropped": 0, "stats": null})).unwrap();
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
