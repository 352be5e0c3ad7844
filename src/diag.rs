//! Diagnostics that point into a source file: `file:line:col: message`.

use std::fmt;

/// One problem found in a file, with its position. Line and column are 1-based; the column counts
/// characters, not bytes. A diagnostic about the whole file has no position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl Diagnostic {
    pub fn at(file: &str, source: &str, offset: usize, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_owned(),
            position: Some(line_col(source, offset)),
            message: message.into(),
        }
    }

    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_owned(),
            position: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{}:{}: {}", self.file, line, col, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// 1-based line and character column of a byte offset (clamped to the text).
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// One line that is safe to print on a terminal: line breaks become spaces, and every other
/// control character (C0, DEL, C1) and every bidirectional-formatting character is shown as a
/// `\u{..}` escape, so text an agent or approver wrote cannot move the cursor, recolour the
/// screen or reorder what a human reads.
pub fn terminal_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            c if c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// Renders text a user wrote (keys, values) for an error message: quoted, with control and
/// non-printing characters escaped, and cut at 80 characters, so that a message is always one
/// line and nothing reaches a terminal as an escape sequence.
pub fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for (i, c) in text.chars().enumerate() {
        if i == 80 {
            out.push('…');
            break;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn terminal_lines_escape_controls_and_bidi() {
        assert_eq!(
            super::terminal_line("a\nb\x1b[31mred\u{202e}txt\u{9b}"),
            "a b\\u{1b}[31mred\\u{202e}txt\\u{9b}"
        );
        assert_eq!(super::terminal_line("plain é"), "plain é");
    }

    use super::*;

    #[test]
    fn positions() {
        let s = "ab\ncdé\nx";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 2), (1, 3));
        assert_eq!(line_col(s, 3), (2, 1));
        assert_eq!(line_col(s, 7), (2, 4), "column counts characters");
        assert_eq!(line_col(s, 6), (2, 3), "inside a character: clamps back");
        assert_eq!(line_col(s, 99), (3, 2));
    }

    #[test]
    fn display() {
        let d = Diagnostic::at("p.toml", "a\nb", 2, "bad");
        assert_eq!(d.to_string(), "p.toml:2:1: bad");
        assert_eq!(
            Diagnostic::whole_file("p.toml", "bad").to_string(),
            "p.toml: bad"
        );
    }

    #[test]
    fn quoting_escapes_control_characters() {
        assert_eq!(quoted("a\"b"), r#""a\"b""#);
        assert_eq!(quoted("x\u{1b}[31m\ny"), r#""x\u{1b}[31m\ny""#);
        assert_eq!(quoted(&"a".repeat(100)).chars().count(), 83);
    }
}
