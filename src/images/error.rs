//! Why images could not be built or pushed. Each variant carries what the user needs to
//! fix it; its annotation title is written in `failure`, with every other title.

use crate::docker::DockerError;
use crate::report::Phase;

use super::context::ContextError;

/// The sources of the rarer build failures are boxed: every `Fault` is as large as its
/// largest variant.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Every template that names the commit or run expanded to nothing usable, so there
    /// is nothing to deploy by digest.
    #[error("every template in `tags` that names the commit or run ({}) expanded to an empty or invalid tag for this run (branch `{branch}`, run number `{run_number}`). Add a template that always gives a tag, e.g. `staging-{{sha}}`.", in_backticks(.templates))]
    NoValidTag {
        templates: Vec<String>,
        branch: String,
        run_number: String,
    },
    #[error("{0}")]
    Engine(#[source] DockerError),
    #[error(
        "{dockerfile} does not exist in the workspace. Check the `images` line for `{service}`."
    )]
    DockerfileMissing { service: String, dockerfile: String },
    #[error("{source}")]
    Context {
        service: String,
        dockerfile: String,
        #[source]
        source: Box<ContextError>,
    },
    /// A step of the Dockerfile failed; `tail` is the end of the build's output.
    #[error("{message}\nLast {} lines of build output:\n{}", .tail.len(), .tail.join("\n"))]
    Build {
        service: String,
        dockerfile: String,
        line: Option<u32>,
        message: String,
        tail: Vec<String>,
    },
    /// The engine failed the build other than at a step of the Dockerfile.
    #[error("{source}")]
    Builder {
        service: String,
        dockerfile: String,
        #[source]
        source: Box<DockerError>,
    },
    /// Tagging or pushing an image, or reading the digest of a push.
    #[error("{0}")]
    Push(#[source] DockerError),
}

impl ImageError {
    pub fn phase(&self) -> Phase {
        match self {
            ImageError::Push(_) => Phase::Push,
            _ => Phase::Build,
        }
    }

    /// The Dockerfile a build failure is in, and the line when the builder said which.
    pub fn file_line(&self) -> (Option<String>, Option<u32>) {
        match self {
            ImageError::Build {
                dockerfile, line, ..
            } => (Some(dockerfile.clone()), *line),
            ImageError::DockerfileMissing { dockerfile, .. }
            | ImageError::Context { dockerfile, .. }
            | ImageError::Builder { dockerfile, .. } => (Some(dockerfile.clone()), None),
            ImageError::NoValidTag { .. } | ImageError::Engine(_) | ImageError::Push(_) => {
                (None, None)
            }
        }
    }
}

fn in_backticks(templates: &[String]) -> String {
    templates
        .iter()
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
