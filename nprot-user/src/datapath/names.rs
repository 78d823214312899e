//! The names this network's clients looked up: from DNS answers, per client, the name each
//! server address was the answer for, kept for the answer's TTL. A client is an address,
//! or this host ([`Client::Local`]) whatever address it used: it may well ask over IPv4
//! and connect over IPv6. A flow that
//! carries no name on the wire (no SNI, no Host: SSH, a raw TCP protocol, ECH with a
//! shared outer name) is reported with the name its client resolved (`dns_name`), marked
//! as derived from DNS; a name seen on the wire always wins over it.
//!
//! The same answers are the sensor's evidence about Encrypted ClientHello: an HTTPS
//! record with an `ech` parameter tells that its name's clients will encrypt their real
//! ClientHello, and which outer (public) name they will show ([`NameCache::ech_evidence`]).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    str::FromStr,
};

pub use crate::events::{Ech, EchEvidence};

/// Entries kept at most; when full, expired ones go first, then the oldest.
pub const MAX_NAMES: usize = 65_536;

/// Longest time an entry is kept, whatever its TTL says (a day).
pub const MAX_TTL_S: u32 = 86_400;

/// Shortest time an entry is kept, whatever its TTL says: a client connects right after
/// its answer, and an answer with TTL 0 (not to be cached, as many local zones and load
/// balancers give) names the flow that follows it as well as any.
pub const MIN_TTL_S: u32 = 10;

/// Who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// This host (an outbound lookup or flow), from any of its addresses.
    Local,
    /// Another host behind the guarded interface (a forwarded or inbound one).
    Addr(IpAddr),
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    expires_ns: u64,
    added_ns: u64,
}

/// Whether Domain indicators apply to a flow through the name its client resolved
/// (`dns_names` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsNames {
    /// The name is reported only (`dns_name`); only names on the wire are judged.
    #[default]
    Log,
    /// A flow that names nothing on the wire is judged by the name too.
    Enforce,
}

impl FromStr for DnsNames {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "log" => Ok(DnsNames::Log),
            "enforce" => Ok(DnsNames::Enforce),
            other => Err(format!("{other:?} is neither \"log\" nor \"enforce\"")),
        }
    }
}

/// What block mode does with a flow known to use real ECH (`ech` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EchAction {
    /// Reported only.
    #[default]
    Allow,
    /// Reset (audited in audit mode): the name it goes to is hidden from the sensor.
    Block,
}

impl FromStr for EchAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(EchAction::Allow),
            "block" => Ok(EchAction::Block),
            other => Err(format!("{other:?} is neither \"allow\" nor \"block\"")),
        }
    }
}

/// The name settings of the config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameSettings {
    /// `dns_names`.
    pub dns_names: DnsNames,
    /// `ech`.
    pub ech: EchAction,
    /// `ech_public_names`: outer names known to front ECH (lowercase, no trailing dot).
    pub ech_public_names: HashSet<String>,
}

/// (client, server address) → the name the client resolved to that address; and
/// (client, name) → the ECH configuration's public names its HTTPS record gave.
#[derive(Debug, Default)]
pub struct NameCache {
    entries: HashMap<(Client, IpAddr), Entry>,
    /// Names with an ECH configuration in DNS, and the public names of those
    /// configurations, per client (entry names: the public names, space-separated).
    ech: HashMap<(Client, String), Entry>,
    /// Entries dropped to make room before they expired.
    pub evicted: u64,
}

impl NameCache {
    /// Notes that `client` was told at `now_ns` that `name` is at `addr` for `ttl_s`
    /// seconds (within [`MIN_TTL_S`] and [`MAX_TTL_S`]).
    pub fn insert(&mut self, client: Client, addr: IpAddr, name: &str, ttl_s: u32, now_ns: u64) {
        let ttl_ns = u64::from(ttl_s.clamp(MIN_TTL_S, MAX_TTL_S)) * 1_000_000_000;
        let key = (client, addr);
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_NAMES {
            self.make_room(now_ns);
        }
        self.entries.insert(
            key,
            Entry {
                name: name.to_owned(),
                expires_ns: now_ns.saturating_add(ttl_ns),
                added_ns: now_ns,
            },
        );
    }

    /// The name `client` resolved to `addr`, if its answer has not expired at `now_ns`.
    pub fn name(&self, client: Client, addr: IpAddr, now_ns: u64) -> Option<&str> {
        self.entries
            .get(&(client, addr))
            .filter(|e| e.expires_ns > now_ns)
            .map(|e| e.name.as_str())
    }

    /// Notes that `client` learnt at `now_ns` from an HTTPS/SVCB answer that `name` uses
    /// ECH with these `public_names` (outer SNIs), for `ttl_s` seconds. Each public name
    /// is noted too, so that a ClientHello showing it is known to be an outer one.
    pub fn insert_ech(
        &mut self,
        client: Client,
        name: &str,
        public_names: &[String],
        ttl_s: u32,
        now_ns: u64,
    ) {
        let ttl_ns = u64::from(ttl_s.clamp(MIN_TTL_S, MAX_TTL_S)) * 1_000_000_000;
        let expires_ns = now_ns.saturating_add(ttl_ns);
        for key in std::iter::once(name).chain(public_names.iter().map(String::as_str)) {
            let key = (client, key.to_ascii_lowercase());
            if !self.ech.contains_key(&key) && self.ech.len() >= MAX_NAMES {
                self.evicted += make_room(&mut self.ech, now_ns);
            }
            self.ech.insert(
                key,
                Entry {
                    name: String::new(),
                    expires_ns,
                    added_ns: now_ns,
                },
            );
        }
    }

    /// What says that a ClientHello with an encrypted_client_hello extension, showing
    /// `sni`, from `client` to `addr` uses real ECH: the name `client` resolved `addr`
    /// from, or the SNI, has an ECH configuration in DNS, or the SNI is a configured
    /// public name. `None`: nothing does (it may be GREASE).
    pub fn ech_evidence(
        &self,
        client: Client,
        addr: IpAddr,
        sni: Option<&str>,
        settings: &NameSettings,
        now_ns: u64,
    ) -> Option<EchEvidence> {
        // The common case, on every ClientHello with a (GREASE) extension before its
        // verdict: no evidence of any kind is known, so nothing to allocate or look up.
        if self.ech.is_empty() && settings.ech_public_names.is_empty() {
            return None;
        }
        let sni = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        if let Some(sni) = &sni
            && settings.ech_public_names.contains(sni)
        {
            return Some(EchEvidence::Config);
        }
        let known = |name: &str| {
            self.ech
                .get(&(client, name.to_owned()))
                .is_some_and(|e| e.expires_ns > now_ns)
        };
        let resolved = self.name(client, addr, now_ns);
        (resolved.is_some_and(known) || sni.as_deref().is_some_and(known))
            .then_some(EchEvidence::Dns)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn make_room(&mut self, now_ns: u64) {
        self.evicted += make_room(&mut self.entries, now_ns);
    }
}

/// Drops expired entries, and if that freed nothing, the oldest eighth; returns how many
/// were dropped before they expired.
fn make_room<K: Clone + Eq + std::hash::Hash>(entries: &mut HashMap<K, Entry>, now_ns: u64) -> u64 {
    let before = entries.len();
    entries.retain(|_, e| e.expires_ns > now_ns);
    if entries.len() < before {
        return 0;
    }
    let mut ages: Vec<(u64, K)> = entries
        .iter()
        .map(|(k, e)| (e.added_ns, k.clone()))
        .collect();
    let n = (ages.len() / 8).max(1);
    ages.select_nth_unstable_by_key(n - 1, |(at, _)| *at);
    for (_, key) in &ages[..n] {
        entries.remove(key);
    }
    n as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_name_is_known_to_its_client_for_its_ttl() {
        let mut cache = NameCache::default();
        let (c, other, a) = (
            Client::Addr(ip("198.18.0.1")),
            Client::Addr(ip("198.18.0.9")),
            ip("198.18.5.5"),
        );
        cache.insert(c, a, "zero.example", 0, 1_000);
        assert_eq!(
            cache.name(c, a, 1_000 + 9_000_000_000),
            Some("zero.example"),
            "a TTL of 0 still names the flow that follows"
        );
        cache.insert(c, a, "ssh.example", 30, 1_000);
        assert_eq!(
            cache.name(c, a, 1_000 + 29_000_000_000),
            Some("ssh.example")
        );
        assert_eq!(cache.name(c, a, 1_000 + 30_000_000_000), None, "expired");
        assert_eq!(cache.name(other, a, 2_000), None, "another client's lookup");
        // A later answer for the same address replaces the name.
        cache.insert(c, a, "other.example", 30, 5_000);
        assert_eq!(cache.name(c, a, 6_000), Some("other.example"));
    }

    #[test]
    fn ech_is_real_only_with_evidence() {
        let mut cache = NameCache::default();
        let (c, a) = (Client::Local, ip("198.18.5.5"));
        let settings = NameSettings {
            ech_public_names: ["cover.example".to_owned()].into(),
            ..NameSettings::default()
        };
        // GREASE-looking extension to a plain site: no evidence.
        cache.insert(c, a, "plain.example", 60, 0);
        assert_eq!(
            cache.ech_evidence(c, a, Some("plain.example"), &settings, 1),
            None
        );
        // A configured public name.
        assert_eq!(
            cache.ech_evidence(c, a, Some("Cover.Example."), &settings, 1),
            Some(EchEvidence::Config)
        );
        // The resolved name had an ECH config in DNS, with public name outer.example.
        cache.insert(c, a, "secret.example", 60, 0);
        cache.insert_ech(c, "secret.example", &["outer.example".to_owned()], 60, 0);
        assert_eq!(
            cache.ech_evidence(c, a, Some("outer.example"), &settings, 1),
            Some(EchEvidence::Dns)
        );
        // The public name alone (another address) is evidence too, for this client only.
        let b = ip("198.18.5.6");
        assert_eq!(
            cache.ech_evidence(c, b, Some("outer.example"), &settings, 1),
            Some(EchEvidence::Dns)
        );
        let other = Client::Addr(ip("198.18.0.9"));
        assert_eq!(
            cache.ech_evidence(other, b, Some("outer.example"), &settings, 1),
            None
        );
        // Expired.
        assert_eq!(
            cache.ech_evidence(c, b, Some("outer.example"), &settings, 61_000_000_000),
            None
        );
    }

    #[test]
    fn settings_parse_and_refuse_other_words() {
        assert_eq!("enforce".parse::<DnsNames>(), Ok(DnsNames::Enforce));
        assert_eq!("block".parse::<EchAction>(), Ok(EchAction::Block));
        assert!("Enforce".parse::<DnsNames>().is_err());
        assert!("deny".parse::<EchAction>().unwrap_err().contains("deny"));
    }

    #[test]
    fn a_full_cache_drops_expired_then_oldest_entries() {
        let mut cache = NameCache::default();
        let c = Client::Local;
        for i in 0..MAX_NAMES {
            let a = IpAddr::from([0x2001, 0xdb8, 1, 0, 0, 0, (i >> 16) as u16, i as u16]);
            cache.insert(c, a, "n.example", 10, i as u64);
        }
        assert_eq!(cache.len(), MAX_NAMES);
        cache.insert(c, ip("2001:db8:2::1"), "new.example", 10, MAX_NAMES as u64);
        assert!(cache.len() <= MAX_NAMES);
        assert_eq!(cache.evicted, (MAX_NAMES / 8) as u64);
        assert_eq!(
            cache.name(c, ip("2001:db8:2::1"), MAX_NAMES as u64 + 1),
            Some("new.example")
        );
    }
}
