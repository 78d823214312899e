//! The sensor's mode: whether it inspects, and whether it enforces what it finds.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// The sensor's network-protection level (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
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
