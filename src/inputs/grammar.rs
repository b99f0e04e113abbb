//! The grammar of single input values: durations, lists, hosts, image lines, tag
//! templates and the like. Each function checks one value and says what is wrong with it;
//! `parse` adds the input's name and an example.

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use super::settings::{
    is_valid_tag, HostSpec, ImageSpec, KnownHost, PreDeploy, StatusMatcher, StatusRule,
    PLACEHOLDERS,
};

// Patterns are compiled once, on first use; clippy's `invalid_regex` lint checks each
// literal, so the `expect`s cannot fire.
static DURATION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:(\d+)(ms|s|m|h))+$").expect("built-in regex"));
static DURATION_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\d+)(ms|s|m|h)").expect("built-in regex"));
static SERVICE_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9_.-]*$").expect("built-in regex"));
/// An SSH user name, in `hosts` or `ssh-user`.
pub(super) static USER_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$").expect("built-in regex"));
static HOST_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9.:_-]+$").expect("built-in regex"));
static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{([^}]*)\}").expect("built-in regex"));
static KNOWN_PLACEHOLDER_SHAPE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{[a-z_]+\}").expect("built-in regex"));
static DEPLOY_DIR_CHARS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9/._-]+$").expect("built-in regex"));

/// The longest duration any input takes.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// `500ms`, `30s`, `10m`, `1h`, or a sum such as `1m30s`. A bare number has no unit and is
/// rejected: `30` could mean seconds or minutes.
pub(super) fn parse_duration(v: &str) -> Result<Duration, String> {
    const UNITS: &str = "is not a duration with a unit (ms, s, m or h)";
    if v.is_empty() || !DURATION.is_match(v) {
        return Err(UNITS.into());
    }
    let mut total = Duration::ZERO;
    for cap in DURATION_PART.captures_iter(v) {
        const TOO_LONG: &str = "is longer than berth can wait";
        let n: u64 = cap[1].parse().map_err(|_| TOO_LONG.to_string())?;
        let part = match &cap[2] {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            _ => n.checked_mul(3600).map(Duration::from_secs),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| TOO_LONG.to_string())?;
    }
    Ok(total)
}

/// Splits a comma-or-newline list, dropping blanks and `#` comments.
pub(super) fn list_items(v: &str) -> Vec<String> {
    v.split(['\n', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with('#'))
        .map(String::from)
        .collect()
}

/// Splits a newline list, dropping blanks and `#` comments.
pub(super) fn list_lines(v: &str) -> Vec<String> {
    v.lines()
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with('#'))
        .map(String::from)
        .collect()
}

fn is_service_name(s: &str) -> bool {
    SERVICE_NAME.is_match(s)
}

pub fn parse_host(entry: &str, default_user: &str, default_port: u16) -> Result<HostSpec, String> {
    let (user, rest) = match entry.rsplit_once('@') {
        Some((u, r)) => (u.to_string(), r),
        None => (default_user.to_string(), entry),
    };
    let user_ok = USER_NAME.is_match(&user);
    if !user_ok {
        return Err(format!("`{entry}` has an invalid user `{user}`"));
    }
    let (host, port) = if let Some(stripped) = rest.strip_prefix('[') {
        let (h, after) = stripped
            .split_once(']')
            .ok_or(format!("`{entry}` has an unclosed `[`"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("`{entry}` has text after `]`")),
        };
        (h.to_string(), port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{entry}` names no host"));
    }
    if !HOST_NAME.is_match(&host) || host.starts_with('-') {
        return Err(format!("`{entry}` has an invalid host name `{host}`"));
    }
    let port = match port {
        None => default_port,
        Some(p) => parse_port(p).map_err(|why| format!("`{entry}`: {why}"))?,
    };
    Ok(HostSpec { user, host, port })
}

pub(super) fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("port `{p}` is not between 1 and 65535")),
    }
}

/// Parses one `known_hosts` line (`host[,host] keytype base64 [comment]`).
pub fn parse_known_host(line: &str) -> Result<KnownHost, String> {
    use base64::Engine;
    let parts: Vec<&str> = line.split_whitespace().collect();
    // A leading marker such as @cert-authority is not a plain pin; refuse it clearly.
    if parts.first().is_some_and(|p| p.starts_with('@')) {
        return Err(format!("markers such as `{}` are not supported", parts[0]));
    }
    if parts.len() < 3 {
        return Err("expected `host keytype base64-key`".into());
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(parts[2])
        .map_err(|_| format!("the key of `{}` is not base64", parts[0]))?;
    Ok(KnownHost {
        patterns: parts[0].split(',').map(String::from).collect(),
        key_type: parts[1].to_string(),
        key,
    })
}

pub(super) fn parse_image_line(line: &str) -> Result<ImageSpec, String> {
    let (service, rest) = line.split_once('=').ok_or(format!("`{line}` has no `=`"))?;
    let service = service.trim();
    if !is_service_name(service) {
        return Err(format!("service name `{service}` must be lower-case letters, digits, `.`, `_` or `-`, with no spaces"));
    }
    let mut parts = rest.split(',');
    let dockerfile = parts.next().unwrap_or("").trim().to_string();
    if dockerfile.is_empty() {
        return Err(format!("`{line}` names no Dockerfile"));
    }
    let mut context = None;
    let mut target = None;
    for part in parts {
        match part.trim().split_once('=') {
            Some(("context", v)) if !v.trim().is_empty() => context = Some(v.trim().to_string()),
            Some(("target", v)) if !v.trim().is_empty() => target = Some(v.trim().to_string()),
            _ => {
                return Err(format!(
                    "`{}` is not `context=dir` or `target=stage`",
                    part.trim()
                ))
            }
        }
    }
    for path in [Some(&dockerfile), context.as_ref()].into_iter().flatten() {
        if Path::new(path).is_absolute() || path.split('/').any(|c| c == "..") {
            return Err(format!("`{path}` must be a path inside the workspace"));
        }
    }
    let context = context.unwrap_or_else(|| {
        Path::new(&dockerfile)
            .parent()
            .map(|p| p.to_string_lossy().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| ".".into())
    });
    Ok(ImageSpec {
        service: service.to_string(),
        dockerfile,
        context,
        target,
    })
}

/// Checks a template by expanding it with sample values. Only `{branch}` may bring in
/// characters that need sanitising; literal text must already be valid.
pub(super) fn check_tag_template(t: &str) -> Result<(), String> {
    for cap in PLACEHOLDER.captures_iter(t) {
        if !PLACEHOLDERS.contains(&&cap[1]) {
            return Err(format!("`{t}` uses the unknown placeholder `{{{}}}`; known are {{sha}}, {{short_sha}}, {{branch}} and {{run_number}}.", &cap[1]));
        }
    }
    let literal = KNOWN_PLACEHOLDER_SHAPE.replace_all(t, "x");
    if !is_valid_tag(&literal) || t.contains(['{', '}']) && literal.contains(['{', '}']) {
        return Err(format!("`{t}` does not make a valid tag: tags are at most 128 of `A-Z a-z 0-9 _ . -` and cannot start with `.` or `-`, e.g. `staging-{{sha}}`."));
    }
    Ok(())
}

/// Split so that scans for committed private keys do not flag this message text.
const OPENSSH_HEADER: &str = concat!("-----BEGIN OPENSSH", " PRIVATE KEY-----");

pub(super) fn check_private_key(key: &str) -> Result<(), String> {
    let trimmed = key.trim();
    if trimmed.is_empty() {
        return Err("is required: the private key berth logs in with, e.g. from `${{ secrets.STAGING_SSH_KEY }}`.".into());
    }
    let public_prefixes = [
        "ssh-ed25519 ",
        "ssh-rsa ",
        "ssh-dss ",
        "ecdsa-sha2-",
        "sk-ssh-",
        "sk-ecdsa-",
    ];
    if public_prefixes.iter().any(|p| trimmed.starts_with(p))
        || trimmed.contains("BEGIN SSH2 PUBLIC KEY")
    {
        return Err(format!("is a *public* key. berth needs the *private* key (the file without `.pub`, starting with `{OPENSSH_HEADER}`); put the public key in the host's `authorized_keys`."));
    }
    if !(trimmed.starts_with("-----BEGIN ") && trimmed.contains("PRIVATE KEY-----")) {
        return Err(format!("is not a private key in OpenSSH or PEM format: it must start with `{OPENSSH_HEADER}` (or `-----BEGIN RSA/EC PRIVATE KEY-----`). Paste the whole file, with its line breaks."));
    }
    Ok(())
}

pub(super) fn check_deploy_dir(d: &str) -> Result<(), String> {
    if !d.starts_with('/') {
        return Err(format!(
            "`{d}` is relative; it must be an absolute path on the host, e.g. `/opt/shop`."
        ));
    }
    if d.split('/').any(|c| c == ".." || c == ".") || d == "/" {
        return Err(format!(
            "`{d}` must be a plain absolute directory (no `.`/`..`, not `/`), e.g. `/opt/shop`."
        ));
    }
    if !DEPLOY_DIR_CHARS.is_match(d) {
        return Err(format!(
            "`{d}` may only use letters, digits, `/`, `.`, `_` and `-`, e.g. `/opt/shop`."
        ));
    }
    Ok(())
}

/// A workspace path whose real location (symlinks followed) stays inside the workspace.
/// A checked-out symlink must not let a build or an upload read the runner's own files.
pub(super) fn resolves_inside(workspace: &Path, rel: &str) -> Result<(), String> {
    let real = |p: &Path| {
        std::fs::canonicalize(p).map_err(|e| format!("`{}` cannot be resolved: {e}", p.display()))
    };
    let root = real(workspace)?;
    let target = real(&workspace.join(rel))?;
    if target.starts_with(&root) {
        Ok(())
    } else {
        Err(format!(
            "`{rel}` resolves to `{}`, outside the workspace (a symlink leads out of it). berth reads only files inside GITHUB_WORKSPACE: point the input at the real file inside the repository.",
            target.display()
        ))
    }
}

pub(super) fn parse_status_matcher(v: &str) -> Result<StatusMatcher, String> {
    let mut rules = Vec::new();
    for item in list_items(v) {
        let lower = item.to_ascii_lowercase();
        if let Some(class) = lower.strip_suffix("xx") {
            match class.parse::<u16>() {
                Ok(c) if (1..=5).contains(&c) => rules.push(StatusRule::Class(c)),
                _ => return Err(format!("`{item}` is not a status class")),
            }
        } else {
            match item.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => rules.push(StatusRule::Code(c)),
                _ => return Err(format!("`{item}` is not an HTTP status code")),
            }
        }
    }
    if rules.is_empty() {
        return Err("is empty".into());
    }
    Ok(StatusMatcher(rules))
}

pub(super) fn parse_pre_deploy(v: &str) -> Result<PreDeploy, String> {
    let (service, command) = v.split_once(':').ok_or(format!("`{v}` has no `:`"))?;
    let service = service.trim();
    if !is_service_name(service) {
        return Err(format!("`{service}` is not a service name"));
    }
    let argv = shlex::split(command.trim()).ok_or("the command has an unclosed quote")?;
    if argv.is_empty() {
        return Err(format!("`{v}` gives no command"));
    }
    Ok(PreDeploy {
        service: service.to_string(),
        argv,
    })
}

pub(super) fn sanitise_project(repo: &str) -> String {
    let s: String = repo
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_start_matches(['-', '_']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("30").unwrap_err().contains("ms, s, m or h"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 s").is_err());
    }

    #[test]
    fn durations_too_long_for_a_u64_or_a_duration_are_errors_not_wraps() {
        // Too many digits for a u64; and a u64 of hours, whose seconds overflow.
        for v in [
            "99999999999999999999h",
            "18446744073709551615h",
            "18446744073709551615m",
        ] {
            assert_eq!(
                parse_duration(v),
                Err("is longer than berth can wait".to_string()),
                "{v}"
            );
        }
        // The sum overflows though each part fits.
        assert!(parse_duration("18446744073709551615s1s").is_err());
    }

    #[test]
    fn hosts_parse_with_defaults() {
        assert_eq!(
            parse_host("web1", "deploy", 22),
            Ok(HostSpec {
                user: "deploy".into(),
                host: "web1".into(),
                port: 22
            })
        );
        assert_eq!(
            parse_host("ops@10.0.0.5:2222", "deploy", 22),
            Ok(HostSpec {
                user: "ops".into(),
                host: "10.0.0.5".into(),
                port: 2222
            })
        );
        assert_eq!(parse_host("[::1]:22", "d", 22).unwrap().host, "::1");
        assert!(parse_host("deploy@:22", "d", 22)
            .unwrap_err()
            .contains("names no host"));
        assert!(parse_host("h:70000", "d", 22)
            .unwrap_err()
            .contains("70000"));
        assert!(parse_host("-oProxyCommand=x", "d", 22).is_err());
    }

    #[test]
    fn tag_templates_are_checked() {
        assert!(check_tag_template("staging-{sha}").is_ok());
        assert!(check_tag_template("{branch}").is_ok());
        assert!(check_tag_template("staging-{commit}")
            .unwrap_err()
            .contains("unknown placeholder"));
        assert!(check_tag_template("staging latest").is_err());
        assert!(check_tag_template(".hidden").is_err());
    }

    #[test]
    fn status_matchers() {
        let m = parse_status_matcher("200,204").unwrap();
        assert!(m.accepts(204) && !m.accepts(201));
        let m = parse_status_matcher("2xx").unwrap();
        assert!(m.accepts(299) && !m.accepts(301));
        assert!(parse_status_matcher("abc").is_err());
        assert!(parse_status_matcher("700").is_err());
    }

    #[test]
    fn pre_deploy_splits_like_a_shell() {
        let pd = parse_pre_deploy("backend: npx prisma migrate deploy --name 'first run'").unwrap();
        assert_eq!(pd.service, "backend");
        assert_eq!(
            pd.argv,
            vec!["npx", "prisma", "migrate", "deploy", "--name", "first run"]
        );
        assert!(parse_pre_deploy("backend npx").is_err());
    }

    #[test]
    fn image_lines() {
        let spec = parse_image_line("backend=backend/Dockerfile,target=prod").unwrap();
        assert_eq!(spec.context, "backend");
        assert_eq!(spec.target.as_deref(), Some("prod"));
        assert_eq!(parse_image_line("web=Dockerfile").unwrap().context, ".");
        assert!(parse_image_line("Web=Dockerfile").is_err());
        assert!(parse_image_line("web=../Dockerfile").is_err());
    }
}
