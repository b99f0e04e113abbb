//! `compose config` beside the pull (see [`crate::remote::config_beside_pull`]): the pull's
//! output streamed, then the model kept, or the config's failure reported as its own.

use crate::remote::{self, Cmd};
use crate::ssh::ExecOutput;
use crate::targets::{ReleaseError, Step};

use serde_json::Value;

use super::{choose_pin, tail, unset_variables, ComposeHost};

/// What the command printed, read at its end marker.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Beside<'a> {
    /// The pull's own output.
    pub pulled: &'a str,
    pub config_status: i32,
    pub pull_status: i32,
    /// The model when the config succeeded without an unset variable; else its stderr.
    pub after: &'a str,
    /// `<id> <repo digests>` of each image the model names, by image, when the command
    /// could tell them all.
    pub images: Vec<(&'a str, &'a str)>,
}

/// Splits the output at the line `<end> <config status> <pull status>`.
pub(super) fn read_beside<'a>(stdout: &'a str, end: &str) -> Option<Beside<'a>> {
    let at = stdout.find(&format!("\n{end} "))?;
    let (pulled, rest) = stdout.split_at(at);
    let rest = &rest[end.len() + 2..];
    let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
    let (cs, ps) = line.split_once(' ')?;
    let (after, images) = match after.split_once(&format!("\n{end}-images\n")) {
        Some((model, images)) => (
            model,
            images.lines().filter_map(|l| l.split_once(' ')).collect(),
        ),
        None => (after, Vec::new()),
    };
    Some(Beside {
        pulled,
        config_status: cs.trim().parse().ok()?,
        pull_status: ps.trim().parse().ok()?,
        after,
        images,
    })
}

/// Why a config beside a pull did not give a model to deploy.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BesideFailure<'a> {
    /// The config named variables nothing sets (field notes A.5, C).
    MissingVariables(Vec<String>),
    /// The config or the pull exited non-zero: which, its status and what it printed.
    Step {
        step: &'static str,
        status: i32,
        text: &'a str,
    },
    /// The config exited 0 but printed no model berth can read.
    Unreadable(String),
}

/// The model, or why there is none: a variable nothing sets first, then a config that
/// failed, then a pull that failed. The model comes only from a config that exited 0
/// and warned of no unset variable; otherwise what follows the marker is its stderr.
pub(super) fn judge_beside<'a>(b: &Beside<'a>) -> Result<Value, BesideFailure<'a>> {
    let model = match serde_json::from_str(b.after) {
        Ok(model) if b.config_status == 0 => model,
        parsed => {
            let names = unset_variables(b.after);
            if !names.is_empty() {
                return Err(BesideFailure::MissingVariables(names));
            }
            if b.config_status != 0 {
                return Err(BesideFailure::Step {
                    step: "docker compose config",
                    status: b.config_status,
                    text: b.after,
                });
            }
            return Err(BesideFailure::Unreadable(
                parsed.err().map(|e| e.to_string()).unwrap_or_default(),
            ));
        }
    };
    if b.pull_status != 0 {
        return Err(BesideFailure::Step {
            step: "docker compose pull",
            status: b.pull_status,
            text: b.pulled,
        });
    }
    Ok(model)
}

impl ComposeHost {
    /// Runs the config beside the pull; keeps the model (see [`judge_beside`]).
    pub(super) fn config_beside_pull(
        &mut self,
        step: &Step,
        cmd: &Cmd,
        stdin: Option<&[u8]>,
    ) -> Result<(), ReleaseError> {
        let end = format!("berth-model-{:032x}", rand::random::<u128>());
        let mut cmd = cmd.clone();
        cmd.0.push(end.clone());
        let prefix = format!("[{}]", self.conn.name);
        let runner = self.runner.clone();
        let mut ended = false;
        let out = self.supervised(&cmd, stdin, step.bound, |line| {
            ended |= line.starts_with(&end);
            if !ended && !line.is_empty() {
                runner.line(&format!("{prefix} {line}"));
            }
        })?;
        let out = self.exited_0(step.name, out)?;
        let Some(b) = read_beside(&out.stdout, &end) else {
            return Err(ReleaseError::Unexpected {
                host: self.conn.name.clone(),
                doing: "reading `compose config` and `compose pull`",
                detail: tail(&out, 10),
            });
        };
        let host = &self.conn.name;
        if b.pull_status == remote::PULL_STALLED {
            return Err(ReleaseError::PullStalled {
                host: host.clone(),
                secs: step_stall(&cmd),
                images: stalled_images(&b),
            });
        }
        let model = match judge_beside(&b) {
            Ok(model) => model,
            Err(BesideFailure::MissingVariables(names)) => {
                return Err(ReleaseError::MissingVariables {
                    host: host.clone(),
                    names,
                })
            }
            Err(BesideFailure::Step { step, status, text }) => {
                let out = ExecOutput {
                    status,
                    stdout: text.into(),
                    stderr: String::new(),
                };
                return Err(ReleaseError::Step {
                    host: host.clone(),
                    step,
                    status,
                    tail: tail(&out, 30),
                });
            }
            Err(BesideFailure::Unreadable(detail)) => {
                return Err(ReleaseError::Unexpected {
                    host: host.clone(),
                    doing: "reading `compose config`",
                    detail,
                })
            }
        };
        self.model = Some(model);
        // Pins of what the model names by tag, from what the command told of the pulled
        // images; the pin step asks for any it could not tell.
        for (service, image) in self.unpinned() {
            let told = b.images.iter().find(|(i, _)| *i == image);
            if let Some(pin) = told.and_then(|(_, line)| choose_pin(&image, line.trim())) {
                self.pins.insert(service, pin);
            }
        }
        Ok(())
    }
}

/// The stall bound the command was built with (its argument before the end marker).
fn step_stall(cmd: &Cmd) -> u64 {
    let n = cmd.0.len();
    cmd.0
        .get(n.saturating_sub(2))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// What a stalled pull was still pulling: the services the command named, each with the
/// image the model gives it when the config told it.
fn stalled_images(b: &Beside) -> Vec<String> {
    let model: Option<Value> = serde_json::from_str(b.after).ok();
    let services = b
        .pulled
        .lines()
        .find_map(|l| l.strip_prefix("berth: no progress for "))
        .and_then(|l| l.split_once("still being pulled:"))
        .map(|(_, s)| s.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default();
    services
        .into_iter()
        .map(|service| {
            match model
                .as_ref()
                .and_then(|m| m["services"][service]["image"].as_str())
            {
                Some(image) => format!("`{service}` ({image})"),
                None => format!("`{service}`"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_is_split_at_its_end_marker() {
        let out = "a Pulling\na Pulled\n\nberth-model-x 0 1\n{\"services\": {}}\n";
        assert_eq!(
            read_beside(out, "berth-model-x"),
            Some(Beside {
                pulled: "a Pulling\na Pulled\n",
                config_status: 0,
                pull_status: 1,
                after: "{\"services\": {}}\n",
                images: vec![],
            })
        );
        let out = "\nberth-model-x 0 0\n{}\nberth-model-x-images\nreg/a:1 sha256:1 [\"reg/a@sha256:9\"]\n";
        let b = read_beside(out, "berth-model-x").unwrap();
        assert_eq!((b.after, b.pulled), ("{}", ""));
        assert_eq!(b.images, [("reg/a:1", "sha256:1 [\"reg/a@sha256:9\"]")]);
        // No marker: the command was cut off before it printed one.
        assert_eq!(read_beside("a Pulling\n", "berth-model-x"), None);
    }

    fn beside<'a>(config_status: i32, pull_status: i32, after: &'a str) -> Beside<'a> {
        Beside {
            pulled: " web Pulling\n web error: manifest unknown",
            config_status,
            pull_status,
            after,
            images: vec![],
        }
    }

    #[test]
    fn an_unset_variable_then_a_failed_config_then_a_failed_pull() {
        let warned = "WARN[0000] The \"JWT\" variable is not set. Defaulting to a blank string.";
        assert_eq!(
            judge_beside(&beside(0, 143, warned)),
            Err(BesideFailure::MissingVariables(vec!["JWT".into()]))
        );
        // A config that failed: its status and what it printed.
        assert_eq!(
            judge_beside(&beside(15, 143, "yaml: line 3: bad")),
            Err(BesideFailure::Step {
                step: "docker compose config",
                status: 15,
                text: "yaml: line 3: bad"
            })
        );
        assert_eq!(
            judge_beside(&beside(0, 18, "{\"services\": {}}")),
            Err(BesideFailure::Step {
                step: "docker compose pull",
                status: 18,
                text: " web Pulling\n web error: manifest unknown"
            })
        );
        assert!(matches!(
            judge_beside(&beside(0, 0, "not json")),
            Err(BesideFailure::Unreadable(_))
        ));
        // A model wins over text in it that looks like the warning (an env value).
        let model = r#"{"services": {"web": {"environment": {"X": "The \"A\" variable is not set. Defaulting to a blank string"}}}}"#;
        assert_eq!(
            judge_beside(&beside(0, 0, model)).unwrap()["services"]["web"]["environment"]["X"]
                .as_str()
                .map(|v| v.starts_with("The")),
            Some(true)
        );
    }
}
