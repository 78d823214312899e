//! nprot's TC programs.
//!
//! One classifier per (link type, direction) so that the L2 header length is a constant:
//! `nprot_eth_*` for Ethernet-like devices, `nprot_l3_*` for devices whose packets start
//! at the IP header (tunnels, WireGuard, tun). Each finds the TCP segment ([`parse`]),
//! tracks its flow in `FLOWS` with the steps of `nprot_common::track` ([`track`]), reports
//! handshake outcomes and the client's first payload bytes through `RECORDS`
//! ([`capture`]), and acts on the daemon's decisions from `VERDICTS` ([`enforce`]).
//!
//! Two cgroup programs ([`connect`]) note who connects each TCP socket, by socket cookie,
//! so that user space can name the process behind a flow. The maps are in [`maps`].
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod capture;
#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod enforce;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod prefilter;
#[cfg(target_arch = "bpf")]
mod track;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{macros::classifier, programs::TcContext};
    use nprot_common::{PROTO_UDP, encap::ETH_HLEN, names::datagram_slot, stat};

    use crate::{
        enforce::PASS,
        maps::{DATAGRAM_PACKET, TAIL_CALLS, bump},
        parse::{Packet, parse},
        track::{datagram, segment},
    };

    #[classifier]
    pub fn nprot_eth_egress(ctx: TcContext) -> i32 {
        handle::<ETH_HLEN>(&ctx, true)
    }

    #[classifier]
    pub fn nprot_eth_ingress(ctx: TcContext) -> i32 {
        handle::<ETH_HLEN>(&ctx, false)
    }

    #[classifier]
    pub fn nprot_l3_egress(ctx: TcContext) -> i32 {
        handle::<0>(&ctx, true)
    }

    #[classifier]
    pub fn nprot_l3_ingress(ctx: TcContext) -> i32 {
        handle::<0>(&ctx, false)
    }

    #[classifier]
    pub fn nprot_egress_udp(ctx: TcContext) -> i32 {
        handle_datagram(&ctx, true)
    }

    #[classifier]
    pub fn nprot_ingress_udp(ctx: TcContext) -> i32 {
        handle_datagram(&ctx, false)
    }

    #[classifier]
    pub fn nprot_prefilter(ctx: TcContext) -> i32 {
        handle_prefilter(&ctx)
    }

    /// Test only, never attached or tail-called: `BPF_PROG_TEST_RUN` runs it to compare
    /// the kernel's name hashing with user space's (`crate::prefilter::hash_test`).
    #[classifier]
    pub fn nprot_hash_test(ctx: TcContext) -> i32 {
        crate::prefilter::hash_test(&ctx)
    }

    #[inline(always)]
    fn handle<const L2: usize>(ctx: &TcContext, egress: bool) -> i32 {
        // Whatever happens while looking, the packet passes: tracking must never drop.
        match parse::<L2>(ctx) {
            Some(pkt) if pkt.seg.proto == PROTO_UDP => {
                // The datagram path has a program (and a stack) of its own, which finds
                // the parsed datagram in this CPU's slot.
                let Some(slot) = DATAGRAM_PACKET.get_ptr_mut(0) else {
                    bump(stat::DATAGRAM_TAIL_CALLS_FAILED);
                    return PASS;
                };
                // SAFETY: a per-CPU slot; programs run with migration disabled, and the
                // tail call keeps the CPU.
                pkt.handover(unsafe { &mut *slot });
                // SAFETY: the context is this program's; on success the call does not return.
                unsafe { TAIL_CALLS.tail_call(ctx, datagram_slot(egress)) };
                bump(stat::DATAGRAM_TAIL_CALLS_FAILED);
                PASS
            }
            Some(pkt) => segment::<L2>(ctx, &pkt, egress),
            None => PASS,
        }
    }

    /// A datagram program: the packet was parsed as UDP by the program that tail-called
    /// it, which left it in `DATAGRAM_PACKET` (parsing again here would cost the verifier
    /// every parse path times the datagram steps).
    #[inline(always)]
    fn handle_datagram(ctx: &TcContext, egress: bool) -> i32 {
        let Some(parsed) = DATAGRAM_PACKET.get(0) else {
            bump(stat::DATAGRAM_TAIL_CALLS_FAILED);
            return PASS;
        };
        let pkt = Packet::datagram(parsed);
        datagram(ctx, &pkt, egress)
    }

    /// A pre-filter program: the TC program that tail-called it left the client segment
    /// in `DATAGRAM_PACKET` ([`crate::track::segment`], `Action::Prefilter`).
    #[inline(always)]
    fn handle_prefilter(ctx: &TcContext) -> i32 {
        let Some(parsed) = DATAGRAM_PACKET.get(0) else {
            bump(stat::PREFILTER_TAIL_CALLS_FAILED);
            return PASS;
        };
        let pkt = Packet::datagram(parsed);
        crate::prefilter::segment(ctx, &pkt)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

/// Host builds (clippy, `cargo check --workspace`) see an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
