//! The action image: FROM scratch, the static binary only, small, and it starts, built the
//! way a runner builds it, from a release tree.

use std::path::Path;
use std::process::Command;

use crate::support::rig::{require_engine, sh};

fn dist_binary() -> std::path::PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/berth-x86_64-linux");
    assert!(
        bin.exists(),
        "{} is missing: scripts/test builds it with scripts/dist",
        bin.display()
    );
    bin
}

/// A release commit's tree: action.yml, Dockerfile, .dockerignore and dist/ binaries, plus a
/// stand-in for the rest of the repository that must stay out of the build context.
fn release_tree() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tree = tempfile::tempdir().unwrap();
    for f in ["action.yml", "Dockerfile", ".dockerignore"] {
        std::fs::copy(root.join(f), tree.path().join(f)).unwrap();
    }
    std::fs::create_dir_all(tree.path().join("dist")).unwrap();
    std::fs::create_dir_all(tree.path().join("target")).unwrap();
    std::fs::write(tree.path().join("target/huge"), vec![0u8; 4 << 20]).unwrap();
    std::fs::copy(dist_binary(), tree.path().join("dist/berth-amd64-linux")).unwrap();
    std::fs::copy(dist_binary(), tree.path().join("dist/berth-x86_64-linux")).unwrap();
    tree
}

/// A label unique to this build: without it the image has the same id as act's build of
/// the same tree (tests/it/act.rs), and removing it here could delete that one mid-run.
fn unique_label() -> String {
    format!(
        "berth.test={}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn check_image(tag: &str) {
    let size: u64 = sh(Command::new("docker").args(["image", "inspect", "-f", "{{.Size}}", tag]))
        .trim()
        .parse()
        .unwrap();
    assert!(
        size <= 15_000_000,
        "the action image is {size} bytes; the budget is 15 MB"
    );
    let out = sh(Command::new("docker").args(["run", "--rm", tag, "--version"]));
    assert!(out.starts_with("berth "), "{out}");
    let layers =
        sh(Command::new("docker").args(["image", "inspect", "-f", "{{len .RootFS.Layers}}", tag]));
    assert_eq!(layers.trim(), "1", "the image must hold the binary only");
    let _ = Command::new("docker")
        .args(["image", "rm", "-f", "--no-prune", tag])
        .output();
}

#[test]
fn the_action_image_builds_from_a_release_tree_with_the_legacy_builder() {
    require_engine();
    let tree = release_tree();
    let tag = "berth-action-legacy-test:latest";
    sh(Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        // `--no-cache`: see `busybox_image` for the engine's cache-lookup race.
        .args([
            "build",
            "-q",
            "--no-cache",
            "--label",
            &unique_label(),
            "-t",
            tag,
        ])
        .arg(tree.path()));
    check_image(tag);
}

/// Debian's docker CLI has BuildKit built in; a newer CLI wants the buildx plugin.
const BUILDKIT_CLI: &str = "/usr/bin/docker";

#[test]
fn the_action_image_picks_the_binary_for_the_platform_under_buildkit() {
    require_engine();
    assert!(
        Path::new(BUILDKIT_CLI).exists(),
        "{BUILDKIT_CLI} (docker.io) is missing; run scripts/test"
    );
    let tree = release_tree();
    let tag = "berth-action-buildkit-test:latest";
    sh(Command::new(BUILDKIT_CLI)
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "-q", "--label", &unique_label()])
        .args(["--platform", "linux/amd64", "-t", tag])
        .arg(tree.path()));
    check_image(tag);
    // An arm64 build must look for the arm64 binary, which this tree lacks.
    let out = Command::new(BUILDKIT_CLI)
        .env("DOCKER_BUILDKIT", "1")
        .args([
            "build",
            "-q",
            "--platform",
            "linux/arm64",
            "-t",
            "berth-action-arm64-test:latest",
        ])
        .arg(tree.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("berth-arm64-linux"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
