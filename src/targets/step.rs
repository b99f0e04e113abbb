//! A release as data: the steps a target runs on a host, in order, each with its phase,
//! what it sends, its bound and what a failure of it leaves to undo. The one list is
//! executed, printed as the dry-run plan and summarised in the phase table, so the plan
//! cannot drift from the deploy.

use std::time::Duration;

use crate::remote::Cmd;
use crate::report::Phase;
use crate::secret::Secret;
use crate::ssh::quote_argv;

pub struct Step {
    pub phase: Phase,
    /// What the log, an error and the phase table call it.
    pub name: &'static str,
    pub action: Action,
    /// The longest the step may take.
    pub bound: Duration,
    pub undo: Undo,
}

pub enum Action {
    /// An SFTP `mkdir` that fails when the dir exists.
    CreateDir { path: String, mode: i32 },
    /// An SFTP write (to a temporary name, then renamed).
    Upload { path: String, body: Body, mode: i32 },
    /// One remote command.
    Run {
        cmd: Cmd,
        stdin: Option<Secret>,
        output: Output,
    },
}

pub enum Body {
    /// Shown in the plan by its size.
    Text(&'static str, String),
    /// Never shown, not even in part.
    Secret(Secret),
    /// The digest pins as they stand when the step runs.
    Pins,
    /// The release record with this outcome and the pins as they stand.
    Record(&'static str),
    /// Swarm: the stack file made from the compose model and the pins as they stand
    /// (it holds the env files' values: never shown).
    Stack,
    /// Swarm: the environment of this service, as compose resolved it, for the pre-deploy
    /// job (never shown).
    JobEnv(String),
}

/// What a command's output means.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Output {
    /// Exit 0 or fail; kept out of the log.
    Quiet,
    /// Exit 0 or fail; every line streamed to the log.
    Streamed,
    /// [`crate::remote::config_beside_pull`]: the pull streamed, the model kept; completed
    /// at run time with its random end marker.
    ConfigBesidePull,
    /// Completed at run time with each image the compose model names by tag; the pins
    /// of those images are read from its output.
    PinByTag,
    /// `compose up`: streamed, slow stops noted; the health deadline counts from its end.
    Activate,
    /// Swarm: the pre-deploy job of this service, streamed; its image and networks are
    /// filled in at run time from the stack file.
    SwarmJob,
    /// The edge's switch: streamed; the time of the switch is kept (the drain counts
    /// from it).
    Switch,
    /// The drain: its last word, the wait, is what is left of `drain-timeout` since the
    /// switch when it runs.
    Drain,
}

/// What berth must do when this step fails, or the run ends before the release is judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Undo {
    /// Nothing that runs was changed: the previous release still serves.
    Nothing,
    /// Run this command, as the step's own cleanup may not have run (a dropped connection,
    /// a timeout): e.g. the registry credential must not outlive the pull.
    Cleanup(Cmd),
    /// The running containers may have changed from here on: restore the previous release.
    Restore,
}

impl Step {
    /// A remote command whose failure leaves nothing to undo.
    pub fn run(
        phase: Phase,
        name: &'static str,
        cmd: Cmd,
        output: Output,
        bound: Duration,
    ) -> Step {
        Step {
            phase,
            name,
            action: Action::Run {
                cmd,
                stdin: None,
                output,
            },
            bound,
            undo: Undo::Nothing,
        }
    }

    /// A file written over SFTP.
    pub fn upload(
        phase: Phase,
        name: &'static str,
        path: String,
        body: Body,
        mode: i32,
        bound: Duration,
    ) -> Step {
        Step {
            phase,
            name,
            action: Action::Upload { path, body, mode },
            bound,
            undo: Undo::Nothing,
        }
    }

    pub fn undo(mut self, undo: Undo) -> Step {
        self.undo = undo;
        self
    }

    /// The command reads `secret` on stdin (never its command line).
    pub fn stdin(mut self, secret: Secret) -> Step {
        if let Action::Run { stdin, .. } = &mut self.action {
            *stdin = Some(secret);
        }
        self
    }

    /// The step as the dry-run plan prints it: the exact argv as quoted for the host, or
    /// the file written. File contents and secrets are not shown.
    pub fn plan_line(&self) -> String {
        match &self.action {
            Action::CreateDir { path, mode } => {
                format!("sftp mkdir {path} (mode {mode:04o}; fails if it exists)")
            }
            Action::Upload { path, body, mode } => {
                let what = match body {
                    Body::Text(what, text) => format!("{what}, {} bytes", text.len()),
                    Body::Secret(_) => "redacted".into(),
                    Body::Pins => "digest pins".into(),
                    Body::Record(outcome) => format!("release record, outcome `{outcome}`"),
                    Body::Stack => "stack file, images pinned, redacted".into(),
                    Body::JobEnv(service) => format!("environment of `{service}`, redacted"),
                };
                format!("sftp put {path} (mode {mode:04o}, {what})")
            }
            Action::Run { cmd, stdin, output } => {
                let mut line = quote_argv(&cmd.0);
                match output {
                    Output::PinByTag => {
                        line.push_str(" <each image the compose model names by tag>")
                    }
                    Output::ConfigBesidePull => line.push_str(" <random end marker>"),
                    Output::SwarmJob => line.push_str(
                        " <with the image and networks the stack file gives the service>",
                    ),
                    _ => {}
                }
                if stdin.is_some() {
                    line.push_str(" <<< (secret on stdin, redacted)");
                }
                line
            }
        }
    }

    /// Whether the step runs a command (as opposed to an SFTP file operation).
    pub fn command(&self) -> Option<&Cmd> {
        match &self.action {
            Action::Run { cmd, .. } => Some(cmd),
            _ => None,
        }
    }
}

/// The phases of `steps` in order, each with the names of its steps: what the phase
/// table says a phase did.
pub fn phase_summaries(steps: &[Step]) -> Vec<(Phase, String)> {
    let mut out: Vec<(Phase, Vec<&str>)> = Vec::new();
    for s in steps {
        match out.last_mut() {
            Some((p, names)) if *p == s.phase => {
                if !names.contains(&s.name) {
                    names.push(s.name)
                }
            }
            _ => out.push((s.phase, vec![s.name])),
        }
    }
    out.into_iter().map(|(p, n)| (p, n.join(", "))).collect()
}
