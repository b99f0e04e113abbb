//! The input contract: every invalid example from the foundation issue is rejected with an
//! annotation naming the input and a fix, all at once, before anything else happens.

use berth::inputs::{self, GithubContext, Mode, RollbackPolicy};

use crate::support::{fake_private_key, Berth};

/// Parses the builder's environment and returns the messages for `input`.
fn errors_for(b: &Berth, input: &str) -> Vec<String> {
    let env = b.env_map();
    let ctx = GithubContext::from_env(&env);
    match inputs::parse(&env, &ctx) {
        Ok(_) => vec![],
        Err(e) => {
            e.0.into_iter()
                .filter(|e| e.input == input)
                .map(|e| e.message)
                .collect()
        }
    }
}

fn assert_rejected(b: Berth, input: &str, needle: &str) {
    let errs = errors_for(&b, input);
    assert!(
        errs.iter().any(|m| m.contains(needle)),
        "expected `{input}` to be rejected with `{needle}`, got {errs:?}"
    );
}

#[test]
fn a_full_valid_config_parses_into_typed_values() {
    let b = Berth::valid()
        .input("hosts", "web1.internal, ops@web2.internal:2222\n[::1]:2200")
        .input("ssh-user", "deployer")
        .input("images", "frontend=frontend/Dockerfile\nbackend=backend/Dockerfile,context=backend,target=prod")
        .input("build-args", "NODE_ENV=production\nEMPTY=")
        .input("registry", "registry.example.com:5000")
        .input("tags", "staging-{sha}\nstaging-{branch}-{run_number}")
        .input("known-hosts", "web1.internal ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHrV0e0iD1ZlYlL7sI3mQ3mX0v6W1hJ0m7yqVnN8pA1b")
        .input("env-file", "DATABASE_URL=postgresql://u:p!@#$@db/x\n")
        .input("pre-deploy", "backend: npx prisma migrate deploy")
        .input("keep-releases", "5")
        .input("lock-timeout", "2m")
        .input("health-timeout", "45s")
        .input("health-interval", "500ms")
        .input("health-status", "200,204")
        .input("health-json", "/data/status=healthy")
        .input("health-headers", "Authorization: Basic c2VjcmV0")
        .input("rollback", "off")
        .input("dry-run", "true");
    let env = b.env_map();
    let cfg = inputs::parse(&env, &GithubContext::from_env(&env)).expect("valid config");
    assert_eq!(cfg.mode, Mode::Deploy);
    assert!(cfg.dry_run);
    assert_eq!(cfg.target.hosts.len(), 3);
    assert_eq!(cfg.target.hosts[0].to_string(), "deployer@web1.internal:22");
    assert_eq!(cfg.target.hosts[1].to_string(), "ops@web2.internal:2222");
    assert_eq!(cfg.target.hosts[2].port, 2200);
    assert_eq!(cfg.build.images[1].target.as_deref(), Some("prod"));
    assert_eq!(cfg.build.images[0].context, "frontend");
    assert_eq!(
        cfg.build.image_prefix,
        "registry.example.com:5000/acme/shop"
    );
    assert_eq!(cfg.build.registry_username, "octocat");
    assert_eq!(
        cfg.build.registry_password.expose(),
        "ghs_testtoken",
        "registry-password defaults to the token"
    );
    assert_eq!(cfg.target.deploy_dir, "/opt/shop");
    assert_eq!(cfg.target.project_name, "shop");
    assert_eq!(cfg.target.keep_releases, 5);
    assert_eq!(cfg.target.lock_timeout.as_secs(), 120);
    assert_eq!(cfg.health.interval.as_millis(), 500);
    assert_eq!(cfg.health.json[0].pointer, "/data/status");
    assert_eq!(
        cfg.target.pre_deploy.as_ref().unwrap().argv,
        vec!["npx", "prisma", "migrate", "deploy"]
    );
    assert_eq!(cfg.rollback, RollbackPolicy::Off);
    assert_eq!(
        cfg.report.environment_url.unwrap().as_str(),
        "http://127.0.0.1:1/"
    );
    assert_eq!(cfg.target.known_hosts.len(), 1);
    assert!(cfg.report.create_deployment);
}

#[test]
fn hosts_entry_without_a_host_is_rejected() {
    assert_rejected(
        Berth::valid().input("hosts", "deploy@:22"),
        "hosts",
        "names no host",
    );
}

#[test]
fn port_out_of_range_is_rejected() {
    assert_rejected(Berth::valid().input("hosts", "web:70000"), "hosts", "70000");
    assert_rejected(
        Berth::valid().input("ssh-port", "70000"),
        "ssh-port",
        "between 1 and 65535",
    );
}

#[test]
fn health_url_without_scheme_is_rejected() {
    assert_rejected(
        Berth::valid().input("health-url", "localhost/health"),
        "health-url",
        "https://",
    );
}

#[test]
fn zero_or_unitless_health_timeout_is_rejected() {
    assert_rejected(
        Berth::valid().input("health-timeout", "0s"),
        "health-timeout",
        "must be positive",
    );
    assert_rejected(
        Berth::valid().input("health-timeout", "30"),
        "health-timeout",
        "ms, s, m or h",
    );
}

#[test]
fn keep_releases_zero_is_rejected() {
    assert_rejected(
        Berth::valid().input("keep-releases", "0"),
        "keep-releases",
        "at least 1",
    );
}

#[test]
fn images_line_without_equals_is_rejected() {
    assert_rejected(
        Berth::valid().input("images", "backend/Dockerfile"),
        "images",
        "has no `=`",
    );
}

#[test]
fn service_names_with_upper_case_or_spaces_are_rejected() {
    assert_rejected(
        Berth::valid().input("images", "Backend=Dockerfile"),
        "images",
        "lower-case",
    );
    assert_rejected(
        Berth::valid().input("images", "my api=Dockerfile"),
        "images",
        "no spaces",
    );
}

#[test]
fn tag_templates_that_cannot_make_a_tag_are_rejected_and_branch_is_sanitised() {
    assert_rejected(
        Berth::valid().input("tags", "staging {sha}"),
        "tags",
        "valid tag",
    );
    assert_rejected(
        Berth::valid().input("tags", "staging-{commit}"),
        "tags",
        "unknown placeholder",
    );
    // `{branch}` is accepted; `feature/x` is sanitised when the tag is expanded.
    assert!(errors_for(
        &Berth::valid().input("tags", "staging-{branch}-{sha}"),
        "tags"
    )
    .is_empty());
    // A template that only moves (no {sha}, {short_sha} or {run_number}) cannot be all.
    assert_rejected(
        Berth::valid().input("tags", "staging-{branch}"),
        "tags",
        "names the commit or run",
    );
}

#[test]
fn a_public_ssh_key_is_rejected_explicitly() {
    let b = Berth::valid().input(
        "ssh-key",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH user@host",
    );
    assert_rejected(b, "ssh-key", "*public* key");
}

#[test]
fn garbage_ssh_key_is_rejected() {
    assert_rejected(
        Berth::valid().input("ssh-key", "hunter2"),
        "ssh-key",
        "OpenSSH or PEM",
    );
}

#[test]
fn unpinned_host_keys_are_rejected_with_keyscan_guidance() {
    let b = Berth::valid().input("host-fingerprints", "");
    assert_rejected(
        b,
        "host-fingerprints",
        "ssh-keyscan -p PORT HOST | ssh-keygen -lf -",
    );
    let ok = Berth::valid()
        .input("host-fingerprints", "")
        .input("insecure-skip-host-key-check", "true");
    assert!(errors_for(&ok, "host-fingerprints").is_empty());
}

#[test]
fn unknown_mode_rollback_policy_and_target_are_rejected() {
    assert_rejected(
        Berth::valid().input("mode", "redeploy"),
        "mode",
        "`deploy` or `rollback`",
    );
    assert_rejected(
        Berth::valid().input("rollback", "maybe"),
        "rollback",
        "`auto` or `off`",
    );
    assert_rejected(
        Berth::valid().input("target", "kubernetes"),
        "target",
        "Use `compose` (a compose project on each host) or `swarm`",
    );
}

#[test]
fn a_missing_compose_file_is_rejected() {
    assert_rejected(
        Berth::valid().input("compose-file", "deploy/compose.yml"),
        "compose-file",
        "does not exist",
    );
}

#[test]
fn a_relative_deploy_dir_is_rejected() {
    assert_rejected(
        Berth::valid().input("deploy-dir", "relative/path"),
        "deploy-dir",
        "absolute path",
    );
}

#[test]
fn health_json_without_equals_is_rejected() {
    assert_rejected(
        Berth::valid().input("health-json", "/data/status"),
        "health-json",
        "has no `=`",
    );
}

#[test]
fn no_ci_gate_on_push_is_rejected_but_workflow_run_and_allow_untested_pass() {
    assert_rejected(
        Berth::valid().input("ci-workflows", ""),
        "ci-workflows",
        "allow-untested: true",
    );
    let wr = Berth::valid()
        .input("ci-workflows", "")
        .env("GITHUB_EVENT_NAME", "workflow_run");
    assert!(errors_for(&wr, "ci-workflows").is_empty());
    let untested = Berth::valid()
        .input("ci-workflows", "")
        .input("allow-untested", "true");
    assert!(errors_for(&untested, "ci-workflows").is_empty());
}

#[test]
fn every_problem_is_reported_at_once_as_one_error_per_input() {
    let run = Berth::valid()
        .input("hosts", "deploy@:22")
        .input("health-timeout", "30")
        .input("keep-releases", "0")
        .input("mode", "redeploy")
        .input("deploy-dir", "relative/path")
        .input("ssh-key", "ssh-rsa AAAAB3NzaC1yc2E user@host")
        .run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let errors = run.errors();
    for input in [
        "hosts",
        "health-timeout",
        "keep-releases",
        "mode",
        "deploy-dir",
        "ssh-key",
    ] {
        let title = format!("::error title=berth%3A invalid input {input}::");
        assert_eq!(
            errors.iter().filter(|e| e.starts_with(&title)).count(),
            1,
            "{input}: {errors:#?}"
        );
    }
    assert_eq!(errors.len(), 6, "{errors:#?}");
    assert_eq!(run.output("status").as_deref(), Some("failed"));
    assert!(run.summary.contains("invalid input deploy-dir"));
}

#[test]
fn help_lists_every_input_and_says_how_inputs_arrive() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(text.contains("INPUT_SSH-KEY"));
    for i in inputs::INPUTS {
        assert!(
            text.contains(&format!("  {:<30}", i.name)),
            "--help lacks {}",
            i.name
        );
    }
}

#[test]
fn version_names_the_commit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("berth {} (", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(!text.contains("()"), "{text}");
}

#[test]
fn action_yml_declares_exactly_the_contract() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/action.yml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let declared = doc["inputs"].as_mapping().expect("inputs");
    assert_eq!(
        declared.len(),
        inputs::INPUTS.len(),
        "input count differs from src/inputs/table.rs"
    );
    for spec in inputs::INPUTS {
        let entry = &doc["inputs"][spec.name];
        assert!(
            entry["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{} has no description",
            spec.name
        );
        let default = entry["default"].as_str().unwrap_or("");
        assert_eq!(default.trim_end(), spec.default, "default of {}", spec.name);
    }
    let outputs = doc["outputs"].as_mapping().expect("outputs");
    assert_eq!(outputs.len(), inputs::OUTPUTS.len());
    for o in inputs::OUTPUTS {
        assert!(
            doc["outputs"][o.name]["description"].as_str().is_some(),
            "output {}",
            o.name
        );
    }
    assert_eq!(doc["runs"]["using"].as_str(), Some("docker"));
    assert_eq!(doc["runs"]["image"].as_str(), Some("Dockerfile"));
}

#[test]
fn fake_keys_are_key_shaped() {
    // Guards the test helper itself: a helper that produced a public key would make the
    // public-key test pass for the wrong reason.
    assert!(
        fake_private_key("x").starts_with(&format!("-----BEGIN {} PRIVATE KEY-----", "OPENSSH"))
    );
}

#[test]
fn the_readme_documents_every_input_and_output_of_action_yml() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/action.yml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    for section in ["inputs", "outputs"] {
        for (name, _) in doc[section].as_mapping().unwrap() {
            let name = name.as_str().unwrap();
            assert!(
                readme.contains(&format!("| `{name}` |")),
                "README does not document {section} `{name}`"
            );
        }
    }
    let row = regex::Regex::new(r"^\| `[a-z-]+` \|").unwrap();
    let documented = readme.lines().filter(|l| row.is_match(l)).count();
    assert_eq!(
        documented,
        inputs::INPUTS.len() + inputs::OUTPUTS.len(),
        "README lists something action.yml does not"
    );
}

#[test]
fn a_malformed_github_repository_is_named_where_defaults_need_it() {
    // act derives GITHUB_REPOSITORY from the clone's remote, e.g. a local bare repo's path.
    let b = || {
        Berth::valid()
            .env("GITHUB_REPOSITORY", "/srv/repo.git")
            .input("images", "backend=backend/Dockerfile")
            .input("deploy-dir", "")
            .input("project-name", "")
    };
    for input in ["image-prefix", "deploy-dir", "project-name"] {
        assert_rejected(
            b(),
            input,
            "GITHUB_REPOSITORY `/srv/repo.git` is not `owner/name`",
        );
    }
    let fixed = b()
        .input("image-prefix", "registry.example.com/acme/shop")
        .input("deploy-dir", "/opt/shop")
        .input("project-name", "shop");
    let env = fixed.env_map();
    inputs::parse(&env, &GithubContext::from_env(&env))
        .expect("explicit values need no repository");
}

#[test]
fn ipv6_hosts_are_bracketed_in_health_urls_and_an_unprobeable_host_is_an_input_error() {
    let b = Berth::valid()
        .input("hosts", "deploy@[::1]:22, deploy@127.0.0.1:22")
        .input("health-url", "http://{host}:8080/api/health");
    let env = b.env_map();
    let cfg = inputs::parse(&env, &GithubContext::from_env(&env)).expect("valid");
    let urls: Vec<String> = cfg
        .health
        .urls(&cfg.target.hosts)
        .iter()
        .map(|u| u.to_string())
        .collect();
    assert_eq!(
        urls,
        [
            "http://[::1]:8080/api/health",
            "http://127.0.0.1:8080/api/health"
        ]
    );
    // `10.0.0.1.5` is a fine ssh host name to berth, but no URL host: it must not be
    // skipped in silence and leave that host unprobed.
    assert_rejected(
        Berth::valid()
            .input("hosts", "deploy@127.0.0.1:22, deploy@10.0.0.1.5:22")
            .input("health-url", "http://{host}:8080/api/health"),
        "health-url",
        "`10.0.0.1.5`",
    );
}

#[test]
fn skipping_the_host_key_check_while_pinning_keys_is_an_input_error() {
    // Berth::valid pins `host-fingerprints`.
    assert_rejected(
        Berth::valid().input("insecure-skip-host-key-check", "true"),
        "insecure-skip-host-key-check",
        "`host-fingerprints` pins host keys",
    );
    let alone = Berth::valid()
        .input("host-fingerprints", "")
        .input("insecure-skip-host-key-check", "true");
    assert!(errors_for(&alone, "insecure-skip-host-key-check").is_empty());
}

#[test]
fn a_duration_too_long_to_add_to_a_clock_is_an_input_error_not_a_panic() {
    for v in ["99999999999999999h", "18446744073709551615s", "200h"] {
        assert_rejected(
            Berth::valid().input("ci-timeout", v),
            "ci-timeout",
            "longer than",
        );
    }
}

#[test]
fn branches_and_events_are_checked() {
    assert_rejected(
        Berth::valid().input("events", "push, Pull-Request"),
        "events",
        "`Pull-Request` is not a GitHub event name",
    );
    assert_rejected(
        Berth::valid().input("branches", "release/[a"),
        "branches",
        "`release/[a` is not a glob pattern",
    );
    let b = Berth::valid().input("branches", "main\nrelease/*");
    let env = b.env_map();
    let cfg = inputs::parse(&env, &GithubContext::from_env(&env)).expect("valid");
    assert_eq!(cfg.gate.branches, ["main", "release/*"]);
    assert_eq!(cfg.gate.events, ["push", "workflow_dispatch"]);
}

#[test]
fn more_invalid_inputs_than_the_annotation_cap_all_reach_an_annotation() {
    let run = Berth::new()
        .input("mode", "bogus")
        .input("health-timeout", "x")
        .input("health-interval", "y")
        .input("health-status", "abc")
        .input("rollback", "maybe")
        .input("keep-releases", "0")
        .input("ssh-port", "0")
        .run();
    assert_eq!(run.code, 1);
    let errors = run.errors();
    assert!(
        errors.len() <= 10,
        "the runner records 10: {}",
        errors.len()
    );
    let all = errors.join("\n");
    for input in [
        "mode",
        "health-timeout",
        "health-interval",
        "health-status",
        "rollback",
        "keep-releases",
        "ssh-port",
        "hosts",
    ] {
        assert!(
            all.contains(&format!("`{input}`")),
            "{input} is in no annotation:\n{all}"
        );
    }
}

#[test]
fn credentials_in_a_bad_health_url_are_not_echoed_and_a_token_user_is_masked() {
    let run = Berth::valid()
        .input(
            "health-url",
            "ftp://probe:pw-secret-7786@staging.example.com/health",
        )
        .run();
    let everything = run.everything();
    assert!(
        everything.contains("ftp://***@staging.example.com/health"),
        "{everything}"
    );
    assert!(
        !everything
            .lines()
            .any(|l| l.contains("pw-secret-7786") && !l.starts_with("::add-mask::")),
        "{everything}"
    );
    let token = Berth::valid()
        .input(
            "health-url",
            "https://tokenuser-secret-7787@staging.example.com/health",
        )
        .run();
    assert!(
        token.stdout.contains("::add-mask::tokenuser-secret-7787"),
        "{}",
        token.stdout
    );
    assert_rejected(
        Berth::valid().input("branches", "**, !wip/**"),
        "branches",
        "no exclusion patterns",
    );
}
