//! The maps the programs share with the daemon (names in `nprot_common::names` must match
//! these statics), and the counter helpers.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use nprot_common::{
    DatagramPacket, FlowKey, FlowState, MAX_DNS_NAMES, MAX_FLOWS, MAX_PAGES, MAX_PENDING_VERDICTS,
    MAX_SOCKET_OWNERS, PageEntry, PayloadRecord, SensorConfig, SocketOwner, VerdictEntry,
    dns::QueryScratch,
    names, owner_stat,
    prefilter::{self, Block, Lengths, Walk},
    stat,
};

/// Every TCP flow seen since its SYN.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// The programs the TC ones tail-call: for UDP (`nprot_common::names::datagram_slot`) and
/// to pre-filter client bytes (`PREFILTER_SLOT`); filled by the daemon.
#[map]
pub static TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(names::TAIL_CALL_SLOTS, 0);

/// The pre-filter's two summary buffers (`nprot_common::prefilter`).
#[map]
pub static PREFILTER_BLOOM: Array<Block> = Array::with_max_entries(2 * prefilter::BLOCKS, 0);

/// The prefix lengths of the IP indicators of each summary buffer.
#[map]
pub static PREFILTER_LENGTHS: Array<Lengths> = Array::with_max_entries(2, 0);

/// Per-CPU positions of the pre-filter's walks (not the program stack).
#[map]
pub static PREFILTER_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// What the test program `nprot_hash_test` was asked (`nprot_common::names::HASH_TEST`).
#[map]
pub static HASH_TEST: Array<u64> = Array::with_max_entries(1 + names::HASH_TEST_KEYS, 0);

/// The packet a TC program parsed, for the program it tail-calls.
#[map]
pub static DATAGRAM_PACKET: PerCpuArray<DatagramPacket> = PerCpuArray::with_max_entries(1, 0);

/// Decisions written by the daemon, consumed (and removed) by the next packet of the flow.
#[map]
pub static VERDICTS: HashMap<FlowKey, VerdictEntry> =
    HashMap::with_max_entries(MAX_PENDING_VERDICTS, 0);

/// Pages for blocked plain-HTTP flows (`VerdictEntry::page`), written by the daemon with
/// the verdict, taken by the flow's next server packet ([`crate::enforce::page`]). LRU: a
/// page whose flow never sent another packet makes room.
#[map]
pub static PAGES: LruHashMap<FlowKey, PageEntry> = LruHashMap::with_max_entries(MAX_PAGES, 0);

/// Handshake outcomes and captured client payload for the daemon.
#[map]
pub static RECORDS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Sensor settings (index 0), written by the daemon before attaching.
#[map]
pub static CONFIG: Array<SensorConfig> = Array::with_max_entries(1, 0);

/// DNS names to answer NXDOMAIN (1) or let through (0), by `nprot_common::name_hash`,
/// written by the daemon in block mode.
#[map]
pub static DNS_NAMES: HashMap<u64, u8> = HashMap::with_max_entries(MAX_DNS_NAMES, 0);

/// Per-CPU scratch space where a DNS query's name is read (not the datagram stack).
#[map]
pub static DNS_QUERY: PerCpuArray<QueryScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `nprot_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Per-CPU scratch space where a payload record is assembled before it is copied out.
/// An array rather than a per-CPU one: a per-CPU value is at most 32 KiB, and a record
/// holds up to 64 KiB. The daemon sizes it to the number of possible CPUs at load.
#[map]
pub static SCRATCH: Array<PayloadRecord> = Array::with_max_entries(1, 0);

/// Who connected each TCP socket, by socket cookie (connect hooks).
#[map]
pub static SOCKET_OWNERS: LruHashMap<u64, SocketOwner> =
    LruHashMap::with_max_entries(MAX_SOCKET_OWNERS, 0);

/// The same, as a stream, so that the daemon reads /proc while the process lives.
#[map]
pub static CONNECTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per CPU, the last process that connected and when: `[tgid, ns]`.
#[map]
pub static LAST_CONNECT: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters of the connect hooks, indexed by `nprot_common::owner_stat`.
#[map]
pub static OWNER_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(owner_stat::COUNT, 0);

/// Adds one to the flow counter `index`.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; programs run with migration disabled, so no other writer.
        unsafe { *counter += 1 };
    }
}

/// Adds one to the connect-hook counter `index`.
#[inline(always)]
pub fn owner_bump(index: u32) {
    if let Some(counter) = OWNER_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; programs run with migration disabled, so no other writer.
        unsafe { *counter += 1 };
    }
}
