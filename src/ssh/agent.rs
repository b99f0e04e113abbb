//! berth's supervised remote session: one long-lived `sh` per host, started once on one
//! SSH channel, through which every command of the deploy runs. A command costs what it
//! does: no login shell and no new channel per step.
//!
//! Protocol. berth writes one request per line: `<id> <command> <stdin> <cleanup>`, each
//! field `:`-prefixed, with space, tab, newline, backslash and control bytes written as
//! `\0NNN` (decoded by `printf %b`, the same in dash, bash and busybox). The command's
//! stdout and stderr pass through; when it ends the agent prints `\n<id> <status>` on
//! stdout and `\n<id>` on stderr. `<id>` is random per command, so no output can forge
//! an end. While a command runs, any line berth writes cancels it: its process group gets
//! TERM, then KILL after 5 s, and its cleanup command runs (e.g. `docker rm -f` of a
//! one-off container, which outlives its client).
//!
//! Liveness. The agent touches the lock's heartbeat while it lives. When its stdin ends
//! (berth killed, runner gone, network cut) it stops the running command, runs its cleanup
//! and marks the lock `abandoned` if the lock is this run's, so the next deploy takes it
//! at once instead of waiting for the heartbeat to go stale; a release record this run
//! left `pending` becomes `interrupted`.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::exec::LineBuffer;
use super::{quote_argv, ExecOutput, HostSession, SshError};

const AGENT: &str = r#"lock=$1 token=$2 sid=$3 agent=$$ pid= cleanup= keep= watcher= relay= fifo=
# What this session runs may take the lock: it records the session that holds it.
export BERTH_SESSION="$sid" BERTH_AGENT=$$
exec 3<&0 </dev/null
decode() { printf '%bx' "${1#:}"; }
# A child that exited is a zombie until waited for, and `kill -0` still finds it. The
# state is the field after the command name, which may itself hold ") ".
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  st=${st##*) }; [ "${st%% *}" != Z ]
}
stop_command() {
  [ -n "$pid" ] || return 0
  kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  # The cleanup is bounded too (a docker daemon that hangs must not hang the session).
  if [ -n "$cleanup" ]; then
    if command -v timeout >/dev/null; then timeout 30 sh -c "$cleanup"; else sh -c "$cleanup"; fi >/dev/null 2>&1
  fi
  # A command that ignores TERM gets 5 s.
  i=0; while alive "$pid" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
}
# The lock is this session's: its token, and the session that took or reclaimed it last
# (after a reconnect, an older session of the same run must not touch it).
ours() { [ "$(cat "$lock/token" 2>/dev/null)" = "$token" ] && read -r os _ < "$lock/session" 2>/dev/null && [ "$os" = "$sid" ]; }
abandon() {
  # Under the takeover mutex, as every change of a held lock (a reclaim may be under way).
  m="$lock.takeover" i=0
  until mkdir "$m" 2>/dev/null; do i=$((i+1)); [ $i -lt 100 ] || return 0; sleep 0.05; done
  if ours; then
    : > "$lock/abandoned"
    # What this run left pending was interrupted: the next run must not take it as proven.
    for f in "${lock%/lock}"/releases/*/release.json; do
      [ -f "$f" ] && grep -q '"outcome": "pending"' "$f" && sed -i 's/"outcome": "pending"/"outcome": "interrupted"/' "$f"
    done
  fi
  rmdir "$m"
}
# A command that must not be cut half-way (a restore) runs to its end when berth is gone,
# for at most 10 minutes, and only while the lock is still this session's: a session that
# a reconnect replaced stops it, as the new one does the work.
finish() {
  # Once: a reclaim's TERM while this session waits or heals must not start it again (a
  # handler, not an ignore, which the heal's children would inherit).
  trap : TERM HUP INT
  # (`ours` each time: a reconnect that makes the lock its new session's stops the wait.)
  if [ -n "$keep" ] && [ -n "$pid" ]; then
    i=0; while alive "$pid" && ours && [ $i -lt 6000 ]; do sleep 0.1; i=$((i+1)); done
  fi
  # What Docker was asked to do by a command stopped now goes on without it: the heal
  # waits the project's stop window from here before its first `up`.
  if [ -n "$pid" ] && alive "$pid"; then export BERTH_STOPPED_AT=$(date +%s); fi
  stop_command
  kill -KILL "$watcher" 2>/dev/null
  [ -f "$lock/heal" ] && ours && heal
  abandon; kill "$beat" 2>/dev/null
  [ -n "$fifo" ] && rm -f "$fifo"
  exit 0
}
# The session ended before berth's verdict with a heal armed (remote::heal): the host
# restores the newest proven release by itself.
heal() {
  # berth is gone, not reconnecting: a reconnect makes the lock its new session's within
  # the reconnect window (then it is not ours any more). A cancelled run hands over.
  i=0; while [ ! -e "$lock/handover" ] && [ $i -lt HEAL_WAIT_TENTHS ]; do sleep 0.1; i=$((i+1)); ours || return 0; done
  # Under the mutex the lock becomes the heal's: a reconnect later finds it taken and
  # leaves the host to the heal, and no deploy takes it before the heal is done.
  m="$lock.takeover" i=0
  # A taker killed half-way leaves its mark; after a minute it no longer counts.
  find "$m" -maxdepth 0 -mmin +1 -exec rmdir {} \; 2>/dev/null
  until mkdir "$m" 2>/dev/null; do i=$((i+1)); [ $i -lt 100 ] || return 0; sleep 0.05; done
  if ! ours; then rmdir "$m"; return 0; fi
  ht="heal-$sid"
  printf '%s\n' "$ht" > "$lock/token"
  printf '{"token":"","run_url":"","actor":"the host itself (self-heal: the run that held the lock was gone before its verdict)","sha":"","started_at":"%s"}\n' "$(date -u +%FT%TZ)" > "$lock/holder.json"
  touch "$lock/heartbeat"; rmdir "$m"
  t=; command -v timeout >/dev/null && t="timeout -k 10 HEAL_BOUND_SECS"
  $t sh "$lock/heal" "$lock" "$ht" </dev/null >"${lock%/lock}/heal.log" 2>&1
  # Stopped at its bound (or ended without freeing the lock): say so, and free it.
  if [ "$(cat "$lock/token" 2>/dev/null)" = "$ht" ]; then
    printf '{"at": "%s", "began": "", "restored": "", "proven": false, "why": "the heal was stopped at its bound of HEAL_BOUND_SECS s or ended without releasing the lock"}\n' "$(date -u +%FT%TZ)" > "${lock%/lock}/healed.json"
    rm -rf "$lock"
  fi
}
trap finish TERM HUP INT
trap stop_command USR1
( trap 'kill "$s" 2>/dev/null; exit 0' TERM
  while :; do
    sleep 15 & s=$!; wait "$s"
    # An agent killed outright (KILL, OOM) must not leave its lock alive.
    kill -0 "$agent" 2>/dev/null || exit 0
    [ "$(cat "$lock/token" 2>/dev/null)" = "$token" ] && touch "$lock/heartbeat"
  done ) >/dev/null 2>&1 &
beat=$!
echo berth-agent-ready
while IFS=' ' read -r id c in cl k <&3; do
  [ -n "$c" ] || continue
  c=$(decode "$c"); c=${c%x}
  in=$(decode "$in"); in=${in%x}
  cleanup=$(decode "$cl"); cleanup=${cleanup%x}
  keep=${k#:} ss=
  command -v setsid >/dev/null && ss=setsid
  fifo="${TMPDIR:-/tmp}/berth-keep.$sid.$$"
  if [ -n "$keep" ] && rm -f "$fifo" && mkfifo -m 600 "$fifo"; then
    # A kept command may outlive the channel: its output goes through a relay that
    # ignores a closed channel, as a write to it would kill the command (Go programs
    # die of SIGPIPE on stdout or stderr). Its stderr is merged into its stdout.
    ( trap '' PIPE; while IFS= read -r l || [ -n "$l" ]; do printf '%s\n' "$l" 2>/dev/null; done < "$fifo" ) 3<&- &
    relay=$!
    printf '%s' "$in" | $ss sh -c "$c" 3<&- >"$fifo" 2>&1 &
  else
    fifo=
    printf '%s' "$in" | $ss sh -c "$c" 3<&- &
  fi
  pid=$!
  # Anything on stdin while the command runs: a line cancels it, the end stops everything.
  ( if IFS= read -r _ <&3; then kill -USR1 $$; else kill -TERM $$; fi ) >/dev/null 2>&1 &
  watcher=$!
  while :; do wait "$pid"; s=$?; kill -0 "$pid" 2>/dev/null || break; done
  # KILL: a shell that inherited a TERM trap would go on reading (busybox does).
  kill -KILL "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null
  if [ -n "$relay" ]; then wait "$relay" 2>/dev/null; rm -f "$fifo"; fi
  pid= cleanup= keep= relay= fifo=
  printf '\n%s %s\n' "$id" "$s"; printf '\n%s\n' "$id" >&2
done
finish
"#;

const READY: &str = "berth-agent-ready";

/// How long the agent of a session that ended with a heal armed waits for berth to
/// connect again (and make the lock its new session's) before it heals the host. berth
/// tries to reconnect for 20 s; one that comes back later finds the lock the heal's.
pub const HEAL_WAIT: Duration = Duration::from_secs(30);
/// The longest a heal may take (settle, `up`, steady, twice), after which it is stopped.
pub const HEAL_BOUND: Duration = Duration::from_secs(900);

/// The agent's script with its bounds filled in.
pub(super) fn agent_script() -> String {
    AGENT
        .replace(
            "HEAL_WAIT_TENTHS",
            &(HEAL_WAIT.as_millis() / 100).to_string(),
        )
        .replace("HEAL_BOUND_SECS", &HEAL_BOUND.as_secs().to_string())
}

/// A command that prints nothing for this long makes berth ask the host whether the
/// connection is still alive; libssh2's keepalives cannot tell (it sends them, but a
/// dead peer never says so, and TCP gives up only after many minutes).
const SILENCE_PROBE_AFTER: Duration = Duration::from_secs(15);
/// How long the host gets to answer that question.
const SILENCE_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a cancelled command gets to stop, and its cleanup to run, before berth gives
/// up on the session.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// When and how a command is stopped: at `timeout`, or when `cancel` is set, with
/// `cleanup` run on the host then.
#[derive(Clone, Copy)]
pub(super) struct Stop<'a> {
    pub cleanup: &'a str,
    pub timeout: Duration,
    pub cancel: Option<&'a AtomicBool>,
    /// Runs to its end on the host even if the session ends (a restore).
    pub keep: bool,
}

/// The agent's channel, once started.
pub(super) struct Agent {
    channel: ssh2::Channel,
}

/// A request field: `:` then the bytes, those that `read` or the line would break written
/// as `\0NNN`.
pub(super) fn escape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(b':');
    for &b in bytes {
        if b <= b' ' || b == b'\\' || b == 0x7f {
            out.extend_from_slice(format!("\\0{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// One request line.
pub(super) fn request(id: &str, command: &str, stdin: &[u8], cleanup: &str, keep: bool) -> Vec<u8> {
    let mut line = id.as_bytes().to_vec();
    let keep: &[u8] = if keep { b"1" } else { b"" };
    for field in [command.as_bytes(), stdin, cleanup.as_bytes(), keep] {
        line.push(b' ');
        line.extend(escape(field));
    }
    line.push(b'\n');
    line
}

/// The agent's argv: its script, the lock it keeps alive, and its session id.
pub(super) fn agent_command(lock_dir: &str, token: &str, session: &str) -> String {
    quote_argv(&[
        "sh".into(),
        "-c".into(),
        agent_script(),
        "berth-agent".into(),
        lock_dir.into(),
        token.into(),
        session.into(),
    ])
}

/// One stream of a command's output up to its end marker, split into lines as they
/// arrive. The agent ends the output with a newline of its own before the marker, so an
/// empty line is held back until the next line shows it was the command's.
#[derive(Default)]
pub(super) struct Marked {
    lines: LineBuffer,
    pending: Vec<u8>,
    held_empty: bool,
    /// The end marker's text after the id (the exit status on stdout; empty on stderr).
    pub(super) end: Option<String>,
}

impl Marked {
    pub(super) fn push(&mut self, bytes: &[u8], id: &str, on_line: &mut impl FnMut(&str)) {
        if self.end.is_some() {
            return;
        }
        self.pending.extend_from_slice(bytes);
        let mut lines: Vec<String> = Vec::new();
        crate::workflow::drain_lines(&mut self.pending, &crate::secret::registered(), &mut |l| {
            lines.push(String::from_utf8_lossy(l).into_owned())
        });
        for line in lines {
            if self.end.is_some() {
                break;
            }
            if let Some(rest) = line.strip_prefix(id) {
                let status = rest.strip_prefix(' ').unwrap_or(rest);
                if status.bytes().all(|b| b.is_ascii_digit()) {
                    self.end = Some(status.to_string());
                    continue;
                }
            }
            if std::mem::take(&mut self.held_empty) {
                self.lines.take("", on_line);
            }
            if line.is_empty() {
                self.held_empty = true;
            } else {
                self.lines.take(&line, on_line);
            }
        }
    }

    pub(super) fn text(mut self, on_line: &mut impl FnMut(&str)) -> String {
        self.lines.finish(on_line);
        self.lines.all
    }
}

impl HostSession {
    /// Starts the host's agent (see the module doc); every later command runs through it.
    pub fn start_agent(&self, lock_dir: &str, token: &str) -> Result<(), SshError> {
        let started = Instant::now();
        let mut channel = self
            .session
            .channel_session()
            .map_err(self.channel_error("starting the remote session"))?;
        channel
            .exec(&agent_command(
                lock_dir,
                token,
                &format!("{:016x}", rand::random::<u64>()),
            ))
            .map_err(self.channel_error("starting the remote session"))?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains(READY) {
            let n = channel.read(&mut buf).map_err(|source| SshError::Io {
                host: self.name.clone(),
                doing: "starting the remote session",
                source,
            })?;
            if n == 0 {
                let mut err = String::new();
                let _ = channel.stderr().read_to_string(&mut err);
                return Err(SshError::Lost {
                    host: self.name.clone(),
                    doing: format!("starting the remote session ({})", err.trim()),
                });
            }
            seen.extend_from_slice(&buf[..n]);
        }
        *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = Some(Agent { channel });
        tracing::debug!(host = %self.name, ms = started.elapsed().as_millis(), "remote session started");
        Ok(())
    }

    /// Runs `command` through the agent. At `timeout`, or when `cancel` is set, the
    /// command is stopped (and `cleanup` run) on the host before this returns.
    pub(super) fn agent_exec(
        &self,
        agent: &mut Agent,
        command: &str,
        stdin: Option<&[u8]>,
        stop: &Stop,
        mut on_line: impl FnMut(&str),
    ) -> Result<ExecOutput, SshError> {
        let Stop {
            cleanup,
            timeout,
            cancel,
            keep,
        } = *stop;
        let id = format!("berth-end-{:032x}", rand::random::<u128>());
        let line = request(&id, command, stdin.unwrap_or_default(), cleanup, keep);
        agent
            .channel
            .write_all(&line)
            .and_then(|_| agent.channel.flush())
            .map_err(|source| self.lost(format!("sending a command ({source})")))?;
        let deadline = Instant::now() + timeout;
        let (mut out, mut err) = (Marked::default(), Marked::default());
        let mut stopping: Option<(Instant, bool)> = None;
        let mut heard = Instant::now();
        self.session.set_blocking(false);
        let result = loop {
            match self.read_marked(agent, &id, &mut out, &mut err, &mut on_line) {
                Ok(true) => heard = Instant::now(),
                Ok(false) => self.wait_readable(Duration::from_millis(200)),
                Err(e) => break Err(e),
            }
            // A quiet command (a pull, a migration) and a connection that died without a
            // word (a NAT dropped it) look the same from here: ask the host something.
            if heard.elapsed() > SILENCE_PROBE_AFTER {
                if let Err(e) = self.answers() {
                    break Err(e);
                }
                heard = Instant::now();
            }
            if out.end.is_some() && err.end.is_some() {
                break Ok(());
            }
            let cancelled = cancel.is_some_and(|c| c.load(Ordering::Relaxed));
            match stopping {
                None if cancelled || Instant::now() > deadline => {
                    stopping = Some((Instant::now(), cancelled));
                    self.session.set_blocking(true);
                    let sent = agent.channel.write_all(b"stop\n");
                    self.session.set_blocking(false);
                    if let Err(source) = sent {
                        break Err(self.lost(format!("stopping a command ({source})")));
                    }
                }
                Some((since, _)) if since.elapsed() > STOP_GRACE => {
                    break Err(self.lost("stopping a command that would not stop".into()));
                }
                _ => {}
            }
        };
        self.session.set_blocking(true);
        result?;
        let status = out.end.clone().unwrap_or_default();
        let (stdout, stderr) = (out.text(&mut on_line), err.text(&mut on_line));
        match stopping {
            Some((_, true)) => Err(SshError::Cancelled {
                host: self.name.clone(),
                command: command.to_string(),
            }),
            Some((_, false)) => Err(SshError::Timeout {
                host: self.name.clone(),
                command: command.to_string(),
                timeout,
            }),
            None => Ok(ExecOutput {
                status: status.parse().unwrap_or(-1),
                stdout,
                stderr,
            }),
        }
    }

    /// Reads what is there of both streams; whether anything came.
    fn read_marked(
        &self,
        agent: &mut Agent,
        id: &str,
        out: &mut Marked,
        err: &mut Marked,
        on_line: &mut impl FnMut(&str),
    ) -> Result<bool, SshError> {
        let mut buf = [0u8; 16384];
        let mut progressed = false;
        for is_err in [false, true] {
            let read = if is_err {
                agent.channel.stderr().read(&mut buf)
            } else {
                agent.channel.read(&mut buf)
            };
            match read {
                Ok(0) => {}
                Ok(n) => {
                    progressed = true;
                    let stream = if is_err { &mut *err } else { &mut *out };
                    stream.push(&buf[..n], id, on_line);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.lost(format!("reading output ({e})"))),
            }
        }
        if !progressed && agent.channel.eof() {
            return Err(self.lost("running a command: the remote session ended".into()));
        }
        Ok(progressed)
    }

    /// Whether the host still answers on this connection: one SFTP `lstat` (or a channel
    /// opened and closed, before SFTP started), bounded by [`SILENCE_PROBE_TIMEOUT`].
    fn answers(&self) -> Result<(), SshError> {
        self.session.set_blocking(true);
        self.session
            .set_timeout(SILENCE_PROBE_TIMEOUT.as_millis() as u32);
        let asked = match self.sftp.get() {
            Some(sftp) => sftp.lstat(std::path::Path::new("/")).map(drop),
            None => self.session.channel_session().and_then(|mut c| c.close()),
        };
        self.session.set_timeout(self.timeout_ms);
        self.session.set_blocking(false);
        asked.map_err(|e| {
            self.lost(format!(
                "the connection went silent: nothing came for {} s and the host did not answer within {} s ({e})",
                SILENCE_PROBE_AFTER.as_secs(),
                SILENCE_PROBE_TIMEOUT.as_secs()
            ))
        })
    }

    fn lost(&self, doing: String) -> SshError {
        SshError::Lost {
            host: self.name.clone(),
            doing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the agent here under `shell` with one request `id`, as berth does: stdin
    /// stays open until the end marker came. The agent's stdout.
    fn agent_here(shell: &[&str], id: &str, input: &[u8]) -> String {
        use std::io::BufRead;
        let (mut child, dir) = spawn_agent(shell, "sid1");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        let mut out = format!("{READY}\n");
        let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
        while !out.lines().any(|l| l.starts_with(&format!("{id} "))) {
            assert!(
                reader.read_line(&mut out).unwrap() > 0,
                "no end marker: {out}"
            );
        }
        drop(stdin);
        child.wait().unwrap();
        assert!(
            dir.path().join("lock/abandoned").exists(),
            "the end of stdin abandons the lock"
        );
        out
    }

    #[test]
    fn any_command_line_stdin_and_output_survive_the_framing() {
        let hostile = "printf '%s|' \"$@\"; echo; cat; printf 'no newline'";
        let cmd = quote_argv(&[
            "sh".into(),
            "-c".into(),
            hostile.into(),
            "sh".into(),
            "a b".into(),
            "tab\there".into(),
            "new\nline".into(),
            "back\\slash \\0101".into(),
            "ünïcode".into(),
        ]);
        // One request per agent: a second line written while the first command runs
        // would stop it (berth writes the next request only after the end marker).
        let input = request("id1", &cmd, b"in 1\n\\ \t2", "", false);
        for shell in [&["dash"][..], &["bash"], &["busybox", "sh"]] {
            let out = agent_here(shell, "id1", &input);
            let out = out.strip_prefix("berth-agent-ready\n").unwrap();
            let mut stdout = Marked::default();
            stdout.push(out.as_bytes(), "id1", &mut |_| {});
            assert_eq!(stdout.end.as_deref(), Some("0"), "{shell:?}: {out}");
            assert_eq!(
                stdout.text(&mut |_| {}),
                "a b|tab\there|new\nline|back\\slash \\0101|ünïcode|\nin 1\n\\ \t2no newline\n",
                "{shell:?}"
            );
            let out = agent_here(shell, "id2", &request("id2", "exit 7", b"", "", false));
            assert!(out.contains("\nid2 7\n"), "{shell:?}: {out}");
        }
    }

    #[test]
    fn output_cannot_forge_the_end_and_a_trailing_newline_is_kept() {
        let mut m = Marked::default();
        let mut seen = Vec::new();
        m.push(b"id1 0 forged\nline\n\n\nid1 3\n", "id1", &mut |l| {
            seen.push(l.to_string())
        });
        assert_eq!(m.end.as_deref(), Some("3"));
        assert_eq!(m.text(&mut |_| {}), "id1 0 forged\nline\n\n");
    }

    /// The agent under `shell`, started here as berth starts it (session `sid1`), with
    /// its lock dir; the lock names `session` as its session.
    fn spawn_agent(shell: &[&str], session: &str) -> (std::process::Child, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("lock");
        std::fs::create_dir(&lock).unwrap();
        std::fs::write(lock.join("token"), "tok\n").unwrap();
        std::fs::write(lock.join("session"), format!("{session} 1\n")).unwrap();
        let mut child = std::process::Command::new(shell[0])
            .args(&shell[1..])
            .args(["-c", &agent_script(), "berth-agent"])
            .arg(&lock)
            .args(["tok", "sid1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The ready line, which berth waits for too.
        let mut ready = [0u8; READY.len() + 1];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut ready).unwrap();
        (child, dir)
    }

    fn exits_within(child: &mut std::process::Child, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    #[test]
    fn a_superseded_session_ends_without_touching_the_lock_and_term_ends_an_idle_one() {
        for shell in [&["dash"][..], &["bash"], &["busybox", "sh"]] {
            // The lock names a newer session (a reconnect): this one's end leaves it be.
            let (mut agent, dir) = spawn_agent(shell, "sid2");
            drop(agent.stdin.take());
            assert!(exits_within(&mut agent, 5), "{shell:?}");
            assert!(!dir.path().join("lock/abandoned").exists(), "{shell:?}");
            // TERM while idle (a reclaim stopping it): it ends, and abandons its own lock.
            let (mut agent, dir) = spawn_agent(shell, "sid1");
            std::thread::sleep(Duration::from_millis(200));
            let pid = agent.id().to_string();
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap();
            assert!(
                exits_within(&mut agent, 5),
                "{shell:?}: TERM did not end it"
            );
            assert!(dir.path().join("lock/abandoned").exists(), "{shell:?}");
        }
    }

    #[test]
    fn at_the_end_of_the_session_a_kept_command_runs_to_its_end_and_others_stop() {
        for shell in [&["dash"][..], &["bash"], &["busybox", "sh"]] {
            for keep in [true, false] {
                let (mut agent, dir) = spawn_agent(shell, "sid1");
                let done = dir.path().join("done");
                // It prints after berth is gone: a write to the closed channel must not
                // kill it.
                let cmd = format!(
                    "sleep 1; echo progress; echo progress >&2; touch '{}'",
                    done.display()
                );
                let mut stdin = agent.stdin.take().unwrap();
                stdin
                    .write_all(&request("id1", &cmd, b"", "", keep))
                    .unwrap();
                std::thread::sleep(Duration::from_millis(300));
                drop(stdin);
                drop(agent.stdout.take());
                assert!(exits_within(&mut agent, 10), "{shell:?}");
                assert_eq!(done.exists(), keep, "{shell:?} keep={keep}");
                assert!(dir.path().join("lock/abandoned").exists(), "{shell:?}");
            }
            // A session that a reconnect replaced stops even a kept command: the new
            // session does the work.
            let (mut agent, dir) = spawn_agent(shell, "sid1");
            let done = dir.path().join("done");
            let cmd = format!("sleep 3; touch '{}'", done.display());
            let mut stdin = agent.stdin.take().unwrap();
            stdin
                .write_all(&request("id1", &cmd, b"", "", true))
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(dir.path().join("lock/session"), "sid2 1\n").unwrap();
            drop(stdin);
            assert!(exits_within(&mut agent, 10), "{shell:?}");
            std::thread::sleep(Duration::from_secs(4));
            assert!(
                !done.exists(),
                "{shell:?}: a superseded session finished its command"
            );
            assert!(!dir.path().join("lock/abandoned").exists(), "{shell:?}");
        }
    }

    #[test]
    fn a_kept_command_reports_its_output_and_status_while_berth_is_there() {
        for shell in [&["dash"][..], &["bash"], &["busybox", "sh"]] {
            let (mut agent, _dir) = spawn_agent(shell, "sid1");
            let mut stdin = agent.stdin.take().unwrap();
            stdin
                .write_all(&request(
                    "id1",
                    "echo out; echo err >&2; printf tail; exit 3",
                    b"",
                    "",
                    true,
                ))
                .unwrap();
            let mut out = String::new();
            let mut reader = std::io::BufReader::new(agent.stdout.take().unwrap());
            while !out.contains("\nid1 ") {
                assert!(
                    std::io::BufRead::read_line(&mut reader, &mut out).unwrap() > 0,
                    "{out}"
                );
            }
            drop(stdin);
            let mut m = Marked::default();
            m.push(out.as_bytes(), "id1", &mut |_| {});
            assert_eq!(m.end.as_deref(), Some("3"), "{shell:?}: {out}");
            let text = m.text(&mut |_| {});
            assert!(
                text.contains("out\n") && text.contains("err\n") && text.contains("tail"),
                "{shell:?}: {text}"
            );
            agent.wait().unwrap();
        }
    }

    #[test]
    fn a_session_that_ends_with_a_heal_armed_heals_under_a_lock_of_its_own() {
        for shell in [&["dash"][..], &["bash"], &["busybox", "sh"]] {
            // Handed over (a cancelled run): the heal runs at once when the session
            // ends, with the lock dir and the heal's own token, which the lock now holds.
            let (mut agent, dir) = spawn_agent(shell, "sid1");
            let lock = dir.path().join("lock");
            let ran = dir.path().join("ran");
            std::fs::write(
                lock.join("heal"),
                format!(
                    "echo \"$1 $2 $(cat \"$1/token\")\" > '{r}'; cat \"$1/holder.json\" >> '{r}'",
                    r = ran.display()
                ),
            )
            .unwrap();
            std::fs::write(lock.join("handover"), "").unwrap();
            drop(agent.stdin.take());
            assert!(exits_within(&mut agent, 10), "{shell:?}");
            let said = std::fs::read_to_string(&ran).unwrap_or_default();
            let (args, holder) = said.split_once('\n').unwrap_or_default();
            assert_eq!(
                args,
                format!("{} heal-sid1 heal-sid1", lock.display()),
                "{shell:?}"
            );
            assert!(holder.contains("self-heal"), "{shell:?}: {holder}");
            // A heal that ended without releasing the lock (stopped at its bound): the
            // agent frees it and leaves a note saying so.
            assert!(!lock.exists(), "{shell:?}");
            let note = std::fs::read_to_string(dir.path().join("healed.json")).unwrap();
            assert!(note.contains("\"proven\": false"), "{shell:?}: {note}");

            // Not handed over: the agent first waits for a reconnect, and one that
            // comes (the lock names a newer session) means no heal at all.
            let (mut agent, dir) = spawn_agent(shell, "sid1");
            let lock = dir.path().join("lock");
            let ran = dir.path().join("ran");
            std::fs::write(lock.join("heal"), format!("touch '{}'", ran.display())).unwrap();
            drop(agent.stdin.take());
            std::thread::sleep(Duration::from_millis(500));
            assert!(!ran.exists(), "{shell:?}: healed without waiting");
            assert!(
                agent.try_wait().unwrap().is_none(),
                "{shell:?}: did not wait"
            );
            std::fs::write(lock.join("session"), "sid2 1\n").unwrap();
            assert!(exits_within(&mut agent, 5), "{shell:?}");
            assert!(!ran.exists(), "{shell:?}: healed under a reconnected run");
            assert_eq!(
                std::fs::read_to_string(lock.join("token")).unwrap().trim(),
                "tok"
            );
        }
    }
}
