//! The target hosts' inputs: `hosts`, `ssh-*`, host key pins, and the release laid out on
//! each host (`deploy-dir`, `project-name`, `compose-file`, `env-file`, ...).

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;

use super::Parser;
use crate::inputs::context::GithubContext;
use crate::inputs::dotenv;
use crate::inputs::grammar::{
    check_deploy_dir, check_private_key, list_items, list_lines, parse_host, parse_known_host,
    parse_port, parse_pre_deploy, resolves_inside, sanitise_project, USER_NAME,
};
use crate::inputs::settings::{
    HostSettings, HostSpec, ImageSpec, KnownHost, Mode, PreDeploy, TargetKind,
};
use crate::secret::Secret;

// Patterns are compiled once, on first use; clippy's `invalid_regex` lint checks each
// literal, so the `expect`s cannot fire.
static SHA256_FINGERPRINT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^SHA256:[A-Za-z0-9+/]{43}=?$").expect("built-in regex"));

static PROJECT_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9_-]*$").expect("built-in regex"));

/// How to pin a host key, for the errors that ask for one.
const KEYSCAN_HINT: &str = "Get the host's fingerprint with `ssh-keyscan -p PORT HOST | ssh-keygen -lf -` \
(on a machine you trust) and set `host-fingerprints: SHA256:...`, or set `known-hosts` to the \
`ssh-keyscan` output. Only if you accept a machine-in-the-middle risk: `insecure-skip-host-key-check: true`.";

pub(super) fn parse_target(
    p: &mut Parser,
    ctx: &GithubContext,
    mode: Mode,
    images: &[ImageSpec],
) -> HostSettings {
    let kind = read_kind(p);
    let hosts = read_hosts(p);
    let ssh_key = Secret::new(p.raw("ssh-key").trim().to_string() + "\n");
    if let Err(why) = check_private_key(ssh_key.expose()) {
        p.fail("ssh-key", why);
    }
    let ssh_key_passphrase = Some(p.text("ssh-key-passphrase"))
        .filter(|s| !s.is_empty())
        .map(Secret::new);
    let known_hosts = read_known_hosts(p);
    let host_fingerprints = read_host_fingerprints(p);
    let insecure_skip_host_key_check = read_host_key_check(p);
    let deploy_dir = read_deploy_dir(p, ctx);
    let project_name = read_project_name(p, ctx);
    let compose_file = read_compose_file(p, ctx, mode);
    // Checked here, after `compose-file`, so the messages keep their order.
    check_images_inside_workspace(p, ctx, images);
    let env_file = read_env_file(p);
    HostSettings {
        kind,
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
        pre_deploy: read_pre_deploy(p),
        pre_deploy_timeout: p.duration("pre-deploy-timeout", "10m"),
        pull_stall_timeout: p.duration("pull-stall-timeout", "60s"),
        keep_releases: read_keep_releases(p),
        lock_timeout: p.duration("lock-timeout", "10m"),
    }
}

/// `env-file`, which must read as Compose reads it (it is the app's `.env` on each host),
/// and hold no value without a key. The errors name lines, never their text.
fn read_env_file(p: &mut Parser) -> Option<Secret> {
    let body = Some(p.raw("env-file"))
        .filter(|e| !e.trim().is_empty())
        .map(Secret::new)?;
    for problem in dotenv::parse(body.expose()).problems() {
        p.fail("env-file", format!("{problem}."));
    }
    Some(body)
}

/// `target`: `compose` or `swarm`.
fn read_kind(p: &mut Parser) -> TargetKind {
    match p.text("target").as_str() {
        "compose" => TargetKind::Compose,
        "swarm" => TargetKind::Swarm,
        other => {
            p.fail(
                "target",
                format!("`{other}` is not a target. Use `compose` (a compose project on each host) or `swarm` (a Docker Swarm stack; `hosts` then names manager nodes)."),
            );
            TargetKind::Compose
        }
    }
}

/// `hosts`, with `ssh-user` and `ssh-port` for the entries that name none.
fn read_hosts(p: &mut Parser) -> Vec<HostSpec> {
    let ssh_user = p.text("ssh-user");
    if !USER_NAME.is_match(&ssh_user) {
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

    hosts
}

fn read_known_hosts(p: &mut Parser) -> Vec<KnownHost> {
    let mut known_hosts = Vec::new();
    for line in list_lines(&p.raw("known-hosts")) {
        match parse_known_host(&line) {
            Ok(k) => known_hosts.push(k),
            Err(why) => p.fail("known-hosts", format!("a line is not a known_hosts entry: {why}. Paste the output of `ssh-keyscan -p PORT HOST`.")),
        }
    }
    known_hosts
}

fn read_host_fingerprints(p: &mut Parser) -> Vec<String> {
    let mut host_fingerprints = Vec::new();
    for fp in list_items(&p.raw("host-fingerprints")) {
        if SHA256_FINGERPRINT.is_match(&fp) {
            host_fingerprints.push(fp.trim_end_matches('=').to_string());
        } else {
            p.fail(
                "host-fingerprints",
                format!("`{fp}` is not a SHA256 fingerprint. {KEYSCAN_HINT}"),
            );
        }
    }
    host_fingerprints
}

/// `insecure-skip-host-key-check`, refused together with a pin; without it, a pin is required.
fn read_host_key_check(p: &mut Parser) -> bool {
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

    insecure_skip_host_key_check
}

fn read_deploy_dir(p: &mut Parser, ctx: &GithubContext) -> String {
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
    deploy_dir
}

fn read_project_name(p: &mut Parser, ctx: &GithubContext) -> String {
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
    } else if !PROJECT_NAME.is_match(&project_name) {
        p.fail("project-name", format!("`{project_name}` is not a compose project name: lower-case letters, digits, `-` and `_`, starting with a letter or digit, e.g. `shop-staging`."));
    }

    project_name
}

/// The compose file is read (and must exist) only when deploying.
fn read_compose_file(p: &mut Parser, ctx: &GithubContext, mode: Mode) -> PathBuf {
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
    compose_file
}

/// Dockerfiles and build contexts that exist must not lead out of the workspace.
fn check_images_inside_workspace(p: &mut Parser, ctx: &GithubContext, images: &[ImageSpec]) {
    for img in images {
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
}

fn read_pre_deploy(p: &mut Parser) -> Option<PreDeploy> {
    match p.text("pre-deploy") {
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
    }
}

fn read_keep_releases(p: &mut Parser) -> u32 {
    match p.text("keep-releases").parse::<u32>() {
        Ok(n) if n >= 1 => n,
        _ => {
            p.fail("keep-releases", format!("`{}` must be a whole number of at least 1 (the current release is always kept), e.g. `keep-releases: 3`.", p.text("keep-releases")));
            3
        }
    }
}
