//! Times on the command line: parsing `--since` and printing dates, done
//! here rather than pulling in a date crate for a few lines of calendar.

use std::time::{SystemTime, UNIX_EPOCH};

/// The formats `parse_time` accepts, for help texts.
pub const TIME_FORMATS: &str = "Unix seconds (1795600800), RFC 3339 (2026-11-25T10:00:00Z, 2026-11-25T18:00:00+08:00) \
                                or relative to now (-90s, -10m, -2h, -1d, -1h30m)";

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A point in time as Unix milliseconds, from one of [`TIME_FORMATS`].
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('-') {
        let back =
            parse_duration_ms(rel).ok_or_else(|| format!("{s:?}: relative times look like -10m, -2h or -1h30m"))?;
        return now_ms.checked_sub(back).ok_or_else(|| format!("{s:?} is before 1970"));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| format!("{s:?}: too large for Unix seconds"))?;
        return secs.checked_mul(1000).ok_or_else(|| format!("{s:?}: too large for Unix seconds"));
    }
    parse_rfc3339(s).ok_or_else(|| format!("{s:?} is not a time: use {TIME_FORMATS}"))
}

/// `1h30m`, `90s`, `2d`: a sequence of number-unit pairs (s, m, h, d).
fn parse_duration_ms(s: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        let unit = match rest[digits..].chars().next()? {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?.checked_mul(1000)?)?;
        rest = &rest[digits + 1..];
    }
    Some(total)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `t`, `z` and a space for
/// the `T` are accepted too, as RFC 3339 allows.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    // 60 is a leap second; it is read as the next second.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms_digits = &frac[..digits.min(3)];
        millis = ms_digits.parse::<u64>().ok()? * 10u64.pow(3 - ms_digits.len() as u32);
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || !matches!(ob[0], b'+' | b'-') || ob[3] != b':' {
                return None;
            }
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if ob[0] == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day)?;
    let local = days as i64 * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
    let utc = local - offset_secs;
    u64::try_from(utc).ok().map(|secs| secs * 1000 + millis)
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's civil-to-days algorithm: days since 1970-01-01, for
/// dates from 1970 on.
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// Howard Hinnant's days-to-civil algorithm, for days since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD hh:mm:ss UTC`.
pub fn utc(unix_secs: u64) -> String {
    format!("{} UTC", utc_short(unix_secs))
}

/// `YYYY-MM-DD hh:mm:ss`, for table cells under a "(UTC)" heading.
pub fn utc_short(unix_secs: u64) -> String {
    let (days, rem) = (unix_secs / 86_400, unix_secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_064_800_000; // 2025-11-25T10:00:00Z

    #[test]
    fn dates_match_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn unix_seconds() {
        assert_eq!(parse_time("1764064800", NOW), Ok(NOW));
        assert_eq!(parse_time("0", NOW), Ok(0));
        assert!(parse_time("99999999999999999999", NOW).is_err());
    }

    #[test]
    fn relative_times_count_back_from_now() {
        assert_eq!(parse_time("-10m", NOW), Ok(NOW - 600_000));
        assert_eq!(parse_time("-2h", NOW), Ok(NOW - 7_200_000));
        assert_eq!(parse_time("-1d", NOW), Ok(NOW - 86_400_000));
        assert_eq!(parse_time("-90s", NOW), Ok(NOW - 90_000));
        assert_eq!(parse_time("-1h30m", NOW), Ok(NOW - 5_400_000));
        for bad in ["-", "-10", "-m", "-10x", "-1h30", "-h1"] {
            assert!(parse_time(bad, NOW).is_err(), "{bad}");
        }
        assert!(parse_time("-100000d", NOW).is_err(), "before 1970");
    }

    #[test]
    fn rfc3339_with_offsets_and_fractions() {
        assert_eq!(parse_time("2025-11-25T10:00:00Z", NOW), Ok(NOW));
        assert_eq!(parse_time("2025-11-25t10:00:00z", NOW), Ok(NOW));
        assert_eq!(parse_time("2025-11-25 10:00:00Z", NOW), Ok(NOW));
        assert_eq!(parse_time("2025-11-25T18:00:00+08:00", NOW), Ok(NOW));
        assert_eq!(parse_time("2025-11-25T05:30:00-04:30", NOW), Ok(NOW));
        assert_eq!(parse_time("2025-11-25T10:00:00.25Z", NOW), Ok(NOW + 250));
        assert_eq!(parse_time("2025-11-25T10:00:00.123456Z", NOW), Ok(NOW + 123));
        assert_eq!(parse_time("2000-02-29T00:00:00Z", NOW), Ok(951_782_400_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z", NOW), Ok(0));
        for bad in [
            "2025-11-25T10:00:00",
            "2025-11-25",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-11-25T24:00:00Z",
            "2025-11-25T10:00:00+8:00",
            "2025-11-25T10:00:00.Z",
            "1969-12-31T23:59:59Z",
            "yesterday",
            "",
        ] {
            assert!(parse_time(bad, NOW).is_err(), "{bad}");
        }
    }
}
