//! Durations written as strings ("250ms", "10s", "5m").

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A duration parsed from a human string such as "250ms", "10s" or "5m".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration \"{s}\" ({e}); write it like \"250ms\", \"10s\" or \"5m\""
            ))
        })
    }
}

impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}
