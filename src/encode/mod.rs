//! Encodings of a snapshot. A snapshot is encoded once per tick into shared bytes that every
//! sink (and every TCP subscriber) reuses.
//!
//! The wire format is one JSON object per snapshot: `"timestamp"` first (RFC 3339, UTC,
//! milliseconds), then one key per source that succeeded, in the configured order. The line
//! terminator is the sink's business (CRLF for TCP, LF for stdout and files), so it is not
//! part of the encoded bytes.

pub mod humanize;

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use serde::ser::{SerializeMap, Serializer};

use crate::model::{rfc3339_millis, Snapshot};

/// How snapshots are rendered. See `docs/FORMAT.md` for the field lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The original tool's field names and value styles (humanized sizes, percent strings).
    Seed,
    /// Plain numbers in fixed units under unit-suffixed names, plus counters and rates.
    Raw,
}

impl Format {
    pub const NAMES: &'static str = "seed, raw";

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "seed" => Some(Format::Seed),
            "raw" => Some(Format::Raw),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Seed => "seed",
            Format::Raw => "raw",
        })
    }
}

/// One encoded snapshot, cheap to clone: every sink shares the same bytes.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Tick number since start, 0 for the first snapshot.
    pub seq: u64,
    pub timestamp: SystemTime,
    /// The JSON object, without a line terminator.
    pub json: Bytes,
}

/// Renders `snapshot` as one JSON object.
pub fn encode(snapshot: &Snapshot, format: Format) -> Bytes {
    let mut out = Vec::with_capacity(1024);
    let mut ser = serde_json::Serializer::new(&mut out);
    let mut map = ser
        .serialize_map(Some(snapshot.sections.len() + 1))
        .expect("writing to a Vec cannot fail");
    let written =
        map.serialize_entry("timestamp", &rfc3339_millis(snapshot.timestamp))
            .and_then(|()| {
                snapshot.sections.iter().try_for_each(|(name, section)| {
                    map.serialize_entry(name, &section.view(format))
                })
            })
            .and_then(|()| map.end());
    // Sections hold only numbers, strings and maps; serde_json fails only on non-string map
    // keys, which no section produces.
    written.expect("sections serialize to JSON");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Section;
    use std::time::{Duration, UNIX_EPOCH};

    /// A section whose two views differ, to see which one the encoder picked.
    struct Views(&'static str);

    impl Section for Views {
        fn view(&self, format: Format) -> Box<dyn erased_serde::Serialize + '_> {
            Box::new(format!("{}-{format}", self.0))
        }
    }

    #[test]
    fn timestamp_first_then_sections_in_configured_order() {
        let snapshot = Snapshot {
            timestamp: UNIX_EPOCH + Duration::from_millis(1_795_694_400_042),
            sections: vec![
                ("zeta", Box::new(Views("z"))),
                ("alpha", Box::new(Views("a"))),
            ],
        };
        assert_eq!(
            encode(&snapshot, Format::Seed),
            r#"{"timestamp":"2026-11-26T12:00:00.042Z","zeta":"z-seed","alpha":"a-seed"}"#
        );
        assert_eq!(
            encode(&snapshot, Format::Raw),
            r#"{"timestamp":"2026-11-26T12:00:00.042Z","zeta":"z-raw","alpha":"a-raw"}"#
        );
    }

    #[test]
    fn format_names_round_trip() {
        for f in [Format::Seed, Format::Raw] {
            assert_eq!(Format::parse(&f.to_string()), Some(f));
        }
        assert_eq!(Format::parse("json"), None);
    }
}
