//! Indicators and the policy that matches flows against them (DESIGN §3 and §5).
//!
//! [`load_file`] / [`load_json`] read an indicator file into a compact [`Indicators`]
//! set (all or nothing, with warnings); [`load_any`] also reads the Defender CSV and plain
//! lists ([`import`]); [`Policy::new`] indexes it for the sensor's
//! device groups; [`Policy::decide`] matches one flow's [`Subject`] and returns the
//! [`Decision`]: the winning indicator and the Audit indicators that also matched.

pub mod import;
pub mod indicator;
pub mod loading;
pub mod matcher;
pub mod store;
pub mod targets;

pub use import::{load_any, load_defender_csv, load_list};
pub use indicator::{Action, Indicator, IndicatorType, Severity, derived_id};
pub use loading::{IndicatorError, Loaded, load_file, load_json};
pub use matcher::{Decision, Policy, Subject};
pub use store::{IndicatorRef, Indicators};
pub use targets::{IpNet, Target};
