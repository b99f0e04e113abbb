//! A compose release as data: the steps from an empty release dir to containers running
//! the pinned images with `current` switched. Pure: built from the layout and the spec.

use std::time::Duration;

use crate::remote::{self, Layout};
use crate::report::Phase;
use crate::target::{Action, Body, Output, ReleaseSpec, Step, Undo};

/// Bookkeeping commands: a host that takes longer is not answering.
pub const QUICK: Duration = Duration::from_secs(60);
/// Pull, pre-deploy and `up`: bounded, but by what a slow registry or migration may need.
pub const LONG: Duration = Duration::from_secs(30 * 60);

/// Upload, pull (pinning what compose names by tag), pre-deploy, up, switch.
pub fn release_steps(layout: &Layout, spec: &ReleaseSpec) -> Vec<Step> {
    let id = spec.id.as_str();
    let dir = layout.release_dir(id);
    let file = |name: &str| format!("{dir}/{name}");
    let step = |phase, name, action, bound, undo| Step {
        phase,
        name,
        action,
        bound,
        undo,
    };
    let run = |cmd, output| Action::Run {
        cmd,
        stdin: None,
        output,
    };
    let upload = |path, body, mode| Action::Upload { path, body, mode };
    let nothing = || Undo::Nothing;

    // Exclusive, unlike `mkdir -p`: a deploy must never write into a release that exists,
    // which may be the one `current` points at.
    let mut steps = vec![
        step(
            Phase::Upload,
            "release dir",
            Action::CreateDir {
                path: dir.clone(),
                mode: 0o700,
            },
            QUICK,
            nothing(),
        ),
        step(
            Phase::Upload,
            "compose file",
            upload(
                file(remote::COMPOSE_FILE),
                Body::Text("compose file", spec.compose.clone()),
                0o644,
            ),
            QUICK,
            nothing(),
        ),
        step(
            Phase::Upload,
            "digest pins",
            upload(file(remote::OVERRIDE_FILE), Body::Pins, 0o644),
            QUICK,
            nothing(),
        ),
        step(
            Phase::Upload,
            "env file (0600)",
            upload(
                file(remote::ENV_FILE),
                Body::Secret(spec.env_file.clone()),
                0o600,
            ),
            QUICK,
            nothing(),
        ),
        step(
            Phase::Upload,
            "release record",
            upload(file(remote::RECORD_FILE), Body::Record("pending"), 0o644),
            QUICK,
            nothing(),
        ),
        // Fails on a variable nothing sets (field notes A.5, C) before anything is pulled.
        step(
            Phase::Upload,
            "docker compose config",
            run(
                layout.compose(id, &["config", "--format", "json"]),
                Output::ComposeModel,
            ),
            QUICK,
            nothing(),
        ),
    ];
    let pull = layout.compose(id, &["pull", "--quiet", "--ignore-buildable"]);
    match &spec.registry {
        Some(login) => {
            steps.push(step(
                Phase::Pull,
                "docker login",
                Action::Run {
                    cmd: remote::registry_login(
                        &login.server,
                        &login.username,
                        &spec.docker_config,
                    ),
                    stdin: Some(login.password.clone()),
                    output: Output::Quiet,
                },
                QUICK,
                nothing(),
            ));
            // The pull removes the login config when it ends; if it never ran to its end
            // (connection lost, timeout), the credential must not stay on the host.
            steps.push(step(
                Phase::Pull,
                "docker compose pull",
                run(
                    remote::with_docker_config(pull, &spec.docker_config),
                    Output::Streamed,
                ),
                LONG,
                Undo::Cleanup(remote::remove_docker_config(&spec.docker_config)),
            ));
        }
        None => steps.push(step(
            Phase::Pull,
            "docker compose pull",
            run(pull, Output::Streamed),
            LONG,
            nothing(),
        )),
    }
    // Services berth did not build are pinned to what was just pulled, so the release
    // can be restored exactly later; the record names every pin before anything runs.
    steps.extend([
        step(
            Phase::Pull,
            "pin images named by tag",
            run(remote::repo_digests(&[]), Output::PinByTag),
            QUICK,
            nothing(),
        ),
        step(
            Phase::Pull,
            "digest pins",
            upload(file(remote::OVERRIDE_FILE), Body::Pins, 0o644),
            QUICK,
            nothing(),
        ),
        step(
            Phase::Pull,
            "release record",
            upload(file(remote::RECORD_FILE), Body::Record("pending"), 0o644),
            QUICK,
            nothing(),
        ),
    ]);
    if let Some(pd) = &spec.pre_deploy {
        let mut tail = vec!["run", "--rm", "-T", pd.service.as_str()];
        tail.extend(pd.argv.iter().map(String::as_str));
        steps.push(step(
            Phase::PreDeploy,
            "pre-deploy",
            run(layout.compose(id, &tail), Output::Streamed),
            LONG,
            nothing(),
        ));
    }
    steps.extend(activation_steps(layout, id, "docker compose up"));
    steps
}

/// `up` of release `id`, then `current` switched to it: a deploy's last steps, and a
/// restore's.
pub fn activation_steps(layout: &Layout, id: &str, name: &'static str) -> [Step; 2] {
    [
        Step {
            phase: Phase::Up,
            name,
            action: Action::Run {
                cmd: layout.compose(id, &["up", "-d", "--remove-orphans"]),
                stdin: None,
                output: Output::Activate,
            },
            bound: LONG,
            undo: Undo::Restore,
        },
        Step {
            phase: Phase::Up,
            name: "switch current",
            action: Action::Run {
                cmd: layout.switch_current(id),
                stdin: None,
                output: Output::Quiet,
            },
            bound: QUICK,
            undo: Undo::Restore,
        },
    ]
}
