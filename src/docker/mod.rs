//! The Docker engine, through bollard. Nothing outside this module imports bollard.

use std::collections::HashMap;
use std::sync::LazyLock;

use bollard::moby::buildkit::v1::StatusResponse;
use bollard::models::BuildInfoAux;
use futures_util::StreamExt;
use regex::Regex;

use crate::inputs::BuilderChoice;
use crate::secret::Secret;

// Patterns are compiled once, on first use; clippy's `invalid_regex` lint checks each
// literal, so the `expect`s cannot fire.
static CACHE_RACE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"^unable to find image "sha256:[0-9a-f]{64}"$"#).expect("built-in regex")
});
static LINE_NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"line (\d+)").expect("built-in regex"));

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine ({0}). berth needs the Docker socket: on a runner it is mounted at /var/run/docker.sock; locally, start dockerd or set DOCKER_HOST.")]
    Engine(#[source] bollard::errors::Error),
    /// The engine answered, with an error status: worded by that status, not as an engine
    /// that cannot be reached.
    #[error("the Docker engine answered {status} ({}): {message}", status_meaning(*status))]
    EngineRefused { status: u16, message: String },
    #[error("the registry {registry} rejected the credentials (401). Check `registry-username` and `registry-password`; for ghcr.io use `${{{{ github.actor }}}}` and `${{{{ github.token }}}}`.")]
    Unauthorized { registry: String },
    #[error("the registry {registry} denied the push to {repository} (403). The credentials lack write permission; for ghcr.io add `permissions: packages: write` to the job, or grant this repository access to the package.")]
    Denied {
        registry: String,
        repository: String,
    },
    #[error("cannot reach the registry {registry}: {detail}. Check the `registry` input and that the registry is up and reachable from the runner.")]
    RegistryUnreachable { registry: String, detail: String },
    #[error("the registry {registry} has no repository {repository} and would not create it: {detail}. Create it first, or check `image-prefix`.")]
    NoRepository {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("pushing {reference} failed: {detail}")]
    Push { reference: String, detail: String },
    #[error("the engine pushed {reference} but reported no digest; cannot deploy by digest.")]
    NoDigest { reference: String },
    #[error("building {tag} failed: {message}")]
    Build {
        tag: String,
        message: String,
        line: Option<u32>,
        /// The instruction that failed, e.g. `RUN make`, when the engine said which.
        step: Option<String>,
    },
}

/// An engine call's error: one the engine answered with a status is worded by it.
fn engine_error(e: bollard::errors::Error) -> DockerError {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => DockerError::EngineRefused {
            status: status_code,
            message,
        },
        e => DockerError::Engine(e),
    }
}

/// What an engine's error status means, in the words of its API.
pub fn status_meaning(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 | 403 => "not allowed",
        404 => "no such image or container",
        409 => "conflict with the engine's state",
        500 => "the engine's own error",
        503 => "the engine is unavailable",
        _ => "error",
    }
}

pub struct RegistryAuth {
    pub server: String,
    pub username: String,
    pub password: Secret,
}

/// The builder a build runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    /// BuildKit through a session on the engine's /session endpoint: what users'
    /// Dockerfiles expect (`RUN --mount=type=cache`).
    BuildKit,
    /// The engine's classic builder (API `version=1`).
    Classic,
}

pub struct Engine {
    docker: bollard::Docker,
    builder: Builder,
    /// Why that builder, for the log: `BuildKit (engine 20.10.24, linux)`.
    builder_reason: String,
}

/// One image build: the context as a tar, and how to build it.
pub struct BuildRequest<'a> {
    pub context_tar: Vec<u8>,
    /// Credentials for `FROM` images in the deploy registry (BuildKit asks through the
    /// session, the classic builder takes them up front).
    pub auth: &'a RegistryAuth,
    pub dockerfile: &'a str,
    pub tag: &'a str,
    pub target: Option<&'a str>,
    pub build_args: &'a HashMap<String, String>,
    pub labels: &'a HashMap<String, String>,
}

impl Engine {
    /// Builds with the engine's builder (see [`Engine::builder`]), streaming each output
    /// line to `on_line` as it arrives. Returns the image id.
    pub async fn build(
        &self,
        req: BuildRequest<'_>,
        mut on_line: impl FnMut(&str),
    ) -> Result<String, DockerError> {
        let mut opts = bollard::query_parameters::BuildImageOptionsBuilder::default()
            .dockerfile(req.dockerfile)
            .t(req.tag)
            .rm(true)
            .forcerm(true)
            .buildargs(req.build_args)
            .labels(req.labels);
        if let Some(target) = req.target {
            opts = opts.target(target);
        }
        if self.builder == Builder::BuildKit {
            let session = format!("berth-{:016x}", rand::random::<u64>());
            opts = opts
                .version(bollard::query_parameters::BuilderVersion::BuilderBuildKit)
                .session(&session);
        }
        let creds = HashMap::from([(req.auth.server.clone(), credentials(req.auth))]);
        let body = bollard::body_full(req.context_tar.into());
        let mut stream = self
            .docker
            .build_image(opts.build(), Some(creds), Some(body));
        let mut image_id = None;
        let mut classic = ClassicProgress::default();
        let mut buildkit = BuildkitProgress::default();
        let failed = |message: &str, classic: &ClassicProgress, buildkit: &BuildkitProgress| {
            let step = buildkit.failed_step.as_ref().or(classic.step.as_ref());
            build_error(req.tag, message, step.cloned())
        };
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(failed(&error, &classic, &buildkit))
                }
                Err(e) => return Err(failed(&e.to_string(), &classic, &buildkit)),
            };
            if let Some(err) = info.error.or(info.error_detail.and_then(|d| d.message)) {
                return Err(failed(&err, &classic, &buildkit));
            }
            if let Some(text) = info.stream {
                classic.push(&text, &mut on_line);
            }
            match info.aux {
                Some(BuildInfoAux::Default(id)) => image_id = id.id,
                Some(BuildInfoAux::BuildKit(status)) => buildkit.push(&status, &mut on_line),
                None => {}
            }
        }
        classic.finish(&mut on_line);
        image_id.ok_or_else(|| failed("the engine reported no image id", &classic, &buildkit))
    }

    /// The builder `build` uses, and why, e.g. `BuildKit (engine 20.10.24, API 1.41)`.
    pub fn builder(&self) -> (Builder, &str) {
        (self.builder, &self.builder_reason)
    }

    /// Connects and settles the builder: `choice` from DOCKER_BUILDKIT wins; otherwise
    /// BuildKit on a Linux engine with API 1.39 or later (Docker 18.09, where BuildKit
    /// sessions arrived), the classic builder elsewhere (Windows engines have no BuildKit).
    pub async fn connect(choice: BuilderChoice) -> Result<Engine, DockerError> {
        let docker = bollard::Docker::connect_with_defaults().map_err(engine_error)?;
        let docker = docker.negotiate_version().await.map_err(engine_error)?;
        let version = docker.version().await.map_err(engine_error)?;
        let engine = format!(
            "engine {}, {}, API {}",
            version.version.as_deref().unwrap_or("?"),
            version.os.as_deref().unwrap_or("?"),
            version.api_version.as_deref().unwrap_or("?"),
        );
        let (builder, why) = match choice {
            BuilderChoice::BuildKit => (Builder::BuildKit, "DOCKER_BUILDKIT=1"),
            BuilderChoice::Classic => (Builder::Classic, "DOCKER_BUILDKIT=0"),
            BuilderChoice::Auto
                if version.os.as_deref() == Some("linux")
                    && api_at_least(version.api_version.as_deref(), 1, 39) =>
            {
                (Builder::BuildKit, "the engine supports it")
            }
            BuilderChoice::Auto => (Builder::Classic, "the engine has no BuildKit"),
        };
        Ok(Engine {
            docker,
            builder,
            builder_reason: format!("{why}; {engine}"),
        })
    }

    pub async fn tag(&self, image: &str, repository: &str, tag: &str) -> Result<(), DockerError> {
        let opts = bollard::query_parameters::TagImageOptionsBuilder::default()
            .repo(repository)
            .tag(tag)
            .build();
        self.docker
            .tag_image(image, Some(opts))
            .await
            .map_err(engine_error)
    }

    /// Pushes `repository:tag` and returns the manifest digest the registry stored.
    /// Each progress line goes to `on_line` as it arrives.
    pub async fn push(
        &self,
        repository: &str,
        tag: &str,
        auth: &RegistryAuth,
        mut on_line: impl FnMut(&str),
    ) -> Result<String, DockerError> {
        let opts = bollard::query_parameters::PushImageOptionsBuilder::default()
            .tag(tag)
            .build();
        let mut stream = self
            .docker
            .push_image(repository, Some(opts), Some(credentials(auth)));
        let mut digest = None;
        let reference = format!("{repository}:{tag}");
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(classify_push_error(
                        &auth.server,
                        repository,
                        &reference,
                        &error,
                    ))
                }
                Err(e) => {
                    return Err(classify_push_error(
                        &auth.server,
                        repository,
                        &reference,
                        &e.to_string(),
                    ))
                }
            };
            if let Some(err) = info.error.or(info.error_detail.and_then(|d| d.message)) {
                return Err(classify_push_error(
                    &auth.server,
                    repository,
                    &reference,
                    &err,
                ));
            }
            if let Some(status) = &info.status {
                on_line(status);
                if let Some(d) = parse_push_digest(status) {
                    digest = Some(d);
                }
            }
        }
        digest.ok_or(DockerError::NoDigest { reference })
    }
}

fn credentials(auth: &RegistryAuth) -> bollard::auth::DockerCredentials {
    bollard::auth::DockerCredentials {
        username: Some(auth.username.clone()),
        password: Some(auth.password.expose().to_string()),
        serveraddress: Some(auth.server.clone()),
        ..Default::default()
    }
}

/// `1.41` >= `1.39`.
fn api_at_least(version: Option<&str>, major: u32, minor: u32) -> bool {
    let mut parts = version.unwrap_or("").split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// The classic builder's output: text chunks, split into lines; remembers the step that
/// ran last (`Step 2/3 : RUN make`) so a failure can be placed on its Dockerfile line.
#[derive(Default)]
struct ClassicProgress {
    pending: String,
    step: Option<String>,
}

impl ClassicProgress {
    fn push(&mut self, text: &str, on_line: &mut impl FnMut(&str)) {
        let mut pending = std::mem::take(&mut self.pending).into_bytes();
        pending.extend_from_slice(text.as_bytes());
        let mut lines = Vec::new();
        crate::workflow::drain_lines(&mut pending, &crate::secret::registered(), &mut |l| {
            lines.push(String::from_utf8_lossy(l).trim_end().to_string())
        });
        self.pending = String::from_utf8_lossy(&pending).into_owned();
        for line in lines {
            if let Some((_, instruction)) = line
                .strip_prefix("Step ")
                .and_then(|rest| rest.split_once(" : "))
            {
                self.step = Some(instruction.to_string());
            }
            on_line(&line);
        }
    }

    fn finish(&mut self, on_line: &mut impl FnMut(&str)) {
        if !self.pending.trim().is_empty() {
            on_line(self.pending.trim_end());
        }
        self.pending.clear();
    }
}

/// BuildKit's status stream rendered like `docker build --progress=plain`:
/// `#3 [2/3] RUN make`, its log lines, then `#3 DONE 1.2s`, `#3 CACHED` or `#3 ERROR: ...`.
#[derive(Default)]
struct BuildkitProgress {
    /// Vertex digest -> its `#n`, in the order BuildKit announced them.
    numbers: HashMap<String, usize>,
    announced: std::collections::HashSet<String>,
    finished: std::collections::HashSet<String>,
    /// Log bytes per vertex not yet ended by a newline.
    partial: HashMap<String, Vec<u8>>,
    /// The Dockerfile instruction of the vertex that failed (`RUN make`).
    failed_step: Option<String>,
}

impl BuildkitProgress {
    fn number(&mut self, digest: &str) -> usize {
        let next = self.numbers.len() + 1;
        *self.numbers.entry(digest.to_string()).or_insert(next)
    }

    fn push(&mut self, status: &StatusResponse, on_line: &mut impl FnMut(&str)) {
        for v in &status.vertexes {
            let n = self.number(&v.digest);
            if (v.started.is_some() || v.cached) && self.announced.insert(v.digest.clone()) {
                on_line(&format!("#{n} {}", v.name));
            }
            if self.finished.contains(&v.digest) {
                continue;
            }
            if !v.error.is_empty() {
                self.flush_log(&v.digest, n, on_line);
                on_line(&format!("#{n} ERROR: {}", v.error));
                self.finished.insert(v.digest.clone());
                // `[stage-1 2/3] RUN make` -> `RUN make`; internal vertices have no `[`.
                if let Some((_, instruction)) = v.name.split_once("] ") {
                    self.failed_step = Some(instruction.to_string());
                }
            } else if v.cached {
                on_line(&format!("#{n} CACHED"));
                self.finished.insert(v.digest.clone());
            } else if let (Some(start), Some(end)) = (&v.started, &v.completed) {
                self.flush_log(&v.digest, n, on_line);
                let secs =
                    (end.seconds - start.seconds) as f64 + f64::from(end.nanos - start.nanos) / 1e9;
                on_line(&format!("#{n} DONE {secs:.1}s"));
                self.finished.insert(v.digest.clone());
            }
        }
        for log in &status.logs {
            let n = self.number(&log.vertex);
            let buf = self.partial.entry(log.vertex.clone()).or_default();
            buf.extend_from_slice(&log.msg);
            crate::workflow::drain_lines(buf, &crate::secret::registered(), &mut |line| {
                on_line(&format!(
                    "#{n} {}",
                    String::from_utf8_lossy(line).trim_end()
                ))
            });
        }
        for w in &status.warnings {
            let n = self.number(&w.vertex);
            on_line(&format!(
                "#{n} WARNING: {}",
                String::from_utf8_lossy(&w.short)
            ));
        }
    }

    fn flush_log(&mut self, digest: &str, n: usize, on_line: &mut impl FnMut(&str)) {
        if let Some(rest) = self.partial.remove(digest).filter(|b| !b.is_empty()) {
            on_line(&format!(
                "#{n} {}",
                String::from_utf8_lossy(&rest).trim_end()
            ));
        }
    }
}

/// Whether a classic build failed in its cache lookup because an image vanished mid-read.
/// For a `FROM scratch` step the engine lists every parentless image, then reads each; one
/// removed in between (by anyone on the engine) fails the whole build with this message
/// before the step ran, so building again is safe.
pub fn is_classic_cache_race(message: &str) -> bool {
    CACHE_RACE.is_match(message.trim())
}

/// Builder errors name the Dockerfile line when the engine knows it
/// (`dockerfile parse error on line 3: ...`); otherwise `step` (the failing instruction)
/// lets the caller find it.
fn build_error(tag: &str, message: &str, step: Option<String>) -> DockerError {
    let line = LINE_NUMBER
        .captures(message)
        .and_then(|c| c[1].parse().ok());
    let mut message = message.trim().to_string();
    if message.contains("--mount") || message.contains("requires BuildKit") {
        message.push_str(". This Dockerfile needs BuildKit, and this build ran on the classic builder (DOCKER_BUILDKIT=0, or an engine without BuildKit). Unset DOCKER_BUILDKIT, use a Linux engine with BuildKit (Docker 18.09 or later), or drop BuildKit-only syntax such as `RUN --mount`.");
    }
    let lower = message.to_ascii_lowercase();
    if lower.contains("buildkit") && lower.contains("not supported") {
        message.push_str(". This engine refused a BuildKit build; set `DOCKER_BUILDKIT: 0` in the step's `env` to use the classic builder.");
    }
    if message.contains("docker/dockerfile") && message.contains("frontend") {
        message.push_str(". The Dockerfile's `# syntax=` line makes BuildKit fetch that frontend image from Docker Hub, which failed. Make Docker Hub reachable from the engine, or drop the `# syntax=` line: the engine's built-in frontend already supports `RUN --mount`.");
    }
    DockerError::Build {
        tag: tag.into(),
        message,
        line,
        step,
    }
}

/// The engine ends a push with `<tag>: digest: sha256:<hex> size: <n>`.
pub fn parse_push_digest(status: &str) -> Option<String> {
    let rest = status.split("digest: ").nth(1)?;
    let digest = rest.split_whitespace().next()?;
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| digest.to_string())
}

fn classify_push_error(
    registry: &str,
    repository: &str,
    reference: &str,
    detail: &str,
) -> DockerError {
    let lower = detail.to_ascii_lowercase();
    let registry = registry.to_string();
    if lower.contains("unauthorized")
        || lower.contains("authentication required")
        || lower.contains("401")
    {
        DockerError::Unauthorized { registry }
    } else if lower.contains("denied") || lower.contains("403") || lower.contains("forbidden") {
        DockerError::Denied {
            registry,
            repository: repository.into(),
        }
    } else if lower.contains("connection refused")
        || lower.contains("no such host")
        || lower.contains("i/o timeout")
        || lower.contains("tls")
        || lower.contains("x509")
        || lower.contains("dial tcp")
    {
        DockerError::RegistryUnreachable {
            registry,
            detail: detail.trim().into(),
        }
    } else if lower.contains("name unknown") || lower.contains("repository name not known") {
        DockerError::NoRepository {
            registry,
            repository: repository.into(),
            detail: detail.trim().into(),
        }
    } else {
        DockerError::Push {
            reference: reference.into(),
            detail: detail.trim().into(),
        }
    }
}

#[cfg(test)]
mod tests;
