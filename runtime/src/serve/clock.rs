//! Times as RFC 3339 text in UTC, the form both APIs send (Jupyter's message
//! dates, proto3's JSON `Timestamp`), and read back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `seconds` since the Unix epoch, with `micros` as a fraction if given.
pub fn rfc3339(seconds: i64, micros: Option<u32>) -> String {
    let (days, time) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let fraction = micros.map(|m| format!(".{m:06}")).unwrap_or_default();
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// An RFC 3339 time (any offset) as a system time; `None` if it is not one.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let time = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let nanos = time.unix_timestamp_nanos();
    let since_epoch = Duration::from_nanos(u64::try_from(nanos.unsigned_abs()).ok()?);
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(since_epoch)
    } else {
        UNIX_EPOCH.checked_sub(since_epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_across_leap_days_and_the_epoch() {
        assert_eq!(rfc3339(0, None), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400, None), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_312_496, None), "2026-11-22T01:54:56Z");
        assert_eq!(rfc3339(-1, None), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(1, Some(42)), "1970-01-01T00:00:01.000042Z");
    }

    #[test]
    fn times_are_read_with_any_offset() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(
            parse_rfc3339("2026-11-22T01:54:56Z"),
            Some(at(1_795_312_496))
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T02:54:56.5+01:00"),
            Some(at(1_795_312_496) + Duration::from_millis(500))
        );
        assert_eq!(
            parse_rfc3339(&rfc3339(1_795_312_496, Some(7))),
            Some(at(1_795_312_496) + Duration::from_micros(7))
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-11-22"), None);
    }
}
