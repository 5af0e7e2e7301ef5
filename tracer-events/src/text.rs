//! Escaping for text outputs. Strings from the traced system (a thread's
//! comm, which any unprivileged process sets for itself; VM names; command
//! lines; log lines) can hold terminal escapes and newlines: written raw to
//! a terminal they set its title, clear the screen or forge trace lines.
//! Every text output (table, ftrace text, live view, doctor) passes them
//! through [`escape`]; JSON outputs keep the exact value (serde escapes
//! control characters there). Also the number formats every text
//! output shares ([`rate`]).

use std::{borrow::Cow, fmt::Write as _};

/// Whether `c` is a control character: C0 (including `\n`, `\r`, `\t` and
/// ESC), DEL, or C1 (U+0080..U+009F, which some terminals obey as CSI).
fn is_control(c: char) -> bool {
    c.is_control()
}

/// A per-second rate as the tables and the live view show it: whole
/// numbers without decimals, one decimal below 10 where it has one.
pub fn rate(value: f64) -> String {
    if value < 10.0 && value.fract() != 0.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// `text` with every control character written as `\xNN` (C0, DEL) or
/// `\u{NNNN}` (C1) and every backslash doubled, so an escaped string is
/// never mistaken for one that held the escape sequence literally.
/// Borrowed when there is nothing to escape.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| is_control(c) || c == '\\') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x80 && is_control(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_control(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Appends one line to `out`: `line` escaped, then `\n`. For outputs built
/// line by line, where every value in the line may come from the traced
/// system.
pub fn push_line(out: &mut String, line: &str) {
    out.push_str(&escape(line));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn terminal_escapes_newlines_and_c1_controls_are_made_visible() {
        // Sets the title, clears the screen, then forges a trace line.
        let comm = "\x1b]0;pwned\x07\x1b[2J\nCPU 0/KVM-1 [000]";
        assert_eq!(
            escape(comm),
            "\\x1b]0;pwned\\x07\\x1b[2J\\x0aCPU 0/KVM-1 [000]"
        );
        assert_eq!(escape("a\u{9b}b\u{7f}\t\r"), "a\\u{009b}b\\x7f\\x09\\x0d");
        assert_eq!(escape("C:\\x1b"), "C:\\\\x1b");
        assert!(matches!(escape("CPU 0/KVM"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape("ünïcode ok"), "ünïcode ok");
    }
}
