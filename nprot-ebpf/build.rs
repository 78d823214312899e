//! Build script of the eBPF crate: reruns the build when bpf-linker changes.
use which::which;

/// Rebuild when bpf-linker changes: it is the linker of this crate, not a cargo dependency.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
