//! What BPF programs sit on an interface: TCX (queried with the `bpf(2)` syscall, which
//! needs no bpftool of a recent enough version), legacy `tc` clsact filters, XDP, and
//! `bpftool net show` output where bpftool is installed.

use std::ffi::CString;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::in_netns;
use crate::process::run_with_timeout;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_TCX_INGRESS` of `enum bpf_attach_type`.
pub const BPF_TCX_INGRESS: u32 = 46;
/// `BPF_TCX_EGRESS` of `enum bpf_attach_type`.
pub const BPF_TCX_EGRESS: u32 = 47;

/// Program ids attached to one interface, by hook, and the raw tool output.
#[derive(Debug, Clone, Default)]
pub struct Attachments {
    /// Program ids on TCX ingress.
    pub tcx_ingress: Vec<u32>,
    /// Program ids on TCX egress.
    pub tcx_egress: Vec<u32>,
    /// `tc filter show dev IF ingress` output.
    pub tc_ingress: String,
    /// `tc filter show dev IF egress` output.
    pub tc_egress: String,
    /// `ip -d link show dev IF` output (shows an attached XDP program).
    pub link: String,
    /// `bpftool net show dev IF` output, if bpftool is installed.
    pub bpftool: Option<String>,
}

impl Attachments {
    /// Whether anything is attached: a TCX program, a tc filter, an XDP program, or an
    /// entry in bpftool's listing.
    pub fn any(&self) -> bool {
        !self.tcx_ingress.is_empty()
            || !self.tcx_egress.is_empty()
            || !self.tc_ingress.trim().is_empty()
            || !self.tc_egress.trim().is_empty()
            || self
                .link
                .split_whitespace()
                .any(|t| t.starts_with("xdp") || t.starts_with("prog/xdp"))
            || self.bpftool.as_deref().is_some_and(bpftool_lists_programs)
    }
}

impl std::fmt::Display for Attachments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "tcx ingress prog ids: {:?}", self.tcx_ingress)?;
        writeln!(f, "tcx egress prog ids: {:?}", self.tcx_egress)?;
        writeln!(f, "tc filter ingress: {:?}", self.tc_ingress.trim())?;
        writeln!(f, "tc filter egress: {:?}", self.tc_egress.trim())?;
        writeln!(f, "ip -d link: {}", self.link.trim())?;
        match &self.bpftool {
            Some(out) => write!(f, "bpftool net show: {}", out.trim()),
            None => write!(f, "bpftool net show: (bpftool not installed)"),
        }
    }
}

/// Whether a `bpftool net show dev IF` listing names a program (tc, tcx or xdp): its
/// section headers are followed by entries only when something is attached.
fn bpftool_lists_programs(out: &str) -> bool {
    out.lines().any(|l| {
        let l = l.trim();
        !l.is_empty()
            && !l.ends_with(':')
            && (l.contains("id ") || l.contains("prog_id") || l.contains("tcx"))
    })
}

/// Lists what is attached to `dev` inside the namespace `ns`.
pub fn attachments(ns: &str, dev: &str) -> Result<Attachments> {
    let dev_owned = dev.to_owned();
    let (ingress, egress) = in_netns(ns, move || -> Result<(Vec<u32>, Vec<u32>)> {
        let ifindex = ifindex(&dev_owned)?;
        Ok((
            tcx_query(ifindex, BPF_TCX_INGRESS)?,
            tcx_query(ifindex, BPF_TCX_EGRESS)?,
        ))
    })??;
    let run = |args: &[&str]| -> Result<String> {
        let out = run_with_timeout(
            Command::new("ip").args(["netns", "exec", ns]).args(args),
            Duration::from_secs(10),
        )?;
        if !out.status.success() {
            bail!(
                "{args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let bpftool = if which("bpftool") {
        Some(run(&["bpftool", "net", "show", "dev", dev])?)
    } else {
        None
    };
    Ok(Attachments {
        tcx_ingress: ingress,
        tcx_egress: egress,
        tc_ingress: run(&["tc", "filter", "show", "dev", dev, "ingress"])?,
        tc_egress: run(&["tc", "filter", "show", "dev", dev, "egress"])?,
        link: run(&["ip", "-d", "link", "show", "dev", dev])?,
        bpftool,
    })
}

/// Whether `program` is on PATH.
pub fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The interface index of `dev` in the calling thread's network namespace.
pub fn ifindex(dev: &str) -> Result<u32> {
    let name = CString::new(dev).context("interface name")?;
    // SAFETY: a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        return Err(std::io::Error::last_os_error()).context(format!("no interface {dev}"));
    }
    Ok(idx)
}

/// A `union bpf_attr` buffer: 128 zeroed bytes, 8-aligned, fields set by byte offset in
/// native byte order.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn set_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn set_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }

    fn get_u32(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.0[offset..offset + 4]);
        u32::from_ne_bytes(b)
    }
}

fn sys_bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a zero-initialised, 8-aligned `union bpf_attr` buffer that outlives
    // the call; the pointers stored in it are valid for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Program ids on a TCX hook of `ifindex` (calling thread's namespace), via
/// `BPF_PROG_QUERY`.
pub fn tcx_query(ifindex: u32, attach_type: u32) -> Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = Attr::new();
    attr.set_u32(0, ifindex); // target_ifindex
    attr.set_u32(4, attach_type);
    attr.set_u64(16, ids.as_mut_ptr() as u64); // prog_ids
    attr.set_u32(24, ids.len() as u32); // count
    sys_bpf(BPF_PROG_QUERY, &mut attr)
        .with_context(|| format!("BPF_PROG_QUERY ifindex {ifindex} type {attach_type}"))?;
    let count = (attr.get_u32(24) as usize).min(ids.len());
    Ok(ids[..count].to_vec())
}

/// A TCX link the harness made itself (to check that [`attachments`] sees one); closing
/// it detaches the program.
#[derive(Debug)]
pub struct TestLink {
    _prog: std::os::fd::OwnedFd,
    _link: std::os::fd::OwnedFd,
}

/// Loads a pass-through `sched_cls` program (`return TCX_NEXT`) and links it to TCX
/// `attach_type` of `dev` in the calling thread's namespace.
pub fn attach_pass_program(dev: &str, attach_type: u32) -> Result<TestLink> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // r0 = -1 (TCX_NEXT); exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0x00, 0, 0, 0xff, 0xff, 0xff, 0xff]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut attr = Attr::new();
    attr.set_u32(0, BPF_PROG_TYPE_SCHED_CLS);
    attr.set_u32(4, insns.len() as u32);
    attr.set_u64(8, insns.as_ptr() as u64);
    attr.set_u64(16, license.as_ptr() as u64);
    let prog = sys_bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD")?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
    let mut attr = Attr::new();
    attr.set_u32(0, std::os::fd::AsRawFd::as_raw_fd(&prog) as u32);
    attr.set_u32(4, ifindex(dev)?);
    attr.set_u32(8, attach_type);
    let link = sys_bpf(BPF_LINK_CREATE, &mut attr).context("BPF_LINK_CREATE (tcx)")?;
    // SAFETY: as above.
    let link = unsafe { OwnedFd::from_raw_fd(link as i32) };
    Ok(TestLink {
        _prog: prog,
        _link: link,
    })
}
