//! The edge inputs: `routes`, `edge-image`, `edge-ports`, `drain-timeout`,
//! `verdict-window`. Without `routes` there is no edge and berth runs `up` as before.

use std::path::Path;

use serde_yaml_ng::Value;

use super::Parser;
use crate::edge::{parse_route, EdgeSettings, Route};
use crate::inputs::grammar::{list_items, list_lines};
use crate::inputs::{HealthSettings, TargetKind};

pub(super) fn parse_edge(
    p: &mut Parser,
    kind: TargetKind,
    compose_file: &Path,
    health: &HealthSettings,
) -> Option<EdgeSettings> {
    let lines = list_lines(&p.text("routes"));
    if lines.is_empty() {
        return None;
    }
    let mut routes = Vec::new();
    for line in &lines {
        match parse_route(line) {
            Ok(r) => routes.push(r),
            Err(why) => p.fail("routes", format!("{why}.")),
        }
    }
    if kind == TargetKind::Swarm {
        p.fail("routes", "`routes` switches a compose project through the host's edge; with `target: swarm`, Swarm's own start-first update and routing mesh do that. Remove `routes`, or use `target: compose`.");
    }
    let mut seen: Vec<(&str, Option<&str>)> = Vec::new();
    for r in &routes {
        let key = (r.host.as_str(), r.path.as_deref());
        if seen.contains(&key) {
            p.fail(
                "routes",
                format!(
                    "`{}{}` is routed twice; each host and path goes to one service.",
                    r.host,
                    r.path.as_deref().unwrap_or("")
                ),
            );
        }
        seen.push(key);
    }
    check_compose(p, &routes, compose_file);
    check_health_url(p, &routes, health);
    let image = p.text("edge-image");
    if image.is_empty() || image.starts_with('-') || image.chars().any(|c| c.is_whitespace()) {
        p.fail(
            "edge-image",
            format!("`{image}` is not an image reference, e.g. `caddy:2.8.4`."),
        );
    }
    let mut ports = Vec::new();
    for item in list_items(&p.text("edge-ports")) {
        match item.parse::<u16>() {
            Ok(n) if n > 0 && !ports.contains(&n) => ports.push(n),
            _ => p.fail(
                "edge-ports",
                format!("`{item}` is not a port (1-65535, each once), e.g. `edge-ports: 80,443`."),
            ),
        }
    }
    if ports.is_empty() {
        p.fail(
            "edge-ports",
            "is empty; the edge must listen on a port, e.g. `edge-ports: 80,443`.",
        );
    }
    Some(EdgeSettings {
        routes,
        image,
        ports,
        drain: p.duration("drain-timeout", "30s"),
        verdict_window: p.duration("verdict-window", "10s"),
    })
}

/// Every routed service exists in the compose file and does not publish its routed port
/// on the host: users reach it through the edge, and a published port would both bypass
/// the switch and stop a second container of it from starting beside the first.
fn check_compose(p: &mut Parser, routes: &[Route], compose_file: &Path) {
    let Ok(text) = std::fs::read_to_string(compose_file) else {
        return; // `compose-file` already says why.
    };
    let Ok(doc) = serde_yaml_ng::from_str::<Value>(&text) else {
        return; // compose itself says what is wrong with the file, before anything changes.
    };
    let services = &doc["services"];
    for r in routes {
        let service = &services[r.service.as_str()];
        if service.is_null() {
            p.fail(
                "routes",
                format!(
                    "`{}` is not a service of the compose file. Route one of its services.",
                    r.service
                ),
            );
            continue;
        }
        if !service["container_name"].is_null() {
            p.fail("routes", format!("service `{s}` sets `container_name`, so a second container of it cannot start beside the first during the switch. Remove `container_name` from `{s}` in the compose file (compose names its containers itself).", s = r.service));
        }
        let published = service["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|port| publishes(port, r.port));
        if published {
            p.fail("routes", format!("service `{s}` publishes port {port} on the host, and `routes` sends `{host}` to it through the edge. Remove that `ports:` entry of `{s}` from the compose file: users reach it through the edge, and a published port would bypass the switch and stop a new container of `{s}` from starting beside the old one.", s = r.service, port = r.port, host = r.host));
        }
    }
}

/// The candidates are proven by the health probe sent through the edge, so `health-url`
/// must be a URL the edge routes: a routed host, under a routed path.
fn check_health_url(p: &mut Parser, routes: &[Route], health: &HealthSettings) {
    if health.url_template.is_some() {
        p.fail("health-url", "has `{host}`, which probes each host directly; with `routes`, berth proves the new containers through the edge by the public host name. Use the public URL of a routed host, e.g. `https://staging.example.com/healthz`.");
        return;
    }
    let Some(url) = &health.url else {
        return;
    };
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    let path = url.path();
    let reached = routes.iter().any(|r| {
        r.host == host
            && r.path
                .as_deref()
                .is_none_or(|rp| path == rp || path.starts_with(&format!("{rp}/")))
    });
    if !reached && !routes.is_empty() {
        let r = &routes[0];
        p.fail("health-url", format!("goes to `{host}{path}`, which no line of `routes` sends to a service: berth proves the new containers by sending the probe through the edge, so it must reach a routed host and path. Point `health-url` at one, e.g. `https://{}{}/healthz`.", r.host, r.path.as_deref().unwrap_or("")));
    }
}

/// Whether one `ports:` entry (short or long syntax) publishes container port `target`.
fn publishes(entry: &Value, target: u16) -> bool {
    match entry {
        Value::Mapping(_) => {
            entry["target"].as_u64() == Some(u64::from(target))
                || entry["target"].as_str() == Some(target.to_string().as_str())
        }
        Value::Number(n) => n.as_u64() == Some(u64::from(target)),
        Value::String(s) => {
            let spec = s.split('/').next().unwrap_or("");
            let container = spec.rsplit(':').next().unwrap_or("");
            match container.split_once('-') {
                Some((lo, hi)) => {
                    matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&target))
                }
                None => container.parse::<u16>() == Ok(target),
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_routed_port_is_found_in_every_syntax() {
        let yes = [
            "8080:8080",
            "127.0.0.1:80:8080",
            "8080",
            "9000-9100:8000-8100/tcp",
        ];
        for s in yes {
            assert!(publishes(&Value::String(s.into()), 8080), "{s}");
        }
        assert!(publishes(
            &serde_yaml_ng::from_str("{target: 8080, published: 80}").unwrap(),
            8080
        ));
        assert!(publishes(&serde_yaml_ng::from_str("8080").unwrap(), 8080));
        for s in ["8080:9090", "127.0.0.1:8080:80", "8081"] {
            assert!(!publishes(&Value::String(s.into()), 8080), "{s}");
        }
    }
}
