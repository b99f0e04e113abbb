//! The staging host, through ssh2 (libssh2). Nothing outside this module imports ssh2.
//!
//! ssh2 is blocking; callers run these functions on a blocking thread
//! (`tokio::task::spawn_blocking`). Every connect, read and command has a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::inputs::{HostSpec, KnownHost};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {host}: {source}. Check `hosts` and that sshd listens there and the runner can reach it.")]
    Connect {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("SSH handshake with {host} failed: {source}")]
    Handshake {
        host: String,
        #[source]
        source: ssh2::Error,
    },
    #[error("HOST KEY MISMATCH for {host}: it presented {actual} ({key_type}), but the pinned keys are {expected}. Someone may be intercepting the connection, or the host was rebuilt. If the host key legitimately changed, verify it out of band and update `host-fingerprints` to `{actual}`.")]
    HostKeyMismatch {
        host: String,
        actual: String,
        expected: String,
        key_type: String,
    },
    #[error("the host key of {host} is not pinned. It presented {actual} ({key_type}). If that is the host's real key (check on the host with `ssh-keygen -lf /etc/ssh/ssh_host_{key_file}_key.pub`), add this input line:\n  host-fingerprints: {actual}")]
    HostKeyNotPinned {
        host: String,
        actual: String,
        key_type: String,
        key_file: String,
    },
    #[error("{host} rejected the key for user `{user}`: {source}. Check that the public half of `ssh-key` is in ~{user}/.ssh/authorized_keys on the host, and `ssh-key-passphrase` if the key has one.")]
    Auth {
        host: String,
        user: String,
        #[source]
        source: ssh2::Error,
    },
    #[error(
        "SSH channel to {host} failed while {doing}: {source}. The connection may have dropped."
    )]
    Channel {
        host: String,
        doing: &'static str,
        #[source]
        source: ssh2::Error,
    },
    #[error(
        "the connection to {host} failed while {doing}: {source}. The connection may have dropped."
    )]
    Io {
        host: String,
        doing: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {file} on {host} failed: {cause}")]
    Upload {
        host: String,
        file: String,
        cause: UploadCause,
    },
    #[error("`{command}` on {host} did not finish within {timeout:?}")]
    Timeout {
        host: String,
        command: String,
        timeout: Duration,
    },
}

/// Why an upload failed, found out rather than guessed: the SFTP status, and for the
/// generic "failure" that OpenSSH's sftp-server answers for a full disk (it maps ENOSPC to
/// SSH_FX_FAILURE), the free space measured on the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadCause {
    #[error("no space left on the host's filesystem ({free} free in {dir}). Free space on the host (old images of other projects, logs), then deploy again; nothing was switched.")]
    NoSpace { dir: String, free: String },
    #[error("permission denied. The SSH user cannot write there: give it write access to `deploy-dir`, or choose another.")]
    PermissionDenied,
    #[error("the connection was lost ({detail}). Check that the host is up and reachable, then deploy again.")]
    ConnectionLost { detail: String },
    #[error("{detail}")]
    Other { detail: String },
}

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

pub struct Credentials {
    pub user: String,
    pub key: Secret,
    pub passphrase: Option<Secret>,
}

pub struct HostSession {
    pub name: String,
    pub host_key: HostKeyInfo,
    session: ssh2::Session,
    /// One SFTP channel for all of a deploy's uploads: each new one costs the host a
    /// subsystem start through the user's login shell.
    sftp: std::sync::OnceLock<ssh2::Sftp>,
}

#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `SHA256:<base64 without padding>` of the key blob, as `ssh-keygen -l` prints it.
pub fn fingerprint(blob: &[u8]) -> String {
    let digest = Sha256::digest(blob);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

fn key_type_name(t: ssh2::HostKeyType) -> (&'static str, &'static str) {
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
fn names_host(patterns: &[String], host: &str) -> bool {
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

impl HostSession {
    /// Connects, verifies the host key *before* authenticating, then authenticates.
    pub fn connect(
        spec: &HostSpec,
        creds: &Credentials,
        trust: &HostTrust,
        timeout: Duration,
    ) -> Result<HostSession, SshError> {
        let name = spec.to_string();
        let connect_err = |source| SshError::Connect {
            host: name.clone(),
            source,
        };
        let addr = (spec.host.as_str(), spec.port)
            .to_socket_addrs()
            .map_err(connect_err)?
            .next()
            .ok_or_else(|| {
                connect_err(std::io::Error::new(
                    ErrorKind::NotFound,
                    "the name resolved to no address",
                ))
            })?;
        let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(connect_err)?;
        // Every command is a few small packets (channel open, exec, EOF) each waiting on the
        // last; with Nagle's algorithm each waits out the peer's delayed ACK (~40 ms), as
        // OpenSSH avoids by setting TCP_NODELAY for sessions.
        tcp.set_nodelay(true).map_err(connect_err)?;
        let mut session = ssh2::Session::new().map_err(|source| SshError::Handshake {
            host: name.clone(),
            source,
        })?;
        session.set_tcp_stream(tcp);
        session.set_timeout(timeout.as_millis().min(u32::MAX as u128) as u32);
        // Prefer modern host keys; rsa signatures use SHA-2.
        let _ = session.method_pref(
            ssh2::MethodType::HostKey,
            "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256,ssh-rsa",
        );
        session.handshake().map_err(|source| SshError::Handshake {
            host: name.clone(),
            source,
        })?;
        let (blob, kind) = session.host_key().ok_or_else(|| SshError::Handshake {
            host: name.clone(),
            source: ssh2::Error::unknown(),
        })?;
        let (key_type, key_file) = key_type_name(kind);
        let host_key = check_host_key(&name, blob, key_type, key_file, trust)?;
        session
            .userauth_pubkey_memory(
                &creds.user,
                None,
                creds.key.expose(),
                creds.passphrase.as_ref().map(|p| p.expose()),
            )
            .map_err(|source| SshError::Auth {
                host: name.clone(),
                user: creds.user.clone(),
                source,
            })?;
        session.set_keepalive(true, 15);
        Ok(HostSession {
            name,
            host_key,
            session,
            sftp: std::sync::OnceLock::new(),
        })
    }

    /// Runs one command line (already quoted by [`quote_argv`]) with an optional stdin,
    /// streaming each output line to `on_line` as it arrives.
    pub fn exec(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        mut on_line: impl FnMut(&str),
    ) -> Result<ExecOutput, SshError> {
        let host = self.name.clone();
        let chan_err = |doing: &'static str| {
            let host = host.clone();
            move |source| SshError::Channel {
                host,
                doing,
                source,
            }
        };
        let mut channel = self
            .session
            .channel_session()
            .map_err(chan_err("opening a channel"))?;
        channel
            .exec(command)
            .map_err(chan_err("starting a command"))?;
        if let Some(input) = stdin {
            channel.write_all(input).map_err(|source| SshError::Io {
                host: host.clone(),
                doing: "writing stdin",
                source,
            })?;
        }
        channel.send_eof().map_err(chan_err("closing stdin"))?;

        let deadline = Instant::now() + timeout;
        self.session.set_blocking(false);
        let result = (|| {
            let (mut out, mut err) = (LineBuffer::default(), LineBuffer::default());
            let mut buf = [0u8; 8192];
            loop {
                let mut progressed = false;
                for (is_err, lines) in [(false, &mut out), (true, &mut err)] {
                    let read = if is_err {
                        channel.stderr().read(&mut buf)
                    } else {
                        channel.read(&mut buf)
                    };
                    match read {
                        Ok(0) => {}
                        Ok(n) => {
                            progressed = true;
                            lines.push(&buf[..n], &mut on_line);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(source) => {
                            return Err(SshError::Io {
                                host: host.clone(),
                                doing: "reading output",
                                source,
                            })
                        }
                    }
                }
                if channel.eof() && !progressed {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(SshError::Timeout {
                        host: host.clone(),
                        command: command.to_string(),
                        timeout,
                    });
                }
                if !progressed {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            out.finish(&mut on_line);
            err.finish(&mut on_line);
            Ok((out.all, err.all))
        })();
        self.session.set_blocking(true);
        let (stdout, stderr) = result?;
        channel
            .wait_close()
            .map_err(chan_err("closing a channel"))?;
        let status = channel
            .exit_status()
            .map_err(chan_err("reading the exit status"))?;
        Ok(ExecOutput {
            status,
            stdout,
            stderr,
        })
    }
}

impl HostSession {
    /// Runs one argv; the only place berth turns an argv into a remote command line.
    pub fn run(
        &self,
        cmd: &crate::remote::Cmd,
        stdin: Option<&[u8]>,
        timeout: Duration,
        on_line: impl FnMut(&str),
    ) -> Result<ExecOutput, SshError> {
        let started = Instant::now();
        let line = quote_argv(&cmd.0);
        let out = self.exec(&line, stdin, timeout, on_line);
        tracing::debug!(
            host = %self.name,
            ms = started.elapsed().as_millis() as u64,
            status = out.as_ref().map_or(-1, |o| o.status),
            "ran {line}"
        );
        out
    }

    /// Writes a file over SFTP: to a temporary name with `mode` set before any byte is
    /// written, then renamed over the target, so a reader never sees a partial file.
    pub fn upload(&self, path: &str, contents: &[u8], mode: i32) -> Result<(), SshError> {
        let started = Instant::now();
        let result = self.upload_inner(path, contents, mode);
        tracing::debug!(
            host = %self.name,
            ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "uploaded {path} ({} bytes)",
            contents.len()
        );
        result
    }

    /// What really made writing `path` fail: the SFTP status says "permission denied" or
    /// "no such file"; a session error means the connection is gone; the generic failure
    /// is checked against the free space on the host.
    fn upload_error(&self, path: &str, e: &ssh2::Error) -> SshError {
        let cause = match e.code() {
            ssh2::ErrorCode::SFTP(3) => UploadCause::PermissionDenied,
            // NO_SPACE_ON_FILESYSTEM and QUOTA_EXCEEDED (SFTP v5+), when a server has them.
            ssh2::ErrorCode::SFTP(14 | 15) => self.no_space(path),
            ssh2::ErrorCode::SFTP(4) => match self.no_space(path) {
                UploadCause::Other { .. } => UploadCause::Other {
                    detail: format!("the host's SFTP server answered \"{e}\""),
                },
                found => found,
            },
            ssh2::ErrorCode::SFTP(_) => UploadCause::Other {
                detail: e.to_string(),
            },
            ssh2::ErrorCode::Session(_) => UploadCause::ConnectionLost {
                detail: e.to_string(),
            },
        };
        SshError::Upload {
            host: self.name.clone(),
            file: path.into(),
            cause,
        }
    }

    /// A write error comes as a bare `io::Error` ("failure"): ask the host. If it answers,
    /// the connection is alive and the free space says whether the disk is full.
    fn upload_error_io(&self, path: &str, e: &std::io::Error) -> SshError {
        let cause = match self.no_space(path) {
            UploadCause::Other { detail } => UploadCause::Other {
                detail: format!("{e} ({detail})"),
            },
            found => found,
        };
        SshError::Upload {
            host: self.name.clone(),
            file: path.into(),
            cause,
        }
    }

    /// Whether the filesystem holding `path` is full, measured on the host.
    fn no_space(&self, path: &str) -> UploadCause {
        let dir = std::path::Path::new(path)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into());
        let df = quote_argv(&["df".into(), "-Pk".into(), dir.clone()]);
        match self.exec(&df, None, Duration::from_secs(15), |_| {}) {
            Ok(out) => {
                let free_kb = out
                    .stdout
                    .lines()
                    .nth(1)
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|f| f.parse::<u64>().ok());
                match free_kb {
                    // A write that failed with a few KiB left ran out of them.
                    Some(kb) if kb < 64 => UploadCause::NoSpace {
                        dir,
                        free: format!("{kb} KiB"),
                    },
                    Some(kb) => UploadCause::Other {
                        detail: format!("{kb} KiB free in {dir}, so not a full disk; check inodes (`df -i`), a quota, or a read-only filesystem"),
                    },
                    None => UploadCause::Other {
                        detail: format!("the free space in {dir} could not be read"),
                    },
                }
            }
            Err(e) => UploadCause::ConnectionLost {
                detail: e.to_string(),
            },
        }
    }

    /// The session's SFTP channel, started on first use.
    fn sftp(&self) -> Result<&ssh2::Sftp, SshError> {
        if let Some(sftp) = self.sftp.get() {
            return Ok(sftp);
        }
        let started = self.session.sftp().map_err(|source| SshError::Channel {
            host: self.name.clone(),
            doing: "starting SFTP (is the sftp subsystem enabled in sshd?)",
            source,
        })?;
        Ok(self.sftp.get_or_init(|| started))
    }

    /// Makes one directory over SFTP with `mode`. Fails if it exists, as mkdir(2) does.
    pub fn mkdir(&self, path: &str, mode: i32) -> Result<(), SshError> {
        let made = self.sftp()?.mkdir(std::path::Path::new(path), mode);
        tracing::debug!(host = %self.name, ok = made.is_ok(), "made dir {path}");
        made.map_err(|source| SshError::Channel {
            host: self.name.clone(),
            doing: "making a directory over SFTP",
            source,
        })
    }

    /// Whether a path exists on the host (SFTP lstat).
    pub fn exists(&self, path: &str) -> Result<bool, SshError> {
        Ok(self.sftp()?.lstat(std::path::Path::new(path)).is_ok())
    }

    fn upload_inner(&self, path: &str, contents: &[u8], mode: i32) -> Result<(), SshError> {
        let written = self.write_then_rename(path, contents, mode);
        if written.is_err() {
            // A half-written temp file must not keep the disk full for the next deploy.
            if let Ok(sftp) = self.sftp() {
                let _ = sftp.unlink(std::path::Path::new(&format!("{path}.berth-upload")));
            }
        }
        written
    }

    fn write_then_rename(&self, path: &str, contents: &[u8], mode: i32) -> Result<(), SshError> {
        let host = self.name.clone();
        let err = |_doing: &'static str| |source: ssh2::Error| self.upload_error(path, &source);
        let sftp = self.sftp()?;
        let tmp = format!("{path}.berth-upload");
        let target = std::path::Path::new(path);
        let tmp_path = std::path::Path::new(&tmp);
        {
            let mut file = sftp
                .open_mode(
                    tmp_path,
                    ssh2::OpenFlags::WRITE | ssh2::OpenFlags::CREATE | ssh2::OpenFlags::TRUNCATE,
                    mode,
                    ssh2::OpenType::File,
                )
                .map_err(err("creating a file over SFTP"))?;
            // The server's umask may widen nothing but can narrow; set the mode exactly.
            file.setstat(ssh2::FileStat {
                size: None,
                uid: None,
                gid: None,
                perm: Some(mode as u32),
                atime: None,
                mtime: None,
            })
            .map_err(err("setting a file mode over SFTP"))?;
            file.write_all(contents).map_err(|source| {
                match source
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<ssh2::Error>())
                {
                    Some(e) => self.upload_error(path, e),
                    None => self.upload_error_io(path, &source),
                }
            })?;
            // Close now, so a server-side failure to flush is this file's, not a later one's.
            file.close().map_err(|e| self.upload_error(path, &e))?;
        }
        // SFTP v3 (OpenSSH) cannot rename over an existing file; rename(2) on the host can,
        // atomically.
        if sftp.rename(tmp_path, target, None).is_err() {
            let mv = quote_argv(&["mv".into(), "-f".into(), tmp.clone(), path.into()]);
            let out = self.exec(&mv, None, Duration::from_secs(30), |_| {})?;
            if out.status != 0 {
                return Err(SshError::Io {
                    host: host.clone(),
                    doing: "renaming an uploaded file",
                    source: std::io::Error::other(out.stderr.trim().to_string()),
                });
            }
        }
        Ok(())
    }
}

/// One output stream of a remote command, split into lines as they arrive (as the
/// runner splits them). Remote output can come from the app (a migration, `compose up`),
/// so what is kept is bounded: only the last [`KEPT_BYTES`] of it.
#[derive(Default)]
struct LineBuffer {
    pending: Vec<u8>,
    all: String,
    dropped: usize,
}

/// Most output kept from one stream of one command (its tail).
const KEPT_BYTES: usize = 8 * 1024 * 1024;

impl LineBuffer {
    fn push(&mut self, bytes: &[u8], on_line: &mut impl FnMut(&str)) {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        crate::workflow::drain_lines(&mut self.pending, &mut |l| {
            lines.push(String::from_utf8_lossy(l).into_owned())
        });
        for line in lines {
            self.take(&line, on_line);
        }
    }

    fn take(&mut self, line: &str, on_line: &mut impl FnMut(&str)) {
        on_line(line);
        self.all.push_str(line);
        self.all.push('\n');
        if self.all.len() > KEPT_BYTES {
            let mut cut = self.all.len() - KEPT_BYTES / 2;
            while !self.all.is_char_boundary(cut) {
                cut += 1;
            }
            self.all.drain(..cut);
            self.dropped += cut;
        }
    }

    fn finish(&mut self, on_line: &mut impl FnMut(&str)) {
        if !self.pending.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.pending))
                .trim_end_matches('\r')
                .to_string();
            self.take(&rest, on_line);
        }
        if self.dropped > 0 {
            self.all = format!(
                "[{} earlier bytes of output not kept]\n{}",
                self.dropped, self.all
            );
        }
    }
}

/// The one place an argv becomes a shell command line: every word in single quotes,
/// with embedded single quotes closed, escaped and reopened.
/// `cmd` as a person runs it on `host` with the OpenSSH client: what to type to do by
/// hand what berth could not.
pub fn by_hand(host: &HostSpec, cmd: &crate::remote::Cmd) -> String {
    quote_argv(&[
        "ssh".into(),
        "-p".into(),
        host.port.to_string(),
        format!("{}@{}", host.user, host.host),
        quote_argv(&cmd.0),
    ])
}

pub fn quote_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| quote_word(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%^".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests;
