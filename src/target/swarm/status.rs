//! Where a Swarm service's update stands, from `docker service inspect` and `docker inspect
//! --type task` of its tasks: converged, still updating, failed (a task of the new spec
//! failed or was rejected: the crash-loop rule, in Swarm terms, decided at once), paused,
//! or rolled back by Swarm itself, which `docker stack deploy` reports as success
//! (docker/cli#6752). Pure: the engine polls, this judges.

use serde_json::Value;

/// One service's state after berth deployed `image` to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    /// Every replica runs the deployed image.
    Converged,
    /// Not there yet: how many replicas run the deployed image, of how many.
    Updating { running: u64, wanted: u64 },
    /// A task of the deployed image failed or was rejected: the release failed.
    Failed { tasks: Vec<String> },
    /// Swarm paused the update (its failure action): the release failed.
    Paused { message: String },
    /// Swarm rolled the service back by itself: the release failed, though the CLI says
    /// it converged.
    RolledBack { message: String },
}

/// Judges `service` (one element of `docker service inspect`) with its `tasks` (`docker
/// inspect --type task`), berth having deployed `image` to it.
pub fn judge(service: &Value, tasks: &[Value], image: &str) -> Judged {
    let status = &service["UpdateStatus"];
    let state = status["State"].as_str().unwrap_or("");
    let message = status["Message"].as_str().unwrap_or("").to_string();
    let spec_image = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        .as_str()
        .unwrap_or("");
    // An automatic rollback puts the previous spec back (and clears PreviousSpec); its
    // status may lag behind the spec.
    if state.starts_with("rollback_") && message != "manually requested rollback"
        || spec_image != image
    {
        let message = if message.is_empty() {
            format!("the service runs {spec_image} again, not {image}")
        } else {
            message
        };
        return Judged::RolledBack { message };
    }
    let ours: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["Spec"]["ContainerSpec"]["Image"].as_str() == Some(image))
        .collect();
    let failed: Vec<String> = ours
        .iter()
        .filter(|t| matches!(t["Status"]["State"].as_str(), Some("failed" | "rejected")))
        .map(|t| describe(t))
        .collect();
    if !failed.is_empty() {
        return Judged::Failed { tasks: failed };
    }
    if state == "paused" {
        return Judged::Paused { message };
    }
    let wanted = service["Spec"]["Mode"]["Replicated"]["Replicas"]
        .as_u64()
        .unwrap_or(1);
    let running = ours
        .iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .count() as u64;
    if running >= wanted && state != "updating" {
        Judged::Converged
    } else {
        Judged::Updating { running, wanted }
    }
}

/// `task <id> (slot N) on node <node>: <state>: <error> (exit N)`.
fn describe(task: &Value) -> String {
    let id: String = task["ID"].as_str().unwrap_or("").chars().take(12).collect();
    let mut d = format!(
        "task {id} (slot {}) on node {}: {}",
        task["Slot"].as_u64().unwrap_or(0),
        task["NodeID"]
            .as_str()
            .unwrap_or("?")
            .chars()
            .take(12)
            .collect::<String>(),
        task["Status"]["State"].as_str().unwrap_or("")
    );
    if let Some(err) = task["Status"]["Err"].as_str().filter(|e| !e.is_empty()) {
        d.push_str(&format!(": {err}"));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `docker service inspect` and `docker inspect --type task` output of a 20.10
    /// swarm, captured after each kind of update.
    fn fixture(name: &str) -> (Value, Vec<Value>) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/swarm");
        let read = |f: String| -> Value {
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{f}")).unwrap()).unwrap()
        };
        let service = read(format!("service-{name}.json"))[0].clone();
        let tasks = read(format!("tasks-{name}.json"))
            .as_array()
            .unwrap()
            .clone();
        (service, tasks)
    }

    #[test]
    fn a_start_first_update_of_two_replicas_converges() {
        let (s, t) = fixture("updated");
        assert_eq!(judge(&s, &t, "good:2"), Judged::Converged);
        // The same service, judged for an image it does not run: Swarm went back.
        assert!(matches!(judge(&s, &t, "good:3"), Judged::RolledBack { .. }));
    }

    #[test]
    fn swarm_rolling_back_by_itself_is_a_failure_not_a_success() {
        let (s, t) = fixture("rolled-back");
        assert_eq!(
            judge(&s, &t, "crash:1"),
            Judged::RolledBack {
                message: "rollback completed".into()
            }
        );
    }

    #[test]
    fn a_failed_task_of_the_new_image_fails_the_release_with_its_error() {
        let (s, t) = fixture("paused");
        match judge(&s, &t, "crash:1") {
            Judged::Failed { tasks } => {
                assert_eq!(tasks.len(), 2, "{tasks:?}");
                assert!(tasks[0].contains("task: non-zero exit (3)"), "{tasks:?}");
                assert!(tasks[0].contains("on node "), "{tasks:?}");
            }
            other => panic!("{other:?}"),
        }
        // Paused with no failed task of its own (e.g. the tasks were pruned): paused.
        let none: Vec<Value> = Vec::new();
        assert!(matches!(judge(&s, &none, "crash:1"), Judged::Paused { .. }));
    }

    #[test]
    fn an_update_under_way_is_not_yet_a_verdict() {
        let (mut s, t) = fixture("updated");
        s["UpdateStatus"]["State"] = "updating".into();
        assert_eq!(
            judge(&s, &t, "good:2"),
            Judged::Updating {
                running: 2,
                wanted: 2
            }
        );
        let (s, t) = fixture("updated");
        let one: Vec<Value> = t.into_iter().take(1).collect();
        assert_eq!(
            judge(&s, &one, "good:2"),
            Judged::Updating {
                running: 1,
                wanted: 2
            }
        );
    }
}
