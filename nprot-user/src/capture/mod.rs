//! Capture: loads the eBPF programs, attaches them to the guarded interfaces and decodes
//! what the kernel reports through the ring buffer.
//!
//! Attachment uses TCX links on kernels that have them (≥ 6.6) and the clsact qdisc
//! otherwise ([`TcAttach`]). TCX links belong to this process, so they vanish with it even
//! on a crash; a clsact qdisc that nprot added itself is removed again when the sensor
//! stops.
//!
//! Errors from aya are told apart by their variant and the errno they carry
//! ([`Errno`]), never by their text.

pub mod attribution;

use std::{
    collections::HashSet,
    fs, io,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use aya::{
    BtfError, Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, ProgramArray, RingBuf},
    pin::PinError,
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        TcError, cgroup_sock_addr,
        tc::{self, NlOptions, TcAttachOptions},
    },
    sys::{NetlinkError, SyscallError},
    util::KernelVersion,
};
use log::{debug, info, warn};
use nprot_common::{
    FlowKey, PageEntry, SensorConfig, SocketOwner, VerdictEntry, names, owner_stat,
    prefilter::{self, Filter},
    stat,
};
use thiserror::Error;

/// The compiled eBPF object, built by `build.rs` with aya-build (public for the tests that
/// load its test program).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nprot"));

/// Why the sensor could not start capturing.
#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("interface '{0}' does not exist")]
    /// No interface has this name.
    NoSuchInterface(String),
    #[error("interface '{0}' is given twice")]
    /// The interface was named twice.
    DuplicateInterface(String),
    #[error("loading eBPF programs needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON): {0}")]
    /// The kernel refused for lack of privileges (EPERM); what it refused.
    Privileges(String),
    #[error("the kernel rejected eBPF program {program}: {reason}")]
    /// The verifier (or the kernel) refused a program.
    Rejected {
        /// The program.
        program: String,
        /// The syscall's error.
        reason: String,
    },
    #[error("cannot attach {program} to {interface} ({direction}): {reason}")]
    /// A program could not be attached to an interface.
    Attach {
        /// The program.
        program: String,
        /// The interface.
        interface: String,
        /// `ingress` or `egress`.
        direction: &'static str,
        /// Why.
        reason: String,
    },
    #[error("eBPF object is missing {0}; the build is inconsistent")]
    /// The object lacks a map or program the daemon takes.
    Missing(&'static str),
    #[error("eBPF map {map}: {source}")]
    /// A map could not be taken or written.
    Map {
        /// The map's name.
        map: &'static str,
        /// What aya said.
        #[source]
        source: MapError,
    },
    #[error("loading the eBPF object: {0}")]
    /// The object could not be loaded for another reason.
    Load(String),
}

/// How packets on an interface begin, which decides the program variant attached to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// Ethernet, loopback, veth, Wi-Fi: a 14-byte L2 header precedes IP.
    Ethernet,
    /// Tunnels, WireGuard, tun: packets start at the IP header.
    L3,
}

impl LinkKind {
    /// Reads the ARPHRD type of `interface` from sysfs.
    pub fn of(interface: &str) -> Result<LinkKind, CaptureError> {
        let path = Path::new("/sys/class/net").join(interface).join("type");
        let raw = fs::read_to_string(&path)
            .map_err(|_| CaptureError::NoSuchInterface(interface.to_owned()))?;
        // ARPHRD_ETHER = 1, ARPHRD_LOOPBACK = 772: both carry an Ethernet header at TC.
        Ok(match raw.trim() {
            "1" | "772" => LinkKind::Ethernet,
            _ => LinkKind::L3,
        })
    }

    fn programs(self) -> [(&'static str, TcAttachType); 2] {
        match self {
            LinkKind::Ethernet => [
                (names::PROG_ETH_EGRESS, TcAttachType::Egress),
                (names::PROG_ETH_INGRESS, TcAttachType::Ingress),
            ],
            LinkKind::L3 => [
                (names::PROG_L3_EGRESS, TcAttachType::Egress),
                (names::PROG_L3_INGRESS, TcAttachType::Ingress),
            ],
        }
    }
}

/// How the TC programs are attached to the guarded interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcAttach {
    /// TCX links on kernels that have them (≥ 6.6), the clsact qdisc otherwise.
    #[default]
    Auto,
    /// The clsact qdisc even where TCX exists: the older kernels' path, for tests
    /// (`nprot run --force-clsact`, hidden).
    Clsact,
}

impl TcAttach {
    /// Whether this kernel gets TCX links.
    fn tcx(self) -> bool {
        self == TcAttach::Auto
            && KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
    }
}

/// The loaded and attached programs; dropping it detaches everything.
pub struct Sensor {
    // Field order matters for drop: maps first, then the object that owns the links.
    records: Option<RingBuf<MapData>>,
    verdicts: HashMap<MapData, FlowKey, VerdictEntry>,
    pages: HashMap<MapData, FlowKey, PageEntry>,
    /// Names the kernel answers NXDOMAIN (block mode).
    dns_names: HashMap<MapData, u64, u8>,
    /// When each verdict in the map was written (see [`Sensor::sweep_stale_verdicts`]).
    verdicts_written: std::collections::HashMap<FlowKey, Instant>,
    /// Verdicts removed because their flow sent nothing more to pick them up.
    pub stale_verdicts: u64,
    stats: PerCpuArray<MapData, u64>,
    ebpf: Ebpf,
    added_qdiscs: Vec<String>,
    /// `(interface, mechanism)` for each guarded interface.
    pub attached: Vec<(String, &'static str)>,
}

impl Sensor {
    /// Loads the programs, writes `config`, and attaches to every interface in `interfaces`
    /// the way `how` says.
    pub fn start(
        interfaces: &[String],
        config: SensorConfig,
        how: TcAttach,
    ) -> Result<Sensor, CaptureError> {
        let mut kinds = Vec::with_capacity(interfaces.len());
        for (i, name) in interfaces.iter().enumerate() {
            if interfaces[..i].contains(name) {
                return Err(CaptureError::DuplicateInterface(name.clone()));
            }
            kinds.push((name.clone(), LinkKind::of(name)?));
        }
        raise_memlock_limit();

        // One capture scratch slot per possible CPU (see SCRATCH in nprot-ebpf).
        let cpus =
            aya::util::nr_cpus().map_err(|(what, e)| CaptureError::Load(format!("{what}: {e}")))?;
        let cpus = u32::try_from(cpus).unwrap_or(u32::MAX).max(1);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::SCRATCH, cpus)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                if is_permission_error(&e) {
                    CaptureError::Privileges(chain(&e))
                } else {
                    CaptureError::Load(chain(&e))
                }
            })?;

        let tcx = how.tcx();
        let mut sensor = Sensor {
            records: Some(take_map(&mut ebpf, names::RECORDS)?),
            verdicts: take_map(&mut ebpf, names::VERDICTS)?,
            pages: take_map(&mut ebpf, names::PAGES)?,
            dns_names: take_map(&mut ebpf, names::DNS_NAMES)?,
            verdicts_written: std::collections::HashMap::new(),
            stale_verdicts: 0,
            stats: take_map(&mut ebpf, names::STATS)?,
            ebpf,
            added_qdiscs: Vec::new(),
            attached: Vec::new(),
        };
        sensor.configure(config)?;
        sensor.load_datagram_programs()?;
        for (interface, kind) in kinds {
            sensor.attach(&interface, kind, tcx)?;
        }
        Ok(sensor)
    }

    /// Loads the datagram programs and puts them where the TC programs tail-call them
    /// (`TAIL_CALLS`). They are never attached themselves. The pre-filter program is not
    /// loaded here ([`Sensor::load_prefilter`]).
    fn load_datagram_programs(&mut self) -> Result<(), CaptureError> {
        self.load_tail_called(&names::DATAGRAM_PROGRAMS)
    }

    /// Loads the pre-filter program into its slot: needed before the pre-filter is switched
    /// on (`SensorConfig::prefilter`), and not before, as verifying it takes about 1.8 s.
    pub fn load_prefilter(&mut self) -> Result<(), CaptureError> {
        self.load_tail_called(&[(names::PROG_PREFILTER, names::PREFILTER_SLOT)])
    }

    /// Loads `programs` and puts each in its `TAIL_CALLS` slot.
    fn load_tail_called(&mut self, programs: &[(&'static str, u32)]) -> Result<(), CaptureError> {
        let mut fds = Vec::with_capacity(programs.len());
        for &(name, slot) in programs {
            let program: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or(CaptureError::Missing("a tail-called program"))?
                .try_into()
                .map_err(|e: ProgramError| CaptureError::Load(chain(&e)))?;
            program.load().map_err(|e| CaptureError::Rejected {
                program: name.to_owned(),
                reason: rejection(name, &e),
            })?;
            let fd = program
                .fd()
                .map_err(|e| CaptureError::Load(chain(&e)))?
                .try_clone()
                .map_err(|e| CaptureError::Load(format!("{name}: {e}")))?;
            fds.push((slot, fd));
        }
        let map = self
            .ebpf
            .map_mut(names::TAIL_CALLS)
            .ok_or(CaptureError::Missing(names::TAIL_CALLS))?;
        let map_error = |source| CaptureError::Map {
            map: names::TAIL_CALLS,
            source,
        };
        let mut slots = ProgramArray::try_from(map).map_err(map_error)?;
        for (slot, fd) in &fds {
            slots.set(*slot, fd, 0).map_err(map_error)?;
        }
        Ok(())
    }

    fn attach(&mut self, interface: &str, kind: LinkKind, tcx: bool) -> Result<(), CaptureError> {
        if !tcx {
            match tc::qdisc_add_clsact(interface) {
                Ok(()) => self.added_qdiscs.push(interface.to_owned()),
                // An existing clsact qdisc belongs to someone else: share it, leave it.
                Err(e) if qdisc_exists(&e) => {}
                Err(e) => {
                    return Err(CaptureError::Attach {
                        program: "clsact qdisc".into(),
                        interface: interface.into(),
                        direction: "both",
                        reason: chain(&e),
                    });
                }
            }
        }
        for (name, attach_type) in kind.programs() {
            let direction = match attach_type {
                TcAttachType::Ingress => "ingress",
                _ => "egress",
            };
            let program: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or(CaptureError::Missing("a TC program"))?
                .try_into()
                .map_err(|e: ProgramError| CaptureError::Load(chain(&e)))?;
            if program.fd().is_err() {
                program.load().map_err(|e| {
                    if is_permission_error(&e) {
                        CaptureError::Privileges(chain(&e))
                    } else {
                        CaptureError::Rejected {
                            program: name.to_owned(),
                            reason: rejection(name, &e),
                        }
                    }
                })?;
            }
            // Explicit either way: aya's plain `attach` picks TCX by itself on ≥ 6.6.
            let options = if tcx {
                TcAttachOptions::TcxOrder(LinkOrder::default())
            } else {
                TcAttachOptions::Netlink(NlOptions::default())
            };
            program
                .attach_with_options(interface, attach_type, options)
                .map_err(|e| CaptureError::Attach {
                    program: name.to_owned(),
                    interface: interface.to_owned(),
                    direction,
                    reason: chain(&e),
                })?;
        }
        let mechanism = if tcx { "tcx" } else { "clsact" };
        info!("guarding {interface} ({kind:?}, {mechanism})");
        self.attached.push((interface.to_owned(), mechanism));
        Ok(())
    }

    /// Writes new sensor-wide settings (mode changes); they apply from the next flow.
    pub fn configure(&mut self, config: SensorConfig) -> Result<(), CaptureError> {
        self.write_array(names::CONFIG, [(0, &config)])
    }

    /// Writes `filter` into buffer `buffer` (0 or 1) of the pre-filter's summary: the one
    /// not in force, so that no flow is judged by half a summary.
    pub fn write_prefilter(&mut self, buffer: u8, filter: &Filter) -> Result<(), CaptureError> {
        let base = u32::from(buffer) * prefilter::BLOCKS;
        let blocks = (base..base + prefilter::BLOCKS).zip(&filter.blocks);
        self.write_array(names::PREFILTER_BLOOM, blocks)?;
        self.write_array(
            names::PREFILTER_LENGTHS,
            [(u32::from(buffer), &filter.lengths)],
        )
    }

    /// Writes `values` at their indexes of the array map `name`.
    fn write_array<'v, T: aya::Pod>(
        &mut self,
        name: &'static str,
        values: impl IntoIterator<Item = (u32, &'v T)>,
    ) -> Result<(), CaptureError> {
        let map_error = |source| CaptureError::Map { map: name, source };
        let map = self.ebpf.map_mut(name).ok_or(CaptureError::Missing(name))?;
        let mut array: Array<_, T> = Array::try_from(map).map_err(map_error)?;
        for (index, value) in values {
            array.set(index, value, 0).map_err(map_error)?;
        }
        Ok(())
    }

    /// Hands the ring buffer of records to the reader; callable once.
    pub fn take_records(&mut self) -> Option<RingBuf<MapData>> {
        self.records.take()
    }

    /// Tells the kernel the decision for a flow; it takes effect on the flow's next packet.
    pub fn set_verdict(
        &mut self,
        key: &FlowKey,
        verdict: VerdictEntry,
    ) -> Result<(), CaptureError> {
        self.verdicts
            .insert(key, verdict, 0)
            .map_err(|source| CaptureError::Map {
                map: names::VERDICTS,
                source,
            })?;
        self.verdicts_written.insert(*key, Instant::now());
        Ok(())
    }

    /// Puts the page a blocked flow's client gets; the verdict that asks for it follows.
    pub fn set_page(&mut self, key: &FlowKey, page: &PageEntry) -> Result<(), CaptureError> {
        self.pages
            .insert(key, page, 0)
            .map_err(|source| CaptureError::Map {
                map: names::PAGES,
                source,
            })
    }

    /// Sets a name's entry in the kernel's `DNS_NAMES` map (`nprot_common::dns`).
    pub fn set_dns_name(&mut self, hash: u64, value: u8) -> Result<(), CaptureError> {
        self.dns_names
            .insert(hash, value, 0)
            .map_err(|source| CaptureError::Map {
                map: names::DNS_NAMES,
                source,
            })
    }

    /// Removes a name from `DNS_NAMES`; one not there is no error.
    pub fn remove_dns_name(&mut self, hash: u64) -> Result<(), CaptureError> {
        match self.dns_names.remove(&hash) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(source) => Err(CaptureError::Map {
                map: names::DNS_NAMES,
                source,
            }),
        }
    }

    /// Removes the verdicts written more than `max_age` ago and still in
    /// the map: a verdict is picked up by its flow's next packet, so one still there long
    /// after belongs to a flow that ended before it arrived, and would otherwise stay
    /// until the map is full. The map is nearly empty normally, so a sweep costs a few
    /// syscalls. Returns how many went.
    pub fn sweep_stale_verdicts(&mut self, max_age: Duration) -> usize {
        let waiting: HashSet<FlowKey> = self.verdicts.keys().filter_map(Result::ok).collect();
        self.verdicts_written.retain(|key, _| waiting.contains(key));
        let mut removed = 0;
        for key in &waiting {
            // One not written by this sensor is old by definition.
            let old = self
                .verdicts_written
                .get(key)
                .is_none_or(|at| at.elapsed() > max_age);
            // Gone already (picked up a moment ago) is fine: then it was not stale.
            if old && self.verdicts.remove(key).is_ok() {
                self.verdicts_written.remove(key);
                removed += 1;
            }
        }
        self.stale_verdicts += removed as u64;
        removed
    }

    /// Sums the kernel's per-CPU counters, in `nprot_common::stat` order.
    pub fn kernel_stats(&self) -> Result<[u64; stat::COUNT as usize], CaptureError> {
        let mut out = [0u64; stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = self
                .stats
                .get(&(i as u32), 0)
                .map_err(|source| CaptureError::Map {
                    map: names::STATS,
                    source,
                })?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

/// What the cgroup connect hooks hand to user space (see [`attribution`]).
pub struct ConnectHooks {
    /// Every TCP connect, as it happens.
    pub connects: RingBuf<MapData>,
    /// Socket cookie → who connected it.
    pub owners: HashMap<MapData, u64, SocketOwner>,
    /// The hooks' counters.
    pub counters: HookCounters,
}

/// The connect hooks' per-CPU counters (`nprot_common::owner_stat`).
pub struct HookCounters(PerCpuArray<MapData, u64>);

impl HookCounters {
    /// Connects seen and connect records lost, summed over CPUs.
    pub fn get(&self) -> (u64, u64) {
        let sum = |i: u32| self.0.get(&i, 0).map_or(0, |v| v.iter().sum::<u64>());
        (sum(owner_stat::CONNECTS), sum(owner_stat::RING_DROPS))
    }
}

impl Sensor {
    /// Loads the `connect4`/`connect6` hooks and attaches them to the cgroup v2
    /// directory `dir` (called `shown` in messages; normally the root of the hierarchy, so that every process is
    /// seen), alongside other programs there. Both or neither: on failure nothing stays
    /// attached and the reason is returned.
    pub fn attach_connect_hooks(
        &mut self,
        dir: &fs::File,
        shown: &str,
    ) -> Result<ConnectHooks, String> {
        // A link (kernel ≥ 5.7) always shares the hook with other programs and refuses
        // any flag; the older program attachment must ask for sharing.
        let mode = if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0)) {
            CgroupAttachMode::Single
        } else {
            CgroupAttachMode::AllowMultiple
        };
        let mut attached: Vec<(&str, cgroup_sock_addr::CgroupSockAddrLinkId)> = Vec::new();
        let mut failure = None;
        for name in [names::PROG_CONNECT4, names::PROG_CONNECT6] {
            let result = (|| -> Result<cgroup_sock_addr::CgroupSockAddrLinkId, String> {
                let program: &mut CgroupSockAddr = self
                    .ebpf
                    .program_mut(name)
                    .ok_or_else(|| format!("{name} is missing from the eBPF object"))?
                    .try_into()
                    .map_err(|e: ProgramError| chain(&e))?;
                if program.fd().is_err() {
                    program.load().map_err(|e| {
                        format!("the kernel rejected {name}: {}", rejection(name, &e))
                    })?;
                }
                program
                    .attach(dir, mode)
                    .map_err(|e| format!("cannot attach {name} to {shown}: {}", chain(&e)))
            })();
            match result {
                Ok(link) => attached.push((name, link)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for (name, link) in attached {
                if let Some(p) = self.ebpf.program_mut(name)
                    && let Ok(p) = <&mut CgroupSockAddr>::try_from(p)
                {
                    let _ = p.detach(link);
                }
            }
            return Err(e);
        }
        let map = |e: CaptureError| e.to_string();
        Ok(ConnectHooks {
            connects: take_map(&mut self.ebpf, names::CONNECTS).map_err(map)?,
            owners: take_map(&mut self.ebpf, names::SOCKET_OWNERS).map_err(map)?,
            counters: HookCounters(take_map(&mut self.ebpf, names::OWNER_STATS).map_err(map)?),
        })
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        // Links of the programs are released with `self.ebpf`; the qdisc we added goes here.
        for interface in self.added_qdiscs.drain(..) {
            if let Err(e) = remove_clsact(&interface) {
                warn!("could not remove the clsact qdisc nprot added to {interface}: {e}");
            }
        }
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(CaptureError::Missing(name))?;
    T::try_from(map).map_err(|source| CaptureError::Map { map: name, source })
}

fn remove_clsact(interface: &str) -> io::Result<()> {
    let status = std::process::Command::new("tc")
        .args(["qdisc", "del", "dev", interface, "clsact"])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("tc exited with {status}")))
    }
}

/// The errno an aya error carries, found by its variant, never by its text.
trait Errno {
    /// The raw OS error code, if the error came from a syscall.
    fn errno(&self) -> Option<i32>;
}

impl Errno for io::Error {
    fn errno(&self) -> Option<i32> {
        self.raw_os_error()
    }
}

impl Errno for SyscallError {
    fn errno(&self) -> Option<i32> {
        self.io_error.errno()
    }
}

impl Errno for NetlinkError {
    fn errno(&self) -> Option<i32> {
        self.raw_os_error()
    }
}

impl Errno for EbpfError {
    fn errno(&self) -> Option<i32> {
        match self {
            EbpfError::FileError { error, .. } => error.errno(),
            EbpfError::BtfError(e) => e.errno(),
            EbpfError::MapError(e) => e.errno(),
            EbpfError::ProgramError(e) => e.errno(),
            _ => None,
        }
    }
}

impl Errno for BtfError {
    fn errno(&self) -> Option<i32> {
        match self {
            BtfError::LoadError { io_error, .. } => io_error.errno(),
            _ => None,
        }
    }
}

#[allow(
    clippy::match_same_arms,
    reason = "one arm per error shape that carries an errno"
)]
impl Errno for MapError {
    fn errno(&self) -> Option<i32> {
        match self {
            MapError::CreateError { io_error, .. } | MapError::IoError(io_error) => {
                io_error.errno()
            }
            MapError::SyscallError(e) => e.errno(),
            MapError::PinError {
                error: PinError::SyscallError(e),
                ..
            } => e.errno(),
            _ => None,
        }
    }
}

impl Errno for TcError {
    fn errno(&self) -> Option<i32> {
        match self {
            TcError::NetlinkError(e) => e.errno(),
            TcError::IoError(e) => e.errno(),
            _ => None,
        }
    }
}

impl Errno for ProgramError {
    fn errno(&self) -> Option<i32> {
        match self {
            ProgramError::LoadError { io_error, .. } | ProgramError::IOError(io_error) => {
                io_error.errno()
            }
            ProgramError::SyscallError(e) => e.errno(),
            ProgramError::MapError(e) => e.errno(),
            ProgramError::TcError(e) => e.errno(),
            ProgramError::NetlinkError(e) => e.errno(),
            ProgramError::Btf(e) => e.errno(),
            _ => None,
        }
    }
}

/// EPERM means missing capabilities; EACCES from BPF_PROG_LOAD is the verifier saying no.
fn is_permission_error(e: &impl Errno) -> bool {
    e.errno() == Some(libc::EPERM)
}

/// Whether adding the clsact qdisc failed because the interface has one already.
fn qdisc_exists(e: &TcError) -> bool {
    matches!(e, TcError::AlreadyAttached) || e.errno() == Some(libc::EEXIST)
}

/// Why the kernel refused to load `name`, in one line; the verifier's full output goes to
/// the debug log.
fn rejection(name: &str, e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            debug!("verifier output for {name}: {verifier_log}");
            format!(
                "the BPF_PROG_LOAD syscall returned {io_error} (verifier output at debug level)"
            )
        }
        other => chain(other),
    }
}

/// An error with its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // `#[error("outer: {0}")]` wrappers already show their source; say it once.
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones ignore it.
fn raise_memlock_limit() {
    use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
    if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_err() {
        debug!("could not raise RLIMIT_MEMLOCK; fine on kernels ≥ 5.11");
    }
}

/// The addresses of this host's interfaces (in the sensor's network namespace).
pub fn local_addrs() -> io::Result<HashSet<IpAddr>> {
    let mut out = HashSet::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(addr) = ifa.address else { continue };
        if let Some(sa) = addr.as_sockaddr_in() {
            out.insert(IpAddr::V4(sa.ip()));
        } else if let Some(sa) = addr.as_sockaddr_in6() {
            out.insert(IpAddr::V6(sa.ip()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The embedded object against what the loader takes from it: no root needed, so a
    //! renamed map or a changed layout fails here rather than at `nprot run`.

    use std::mem::size_of;

    use aya_obj::{
        Object, ProgramSection,
        generated::bpf_map_type::{self, *},
        programs::CgroupSockAddrAttachType,
    };
    use nprot_common::{
        DatagramPacket, FlowState, MAX_DNS_NAMES, MAX_FLOWS, MAX_PAGES, MAX_PENDING_VERDICTS,
        MAX_SOCKET_OWNERS, PayloadRecord, prefilter,
    };

    use super::*;

    fn object() -> Object {
        Object::parse(EBPF_OBJECT).expect("the embedded eBPF object parses")
    }

    /// What a map must be: type, key and value size, and `max_entries` where the object
    /// fixes it (ring buffers: their byte size, checked for what the kernel demands).
    struct Want {
        name: &'static str,
        kind: bpf_map_type,
        key: usize,
        value: usize,
        max_entries: Option<u32>,
    }

    #[test]
    fn every_map_the_daemon_takes_exists_with_its_layout() {
        let obj = object();
        let want = [
            Want {
                name: names::FLOWS,
                kind: BPF_MAP_TYPE_LRU_HASH,
                key: size_of::<FlowKey>(),
                value: size_of::<FlowState>(),
                max_entries: Some(MAX_FLOWS),
            },
            Want {
                name: names::VERDICTS,
                kind: BPF_MAP_TYPE_HASH,
                key: size_of::<FlowKey>(),
                value: size_of::<VerdictEntry>(),
                max_entries: Some(MAX_PENDING_VERDICTS),
            },
            Want {
                name: names::PAGES,
                kind: BPF_MAP_TYPE_LRU_HASH,
                key: size_of::<FlowKey>(),
                value: size_of::<PageEntry>(),
                max_entries: Some(MAX_PAGES),
            },
            Want {
                name: names::RECORDS,
                kind: BPF_MAP_TYPE_RINGBUF,
                key: 0,
                value: 0,
                max_entries: None,
            },
            Want {
                name: names::CONFIG,
                kind: BPF_MAP_TYPE_ARRAY,
                key: size_of::<u32>(),
                value: size_of::<SensorConfig>(),
                max_entries: Some(1),
            },
            Want {
                name: names::STATS,
                kind: BPF_MAP_TYPE_PERCPU_ARRAY,
                key: size_of::<u32>(),
                value: size_of::<u64>(),
                max_entries: Some(stat::COUNT),
            },
            Want {
                name: names::SCRATCH,
                kind: BPF_MAP_TYPE_ARRAY,
                key: size_of::<u32>(),
                value: size_of::<PayloadRecord>(),
                // Sized to the possible CPUs at load (`map_max_entries`).
                max_entries: None,
            },
            Want {
                name: names::SOCKET_OWNERS,
                kind: BPF_MAP_TYPE_LRU_HASH,
                key: size_of::<u64>(),
                value: size_of::<SocketOwner>(),
                max_entries: Some(MAX_SOCKET_OWNERS),
            },
            Want {
                name: names::CONNECTS,
                kind: BPF_MAP_TYPE_RINGBUF,
                key: 0,
                value: 0,
                max_entries: None,
            },
            Want {
                name: names::LAST_CONNECT,
                kind: BPF_MAP_TYPE_PERCPU_ARRAY,
                key: size_of::<u32>(),
                value: size_of::<[u64; 2]>(),
                max_entries: Some(1),
            },
            Want {
                name: names::OWNER_STATS,
                kind: BPF_MAP_TYPE_PERCPU_ARRAY,
                key: size_of::<u32>(),
                value: size_of::<u64>(),
                max_entries: Some(owner_stat::COUNT),
            },
            Want {
                name: names::TAIL_CALLS,
                kind: BPF_MAP_TYPE_PROG_ARRAY,
                key: size_of::<u32>(),
                value: size_of::<u32>(),
                max_entries: Some(names::TAIL_CALL_SLOTS),
            },
            Want {
                name: names::DATAGRAM_PACKET,
                kind: BPF_MAP_TYPE_PERCPU_ARRAY,
                key: size_of::<u32>(),
                value: size_of::<DatagramPacket>(),
                max_entries: Some(1),
            },
            Want {
                name: names::DNS_NAMES,
                kind: BPF_MAP_TYPE_HASH,
                key: size_of::<u64>(),
                value: size_of::<u8>(),
                max_entries: Some(MAX_DNS_NAMES),
            },
            Want {
                name: names::PREFILTER_BLOOM,
                kind: BPF_MAP_TYPE_ARRAY,
                key: size_of::<u32>(),
                value: size_of::<prefilter::Block>(),
                max_entries: Some(2 * prefilter::BLOCKS),
            },
            Want {
                name: names::PREFILTER_LENGTHS,
                kind: BPF_MAP_TYPE_ARRAY,
                key: size_of::<u32>(),
                value: size_of::<prefilter::Lengths>(),
                max_entries: Some(2),
            },
            Want {
                name: names::PREFILTER_WALK,
                kind: BPF_MAP_TYPE_PERCPU_ARRAY,
                key: size_of::<u32>(),
                value: size_of::<prefilter::Walk>(),
                max_entries: Some(1),
            },
            Want {
                name: names::HASH_TEST,
                kind: BPF_MAP_TYPE_ARRAY,
                key: size_of::<u32>(),
                value: size_of::<u64>(),
                max_entries: Some(1 + names::HASH_TEST_KEYS),
            },
            Want {
                name: names::DNS_QUERY,
                kind: BPF_MAP_TYPE_PERCPU_ARRAY,
                key: size_of::<u32>(),
                value: size_of::<nprot_common::dns::QueryScratch>(),
                max_entries: Some(1),
            },
        ];
        for w in &want {
            let map = obj
                .maps
                .get(w.name)
                .unwrap_or_else(|| panic!("map {} missing from the object", w.name));
            let got = (
                map.map_type(),
                map.key_size() as usize,
                map.value_size() as usize,
            );
            assert_eq!(got, (w.kind as u32, w.key, w.value), "map {}", w.name);
            match w.max_entries {
                Some(n) => assert_eq!(map.max_entries(), n, "max_entries of {}", w.name),
                None if w.kind == BPF_MAP_TYPE_RINGBUF => {
                    let size = map.max_entries();
                    assert!(
                        size.is_power_of_two() && size.is_multiple_of(4096),
                        "ring buffer {} of {size} bytes: the kernel wants a power of two \
                         multiple of the page size",
                        w.name
                    );
                }
                None => assert!(map.max_entries() >= 1, "map {}", w.name),
            }
        }
        // No map the daemon does not know of (it would be loaded, never read).
        let mut extra: Vec<&String> = obj
            .maps
            .keys()
            .filter(|name| !want.iter().any(|w| w.name == name.as_str()))
            .collect();
        extra.sort();
        assert!(
            extra.is_empty(),
            "maps not named in nprot_common::names: {extra:?}"
        );
    }

    #[test]
    fn every_program_the_daemon_attaches_exists_with_its_section() {
        let obj = object();
        let section = |name: &str| {
            &obj.programs
                .get(name)
                .unwrap_or_else(|| panic!("program {name} missing from the object"))
                .section
        };
        let classifiers = [LinkKind::Ethernet, LinkKind::L3]
            .into_iter()
            .flat_map(|kind| kind.programs().map(|(name, _)| name))
            .chain(names::TAIL_CALLED_PROGRAMS.map(|(name, _)| name))
            .chain([names::PROG_HASH_TEST]);
        for name in classifiers {
            assert!(
                matches!(section(name), ProgramSection::SchedClassifier),
                "{name}: {:?}",
                section(name)
            );
        }
        assert!(
            matches!(
                section(names::PROG_CONNECT4),
                ProgramSection::CgroupSockAddr {
                    attach_type: CgroupSockAddrAttachType::Connect4
                }
            ),
            "{:?}",
            section(names::PROG_CONNECT4)
        );
        assert!(
            matches!(
                section(names::PROG_CONNECT6),
                ProgramSection::CgroupSockAddr {
                    attach_type: CgroupSockAddrAttachType::Connect6
                }
            ),
            "{:?}",
            section(names::PROG_CONNECT6)
        );
        assert_eq!(obj.programs.len(), 10, "{:?}", obj.programs.keys());
    }
}
