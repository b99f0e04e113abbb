//! The input contract: every `INPUT_*` variable parsed into one typed [`Config`], with every
//! problem reported at once before anything has a side effect.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use url::Url;

use crate::docker::BuilderChoice;
use crate::secret::Secret;

/// One input of `action.yml`. The table below is the single source of names and defaults;
/// a test checks `action.yml` against it.
pub struct InputSpec {
    pub name: &'static str,
    pub default: &'static str,
    pub secret: bool,
    pub description: &'static str,
}

const fn input(name: &'static str, default: &'static str, description: &'static str) -> InputSpec {
    InputSpec {
        name,
        default,
        secret: false,
        description,
    }
}

const fn secret(name: &'static str, default: &'static str, description: &'static str) -> InputSpec {
    InputSpec {
        name,
        default,
        secret: true,
        description,
    }
}

pub const INPUTS: &[InputSpec] = &[
    input("mode", "deploy", "`deploy`, or `rollback` (re-activate a previous release)"),
    input("release", "", "With `mode: rollback`: the release id to restore (default: the newest release proven healthy, other than current)"),
    input("dry-run", "false", "Print the plan and touch nothing"),
    secret("github-token", "${{ github.token }}", "Token for the CI gate and Deployments"),
    input("ci-workflows", "", "Workflow files or names (comma or newline list) that must have succeeded for `sha`"),
    input("allow-untested", "false", "Deploy without any CI gate (prints a warning)"),
    input("ci-timeout", "30m", "Longest wait for CI"),
    input("ci-poll-interval", "10s", "Interval between CI polls"),
    input("sha", "", "Commit to deploy. Default: `workflow_run.head_sha` under workflow_run, else GITHUB_SHA"),
    input("branches", "", "Branches that may deploy: glob patterns (`main`, `release/*`), comma or newline list. Default: the repository's default branch"),
    input("events", "push, workflow_dispatch", "Events whose code may deploy (under workflow_run: the event of the CI run). Code from a fork is always refused"),
    input("images", "", "One line per service: `service=path/to/Dockerfile[,context=dir][,target=stage]`. Empty builds nothing"),
    input("build-args", "", "`KEY=VALUE` lines passed to every build"),
    input("registry", "ghcr.io", "Registry host[:port] to push to and pull from"),
    input("registry-username", "${{ github.actor }}", "Registry user"),
    secret("registry-password", "${{ github.token }}", "Registry password or token"),
    input("image-prefix", "", "Default `<registry>/<owner>/<repo>` lower-cased; a service's image is `<image-prefix>-<service>`"),
    input("tags", "staging-{sha}\nstaging-latest", "Tag templates, one a line; placeholders {sha} {short_sha} {branch} {run_number}. Tags naming the commit or run are pushed before the deploy; the others (moving) only after it proved healthy"),
    input("hosts", "", "Required. `[user@]host[:port]`, comma or newline list"),
    input("ssh-user", "deploy", "SSH user for hosts that name none"),
    input("ssh-port", "22", "SSH port for hosts that name none"),
    secret("ssh-key", "", "Required. Private key, OpenSSH or PEM format"),
    secret("ssh-key-passphrase", "", "Passphrase of `ssh-key`"),
    input("known-hosts", "", "known_hosts lines, as printed by `ssh-keyscan`"),
    input("host-fingerprints", "", "`SHA256:...` host key fingerprints, comma or newline list"),
    input("insecure-skip-host-key-check", "false", "Accept any host key (not recommended; refused together with `host-fingerprints` or `known-hosts`)"),
    input("deploy-dir", "", "Absolute path on the host. Default `/opt/<repo>`"),
    input("project-name", "", "Compose project name. Default `<repo>`"),
    input("compose-file", "docker-compose.staging.yml", "Compose file, path in the workspace"),
    secret("env-file", "", "Contents of the app's `.env`, written with mode 0600"),
    input("pre-deploy", "", "`service: command`, run once with the new images before the switch"),
    input("keep-releases", "3", "Proven releases (and their images) kept on each host; the newest 2 unproven ones are kept too, for diagnosis"),
    input("lock-timeout", "10m", "Longest wait for another deploy's lock"),
    input("health-url", "", "Required with `mode: deploy`. URL polled until healthy"),
    input("health-timeout", "30s", "Hard deadline for the health check, from `up`"),
    input("health-interval", "1s", "Interval between health probes"),
    input("health-status", "200", "Accepted codes, e.g. `200,204` or `2xx`"),
    input("health-json", "", "`pointer=value` lines (RFC 6901), e.g. `/data/status=healthy`"),
    input("health-headers", "", "`Name: value` lines sent with each probe; values are treated as secrets"),
    input("health-ca-cert", "", "PEM of a CA to trust for the health URL"),
    input("health-insecure-tls", "false", "Skip TLS verification of the health URL (prints a warning)"),
    input("rollback", "auto", "`auto` or `off`"),
    input("environment", "staging", "GitHub environment name"),
    input("environment-url", "", "URL shown on the GitHub Deployment. Default: the origin of `health-url`"),
    input("create-deployment", "true", "Create a GitHub Deployment and its statuses"),
];

pub struct OutputSpec {
    pub name: &'static str,
    pub description: &'static str,
}

pub const OUTPUTS: &[OutputSpec] = &[
    OutputSpec {
        name: "status",
        description: "`deployed`, `rolled-back`, `failed` or `skipped`",
    },
    OutputSpec {
        name: "sha",
        description: "The commit that was deployed (or refused)",
    },
    OutputSpec {
        name: "release",
        description: "The release id created or restored",
    },
    OutputSpec {
        name: "previous-release",
        description: "The release that was current before this run",
    },
    OutputSpec {
        name: "images",
        description: "JSON object mapping each service to `repo@sha256:...`",
    },
    OutputSpec {
        name: "health-seconds",
        description: "Seconds from `up` to healthy",
    },
    OutputSpec {
        name: "deployment-id",
        description: "Id of the GitHub Deployment",
    },
];

/// The environment as a map, so parsing is a pure function of it.
pub type Env = HashMap<String, String>;

/// `ssh-key` arrives as `INPUT_SSH-KEY`: upper-cased, spaces to `_`, hyphens kept.
pub fn env_name(input: &str) -> String {
    format!("INPUT_{}", input.to_uppercase().replace(' ', "_"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Deploy,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackPolicy {
    Auto,
    Off,
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
pub struct TagValues {
    pub sha: String,
    pub branch: String,
    pub run_number: String,
}

/// What expanding a template gave, and whether `{branch}` had to be sanitised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandedTag {
    pub tag: String,
    pub sanitised_from: Option<String>,
}

const PLACEHOLDERS: &[&str] = &["sha", "short_sha", "branch", "run_number"];

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
    pub fn expand(&self, v: &TagValues) -> ExpandedTag {
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
pub fn is_valid_tag(tag: &str) -> bool {
    static_regex(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").is_match(tag)
}

/// A built-in pattern, compiled once per process (a `Regex` clone shares the compiled
/// program). The patterns are literals in this crate; a unit test compiles every one.
pub(crate) fn static_regex(re: &'static str) -> Regex {
    static CACHE: std::sync::LazyLock<std::sync::Mutex<HashMap<&'static str, Regex>>> =
        std::sync::LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(re)
        // Not reachable from input: the patterns are this crate's literals.
        .or_insert_with(|| Regex::new(re).expect("built-in regex"))
        .clone()
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

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub release: Option<String>,
    pub dry_run: bool,
    /// From the `DOCKER_BUILDKIT` environment variable, as the docker CLI reads it.
    pub builder: BuilderChoice,
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
    pub images: Vec<ImageSpec>,
    pub build_args: Vec<(String, String)>,
    pub registry: String,
    pub registry_username: String,
    pub registry_password: Secret,
    pub image_prefix: String,
    pub tags: Vec<TagTemplate>,
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
    pub keep_releases: u32,
    pub lock_timeout: Duration,
    /// `health-url`; with a `{host}` placeholder, this is its expansion for the first host.
    pub health_url: Option<Url>,
    /// `health-url` as given, when it has a `{host}` placeholder: probed once per host.
    pub health_url_template: Option<String>,
    /// The password of `health-url` (`https://user:pw@host`), masked like any secret.
    pub health_url_password: Option<Secret>,
    pub health_timeout: Duration,
    pub health_interval: Duration,
    pub health_status: StatusMatcher,
    pub health_json: Vec<JsonExpectation>,
    pub health_headers: Vec<(String, Secret)>,
    pub health_ca_cert: Option<String>,
    pub health_insecure_tls: bool,
    pub rollback: RollbackPolicy,
    pub environment: String,
    pub environment_url: Option<Url>,
    pub create_deployment: bool,
}

impl Config {
    /// The URLs to probe for these hosts: one per host when `health-url` has `{host}`.
    pub fn health_urls(&self, hosts: &[HostSpec]) -> Vec<Url> {
        match &self.health_url_template {
            Some(t) => {
                // Every expansion was checked at parse time, so none is dropped here.
                let mut urls: Vec<Url> = hosts
                    .iter()
                    .filter_map(|h| check_http_url(&expand_host(t, &h.host)).ok())
                    .collect();
                urls.dedup();
                urls
            }
            None => self.health_url.iter().cloned().collect(),
        }
    }

    /// Every secret this run holds, for masking before the first line is printed.
    pub fn secrets(&self) -> Vec<&Secret> {
        let mut out = vec![&self.github_token, &self.registry_password, &self.ssh_key];
        out.extend(self.ssh_key_passphrase.as_ref());
        out.extend(self.env_file.as_ref());
        out.extend(self.health_headers.iter().map(|(_, v)| v));
        out.extend(self.health_url_password.as_ref());
        out
    }
}

/// `{host}` in `health-url` becomes the host, bracketed when it is an IPv6 address.
pub fn expand_host(template: &str, host: &str) -> String {
    if host.contains(':') {
        template.replace("{host}", &format!("[{host}]"))
    } else {
        template.replace("{host}", host)
    }
}

/// The password of a URL's userinfo, as sent and as written (percent-encoded).
fn url_password(u: &Url) -> Vec<String> {
    // `https://TOKEN@host` carries its secret as the user name; a short user name
    // (`admin`) is no secret, and masking it would garble every line that says it.
    let user = Some(u.username()).filter(|n| n.len() >= 8);
    let mut out = Vec::new();
    for part in [u.password(), user]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
    {
        let decoded = url::form_urlencoded::parse(format!("p={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        out.push(part.to_string());
        if !decoded.is_empty() && decoded != part {
            out.push(decoded);
        }
    }
    out
}

/// A URL fit to print: any `user:password@` is replaced by `***@`.
pub fn redact_url(u: &Url) -> String {
    if u.username().is_empty() && u.password().is_none() {
        return u.to_string();
    }
    let mut shown = u.clone();
    let _ = shown.set_password(None);
    let _ = shown.set_username("***");
    shown.to_string()
}

/// Secrets straight from the environment, for masking even when validation fails.
pub fn raw_secrets(env: &Env) -> Vec<Secret> {
    let mut out = Vec::new();
    for spec in INPUTS.iter().filter(|s| s.secret) {
        if let Some(v) = env
            .get(&env_name(spec.name))
            .filter(|v| !v.trim().is_empty())
        {
            out.push(Secret::new(v.clone()));
            if spec.name == "env-file" {
                out.extend(env_file_values(v).into_iter().map(Secret::new));
            }
        }
    }
    if let Some(u) = env
        .get(&env_name("health-url"))
        .and_then(|u| Url::parse(u.trim()).ok())
    {
        out.extend(url_password(&u).into_iter().map(Secret::new));
    }
    if let Some(h) = env.get(&env_name("health-headers")) {
        for line in list_lines(h) {
            match line.split_once(':') {
                Some((_, value)) if !value.trim().is_empty() => out.push(Secret::new(value.trim())),
                // A line that is not `Name: value` may be a bare secret: mask all of it.
                _ => out.push(Secret::new(line)),
            }
        }
    }
    out
}

/// The values of a `.env` body, unquoted, so each is masked on its own. A value is masked
/// when it has at least 8 characters, or at least 3 under a secret-looking key. Shorter
/// values (`3000`, `true`, `fail`) are not secrets, and masking them would garble every log
/// line, output and summary that contains the word (and make GitHub drop job outputs).
///
/// The body is read the way Compose reads a `.env` file (quotes, escapes, `export `,
/// inline `# comments`), through `dotenvy`, so the mask is the value the app really gets.
/// Should a line not parse, the rest is read line by line as `KEY=value`, unquoted, so
/// nothing goes unmasked for want of a parse.
pub fn env_file_values(body: &str) -> Vec<String> {
    let secret_key =
        static_regex(r"(?i)(pass|secret|token|key|dsn|url|auth|cred|private|salt|cert)");
    let mut out: Vec<String> = env_file_pairs(body)
        .into_iter()
        .filter(|(k, v)| v.len() >= 8 || (v.len() >= 3 && secret_key.is_match(k)))
        .map(|(_, v)| v)
        .collect();
    out.dedup();
    out
}

/// The `KEY`/value pairs of a `.env` body as Compose reads them. Should a line not
/// parse, the rest is read line by line as `KEY=value`, unquoted, so that nothing goes
/// unmasked for want of a parse.
pub fn env_file_pairs(body: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for item in dotenvy::from_read_iter(body.as_bytes()) {
        match item {
            Ok(pair) => pairs.push(pair),
            Err(_) => {
                pairs.extend(
                    body.lines()
                        .filter(|l| !l.trim_start().starts_with('#'))
                        .filter_map(|l| {
                            let (k, v) = l.split_once('=')?;
                            let k = k.trim().trim_start_matches("export ").trim();
                            Some((
                                k.to_string(),
                                v.trim().trim_matches(['"', '\'']).to_string(),
                            ))
                        }),
                );
                break;
            }
        }
    }
    pairs
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub input: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{} input(s) are invalid: {}", .0.len(), .0.iter().map(|e| e.input).collect::<Vec<_>>().join(", "))]
pub struct InputErrors(pub Vec<InputError>);

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
    fn repository_gap(&self) -> String {
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
            .filter(|r| static_regex(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$").is_match(r))
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

/// Collects the problems of one parse, so all are reported together.
struct Parser<'a> {
    env: &'a Env,
    errors: Vec<InputError>,
}

impl<'a> Parser<'a> {
    /// The raw value, or the contract's default when the variable is absent or blank.
    /// Defaults that are `${{ ... }}` expressions exist only on a runner, so they read as empty.
    fn raw(&self, name: &'static str) -> String {
        match self.env.get(&env_name(name)) {
            Some(v) if !v.trim().is_empty() => v.clone(),
            _ => {
                let spec = INPUTS.iter().find(|s| s.name == name).expect("known input");
                if spec.default.starts_with("${{") {
                    String::new()
                } else {
                    spec.default.to_string()
                }
            }
        }
    }

    fn text(&self, name: &'static str) -> String {
        self.raw(name).trim().to_string()
    }

    fn fail(&mut self, input: &'static str, message: impl Into<String>) {
        self.errors.push(InputError {
            input,
            message: message.into(),
        });
    }

    fn bool(&mut self, name: &'static str) -> bool {
        let v = self.text(name);
        match v.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => {
                self.fail(
                    name,
                    format!("`{v}` is not a boolean. Use `true` or `false`, e.g. `{name}: false`."),
                );
                false
            }
        }
    }

    fn duration(&mut self, name: &'static str, example: &str) -> Duration {
        let v = self.text(name);
        match parse_duration(&v) {
            Ok(d) if d.is_zero() => {
                self.fail(
                    name,
                    format!("`{v}` is zero; it must be positive, e.g. `{name}: {example}`."),
                );
                Duration::from_secs(1)
            }
            // Deadlines are `now + duration`; a job never runs longer than days anyway.
            Ok(d) if d > MAX_DURATION => {
                self.fail(
                    name,
                    format!("`{v}` is longer than 7 days, longer than any job may run; use e.g. `{name}: {example}`."),
                );
                Duration::from_secs(1)
            }
            Ok(d) => d,
            Err(why) => {
                self.fail(name, format!("`{v}` {why}, e.g. `{name}: {example}`."));
                Duration::from_secs(1)
            }
        }
    }
}

/// The longest duration any input takes.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// `500ms`, `30s`, `10m`, `1h`, or a sum such as `1m30s`. A bare number has no unit and is
/// rejected: `30` could mean seconds or minutes.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    const UNITS: &str = "is not a duration with a unit (ms, s, m or h)";
    let re = static_regex(r"^(?:(\d+)(ms|s|m|h))+$");
    if v.is_empty() || !re.is_match(v) {
        return Err(UNITS.into());
    }
    let mut total = Duration::ZERO;
    for cap in static_regex(r"(\d+)(ms|s|m|h)").captures_iter(v) {
        const TOO_LONG: &str = "is longer than berth can wait";
        let n: u64 = cap[1].parse().map_err(|_| TOO_LONG.to_string())?;
        let part = match &cap[2] {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            _ => n.checked_mul(3600).map(Duration::from_secs),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| TOO_LONG.to_string())?;
    }
    Ok(total)
}

/// Splits a comma-or-newline list, dropping blanks and `#` comments.
pub fn list_items(v: &str) -> Vec<String> {
    v.split(['\n', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with('#'))
        .map(String::from)
        .collect()
}

/// Splits a newline list, dropping blanks and `#` comments.
pub fn list_lines(v: &str) -> Vec<String> {
    v.lines()
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with('#'))
        .map(String::from)
        .collect()
}

fn is_service_name(s: &str) -> bool {
    static_regex(r"^[a-z0-9][a-z0-9_.-]*$").is_match(s)
}

pub fn parse_host(entry: &str, default_user: &str, default_port: u16) -> Result<HostSpec, String> {
    let (user, rest) = match entry.rsplit_once('@') {
        Some((u, r)) => (u.to_string(), r),
        None => (default_user.to_string(), entry),
    };
    let user_ok = static_regex(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$").is_match(&user);
    if !user_ok {
        return Err(format!("`{entry}` has an invalid user `{user}`"));
    }
    let (host, port) = if let Some(stripped) = rest.strip_prefix('[') {
        let (h, after) = stripped
            .split_once(']')
            .ok_or(format!("`{entry}` has an unclosed `[`"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("`{entry}` has text after `]`")),
        };
        (h.to_string(), port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{entry}` names no host"));
    }
    if !static_regex(r"^[A-Za-z0-9.:_-]+$").is_match(&host) || host.starts_with('-') {
        return Err(format!("`{entry}` has an invalid host name `{host}`"));
    }
    let port = match port {
        None => default_port,
        Some(p) => parse_port(p).map_err(|why| format!("`{entry}`: {why}"))?,
    };
    Ok(HostSpec { user, host, port })
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("port `{p}` is not between 1 and 65535")),
    }
}

/// Parses one `known_hosts` line (`host[,host] keytype base64 [comment]`).
pub fn parse_known_host(line: &str) -> Result<KnownHost, String> {
    use base64::Engine;
    let parts: Vec<&str> = line.split_whitespace().collect();
    // A leading marker such as @cert-authority is not a plain pin; refuse it clearly.
    if parts.first().is_some_and(|p| p.starts_with('@')) {
        return Err(format!("markers such as `{}` are not supported", parts[0]));
    }
    if parts.len() < 3 {
        return Err("expected `host keytype base64-key`".into());
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(parts[2])
        .map_err(|_| format!("the key of `{}` is not base64", parts[0]))?;
    Ok(KnownHost {
        patterns: parts[0].split(',').map(String::from).collect(),
        key_type: parts[1].to_string(),
        key,
    })
}

const KEYSCAN_HINT: &str = "Get the host's fingerprint with `ssh-keyscan -p PORT HOST | ssh-keygen -lf -` \
(on a machine you trust) and set `host-fingerprints: SHA256:...`, or set `known-hosts` to the \
`ssh-keyscan` output. Only if you accept a machine-in-the-middle risk: `insecure-skip-host-key-check: true`.";

pub fn parse(env: &Env, ctx: &GithubContext) -> Result<Config, InputErrors> {
    let mut p = Parser {
        env,
        errors: Vec::new(),
    };

    let mode = match p.text("mode").as_str() {
        "deploy" => Mode::Deploy,
        "rollback" => Mode::Rollback,
        other => {
            p.fail(
                "mode",
                format!("`{other}` is not a mode. Use `deploy` or `rollback`."),
            );
            Mode::Deploy
        }
    };
    let release = Some(p.text("release")).filter(|r| !r.is_empty());
    if let Some(r) = &release {
        if !static_regex(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$").is_match(r) {
            p.fail(
                "release",
                format!(
                    "`{r}` is not a release id. Release ids look like `20261124T101500Z-abc1234`."
                ),
            );
        } else if mode != Mode::Rollback {
            p.fail(
                "release",
                "`release` only applies with `mode: rollback`. Remove it, or set `mode: rollback`.",
            );
        }
    }
    let dry_run = p.bool("dry-run");
    // Not an input: the variable docker users already set (`env: DOCKER_BUILDKIT: 0`).
    let builder = match env.get("DOCKER_BUILDKIT").map(|v| v.trim()).unwrap_or("") {
        "" => BuilderChoice::Auto,
        "1" | "t" | "T" | "true" | "TRUE" | "True" => BuilderChoice::BuildKit,
        "0" | "f" | "F" | "false" | "FALSE" | "False" => BuilderChoice::Classic,
        other => {
            p.fail("DOCKER_BUILDKIT", format!("`{other}` is not a boolean. Set the DOCKER_BUILDKIT environment variable to `1` (BuildKit) or `0` (classic builder), or unset it to let berth choose."));
            BuilderChoice::Auto
        }
    };
    let github_token = Secret::new(p.text("github-token"));
    let ci_workflows = list_items(&p.raw("ci-workflows"));
    let allow_untested = p.bool("allow-untested");
    let ci_timeout = p.duration("ci-timeout", "30m");
    let ci_poll_interval = p.duration("ci-poll-interval", "10s");

    let sha = Some(p.text("sha")).filter(|s| !s.is_empty());
    if let Some(s) = &sha {
        if !static_regex(r"^[0-9a-f]{40}$").is_match(s) {
            p.fail("sha", format!("`{s}` is not a full 40-character commit sha, e.g. `sha: ${{{{ github.sha }}}}`."));
        }
    }
    let branches = list_items(&p.raw("branches"));
    for b in &branches {
        if b.starts_with('!') {
            p.fail(
                "branches",
                format!("`{b}`: berth has no exclusion patterns; list the branches that may deploy, e.g. `main, release/*`."),
            );
        } else if let Err(e) = globset::Glob::new(b) {
            p.fail(
                "branches",
                format!("`{b}` is not a glob pattern ({e}). Use branch names or patterns, e.g. `main, release/*`."),
            );
        }
    }
    let events = list_items(&p.raw("events"));
    if events.is_empty() {
        p.fail(
            "events",
            "is empty, so no event could deploy. Use e.g. `events: push, workflow_dispatch`.",
        );
    }
    for e in &events {
        if !static_regex(r"^[a-z_]+$").is_match(e) {
            p.fail(
                "events",
                format!("`{e}` is not a GitHub event name, e.g. `push`, `workflow_dispatch` or `schedule`."),
            );
        }
    }
    if mode == Mode::Deploy
        && ci_workflows.is_empty()
        && !allow_untested
        && ctx.event_name != "workflow_run"
    {
        p.fail(
            "ci-workflows",
            format!(
                "is empty, so nothing proves this commit passed CI on a `{}` event. Name the CI workflow, \
                 e.g. `ci-workflows: ci.yml`, or trigger berth `on: workflow_run`. To deploy untested code \
                 on purpose, set `allow-untested: true`.",
                if ctx.event_name.is_empty() { "local" } else { &ctx.event_name }
            ),
        );
    }
    if mode == Mode::Deploy
        && !allow_untested
        && github_token.is_empty()
        && !ci_workflows.is_empty()
    {
        p.fail("github-token", "is empty, so the CI gate cannot read workflow runs. Use the default `${{ github.token }}` with `permissions: actions: read`.");
    }

    let mut images = Vec::new();
    for line in list_lines(&p.raw("images")) {
        match parse_image_line(&line) {
            Ok(spec) => {
                if images.iter().any(|i: &ImageSpec| i.service == spec.service) {
                    p.fail("images", format!("service `{}` is listed twice.", spec.service));
                }
                images.push(spec)
            }
            Err(why) => p.fail("images", format!("{why}. Use `service=path/to/Dockerfile[,context=dir][,target=stage]`, e.g. `backend=backend/Dockerfile,context=backend`.")),
        }
    }

    let mut build_args = Vec::new();
    for line in list_lines(&p.raw("build-args")) {
        match line.split_once('=') {
            Some((k, v)) if static_regex(r"^[A-Za-z_][A-Za-z0-9_]*$").is_match(k.trim()) => {
                build_args.push((k.trim().to_string(), v.to_string()))
            }
            _ => p.fail(
                "build-args",
                format!("`{line}` is not `KEY=VALUE`, e.g. `NODE_ENV=production`."),
            ),
        }
    }

    let registry = p.text("registry").to_ascii_lowercase();
    if !static_regex(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$").is_match(&registry) {
        p.fail("registry", format!("`{registry}` is not a registry host, e.g. `ghcr.io` or `registry.example.com:5000`."));
    }
    let registry_username = Some(p.text("registry-username"))
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| ctx.actor.clone());
    let registry_password = match p.text("registry-password") {
        pw if pw.is_empty() => github_token.clone(),
        pw => Secret::new(pw),
    };
    let image_prefix = match p.text("image-prefix") {
        prefix if !prefix.is_empty() => prefix.to_ascii_lowercase(),
        _ if ctx.repo.is_empty() => {
            if !images.is_empty() {
                p.fail(
                    "image-prefix",
                    format!(
                        "is empty and {}. Set it, e.g. `image-prefix: ghcr.io/acme/shop`.",
                        ctx.repository_gap()
                    ),
                );
            }
            String::new()
        }
        _ => format!("{}/{}/{}", registry, ctx.owner, ctx.repo).to_ascii_lowercase(),
    };
    if !image_prefix.is_empty()
        && !static_regex(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._/-][a-z0-9]+)*)*$")
            .is_match(&image_prefix)
    {
        p.fail(
            "image-prefix",
            format!("`{image_prefix}` is not a valid repository name, e.g. `ghcr.io/acme/shop`."),
        );
    }

    let tags: Vec<TagTemplate> = list_lines(&p.raw("tags"))
        .into_iter()
        .map(TagTemplate)
        .collect();
    if tags.is_empty() {
        p.fail(
            "tags",
            "is empty; give at least one tag template, e.g. `staging-{sha}`.",
        );
    }
    for t in &tags {
        if let Err(why) = check_tag_template(&t.0) {
            p.fail("tags", why);
        }
    }
    if !tags.is_empty() && !tags.iter().any(TagTemplate::is_immutable) {
        p.fail(
            "tags",
            "has no template that names the commit or run ({sha}, {short_sha} or {run_number}). berth pushes those before the deploy and deploys by their digest; tags without them (`staging-latest`) move only once the deploy is healthy. Add one, e.g. `staging-{sha}`.",
        );
    }

    let ssh_user = p.text("ssh-user");
    if !static_regex(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$").is_match(&ssh_user) {
        p.fail(
            "ssh-user",
            format!("`{ssh_user}` is not a user name, e.g. `deploy`."),
        );
    }
    let ssh_port = match parse_port(&p.text("ssh-port")) {
        Ok(port) => port,
        Err(why) => {
            p.fail("ssh-port", format!("{why}, e.g. `ssh-port: 22`."));
            22
        }
    };
    let mut hosts = Vec::new();
    let host_entries = list_items(&p.raw("hosts"));
    if host_entries.is_empty() {
        p.fail(
            "hosts",
            "is required: list the staging hosts, e.g. `hosts: deploy@staging.example.com:22`.",
        );
    }
    for entry in host_entries {
        match parse_host(&entry, &ssh_user, ssh_port) {
            Ok(h) => hosts.push(h),
            Err(why) => p.fail(
                "hosts",
                format!("{why}. Use `[user@]host[:port]`, e.g. `deploy@staging.example.com:2222`."),
            ),
        }
    }

    let ssh_key = Secret::new(p.raw("ssh-key").trim().to_string() + "\n");
    if let Err(why) = check_private_key(ssh_key.expose()) {
        p.fail("ssh-key", why);
    }
    let ssh_key_passphrase = Some(p.text("ssh-key-passphrase"))
        .filter(|s| !s.is_empty())
        .map(Secret::new);

    let mut known_hosts = Vec::new();
    for line in list_lines(&p.raw("known-hosts")) {
        match parse_known_host(&line) {
            Ok(k) => known_hosts.push(k),
            Err(why) => p.fail("known-hosts", format!("a line is not a known_hosts entry: {why}. Paste the output of `ssh-keyscan -p PORT HOST`.")),
        }
    }
    let mut host_fingerprints = Vec::new();
    for fp in list_items(&p.raw("host-fingerprints")) {
        if static_regex(r"^SHA256:[A-Za-z0-9+/]{43}=?$").is_match(&fp) {
            host_fingerprints.push(fp.trim_end_matches('=').to_string());
        } else {
            p.fail(
                "host-fingerprints",
                format!("`{fp}` is not a SHA256 fingerprint. {KEYSCAN_HINT}"),
            );
        }
    }
    let insecure_skip_host_key_check = p.bool("insecure-skip-host-key-check");
    if insecure_skip_host_key_check {
        for pinned in ["host-fingerprints", "known-hosts"] {
            if !p.raw(pinned).trim().is_empty() {
                p.fail(
                    "insecure-skip-host-key-check",
                    format!("is `true` while `{pinned}` pins host keys: berth would accept any key and ignore the pin. Remove `insecure-skip-host-key-check` to check the pin, or remove `{pinned}`."),
                );
            }
        }
    }
    if !insecure_skip_host_key_check
        && p.raw("known-hosts").trim().is_empty()
        && p.raw("host-fingerprints").trim().is_empty()
    {
        p.fail(
            "host-fingerprints",
            format!(
                "no host key is pinned: set `host-fingerprints` or `known-hosts`. {KEYSCAN_HINT}"
            ),
        );
    }

    let deploy_dir = match p.text("deploy-dir") {
        d if d.is_empty() && ctx.repo.is_empty() => {
            p.fail(
                "deploy-dir",
                format!(
                    "is empty and {}. Set an absolute path, e.g. `deploy-dir: /opt/shop`.",
                    ctx.repository_gap()
                ),
            );
            String::new()
        }
        d if d.is_empty() => format!("/opt/{}", ctx.repo),
        d => d,
    };
    if !deploy_dir.is_empty() {
        if let Err(why) = check_deploy_dir(&deploy_dir) {
            p.fail("deploy-dir", why);
        }
    }
    let project_name = match p.text("project-name") {
        n if n.is_empty() => sanitise_project(&ctx.repo),
        n => n,
    };
    if project_name.is_empty() {
        p.fail(
            "project-name",
            format!(
                "is empty and {}. Set it, e.g. `project-name: shop-staging`.",
                ctx.repository_gap()
            ),
        );
    } else if !static_regex(r"^[a-z0-9][a-z0-9_-]*$").is_match(&project_name) {
        p.fail("project-name", format!("`{project_name}` is not a compose project name: lower-case letters, digits, `-` and `_`, starting with a letter or digit, e.g. `shop-staging`."));
    }

    let compose_rel = p.text("compose-file");
    let compose_file = ctx.workspace.join(&compose_rel);
    if mode == Mode::Deploy {
        if Path::new(&compose_rel).is_absolute() || compose_rel.split('/').any(|c| c == "..") {
            p.fail("compose-file", format!("`{compose_rel}` must be a path inside the workspace, e.g. `deploy/docker-compose.staging.yml`."));
        } else if !compose_file.is_file() {
            p.fail("compose-file", format!("`{compose_rel}` does not exist in the workspace ({}). Check out the repository first (`actions/checkout`) and give the path relative to its root.", ctx.workspace.display()));
        } else if let Err(why) = resolves_inside(&ctx.workspace, &compose_rel) {
            p.fail("compose-file", why);
        }
    }
    for img in &images {
        for (what, rel) in [
            ("Dockerfile", &img.dockerfile),
            ("build context", &img.context),
        ] {
            if ctx.workspace.join(rel).exists() {
                if let Err(why) = resolves_inside(&ctx.workspace, rel) {
                    p.fail("images", format!("the {what} of `{}`: {why}", img.service));
                }
            }
        }
    }
    let env_file = Some(p.raw("env-file"))
        .filter(|e| !e.trim().is_empty())
        .map(Secret::new);

    let pre_deploy = match p.text("pre-deploy") {
        v if v.is_empty() => None,
        v => {
            match parse_pre_deploy(&v) {
                Ok(pd) => Some(pd),
                Err(why) => {
                    p.fail("pre-deploy", format!("{why}. Use `service: command`, e.g. `backend: npx prisma migrate deploy`."));
                    None
                }
            }
        }
    };

    let keep_releases = match p.text("keep-releases").parse::<u32>() {
        Ok(n) if n >= 1 => n,
        _ => {
            p.fail("keep-releases", format!("`{}` must be a whole number of at least 1 (the current release is always kept), e.g. `keep-releases: 3`.", p.text("keep-releases")));
            3
        }
    };
    let lock_timeout = p.duration("lock-timeout", "10m");

    let health_url = match p.text("health-url") {
        v if v.is_empty() => {
            if mode == Mode::Deploy {
                p.fail("health-url", "is required with `mode: deploy`, e.g. `health-url: https://staging.example.com/api/health`.");
            }
            None
        }
        v => match check_http_url(&expand_host(
            &v,
            hosts.first().map_or("localhost", |h| h.host.as_str()),
        )) {
            Ok(u) => Some(u),
            Err(why) => {
                p.fail(
                    "health-url",
                    format!("{why}, e.g. `health-url: https://staging.example.com/api/health`."),
                );
                None
            }
        },
    };
    let health_url_template = Some(p.text("health-url")).filter(|u| u.contains("{host}"));
    if let (Some(t), Some(_)) = (&health_url_template, &health_url) {
        // Every host must give a URL that can be probed; none is skipped in silence.
        for h in hosts.iter().skip(1) {
            if let Err(why) = check_http_url(&expand_host(t, &h.host)) {
                p.fail(
                    "health-url",
                    format!("with `{{host}}` = `{}`: {why}. Every host in `hosts` must give a URL berth can probe.", h.host),
                );
            }
        }
    }
    let health_url_password = health_url
        .as_ref()
        .map(url_password)
        .filter(|parts| !parts.is_empty())
        .map(|parts| Secret::new(parts.join("\n")));
    let health_timeout = p.duration("health-timeout", "30s");
    let health_interval = p.duration("health-interval", "1s");
    if health_interval > health_timeout {
        p.fail("health-interval", "is longer than `health-timeout`, so at most one probe could run. Use e.g. `health-interval: 1s`.");
    }
    let health_status = match parse_status_matcher(&p.text("health-status")) {
        Ok(m) => m,
        Err(why) => {
            p.fail(
                "health-status",
                format!("{why}. Use codes or classes, e.g. `200,204` or `2xx`."),
            );
            StatusMatcher(vec![StatusRule::Code(200)])
        }
    };
    let mut health_json = Vec::new();
    for line in list_lines(&p.raw("health-json")) {
        match line.split_once('=') {
            Some((ptr, val)) if ptr.trim().is_empty() || ptr.trim().starts_with('/') => health_json.push(JsonExpectation {
                pointer: ptr.trim().to_string(),
                value: val.trim().to_string(),
            }),
            Some(_) => p.fail("health-json", format!("`{line}`: the pointer must start with `/` (RFC 6901), e.g. `/data/status=healthy`.")),
            None => p.fail("health-json", format!("`{line}` has no `=`. Use `pointer=value`, e.g. `/data/status=healthy`.")),
        }
    }
    let mut health_headers = Vec::new();
    for (n, line) in list_lines(&p.raw("health-headers")).iter().enumerate() {
        match line.split_once(':') {
            Some((name, value))
                if http::HeaderName::from_bytes(name.trim().as_bytes()).is_ok()
                    && !value.trim().is_empty() =>
            {
                health_headers.push((name.trim().to_string(), Secret::new(value.trim())))
            }
            // A malformed line may be all secret, so the error names it by number only.
            _ => p.fail(
                "health-headers",
                format!(
                    "line {} is not `Name: value`, e.g. `Authorization: Basic dXNlcjpwYXNz`.",
                    n + 1
                ),
            ),
        }
    }
    let health_ca_cert = Some(p.raw("health-ca-cert")).filter(|c| !c.trim().is_empty());
    if let Some(pem) = &health_ca_cert {
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            p.fail(
                "health-ca-cert",
                "is not a PEM certificate; it must contain `-----BEGIN CERTIFICATE-----`.",
            );
        }
    }
    let health_insecure_tls = p.bool("health-insecure-tls");
    let rollback = match p.text("rollback").as_str() {
        "auto" => RollbackPolicy::Auto,
        "off" => RollbackPolicy::Off,
        other => {
            p.fail(
                "rollback",
                format!("`{other}` is not a rollback policy. Use `auto` or `off`."),
            );
            RollbackPolicy::Auto
        }
    };
    let environment = p.text("environment");
    if environment.is_empty() {
        p.fail("environment", "is empty, e.g. `environment: staging`.");
    }
    let environment_url = match p.text("environment-url") {
        v if v.is_empty() => health_url
            .as_ref()
            .and_then(|u| Url::parse(&u.origin().ascii_serialization()).ok()),
        v => match check_http_url(&v) {
            Ok(u) => Some(u),
            Err(why) => {
                p.fail(
                    "environment-url",
                    format!("{why}, e.g. `environment-url: https://staging.example.com`."),
                );
                None
            }
        },
    };
    let create_deployment = p.bool("create-deployment");

    if !p.errors.is_empty() {
        return Err(InputErrors(p.errors));
    }
    Ok(Config {
        mode,
        release,
        dry_run,
        builder,
        github_token,
        ci_workflows,
        allow_untested,
        ci_timeout,
        ci_poll_interval,
        sha,
        branches,
        events,
        images,
        build_args,
        registry,
        registry_username,
        registry_password,
        image_prefix,
        tags,
        hosts,
        ssh_key,
        ssh_key_passphrase,
        known_hosts,
        host_fingerprints,
        insecure_skip_host_key_check,
        deploy_dir,
        project_name,
        compose_file,
        env_file,
        pre_deploy,
        keep_releases,
        lock_timeout,
        health_url,
        health_url_template,
        health_url_password,
        health_timeout,
        health_interval,
        health_status,
        health_json,
        health_headers,
        health_ca_cert,
        health_insecure_tls,
        rollback,
        environment,
        environment_url,
        create_deployment,
    })
}

fn parse_image_line(line: &str) -> Result<ImageSpec, String> {
    let (service, rest) = line.split_once('=').ok_or(format!("`{line}` has no `=`"))?;
    let service = service.trim();
    if !is_service_name(service) {
        return Err(format!("service name `{service}` must be lower-case letters, digits, `.`, `_` or `-`, with no spaces"));
    }
    let mut parts = rest.split(',');
    let dockerfile = parts.next().unwrap_or("").trim().to_string();
    if dockerfile.is_empty() {
        return Err(format!("`{line}` names no Dockerfile"));
    }
    let mut context = None;
    let mut target = None;
    for part in parts {
        match part.trim().split_once('=') {
            Some(("context", v)) if !v.trim().is_empty() => context = Some(v.trim().to_string()),
            Some(("target", v)) if !v.trim().is_empty() => target = Some(v.trim().to_string()),
            _ => {
                return Err(format!(
                    "`{}` is not `context=dir` or `target=stage`",
                    part.trim()
                ))
            }
        }
    }
    for path in [Some(&dockerfile), context.as_ref()].into_iter().flatten() {
        if Path::new(path).is_absolute() || path.split('/').any(|c| c == "..") {
            return Err(format!("`{path}` must be a path inside the workspace"));
        }
    }
    let context = context.unwrap_or_else(|| {
        Path::new(&dockerfile)
            .parent()
            .map(|p| p.to_string_lossy().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| ".".into())
    });
    Ok(ImageSpec {
        service: service.to_string(),
        dockerfile,
        context,
        target,
    })
}

/// Checks a template by expanding it with sample values. Only `{branch}` may bring in
/// characters that need sanitising; literal text must already be valid.
fn check_tag_template(t: &str) -> Result<(), String> {
    for cap in static_regex(r"\{([^}]*)\}").captures_iter(t) {
        if !PLACEHOLDERS.contains(&&cap[1]) {
            return Err(format!("`{t}` uses the unknown placeholder `{{{}}}`; known are {{sha}}, {{short_sha}}, {{branch}} and {{run_number}}.", &cap[1]));
        }
    }
    let literal = static_regex(r"\{[a-z_]+\}").replace_all(t, "x");
    if !is_valid_tag(&literal) || t.contains(['{', '}']) && literal.contains(['{', '}']) {
        return Err(format!("`{t}` does not make a valid tag: tags are at most 128 of `A-Z a-z 0-9 _ . -` and cannot start with `.` or `-`, e.g. `staging-{{sha}}`."));
    }
    Ok(())
}

/// Split so that scans for committed private keys do not flag this message text.
const OPENSSH_HEADER: &str = concat!("-----BEGIN OPENSSH", " PRIVATE KEY-----");

fn check_private_key(key: &str) -> Result<(), String> {
    let trimmed = key.trim();
    if trimmed.is_empty() {
        return Err("is required: the private key berth logs in with, e.g. from `${{ secrets.STAGING_SSH_KEY }}`.".into());
    }
    let public_prefixes = [
        "ssh-ed25519 ",
        "ssh-rsa ",
        "ssh-dss ",
        "ecdsa-sha2-",
        "sk-ssh-",
        "sk-ecdsa-",
    ];
    if public_prefixes.iter().any(|p| trimmed.starts_with(p))
        || trimmed.contains("BEGIN SSH2 PUBLIC KEY")
    {
        return Err(format!("is a *public* key. berth needs the *private* key (the file without `.pub`, starting with `{OPENSSH_HEADER}`); put the public key in the host's `authorized_keys`."));
    }
    if !(trimmed.starts_with("-----BEGIN ") && trimmed.contains("PRIVATE KEY-----")) {
        return Err(format!("is not a private key in OpenSSH or PEM format: it must start with `{OPENSSH_HEADER}` (or `-----BEGIN RSA/EC PRIVATE KEY-----`). Paste the whole file, with its line breaks."));
    }
    Ok(())
}

fn check_deploy_dir(d: &str) -> Result<(), String> {
    if !d.starts_with('/') {
        return Err(format!(
            "`{d}` is relative; it must be an absolute path on the host, e.g. `/opt/shop`."
        ));
    }
    if d.split('/').any(|c| c == ".." || c == ".") || d == "/" {
        return Err(format!(
            "`{d}` must be a plain absolute directory (no `.`/`..`, not `/`), e.g. `/opt/shop`."
        ));
    }
    if !static_regex(r"^[A-Za-z0-9/._-]+$").is_match(d) {
        return Err(format!(
            "`{d}` may only use letters, digits, `/`, `.`, `_` and `-`, e.g. `/opt/shop`."
        ));
    }
    Ok(())
}

/// A workspace path whose real location (symlinks followed) stays inside the workspace.
/// A checked-out symlink must not let a build or an upload read the runner's own files.
fn resolves_inside(workspace: &Path, rel: &str) -> Result<(), String> {
    let real = |p: &Path| {
        std::fs::canonicalize(p).map_err(|e| format!("`{}` cannot be resolved: {e}", p.display()))
    };
    let root = real(workspace)?;
    let target = real(&workspace.join(rel))?;
    if target.starts_with(&root) {
        Ok(())
    } else {
        Err(format!(
            "`{rel}` resolves to `{}`, outside the workspace (a symlink leads out of it). berth reads only files inside GITHUB_WORKSPACE: point the input at the real file inside the repository.",
            target.display()
        ))
    }
}

fn check_http_url(v: &str) -> Result<Url, String> {
    // The value is echoed in the error: never with its credentials.
    let shown = without_userinfo(v);
    match Url::parse(v) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => Ok(u),
        Ok(u) => Err(format!(
            "`{shown}` must be an http:// or https:// URL with a host, not `{}:`",
            u.scheme()
        )),
        Err(_) => Err(format!("`{shown}` is not a URL with a scheme")),
    }
}

/// `scheme://user:pw@rest` as `scheme://***@rest`, by text: for a value that may not parse.
fn without_userinfo(v: &str) -> String {
    let Some((scheme, rest)) = v.split_once("://") else {
        return v.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => v.to_string(),
    }
}

fn parse_status_matcher(v: &str) -> Result<StatusMatcher, String> {
    let mut rules = Vec::new();
    for item in list_items(v) {
        let lower = item.to_ascii_lowercase();
        if let Some(class) = lower.strip_suffix("xx") {
            match class.parse::<u16>() {
                Ok(c) if (1..=5).contains(&c) => rules.push(StatusRule::Class(c)),
                _ => return Err(format!("`{item}` is not a status class")),
            }
        } else {
            match item.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => rules.push(StatusRule::Code(c)),
                _ => return Err(format!("`{item}` is not an HTTP status code")),
            }
        }
    }
    if rules.is_empty() {
        return Err("is empty".into());
    }
    Ok(StatusMatcher(rules))
}

fn parse_pre_deploy(v: &str) -> Result<PreDeploy, String> {
    let (service, command) = v.split_once(':').ok_or(format!("`{v}` has no `:`"))?;
    let service = service.trim();
    if !is_service_name(service) {
        return Err(format!("`{service}` is not a service name"));
    }
    let argv = shlex::split(command.trim()).ok_or("the command has an unclosed quote")?;
    if argv.is_empty() {
        return Err(format!("`{v}` gives no command"));
    }
    Ok(PreDeploy {
        service: service.to_string(),
        argv,
    })
}

fn sanitise_project(repo: &str) -> String {
    let s: String = repo
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_start_matches(['-', '_']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("30").unwrap_err().contains("ms, s, m or h"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 s").is_err());
    }

    #[test]
    fn hosts_parse_with_defaults() {
        assert_eq!(
            parse_host("web1", "deploy", 22),
            Ok(HostSpec {
                user: "deploy".into(),
                host: "web1".into(),
                port: 22
            })
        );
        assert_eq!(
            parse_host("ops@10.0.0.5:2222", "deploy", 22),
            Ok(HostSpec {
                user: "ops".into(),
                host: "10.0.0.5".into(),
                port: 2222
            })
        );
        assert_eq!(parse_host("[::1]:22", "d", 22).unwrap().host, "::1");
        assert!(parse_host("deploy@:22", "d", 22)
            .unwrap_err()
            .contains("names no host"));
        assert!(parse_host("h:70000", "d", 22)
            .unwrap_err()
            .contains("70000"));
        assert!(parse_host("-oProxyCommand=x", "d", 22).is_err());
    }

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

    #[test]
    fn tag_templates_are_checked() {
        assert!(check_tag_template("staging-{sha}").is_ok());
        assert!(check_tag_template("{branch}").is_ok());
        assert!(check_tag_template("staging-{commit}")
            .unwrap_err()
            .contains("unknown placeholder"));
        assert!(check_tag_template("staging latest").is_err());
        assert!(check_tag_template(".hidden").is_err());
    }

    #[test]
    fn status_matchers() {
        let m = parse_status_matcher("200,204").unwrap();
        assert!(m.accepts(204) && !m.accepts(201));
        let m = parse_status_matcher("2xx").unwrap();
        assert!(m.accepts(299) && !m.accepts(301));
        assert!(parse_status_matcher("abc").is_err());
        assert!(parse_status_matcher("700").is_err());
    }

    #[test]
    fn pre_deploy_splits_like_a_shell() {
        let pd = parse_pre_deploy("backend: npx prisma migrate deploy --name 'first run'").unwrap();
        assert_eq!(pd.service, "backend");
        assert_eq!(
            pd.argv,
            vec!["npx", "prisma", "migrate", "deploy", "--name", "first run"]
        );
        assert!(parse_pre_deploy("backend npx").is_err());
    }

    #[test]
    fn image_lines() {
        let spec = parse_image_line("backend=backend/Dockerfile,target=prod").unwrap();
        assert_eq!(spec.context, "backend");
        assert_eq!(spec.target.as_deref(), Some("prod"));
        assert_eq!(parse_image_line("web=Dockerfile").unwrap().context, ".");
        assert!(parse_image_line("Web=Dockerfile").is_err());
        assert!(parse_image_line("web=../Dockerfile").is_err());
    }

    #[test]
    fn env_values_are_masked_unless_short_and_plain() {
        let v = env_file_values("PORT=3000\nMIGRATE=fail\nDB_PASS=abc\nNODE_ENV=production\n# X=commented-out-secret\nJWT=\"long-enough-secret\"\n");
        assert_eq!(v, vec!["abc", "production", "long-enough-secret"]);
    }

    #[test]
    fn env_names_keep_hyphens() {
        assert_eq!(env_name("ssh-key"), "INPUT_SSH-KEY");
        assert_eq!(env_name("health url"), "INPUT_HEALTH_URL");
    }
}
