//! RFC 3339 timestamps: parsing and formatting.
//!
//! Accepted: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, with `t` and `z` also in lower
//! case (RFC 3339 §5.6 allows it), offsets up to ±23:59, and instants within the years
//! 0000 to 9999 in UTC (so that every parsed instant formats back to a 4-digit year). A
//! leap second (`:60`) is accepted and lands on the following second. Fractions longer
//! than nanoseconds are truncated.
//!
//! The grammar is checked here, because jiff's parser reads the wider ISO 8601 /
//! RFC 9557 grammar (a space for `T`, `+0200`, offsets to ±25:59:59, omitted seconds,
//! `[zone]` annotations) and clamps leap seconds; the calendar (month lengths, leap years,
//! days since the epoch) and the formatting are jiff's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::{
    SignedDuration,
    civil::{self, DateTime},
};

/// Why a string is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 timestamp: {reason}")]
pub struct Rfc3339Error {
    /// What was wrong, e.g. "month out of range".
    pub reason: &'static str,
}

fn err(reason: &'static str) -> Rfc3339Error {
    Rfc3339Error { reason }
}

/// A point in time as seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z (negative before it).
    pub secs: i64,
    /// Nanoseconds within the second, `0..1_000_000_000`.
    pub nanos: u32,
}

impl Timestamp {
    /// The same instant as a [`SystemTime`], if the platform can represent it.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let nanos = Duration::from_nanos(u64::from(self.nanos));
        if self.secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_secs(self.secs.unsigned_abs()) + nanos)
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(self.secs.unsigned_abs()))?
                .checked_add(nanos)
        }
    }

    /// The instant `t` as a timestamp (saturating far outside ±292 billion years).
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                // Before the epoch: -(d) = -(s + n) = -(s + 1) + (1e9 - n) nanos.
                let d = e.duration();
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                if d.subsec_nanos() == 0 {
                    Timestamp {
                        secs: -secs,
                        nanos: 0,
                    }
                } else {
                    Timestamp {
                        secs: -secs - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
}

/// 1970-01-01T00:00:00, the civil datetime of the epoch in UTC.
const EPOCH: DateTime = civil::date(1970, 1, 1).at(0, 0, 0, 0);

/// Seconds since the epoch of 0000-01-01T00:00:00Z, the earliest instant accepted.
const FIRST_SEC: i64 = -62_167_219_200;
/// Seconds since the epoch of 9999-12-31T23:59:59Z, the last whole second accepted.
const LAST_SEC: i64 = 253_402_300_799;

/// The civil datetime of `t` in UTC, saturating outside jiff's years -9999 to 9999.
pub fn utc_datetime(t: Timestamp) -> DateTime {
    // nanos < 1e9 fits an i32; SignedDuration normalises it.
    let nanos = i32::try_from(t.nanos).unwrap_or(999_999_999);
    EPOCH.saturating_add(SignedDuration::new(t.secs, nanos))
}

/// The fields of a string in the RFC 3339 shape, not yet checked for range.
struct Fields {
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    /// The UTC offset in seconds east.
    offset_secs: i64,
}

/// Reads exactly `n` ASCII digits at `*pos`, advancing it.
fn digits(b: &[u8], pos: &mut usize, n: usize, what: &'static str) -> Result<u32, Rfc3339Error> {
    let field = b.get(*pos..*pos + n).ok_or(err(what))?;
    let mut v = 0u32;
    for &c in field {
        if !c.is_ascii_digit() {
            return Err(err(what));
        }
        v = v * 10 + u32::from(c - b'0');
    }
    *pos += n;
    Ok(v)
}

fn expect(b: &[u8], pos: &mut usize, c: u8, what: &'static str) -> Result<(), Rfc3339Error> {
    if b.get(*pos) == Some(&c) {
        *pos += 1;
        Ok(())
    } else {
        Err(err(what))
    }
}

impl Fields {
    /// Checks the shape `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` and splits it.
    fn lex(s: &str) -> Result<Fields, Rfc3339Error> {
        let b = s.as_bytes();
        let mut p = 0;
        let year = digits(b, &mut p, 4, "expected a 4-digit year")?;
        expect(b, &mut p, b'-', "expected '-' after the year")?;
        let month = digits(b, &mut p, 2, "expected a 2-digit month")?;
        expect(b, &mut p, b'-', "expected '-' after the month")?;
        let day = digits(b, &mut p, 2, "expected a 2-digit day")?;
        match b.get(p) {
            Some(b'T' | b't') => p += 1,
            _ => return Err(err("expected 'T' between date and time")),
        }
        let hour = digits(b, &mut p, 2, "expected a 2-digit hour")?;
        expect(b, &mut p, b':', "expected ':' after the hour")?;
        let minute = digits(b, &mut p, 2, "expected 2-digit minutes")?;
        expect(b, &mut p, b':', "expected ':' after the minutes")?;
        let second = digits(b, &mut p, 2, "expected 2-digit seconds")?;

        let mut nanos = 0u32;
        if b.get(p) == Some(&b'.') {
            p += 1;
            let start = p;
            while let Some(c) = b.get(p).filter(|c| c.is_ascii_digit()) {
                if p - start < 9 {
                    nanos = nanos * 10 + u32::from(c - b'0');
                }
                p += 1;
            }
            let n = p - start;
            if n == 0 {
                return Err(err("expected digits after '.'"));
            }
            for _ in n..9 {
                nanos *= 10;
            }
        }

        let offset_secs: i64 = match b.get(p) {
            Some(b'Z' | b'z') => {
                p += 1;
                0
            }
            Some(&sign @ (b'+' | b'-')) => {
                p += 1;
                let oh = digits(b, &mut p, 2, "expected a 2-digit offset hour")?;
                expect(b, &mut p, b':', "expected ':' in the UTC offset")?;
                let om = digits(b, &mut p, 2, "expected 2-digit offset minutes")?;
                if oh > 23 || om > 59 {
                    return Err(err("UTC offset out of range"));
                }
                let off = i64::from(oh * 3600 + om * 60);
                if sign == b'-' { -off } else { off }
            }
            _ => return Err(err("expected 'Z' or a UTC offset (±HH:MM)")),
        };
        if p != b.len() {
            return Err(err("unexpected characters after the timestamp"));
        }
        Ok(Fields {
            year,
            month,
            day,
            hour,
            minute,
            second,
            nanos,
            offset_secs,
        })
    }
}

/// Parses an RFC 3339 timestamp.
pub fn parse(s: &str) -> Result<Timestamp, Rfc3339Error> {
    let f = Fields::lex(s)?;
    // All fields are at most 4 digits, so the narrowing casts below are lossless.
    if !(1..=12).contains(&f.month) {
        return Err(err("month out of range"));
    }
    // Year (0000–9999) and month are valid, so only the day can be out of range.
    let date = civil::Date::new(f.year as i16, f.month as i8, f.day as i8)
        .map_err(|_| err("day out of range"))?;
    // 60 is a leap second; it counts as the first second of the next minute. jiff's
    // times stop at :59, so it is read as :59 and one second added.
    if f.second > 60 {
        return Err(err("seconds out of range"));
    }
    let leap = i64::from(f.second == 60);
    let time = civil::Time::new(f.hour as i8, f.minute as i8, f.second.min(59) as i8, 0)
        .map_err(|_| err("hour or minutes out of range"))?;
    let local = date.to_datetime(time).duration_since(EPOCH).as_secs() + leap;
    let secs = local - f.offset_secs;
    if !(FIRST_SEC..=LAST_SEC).contains(&secs) {
        return Err(err("outside the years 0000 to 9999 in UTC"));
    }
    Ok(Timestamp {
        secs,
        nanos: f.nanos,
    })
}

/// Parses an RFC 3339 timestamp into a [`SystemTime`].
pub fn parse_system_time(s: &str) -> Result<SystemTime, Rfc3339Error> {
    parse(s)?
        .to_system_time()
        .ok_or(err("outside the range of the system clock"))
}

/// Formats `t` as RFC 3339 UTC (`…Z`), with as many fractional digits as needed
/// (none for whole seconds), so that [`parse`] gives back the same instant (for any
/// instant [`parse`] accepts; others saturate at jiff's years -9999 and 9999).
pub fn format(t: SystemTime) -> String {
    format_timestamp(Timestamp::from_system_time(t))
}

/// Formats `t` like [`format`].
pub fn format_timestamp(t: Timestamp) -> String {
    format!("{}Z", utc_datetime(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> (i64, u32) {
        let t = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (t.secs, t.nanos)
    }

    #[test]
    fn utc_z() {
        assert_eq!(ts("1970-01-01T00:00:00Z"), (0, 0));
        assert_eq!(ts("2027-01-01T00:00:00Z"), (1_798_761_600, 0));
        assert_eq!(ts("2000-02-29T12:34:56Z"), (951_827_696, 0));
        assert_eq!(ts("1969-12-31T23:59:59Z"), (-1, 0));
        assert_eq!(ts("2024-06-01t10:00:00z"), ts("2024-06-01T10:00:00Z"));
    }

    #[test]
    fn offsets() {
        assert_eq!(ts("2027-01-01T02:00:00+02:00"), ts("2027-01-01T00:00:00Z"));
        assert_eq!(ts("2026-12-31T19:30:00-04:30"), ts("2027-01-01T00:00:00Z"));
        assert_eq!(ts("2027-01-01T00:00:00-00:00"), ts("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn fractions() {
        assert_eq!(ts("2027-01-01T00:00:00.5Z").1, 500_000_000);
        assert_eq!(ts("2027-01-01T00:00:00.000123Z").1, 123_000);
        assert_eq!(ts("2027-01-01T00:00:00.123456789Z").1, 123_456_789);
        // Beyond nanoseconds: truncated.
        assert_eq!(ts("2027-01-01T00:00:00.1234567899Z").1, 123_456_789);
    }

    #[test]
    fn leap_second_rolls_over() {
        assert_eq!(ts("2016-12-31T23:59:60Z"), ts("2017-01-01T00:00:00Z"));
    }

    #[test]
    fn invalid_inputs() {
        for bad in [
            "",
            "2027-01-01",
            "2027-01-01T00:00:00",
            "2027-01-01 00:00:00Z",
            "27-01-01T00:00:00Z",
            "2027-1-01T00:00:00Z",
            "2027-13-01T00:00:00Z",
            "2027-00-01T00:00:00Z",
            "2027-02-29T00:00:00Z",
            "2027-04-31T00:00:00Z",
            "2027-01-01T24:00:00Z",
            "2027-01-01T00:60:00Z",
            "2027-01-01T00:00:61Z",
            "2027-01-01T00:00:00.Z",
            "2027-01-01T00:00:00+0200",
            "2027-01-01T00:00:00+24:00",
            "2027-01-01T00:00:00Zjunk",
            "2027-01-01T00:00:00ZZ",
            "２027-01-01T00:00:00Z",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
        assert_eq!(
            parse("2027-13-01T00:00:00Z").unwrap_err().to_string(),
            "not an RFC 3339 timestamp: month out of range"
        );
    }

    #[test]
    fn civil_round_trip() {
        // Every 97th day of the years 0000 to 9999 formats and parses back.
        for z in (-719_528..2_932_897).step_by(97) {
            let t = Timestamp {
                secs: z * 86_400,
                nanos: 0,
            };
            assert_eq!(parse(&format_timestamp(t)), Ok(t));
        }
        assert_eq!(
            format_timestamp(Timestamp { secs: 0, nanos: 0 }),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(ts("2000-03-01T00:00:00Z"), (11_017 * 86_400, 0));
        assert_eq!(ts("0000-01-01T00:00:00Z"), (FIRST_SEC, 0));
        assert_eq!(ts("9999-12-31T23:59:59Z"), (LAST_SEC, 0));
    }

    #[test]
    fn outside_years_0000_to_9999_in_utc() {
        for bad in [
            "0000-01-01T00:00:00+00:01",
            "9999-12-31T23:59:60Z",
            "9999-12-31T23:00:00-01:00",
        ] {
            assert_eq!(
                parse(bad),
                Err(err("outside the years 0000 to 9999 in UTC")),
                "{bad}"
            );
        }
    }

    #[test]
    fn format_round_trip() {
        for s in [
            "2027-01-01T00:00:00Z",
            "1969-12-31T23:59:59.25Z",
            "2000-02-29T12:34:56.000001Z",
            "9999-12-31T23:59:59Z",
        ] {
            let t = parse_system_time(s).unwrap();
            assert_eq!(format(t), s);
        }
    }
}
