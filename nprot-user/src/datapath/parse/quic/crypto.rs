//! Reassembly of the client's Initial CRYPTO stream: data in any order, duplicated or
//! overlapping (first-seen bytes win), bounded to one ClientHello of at most
//! [`tls::MAX_HANDSHAKE_LEN`] bytes.

use super::{super::tls, QuicError};

/// The CRYPTO stream bytes kept: a handshake header plus the largest ClientHello body.
pub(super) const CRYPTO_LIMIT: usize = tls::MAX_HANDSHAKE_LEN + HEADER_LEN;
const HEADER_LEN: usize = 4;
const CLIENT_HELLO: u8 = 0x01;

/// The Initial CRYPTO stream seen so far.
#[derive(Debug, Default, Clone)]
pub(super) struct CryptoStream {
    data: Vec<u8>,
    /// `filled[i]`: byte `i` of `data` was received.
    filled: Vec<bool>,
    /// Length of the received prefix from offset 0.
    contiguous: usize,
}

impl CryptoStream {
    /// Forget everything (a new connection).
    pub fn clear(&mut self) {
        self.data.clear();
        self.filled.clear();
        self.contiguous = 0;
    }

    /// Add a CRYPTO frame's data at `offset`. Bytes already received are kept as they
    /// were (a conflicting retransmission does not change them).
    pub fn insert(&mut self, offset: u64, bytes: &[u8]) -> Result<(), QuicError> {
        let start = usize::try_from(offset).map_err(|_| QuicError::CryptoTooFar)?;
        let end = start
            .checked_add(bytes.len())
            .ok_or(QuicError::CryptoTooFar)?;
        if end > CRYPTO_LIMIT {
            return Err(QuicError::CryptoTooFar);
        }
        if end > self.data.len() {
            self.data.resize(end, 0);
            self.filled.resize(end, false);
        }
        // Copy each run of bytes not yet received at once.
        let mut at = start;
        while at < end {
            let seen = self.filled.get(at..end).unwrap_or_default();
            at += seen.iter().take_while(|&&f| f).count();
            let gap = self
                .filled
                .get(at..end)
                .unwrap_or_default()
                .iter()
                .take_while(|&&f| !f)
                .count();
            if gap == 0 {
                break;
            }
            let from = bytes.get(at - start..at - start + gap);
            let to = self.data.get_mut(at..at + gap);
            if let (Some(from), Some(to)) = (from, to) {
                to.copy_from_slice(from);
            }
            if let Some(flags) = self.filled.get_mut(at..at + gap) {
                flags.fill(true);
            }
            at += gap;
        }
        self.contiguous += self
            .filled
            .get(self.contiguous..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&f| f)
            .count();
        Ok(())
    }

    /// The whole first handshake message once it is received, after checking that it is
    /// a ClientHello of acceptable length.
    pub fn client_hello(&self) -> Result<Option<&[u8]>, QuicError> {
        let prefix = self.data.get(..self.contiguous).unwrap_or_default();
        if let Some(&kind) = prefix.first()
            && kind != CLIENT_HELLO
        {
            return Err(QuicError::NotClientHello);
        }
        let Some(&[_, a, b, c]) = prefix.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
        if len > tls::MAX_HANDSHAKE_LEN {
            return Err(QuicError::Tls("ClientHello declared longer than 64 KiB"));
        }
        Ok(prefix.get(..HEADER_LEN + len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_out_of_order_with_overlaps() {
        let msg = [0x01, 0, 0, 4, 0xa, 0xb, 0xc, 0xd, 0xee];
        let mut s = CryptoStream::default();
        s.insert(6, &msg[6..]).unwrap();
        assert_eq!(s.client_hello(), Ok(None));
        s.insert(2, &msg[2..7]).unwrap();
        assert_eq!(s.client_hello(), Ok(None));
        // A conflicting overlap keeps the first-seen bytes.
        s.insert(3, &[0xff, 0xff]).unwrap();
        s.insert(0, &msg[..3]).unwrap();
        assert_eq!(s.client_hello(), Ok(Some(&msg[..8])));
    }

    #[test]
    fn bounds_and_type_are_checked() {
        let mut s = CryptoStream::default();
        assert_eq!(
            s.insert(CRYPTO_LIMIT as u64, &[1]),
            Err(QuicError::CryptoTooFar)
        );
        assert_eq!(s.insert(u64::MAX, &[1]), Err(QuicError::CryptoTooFar));
        s.insert(CRYPTO_LIMIT as u64 - 1, &[1]).unwrap();
        s.insert(0, &[0x02]).unwrap();
        assert_eq!(s.client_hello(), Err(QuicError::NotClientHello));
        s.clear();
        s.insert(0, &[0x01, 0x01, 0, 1]).unwrap();
        assert!(matches!(s.client_hello(), Err(QuicError::Tls(_))));
    }
}
