//! The Swarm target behind the engine's seam: a stack deployed through one manager over
//! SSH. It shares the compose target's release dir, lock, records, env file, pull and
//! pins ([`ComposeHost`] does those), and differs where Swarm does: the stack file made
//! from the compose model, the pre-deploy one-shot as a replicated job, `docker stack
//! deploy` as the activation, and the verdict from the stack's convergence (a failed or
//! rejected task of the new image, a paused update, or a service that Swarm rolled back by
//! itself fails the release at once). A restore re-deploys the whole stack file of the
//! release proven last, and waits for it to converge.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::stack::{stack_file, StackFile};
use super::state::{judge_stack, parse_stack_state, stack_verdict, StackState, StackVerdict};
use super::status::Baseline;
use crate::remote::swarm::{self as cmds, JOB_ENV_FILE, STACK_FILE};
use crate::remote::{Cmd, Layout};
use crate::report::{Diagnostics, Phase};
use crate::secret::Secret;
use crate::ssh::SshError;
use crate::targets::compose::{pull_steps, upload_steps, ComposeHost, LONG, PIN_BY_TAG, QUICK};
use crate::targets::{
    Access, Action, Body, HostState, Output, RegistryLogin, ReleaseError, ReleaseSpec, Step,
    Target, Undo,
};
use crate::workflow::Runner;

/// The activation step of a deploy, and of a restore.
pub const STACK_DEPLOY: &str = "docker stack deploy, switch current";
pub const STACK_RESTORE: &str = "docker stack deploy (restore), switch current";
/// The pre-deploy job's step.
const JOB: &str = "pre-deploy job";

/// How often the stack is looked at while it converges.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// A stack, deployed through the manager berth connected to.
pub struct SwarmHost {
    host: ComposeHost,
    /// Compose service -> the image its Swarm service must run (the stack file's).
    images: BTreeMap<String, String>,
    warnings: Vec<String>,
    /// How long the stack may take to converge after its activation (`health-timeout`).
    converge_within: Duration,
    /// The services judged failing or still updating at the last look, for diagnostics.
    unsettled: Vec<String>,
    /// The stack just before the last activation: history is not the release's verdict.
    before: Baseline,
    /// The manager's node id: the pre-deploy job runs there, where the image was pulled.
    node_id: String,
    /// The registry login of this run (when berth pushed), for a restore too: a service
    /// that the failed release removed is created again, and its nodes must pull.
    login: Option<RegistryLogin>,
}

impl SwarmHost {
    /// Connects to each host in order and keeps the first that passes the host-key check
    /// and is a manager of an active swarm; says which, and why the others were passed
    /// over.
    pub fn connect_first(
        accesses: &[Access],
        layout: Layout,
        runner: Runner,
        token: String,
        converge_within: Duration,
    ) -> Result<SwarmHost, ReleaseError> {
        let mut tried = Vec::new();
        for access in accesses {
            let host = match ComposeHost::connect(
                access.clone(),
                layout.clone(),
                runner.clone(),
                token.clone(),
            ) {
                Ok(host) => host,
                Err(e) => {
                    tried.push(format!("- {}: {e}", access.spec));
                    continue;
                }
            };
            match manager_node(&host) {
                Ok((node_id, node)) => {
                    runner.line(&format!(
                        "{}: deploying stack `{}` through this Swarm manager (node {node}, {node_id})",
                        host.name(),
                        layout.project
                    ));
                    let mut warnings = Vec::new();
                    if !tried.is_empty() {
                        warnings.push(format!(
                            "hosts passed over before the manager {} was found:\n{}",
                            host.name(),
                            tried.join("\n")
                        ));
                    }
                    return Ok(SwarmHost {
                        host,
                        images: BTreeMap::new(),
                        warnings,
                        converge_within,
                        unsettled: Vec::new(),
                        before: Baseline::default(),
                        node_id,
                        login: None,
                    });
                }
                Err(why) => tried.push(format!("- {}: {why}", access.spec)),
            }
        }
        Err(ReleaseError::NoManager { tried })
    }

    fn project(&self) -> &str {
        &self.host.layout.project
    }

    /// The stack's services and tasks, as the manager reports them now.
    fn read_state(&self) -> Result<StackState, ReleaseError> {
        let out = self.host.step(
            "read the stack's state",
            &cmds::stack_state(self.project()),
            None,
            QUICK,
        )?;
        parse_stack_state(&out.stdout).map_err(|detail| ReleaseError::Unexpected {
            host: self.host.name().into(),
            doing: "reading the stack's services and tasks",
            detail,
        })
    }

    /// Notes what the stack is before an activation changes it.
    fn take_baseline(&mut self) -> Result<(), ReleaseError> {
        let state = self.read_state()?;
        self.before = Baseline::of(&state.services, &state.tasks);
        Ok(())
    }

    /// One look at the stack, judged against the images berth deployed. A node that is
    /// not ready is said once, and warned of in the report.
    fn look(&mut self) -> Result<StackVerdict, ReleaseError> {
        let state = self.read_state()?;
        for down in &state.nodes_down {
            let warning = format!("{down}: Swarm moves its tasks to the nodes that are left, if their constraints allow it. Check the node (`docker node ls` on a manager).");
            if !self.warnings.contains(&warning) {
                self.host
                    .runner
                    .line(&format!("{}: {down}", self.host.name()));
                self.warnings.push(warning);
            }
        }
        let judged = judge_stack(&state, self.project(), &self.images, &self.before);
        let verdict = stack_verdict(&judged);
        self.unsettled = judged
            .iter()
            .filter(|(_, j)| *j != super::status::Judged::Converged)
            .map(|(name, _)| format!("{}_{name}", self.project()))
            .collect();
        Ok(verdict)
    }

    /// Waits for the stack to converge within `converge_within` of now; the first failed
    /// look fails it.
    /// `doing` and `done` name the wait in its progress lines and its last one. A read
    /// that fails (a manager electing its leader) is tried again until the deadline. A
    /// restore is not stopped by the run's cancellation: it is what the cancelled run
    /// must finish.
    fn converge(&mut self, doing: &str, done: &str, restoring: bool) -> Result<(), ReleaseError> {
        let mut deadline = Instant::now() + self.converge_within;
        let started = Instant::now();
        let mut reported = Vec::new();
        loop {
            if crate::cancel::is_cancelled() {
                if !restoring {
                    return Err(SshError::Cancelled {
                        host: self.host.name().into(),
                        command: "the wait for the stack to converge".into(),
                    }
                    .into());
                }
                // A cancelled run's restore has the runner's grace, not `health-timeout`.
                deadline = deadline.min(Instant::now() + crate::cancel::RESTORE_BUDGET);
            }
            let look = match self.look() {
                Err(e @ ReleaseError::Ssh(_)) => return Err(e),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    self.host.runner.line(&format!(
                        "{}: {doing}: reading the stack failed, trying again: {e}",
                        self.host.name()
                    ));
                    std::thread::sleep(LOOK_EVERY);
                    continue;
                }
                Ok(look) => look,
            };
            match look {
                StackVerdict::Converged => {
                    self.host.runner.line(&format!(
                        "{}: {done}: every service of stack `{}` runs its pinned image on every replica ({:.1}s)",
                        self.host.name(),
                        self.project(),
                        started.elapsed().as_secs_f64()
                    ));
                    return Ok(());
                }
                StackVerdict::Failed(services) => {
                    self.host.runner.line(&format!(
                        "{}: {doing}: failed: {}",
                        self.host.name(),
                        services.join("; ")
                    ));
                    return Err(ReleaseError::StackFailed {
                        host: self.host.name().into(),
                        services,
                    });
                }
                StackVerdict::Updating(services) => {
                    if services != reported {
                        self.host.runner.line(&format!(
                            "{}: {doing}: {}",
                            self.host.name(),
                            services.join("; ")
                        ));
                        reported = services.clone();
                    }
                    if Instant::now() >= deadline {
                        let mut services = services;
                        services.push(format!(
                            "still updating after {} (`health-timeout`, which bounds the update of every replica)",
                            crate::report::Rounded(self.converge_within)
                        ));
                        return Err(ReleaseError::StackFailed {
                            host: self.host.name().into(),
                            services,
                        });
                    }
                }
            }
            std::thread::sleep(LOOK_EVERY);
        }
    }

    /// The stack file for this release, from the compose model and the pins as they stand:
    /// services named by digest in the compose file are pinned as they are, and what
    /// berth decided for each service's update is said (start-first) or warned of.
    fn make_stack(&mut self) -> Result<String, ReleaseError> {
        let host = self.host.name().to_string();
        let fail = |problem: String| ReleaseError::StackFile {
            host: host.clone(),
            problem,
        };
        let model = self
            .host
            .model()
            .ok_or_else(|| fail("`docker compose config` gave no model".into()))?;
        let stack =
            stack_file(model, self.project(), &self.host.pins).map_err(|e| fail(e.to_string()))?;
        self.images = stack_images(&stack.file);
        // What the record names: every image the stack runs, so a restore judges all.
        for (service, image) in &self.images {
            self.host
                .pins
                .entry(service.clone())
                .or_insert_with(|| image.clone());
        }
        self.say_update_order(&stack);
        serde_json::to_string_pretty(&stack.file).map_err(|e| fail(e.to_string()))
    }

    fn say_update_order(&mut self, stack: &StackFile) {
        let name = self.host.name().to_string();
        if !stack.start_first.is_empty() {
            self.host.runner.line(&format!(
                "{name}: updated start-first (each new task healthy before an old one stops; the compose file sets no `deploy.update_config.order`): {}",
                stack.start_first.join(", ")
            ));
        }
        for (service, why) in &stack.stop_first {
            self.host.runner.line(&format!(
                "{name}: service `{service}` updates stop-first: {why}"
            ));
        }
        for service in &stack.host_ports {
            self.warnings.push(format!(
                "service `{service}` publishes a port in `mode: host`, so two of its tasks cannot run on one node: it updates stop-first, and each node is without it for a moment. Publish the port in `mode: ingress` for a zero-downtime update, or set `deploy.update_config.order: stop-first` to say it is meant."
            ));
        }
        if stack.no_healthcheck.is_empty() {
            return;
        }
        let images: Vec<String> = stack
            .no_healthcheck
            .iter()
            .filter_map(|s| self.images.get(s).cloned())
            .collect();
        let checked = self
            .host
            .step(
                "image health checks",
                &cmds::image_healthchecks(&images),
                None,
                QUICK,
            )
            .map(|o| o.stdout)
            .unwrap_or_default();
        for service in &stack.no_healthcheck {
            let image = self.images.get(service).cloned().unwrap_or_default();
            let has = checked
                .lines()
                .any(|l| l.split_once(' ') == Some((image.as_str(), "yes")));
            if !has {
                self.warnings.push(format!(
                    "service `{service}` updates start-first, but neither the compose file nor its image defines a health check: Swarm counts a new task running the moment its container starts, so a task that fails a second later has already replaced an old one. Add a `healthcheck` to the service."
                ));
            }
        }
    }

    /// The pre-deploy job's environment file: the service's environment as compose
    /// resolved it (its env files included), as `docker service create --env-file` reads it.
    fn job_env(&self, service: &str) -> Result<String, ReleaseError> {
        let fail = |problem: String| ReleaseError::StackFile {
            host: self.host.name().into(),
            problem,
        };
        let env = self
            .host
            .model()
            .map(|m| m["services"][service]["environment"].clone())
            .unwrap_or(Value::Null);
        let mut text = String::new();
        for (key, value) in env.as_object().into_iter().flatten() {
            // `compose config` writes a literal `$` as `$$` (what `stack deploy` reads
            // back as `$`); an env file is read as is.
            let value = match value {
                Value::Null => continue,
                Value::String(s) => s.replace("$$", "$"),
                other => other.to_string(),
            };
            if value.contains('\n') {
                return Err(fail(format!("the value of `{key}` in service `{service}` spans several lines, which an env file for the pre-deploy job cannot hold")));
            }
            text.push_str(&format!("{key}={value}\n"));
        }
        Ok(text)
    }

    /// The pre-deploy job's command, with the image and networks the stack file gives
    /// `service`.
    fn job_command(&self, spec: &ReleaseSpec, service: &str, argv: &[String]) -> Cmd {
        let image = self.images.get(service).cloned().unwrap_or_default();
        let networks = self
            .host
            .model()
            .map(|m| service_networks(m, self.project(), service))
            .unwrap_or_default();
        let env = format!("{}/{JOB_ENV_FILE}", self.host.layout.release_dir(&spec.id));
        cmds::pre_deploy_job(
            &cmds::job_name(self.project(), &spec.id),
            &image,
            &networks,
            &env,
            Some(self.node_id.as_str()).filter(|n| !n.is_empty()),
            argv,
        )
    }

    /// The activation of release `id`: with the registry login when there is one.
    fn activation(&self, login: Option<&RegistryLogin>, id: &str, name: &'static str) -> Step {
        let cmd = cmds::stack_deploy_and_switch(
            &self.host.layout,
            id,
            login.map(|l| {
                (
                    l.server.as_str(),
                    l.username.as_str(),
                    self.host.docker_config(),
                )
            }),
        );
        let step = Step::run(Phase::Up, name, cmd, Output::Activate, LONG).undo(Undo::Restore);
        match login {
            Some(l) => step.stdin(l.password.clone()),
            None => step,
        }
    }

    /// The Swarm steps of a release: the compose target's upload and pull (the model,
    /// the pins), then the stack file, the pre-deploy job, and the stack deploy.
    fn swarm_steps(&self, spec: &ReleaseSpec) -> Vec<Step> {
        let layout = &self.host.layout;
        let dir = layout.release_dir(&spec.id);
        let mut steps = upload_steps(layout, spec, None);
        let mut pull = pull_steps(layout, spec, self.host.docker_config());
        let after_pin = pull
            .iter()
            .position(|s| s.name == PIN_BY_TAG)
            .map_or(pull.len(), |i| i + 1);
        let stack = Step::upload(
            Phase::Pull,
            "stack file (0600)",
            format!("{dir}/{STACK_FILE}"),
            Body::Stack,
            0o600,
            QUICK,
        );
        pull.insert(after_pin, stack);
        steps.extend(pull);
        if let Some(pd) = &spec.pre_deploy {
            steps.push(Step::upload(
                Phase::PreDeploy,
                "pre-deploy environment (0600)",
                format!("{dir}/{JOB_ENV_FILE}"),
                Body::JobEnv(pd.service.clone()),
                0o600,
                QUICK,
            ));
            let name = cmds::job_name(&layout.project, &spec.id);
            let mut cmd = vec![pd.service.clone(), "--".into()];
            cmd.extend(pd.argv.iter().cloned());
            steps.push(
                Step::run(
                    Phase::PreDeploy,
                    JOB,
                    Cmd(cmd),
                    Output::SwarmJob,
                    spec.pre_deploy_timeout,
                )
                .undo(Undo::Cleanup(cmds::remove_service(&name))),
            );
        }
        steps.push(self.activation(spec.registry.as_ref(), &spec.id, STACK_DEPLOY));
        steps
    }
}

/// Whether the host's engine is a manager of an active swarm: its node id and name, or
/// why not.
fn manager_node(host: &ComposeHost) -> Result<(String, String), String> {
    let out = host
        .step("swarm role", &cmds::node_role(), None, QUICK)
        .map_err(|e| e.to_string())?;
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    match words.as_slice() {
        ["active", "true", id, name, ..] => Ok((id.to_string(), name.to_string())),
        ["active", _, ..] => Err("a worker of its swarm, not a manager".into()),
        [state, ..] => Err(format!(
            "its Docker engine is not part of a swarm (`{state}`)"
        )),
        [] => Err("`docker info` said nothing of a swarm".into()),
    }
}

/// Compose service -> the image of each service of a stack file.
fn stack_images(file: &Value) -> BTreeMap<String, String> {
    file["services"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, def)| Some((name.clone(), def["image"].as_str()?.to_string())))
        .collect()
}

/// The networks of `service` in a compose model, by the names the stack gives them: a
/// network's own `name` (external or named), else `<project>_<key>`.
fn service_networks(model: &Value, project: &str, service: &str) -> Vec<String> {
    let keys: Vec<String> = match &model["services"][service]["networks"] {
        Value::Object(m) => m.keys().cloned().collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => vec!["default".into()],
    };
    keys.into_iter()
        .map(|key| {
            let def = &model["networks"][&key];
            match def["name"].as_str() {
                Some(name) => name.to_string(),
                None => format!("{project}_{key}"),
            }
        })
        .collect()
}

impl Target for SwarmHost {
    fn state(&self) -> HostState {
        let mut state = self.host.state();
        state.warnings = self.warnings.clone();
        state
    }
    fn reconnect(&mut self) -> Result<(), ReleaseError> {
        self.host.reconnect()
    }
    fn ensure_connected(&mut self) -> Result<(), ReleaseError> {
        self.host.ensure_connected()
    }
    fn preflight(&mut self) -> Result<Vec<String>, ReleaseError> {
        Target::preflight(&mut self.host)
    }
    fn peek_lock(&mut self) -> Result<(), ReleaseError> {
        Target::peek_lock(&mut self.host)
    }
    fn lock(&mut self, spec: &ReleaseSpec) -> Result<Option<String>, ReleaseError> {
        Target::lock(&mut self.host, spec)
    }
    fn unlock(&mut self) -> Result<(), ReleaseError> {
        Target::unlock(&mut self.host)
    }
    fn snapshot(&mut self) -> Result<(), ReleaseError> {
        Target::snapshot(&mut self.host)
    }
    fn release_steps(&self, spec: &ReleaseSpec) -> Vec<Step> {
        self.swarm_steps(spec)
    }
    fn plan(&self, spec: &ReleaseSpec) -> Vec<String> {
        // The lock and the snapshot are the compose target's; the steps are the stack's.
        let mut lines = self.host.plan(spec);
        lines.truncate(2);
        lines.extend(self.swarm_steps(spec).iter().map(Step::plan_line));
        lines
    }
    fn run_step(&mut self, spec: &ReleaseSpec, step: &Step) -> Result<(), ReleaseError> {
        self.login = spec.registry.clone();
        if step.name == STACK_DEPLOY {
            self.take_baseline()?;
        }
        let concrete = match &step.action {
            Action::Upload { path, body, mode } => {
                let text = match body {
                    Body::Stack => self.make_stack()?,
                    Body::JobEnv(service) => self.job_env(service)?,
                    _ => return self.host.run_step(spec, step),
                };
                let body = Body::Secret(Secret::new(text));
                Step::upload(step.phase, step.name, path.clone(), body, *mode, step.bound)
            }
            Action::Run {
                cmd,
                output: Output::SwarmJob,
                ..
            } => {
                let (service, argv) = cmd.0.split_first().expect("the job names its service");
                let argv = &argv[1..];
                let cmd = self.job_command(spec, service, argv);
                Step::run(step.phase, step.name, cmd, Output::Streamed, step.bound)
                    .undo(step.undo.clone())
            }
            _ => return self.host.run_step(spec, step),
        };
        self.host.run_step(spec, &concrete)
    }
    fn verify(&mut self) -> Result<(), ReleaseError> {
        self.converge("converging", "converged", false)
    }
    fn watch(&mut self) -> Result<Vec<String>, ReleaseError> {
        match self.look()? {
            StackVerdict::Failed(services) => Ok(services),
            _ => Ok(Vec::new()),
        }
    }
    fn activate(&mut self, id: &str) -> Result<(), ReleaseError> {
        if self.host.lock_lost {
            return Err(ReleaseError::LockLost {
                host: self.host.name().into(),
            });
        }
        // What the restored release's stack file runs is what its services must run.
        let file = format!("{}/{STACK_FILE}", self.host.layout.release_dir(id));
        let out = self
            .host
            .step("read the release's stack file", &Cmd::new(["cat", file.as_str()]), None, QUICK)
            .map_err(|_| ReleaseError::StackFile {
                host: self.host.name().into(),
                problem: format!("release {id} has no readable {STACK_FILE} (was it deployed with `target: compose`?), so it cannot be restored as a stack"),
            })?;
        let stack: Value =
            serde_json::from_str(&out.stdout).map_err(|e| ReleaseError::Unexpected {
                host: self.host.name().into(),
                doing: "reading the stack file of the release to restore",
                detail: e.to_string(),
            })?;
        self.take_baseline()?;
        let up = self.activation(self.login.as_ref(), id, STACK_RESTORE);
        self.host.reactivate_with(id, &up)?;
        self.images = stack_images(&stack);
        self.converge("restoring", "restored", true)
    }
    fn recovery_command(&self, id: &str) -> String {
        let file = format!("{}/{STACK_FILE}", self.host.layout.release_dir(id));
        let deploy = Cmd::new([
            "docker",
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "--prune",
            "-c",
            file.as_str(),
            self.project(),
        ]);
        crate::ssh::by_hand(&self.host.access.spec, &deploy)
    }
    fn record(&mut self, spec: &ReleaseSpec, outcome: &str) -> Result<(), ReleaseError> {
        self.host.record(spec, outcome)
    }
    fn prune(&mut self, spec: &ReleaseSpec) -> Result<Vec<String>, ReleaseError> {
        Target::prune(&mut self.host, spec)
    }
    fn diagnostics(&mut self, lines: usize) -> Diagnostics {
        let mut d = Diagnostics {
            host: self.host.name().into(),
            ..Default::default()
        };
        let project = self.project().to_string();
        if let Ok(out) = self
            .host
            .quiet(&cmds::stack_ps(&project), None, QUICK, false)
        {
            d.ps = format!("{}{}", out.stdout, out.stderr);
        }
        let _ = self.look();
        let pick: Vec<String> = if self.unsettled.is_empty() {
            self.images
                .keys()
                .map(|s| format!("{project}_{s}"))
                .collect()
        } else {
            self.unsettled.clone()
        };
        for service in pick {
            if let Ok(out) =
                self.host
                    .quiet(&cmds::service_logs(&service, lines), None, QUICK, false)
            {
                d.logs.push((
                    service,
                    crate::remote::scrubbed_log(&crate::secret::registered(), &out.stdout),
                ));
            }
        }
        d
    }
    fn choose_rollback(
        &mut self,
        wanted: Option<&str>,
    ) -> Result<(String, Option<String>), ReleaseError> {
        Target::choose_rollback(&mut self.host, wanted)
    }
    fn record_manual_rollback(&mut self, restored: &str) -> Result<(), ReleaseError> {
        self.host.record_manual_rollback(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_s_networks_are_named_as_the_stack_names_them() {
        let model = serde_json::json!({
            "services": {
                "api": {"networks": {"default": null, "back": {}}},
                "job": {},
                "ext": {"networks": ["shared"]},
            },
            "networks": {
                "default": {},
                "back": {},
                "shared": {"name": "shared-net", "external": true},
            }
        });
        assert_eq!(
            service_networks(&model, "shop", "api"),
            ["shop_back", "shop_default"]
        );
        assert_eq!(service_networks(&model, "shop", "job"), ["shop_default"]);
        assert_eq!(service_networks(&model, "shop", "ext"), ["shared-net"]);
    }

    #[test]
    fn the_stack_s_images_are_its_services_images() {
        let file = serde_json::json!({"services": {
            "web": {"image": "reg/web@sha256:aa"},
            "db": {"image": "postgres@sha256:bb"},
            "odd": {}
        }});
        assert_eq!(
            stack_images(&file),
            BTreeMap::from([
                ("db".to_string(), "postgres@sha256:bb".to_string()),
                ("web".to_string(), "reg/web@sha256:aa".to_string()),
            ])
        );
    }
}
