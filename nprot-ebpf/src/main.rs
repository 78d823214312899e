//! nprot's TC programs.
//!
//! One classifier per (link type, direction) so that the L2 header length is a constant:
//! `nprot_eth_*` for Ethernet-like devices, `nprot_l3_*` for devices whose packets start
//! at the IP header (tunnels, WireGuard, tun). Each tracks TCP flows in `FLOWS`, reports
//! handshake outcomes and the client's first payload bytes through `RECORDS`, and picks up
//! the daemon's decisions from `VERDICTS`.
//!
//! Two cgroup programs (`nprot_connect4`, `nprot_connect6`) note who connects each TCP
//! socket, by socket cookie, so that user space can name the process behind a flow.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use core::mem::{offset_of, size_of};

    use aya_ebpf::{
        bindings::{
            BPF_F_INGRESS, BPF_NOEXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_REDIRECT,
            TC_ACT_SHOT, TC_ACT_UNSPEC,
        },
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
            bpf_get_smp_processor_id, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_redirect,
            bpf_skb_load_bytes,
        },
        macros::{cgroup_sock_addr, classifier, map},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
        programs::{SockAddrContext, TcContext},
    };
    use nprot_common::{
        CAPTURE_SEG_MAX, FAMILY_V4, FAMILY_V6, FLOW_CLIENT_IS_LO, FLOW_CLOSE_REPORTED,
        FLOW_CONTINUED, FLOW_MIDSTREAM, FLOW_RESTART_CLIENT_LO, FLOW_RESTART_PENDING,
        FLOW_SYN_EGRESS, FlowKey, FlowState, FlowTuple, Inspect, MAX_FLOWS, MAX_PENDING_VERDICTS,
        MAX_SOCKET_OWNERS, PayloadRecord, RECORD_BUDGET_SPENT, RECORD_EGRESS, RECORD_TRUNCATED,
        RawAddr, RecordHeader, RecordKind, SensorConfig, SocketOwner, TcpPhase, Verdict,
        VerdictEntry,
        encap::{
            self, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ETH_P_PPP_SES, ETH_P_TEB, GENEVE_PORT,
            IPPROTO_GRE, IPPROTO_TCP, IPPROTO_UDP, MAX_IPV6_EXT, MAX_TUNNELS, MAX_VLAN_TAGS,
            PPPOE_HLEN, UDP_HLEN, VLAN_HLEN, VXLAN_PORT,
        },
        lifecycle::{self, SynStep, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
        owner_stat, seq_after, stat,
    };

    /// Every TCP flow seen since its SYN.
    #[map]
    static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

    /// Decisions written by the daemon, consumed (and removed) by the next packet of the flow.
    #[map]
    static VERDICTS: HashMap<FlowKey, VerdictEntry> =
        HashMap::with_max_entries(MAX_PENDING_VERDICTS, 0);

    /// Handshake outcomes and captured client payload for the daemon.
    #[map]
    static RECORDS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

    /// Sensor settings (index 0), written by the daemon before attaching.
    #[map]
    static CONFIG: Array<SensorConfig> = Array::with_max_entries(1, 0);

    /// Per-CPU counters, indexed by `nprot_common::stat`.
    #[map]
    static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

    /// Per-CPU scratch space where a payload record is assembled before it is copied out.
    #[map]
    /// An array rather than a per-CPU one: a per-CPU value is at most 32 KiB, and a record
    /// holds up to 64 KiB. The daemon sizes it to the number of possible CPUs at load.
    static SCRATCH: Array<PayloadRecord> = Array::with_max_entries(1, 0);

    /// Who connected each TCP socket, by socket cookie (connect hooks).
    #[map]
    static SOCKET_OWNERS: LruHashMap<u64, SocketOwner> =
        LruHashMap::with_max_entries(MAX_SOCKET_OWNERS, 0);

    /// The same, as a stream, so that the daemon reads /proc while the process lives.
    #[map]
    static CONNECTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

    /// Per CPU, the last process that connected and when: `[tgid, ns]`.
    #[map]
    static LAST_CONNECT: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

    /// Per-CPU counters of the connect hooks, indexed by `nprot_common::owner_stat`.
    #[map]
    static OWNER_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(owner_stat::COUNT, 0);

    /// Let the packet continue: the next TCX program or the stack decides.
    const PASS: i32 = TC_ACT_UNSPEC;

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

    const SOCK_STREAM: u32 = 1;
    /// Return value of a cgroup sock_addr program that lets the call go on.
    const CGROUP_ALLOW: i32 = 1;

    #[cgroup_sock_addr(connect4)]
    pub fn nprot_connect4(ctx: SockAddrContext) -> i32 {
        note_owner(&ctx);
        CGROUP_ALLOW
    }

    #[cgroup_sock_addr(connect6)]
    pub fn nprot_connect6(ctx: SockAddrContext) -> i32 {
        note_owner(&ctx);
        CGROUP_ALLOW
    }

    /// Remembers who connects a TCP socket. Runs in the connecting task, before the SYN
    /// leaves, so the owner is known before the flow's first record. Never refuses a
    /// connect.
    #[inline(always)]
    fn note_owner(ctx: &SockAddrContext) {
        // SAFETY: the context pointer is the kernel's bpf_sock_addr for this call.
        let (sock_type, protocol) = unsafe { ((*ctx.sock_addr).type_, (*ctx.sock_addr).protocol) };
        if sock_type != SOCK_STREAM || protocol != IPPROTO_TCP as u32 {
            return;
        }
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        let pid_tgid = bpf_get_current_pid_tgid();
        let uid_gid = bpf_get_current_uid_gid();
        let owner = SocketOwner {
            cookie,
            ts_ns: unsafe { bpf_ktime_get_ns() },
            tgid: (pid_tgid >> 32) as u32,
            pid: pid_tgid as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        owner_bump(owner_stat::CONNECTS);
        let _ = SOCKET_OWNERS.insert(cookie, owner, 0);
        // A process seen on this CPU within the last second is already known to the
        // reader: its record needs no wake-up (a wake-up costs more than the rest of
        // the hook). A new process wakes the reader (adaptively: only if it has caught
        // up), so that /proc is read while the process lives.
        let mut flags = 0;
        if let Some(last) = LAST_CONNECT.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no other writer.
            let last = unsafe { &mut *last };
            let tgid = u64::from(owner.tgid);
            if last[0] == tgid && owner.ts_ns.wrapping_sub(last[1]) < 1_000_000_000 {
                flags = BPF_RB_NO_WAKEUP as u64;
            } else {
                *last = [tgid, owner.ts_ns];
            }
        }
        if CONNECTS.output::<SocketOwner>(&owner, flags).is_err() {
            owner_bump(owner_stat::RING_DROPS);
        }
    }

    #[inline(always)]
    fn owner_bump(index: u32) {
        if let Some(counter) = OWNER_STATS.get_ptr_mut(index) {
            // Per-CPU slot: no other writer.
            unsafe { *counter += 1 };
        }
    }

    /// The parts of a TCP/IP packet the programs act on.
    struct Packet {
        family: u8,
        src: RawAddr,
        dst: RawAddr,
        sport: u16,
        dport: u16,
        /// Sequence number, host order.
        seq: u32,
        /// Sequence number of the first payload byte (after the SYN's, for Fast Open).
        data_seq: u32,
        /// Sequence and acknowledgement numbers as on the wire.
        seq_raw: u32,
        ack_raw: u32,
        flags: u8,
        /// Data-offset byte (header length << 4), kept to rewrite the flags word.
        doff_byte: u8,
        /// Where the (innermost) IP header starts.
        l3_off: u32,
        /// The segment came through a tunnel (GRE, VXLAN, GENEVE): it cannot be rewritten
        /// into a reset for its peers, so a blocked flow's packets are dropped instead.
        tunneled: bool,
        l4_off: u32,
        payload_off: u32,
        payload_len: u32,
    }

    /// An IP header, as [`parse_ip`] reads it.
    struct IpHeader {
        family: u8,
        src: RawAddr,
        dst: RawAddr,
        /// The upper-layer protocol (after IPv6 extension headers).
        proto: u8,
        l4_off: usize,
        /// Bytes after the IP header (and its extension headers).
        payload_len: u32,
    }

    #[inline(always)]
    fn handle<const L2: usize>(ctx: &TcContext, egress: bool) -> i32 {
        // Whatever happens while looking, the packet passes: tracking must never drop.
        match parse::<L2>(ctx) {
            Some(pkt) => track::<L2>(ctx, &pkt, egress),
            None => PASS,
        }
    }

    /// The IP header at `off` (`ethertype` says which): family, addresses, protocol,
    /// where its payload starts and how long it is. IPv6 extension headers are walked
    /// ([`encap::ipv6_next`]); a later fragment (v4 or v6) has no transport header.
    #[inline(always)]
    fn parse_ip(ctx: &TcContext, ethertype: u16, off: usize) -> Option<IpHeader> {
        // What the receiver drops is not tracked either (the same rules as replay's).
        let first: u8 = ctx.load(off).ok()?;
        if !encap::ip_version_ok(ethertype, first) {
            return None;
        }
        if ethertype == ETH_P_IP {
            let ihl = encap::ipv4_header_len(first)?;
            let frag: u16 = u16::from_be(ctx.load(off + 6).ok()?);
            let proto: u8 = ctx.load(off + 9).ok()?;
            // More fragments, or a later one: bytes past the first fragment are not read.
            if frag & 0x3fff != 0 && proto == IPPROTO_TCP {
                bump(stat::TCP_FRAGMENTS);
            }
            if encap::ipv4_later_fragment(frag) {
                return None;
            }
            let tot_len = u16::from_be(ctx.load(off + 2).ok()?) as u32;
            if !encap::ipv4_total_len_ok(tot_len, ihl) {
                return None;
            }
            let src: u32 = ctx.load(off + 12).ok()?;
            let dst: u32 = ctx.load(off + 16).ok()?;
            // tot_len is 0 on BIG TCP super-packets; fall back to the skb length then.
            let ip_len = if tot_len != 0 {
                tot_len
            } else {
                ctx.len().saturating_sub(off as u32)
            };
            return Some(IpHeader {
                family: FAMILY_V4,
                src: [src, 0, 0, 0],
                dst: [dst, 0, 0, 0],
                proto,
                l4_off: off + ihl,
                payload_len: ip_len.saturating_sub(ihl as u32),
            });
        }
        if ethertype != ETH_P_IPV6 {
            return None;
        }
        let plen = u16::from_be(ctx.load(off + 4).ok()?) as u32;
        let src: RawAddr = ctx.load(off + 8).ok()?;
        let dst: RawAddr = ctx.load(off + 24).ok()?;
        let mut plen = if plen != 0 {
            plen
        } else {
            ctx.len().saturating_sub(off as u32 + 40)
        };
        let mut next: u8 = ctx.load(off + 6).ok()?;
        let mut at = off + 40;
        for _ in 0..MAX_IPV6_EXT {
            let len_byte: u8 = match encap::ipv6_next(next, 0) {
                encap::Ipv6Next::Upper => break,
                _ => ctx.load(at + 1).ok()?,
            };
            let len = match encap::ipv6_next(next, len_byte) {
                encap::Ipv6Next::Skip(len) => len,
                encap::Ipv6Next::Fragment => {
                    let offset: u16 = u16::from_be(ctx.load(at + 2).ok()?);
                    // Fragments carry whatever they carry: counted, the first one read.
                    if offset & 0xfff9 != 0 {
                        bump(stat::TCP_FRAGMENTS);
                    }
                    if encap::ipv6_later_fragment(offset) {
                        return None;
                    }
                    8
                }
                encap::Ipv6Next::Upper => break,
            };
            next = ctx.load(at).ok()?;
            if encap::ipv6_misplaced(next) {
                return None;
            }
            at += len;
            plen = encap::ipv6_after_ext(plen, len)?;
        }
        if encap::ipv6_next(next, 0) != encap::Ipv6Next::Upper {
            // More extension headers than the walk reads: what they hide is not seen.
            bump(stat::HEADERS_TOO_DEEP);
            return None;
        }
        Some(IpHeader {
            family: FAMILY_V6,
            src,
            dst,
            proto: next,
            l4_off: at,
            payload_len: plen,
        })
    }

    /// Finds the TCP segment in a packet: through VLAN tags and a PPPoE session, then IP,
    /// and into GRE, VXLAN and GENEVE tunnels, each walk bounded (`nprot_common::encap`).
    /// For Ethernet the ethertype is read from the frame (the skb's protocol may be the
    /// sender's `ETH_P_ALL` for packet-socket traffic).
    #[inline(always)]
    fn parse<const L2: usize>(ctx: &TcContext) -> Option<Packet> {
        let mut off = L2;
        let mut ethertype = if L2 == ETH_HLEN {
            u16::from_be(ctx.load(12).ok()?)
        } else {
            u16::from_be(ctx.skb.protocol() as u16)
        };
        let mut tunneled = false;
        let mut ip = None;
        for depth in 0..=MAX_TUNNELS {
            for _ in 0..MAX_VLAN_TAGS {
                if !encap::is_vlan(ethertype) {
                    break;
                }
                ethertype = u16::from_be(ctx.load(off + 2).ok()?);
                off += VLAN_HLEN;
            }
            if ethertype == ETH_P_PPP_SES {
                ethertype = encap::ppp_ethertype(u16::from_be(ctx.load(off + 6).ok()?))?;
                off += PPPOE_HLEN;
            }
            let hdr = parse_ip(ctx, ethertype, off)?;
            if hdr.proto == IPPROTO_TCP {
                ip = Some(hdr);
                break;
            }
            if depth == MAX_TUNNELS {
                if hdr.proto == IPPROTO_GRE || hdr.proto == IPPROTO_UDP {
                    bump(stat::HEADERS_TOO_DEEP);
                }
                return None;
            }
            // Into a tunnel: the inner packet is an Ethernet frame or an IP packet.
            let (inner, inner_type) = if hdr.proto == IPPROTO_GRE {
                let flags = u16::from_be(ctx.load(hdr.l4_off).ok()?);
                let len = encap::gre_header_len(flags)?;
                (
                    hdr.l4_off + len,
                    u16::from_be(ctx.load(hdr.l4_off + 2).ok()?),
                )
            } else if hdr.proto == IPPROTO_UDP {
                let dport = u16::from_be(ctx.load(hdr.l4_off + 2).ok()?);
                let ulen = u16::from_be(ctx.load(hdr.l4_off + 4).ok()?);
                if !encap::udp_len_ok(ulen, hdr.payload_len, hdr.family) {
                    return None;
                }
                let at = hdr.l4_off + UDP_HLEN;
                if dport == VXLAN_PORT {
                    (at + encap::vxlan_header_len(ctx.load(at).ok()?)?, ETH_P_TEB)
                } else if dport == GENEVE_PORT {
                    let len = encap::geneve_header_len(ctx.load(at).ok()?)?;
                    (at + len, u16::from_be(ctx.load(at + 2).ok()?))
                } else {
                    return None;
                }
            } else {
                return None;
            };
            tunneled = true;
            if inner_type == ETH_P_TEB {
                ethertype = u16::from_be(ctx.load(inner + 12).ok()?);
                off = inner + ETH_HLEN;
            } else {
                ethertype = inner_type;
                off = inner;
            }
        }
        let ip = ip?;
        let l4_off = ip.l4_off;
        let ports: [u16; 2] = ctx.load(l4_off).ok()?;
        let seq_ack: [u32; 2] = ctx.load(l4_off + 4).ok()?;
        let doff_flags: [u8; 2] = ctx.load(l4_off + 12).ok()?;
        let doff = encap::tcp_header_len(doff_flags[0], ip.payload_len)?;
        Some(Packet {
            family: ip.family,
            src: ip.src,
            dst: ip.dst,
            sport: u16::from_be(ports[0]),
            dport: u16::from_be(ports[1]),
            seq: u32::from_be(seq_ack[0]),
            data_seq: lifecycle::data_seq(u32::from_be(seq_ack[0]), doff_flags[1]),
            seq_raw: seq_ack[0],
            ack_raw: seq_ack[1],
            flags: doff_flags[1],
            doff_byte: doff_flags[0],
            l3_off: off as u32,
            tunneled,
            l4_off: l4_off as u32,
            payload_off: l4_off as u32 + doff,
            payload_len: ip.payload_len.saturating_sub(doff),
        })
    }

    #[inline(always)]
    fn bump(index: u32) {
        if let Some(counter) = STATS.get_ptr_mut(index) {
            // Per-CPU slot: no other writer.
            unsafe { *counter += 1 };
        }
    }

    /// Flow counters are statistics: the bpfel target has no 64-bit atomics in `core`, and a
    /// lost increment when egress and ingress race on two CPUs costs nothing that matters.
    #[inline(always)]
    fn add(counter: &mut u64, n: u64) {
        *counter = counter.wrapping_add(n);
    }

    #[inline(always)]
    fn track<const L2: usize>(ctx: &TcContext, pkt: &Packet, egress: bool) -> i32 {
        let (key, src_is_lo) =
            FlowKey::canonical(pkt.family, &pkt.src, pkt.sport, &pkt.dst, pkt.dport);
        let now = unsafe { bpf_ktime_get_ns() };

        if pkt.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            new_flow(ctx, pkt, &key, src_is_lo, egress, now);
            return PASS;
        }

        let Some(flow) = FLOWS.get_ptr_mut(key) else {
            midstream(ctx, pkt, &key, src_is_lo, egress, now);
            return PASS;
        };
        // SAFETY: a pointer into the map value, valid for this program run.
        let flow = unsafe { &mut *flow };
        let idle_timeout = match CONFIG.get(0) {
            Some(cfg) => cfg.flow_idle_timeout_ns,
            None => u64::MAX,
        };
        if lifecycle::idle_expired(flow.verdict, flow.last_ns, now, idle_timeout) {
            // Whatever the entry knew is stale: take the flow up again as if first seen now.
            bump(stat::FLOWS_EXPIRED);
            *flow = midstream_state(ctx, pkt, src_is_lo, egress, now);
            bump(stat::FLOWS_MIDSTREAM);
        }
        if flow.flags & FLOW_RESTART_PENDING != 0 {
            let from_new_server = src_is_lo != (flow.flags & FLOW_RESTART_CLIENT_LO != 0);
            let ack = u32::from_be(pkt.ack_raw);
            if lifecycle::confirms_restart(pkt.flags, from_new_server, ack, flow.restart_seq) {
                restart_confirmed(ctx, flow, &key, egress, now);
                return PASS;
            }
        }
        let from_client = src_is_lo == (flow.flags & FLOW_CLIENT_IS_LO != 0);
        flow.last_ns = now;
        if from_client {
            add(&mut flow.c2s_packets, 1);
            add(&mut flow.c2s_bytes, pkt.payload_len as u64);
        } else {
            add(&mut flow.s2c_packets, 1);
            add(&mut flow.s2c_bytes, pkt.payload_len as u64);
        }

        if flow.verdict == Verdict::Block as u8 {
            return reset::<L2>(ctx, pkt, egress);
        }

        // Fast path: a flow whose inspection ended and whose handshake is settled. Its
        // close is not reported (user space holds nothing for it any more), but noted, so
        // that the entry is known to be over: one flag test, a write only on the change.
        if flow.inspect == Inspect::Done as u8 && flow.phase >= TcpPhase::Established as u8 {
            if lifecycle::ends_flow(pkt.flags)
                && flow.phase != TcpPhase::Closed as u8
                && flow.flags & FLOW_CLOSE_REPORTED == 0
            {
                flow.phase = TcpPhase::Closed as u8;
                bump(stat::FLOWS_CLOSED);
            }
            return PASS;
        }

        handshake(pkt, flow, from_client, now);

        if flow.inspect != Inspect::Capturing as u8 {
            return PASS;
        }
        // A flow crossing two guarded interfaces (a gateway guarding both sides) is
        // inspected where it was first seen, so it is captured and reported once.
        if unsafe { (*ctx.skb.skb).ifindex } != flow.ifindex {
            return PASS;
        }
        // A verdict answers captured bytes, which start the verdict clock: with nothing
        // awaiting one (a kept-alive connection between requests) there is none to look
        // up, and such a connection costs about what the fast path does.
        let pending = if flow.payload_ns != 0 {
            unsafe { VERDICTS.get(key) }
        } else {
            None
        };
        if let Some(entry) = pending {
            let entry = *entry;
            let _ = VERDICTS.remove(key);
            bump(stat::VERDICTS_APPLIED);
            if entry.verdict == Verdict::Continue as u8 {
                continue_inspection(flow, entry.decided_seq, now);
            } else {
                flow.verdict = entry.verdict;
                flow.inspect = Inspect::Done as u8;
                if flow.verdict == Verdict::Block as u8 {
                    // Reset from here on: the connection is over, and a new SYN on its
                    // four-tuple starts a new flow without superseding anything.
                    flow.phase = TcpPhase::Closed as u8;
                    bump(stat::FLOWS_CLOSED);
                    bump(stat::FLOWS_RESET);
                    return reset::<L2>(ctx, pkt, egress);
                }
                return PASS;
            }
        }
        // Resets are never held: one may carry data (ours do) and must reach the socket
        // at once, e.g. from an upstream nprot that blocked this flow.
        if pkt.payload_len == 0 || pkt.flags & TCP_RST != 0 {
            return PASS;
        }
        if from_client {
            // Bytes the daemon already decided (a request body it skips) need nothing.
            if flow.flags & FLOW_CONTINUED != 0
                && !seq_after(pkt.data_seq.wrapping_add(pkt.payload_len), flow.decided_seq)
            {
                return PASS;
            }
            if flow.payload_ns == 0 {
                flow.payload_ns = now;
            }
            capture(ctx, pkt, flow, now);
            PASS
        } else {
            hold(ctx, flow, now, egress)
        }
    }

    /// Applies [`Verdict::Continue`]: what is held goes, inspection goes on after
    /// `decided_seq` with a fresh capture budget, and the verdict clock restarts only if
    /// client bytes past it were captured already (a pipelined request).
    #[inline(always)]
    fn continue_inspection(flow: &mut FlowState, decided_seq: u32, now: u64) {
        flow.flags |= FLOW_CONTINUED;
        flow.decided_seq = decided_seq;
        flow.captured = 0;
        flow.payload_ns = if seq_after(flow.capture_end_seq, decided_seq) {
            now
        } else {
            0
        };
    }

    /// Server payload of a flow still under inspection is held back while the verdict is
    /// pending, up to the verdict timeout. On ingress it is first requeued into the
    /// device's backlog (it comes back through this program a moment later), so a verdict
    /// that arrives within the requeue window costs nothing; after that, or on egress
    /// where a redirect cannot requeue, it is dropped and the server retransmits it.
    #[inline(always)]
    fn hold(ctx: &TcContext, flow: &mut FlowState, now: u64, egress: bool) -> i32 {
        if flow.payload_ns == 0 {
            // Nothing awaits a decision on a continued flow: the proxy's answer passes.
            if flow.flags & FLOW_CONTINUED != 0 {
                return PASS;
            }
            // The server spoke first: not a client-first protocol nprot can judge.
            flow.inspect = Inspect::Done as u8;
            flow.verdict = Verdict::Allow as u8;
            return PASS;
        }
        let Some(cfg) = CONFIG.get(0) else {
            return PASS;
        };
        if cfg.hold == 0 {
            return PASS;
        }
        let waited = now.saturating_sub(flow.payload_ns);
        if waited > cfg.verdict_timeout_ns {
            flow.inspect = Inspect::Done as u8;
            flow.verdict = Verdict::Allow as u8;
            bump(stat::FAIL_OPEN);
            return PASS;
        }
        if !egress && waited < cfg.requeue_ns {
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            let action = unsafe { bpf_redirect(ifindex, BPF_F_INGRESS as u64) };
            if action == TC_ACT_REDIRECT as i64 {
                bump(stat::REQUEUED);
                return TC_ACT_REDIRECT;
            }
        }
        bump(stat::HELD_PACKETS);
        TC_ACT_SHOT
    }

    /// Resets a blocked flow in both directions with this packet: a copy, turned into a
    /// RST the sender accepts, goes back the way the packet came; the packet itself goes
    /// on as a RST the receiver accepts. A RST carrying data is valid TCP and its data is
    /// discarded, so no payload has to be cut and only the checksum deltas of the
    /// rewritten words matter; swapping addresses and ports leaves the checksums alone.
    #[inline(always)]
    fn reset<const L2: usize>(ctx: &TcContext, pkt: &Packet, egress: bool) -> i32 {
        // Resets (ours included, when they come back through a hook) pass untouched.
        if pkt.flags & TCP_RST != 0 {
            return PASS;
        }
        bump(stat::RESET_PACKETS);
        // A reflected copy of a tunnelled segment would need its outer headers rewritten
        // too: such a segment only becomes a reset for its own receiver (so both ends
        // are reset by the next packet each sends). An outer UDP checksum (an IPv6
        // underlay) is not updated, and the receiver then drops it: blocked either way.
        if pkt.tunneled {
            bump(stat::TUNNELED_RESETS);
            if set_flags(ctx, pkt, TCP_RST | TCP_ACK).is_err() {
                bump(stat::RESET_FAILED);
                return TC_ACT_SHOT;
            }
            return PASS;
        }
        if reflect_reset::<L2>(ctx, pkt, egress).is_err() {
            bump(stat::RESET_FAILED);
        }
        // The original, as a RST with its own sequence number.
        if set_flags(ctx, pkt, TCP_RST | TCP_ACK).is_err() {
            bump(stat::RESET_FAILED);
            return TC_ACT_SHOT;
        }
        PASS
    }

    #[inline(always)]
    fn reflect_reset<const L2: usize>(
        ctx: &TcContext,
        pkt: &Packet,
        egress: bool,
    ) -> Result<(), i64> {
        let l4 = pkt.l4_off as usize;
        let mut consumed = pkt.payload_len;
        if pkt.flags & (TCP_SYN | TCP_FIN) != 0 {
            consumed += 1;
        }
        // The sender expects our next byte at its ACK number.
        let seq_ack = [pkt.ack_raw, pkt.seq.wrapping_add(consumed).to_be()];
        write_endpoints::<L2>(ctx, pkt, true)?;
        rewrite_seq_ack(ctx, l4, [pkt.seq_raw, pkt.ack_raw], seq_ack)?;
        set_flags(ctx, pkt, TCP_RST | TCP_ACK)?;
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        let flags = if egress { BPF_F_INGRESS as u64 } else { 0 };
        let sent = ctx.clone_redirect(ifindex, flags);
        // Put the packet back as it was (flags aside) whether or not the copy went out.
        write_endpoints::<L2>(ctx, pkt, false)?;
        rewrite_seq_ack(ctx, l4, seq_ack, [pkt.seq_raw, pkt.ack_raw])?;
        sent
    }

    /// Writes the packet's endpoints back to front (`reflected`) or as parsed. MACs are
    /// swapped in place, which is its own inverse.
    #[inline(always)]
    fn write_endpoints<const L2: usize>(
        ctx: &TcContext,
        pkt: &Packet,
        reflected: bool,
    ) -> Result<(), i64> {
        if L2 == ETH_HLEN {
            let macs: [u8; 12] = ctx.load(0)?;
            let mut swapped = [0u8; 12];
            swapped[..6].copy_from_slice(&macs[6..]);
            swapped[6..].copy_from_slice(&macs[..6]);
            ctx.store(0, &swapped, 0)?;
        }
        let (src, dst, sport, dport) = if reflected {
            (&pkt.dst, &pkt.src, pkt.dport, pkt.sport)
        } else {
            (&pkt.src, &pkt.dst, pkt.sport, pkt.dport)
        };
        let l3 = pkt.l3_off as usize;
        if pkt.family == FAMILY_V4 {
            ctx.store(l3 + 12, &[src[0], dst[0]], 0)?;
        } else {
            ctx.store(l3 + 8, src, 0)?;
            ctx.store(l3 + 24, dst, 0)?;
        }
        ctx.store(pkt.l4_off as usize, &[sport.to_be(), dport.to_be()], 0)?;
        Ok(())
    }

    #[inline(always)]
    fn rewrite_seq_ack(
        ctx: &TcContext,
        l4: usize,
        from: [u32; 2],
        to: [u32; 2],
    ) -> Result<(), i64> {
        ctx.store(l4 + 4, &to, 0)?;
        ctx.l4_csum_replace(l4 + 16, from[0] as u64, to[0] as u64, 4)?;
        ctx.l4_csum_replace(l4 + 16, from[1] as u64, to[1] as u64, 4)?;
        Ok(())
    }

    #[inline(always)]
    fn set_flags(ctx: &TcContext, pkt: &Packet, flags: u8) -> Result<(), i64> {
        let l4 = pkt.l4_off as usize;
        let current: [u8; 2] = ctx.load(l4 + 12)?;
        if current[1] == flags {
            return Ok(());
        }
        let old = u16::from_ne_bytes(current);
        let new = u16::from_ne_bytes([pkt.doff_byte, flags]);
        ctx.store(l4 + 13, &flags, 0)?;
        ctx.l4_csum_replace(l4 + 16, old as u64, new as u64, 2)?;
        Ok(())
    }

    /// A SYN: a flow entry for a new connection, unless the SYN is a retransmission of
    /// the one that opened the entry under its key (see [`lifecycle::syn_step`]).
    #[inline(always)]
    fn new_flow(
        ctx: &TcContext,
        pkt: &Packet,
        key: &FlowKey,
        src_is_lo: bool,
        egress: bool,
        now: u64,
    ) {
        let capture = match CONFIG.get(0) {
            Some(cfg) => cfg.capture != 0,
            None => false,
        };
        let mut state = base_state(ctx, src_is_lo, egress, now);
        state.c2s_packets = 1;
        state.client_data_seq = pkt.seq.wrapping_add(1);
        state.capture_end_seq = pkt.seq.wrapping_add(1);
        state.phase = TcpPhase::SynSent as u8;
        state.inspect = if capture {
            Inspect::Capturing as u8
        } else {
            Inspect::Done as u8
        };
        if let Some(old) = FLOWS.get_ptr_mut(key) {
            // SAFETY: a pointer into the map value, valid for this program run.
            let old = unsafe { &mut *old };
            let same_client = src_is_lo == (old.flags & FLOW_CLIENT_IS_LO != 0);
            let mut step =
                lifecycle::syn_step(old.phase, old.client_data_seq, pkt.seq, same_client);
            // Data in the SYN (Fast Open) cannot wait for the server's answer: it is
            // captured now or never.
            if step == SynStep::Defer && pkt.payload_len != 0 {
                bump(stat::FLOWS_SUPERSEDED);
                step = SynStep::Restart;
            }
            match step {
                SynStep::Retransmit => bump(stat::SYN_RETRANSMITS),
                SynStep::Defer => {
                    old.flags |= FLOW_RESTART_PENDING;
                    if src_is_lo {
                        old.flags |= FLOW_RESTART_CLIENT_LO;
                    } else {
                        old.flags &= !FLOW_RESTART_CLIENT_LO;
                    }
                    old.restart_seq = pkt.seq;
                    old.restart_cookie = state.socket_cookie;
                    bump(stat::SYNS_DEFERRED);
                }
                SynStep::Restart => {
                    // In place: no allocation, and the entry keeps its LRU slot.
                    *old = state;
                    let _ = VERDICTS.remove(key);
                    count_new(&state);
                    syn_payload(ctx, pkt, old, now);
                }
            }
            return;
        }
        if FLOWS.insert(key, state, BPF_NOEXIST as u64).is_err() {
            bump(stat::FLOW_INSERT_FAILED);
            return;
        }
        count_new(&state);
        if pkt.payload_len != 0
            && let Some(flow) = FLOWS.get_ptr_mut(key)
        {
            // SAFETY: a pointer into the map value, valid for this program run.
            syn_payload(ctx, pkt, unsafe { &mut *flow }, now);
        }
    }

    /// Captures the data a SYN carries (TCP Fast Open) like any first client segment, so
    /// that the server's answer is held for its verdict.
    #[inline(always)]
    fn syn_payload(ctx: &TcContext, pkt: &Packet, flow: &mut FlowState, now: u64) {
        if pkt.payload_len == 0 || flow.inspect != Inspect::Capturing as u8 {
            return;
        }
        bump(stat::SYN_PAYLOADS);
        flow.payload_ns = now;
        capture(ctx, pkt, flow, now);
    }

    /// A SYN-ACK that confirms a deferred SYN ([`SynStep::Defer`]): the live flow under
    /// the key was superseded by a new connection, which starts here.
    #[inline(always)]
    fn restart_confirmed(
        ctx: &TcContext,
        flow: &mut FlowState,
        key: &FlowKey,
        egress: bool,
        now: u64,
    ) {
        let capture = match CONFIG.get(0) {
            Some(cfg) => cfg.capture != 0,
            None => false,
        };
        let client_is_lo = flow.flags & FLOW_RESTART_CLIENT_LO != 0;
        let data_seq = flow.restart_seq.wrapping_add(1);
        let cookie = flow.restart_cookie;
        // The SYN went the other way through this hook (egress when its answer comes in).
        let mut state = base_state(ctx, client_is_lo, !egress, now);
        state.socket_cookie = cookie;
        state.c2s_packets = 1;
        state.s2c_packets = 1;
        state.client_data_seq = data_seq;
        state.capture_end_seq = data_seq;
        state.phase = TcpPhase::SynAckSeen as u8;
        state.inspect = if capture {
            Inspect::Capturing as u8
        } else {
            Inspect::Done as u8
        };
        // A flow whose close was seen ended; one that went quiet was superseded.
        if flow.flags & FLOW_CLOSE_REPORTED == 0 {
            bump(stat::FLOWS_SUPERSEDED);
        }
        *flow = state;
        let _ = VERDICTS.remove(key);
        count_new(&state);
    }

    #[inline(always)]
    fn count_new(state: &FlowState) {
        bump(stat::FLOWS_NEW);
        if state.socket_cookie != 0 {
            bump(stat::FLOWS_NEW_LOCAL);
        }
    }

    /// A packet of a flow the table does not hold: its SYN went unseen (the flow began
    /// before the sensor, or its entry was evicted). It gets an entry that is tracked but
    /// not inspected, and is counted once, so that no flow passes unaccounted.
    #[inline(always)]
    fn midstream(
        ctx: &TcContext,
        pkt: &Packet,
        key: &FlowKey,
        src_is_lo: bool,
        egress: bool,
        now: u64,
    ) {
        if !lifecycle::picks_up_midstream(pkt.flags) {
            return;
        }
        let state = midstream_state(ctx, pkt, src_is_lo, egress, now);
        if FLOWS.insert(key, state, BPF_NOEXIST as u64).is_ok() {
            bump(stat::FLOWS_MIDSTREAM);
        } else {
            bump(stat::FLOW_INSERT_FAILED);
        }
    }

    /// The entry of a flow taken up mid-stream. Which side is the client is unknown; the
    /// sender of this packet is taken as the client.
    #[inline(always)]
    fn midstream_state(
        ctx: &TcContext,
        pkt: &Packet,
        src_is_lo: bool,
        egress: bool,
        now: u64,
    ) -> FlowState {
        let mut state = base_state(ctx, src_is_lo, egress, now);
        state.flags |= FLOW_MIDSTREAM;
        state.client_data_seq = pkt.seq;
        state.capture_end_seq = pkt.seq;
        state.phase = if lifecycle::ends_flow(pkt.flags) {
            TcpPhase::Closed as u8
        } else {
            TcpPhase::Established as u8
        };
        state.inspect = Inspect::Done as u8;
        state.verdict = Verdict::Allow as u8;
        state
    }

    /// What every new entry starts with: its times, the side of the client, the
    /// interface and, on egress, the local socket.
    #[inline(always)]
    fn base_state(ctx: &TcContext, src_is_lo: bool, egress: bool, now: u64) -> FlowState {
        let mut flags = if src_is_lo { FLOW_CLIENT_IS_LO } else { 0 };
        if egress {
            flags |= FLOW_SYN_EGRESS;
        }
        FlowState {
            first_ns: now,
            last_ns: now,
            // Only egress skbs carry the local socket.
            socket_cookie: if egress {
                // SAFETY: the skb pointer is the program's context.
                unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) }
            } else {
                0
            },
            // SAFETY: the skb pointer is the program's context.
            ifindex: unsafe { (*ctx.skb.skb).ifindex },
            verdict: Verdict::Pending as u8,
            flags,
            ..FlowState::default()
        }
    }

    #[inline(always)]
    fn handshake(pkt: &Packet, flow: &mut FlowState, from_client: bool, now: u64) {
        let phase = flow.phase;
        if phase == TcpPhase::SynSent as u8 && !from_client {
            if pkt.flags & TCP_RST != 0 {
                flow.phase = TcpPhase::Failed as u8;
                flow.inspect = Inspect::Done as u8;
                emit(pkt, flow, from_client, RecordKind::Failed, now);
            } else if pkt.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                flow.phase = TcpPhase::SynAckSeen as u8;
            }
        } else if phase == TcpPhase::SynAckSeen as u8
            && from_client
            && pkt.flags & (TCP_ACK | TCP_RST) == TCP_ACK
        {
            flow.phase = TcpPhase::Established as u8;
            emit(pkt, flow, from_client, RecordKind::Established, now);
        } else if phase >= TcpPhase::Established as u8
            && lifecycle::ends_flow(pkt.flags)
            && flow.inspect == Inspect::Capturing as u8
        {
            report_close(pkt, flow, from_client, now);
        }
    }

    #[inline(always)]
    fn report_close(pkt: &Packet, flow: &mut FlowState, from_client: bool, now: u64) {
        if flow.flags & FLOW_CLOSE_REPORTED != 0 {
            return;
        }
        // The phase stays: a RST with a bad checksum or a FIN out of window looks the
        // same here and the server ignores it, so the flow is still inspected, and a SYN
        // on its ports waits for the server's answer (see `lifecycle::SynStep::Defer`).
        flow.flags |= FLOW_CLOSE_REPORTED;
        bump(stat::FLOWS_CLOSED);
        emit(pkt, flow, from_client, RecordKind::Closed, now);
    }

    /// The flow's tuple oriented client → server, from a packet travelling either way.
    #[inline(always)]
    fn tuple(pkt: &Packet, from_client: bool) -> FlowTuple {
        let (client_addr, client_port, server_addr, server_port) = if from_client {
            (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        } else {
            (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        };
        FlowTuple {
            client_addr,
            server_addr,
            client_port,
            server_port,
            family: pkt.family,
            _pad: [0; 3],
        }
    }

    /// Fills `hdr` in place: records are built where they will be sent, not on the
    /// 512-byte eBPF stack.
    #[inline(always)]
    fn fill_header(
        hdr: &mut RecordHeader,
        pkt: &Packet,
        flow: &FlowState,
        from_client: bool,
        kind: RecordKind,
        now: u64,
    ) {
        hdr.tuple = tuple(pkt, from_client);
        hdr.ts_ns = now;
        hdr.socket_cookie = flow.socket_cookie;
        hdr.seq = pkt.data_seq;
        hdr.len = 0;
        hdr.seg_len = pkt.payload_len;
        hdr.ifindex = flow.ifindex;
        hdr.client_data_seq = flow.client_data_seq;
        hdr.stream_seq = if flow.flags & FLOW_CONTINUED != 0 {
            flow.decided_seq
        } else {
            flow.client_data_seq
        };
        hdr._pad2 = 0;
        hdr.kind = kind as u8;
        hdr.flags = if flow.flags & FLOW_SYN_EGRESS != 0 {
            RECORD_EGRESS
        } else {
            0
        };
        hdr._pad = [0; 2];
    }

    /// Reports a connection-level record. These are not urgent: they wake nobody and
    /// are read with the next payload record or by the daemon's periodic drain, which
    /// saves a wake-up per record on the verdict loop.
    #[inline(always)]
    fn emit(pkt: &Packet, flow: &FlowState, from_client: bool, kind: RecordKind, now: u64) {
        match RECORDS.reserve::<RecordHeader>(0) {
            Some(mut entry) => {
                // SAFETY: fill_header writes every field of the reserved record.
                let hdr = unsafe { &mut *entry.as_mut_ptr() };
                fill_header(hdr, pkt, flow, from_client, kind, now);
                entry.submit(BPF_RB_NO_WAKEUP as u64);
            }
            None => {
                bump(stat::RINGBUF_DROPS);
                bump(stat::CONNECTION_RECORDS_LOST);
            }
        }
    }

    #[inline(always)]
    fn capture(ctx: &TcContext, pkt: &Packet, flow: &mut FlowState, now: u64) {
        let flow_max = match CONFIG.get(0) {
            Some(cfg) => cfg.capture_flow_max,
            None => return,
        };
        let budget = flow_max.saturating_sub(flow.captured);
        if budget == 0 {
            return;
        }
        // Programs run with migration disabled: this CPU's slot has no other user now.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        let Some(rec) = SCRATCH.get_ptr_mut(cpu) else {
            bump(stat::SCRATCH_MISSING);
            return;
        };
        let rec = unsafe { &mut *rec };

        let mut len = pkt.payload_len;
        let mut flags = 0;
        if len > CAPTURE_SEG_MAX as u32 {
            len = CAPTURE_SEG_MAX as u32;
            flags |= RECORD_TRUNCATED;
            bump(stat::SEGMENTS_TRUNCATED);
        }
        if len >= budget {
            len = budget;
            flags |= RECORD_BUDGET_SPENT;
            bump(stat::FLOW_BUDGET_SPENT);
        }
        // LLVM knows `len` is within bounds and would drop a plain re-check, but the
        // verifier loses track of it across the arithmetic above. A volatile read hides the
        // value from LLVM so that the check below stays, on the register the helper gets.
        let len = unsafe { core::ptr::read_volatile(&len) };
        if len == 0 || len > CAPTURE_SEG_MAX as u32 {
            return;
        }
        let ret = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                pkt.payload_off,
                rec.data.as_mut_ptr().cast(),
                len,
            )
        };
        if ret != 0 {
            return;
        }
        fill_header(&mut rec.header, pkt, flow, true, RecordKind::Payload, now);
        rec.header.len = len;
        rec.header.flags |= flags;

        let total = offset_of!(PayloadRecord, data) + len as usize;
        if total > size_of::<PayloadRecord>() {
            return;
        }
        let bytes = unsafe {
            core::slice::from_raw_parts((rec as *const PayloadRecord).cast::<u8>(), total)
        };
        // Payload is what a verdict waits for: always wake the reader (an adaptive wake-up
        // would be skipped while unwoken connection records are still unread).
        if RECORDS
            .output::<[u8]>(bytes, BPF_RB_FORCE_WAKEUP as u64)
            .is_ok()
        {
            flow.captured += len;
            let end = pkt.data_seq.wrapping_add(pkt.payload_len);
            if seq_after(end, flow.capture_end_seq) {
                flow.capture_end_seq = end;
            }
            bump(stat::SEGMENTS_CAPTURED);
        } else {
            bump(stat::RINGBUF_DROPS);
        }
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
