//! Watching a compose project's containers: the digests they run (verify), crash loops
//! while health is probed, and the diagnostics of a failed release.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::{short_id, ComposeHost, ContainerState, QUICK};
use crate::remote;
use crate::targets::ReleaseError;

impl ComposeHost {
    /// Every container of the project, with its state.
    pub fn containers(&self) -> Result<Vec<ContainerState>, ReleaseError> {
        let out = self.step(
            "list containers",
            &self.layout.project_containers(),
            None,
            QUICK,
        )?;
        Ok(parse_containers(&out.stdout))
    }

    /// Each running container must use exactly the pinned image (field notes A.4). A
    /// container created from the pin's own digest reference runs it (a digest names one
    /// image); any other is checked by image id against the pin resolved on the host.
    pub fn verify(&mut self) -> Result<(), ReleaseError> {
        // First from `docker ps`, which names the image reference each container was
        // created from only while that reference still names the image it runs.
        let listed = self.step(
            "list containers",
            &self.layout.container_images(),
            None,
            QUICK,
        )?;
        let own = self
            .serving
            .clone()
            .or_else(|| self.release.clone())
            .unwrap_or_default();
        if let Some(n) = runs_the_pins(&listed.stdout, &self.pins, &own) {
            self.runner.line(&format!(
                "{}: verified {n} container(s) run the pinned digests",
                self.conn.name
            ));
            return Ok(());
        }
        let containers = self.containers()?;
        let unproven: Vec<&ContainerState> = containers
            .iter()
            .filter(|c| !c.one_off)
            .filter(|c| c.release.as_deref().is_none_or(|r| r == own))
            .filter(|c| {
                self.pins
                    .get(&c.service)
                    .is_some_and(|pin| pin != &c.image_ref && pin != &c.image_id)
            })
            .collect();
        let mut mismatches = Vec::new();
        if !unproven.is_empty() {
            let refs: Vec<String> = unproven
                .iter()
                .map(|c| self.pins[&c.service].clone())
                .collect();
            let ids = self.step("resolve pins", &remote::image_ids(&refs), None, QUICK)?;
            for (c, want) in unproven.iter().zip(ids.stdout.lines().map(str::trim)) {
                if want != c.image_id {
                    mismatches.push(format!(
                        "{} runs {} but {} is {}",
                        c.name,
                        short_id(&c.image_id),
                        self.pins[&c.service],
                        short_id(want)
                    ));
                }
            }
        }
        if mismatches.is_empty() {
            self.runner.line(&format!(
                "{}: verified {} container(s) run the pinned digests",
                self.conn.name,
                containers.len()
            ));
            Ok(())
        } else {
            Err(ReleaseError::DigestMismatch {
                host: self.conn.name.clone(),
                mismatches: mismatches.join("; "),
            })
        }
    }
}

/// restarted since the watch began. One-shot containers that exited 0 are fine.
pub fn failing_containers<'a>(
    states: &'a [ContainerState],
    baseline: &BTreeMap<String, i64>,
) -> Vec<&'a ContainerState> {
    states
        .iter()
        .filter(|c| !c.one_off)
        .filter(|c| {
            c.oom_killed
                || c.restarting
                || c.status == "restarting"
                || (c.status == "exited" && c.exit_code != 0)
                || c.status == "dead"
                || c.restart_count > baseline.get(&c.id).copied().unwrap_or(0)
        })
        .collect()
}

pub fn describe_failing(c: &ContainerState) -> String {
    let exit = if c.exit_code == 0 && !c.oom_killed {
        "exit code unknown (it restarted before berth could read it)".to_string()
    } else {
        format!("exit code {}", c.exit_code)
    };
    format!(
        "service `{}` ({}) is {}: {exit}, restarted {} time(s), OOM-killed: {}",
        c.service,
        c.name,
        if c.restarting || c.status == "restarting" || c.restart_count > 0 {
            "crash-looping"
        } else {
            "down"
        },
        c.restart_count,
        if c.oom_killed { "yes" } else { "no" }
    )
}

impl ComposeHost {
    /// One look for containers failing since the snapshot (crash loops), described with
    /// the exit code they really exited with. An error reaching the host is an error: a
    /// watch that cannot see must not pass as one that saw nothing.
    pub(super) fn crash_watch(&mut self) -> Result<Vec<String>, ReleaseError> {
        let states = self.containers()?;
        let failing: Vec<ContainerState> = failing_containers(&states, &self.restarts_before)
            .into_iter()
            .cloned()
            .collect();
        if failing.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .settle_exit_codes(failing)
            .iter()
            .map(describe_failing)
            .collect())
    }

    /// A crash-looping container reads exit code 0 while it is briefly running again;
    /// look again for up to 2 s to report the code it really exited with.
    fn settle_exit_codes(&self, mut failing: Vec<ContainerState>) -> Vec<ContainerState> {
        for _ in 0..20 {
            if failing.iter().all(|c| c.exit_code != 0 || c.oom_killed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            let now = self.containers().unwrap_or_default();
            for c in failing.iter_mut().filter(|c| c.exit_code == 0) {
                if let Some(n) = now.iter().find(|n| n.id == c.id && n.exit_code != 0) {
                    c.exit_code = n.exit_code;
                    c.restart_count = n.restart_count;
                }
            }
        }
        failing
    }

    /// `docker compose ps -a` and the log tails of failing containers (or of every
    /// container when none is clearly failing, e.g. a health check answering 500).
    pub fn diagnostics(&self, lines: usize) -> crate::report::Diagnostics {
        let mut d = crate::report::Diagnostics {
            host: self.conn.name.clone(),
            ..Default::default()
        };
        if let Ok(out) = self.quiet(
            &remote::compose_ps(&self.layout.project),
            None,
            QUICK,
            false,
        ) {
            d.ps = format!("{}{}", out.stdout, out.stderr);
        }
        let states = self.containers().unwrap_or_default();
        let failing = failing_containers(&states, &BTreeMap::new());
        let pick: Vec<&ContainerState> = if failing.is_empty() {
            states.iter().filter(|c| !c.one_off).collect()
        } else {
            failing
        };
        for c in pick {
            if let Ok(out) = self.quiet(&remote::container_logs(&c.name, lines), None, QUICK, false)
            {
                d.logs.push((
                    c.name.clone(),
                    remote::scrubbed_log(&crate::secret::registered(), &out.stdout),
                ));
            }
        }
        d
    }
}

/// `docker inspect` JSON lines, as container states; anything else is skipped.
pub(super) fn parse_containers(lines: &str) -> Vec<ContainerState> {
    lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| container_state(&v))
        .collect()
}

pub fn container_state(v: &Value) -> ContainerState {
    let labels = &v["Config"]["Labels"];
    ContainerState {
        id: v["Id"].as_str().unwrap_or("").into(),
        service: labels["com.docker.compose.service"]
            .as_str()
            .unwrap_or("")
            .into(),
        name: v["Name"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches('/')
            .into(),
        image_id: v["Image"].as_str().unwrap_or("").into(),
        image_ref: v["Config"]["Image"].as_str().unwrap_or("").into(),
        status: v["State"]["Status"].as_str().unwrap_or("").into(),
        exit_code: v["State"]["ExitCode"].as_i64().unwrap_or(0),
        restart_count: v["RestartCount"].as_i64().unwrap_or(0),
        restarting: v["State"]["Restarting"].as_bool().unwrap_or(false),
        oom_killed: v["State"]["OOMKilled"].as_bool().unwrap_or(false),
        restart_policy: v["HostConfig"]["RestartPolicy"]["Name"]
            .as_str()
            .unwrap_or("")
            .into(),
        one_off: labels["com.docker.compose.oneoff"].as_str() == Some("True"),
        release: labels[crate::edge::RELEASE_LABEL]
            .as_str()
            .map(String::from),
    }
}

/// The number of containers `docker ps` listed (see [`remote::Layout::container_images`])
/// when every one of a pinned service, one-offs aside, was created from its pin and runs
/// it.
/// Containers another release labelled (an old release's, kept beside this one until the
/// edge's drain) are not this release's to prove.
fn runs_the_pins(listed: &str, pins: &BTreeMap<String, String>, own: &str) -> Option<usize> {
    let mut n = 0;
    for line in listed.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split('\t');
        let (service, one_off, image) = (f.next()?, f.next()?, f.next()?);
        let release = f.nth(1).unwrap_or("");
        if !release.is_empty() && release != own {
            continue;
        }
        if one_off != "True" && pins.get(service).is_some_and(|pin| pin != image) {
            return None;
        }
        n += 1;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_ps_proves_containers_made_from_their_pins_and_nothing_else() {
        let pins: BTreeMap<String, String> = [
            ("web".to_string(), "reg/web@sha256:aa".to_string()),
            ("db".to_string(), "postgres@sha256:bb".to_string()),
        ]
        .into();
        let ok = "web\t\treg/web@sha256:aa\tp-web-1\nweb\t\treg/web@sha256:aa\tp-web-2\n\
                  db\t\tpostgres@sha256:bb\tp-db-1\nweb\tTrue\treg/web:old\tp-web-run-1\n\
                  extra\t\tbusybox:1\tp-extra-1\n";
        assert_eq!(runs_the_pins(ok, &pins, ""), Some(5));
        assert_eq!(runs_the_pins("", &pins, ""), Some(0));
        // Made from the tag, or the image id (the pin names another image now): unproven.
        for other in ["reg/web:1", "sha256:0123"] {
            let listed = format!("web\t\t{other}\tp-web-1\n");
            assert_eq!(runs_the_pins(&listed, &pins, ""), None, "{other}");
        }
        assert_eq!(runs_the_pins("web only\n", &pins, ""), None);
    }
}
