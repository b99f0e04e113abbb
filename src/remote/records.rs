//! What berth writes on a host as JSON and reads back: the lock holder, and each
//! release's record, from which the release to roll back to and the ones to prune are
//! chosen.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::RECORD_FILE;

/// The lock holder's record, written into the lock dir.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockHolder {
    pub token: String,
    pub run_url: String,
    pub actor: String,
    pub sha: String,
    pub started_at: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} deploying {} since {} ({})",
            if self.actor.is_empty() {
                "someone"
            } else {
                &self.actor
            },
            crate::short_sha(&self.sha),
            self.started_at,
            if self.run_url.is_empty() {
                "no run URL"
            } else {
                &self.run_url
            }
        )
    }
}

/// `release.json`: what a release is, so it can be restored exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ReleaseRecord {
    pub id: String,
    pub sha: String,
    pub created_at: String,
    /// When the outcome was last written.
    #[serde(default)]
    pub updated_at: String,
    /// SHA-256 of this release's compose file and env file, as uploaded.
    #[serde(default)]
    pub compose_sha256: String,
    #[serde(default)]
    pub env_sha256: String,
    pub actor: String,
    pub run_url: String,
    /// service -> pinned image (`repo@sha256:...`, or `sha256:<id>` for local-only images).
    pub images: BTreeMap<String, String>,
    /// What ran before this release was switched in: service -> image id.
    pub replaced: BTreeMap<String, String>,
    pub previous_release: Option<String>,
    /// `pending`, `deployed` (proven healthy), `rolled-back`, `failed` or `interrupted`.
    pub outcome: String,
}

/// What a release turned out to be, as its record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    /// Proven healthy: the only kind a rollback goes to by itself.
    Deployed,
    RolledBack,
    Failed,
    Interrupted,
    /// No record, or one berth cannot read (an upload that failed half-way).
    Unknown,
}

impl Outcome {
    pub fn parse(s: &str) -> Outcome {
        match s {
            "pending" => Outcome::Pending,
            "deployed" => Outcome::Deployed,
            "rolled-back" => Outcome::RolledBack,
            "failed" => Outcome::Failed,
            "interrupted" => Outcome::Interrupted,
            _ => Outcome::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Deployed => "deployed",
            Outcome::RolledBack => "rolled-back",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::Unknown => "unknown (no readable record)",
        }
    }
}

pub const RECORD_MARK: &str = "==berth-release==";

/// Prints each release dir under `$r` as a `RECORD_MARK id` line, then its record.
pub(super) fn records_script() -> String {
    format!(
        r#"cd "$r" 2>/dev/null || exit 0
for d in *; do [ -d "$d" ] || continue; echo "{RECORD_MARK} $d"; cat "$d/{RECORD_FILE}" 2>/dev/null; echo; done"#
    )
}

/// One release dir on a host and its record, if it has a readable one.
#[derive(Debug, Clone)]
pub struct ReleaseEntry {
    pub id: String,
    pub record: Option<ReleaseRecord>,
}

impl ReleaseEntry {
    pub fn outcome(&self) -> Outcome {
        self.record
            .as_ref()
            .map_or(Outcome::Unknown, |r| Outcome::parse(&r.outcome))
    }
}

/// The output of [`Layout::release_records`](super::Layout::release_records), newest
/// release first.
pub fn parse_release_records(out: &str) -> Vec<ReleaseEntry> {
    let mut entries: Vec<ReleaseEntry> = Vec::new();
    let mut body = String::new();
    let finish = |entries: &mut Vec<ReleaseEntry>, body: &mut String| {
        if let Some(last) = entries.last_mut() {
            last.record = serde_json::from_str(body.trim()).ok();
        }
        body.clear();
    };
    for line in out.lines() {
        match line.strip_prefix(RECORD_MARK) {
            Some(id) => {
                finish(&mut entries, &mut body);
                entries.push(ReleaseEntry {
                    id: id.trim().to_string(),
                    record: None,
                });
            }
            None => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    finish(&mut entries, &mut body);
    // Only names berth could have made: a dir named otherwise (with `/`, spaces, or the
    // marker inside) is no release of berth's, and is never pruned or restored.
    entries.retain(|e| is_release_id(&e.id));
    entries.sort_by(|a, b| b.id.cmp(&a.id));
    entries
}

/// The release the snapshot's first line names (the basename of `current`'s target), if
/// it is shaped like one berth made. The host's link is not trusted: a tampered
/// `current -> .berth/releases/$(curl x|sh)` must not become the `previous-release`
/// output that a later `run:` step may interpolate, nor a release to restore.
pub fn current_release(line: &str) -> Option<String> {
    Some(line.trim())
        .filter(|id| is_release_id(id))
        .map(String::from)
}

/// `20261124T101500Z-abc1234`, or anything shaped like one: letters, digits, `_.-`.
pub fn is_release_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The release a rollback goes to: the newest one proven healthy, other than `except`.
pub fn newest_proven<'a>(entries: &'a [ReleaseEntry], except: &[&str]) -> Option<&'a ReleaseEntry> {
    entries
        .iter()
        .find(|e| e.outcome() == Outcome::Deployed && !except.contains(&e.id.as_str()))
}

/// Release ids sort by time: `20261124T101500Z-abc1234`.
pub fn release_id(now: time::OffsetDateTime, sha: &str) -> String {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    format!(
        "{}-{}",
        now.to_offset(time::UtcOffset::UTC)
            .format(&fmt)
            .expect("format"),
        crate::short_sha(sha)
    )
}

/// Which release dirs to delete: all but the newest `keep`, never `current` or `protect`.
/// Releases that are not proven (failed, rolled back, interrupted, partial) kept for
/// diagnosis, newest first; older ones are pruned.
pub const UNPROVEN_KEPT: usize = 2;

/// Which release dirs to delete: `keep` counts proven releases only, so a run of failed
/// deploys (or a partial upload) never displaces a release a rollback could go to. The
/// newest [`UNPROVEN_KEPT`] unproven ones stay for diagnosis. `current` and `protect`
/// always stay.
pub fn releases_to_prune(
    entries: &[ReleaseEntry],
    keep: usize,
    current: &str,
    protect: Option<&str>,
) -> Vec<String> {
    let (mut proven, mut unproven) = (0, 0);
    let mut doomed = Vec::new();
    // `entries` is newest first.
    for e in entries {
        let kept = if e.outcome() == Outcome::Deployed {
            proven += 1;
            proven <= keep
        } else {
            unproven += 1;
            unproven <= UNPROVEN_KEPT
        };
        if !kept && e.id != current && Some(e.id.as_str()) != protect {
            doomed.push(e.id.clone());
        }
    }
    doomed
}
