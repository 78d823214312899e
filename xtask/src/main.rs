//! `cargo xtask`: the project's own tasks — setup, build, run, test.
//!
//! Every task does its own set-up, so a fresh clone needs only `cargo xtask run -- …` or
//! `cargo xtask test`.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// Debian packages the sensor and its end-to-end tests use.
const APT_PACKAGES: &[&str] = &[
    "iproute2", // ip netns, veth, tc
    "nginx-light",
    "curl",
    "openssl",
    "python3",
    "tcpdump",
    "iperf3",
    "tinyproxy",
    "squid", // the kept-alive forward-proxy tests (tinyproxy closes after each request)
    "bpftool",
    "jq",
    "procps",
    "rsyslog",       // the TCP collector of the sink tests
    "systemd",       // systemd-analyze verify on the unit
    "python3-scapy", // hand-built frames: evasion and encapsulations the kernel has no device for
    "nftables",      // keeps a namespace's own stack quiet under hand-built TCP conversations
    // The QUIC tests: a real browser's HTTP/3 (headless, in the client namespace); the
    // distribution's build, since nothing else can be fetched.
    "chromium",
    "python3-pip", // installs aioquic (below) for Debian's python3
    // The DNS tests: a real resolver in the server namespace (the binary only, no
    // service) and dig as a client.
    "dnsmasq-base",
    "bind9-dnsutils",
    "openssh-client", // ssh, a protocol that names nothing: judged by its DNS name
    "iptables",       // the bench's side-by-side: `-m string` rules, as an admin would write them
    "nats-server",    // the fleet tests: a JetStream cluster of real servers
    "prometheus",     // promtool check metrics, on the sensor's /metrics
    // The desktop-prompt tests: a session bus, a virtual X display and a real
    // notification server under it.
    "dbus",
    "xvfb",
    "dunst",
    "ethtool", // the block page's checksum test: checksums computed and verified in software
];

/// PyPI packages of the QUIC tests (HTTP/3 client and server, Initial decryption), pinned.
const PIP_PACKAGES: &[&str] = &["aioquic==1.7.2"];

/// Where [`PIP_PACKAGES`] are installed (`pip --target`), for Debian's `/usr/bin/python3`:
/// the tests put it on `PYTHONPATH`. A directory of its own rather than
/// `--break-system-packages`: aioquic needs newer `cryptography` and `pyOpenSSL` than
/// Debian's, which would otherwise shadow them for every other python3 user (scapy).
/// Must match `tests/src/quic.rs`.
const PIP_TARGET: &str = "/usr/local/lib/nprot-tests/python";

/// What the Debian package must contain (`dpkg-deb -c` paths).
const DEB_CONTENTS: &[&str] = &[
    "./usr/bin/nprot",
    "./lib/systemd/system/nprot.service",
    "./usr/lib/systemd/user/nprot-notify.service",
    "./etc/nprot/nprot.toml",
    "./usr/share/doc/nprot/README.packaging.md",
];

/// How fuzz targets are built and run. No AddressSanitizer: the code they reach is safe
/// Rust, where ASan finds nothing that a panic or an overflow check (still on) would
/// not, and without it a target runs 2-5 times as many inputs in the same seconds.
const FUZZ_BUILD_FLAGS: &[&str] = &["--sanitizer", "none"];

/// LLVM major version of the nightly toolchain; bpf-linker must be built against it.
const LLVM_MAJOR: u32 = 22;

#[derive(Parser)]
#[command(name = "xtask", about = "nprot project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the build and the tests need (idempotent).
    Setup,
    /// Build the sensor (eBPF programs included).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build and run the sensor: `cargo xtask run -- run --interface eth0`.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for `nprot`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, lint, and run unit tests, the fuzz targets (30 s each) and the end-to-end
    /// tests (which need root).
    Test {
        /// Only the tests (and fuzz targets) whose name contains this.
        filter: Option<String>,
        /// Skip the privileged end-to-end tests (and fuzz for 10 s per target, not 30).
        #[arg(long)]
        unit_only: bool,
        /// Seconds per fuzz target instead of the default; 0 skips fuzzing.
        #[arg(long)]
        fuzz_seconds: Option<u64>,
    },
    /// Run the fuzz targets of fuzz/ (nightly; installs cargo-fuzz if missing).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only the targets whose name contains this.
        target: Option<String>,
    },
    /// Format and lint the workspace (clippy -D warnings), the eBPF crate included.
    Lint,
    /// Build the Debian package (release build; installs cargo-deb if missing) and check
    /// its contents.
    Deb,
    /// Benchmark the guarded path against an unguarded baseline (root; release build).
    Bench {
        /// Short runs and 2*10^4 indicators: checks every figure is produced (CI).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match cli.task {
        Task::Setup => {
            setup(&root)?;
            setup_cargo_fuzz()
        }
        Task::Build { release } => {
            setup_toolchain(&root)?;
            build(release).map(|_| ())
        }
        Task::Run { release, args } => {
            setup(&root)?;
            let bin = build(release)?;
            let status = Command::new(&bin).args(&args).status()?;
            if !status.success() {
                bail!("nprot exited with {status}");
            }
            Ok(())
        }
        Task::Test {
            filter,
            unit_only,
            fuzz_seconds,
        } => test(&root, filter.as_deref(), unit_only, fuzz_seconds),
        Task::Fuzz { seconds, target } => {
            // nprot-user's build script builds the eBPF programs even for fuzzing.
            setup_toolchain(&root)?;
            let targets = fuzz_targets(&root, target.as_deref())?;
            if targets.is_empty() {
                bail!("no fuzz target matches {target:?}");
            }
            let (_, failed) = fuzz(&root, seconds, &targets)?;
            if failed > 0 {
                bail!("{failed} fuzz target(s) failed");
            }
            Ok(())
        }
        Task::Lint => {
            setup_toolchain(&root)?;
            lint()
        }
        Task::Deb => {
            setup_toolchain(&root)?;
            deb()
        }
        Task::Bench { quick } => {
            setup(&root)?;
            bench(quick)
        }
    }
}

#[allow(
    clippy::expect_used,
    reason = "a dev tool, and an invariant: xtask's manifest dir is <workspace>/xtask"
)]
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", cmd.get_program().display()))?;
    if !status.success() {
        bail!("{} failed: {status}", cmd.get_program().display());
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", cmd.get_program().display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            cmd.get_program().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup(root: &Path) -> Result<()> {
    setup_toolchain(root)?;
    setup_apt()?;
    setup_pip()
}

/// rust-src for nightly and a bpf-linker built against nightly's own libLLVM.
fn setup_toolchain(root: &Path) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    // rustfmt too: the import grouping of rustfmt.toml is a nightly option.
    for component in ["rust-src", "rustfmt", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
    }

    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    // bpf-linker links nightly's libLLVM dynamically; rustc runs it with that directory on
    // the loader path, so check it the same way.
    if Command::new("bpf-linker")
        .arg("--version")
        .env("LD_LIBRARY_PATH", &libdir)
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let libllvm = fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{LLVM_MAJOR}.")))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.{LLVM_MAJOR}.* in {}: is the nightly toolchain installed?",
                libdir.display()
            )
        })?;
    let prefix = root.join("target/llvm-nightly");
    let link = prefix.join("lib/libLLVM.so");
    fs::create_dir_all(prefix.join("lib"))?;
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ])
        .env("LLVM_PREFIX", &prefix))
}

/// The Debian packages of [`APT_PACKAGES`] that are not installed yet.
fn setup_apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if euid() != 0 {
        bail!(
            "Debian packages missing: {}; run as root to install them",
            missing.join(" ")
        );
    }
    // Installing nginx, tinyproxy or squid must not start system services on a dev box or in CI.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let result = run(Command::new("apt-get").args(["update", "-q"])).and_then(|()| {
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    });
    if own_policy {
        let _ = fs::remove_file(policy);
    }
    result
}

/// [`PIP_PACKAGES`] into [`PIP_TARGET`] with Debian's python3, unless each already
/// imports from there at its pinned version.
fn setup_pip() -> Result<()> {
    let python = "/usr/bin/python3";
    let missing: Vec<&str> = PIP_PACKAGES
        .iter()
        .copied()
        .filter(|spec| {
            let (name, version) = spec.split_once("==").unwrap_or((spec, ""));
            let check = format!(
                "import importlib.metadata as m, sys; sys.exit(m.version('{name}') != '{version}')"
            );
            !Command::new(python)
                .args(["-c", &check])
                .env("PYTHONPATH", PIP_TARGET)
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--upgrade",
            "--target",
            PIP_TARGET,
        ])
        .args(&missing))
}

fn euid() -> u32 {
    output(Command::new("id").arg("-u"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u32::MAX)
}

/// Builds `nprot`; returns the path of the binary.
fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--package", "nprot-user", "--bin", "nprot"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(workspace_root().join("target").join(profile).join("nprot"))
}

/// `cargo deb` on the release build: binary, systemd unit, default config (a conffile).
fn deb() -> Result<()> {
    let has_cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_deb {
        run(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))?;
    }
    build(true)?;
    // The build above made the binary (and the eBPF object it embeds); cargo-deb only
    // packs it. It prints the path of the package last.
    let printed =
        output(Command::new("cargo").args(["deb", "--package", "nprot-user", "--no-build"]))?;
    let deb = printed
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| Path::new(l).extension().is_some_and(|e| e == "deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb printed no package path: {printed:?}"))?;
    let listing = output(Command::new("dpkg-deb").arg("-c").arg(&deb))?;
    let missing: Vec<&str> = DEB_CONTENTS
        .iter()
        .copied()
        .filter(|want| !listing.lines().any(|l| l.ends_with(want)))
        .collect();
    if !missing.is_empty() {
        bail!("{} lacks {}:\n{listing}", deb.display(), missing.join(", "));
    }
    let conffiles = output(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"),
    )?;
    if !conffiles
        .lines()
        .any(|l| l.trim() == "/etc/nprot/nprot.toml")
    {
        bail!(
            "{}: /etc/nprot/nprot.toml is not a conffile ({conffiles:?})",
            deb.display()
        );
    }
    eprintln!("xtask: {}\n{listing}", deb.display());
    Ok(())
}

fn lint() -> Result<()> {
    // Nightly: `group_imports` and `imports_granularity` (rustfmt.toml) are unstable.
    run(Command::new("cargo").args(["+nightly", "fmt", "--all", "--check"]))?;
    // The fuzz crate is a workspace of its own (nightly, sanitizers): only its format is
    // checked here, as clippy would need a third full build of nprot-user.
    run(Command::new("cargo").args([
        "+nightly",
        "fmt",
        "--check",
        "--manifest-path",
        "fuzz/Cargo.toml",
    ]))?;
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate's code exists only for the bpf target.
    run(Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "--package",
            "nprot-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(workspace_root().join("nprot-ebpf")))
}

fn test(
    root: &Path,
    filter: Option<&str>,
    unit_only: bool,
    fuzz_seconds: Option<u64>,
) -> Result<()> {
    setup(root)?;
    lint()?;
    let bin = build(false)?;

    let mut unit = Command::new("cargo");
    unit.args([
        "test",
        "--package",
        "nprot-common",
        "--package",
        "nprot-user",
    ])
    .args(["--package", "xtask", "--lib", "--bins", "--tests"]);
    if let Some(f) = filter {
        unit.arg(f);
    }
    let mut totals = run_tests(&mut unit)?;
    // A short run per target catches a parser that panics on inputs near the seeds; the
    // long searches are `cargo xtask fuzz`. Shorter when only part of the suite is wanted.
    let seconds = fuzz_seconds.unwrap_or(if unit_only || filter.is_some() {
        10
    } else {
        30
    });
    if seconds > 0 {
        let targets = fuzz_targets(root, filter)?;
        if !targets.is_empty() {
            let (passed, failed) = fuzz(root, seconds, &targets)?;
            totals.0 += passed;
            totals.1 += failed;
            if failed > 0 {
                println!("{} passed, {} failed", totals.0, totals.1);
                bail!("{failed} fuzz target(s) failed");
            }
        }
    }
    if !unit_only {
        if euid() != 0 {
            bail!(
                "end-to-end tests need root: run `cargo xtask test` as root (or pass --unit-only)"
            );
        }
        let mut e2e = Command::new("cargo");
        e2e.args(["test", "--package", "nprot-tests", "--lib", "--tests"])
            .env("NPROT_BIN", &bin)
            .arg("--");
        if let Some(f) = filter {
            e2e.arg(f);
        }
        // Tests share the kernel and the tools; each builds its own namespaces, one at a time.
        e2e.arg("--test-threads=1");
        let e2e_totals = run_tests(&mut e2e)?;
        totals.0 += e2e_totals.0;
        totals.1 += e2e_totals.1;
    }
    if !unit_only {
        // Every benchmark figure must still be produced (numbers are not judged here).
        bench(true)?;
    }
    println!("{} passed, {} failed", totals.0, totals.1);
    Ok(())
}

/// cargo-fuzz, for `cargo xtask fuzz` and the fuzz step of `cargo xtask test`.
fn setup_cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// The fuzz targets (`fuzz/fuzz_targets/NAME.rs`) whose name contains `filter`, sorted.
fn fuzz_targets(root: &Path, filter: Option<&str>) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut targets: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(std::result::Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some(name.strip_suffix(".rs")?.to_owned())
        })
        .filter(|t| filter.is_none_or(|f| t.contains(f)))
        .collect();
    targets.sort();
    Ok(targets)
}

/// Runs each of `targets` for `seconds` and prints a line per target; returns (passed,
/// failed). A crash leaves its input in fuzz/artifacts/TARGET/ and fails the target.
fn fuzz(root: &Path, seconds: u64, targets: &[String]) -> Result<(u64, u64)> {
    setup_cargo_fuzz()?;
    let fuzz_dir = root.join("fuzz");
    let started = std::time::Instant::now();
    // One build for all targets, with its progress shown; each `fuzz run` then finds it
    // up to date (same flags: release, debug assertions and overflow checks).
    let mut build = Command::new("cargo");
    build
        .args(["+nightly", "fuzz", "build"])
        .args(FUZZ_BUILD_FLAGS)
        .current_dir(root);
    if let [only] = targets {
        build.arg(only);
    }
    run(&mut build)?;
    let built = started.elapsed().as_secs();

    // libFuzzer uses one core: run as many targets at once as there are cores.
    let jobs = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let (mut passed, mut failed) = (0, 0);
    for group in targets.chunks(jobs) {
        let mut running = Vec::new();
        for target in group {
            // libFuzzer adds what it finds to its first corpus directory: a scratch one,
            // so the committed seeds (read, second) stay as they are.
            let scratch = fuzz_dir.join("target/corpus").join(target);
            fs::create_dir_all(&scratch)?;
            let log_path = fuzz_dir.join("target").join(format!("{target}.log"));
            let log = fs::File::create(&log_path)?;
            let mut cmd = Command::new("cargo");
            cmd.args(["+nightly", "fuzz", "run"])
                .args(FUZZ_BUILD_FLAGS)
                .arg(target)
                .arg(&scratch)
                .arg(fuzz_dir.join("corpus").join(target))
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                // An input that takes this long is a hang: fail on it, not at the end.
                .arg("-timeout=10")
                .current_dir(root)
                .stdout(log.try_clone()?)
                .stderr(log);
            eprintln!("xtask: {cmd:?}");
            let child = cmd.spawn().context("cannot start cargo fuzz run")?;
            running.push((target, log_path, child));
        }
        for (target, log_path, mut child) in running {
            let status = child.wait()?;
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            let line = if status.success() {
                passed += 1;
                format!("fuzz {target}: ok, {}", fuzz_stats(&text))
            } else {
                failed += 1;
                for l in failure_report(&text) {
                    eprintln!("{l}");
                }
                let artifact = text
                    .lines()
                    .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
                    .unwrap_or("no input saved");
                format!(
                    "fuzz {target}: FAILED ({status}), input {artifact}; log {}",
                    log_path.display()
                )
            };
            println!("{line}");
        }
    }
    println!(
        "fuzz: {passed} passed, {failed} failed in {} s ({built} s building)",
        started.elapsed().as_secs()
    );
    Ok((passed, failed))
}

/// The useful part of a failed run's log: the panic message, the backtrace frames in
/// nprot's code (which function panicked), libFuzzer's error summary, and the saved
/// input with the command that reproduces it.
fn failure_report(log: &str) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.contains("panicked at") {
            // The message runs up to the backtrace (or the libFuzzer report).
            out.extend(
                lines[i..]
                    .iter()
                    .take_while(|m| !m.contains("stack backtrace") && !m.starts_with("=="))
                    .take(10),
            );
        } else if l.contains(" nprot::") || l.contains("fuzz_targets/") {
            out.push(l);
            // Its "at file:line" line.
            if let Some(next) = lines
                .get(i + 1)
                .filter(|n| n.trim_start().starts_with("at "))
            {
                out.push(next);
                i += 1;
            }
        } else if l.contains("ERROR: ") || l.starts_with("SUMMARY: ") {
            out.push(l);
        } else if l.starts_with("Failing input:") {
            out.extend(lines[i..].iter().take_while(|m| !m.starts_with("Minimize")));
            break;
        }
        i += 1;
    }
    out
}

/// "N runs in S s (E exec/s), cov C, corpus K" from a libFuzzer log.
fn fuzz_stats(log: &str) -> String {
    // The last status line, e.g. "#1234 DONE cov: 56 ft: 78 corp: 9/1Kb ... exec/s: 411 rss: 40Mb".
    let field = |line: &str, key: &str| -> Option<String> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == key)?;
        words.next().map(str::to_owned)
    };
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains("exec/s:"))
        .unwrap_or("");
    let runs = last
        .split_whitespace()
        .next()
        .map_or("?", |w| w.trim_start_matches('#'));
    let secs = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("Done ")?
                .split_once(" runs in ")?
                .1
                .split(' ')
                .next()
        })
        .unwrap_or("?");
    format!(
        "{runs} runs in {secs} s ({} exec/s), cov {}, corpus {}",
        field(last, "exec/s:").as_deref().unwrap_or("?"),
        field(last, "cov:").as_deref().unwrap_or("?"),
        field(last, "corp:").as_deref().unwrap_or("?"),
    )
}

/// Builds in release and runs `nprot-bench` against the release sensor.
fn bench(quick: bool) -> Result<()> {
    if euid() != 0 {
        bail!("the benchmark builds network namespaces: run `cargo xtask bench` as root");
    }
    let bin = build(true)?;
    let mut cmd = Command::new("cargo");
    cmd.args([
        "run",
        "--release",
        "--package",
        "nprot-tests",
        "--bin",
        "nprot-bench",
        "--",
    ])
    .env("NPROT_BIN", &bin);
    if quick {
        cmd.args(["--quick", "--json", "target/bench-quick.json"]);
    }
    run(&mut cmd)
}

/// Runs a `cargo test` command, echoing its output; returns (passed, failed) summed over
/// its `test result:` lines.
fn run_tests(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader};

    eprintln!("xtask: {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!("{passed} passed, {} failed", failed.max(1));
        bail!("cargo test failed: {status}");
    }
    Ok((passed, failed))
}

/// The number just before `word` in a `test result:` line.
fn count_before(line: &str, word: &str) -> u64 {
    line.find(word)
        .and_then(|end| line[..end].rsplit([' ', '.']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{count_before, failure_report, fuzz_stats};

    #[test]
    fn reads_libfuzzer_logs() {
        let log = "#4096\tpulse  cov: 700 ft: 900 corp: 100/9Kb exec/s: 2048 rss: 60Mb\n\
                   #46334\tDONE   cov: 2538 ft: 4902 corp: 348/325Kb lim: 2656 exec/s: 759 rss: 419Mb\n\
                   Done 46334 runs in 61 second(s)\n";
        assert_eq!(
            fuzz_stats(log),
            "46334 runs in 61 s (759 exec/s), cov 2538, corpus 348/325Kb"
        );
        let crash = "INFO: seed\n\
                     thread '<unnamed>' (1) panicked at nprot-user/src/replay/mod.rs:150:35:\n\
                     attempt to add with overflow\n\
                     stack backtrace:\n\
                     \x20 3: core::panicking::panic\n\
                     \x20 4: nprot::replay::Replay::feed\n\
                     \x20            at ./nprot-user/src/replay/mod.rs:150:35\n\
                     ==1== ERROR: libFuzzer: deadly signal\n\
                     Failing input:\n\n\tfuzz/artifacts/replay/crash-1\n\n\
                     Minimize test case with:\n";
        let report = failure_report(crash);
        assert_eq!(
            report[0],
            "thread '<unnamed>' (1) panicked at nprot-user/src/replay/mod.rs:150:35:"
        );
        assert_eq!(report[1], "attempt to add with overflow");
        assert!(report[2].ends_with("nprot::replay::Replay::feed"));
        assert!(report[3].ends_with("mod.rs:150:35"));
        assert_eq!(report[4], "==1== ERROR: libFuzzer: deadly signal");
        assert_eq!(report.last(), Some(&""));
        assert!(report.contains(&"\tfuzz/artifacts/replay/crash-1"));
    }

    #[test]
    fn reads_cargo_test_summaries() {
        let line = "ok. 61 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(count_before(line, " passed"), 61);
        assert_eq!(count_before(line, " failed"), 2);
    }
}
