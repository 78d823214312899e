//! Indicators and the policy that matches flows against them (DESIGN §3 and §5).
//!
//! [`load_file`] / [`load_json`] read an indicator file into a compact [`Indicators`]
//! set (all or nothing, with warnings); [`Policy::new`] indexes it for the sensor's
//! device groups; [`Policy::decide`] matches one flow's [`Subject`] and returns the
//! [`Decision`]: the winning indicator and the Audit indicators that also matched.

pub mod indicator;
pub mod matcher;
pub mod rfc3339;

pub use indicator::{
    Action, Indicator, IndicatorError, IndicatorRef, IndicatorType, Indicators, IpNet, Loaded,
    Severity, Target, derived_id, load_file, load_json,
};
pub use matcher::{Decision, Policy, Subject};
