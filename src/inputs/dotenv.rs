//! Compose's `.env` grammar, so that berth reads `env-file` exactly as Compose will on the
//! host: the values it masks are the values the app gets.
//!
//! A port of compose-go v2.9.1 (the version in Compose v2.40.3): `dotenv/parser.go`,
//! `dotenv/godotenv.go` and `dotenv/env.go` for the statements, and `template/template.go`
//! for the `$VAR`, `${VAR}`, `${VAR:-default}` ... expansion inside unquoted and
//! double-quoted values. The port follows the Go code step by step, quirks included (a
//! value after a closing quote starts a new statement; `KEY: value` is an assignment; a
//! last line `FOO` with no line break is a value with an empty key), because every
//! difference is a value berth would mask wrongly.
//!
//! Where it deliberately differs:
//! - Variables expand from the earlier assignments of the file only. Compose first looks
//!   in the environment of the process that runs it (on the host), which berth cannot
//!   see; a key named alone on its line (`FOO`, which takes the host's value) gives
//!   nothing here, and `${VAR:?}` (or `${VAR?}`) of a variable no earlier line sets is
//!   an error here, even where the host's environment would set it.
//! - A value with no key (`=x`) is refused (`EnvFile::problems`); Compose keeps it under
//!   the empty name.
//! - Errors name the line where the statement starts, and never the text of the line:
//!   Compose's messages quote the line, value and all.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::{Captures, Regex};

// Patterns are compiled once, on first use; clippy's `invalid_regex` lint checks each
// literal, so the `expect`s cannot fire.

/// compose-go's `escapeSeqRegex` (Go's `\d` is ASCII only).
static ESCAPE_SEQUENCE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"(\\(?:[abcfnrtv$"\\]|0[0-9]{0,3}))"#).expect("built-in regex"));

/// compose-go's `exportRegex` (Go's `\s` is `[\t\n\f\r ]`).
static EXPORT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^export[\t\n\f\r ]+").expect("built-in regex"));

/// compose-go's `template.DefaultPattern`, its braces escaped for Rust's regex syntax.
/// Both engines pick the leftmost-first match, and both fold `[a-z]` under `(?i)` the
/// same Unicode way.
static TEMPLATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\$(?i:(?P<escaped>\$)|(?P<named>[_a-z][_a-z0-9]*)|\{(?:(?P<braced>[_a-z][_a-z0-9]*(?::?[-+?](.*))?)\}|(?P<invalid>)))",
    )
    .expect("built-in regex")
});

/// Go's `unicode.IsLetter || unicode.IsNumber`: general categories L and N.
static KEY_LETTER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[\p{L}\p{N}]$").expect("built-in regex"));

/// One `KEY=value` as Compose resolves it, with the line its statement starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// Why berth refuses an env file: a value with no key, or what Compose would refuse.
/// Each names a line, never its text: the line may hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DotenvError {
    #[error("line {line}: a value has no key. Write it as `KEY=value`")]
    NoKey { line: usize },
    #[error("line {line}: `export` is followed by no key. Write `export KEY=value`")]
    ExportAlone { line: usize },
    #[error("line {line}: the key holds a space. Write `KEY=value`, with no space inside `KEY`")]
    SpaceInKey { line: usize },
    #[error("line {line}: the key holds a character Compose does not accept in a name. A key may hold letters, digits, `_`, `.`, `-`, `[` and `]`, and ends at `=` (or `:`); a value with spaces needs no quotes, but must come after the `=`")]
    KeyCharacter { line: usize },
    #[error("line {line}: a quoted value is never closed. Close the quote; write a quote inside a value as `\\\"` (or `\\'`)")]
    UnterminatedQuote { line: usize },
    #[error("line {line}: a `$` starts no variable Compose can read. Write a literal `$` as `$$`, or a variable as `${{NAME}}`")]
    InvalidTemplate { line: usize },
    #[error("line {line}: `{variable}` is required there (`?` or `:?`), but no earlier line sets it. berth reads `env-file` on its own, without the host's environment, so set `{variable}` on a line above, or give a default: `${{{variable}:-...}}`")]
    MissingRequired { line: usize, variable: String },
}

/// An env file as Compose reads it: the assignments in the order Compose makes them (a
/// key assigned twice appears twice; the last one wins), up to the error Compose would
/// stop at, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvFile {
    pub assignments: Vec<Assignment>,
    pub error: Option<DotenvError>,
}

impl EnvFile {
    /// The environment Compose ends with: each key's last value. `None` when Compose
    /// would refuse the file.
    pub fn resolved(&self) -> Option<HashMap<String, String>> {
        if self.error.is_some() {
            return None;
        }
        Some(
            self.assignments
                .iter()
                .map(|a| (a.key.clone(), a.value.clone()))
                .collect(),
        )
    }

    /// What berth refuses in an env file: each value with no key (Compose keeps it under
    /// the empty name, which no compose file can use, so it is a mistake), then the error
    /// Compose would stop at.
    pub fn problems(&self) -> Vec<DotenvError> {
        self.assignments
            .iter()
            .filter(|a| a.key.is_empty())
            .map(|a| DotenvError::NoKey { line: a.line })
            .chain(self.error.clone())
            .collect()
    }
}

/// Reads `body` as compose-go's `dotenv.GetEnvFromFile` does, with no process
/// environment to look variables up in.
pub fn parse(body: &str) -> EnvFile {
    // Compose skips a UTF-8 byte order mark, which some editors write.
    let src = body.strip_prefix('\u{feff}').unwrap_or(body);
    let mut parser = Parser {
        src,
        file: EnvFile::default(),
        values: HashMap::new(),
    };
    if let Err(e) = parser.parse() {
        parser.file.error = Some(e);
    }
    parser.file
}

struct Parser<'a> {
    src: &'a str,
    file: EnvFile,
    /// The environment so far, for the expansion of later values.
    values: HashMap<String, String>,
}

impl<'a> Parser<'a> {
    /// The line `rest` (a suffix of the source) starts on.
    fn line_of(&self, rest: &str) -> usize {
        let offset = self.src.len() - rest.len();
        1 + self.src[..offset].matches('\n').count()
    }

    fn parse(&mut self) -> Result<(), DotenvError> {
        let mut cutset = self.src;
        loop {
            cutset = statement_start(cutset);
            if cutset.is_empty() {
                return Ok(());
            }
            let line = self.line_of(cutset);
            let (key, left, inherited) = locate_key_name(cutset, line)?;
            if key.contains(' ') {
                return Err(DotenvError::SpaceInKey { line });
            }
            if inherited {
                // `KEY` alone takes the value of the process environment, then of the
                // file so far: the file's own value changes nothing, and berth sees no
                // process environment.
                cutset = left;
                continue;
            }
            let (value, left) = self.extract_value(left, line)?;
            self.values.insert(key.to_string(), value.clone());
            self.file.assignments.push(Assignment {
                key: key.to_string(),
                value,
                line,
            });
            cutset = left;
        }
    }

    /// compose-go's `extractVarValue`: the value at the start of `src`, and the rest.
    fn extract_value(&self, src: &'a str, line: usize) -> Result<(String, &'a str), DotenvError> {
        let quote = match src.as_bytes().first() {
            Some(&q @ (b'"' | b'\'')) => q,
            _ => {
                // Unquoted: to the end of the line, less an inline ` #` comment.
                let (value, rest) = src.split_once('\n').unwrap_or((src, ""));
                let value = value.split_once(" #").map_or(value, |(v, _)| v);
                let value = value.trim_end_matches(char::is_whitespace);
                return Ok((self.expand(value, line)?, rest));
            }
        };
        let bytes = src.as_bytes();
        let mut escaped = false;
        let mut chars = Vec::new();
        for (i, &byte) in bytes.iter().enumerate().skip(1) {
            if byte != quote {
                if !escaped && byte == b'\\' {
                    escaped = true;
                    continue;
                }
                if escaped {
                    escaped = false;
                    chars.push(b'\\');
                }
                chars.push(byte);
                continue;
            }
            // An escaped quote is part of the value.
            if escaped {
                escaped = false;
                chars.push(byte);
                continue;
            }
            // Only ASCII bytes were dropped, so `chars` is still UTF-8.
            let value = String::from_utf8_lossy(&chars).into_owned();
            let value = if quote == b'"' {
                self.expand(&expand_escapes(&value), line)?
            } else {
                value
            };
            return Ok((value, &src[i + 1..]));
        }
        Err(DotenvError::UnterminatedQuote { line })
    }

    /// compose-go's `expandVariables`, looking names up in the file so far.
    fn expand(&self, value: &str, line: usize) -> Result<String, DotenvError> {
        let lookup = |name: &str| self.values.get(name).cloned();
        substitute(value, &lookup).map_err(|e| match e {
            TemplateError::Invalid => DotenvError::InvalidTemplate { line },
            TemplateError::MissingRequired(variable) => {
                DotenvError::MissingRequired { line, variable }
            }
        })
    }
}

/// compose-go's `isSpace`: white space, but not a line break.
fn is_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{85}' | '\u{a0}'
    )
}

/// compose-go's `getStatementStart`: past white space and `#` comment lines.
fn statement_start(mut src: &str) -> &str {
    loop {
        src = src.trim_start_matches(char::is_whitespace);
        if !src.starts_with('#') {
            return src;
        }
        match src.find('\n') {
            Some(pos) => src = &src[pos..],
            None => return "",
        }
    }
}

/// compose-go's `locateKeyName`: the key, the rest after its `=` (or `:`, or line break),
/// and whether the key stood alone on its line (`inherited`).
fn locate_key_name(src: &str, line: usize) -> Result<(&str, &str, bool), DotenvError> {
    let src = if EXPORT.is_match(src) {
        src["export".len()..].trim_start_matches(is_space)
    } else {
        src
    };
    if src.is_empty() {
        return Err(DotenvError::ExportAlone { line });
    }
    let mut key = "";
    let mut offset = 0;
    let mut inherited = false;
    for (i, c) in src.char_indices() {
        if is_space(c) {
            continue;
        }
        match c {
            '=' | ':' | '\n' => {
                key = &src[..i];
                offset = i + 1;
                inherited = c == '\n';
                break;
            }
            '_' | '.' | '-' | '[' | ']' => {}
            _ if KEY_LETTER.is_match(c.encode_utf8(&mut [0; 4])) => {}
            _ => return Err(DotenvError::KeyCharacter { line }),
        }
    }
    let key = key.trim_end_matches(char::is_whitespace);
    Ok((key, src[offset..].trim_start_matches(is_space), inherited))
}

/// compose-go's `expandEscapes`: the shell escapes of a double-quoted value.
fn expand_escapes(value: &str) -> String {
    ESCAPE_SEQUENCE
        .replace_all(value, |c: &Captures| {
            let matched = &c[0];
            match &matched[1..] {
                // Expansion reads `$$` as a literal `$`.
                "$" => "$$".to_string(),
                "a" => "\u{7}".to_string(),
                "b" => "\u{8}".to_string(),
                "f" => "\u{c}".to_string(),
                "n" => "\n".to_string(),
                "r" => "\r".to_string(),
                "t" => "\t".to_string(),
                "v" => "\u{b}".to_string(),
                "\"" => "\"".to_string(),
                "\\" => "\\".to_string(),
                // `\c` is in the pattern, but Go's `UnquoteChar` refuses it.
                "c" => matched.to_string(),
                // `\0ddd` is rewritten to Go's `\ddd`, which is an octal byte only with
                // exactly three octal digits up to `\377`; otherwise the rewritten text
                // stays.
                digits => {
                    let octal = &digits[1..];
                    match u32::from_str_radix(octal, 8) {
                        Ok(code) if octal.len() == 3 && code <= 0o377 => {
                            char::from_u32(code).expect("below 256").to_string()
                        }
                        _ => format!("\\{octal}"),
                    }
                }
            }
        })
        .into_owned()
}

#[derive(Debug, PartialEq, Eq)]
enum TemplateError {
    Invalid,
    MissingRequired(String),
}

/// compose-go's `template.Substitute` with `DefaultPattern`.
fn substitute(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, TemplateError> {
    let mut first_error = None;
    let out = TEMPLATE.replace_all(template, |c: &Captures| match replacement(&c[0], lookup) {
        Ok(value) => value,
        Err(e) => {
            first_error.get_or_insert(e);
            String::new()
        }
    });
    match first_error {
        Some(e) => Err(e),
        None => Ok(out.into_owned()),
    }
}

/// compose-go's `DefaultReplacementAppliedFunc`, for one match of the pattern.
fn replacement(
    substring: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, TemplateError> {
    // The operator is chosen from the whole match, which, greedy, may run past the
    // variable's closing brace; the match is then cut at that brace, and what follows
    // is expanded on its own.
    let operator = first_operator(substring);
    let (substring, rest) = match first_closing_brace(substring) {
        Some(i) => (&substring[..=i], &substring[i + 1..]),
        None => (substring, ""),
    };
    let c = TEMPLATE
        .captures(substring)
        .expect("a match of the pattern, cut at a brace, still starts with one");
    if let Some(escaped) = c.name("escaped") {
        return Ok(escaped.as_str().to_string());
    }
    if let Some(named) = c.name("named") {
        return Ok(lookup(named.as_str()).unwrap_or_default());
    }
    let substitution = match c.name("braced") {
        Some(b) if !b.as_str().is_empty() => b.as_str(),
        _ => return Err(TemplateError::Invalid),
    };
    if let Some(operator) = operator {
        if let Some((name, argument)) = substitution.split_once(operator.text()) {
            let value = operator.apply(name, argument, lookup)?;
            return Ok(value + &substitute(rest, lookup)?);
        }
    }
    Ok(lookup(substitution).unwrap_or_default())
}

/// The operators of `${NAME<op>argument}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    RequiredNotEmpty,
    Required,
    DefaultIfEmpty,
    DefaultIfUnset,
    AlternativeIfNotEmpty,
    AlternativeIfSet,
}

impl Operator {
    const ALL: [Operator; 6] = [
        Operator::RequiredNotEmpty,
        Operator::Required,
        Operator::DefaultIfEmpty,
        Operator::DefaultIfUnset,
        Operator::AlternativeIfNotEmpty,
        Operator::AlternativeIfSet,
    ];

    fn text(self) -> &'static str {
        match self {
            Operator::RequiredNotEmpty => ":?",
            Operator::Required => "?",
            Operator::DefaultIfEmpty => ":-",
            Operator::DefaultIfUnset => "-",
            Operator::AlternativeIfNotEmpty => ":+",
            Operator::AlternativeIfSet => "+",
        }
    }

    /// compose-go's `withRequired`, `withDefaultWhenAbsence`, `withDefaultWhenPresence`.
    fn apply(
        self,
        name: &str,
        argument: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, TemplateError> {
        let argument = substitute(argument, lookup)?;
        let value = lookup(name);
        let set_and_not_empty = value.as_deref().is_some_and(|v| !v.is_empty());
        Ok(match self {
            Operator::RequiredNotEmpty if !set_and_not_empty => {
                return Err(TemplateError::MissingRequired(name.into()))
            }
            Operator::Required if value.is_none() => {
                return Err(TemplateError::MissingRequired(name.into()))
            }
            Operator::DefaultIfEmpty if !set_and_not_empty => argument,
            Operator::DefaultIfUnset if value.is_none() => argument,
            Operator::AlternativeIfNotEmpty if set_and_not_empty => argument,
            Operator::AlternativeIfSet if value.is_some() => argument,
            _ => value.unwrap_or_default(),
        })
    }
}

/// The operator that occurs first in `substring` (compose-go sorts them by where they
/// first occur; no two can occur first at the same place).
fn first_operator(substring: &str) -> Option<Operator> {
    Operator::ALL
        .into_iter()
        .filter_map(|op| substring.find(op.text()).map(|at| (at, op)))
        .min_by_key(|&(at, _)| at)
        .map(|(_, op)| op)
}

/// compose-go's `getFirstBraceClosingIndex`: the brace that closes the first one opened
/// (a `{` also skips the character after it).
fn first_closing_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut open = 0i32;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'}' {
            open -= 1;
            if open == 0 {
                return Some(i);
            }
        }
        if bytes[i] == b'{' {
            open += 1;
            i += 1;
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment Compose ends with, as `(key, value)` pairs sorted by key.
    fn resolved(body: &str) -> Vec<(String, String)> {
        let file = parse(body);
        let mut pairs: Vec<_> = file
            .resolved()
            .unwrap_or_else(|| panic!("{body:?} does not parse: {:?}", file.error))
            .into_iter()
            .collect();
        pairs.sort();
        pairs
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut out: Vec<_> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        out.sort();
        out
    }

    fn error(body: &str) -> DotenvError {
        parse(body).error.expect("an error")
    }

    // Each expectation below is what `docker compose --env-file` (v2.40.3) resolved.

    #[test]
    fn unquoted_values_keep_spaces_and_apostrophes() {
        assert_eq!(
            resolved("GREETING=hello world\nDB_PASSWORD=\"s3cret-pw\" # rotated\n"),
            pairs(&[("GREETING", "hello world"), ("DB_PASSWORD", "s3cret-pw")])
        );
        assert_eq!(
            resolved("MOTD=Don't panic\nDB_PASSWORD=s3cr3t-pw\nSIGNATURE=Bob's\n"),
            pairs(&[
                ("MOTD", "Don't panic"),
                ("DB_PASSWORD", "s3cr3t-pw"),
                ("SIGNATURE", "Bob's")
            ])
        );
    }

    #[test]
    fn a_hash_starts_a_comment_only_after_a_space() {
        assert_eq!(
            resolved("A=a#b\nB=a #b\nC=a\t#b\n# D=commented\n  # E=indented comment\n"),
            pairs(&[("A", "a#b"), ("B", "a"), ("C", "a\t#b")])
        );
        assert_eq!(resolved("A='x # y'\n"), pairs(&[("A", "x # y")]));
    }

    #[test]
    fn yaml_style_and_export_assign_too() {
        assert_eq!(
            resolved("DB_PASSWORD: s3cr3t-pw\nexport C : yaml-v # c\nexport   D=d\n"),
            pairs(&[("DB_PASSWORD", "s3cr3t-pw"), ("C", "yaml-v"), ("D", "d")])
        );
    }

    #[test]
    fn text_after_a_closing_quote_starts_a_new_statement() {
        assert_eq!(
            resolved("D=\"x\"junk\nE=\"y\" F=z\n"),
            pairs(&[("D", "x"), ("E", "y"), ("F", "z")])
        );
    }

    #[test]
    fn empty_values_are_set_and_a_key_alone_is_not() {
        assert_eq!(
            resolved("E=\nF=\"\"\nG=''\nALONE\n"),
            pairs(&[("E", ""), ("F", ""), ("G", "")])
        );
    }

    #[test]
    fn double_quoted_values_span_lines_and_read_escapes() {
        assert_eq!(
            resolved("A=\"l1\nl2\"\nB=\"e\\\\n\\\\t\\\\$x\\\\0123\\\\0\\\\c\"\n"),
            pairs(&[("A", "l1\nl2"), ("B", "e\\n\\t\\\\0123\\0\\c")])
        );
        assert_eq!(
            resolved(
                r#"A="\n\t\"q\" \$HOME \0101\0777 \a"
B='no \n escapes, it\'s'
"#
            ),
            pairs(&[
                ("A", "\n\t\"q\" $HOME A\\777 \u{7}"),
                ("B", "no \\n escapes, it's")
            ])
        );
    }

    #[test]
    fn variables_expand_from_earlier_keys() {
        assert_eq!(
            resolved("A=1\nB=${A}2$A-${X:-def}${A:+alt}${X-u}|${A:-${X:-n}}\n"),
            pairs(&[("A", "1"), ("B", "121-defaltu|1")])
        );
        assert_eq!(
            resolved("A=\nB=${A:-d}${A-d}${A+s}${A:+n}$$A\nC='${A}'\nD=\"${B}\"\n"),
            pairs(&[("A", ""), ("B", "ds$A"), ("C", "${A}"), ("D", "ds$A")])
        );
    }

    #[test]
    fn crlf_line_ends_are_not_part_of_values() {
        assert_eq!(
            resolved("A=1\r\nB=\"q\"\r\nC=x #c\r\nD\r\n"),
            pairs(&[("A", "1"), ("B", "q"), ("C", "x")])
        );
    }

    #[test]
    fn a_last_line_alone_is_a_value_with_no_key() {
        let file = parse("A=1\nFOO");
        assert_eq!(file.resolved().unwrap()[""], "FOO");
        assert_eq!(file.problems(), vec![DotenvError::NoKey { line: 2 }]);
        assert_eq!(
            parse("A=1\n\n=x\n").problems(),
            vec![DotenvError::NoKey { line: 3 }]
        );
    }

    #[test]
    fn errors_name_the_line_and_never_its_text() {
        for (body, expected) in [
            ("A=1\nA B=x\n", DotenvError::SpaceInKey { line: 2 }),
            (
                "A=1\nDB_PASSWORD s3cret!\n",
                DotenvError::KeyCharacter { line: 2 },
            ),
            (
                "A=1\n\nB=\"s3cret\nmore\n",
                DotenvError::UnterminatedQuote { line: 3 },
            ),
            ("A=x${\n", DotenvError::InvalidTemplate { line: 1 }),
            (
                "A=${X:?boom}\n",
                DotenvError::MissingRequired {
                    line: 1,
                    variable: "X".into(),
                },
            ),
            ("A=1\nexport   ", DotenvError::ExportAlone { line: 2 }),
        ] {
            let e = error(body);
            assert_eq!(e, expected, "{body:?}");
            for secret in ["s3cret", "boom", "more"] {
                assert!(!e.to_string().contains(secret), "{e}");
            }
        }
    }

    #[test]
    fn the_assignments_before_an_error_are_kept_for_masking() {
        let file = parse("DB_PASSWORD=s3cret-pw\nA B=x\n");
        assert_eq!(file.assignments[0].value, "s3cret-pw");
        assert!(file.resolved().is_none());
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        assert_eq!(resolved("\u{feff}A=1\n"), pairs(&[("A", "1")]));
    }
}
