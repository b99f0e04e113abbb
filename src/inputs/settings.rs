//! What the inputs mean once parsed: one settings struct per area of the deploy, each
//! taken by the module that does that part, and the domain types they hold.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use url::Url;

use super::urls::{check_http_url, expand_host};
use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Deploy,
    Rollback,
}

/// Where a release goes: a compose project on each host, or a Swarm stack through one
/// manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Compose,
    Swarm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackPolicy {
    Auto,
    Off,
}

/// The CI gate: which workflows must have passed for the commit, and whose code may deploy.
#[derive(Debug, Clone)]
pub struct GateSettings {
    pub github_token: Secret,
    pub ci_workflows: Vec<String>,
    pub allow_untested: bool,
    pub ci_timeout: Duration,
    pub ci_poll_interval: Duration,
    pub sha: Option<String>,
    /// Glob patterns of the branches that may deploy; empty: the default branch.
    pub branches: Vec<String>,
    /// Events whose code may deploy.
    pub events: Vec<String>,
}

/// Which builder `DOCKER_BUILDKIT` asks for, read the way the docker CLI reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuilderChoice {
    /// BuildKit where the engine has it, else the classic builder.
    #[default]
    Auto,
    BuildKit,
    Classic,
}

/// Building the images, and the registry they are pushed to.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    /// From the `DOCKER_BUILDKIT` environment variable, as the docker CLI reads it.
    pub builder: BuilderChoice,
    pub images: Vec<ImageSpec>,
    pub build_args: Vec<(String, String)>,
    pub registry: String,
    pub registry_username: String,
    pub registry_password: Secret,
    pub image_prefix: String,
    pub tags: Vec<TagTemplate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub service: String,
    pub dockerfile: String,
    pub context: String,
    pub target: Option<String>,
}

/// A tag template; placeholders are expanded once the commit and branch are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagTemplate(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagValues {
    pub sha: String,
    pub branch: String,
    pub run_number: String,
}

/// What expanding a template gave, and whether `{branch}` had to be sanitised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExpandedTag {
    pub tag: String,
    pub sanitised_from: Option<String>,
}

/// The placeholders a tag template may use, without their braces.
pub(super) const PLACEHOLDERS: &[&str] = &["sha", "short_sha", "branch", "run_number"];

impl TagTemplate {
    /// Names the commit or the run, so it never moves to another image: such tags are
    /// pushed before the deploy; the others only after it proved healthy.
    pub fn is_immutable(&self) -> bool {
        ["{sha}", "{short_sha}", "{run_number}"]
            .iter()
            .any(|p| self.0.contains(p))
    }

    /// `{branch}` may hold characters a tag cannot (`feature/x`). It is sanitised, not
    /// rejected: every character outside `[A-Za-z0-9_.-]` becomes `-`, leading `.`/`-` are
    /// dropped, and the tag is cut at 128 characters. The caller warns when that changed it.
    pub(crate) fn expand(&self, v: &TagValues) -> ExpandedTag {
        let short = crate::short_sha(&v.sha);
        let raw = self
            .0
            .replace("{sha}", &v.sha)
            .replace("{short_sha}", short)
            .replace("{branch}", &v.branch)
            .replace("{run_number}", &v.run_number);
        let mut tag: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        tag = tag.trim_start_matches(['.', '-']).to_string();
        tag.truncate(128);
        let sanitised_from = (tag != raw).then_some(raw);
        ExpandedTag {
            tag,
            sanitised_from,
        }
    }
}

/// The registry's tag grammar: `[\w][\w.-]{0,127}`.
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").expect("built-in regex"));

/// Whether the registry accepts `tag` as a tag.
pub(crate) fn is_valid_tag(tag: &str) -> bool {
    TAG.is_match(tag)
}

/// The hosts deployed to, how berth logs in and trusts them, and the release laid out there.
#[derive(Debug, Clone)]
pub struct HostSettings {
    pub kind: TargetKind,
    pub hosts: Vec<HostSpec>,
    pub ssh_key: Secret,
    pub ssh_key_passphrase: Option<Secret>,
    pub known_hosts: Vec<KnownHost>,
    pub host_fingerprints: Vec<String>,
    pub insecure_skip_host_key_check: bool,
    pub deploy_dir: String,
    pub project_name: String,
    pub compose_file: PathBuf,
    pub env_file: Option<Secret>,
    pub pre_deploy: Option<PreDeploy>,
    pub pre_deploy_timeout: Duration,
    /// How long the host's pull may go without progress before it fails as stalled.
    pub pull_stall_timeout: Duration,
    pub keep_releases: u32,
    pub lock_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for HostSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

/// One `known_hosts` line: host patterns, key type, and the raw key blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHost {
    pub patterns: Vec<String>,
    pub key_type: String,
    pub key: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreDeploy {
    pub service: String,
    pub argv: Vec<String>,
}

/// The health check that proves a release, from the `health-*` inputs.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// `health-url`; with a `{host}` placeholder, this is its expansion for the first host.
    pub url: Option<Url>,
    /// `health-url` as given, when it has a `{host}` placeholder: probed once per host.
    pub url_template: Option<String>,
    /// The password of `health-url` (`https://user:pw@host`), masked like any secret.
    pub url_password: Option<Secret>,
    pub timeout: Duration,
    pub interval: Duration,
    pub status: StatusMatcher,
    pub json: Vec<JsonExpectation>,
    pub headers: Vec<(String, Secret)>,
    pub ca_cert: Option<String>,
    pub insecure_tls: bool,
}

impl HealthSettings {
    /// The URLs to probe for these hosts: one per host when `health-url` has `{host}`.
    pub fn urls(&self, hosts: &[HostSpec]) -> Vec<Url> {
        match &self.url_template {
            Some(t) => {
                // Every expansion was checked at parse time, so none is dropped here.
                let mut urls: Vec<Url> = hosts
                    .iter()
                    .filter_map(|h| check_http_url(&expand_host(t, &h.host)).ok())
                    .collect();
                urls.dedup();
                urls
            }
            None => self.url.iter().cloned().collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusRule {
    Code(u16),
    Class(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMatcher(pub Vec<StatusRule>);

impl StatusMatcher {
    pub fn accepts(&self, code: u16) -> bool {
        self.0.iter().any(|r| match r {
            StatusRule::Code(c) => *c == code,
            StatusRule::Class(c) => code / 100 == *c,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonExpectation {
    pub pointer: String,
    pub value: String,
}

/// How the deploy is reported on GitHub: the environment and its Deployment.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub environment: String,
    pub environment_url: Option<Url>,
    pub create_deployment: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_placeholders_are_sanitised() {
        let v = TagValues {
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            branch: "feature/x".into(),
            run_number: "7".into(),
        };
        let t = TagTemplate("staging-{branch}-{short_sha}".into()).expand(&v);
        assert_eq!(t.tag, "staging-feature-x-0123456");
        assert_eq!(
            t.sanitised_from.as_deref(),
            Some("staging-feature/x-0123456")
        );
        let plain = TagTemplate("staging-{sha}".into()).expand(&v);
        assert_eq!(plain.sanitised_from, None);
        assert!(is_valid_tag(&plain.tag));
    }
}
