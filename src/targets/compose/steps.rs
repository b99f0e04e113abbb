//! A compose release as data: the steps from an empty release dir to containers running
//! the pinned images with `current` switched. Pure: built from the layout and the spec.

use std::time::Duration;

use crate::remote::{self, Layout};
use crate::report::Phase;
use crate::targets::{Action, Body, EdgeRelease, Output, ReleaseSpec, Step, Undo};

/// The step that pins what the compose model names by tag.
pub const PIN_BY_TAG: &str = "pin images named by tag";
/// The step that resolves the compose model beside the pull.
pub const CONFIG_AND_PULL: &str = "docker compose config + pull";

/// Bookkeeping commands: a host that takes longer is not answering.
pub const QUICK: Duration = Duration::from_secs(60);
/// Pull, pre-deploy and `up`: bounded, but by what a slow registry or migration may need.
pub const LONG: Duration = Duration::from_secs(30 * 60);

/// Upload, pull (pinning what compose names by tag), pre-deploy, up, switch.
/// `docker_config` is the host's throwaway client config for the registry login, chosen
/// by berth so every command that uses it is known before it runs.
/// `previous` is the release that runs now (its containers are the fallback during a
/// routed release's verdict window).
pub fn release_steps(
    layout: &Layout,
    spec: &ReleaseSpec,
    docker_config: &str,
    previous: Option<&str>,
    edge_joined: bool,
    replicas: &dyn Fn(&str) -> u32,
) -> Vec<Step> {
    let mut steps = upload_steps(layout, spec, previous);
    steps.extend(pull_steps(layout, spec, docker_config));
    // The edge and the project's network to it exist before anything runs with the
    // release's override, which names that network (the pre-deploy's `compose run` too).
    if let Some(edge) = &spec.edge {
        steps.push(ensure_step(layout, edge, Phase::Pull));
    }
    steps.extend(pre_deploy_step(layout, spec));
    // From here the running containers may change: if berth is gone before its verdict,
    // the host restores the newest proven release by itself (see `remote::heal`), unless
    // `rollback: off` says to leave the host as it is.
    if spec.self_heal {
        steps.push(Step::run(
            Phase::Up,
            ARM_HEAL,
            layout.arm_heal(),
            Output::Quiet,
            QUICK,
        ));
    }
    match &spec.edge {
        Some(edge) => steps.extend(edge_steps(layout, &spec.id, edge, previous, replicas)),
        None => {
            steps.push(activation_step(layout, &spec.id, DEPLOY_UP));
            if edge_joined {
                // `routes` was dropped: the project's routes leave the edge once its own
                // ports serve again.
                steps.push(
                    Step::run(
                        Phase::Up,
                        EDGE_LEAVE,
                        crate::edge::forget(&layout.deploy_dir, &layout.project),
                        Output::Streamed,
                        QUICK,
                    )
                    .undo(Undo::Restore),
                );
            }
        }
    }
    steps
}

/// With `routes`: the release started beside the old one and switched through the edge.
/// The engine proves the candidates through the edge (their header-only routes) between
/// the `up` steps and the switch, judges the release after the switch, and runs the
/// drain after its verdict.
fn edge_steps(
    layout: &Layout,
    id: &str,
    edge: &EdgeRelease,
    previous: Option<&str>,
    replicas: &dyn Fn(&str) -> u32,
) -> Vec<Step> {
    let settings = &edge.settings;
    let dir = layout.deploy_dir.as_str();
    let project = layout.project.as_str();
    let routed = settings.services();
    let beside: Vec<(String, u32)> = routed.iter().map(|s| (s.clone(), replicas(s))).collect();
    let compose = layout.compose(id, &[]);
    let run = |phase, name, cmd, output, bound| Step::run(phase, name, cmd, output, bound);
    vec![
        run(
            Phase::Up,
            EDGE_UP_OTHERS,
            crate::edge::up_others(&compose, &routed),
            Output::Activate,
            LONG,
        )
        .undo(Undo::Restore),
        run(
            Phase::Up,
            EDGE_BESIDE,
            crate::edge::start_beside(&compose, project, id, &beside),
            Output::Streamed,
            LONG,
        )
        .undo(Undo::Restore),
        run(
            Phase::Up,
            EDGE_CANDIDATES,
            crate::edge::load_candidates(dir, project, id),
            Output::Streamed,
            QUICK,
        )
        .undo(Undo::Restore),
        run(
            Phase::Switch,
            EDGE_SWITCH,
            crate::edge::switch(dir, project, id, previous),
            Output::Switch,
            QUICK,
        )
        .undo(Undo::Restore),
        run(
            Phase::Drain,
            EDGE_DRAIN,
            crate::edge::drain(dir, project, id, settings.drain, &compose),
            Output::Drain,
            LONG,
        ),
    ]
}

/// `mode: rollback` through the edge to release `id`, which was deployed with `routes`:
/// its candidate routes rewritten for this run's token, then the steps of a routed deploy
/// from the edge on (its containers started beside what runs, proven, switched, drained).
pub fn switch_back_steps(
    layout: &Layout,
    id: &str,
    edge: &EdgeRelease,
    previous: Option<&str>,
    replicas: &dyn Fn(&str) -> u32,
) -> Vec<Step> {
    let mut steps = vec![ensure_step(layout, edge, Phase::Up)];
    steps.extend(edge_files(layout, id, Phase::Up, edge, previous));
    steps.extend(edge_steps(layout, id, edge, previous, replicas));
    steps
}

/// The edge and the project's network to it, made if missing.
fn ensure_step(layout: &Layout, edge: &EdgeRelease, phase: Phase) -> Step {
    let cmd = crate::edge::ensure(&edge.settings, &layout.deploy_dir, &layout.project);
    Step::run(phase, EDGE_ENSURE, cmd, Output::Streamed, LONG)
}

/// Release `id`'s routes for this run: with `previous` (what serves now) as the fallback
/// until the drain, and header-only to its candidates with this run's token.
fn edge_files(
    layout: &Layout,
    id: &str,
    phase: Phase,
    edge: &EdgeRelease,
    previous: Option<&str>,
) -> [Step; 2] {
    let project = layout.project.as_str();
    let routes = &edge.settings.routes;
    let switch = previous
        .map(|old| crate::edge::switch_file(project, id, old, routes))
        .unwrap_or_default();
    let candidate = crate::edge::routes_file(project, id, routes, Some(&edge.token));
    [
        release_file(
            layout,
            id,
            phase,
            "edge routes with the old release as fallback",
            crate::edge::SWITCH_FILE,
            Body::Text("routes", switch),
            0o644,
        ),
        release_file(
            layout,
            id,
            phase,
            "edge candidate routes",
            crate::edge::CANDIDATE_FILE,
            Body::Text("header-only routes", candidate),
            0o600,
        ),
    ]
}

/// The edge's steps, by name.
pub const EDGE_ENSURE: &str = "ensure the host's edge";
pub const EDGE_UP_OTHERS: &str = "docker compose up (services not routed)";
pub const EDGE_BESIDE: &str = "start the new containers beside the old";
pub const EDGE_CANDIDATES: &str = "route the candidates (probe header only)";
pub const EDGE_SWITCH: &str = "switch the edge to the new release, switch current";
pub const EDGE_LEAVE: &str = "remove the project's routes from the edge (`routes` is empty)";
pub const EDGE_DRAIN: &str = "drain, then stop the old containers";

/// A file of release `id`, written over SFTP.
fn release_file(
    layout: &Layout,
    id: &str,
    phase: Phase,
    name: &'static str,
    file: &str,
    body: Body,
    mode: i32,
) -> Step {
    let path = format!("{}/{file}", layout.release_dir(id));
    Step::upload(phase, name, path, body, mode, QUICK)
}

/// The release dir and its files.
pub(crate) fn upload_steps(
    layout: &Layout,
    spec: &ReleaseSpec,
    previous: Option<&str>,
) -> Vec<Step> {
    let id = spec.id.as_str();
    let file =
        |name, file, body, mode| release_file(layout, id, Phase::Upload, name, file, body, mode);
    vec![
        // Exclusive, unlike `mkdir -p`: a deploy must never write into a release that
        // exists, which may be the one `current` points at.
        Step {
            phase: Phase::Upload,
            name: "release dir",
            action: Action::CreateDir {
                path: layout.release_dir(id),
                mode: 0o700,
            },
            bound: QUICK,
            undo: Undo::Nothing,
        },
        file(
            "compose file",
            remote::COMPOSE_FILE,
            Body::Text("compose file", spec.compose.clone()),
            0o644,
        ),
        file("digest pins", remote::OVERRIDE_FILE, Body::Pins, 0o644),
        file(
            "env file (0600)",
            remote::ENV_FILE,
            Body::Secret(spec.env_file.clone()),
            0o600,
        ),
        file(
            "release record",
            remote::RECORD_FILE,
            Body::Record("pending"),
            0o644,
        ),
    ]
    .into_iter()
    .chain(spec.edge.iter().flat_map(|edge| {
        let routes = crate::edge::routes_file(&layout.project, id, &edge.settings.routes, None);
        let own = file(
            "edge routes",
            crate::edge::ROUTES_FILE,
            Body::Text("routes", routes),
            0o644,
        );
        std::iter::once(own).chain(edge_files(layout, id, Phase::Upload, edge, previous))
    }))
    .collect()
}

/// `compose config` beside the pull, logged in to the registry inside the same command
/// (when berth pushed), so that the credential exists on the host only while that command
/// runs: however it ends, cut off included, its throwaway config goes with it. The config
/// fails on a variable nothing sets (field notes A.5, C), which stops the pull, and no
/// container has changed. Then the pins of what compose names by tag, so the release can
/// be restored exactly later; the record names every pin before anything runs from them.
pub(crate) fn pull_steps(layout: &Layout, spec: &ReleaseSpec, docker_config: &str) -> Vec<Step> {
    let id = spec.id.as_str();
    let file = |name, file, body| release_file(layout, id, Phase::Pull, name, file, body, 0o644);
    let config = layout.compose(id, &["config", "--format", "json"]);
    let pull = layout.compose(id, &["pull", "--ignore-buildable"]);
    let login = spec.registry.as_ref().map(|l| remote::PullLogin {
        registry: &l.server,
        username: &l.username,
        config_dir: docker_config,
    });
    let cmd = remote::config_beside_pull(&config, &pull, login.as_ref(), spec.pull_stall);
    let mut both = Step::run(
        Phase::Pull,
        CONFIG_AND_PULL,
        cmd,
        Output::ConfigBesidePull,
        LONG,
    );
    if let Some(login) = &spec.registry {
        // The command removes its login config when it ends; if it is killed outright
        // (KILL skips its trap), the step's cleanup does.
        both = both
            .stdin(login.password.clone())
            .undo(Undo::Cleanup(remote::remove_docker_config(docker_config)));
    }
    let pin = remote::repo_digests(&[]);
    vec![
        both,
        Step::run(Phase::Pull, PIN_BY_TAG, pin, Output::PinByTag, QUICK),
        file("digest pins", remote::OVERRIDE_FILE, Body::Pins),
        file(
            "release record",
            remote::RECORD_FILE,
            Body::Record("pending"),
        ),
    ]
}

/// The one-shot, named so that it can be removed when stopped: a `compose run` container
/// outlives its client (a cancelled run, a lost connection, `pre-deploy-timeout`).
fn pre_deploy_step(layout: &Layout, spec: &ReleaseSpec) -> Option<Step> {
    let pd = spec.pre_deploy.as_ref()?;
    let id = spec.id.as_str();
    let name = format!("{}-pre-deploy-{id}", layout.project);
    let mut tail = vec!["run", "--rm", "-T", "--name", name.as_str()];
    tail.push(pd.service.as_str());
    tail.extend(pd.argv.iter().map(String::as_str));
    let cmd = layout.compose(id, &tail);
    let bound = spec.pre_deploy_timeout;
    Some(
        Step::run(Phase::PreDeploy, "pre-deploy", cmd, Output::Streamed, bound)
            .undo(Undo::Cleanup(remote::remove_container(&name))),
    )
}

/// `up` of release `id`, then `current` switched to it once `up` succeeded, as one
/// command: a deploy's last step, and a restore's. The running containers may change from
/// here on.
pub fn activation_step(layout: &Layout, id: &str, name: &'static str) -> Step {
    let cmd = layout.activate_and_switch(id);
    Step::run(Phase::Up, name, cmd, Output::Activate, LONG).undo(Undo::Restore)
}

/// A restore of release `id`: like [`activation_step`], after waiting for whatever Docker
/// still stops or removes in the project (an interrupted `up` leaves the daemon stopping
/// the container the restore wants running: see `remote::heal`).
pub fn restore_step(layout: &Layout, id: &str) -> Step {
    let cmd = layout.settle_and_activate(id);
    Step::run(Phase::Up, RESTORE_UP, cmd, Output::Activate, LONG).undo(Undo::Restore)
}

/// The step that arms the host's self-heal.
pub const ARM_HEAL: &str = "arm the host's self-heal";

/// The deploy's activation step; a restore's is named [`RESTORE_UP`].
pub const DEPLOY_UP: &str = "docker compose up, switch current";
pub const RESTORE_UP: &str = "docker compose up (restore), switch current";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::PreDeploy;
    use crate::secret::Secret;
    use crate::targets::{phase_summaries, RegistryLogin};

    fn spec() -> ReleaseSpec {
        ReleaseSpec {
            id: "20261125T031500Z-0123456".into(),
            sha: "0123456789".into(),
            compose: "services: {}\n".into(),
            env_file: Secret::new("DB_PASSWORD=env-secret-77"),
            built: Default::default(),
            pre_deploy: Some(PreDeploy {
                service: "backend".into(),
                argv: vec!["sh".into(), "/migrate.sh".into()],
            }),
            pre_deploy_timeout: Duration::from_secs(600),
            pull_stall: Duration::from_secs(60),
            self_heal: true,
            registry: Some(RegistryLogin {
                server: "reg:5000".into(),
                username: "bot".into(),
                password: Secret::new("registry-secret-88"),
            }),
            holder: Default::default(),
            lock_timeout: Duration::from_secs(1),
            keep_releases: 5,
            image_prefix: String::new(),
            converge_within: Duration::from_secs(30),
            edge: None,
        }
    }

    fn layout() -> Layout {
        Layout {
            deploy_dir: "/srv/shop".into(),
            project: "shop".into(),
        }
    }

    #[test]
    fn a_release_is_its_steps_in_phase_order_and_only_up_on_needs_a_restore() {
        let steps = release_steps(
            &layout(),
            &spec(),
            "/tmp/berth-docker-config.abc",
            None,
            false,
            &|_| 1,
        );
        let phases: Vec<(Phase, String)> = phase_summaries(&steps);
        assert_eq!(
            phases.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [Phase::Upload, Phase::Pull, Phase::PreDeploy, Phase::Up]
        );
        assert_eq!(
            phases[0].1,
            "release dir, compose file, digest pins, env file (0600), release record"
        );
        assert!(phases[1].1.starts_with("docker compose config + pull, "));
        let first_restore = steps.iter().position(|s| s.undo == Undo::Restore).unwrap();
        assert_eq!(steps[first_restore].name, DEPLOY_UP);
        assert!(steps[first_restore..]
            .iter()
            .all(|s| s.undo == Undo::Restore));
        // The pull's cleanup removes exactly the login's config dir.
        let pull = steps.iter().find(|s| s.name == CONFIG_AND_PULL).unwrap();
        assert_eq!(
            pull.undo,
            Undo::Cleanup(remote::remove_docker_config("/tmp/berth-docker-config.abc"))
        );
        let pull_cmd = pull.command().unwrap();
        assert!(pull_cmd
            .0
            .contains(&"/tmp/berth-docker-config.abc".to_string()));
    }

    #[test]
    fn the_plan_shows_every_command_but_no_secret() {
        let lines: Vec<String> = release_steps(
            &layout(),
            &spec(),
            "/tmp/berth-docker-config.abc",
            None,
            false,
            &|_| 1,
        )
        .iter()
        .map(Step::plan_line)
        .collect();
        let text = lines.join("\n");
        assert!(!text.contains("env-secret-77") && !text.contains("registry-secret-88"));
        assert!(text.contains("redacted"), "{text}");
        assert!(
            lines.iter().any(|l| l.contains("backend sh /migrate.sh")),
            "{text}"
        );
        let login = lines.iter().find(|l| l.contains("docker login")).unwrap();
        assert!(
            login.ends_with("<<< (secret on stdin, redacted)"),
            "{login}"
        );
    }
}
