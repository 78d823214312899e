//! Verdicts: what a policy decision means under the sensor's enforcement mode — the
//! kernel verdict, and the network-protection events to log.

use nprot_common::Verdict;

use crate::{
    mode::Mode,
    policy::{
        indicator::{Action, IndicatorRef},
        matcher::Decision,
    },
};

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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::policy::{Policy, Subject, load_json};

    fn policy() -> Policy {
        let loaded = load_json(
            r#"{"indicators": [
                {"id": "w", "type": "DomainName", "value": "warn.example", "action": "Warn"},
                {"id": "b", "type": "DomainName", "value": "bad.example", "action": "Block"},
                {"id": "a", "type": "DomainName", "value": "bad.example", "action": "Audit"},
                {"id": "ok", "type": "DomainName", "value": "ok.bad.example", "action": "Allowed"}
            ]}"#,
        )
        .unwrap();
        Policy::new(loaded.indicators, &[])
    }

    fn outcome_for(host: &str, mode: Mode) -> (Verdict, Vec<(String, bool)>) {
        let policy = policy();
        let subject = Subject {
            ip: "198.18.0.2".parse().unwrap(),
            host: Some(host),
            http_path: None,
        };
        let out = outcome(&policy.decide(&subject, SystemTime::now()), mode);
        let events = out
            .enforcements
            .iter()
            .map(|e| (e.indicator.id().to_owned(), e.is_audit))
            .collect();
        (out.verdict, events)
    }

    #[test]
    fn block_mode_blocks_block_and_warn() {
        assert_eq!(
            outcome_for("bad.example", Mode::Block),
            (
                Verdict::Block,
                vec![("b".into(), false), ("a".into(), true)]
            )
        );
        assert_eq!(
            outcome_for("warn.example", Mode::Block),
            (Verdict::Block, vec![("w".into(), false)])
        );
    }

    #[test]
    fn audit_mode_only_audits() {
        assert_eq!(
            outcome_for("bad.example", Mode::Audit),
            (Verdict::Allow, vec![("b".into(), true), ("a".into(), true)])
        );
    }

    #[test]
    fn allowed_and_unknown_names_pass_silently() {
        assert_eq!(outcome_for("ok.bad.example", Mode::Block).0, Verdict::Allow);
        assert_eq!(
            outcome_for("good.example", Mode::Block),
            (Verdict::Allow, vec![])
        );
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [Mode::Disabled, Mode::Audit, Mode::Block] {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
        }
        assert!(
            "Block"
                .parse::<Mode>()
                .unwrap_err()
                .contains("disabled, audit or block")
        );
    }
}
