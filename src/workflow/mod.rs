//! The GitHub Actions workflow-command protocol: annotations, masks, groups, outputs and
//! the step summary. Everything berth prints or writes for the runner goes through
//! [`Runner`], which also scrubs every registered secret out of every byte it emits.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::secret::{scrub, Secret};

/// The runner records at most this many annotations of each level per step.
/// GitHub drops a step summary over 1 MiB (actions/runner `AttachmentSizeLimit`), and errors
/// the step. berth stays under this, measured in bytes after masking.
pub const SUMMARY_LIMIT: usize = 1024 * 1024;

pub const ANNOTATIONS_PER_LEVEL: usize = 10;
/// The runner cuts annotation messages here.
pub const MESSAGE_LIMIT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Error,
    Warning,
    Notice,
}

impl Level {
    fn command(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Notice => "notice",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub level: Level,
    pub title: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub message: String,
}

impl Annotation {
    pub fn new(level: Level, title: impl Into<String>, message: impl Into<String>) -> Self {
        Annotation {
            level,
            title: Some(title.into()),
            file: None,
            line: None,
            message: message.into(),
        }
    }

    pub fn in_file(mut self, file: impl Into<String>, line: Option<u32>) -> Self {
        self.file = Some(file.into());
        self.line = line;
        self
    }

    /// The `::level props::message` line, escaped as the runner expects.
    pub fn to_command(&self) -> String {
        let mut props = Vec::new();
        if let Some(file) = &self.file {
            props.push(format!("file={}", escape_property(file)));
        }
        if let Some(line) = self.line {
            props.push(format!("line={line}"));
        }
        if let Some(title) = &self.title {
            props.push(format!("title={}", escape_property(title)));
        }
        let message = truncate_chars(&self.message, MESSAGE_LIMIT);
        let props = if props.is_empty() {
            String::new()
        } else {
            format!(" {}", props.join(","))
        };
        format!(
            "::{}{}::{}",
            self.level.command(),
            props,
            escape_data(message)
        )
    }
}

/// `%` first, then CR and LF, as the runner's `CommandStringExtensions` unescape them.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Data escaping plus `:` and `,`, which would otherwise end a property.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((idx, _)) => &s[..idx],
        None => s,
    }
}

/// Where the runner's file commands live; `None` on a local run.
#[derive(Debug, Clone, Default)]
pub struct FileCommands {
    pub output: Option<PathBuf>,
    pub summary: Option<PathBuf>,
}

impl FileCommands {
    pub fn from_env(env: &HashMap<String, String>) -> Self {
        let path = |name: &str| env.get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        FileCommands {
            output: path("GITHUB_OUTPUT"),
            summary: path("GITHUB_STEP_SUMMARY"),
        }
    }
}

struct Inner {
    out: Box<dyn Write + Send>,
    err: Box<dyn Write + Send>,
    files: FileCommands,
    masks: Vec<String>,
    annotations: HashMap<Level, usize>,
}

/// The one writer for stdout, stderr, `GITHUB_OUTPUT` and `GITHUB_STEP_SUMMARY`.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Mutex<Inner>>,
}

impl Runner {
    /// Starts the protocol. The secrets are masked before anything else is printed.
    pub fn start(
        out: Box<dyn Write + Send>,
        err: Box<dyn Write + Send>,
        files: FileCommands,
        secrets: &[&Secret],
    ) -> Runner {
        let runner = Runner {
            inner: Arc::new(Mutex::new(Inner {
                out,
                err,
                files,
                masks: Vec::new(),
                annotations: HashMap::new(),
            })),
        };
        for secret in secrets {
            runner.add_mask(secret);
        }
        runner
    }

    pub fn stdio(files: FileCommands, secrets: &[&Secret]) -> Runner {
        Runner::start(
            Box::new(std::io::stdout()),
            Box::new(std::io::stderr()),
            files,
            secrets,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while printing must not silence every later line.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a secret: `::add-mask::` for the runner, and local scrubbing for every
    /// sink the runner does not mask (the summary, outputs, a local terminal).
    pub fn add_mask(&self, secret: &Secret) {
        let mut inner = self.lock();
        for fragment in secret.fragments() {
            if inner.masks.iter().any(|m| m == fragment) {
                continue;
            }
            let _ = writeln!(inner.out, "::add-mask::{}", escape_data(fragment));
            inner.masks.push(fragment.to_string());
        }
        crate::secret::register(secret);
        // Longest first, so a fragment inside a longer secret does not leave a tail behind.
        inner.masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
    }

    /// Replaces every registered secret fragment with `***`.
    pub fn scrub(&self, text: &str) -> String {
        scrub(&self.lock().masks, text)
    }

    /// Prints text that is not a command. Any of it may have come from outside berth (a
    /// container's log, a health body, a remote error), so every line is defused first.
    pub fn line(&self, text: &str) {
        let mut inner = self.lock();
        let text = scrub(&inner.masks, text);
        let _ = write!(inner.out, "{}", defuse(&text));
        let _ = inner.out.flush();
    }

    pub fn debug_line(&self, text: &str) {
        let mut inner = self.lock();
        let text = scrub(&inner.masks, text);
        let _ = write!(inner.err, "{}", defuse(&text));
    }

    /// Writes an annotation unless the runner's per-level cap is reached, in which case
    /// the message still reaches the log as a plain line.
    pub fn annotate(&self, annotation: &Annotation) {
        let mut inner = self.lock();
        let count = inner.annotations.entry(annotation.level).or_insert(0);
        *count += 1;
        let over_cap = *count > ANNOTATIONS_PER_LEVEL;
        let mut a = annotation.clone();
        a.message = scrub(&inner.masks, &a.message);
        a.title = a.title.map(|t| scrub(&inner.masks, &t));
        let line = if over_cap {
            // Past the cap the runner would only log it; say it as a plain, defused line.
            defuse(&format!(
                "{}: {}",
                a.title.as_deref().unwrap_or(a.level.command()),
                a.message
            ))
        } else {
            a.to_command() + "\n"
        };
        let _ = write!(inner.out, "{line}");
        let _ = inner.out.flush();
    }

    pub fn warning(&self, title: &str, message: &str) {
        self.annotate(&Annotation::new(Level::Warning, title, message));
    }

    /// Opens a folded log section; it closes when the guard drops.
    pub fn group(&self, title: &str) -> GroupGuard {
        let mut inner = self.lock();
        let title = scrub(&inner.masks, title);
        let _ = writeln!(inner.out, "::group::{}", escape_data(&title));
        let _ = inner.out.flush();
        GroupGuard {
            runner: self.clone(),
        }
    }

    /// `name<<DELIM` heredoc with a random delimiter absent from the value.
    pub fn set_output(&self, name: &str, value: &str) {
        let mut inner = self.lock();
        let value = scrub(&inner.masks, value);
        match inner.files.output.clone() {
            Some(path) => {
                let record = heredoc(name, &value);
                if let Err(e) = append(&path, &record) {
                    let _ = writeln!(inner.err, "berth: cannot write output {name}: {e}");
                }
            }
            None => {
                let _ = write!(inner.err, "{}", defuse(&format!("output {name}={value}")));
            }
        }
    }

    pub fn append_summary(&self, markdown: &str) {
        let mut inner = self.lock();
        let mut markdown = scrub(&inner.masks, markdown);
        // The report keeps itself well under the limit; this is the last line of defence,
        // since over it GitHub drops the whole summary and fails the step.
        let limit = SUMMARY_LIMIT - 1024;
        if markdown.len() > limit {
            let mut end = limit;
            while !markdown.is_char_boundary(end) {
                end -= 1;
            }
            markdown.truncate(end);
            markdown.push_str("\n\n_[summary cut at GitHub's 1 MiB limit]_\n");
        }
        match inner.files.summary.clone() {
            Some(path) => {
                if let Err(e) = append(&path, &markdown) {
                    let _ = writeln!(inner.err, "berth: cannot write the job summary: {e}");
                }
            }
            None => {
                let _ = write!(inner.err, "{}", defuse(&markdown));
            }
        }
    }
}

pub struct GroupGuard {
    runner: Runner,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let mut inner = self.runner.lock();
        let _ = writeln!(inner.out, "::endgroup::");
        let _ = inner.out.flush();
    }
}

/// Breaks text into the lines the runner will see and makes sure none of them is a
/// workflow command, each line ending in `\n`.
///
/// The runner (actions/runner `ProcessInvoker`) reads output with .NET `ReadLine`, which
/// ends a line at `\n`, `\r\n` *and a lone `\r`*. On each line it tries the v2 parser,
/// which trims leading whitespace and then wants `::`, and the legacy parser, which takes
/// `##[` anywhere in the line. So a zero-width space goes in front of a leading `::` and
/// inside every `##[`: the text reads the same, and neither parser fires.
pub fn defuse(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for line in runner_lines(text) {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        out.push_str(indent);
        if body.starts_with("::") {
            out.push(ZWSP);
        }
        out.push_str(&cut_line(body).replace("##[", "##\u{200B}["));
        out.push('\n');
    }
    out
}

const ZWSP: char = '\u{200B}';

/// Lines as .NET `ReadLine` splits them: at `\n`, `\r\n` or a lone `\r`. Text with no
/// line at all still gives one (empty) line, as `writeln!` would print.
pub fn runner_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['\r', '\n']) {
        lines.push(&rest[..i]);
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    if !rest.is_empty() || lines.is_empty() {
        lines.push(rest);
    }
    lines
}

/// Longest line berth prints: the rest is cut (after scrubbing) and the cut is said.
pub const SHOWN_LINE_BYTES: usize = 8 * 1024;
/// Longest partial line a stream buffers while waiting for its end.
pub const PENDING_LINE_BYTES: usize = 64 * 1024;

/// Takes every complete line out of `pending` (ended by `\n`, `\r\n` or a lone `\r`, as
/// the runner splits them) and hands it to `on_line` without its end. A partial line
/// longer than [`PENDING_LINE_BYTES`] is handed over in part, so that output that never
/// ends a line (a progress bar, a huge blob) cannot grow without bound: the part ends on a
/// char boundary and before any of `masks` it would split, and the last (longest mask - 1)
/// bytes stay pending, so a secret that has not fully arrived is never cut either.
pub fn drain_lines(pending: &mut Vec<u8>, masks: &[String], on_line: &mut impl FnMut(&[u8])) {
    let mut start = 0;
    let mut i = 0;
    while i < pending.len() {
        match pending[i] {
            b'\n' => {
                on_line(&pending[start..i]);
                start = i + 1;
            }
            // A lone CR ends a line; CR LF is one end. A CR last in the buffer waits.
            b'\r' if i + 1 < pending.len() => {
                on_line(&pending[start..i]);
                start = if pending[i + 1] == b'\n' {
                    i + 2
                } else {
                    i + 1
                };
                i = start;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    pending.drain(..start);
    if pending.len() > PENDING_LINE_BYTES {
        let overlap = masks.iter().map(|m| m.len().saturating_sub(1)).max();
        let at = pending.len() - overlap.unwrap_or(0);
        let at = match crate::secret::split_point(masks, pending, at) {
            // Nothing but secrets overlapping each other: no place is better than another.
            0 => pending.len(),
            at => at,
        };
        on_line(&pending[..at]);
        pending.drain(..at);
    }
}

fn cut_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= SHOWN_LINE_BYTES {
        return line.into();
    }
    let mut end = SHOWN_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} … [line cut: {} more bytes]",
        &line[..end],
        line.len() - end
    )
    .into()
}

fn append(path: &PathBuf, text: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    Ok(())
}

pub fn heredoc(name: &str, value: &str) -> String {
    let delimiter = loop {
        let candidate = format!("ghadelimiter_{:032x}", rand::random::<u128>());
        if !value.contains(&candidate) {
            break candidate;
        }
    };
    format!("{name}<<{delimiter}\n{value}\n{delimiter}\n")
}

#[cfg(test)]
mod tests;
