//! Build script of the daemon: builds the eBPF object that `capture` embeds.
use aya_build::{Package, Toolchain};

/// Builds the eBPF object into OUT_DIR, where `capture` embeds it.
fn main() -> anyhow::Result<()> {
    // cargo-fuzz builds with `--cfg fuzzing`, and fuzz targets never load the programs:
    // an empty object saves a full eBPF build per fuzz build.
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out.join("nprot"), [])?;
        return Ok(());
    }
    let ebpf = Package {
        name: "nprot-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../nprot-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default())
}
