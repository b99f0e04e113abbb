//! Where a Swarm service's update stands, from `docker service inspect` and `docker inspect
//! --type task` of its tasks: converged, still updating, failed (a task of the new spec
//! failed or was rejected: the crash-loop rule, in Swarm terms, decided at once), paused,
//! or rolled back by Swarm itself, which `docker stack deploy` reports as success
//! (docker/cli#6752). Pure: the engine polls, this judges.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// What the stack was before berth deployed, so that neither history nor the moment
/// before Swarm starts an update can pass for the release's verdict.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    /// Every task that existed: an old failure is not the release's.
    pub tasks: BTreeSet<String>,
    /// By service id: its task template and when its last update started. A service
    /// whose template changed has converged only once a newer update started (the status
    /// is empty for a moment after `stack deploy`, while the old tasks still run) and then
    /// by tasks created since.
    pub services: BTreeMap<String, (Value, String)>,
}

impl Baseline {
    /// The baseline of a stack from one look at it.
    pub fn of(services: &[Value], tasks: &[Value]) -> Baseline {
        Baseline {
            tasks: tasks
                .iter()
                .filter_map(|t| t["ID"].as_str().map(String::from))
                .collect(),
            services: services
                .iter()
                .filter_map(|s| {
                    let id = s["ID"].as_str()?.to_string();
                    let started = s["UpdateStatus"]["StartedAt"].as_str().unwrap_or("");
                    Some((id, (s["Spec"]["TaskTemplate"].clone(), started.to_string())))
                })
                .collect(),
        }
    }
}

fn parse_time(t: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

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
/// `down` holds the ids of the nodes that are down now.
pub fn judge(
    service: &Value,
    tasks: &[Value],
    image: &str,
    before: &Baseline,
    down: &BTreeSet<String>,
) -> Judged {
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
    let started = status["StartedAt"].as_str().unwrap_or("");
    let id = service["ID"].as_str().unwrap_or("");
    let mode = &service["Spec"]["Mode"];
    let job = mode.get("ReplicatedJob").is_some() || mode.get("GlobalJob").is_some();
    // Changed by this deploy but still on the same image (its environment, say): the old
    // tasks run that image too, so only an update started since, and its tasks, count.
    // When the image changed, the image alone tells the release's tasks apart, and a slot
    // the update leaves alone (a restore to the image it still runs) counts as it is.
    // Jobs have no update status: each deploy runs them again, as new tasks.
    let mut since = None;
    if let Some((template, started_before)) = before.services.get(id).filter(|_| !job) {
        let same_image = template["ContainerSpec"]["Image"]
            == service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"];
        if *template != service["Spec"]["TaskTemplate"] && same_image {
            if started.is_empty() || started == started_before {
                let wanted = wanted(service);
                return Judged::Updating { running: 0, wanted };
            }
            since = parse_time(started);
        }
    }
    let ours: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["Spec"]["ContainerSpec"]["Image"].as_str() == Some(image))
        .filter(
            |t| match (since, t["CreatedAt"].as_str().and_then(parse_time)) {
                (Some(since), Some(created)) => created >= since,
                _ => true,
            },
        )
        .collect();
    let failed: Vec<String> = ours
        .iter()
        .filter(|t| matches!(t["Status"]["State"].as_str(), Some("failed" | "rejected")))
        .filter(|t| t["ID"].as_str().is_none_or(|id| !before.tasks.contains(id)))
        .map(|t| describe(t))
        .collect();
    if !failed.is_empty() {
        return Judged::Failed { tasks: failed };
    }
    if state == "paused" {
        return Judged::Paused { message };
    }
    if job {
        // A job in the stack is done when this deploy's run of it completed (tasks that
        // were not there before), never "running". Each node of a global job's run
        // counts as one completion wanted.
        let new: Vec<&&Value> = ours
            .iter()
            .filter(|t| {
                t["ID"]
                    .as_str()
                    .is_some_and(|id| !before.tasks.contains(id))
            })
            .collect();
        let done = new
            .iter()
            .filter(|t| t["Status"]["State"] == "complete")
            .count() as u64;
        let want = match mode["ReplicatedJob"]["TotalCompletions"].as_u64() {
            Some(n) => n,
            None if mode.get("GlobalJob").is_some() => {
                let nodes: BTreeSet<&str> =
                    new.iter().filter_map(|t| t["NodeID"].as_str()).collect();
                nodes.len().max(1) as u64
            }
            None => 1,
        };
        return if done >= want {
            Judged::Converged
        } else {
            Judged::Updating {
                running: done,
                wanted: want,
            }
        };
    }
    let is_running =
        |t: &&&Value| t["DesiredState"] == "running" && t["Status"]["State"] == "running";
    let (running, wanted) = if mode.get("Global").is_some() {
        // One task on each node it should run on: the nodes that are up and hold a
        // task of it that is wanted running, of any image; each must run one of ours.
        let nodes: BTreeSet<&str> = tasks
            .iter()
            .filter(|t| t["DesiredState"] == "running")
            .filter_map(|t| t["NodeID"].as_str())
            .filter(|n| !down.contains(*n))
            .collect();
        let covered = nodes
            .iter()
            .filter(|n| {
                ours.iter()
                    .filter(is_running)
                    .any(|t| t["NodeID"].as_str() == Some(**n))
            })
            .count() as u64;
        (covered, nodes.len().max(1) as u64)
    } else {
        let running = ours.iter().filter(is_running).count() as u64;
        (running, wanted(service))
    };
    // Swarm's update waits for every old task to stop, which a task on a node that is
    // down never confirms: every replica running the release on the nodes that are up,
    // and no old task wanted anywhere else, is converged all the same.
    let on_down = |t: &Value| t["NodeID"].as_str().is_some_and(|n| down.contains(n));
    let live = |t: &Value| {
        !matches!(
            t["Status"]["State"].as_str(),
            Some("complete" | "shutdown" | "failed" | "rejected" | "orphaned" | "remove")
        )
    };
    let held_by_down_node = tasks.iter().any(|t| {
        on_down(t) && live(t) && t["Spec"]["ContainerSpec"]["Image"].as_str() != Some(image)
    }) && !tasks.iter().any(|t| {
        t["Spec"]["ContainerSpec"]["Image"].as_str() != Some(image)
            && t["DesiredState"] == "running"
            && !on_down(t)
    });
    if running >= wanted && (state != "updating" || held_by_down_node) {
        Judged::Converged
    } else {
        Judged::Updating { running, wanted }
    }
}

/// How many tasks the service wants running (a global service: at least one).
fn wanted(service: &Value) -> u64 {
    service["Spec"]["Mode"]["Replicated"]["Replicas"]
        .as_u64()
        .unwrap_or(1)
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
        assert_eq!(
            judge(&s, &t, "good:2", &Baseline::default(), &BTreeSet::new()),
            Judged::Converged
        );
        // The same service, judged for an image it does not run: Swarm went back.
        assert!(matches!(
            judge(&s, &t, "good:3", &Baseline::default(), &BTreeSet::new()),
            Judged::RolledBack { .. }
        ));
    }

    #[test]
    fn swarm_rolling_back_by_itself_is_a_failure_not_a_success() {
        let (s, t) = fixture("rolled-back");
        assert_eq!(
            judge(&s, &t, "crash:1", &Baseline::default(), &BTreeSet::new()),
            Judged::RolledBack {
                message: "rollback completed".into()
            }
        );
    }

    #[test]
    fn a_failed_task_of_the_new_image_fails_the_release_with_its_error() {
        let (s, t) = fixture("paused");
        match judge(&s, &t, "crash:1", &Baseline::default(), &BTreeSet::new()) {
            Judged::Failed { tasks } => {
                assert_eq!(tasks.len(), 2, "{tasks:?}");
                assert!(tasks[0].contains("task: non-zero exit (3)"), "{tasks:?}");
                assert!(tasks[0].contains("on node "), "{tasks:?}");
            }
            other => panic!("{other:?}"),
        }
        // Paused with no failed task of its own (e.g. the tasks were pruned): paused.
        let none: Vec<Value> = Vec::new();
        assert!(matches!(
            judge(&s, &none, "crash:1", &Baseline::default(), &BTreeSet::new()),
            Judged::Paused { .. }
        ));
    }

    #[test]
    fn an_update_under_way_is_not_yet_a_verdict() {
        let (mut s, t) = fixture("updated");
        s["UpdateStatus"]["State"] = "updating".into();
        assert_eq!(
            judge(&s, &t, "good:2", &Baseline::default(), &BTreeSet::new()),
            Judged::Updating {
                running: 2,
                wanted: 2
            }
        );
        let (s, t) = fixture("updated");
        let one: Vec<Value> = t.into_iter().take(1).collect();
        assert_eq!(
            judge(&s, &one, "good:2", &Baseline::default(), &BTreeSet::new()),
            Judged::Updating {
                running: 1,
                wanted: 2
            }
        );
    }

    /// The history before the deploy is not the release's: an old failed task of the
    /// same image does not fail it, and a changed service whose update has not started
    /// yet (the status still the old one) is not converged by its old tasks.
    #[test]
    fn only_what_happened_since_the_deploy_counts() {
        let (s, t) = fixture("paused");
        let before = Baseline::of(std::slice::from_ref(&s), &t);
        // Nothing new since the look: the old failures are history; the one task of
        // the image that is not failed is not running, so it is still updating.
        assert!(matches!(
            judge(&s, &t, "crash:1", &before, &BTreeSet::new()),
            Judged::Paused { .. }
        ));
        let (s, t) = fixture("updated");
        let mut changed = Baseline::of(std::slice::from_ref(&s), &[]);
        let id = s["ID"].as_str().unwrap().to_string();
        changed.services.get_mut(&id).unwrap().0 =
            serde_json::json!({"ContainerSpec": {"Image": "good:2", "Env": ["A=1"]}});
        // The template changed, but the update status is the one from before the deploy.
        assert_eq!(
            judge(&s, &t, "good:2", &changed, &BTreeSet::new()),
            Judged::Updating {
                running: 0,
                wanted: 2
            }
        );
        // An update started since: its tasks, created after it started, converge it.
        changed.services.get_mut(&id).unwrap().1 = "2026-11-25T08:31:00Z".into();
        assert_eq!(
            judge(&s, &t, "good:2", &changed, &BTreeSet::new()),
            Judged::Converged
        );
        // Tasks created before the update started do not count (same image: they may be
        // the old ones).
        let mut s2 = s.clone();
        s2["UpdateStatus"]["StartedAt"] = "2026-11-25T08:31:22Z".into();
        assert_eq!(
            judge(&s2, &t, "good:2", &changed, &BTreeSet::new()),
            Judged::Updating {
                running: 0,
                wanted: 2
            }
        );
    }

    /// An update whose last old task is on a node that went down never completes in
    /// Swarm's eyes; every replica of the release running on the nodes that are up is
    /// converged. While an old task is still wanted on a node that is up, it is not.
    #[test]
    fn an_update_held_only_by_a_node_that_is_down_is_converged() {
        let (mut s, mut t) = fixture("updated");
        s["UpdateStatus"]["State"] = "updating".into();
        let none = BTreeSet::new();
        assert!(matches!(
            judge(&s, &t, "good:2", &Baseline::default(), &none),
            Judged::Updating { .. }
        ));
        // The old tasks are wanted shut down; one of them is on a node that is down.
        let old = t
            .iter()
            .position(|x| x["Spec"]["ContainerSpec"]["Image"] == "good:1")
            .unwrap();
        t[old]["NodeID"] = "dead-node".into();
        let down = BTreeSet::from(["dead-node".to_string()]);
        assert_eq!(
            judge(&s, &t, "good:2", &Baseline::default(), &down),
            Judged::Converged
        );
        // An old task still wanted running on a node that is up holds it.
        let other = t
            .iter()
            .rposition(|x| x["Spec"]["ContainerSpec"]["Image"] == "good:1")
            .unwrap();
        assert_ne!(other, old);
        t[other]["DesiredState"] = "running".into();
        assert!(matches!(
            judge(&s, &t, "good:2", &Baseline::default(), &down),
            Judged::Updating { .. }
        ));
    }

    /// A global service wants one task on each node it runs on (not 1); a job in the
    /// stack is done when it completed, never "running".
    #[test]
    fn global_services_and_jobs_are_judged_by_their_mode() {
        let (mut s, mut t) = fixture("updated");
        s["Spec"]["Mode"] = serde_json::json!({"Global": {}});
        let none = BTreeSet::new();
        // Both tasks of the image on one node: that node is covered.
        assert_eq!(
            judge(&s, &t, "good:2", &Baseline::default(), &none),
            Judged::Converged
        );
        // A second node where only the old image is wanted running: not yet.
        let old = t
            .iter()
            .position(|x| x["Spec"]["ContainerSpec"]["Image"] == "good:1")
            .unwrap();
        t[old]["NodeID"] = "node-two".into();
        t[old]["DesiredState"] = "running".into();
        assert_eq!(
            judge(&s, &t, "good:2", &Baseline::default(), &none),
            Judged::Updating {
                running: 1,
                wanted: 2
            }
        );
        let (mut s, mut t) = fixture("updated");
        s["Spec"]["Mode"] =
            serde_json::json!({"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}});
        assert!(matches!(
            judge(&s, &t, "good:2", &Baseline::default(), &none),
            Judged::Updating { running: 0, .. }
        ));
        let ours = t
            .iter()
            .position(|x| x["Spec"]["ContainerSpec"]["Image"] == "good:2")
            .unwrap();
        t[ours]["Status"]["State"] = "complete".into();
        assert_eq!(
            judge(&s, &t, "good:2", &Baseline::default(), &none),
            Judged::Converged
        );
    }

    /// A restore to the image some slots still run: the update leaves those slots alone,
    /// and their tasks, created before it started, are the release's all the same.
    #[test]
    fn when_the_image_changed_the_image_alone_decides() {
        let (mut s, t) = fixture("updated");
        let id = s["ID"].as_str().unwrap().to_string();
        let mut before = Baseline::default();
        before.services.insert(
            id,
            (
                serde_json::json!({"ContainerSpec": {"Image": "crash:1"}}),
                "2026-11-25T08:31:00Z".into(),
            ),
        );
        s["UpdateStatus"]["StartedAt"] = "2026-11-25T08:31:22Z".into();
        assert_eq!(
            judge(&s, &t, "good:2", &before, &BTreeSet::new()),
            Judged::Converged
        );
    }

    /// A job's completion from before the deploy is not this deploy's run.
    #[test]
    fn a_job_is_judged_by_its_new_run_only() {
        let (mut s, mut t) = fixture("updated");
        s["Spec"]["Mode"] = serde_json::json!({"ReplicatedJob": {"TotalCompletions": 1}});
        let ours = t
            .iter()
            .position(|x| x["Spec"]["ContainerSpec"]["Image"] == "good:2")
            .unwrap();
        t[ours]["Status"]["State"] = "complete".into();
        let before = Baseline::of(std::slice::from_ref(&s), &t);
        assert!(matches!(
            judge(&s, &t, "good:2", &before, &BTreeSet::new()),
            Judged::Updating { running: 0, .. }
        ));
    }
}
