use super::build::instruction_line;
use super::*;

#[test]
fn dockerignore_follows_moby_rules() {
    let ig = DockerIgnore::parse(
        "# comment\nnode_modules\n*.log\n!keep.log\n/secret/**\ndocs/*.md\n",
        "ctx",
    )
    .unwrap();
    assert!(ig.excludes("node_modules"));
    assert!(
        ig.excludes("node_modules/a/b.js"),
        "a pattern excludes everything below a matching dir"
    );
    assert!(ig.excludes("debug.log"));
    assert!(!ig.excludes("keep.log"), "the last matching line decides");
    assert!(!ig.excludes("sub/debug.log"), "`*` does not cross `/`");
    assert!(ig.excludes("secret/x/y"));
    assert!(ig.excludes("docs/a.md") && !ig.excludes("docs/sub/a.md"));
    assert!(!ig.excludes("src/main.rs"));
}

#[test]
fn the_context_tar_leaves_out_ignored_files_and_keeps_symlinks_as_links() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("sub")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "secret.txt\nDockerfile\n").unwrap();
    std::fs::write(ctx.join("secret.txt"), "s").unwrap();
    std::fs::write(ctx.join("sub/app.txt"), "a").unwrap();
    std::fs::write(dir.path().join("outside.txt"), "CONTENT-FROM-OUTSIDE").unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside.txt"), ctx.join("link")).unwrap();
    let (tar, name) = context_tar(&ctx, &ctx.join("Dockerfile"), ".berth.Dockerfile").unwrap();
    assert_eq!(name, "Dockerfile");
    let mut archive = tar::Archive::new(&tar[..]);
    let mut names = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().to_string();
        if path == "link" {
            assert!(e.header().entry_type().is_symlink(), "symlinks stay links");
        }
        names.push(path);
    }
    names.sort();
    assert_eq!(
        names,
        vec![".dockerignore", "Dockerfile", "link", "sub", "sub/app.txt"]
    );
    assert!(
        !String::from_utf8_lossy(&tar).contains("CONTENT-FROM-OUTSIDE"),
        "nothing from outside the context"
    );
}

#[test]
fn a_failing_step_is_found_on_its_dockerfile_line() {
    let dockerfile = "FROM scratch\nCOPY a /a\nRUN echo one\n# comment\nRUN echo about && \\\n    exit 3\nRUN  echo   spaced\n";
    assert_eq!(instruction_line(dockerfile, "RUN echo one"), Some(3));
    // Continuation lines joined, as both builders name the step.
    assert_eq!(
        instruction_line(dockerfile, "RUN echo about &&     exit 3"),
        Some(5)
    );
    assert_eq!(instruction_line(dockerfile, "run echo spaced"), Some(7));
    assert_eq!(instruction_line(dockerfile, "RUN echo missing"), None);
}
