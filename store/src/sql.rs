//! A small SQL scanner: just enough of ClickHouse's lexical rules to tell
//! statements apart, find an INSERT's trailing `FORMAT name` and the first
//! keyword, without being fooled by quotes or comments.
//!
//! Lexical rules follow ClickHouse's docs ("Syntax"): strings in single quotes
//! with `\` escapes and `''` doubling, identifiers in double quotes or
//! backticks, `--`, `#` and `/* */` comments.

/// A piece of a statement that matters to the HTTP interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// A bare word: keyword, identifier, number.
    Word { start: usize, end: usize },
    /// A quoted string or identifier.
    Quoted { start: usize, end: usize },
    Semicolon { at: usize },
    /// Any other punctuation.
    Symbol { at: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScanError {
    #[error("unterminated quoted string or identifier starting at byte {0}")]
    UnterminatedQuote(usize),
    #[error("unterminated comment starting at byte {0}")]
    UnterminatedComment(usize),
}

/// Splits `sql` into tokens, skipping whitespace and comments.
pub(crate) fn scan(sql: &str) -> Result<Vec<Token>, ScanError> {
    let bytes = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if bytes.get(i + 1) == Some(&b'-') => i = skip_line(bytes, i),
            b'#' => i = skip_line(bytes, i),
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let close = sql[i + 2..].find("*/").ok_or(ScanError::UnterminatedComment(i))?;
                i = i + 2 + close + 2;
            }
            b'\'' | b'"' | b'`' => {
                let end = skip_quoted(bytes, i)?;
                tokens.push(Token::Quoted { start: i, end });
                i = end;
            }
            b';' => {
                tokens.push(Token::Semicolon { at: i });
                i += 1;
            }
            c if is_word_byte(c) => {
                let start = i;
                while i < bytes.len() && is_word_byte(bytes[i]) {
                    i += 1;
                }
                tokens.push(Token::Word { start, end: i });
            }
            _ => {
                tokens.push(Token::Symbol { at: i });
                i += 1;
            }
        }
    }
    Ok(tokens)
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c >= 0x80
}

fn skip_line(bytes: &[u8], from: usize) -> usize {
    bytes[from..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| from + p + 1)
}

/// Returns the index just past the closing quote.
fn skip_quoted(bytes: &[u8], start: usize) -> Result<usize, ScanError> {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b if b == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Ok(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    Err(ScanError::UnterminatedQuote(start))
}

/// The text of a word token, for keyword comparisons.
pub(crate) fn word<'a>(sql: &'a str, token: &Token) -> Option<&'a str> {
    match token {
        Token::Word { start, end } => Some(&sql[*start..*end]),
        _ => None,
    }
}

/// The number of non-empty statements (text between semicolons).
pub(crate) fn statement_count(tokens: &[Token]) -> usize {
    tokens
        .split(|t| matches!(t, Token::Semicolon { .. }))
        .filter(|statement| !statement.is_empty())
        .count()
}

/// The first keyword of the statement, upper-cased, looking through opening
/// parentheses (`(SELECT 1)`).
pub(crate) fn first_keyword(sql: &str, tokens: &[Token]) -> Option<String> {
    tokens
        .iter()
        .find(|t| !matches!(t, Token::Symbol { at } if sql.as_bytes()[*at] == b'('))
        .and_then(|t| word(sql, t))
        .map(str::to_ascii_uppercase)
}

/// Whether two consecutive words `a b` occur anywhere (case-insensitive).
pub(crate) fn has_word_pair(sql: &str, tokens: &[Token], a: &str, b: &str) -> bool {
    tokens.windows(2).any(|pair| {
        matches!((word(sql, &pair[0]), word(sql, &pair[1])),
            (Some(x), Some(y)) if x.eq_ignore_ascii_case(a) && y.eq_ignore_ascii_case(b))
    })
}

/// An INSERT statement split where its data may begin.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct InsertShape<'a> {
    /// Everything before the statement's own `SETTINGS` clause or, without
    /// one, before the `FORMAT` keyword.
    pub head: &'a str,
    /// The statement's own settings (`a = 1, b = 2`), if it has a SETTINGS clause.
    pub settings: Option<&'a str>,
    /// The format name.
    pub format: &'a str,
    /// Inline data after `FORMAT name` and one line break, if any.
    pub inline_data: &'a [u8],
}

/// Finds `INSERT ... FORMAT name [data]`. Only the bytes up to the format
/// name are read and must be UTF-8, so binary inline data is never scanned.
pub(crate) fn insert_with_format(text: &[u8]) -> Option<InsertShape<'_>> {
    let lead = text.iter().position(|b| !b.is_ascii_whitespace())?;
    if !text.get(lead..lead + 6)?.eq_ignore_ascii_case(b"INSERT") {
        return None;
    }
    let mut i = 0;
    let mut format_at: Option<usize> = None;
    let mut settings_at: Option<usize> = None;
    let mut depth = 0usize;
    while i < text.len() {
        match text[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'-' if text.get(i + 1) == Some(&b'-') => i = skip_line(text, i),
            b'/' if text.get(i + 1) == Some(&b'*') => {
                i = i + 2 + text[i + 2..].windows(2).position(|w| w == b"*/")? + 2;
            }
            b'\'' | b'"' | b'`' => {
                i = skip_quoted(text, i).ok()?;
                format_at = None;
            }
            c if is_word_byte(c) => {
                let start = i;
                while i < text.len() && is_word_byte(text[i]) {
                    i += 1;
                }
                let word = &text[start..i];
                if let Some(at) = format_at {
                    let mut data_start = i;
                    while matches!(text.get(data_start), Some(b' ' | b'\t')) {
                        data_start += 1;
                    }
                    if text[data_start..].starts_with(b"\r\n") {
                        data_start += 2;
                    } else if text[data_start..].starts_with(b"\n") {
                        data_start += 1;
                    }
                    let head_end = settings_at.unwrap_or(at);
                    let settings = match settings_at {
                        Some(from) => Some(std::str::from_utf8(&text[from + "SETTINGS".len()..at]).ok()?.trim()),
                        None => None,
                    };
                    return Some(InsertShape {
                        head: std::str::from_utf8(&text[..head_end]).ok()?.trim_end(),
                        settings,
                        format: std::str::from_utf8(word).ok()?,
                        inline_data: &text[data_start..],
                    });
                }
                if depth == 0 && word.eq_ignore_ascii_case(b"SETTINGS") {
                    settings_at = Some(start);
                } else if word.eq_ignore_ascii_case(b"FORMAT") {
                    format_at = Some(start);
                } else if word.eq_ignore_ascii_case(b"VALUES") || word.eq_ignore_ascii_case(b"SELECT") {
                    return None;
                }
            }
            c => {
                // `FORMAT` must be followed directly by the name: `(format)` is a column.
                format_at = None;
                match c {
                    b'(' => depth += 1,
                    b')' => depth = depth.saturating_sub(1),
                    _ => {}
                }
                i += 1;
            }
        }
    }
    None
}

/// Quotes an identifier with backticks, escaping as ClickHouse does.
pub fn quote_identifier(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        match c {
            '`' => out.push_str("\\`"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('`');
    out
}

/// Quotes a string literal, escaping as ClickHouse does.
pub fn quote_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semicolons_inside_quotes_and_comments_do_not_split_statements() {
        let sql = "SELECT ';', \"a;b\", `c;d` -- x;y\n /* ; */ FROM t";
        assert_eq!(statement_count(&scan(sql).unwrap()), 1);
        assert_eq!(statement_count(&scan("SELECT 1; DROP TABLE t").unwrap()), 2);
        assert_eq!(statement_count(&scan("SELECT 1;;  ").unwrap()), 1);
        assert_eq!(statement_count(&scan("SELECT 'it''s'; SELECT 2").unwrap()), 2);
        assert_eq!(statement_count(&scan("SELECT 'a\\';b'").unwrap()), 1);
    }

    #[test]
    fn unterminated_quotes_and_comments_are_reported() {
        assert_eq!(scan("SELECT 'abc"), Err(ScanError::UnterminatedQuote(7)));
        assert_eq!(scan("SELECT /* x"), Err(ScanError::UnterminatedComment(7)));
    }

    #[test]
    fn first_keyword_skips_comments_and_parentheses() {
        let sql = "-- hello\n ((select 1))";
        assert_eq!(first_keyword(sql, &scan(sql).unwrap()).as_deref(), Some("SELECT"));
        let sql = "/* c */ insert into t values (1)";
        assert_eq!(first_keyword(sql, &scan(sql).unwrap()).as_deref(), Some("INSERT"));
    }

    #[test]
    fn into_outfile_is_found_anywhere() {
        let sql = "SELECT 1 INTO   OUTFILE '/tmp/x'";
        assert!(has_word_pair(sql, &scan(sql).unwrap(), "into", "outfile"));
        let sql = "SELECT 'INTO OUTFILE'";
        assert!(!has_word_pair(sql, &scan(sql).unwrap(), "into", "outfile"));
    }

    #[test]
    fn insert_format_and_inline_binary_data_are_split() {
        let sql = "INSERT INTO `t`(`a`,`b`) FORMAT RowBinary";
        let shape = insert_with_format(sql.as_bytes()).unwrap();
        assert_eq!(shape.head, "INSERT INTO `t`(`a`,`b`)");
        assert_eq!(shape.format, "RowBinary");
        assert!(shape.inline_data.is_empty());

        let body = "insert into t format TSV\n1\tx\n\n2\ty\n";
        let shape = insert_with_format(body.as_bytes()).unwrap();
        assert_eq!(shape.format, "TSV");
        assert_eq!(shape.inline_data, b"1\tx\n\n2\ty\n");

        // A column named `format` in quotes is not the FORMAT clause.
        let sql = "INSERT INTO t (`format`) FORMAT JSONEachRow {\"format\":1}";
        let shape = insert_with_format(sql.as_bytes()).unwrap();
        assert_eq!(shape.format, "JSONEachRow");
        assert_eq!(shape.inline_data, b"{\"format\":1}");

        let sql = "INSERT INTO t (format) FORMAT TSV";
        assert_eq!(insert_with_format(sql.as_bytes()).unwrap().head, "INSERT INTO t (format)");

        let sql = "INSERT INTO t (settings) SETTINGS async_insert = 1, x = 'a' FORMAT TSV\n1\n";
        let shape = insert_with_format(sql.as_bytes()).unwrap();
        assert_eq!(shape.head, "INSERT INTO t (settings)");
        assert_eq!(shape.settings, Some("async_insert = 1, x = 'a'"));
        assert_eq!(shape.inline_data, b"1\n");
    }

    #[test]
    fn inserts_without_format_are_left_alone() {
        assert_eq!(insert_with_format(b"INSERT INTO t VALUES (1)"), None);
        assert_eq!(insert_with_format(b"INSERT INTO t SELECT * FROM u FORMAT TSV"), None);
        assert_eq!(insert_with_format(b"SELECT 1 FORMAT TSV"), None);
    }

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quote_identifier("a`b\\c"), "`a\\`b\\\\c`");
        assert_eq!(quote_string("it's \\ ok"), "'it\\'s \\\\ ok'");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn scanning_never_panics(sql in "\\PC*") {
                let _ = scan(&sql);
                let _ = insert_with_format(sql.as_bytes());
            }

            /// Whatever a string literal holds, quoting keeps it one token:
            /// semicolons inside never split statements.
            #[test]
            fn quoted_literals_never_split_statements(values in proptest::collection::vec("\\PC*", 1..5)) {
                let sql = values.iter().map(|v| format!("SELECT {}", quote_string(v))).collect::<Vec<_>>().join("; ");
                let tokens = scan(&sql).unwrap();
                prop_assert_eq!(statement_count(&tokens), values.len());
            }

            /// Binary data after `FORMAT name` and a newline is returned byte for byte.
            #[test]
            fn inline_insert_data_is_kept_exactly(data in proptest::collection::vec(any::<u8>(), 0..512)) {
                let mut body = b"INSERT INTO t (a) FORMAT RowBinary\n".to_vec();
                body.extend_from_slice(&data);
                let shape = insert_with_format(&body).unwrap();
                prop_assert_eq!(shape.format, "RowBinary");
                prop_assert_eq!(shape.inline_data, &data[..]);
            }
        }
    }
}
