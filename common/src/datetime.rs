//! Fn's `common.DateTime`: a UTC instant that prints as `2006-01-02T15:04:05.000Z07:00` (millisecond
//! precision) and parses any RFC 3339 precision and offset. The zero value is Go's zero time and prints
//! as `0001-01-01T00:00:00.000Z`, because Fn's `omitempty` never drops a struct-typed time.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// What Go's zero `time.Time` prints as in Fn's layout.
pub const ZERO_TEXT: &str = "0001-01-01T00:00:00.000Z";

/// A UTC instant, or Go's zero time (`None` inside). `Default` is the zero time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime(Option<OffsetDateTime>);

/// A string that is not an RFC 3339 time.
#[derive(Debug, thiserror::Error)]
#[error("invalid RFC 3339 time {text:?}: {source}")]
pub struct DateTimeError {
    text: String,
    #[source]
    source: time::error::Parse,
}

impl DateTime {
    /// Go's zero time.
    pub const ZERO: DateTime = DateTime(None);

    /// The current time (UTC).
    pub fn now() -> Self {
        DateTime(Some(OffsetDateTime::now_utc()))
    }

    /// Wraps an instant, converting it to UTC. Go's zero instant (0001-01-01T00:00:00Z) becomes zero.
    pub fn from_offset(t: OffsetDateTime) -> Self {
        let t = t.to_offset(UtcOffset::UTC);
        if t == go_zero() {
            DateTime(None)
        } else {
            DateTime(Some(t))
        }
    }

    /// True for Go's zero time.
    pub fn is_zero(&self) -> bool {
        self.0.is_none()
    }

    /// The instant, `None` for the zero time.
    pub fn as_offset(&self) -> Option<OffsetDateTime> {
        self.0
    }

    /// `self - earlier` in nanoseconds (Go's `time.Sub`), 0 if either side is the zero time.
    /// Saturates at the bounds of `i64`, like Go's `Duration`.
    pub fn nanos_since(&self, earlier: DateTime) -> i64 {
        match (self.0, earlier.0) {
            (Some(a), Some(b)) => {
                let n = (a - b).whole_nanoseconds();
                n.clamp(i64::MIN as i128, i64::MAX as i128) as i64
            }
            _ => 0,
        }
    }

    /// Parses RFC 3339 with any fractional precision and any offset; `""` is the zero time.
    pub fn parse(text: &str) -> Result<Self, DateTimeError> {
        if text.is_empty() {
            return Ok(DateTime(None));
        }
        OffsetDateTime::parse(text, &Rfc3339)
            .map(Self::from_offset)
            .map_err(|source| DateTimeError {
                text: text.to_owned(),
                source,
            })
    }
}

fn go_zero() -> OffsetDateTime {
    time::macros::datetime!(0001-01-01 00:00:00 UTC)
}

impl From<OffsetDateTime> for DateTime {
    fn from(t: OffsetDateTime) -> Self {
        Self::from_offset(t)
    }
}

impl fmt::Display for DateTime {
    /// Fn's layout: milliseconds truncated (not rounded), as Go's `.000` does; always `Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0.unwrap_or_else(go_zero);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

impl FromStr for DateTime {
    type Err = DateTimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for DateTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DateTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DateTime;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DateTime, E> {
                DateTime::parse(v).map_err(E::custom)
            }
            // Go leaves a time untouched when it decodes `null`: that is the zero time here.
            fn visit_unit<E: de::Error>(self) -> Result<DateTime, E> {
                Ok(DateTime::ZERO)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn zero_prints_like_go() {
        assert_eq!(DateTime::default().to_string(), ZERO_TEXT);
        assert!(DateTime::default().is_zero());
        assert_eq!(
            serde_json::to_string(&DateTime::ZERO).unwrap(),
            format!("\"{ZERO_TEXT}\"")
        );
    }

    #[test]
    fn prints_milliseconds_truncated_in_utc() {
        let t = DateTime::from(datetime!(2026-11-28 08:35:10.245999 +02:00));
        assert_eq!(t.to_string(), "2026-11-28T06:35:10.245Z");
        let t = DateTime::from(datetime!(2026-01-02 03:04:05 UTC));
        assert_eq!(t.to_string(), "2026-01-02T03:04:05.000Z");
    }

    #[test]
    fn parses_every_precision_and_offset() {
        let want = datetime!(2026-11-28 06:35:10 UTC);
        for (text, extra_nanos) in [
            ("2026-11-28T06:35:10Z", 0),
            ("2026-11-28T06:35:10.245Z", 245_000_000),
            ("2026-11-28T06:35:10.245123Z", 245_123_000),
            ("2026-11-28T06:35:10.245123456Z", 245_123_456),
            ("2026-11-28T08:35:10.245+02:00", 245_000_000),
            ("2026-11-28T01:35:10.245-05:00", 245_000_000),
        ] {
            let t = DateTime::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let want = want + time::Duration::nanoseconds(extra_nanos);
            assert_eq!(t.as_offset(), Some(want), "{text}");
            assert_eq!(t.as_offset().unwrap().offset(), UtcOffset::UTC, "{text}");
        }
    }

    #[test]
    fn empty_and_go_zero_parse_as_zero() {
        assert!(DateTime::parse("").unwrap().is_zero());
        assert!(DateTime::parse(ZERO_TEXT).unwrap().is_zero());
        assert!(DateTime::parse("0001-01-01T00:00:00Z").unwrap().is_zero());
        let d: DateTime = serde_json::from_str("\"\"").unwrap();
        assert!(d.is_zero());
        let d: DateTime = serde_json::from_str("null").unwrap();
        assert!(d.is_zero());
    }

    #[test]
    fn rejects_garbage_with_the_text() {
        let err = DateTime::parse("yesterday").unwrap_err();
        assert!(err.to_string().contains("\"yesterday\""), "{err}");
        let err = serde_json::from_str::<DateTime>("12").unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }

    #[test]
    fn json_round_trip_keeps_millis() {
        let text = "\"2026-11-28T06:35:10.245Z\"";
        let d: DateTime = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), text);
    }

    #[test]
    fn now_is_recent_and_nanos_since() {
        let a = DateTime::now();
        assert!(!a.is_zero());
        let b = DateTime::from(a.as_offset().unwrap() + time::Duration::milliseconds(1500));
        assert_eq!(b.nanos_since(a), 1_500_000_000);
        assert_eq!(a.nanos_since(b), -1_500_000_000);
        assert_eq!(b.nanos_since(DateTime::ZERO), 0);
        assert!(a < b);
    }
}
