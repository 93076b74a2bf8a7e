//! Text from outside (snapd's answers, snap keys and values, flags) shown in a message: cut
//! to [`MAX_CHARS`] characters with "…", and escaped so that it stays on one line. A 100 MB
//! value from snapd once made a 200 MB log line, and a key holding a line break forged a
//! second one.

use std::borrow::Cow;

/// How many characters of an outside text a message shows.
pub const MAX_CHARS: usize = 200;

/// The byte offset where `text` is cut, if it is longer than [`MAX_CHARS`] characters.
fn cut(text: &str) -> Option<usize> {
    text.char_indices().nth(MAX_CHARS).map(|(at, _)| at)
}

/// `text` in double quotes, escaped as `{:?}` escapes a string, with "…" before the closing
/// quote when it was cut.
pub fn quoted(text: &str) -> String {
    match cut(text) {
        Some(at) => {
            let escaped = format!("{:?}", &text[..at]);
            format!("{}…\"", &escaped[..escaped.len() - 1])
        }
        None => format!("{text:?}"),
    }
}

/// A name as it is (`port`, `file.max-size`) when it is a short run of lower-case letters,
/// digits, `.`, `-` and `_`; otherwise [`quoted`], so it cannot pass for something else.
pub fn name(text: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c);
    match !text.is_empty() && cut(text).is_none() && text.chars().all(plain) {
        true => Cow::Borrowed(text),
        false => Cow::Owned(quoted(text)),
    }
}

/// Prose such as snapd's error messages: cut, and control characters escaped (`\n`), so
/// it reads as written but stays on one line.
pub fn prose(text: &str) -> String {
    let kept = &text[..cut(text).unwrap_or(text.len())];
    let mut out = String::with_capacity(kept.len() + 3);
    for c in kept.chars() {
        match c.is_control() {
            true => out.extend(c.escape_debug()),
            false => out.push(c),
        }
    }
    if kept.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_text_is_shown_whole() {
        assert_eq!(quoted("a,bogus"), r#""a,bogus""#);
        assert_eq!(quoted("{\"a\":1}"), r#""{\"a\":1}""#);
        assert_eq!(name("group.max-size"), "group.max-size");
        assert_eq!(name("a\nkey=1"), r#""a\nkey=1""#);
        assert_eq!(name(""), r#""""#);
        assert_eq!(prose("snap \"x\" has no\n\"y\""), r#"snap "x" has no\n"y""#);
    }

    #[test]
    fn long_text_is_cut_at_a_character_with_an_ellipsis() {
        let long = "é".repeat(1000);
        let expected = format!("\"{}…\"", "é".repeat(MAX_CHARS));
        assert_eq!(quoted(&long), expected);
        assert_eq!(name(&long), expected);
        assert_eq!(prose(&long), format!("{}…", "é".repeat(MAX_CHARS)));
        assert_eq!(name(&"a".repeat(MAX_CHARS)), "a".repeat(MAX_CHARS));
    }

    proptest! {
        /// Whatever the text: one line, bounded, and a prefix of the original when unquoted.
        #[test]
        fn any_text_gives_one_bounded_line(text in ".{0,300}|[\\x00-\\x1f\\x7f-\\u{a0}]{0,300}") {
            for shown in [quoted(&text), name(&text).into_owned(), prose(&text)] {
                prop_assert!(!shown.contains(['\n', '\r']), "{shown:?}");
                // Each character escapes to at most 10 (`\u{10ffff}`), plus quotes and "…".
                prop_assert!(shown.chars().count() <= MAX_CHARS * 10 + 3, "{shown:?}");
            }
        }
    }
}
