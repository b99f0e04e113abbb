//! The Swarm target (issue 17), as far as it is built: the stack file berth makes from
//! `docker compose config` is one that a real `docker stack deploy` takes, with the
//! images pinned, start-first where it can work, and the env file's values in the spec;
//! and berth's look at a stack (one command) judges a real update: converged, or failed
//! at the first failed task of the new image while the old tasks still serve.

use std::collections::BTreeMap;
use std::process::Command;

use berth::target::swarm::state::{judge_stack, parse_stack_state, stack_verdict, StackVerdict};

use crate::support::rig::{busybox_image, sh};
use crate::support::swarm::SwarmEngine;

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
    let stack = berth::target::swarm::stack::stack_file(&model, "shop", &pins).unwrap();
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
    let stack = berth::target::swarm::stack::stack_file(&model, project, &BTreeMap::new()).unwrap();
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
        let verdict = stack_verdict(&judge_stack(&state, project, images));
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
