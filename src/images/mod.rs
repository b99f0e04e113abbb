//! Images: build each service from the workspace, tag it with every `tags` template and
//! push it; from here on every step refers to the image by digest, never by tag.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use globset::GlobMatcher;

use crate::docker::{is_classic_cache_race, BuildRequest, DockerError, Engine, RegistryAuth};
use crate::inputs::{is_valid_tag, BuildSettings, GithubContext, ImageSpec, TagValues};
use crate::report::{Failure, Phase, PhaseResult, Report};
use crate::workflow::Runner;

/// Lines of build output quoted in a build failure.
const BUILD_TAIL: usize = 30;
/// Builds tried when the classic builder's cache lookup races an image removal.
const CACHE_RACE_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read the build context {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`.dockerignore` in {context} has a pattern berth cannot read: `{pattern}` ({detail})"
    )]
    Pattern {
        context: String,
        pattern: String,
        detail: String,
    },
}

/// The rules of a `.dockerignore`, applied as moby applies them: a pattern matches a path
/// or any of its parent directories, `!` re-includes, and the last matching line decides.
pub struct DockerIgnore {
    rules: Vec<(GlobMatcher, bool)>,
}

impl DockerIgnore {
    pub fn parse(text: &str, context: &str) -> Result<DockerIgnore, ContextError> {
        let mut rules = Vec::new();
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negated, pattern) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let cleaned = clean(pattern);
            if cleaned.is_empty() {
                continue;
            }
            let glob = globset::GlobBuilder::new(&cleaned)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| ContextError::Pattern {
                    context: context.into(),
                    pattern: line.into(),
                    detail: e.to_string(),
                })?;
            rules.push((glob.compile_matcher(), negated));
        }
        Ok(DockerIgnore { rules })
    }

    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, neg)| *neg)
    }

    /// Whether `path` (relative, `/`-separated) is left out of the context.
    pub fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for (glob, negated) in &self.rules {
            let mut candidates = vec![path.to_string()];
            let mut parent = Path::new(path).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                candidates.push(p.to_string_lossy().into());
                parent = p.parent();
            }
            if candidates.iter().any(|c| glob.is_match(c)) {
                excluded = !negated;
            }
        }
        excluded
    }
}

/// Go's `filepath.Clean` as Docker applies it to patterns, without the leading `/`.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// A tar of `context`, honouring its `.dockerignore`, storing symlinks as links (never
/// following one out of the context). The Dockerfile and `.dockerignore` are always sent,
/// as Docker does; a Dockerfile outside the context is added under `extra_name`.
pub fn context_tar(
    context: &Path,
    dockerfile: &Path,
    extra_name: &str,
) -> Result<(Vec<u8>, String), ContextError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ContextError::Io { path, source }
    };
    let ignore_text = std::fs::read_to_string(context.join(".dockerignore")).unwrap_or_default();
    let ignore = DockerIgnore::parse(&ignore_text, &context.display().to_string())?;
    let dockerfile_rel = dockerfile
        .strip_prefix(context)
        .ok()
        .map(|p| p.to_string_lossy().replace('\\', "/"));
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = context.join(&rel_dir);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .collect::<Result<_, _>>()
            .map_err(io(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = rel_dir.join(entry.file_name());
            let rel_str = rel.to_string_lossy().replace('\\', "/");
            let always = rel_str == ".dockerignore" || Some(&rel_str) == dockerfile_rel.as_ref();
            let file_type = entry.file_type().map_err(io(&entry.path()))?;
            if !always && ignore.excludes(&rel_str) {
                // A later `!` line may re-include something below an excluded dir.
                if !(file_type.is_dir() && ignore.has_exceptions()) {
                    continue;
                }
            }
            if file_type.is_dir() {
                builder
                    .append_dir(&rel, entry.path())
                    .map_err(io(&entry.path()))?;
                stack.push(rel);
            } else {
                builder
                    .append_path_with_name(entry.path(), &rel)
                    .map_err(io(&entry.path()))?;
            }
        }
    }
    let name = match dockerfile_rel {
        Some(rel) => rel,
        None => {
            builder
                .append_path_with_name(dockerfile, extra_name)
                .map_err(io(dockerfile))?;
            extra_name.to_string()
        }
    };
    let bytes = builder.into_inner().map_err(io(context))?;
    Ok((bytes, name))
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
        branch: ctx.ref_name.clone(),
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
    let auth = RegistryAuth {
        server: build.registry.clone(),
        username: build.registry_username.clone(),
        password: build.registry_password.clone(),
    };
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

/// Builds every image, then (only if all built) pushes every tag. Returns
/// service -> `repo@sha256:...`.
pub async fn build_and_push(
    build: &BuildSettings,
    dry_run: bool,
    ctx: &GithubContext,
    sha: &str,
    runner: &Runner,
    report: &mut Report,
) -> Result<BTreeMap<String, String>, Failure> {
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
        return Err(Failure {
            phase: Phase::Build,
            title: "berth: no valid image tag".into(),
            message: format!(
                "every template in `tags` that names the commit or run ({}) expanded to an empty or invalid tag for this run (branch `{}`, run number `{}`). Add a template that always gives a tag, e.g. `staging-{{sha}}`.",
                build.tags.iter().filter(|t| t.is_immutable()).map(|t| format!("`{}`", t.0)).collect::<Vec<_>>().join(", "),
                ctx.ref_name,
                ctx.run_number
            ),
            file: None,
            line: None,
        });
    }
    if dry_run {
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
        return Ok(BTreeMap::new());
    }
    let engine_failure = |e: DockerError| Failure {
        phase: Phase::Build,
        title: "berth: Docker engine unavailable".into(),
        message: e.to_string(),
        file: None,
        line: None,
    };
    let engine = Engine::connect(build.builder)
        .await
        .map_err(engine_failure)?;
    let (builder, why) = engine.builder();
    runner.line(&format!("building with {builder:?} ({why})"));

    let started = Instant::now();
    let labels: HashMap<String, String> = [
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
    .into();
    let build_args: HashMap<String, String> = build.build_args.iter().cloned().collect();
    let first_tag = tags.first().cloned().unwrap_or_else(|| sha.to_string());
    let auth = RegistryAuth {
        server: build.registry.clone(),
        username: build.registry_username.clone(),
        password: build.registry_password.clone(),
    };
    for img in &build.images {
        build_one(
            &engine,
            build,
            ctx,
            img,
            &first_tag,
            &build_args,
            &labels,
            &auth,
            runner,
        )
        .await
        .inspect_err(|f| {
            report.record(
                Phase::Build,
                started.elapsed(),
                PhaseResult::Failed(f.title.clone()),
            );
        })?;
    }
    report.record(
        Phase::Build,
        started.elapsed(),
        PhaseResult::Ok(format!("{} image(s)", build.images.len())),
    );

    let started = Instant::now();
    let mut pushed = BTreeMap::new();
    for img in &build.images {
        let repo = repository(build, &img.service);
        let _group = runner.group(&format!("Push {}", img.service));
        let mut digest = None;
        for tag in &tags {
            let local = format!("{repo}:{first_tag}");
            if tag != &first_tag {
                engine
                    .tag(&local, &repo, tag)
                    .await
                    .map_err(|e| push_failure(&e))?;
            }
            let mut last = String::new();
            let d = engine
                .push(&repo, tag, &auth, |l| {
                    // The engine repeats `Preparing`/`Pushing` per layer; print changes only.
                    if l != last {
                        runner.line(&format!("{}: {l}", img.service));
                        last = l.to_string();
                    }
                })
                .await
                .map_err(|e| {
                    report.record(
                        Phase::Push,
                        started.elapsed(),
                        PhaseResult::Failed(e.to_string()),
                    );
                    push_failure(&e)
                })?;
            if digest.as_ref().is_some_and(|prev| prev != &d) {
                runner.line(&format!(
                    "{}: warning: tag {tag} got a different digest {d}",
                    img.service
                ));
            }
            digest.get_or_insert(d);
        }
        let Some(digest) = digest else {
            return Err(push_failure(&DockerError::NoDigest {
                reference: repo.clone(),
            }));
        };
        runner.line(&format!("{}: {repo}@{digest}", img.service));
        pushed.insert(img.service.clone(), format!("{repo}@{digest}"));
    }
    report.record(
        Phase::Push,
        started.elapsed(),
        PhaseResult::Ok(format!(
            "{} tag(s) per image; moving tags wait for a healthy deploy",
            tags.len()
        )),
    );
    report.image_tags = tags;
    Ok(pushed)
}

#[allow(clippy::too_many_arguments)]
async fn build_one(
    engine: &Engine,
    build: &BuildSettings,
    ctx: &GithubContext,
    img: &ImageSpec,
    tag: &str,
    build_args: &HashMap<String, String>,
    labels: &HashMap<String, String>,
    auth: &RegistryAuth,
    runner: &Runner,
) -> Result<(), Failure> {
    let _group = runner.group(&format!("Build {}", img.service));
    let context = inside(&ctx.workspace, &img.context);
    let dockerfile = inside(&ctx.workspace, &img.dockerfile);
    let fail = |message: String, line: Option<u32>| Failure {
        phase: Phase::Build,
        title: format!("berth: building {} failed", img.service),
        message,
        file: Some(img.dockerfile.clone()),
        line,
    };
    if !dockerfile.is_file() {
        return Err(fail(
            format!(
                "{} does not exist in the workspace. Check the `images` line for `{}`.",
                img.dockerfile, img.service
            ),
            None,
        ));
    }
    let mut tail: Vec<String> = Vec::new();
    let reference = format!("{}:{tag}", repository(build, &img.service));
    let mut attempt = 1;
    let result = loop {
        let (tar, name) = context_tar(&context, &dockerfile, ".berth.Dockerfile")
            .map_err(|e| fail(e.to_string(), None))?;
        let request = BuildRequest {
            context_tar: tar,
            auth,
            dockerfile: &name,
            tag: &reference,
            target: img.target.as_deref(),
            build_args,
            labels,
        };
        tail.clear();
        let result = engine
            .build(request, |line| {
                runner.line(line);
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
                runner.warning(
                    &format!("berth: rebuilding {}", img.service),
                    &format!(
                        "The classic builder's cache lookup failed ({message}): an image on the engine was removed while the build read the cache, a race in the engine (`FROM scratch` steps read every parentless image). Nothing was built from it; building again (attempt {} of {CACHE_RACE_ATTEMPTS}).",
                        attempt + 1
                    ),
                );
                attempt += 1;
            }
            result => break result,
        }
    };
    match result {
        Ok(_) => Ok(()),
        Err(DockerError::Build {
            message,
            line,
            step,
            ..
        }) => Err(fail(
            format!(
                "{message}\nLast {} lines of build output:\n{}",
                tail.len(),
                tail.join("\n")
            ),
            line.or_else(|| {
                let text = std::fs::read_to_string(&dockerfile).ok()?;
                instruction_line(&text, step.as_deref()?)
            }),
        )),
        Err(e) => Err(fail(e.to_string(), None)),
    }
}

/// The 1-based line where `instruction` (as the builder names a step, continuation lines
/// joined: `RUN make && make install`) starts in the Dockerfile `text`.
fn instruction_line(text: &str, instruction: &str) -> Option<u32> {
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

fn push_failure(e: &DockerError) -> Failure {
    let title = match e {
        DockerError::Unauthorized { .. } => "berth: registry rejected the credentials",
        DockerError::Denied { .. } => "berth: no permission to push",
        DockerError::RegistryUnreachable { .. } => "berth: registry unreachable",
        _ => "berth: push failed",
    };
    Failure {
        phase: Phase::Push,
        title: title.into(),
        message: e.to_string(),
        file: None,
        line: None,
    }
}

#[cfg(test)]
mod tests;
