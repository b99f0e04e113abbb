//! The staging host, through ssh2 (libssh2). Nothing outside this module imports ssh2.
//!
//! ssh2 is blocking; callers run these functions on a blocking thread
//! (`tokio::task::spawn_blocking`). Every connect, read and command has a deadline.

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::inputs::HostSpec;
use crate::secret::Secret;

mod agent;
mod exec;
mod host_key;
mod quote;
mod upload;

pub use crate::argv::quote_argv;
pub use exec::Supervision;
use host_key::key_type_name;
pub use host_key::{check_host_key, fingerprint, HostKeyInfo, HostTrust};
pub use quote::by_hand;

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
    #[error("`{command}` on {host} did not finish within {}; it was stopped", crate::report::Rounded(*timeout))]
    Timeout {
        host: String,
        command: String,
        timeout: Duration,
    },
    #[error("the connection to {host} was lost while {doing}")]
    Lost { host: String, doing: String },
    #[error("`{command}` on {host} was stopped: the run was cancelled")]
    Cancelled { host: String, command: String },
}

impl SshError {
    /// The host could not be reached any more: the connection (or the remote session on
    /// it) dropped, as opposed to a command that ran and failed.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            SshError::Lost { .. } | SshError::Io { .. } | SshError::Channel { .. }
        ) || matches!(
            self,
            SshError::Upload {
                cause: UploadCause::ConnectionLost { .. },
                ..
            }
        )
    }
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
    /// The supervised remote session, once started (see `agent`).
    agent: std::sync::Mutex<Option<agent::Agent>>,
    /// The bound of every blocking call on the session, in ms.
    timeout_ms: u32,
}

#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
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
        let started = std::time::Instant::now();
        let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(connect_err)?;
        let tcp_ms = started.elapsed().as_millis();
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
        let handshake_ms = started.elapsed().as_millis();
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
        tracing::debug!(
            host = %name,
            tcp_ms,
            handshake_ms,
            auth_ms = started.elapsed().as_millis(),
            "connected"
        );
        Ok(HostSession {
            name,
            host_key,
            session,
            sftp: std::sync::OnceLock::new(),
            agent: std::sync::Mutex::new(None),
            timeout_ms: timeout.as_millis().min(u32::MAX as u128) as u32,
        })
    }
}

impl HostSession {
    /// Whether the remote session still runs: it is dropped when the connection is lost.
    pub fn has_session(&self) -> bool {
        self.agent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Waits until the connection has something to read, at most `max`: a wait on the
    /// socket, not a sleep, so output is read as soon as it arrives.
    fn wait_readable(&self, max: Duration) {
        use std::os::fd::AsRawFd;
        let mut fd = libc::pollfd {
            fd: self.session.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
        unsafe { libc::poll(&mut fd, 1, max.as_millis().min(i32::MAX as u128) as i32) };
    }
}

#[cfg(test)]
mod tests;
