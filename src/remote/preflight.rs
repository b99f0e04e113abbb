//! Reading what [`Layout::preflight`](super::Layout::preflight) found on a host.

/// What [`Layout::preflight`](super::Layout::preflight) found on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// `docker compose version --short`, or why it failed.
    pub compose: Result<String, String>,
    /// The deploy dir, or its nearest existing parent, and whether it can be written.
    pub dir: String,
    pub writable: bool,
    pub free_kb: Option<u64>,
    /// The Docker daemon's data root (where pulls land), or why `docker info` failed.
    pub docker_root: Result<String, String>,
    pub docker_free_kb: Option<u64>,
    /// The lock holder's record when the lock is held.
    pub lock_holder: Option<String>,
}

impl Default for Preflight {
    fn default() -> Self {
        Preflight {
            compose: Err("no answer".into()),
            dir: String::new(),
            writable: false,
            free_kb: None,
            docker_root: Err("no answer".into()),
            docker_free_kb: None,
            lock_holder: None,
        }
    }
}

pub fn parse_preflight(out: &str) -> Preflight {
    let mut p = Preflight::default();
    for line in out.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "compose" => p.compose = Ok(rest.trim().to_string()),
            "compose-missing" => p.compose = Err(rest.trim().to_string()),
            "writable" | "not-writable" => {
                p.writable = key == "writable";
                p.dir = rest.trim().to_string();
            }
            "free-kb" => p.free_kb = rest.trim().parse().ok(),
            "docker-root" => p.docker_root = Ok(rest.trim().to_string()),
            "docker-missing" => p.docker_root = Err(rest.trim().to_string()),
            "docker-free-kb" => p.docker_free_kb = rest.trim().parse().ok(),
            "lock-held" => p.lock_holder = Some(rest.trim().to_string()),
            _ => {}
        }
    }
    p
}
