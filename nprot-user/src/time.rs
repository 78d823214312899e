//! A small RFC 3339 timestamp parser and formatter (no date crate needed).
//!
//! Accepted: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, with `t` and `z` also in lower
//! case (RFC 3339 §5.6 allows it). A leap second (`:60`) is accepted and lands on the
//! following second. Fractions longer than nanoseconds are truncated.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d` (Howard Hinnant's
/// `days_from_civil`). `m` is 1..=12, `d` 1..=31; no range checks.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a day count since 1970-01-01 (inverse of
/// [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Both casts are in range by the bounds noted above.
    (y, m as u32, d as u32)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
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

/// Parses an RFC 3339 timestamp.
pub fn parse(s: &str) -> Result<Timestamp, Rfc3339Error> {
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

    let year = i64::from(year);
    if !(1..=12).contains(&month) {
        return Err(err("month out of range"));
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(err("day out of range"));
    }
    if hour > 23 {
        return Err(err("hour out of range"));
    }
    if minute > 59 {
        return Err(err("minutes out of range"));
    }
    // 60 is a leap second; it counts as the first second of the next minute.
    if second > 60 {
        return Err(err("seconds out of range"));
    }
    let days = days_from_civil(year, month, day);
    let local = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Ok(Timestamp {
        secs: local - offset_secs,
        nanos,
    })
}

/// Parses an RFC 3339 timestamp into a [`SystemTime`].
pub fn parse_system_time(s: &str) -> Result<SystemTime, Rfc3339Error> {
    parse(s)?
        .to_system_time()
        .ok_or(err("outside the range of the system clock"))
}

/// Formats `t` as RFC 3339 UTC (`…Z`), with as many fractional digits as needed
/// (none for whole seconds), so that [`parse`] gives back the same instant.
pub fn format(t: SystemTime) -> String {
    format_timestamp(Timestamp::from_system_time(t))
}

/// Formats `t` like [`format`].
pub fn format_timestamp(t: Timestamp) -> String {
    let days = t.secs.div_euclid(86_400);
    let sod = t.secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if t.nanos != 0 {
        let frac = format!("{:09}", t.nanos);
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
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
        for z in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
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
