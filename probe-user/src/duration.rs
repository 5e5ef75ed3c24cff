//! Durations as systemd.time(7), Go's time.ParseDuration and Prometheus write them: a
//! number and a unit, several in a row (`1m30s`, `1h5m`), fractions allowed (`1.5s`);
//! and shown back exactly the same way (`1.5s`, never "2s").

use std::time::Duration;

/// What a duration looks like, for help texts and error hints.
pub const LOOKS_LIKE: &str = "a number and a unit (ms, s, m, h; us, ns), several in a row \
                              allowed, like 250ms, 30s, 1m30s or 1.5s";

/// Why `text` is not a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// `-1s`: a span of time cannot be negative.
    Negative,
    /// Not a number and a unit (or a unit we do not know).
    Malformed,
    /// More than a year: surely a typo.
    TooLong,
}

/// The longest duration accepted.
const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses `250ms`, `30s`, `5m`, `1h`, `1m30s`, `1.5s`, `100us`, `0s`.
pub fn parse(text: &str) -> Result<Duration, Problem> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(Problem::Negative);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return Err(Problem::Malformed);
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or(Problem::Malformed)?;
        let (number, after) = rest.split_at(digits);
        if number.is_empty() {
            return Err(Problem::Malformed);
        }
        let number: f64 = number.parse().map_err(|_| Problem::Malformed)?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let ns_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(Problem::Malformed),
        };
        total_ns += number * ns_per_unit;
        rest = next;
    }
    if !total_ns.is_finite() || total_ns > MAX.as_nanos() as f64 {
        return Err(Problem::TooLong);
    }
    // Rounded to whole nanoseconds: 1.1s is 1_100_000_000 ns, not 1_099_999_999.
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

/// Shows `d` exactly, in the largest units that keep it exact: `1m30s`, `1.5s`, `250ms`,
/// `100us`, `0s`. `format(parse(x))` reads back as the same duration.
pub fn format(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns.is_multiple_of(1_000_000_000) {
        let mut secs = d.as_secs();
        let mut out = String::new();
        for (unit, size) in [("h", 3600), ("m", 60)] {
            if secs >= size {
                out.push_str(&format!("{}{unit}", secs / size));
                secs %= size;
            }
        }
        if secs > 0 {
            out.push_str(&format!("{secs}s"));
        }
        return out;
    }
    // Below a whole second: one unit with a decimal fraction, no trailing zeros.
    let (unit, size) = if ns >= 1_000_000_000 {
        ("s", 1_000_000_000)
    } else if ns >= 1_000_000 {
        ("ms", 1_000_000)
    } else if ns >= 1_000 {
        ("us", 1_000)
    } else {
        ("ns", 1)
    };
    let whole = ns / size;
    let fraction = ns % size;
    if fraction == 0 {
        return format!("{whole}{unit}");
    }
    let width = size.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}{unit}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_style_durations_are_read() {
        let ms = Duration::from_millis;
        assert_eq!(parse("250ms"), Ok(ms(250)));
        assert_eq!(parse("30s"), Ok(ms(30_000)));
        assert_eq!(parse("5m"), Ok(ms(300_000)));
        assert_eq!(parse("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse("1h5m"), Ok(ms(3_900_000)));
        assert_eq!(parse("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse("1.1s"), Ok(ms(1_100)));
        assert_eq!(parse("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("2h"), Ok(ms(7_200_000)));
    }

    #[test]
    fn bad_durations_say_why() {
        assert_eq!(parse("-1s"), Err(Problem::Negative));
        for bad in ["30", "soon", "", "s", "1x", "1.2.3s", "m30", "1m30"] {
            assert_eq!(parse(bad), Err(Problem::Malformed), "{bad}");
        }
        assert_eq!(parse("9999h"), Err(Problem::TooLong));
    }

    #[test]
    fn durations_are_shown_exactly() {
        let show = |t: &str| format(parse(t).unwrap());
        assert_eq!(show("1.5s"), "1.5s");
        assert_eq!(show("90s"), "1m30s");
        assert_eq!(show("1m30s"), "1m30s");
        assert_eq!(show("250ms"), "250ms");
        assert_eq!(show("30s"), "30s");
        assert_eq!(show("2h"), "2h");
        assert_eq!(show("3601s"), "1h1s");
        assert_eq!(show("1.25ms"), "1.25ms");
        assert_eq!(show("0s"), "0s");
        assert_eq!(show("61.5s"), "61.5s");
    }

    #[test]
    fn what_is_shown_reads_back_the_same() {
        for ns in [
            1u64,
            999,
            1_000,
            1_500_000,
            1_000_000_001,
            90_000_000_000,
            3_661_000_000_000,
        ] {
            let d = Duration::from_nanos(ns);
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
    }
}
