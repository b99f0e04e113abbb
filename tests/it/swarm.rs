//! The Swarm target (issue 17), as far as it is built: the stack file berth makes from
//! `docker compose config` is one that a real `docker stack deploy` takes, with the
//! images pinned, start-first where it can work, and the env file's values in the spec.

use std::collections::BTreeMap;
use std::process::Command;

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
    assert_eq!(stack.host_ports, ["agent"]);
    let file = dir.join("stack.json");
    std::fs::write(&file, serde_json::to_string(&stack.file).unwrap()).unwrap();

    let file = file.display().to_string();
    engine.ok(&[
        "stack",
        "deploy",
        "-c",
        &file,
        "--resolve-image",
        "never",
        "shop",
    ]);
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
