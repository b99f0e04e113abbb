//! The Docker engine, through bollard. Nothing outside this module imports bollard.

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
}

pub struct RegistryAuth {
    pub server: String,
    pub username: String,
    pub password: Secret,
}

pub struct Engine {
    docker: bollard::Docker,
}

impl Engine {
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
