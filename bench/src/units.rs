//! Human-readable quantities on the command line: sizes (`64MiB`, `10MB`, `4096`) and durations
//! (`10s`, `250ms`, `2m`), parsed into bytes and [`Duration`]s so scenario code never sees text.

use std::time::Duration;

/// A size or duration argument that could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UnitError {
    /// No number at the start.
    #[error("{input:?} does not start with a number")]
    NoNumber { input: String },
    /// The unit suffix is not one we know.
    #[error(
        "unknown unit {unit:?} in {input:?} (sizes: B, KB, KiB, MB, MiB, GB, GiB; durations: ms, s, m, h)"
    )]
    UnknownUnit { input: String, unit: String },
    /// The value does not fit (bytes in u64, or a negative / non-finite duration).
    #[error("{input:?} is out of range")]
    OutOfRange { input: String },
}

/// Splits `"64MiB"` into `(64.0, "MiB")`; whitespace between the two is allowed.
fn split_number(input: &str) -> Result<(f64, &str), UnitError> {
    let s = input.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let digits: String = s[..end].chars().filter(|c| *c != '_').collect();
    let value = digits.parse::<f64>().map_err(|_| UnitError::NoNumber {
        input: input.to_owned(),
    })?;
    Ok((value, s[end..].trim()))
}

/// Parses a byte size. Decimal units are powers of 1000 (`KB`, `MB`, `GB`), binary ones powers of
/// 1024 (`KiB`, `MiB`, `GiB`, and the bare `K`/`M`/`G` as in `dd`); no unit means bytes.
/// Units are case-insensitive.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let (value, unit) = split_number(input)?;
    let factor: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(UnitError::UnknownUnit {
                input: input.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    let bytes = (value * factor).round();
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(UnitError::OutOfRange {
            input: input.to_owned(),
        });
    }
    Ok(bytes as u64)
}

/// Parses a duration: `ms`, `s`, `m`, `h`; a bare number is seconds.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let (value, unit) = split_number(input)?;
    let seconds = match unit.to_ascii_lowercase().as_str() {
        "ms" => value / 1e3,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(UnitError::UnknownUnit {
                input: input.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| UnitError::OutOfRange {
        input: input.to_owned(),
    })
}

/// Bytes as MiB with one decimal, for tables.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Throughput in MB/s (10^6 bytes per second), the unit of every streaming figure.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 / 1e6 / secs
    }
}

/// A duration in milliseconds (fractional), the unit of every latency figure.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("64 mib"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1_000kb"), Ok(1_000_000));
        assert_eq!(parse_size("0B"), Ok(0));
        assert!(matches!(parse_size("MiB"), Err(UnitError::NoNumber { .. })));
        assert!(matches!(
            parse_size("5 parsecs"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("1e30GiB"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("99999999999999999999GiB"),
            Err(UnitError::OutOfRange { .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(matches!(
            parse_duration("3 fortnights"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(parse_duration(""), Err(UnitError::NoNumber { .. })));
    }

    #[test]
    fn rates() {
        assert_eq!(mb_per_s(10_000_000, Duration::from_secs(2)), 5.0);
        assert_eq!(mb_per_s(1, Duration::ZERO), 0.0);
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
    }
}
