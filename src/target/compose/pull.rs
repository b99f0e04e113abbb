//! `compose config` beside the pull (see [`crate::remote::config_beside_pull`]): the pull's
//! output streamed, then the model kept, or the config's failure reported as its own.

use crate::remote::Cmd;
use crate::ssh::ExecOutput;
use crate::target::{ReleaseError, Step};

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

impl ComposeHost {
    /// Runs the config beside the pull; keeps the model. A variable nothing sets fails
    /// first (field notes A.5, C), then a config that failed, then a pull that failed.
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
        let failed = |step, status, text: &str| ReleaseError::Step {
            host: self.conn.name.clone(),
            step,
            status,
            tail: tail(
                &ExecOutput {
                    status,
                    stdout: text.into(),
                    stderr: String::new(),
                },
                30,
            ),
        };
        // The model comes only from a config that exited 0 and warned of no unset
        // variable; otherwise what follows the marker is the config's stderr.
        let model = match serde_json::from_str(b.after) {
            Ok(model) if b.config_status == 0 => model,
            parsed => {
                let names = unset_variables(b.after);
                if !names.is_empty() {
                    return Err(ReleaseError::MissingVariables {
                        host: self.conn.name.clone(),
                        names,
                    });
                }
                if b.config_status != 0 {
                    return Err(failed("docker compose config", b.config_status, b.after));
                }
                return Err(ReleaseError::Unexpected {
                    host: self.conn.name.clone(),
                    doing: "reading `compose config`",
                    detail: parsed.err().map(|e| e.to_string()).unwrap_or_default(),
                });
            }
        };
        if b.pull_status != 0 {
            return Err(failed("docker compose pull", b.pull_status, b.pulled));
        }
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
}
