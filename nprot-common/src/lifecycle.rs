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
    /// A new connection on the same four-tuple: the entry starts afresh.
    /// `superseded`: the old flow was never seen to end (its FIN or RST passed
    /// unseen, or it simply went quiet), so it is counted.
    Restart { superseded: bool },
}

/// Decides what a SYN with sequence number `syn_seq` from the entry's client side
/// (`same_client`) does to an entry in `phase` whose client data starts at
/// `client_data_seq`.
///
/// Only a SYN with the opening SYN's ISN, from the same side, on a flow that has not
/// ended is a retransmission; any other SYN is a new connection (ports are reused all the
/// time: `tcp_tw_reuse`, busy hosts, NAT gateways).
#[inline(always)]
pub fn syn_step(phase: u8, client_data_seq: u32, syn_seq: u32, same_client: bool) -> SynStep {
    let ended = phase == TcpPhase::Closed as u8 || phase == TcpPhase::Failed as u8;
    if same_client && !ended && client_data_seq == syn_seq.wrapping_add(1) {
        return SynStep::Retransmit;
    }
    SynStep::Restart { superseded: !ended }
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
    fn another_isn_on_a_live_flow_supersedes_it() {
        assert_eq!(
            syn_step(EST, 1001, 5000, true),
            SynStep::Restart { superseded: true }
        );
        assert_eq!(
            syn_step(EST, 1001, 1000, false),
            SynStep::Restart { superseded: true },
            "a SYN from the server side is a new connection"
        );
    }

    #[test]
    fn a_syn_on_an_ended_flow_restarts_it_quietly() {
        for phase in [TcpPhase::Closed, TcpPhase::Failed] {
            assert_eq!(
                syn_step(phase as u8, 1001, 1000, true),
                SynStep::Restart { superseded: false }
            );
        }
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
