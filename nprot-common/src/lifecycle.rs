//! The rules of a flow entry's life, written once for the eBPF programs and for replay's
//! tracker: when a SYN starts a flow, when a packet ends one, and when an idle entry is
//! retired. Each rule is a pure function of plain values, so that both sides call the
//! same code on their own flow representation.

use crate::{TcpPhase, Verdict};

/// TCP header flag: FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP header flag: SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP header flag: RST.
pub const TCP_RST: u8 = 0x04;
/// TCP header flag: ACK.
pub const TCP_ACK: u8 = 0x10;

/// What a SYN (without ACK) does to the entry already under its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynStep {
    /// The SYN that opened the entry, sent again: the flow goes on as it is.
    Retransmit,
    /// The entry's flow has ended: a new connection on the same four-tuple starts afresh.
    Restart,
    /// The entry's flow was never seen to end: the SYN is a new connection only once its
    /// server accepts it ([`confirms_restart`]). A SYN the server ignores (it answers a
    /// live connection with a challenge ACK, RFC 5961) must not end the tracking of the
    /// connection that goes on, or a forged SYN would walk around inspection.
    Defer,
}

/// Decides what a SYN with sequence number `syn_seq` from the entry's client side
/// (`same_client`) does to an entry in `phase` whose client data starts at
/// `client_data_seq`.
///
/// Ports are reused all the time (`tcp_tw_reuse`, busy hosts, NAT gateways), so any SYN
/// but the opening one again is a new connection; on a flow whose end went unseen, only
/// once the server says so.
#[inline(always)]
pub fn syn_step(phase: u8, client_data_seq: u32, syn_seq: u32, same_client: bool) -> SynStep {
    let ended = phase == TcpPhase::Closed as u8 || phase == TcpPhase::Failed as u8;
    if ended {
        SynStep::Restart
    } else if same_client && client_data_seq == syn_seq.wrapping_add(1) {
        SynStep::Retransmit
    } else {
        SynStep::Defer
    }
}

/// True if a packet confirms a deferred restart ([`SynStep::Defer`]): a SYN-ACK
/// (`flags`) from the new connection's server (`from_new_server`) acknowledging the
/// deferred SYN (`ack` = `restart_seq` + 1).
#[inline(always)]
pub fn confirms_restart(flags: u8, from_new_server: bool, ack: u32, restart_seq: u32) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK
        && from_new_server
        && ack == restart_seq.wrapping_add(1)
}

/// Where a segment's data starts: a SYN takes one sequence number before its data (TCP
/// Fast Open carries data in the SYN).
#[inline(always)]
pub fn data_seq(seq: u32, flags: u8) -> u32 {
    if flags & TCP_SYN != 0 {
        seq.wrapping_add(1)
    } else {
        seq
    }
}

/// True if a packet with TCP `flags` ends its flow (FIN or RST).
#[inline(always)]
pub fn ends_flow(flags: u8) -> bool {
    flags & (TCP_FIN | TCP_RST) != 0
}

/// True if an entry last touched at `last_ns` is retired at `now_ns`: it has idled longer
/// than `idle_timeout_ns`. A blocked flow is never retired, so that every packet it still
/// sends is reset.
#[inline(always)]
pub fn idle_expired(verdict: u8, last_ns: u64, now_ns: u64, idle_timeout_ns: u64) -> bool {
    verdict != Verdict::Block as u8 && now_ns.saturating_sub(last_ns) > idle_timeout_ns
}

/// True if a packet of a flow the table does not hold should start a mid-stream entry:
/// anything but a reset, whose flow is over anyway (and which nprot itself sends when it
/// resets a flow).
#[inline(always)]
pub fn picks_up_midstream(flags: u8) -> bool {
    flags & TCP_RST == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const EST: u8 = TcpPhase::Established as u8;

    #[test]
    fn the_opening_syn_again_is_a_retransmission() {
        assert_eq!(
            syn_step(TcpPhase::SynSent as u8, 1001, 1000, true),
            SynStep::Retransmit
        );
        assert_eq!(syn_step(EST, 1001, 1000, true), SynStep::Retransmit);
    }

    #[test]
    fn another_isn_on_a_live_flow_waits_for_the_server() {
        assert_eq!(syn_step(EST, 1001, 5000, true), SynStep::Defer);
        assert_eq!(
            syn_step(EST, 1001, 1000, false),
            SynStep::Defer,
            "a SYN from the server side is not the opening SYN"
        );
        let syn_ack = TCP_SYN | TCP_ACK;
        assert!(confirms_restart(syn_ack, true, 5001, 5000));
        assert!(
            !confirms_restart(TCP_ACK, true, 5001, 5000),
            "a challenge ACK"
        );
        assert!(!confirms_restart(syn_ack, true, 1001, 5000));
        assert!(!confirms_restart(syn_ack, false, 5001, 5000));
    }

    #[test]
    fn a_syn_on_an_ended_flow_restarts_it() {
        for phase in [TcpPhase::Closed, TcpPhase::Failed] {
            assert_eq!(syn_step(phase as u8, 1001, 1000, true), SynStep::Restart);
        }
    }

    #[test]
    fn syn_data_starts_after_the_syn() {
        assert_eq!(data_seq(u32::MAX, TCP_SYN), 0);
        assert_eq!(data_seq(7, TCP_ACK), 7);
    }

    #[test]
    fn blocked_flows_never_idle_out() {
        assert!(idle_expired(Verdict::Allow as u8, 0, 11, 10));
        assert!(!idle_expired(Verdict::Allow as u8, 0, 10, 10));
        assert!(!idle_expired(Verdict::Block as u8, 0, u64::MAX, 10));
    }

    #[test]
    fn resets_start_no_entry() {
        assert!(!picks_up_midstream(TCP_RST | TCP_ACK));
        assert!(picks_up_midstream(TCP_ACK));
        assert!(ends_flow(TCP_FIN | TCP_ACK));
    }
}
