//! Images: build each service from the workspace, tag it with every `tags` template and
//! push it; from here on every step refers to the image by digest, never by tag.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::docker::{Engine, RegistryAuth};
use crate::inputs::{is_valid_tag, BuildSettings, GithubContext, TagValues};
use crate::report::{Phase, PhaseResult, Report};
use crate::workflow::Runner;

mod build;
mod context;
mod error;
mod push;

use build::Builds;
pub use context::{context_tar, ContextError, DockerIgnore};
pub use error::ImageError;
pub use push::push_moving_tags;
use push::Pushes;

/// The tags every image gets, expanded once for this run.
/// The tags of this run from the templates that name the commit or the run
/// (`immutable`: pushed before the deploy) or from the moving ones (pushed only once the
/// deploy proved healthy, so that a moving tag always names what serves).
pub fn expand_tags(
    build: &BuildSettings,
    ctx: &GithubContext,
    sha: &str,
    immutable: bool,
    report: &mut Report,
) -> Vec<String> {
    let values = TagValues {
        sha: sha.into(),
        branch: report.branch.clone().unwrap_or_default(),
        run_number: ctx.run_number.clone(),
    };
    let mut tags = Vec::new();
    for t in build.tags.iter().filter(|t| t.is_immutable() == immutable) {
        let e = t.expand(&values);
        if let Some(raw) = &e.sanitised_from {
            report.warn(
                "berth: tag sanitised",
                format!(
                    "Tag `{raw}` is not a valid image tag; berth used `{}` instead.",
                    e.tag
                ),
            );
        }
        if is_valid_tag(&e.tag) && !tags.contains(&e.tag) {
            tags.push(e.tag);
        }
    }
    tags
}

/// The commit's time from the event payload (push: `head_commit.timestamp`, workflow_run:
/// `workflow_run.head_commit.timestamp`), so rebuilding an unchanged commit gives the same
/// image config and digest. Without a payload, the build time.
pub fn created_timestamp(ctx: &GithubContext) -> String {
    let from_event = ctx
        .event_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|e| {
            [
                &e["head_commit"]["timestamp"],
                &e["workflow_run"]["head_commit"]["timestamp"],
            ]
            .iter()
            .find_map(|v| v.as_str().map(String::from))
        });
    from_event.unwrap_or_else(|| {
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    })
}

pub fn repository(build: &BuildSettings, service: &str) -> String {
    format!("{}-{}", build.image_prefix, service)
}

fn registry_auth(build: &BuildSettings) -> RegistryAuth {
    RegistryAuth {
        server: build.registry.clone(),
        username: build.registry_username.clone(),
        password: build.registry_password.clone(),
    }
}

/// Builds every image, then (only if all built) pushes every tag. Returns
/// service -> `repo@sha256:...`. `title_of` is the annotation title of an [`ImageError`]
/// (written in `failure`), which also names a failed build in the phase table.
pub async fn build_and_push(
    build: &BuildSettings,
    dry_run: bool,
    ctx: &GithubContext,
    sha: &str,
    runner: &Runner,
    report: &mut Report,
    title_of: fn(&ImageError) -> String,
) -> Result<BTreeMap<String, String>, ImageError> {
    if build.images.is_empty() {
        report.record(
            Phase::Build,
            Default::default(),
            PhaseResult::Skipped(
                "no `images`: the compose file's images are pinned by digest on the host".into(),
            ),
        );
        return Ok(BTreeMap::new());
    }
    let tags = expand_tags(build, ctx, sha, true, report);
    if tags.is_empty() {
        // Nothing to push means nothing to deploy by digest: say so before any build.
        return Err(ImageError::NoValidTag {
            templates: build
                .tags
                .iter()
                .filter(|t| t.is_immutable())
                .map(|t| t.0.clone())
                .collect(),
            branch: report.branch.clone().unwrap_or_default(),
            run_number: ctx.run_number.clone(),
        });
    }
    if dry_run {
        plan(build, &tags, runner, report);
        return Ok(BTreeMap::new());
    }
    let engine = Engine::connect(build.builder)
        .await
        .map_err(ImageError::Engine)?;
    let (builder, why) = engine.builder();
    runner.line(&format!("building with {builder:?} ({why})"));

    let started = Instant::now();
    let first_tag = tags.first().cloned().unwrap_or_else(|| sha.to_string());
    let auth = registry_auth(build);
    let builds = Builds {
        engine: &engine,
        build,
        workspace: &ctx.workspace,
        tag: &first_tag,
        build_args: build.build_args.iter().cloned().collect(),
        labels: oci_labels(ctx, sha),
        auth: &auth,
        runner,
    };
    builds.build_all(started, report, title_of).await?;
    let pushes = Pushes {
        engine: &engine,
        build,
        tags: &tags,
        first_tag: &first_tag,
        auth: &auth,
        runner,
        started: Instant::now(),
    };
    let pushed = pushes.push_all(report).await?;
    report.image_tags = tags;
    Ok(pushed)
}

/// A dry run: what would be built and pushed, in the log and the report's plan.
fn plan(build: &BuildSettings, tags: &[String], runner: &Runner, report: &mut Report) {
    for img in &build.images {
        let line = format!(
            "build {} from {} (context {}{}) and push {}",
            img.service,
            img.dockerfile,
            img.context,
            img.target
                .as_ref()
                .map(|t| format!(", target {t}"))
                .unwrap_or_default(),
            tags.iter()
                .map(|t| format!("{}:{t}", repository(build, &img.service)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        runner.line(&format!("would {line}"));
        report.plan.push(line);
    }
    report.record(
        Phase::Build,
        Default::default(),
        PhaseResult::Skipped("dry run".into()),
    );
}

/// The OCI labels every image gets: which commit of which repository, and when.
fn oci_labels(ctx: &GithubContext, sha: &str) -> HashMap<String, String> {
    [
        (
            "org.opencontainers.image.revision".to_string(),
            sha.to_string(),
        ),
        (
            "org.opencontainers.image.source".to_string(),
            format!("{}/{}", ctx.server_url, ctx.repository),
        ),
        (
            "org.opencontainers.image.created".to_string(),
            created_timestamp(ctx),
        ),
    ]
    .into()
}

#[cfg(test)]
mod tests;
