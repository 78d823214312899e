//! A 64-bit hash of a DNS name (ASCII case folded, no trailing dot) that the kernel can
//! take of every label suffix of a name in one backward pass.
//!
//! The hash is FNV-1a 64 over the bytes of the name read right to left: the hash of
//! `www.example.com` is the state after feeding `moc.elpmaxe.www`. Walking a dotted name
//! backwards from its last byte, the state just before a `.` is the hash of the suffix
//! after it (`com`, then `example.com`), and the state at the end is the whole name's.
//! The daemon hashes indicator values with [`hash_name`]; the kernel (DNS queries, and
//! later TLS SNI) walks with [`SEED`] and [`step`]. Written once for both.

/// The state before any byte: FNV-1a 64's offset basis.
pub const SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64's prime.
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// ASCII upper case to lower case; every other byte as it is.
#[inline(always)]
pub const fn fold(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b | 0x20 } else { b }
}

/// Feeds one byte (case folded) into the state `h`. Bytes go in from the name's end.
#[inline(always)]
pub const fn step(h: u64, b: u8) -> u64 {
    (h ^ fold(b) as u64).wrapping_mul(PRIME)
}

/// The hash of a dotted name: case folded, one trailing dot ignored.
pub fn hash_name(name: impl AsRef<[u8]>) -> u64 {
    let name = trim_dot(name.as_ref());
    let mut h = SEED;
    for &b in name.iter().rev() {
        h = step(h, b);
    }
    h
}

/// Calls `f(hash, suffix_start)` for every label suffix of `name`, shortest first, in one
/// backward pass: the kernel's walk, for the daemon and tests.
pub fn for_each_suffix(name: impl AsRef<[u8]>, mut f: impl FnMut(u64, usize)) {
    let name = trim_dot(name.as_ref());
    let mut h = SEED;
    for (at, &b) in name.iter().enumerate().rev() {
        if b == b'.' {
            f(h, at + 1);
        }
        h = step(h, b);
    }
    if !name.is_empty() {
        f(h, 0);
    }
}

fn trim_dot(name: &[u8]) -> &[u8] {
    match name {
        [rest @ .., b'.'] => rest,
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_suffix_hashes_are_the_hashes_of_the_suffixes() {
        let name = "www.example.com";
        let mut seen = [(0u64, 0usize); 3];
        let mut n = 0;
        for_each_suffix(name, |h, at| {
            seen[n] = (h, at);
            n += 1;
        });
        assert_eq!(n, 3);
        assert_eq!(seen[0], (hash_name("com"), 12));
        assert_eq!(seen[1], (hash_name("example.com"), 4));
        assert_eq!(seen[2], (hash_name("www.example.com"), 0));
        assert_ne!(hash_name("com"), hash_name("example.com"));
        assert_ne!(hash_name("ab.c"), hash_name("a.bc"));
    }

    #[test]
    fn case_and_a_trailing_dot_do_not_matter() {
        assert_eq!(hash_name("Blocked.TEST"), hash_name("blocked.test"));
        assert_eq!(hash_name("blocked.test."), hash_name("blocked.test"));
        assert_eq!(step(SEED, b'A'), step(SEED, b'a'));
        // Only ASCII letters fold.
        assert_ne!(step(SEED, b'@'), step(SEED, b'`'));
    }

    #[test]
    fn it_is_fnv1a_over_the_reversed_name() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(hash_name("a"), 0xaf63_dc4c_8601_ec8c);
        // "ba" reversed is "ab": FNV-1a 64 of "ab" is 0x089c4407b545986a.
        assert_eq!(hash_name("ba"), 0x089c_4407_b545_986a);
        assert_eq!(hash_name(""), SEED);
    }
}
