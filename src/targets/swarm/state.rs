//! A whole stack judged from one look at the manager ([`crate::remote::swarm::stack_state`]):
//! each service by [`judge`], then the stack: failed as soon as one service failed,
//! converged once every one has.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::status::{judge, Baseline, Judged};
use crate::remote::swarm::{NODES_MARK, SERVICES_MARK, TASKS_MARK};

/// What the stack runs: its services and their tasks, as the manager reported them.
#[derive(Debug, Default)]
pub struct StackState {
    pub services: Vec<Value>,
    pub tasks: Vec<Value>,
    /// Nodes that are not `Ready`: `<hostname> (<id>) is <status>`.
    pub nodes_down: Vec<String>,
    /// Their full ids.
    pub down_ids: BTreeSet<String>,
}

/// Reads [`crate::remote::swarm::stack_state`]'s output. Empty output: no service.
pub fn parse_stack_state(out: &str) -> Result<StackState, String> {
    if out.trim().is_empty() {
        return Ok(StackState::default());
    }
    let rest = out
        .split_once(&format!("{SERVICES_MARK}\n"))
        .ok_or("no service list")?
        .1;
    let (services, tasks) = rest
        .split_once(&format!("{TASKS_MARK}\n"))
        .ok_or("no task list")?;
    let (tasks, nodes) = tasks
        .split_once(&format!("{NODES_MARK}\n"))
        .unwrap_or((tasks, ""));
    let down_ids = nodes
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (id, status) = (w.next()?, w.next()?);
            (status != "Ready").then(|| id.to_string())
        })
        .collect();
    let nodes_down = nodes
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (id, status, _availability) = (w.next()?, w.next()?, w.next()?);
            let host = w.collect::<Vec<_>>().join(" ");
            let id: String = id.chars().take(12).collect();
            (status != "Ready").then(|| format!("node {host} ({id}) is {status}"))
        })
        .collect();
    let array = |text: &str, what: &str| -> Result<Vec<Value>, String> {
        // A service removed between the list and the inspect makes the inspect print
        // nothing at all when it was the only one.
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_str(text).map_err(|e| format!("{what}: {e}"))
    };
    Ok(StackState {
        services: array(services, "docker service inspect")?,
        tasks: array(tasks, "docker inspect --type task")?,
        nodes_down,
        down_ids,
    })
}

/// The stack as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackVerdict {
    /// Every service runs its deployed image on every replica.
    Converged,
    /// Not there yet: the services still updating, described.
    Updating(Vec<String>),
    /// The release failed: each failed service, described.
    Failed(Vec<String>),
}

/// Each service of stack `project` that berth deployed, judged against the image it
/// deployed to it (`images`: compose service name to image). Swarm names a stack's
/// services `<project>_<service>`.
pub fn judge_stack(
    state: &StackState,
    project: &str,
    images: &BTreeMap<String, String>,
    before: &Baseline,
) -> Vec<(String, Judged)> {
    images
        .iter()
        .map(|(name, image)| {
            let full = format!("{project}_{name}");
            let Some(service) = state
                .services
                .iter()
                .find(|s| s["Spec"]["Name"].as_str() == Some(full.as_str()))
            else {
                let tasks = vec![format!("service {full} does not exist on the manager")];
                return (name.clone(), Judged::Failed { tasks });
            };
            let id = service["ID"].as_str().unwrap_or_default();
            let tasks: Vec<Value> = state
                .tasks
                .iter()
                .filter(|t| t["ServiceID"].as_str() == Some(id))
                .cloned()
                .collect();
            (
                name.clone(),
                judge(service, &tasks, image, before, &state.down_ids),
            )
        })
        .collect()
}

/// The stack's verdict from its services' judgements.
pub fn stack_verdict(judged: &[(String, Judged)]) -> StackVerdict {
    let mut failed = Vec::new();
    let mut updating = Vec::new();
    for (name, j) in judged {
        match j {
            Judged::Converged => {}
            Judged::Updating { running, wanted } => {
                updating.push(format!("{name}: {running}/{wanted} replicas updated"))
            }
            Judged::Failed { tasks } => failed.push(format!("{name}: {}", tasks.join("; "))),
            Judged::Paused { message } => {
                failed.push(format!("{name}: Swarm paused the update ({message})"))
            }
            Judged::RolledBack { message } => {
                failed.push(format!("{name}: Swarm rolled the service back ({message})"))
            }
        }
    }
    if !failed.is_empty() {
        StackVerdict::Failed(failed)
    } else if !updating.is_empty() {
        StackVerdict::Updating(updating)
    } else {
        StackVerdict::Converged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/swarm");
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{name}")).unwrap()).unwrap()
    }

    /// The output of `stack_state` for one service, from the real fixtures.
    fn output(name: &str) -> String {
        format!(
            "{SERVICES_MARK}\n{}\n{TASKS_MARK}\n{}\n",
            fixture(&format!("service-{name}.json")),
            fixture(&format!("tasks-{name}.json"))
        )
    }

    #[test]
    fn a_stack_is_read_and_judged_service_by_service() {
        let mut state = parse_stack_state(&output("updated")).unwrap();
        assert_eq!(state.services.len(), 1);
        assert!(!state.tasks.is_empty());
        // The fixture's service was made by `docker service create`: named as a stack's.
        state.services[0]["Spec"]["Name"] = "shop_web".into();
        let (project, service) = ("shop", "web");
        let images = BTreeMap::from([(service.to_string(), "good:2".to_string())]);
        let judged = judge_stack(&state, project, &images, &Default::default());
        assert_eq!(judged, [(service.to_string(), Judged::Converged)]);
        assert_eq!(stack_verdict(&judged), StackVerdict::Converged);
        // A service berth deployed that the manager does not have: failed.
        let more = BTreeMap::from([
            (service.to_string(), "good:2".to_string()),
            ("gone".to_string(), "x:1".to_string()),
        ]);
        match stack_verdict(&judge_stack(&state, project, &more, &Default::default())) {
            StackVerdict::Failed(f) => assert!(f[0].contains("does not exist"), "{f:?}"),
            other => panic!("{other:?}"),
        }
        assert!(parse_stack_state("").unwrap().services.is_empty());
        assert!(parse_stack_state("garbage").is_err());
    }

    #[test]
    fn one_failed_service_fails_the_stack_whatever_the_others_do() {
        let judged = vec![
            ("db".to_string(), Judged::Converged),
            (
                "web".to_string(),
                Judged::Updating {
                    running: 1,
                    wanted: 2,
                },
            ),
            (
                "worker".to_string(),
                Judged::RolledBack {
                    message: "rollback completed".into(),
                },
            ),
        ];
        assert_eq!(
            stack_verdict(&judged),
            StackVerdict::Failed(vec![
                "worker: Swarm rolled the service back (rollback completed)".into()
            ])
        );
        assert_eq!(
            stack_verdict(&judged[..2]),
            StackVerdict::Updating(vec!["web: 1/2 replicas updated".into()])
        );
    }
}
