//! Capture-file readers: classic pcap and pcapng, streamed frame by frame.
//!
//! - **pcap**: both byte orders, microsecond (`a1b2c3d4`) and nanosecond (`a1b23c4d`)
//!   magic; one link type for the whole file.
//! - **pcapng**: any number of sections, each with its own byte order; Interface
//!   Description Blocks (link type, `if_tsresol`, `if_tsoffset`), Enhanced, Simple and
//!   (obsolete) Packet Blocks; every other block type is skipped.
//!
//! Every length read from the file is checked before it is used, and every error names
//! the byte offset where the problem is. A file that ends inside a header or a packet is
//! an error, never a silent end (a capture that stops early should not look complete).

use std::io::{self, Read};

use thiserror::Error;

use super::link::{self, LinkType};

/// Largest packet or block the readers accept: far above any real snapshot length, low
/// enough that a corrupt length cannot make us allocate gigabytes.
pub const MAX_RECORD_LEN: u32 = 64 * 1024 * 1024;

/// Why a capture file cannot be read (further).
#[derive(Debug, Error)]
pub enum CaptureFileError {
    /// The underlying reader failed.
    #[error("reading the capture file at offset {offset}: {source}")]
    Io {
        /// Where the read started.
        offset: u64,
        /// What the reader said.
        #[source]
        source: io::Error,
    },
    /// The file is empty.
    #[error("the capture file is empty")]
    Empty,
    /// Neither pcap nor pcapng.
    #[error(
        "not a pcap or pcapng file: magic number {magic:#010x} at offset 0 (expected \
         a1b2c3d4 or a1b23c4d for pcap, 0a0d0d0a for pcapng)"
    )]
    BadMagic {
        /// The first four bytes, big-endian.
        magic: u32,
    },
    /// The file ends inside a header, block or packet.
    #[error("truncated {what} at offset {offset}: {needed} bytes needed, only {available} left")]
    Truncated {
        /// What was being read ("pcap file header", "packet record", …).
        what: &'static str,
        /// Where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes the file still had.
        available: u64,
    },
    /// A classic pcap header or record that cannot be right.
    #[error("corrupt pcap {what} at offset {offset}: {reason}")]
    CorruptPcap {
        /// "file header" or "packet record".
        what: &'static str,
        /// Where it starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A pcapng block that cannot be right.
    #[error("corrupt pcapng block at offset {offset}: {reason}")]
    CorruptBlock {
        /// Where the block starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A link type replay cannot decode.
    #[error(
        "unsupported link type {link_type} ({origin}) for the packet at offset {offset}: \
         nprot replay reads {supported}",
        supported = link::SUPPORTED
    )]
    UnsupportedLinkType {
        /// The link-type number from the file.
        link_type: u32,
        /// Where it was declared (the pcap header, or a pcapng interface).
        origin: String,
        /// The packet that needed it.
        offset: u64,
    },
}

/// One captured packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// How the bytes begin.
    pub link: LinkType,
    /// Capture time, nanoseconds since the Unix epoch (0 for times before it).
    pub ts_ns: u64,
    /// The captured bytes (possibly fewer than were on the wire).
    pub data: &'a [u8],
    /// Length of the packet on the wire.
    pub orig_len: u32,
    /// Offset of the packet's record (pcap) or block (pcapng) in the file.
    pub offset: u64,
}

/// Byte order of a pcap file or pcapng section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        match self {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        }
    }

    fn u32(self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        }
    }

    fn i64(self, b: &[u8]) -> i64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        match self {
            Endian::Little => i64::from_le_bytes(a),
            Endian::Big => i64::from_be_bytes(a),
        }
    }
}

/// How many timestamp units make a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    /// 10^-n seconds.
    Decimal(u8),
    /// 2^-n seconds.
    Binary(u8),
}

impl Resolution {
    /// Nanoseconds of `units` of this resolution, exactly (rounded down): u128 holds
    /// u64::MAX × 10^9 (n ≤ 19 and ≤ 63 are checked when the interface is read).
    fn to_ns(self, units: u64) -> u128 {
        match self {
            Resolution::Decimal(n) if n <= 9 => u128::from(units) * 10u128.pow(u32::from(9 - n)),
            Resolution::Decimal(n) => u128::from(units) / 10u128.pow(u32::from(n - 9)),
            Resolution::Binary(n) => (u128::from(units) * 1_000_000_000) >> n,
        }
    }
}

impl std::fmt::Display for Resolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resolution::Decimal(n) => write!(f, "10^-{n} s"),
            Resolution::Binary(n) => write!(f, "2^-{n} s"),
        }
    }
}

/// The time of a packet block: `units` of `resolution` plus `offset_s` seconds, in
/// nanoseconds since the Unix epoch; 0 for a time before it (as [`Frame::ts_ns`] says),
/// `None` past u64::MAX ns (2554-07-21), which no real capture reaches.
fn block_time_ns(resolution: Resolution, offset_s: i64, units: u64) -> Option<u64> {
    let ns = i128::try_from(resolution.to_ns(units)).ok()?;
    let ns = ns.checked_add(i128::from(offset_s).checked_mul(1_000_000_000)?)?;
    if ns < 0 {
        return Some(0);
    }
    u64::try_from(ns).ok()
}

/// An interface of a pcapng section.
#[derive(Debug, Clone)]
struct Interface {
    link: Result<LinkType, u32>,
    snaplen: u32,
    resolution: Resolution,
    /// `if_tsoffset`: seconds to add to every timestamp.
    offset_s: i64,
    /// Offset of the describing block, for error messages.
    block: u64,
}

/// A decoded packet block, its data still in the reader's buffer.
#[derive(Debug)]
struct PacketBlock {
    link: LinkType,
    ts_ns: u64,
    data: std::ops::Range<usize>,
    orig_len: u32,
}

#[derive(Debug)]
enum Format {
    Pcap {
        endian: Endian,
        nanos: bool,
        link: Result<LinkType, u32>,
    },
    PcapNg {
        endian: Endian,
        interfaces: Vec<Interface>,
    },
}

/// Reads frames from a pcap or pcapng stream; the format is told by the magic number.
pub struct CaptureReader<R> {
    inner: R,
    format: Format,
    /// Offset of the next unread byte.
    offset: u64,
    buf: Vec<u8>,
}

/// pcapng Section Header Block type (a palindrome: the same in both byte orders).
const SHB: u32 = 0x0A0D_0D0A;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const IDB: u32 = 1;
const OPB: u32 = 2;
const SPB: u32 = 3;
const EPB: u32 = 6;
/// IDB options.
const OPT_ENDOFOPT: u16 = 0;
const IF_TSRESOL: u16 = 9;
const IF_TSOFFSET: u16 = 14;

/// `what`, which starts at `offset` and takes `needed` bytes, ends after `got`.
fn truncated(what: &'static str, offset: u64, needed: usize, got: usize) -> CaptureFileError {
    CaptureFileError::Truncated {
        what,
        offset,
        needed: needed as u64,
        available: got as u64,
    }
}

impl<R: Read> CaptureReader<R> {
    /// Reads the file header (pcap) or first section header (pcapng).
    pub fn new(inner: R) -> Result<CaptureReader<R>, CaptureFileError> {
        let mut reader = CaptureReader {
            inner,
            format: Format::Pcap {
                endian: Endian::Little,
                nanos: false,
                link: Err(0),
            },
            offset: 0,
            buf: Vec::with_capacity(64 * 1024),
        };
        let got = reader.fill(4)?;
        if got == 0 {
            return Err(CaptureFileError::Empty);
        }
        if got < 4 {
            return Err(truncated("file header", 0, 4, got));
        }
        let magic =
            u32::from_be_bytes([reader.buf[0], reader.buf[1], reader.buf[2], reader.buf[3]]);
        match magic {
            SHB => {
                reader.read_section_header(0)?;
            }
            0xa1b2_c3d4 | 0xa1b2_3c4d | 0xd4c3_b2a1 | 0x4d3c_b2a1 => {
                reader.read_pcap_header(magic)?;
            }
            _ => return Err(CaptureFileError::BadMagic { magic }),
        }
        Ok(reader)
    }

    /// The next frame, or `None` at a clean end of file.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, CaptureFileError> {
        if matches!(self.format, Format::Pcap { .. }) {
            return self.next_pcap_record();
        }
        loop {
            let start = self.offset;
            let Some((block_type, body_len)) = self.read_block()? else {
                return Ok(None);
            };
            match block_type {
                EPB | OPB | SPB => {
                    if let Some(p) = self.packet_block(block_type, start, body_len)? {
                        return Ok(Some(Frame {
                            link: p.link,
                            ts_ns: p.ts_ns,
                            data: &self.buf[p.data],
                            orig_len: p.orig_len,
                            offset: start,
                        }));
                    }
                }
                IDB => self.interface_block(start, body_len)?,
                // Name resolution, statistics, custom blocks…: nothing replay needs.
                _ => {}
            }
        }
    }

    /// Reads up to `n` more bytes into `buf` (replacing it); returns how many came.
    fn fill(&mut self, n: usize) -> Result<usize, CaptureFileError> {
        self.buf.clear();
        self.append(n)
    }

    /// Appends up to `n` bytes to `buf`; returns how many came (fewer only at the end).
    fn append(&mut self, n: usize) -> Result<usize, CaptureFileError> {
        let start = self.buf.len();
        // The buffer grows with the bytes that come: a header that claims a huge record
        // costs nothing until its bytes are there.
        let result = (&mut self.inner).take(n as u64).read_to_end(&mut self.buf);
        let got = self.buf.len() - start;
        if let Err(source) = result {
            return Err(CaptureFileError::Io {
                offset: self.offset + got as u64,
                source,
            });
        }
        self.offset += got as u64;
        Ok(got)
    }

    // ---- classic pcap ----

    fn read_pcap_header(&mut self, magic: u32) -> Result<(), CaptureFileError> {
        let got = self.append(20)?;
        if got < 20 {
            return Err(truncated("pcap file header", 0, 24, 4 + got));
        }
        let (endian, nanos) = match magic {
            0xa1b2_c3d4 => (Endian::Big, false),
            0xa1b2_3c4d => (Endian::Big, true),
            0xd4c3_b2a1 => (Endian::Little, false),
            _ => (Endian::Little, true),
        };
        let h = &self.buf;
        let (major, minor) = (endian.u16(&h[4..]), endian.u16(&h[6..]));
        if major != 2 {
            return Err(CaptureFileError::CorruptPcap {
                what: "file header",
                offset: 0,
                reason: format!("version {major}.{minor} is not 2.x"),
            });
        }
        // The low 16 bits are the link type; the upper ones carry FCS information.
        let code = endian.u32(&h[20..]) & 0xffff;
        self.format = Format::Pcap {
            endian,
            nanos,
            link: LinkType::from_code(code).ok_or(code),
        };
        Ok(())
    }

    fn next_pcap_record(&mut self) -> Result<Option<Frame<'_>>, CaptureFileError> {
        let Format::Pcap {
            endian,
            nanos,
            link,
        } = self.format
        else {
            return Ok(None);
        };
        let start = self.offset;
        let got = self.fill(16)?;
        if got == 0 {
            return Ok(None);
        }
        if got < 16 {
            return Err(truncated("packet record header", start, 16, got));
        }
        let h = &self.buf;
        let (secs, frac) = (endian.u32(h), endian.u32(&h[4..]));
        let (caplen, orig_len) = (endian.u32(&h[8..]), endian.u32(&h[12..]));
        if caplen > MAX_RECORD_LEN {
            return Err(CaptureFileError::CorruptPcap {
                what: "packet record",
                offset: start,
                reason: format!("captured length {caplen} exceeds the {MAX_RECORD_LEN}-byte limit"),
            });
        }
        let got = self.fill(caplen as usize)?;
        if got < caplen as usize {
            return Err(truncated(
                "packet record",
                start,
                16 + caplen as usize,
                16 + got,
            ));
        }
        let link = link.map_err(|code| CaptureFileError::UnsupportedLinkType {
            link_type: code,
            origin: "pcap file header".into(),
            offset: start,
        })?;
        let frac_ns = if nanos {
            u64::from(frac)
        } else {
            u64::from(frac) * 1_000
        };
        Ok(Some(Frame {
            link,
            // At most (2^32 - 1) × 10^9 + (2^32 - 1) × 10^3: cannot overflow.
            ts_ns: u64::from(secs) * 1_000_000_000 + frac_ns,
            data: &self.buf,
            orig_len,
            offset: start,
        }))
    }

    // ---- pcapng ----

    fn corrupt(offset: u64, reason: impl Into<String>) -> CaptureFileError {
        CaptureFileError::CorruptBlock {
            offset,
            reason: reason.into(),
        }
    }

    fn endian(&self) -> Endian {
        match self.format {
            Format::PcapNg { endian, .. } | Format::Pcap { endian, .. } => endian,
        }
    }

    /// Checks a block's total length; returns the body length.
    fn body_len(start: u64, total: u32, min: u32) -> Result<usize, CaptureFileError> {
        if !total.is_multiple_of(4) {
            return Err(Self::corrupt(
                start,
                format!("block length {total} is not a multiple of 4"),
            ));
        }
        if total < min {
            return Err(Self::corrupt(
                start,
                format!("block length {total} is shorter than the {min}-byte minimum"),
            ));
        }
        if total > MAX_RECORD_LEN {
            return Err(Self::corrupt(
                start,
                format!("block length {total} exceeds the {MAX_RECORD_LEN}-byte limit"),
            ));
        }
        Ok(total as usize - 12)
    }

    /// Reads the body and trailing length of a block whose 8-byte head is read; leaves
    /// the body in `buf`.
    fn read_body(&mut self, start: u64, body_len: usize) -> Result<(), CaptureFileError> {
        let total = body_len + 12;
        let got = self.fill(body_len + 4)?;
        if got < body_len + 4 {
            return Err(truncated("pcapng block", start, total, 8 + got));
        }
        let trailer = self.endian().u32(&self.buf[body_len..]);
        if trailer as usize != total {
            return Err(Self::corrupt(
                start,
                format!("trailing block length {trailer} does not match the leading {total}"),
            ));
        }
        self.buf.truncate(body_len);
        Ok(())
    }

    /// Reads a Section Header Block whose first 4 bytes (the type) are already read.
    fn read_section_header(&mut self, start: u64) -> Result<(), CaptureFileError> {
        let mut head = [0u8; 8];
        let got = self.fill(8)?;
        if got < 8 {
            return Err(truncated("pcapng section header", start, 28, 4 + got));
        }
        head.copy_from_slice(&self.buf[..8]);
        let endian = match u32::from_le_bytes([head[4], head[5], head[6], head[7]]) {
            BYTE_ORDER_MAGIC => Endian::Little,
            m if m.swap_bytes() == BYTE_ORDER_MAGIC => Endian::Big,
            m => {
                return Err(Self::corrupt(
                    start,
                    format!(
                        "section header byte-order magic {:#010x} is not 1a2b3c4d in either byte order",
                        m.swap_bytes()
                    ),
                ));
            }
        };
        let total = endian.u32(&head);
        let body_len = Self::body_len(start, total, 28)?;
        self.format = Format::PcapNg {
            endian,
            interfaces: Vec::new(),
        };
        // The byte-order magic (4 bytes of the body) is read; the rest of the body and the
        // trailing length (4) follow.
        let got = self.fill(body_len)?;
        if got < body_len {
            return Err(truncated(
                "pcapng section header",
                start,
                total as usize,
                12 + got,
            ));
        }
        let major = endian.u16(&self.buf);
        if major != 1 {
            return Err(Self::corrupt(
                start,
                format!(
                    "section version {major}.{} is not 1.x",
                    endian.u16(&self.buf[2..])
                ),
            ));
        }
        let trailer = endian.u32(&self.buf[body_len - 4..]);
        if trailer != total {
            return Err(Self::corrupt(
                start,
                format!("trailing block length {trailer} does not match the leading {total}"),
            ));
        }
        Ok(())
    }

    /// Reads the next block (a new section header is handled here); returns its type and
    /// body length, the body in `buf`; `None` at a clean end of file.
    fn read_block(&mut self) -> Result<Option<(u32, usize)>, CaptureFileError> {
        loop {
            let start = self.offset;
            let got = self.fill(4)?;
            if got == 0 {
                return Ok(None);
            }
            if got < 4 {
                return Err(truncated("pcapng block header", start, 8, got));
            }
            let endian = self.endian();
            let block_type = endian.u32(&self.buf);
            if block_type == SHB {
                self.read_section_header(start)?;
                continue;
            }
            let got = self.fill(4)?;
            if got < 4 {
                return Err(truncated("pcapng block header", start, 8, 4 + got));
            }
            let total = endian.u32(&self.buf);
            let body_len = Self::body_len(start, total, 12)?;
            self.read_body(start, body_len)?;
            return Ok(Some((block_type, body_len)));
        }
    }

    fn interface_block(&mut self, start: u64, body_len: usize) -> Result<(), CaptureFileError> {
        let endian = self.endian();
        if body_len < 8 {
            return Err(Self::corrupt(
                start,
                format!("interface description body of {body_len} bytes is shorter than 8"),
            ));
        }
        let b = &self.buf;
        let code = u32::from(endian.u16(b));
        let snaplen = endian.u32(&b[4..]);
        let mut iface = Interface {
            link: LinkType::from_code(code).ok_or(code),
            snaplen,
            resolution: Resolution::Decimal(6),
            offset_s: 0,
            block: start,
        };
        for (opt, value) in options(endian, start, &b[8..])? {
            match opt {
                IF_TSRESOL if !value.is_empty() => {
                    let r = value[0];
                    let (binary, exp) = (r & 0x80 != 0, r & 0x7f);
                    iface.resolution = if binary {
                        if exp > 63 {
                            return Err(Self::corrupt(
                                start,
                                format!("if_tsresol 2^-{exp} is out of range"),
                            ));
                        }
                        Resolution::Binary(exp)
                    } else {
                        if exp > 19 {
                            return Err(Self::corrupt(
                                start,
                                format!("if_tsresol 10^-{exp} is out of range"),
                            ));
                        }
                        Resolution::Decimal(exp)
                    };
                }
                IF_TSOFFSET if value.len() >= 8 => iface.offset_s = endian.i64(value),
                _ => {}
            }
        }
        if let Format::PcapNg { interfaces, .. } = &mut self.format {
            interfaces.push(iface);
        }
        Ok(())
    }

    /// Decodes an EPB, OPB or SPB in `buf`: link type, time, data range and wire length.
    fn packet_block(
        &self,
        block_type: u32,
        start: u64,
        body_len: usize,
    ) -> Result<Option<PacketBlock>, CaptureFileError> {
        let Format::PcapNg { endian, interfaces } = &self.format else {
            return Ok(None);
        };
        let endian = *endian;
        let b = &self.buf;
        let (iface_id, ts, data_at, caplen, orig_len) = if block_type == SPB {
            if body_len < 4 {
                return Err(Self::corrupt(start, "simple packet block without a length"));
            }
            let orig_len = endian.u32(b);
            let snaplen = interfaces.first().map_or(0, |i| i.snaplen);
            let mut caplen = (orig_len as usize).min(body_len - 4);
            if snaplen != 0 {
                caplen = caplen.min(snaplen as usize);
            }
            (0, None, 4, caplen, orig_len)
        } else {
            let head = 20;
            if body_len < head {
                return Err(Self::corrupt(
                    start,
                    format!("packet block body of {body_len} bytes is shorter than {head}"),
                ));
            }
            let iface_id = if block_type == EPB {
                endian.u32(b) as usize
            } else {
                endian.u16(b) as usize
            };
            let ts = (u64::from(endian.u32(&b[4..])) << 32) | u64::from(endian.u32(&b[8..]));
            let caplen = endian.u32(&b[12..]) as usize;
            if caplen > body_len - head {
                return Err(Self::corrupt(
                    start,
                    format!(
                        "captured length {caplen} overruns the block ({} bytes of packet data at most)",
                        body_len - head
                    ),
                ));
            }
            (iface_id, Some(ts), head, caplen, endian.u32(&b[16..]))
        };
        let Some(iface) = interfaces.get(iface_id) else {
            return Err(Self::corrupt(
                start,
                format!(
                    "packet refers to interface {iface_id}, but the section describes {}",
                    interfaces.len()
                ),
            ));
        };
        let link = iface
            .link
            .map_err(|code| CaptureFileError::UnsupportedLinkType {
                link_type: code,
                origin: format!(
                    "pcapng interface {iface_id}, block at offset {}",
                    iface.block
                ),
                offset: start,
            })?;
        // Simple packet blocks carry no time: they sort at the epoch.
        let ts_ns = match ts {
            None => 0,
            Some(units) => {
                block_time_ns(iface.resolution, iface.offset_s, units).ok_or_else(|| {
                    Self::corrupt(
                        start,
                        format!(
                            "timestamp out of range: {units} × {} plus if_tsoffset {} s of \
                             interface {iface_id} is later than 2554-07-21",
                            iface.resolution, iface.offset_s
                        ),
                    )
                })?
            }
        };
        Ok(Some(PacketBlock {
            link,
            ts_ns,
            data: data_at..data_at + caplen,
            orig_len,
        }))
    }
}

/// Splits a pcapng options area into `(code, value)` pairs, up to `opt_endofopt`.
fn options(
    endian: Endian,
    start: u64,
    mut area: &[u8],
) -> Result<Vec<(u16, &[u8])>, CaptureFileError> {
    let mut out = Vec::new();
    while area.len() >= 4 {
        let (code, len) = (endian.u16(area), endian.u16(&area[2..]) as usize);
        if code == OPT_ENDOFOPT {
            break;
        }
        let padded = len.div_ceil(4) * 4;
        if 4 + padded > area.len() {
            return Err(CaptureFileError::CorruptBlock {
                offset: start,
                reason: format!("option {code} of {len} bytes overruns the block"),
            });
        }
        out.push((code, &area[4..4 + len]));
        area = &area[4 + padded..];
    }
    Ok(out)
}

/// Builders of capture files for tests (here and in the replay tests).
#[cfg(test)]
pub mod build {
    /// Byte order of a built file.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Order {
        /// Little-endian.
        Le,
        /// Big-endian.
        Be,
    }

    fn u16b(o: Order, v: u16) -> [u8; 2] {
        match o {
            Order::Le => v.to_le_bytes(),
            Order::Be => v.to_be_bytes(),
        }
    }

    fn u32b(o: Order, v: u32) -> [u8; 4] {
        match o {
            Order::Le => v.to_le_bytes(),
            Order::Be => v.to_be_bytes(),
        }
    }

    /// A classic pcap file: `(seconds, fraction, data)` records; `nanos` picks the magic.
    pub fn pcap(o: Order, nanos: bool, link: u32, packets: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let magic = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
        let mut f = u32b(o, magic).to_vec();
        f.extend_from_slice(&u16b(o, 2));
        f.extend_from_slice(&u16b(o, 4));
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&u32b(o, 262_144));
        f.extend_from_slice(&u32b(o, link));
        for (secs, frac, data) in packets {
            f.extend_from_slice(&u32b(o, *secs));
            f.extend_from_slice(&u32b(o, *frac));
            f.extend_from_slice(&u32b(o, data.len() as u32));
            f.extend_from_slice(&u32b(o, data.len() as u32));
            f.extend_from_slice(data);
        }
        f
    }

    /// A pcapng block of `block_type` with `body` (padded to 4 bytes).
    pub fn block(o: Order, block_type: u32, body: &[u8]) -> Vec<u8> {
        let padded = body.len().div_ceil(4) * 4;
        let total = (12 + padded) as u32;
        let mut b = u32b(o, block_type).to_vec();
        b.extend_from_slice(&u32b(o, total));
        b.extend_from_slice(body);
        b.resize(8 + padded, 0);
        b.extend_from_slice(&u32b(o, total));
        b
    }

    /// A Section Header Block.
    pub fn shb(o: Order) -> Vec<u8> {
        let mut body = u32b(o, super::BYTE_ORDER_MAGIC).to_vec();
        body.extend_from_slice(&u16b(o, 1));
        body.extend_from_slice(&u16b(o, 0));
        body.extend_from_slice(&[0xff; 8]);
        block(o, super::SHB, &body)
    }

    /// An option: code, length, value padded to 4 bytes.
    pub fn option(o: Order, code: u16, value: &[u8]) -> Vec<u8> {
        let mut b = u16b(o, code).to_vec();
        b.extend_from_slice(&u16b(o, value.len() as u16));
        b.extend_from_slice(value);
        b.resize(4 + value.len().div_ceil(4) * 4, 0);
        b
    }

    /// An Interface Description Block with optional `if_tsresol` and `if_tsoffset`.
    pub fn idb(o: Order, link: u16, tsresol: Option<u8>, tsoffset: Option<i64>) -> Vec<u8> {
        let mut body = u16b(o, link).to_vec();
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&u32b(o, 0));
        body.extend(option(o, 2, b"eth0"));
        if let Some(r) = tsresol {
            body.extend(option(o, super::IF_TSRESOL, &[r]));
        }
        if let Some(off) = tsoffset {
            let v = match o {
                Order::Le => off.to_le_bytes(),
                Order::Be => off.to_be_bytes(),
            };
            body.extend(option(o, super::IF_TSOFFSET, &v));
        }
        body.extend_from_slice(&[0, 0, 0, 0]);
        block(o, super::IDB, &body)
    }

    /// An Enhanced Packet Block on interface `iface` at `ts` units.
    pub fn epb(o: Order, iface: u32, ts: u64, data: &[u8]) -> Vec<u8> {
        let mut body = u32b(o, iface).to_vec();
        body.extend_from_slice(&u32b(o, (ts >> 32) as u32));
        body.extend_from_slice(&u32b(o, ts as u32));
        body.extend_from_slice(&u32b(o, data.len() as u32));
        body.extend_from_slice(&u32b(o, data.len() as u32 + 4));
        body.extend_from_slice(data);
        body.resize(body.len().div_ceil(4) * 4, 0);
        body.extend(option(o, 1, b"comment"));
        block(o, super::EPB, &body)
    }

    /// A Simple Packet Block.
    pub fn spb(o: Order, data: &[u8]) -> Vec<u8> {
        let mut body = u32b(o, data.len() as u32).to_vec();
        body.extend_from_slice(data);
        block(o, super::SPB, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::{build::*, *};

    /// Link type, time, bytes and offset of a frame.
    type Got = (LinkType, u64, Vec<u8>, u64);

    fn frames(bytes: &[u8]) -> Result<Vec<Got>, CaptureFileError> {
        let mut r = CaptureReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(f) = r.next_frame()? {
            out.push((f.link, f.ts_ns, f.data.to_vec(), f.offset));
        }
        Ok(out)
    }

    fn error(bytes: &[u8]) -> String {
        match frames(bytes) {
            Ok(f) => panic!("expected an error, read {} frames", f.len()),
            Err(e) => e.to_string(),
        }
    }

    const T: u64 = 1_700_000_000;

    #[test]
    fn pcap_both_byte_orders_micro_and_nano() {
        for o in [Order::Le, Order::Be] {
            let f = pcap(
                o,
                false,
                1,
                &[(T as u32, 123_456, b"abc"), (T as u32 + 1, 0, b"")],
            );
            let got = frames(&f).unwrap();
            assert_eq!(
                got,
                [
                    (
                        LinkType::Ethernet,
                        T * 1_000_000_000 + 123_456_000,
                        b"abc".to_vec(),
                        24
                    ),
                    (
                        LinkType::Ethernet,
                        (T + 1) * 1_000_000_000,
                        vec![],
                        24 + 16 + 3
                    ),
                ],
                "{o:?}"
            );
            let f = pcap(o, true, 276, &[(T as u32, 123_456_789, b"x")]);
            let got = frames(&f).unwrap();
            assert_eq!(got[0].0, LinkType::LinuxSll2);
            assert_eq!(got[0].1, T * 1_000_000_000 + 123_456_789, "{o:?}");
        }
        // The upper 16 bits of the link-type field (FCS length) are not the link type.
        let f = pcap(Order::Le, false, 0x1000_0071, &[(0, 0, b"x")]);
        assert_eq!(frames(&f).unwrap()[0].0, LinkType::LinuxSll);
    }

    #[test]
    fn pcap_corrupt_inputs_name_the_offset() {
        assert_eq!(error(b""), "the capture file is empty");
        let e = error(b"GIF89a\0\0\0\0");
        assert!(
            e.starts_with("not a pcap or pcapng file: magic number 0x47494638 at offset 0"),
            "{e}"
        );
        let f = pcap(Order::Le, false, 1, &[(1, 2, b"abcdef")]);
        let e = error(&f[..10]);
        assert_eq!(
            e,
            "truncated pcap file header at offset 0: 24 bytes needed, only 10 left"
        );
        let e = error(&f[..24 + 9]);
        assert_eq!(
            e,
            "truncated packet record header at offset 24: 16 bytes needed, only 9 left"
        );
        let e = error(&f[..f.len() - 2]);
        assert_eq!(
            e,
            "truncated packet record at offset 24: 22 bytes needed, only 20 left"
        );
        let mut huge = f.clone();
        huge[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = error(&huge);
        assert!(
            e.starts_with("corrupt pcap packet record at offset 24: captured length 4294967295"),
            "{e}"
        );
        let mut v1 = f.clone();
        v1[4] = 1;
        assert!(error(&v1).contains("version 1.4 is not 2.x"));
    }

    #[test]
    fn pcap_unsupported_link_type_is_an_error_at_the_first_packet() {
        let e = error(&pcap(Order::Be, false, 105, &[(0, 0, b"x")]));
        assert!(
            e.starts_with(
                "unsupported link type 105 (pcap file header) for the packet at offset 24"
            ),
            "{e}"
        );
        assert!(
            frames(&pcap(Order::Be, false, 105, &[]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn pcapng_both_byte_orders_with_skipped_blocks() {
        for o in [Order::Le, Order::Be] {
            let mut f = shb(o);
            f.extend(idb(o, 1, None, None));
            f.extend(block(o, 0x0000_0BAD, b"unknown block type"));
            f.extend(block(o, 5, &[0; 12])); // interface statistics
            let epb_at = f.len() as u64;
            f.extend(epb(o, 0, T * 1_000_000 + 42, b"hello"));
            f.extend(spb(o, b"simple"));
            let got = frames(&f).unwrap();
            assert_eq!(got.len(), 2, "{o:?}");
            assert_eq!(
                got[0],
                (
                    LinkType::Ethernet,
                    T * 1_000_000_000 + 42_000,
                    b"hello".to_vec(),
                    epb_at
                )
            );
            assert_eq!((got[1].1, &got[1].2[..]), (0, &b"simple"[..]));
        }
    }

    #[test]
    fn pcapng_timestamp_resolutions_and_offset() {
        let o = Order::Be;
        let mut f = shb(o);
        f.extend(idb(o, 113, Some(9), None));
        // if_tsresol with its high bit set: units of 2^-10 s.
        f.extend(idb(o, 101, Some(0x80 | 0x0a), Some(100)));
        f.extend(idb(o, 276, Some(3), None));
        f.extend(epb(o, 0, T * 1_000_000_000 + 7, b"a"));
        f.extend(epb(o, 1, 3 * 1024 + 512, b"b"));
        f.extend(epb(o, 2, 1_500, b"c"));
        let got = frames(&f).unwrap();
        assert_eq!(got[0].0, LinkType::LinuxSll);
        assert_eq!(got[0].1, T * 1_000_000_000 + 7);
        assert_eq!(got[1].0, LinkType::RawIp);
        assert_eq!(got[1].1, 103 * 1_000_000_000 + 500_000_000);
        assert_eq!(got[2].0, LinkType::LinuxSll2);
        assert_eq!(got[2].1, 1_500_000_000);
    }

    /// Issue 11: an `if_tsoffset` that takes the time past u64 nanoseconds is an error
    /// naming the block, not a saturated (year 2554) or wrapped time; the extremes that
    /// do fit are kept exactly, and times before the epoch are 0.
    #[test]
    fn pcapng_timestamps_out_of_range() {
        let o = Order::Le;
        let mut f = shb(o);
        f.extend(idb(o, 101, Some(9), None));
        f.extend(idb(o, 101, Some(0), Some(-5)));
        f.extend(idb(o, 101, Some(0), Some(i64::MIN)));
        f.extend(epb(o, 0, u64::MAX, b"a"));
        f.extend(epb(o, 1, 3, b"b"));
        f.extend(epb(o, 2, u32::MAX.into(), b"c"));
        let got = frames(&f).unwrap();
        assert_eq!(
            got.iter().map(|g| g.1).collect::<Vec<_>>(),
            [u64::MAX, 0, 0]
        );

        for (resol, offset, ts) in [
            (9, Some(i64::MAX), 0),
            (9, Some(1), u64::MAX),
            (0, None, u64::MAX),
            (0x80, Some(i64::MAX), u64::MAX),
        ] {
            let mut f = shb(o);
            f.extend(idb(o, 101, Some(resol), offset));
            let at = f.len();
            f.extend(epb(o, 0, ts, b"x"));
            let e = error(&f);
            assert!(
                e.starts_with(&format!(
                    "corrupt pcapng block at offset {at}: timestamp out of range: "
                )) && e.ends_with("is later than 2554-07-21"),
                "{e}"
            );
        }
    }

    #[test]
    fn pcapng_sections_change_byte_order_and_reset_interfaces() {
        let mut f = shb(Order::Le);
        f.extend(idb(Order::Le, 1, None, None));
        f.extend(idb(Order::Le, 1, None, None));
        f.extend(epb(Order::Le, 1, 1, b"le"));
        f.extend(shb(Order::Be));
        f.extend(idb(Order::Be, 101, None, None));
        f.extend(epb(Order::Be, 0, 2, b"be"));
        let got = frames(&f).unwrap();
        assert_eq!((got[0].0, &got[0].2[..]), (LinkType::Ethernet, &b"le"[..]));
        assert_eq!((got[1].0, &got[1].2[..]), (LinkType::RawIp, &b"be"[..]));
        let at = f.len();
        f.extend(epb(Order::Be, 1, 3, b"no such interface"));
        assert_eq!(
            error(&f),
            format!(
                "corrupt pcapng block at offset {at}: packet refers to interface 1, but the \
                 section describes 1"
            )
        );
    }

    #[test]
    fn pcapng_corrupt_blocks_name_the_offset() {
        let o = Order::Le;
        let mut head = shb(o);
        head.extend(idb(o, 1, None, None));
        let at = head.len();

        let mut f = head.clone();
        f.extend_from_slice(&6u32.to_le_bytes());
        f.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            error(&f),
            format!("corrupt pcapng block at offset {at}: block length 7 is not a multiple of 4")
        );

        let mut f = head.clone();
        f.extend_from_slice(&6u32.to_le_bytes());
        f.extend_from_slice(&8u32.to_le_bytes());
        assert!(error(&f).contains("block length 8 is shorter than the 12-byte minimum"));

        let mut f = head.clone();
        let mut b = epb(o, 0, 1, b"data");
        let n = b.len();
        b[n - 4..].copy_from_slice(&12u32.to_le_bytes());
        f.extend(b);
        assert!(
            error(&f).starts_with(&format!(
                "corrupt pcapng block at offset {at}: trailing block length 12 does not match"
            )),
            "{}",
            error(&f)
        );

        let mut f = head.clone();
        let b = epb(o, 0, 1, b"some packet data");
        f.extend_from_slice(&b[..b.len() - 6]);
        assert_eq!(
            error(&f),
            format!(
                "truncated pcapng block at offset {at}: {} bytes needed, only {} left",
                b.len(),
                b.len() - 6
            )
        );

        let mut f = head.clone();
        let mut b = epb(o, 0, 1, b"data");
        b[20..24].copy_from_slice(&1000u32.to_le_bytes());
        f.extend(b);
        assert!(error(&f).contains("captured length 1000 overruns the block"));

        let mut f = head.clone();
        f.extend_from_slice(&[6, 0, 0]);
        assert_eq!(
            error(&f),
            format!("truncated pcapng block header at offset {at}: 8 bytes needed, only 3 left")
        );

        let mut bad_bom = shb(o);
        bad_bom[8..12].copy_from_slice(&[1, 2, 3, 4]);
        assert!(error(&bad_bom).starts_with(
            "corrupt pcapng block at offset 0: section header byte-order magic 0x01020304"
        ));
        let e = error(&shb(o)[..20]);
        assert_eq!(
            e,
            "truncated pcapng section header at offset 0: 28 bytes needed, only 20 left"
        );
    }

    #[test]
    fn pcapng_unsupported_link_type_names_the_interface() {
        let o = Order::Le;
        let mut f = shb(o);
        f.extend(idb(o, 1, None, None));
        let idb_at = f.len();
        f.extend(idb(o, 147, None, None));
        f.extend(epb(o, 0, 1, b"fine"));
        assert_eq!(frames(&f).unwrap().len(), 1);
        let at = f.len();
        f.extend(epb(o, 1, 1, b"user link type"));
        assert_eq!(
            error(&f),
            format!(
                "unsupported link type 147 (pcapng interface 1, block at offset {idb_at}) for \
                 the packet at offset {at}: nprot replay reads Ethernet (1), BSD loopback (0, \
                 108), PPP (9, 50), Cisco HDLC (104), Linux cooked SLL (113) and SLL2 (276), \
                 and raw IP (101, 12, 14, 228, 229)"
            )
        );
    }

    #[test]
    fn obsolete_packet_block_is_read() {
        let o = Order::Be;
        let mut body = 0u16.to_be_bytes().to_vec(); // interface
        body.extend_from_slice(&[0, 0]); // drops
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&2_000_000u32.to_be_bytes());
        body.extend_from_slice(&3u32.to_be_bytes());
        body.extend_from_slice(&3u32.to_be_bytes());
        body.extend_from_slice(b"opb");
        let mut f = shb(o);
        f.extend(idb(o, 1, None, None));
        f.extend(block(o, OPB, &body));
        let got = frames(&f).unwrap();
        assert_eq!((got[0].1, &got[0].2[..]), (2_000_000_000, &b"opb"[..]));
    }

    #[test]
    fn no_cut_or_corrupted_byte_makes_a_reader_panic() {
        let mut ng = shb(Order::Le);
        ng.extend(idb(Order::Le, 1, Some(9), Some(5)));
        ng.extend(epb(Order::Le, 0, 77, b"0123456789"));
        ng.extend(spb(Order::Le, b"simple"));
        let classic = pcap(Order::Be, true, 113, &[(1, 2, b"abc"), (3, 4, b"defgh")]);
        for file in [ng, classic] {
            for cut in 0..file.len() {
                let _ = frames(&file[..cut]);
            }
            for at in 0..file.len() {
                for byte in [0x00, 0x07, 0x80, 0xff] {
                    let mut bad = file.clone();
                    bad[at] = byte;
                    let _ = frames(&bad);
                }
            }
        }
    }
}
