//! The action image: FROM scratch, the static binary only, small, and it starts.

use std::process::Command;

use crate::support::rig::{require_engine, sh};

#[test]
fn the_action_image_is_tiny_and_runs_version() {
    require_engine();
    let root = env!("CARGO_MANIFEST_DIR");
    let bin = std::path::Path::new(root).join("dist/berth-x86_64-linux");
    assert!(
        bin.exists(),
        "{} is missing: scripts/test builds it with scripts/dist",
        bin.display()
    );
    let tag = "berth-action-test:latest";
    sh(Command::new("docker").args(["build", "-q", "-t", tag, root]));
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
    // Nothing but the binary: the image has a single layer.
    let layers =
        sh(Command::new("docker").args(["image", "inspect", "-f", "{{len .RootFS.Layers}}", tag]));
    assert_eq!(layers.trim(), "1");
}
