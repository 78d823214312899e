//! The names this network's clients looked up: from DNS answers, per client, the name each
//! server address was the answer for, kept for the answer's TTL. A client is an address,
//! or this host ([`Client::Local`]) whatever address it used: it may well ask over IPv4
//! and connect over IPv6. A flow that
//! carries no name on the wire (no SNI, no Host: SSH, a raw TCP protocol, ECH with a
//! shared outer name) is reported with the name its client resolved (`dns_name`), marked
//! as derived from DNS; a name seen on the wire always wins over it.

use std::{collections::HashMap, net::IpAddr};

/// Entries kept at most; when full, expired ones go first, then the oldest.
pub const MAX_NAMES: usize = 65_536;

/// Longest time an entry is kept, whatever its TTL says (a day).
pub const MAX_TTL_S: u32 = 86_400;

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

/// (client, server address) → the name the client resolved to that address.
#[derive(Debug, Default)]
pub struct NameCache {
    entries: HashMap<(Client, IpAddr), Entry>,
    /// Entries dropped to make room before they expired.
    pub evicted: u64,
}

impl NameCache {
    /// Notes that `client` was told at `now_ns` that `name` is at `addr` for `ttl_s`
    /// seconds (bounded by [`MAX_TTL_S`]).
    pub fn insert(&mut self, client: Client, addr: IpAddr, name: &str, ttl_s: u32, now_ns: u64) {
        let ttl_ns = u64::from(ttl_s.min(MAX_TTL_S)) * 1_000_000_000;
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

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops expired entries, and if that freed nothing, the oldest eighth.
    fn make_room(&mut self, now_ns: u64) {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.expires_ns > now_ns);
        if self.entries.len() < before {
            return;
        }
        let mut ages: Vec<(u64, (Client, IpAddr))> =
            self.entries.iter().map(|(k, e)| (e.added_ns, *k)).collect();
        let n = (ages.len() / 8).max(1);
        ages.select_nth_unstable_by_key(n - 1, |(at, _)| *at);
        for (_, key) in &ages[..n] {
            self.entries.remove(key);
        }
        self.evicted += n as u64;
    }
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
