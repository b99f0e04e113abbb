//! The Swarm target (issue 17), as far as it is built: the stack file berth makes from
//! `docker compose config` is one that a real `docker stack deploy` takes, with the
//! images pinned, start-first where it can work, and the env file's values in the spec;
//! and berth's look at a stack (one command) judges a real update: converged, or failed
//! at the first failed task of the new image while the old tasks still serve.

use std::collections::BTreeMap;
use std::process::Command;

use berth::targets::swarm::state::{judge_stack, parse_stack_state, stack_verdict, StackVerdict};

use crate::support::rig::{busybox_image, sh};
use crate::support::stage::{http_get, App};
use crate::support::swarm::{SwarmEngine, SwarmStage};

#[test]
fn the_stack_file_made_from_compose_config_deploys_on_a_real_swarm() {
    let engine = SwarmEngine::start();
    let dir = engine.dir.path();
    std::fs::write(
        dir.join("compose.yml"),
        r#"services:
  web:
    image: 127.0.0.1:5999/shop/web:latest
    ports:
      - "8080:80"
    env_file: .env
    depends_on:
      - db
    deploy:
      resources:
        limits:
          cpus: 0.5
  db:
    image: 127.0.0.1:5999/shop/db:16
    volumes:
      - data:/var/lib/db
    deploy:
      update_config:
        order: stop-first
  agent:
    image: 127.0.0.1:5999/shop/agent:1
    ports:
      - target: 9000
        published: 9000
        mode: host
volumes:
  data: {}
"#,
    )
    .unwrap();
    std::fs::write(dir.join(".env"), "DB_PASSWORD=env-secret-42\n").unwrap();
    // Resolved as the compose target resolves it: its files, its env file.
    let config = Command::new("docker")
        .args(["compose", "-p", "shop", "-f"])
        .arg(dir.join("compose.yml"))
        .args(["config", "--format", "json"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        config.status.success(),
        "{}",
        String::from_utf8_lossy(&config.stderr)
    );
    let model: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
    let pin = format!("127.0.0.1:5999/shop/web@sha256:{}", "a".repeat(64));
    let pins = BTreeMap::from([("web".to_string(), pin.clone())]);
    let stack = berth::targets::swarm::stack::stack_file(&model, "shop", &pins).unwrap();
    assert_eq!(stack.start_first, ["web"]);
    assert_eq!(stack.no_healthcheck, ["web"]);
    assert_eq!(stack.host_ports, ["agent"]);
    deploy_stack_file(&engine, "shop", &stack.file);
    let inspect = |svc: &str, what: &str| {
        engine
            .ok(&["service", "inspect", svc, "--format", what])
            .trim()
            .to_string()
    };
    let web = "shop_web";
    assert_eq!(
        inspect(web, "{{.Spec.TaskTemplate.ContainerSpec.Image}}"),
        pin
    );
    assert_eq!(inspect(web, "{{.Spec.UpdateConfig.Order}}"), "start-first");
    assert_eq!(
        inspect("shop_db", "{{.Spec.UpdateConfig.Order}}"),
        "stop-first"
    );
    // A host-mode port cannot be shared by two tasks on one node: Swarm's stop-first.
    assert_eq!(
        inspect("shop_agent", "{{.Spec.UpdateConfig.Order}}"),
        "stop-first"
    );
    // Where the env file's values end up: the service spec, readable through the
    // manager's API (what the README says).
    assert!(
        inspect(web, "{{json .Spec.TaskTemplate.ContainerSpec.Env}}")
            .contains("DB_PASSWORD=env-secret-42")
    );
    // Networks and volumes are the stack's own (`shop_...`), not compose's literal names.
    let networks = engine.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(networks.lines().any(|n| n == "shop_default"), "{networks}");
    assert_eq!(
        inspect(web, "{{(index .Endpoint.Ports 0).PublishedPort}}"),
        "8080"
    );
}

/// `compose.yml` resolved by `docker compose config`, made a stack file by berth, and
/// deployed as berth deploys it.
fn deploy(engine: &SwarmEngine, project: &str, compose: &str) {
    let dir = engine.dir.path();
    std::fs::write(dir.join("compose.yml"), compose).unwrap();
    let config = sh(Command::new("docker")
        .args(["compose", "-p", project, "-f"])
        .arg(dir.join("compose.yml"))
        .args(["config", "--format", "json"]));
    let model: serde_json::Value = serde_json::from_str(&config).unwrap();
    let stack =
        berth::targets::swarm::stack::stack_file(&model, project, &BTreeMap::new()).unwrap();
    deploy_stack_file(engine, project, &stack.file);
}

/// `docker stack deploy` of a stack file as berth runs it (the images are on the engine).
fn deploy_stack_file(engine: &SwarmEngine, project: &str, file: &serde_json::Value) {
    let path = engine.dir.path().join("stack.json");
    std::fs::write(&path, serde_json::to_string(file).unwrap()).unwrap();
    let path = path.display().to_string();
    engine.ok(&[
        "stack",
        "deploy",
        "-c",
        &path,
        "--resolve-image",
        "never",
        "--prune",
        project,
    ]);
}

/// Looks at the stack as berth does, through the same command, until the verdict is not
/// `Updating` (at most 2 minutes).
fn settle(engine: &SwarmEngine, project: &str, images: &BTreeMap<String, String>) -> StackVerdict {
    let cmd = berth::remote::swarm::stack_state(project);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let out = Command::new("sh")
            .arg("-c")
            .arg(berth::ssh::quote_argv(&cmd.0))
            .env("DOCKER_HOST", &engine.host)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let state = parse_stack_state(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let verdict = stack_verdict(&judge_stack(&state, project, images, &Default::default()));
        match verdict {
            StackVerdict::Updating(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(250))
            }
            other => return other,
        }
    }
}

/// Builds an image on the rig's engine and loads it into the swarm's (which cannot reach
/// the rig's registry from its namespace).
fn image_on(engine: &SwarmEngine, tag: &str, extra: &str) -> String {
    busybox_image(tag, extra, &[]);
    sh(Command::new("sh").arg("-c").arg(format!(
        "docker save {tag} | docker -H {} load",
        engine.host
    )));
    tag.to_string()
}

#[test]
fn a_stack_update_converges_and_a_crash_looping_task_fails_it_while_the_old_tasks_serve() {
    let engine = SwarmEngine::start();
    // A web server that reports healthy once it answers, and, stopped, keeps answering
    // for 2 s. The crash image has a health check too: without one, Swarm counts a task
    // as running the moment its container starts, and start-first then stops an old task
    // for a new one that exits a moment later (seen on this rig: one replica lost).
    let web = |v: &str| {
        image_on(
            &engine,
            &format!("berth-swarm-web:{v}"),
            &format!(
                "RUN mkdir /www && echo v{v} > /www/index.html\n\
                 HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD wget -qO- http://127.0.0.1/ || exit 1\n\
                 CMD [\"sh\", \"-c\", \"trap 'sleep 2; exit 0' TERM; httpd -f -p 80 -h /www & wait\"]"
            ),
        )
    };
    let (v1, v2) = (web("1"), web("2"));
    let crash = image_on(
        &engine,
        "berth-swarm-crash:1",
        "HEALTHCHECK --interval=1s --timeout=1s CMD exit 1\nCMD [\"sh\", \"-c\", \"echo starting; exit 3\"]",
    );
    let compose = |image: &str| {
        format!("services:\n  web:\n    image: {image}\n    deploy:\n      replicas: 2\n")
    };
    let images = |image: &str| BTreeMap::from([("web".to_string(), image.to_string())]);
    deploy(&engine, "shop", &compose(&v1));
    assert_eq!(
        settle(&engine, "shop", &images(&v1)),
        StackVerdict::Converged
    );
    deploy(&engine, "shop", &compose(&v2));
    assert_eq!(
        settle(&engine, "shop", &images(&v2)),
        StackVerdict::Converged
    );
    // The pre-deploy one-shot as a replicated job from the new image, on the stack's
    // network (it resolves `web`), with the env file's values: its output and exit code,
    // and the job gone afterwards, either way.
    let env = engine.dir.path().join("job.env");
    std::fs::write(&env, "GREETING=hi-from-env\n").unwrap();
    let job = |release: &str, script: &str| {
        let cmd = berth::remote::swarm::pre_deploy_job(
            &berth::remote::swarm::job_name("shop", release),
            &v2,
            &["shop_default".to_string()],
            &env.display().to_string(),
            None,
            &["sh".to_string(), "-c".to_string(), script.to_string()],
        );
        Command::new("sh")
            .arg("-c")
            .arg(berth::ssh::quote_argv(&cmd.0))
            .env("DOCKER_HOST", &engine.host)
            .output()
            .unwrap()
    };
    let ok = job("r1", "nslookup web >/dev/null && echo migrated $GREETING");
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("migrated hi-from-env"),
        "{ok:?}"
    );
    let failed = job("r2", "echo broken; exit 4");
    assert_eq!(failed.status.code(), Some(4), "{failed:?}");
    assert!(
        String::from_utf8_lossy(&failed.stdout).contains("broken"),
        "{failed:?}"
    );
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("task ended failed"),
        "{failed:?}"
    );
    let services = engine.ok(&["service", "ls", "--format", "{{.Name}}"]);
    assert_eq!(services.trim(), "shop_web", "a job outlived its command");
    // The crash-looping release: failed at its first failed task, with its exit code.
    deploy(&engine, "shop", &compose(&crash));
    match settle(&engine, "shop", &images(&crash)) {
        StackVerdict::Failed(f) => {
            assert!(f.len() == 1 && f[0].starts_with("web: "), "{f:?}");
            assert!(f[0].contains("non-zero exit (3)"), "{f:?}");
        }
        other => panic!("{other:?}"),
    }
    // Start-first: the release that was proven still runs on both replicas. The whole
    // stack goes back to it by deploying its stack file again, and converges.
    let running = engine.ok(&[
        "service",
        "ps",
        "shop_web",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Image}} {{.CurrentState}}",
    ]);
    let serving = running
        .lines()
        .filter(|l| l.starts_with(&format!("{v2} Running")))
        .count();
    assert_eq!(serving, 2, "{running}");
    deploy(&engine, "shop", &compose(&v2));
    assert_eq!(
        settle(&engine, "shop", &images(&v2)),
        StackVerdict::Converged
    );
}

/// `target: swarm` end to end on a real single-node swarm, through berth's binary: a
/// first release and a start-first update converge and prove healthy; a release whose
/// backend crash-loops fails at its first failed task and the whole stack goes back to
/// the release proven last; `mode: rollback` re-deploys the release before it.
#[test]
fn target_swarm_deploys_a_stack_and_restores_the_whole_stack_when_a_release_fails() {
    let s = SwarmStage::new();
    let v1 = s.berth(&App::new("v1")).run();
    assert_eq!(v1.code, 0, "{}", v1.stdout);
    let out = v1.everything();
    assert!(out.contains("through this Swarm manager"), "{out}");
    assert!(out.contains("every service of stack"), "{out}");
    let images_v1 = s.service_images();
    assert!(images_v1["backend"].contains("@sha256:"), "{images_v1:?}");
    std::thread::sleep(std::time::Duration::from_secs(1));

    let v2 = s.berth(&App::new("v2")).run();
    assert_eq!(v2.code, 0, "{}", v2.stdout);
    let images_v2 = s.service_images();
    assert_ne!(images_v1["backend"], images_v2["backend"]);
    let release_v2 = s.stage.current().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));

    let crash = s.berth(&App::new("v3").mode("crash")).run();
    assert_eq!(crash.code, 1, "{}", crash.stdout);
    let out = crash.everything();
    assert!(out.contains("non-zero exit (3)"), "{out}");
    assert_eq!(
        crash.output("status").as_deref(),
        Some("rolled-back"),
        "{out}"
    );
    assert_eq!(s.service_images(), images_v2, "{out}");
    assert_eq!(s.stage.current().as_deref(), Some(release_v2.as_str()));
    // The summary names the failing task, its node and its service's log.
    assert!(out.contains("fatal: cannot connect to database"), "{out}");
    assert!(out.contains("berth: the stack did not converge"), "{out}");
    let failed = crash.output("release").unwrap();
    assert_eq!(s.stage.record(&failed)["outcome"], "rolled-back");
    assert_eq!(s.stage.record(&release_v2)["outcome"], "deployed");

    // `mode: rollback` re-deploys the proven release before the current one: v1.
    let back = s.roll_back(None);
    assert_eq!(back.code, 0, "{}", back.stdout);
    assert_eq!(s.service_images(), images_v1, "{}", back.stdout);
    let (code, body) = http_get(&s.health_url());
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"version\":\"v1\""), "{body}");
}

/// The pre-deploy one-shot runs as a replicated job from the new image, with the
/// service's environment, before any service changes: when it fails, no service is
/// updated, `current` stays, and no job service is left; when it succeeds, its output is
/// in the log and the stack is updated.
#[test]
fn target_swarm_runs_pre_deploy_as_a_job_and_a_failed_job_changes_no_service() {
    let s = SwarmStage::new();
    let v1 = s.berth(&App::new("v1")).run();
    assert_eq!(v1.code, 0, "{}", v1.stdout);
    let before = (s.service_images(), s.stage.current());
    std::thread::sleep(std::time::Duration::from_secs(1));

    let failing = s
        .berth(&App::new("v2"))
        .input("pre-deploy", "backend: sh /migrate.sh")
        .input("env-file", "GREETING=hello\nMIGRATE=fail\n")
        .run();
    assert_eq!(failing.code, 1, "{}", failing.stdout);
    let out = failing.everything();
    assert!(out.contains("berth: pre-deploy command failed"), "{out}");
    assert!(out.contains("migration 0042 failed"), "{out}");
    assert!(out.contains("migrating schema to v2"), "{out}");
    assert_eq!((s.service_images(), s.stage.current()), before, "{out}");
    let jobs = s.engine.ok(&["service", "ls", "--format", "{{.Name}}"]);
    assert!(!jobs.contains("pre-deploy"), "{jobs}");
    std::thread::sleep(std::time::Duration::from_secs(1));

    // A literal `$` reaches the job as one (`compose config` writes it as `$$`).
    let ok = s
        .berth(&App::new("v3"))
        .input("pre-deploy", "backend: sh /migrate.sh")
        .input("env-file", "GREETING=hello\nMIGRATE_SAY='price: $5\\n'\n")
        .run();
    assert_eq!(ok.code, 0, "{}", ok.stdout);
    let out = ok.everything();
    assert!(out.contains("migrating schema to v3"), "{out}");
    assert!(out.contains("price: $5") && !out.contains("$$5"), "{out}");
    assert_ne!(s.service_images(), before.0);
    let jobs = s.engine.ok(&["service", "ls", "--format", "{{.Name}}"]);
    assert!(!jobs.contains("pre-deploy"), "{jobs}");
}

/// Two nodes: the backend's two replicas spread over both; the worker hangs (its engine
/// frozen) in the middle of an update. berth names the node that is down, and the stack
/// ends on a proven release: the update, converged on the node that is left, or the
/// release before it, restored. When Swarm itself cannot finish either (its updater
/// waiting on a task placed on the hung node), berth says so and gives the command.
#[test]
fn target_swarm_reports_a_worker_that_hangs_mid_update_and_ends_on_a_proven_release() {
    let s = SwarmStage::new();
    let worker = s.add_worker();
    let compose = format!(
        r#"services:
  backend:
    image: shop/backend
    init: true
    env_file: .env
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/cgi-bin/health"]
      interval: 1s
      timeout: 2s
      retries: 2
    deploy:
      replicas: 2
      update_config:
        delay: 3s
  frontend:
    image: shop/frontend
    init: true
    ports:
      - target: 80
        published: {port}
        mode: host
    deploy:
      placement:
        constraints: ["node.role == manager"]
"#,
        port = s.stage.port
    );
    let two_nodes = |app: &App| {
        s.berth_with(app, &compose)
            .input(
                "health-url",
                &format!("http://{}:{}/", s.engine.addr, s.stage.port),
            )
            .input("health-json", "")
    };
    let v1 = two_nodes(&App::new("v1")).run();
    assert_eq!(v1.code, 0, "{}", v1.stdout);
    let backend = format!("{}_backend", s.stage.project);
    let nodes = s.engine.ok(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}}",
        &backend,
    ]);
    assert!(
        nodes.contains("berth-manager") && nodes.contains("berth-worker"),
        "the replicas are not spread over both nodes: {nodes}"
    );
    let images_v1 = s.service_images();
    std::thread::sleep(std::time::Duration::from_secs(1));

    // The update starts; once a task of v2 exists, the worker hangs.
    let b = two_nodes(&App::new("v2"));
    let run = std::thread::scope(|scope| {
        let deploy = scope.spawn(|| b.run());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let images = s.service_images();
            if images
                .get("backend")
                .is_some_and(|i| *i != images_v1["backend"])
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the update never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        worker.freeze();
        deploy.join().unwrap()
    });
    let out = run.everything();
    assert!(
        out.contains("berth-worker") && out.contains("is Down"),
        "{out}"
    );
    let status = run.output("status").unwrap_or_default();
    let proven = match status.as_str() {
        "deployed" => s.service_images(),
        "rolled-back" => images_v1.clone(),
        // Seen in 1 of 7 runs: Swarm's updater waits on a task it had just assigned to
        // the node that hung, for the update and then for the restore
        // (docs/swarm-research.md §6). berth must say so, and give the command to
        // finish by hand; it must not claim either release.
        "failed" => {
            assert!(out.contains("DEPLOY FAILED AND ROLLBACK FAILED"), "{out}");
            assert!(out.contains("still updating after"), "{out}");
            assert!(
                out.contains("docker stack deploy --resolve-image never --prune -c "),
                "{out}"
            );
            return;
        }
        other => panic!("unexpected status {other}:\n{out}"),
    };
    assert_eq!(s.service_images(), proven, "{out}");
    // Both replicas run that release, on the node that is left (Swarm may still be
    // moving a task there: what runs is the proven image).
    let running = s.engine.ok(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}} {{.Image}} {{.CurrentState}}",
        &backend,
    ]);
    let up: Vec<&str> = running
        .lines()
        .filter(|l| l.starts_with("berth-manager") && l.contains(" Running"))
        .collect();
    assert!(up.len() >= 2, "{running}\n{out}");
    assert!(
        up.iter().all(|l| l.contains(&proven["backend"])),
        "{running}\n{out}"
    );
}

/// `target: swarm` against a host whose engine is in no swarm: the run fails before
/// anything is built, pushed or changed, naming each host and why it is no manager.
#[test]
fn target_swarm_without_a_manager_fails_naming_each_host_and_changes_nothing() {
    let stage = crate::support::stage::Stage::new();
    let run = stage.berth(&App::new("v1")).input("target", "swarm").run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let out = run.everything();
    assert!(out.contains("berth: no reachable swarm manager"), "{out}");
    assert!(
        out.contains(&stage.sshd.host()) && out.contains("is not part of a swarm"),
        "{out}"
    );
    assert!(out.contains("docker swarm init"), "{out}");
    assert!(!out.contains("::group::Build"), "{out}");
    assert!(stage.releases().is_empty(), "{:?}", stage.releases());
    assert_eq!(stage.registry.blob_uploads(), 0);
}
