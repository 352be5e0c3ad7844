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

/// The one rule for text a human reads on a terminal (`approvals list`, `approve`, `audit tail`,
/// `audit show`, error messages): every control character (C0, DEL, C1), the line and
/// paragraph separators, and every invisible formatting character (bidirectional controls,
/// zero-width characters, the soft hyphen, the byte-order mark, tag characters, ...: Unicode's
/// category Cf) must be escaped, so that text an agent wrote cannot move the cursor, recolour the
/// screen, hide characters or reorder what a human reads.
pub fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{34f}'
                | '\u{115f}'..='\u{1160}'
                | '\u{3164}'
                | '\u{ffa0}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{e0100}'..='\u{e01ef}'
                | '\u{600}'..='\u{605}'
                | '\u{61c}'
                | '\u{6dd}'
                | '\u{70f}'
                | '\u{890}'..='\u{891}'
                | '\u{8e2}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )
}

/// One line that is safe to print on a terminal: line breaks become spaces, and every other
/// character [`must_escape`] names is shown as a `\u{..}` escape.
pub fn terminal_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            c if must_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// JSON text made safe for a terminal and still valid JSON: every character [`must_escape`]
/// names is written as `\uXXXX` (a surrogate pair above U+FFFF). Such characters can only occur
/// inside strings, where the escape means the same; line breaks between tokens (pretty-printed
/// JSON) are kept.
pub fn terminal_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c != '\n' && must_escape(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
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
            c if must_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
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

    /// Review point 6: bidi, zero-width and other invisible characters never reach a terminal
    /// raw, whichever renderer prints them.
    #[test]
    fn invisible_and_reordering_characters_are_escaped_everywhere() {
        let hostile = [
            ('\u{202e}', "right-to-left override"),
            ('\u{2066}', "left-to-right isolate"),
            ('\u{200b}', "zero-width space"),
            ('\u{200d}', "zero-width joiner"),
            ('\u{2060}', "word joiner"),
            ('\u{feff}', "byte-order mark"),
            ('\u{ad}', "soft hyphen"),
            ('\u{61c}', "Arabic letter mark"),
            ('\u{2028}', "line separator"),
            ('\u{e0041}', "tag character"),
            ('\u{1b}', "escape"),
            ('\u{9b}', "C1 control sequence introducer"),
        ];
        for (c, what) in hostile {
            let text = format!("approve{c}me");
            for (renderer, out) in [
                ("terminal_line", terminal_line(&text)),
                ("quoted", quoted(&text)),
                (
                    "terminal_json",
                    terminal_json(&serde_json::to_string(&text).unwrap()),
                ),
            ] {
                assert!(
                    !out.contains(c),
                    "{renderer} let a raw {what} through: {out:?}"
                );
            }
            let json = terminal_json(&serde_json::to_string(&text).unwrap());
            assert_eq!(
                serde_json::from_str::<String>(&json).unwrap(),
                text,
                "{what}: still the same JSON"
            );
        }
        assert_eq!(terminal_line("a\u{200b}b"), "a\\u{200b}b");
        assert_eq!(terminal_json("\"a\u{e0041}\""), "\"a\\udb40\\udc41\"");
        assert_eq!(quoted("é ü 中"), "\"é ü 中\"");
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
