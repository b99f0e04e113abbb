//! The runner's `GITHUB_*` facts that inputs default from.

use std::path::PathBuf;
use std::sync::LazyLock;

use regex::Regex;

use super::Env;

/// `owner/name`, as GITHUB_REPOSITORY must be to feed defaults.
static OWNER_SLASH_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$").expect("built-in regex"));

/// Facts from the runner's environment that inputs default from.
#[derive(Debug, Clone, Default)]
pub struct GithubContext {
    pub repository: String,
    pub owner: String,
    pub repo: String,
    pub workspace: PathBuf,
    pub event_name: String,
    pub event_path: Option<PathBuf>,
    pub sha: String,
    pub ref_name: String,
    /// The full ref (`refs/heads/main`, `refs/tags/v1`, `refs/pull/7/merge`): a tag may be
    /// named like a branch, so only this says which one a run is on.
    pub git_ref: String,
    /// `branch` or `tag`.
    pub ref_type: String,
    pub run_id: Option<u64>,
    pub run_number: String,
    pub actor: String,
    pub server_url: String,
    pub api_url: String,
    /// `GITHUB_ACTIONS=true`: a real runner (or act), where an event always exists.
    pub on_runner: bool,
}

impl GithubContext {
    /// Why inputs cannot default from GITHUB_REPOSITORY, for error messages.
    pub(super) fn repository_gap(&self) -> String {
        if self.repository.is_empty() {
            "GITHUB_REPOSITORY is not set".into()
        } else {
            format!(
                "GITHUB_REPOSITORY `{}` is not `owner/name`",
                self.repository
            )
        }
    }

    pub fn from_env(env: &Env) -> GithubContext {
        let get = |k: &str| env.get(k).cloned().unwrap_or_default();
        let repository = get("GITHUB_REPOSITORY");
        // Only a well-formed `owner/name` feeds defaults; anything else (act derives it from
        // a local clone's remote path, e.g. `/srv/repo.git`) is reported by `repository_gap`.
        let (owner, repo) = Some(&repository)
            .filter(|r| OWNER_SLASH_NAME.is_match(r))
            .and_then(|r| r.split_once('/'))
            .map(|(o, r)| (o.to_string(), r.to_string()))
            .unwrap_or_default();
        let workspace = env
            .get("GITHUB_WORKSPACE")
            .filter(|w| !w.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")));
        let or = |k: &str, d: &str| {
            env.get(k)
                .filter(|v| !v.is_empty())
                .cloned()
                .unwrap_or(d.into())
        };
        GithubContext {
            owner,
            repo,
            repository,
            workspace,
            event_name: get("GITHUB_EVENT_NAME"),
            event_path: env
                .get("GITHUB_EVENT_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            sha: get("GITHUB_SHA"),
            ref_name: get("GITHUB_REF_NAME"),
            git_ref: get("GITHUB_REF"),
            ref_type: get("GITHUB_REF_TYPE"),
            run_id: env.get("GITHUB_RUN_ID").and_then(|v| v.parse().ok()),
            run_number: or("GITHUB_RUN_NUMBER", "0"),
            actor: get("GITHUB_ACTOR"),
            server_url: or("GITHUB_SERVER_URL", "https://github.com")
                .trim_end_matches('/')
                .to_string(),
            api_url: or("GITHUB_API_URL", "https://api.github.com")
                .trim_end_matches('/')
                .to_string(),
            on_runner: env.get("GITHUB_ACTIONS").is_some_and(|v| v == "true"),
        }
    }

    pub fn run_url(&self) -> Option<String> {
        let id = self.run_id?;
        if self.repository.is_empty() {
            return None;
        }
        Some(format!(
            "{}/{}/actions/runs/{}",
            self.server_url, self.repository, id
        ))
    }
}
