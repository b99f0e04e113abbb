//! The plan is the deploy: a dry run prints the same list of steps that a deploy then
//! executes. The host records every command it receives (each SSH exec, and each request
//! to berth's remote session, read off the session's stdin), so the comparison is with
//! what reached the host, not with what berth says it sent.

use std::path::Path;

use crate::support::rig::Sshd;
use crate::support::stage::{App, Stage};

/// An sshd that records each command it receives (NUL-terminated) before running it,
/// copies the remote session's requests to `<log>.session`, and serves SFTP as usual.
fn recording_sshd(log: &Path) -> Sshd {
    let script = log.with_extension("sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
case "$SSH_ORIGINAL_COMMAND" in
  internal-sftp|*sftp-server*) printf 'sftp\0' >> '{log}'; exec /usr/lib/openssh/sftp-server ;;
  *berth-agent*) printf 'session\0' >> '{log}'; tee -a '{log}.session' | /bin/sh -c "$SSH_ORIGINAL_COMMAND"; exit ;;
esac
printf '%s\0' "$SSH_ORIGINAL_COMMAND" >> '{log}'
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"#,
            log = log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    Sshd::start_configured(
        "ed25519",
        "ed25519",
        "",
        &format!("ForceCommand {}\n", script.display()),
    )
}

/// The commands berth's remote session received: each request line is `<id> <command>
/// <stdin> <cleanup>`, fields `:`-prefixed with `\0NNN` escapes (see `ssh/agent.rs`).
fn session_commands(requests: &str) -> Vec<String> {
    requests
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|field| {
            let field = field.strip_prefix(':').unwrap_or(field).as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < field.len() {
                if field[i] == b'\\' && field.get(i + 1) == Some(&b'0') && i + 4 < field.len() {
                    let octal = std::str::from_utf8(&field[i + 2..i + 5]).unwrap();
                    out.push(u8::from_str_radix(octal, 8).unwrap());
                    i += 5;
                } else {
                    out.push(field[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        })
        .collect()
}

/// Release ids, lock tokens, start times and the login's private config dir differ from
/// run to run by design.
fn normalise(line: &str) -> String {
    let id = regex::Regex::new(r"\d{8}T?\d{6}Z?-[0-9a-f]{7,}").unwrap();
    let token = regex::Regex::new(r"\b[0-9a-f]{16}\b").unwrap();
    let started = regex::Regex::new(r#""started_at":"[^"]*""#).unwrap();
    let line = id.replace_all(line, "<release>");
    let line = token.replace_all(&line, "<token>");
    started.replace_all(&line, "<started>").into_owned()
}

/// The plan as printed: each entry opens with `would run: [host] `; a command with a
/// multi-line script goes on over the lines that follow it.
fn plan_entries(stdout: &str, host: &str) -> Vec<String> {
    let prefix = format!("would run: [{host}] ");
    let mut entries: Vec<String> = Vec::new();
    let mut open = false;
    for line in stdout.lines() {
        if let Some(entry) = line.strip_prefix(&prefix) {
            entries.push(entry.to_string());
            open = true;
        } else if open && !line.starts_with("would ") && !line.starts_with("::") {
            let last = entries.last_mut().expect("an open entry");
            last.push('\n');
            last.push_str(line);
        } else {
            open = false;
        }
    }
    entries
}

#[test]
fn the_dry_run_plan_is_exactly_what_the_host_then_receives() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("commands");
    let stage = Stage::with_sshd(recording_sshd(&log));
    let berth = |dry: bool| {
        stage
            .berth(&App::new("v1"))
            .input("pre-deploy", "backend: sh /migrate.sh")
            .input("dry-run", if dry { "true" } else { "false" })
    };

    let dry = berth(true).run();
    assert_eq!(dry.code, 0, "{}", dry.stdout);
    let plan: Vec<String> = plan_entries(&dry.stdout, &stage.sshd.host())
        .iter()
        .map(|e| normalise(e))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("backend sh /migrate.sh"))
            && plan.iter().any(|l| l.contains("--password-stdin")),
        "{plan:#?}"
    );
    std::fs::write(&log, "").unwrap();
    std::fs::write(log.with_extension("session"), "").unwrap();

    let real = berth(false).run();
    assert_eq!(real.code, 0, "{}", real.stdout);
    // SFTP sessions and the rename that completes an upload are the plan's `sftp` lines.
    let execs = std::fs::read_to_string(&log).unwrap();
    assert!(
        execs.split('\0').filter(|c| *c == "session").count() == 1,
        "one remote session, started once: {execs:?}"
    );
    let session = std::fs::read_to_string(log.with_extension("session")).unwrap();
    let received: Vec<String> = session_commands(&session)
        .iter()
        .filter(|c| !c.starts_with("mv -f "))
        .map(|c| normalise(c))
        .collect();
    let commands: Vec<&String> = plan.iter().filter(|l| !l.starts_with("sftp ")).collect();
    let first = received
        .iter()
        .position(|c| c == commands[0])
        .unwrap_or_else(|| panic!("the lock command never reached the host: {received:#?}"));
    let mut sent = received[first..].iter().peekable();
    for planned in &commands {
        const STDIN: &str = " <<< (secret on stdin, redacted)";
        const COMPLETED: &str = " <each image the compose model names by tag>";
        const MARKER: &str = " <random end marker>";
        let planned = planned.strip_suffix(STDIN).unwrap_or(planned);
        if let Some(prefix) = planned.strip_suffix(MARKER) {
            // Completed at run time with one more word: the random end marker.
            let got = sent.next().map(String::as_str).unwrap_or_default();
            let added = got.strip_prefix(prefix).unwrap_or_default();
            assert!(
                added.starts_with(" berth-model-") && !added[1..].contains(' '),
                "the plan and what the host received part here.\nplanned: {planned}\nreceived: {got}"
            );
            continue;
        }
        if let Some(prefix) = planned.strip_suffix(COMPLETED) {
            // Completed at run time with the images named by tag: none when berth built
            // every image, as here.
            if sent.peek().is_some_and(|c| c.starts_with(prefix)) {
                sent.next();
            }
            continue;
        }
        assert_eq!(
            sent.next().map(String::as_str),
            Some(planned),
            "the plan and what the host received part here.\nplan: {commands:#?}\nreceived: {received:#?}"
        );
    }
    // The plan ends where the verdict begins: what comes next verifies what runs.
    let next = sent.next().map(String::as_str).unwrap_or_default();
    assert!(
        next.starts_with("docker ps -a --no-trunc --filter"),
        "{next}"
    );
}
