//! What BPF programs sit on an interface: TCX (queried through aya, which needs no
//! bpftool of a recent enough version), legacy `tc` clsact filters, XDP, and
//! `bpftool net show` output where bpftool is installed.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier,
        links::LinkOrder,
        tc::{TcAttachOptions, TcAttachType},
    },
};
use object::{
    Architecture, BinaryFormat, Endianness, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
    write::{Object, Symbol, SymbolSection},
};

use crate::{netns::in_netns, process::run_with_timeout};

/// The TCX ingress hook.
pub const BPF_TCX_INGRESS: TcAttachType = TcAttachType::Ingress;
/// The TCX egress hook.
pub const BPF_TCX_EGRESS: TcAttachType = TcAttachType::Egress;

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
        Ok((
            tcx_query(&dev_owned, BPF_TCX_INGRESS)?,
            tcx_query(&dev_owned, BPF_TCX_EGRESS)?,
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

/// Program ids on a TCX hook of `dev` (calling thread's namespace).
pub fn tcx_query(dev: &str, attach_type: TcAttachType) -> Result<Vec<u32>> {
    let (_revision, programs) = SchedClassifier::query_tcx(dev, attach_type)
        .with_context(|| format!("querying TCX {attach_type:?} of {dev}"))?;
    Ok(programs
        .iter()
        .map(aya::programs::ProgramInfo::id)
        .collect())
}

/// A TCX link the harness made itself (to check that [`attachments`] sees one); dropping
/// it detaches and unloads the program.
#[derive(Debug)]
pub struct TestLink {
    _ebpf: Ebpf,
}

/// An ELF object with one pass-through `classifier` program named `pass`
/// (`r0 = -1 (TCX_NEXT); exit`), for aya to load.
fn pass_program_object() -> Result<Vec<u8>> {
    let insns: [[u8; 8]; 2] = [
        [0xb7, 0x00, 0, 0, 0xff, 0xff, 0xff, 0xff],
        [0x95, 0, 0, 0, 0, 0, 0, 0],
    ];
    let code = insns.concat();
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
    let text = obj.add_section(Vec::new(), b"classifier".to_vec(), SectionKind::Text);
    let value = obj.append_section_data(text, &code, 8);
    obj.add_symbol(Symbol {
        name: b"pass".to_vec(),
        value,
        size: code.len() as u64,
        kind: SymbolKind::Text,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(text),
        flags: SymbolFlags::None,
    });
    let license = obj.add_section(Vec::new(), b"license".to_vec(), SectionKind::Data);
    obj.append_section_data(license, b"GPL\0", 1);
    obj.write().context("writing the test program's ELF object")
}

/// Loads a pass-through `sched_cls` program (`return TCX_NEXT`) and links it to TCX
/// `attach_type` of `dev` in the calling thread's namespace.
pub fn attach_pass_program(dev: &str, attach_type: TcAttachType) -> Result<TestLink> {
    let mut ebpf = Ebpf::load(&pass_program_object()?).context("loading the test program")?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut("pass")
        .context("the test program is missing")?
        .try_into()
        .context("the test program is not a classifier")?;
    prog.load().context("BPF_PROG_LOAD")?;
    let options = TcAttachOptions::TcxOrder(LinkOrder::default());
    prog.attach_with_options(dev, attach_type, options)
        .context("BPF_LINK_CREATE (tcx)")?;
    Ok(TestLink { _ebpf: ebpf })
}
