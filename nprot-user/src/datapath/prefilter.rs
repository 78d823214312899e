//! The kernel pre-filter's summary of the policy (issue 16): every name and network an
//! indicator other than an Allowed one can match, in the Bloom filter that
//! [`nprot_common::prefilter::judge`] asks before it lets a flow go on without waiting for
//! the daemon.
//!
//! The summary is a superset of what can match, never less: Block, Warn and Audit
//! indicators of every kind go in, process-scoped ones too (the kernel does not know the
//! process), expired ones do not. Allowed indicators stay out: a flow that only they
//! match is allowed either way, and an Allowed subdomain of a blocked domain still finds
//! its parent in the filter.
//!
//! A change of policy never pre-allows what the new policy blocks
//! ([`Prefilter::stage`], docs/decisions.md): the new summary is written into the buffer
//! not in force, then the sensor's config points the kernel at it, and only then is the
//! change answered. A failed write switches the pre-filter off, so that a stale summary is
//! never left in force.

use std::time::{Instant, SystemTime};

use nprot_common::{
    name_hash::hash_name,
    prefilter::{self, Filter},
};
use serde::{Deserialize, Serialize};

use crate::{
    policy::{Action, Policy, Target},
    record::raw_addr,
};

/// The summary of `policy` at `now`, and when it changes next by itself (the earliest
/// expiry of an indicator in it).
pub fn summarise(policy: &Policy, now: SystemTime) -> (Filter, usize, Option<SystemTime>) {
    let mut filter = Filter::default();
    let mut keys = 0;
    let mut next = None::<SystemTime>;
    for ind in policy.indicators().iter() {
        if ind.action() == Action::Allowed || ind.is_expired(now) {
            continue;
        }
        match ind.target() {
            Target::Domain(name) => filter.add(hash_name(&name)),
            // An IP-literal host is never judged in the kernel (the flow goes to the
            // daemon), so only names need a key.
            Target::Url { host, .. } if host.parse::<std::net::IpAddr>().is_err() => {
                filter.add(hash_name(&host));
            }
            Target::Url { .. } => continue,
            Target::Ip(net) => {
                let (family, addr) = raw_addr(net.addr());
                filter.add_net(family, &addr, u32::from(net.prefix()));
            }
        }
        keys += 1;
        if let Some(at) = ind.expiration() {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    (filter, keys, next)
}

/// Where the summary goes: the `PREFILTER_*` maps of the live sensor, or a stand-in.
pub trait SummaryTarget {
    /// Loads the pre-filter program (once; it is not loaded before it is needed).
    fn load_prefilter(&mut self) -> Result<(), String>;
    /// Writes `filter` into buffer `buffer` (0 or 1), which is not in force.
    fn write_prefilter(&mut self, buffer: u8, filter: &Filter) -> Result<(), String>;
}

/// What `nprot stats` says of the pre-filter.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefilterReport {
    /// The kernel pre-filters flows now (block mode, `prefilter = "on"`).
    pub enabled: bool,
    /// Indicators summarised in the buffer in force.
    pub keys: u64,
    /// Kernel memory of the summary: both buffers of the Bloom filter and their prefix
    /// lengths.
    pub summary_bytes: u64,
    /// Summaries written so far.
    pub rebuilds: u64,
    /// How long the last one took to build and write, in milliseconds.
    pub rebuild_ms: f64,
    /// Summaries that could not be written (or the program not loaded): the pre-filter
    /// was switched off each time, and every flow waits for the daemon.
    pub errors: u64,
}

/// The kernel's summary buffers as last written.
#[derive(Debug, Default)]
pub struct Prefilter {
    /// The buffer in force, if the pre-filter is on.
    in_force: Option<u8>,
    loaded: bool,
    /// Real ECH makes a flow a candidate (`ech = "block"`, `dns_names = "enforce"`).
    ech_candidate: bool,
    due: Option<SystemTime>,
    /// What `nprot stats` reports.
    pub report: PrefilterReport,
}

impl Prefilter {
    /// The `SensorConfig::prefilter` bits for what is in force.
    pub fn bits(&self) -> u8 {
        config_bits(self.in_force, self.ech_candidate)
    }

    /// An indicator in the summary has expired since it was written.
    pub fn due(&self, now: SystemTime) -> bool {
        self.in_force.is_some() && self.due.is_some_and(|at| at <= now)
    }

    /// Writes the summary of `policy` at `now` into the buffer not in force, and returns
    /// the config bits that put it in force: the caller writes them (the config is one
    /// map value for every setting), then calls [`Prefilter::in_force`]. On an error
    /// the caller switches the pre-filter off ([`Prefilter::off`]).
    pub fn stage(
        &mut self,
        target: &mut dyn SummaryTarget,
        policy: &Policy,
        ech_candidate: bool,
        now: SystemTime,
    ) -> Result<(u8, u8), String> {
        let started = Instant::now();
        if !self.loaded {
            target.load_prefilter()?;
            self.loaded = true;
        }
        let (filter, keys, due) = summarise(policy, now);
        let next = match self.in_force {
            Some(0) => 1,
            _ => 0,
        };
        target.write_prefilter(next, &filter)?;
        self.due = due;
        self.ech_candidate = ech_candidate;
        self.report.keys = keys as u64;
        self.report.rebuilds += 1;
        self.report.rebuild_ms = started.elapsed().as_secs_f64() * 1e3;
        self.report.summary_bytes = summary_bytes();
        Ok((next, config_bits(Some(next), ech_candidate)))
    }

    /// The buffer `stage` wrote is in force (its bits are written).
    pub fn in_force(&mut self, buffer: u8) {
        self.in_force = Some(buffer);
        self.report.enabled = true;
    }

    /// The pre-filter is off (its bits cleared), after `error` if there was one.
    pub fn off(&mut self, error: bool) {
        self.in_force = None;
        self.report.enabled = false;
        if error {
            self.report.errors += 1;
        }
    }
}

/// The `SensorConfig::prefilter` bits with `buffer` in force (`None`: off).
fn config_bits(buffer: Option<u8>, ech_candidate: bool) -> u8 {
    let Some(buffer) = buffer else {
        return 0;
    };
    let mut bits = prefilter::CONFIG_ON;
    if buffer == 1 {
        bits |= prefilter::CONFIG_BUFFER_1;
    }
    if ech_candidate {
        bits |= prefilter::CONFIG_ECH_CANDIDATE;
    }
    bits
}

/// The kernel memory of the summary maps: two buffers of [`prefilter::BLOCKS`] blocks,
/// and two [`prefilter::Lengths`].
pub fn summary_bytes() -> u64 {
    (2 * prefilter::BLOCKS as usize * size_of::<prefilter::Block>()
        + 2 * size_of::<prefilter::Lengths>()) as u64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nprot_common::{FAMILY_V4, prefilter::Summary};

    use super::*;
    use crate::policy::{Indicator, IndicatorType, store::Indicators};

    fn policy(entries: &[(IndicatorType, &str, Action, Option<SystemTime>)]) -> Policy {
        let mut set = Indicators::new();
        for (kind, value, action, expiration) in entries {
            let Ok(mut ind) = Indicator::new(*kind, value, *action) else {
                panic!("indicator {value}");
            };
            ind.expiration = *expiration;
            let Ok(()) = set.push(&ind) else {
                panic!("push {value}");
            };
        }
        Policy::new(set, &[])
    }

    #[test]
    fn every_indicator_but_allowed_and_expired_ones_is_summarised() {
        let now = SystemTime::now();
        let past = now - Duration::from_secs(1);
        let later = now + Duration::from_mins(1);
        let p = policy(&[
            (
                IndicatorType::DomainName,
                "blocked.test",
                Action::Block,
                None,
            ),
            (IndicatorType::DomainName, "warned.test", Action::Warn, None),
            (
                IndicatorType::DomainName,
                "audited.test",
                Action::Audit,
                Some(later),
            ),
            (
                IndicatorType::DomainName,
                "allowed.test",
                Action::Allowed,
                None,
            ),
            (
                IndicatorType::DomainName,
                "gone.test",
                Action::Block,
                Some(past),
            ),
            (
                IndicatorType::Url,
                "https://url.test/x",
                Action::Block,
                None,
            ),
            (IndicatorType::IpAddress, "198.18.0.7", Action::Block, None),
            (
                IndicatorType::IpAddress,
                "198.19.0.0/16",
                Action::Block,
                None,
            ),
        ]);
        let (filter, keys, due) = summarise(&p, now);
        assert_eq!(keys, 6);
        assert_eq!(due, Some(later));
        for name in ["blocked.test", "warned.test", "audited.test", "url.test"] {
            assert!(filter.may_hold(hash_name(name)), "{name}");
        }
        // A Bloom filter may answer yes for anything; over these few keys it does not.
        for name in ["allowed.test", "gone.test", "other.test"] {
            assert!(!filter.may_hold(hash_name(name)), "{name}");
        }
        let Ok(ip) = "198.18.0.7".parse() else {
            panic!("address");
        };
        let (family, addr) = raw_addr(ip);
        assert_eq!(family, FAMILY_V4);
        assert!(filter.may_hold(prefilter::net_key(family, &addr, 32)));
        let lengths = Summary::lengths(&filter);
        assert!(lengths.has(FAMILY_V4, 32) && lengths.has(FAMILY_V4, 16));
        assert!(!lengths.has(FAMILY_V4, 24));
    }

    /// The stand-in kernel: what was written where, in order.
    #[derive(Default)]
    struct Recorder {
        loads: u32,
        writes: Vec<(u8, Filter)>,
        fail: bool,
    }

    impl SummaryTarget for Recorder {
        fn load_prefilter(&mut self) -> Result<(), String> {
            self.loads += 1;
            Ok(())
        }
        fn write_prefilter(&mut self, buffer: u8, filter: &Filter) -> Result<(), String> {
            if self.fail {
                return Err("no such map".into());
            }
            self.writes.push((buffer, filter.clone()));
            Ok(())
        }
    }

    #[test]
    fn each_change_writes_the_buffer_not_in_force_and_then_switches_to_it() {
        let now = SystemTime::now();
        let mut kernel = Recorder::default();
        let mut pf = Prefilter::default();
        let first = policy(&[(IndicatorType::DomainName, "a.test", Action::Block, None)]);
        let Ok((buffer, bits)) = pf.stage(&mut kernel, &first, false, now) else {
            panic!("stage");
        };
        assert_eq!((buffer, bits), (0, prefilter::CONFIG_ON));
        // Staged, not yet in force: the bits in force are still none.
        assert_eq!(pf.bits(), 0);
        pf.in_force(buffer);
        assert_eq!(pf.bits(), prefilter::CONFIG_ON);

        let second = policy(&[(IndicatorType::DomainName, "b.test", Action::Block, None)]);
        let Ok((buffer, bits)) = pf.stage(&mut kernel, &second, true, now) else {
            panic!("stage");
        };
        assert_eq!(buffer, 1);
        assert_eq!(
            bits,
            prefilter::CONFIG_ON | prefilter::CONFIG_BUFFER_1 | prefilter::CONFIG_ECH_CANDIDATE
        );
        // Until the caller writes the bits, buffer 0 (the old policy) is in force.
        assert_eq!(pf.bits() & prefilter::CONFIG_BUFFER_1, 0);
        pf.in_force(buffer);
        assert_eq!(kernel.loads, 1);
        assert_eq!(kernel.writes.len(), 2);
        assert!(kernel.writes[1].1.may_hold(hash_name("b.test")));
        assert_eq!(pf.report.rebuilds, 2);
        assert_eq!(pf.report.keys, 1);

        kernel.fail = true;
        assert!(pf.stage(&mut kernel, &first, false, now).is_err());
        pf.off(true);
        assert_eq!(pf.bits(), 0);
        assert_eq!(pf.report.errors, 1);
        assert!(!pf.report.enabled);
    }

    #[test]
    fn a_summary_is_due_again_when_an_indicator_in_it_expires() {
        let now = SystemTime::now();
        let at = now + Duration::from_secs(5);
        let p = policy(&[(IndicatorType::DomainName, "a.test", Action::Block, Some(at))]);
        let mut pf = Prefilter::default();
        let Ok((buffer, _)) = pf.stage(&mut Recorder::default(), &p, false, now) else {
            panic!("stage");
        };
        pf.in_force(buffer);
        assert!(!pf.due(now));
        assert!(pf.due(at));
    }
}
