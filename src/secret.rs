//! A value that must never be printed: its `Debug` redacts it and it has no `Display`;
//! and the masks every text berth keeps, cuts or prints is scrubbed with.
//!
//! A cut (a line flushed at a chunk boundary, an excerpt, a tail) can split a secret into
//! halves that no mask matches. So text is scrubbed whole before it is cut, and where the
//! text was cut before berth saw it (on the host), a partial secret left at the cut edge
//! is masked too.

use std::fmt;
use std::sync::{Arc, LazyLock, RwLock};

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

/// What a scrubbed secret reads as.
pub const MASKED: &str = "***";

/// The fragments of every secret this process was given, longest first. Cuts happen deep
/// in modules that print nothing (an SSH stream, a health body, a log tail), and the
/// secrets are the process's, as GitHub's masks are the job's.
static REGISTERED: LazyLock<RwLock<Arc<Vec<String>>>> = LazyLock::new(Default::default);

/// Adds a secret's fragments to the masks every cut is made with.
pub fn register(secret: &Secret) {
    let mut all = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    let mut masks = all.as_ref().clone();
    for fragment in secret.fragments() {
        if !masks.iter().any(|m| m == fragment) {
            masks.push(fragment.to_string());
        }
    }
    masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
    *all = Arc::new(masks);
}

/// The masks registered so far, longest first.
pub fn registered() -> Arc<Vec<String>> {
    REGISTERED.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Every mask replaced by [`MASKED`]; longest first, so a fragment inside a longer secret
/// leaves no tail behind.
pub fn scrub(masks: &[String], text: &str) -> String {
    let mut text = text.to_string();
    for mask in masks {
        if text.contains(mask.as_str()) {
            text = text.replace(mask.as_str(), MASKED);
        }
    }
    text
}

/// The shortest part of a secret that is masked at a cut edge: shorter ones are too common
/// to hide without garbling text, and give too little of the secret away.
fn partial_min(mask: &str) -> usize {
    4.min(mask.len().saturating_sub(1)).max(2)
}

/// `text` cut after at most `max` bytes (on a char boundary), scrubbed before the cut and
/// with a partial secret at the cut edge masked. Says nothing about the cut.
pub fn excerpt(masks: &[String], text: &str, max: usize) -> String {
    let text = scrub(masks, text);
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    mask_cut_end(masks, &text[..end])
}

/// Text whose end was cut: a start of a secret left at the end becomes [`MASKED`].
pub fn mask_cut_end(masks: &[String], text: &str) -> String {
    // A partial is a suffix of the text that starts a mask, shorter than the mask.
    let partial = longest_partial(masks, text, |m, n| {
        let at = text.len() - n;
        text.is_char_boundary(at) && m.starts_with(&text[at..])
    });
    match partial {
        Some(n) => format!("{}{MASKED}", &text[..text.len() - n]),
        None => text.to_string(),
    }
}

/// Text whose start was cut: an end of a secret left at the start becomes [`MASKED`].
pub fn mask_cut_start(masks: &[String], text: &str) -> String {
    let partial = longest_partial(masks, text, |m, n| {
        text.is_char_boundary(n) && m.ends_with(&text[..n])
    });
    match partial {
        Some(n) => format!("{MASKED}{}", &text[n..]),
        None => text.to_string(),
    }
}

/// The longest length `n` (in bytes) of a partial of some mask at an edge of `text`, as
/// `is_partial(mask, n)` says.
fn longest_partial(
    masks: &[String],
    text: &str,
    is_partial: impl Fn(&str, usize) -> bool,
) -> Option<usize> {
    masks
        .iter()
        .filter_map(|m| {
            let upto = text.len().min(m.len().saturating_sub(1));
            (partial_min(m)..=upto).rev().find(|&n| is_partial(m, n))
        })
        .max()
}

/// Where a stream may be cut at or before `at` without splitting a secret that lies whole
/// in `bytes`: on a char boundary, and before any secret that would straddle the cut. 0 if
/// no such place exists.
pub fn split_point(masks: &[String], bytes: &[u8], at: usize) -> usize {
    let mut at = at.min(bytes.len());
    // Not inside a char, nor after the first bytes of one whose rest has not arrived.
    if let Some(lead) = (at.saturating_sub(3)..at)
        .rev()
        .find(|&i| bytes[i] & 0xC0 != 0x80)
    {
        let width = match bytes[lead] {
            b if b >= 0xF0 => 4,
            b if b >= 0xE0 => 3,
            b if b >= 0xC0 => 2,
            _ => 1,
        };
        if lead + width > at {
            at = lead;
        }
    }
    loop {
        let straddling = masks
            .iter()
            .filter(|m| !m.is_empty())
            .filter_map(|m| {
                let m = m.as_bytes();
                let lo = at.saturating_sub(m.len() - 1);
                (lo..at).find(|&s| s + m.len() > at && bytes[s..].starts_with(m))
            })
            .min();
        match straddling {
            Some(start) => at = start,
            None => return at,
        }
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

    fn masks(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_excerpt_is_scrubbed_before_it_is_cut() {
        let m = masks(&["s3cret-token-42"]);
        // The cut at 12 falls inside the secret: cut first, `s3cret` would be left.
        let text = "token: s3cret-token-42 end";
        assert_eq!(excerpt(&m, text, 12), "token: *** e");
        assert_eq!(excerpt(&m, text, 100), "token: *** end");
        // A cut that leaves a start of a secret masks it, however it got there.
        assert_eq!(excerpt(&m, "aaaa s3cret-tXYZ", 13), "aaaa ***");
    }

    #[test]
    fn a_partial_secret_at_a_cut_edge_is_masked() {
        let m = masks(&["abcdefgh", "é-secret"]);
        assert_eq!(mask_cut_end(&m, "log: abcde"), "log: ***");
        assert_eq!(
            mask_cut_end(&m, "log: ab"),
            "log: ab",
            "too short to be telling"
        );
        assert_eq!(mask_cut_end(&m, "x é-se"), "x ***");
        assert_eq!(mask_cut_start(&m, "efgh rest"), "*** rest");
        assert_eq!(mask_cut_start(&m, "secret rest"), "*** rest");
        assert_eq!(mask_cut_start(&m, "gh rest"), "gh rest");
        assert_eq!(mask_cut_end(&[], "abc"), "abc");
    }

    #[test]
    fn a_stream_is_split_before_a_secret_and_on_a_char_boundary() {
        let m = masks(&["SECRET"]);
        let bytes = b"xxxxSECRETyy";
        for at in 5..10 {
            assert_eq!(split_point(&m, bytes, at), 4, "at {at}");
        }
        assert_eq!(split_point(&m, bytes, 10), 10);
        assert_eq!(split_point(&m, bytes, 3), 3);
        let utf8 = "aé".as_bytes();
        assert_eq!(split_point(&[], utf8, 2), 1, "inside é");
        assert_eq!(split_point(&[], &utf8[..2], 2), 1, "é not arrived yet");
        assert_eq!(split_point(&[], utf8, 3), 3);
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
