//! Markdown for the job summary that outside text cannot reshape.
//!
//! Text from outside berth (container logs, health bodies, remote errors, workflow and
//! host names) reaches the summary only through [`text`] (one escaped line), [`cell`] (the
//! same, bounded, for a table) or [`fence`] (a code block no line of the text can close).
//! So it cannot add headings, links, HTML or table columns, and cannot end a code block.
//! [`Blocks`] assembles the sections within a byte budget.

/// A line longer than this is cut inside a code block, saying how much was cut.
pub const LINE_BYTES: usize = 2000;

const ZWSP: char = '\u{200B}';

/// One line of inline text. Text between a pair of backticks becomes a code span (whose
/// content Markdown never interprets); everywhere else, every character Markdown could act
/// on is escaped, and bare URLs are broken so GitHub's autolinker leaves them alone.
pub fn text(s: &str) -> String {
    inline(s, false)
}

/// A table cell: [`text`], cut at `max` characters with an ellipsis, with every `|`
/// escaped (GitHub splits cells at a `|` even inside a code span).
pub fn cell(s: &str, max: usize) -> String {
    let flat = one_line(s);
    let cut = match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    };
    inline(&cut, true)
}

fn inline(s: &str, in_table: bool) -> String {
    let flat = one_line(s);
    let parts: Vec<&str> = flat.split('`').collect();
    // An even number of parts means the last backtick has no partner.
    let unpaired = parts.len() % 2 == 0;
    let mut out = String::with_capacity(flat.len() + 16);
    for (i, part) in parts.iter().enumerate() {
        let is_code = i % 2 == 1 && !(unpaired && i == parts.len() - 1) && !part.is_empty();
        if is_code {
            let body = if in_table {
                part.replace('|', "\\|")
            } else {
                part.to_string()
            };
            out.push('`');
            out.push_str(&body);
            out.push('`');
            continue;
        }
        if i % 2 == 1 {
            out.push_str(if part.is_empty() && !(unpaired && i == parts.len() - 1) {
                "\\`\\`"
            } else {
                "\\`"
            });
        }
        out.push_str(&escape_plain(part, in_table));
    }
    out
}

fn escape_plain(s: &str, in_table: bool) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars().peekable();
    let mut prev: Option<char> = None;
    while let Some(c) = chars.next() {
        // GitHub links `@user` and `#123` at the start of a word after rendering Markdown;
        // a zero-width space keeps app text from mentioning people or pointing at issues.
        // (`root@host` is no mention.)
        let word_start = !prev.is_some_and(|p| p.is_ascii_alphanumeric());
        prev = Some(c);
        if word_start
            && (c == '@' || (c == '#' && chars.peek().is_some_and(|n| n.is_ascii_digit())))
        {
            out.push('\\');
            out.push(c);
            out.push(ZWSP);
            continue;
        }
        if matches!(
            c,
            '\\' | '*' | '_' | '[' | ']' | '<' | '>' | '&' | '~' | '#' | '!'
        ) || (in_table && c == '|')
        {
            out.push('\\');
        }
        out.push(c);
    }
    defuse_autolinks(&out)
}

/// Inline code for a value berth trusts the shape of (a digest, a release id), with a
/// delimiter longer than any run of backticks in it.
pub fn code(s: &str) -> String {
    let flat = one_line(s).replace('|', "\\|");
    let ticks = "`".repeat(longest_backtick_run(&flat) + 1);
    let pad = if flat.starts_with('`') || flat.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{ticks}{pad}{flat}{pad}{ticks}")
}

/// A fenced code block around `body`: the fence is longer than any run of backticks in
/// it, so no line of it can close the block, and lines over [`LINE_BYTES`] are cut.
pub fn fence(info: &str, body: &str) -> String {
    let body = cut_long_lines(body.trim_end_matches(['\n', '\r']), LINE_BYTES);
    let ticks = "`".repeat(longest_backtick_run(&body).max(2) + 1);
    format!("{ticks}{info}\n{body}\n{ticks}\n")
}

/// Every line cut to at most `max` bytes (on a char boundary), saying how much went.
pub fn cut_long_lines(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(1 << 20));
    let masks = crate::secret::registered();
    for (i, line) in crate::workflow::runner_lines(s).into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if line.len() <= max {
            out.push_str(line);
            continue;
        }
        let mut end = max;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        // Text is scrubbed before it is cut; what was cut before berth saw it (a log line
        // cut on the host) may still end in the start of a secret.
        out.push_str(&crate::secret::mask_cut_end(&masks, &line[..end]));
        out.push_str(&format!(" … [line cut: {} more bytes]", line.len() - end));
    }
    out
}

fn longest_backtick_run(s: &str) -> usize {
    let (mut longest, mut run) = (0, 0);
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}

fn one_line(s: &str) -> String {
    crate::workflow::runner_lines(s.trim()).join(" ")
}

/// `https://x`, `www.x` and the like read the same with a zero-width space after the
/// scheme's colon or the `www`, and are no longer autolinked.
fn defuse_autolinks(s: &str) -> String {
    let mut out = s.replace("://", &format!(":{ZWSP}//"));
    for prefix in ["www.", "WWW."] {
        out = out.replace(prefix, &format!("{}{ZWSP}.", &prefix[..3]));
    }
    out
}

/// The summary's writer of outside text: it scrubs secrets from the *raw* text first, and
/// only then escapes, cuts or fences it. Escaping first would change a secret's bytes
/// (`_` to `\\_`, `://` broken up) so that no mask, berth's or the runner's, matched it.
pub struct Md<'a> {
    scrub: &'a dyn Fn(&str) -> String,
}

impl<'a> Md<'a> {
    pub fn new(scrub: &'a dyn Fn(&str) -> String) -> Md<'a> {
        Md { scrub }
    }

    /// The raw text scrubbed, for a caller that cuts it (a tail) before it is written:
    /// cut first, a secret could be split into halves that no mask matches.
    pub fn scrub(&self, s: &str) -> String {
        (self.scrub)(s)
    }

    pub fn text(&self, s: &str) -> String {
        text(&(self.scrub)(s))
    }

    pub fn cell(&self, s: &str, max: usize) -> String {
        cell(&(self.scrub)(s), max)
    }

    pub fn code(&self, s: &str) -> String {
        code(&(self.scrub)(s))
    }

    pub fn fence(&self, info: &str, body: &str) -> String {
        fence(info, &(self.scrub)(body))
    }

    /// Text for the inside of raw HTML (`<summary>`), where Markdown escapes do nothing.
    pub fn html(&self, s: &str) -> String {
        one_line(&(self.scrub)(s))
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    }
}

/// Summary sections in order of importance, written out within a byte budget: a section
/// that no longer fits is left out whole (never cut mid-table or mid-fence), and the
/// summary says so.
#[derive(Debug, Default)]
pub struct Blocks {
    blocks: Vec<String>,
}

impl Blocks {
    pub fn push(&mut self, block: impl Into<String>) {
        let block = block.into();
        if !block.is_empty() {
            self.blocks.push(block);
        }
    }

    pub fn finish(self, budget: usize) -> String {
        const NOTE: &str = "\n_Some sections were left out to keep this summary under GitHub's 1 MiB limit: the log has them._\n";
        let room = budget.saturating_sub(NOTE.len());
        let mut out = String::new();
        let mut left_out = 0;
        for block in self.blocks {
            if out.len() + block.len() <= room {
                out.push_str(&block);
            } else {
                left_out += 1;
            }
        }
        if left_out > 0 {
            out.push_str(NOTE);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_text_cannot_add_markup() {
        let t = text("# Heading [click](https://evil.example) <img src=x> **bold** | col");
        assert!(!t.contains("https://"), "{t}");
        assert_eq!(
            t,
            "\\# Heading \\[click\\](https:\u{200B}//evil.example) \\<img src=x\\> \\*\\*bold\\*\\* | col"
        );
        assert_eq!(text("a\r\n## b\rc"), "a \\#\\# b c");
        assert_eq!(text("see www.evil.example"), "see www\u{200B}.evil.example");
        assert_eq!(
            text("ping @admin about #12"),
            "ping \\@\u{200B}admin about \\#\u{200B}12"
        );
    }

    #[test]
    fn secrets_are_scrubbed_before_escaping_changes_their_bytes() {
        let scrub = |s: &str| s.replace("postgres://u:pw_1@db", "***");
        let md = Md::new(&scrub);
        let leaked = "DATABASE_URL=postgres://u:pw_1@db | next";
        for out in [
            md.text(leaked),
            md.cell(leaked, 300),
            md.fence("", leaked),
            md.html(leaked),
        ] {
            assert!(!out.contains("pw"), "{out}");
        }
        assert_eq!(
            md.html("<b>x</b> & \"q\""),
            "&lt;b&gt;x&lt;/b&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn backtick_pairs_become_code_spans_and_a_stray_one_is_escaped() {
        assert_eq!(
            text("set `health-timeout: 30s` now"),
            "set `health-timeout: 30s` now"
        );
        assert_eq!(
            text("a `[x](https://e)` b"),
            "a `[x](https://e)` b",
            "code is literal"
        );
        assert_eq!(text("odd ` one"), "odd \\` one");
        assert_eq!(text("`a` and ` b"), "`a` and \\` b");
        assert_eq!(cell("`a|b` | c", 100), "`a\\|b` \\| c");
    }

    #[test]
    fn a_fence_is_longer_than_any_backtick_run_in_its_body() {
        let body = "ok\n```\n# not a heading\n`````\nend";
        let f = fence("", body);
        assert!(
            f.starts_with("``````\n") && f.ends_with("\n``````\n"),
            "{f}"
        );
        assert_eq!(fence("sh", "plain"), "```sh\nplain\n```\n");
    }

    #[test]
    fn long_lines_are_cut_and_say_so() {
        let cut = cut_long_lines(&format!("short\n{}", "é".repeat(3000)), 100);
        let second = cut.lines().nth(1).unwrap();
        assert!(
            second.starts_with(&"é".repeat(50)),
            "cut on a char boundary"
        );
        assert!(second.ends_with("[line cut: 5900 more bytes]"), "{second}");
    }

    #[test]
    fn cells_are_cut_and_escaped() {
        assert_eq!(cell("a|b\nc", 300), "a\\|b c");
        assert_eq!(cell("abcdef", 3), "abc…");
        assert_eq!(code("sha256:abc"), "`sha256:abc`");
        assert_eq!(code("a`b"), "``a`b``");
    }

    #[test]
    fn blocks_that_do_not_fit_are_left_out_whole() {
        let mut b = Blocks::default();
        b.push("## head\n");
        b.push("x".repeat(500));
        b.push("## tail\n");
        let out = b.finish(300);
        assert!(out.starts_with("## head\n## tail\n"), "{out}");
        assert!(out.contains("left out"));
        assert!(out.len() <= 300);
    }
}
