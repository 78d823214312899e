//! Verdicts: what a policy decision means under the sensor's enforcement mode — the
//! kernel verdict, and the network-protection events to log.

use std::{fmt, str::FromStr};

use nprot_common::Verdict;
use serde::Serialize;

use crate::policy::{
    indicator::{Action, IndicatorRef},
    matcher::Decision,
};

/// The sensor's network-protection level (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Mode {
    /// No inspection at all: connections are tracked, nothing is parsed or matched.
    Disabled,
    /// Inspect and log; Block and Warn become audited events, nothing is reset.
    #[default]
    Audit,
    /// Enforce: Block and Warn reset the flow.
    Block,
}

impl Mode {
    /// Lower-case name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Disabled => "disabled",
            Mode::Audit => "audit",
            Mode::Block => "block",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "disabled" => Ok(Mode::Disabled),
            "audit" => Ok(Mode::Audit),
            "block" => Ok(Mode::Block),
            other => Err(format!(
                "unknown mode '{other}': expected disabled, audit or block"
            )),
        }
    }
}

/// A network-protection event to log for one indicator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement<'a> {
    /// The indicator behind the event.
    pub indicator: IndicatorRef<'a>,
    /// True for `ExploitGuardNetworkProtectionAudited`, false for `…Blocked`.
    pub is_audit: bool,
}

/// What to do with a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<'a> {
    /// For the kernel.
    pub verdict: Verdict,
    /// Events to log, deciding indicator first.
    pub enforcements: Vec<Enforcement<'a>>,
}

/// Applies `mode` to a policy decision.
pub fn outcome<'a>(decision: &Decision<'a>, mode: Mode) -> Outcome<'a> {
    let mut outcome = Outcome {
        verdict: Verdict::Allow,
        enforcements: Vec::new(),
    };
    if let Some(winner) = decision.winner {
        match (winner.action(), mode) {
            (Action::Block | Action::Warn, Mode::Block) => {
                outcome.verdict = Verdict::Block;
                outcome.enforcements.push(Enforcement {
                    indicator: winner,
                    is_audit: false,
                });
            }
            (Action::Block | Action::Warn, Mode::Audit) => {
                outcome.enforcements.push(Enforcement {
                    indicator: winner,
                    is_audit: true,
                });
            }
            _ => {}
        }
    }
    if mode != Mode::Disabled {
        outcome
            .enforcements
            .extend(decision.audits.iter().map(|&indicator| Enforcement {
                indicator,
                is_audit: true,
            }));
    }
    outcome
}
