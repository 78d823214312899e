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
    "rsyslog", // the TCP collector of the sink tests
    "systemd", // systemd-analyze verify on the unit
];

/// What the Debian package must contain (`dpkg-deb -c` paths).
const DEB_CONTENTS: &[&str] = &[
    "./usr/bin/nprot",
    "./lib/systemd/system/nprot.service",
    "./etc/nprot/nprot.toml",
    "./usr/share/doc/nprot/README.packaging.md",
];

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
    /// Set up, lint, and run unit and end-to-end tests (end-to-end tests need root).
    Test {
        /// Only the tests whose name contains this.
        filter: Option<String>,
        /// Skip the privileged end-to-end tests.
        #[arg(long)]
        unit_only: bool,
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
        Task::Setup => setup(&root),
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
        Task::Test { filter, unit_only } => test(&root, filter, unit_only),
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
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed: {status}", cmd.get_program());
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup(root: &Path) -> Result<()> {
    setup_toolchain(root)?;
    setup_apt()
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
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
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
        .filter_map(|e| e.ok())
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
        .find(|l| l.ends_with(".deb"))
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
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
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

fn test(root: &Path, filter: Option<String>, unit_only: bool) -> Result<()> {
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
    if let Some(f) = &filter {
        unit.arg(f);
    }
    let mut totals = run_tests(&mut unit)?;
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
        if let Some(f) = &filter {
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
    use super::count_before;

    #[test]
    fn reads_cargo_test_summaries() {
        let line = "ok. 61 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(count_before(line, " passed"), 61);
        assert_eq!(count_before(line, " failed"), 2);
    }
}
