//! Files and directories over SFTP, and why a write failed, found out on the host.

use std::io::Write;
use std::time::{Duration, Instant};

use super::{quote_argv, HostSession, SshError, UploadCause};

impl HostSession {
    /// Writes a file over SFTP: to a temporary name with `mode` set before any byte is
    /// written, then renamed over the target, so a reader never sees a partial file.
    ///
    /// The directory may be one that containers can write (the compose project directory,
    /// bind-mounted as `.`): a container could plant a symlink at the temporary name or
    /// the target, pointing at, say, `~/.ssh/authorized_keys`. So the temporary name is
    /// unlinked and then created exclusively (`O_CREAT|O_EXCL` fails on any symlink), its
    /// mode is set on the open handle, and a symlink at the target is removed before the
    /// rename, which replaces the name itself; nothing is written through a link.
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
            // What a crashed upload left, or a planted link: removed, never followed.
            let _ = sftp.unlink(tmp_path);
            let mut file = sftp
                .open_mode(
                    tmp_path,
                    ssh2::OpenFlags::WRITE | ssh2::OpenFlags::CREATE | ssh2::OpenFlags::EXCLUSIVE,
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
        // `mv` onto a symlink to a directory would move the file into that directory.
        if sftp
            .lstat(target)
            .is_ok_and(|st| st.file_type().is_symlink())
        {
            let _ = sftp.unlink(target);
        }
        // SFTP v3 (OpenSSH) cannot rename over an existing file; rename(2) on the host can,
        // atomically. Through the remote session, so it costs a `mv`, not a login shell.
        if sftp.rename(tmp_path, target, None).is_err() {
            let mv = crate::argv::Cmd::new(["mv", "-f", tmp.as_str(), path]);
            let out = self.run(&mv, None, Duration::from_secs(30), |_| {})?;
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
