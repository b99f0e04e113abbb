//! The build's inputs: `images`, `build-args`, `registry*`, `image-prefix`, `tags`.

use std::sync::LazyLock;

use regex::Regex;

use super::Parser;
use crate::inputs::context::GithubContext;
use crate::inputs::grammar::{check_tag_template, list_lines, parse_image_line};
use crate::inputs::settings::{BuildSettings, BuilderChoice, ImageSpec, TagTemplate};
use crate::secret::Secret;

// Patterns are compiled once, on first use; clippy's `invalid_regex` lint checks each
// literal, so the `expect`s cannot fire.
static BUILD_ARG_KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").expect("built-in regex"));

static REGISTRY_HOST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$").expect("built-in regex")
});

static REPOSITORY_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._/-][a-z0-9]+)*)*$")
        .expect("built-in regex")
});

/// Not an input: the variable docker users already set (`env: DOCKER_BUILDKIT: 0`).
pub(super) fn parse_builder(p: &mut Parser) -> BuilderChoice {
    match p.env.get("DOCKER_BUILDKIT").map(|v| v.trim()).unwrap_or("") {
        "" => BuilderChoice::Auto,
        "1" | "t" | "T" | "true" | "TRUE" | "True" => BuilderChoice::BuildKit,
        "0" | "f" | "F" | "false" | "FALSE" | "False" => BuilderChoice::Classic,
        other => {
            p.fail("DOCKER_BUILDKIT", format!("`{other}` is not a boolean. Set the DOCKER_BUILDKIT environment variable to `1` (BuildKit) or `0` (classic builder), or unset it to let berth choose."));
            BuilderChoice::Auto
        }
    }
}

pub(super) fn parse_build(
    p: &mut Parser,
    ctx: &GithubContext,
    builder: BuilderChoice,
    github_token: &Secret,
) -> BuildSettings {
    let images = read_images(p);
    let build_args = read_build_args(p);
    let registry = p.text("registry").to_ascii_lowercase();
    if !REGISTRY_HOST.is_match(&registry) {
        p.fail("registry", format!("`{registry}` is not a registry host, e.g. `ghcr.io` or `registry.example.com:5000`."));
    }
    let registry_username = Some(p.text("registry-username"))
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| ctx.actor.clone());
    let registry_password = match p.text("registry-password") {
        pw if pw.is_empty() => github_token.clone(),
        pw => Secret::new(pw),
    };
    let image_prefix = read_image_prefix(p, ctx, &registry, !images.is_empty());
    BuildSettings {
        builder,
        images,
        build_args,
        registry,
        registry_username,
        registry_password,
        image_prefix,
        tags: read_tags(p),
    }
}

fn read_images(p: &mut Parser) -> Vec<ImageSpec> {
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
    images
}

fn read_build_args(p: &mut Parser) -> Vec<(String, String)> {
    let mut build_args = Vec::new();
    for line in list_lines(&p.raw("build-args")) {
        match line.split_once('=') {
            Some((k, v)) if BUILD_ARG_KEY.is_match(k.trim()) => {
                build_args.push((k.trim().to_string(), v.to_string()))
            }
            _ => p.fail(
                "build-args",
                format!("`{line}` is not `KEY=VALUE`, e.g. `NODE_ENV=production`."),
            ),
        }
    }
    build_args
}

/// Defaults to `<registry>/<owner>/<repo>`; needed only when there are images to push.
fn read_image_prefix(
    p: &mut Parser,
    ctx: &GithubContext,
    registry: &str,
    has_images: bool,
) -> String {
    let image_prefix = match p.text("image-prefix") {
        prefix if !prefix.is_empty() => prefix.to_ascii_lowercase(),
        _ if ctx.repo.is_empty() => {
            if has_images {
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
    if !image_prefix.is_empty() && !REPOSITORY_NAME.is_match(&image_prefix) {
        p.fail(
            "image-prefix",
            format!("`{image_prefix}` is not a valid repository name, e.g. `ghcr.io/acme/shop`."),
        );
    }

    image_prefix
}

fn read_tags(p: &mut Parser) -> Vec<TagTemplate> {
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
    tags
}
