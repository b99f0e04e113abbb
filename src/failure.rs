//! Why a run failed, as one type. Each module has its own error enum; a [`Fault`] says
//! which one and where, and becomes the report's root cause in one place
//! ([`Fault::to_failure`]), with every annotation title written here.

use crate::ci_gate::GateError;
use crate::docker::DockerError;
use crate::images::ImageError;
use crate::inputs::InputErrors;
use crate::report::{Cause, Failure, Phase};
use crate::ssh::SshError;
use crate::targets::ReleaseError;
use crate::trust::WorkspaceError;

/// The host-side steps a fault can come from: each has its phase and its titles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStep {
    Connect,
    Preflight,
    Lock,
    /// Reading what runs now and the release records.
    Snapshot,
    /// A step of the release, in its phase.
    Release(Phase),
    Verify,
    /// The crash watch while health is probed.
    Watch,
    /// `mode: rollback` choosing or re-activating a release.
    Rollback,
}

#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// Every invalid input; each is its own annotation.
    #[error("{0}")]
    Inputs(InputErrors),
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// A build or push failure, and where (the Dockerfile and line) when it was a build's.
    #[error(transparent)]
    Build(#[from] ImageError),
    #[error("{source}")]
    Host {
        step: HostStep,
        #[source]
        source: ReleaseError,
    },
    /// `health-url` could not be probed as given.
    #[error("{0}")]
    Probe(String),
    #[error("{message}")]
    Unhealthy {
        message: String,
        record: Box<crate::health::HealthRecord>,
    },
    #[error("{0}")]
    CrashLoop(String),
    /// Cancelled during `phase`: what ran on the hosts was stopped, and an unproven
    /// release restored. Without a phase, the time ran out: only the locks were released.
    #[error("{}", cancelled_message(signal, phase, released))]
    Cancelled {
        signal: &'static str,
        phase: Option<Phase>,
        released: crate::targets::LastResort,
    },
}

impl Fault {
    /// A host's error in `step`. A command stopped because the run was cancelled is the
    /// cancellation, in the step's phase.
    pub fn host(step: HostStep) -> impl FnOnce(ReleaseError) -> Fault {
        move |source| {
            let cancelled = matches!(source, ReleaseError::Ssh(SshError::Cancelled { .. }));
            let fault = Fault::Host { step, source };
            if cancelled {
                return Fault::cancelled(fault.phase());
            }
            fault
        }
    }

    /// The run was cancelled during `phase`.
    pub fn cancelled(phase: Phase) -> Fault {
        Fault::Cancelled {
            signal: crate::cancel::signal().unwrap_or("a signal"),
            phase: Some(phase),
            released: Default::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        match self {
            Fault::Inputs(_) => Phase::Inputs,
            Fault::Gate(_) | Fault::Workspace(_) => Phase::CiGate,
            Fault::Build(e) => e.phase(),
            Fault::Host { step, .. } => match step {
                HostStep::Connect | HostStep::Preflight => Phase::Connect,
                HostStep::Lock => Phase::Lock,
                HostStep::Snapshot => Phase::Upload,
                HostStep::Release(phase) => *phase,
                HostStep::Verify => Phase::Verify,
                HostStep::Watch => Phase::Health,
                HostStep::Rollback => Phase::Rollback,
            },
            Fault::Probe(_) | Fault::Unhealthy { .. } | Fault::CrashLoop(_) => Phase::Health,
            Fault::Cancelled { phase, .. } => phase.unwrap_or(Phase::Connect),
        }
    }

    /// The annotation title: what failed, in the user's words.
    pub fn title(&self) -> String {
        let title = match self {
            Fault::Inputs(_) => "berth: invalid inputs",
            Fault::Gate(e) => gate_title(e),
            Fault::Workspace(_) => "berth: the workspace is not the gated commit",
            Fault::Build(e) => return image_title(e),
            Fault::Host { step, source } => host_title(*step, source),
            Fault::Probe(_) | Fault::Unhealthy { .. } => "berth: health check failed",
            Fault::CrashLoop(_) => "berth: service crash-looping",
            Fault::Cancelled { .. } => "berth: cancelled",
        };
        title.into()
    }

    /// The health record of a release that did not prove healthy, if a probe ran.
    pub fn health_record(&self) -> Option<crate::health::HealthRecord> {
        match self {
            Fault::Unhealthy { record, .. } => Some((**record).clone()),
            _ => None,
        }
    }

    /// What really went wrong, whatever the phase.
    pub fn cause(&self) -> Cause {
        let text = self.to_string().to_ascii_lowercase();
        match self {
            Fault::Cancelled { .. } => Cause::Cancelled,
            Fault::Probe(_) | Fault::Unhealthy { .. } => Cause::Unhealthy,
            Fault::CrashLoop(_) => Cause::CrashLoop,
            Fault::Host {
                source: ReleaseError::PullStalled { .. },
                ..
            } => Cause::RegistryStalled,
            Fault::Host {
                source: ReleaseError::Ssh(ssh),
                step,
            } if ssh.is_connection_lost() && *step != HostStep::Connect => Cause::ConnectionLost,
            _ if text.contains("no space left") || text.contains("disk quota exceeded") => {
                Cause::DiskFull
            }
            _ => Cause::Other,
        }
    }

    /// The report's root cause.
    pub fn to_failure(&self) -> Failure {
        let (file, line) = match self {
            Fault::Build(e) => e.file_line(),
            _ => (None, None),
        };
        Failure {
            phase: self.phase(),
            cause: self.cause(),
            title: self.title(),
            message: self.to_string(),
            file,
            line,
        }
    }
}

fn cancelled_message(
    signal: &str,
    phase: &Option<Phase>,
    released: &crate::targets::LastResort,
) -> String {
    match phase {
        Some(p) => format!(
            "berth received {signal} (the run was cancelled) during {}. What ran on the hosts was stopped, one-off containers included.",
            p.label()
        ),
        None => {
            let mut m = format!(
                "berth received {signal} (the run was cancelled) and released {} deploy lock(s). A host may have been mid-deploy: check `docker compose ps` there, or re-run berth, which restores a consistent release.",
                released.released
            );
            if !released.restoring.is_empty() {
                m.push_str(&format!(
                    " The restore of the previous release was handed over to {}: the host finishes it by itself, proves it (containers running the release's images, steady past any stop in flight), records it and releases the lock; the next run reports what it did.",
                    released.restoring.join(", ")
                ));
            }
            m
        }
    }
}

fn gate_title(e: &GateError) -> &'static str {
    match e {
        GateError::Failed { .. } => "berth: CI did not succeed for this commit",
        GateError::TimedOut { .. } => "berth: CI gate timed out",
        GateError::NoRun { .. } => "berth: no CI run found for this commit",
        GateError::UnknownWorkflow { .. } => "berth: unknown CI workflow",
        GateError::Api(_) => "berth: GitHub API error in the CI gate",
        GateError::ShaNotTested { .. } => "berth: the commit to deploy is not the one CI tested",
        GateError::BranchUnproven { .. } => "berth: cannot prove the commit is on its branch",
        GateError::Event { .. } | GateError::NoHeadSha | GateError::NoSha => {
            "berth: cannot tell which commit to deploy"
        }
    }
}

/// The title of an image's failure; also the build phase's row when a build failed.
pub fn image_title(e: &ImageError) -> String {
    match e {
        ImageError::NoValidTag { .. } => "berth: no valid image tag".into(),
        ImageError::Engine(DockerError::EngineRefused { status: 404, .. }) => {
            "berth: no such image".into()
        }
        ImageError::Engine(DockerError::EngineRefused { .. }) => {
            "berth: the Docker engine refused a request".into()
        }
        ImageError::Engine(_) => "berth: Docker engine unavailable".into(),
        ImageError::DockerfileMissing { service, .. }
        | ImageError::Context { service, .. }
        | ImageError::Build { service, .. }
        | ImageError::Builder { service, .. } => format!("berth: building {service} failed"),
        ImageError::Push(e) => push_title(e).into(),
    }
}

fn push_title(e: &DockerError) -> &'static str {
    match e {
        DockerError::Unauthorized { .. } => "berth: registry rejected the credentials",
        DockerError::Denied { .. } => "berth: no permission to push",
        DockerError::RegistryUnreachable { .. } => "berth: registry unreachable",
        _ => "berth: push failed",
    }
}

fn host_title(step: HostStep, e: &ReleaseError) -> &'static str {
    if let ReleaseError::Ssh(ssh) = e {
        if ssh.is_connection_lost() && step != HostStep::Connect {
            return "berth: connection to the host lost";
        }
    }
    match (step, e) {
        (HostStep::Release(Phase::PreDeploy), ReleaseError::Ssh(SshError::Timeout { .. })) => {
            "berth: pre-deploy timed out"
        }
        (HostStep::Connect, ReleaseError::Ssh(SshError::HostKeyMismatch { .. })) => {
            "berth: host key mismatch"
        }
        (HostStep::Connect, ReleaseError::Ssh(SshError::HostKeyNotPinned { .. })) => {
            "berth: host key not pinned"
        }
        (HostStep::Connect, ReleaseError::Ssh(SshError::Auth { .. })) => {
            "berth: SSH authentication failed"
        }
        (HostStep::Connect, ReleaseError::NoManager { .. }) => "berth: no reachable swarm manager",
        (HostStep::Connect, _) => "berth: cannot connect to the host",
        (HostStep::Preflight, _) => "berth: host failed preflight",
        (HostStep::Lock, ReleaseError::LockHeld { .. }) => "berth: deploy lock is held",
        (HostStep::Lock, _) => "berth: cannot take the deploy lock",
        (HostStep::Snapshot, _) => "berth: cannot read the host's current release",
        (HostStep::Release(Phase::Upload), _) => "berth: upload failed",
        (_, ReleaseError::StackFile { .. }) => "berth: the compose file cannot become a stack",
        (HostStep::Release(Phase::Pull), ReleaseError::PullStalled { .. }) => {
            "berth: the registry stopped sending"
        }
        (HostStep::Release(Phase::Pull), _) => "berth: pull failed",
        (HostStep::Release(Phase::PreDeploy), _) => "berth: pre-deploy command failed",
        (HostStep::Release(Phase::Up), ReleaseError::Step { step, .. })
            if step.starts_with("docker stack") =>
        {
            "berth: docker stack deploy failed"
        }
        (HostStep::Release(Phase::Up), _) => "berth: docker compose up failed",
        (HostStep::Verify, ReleaseError::StackFailed { .. }) => "berth: the stack did not converge",
        (HostStep::Release(Phase::Verify), _) | (HostStep::Verify, _) => {
            "berth: running images do not match the deploy"
        }
        (HostStep::Release(_), _) => "berth: remote release failed",
        (HostStep::Watch, ReleaseError::Ssh(_)) => "berth: connection to the host lost",
        (HostStep::Watch, _) => "berth: cannot watch the host's containers",
        (HostStep::Rollback, _) => "berth: rollback failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fault becomes one root cause with its phase, title and message; the phase
    /// and title of a host fault follow the step it came from, not only the error.
    #[test]
    fn each_fault_converts_once_into_its_phase_title_and_message() {
        let held = || ReleaseError::LockHeld {
            host: "web1".into(),
            holder: "run 7".into(),
            waited: std::time::Duration::from_secs(3),
        };
        let cases = [
            (
                Fault::host(HostStep::Lock)(held()),
                Phase::Lock,
                "berth: deploy lock is held",
            ),
            (
                Fault::host(HostStep::Connect)(held()),
                Phase::Connect,
                "berth: cannot connect to the host",
            ),
            (
                Fault::host(HostStep::Release(Phase::PreDeploy))(ReleaseError::NothingToRestore),
                Phase::PreDeploy,
                "berth: pre-deploy command failed",
            ),
            (
                Fault::host(HostStep::Verify)(ReleaseError::NothingToRestore),
                Phase::Verify,
                "berth: running images do not match the deploy",
            ),
            (
                Fault::CrashLoop("web1 after 2.0s".into()),
                Phase::Health,
                "berth: service crash-looping",
            ),
            (
                Fault::Gate(GateError::NoSha),
                Phase::CiGate,
                "berth: cannot tell which commit to deploy",
            ),
        ];
        for (fault, phase, title) in cases {
            let f = fault.to_failure();
            assert_eq!((f.phase, f.title.as_str()), (phase, title), "{fault:?}");
            assert_eq!(f.message, fault.to_string());
        }
        let build = ImageError::Build {
            service: "web".into(),
            dockerfile: "Dockerfile".into(),
            line: Some(3),
            message: "step 3".into(),
            tail: vec![],
        };
        let f = Fault::Build(build).to_failure();
        assert_eq!(
            (f.phase, f.file.as_deref(), f.line),
            (Phase::Build, Some("Dockerfile"), Some(3))
        );
        assert_eq!(f.title, "berth: building web failed");
    }

    /// An image's failure keeps the title, phase, message and place it had when images
    /// wrote them itself.
    #[test]
    fn image_faults_keep_their_titles_phases_and_messages() {
        let service = || "web".to_string();
        let dockerfile = || "web/Dockerfile".to_string();
        let cases = [
            (
                ImageError::NoValidTag {
                    templates: vec!["{branch}".into(), "pr-{branch}".into()],
                    branch: "".into(),
                    run_number: "7".into(),
                },
                Phase::Build,
                "berth: no valid image tag",
                "every template in `tags` that names the commit or run (`{branch}`, `pr-{branch}`) expanded to an empty or invalid tag for this run (branch ``, run number `7`). Add a template that always gives a tag, e.g. `staging-{sha}`.",
                (None, None),
            ),
            (
                ImageError::DockerfileMissing {
                    service: service(),
                    dockerfile: dockerfile(),
                },
                Phase::Build,
                "berth: building web failed",
                "web/Dockerfile does not exist in the workspace. Check the `images` line for `web`.",
                (Some(dockerfile()), None),
            ),
            (
                ImageError::Build {
                    service: service(),
                    dockerfile: dockerfile(),
                    line: Some(4),
                    message: "exit code: 3".into(),
                    tail: vec!["#5 RUN false".into(), "#5 ERROR".into()],
                },
                Phase::Build,
                "berth: building web failed",
                "exit code: 3\nLast 2 lines of build output:\n#5 RUN false\n#5 ERROR",
                (Some(dockerfile()), Some(4)),
            ),
            (
                ImageError::Push(DockerError::Unauthorized {
                    registry: "r:5000".into(),
                }),
                Phase::Push,
                "berth: registry rejected the credentials",
                "the registry r:5000 rejected the credentials (401). Check `registry-username` and `registry-password`; for ghcr.io use `${{ github.actor }}` and `${{ github.token }}`.",
                (None, None),
            ),
            (
                ImageError::Push(DockerError::NoDigest {
                    reference: "r:5000/web".into(),
                }),
                Phase::Push,
                "berth: push failed",
                "the engine pushed r:5000/web but reported no digest; cannot deploy by digest.",
                (None, None),
            ),
            (
                ImageError::Engine(DockerError::NoDigest {
                    reference: "x".into(),
                }),
                Phase::Build,
                "berth: Docker engine unavailable",
                "the engine pushed x but reported no digest; cannot deploy by digest.",
                (None, None),
            ),
        ];
        for (error, phase, title, message, (file, line)) in cases {
            let f = Fault::Build(error).to_failure();
            assert_eq!((f.phase, f.title.as_str()), (phase, title));
            assert_eq!(f.message, message);
            assert_eq!((f.file, f.line), (file, line));
        }
    }
}
