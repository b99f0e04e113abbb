use super::exec::{LineBuffer, KEPT_BYTES};
use super::host_key::names_host;
use super::*;
use crate::inputs::KnownHost;

#[test]
fn a_huge_stream_is_kept_bounded() {
    let mut buf = LineBuffer::default();
    let mut shown = 0;
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..(3 * KEPT_BYTES / chunk.len()) {
        buf.push(&chunk, &mut |_| shown += 1);
    }
    buf.push(b"\nlast line\n", &mut |_| shown += 1);
    buf.finish(&mut |_| shown += 1);
    assert!(shown > 3, "a line that never ends is handed over in pieces");
    assert!(buf.all.len() <= KEPT_BYTES + 100, "kept {}", buf.all.len());
    assert!(buf.all.starts_with('[') && buf.all.ends_with("last line\n"));
}

#[test]
fn quoting_defuses_shell_syntax() {
    let argv: Vec<String> = [
        "docker",
        "compose",
        "-p",
        "shop",
        "run",
        "it's $(rm -rf /) `x` ; &&",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        quote_argv(&argv),
        r#"docker compose -p shop run 'it'\''s $(rm -rf /) `x` ; &&'"#
    );
    assert_eq!(quote_argv(&["".to_string()]), "''");
}

#[test]
fn quoted_words_round_trip_through_a_real_shell() {
    let tricky = "a'b\"c $HOME `id` \\ \n!@#$%";
    let cmd = quote_argv(&["printf".into(), "%s".into(), tricky.into()]);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), tricky);
}

#[test]
fn host_key_checks() {
    let blob = b"key-blob".to_vec();
    let fp = fingerprint(&blob);
    let pinned = HostTrust::Pinned {
        fingerprints: vec![fp.clone()],
        known_hosts: vec![],
    };
    assert!(check_host_key("h", &blob, "ssh-ed25519", "ed25519", &pinned).is_ok());
    let wrong = HostTrust::Pinned {
        fingerprints: vec!["SHA256:other".into()],
        known_hosts: vec![],
    };
    let err = check_host_key("h", &blob, "ssh-ed25519", "ed25519", &wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains("MISMATCH") && err.contains(&fp) && err.contains("SHA256:other"));
    let none = HostTrust::Pinned {
        fingerprints: vec![],
        known_hosts: vec![],
    };
    let err = check_host_key("h", &blob, "ssh-ed25519", "ed25519", &none)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("host-fingerprints: {fp}")));
    let kh = HostTrust::Pinned {
        fingerprints: vec![],
        known_hosts: vec![KnownHost {
            patterns: vec!["h".into()],
            key_type: "ssh-ed25519".into(),
            key: blob.clone(),
        }],
    };
    assert!(check_host_key("h", &blob, "ssh-ed25519", "ed25519", &kh).is_ok());
}

#[test]
fn known_hosts_patterns_name_hosts_as_openssh_does() {
    let n = |patterns: &[&str], host: &str| {
        names_host(
            &patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            host,
        )
    };
    assert!(n(&["web1.example.com"], "deploy@web1.example.com:22"));
    assert!(n(&["WEB1.example.com"], "deploy@web1.EXAMPLE.com:22"));
    assert!(!n(&["web1.example.com"], "deploy@web2.example.com:22"));
    assert!(!n(&["web1.example.com"], "deploy@web1.example.com:2222"));
    assert!(n(
        &["[web1.example.com]:2222"],
        "deploy@web1.example.com:2222"
    ));
    assert!(n(&["[::1]:2200"], "deploy@[::1]:2200"));
    assert!(n(&["*.example.com"], "deploy@web1.example.com:22"));
    assert!(n(&["web?.example.com"], "deploy@web7.example.com:22"));
    assert!(!n(&["web?.example.com"], "deploy@web10.example.com:22"));
    assert!(!n(
        &["*.example.com", "!db*.example.com"],
        "deploy@db1.example.com:22"
    ));
    assert!(n(&["other", "*.example.com"], "deploy@web1.example.com:22"));
    // `ssh-keygen -H` of `web1.example.com` and `[10.0.0.5]:2222`.
    let web1 = "|1|zuDkNjmJgrMZCbR9pWnYu1Y8RDQ=|PnckLPDwenz59emNHINrSwLZijw=";
    let ip = "|1|eh2cC1DVglRaS6e+LY37YzoX65Y=|qCGtjeeD4kwcvfR/idE7091fKZI=";
    assert!(n(&[web1], "deploy@web1.example.com:22"));
    assert!(!n(&[web1], "deploy@web2.example.com:22"));
    assert!(n(&[ip], "deploy@10.0.0.5:2222"));
    assert!(!n(&[ip], "deploy@10.0.0.5:22"));
    assert!(!n(&["|1|garbage"], "deploy@web1.example.com:22"));
}

#[test]
fn a_known_hosts_line_for_another_host_does_not_vouch_for_this_one() {
    let blob = b"host-key-blob".to_vec();
    let trust = HostTrust::Pinned {
        fingerprints: vec![],
        known_hosts: vec![KnownHost {
            patterns: vec!["web1".into()],
            key_type: "ssh-ed25519".into(),
            key: blob.clone(),
        }],
    };
    assert!(check_host_key("u@web1:22", &blob, "ssh-ed25519", "ed25519", &trust).is_ok());
    let err = check_host_key("u@web2:22", &blob, "ssh-ed25519", "ed25519", &trust).unwrap_err();
    assert!(matches!(err, SshError::HostKeyNotPinned { .. }), "{err}");
}

/// Issue 25: the kept tail of a command's output was cut inside a line, which could leave
/// the end of a secret at its start, where no mask matches it.
#[test]
fn the_kept_tail_is_cut_at_a_line_start_not_inside_a_secret() {
    let secret = "kept-tail-secret-3370";
    let mut buf = LineBuffer::default();
    let mut on_line = |_: &str| {};
    buf.take(&"a".repeat(100), &mut on_line);
    buf.take(
        &format!("{}{secret}{}", "b".repeat(KEPT_BYTES / 2), "c".repeat(100)),
        &mut on_line,
    );
    // The next line makes the buffer cut `KEPT_BYTES / 2` before its end: 5 bytes into
    // the secret.
    let secret_at = 101 + KEPT_BYTES / 2;
    let line = secret_at + 5 + KEPT_BYTES / 2 - buf.all.len() - 1;
    buf.take(&"d".repeat(line), &mut on_line);
    buf.finish(&mut on_line);
    assert!(!buf.all.contains(&secret[5..]), "a partial secret is kept");
    assert!(buf.all.ends_with(&format!("{}\n", "d".repeat(line))));
}
