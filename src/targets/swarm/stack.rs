//! A release's compose model, as `docker compose config` resolved it on the manager, made
//! into a stack file that `docker stack deploy` accepts: the same interpolation and env
//! files as the compose target, every image pinned by digest, and start-first updates
//! where they can work.
//!
//! `compose config` writes the compose-spec format; `stack deploy` reads the v3 schema,
//! which rejects parts of it (docs/swarm-research.md §1.5). What is changed, and why:
//! - the top-level `name` goes (not in v3); the project name is the stack name;
//! - a network or volume named `<project>_<key>` (compose's default) loses the name, so
//!   the stack scopes it as `<stack>_<key>` (a literal name would be used as is);
//! - `ports[].published` becomes a number; a port bound to one host address (`host_ip`)
//!   is refused, since Swarm would publish it on every address;
//! - a long-form `depends_on` becomes its list of services (Swarm ignores it anyway);
//! - `cpus` limits and reservations become strings;
//! - keys `compose config` writes as `null` go, as do keys with no meaning in a stack
//!   (`build`, `pull_policy`, `profiles`, `container_name`, `develop`);
//! - a service that does not choose `deploy.update_config.order` gets `start-first`,
//!   unless it publishes a port in `mode: host` (two tasks on one node cannot share it),
//!   writes to a volume (two tasks would write the same data) or allows one task per node.
//!
//! The env files' values end up in each service's `environment`, so the stack file holds
//! secrets: it is written 0600 and never printed.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Keys of a compose service that a stack has no use for, dropped from the stack file.
const DROPPED: &[&str] = &[
    "build",
    "pull_policy",
    "profiles",
    "container_name",
    "develop",
];

/// The stack file, and what berth decided for it.
#[derive(Debug, Clone, PartialEq)]
pub struct StackFile {
    pub file: Value,
    /// Services berth set to `start-first` (they did not choose an order).
    pub start_first: Vec<String>,
    /// Services that publish a port in `mode: host` and did not choose an order: they
    /// update stop-first, with a moment without a task on that node.
    pub host_ports: Vec<String>,
    /// Services left stop-first for another reason, and why: a writable volume (two tasks
    /// would share its data) or one task per node at most (the new one could not start).
    pub stop_first: Vec<(String, &'static str)>,
    /// Start-first services whose compose file sets no health check. Unless their image
    /// has one, Swarm counts a new task running the moment its container starts, and
    /// start-first stops the old task for a new one that may exit a moment later
    /// (docs/swarm-research.md §5a): the target checks their images and warns.
    pub no_healthcheck: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    #[error("service `{service}` has no image: a Swarm service runs an image from a registry. Build it with berth (`images`) or name one in the compose file.")]
    NoImage { service: String },
    #[error("service `{service}` publishes port {published} on {host_ip} only; Swarm publishes a port on every address of every node, so that port would be exposed wider than the compose file says. Remove the address (and restrict access by firewall), or keep `target: compose` for this app.")]
    HostIp {
        service: String,
        published: String,
        host_ip: String,
    },
    #[error("service `{service}` publishes `{published}`, which is not a port number; Swarm publishes single ports only.")]
    PortRange { service: String, published: String },
    #[error("`docker compose config` gave no services to deploy")]
    NoServices,
}

/// The stack file for `model` (`docker compose config --format json` of project
/// `project`), with each service in `pins` running its pinned image.
pub fn stack_file(
    model: &Value,
    project: &str,
    pins: &BTreeMap<String, String>,
) -> Result<StackFile, StackError> {
    let mut file = model.clone();
    let top = file.as_object_mut().ok_or(StackError::NoServices)?;
    top.remove("name");
    for section in ["networks", "volumes"] {
        if let Some(Value::Object(items)) = top.get_mut(section) {
            for (key, def) in items.iter_mut() {
                // An external one is looked up by its name: it stays.
                if let Some(def) = def.as_object_mut().filter(|d| !is_true(d.get("external"))) {
                    if def.get("name").and_then(Value::as_str) == Some(&format!("{project}_{key}"))
                    {
                        def.remove("name");
                    }
                }
            }
        }
    }
    let services = match top.get_mut("services") {
        Some(Value::Object(s)) if !s.is_empty() => s,
        _ => return Err(StackError::NoServices),
    };
    let mut stack = StackFile {
        file: Value::Null,
        start_first: Vec::new(),
        host_ports: Vec::new(),
        stop_first: Vec::new(),
        no_healthcheck: Vec::new(),
    };
    for (name, def) in services.iter_mut() {
        let Some(def) = def.as_object_mut() else {
            continue;
        };
        service(name, def, pins, &mut stack)?;
    }
    stack.file = file;
    Ok(stack)
}

fn service(
    name: &str,
    def: &mut Map<String, Value>,
    pins: &BTreeMap<String, String>,
    stack: &mut StackFile,
) -> Result<(), StackError> {
    def.retain(|k, v| !v.is_null() && !DROPPED.contains(&k.as_str()));
    match pins.get(name) {
        Some(pin) => {
            def.insert("image".into(), Value::String(pin.clone()));
        }
        None if def.get("image").and_then(Value::as_str).is_none() => {
            return Err(StackError::NoImage {
                service: name.into(),
            })
        }
        None => {}
    }
    let host_mode = ports(name, def)?;
    let def_volumes_writable = writable_volumes(def);
    if let Some(Value::Object(deps)) = def.get("depends_on") {
        let list = deps.keys().cloned().map(Value::String).collect();
        def.insert("depends_on".into(), Value::Array(list));
    }
    let deploy = def
        .entry("deploy")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(deploy) = deploy.as_object_mut() else {
        return Ok(());
    };
    if let Some(Value::Object(resources)) = deploy.get_mut("resources") {
        for kind in ["limits", "reservations"] {
            if let Some(Value::Object(r)) = resources.get_mut(kind) {
                if let Some(cpus) = r.get("cpus").filter(|c| c.is_number()).cloned() {
                    r.insert("cpus".into(), Value::String(cpus.to_string()));
                }
            }
        }
    }
    let chosen = deploy
        .get("update_config")
        .is_some_and(|u| u.get("order").is_some());
    if chosen {
        return Ok(());
    }
    if host_mode {
        stack.host_ports.push(name.into());
        return Ok(());
    }
    if let Some(why) = start_first_unsafe(def_volumes_writable, deploy) {
        stack.stop_first.push((name.into(), why));
        return Ok(());
    }
    let update = deploy
        .entry("update_config")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(update) = update.as_object_mut() {
        update.insert("order".into(), Value::String("start-first".into()));
        stack.start_first.push(name.into());
        if !has_healthcheck(def) {
            stack.no_healthcheck.push(name.into());
        }
    }
    Ok(())
}

/// Whether the compose file gives the service a health check of its own (not disabled).
fn has_healthcheck(def: &Map<String, Value>) -> bool {
    let Some(hc) = def.get("healthcheck").and_then(Value::as_object) else {
        return false;
    };
    let none = hc
        .get("test")
        .and_then(Value::as_array)
        .and_then(|t| t.first())
        .and_then(Value::as_str)
        == Some("NONE");
    !is_true(hc.get("disable")) && !none && hc.get("test").is_some()
}

fn is_true(v: Option<&Value>) -> bool {
    v.is_some_and(|v| v.as_bool() == Some(true) || v.is_object())
}

/// Whether the service mounts a volume or bind it can write: two tasks of it at once would
/// write the same data (a database's files).
fn writable_volumes(def: &Map<String, Value>) -> bool {
    def.get("volumes")
        .and_then(Value::as_array)
        .is_some_and(|vs| {
            vs.iter().any(|v| {
                matches!(v["type"].as_str(), Some("volume" | "bind"))
                    && !is_true(v.get("read_only"))
            })
        })
}

/// Why start-first would be wrong for a service, if it would.
fn start_first_unsafe(writable: bool, deploy: &Map<String, Value>) -> Option<&'static str> {
    if writable {
        return Some("it writes to a volume, which two tasks would share during the update");
    }
    let per_node = deploy
        .get("placement")
        .and_then(|p| p.get("max_replicas_per_node"))
        .and_then(Value::as_u64);
    if per_node.is_some_and(|n| n <= 1) {
        return Some("`max_replicas_per_node: 1` leaves no room on a node for the new task");
    }
    None
}

/// Makes the service's ports v3 ones; whether one is published in `mode: host`.
fn ports(name: &str, def: &mut Map<String, Value>) -> Result<bool, StackError> {
    let mut host_mode = false;
    let Some(Value::Array(ports)) = def.get_mut("ports") else {
        return Ok(false);
    };
    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
        let published = match port.get("published") {
            Some(Value::String(p)) => Some(p.clone()),
            Some(v) => Some(v.to_string()),
            None => None,
        };
        if let Some(host_ip) = port
            .remove("host_ip")
            .and_then(|h| h.as_str().map(String::from))
        {
            if !matches!(host_ip.as_str(), "0.0.0.0" | "::" | "") {
                return Err(StackError::HostIp {
                    service: name.into(),
                    published: published.unwrap_or_default(),
                    host_ip,
                });
            }
        }
        if let Some(p) = published {
            let number: u16 = p.parse().map_err(|_| StackError::PortRange {
                service: name.into(),
                published: p.clone(),
            })?;
            port.insert("published".into(), Value::from(number));
        }
        port.remove("app_protocol");
        port.remove("name");
        host_mode |= port.get("mode").and_then(Value::as_str) == Some("host");
    }
    Ok(host_mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `docker compose -p shop config --format json` (Compose 2.40) printed for a
    /// two-service file with an env file, a named volume, short and long ports.
    const MODEL: &str = r#"{
      "name": "shop",
      "networks": {"default": {"name": "shop_default", "ipam": {}}},
      "services": {
        "db": {
          "command": null,
          "deploy": {"update_config": {"order": "stop-first"}, "resources": {}, "placement": {}},
          "entrypoint": null,
          "image": "postgres:16",
          "networks": {"default": null},
          "ports": [{"mode": "host", "target": 5432, "published": "5432", "protocol": "tcp"}],
          "volumes": [{"type": "volume", "source": "data", "target": "/var/lib/postgresql/data", "volume": {}}]
        },
        "web": {
          "command": null,
          "depends_on": {"db": {"condition": "service_started", "required": true}},
          "deploy": {"resources": {"limits": {"cpus": 0.5}}, "placement": {}},
          "entrypoint": null,
          "environment": {"DB_PASSWORD": "s3cret", "GREETING": "hi"},
          "image": "reg.example:5000/shop/web:latest",
          "build": {"context": "."},
          "networks": {"default": null},
          "ports": [{"mode": "ingress", "target": 80, "published": "8080", "protocol": "tcp"}]
        },
        "cache": {
          "image": "reg.example:5000/shop/cache:1",
          "volumes": [{"type": "volume", "source": "data", "target": "/data", "volume": {}}]
        },
        "static": {
          "image": "reg.example:5000/shop/static:1",
          "volumes": [{"type": "bind", "source": "/srv/www", "target": "/www", "read_only": true}]
        },
        "worker": {
          "image": "reg.example:5000/shop/worker:1",
          "ports": [{"mode": "host", "target": 9000, "published": "9000", "protocol": "tcp"}]
        }
      },
      "volumes": {"data": {"name": "shop_data"}, "shared": {"name": "elsewhere"},
                  "outside": {"name": "shop_outside", "external": true}}
    }"#;

    fn pins() -> BTreeMap<String, String> {
        BTreeMap::from([(
            "web".to_string(),
            "reg.example:5000/shop/web@sha256:aa".to_string(),
        )])
    }

    #[test]
    fn a_compose_model_becomes_a_v3_stack_file_with_pinned_images() {
        let model: Value = serde_json::from_str(MODEL).unwrap();
        let stack = stack_file(&model, "shop", &pins()).unwrap();
        let f = &stack.file;
        assert!(f.get("name").is_none());
        assert!(f["networks"]["default"].get("name").is_none());
        assert!(f["volumes"]["data"].get("name").is_none());
        assert_eq!(f["volumes"]["shared"]["name"], "elsewhere");
        let web = &f["services"]["web"];
        assert_eq!(web["image"], "reg.example:5000/shop/web@sha256:aa");
        assert!(web.get("command").is_none() && web.get("build").is_none());
        assert_eq!(web["ports"][0]["published"], 8080);
        assert_eq!(web["depends_on"], serde_json::json!(["db"]));
        assert_eq!(web["deploy"]["resources"]["limits"]["cpus"], "0.5");
        assert_eq!(web["environment"]["DB_PASSWORD"], "s3cret");
        // Only the services that chose nothing get start-first; host ports keep stop-first.
        assert_eq!(web["deploy"]["update_config"]["order"], "start-first");
        assert_eq!(
            f["services"]["db"]["deploy"]["update_config"]["order"],
            "stop-first"
        );
        assert!(f["services"]["worker"]["deploy"]
            .get("update_config")
            .is_none());
        assert_eq!(stack.start_first, ["static", "web"]);
        assert_eq!(stack.no_healthcheck, ["static", "web"]);
        assert_eq!(stack.host_ports, ["worker"]);
        // A service that writes to a volume keeps stop-first: two tasks, one database.
        assert_eq!(stack.stop_first.len(), 1);
        assert_eq!(stack.stop_first[0].0, "cache");
        assert!(f["services"]["cache"]["deploy"]
            .get("update_config")
            .is_none());
        // An external volume is looked up by its own name.
        assert_eq!(f["volumes"]["outside"]["name"], "shop_outside");
        // Images not pinned by berth stay as compose resolved them.
        assert_eq!(f["services"]["db"]["image"], "postgres:16");
    }

    #[test]
    fn a_port_bound_to_one_address_or_a_range_is_refused_naming_the_service() {
        let mut model: Value = serde_json::from_str(MODEL).unwrap();
        model["services"]["web"]["ports"][0]["host_ip"] = "127.0.0.1".into();
        let e = stack_file(&model, "shop", &pins()).unwrap_err();
        assert!(matches!(e, StackError::HostIp { ref service, .. } if service == "web"));
        assert!(e.to_string().contains("127.0.0.1"), "{e}");
        let mut model: Value = serde_json::from_str(MODEL).unwrap();
        model["services"]["web"]["ports"][0]["published"] = "8080-8081".into();
        let e = stack_file(&model, "shop", &pins()).unwrap_err();
        assert!(matches!(e, StackError::PortRange { .. }), "{e}");
        let mut model: Value = serde_json::from_str(MODEL).unwrap();
        model["services"]["web"]["ports"][0]["host_ip"] = "0.0.0.0".into();
        assert!(stack_file(&model, "shop", &pins()).is_ok());
    }

    #[test]
    fn a_service_without_an_image_or_a_model_without_services_is_refused() {
        let mut model: Value = serde_json::from_str(MODEL).unwrap();
        model["services"]["db"]
            .as_object_mut()
            .unwrap()
            .remove("image");
        let e = stack_file(&model, "shop", &pins()).unwrap_err();
        assert_eq!(
            e,
            StackError::NoImage {
                service: "db".into()
            }
        );
        let e = stack_file(&serde_json::json!({"services": {}}), "shop", &pins()).unwrap_err();
        assert_eq!(e, StackError::NoServices);
    }

    #[test]
    fn start_first_services_without_a_health_check_of_their_own_are_named() {
        let model = serde_json::json!({"services": {
            "checked": {"image": "r/a:1", "healthcheck": {"test": ["CMD", "true"]}},
            "disabled": {"image": "r/b:1", "healthcheck": {"disable": true}},
            "none": {"image": "r/c:1", "healthcheck": {"test": ["NONE"]}},
            "plain": {"image": "r/d:1"},
        }});
        let stack = stack_file(&model, "shop", &BTreeMap::new()).unwrap();
        assert_eq!(stack.start_first, ["checked", "disabled", "none", "plain"]);
        assert_eq!(stack.no_healthcheck, ["disabled", "none", "plain"]);
    }

    #[test]
    fn one_task_per_node_keeps_stop_first() {
        let model = serde_json::json!({"services": {"api": {
            "image": "r/api:1",
            "deploy": {"placement": {"max_replicas_per_node": 1}}
        }}});
        let stack = stack_file(&model, "shop", &BTreeMap::new()).unwrap();
        assert!(stack.start_first.is_empty());
        assert_eq!(stack.stop_first[0].0, "api");
    }
}
