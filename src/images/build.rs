//! Building the images from the workspace, and saying where a Dockerfile failed.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use super::context::context_tar;
use super::{repository, ImageError};
use crate::docker::{is_classic_cache_race, BuildRequest, DockerError, Engine, RegistryAuth};
use crate::inputs::{BuildSettings, ImageSpec};
use crate::report::{Phase, PhaseResult, Report};
use crate::workflow::Runner;

/// Lines of build output quoted in a build failure.
const BUILD_TAIL: usize = 30;
/// Builds tried when the classic builder's cache lookup races an image removal.
const CACHE_RACE_ATTEMPTS: u32 = 3;

/// What every image's build shares: the engine, the workspace, and the tag, build args,
/// labels and registry login each image is built with.
pub(super) struct Builds<'a> {
    pub engine: &'a Engine,
    pub build: &'a BuildSettings,
    pub workspace: &'a Path,
    pub tag: &'a str,
    pub build_args: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    pub auth: &'a RegistryAuth,
    pub runner: &'a Runner,
}

impl Builds<'_> {
    /// Builds every image, recording the build phase from `started`. A failed build's
    /// row carries its annotation title, which `title_of` writes (in `failure`).
    pub async fn build_all(
        &self,
        started: Instant,
        report: &mut Report,
        title_of: fn(&ImageError) -> String,
    ) -> Result<(), ImageError> {
        for img in &self.build.images {
            self.build_one(img).await.inspect_err(|e| {
                report.record(
                    Phase::Build,
                    started.elapsed(),
                    PhaseResult::Failed(title_of(e)),
                );
            })?;
        }
        report.record(
            Phase::Build,
            started.elapsed(),
            PhaseResult::Ok(format!("{} image(s)", self.build.images.len())),
        );
        Ok(())
    }

    async fn build_one(&self, img: &ImageSpec) -> Result<(), ImageError> {
        let _group = self.runner.group(&format!("Build {}", img.service));
        let context = inside(self.workspace, &img.context);
        let dockerfile = inside(self.workspace, &img.dockerfile);
        if !dockerfile.is_file() {
            return Err(ImageError::DockerfileMissing {
                service: img.service.clone(),
                dockerfile: img.dockerfile.clone(),
            });
        }
        let mut tail: Vec<String> = Vec::new();
        self.build_past_cache_races(img, &context, &dockerfile, &mut tail)
            .await?
            .map_err(|e| build_failure(img, &dockerfile, e, tail))
    }

    /// Builds `img`, again when the classic builder lost its cache race, up to
    /// [`CACHE_RACE_ATTEMPTS`] times. `tail` is left holding the last build's output.
    async fn build_past_cache_races(
        &self,
        img: &ImageSpec,
        context: &Path,
        dockerfile: &Path,
        tail: &mut Vec<String>,
    ) -> Result<Result<(), DockerError>, ImageError> {
        let reference = format!("{}:{}", repository(self.build, &img.service), self.tag);
        let mut attempt = 1;
        loop {
            let (tar, name) =
                context_tar(context, dockerfile, ".berth.Dockerfile").map_err(|source| {
                    ImageError::Context {
                        service: img.service.clone(),
                        dockerfile: img.dockerfile.clone(),
                        source: Box::new(source),
                    }
                })?;
            let request = BuildRequest {
                context_tar: tar,
                auth: self.auth,
                dockerfile: &name,
                tag: &reference,
                target: img.target.as_deref(),
                build_args: &self.build_args,
                labels: &self.labels,
            };
            tail.clear();
            let result = self
                .engine
                .build(request, |line| {
                    self.runner.line(line);
                    tail.push(line.to_string());
                    if tail.len() > BUILD_TAIL {
                        tail.remove(0);
                    }
                })
                .await;
            match result {
                Err(DockerError::Build { ref message, .. })
                    if attempt < CACHE_RACE_ATTEMPTS && is_classic_cache_race(message) =>
                {
                    self.runner.warning(
                        &format!("berth: rebuilding {}", img.service),
                        &format!(
                            "The classic builder's cache lookup failed ({message}): an image on the engine was removed while the build read the cache, a race in the engine (`FROM scratch` steps read every parentless image). Nothing was built from it; building again (attempt {} of {CACHE_RACE_ATTEMPTS}).",
                            attempt + 1
                        ),
                    );
                    attempt += 1;
                }
                result => return Ok(result.map(drop)),
            }
        }
    }
}

/// A failed build of `img`: at a step of its Dockerfile (found on its line when the
/// builder named only the step), with the end of the build's output.
fn build_failure(
    img: &ImageSpec,
    dockerfile: &Path,
    e: DockerError,
    tail: Vec<String>,
) -> ImageError {
    match e {
        DockerError::Build {
            message,
            line,
            step,
            ..
        } => ImageError::Build {
            service: img.service.clone(),
            dockerfile: img.dockerfile.clone(),
            line: line.or_else(|| {
                let text = std::fs::read_to_string(dockerfile).ok()?;
                instruction_line(&text, step.as_deref()?)
            }),
            message,
            tail,
        },
        source => ImageError::Builder {
            service: img.service.clone(),
            dockerfile: img.dockerfile.clone(),
            source: Box::new(source),
        },
    }
}

fn inside(workspace: &Path, rel: &str) -> PathBuf {
    let mut p = workspace.to_path_buf();
    for c in Path::new(rel).components() {
        if let Component::Normal(part) = c {
            p.push(part);
        }
    }
    p
}

/// The 1-based line where `instruction` (as the builder names a step, continuation lines
/// joined: `RUN make && make install`) starts in the Dockerfile `text`.
pub(super) fn instruction_line(text: &str, instruction: &str) -> Option<u32> {
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let wanted = squash(instruction).to_ascii_lowercase();
    let lines: Vec<&str> = text.lines().collect();
    (0..lines.len()).find_map(|start| {
        let mut joined = String::new();
        for line in &lines[start..] {
            match line.trim_end().strip_suffix('\\') {
                Some(head) => {
                    joined.push_str(head);
                    joined.push(' ');
                }
                None => {
                    joined.push_str(line);
                    break;
                }
            }
        }
        (squash(&joined).to_ascii_lowercase() == wanted).then(|| start as u32 + 1)
    })
}
