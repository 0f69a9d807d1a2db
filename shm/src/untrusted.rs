//! Text from outside (a file's header, a worker's output) shown in a message for a
//! person: control characters escaped, so a file or a worker cannot move the cursor,
//! recolour or clear a terminal, and cut to a bound, so a 50 MB header makes a
//! one-line error, not a 50 MB one. Every procpool crate shows such text through
//! [`quote`] or [`excerpt`] (this crate is the one they all depend on).

use std::fmt::Write;

/// How much of an untrusted text a message shows, in bytes of the original.
pub const EXCERPT_BYTES: usize = 300;

/// `text` in double quotes, escaped and cut at [`EXCERPT_BYTES`]: for untrusted text
/// inside one of procpool's own messages.
pub fn quote(text: impl AsRef<[u8]>) -> String {
    format!("\"{}\"", excerpt(text.as_ref(), EXCERPT_BYTES))
}

/// `text` with its control characters (C0, DEL, C1; tab kept) and bytes that are not
/// UTF-8 escaped (`\n`, `\u{1b}`, `\xff`), cut after `max` bytes of the original with
/// a mark saying how long it was.
pub fn excerpt(text: &[u8], max: usize) -> String {
    let shown = &text[..text.len().min(max)];
    let mut out = String::with_capacity(shown.len() + 16);
    for chunk in shown.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\t' => out.push('\t'),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    if shown.len() < text.len() {
        let _ = write!(out, "… ({} bytes in all)", text.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bad_utf8_are_escaped() {
        assert_eq!(
            excerpt(b"a\x1b[2Jb\r\n\tc\x7f\xc2\x9b\xff", 100),
            "a\\u{1b}[2Jb\\r\\n\tc\\u{7f}\\u{9b}\\xff"
        );
        assert_eq!(quote("µ ok"), "\"µ ok\"");
    }

    #[test]
    fn long_text_is_cut_and_says_its_length() {
        let long = "x".repeat(50_000_000);
        let quoted = quote(&long);
        assert!(quoted.len() < EXCERPT_BYTES + 40, "{}", quoted.len());
        assert!(quoted.ends_with("… (50000000 bytes in all)\""), "{quoted}");
        // A cut inside a character shows its first bytes escaped, never a panic.
        assert_eq!(excerpt("éé".as_bytes(), 3), "é\\xc3… (4 bytes in all)");
    }
}
