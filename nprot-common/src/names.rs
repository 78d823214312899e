//! Names of the maps and programs in the eBPF object, as the daemon looks them up.
//!
//! aya's `#[map]`, `#[classifier]` and `#[cgroup_sock_addr]` macros take the name from the
//! identifier of the static or function they mark, so nprot-ebpf spells these names as
//! identifiers; the daemon uses these constants. A unit test of nprot-user (capture.rs)
//! parses the built object and checks that every name here exists there, with the map
//! type, key and value sizes and program section the daemon expects.

/// LRU hash: [`crate::FlowKey`] → [`crate::FlowState`], every TCP flow since its SYN.
pub const FLOWS: &str = "FLOWS";
/// Hash: [`crate::FlowKey`] → [`crate::VerdictEntry`], decisions waiting for the kernel.
pub const VERDICTS: &str = "VERDICTS";
/// LRU hash: [`crate::FlowKey`] → [`crate::PageEntry`], the pages of blocked flows.
pub const PAGES: &str = "PAGES";
/// Ring buffer: handshake outcomes and captured client payload.
pub const RECORDS: &str = "RECORDS";
/// Array of one [`crate::SensorConfig`].
pub const CONFIG: &str = "CONFIG";
/// Per-CPU array of `u64` counters, indexed by [`crate::stat`].
pub const STATS: &str = "STATS";
/// Array of [`crate::PayloadRecord`], one per possible CPU (sized at load).
pub const SCRATCH: &str = crate::SCRATCH_MAP;
/// LRU hash: socket cookie (`u64`) → [`crate::SocketOwner`].
pub const SOCKET_OWNERS: &str = "SOCKET_OWNERS";
/// Ring buffer of [`crate::SocketOwner`] records, one per TCP connect.
pub const CONNECTS: &str = "CONNECTS";
/// Per-CPU array of one `[u64; 2]`: the last connect on that CPU (kernel-only).
pub const LAST_CONNECT: &str = "LAST_CONNECT";
/// Per-CPU array of `u64` counters of the connect hooks, indexed by [`crate::owner_stat`].
pub const OWNER_STATS: &str = "OWNER_STATS";
/// Hash: [`crate::name_hash::hash_name`] of a DNS name (`u64`) → `u8`
/// ([`crate::dns::NAME_BLOCK`] or [`crate::dns::NAME_ALLOW`]), written by the daemon in
/// block mode.
pub const DNS_NAMES: &str = "DNS_NAMES";
/// Per-CPU array of one [`crate::dns::QueryScratch`]: the start of a DNS query, where its
/// name is read (kernel-only).
pub const DNS_QUERY: &str = "DNS_QUERY";

/// Program array of the programs the TC programs tail-call: the datagram programs at
/// [`datagram_slot`], the pre-filter program at [`PREFILTER_SLOT`].
pub const TAIL_CALLS: &str = "TAIL_CALLS";

/// Per-CPU array of one [`crate::DatagramPacket`]: the parsed packet a TC program hands
/// to the program it tail-calls (a datagram, or a client segment to pre-filter).
pub const DATAGRAM_PACKET: &str = "DATAGRAM_PACKET";

/// TC classifier, egress of an interface with an Ethernet header.
pub const PROG_ETH_EGRESS: &str = "nprot_eth_egress";
/// TC classifier, ingress of an interface with an Ethernet header.
pub const PROG_ETH_INGRESS: &str = "nprot_eth_ingress";
/// TC classifier, egress of an L3 interface (packets start at the IP header).
pub const PROG_L3_EGRESS: &str = "nprot_l3_egress";
/// TC classifier, ingress of an L3 interface.
pub const PROG_L3_INGRESS: &str = "nprot_l3_ingress";
/// cgroup sock_addr hook on IPv4 `connect(2)`.
pub const PROG_CONNECT4: &str = "nprot_connect4";
/// cgroup sock_addr hook on IPv6 `connect(2)`.
pub const PROG_CONNECT6: &str = "nprot_connect6";
/// Datagram program (UDP, QUIC) tail-called by the egress TC programs.
pub const PROG_EGRESS_UDP: &str = "nprot_egress_udp";
/// Datagram program tail-called by the ingress TC programs.
pub const PROG_INGRESS_UDP: &str = "nprot_ingress_udp";

/// Pre-filter program (`prefilter::judge` on a client segment) tail-called by the TC
/// programs of both directions: it only captures and judges, which no direction changes.
pub const PROG_PREFILTER: &str = "nprot_prefilter";

/// Slots of [`TAIL_CALLS`].
pub const TAIL_CALL_SLOTS: u32 = 3;

/// The [`TAIL_CALLS`] slot of the pre-filter program.
pub const PREFILTER_SLOT: u32 = 2;

/// The [`TAIL_CALLS`] slot of the datagram program for a direction.
#[inline(always)]
pub const fn datagram_slot(egress: bool) -> u32 {
    if egress { 0 } else { 1 }
}

/// The datagram programs and their slots, loaded at start.
pub const DATAGRAM_PROGRAMS: [(&str, u32); 2] = [
    (PROG_EGRESS_UDP, datagram_slot(true)),
    (PROG_INGRESS_UDP, datagram_slot(false)),
];

/// Every tail-called program and its slot. The pre-filter program is not loaded at start:
/// verifying it takes up to 1.8 s, so the daemon loads it when block mode first needs it; it
/// must be in its slot before `SensorConfig::prefilter` gets `CONFIG_ON`.
pub const TAIL_CALLED_PROGRAMS: [(&str, u32); 3] = [
    DATAGRAM_PROGRAMS[0],
    DATAGRAM_PROGRAMS[1],
    (PROG_PREFILTER, PREFILTER_SLOT),
];

/// Array of `2 × prefilter::BLOCKS` [`crate::prefilter::Block`]s: the pre-filter's two
/// summary buffers (Bloom filter blocks), the one in force named by `SensorConfig`.
pub const PREFILTER_BLOOM: &str = "PREFILTER_BLOOM";
/// Array of two [`crate::prefilter::Lengths`]: the prefix lengths of each buffer's IP
/// indicators.
pub const PREFILTER_LENGTHS: &str = "PREFILTER_LENGTHS";
/// Per-CPU array of one [`crate::prefilter::Walk`] (kernel-only).
pub const PREFILTER_WALK: &str = "PREFILTER_WALK";

/// A test program, never loaded by the daemon: run with `BPF_PROG_TEST_RUN` on a packet
/// whose bytes after the Ethernet header are client bytes, it judges them with
/// `prefilter::judge` and a summary that records in [`HASH_TEST`] every key asked.
pub const PROG_HASH_TEST: &str = "nprot_hash_test";
/// Array of `1 + HASH_TEST_KEYS` u64: in slot 0 how many keys [`PROG_HASH_TEST`] was asked
/// (the test resets it), then the keys in order.
pub const HASH_TEST: &str = "HASH_TEST";
/// Keys [`HASH_TEST`] keeps: more than the labels of the longest name.
pub const HASH_TEST_KEYS: u32 = 128;
