//! Frames of a decrypted Initial packet (RFC 9000 §12.4, §19): only those allowed in
//! Initial packets, and of those only CRYPTO carries data we keep.

use super::{
    QuicError,
    initial::{read_bytes, read_varint},
};

const PADDING: u64 = 0x00;
const PING: u64 = 0x01;
const ACK: u64 = 0x02;
const ACK_ECN: u64 = 0x03;
const CRYPTO: u64 = 0x06;
const CONNECTION_CLOSE: u64 = 0x1c;

/// Walk the frames of a decrypted Initial payload, handing every CRYPTO frame's offset
/// and data to `on_crypto`. Any frame not allowed in an Initial packet is an error.
pub(super) fn for_each_crypto_frame(
    payload: &[u8],
    mut on_crypto: impl FnMut(u64, &[u8]) -> Result<(), QuicError>,
) -> Result<(), QuicError> {
    let mut pos = 0;
    while pos < payload.len() {
        let start = pos;
        let frame_type = read_varint(payload, &mut pos)?;
        // Frame types use their shortest encoding (RFC 9000 §12.4): every allowed type
        // fits one byte, so a longer one is a violation whatever its value.
        if pos - start != 1 {
            return Err(QuicError::FrameNotAllowed(frame_type));
        }
        match frame_type {
            PADDING => {
                // Skip the whole run of padding at once.
                let run = payload
                    .get(pos..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|&&b| b == 0)
                    .count();
                pos += run;
            }
            PING => {}
            ACK | ACK_ECN => {
                let _largest = read_varint(payload, &mut pos)?;
                let _delay = read_varint(payload, &mut pos)?;
                let ranges = read_varint(payload, &mut pos)?;
                let _first_range = read_varint(payload, &mut pos)?;
                // Each range takes at least 2 bytes: a count beyond the payload fails on
                // truncation within a few iterations.
                for _ in 0..ranges {
                    let _gap = read_varint(payload, &mut pos)?;
                    let _len = read_varint(payload, &mut pos)?;
                }
                if frame_type == ACK_ECN {
                    for _ in 0..3 {
                        read_varint(payload, &mut pos)?;
                    }
                }
            }
            CRYPTO => {
                let offset = read_varint(payload, &mut pos)?;
                let len = read_varint(payload, &mut pos)?;
                let data = read_bytes(payload, &mut pos, len)?;
                on_crypto(offset, data)?;
            }
            CONNECTION_CLOSE => {
                let _code = read_varint(payload, &mut pos)?;
                let _frame = read_varint(payload, &mut pos)?;
                let reason_len = read_varint(payload, &mut pos)?;
                read_bytes(payload, &mut pos, reason_len)?;
            }
            other => return Err(QuicError::FrameNotAllowed(other)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crypto_frames(payload: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, QuicError> {
        let mut out = Vec::new();
        for_each_crypto_frame(payload, |off, data| {
            out.push((off, data.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn allowed_frames_are_walked() {
        let payload = [
            0x00, 0x00, 0x01, // padding, ping
            0x02, 0x05, 0x00, 0x01, 0x00, 0x01, 0x01, // ACK with 1 extra range
            0x03, 0x05, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, // ACK_ECN
            0x06, 0x40, 0x10, 0x02, 0xaa, 0xbb, // CRYPTO offset 16, 2 bytes
            0x1c, 0x00, 0x00, 0x01, b'x', // CONNECTION_CLOSE
            0x00, 0x00,
        ];
        assert_eq!(crypto_frames(&payload), Ok(vec![(16, vec![0xaa, 0xbb])]));
    }

    #[test]
    fn other_frames_are_violations() {
        for (payload, kind) in [
            (&[0x08][..], 0x08),         // STREAM
            (&[0x1d, 0, 0, 0], 0x1d),    // application CONNECTION_CLOSE
            (&[0x40, 0x06, 0, 0], 0x06), // CRYPTO type in two bytes
            (&[0x1e], 0x1e),             // HANDSHAKE_DONE
        ] {
            assert_eq!(
                crypto_frames(payload),
                Err(QuicError::FrameNotAllowed(kind))
            );
        }
    }

    #[test]
    fn truncated_frames_are_errors() {
        for payload in [
            &[0x06, 0x00][..],
            &[0x06, 0x00, 0x05, 1, 2],
            &[0x02, 0x00, 0x00, 0xff],
            &[0x02, 0x00, 0x00, 0x3f, 0x00],
            &[0x1c, 0x00, 0x00, 0x09, b'x'],
        ] {
            assert_eq!(crypto_frames(payload), Err(QuicError::Truncated));
        }
    }
}
