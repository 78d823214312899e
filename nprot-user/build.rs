use aya_build::{Package, Toolchain};

/// Builds the eBPF object into OUT_DIR, where `capture` embeds it.
fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "nprot-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../nprot-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default())
}
