//! The Docker engine, through bollard. Nothing outside this module imports bollard.

use std::collections::HashMap;

use futures_util::StreamExt;

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine ({0}). berth needs the Docker socket: on a runner it is mounted at /var/run/docker.sock; locally, start dockerd or set DOCKER_HOST.")]
    Engine(#[source] bollard::errors::Error),
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
    },
}

pub struct RegistryAuth {
    pub server: String,
    pub username: String,
    pub password: Secret,
}

pub struct Engine {
    docker: bollard::Docker,
}

/// One image build: the context as a tar, and how to build it.
pub struct BuildRequest<'a> {
    pub context_tar: Vec<u8>,
    pub dockerfile: &'a str,
    pub tag: &'a str,
    pub target: Option<&'a str>,
    pub build_args: &'a HashMap<String, String>,
    pub labels: &'a HashMap<String, String>,
}

impl Engine {
    /// Builds with the engine's classic builder, streaming each output line to `on_line`
    /// as it arrives. Returns the image id.
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
        let body = bollard::body_full(req.context_tar.into());
        let mut stream = self.docker.build_image(opts.build(), None, Some(body));
        let mut image_id = None;
        let mut pending = String::new();
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(build_error(req.tag, &error))
                }
                Err(e) => return Err(build_error(req.tag, &e.to_string())),
            };
            if let Some(err) = info.error.or(info.error_detail.and_then(|d| d.message)) {
                return Err(build_error(req.tag, &err));
            }
            if let Some(text) = info.stream {
                pending.push_str(&text);
                while let Some(pos) = pending.find('\n') {
                    let line: String = pending.drain(..=pos).collect();
                    on_line(line.trim_end());
                }
            }
            if let Some(id) = info.aux {
                image_id = id.id;
            }
        }
        if !pending.trim().is_empty() {
            on_line(pending.trim_end());
        }
        image_id.ok_or_else(|| build_error(req.tag, "the engine reported no image id"))
    }

    pub async fn connect() -> Result<Engine, DockerError> {
        let docker = bollard::Docker::connect_with_defaults().map_err(DockerError::Engine)?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(DockerError::Engine)?;
        Ok(Engine { docker })
    }

    pub async fn tag(&self, image: &str, repository: &str, tag: &str) -> Result<(), DockerError> {
        let opts = bollard::query_parameters::TagImageOptionsBuilder::default()
            .repo(repository)
            .tag(tag)
            .build();
        self.docker
            .tag_image(image, Some(opts))
            .await
            .map_err(DockerError::Engine)
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
        let creds = bollard::auth::DockerCredentials {
            username: Some(auth.username.clone()),
            password: Some(auth.password.expose().to_string()),
            serveraddress: Some(auth.server.clone()),
            ..Default::default()
        };
        let mut stream = self.docker.push_image(repository, Some(opts), Some(creds));
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

/// Builder errors name the Dockerfile line when the engine knows it
/// (`dockerfile parse error on line 3: ...`).
fn build_error(tag: &str, message: &str) -> DockerError {
    let line = regex::Regex::new(r"line (\d+)")
        .expect("built-in regex")
        .captures(message)
        .and_then(|c| c[1].parse().ok());
    let mut message = message.trim().to_string();
    if message.contains("--mount") || message.contains("requires BuildKit") {
        message.push_str(". This Dockerfile needs BuildKit, which berth cannot drive on this engine; use a Dockerfile without BuildKit-only syntax (such as `RUN --mount`), or build it in an earlier step.");
    }
    DockerError::Build {
        tag: tag.into(),
        message,
        line,
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
mod tests {
    use super::*;

    #[test]
    fn digest_from_the_final_push_status() {
        let d = "sha256:".to_string() + &"ab".repeat(32);
        assert_eq!(
            parse_push_digest(&format!("staging-1: digest: {d} size: 528")),
            Some(d)
        );
        assert_eq!(parse_push_digest("Pushed"), None);
        assert_eq!(parse_push_digest("x: digest: sha256:short size: 1"), None);
    }

    #[test]
    fn push_errors_are_told_apart() {
        let c = |d: &str| classify_push_error("r:5000", "r:5000/a", "r:5000/a:t", d);
        assert!(matches!(
            c("unauthorized: authentication required"),
            DockerError::Unauthorized { .. }
        ));
        assert!(matches!(
            c("denied: requested access to the resource is denied"),
            DockerError::Denied { .. }
        ));
        assert!(matches!(
            c("Get \"http://r:5000/v2/\": dial tcp 127.0.0.1:5000: connect: connection refused"),
            DockerError::RegistryUnreachable { .. }
        ));
        assert!(matches!(
            c("name unknown: repository name not known to registry"),
            DockerError::NoRepository { .. }
        ));
    }
}
