//! The cgroup connect hooks: who connects each TCP socket, by socket cookie, so that user
//! space can name the process behind a flow.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_get_socket_cookie, bpf_ktime_get_ns,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use nprot_common::{SocketOwner, encap::IPPROTO_TCP, owner_stat};

use crate::maps::{CONNECTS, LAST_CONNECT, SOCKET_OWNERS, owner_bump};
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
    // SAFETY: the context pointer is the kernel's bpf_sock_addr for this call.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let owner = SocketOwner {
        cookie,
        // SAFETY: a helper without arguments.
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
