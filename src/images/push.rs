//! Pushing: every tag of every image, and the digest each image is deployed by; the
//! moving tags only once a deploy proved healthy.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{expand_tags, registry_auth, repository, ImageError};
use crate::docker::{DockerError, Engine, RegistryAuth};
use crate::inputs::{BuildSettings, GithubContext};
use crate::report::{Phase, PhaseResult, Report};
use crate::workflow::Runner;

/// What pushing every image shares: the tags, of which the first is the built one.
pub(super) struct Pushes<'a> {
    pub engine: &'a Engine,
    pub build: &'a BuildSettings,
    pub tags: &'a [String],
    pub first_tag: &'a str,
    pub auth: &'a RegistryAuth,
    pub runner: &'a Runner,
    /// When the push phase started.
    pub started: Instant,
}

impl Pushes<'_> {
    /// Pushes every tag of every image. Returns service -> `repo@sha256:...`.
    pub async fn push_all(
        &self,
        report: &mut Report,
    ) -> Result<BTreeMap<String, String>, ImageError> {
        let mut pushed = BTreeMap::new();
        for img in &self.build.images {
            let repo = repository(self.build, &img.service);
            let _group = self.runner.group(&format!("Push {}", img.service));
            let digest = self.push_image(&img.service, &repo, report).await?;
            self.runner
                .line(&format!("{}: {repo}@{digest}", img.service));
            pushed.insert(img.service.clone(), format!("{repo}@{digest}"));
        }
        report.record(
            Phase::Push,
            self.started.elapsed(),
            PhaseResult::Ok(format!(
                "{} tag(s) per image; moving tags wait for a healthy deploy",
                self.tags.len()
            )),
        );
        Ok(pushed)
    }

    /// Tags and pushes one image under every tag. Returns the digest of its first push.
    async fn push_image(
        &self,
        service: &str,
        repo: &str,
        report: &mut Report,
    ) -> Result<String, ImageError> {
        let mut digest = None;
        for tag in self.tags {
            let local = format!("{repo}:{}", self.first_tag);
            if tag != self.first_tag {
                self.engine
                    .tag(&local, repo, tag)
                    .await
                    .map_err(ImageError::Push)?;
            }
            let mut last = String::new();
            let d = self
                .engine
                .push(repo, tag, self.auth, |l| {
                    // The engine repeats `Preparing`/`Pushing` per layer; print changes only.
                    if l != last {
                        self.runner.line(&format!("{service}: {l}"));
                        last = l.to_string();
                    }
                })
                .await
                .map_err(|e| {
                    report.record(
                        Phase::Push,
                        self.started.elapsed(),
                        PhaseResult::Failed(e.to_string()),
                    );
                    ImageError::Push(e)
                })?;
            if digest.as_ref().is_some_and(|prev| prev != &d) {
                self.runner.line(&format!(
                    "{service}: warning: tag {tag} got a different digest {d}"
                ));
            }
            digest.get_or_insert(d);
        }
        digest.ok_or_else(|| {
            ImageError::Push(DockerError::NoDigest {
                reference: repo.to_string(),
            })
        })
    }
}

/// Moves the moving tags (`staging-latest`, any template without `{sha}`, `{short_sha}`
/// or `{run_number}`) to the images just proven healthy. A failure here does not undo a
/// healthy deploy: it is a warning saying which tag still names an older image.
pub async fn push_moving_tags(
    build: &BuildSettings,
    ctx: &GithubContext,
    sha: &str,
    runner: &Runner,
    report: &mut Report,
) {
    let Some(first) = report.image_tags.first().cloned() else {
        return;
    };
    if build.images.is_empty() {
        return;
    }
    let moving = expand_tags(build, ctx, sha, false, report);
    if moving.is_empty() {
        return;
    }
    let engine = match Engine::connect(build.builder).await {
        Ok(e) => e,
        Err(e) => {
            report.warn(
                "berth: moving tags not pushed",
                format!(
                    "{} still name(s) the previous images: {e}",
                    moving.join(", ")
                ),
            );
            return;
        }
    };
    let auth = registry_auth(build);
    let _group = runner.group(&format!("Move {}", moving.join(", ")));
    let mut all_moved = vec![true; moving.len()];
    for img in &build.images {
        let repo = repository(build, &img.service);
        for (i, tag) in moving.iter().enumerate() {
            let moved = match engine.tag(&format!("{repo}:{first}"), &repo, tag).await {
                Ok(()) => engine.push(&repo, tag, &auth, |_| {}).await,
                Err(e) => Err(e),
            };
            match moved {
                Ok(d) => runner.line(&format!("{}: {repo}:{tag} -> {d}", img.service)),
                Err(e) => {
                    all_moved[i] = false;
                    report.warn(
                        "berth: moving tag not pushed",
                        format!("The deploy is healthy, but {repo}:{tag} still names the previous image: {e}"),
                    );
                }
            }
        }
    }
    // Only the tags that moved for every image are named as this release's.
    report.image_tags.extend(
        moving
            .into_iter()
            .zip(all_moved)
            .filter_map(|(t, moved)| moved.then_some(t)),
    );
}
