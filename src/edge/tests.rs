use super::*;

#[test]
fn a_route_line_reads_as_service_port_host_and_path() {
    let r = parse_route("web:8080 Staging.Example.com/api/").unwrap();
    assert_eq!(
        r,
        Route {
            service: "web".into(),
            port: 8080,
            host: "staging.example.com".into(),
            path: Some("/api".into()),
        }
    );
    assert_eq!(parse_route("web:80 localhost").unwrap().path, None);
    for bad in [
        "web staging.example.com",
        "web:0 a.com",
        "web:8080",
        "web:8080 https://a.com",
        "web:8080 a.com:443",
        "web:8080 a.com/x\"y",
        "we b:80 a.com",
        "web:80 a.com extra",
    ] {
        assert!(parse_route(bad).is_err(), "{bad}");
    }
}

/// The routes of two projects, assembled by the host's own shell as a load does it,
/// make one config Caddy accepts (`caddy validate`), with longer paths first and a
/// candidate's header route before the route it shadows.
#[test]
fn the_host_assembles_every_projects_routes_into_one_config_caddy_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path();
    std::fs::create_dir_all(e.join("routes")).unwrap();
    let web = |path: Option<&str>| Route {
        service: "web".into(),
        port: 8080,
        host: "shop.test".into(),
        path: path.map(String::from),
    };
    let shop = routes_file("shop", "R2", &[web(None), web(Some("/api"))], None)
        + &routes_file("shop", "R3", &[web(None)], Some("tok123"));
    std::fs::write(e.join("routes/shop"), shop).unwrap();
    std::fs::write(
        e.join("routes/blog"),
        routes_file("blog", "R1", &[web(Some("/blog"))], None),
    )
    .unwrap();
    std::fs::write(e.join("head.json"), head_json(&[8080, 443])).unwrap();
    std::fs::write(e.join("foot.json"), fallback_route()).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{FUNCTIONS}E=$1; edge_assemble"))
        .arg("sh")
        .arg(e)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(e.join("caddy.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).expect(&text);
    let routes = v["apps"]["http"]["servers"]["berth"]["routes"]
        .as_array()
        .unwrap();
    let dials: Vec<String> = routes
        .iter()
        .map(|r| {
            let m = &r["match"][0];
            format!(
                "{} {} {}",
                m["path"][0].as_str().unwrap_or("-"),
                m["header"].is_object(),
                r["handle"][0]["upstreams"][0]["dial"]
                    .as_str()
                    .unwrap_or("404")
            )
        })
        .collect();
    assert_eq!(
        dials,
        [
            "/blog false web.r1.blog:8080",
            "/api false web.r2.shop:8080",
            "- true web.r3.shop:8080",
            "- false web.r2.shop:8080",
            "- false 404",
        ]
    );
    // The admin API is no TCP port at all.
    assert_eq!(v["admin"]["listen"], "unix//tmp/berth-edge-admin.sock");
    assert_eq!(
        v["apps"]["http"]["servers"]["berth-tls"]["routes"],
        v["apps"]["http"]["servers"]["berth"]["routes"]
    );
    let caddy = std::process::Command::new("caddy")
        .args(["validate", "--config"])
        .arg(e.join("caddy.json"))
        .output()
        .expect("caddy is missing; run scripts/test (Debian's caddy)");
    assert!(
        caddy.status.success(),
        "{}",
        String::from_utf8_lossy(&caddy.stderr)
    );
}

#[test]
fn a_routed_service_joins_the_edge_under_its_releases_alias_and_keeps_default() {
    let edge = Edge::for_port(8080);
    let v = override_service("shop", "web", "R9", true, &edge);
    assert_eq!(v["labels"][RELEASE_LABEL], "R9");
    assert_eq!(
        v["networks"]["berth-edge-8080-shop"]["aliases"][0],
        "web.r9.shop"
    );
    assert!(v["networks"]["default"].is_object());
    assert!(
        override_service("shop", "web", "R9", false, &edge)["networks"]
            .get("default")
            .is_none()
    );
}

/// A host and path belong to one project: a load that would take another project's is
/// refused before the edge is touched, and the project's own routes stay as they were.
#[test]
fn a_load_that_claims_another_projects_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path();
    std::fs::create_dir_all(e.join("routes")).unwrap();
    let web = |host: &str| Route {
        service: "web".into(),
        port: 8080,
        host: host.into(),
        path: None,
    };
    std::fs::write(
        e.join("routes/blog"),
        routes_file("blog", "R1", &[web("blog.test")], None),
    )
    .unwrap();
    std::fs::write(
        e.join("routes/shop"),
        routes_file("shop", "R1", &[web("shop.test")], None),
    )
    .unwrap();
    let new = e.join("new");
    std::fs::write(&new, routes_file("shop", "R2", &[web("blog.test")], None)).unwrap();
    // A candidate's header-only route to the same host claims nothing.
    let candidate = e.join("candidate");
    std::fs::write(
        &candidate,
        routes_file("shop", "R2", &[web("blog.test")], Some("tok")),
    )
    .unwrap();
    let load = |file: &std::path::Path| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{FUNCTIONS}E=$1 N=none; edge_assemble() {{ :; }}; edge_reload() {{ echo reloaded; }}; edge_load shop \"$2\""
            ))
            .arg("sh")
            .arg(e)
            .arg(file)
            .output()
            .unwrap()
    };
    let out = load(&new);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("already routes blog.test/ (project blog routes blog.test/)"),
        "{said}"
    );
    let kept = std::fs::read_to_string(e.join("routes/shop")).unwrap();
    assert!(
        kept.contains("shop.test") && !kept.contains("blog.test"),
        "{kept}"
    );
    let out = load(&candidate);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Paths: one under another on the same host overlaps; side by side does not.
    let path = |host: &str, p: &str| Route {
        service: "web".into(),
        port: 8080,
        host: host.into(),
        path: Some(p.into()),
    };
    std::fs::write(
        e.join("routes/blog"),
        routes_file("blog", "R1", &[path("a.test", "/api")], None),
    )
    .unwrap();
    std::fs::write(
        &new,
        routes_file("shop", "R3", &[path("a.test", "/api/v2")], None),
    )
    .unwrap();
    assert!(!load(&new).status.success());
    std::fs::write(
        &new,
        routes_file("shop", "R3", &[path("a.test", "/apiary")], None),
    )
    .unwrap();
    assert!(load(&new).status.success());
    std::fs::write(&new, routes_file("shop", "R3", &[web("a.test")], None)).unwrap();
    assert!(!load(&new).status.success());
}
