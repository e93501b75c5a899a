//! Prometheus duration strings (`30s`, `5m`, `1h30m`), parsed as Prometheus does.

use std::time::Duration;

/// Units in the order Prometheus requires them (largest first), with their length.
const UNITS: [(&str, u64); 7] = [
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

/// Parses a Prometheus duration: `[0-9]+` followed by a unit (`ms`, `s`, `m`, `h`, `d`,
/// `w`, `y`), several concatenated with the largest unit first and none repeated
/// (`1h30m`), or `0`. `None` when `s` is not one (`5x`, `30m1h`, `1.5h`, `""`) or is
/// longer than Prometheus can hold.
///
/// ```
/// use std::time::Duration;
/// use ops_monitor::rules::parse_duration;
///
/// assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
/// assert_eq!(parse_duration("5x"), None);
/// ```
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut next_unit = 0;
    let mut millis: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let (number, after) = rest.split_at(digits);
        let number: u64 = number.parse().ok()?;
        // `ms` before `m`: `5ms` is milliseconds, not minutes followed by junk.
        let unit_len = if after.starts_with("ms") { 2 } else { 1 };
        let unit = after.get(..unit_len)?;
        let (index, (_, unit_millis)) = UNITS.iter().enumerate().find(|(_, (u, _))| *u == unit)?;
        if index < next_unit {
            return None;
        }
        next_unit = index + 1;
        millis = millis.checked_add(number.checked_mul(*unit_millis)?)?;
        rest = &after[unit_len..];
    }
    // Prometheus holds durations as signed 64-bit nanoseconds.
    if millis > (i64::MAX as u64) / 1_000_000 {
        return None;
    }
    Some(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_prometheus_parses() {
        let cases = [
            ("0", 0),
            ("0s", 0),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1d", 86_400_000),
            ("2w", 1_209_600_000),
            ("1y", 31_536_000_000),
            ("1m30s500ms", 90_500),
            ("250ms", 250),
            ("1h0m", 3_600_000),
        ];
        for (s, millis) in cases {
            assert_eq!(
                parse_duration(s),
                Some(Duration::from_millis(millis)),
                "{s}"
            );
        }
    }

    #[test]
    fn refuses_what_prometheus_refuses() {
        for s in [
            "",
            "5x",
            "5",
            "m",
            "1.5h",
            "30m1h",
            "1h1h",
            "5m ",
            " 5m",
            "-5m",
            "5M",
            "1h30",
            "5mm",
            "5sms",
            "99999999999999999999s",
            "300000y",
        ] {
            assert_eq!(parse_duration(s), None, "{s:?}");
        }
    }
}
