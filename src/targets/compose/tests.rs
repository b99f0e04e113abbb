use super::lock::parse_lock_inspect;
use super::*;
use crate::remote::LockHolder;

#[test]
fn unset_variables_are_read_from_compose_warnings_either_way_it_prints_them() {
    // Without a terminal (over SSH), as compose v2.40 prints it, then with one.
    let stderr = "time=\"2026-11-24T10:49:59Z\" level=warning msg=\"The \\\"JWT_SECRET\\\" variable is not set. Defaulting to a blank string.\"\n\
                  WARN[0000] The \"SECRET_KEY\" variable is not set. Defaulting to a blank string.\n\
                  WARN[0000] The \"JWT_SECRET\" variable is not set. Defaulting to a blank string.\n\
                  WARN[0000] /x/compose.yml: the attribute `version` is obsolete\n";
    assert_eq!(unset_variables(stderr), ["JWT_SECRET", "SECRET_KEY"]);
    assert!(unset_variables("WARN[0000] the attribute `version` is obsolete").is_empty());
    let err = ReleaseError::MissingVariables {
        host: "deploy@staging:22".into(),
        names: vec!["JWT_SECRET".into(), "SECRET_KEY".into()],
    };
    assert_eq!(
        err.to_string(),
        "the compose file uses ${JWT_SECRET}, ${SECRET_KEY} on deploy@staging:22, but they are \
         set neither in `env-file` nor in the host's environment, so compose would use an empty \
         string. Add `JWT_SECRET=...`, `SECRET_KEY=...` to `env-file`, or write `${NAME:-}` in \
         the compose file where empty is intended. No container was changed."
    );
}

#[test]
fn pins_prefer_the_image_repository_digest() {
    let inspect = r#"sha256:aaa ["other/x@sha256:111","reg:5000/acme/db@sha256:222"]"#;
    assert_eq!(
        choose_pin("reg:5000/acme/db:16", inspect).as_deref(),
        Some("reg:5000/acme/db@sha256:222")
    );
    assert_eq!(
        choose_pin("local/db:1", "sha256:aaa []").as_deref(),
        Some("sha256:aaa")
    );
}

#[test]
fn lock_inspect_output_gives_holder_and_age() {
    let h = LockHolder {
        token: "t".into(),
        run_url: "u".into(),
        actor: "octocat".into(),
        sha: "abcdef0".into(),
        started_at: "now".into(),
    };
    let out = format!("{}\n\n1000\n1100\n", serde_json::to_string(&h).unwrap());
    let (holder, age) = parse_lock_inspect(&out);
    assert_eq!(holder, Some(h));
    assert_eq!(age, Some(Duration::from_secs(100)));
    assert_eq!(
        parse_lock_inspect("\n1000\n1010\n").1,
        Some(Duration::from_secs(10))
    );
}
