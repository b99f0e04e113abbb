//! Running one command on an open session: its output streamed line by line, bounded,
//! and under a deadline.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use super::{quote_argv, ExecOutput, HostSession, SshError};

/// How a command of the remote session is supervised, beyond its timeout.
#[derive(Clone, Copy, Default)]
pub struct Supervision<'a> {
    /// Run on the host when the command is stopped or its session ends.
    pub cleanup: Option<&'a crate::argv::Cmd>,
    /// Stops the command when set (the run was cancelled).
    pub cancel: Option<&'a std::sync::atomic::AtomicBool>,
    /// Runs to its end on the host even if the session ends (a restore).
    pub keep: bool,
}

impl HostSession {
    /// Runs one argv; the only place berth turns an argv into a remote command line.
    pub fn run(
        &self,
        cmd: &crate::argv::Cmd,
        stdin: Option<&[u8]>,
        timeout: Duration,
        on_line: impl FnMut(&str),
    ) -> Result<ExecOutput, SshError> {
        self.run_supervised(cmd, stdin, Supervision::default(), timeout, on_line)
    }

    /// Runs one argv, through the remote session when it is started (see `agent`):
    /// stopped at `timeout` or as `how` says.
    pub fn run_supervised(
        &self,
        cmd: &crate::argv::Cmd,
        stdin: Option<&[u8]>,
        how: Supervision,
        timeout: Duration,
        on_line: impl FnMut(&str),
    ) -> Result<ExecOutput, SshError> {
        let started = Instant::now();
        let line = quote_argv(&cmd.0);
        let cleanup = how.cleanup.map(|c| quote_argv(&c.0)).unwrap_or_default();
        let mut agent = self.agent.lock().unwrap_or_else(|e| e.into_inner());
        let out = match agent.as_mut() {
            Some(a) => {
                let stop = super::agent::Stop {
                    cleanup: &cleanup,
                    timeout,
                    cancel: how.cancel,
                    keep: how.keep,
                };
                self.agent_exec(a, &line, stdin, &stop, on_line)
            }
            None => self.exec(&line, stdin, timeout, on_line),
        };
        if out.as_ref().is_err_and(SshError::is_connection_lost) {
            // A lost session stays lost: the next command opens nothing new on it.
            *agent = None;
        }
        tracing::debug!(
            host = %self.name,
            ms = started.elapsed().as_millis() as u64,
            status = out.as_ref().map_or(-1, |o| o.status),
            "ran {line}"
        );
        out
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
        let mut channel = self.start(command, stdin)?;
        let deadline = Instant::now() + timeout;
        // Non-blocking while reading, so that both streams are polled and the deadline is
        // checked between reads; blocking again before any error returns, as every other
        // call on the session expects.
        self.session.set_blocking(false);
        let read = self.read_output(&mut channel, command, deadline, timeout, &mut on_line);
        self.session.set_blocking(true);
        let (stdout, stderr) = read?;
        channel
            .wait_close()
            .map_err(self.channel_error("closing a channel"))?;
        let status = channel
            .exit_status()
            .map_err(self.channel_error("reading the exit status"))?;
        Ok(ExecOutput {
            status,
            stdout,
            stderr,
        })
    }

    pub(super) fn channel_error(
        &self,
        doing: &'static str,
    ) -> impl FnOnce(ssh2::Error) -> SshError + '_ {
        move |source| SshError::Channel {
            host: self.name.clone(),
            doing,
            source,
        }
    }

    /// A channel running `command`, its stdin written and closed.
    fn start(&self, command: &str, stdin: Option<&[u8]>) -> Result<ssh2::Channel, SshError> {
        let mut channel = self
            .session
            .channel_session()
            .map_err(self.channel_error("opening a channel"))?;
        channel
            .exec(command)
            .map_err(self.channel_error("starting a command"))?;
        if let Some(input) = stdin {
            channel.write_all(input).map_err(|source| SshError::Io {
                host: self.name.clone(),
                doing: "writing stdin",
                source,
            })?;
        }
        channel
            .send_eof()
            .map_err(self.channel_error("closing stdin"))?;
        Ok(channel)
    }

    /// Stdout and stderr until the command's end (EOF with nothing left to read), each
    /// line handed to `on_line` as it arrives.
    fn read_output(
        &self,
        channel: &mut ssh2::Channel,
        command: &str,
        deadline: Instant,
        timeout: Duration,
        on_line: &mut impl FnMut(&str),
    ) -> Result<(String, String), SshError> {
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
                        lines.push(&buf[..n], on_line);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(source) => {
                        return Err(SshError::Io {
                            host: self.name.clone(),
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
                    host: self.name.clone(),
                    command: command.to_string(),
                    timeout,
                });
            }
            if !progressed {
                self.wait_readable(Duration::from_millis(200));
            }
        }
        out.finish(on_line);
        err.finish(on_line);
        Ok((out.all, err.all))
    }
}

/// One output stream of a remote command, split into lines as they arrive (as the
/// runner splits them). Remote output can come from the app (a migration, `compose up`),
/// so what is kept is bounded: only the last [`KEPT_BYTES`] of it.
#[derive(Default)]
pub(super) struct LineBuffer {
    pending: Vec<u8>,
    pub(super) all: String,
    dropped: usize,
}

/// Most output kept from one stream of one command (its tail).
pub(super) const KEPT_BYTES: usize = 8 * 1024 * 1024;

impl LineBuffer {
    pub(super) fn push(&mut self, bytes: &[u8], on_line: &mut impl FnMut(&str)) {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        crate::workflow::drain_lines(&mut self.pending, &crate::secret::registered(), &mut |l| {
            lines.push(String::from_utf8_lossy(l).into_owned())
        });
        for line in lines {
            self.take(&line, on_line);
        }
    }

    pub(super) fn take(&mut self, line: &str, on_line: &mut impl FnMut(&str)) {
        on_line(line);
        self.all.push_str(line);
        self.all.push('\n');
        if self.all.len() > KEPT_BYTES {
            // At the start of a line: a cut inside one could leave the end of a secret
            // that no mask matches. No line splits a secret (see `drain_lines`), and a
            // secret of several lines is masked line by line too.
            let from = self.all.len() - KEPT_BYTES / 2;
            let cut = self.all.as_bytes()[from..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.all.len(), |i| from + i + 1);
            self.all.drain(..cut);
            self.dropped += cut;
        }
    }

    pub(super) fn finish(&mut self, on_line: &mut impl FnMut(&str)) {
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
