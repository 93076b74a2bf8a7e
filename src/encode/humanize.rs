//! Value styles of the `seed` format, kept byte-compatible with the original Python tool.

use serde::Serializer;

const SYMBOLS: [char; 9] = ['B', 'K', 'M', 'G', 'T', 'P', 'E', 'Z', 'Y'];

/// Humanized bytes, 1024-based: the largest symbol whose threshold is ≤ `n`, then
/// `"%.1f"` and the symbol, no space (`1280` → `1.2K`). Rust's `{:.1}` rounds like Python's
/// `%` formatting (on the exact binary value), which is what keeps the strings identical.
pub fn bytes(n: u64) -> String {
    humanize(n as f64)
}

/// [`bytes`] on a float, so sizes beyond `u64` (up to yottabytes) still get their symbol.
fn humanize(value: f64) -> String {
    let exponent = SYMBOLS
        .iter()
        .enumerate()
        .rev()
        .find(|(i, _)| value >= 1024f64.powi(*i as i32))
        .map_or(0, |(i, _)| i);
    format!(
        "{:.1}{}",
        value / 1024f64.powi(exponent as i32),
        SYMBOLS[exponent]
    )
}

/// A percent string with one decimal, e.g. `"42.3%"`.
pub fn percent(p: f64) -> String {
    format!("{p:.1}%")
}

/// Rounds to one decimal for the numeric percent fields of `seed` (`34.3`). Formatting and
/// re-parsing rounds exactly like Python's `round(x, 1)` does for display purposes.
pub fn one_decimal(x: f64) -> f64 {
    format!("{x:.1}").parse().unwrap_or(x)
}

/// How `seed` shows a capacity (memory, swap, a filesystem): humanized total and available
/// bytes, and the share used as a percent string, as the original tool did.
#[derive(serde::Serialize)]
pub struct SeedUsage {
    #[serde(serialize_with = "ser_bytes")]
    pub total: u64,
    #[serde(serialize_with = "ser_percent")]
    pub used: f64,
    #[serde(serialize_with = "ser_bytes")]
    pub available: u64,
}

/// `serialize_with` adapter for [`bytes`].
pub fn ser_bytes<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&bytes(*n))
}

/// `serialize_with` adapter for [`percent`].
pub fn ser_percent<S: Serializer>(p: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&percent(*p))
}

/// `serialize_with` adapter for [`one_decimal`].
pub fn ser_one_decimal<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(one_decimal(*x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanized_bytes_golden_values() {
        let cases: [(u64, &str); 9] = [
            (0, "0.0B"),
            (1023, "1023.0B"),
            (1024, "1.0K"),
            (1280, "1.2K"),
            (10_000, "9.8K"),
            (1_048_575, "1024.0K"),
            (1_048_576, "1.0M"),
            (16_535_624_704, "15.4G"),
            (u64::MAX, "16.0E"),
        ];
        for (n, want) in cases {
            assert_eq!(bytes(n), want, "bytes({n})");
        }
    }

    #[test]
    fn sizes_beyond_u64_reach_yotta() {
        assert_eq!(humanize(2f64.powi(80)), "1.0Y");
        assert_eq!(humanize(2f64.powi(90)), "1024.0Y");
    }

    #[test]
    fn percent_strings_round_like_python() {
        assert_eq!(percent(42.25), "42.2%"); // 42.25 is 42.24999.. in binary, as in Python
        assert_eq!(percent(0.0), "0.0%");
        assert_eq!(percent(100.0), "100.0%");
        assert_eq!(percent(2.96), "3.0%");
    }

    #[test]
    fn one_decimal_rounds_for_display() {
        assert_eq!(one_decimal(34.25), 34.2);
        assert_eq!(one_decimal(27.649), 27.6);
        assert_eq!(one_decimal(800.04), 800.0);
    }
}
