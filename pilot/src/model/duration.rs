//! Durations as Istio config spells them.
//!
//! Istio's CRDs carry `google.protobuf.Duration` fields as strings in Go
//! `time.ParseDuration` syntax (`"1s"`, `"100ms"`, `"1.5s"`, `"1h2m3s"`). This
//! module owns parsing and printing them; range rules (for example "at least
//! 1ms") belong to each kind's validation, not here.
//!
//! Output is canonical protobuf-JSON form: whole seconds followed by 0, 3, 6 or
//! 9 fractional digits and `s` (`"1.500s"`, `"0.100s"`, `"3600s"`), which both
//! Istio and this parser read back unchanged.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration read from a Go-style duration string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason}; expected a number followed by a unit (ns, us, ms, s, m, h), like \"1.5s\" or \"100ms\""
)]
pub struct ParseDurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    /// The duration as a `std::time::Duration`.
    pub fn as_std(&self) -> std::time::Duration {
        self.0
    }

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// Parses Go `time.ParseDuration` syntax, rejecting negative values.
    pub fn parse(input: &str) -> Result<Self, ParseDurationError> {
        let fail = |reason| ParseDurationError {
            input: input.to_string(),
            reason,
        };
        let mut s = input.trim();
        if s.is_empty() {
            return Err(fail("it is empty"));
        }
        if let Some(rest) = s.strip_prefix('+') {
            s = rest;
        } else if s.starts_with('-') {
            return Err(fail("durations cannot be negative"));
        }
        if s == "0" {
            return Ok(Self::default());
        }
        let mut total: u128 = 0;
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            // Number: digits, optional '.', digits.
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let int_part = &s[start..i];
            let mut frac_part = "";
            if i < bytes.len() && bytes[i] == b'.' {
                i += 1;
                let fstart = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                frac_part = &s[fstart..i];
            }
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(fail("a number is missing"));
            }
            let ustart = i;
            while i < bytes.len() && !bytes[i].is_ascii_digit() && bytes[i] != b'.' {
                i += 1;
            }
            let unit_nanos: u128 = match &s[ustart..i] {
                "ns" => 1,
                "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "" => return Err(fail("a unit is missing")),
                _ => return Err(fail("the unit is unknown")),
            };
            let int: u128 = if int_part.is_empty() {
                0
            } else {
                int_part
                    .parse()
                    .map_err(|_| fail("the number is too large"))?
            };
            let mut nanos = int
                .checked_mul(unit_nanos)
                .ok_or_else(|| fail("the number is too large"))?;
            // Fractional digits beyond nanosecond resolution are dropped, as Go does.
            let mut scale = unit_nanos;
            for d in frac_part.bytes() {
                scale /= 10;
                if scale == 0 {
                    break;
                }
                nanos += u128::from(d - b'0') * scale;
            }
            total = total
                .checked_add(nanos)
                .ok_or_else(|| fail("the number is too large"))?;
        }
        if total > i64::MAX as u128 {
            return Err(fail("the number is too large"));
        }
        let secs = (total / 1_000_000_000) as u64;
        let sub = (total % 1_000_000_000) as u32;
        Ok(Self(std::time::Duration::new(secs, sub)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, "{secs}.{:03}s", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            write!(f, "{secs}.{:06}s", nanos / 1_000)
        } else {
            write!(f, "{secs}.{nanos:09}s")
        }
    }
}

impl std::str::FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"1.5s\" or \"100ms\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    fn p(s: &str) -> Std {
        Duration::parse(s).unwrap().as_std()
    }

    #[test]
    fn parses_go_syntax() {
        assert_eq!(p("1s"), Std::from_secs(1));
        assert_eq!(p("100ms"), Std::from_millis(100));
        assert_eq!(p("1.5s"), Std::from_millis(1500));
        assert_eq!(p("0.5s"), Std::from_millis(500));
        assert_eq!(p(".5s"), Std::from_millis(500));
        assert_eq!(p("1h2m3s"), Std::from_secs(3723));
        assert_eq!(p("10us"), Std::from_micros(10));
        assert_eq!(p("10µs"), Std::from_micros(10));
        assert_eq!(p("7ns"), Std::from_nanos(7));
        assert_eq!(p("0"), Std::ZERO);
        assert_eq!(p("0s"), Std::ZERO);
        assert_eq!(p("1.5m"), Std::from_secs(90));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["", "5 seconds", "5", "-1s", "1x", "s", "1.s.", "ms"] {
            let err = Duration::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("expected a number followed by a unit"),
                "{bad}: {err}"
            );
        }
        let err = Duration::parse("5 seconds").unwrap_err().to_string();
        assert!(err.starts_with("invalid duration \"5 seconds\""), "{err}");
        assert!(
            Duration::parse("-1s")
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        assert!(Duration::parse("9999999999h").is_err());
    }

    #[test]
    fn prints_canonical_and_round_trips() {
        for (input, out) in [
            ("1.5s", "1.500s"),
            ("100ms", "0.100s"),
            ("1h", "3600s"),
            ("10us", "0.000010s"),
            ("3ns", "0.000000003s"),
        ] {
            let d = Duration::parse(input).unwrap();
            assert_eq!(d.to_string(), out);
            assert_eq!(Duration::parse(out).unwrap(), d);
        }
    }

    #[test]
    fn serde() {
        let d: Duration = serde_json::from_str("\"250ms\"").unwrap();
        assert_eq!(d.as_std(), Std::from_millis(250));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"0.250s\"");
        let err = serde_json::from_str::<Duration>("\"5 seconds\"").unwrap_err();
        assert!(err.to_string().contains("invalid duration \"5 seconds\""));
        assert!(serde_json::from_str::<Duration>("5").is_err());
    }
}
