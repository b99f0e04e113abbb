//! Whether to trust the key a host presented: pinned fingerprints, or known_hosts lines
//! matched to the host as OpenSSH matches them.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::SshError;
use crate::inputs::KnownHost;

/// How the host's key is trusted.
#[derive(Debug, Clone)]
pub enum HostTrust {
    Pinned {
        fingerprints: Vec<String>,
        known_hosts: Vec<KnownHost>,
    },
    Insecure,
}

/// What the host presented, for the report and for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyInfo {
    pub fingerprint: String,
    pub key_type: String,
}

/// `SHA256:<base64 without padding>` of the key blob, as `ssh-keygen -l` prints it.
pub fn fingerprint(blob: &[u8]) -> String {
    let digest = Sha256::digest(blob);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

pub(super) fn key_type_name(t: ssh2::HostKeyType) -> (&'static str, &'static str) {
    match t {
        ssh2::HostKeyType::Rsa => ("ssh-rsa", "rsa"),
        ssh2::HostKeyType::Dss => ("ssh-dss", "dsa"),
        ssh2::HostKeyType::Ecdsa256 => ("ecdsa-sha2-nistp256", "ecdsa"),
        ssh2::HostKeyType::Ecdsa384 => ("ecdsa-sha2-nistp384", "ecdsa"),
        ssh2::HostKeyType::Ecdsa521 => ("ecdsa-sha2-nistp521", "ecdsa"),
        ssh2::HostKeyType::Ed25519 => ("ssh-ed25519", "ed25519"),
        ssh2::HostKeyType::Unknown => ("unknown", "*"),
    }
}

/// A key is trusted when its blob equals a pinned known_hosts key or its fingerprint is
/// pinned. The blob is what matters: only the holder of that host key can present it.
pub fn check_host_key(
    host: &str,
    blob: &[u8],
    key_type: &str,
    key_file: &str,
    trust: &HostTrust,
) -> Result<HostKeyInfo, SshError> {
    let actual = fingerprint(blob);
    let info = HostKeyInfo {
        fingerprint: actual.clone(),
        key_type: key_type.to_string(),
    };
    let (fingerprints, known_hosts) = match trust {
        HostTrust::Insecure => return Ok(info),
        HostTrust::Pinned {
            fingerprints,
            known_hosts,
        } => (fingerprints, known_hosts),
    };
    // As OpenSSH does, a known_hosts line vouches only for the hosts its patterns name.
    let lines_for_host: Vec<&KnownHost> = known_hosts
        .iter()
        .filter(|k| names_host(&k.patterns, host))
        .collect();
    if fingerprints.iter().any(|f| f == &actual) || lines_for_host.iter().any(|k| k.key == blob) {
        return Ok(info);
    }
    if fingerprints.is_empty() && lines_for_host.is_empty() {
        return Err(SshError::HostKeyNotPinned {
            host: host.into(),
            actual,
            key_type: key_type.into(),
            key_file: key_file.into(),
        });
    }
    let mut expected: Vec<String> = fingerprints.clone();
    expected.extend(
        lines_for_host
            .iter()
            .map(|k| format!("{} ({})", fingerprint(&k.key), k.key_type)),
    );
    Err(SshError::HostKeyMismatch {
        host: host.into(),
        actual,
        expected: expected.join(", "),
        key_type: key_type.into(),
    })
}

/// Whether a known_hosts line's patterns name `host` (given as `user@host:port`), with
/// OpenSSH's rules: the name is `host` on port 22 and `[host]:port` otherwise; `*` and `?`
/// are wildcards; a matching `!pattern` excludes the host; `|1|salt|hash` is the
/// HMAC-SHA1 of the name keyed by the salt; names compare case-insensitively.
pub(super) fn names_host(patterns: &[String], host: &str) -> bool {
    let hostport = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let (name, port) = hostport.rsplit_once(':').unwrap_or((hostport, "22"));
    let name = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let lookup = if port == "22" {
        name
    } else {
        format!("[{name}]:{port}")
    };
    let mut named = false;
    for pattern in patterns {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern.as_str()),
        };
        let hit = match pattern.strip_prefix("|1|") {
            Some(hashed) => hashed_name_matches(hashed, &lookup),
            None => wildcard_matches(&pattern.to_ascii_lowercase(), &lookup),
        };
        if hit && negated {
            return false;
        }
        named |= hit;
    }
    named
}

/// `salt|hash` (both base64) from a `|1|salt|hash` pattern.
fn hashed_name_matches(hashed: &str, lookup: &str) -> bool {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(lookup.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// `*` matches any run of characters, `?` any one; everything else literally.
fn wildcard_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Classic greedy matcher with one backtrack point for the last `*`.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}
