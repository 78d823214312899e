//! Operator commands (`nprot status`, `mode`, `indicator …`, `stats`): turn arguments
//! into control requests and print the daemon's answers for people or, with `--json`,
//! for scripts.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    cli::{ClientArgs, IndicatorCommand},
    control::{Request, Response, call},
    verdict::Mode,
};

fn send(client: &ClientArgs, request: &Request) -> anyhow::Result<Value> {
    let Response { ok, error, data } = call(&client.socket, request)?;
    if !ok {
        bail!("{}", error.unwrap_or_else(|| "the daemon refused".into()));
    }
    Ok(data)
}

fn print(client: &ClientArgs, data: &Value, human: impl FnOnce(&Value)) {
    if client.json {
        println!("{data}");
    } else {
        human(data);
    }
}

/// `nprot status`.
pub fn status(client: &ClientArgs) -> anyhow::Result<()> {
    let data = send(client, &Request::Status)?;
    print(client, &data, |d| {
        println!("mode:        {}", d["mode"].as_str().unwrap_or("?"));
        for i in d["interfaces"].as_array().into_iter().flatten() {
            println!(
                "interface:   {} ({})",
                i["name"].as_str().unwrap_or("?"),
                i["attach"].as_str().unwrap_or("?")
            );
        }
        println!(
            "indicators:  {} in force, {} added at run time",
            d["indicators"], d["runtime_indicators"]
        );
        println!("state dir:   {}", d["state_dir"].as_str().unwrap_or("?"));
        println!("uptime:      {} s (pid {})", d["uptime_s"], d["pid"]);
    });
    Ok(())
}

/// `nprot stats`.
pub fn stats(client: &ClientArgs) -> anyhow::Result<()> {
    let data = send(client, &Request::Stats)?;
    print(client, &data, |d| {
        let l = &d["verdict_latency"];
        println!(
            "verdict latency: p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  (n={})",
            l["p50_us"].as_f64().unwrap_or(0.0),
            l["p99_us"].as_f64().unwrap_or(0.0),
            l["p999_us"].as_f64().unwrap_or(0.0),
            l["count"]
        );
        println!(
            "events: written {}  dropped {}",
            d["events_written"], d["events_dropped"]
        );
        for sink in d["sinks"].as_array().into_iter().flatten() {
            println!("{}", sink_line(sink));
        }
        for section in ["flows", "pipeline", "kernel"] {
            if let Some(map) = d[section].as_object() {
                for (k, v) in map {
                    println!("{section:<9} {k:<24} {v}");
                }
            }
        }
    });
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
    print(client, &data, |_| println!("mode set to {mode}"));
    Ok(())
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
            print(&client, &data, report_added);
        }
        IndicatorCommand::Remove { ids, client } => {
            let data = send(&client, &Request::IndicatorRemove { ids })?;
            print(&client, &data, |d| {
                println!("removed {}", d["removed"]);
                for id in d["not_found"].as_array().into_iter().flatten() {
                    println!("not found: {id}");
                }
            });
        }
        IndicatorCommand::List(client) => {
            let data = send(&client, &Request::IndicatorList)?;
            print(&client, &data, |d| {
                println!(
                    "{:<24} {:<11} {:<8} {:<40} TITLE",
                    "ID", "TYPE", "ACTION", "VALUE"
                );
                for i in d["indicators"].as_array().into_iter().flatten() {
                    let f = |k: &str| i[k].as_str().unwrap_or("").to_owned();
                    println!(
                        "{:<24} {:<11} {:<8} {:<40} {}",
                        f("id"),
                        f("type"),
                        f("action"),
                        f("value"),
                        f("title")
                    );
                }
            });
        }
        IndicatorCommand::Export(client) => {
            let data = send(&client, &Request::IndicatorList)?;
            println!("{}", serde_json::to_string_pretty(&data)?);
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
            print(&client, &data, report_added);
        }
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
    print(client, &data, |d| {
        println!(
            "{target} allowed until {} (bypassing Warn indicator {})",
            d["until"].as_str().unwrap_or("?"),
            d["warned_by"].as_str().unwrap_or("?")
        );
    });
    Ok(())
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

fn report_added(d: &Value) {
    println!("added {}, replaced {}", d["added"], d["replaced"]);
    for w in d["warnings"].as_array().into_iter().flatten() {
        println!("warning: {}", w.as_str().unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, sink_line};
    use serde_json::json;

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
