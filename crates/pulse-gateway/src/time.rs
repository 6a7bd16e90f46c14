//! RFC 3339 timestamps to and from Unix milliseconds (what clients send, what the API shows).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `ms` as RFC 3339 UTC with milliseconds, e.g. `2025-03-01T12:00:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// Parses an RFC 3339 timestamp with any offset (`Z`, `+00:00`, `-07:00`) and any fraction
/// into Unix milliseconds (the fraction past milliseconds is dropped).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_whatever_the_offset() {
        let ms = parse_rfc3339("2025-03-01T12:00:00Z").unwrap();
        assert_eq!(ms, 1_740_830_400_000);
        assert_eq!(rfc3339(ms), "2025-03-01T12:00:00.000Z");
        assert_eq!(
            parse_rfc3339("2025-03-01T13:00:00.123456+01:00"),
            Some(ms + 123)
        );
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(parse_rfc3339("2025-03-01 12:00"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
