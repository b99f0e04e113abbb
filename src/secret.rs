//! A value that must never be printed: its `Debug` redacts it and it has no `Display`.

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for the one place that must hand it to a library or a stdin pipe.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// The fragments a log scrubber must hide: the whole value and each non-blank line,
    /// because a multi-line key can leak one line at a time.
    pub fn fragments(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let whole = self.0.trim();
        if !whole.is_empty() {
            out.push(whole);
        }
        if whole.contains('\n') {
            for line in whole.lines().map(str::trim) {
                if !line.is_empty() && !out.contains(&line) {
                    out.push(line);
                }
            }
        }
        out
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(!format!("{:?}", Some(s)).contains("hunter2"));
    }

    #[test]
    fn fragments_cover_each_line_of_a_multiline_secret() {
        let s = Secret::new("line-one\nline-two\n\n");
        assert_eq!(
            s.fragments(),
            vec!["line-one\nline-two", "line-one", "line-two"]
        );
    }
}
