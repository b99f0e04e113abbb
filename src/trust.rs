//! The trust boundary: which code may reach a host at all.
//!
//! Under `on: workflow_run`, GitHub runs the deploy workflow in the base repository with
//! its secrets even when the CI run that triggered it came from a fork's pull request. So
//! before anything is built, pushed or uploaded, berth checks where the code came from:
//! - code from another repository (a fork) is refused, always;
//! - the event must be one of `events` (default `push`, `workflow_dispatch`);
//! - the branch must match `branches` (default: the repository's default branch), and be
//!   a branch: a tag can be named like one (`git tag main <sha>`), so a direct event's
//!   `GITHUB_REF` must be `refs/heads/<branch>`, and under `workflow_run` (whose
//!   `head_branch` is only a name) GitHub must show `head_sha` on `refs/heads/<branch>`
//!   (`pipeline::gate` asks it, after this check).
//!
//! And the workspace berth builds from must be the very commit that was gated.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::inputs::GithubContext;

/// Where the code of this run came from, as the event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The event that produced the code: under workflow_run, the CI run's event.
    pub event: String,
    /// The repository this workflow runs in.
    pub repository: String,
    /// The repository the code came from, when the event names one.
    pub head_repository: Option<String>,
    /// The branch the code is on, as the event says. Under `workflow_run` this is only a
    /// name (`head_branch`), which the gate still proves through the API.
    pub branch: Option<String>,
    /// A direct event's ref that is not a branch (`refs/tags/main`, `refs/pull/7/merge`).
    pub not_a_branch: Option<String>,
    pub default_branch: Option<String>,
    /// Whether this came through `workflow_run` (for the messages).
    pub via_workflow_run: bool,
}

/// Why a run's code may not deploy. Each message names what was refused and how to allow
/// it, when allowing it is possible at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the code comes from `{head}`, not from this repository `{base}` (a fork's pull request). berth never deploys code from another repository, with this repository's secrets, to your hosts. To deploy it, merge it (or push it to a branch of `{base}`) and let CI run there.")]
    Fork { head: String, base: String },
    #[error("the code comes from a `{event}` event{via}, and `events` allows only {allowed}. To deploy code from `{event}` events of this repository, add it: `events: {allowed_list}, {event}`.")]
    Event {
        event: String,
        via: String,
        allowed: String,
        allowed_list: String,
    },
    #[error("branch `{branch}` may not deploy: `branches` allows {allowed}. To deploy it, add it (or a pattern) to `branches`, e.g. `branches: {example}`.")]
    Branch {
        branch: String,
        allowed: String,
        example: String,
    },
    #[error("`{git_ref}` is not a branch, and berth deploys only branches (`refs/heads/...`) that {allowed} allows: a tag or another ref can carry an allowed branch's name (a tag `main` is not the branch `main`). Push the commit to an allowed branch and deploy from there.")]
    NotABranch { git_ref: String, allowed: String },
    #[error("commit {sha} is not on branch `{branch}` ({why}). Under workflow_run, `head_branch` is only a name, which a tag can carry too, so berth deploys only a commit that GitHub shows on `refs/heads/{branch}` (its head, or behind it). Push the commit to `{branch}` and let CI run there.")]
    NotOnBranch {
        branch: String,
        sha: String,
        why: String,
    },
    #[error("the event names no branch (GITHUB_REF, or `workflow_run.head_branch`, is empty), so berth cannot check it against {allowed}. Deploy from a branch, or trigger berth on an event that has one.")]
    NoBranch { allowed: String },
    #[error("the event payload does not name the repository's default branch (`repository.default_branch`), so berth cannot tell which branch may deploy. On a runner every payload names it; `act push` without `-e` does not. Either set `branches`, e.g. `branches: main`, or give act a payload that names it: `act push -e event.json` with `{{\"ref\": \"refs/heads/main\", \"repository\": {{\"default_branch\": \"main\"}}}}`.")]
    NoDefaultBranch,
}

impl Origin {
    /// The origin from the runner's environment and the event payload.
    pub fn of(ctx: &GithubContext, event: Option<&Value>) -> Origin {
        let payload = event.unwrap_or(&Value::Null);
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(String::from);
        let repository = text(&payload["repository"]["full_name"])
            .or_else(|| text(&payload["workflow_run"]["repository"]["full_name"]))
            .unwrap_or_else(|| ctx.repository.clone());
        let default_branch = text(&payload["repository"]["default_branch"]);
        if ctx.event_name == "workflow_run" {
            let run = &payload["workflow_run"];
            return Origin {
                event: text(&run["event"]).unwrap_or_default(),
                repository,
                // A run whose head repository is gone (a deleted fork) names none: it is
                // not this repository either.
                head_repository: Some(
                    text(&run["head_repository"]["full_name"]).unwrap_or_default(),
                ),
                branch: text(&run["head_branch"]),
                not_a_branch: None,
                default_branch,
                via_workflow_run: true,
            };
        }
        // A pull request event (if `events` allows one) says where its head lives.
        let head_repository = text(&payload["pull_request"]["head"]["repo"]["full_name"])
            .or_else(|| payload["pull_request"].is_object().then(String::new));
        let (branch, not_a_branch) = branch_of_ref(&ctx.git_ref, &ctx.ref_type);
        Origin {
            event: ctx.event_name.clone(),
            repository,
            head_repository,
            branch,
            not_a_branch,
            default_branch,
            via_workflow_run: false,
        }
    }

    /// Checks this origin against the repository, `events` and `branches`.
    pub fn check(&self, events: &[String], branches: &[String]) -> Result<(), Refusal> {
        if let Some(head) = &self.head_repository {
            if !same_repository(head, &self.repository) {
                return Err(Refusal::Fork {
                    head: if head.is_empty() {
                        "an unknown repository (the payload names none)".into()
                    } else {
                        head.clone()
                    },
                    base: self.repository.clone(),
                });
            }
        }
        if !events.iter().any(|e| e == &self.event) {
            return Err(Refusal::Event {
                event: if self.event.is_empty() {
                    "unnamed".into()
                } else {
                    self.event.clone()
                },
                via: if self.via_workflow_run {
                    " (the CI run that triggered this workflow_run)".into()
                } else {
                    String::new()
                },
                allowed: quoted(events),
                allowed_list: events.join(", "),
            });
        }
        let patterns: Vec<String> = if branches.is_empty() {
            match &self.default_branch {
                // A branch name, not a pattern: git allows `{`, `}`, `,` in names.
                Some(b) => vec![globset::escape(b)],
                None => return Err(Refusal::NoDefaultBranch),
            }
        } else {
            branches.to_vec()
        };
        let allowed = if branches.is_empty() {
            format!("{} (the default branch)", quoted(&patterns))
        } else {
            quoted(&patterns)
        };
        if let Some(git_ref) = &self.not_a_branch {
            return Err(Refusal::NotABranch {
                git_ref: git_ref.clone(),
                allowed,
            });
        }
        let Some(branch) = &self.branch else {
            return Err(Refusal::NoBranch { allowed });
        };
        if patterns.iter().any(|p| branch_matches(p, branch)) {
            Ok(())
        } else {
            Err(Refusal::Branch {
                branch: branch.clone(),
                allowed,
                example: format!("{}, {branch}", patterns.join(", ")),
            })
        }
    }
}

/// The branch of a direct event's `GITHUB_REF`, or the ref when it is no branch. The
/// name alone (`GITHUB_REF_NAME`) is the same for the branch `main` and a tag `main`.
fn branch_of_ref(git_ref: &str, ref_type: &str) -> (Option<String>, Option<String>) {
    if git_ref.is_empty() {
        return (None, None);
    }
    match git_ref.strip_prefix("refs/heads/") {
        Some(b) if !b.is_empty() && ref_type != "tag" => (Some(b.to_string()), None),
        _ => (None, Some(git_ref.to_string())),
    }
}

/// GitHub's owner and repository names compare without regard to case.
fn same_repository(a: &str, b: &str) -> bool {
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

/// A glob over the whole branch name, where `*` stays within one `/` segment and `**`
/// crosses them, as in GitHub's own branch filters.
pub fn branch_matches(pattern: &str, branch: &str) -> bool {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher().is_match(branch))
        .unwrap_or(false)
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The workspace is not the commit that was gated, or berth cannot tell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkspaceError {
    #[error("the workspace {workspace} has no `.git`, so berth cannot prove that the files it would build and upload are commit {gated}. Check out the gated commit first: `actions/checkout@v4` with `ref: ${{{{ github.event.workflow_run.head_sha || github.sha }}}}`.")]
    NoGit { workspace: String, gated: String },
    #[error("the workspace's git metadata cannot be read ({detail}), so berth cannot prove that it is commit {gated}. Check out the gated commit with `actions/checkout@v4` and `ref: ${{{{ github.event.workflow_run.head_sha || github.sha }}}}`.")]
    Unreadable { detail: String, gated: String },
    #[error("the workspace is checked out at {head}, but CI was checked for {gated}. berth builds and uploads only the commit it gated. Check out that commit: `actions/checkout@v4` with `ref: ${{{{ github.event.workflow_run.head_sha || github.sha }}}}` (under workflow_run, the default checkout is the default branch's head, not the tested commit).")]
    Mismatch { head: String, gated: String },
}

/// Fails unless every checkout berth reads from is at `gated`: the checkout that holds
/// each of `paths` (the compose file, each Dockerfile and build context), found as the
/// nearest `.git` at or above it within the workspace, so a nested checkout
/// (`actions/checkout` with `path:`) is checked too.
pub fn check_checkouts(
    workspace: &Path,
    paths: &[PathBuf],
    gated: &str,
) -> Result<(), WorkspaceError> {
    let mut checked = std::collections::BTreeSet::new();
    for path in paths {
        let mut dir = if path.is_dir() {
            path.clone()
        } else {
            path.parent().unwrap_or(workspace).to_path_buf()
        };
        let root = loop {
            if dir.join(".git").exists() || dir == workspace || !dir.starts_with(workspace) {
                break dir;
            }
            match dir.parent() {
                Some(p) => dir = p.to_path_buf(),
                None => break workspace.to_path_buf(),
            }
        };
        if checked.insert(root.clone()) {
            check_workspace(&root, gated)?;
        }
    }
    if checked.is_empty() {
        check_workspace(workspace, gated)?;
    }
    Ok(())
}

/// Fails unless the checkout at `workspace` has `HEAD` at `gated`. Read from `.git`
/// itself: the action's image has no git binary.
pub fn check_workspace(workspace: &Path, gated: &str) -> Result<(), WorkspaceError> {
    let unreadable = |detail: String| WorkspaceError::Unreadable {
        detail,
        gated: gated.into(),
    };
    let git = workspace.join(".git");
    if !git.exists() {
        return Err(WorkspaceError::NoGit {
            workspace: workspace.display().to_string(),
            gated: gated.into(),
        });
    }
    let head = head_commit(&git).map_err(unreadable)?;
    if head.eq_ignore_ascii_case(gated) {
        Ok(())
    } else {
        Err(WorkspaceError::Mismatch {
            head,
            gated: gated.into(),
        })
    }
}

/// The commit `HEAD` names: a detached sha, or a branch through a loose ref or
/// `packed-refs`. `.git` may be a directory or a `gitdir:` file (worktrees, submodules),
/// and a worktree keeps its refs in the `commondir`.
pub fn head_commit(dot_git: &Path) -> Result<String, String> {
    let git_dir = git_dir(dot_git)?;
    let common = match read_small(&git_dir.join("commondir")) {
        Ok(rel) => git_dir.join(rel.trim()),
        Err(_) => git_dir.clone(),
    };
    let mut target = read_small(&git_dir.join("HEAD"))?.trim().to_string();
    // A symbolic ref may point at another symbolic ref; follow a few, never forever.
    for _ in 0..5 {
        let Some(name) = target.strip_prefix("ref:").map(str::trim) else {
            return as_sha(&target);
        };
        if !is_ref_name(name) {
            return Err(format!("HEAD names an invalid ref `{name}`"));
        }
        target = match read_small(&git_dir.join(name)).or_else(|_| read_small(&common.join(name))) {
            Ok(t) => t.trim().to_string(),
            Err(_) => packed_ref(&common, name)?,
        };
    }
    Err("HEAD is a chain of symbolic refs too long to follow".into())
}

fn git_dir(dot_git: &Path) -> Result<PathBuf, String> {
    if dot_git.is_dir() {
        return Ok(dot_git.to_path_buf());
    }
    let text = read_small(dot_git)?;
    let rel = text
        .trim()
        .strip_prefix("gitdir:")
        .map(str::trim)
        .ok_or_else(|| "`.git` is a file without a `gitdir:` line".to_string())?;
    let base = dot_git.parent().unwrap_or(Path::new("."));
    Ok(base.join(rel))
}

fn packed_ref(common: &Path, name: &str) -> Result<String, String> {
    let packed = read_small(&common.join("packed-refs"))
        .map_err(|_| format!("ref `{name}` is neither a file nor in packed-refs"))?;
    packed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('^'))
        .find_map(|l| {
            let (sha, r) = l.split_once(' ')?;
            (r.trim() == name).then(|| sha.to_string())
        })
        .ok_or_else(|| format!("ref `{name}` is neither a file nor in packed-refs"))
}

fn as_sha(s: &str) -> Result<String, String> {
    let ok = matches!(s.len(), 40 | 64) && s.chars().all(|c| c.is_ascii_hexdigit());
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "HEAD holds `{}`, not a commit sha",
            s.chars().take(80).collect::<String>()
        ))
    }
}

/// `refs/...` with no way out of the git dir.
fn is_ref_name(name: &str) -> bool {
    name.starts_with("refs/")
        && !name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        && !name.contains(['\\', '\0'])
}

/// Git metadata files are small; a huge one is not git's.
fn read_small(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    f.take(16 << 20)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "fedcba9876543210fedcba9876543210fedcba98";

    fn origin(event: &str, head: Option<&str>, branch: Option<&str>) -> Origin {
        Origin {
            event: event.into(),
            repository: "acme/shop".into(),
            head_repository: head.map(String::from),
            branch: branch.map(String::from),
            not_a_branch: None,
            default_branch: Some("main".into()),
            via_workflow_run: true,
        }
    }

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_fork_is_refused_whatever_events_and_branches_allow() {
        let o = origin("pull_request", Some("mallory/shop"), Some("main"));
        let everything = list(&["push", "pull_request"]);
        assert!(matches!(
            o.check(&everything, &list(&["**"])),
            Err(Refusal::Fork { .. })
        ));
        let gone = origin("push", Some(""), Some("main"));
        assert!(matches!(
            gone.check(&everything, &[]),
            Err(Refusal::Fork { .. })
        ));
        let same_case_insensitive = origin("push", Some("ACME/Shop"), Some("main"));
        assert_eq!(same_case_insensitive.check(&everything, &[]), Ok(()));
    }

    #[test]
    fn events_and_branches_are_checked_with_the_default_branch_by_default() {
        let allowed = list(&["push", "workflow_dispatch"]);
        let pr = origin("pull_request", Some("acme/shop"), Some("main"));
        assert!(matches!(
            pr.check(&allowed, &[]),
            Err(Refusal::Event { .. })
        ));
        let feature = origin("push", Some("acme/shop"), Some("feature/x"));
        let err = feature.check(&allowed, &[]).unwrap_err();
        assert!(
            err.to_string().contains("`main` (the default branch)"),
            "{err}"
        );
        assert!(
            err.to_string().contains("branches: main, feature/x"),
            "{err}"
        );
        assert_eq!(
            feature.check(&allowed, &list(&["main", "feature/*"])),
            Ok(())
        );
        let nested = origin("push", Some("acme/shop"), Some("release/1/hotfix"));
        assert!(nested.check(&allowed, &list(&["release/*"])).is_err());
        assert_eq!(nested.check(&allowed, &list(&["release/**"])), Ok(()));
        let mut unknown = origin("push", None, Some("main"));
        unknown.default_branch = None;
        assert_eq!(unknown.check(&allowed, &[]), Err(Refusal::NoDefaultBranch));
        assert_eq!(unknown.check(&allowed, &list(&["main"])), Ok(()));
    }

    #[test]
    fn the_origin_is_read_from_a_workflow_run_payload_and_a_pull_request_payload() {
        let ctx = GithubContext {
            event_name: "workflow_run".into(),
            repository: "acme/shop".into(),
            ref_name: "main".into(),
            git_ref: "refs/heads/main".into(),
            ..Default::default()
        };
        let payload = serde_json::json!({
            "repository": {"full_name": "acme/shop", "default_branch": "trunk"},
            "workflow_run": {"event": "pull_request", "head_branch": "patch-1",
                             "head_repository": {"full_name": "mallory/shop"}}
        });
        let o = Origin::of(&ctx, Some(&payload));
        assert_eq!(o.event, "pull_request");
        assert_eq!(o.head_repository.as_deref(), Some("mallory/shop"));
        assert_eq!(o.branch.as_deref(), Some("patch-1"));
        assert_eq!(o.default_branch.as_deref(), Some("trunk"));
        let direct = GithubContext {
            event_name: "pull_request_target".into(),
            ..ctx
        };
        let pr = serde_json::json!({
            "repository": {"full_name": "acme/shop", "default_branch": "main"},
            "pull_request": {"head": {"repo": {"full_name": "mallory/shop"}}}
        });
        let o = Origin::of(&direct, Some(&pr));
        assert_eq!(o.head_repository.as_deref(), Some("mallory/shop"));
        assert_eq!(o.branch.as_deref(), Some("main"));
    }

    #[test]
    fn head_is_read_detached_through_a_loose_ref_and_through_packed_refs() {
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path().join(".git");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        std::fs::write(git.join("HEAD"), format!("{A}\n")).unwrap();
        assert_eq!(head_commit(&git).unwrap(), A);
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(git.join("refs/heads/main"), format!("{B}\n")).unwrap();
        assert_eq!(head_commit(&git).unwrap(), B);
        std::fs::remove_file(git.join("refs/heads/main")).unwrap();
        std::fs::write(
            git.join("packed-refs"),
            format!("# pack-refs with: peeled fully-peeled sorted\n{A} refs/heads/main\n^{B}\n"),
        )
        .unwrap();
        assert_eq!(head_commit(&git).unwrap(), A);
        std::fs::write(git.join("HEAD"), "ref: refs/heads/../../../etc/passwd\n").unwrap();
        assert!(head_commit(&git).unwrap_err().contains("invalid ref"));
    }

    #[test]
    fn a_gitdir_file_and_a_worktree_commondir_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let main_git = dir.path().join("repo.git");
        let wt = main_git.join("worktrees/ws");
        std::fs::create_dir_all(&wt).unwrap();
        std::fs::create_dir_all(main_git.join("refs/heads")).unwrap();
        std::fs::write(main_git.join("refs/heads/deploy"), format!("{B}\n")).unwrap();
        std::fs::write(wt.join("HEAD"), "ref: refs/heads/deploy\n").unwrap();
        std::fs::write(wt.join("commondir"), "../..\n").unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join(".git"), format!("gitdir: {}\n", wt.display())).unwrap();
        assert_eq!(check_workspace(&ws, B), Ok(()));
        let err = check_workspace(&ws, A).unwrap_err();
        assert!(matches!(err, WorkspaceError::Mismatch { .. }));
        assert!(
            err.to_string().contains(A) && err.to_string().contains(B),
            "{err}"
        );
        let bare = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_workspace(bare.path(), A),
            Err(WorkspaceError::NoGit { .. })
        ));
    }

    #[test]
    fn a_nested_checkout_is_checked_where_its_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        std::fs::create_dir_all(ws.join(".git")).unwrap();
        std::fs::write(ws.join(".git/HEAD"), format!("{A}\n")).unwrap();
        std::fs::create_dir_all(ws.join("app/.git")).unwrap();
        std::fs::write(ws.join("app/.git/HEAD"), format!("{B}\n")).unwrap();
        std::fs::create_dir_all(ws.join("app/deploy")).unwrap();
        let compose = ws.join("app/deploy/compose.yml");
        std::fs::write(&compose, "services: {}\n").unwrap();
        let err = check_checkouts(ws, std::slice::from_ref(&compose), A).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::Mismatch { ref head, .. } if head == B),
            "{err}"
        );
        assert_eq!(check_checkouts(ws, &[compose], B), Ok(()));
        assert_eq!(check_checkouts(ws, &[ws.join("top.yml")], A), Ok(()));
    }

    #[test]
    fn a_direct_events_branch_is_read_from_the_full_ref_not_the_name() {
        assert_eq!(
            branch_of_ref("refs/heads/release/1", "branch"),
            (Some("release/1".into()), None)
        );
        assert_eq!(
            branch_of_ref("refs/tags/main", "tag"),
            (None, Some("refs/tags/main".into()))
        );
        // The ref and its type disagree: not provably a branch.
        assert_eq!(
            branch_of_ref("refs/heads/main", "tag"),
            (None, Some("refs/heads/main".into()))
        );
        assert_eq!(branch_of_ref("", "branch"), (None, None));
        let mut tag = origin("push", Some("acme/shop"), None);
        tag.not_a_branch = Some("refs/tags/main".into());
        for branches in [vec![], list(&["**"])] {
            assert!(matches!(
                tag.check(&list(&["push"]), &branches),
                Err(Refusal::NotABranch { .. })
            ));
        }
    }

    #[test]
    fn the_default_branch_is_a_name_not_a_pattern() {
        let mut o = origin("push", Some("acme/shop"), Some("a"));
        o.default_branch = Some("{a,b}".into());
        assert!(o.check(&list(&["push"]), &[]).is_err());
        o.branch = Some("{a,b}".into());
        assert_eq!(o.check(&list(&["push"]), &[]), Ok(()));
    }
}
