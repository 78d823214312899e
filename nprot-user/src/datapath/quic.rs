//! QUIC flows under inspection: each flow's client Initials, read ([`InitialReader`])
//! until its ClientHello, and the decision, kept a little while for the datagrams the
//! kernel captured before it picked the verdict up.

use std::collections::HashMap;

use nprot_common::{FlowKey, VerdictEntry};

use crate::datapath::parse::{
    quic::{InitialReader, QuicError, QuicOutcome, QuicVersion},
    tls::ClientHelloInfo,
};

/// QUIC flows read at once at most.
const MAX_QUIC_FLOWS: usize = 65_536;

/// How long a decided flow is remembered: datagrams captured before its verdict was
/// picked up are in the ring by then.
const DECIDED_KEEP_NS: u64 = 2_000_000_000;

/// One flow's Initials so far, and its decision once made.
struct QuicFlow {
    reader: InitialReader,
    last_ns: u64,
    decided: Option<VerdictEntry>,
}

/// What a client datagram of a flow came to.
#[derive(Debug)]
pub enum Step {
    /// The flow's ClientHello is complete.
    Hello {
        /// The QUIC version of its Initials.
        version: QuicVersion,
        /// What it says.
        info: ClientHelloInfo,
    },
    /// More Initials are needed.
    NeedMore,
    /// Not a valid client Initial: inspection of the flow ends.
    Invalid(QuicError),
    /// A datagram of a connection already decided: nothing to do.
    Late,
    /// No room for another flow.
    Overflow,
}

/// The QUIC flows under inspection, by flow key.
#[derive(Default)]
pub struct QuicFlows {
    flows: HashMap<FlowKey, QuicFlow>,
    /// Flows not read because the table was full.
    pub overflows: u64,
}

impl QuicFlows {
    /// Reads one client datagram (`payload`) of the flow `key`.
    pub fn push(&mut self, key: FlowKey, ts_ns: u64, payload: &[u8]) -> Step {
        if !self.flows.contains_key(&key) && self.flows.len() >= MAX_QUIC_FLOWS {
            self.overflows += 1;
            return Step::Overflow;
        }
        let flow = self.flows.entry(key).or_insert_with(|| QuicFlow {
            reader: InitialReader::new(),
            last_ns: ts_ns,
            decided: None,
        });
        flow.last_ns = ts_ns;
        if flow.decided.is_some() {
            if flow.reader.same_connection(payload) {
                return Step::Late;
            }
            // The kernel captures a decided flow again only for a new connection on its
            // 4-tuple: read it afresh.
            flow.reader = InitialReader::new();
            flow.decided = None;
        }
        match flow.reader.push(payload) {
            QuicOutcome::NeedMore => Step::NeedMore,
            QuicOutcome::ClientHello { version, info } => Step::Hello { version, info },
            QuicOutcome::Invalid(e) => Step::Invalid(e),
        }
    }

    /// Notes the verdict given to the flow `key`.
    pub fn decide(&mut self, key: &FlowKey, verdict: VerdictEntry) {
        if let Some(flow) = self.flows.get_mut(key) {
            flow.decided = Some(verdict);
        }
    }

    /// Forgets decided flows after a while, and undecided ones idle for `idle_ns`;
    /// returns how many undecided ones were given up.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) -> u64 {
        let mut gave_up = 0;
        self.flows.retain(|_, f| {
            let idle = now_ns.saturating_sub(f.last_ns);
            let keep = if f.decided.is_some() {
                idle < DECIDED_KEEP_NS
            } else {
                idle < idle_ns
            };
            if !keep && f.decided.is_none() {
                gave_up += 1;
            }
            keep
        });
        gave_up
    }
}
