//! DNS blocking in the kernel (issue 15): the names the kernel answers NXDOMAIN, kept
//! in its `DNS_NAMES` map from the policy.
//!
//! For every DomainName indicator that applies here (not expired, not scoped to a
//! process: the resolver that asks may not be the application), the map holds
//! `hash_name(value)` → [`NAME_BLOCK`] if the policy's own decision for a query of
//! exactly that name is Block or Warn, [`NAME_ALLOW`] otherwise (an Allowed subdomain of
//! a blocked domain carves itself out). The kernel takes the longest suffix of a queried
//! name it finds, which is the most specific indicator, as [`Policy::decide`] does.
//! Outside block mode the map is empty. URL and IP indicators never block a name.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    time::SystemTime,
};

use nprot_common::{
    MAX_DNS_NAMES,
    dns::{NAME_ALLOW, NAME_BLOCK},
    name_hash::hash_name,
};

use crate::{
    mode::Mode,
    policy::{Action, IndicatorRef, IndicatorType, Policy, Target},
};

/// The kernel's name map (the `DNS_NAMES` BPF map, or a stand-in).
pub trait NameMap {
    /// Sets the value of `hash`.
    fn put(&mut self, hash: u64, value: u8) -> anyhow::Result<()>;
    /// Removes `hash` (absent is fine).
    fn remove(&mut self, hash: u64) -> anyhow::Result<()>;
}

/// The indicator that blocks a DNS query for `name` in block mode: the policy's winner
/// for that name, if it is a DomainName indicator saying Block or Warn. Process-scoped
/// indicators never match (the process asking is the resolver).
pub fn blocking_indicator<'p>(
    policy: &'p Policy,
    name: &str,
    now: SystemTime,
) -> Option<IndicatorRef<'p>> {
    // A lookup: Domain indicators on the name, never URL ones (the resolver's address
    // plays no part here: the unspecified address).
    let winner = policy
        .decide_lookup(IpAddr::V4(Ipv4Addr::UNSPECIFIED), name, now)
        .winner?;
    (winner.kind() == IndicatorType::DomainName
        && matches!(winner.action(), Action::Block | Action::Warn))
    .then_some(winner)
}

/// What `DNS_NAMES` holds under `policy` and `mode` at `now`, and when that changes next
/// by itself (the earliest expiry of an indicator in it).
pub fn wanted(
    policy: &Policy,
    mode: Mode,
    now: SystemTime,
) -> (HashMap<u64, u8>, Option<SystemTime>) {
    let mut names = HashMap::new();
    let mut next = None::<SystemTime>;
    if mode != Mode::Block {
        return (names, next);
    }
    for ind in policy.indicators().iter() {
        if ind.kind() != IndicatorType::DomainName || ind.process().is_some() || ind.is_expired(now)
        {
            continue;
        }
        let Target::Domain(name) = ind.target() else {
            continue;
        };
        if let Some(at) = ind.expiration() {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        let value = if blocking_indicator(policy, &name, now).is_some() {
            NAME_BLOCK
        } else {
            NAME_ALLOW
        };
        names.insert(hash_name(&name), value);
    }
    (names, next)
}

/// The map's contents as last written, and when they are due again.
#[derive(Debug, Default)]
pub struct DnsBlock {
    current: HashMap<u64, u8>,
    due: Option<SystemTime>,
    /// Names that did not fit in the map (it holds [`MAX_DNS_NAMES`]).
    pub overflow: usize,
    /// Map writes that failed.
    pub errors: u64,
}

impl DnsBlock {
    /// Names in the map now.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// Brings `map` to what `policy` and `mode` want at `now`. New and changed entries go
    /// in before stale ones go out, blocks first, so that no name to block is ever
    /// missing on the way.
    pub fn sync(&mut self, map: &mut dyn NameMap, policy: &Policy, mode: Mode, now: SystemTime) {
        let (mut want, due) = wanted(policy, mode, now);
        self.due = due;
        let max = MAX_DNS_NAMES as usize;
        self.overflow = want.len().saturating_sub(max);
        if self.overflow > 0 {
            log::warn!(
                "{} domain indicators do not fit in the kernel's DNS name map ({max}): \
                 their queries are not answered in the kernel",
                self.overflow
            );
            // Blocks are kept before allows.
            let mut entries: Vec<(u64, u8)> = want.into_iter().collect();
            entries.sort_unstable_by_key(|&(h, v)| (std::cmp::Reverse(v), h));
            entries.truncate(max);
            want = entries.into_iter().collect();
        }
        let mut changed: Vec<(u64, u8)> = want
            .iter()
            .filter(|(h, v)| self.current.get(h) != Some(v))
            .map(|(h, v)| (*h, *v))
            .collect();
        changed.sort_unstable_by_key(|&(h, v)| (std::cmp::Reverse(v), h));
        for (hash, value) in changed {
            match map.put(hash, value) {
                Ok(()) => {
                    self.current.insert(hash, value);
                }
                Err(e) => {
                    self.errors += 1;
                    log::warn!("DNS name map: cannot write an entry: {e:#}");
                }
            }
        }
        let stale: Vec<u64> = self
            .current
            .keys()
            .filter(|h| !want.contains_key(h))
            .copied()
            .collect();
        for hash in stale {
            match map.remove(hash) {
                Ok(()) => {
                    self.current.remove(&hash);
                }
                Err(e) => {
                    self.errors += 1;
                    log::warn!("DNS name map: cannot remove an entry: {e:#}");
                }
            }
        }
    }

    /// Whether an indicator in the map has expired since the last sync (`now` past the
    /// earliest expiry): then [`DnsBlock::sync`] is due.
    pub fn due(&self, now: SystemTime) -> bool {
        self.due.is_some_and(|at| now >= at)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::{Indicator, Indicators};

    /// A map in memory, recording the order of writes.
    #[derive(Default)]
    struct Memory {
        map: HashMap<u64, u8>,
        log: Vec<(u64, Option<u8>)>,
    }

    impl NameMap for Memory {
        fn put(&mut self, hash: u64, value: u8) -> anyhow::Result<()> {
            self.map.insert(hash, value);
            self.log.push((hash, Some(value)));
            Ok(())
        }
        fn remove(&mut self, hash: u64) -> anyhow::Result<()> {
            self.map.remove(&hash);
            self.log.push((hash, None));
            Ok(())
        }
    }

    fn policy(entries: &[(&str, &str, &str)], now: SystemTime) -> Policy {
        let mut set = Indicators::new();
        for (i, (kind, value, action)) in entries.iter().enumerate() {
            let mut ind = Indicator::new(
                kind.parse::<IndicatorType>().unwrap(),
                value,
                action.parse::<Action>().unwrap(),
            )
            .unwrap();
            ind.id = format!("i{i}");
            if value.starts_with("soon.") {
                ind.expiration = Some(now + Duration::from_mins(1));
            }
            if value.starts_with("scoped.") {
                ind.process = Some("curl".into());
            }
            set.push(&ind).unwrap();
        }
        Policy::new(set, &[])
    }

    #[test]
    fn blocked_domains_and_allowed_subdomains_go_in_block_mode_only() {
        let now = SystemTime::now();
        let p = policy(
            &[
                ("DomainName", "Blocked.test", "Block"),
                ("DomainName", "ok.blocked.test", "Allowed"),
                ("DomainName", "warned.test", "Warn"),
                ("DomainName", "audited.test", "Audit"),
                ("DomainName", "scoped.test", "Block"),
                ("Url", "https://url.test/", "Block"),
                ("IpAddress", "0.0.0.0/0", "Block"),
            ],
            now,
        );
        let (want, due) = wanted(&p, Mode::Block, now);
        assert_eq!(want.get(&hash_name("blocked.test")), Some(&NAME_BLOCK));
        assert_eq!(want.get(&hash_name("ok.blocked.test")), Some(&NAME_ALLOW));
        assert_eq!(want.get(&hash_name("warned.test")), Some(&NAME_BLOCK));
        assert_eq!(want.get(&hash_name("audited.test")), Some(&NAME_ALLOW));
        assert_eq!(want.get(&hash_name("scoped.test")), None);
        assert_eq!(want.get(&hash_name("url.test")), None);
        assert_eq!(want.len(), 4);
        assert_eq!(due, None);
        assert!(wanted(&p, Mode::Audit, now).0.is_empty());
        assert!(blocking_indicator(&p, "www.blocked.test", now).is_some_and(|i| i.id() == "i0"));
        assert!(blocking_indicator(&p, "a.ok.blocked.test", now).is_none());
    }

    #[test]
    fn a_sync_adds_before_it_removes_and_expiry_makes_it_due() {
        let now = SystemTime::now();
        let mut block = DnsBlock::default();
        let mut map = Memory::default();
        let first = policy(
            &[
                ("DomainName", "old.test", "Block"),
                ("DomainName", "soon.test", "Block"),
            ],
            now,
        );
        block.sync(&mut map, &first, Mode::Block, now);
        assert_eq!(map.map.len(), 2);
        assert!(!block.due(now));
        assert!(block.due(now + Duration::from_secs(61)));
        block.sync(&mut map, &first, Mode::Block, now + Duration::from_secs(61));
        assert_eq!(map.map.len(), 1, "the expired one went");

        let second = policy(&[("DomainName", "new.test", "Block")], now);
        map.log.clear();
        block.sync(&mut map, &second, Mode::Block, now);
        assert_eq!(
            map.log,
            vec![
                (hash_name("new.test"), Some(NAME_BLOCK)),
                (hash_name("old.test"), None)
            ]
        );
        block.sync(&mut map, &second, Mode::Audit, now);
        assert!(map.map.is_empty() && block.is_empty());
    }

    /// A standard query for `name` (type A, RD), as dig sends it.
    pub(crate) fn query(name: &str) -> Vec<u8> {
        let mut msg = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            msg.push(label.len() as u8);
            msg.extend_from_slice(label.as_bytes());
        }
        msg.extend_from_slice(&[0, 0, 1, 0, 1]);
        msg
    }

    struct NoVerdicts;

    impl crate::datapath::pipeline::VerdictTarget for NoVerdicts {
        fn set_verdict(
            &mut self,
            _key: &nprot_common::FlowKey,
            _verdict: nprot_common::VerdictEntry,
        ) -> anyhow::Result<()> {
            Ok(())
        }
    }

    fn pipeline(mode: Mode) -> crate::datapath::pipeline::Pipeline {
        let loaded = crate::policy::load_json(
            r#"{"indicators": [
                {"id": "blk", "type": "DomainName", "value": "blocked.test", "action": "Block"},
                {"id": "ok", "type": "DomainName", "value": "ok.blocked.test", "action": "Allowed"}
            ]}"#,
        )
        .unwrap();
        crate::datapath::pipeline::Pipeline::new(
            crate::events::EventFactory::new(
                "h",
                "d",
                crate::events::Clock::anchored(std::time::UNIX_EPOCH),
            ),
            4096,
            std::sync::Arc::new(Policy::new(loaded.indicators, &[])),
            mode,
        )
    }

    fn record(payload: &[u8], forged: bool) -> crate::record::Record<'_> {
        let (family, client_addr) = crate::record::raw_addr("198.18.0.1".parse().unwrap());
        let (_, server_addr) = crate::record::raw_addr("198.18.0.2".parse().unwrap());
        crate::record::Record {
            kind: nprot_common::RecordKind::Payload,
            tuple: nprot_common::FlowTuple {
                client_addr,
                server_addr,
                client_port: 40000,
                server_port: 53,
                family,
                proto: nprot_common::PROTO_UDP,
                _pad: [0; 2],
            },
            ts_ns: 1_000,
            outbound: true,
            seq: 0,
            client_data_seq: 0,
            stream_seq: 0,
            payload,
            truncated: false,
            budget_spent: false,
            from_server: false,
            dns_forged: forged,
            socket_cookie: 0,
            ifindex: 1,
            prefilter: crate::record::Prefiltered::No,
        }
    }

    fn events(p: &crate::datapath::pipeline::Pipeline) -> Vec<serde_json::Value> {
        p.events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    }

    #[test]
    fn a_forged_query_is_reported_blocked_with_its_indicator_and_its_nxdomain() {
        let mut p = pipeline(Mode::Block);
        // The kernel sends its answer: the query with QR, RA and NXDOMAIN set.
        let mut answer = query("www.blocked.test");
        answer[2..4].copy_from_slice(&0x8183u16.to_be_bytes());
        p.on_record(&record(&answer, true), &mut NoVerdicts);
        // The answer comes back through a hook: not reported again.
        let mut back = record(&answer, false);
        back.from_server = true;
        p.on_record(&back, &mut NoVerdicts);
        // Replay sends the query itself.
        p.on_record(&record(&query("x.blocked.test"), true), &mut NoVerdicts);
        let ev = events(&p);
        assert_eq!(ev.len(), 4, "{ev:?}");
        assert_eq!(ev[0]["ActionType"], "DnsConnectionInspected");
        assert_eq!(ev[0]["AdditionalFields"]["rcode"], "NXDOMAIN");
        assert_eq!(ev[0]["AdditionalFields"]["forged"], true);
        assert_eq!(ev[0]["Protocol"], "Udp");
        assert_eq!(ev[1]["ActionType"], "ExploitGuardNetworkProtectionBlocked");
        assert_eq!(ev[1]["AdditionalFields"]["IndicatorId"], "blk");
        assert_eq!(ev[1]["RemoteUrl"], "www.blocked.test");
        assert_eq!(ev[1]["Protocol"], "Udp");
        assert_eq!(ev[3]["RemoteUrl"], "x.blocked.test");
        let s = p.stats();
        assert_eq!(
            (s.dns_blocked, s.dns_block_missed, s.dns_malformed),
            (2, 0, 0)
        );
    }

    #[test]
    fn a_blocked_name_the_kernel_let_through_is_audited_or_missed() {
        let mut p = pipeline(Mode::Audit);
        p.on_record(&record(&query("www.blocked.test"), false), &mut NoVerdicts);
        p.on_record(&record(&query("ok.blocked.test"), false), &mut NoVerdicts);
        let ev = events(&p);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0]["ActionType"], "ExploitGuardNetworkProtectionAudited");
        assert_eq!(ev[0]["AdditionalFields"]["IndicatorId"], "blk");
        assert_eq!(p.stats().audited, 1);

        let mut p = pipeline(Mode::Block);
        p.on_record(&record(&query("www.blocked.test"), false), &mut NoVerdicts);
        assert!(p.events.is_empty());
        assert_eq!(p.stats().dns_block_missed, 1);
    }
}
