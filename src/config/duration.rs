//! Durations written as strings ("250ms", "10s", "5m").
//!
//! Guarantee: a [`Dur`] read from a config is at most [`Dur::MAX`], so it can
//! be added to any clock reading, or turned into milliseconds, without
//! overflow.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A duration parsed from a human string such as "250ms", "10s" or "5m".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// The longest duration a config may give: a year. Longer ones are
    /// typos, values near `Duration::MAX` overflow the clock arithmetic
    /// (`Instant + Duration`) that timeouts are made of, and a year stays
    /// within the reach of tokio's timer (about two years).
    pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration \"{s}\" ({e}); write it like \"250ms\", \"10s\" or \"5m\""
            ))
        })?;
        if d > Dur::MAX {
            return Err(serde::de::Error::custom(format!(
                "duration \"{s}\" is too long: at most a year (\"365d\")"
            )));
        }
        Ok(Dur(d))
    }
}

impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Dur, String> {
        #[derive(serde::Deserialize)]
        struct T {
            d: Dur,
        }
        toml::from_str::<T>(&format!("d = \"{s}\"\n"))
            .map(|t| t.d)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn durations_up_to_a_year_are_taken() {
        assert_eq!(parse("250ms"), Ok(Dur(Duration::from_millis(250))));
        assert_eq!(parse("365d"), Ok(Dur(Dur::MAX)));
    }

    #[test]
    fn durations_that_would_overflow_clock_arithmetic_are_refused() {
        for s in ["366d", "100000000000000000s", "584542046090y"] {
            let e = parse(s).unwrap_err();
            assert!(
                e.contains("too long") || e.contains("invalid duration"),
                "{s}: {e}"
            );
        }
        assert!(parse("100000000000000000s")
            .unwrap_err()
            .contains("too long"));
    }
}
