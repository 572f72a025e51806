//! The egress doorway: running external commands, probing and signalling
//! processes. Nothing else in memoryd touches other processes.
//!
//! The refusing form (test sandbox armed) runs only binaries named
//! explicitly by an absolute path and memoryd's own binaries, and signals
//! only a daemon proven to be this root's own (see [`crate::host::instance`]).
//! The one group ever signalled is the one [`Egress::run`] made for a
//! command, at its deadline.
#![allow(clippy::disallowed_methods)]

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A refused or failed effect on another process.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(
        "refused to run {program}: the test sandbox runs only binaries named by an absolute path \
         (flag, MEMORYD_* variable or config) and memoryd's own"
    )]
    Refused { program: PathBuf },
    #[error("cannot run {program}: {error}")]
    Spawn { program: PathBuf, error: std::io::Error },
    #[error("{program} did not finish within {secs}s and was killed", secs = after.as_secs_f32())]
    Timeout { program: PathBuf, after: Duration },
    #[error("cannot send {signal} to pid {pid}: {error}")]
    Signal { pid: i32, signal: Signal, error: nix::Error },
    #[error("HTTP to 127.0.0.1:{port}: {error}")]
    Http { port: u16, error: String },
}

impl EgressError {
    pub fn is_refusal(&self) -> bool {
        matches!(self, EgressError::Refused { .. })
    }
}

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// The exit code; None when a signal ended it.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// What can be learned about a live process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: i32,
    /// The program as the process named it (argv[0], spaces and all).
    pub argv0: String,
    /// The command line, arguments separated by spaces.
    pub cmdline: String,
    /// An opaque start time: the same pid with another start time is
    /// another process.
    pub start_time: String,
}

/// The egress doorway.
#[derive(Debug, Clone)]
pub struct Egress {
    /// `None` for the live form; the allowed binaries for the refusing form.
    allowed: Option<Vec<PathBuf>>,
}

impl Egress {
    pub fn live() -> Egress {
        Egress { allowed: None }
    }

    /// The refusing form, allowing these absolute binaries.
    pub fn refusing(allowed: Vec<PathBuf>) -> Egress {
        Egress { allowed: Some(allowed) }
    }

    /// The refusing form when the sandbox is armed, else the live one.
    pub fn from_env(allowed: Vec<PathBuf>) -> Egress {
        if crate::sandbox_armed() { Egress::refusing(allowed) } else { Egress::live() }
    }

    pub fn is_sandboxed(&self) -> bool {
        self.allowed.is_some()
    }

    fn check_program(&self, program: &Path) -> Result<(), EgressError> {
        match &self.allowed {
            None => Ok(()),
            Some(allowed) if program.is_absolute() && allowed.iter().any(|a| a == program) => Ok(()),
            Some(_) => Err(EgressError::Refused { program: program.to_path_buf() }),
        }
    }

    /// Runs `program` to completion, feeding `stdin`, killing it after `timeout`.
    ///
    /// The command runs in a process group of its own, and the deadline
    /// covers its output too: at `timeout` the whole group is killed and
    /// reading stops, even when a grandchild (`sleep 600 &`) still holds the
    /// pipes. Once the command itself has exited, what still holds its
    /// pipes after [`EXIT_GRACE`] is killed with its group too.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        program: &Path,
        args: &[S],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CommandOutput, EgressError> {
        use std::os::unix::process::CommandExt;
        self.check_program(program)?;
        let spawn_err = |error| EgressError::Spawn { program: program.to_path_buf(), error };
        let deadline = Instant::now() + timeout;
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(spawn_err)?;
        // The group is the child's pid (process_group(0) above).
        let group = child.id() as i32;
        let mut io = Pipes::new(&mut child, stdin.unwrap_or_default()).map_err(spawn_err)?;
        let mut exited: Option<(std::process::ExitStatus, Instant)> = None;
        loop {
            io.pump();
            if exited.is_none()
                && let Some(status) = child.try_wait().map_err(spawn_err)?
            {
                exited = Some((status, Instant::now()));
            }
            let now = Instant::now();
            match exited {
                Some((status, _)) if io.at_end() => return Ok(io.output(status)),
                Some((status, at)) if now >= deadline || now.duration_since(at) >= EXIT_GRACE => {
                    tracing::warn!(
                        program = %program.display(),
                        "the command exited but left processes holding its output; killed its process group"
                    );
                    kill_group(group);
                    return Ok(io.output(status));
                }
                None if now >= deadline => {
                    kill_group(group);
                    // SIGKILL cannot be ignored: the child is gone at once.
                    let _ = child.wait();
                    return Err(EgressError::Timeout { program: program.to_path_buf(), after: timeout });
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Starts `program` detached in its own session (`setsid`), stdin from
    /// /dev/null and both output streams into `log`.
    pub fn spawn_detached<S: AsRef<OsStr>>(&self, program: &Path, args: &[S], log: File) -> Result<Child, EgressError> {
        self.check_program(program)?;
        let spawn_err = |error| EgressError::Spawn { program: program.to_path_buf(), error };
        let log2 = log.try_clone().map_err(spawn_err)?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
        detach(&mut command);
        command.spawn().map_err(spawn_err)
    }

    /// Replaces this process with `program` (same pid), adding `env`.
    /// Returns only if that failed.
    pub fn exec<S: AsRef<OsStr>>(&self, program: &Path, args: &[S], env: &[(&str, &str)]) -> EgressError {
        use std::os::unix::process::CommandExt;
        if let Err(e) = self.check_program(program) {
            return e;
        }
        let mut command = Command::new(program);
        command.args(args).envs(env.iter().copied());
        EgressError::Spawn { program: program.to_path_buf(), error: command.exec() }
    }

    /// What is known about `pid`, or None when no such process lives.
    pub fn probe(&self, pid: i32) -> Option<ProcessInfo> {
        if pid <= 0 {
            return None;
        }
        probe_process(pid)
    }

    /// The parent of `pid`, or None when it is gone.
    pub fn parent_of(&self, pid: i32) -> Option<i32> {
        if pid <= 1 {
            return None;
        }
        parent_process(pid)
    }

    /// Whether `pid` has `path` open (Linux: `/proc/<pid>/fd`).
    pub fn has_open(&self, pid: i32, path: &Path) -> bool {
        let Ok(wanted) = path.canonicalize() else {
            return false;
        };
        has_open_file(pid, &wanted)
    }

    /// Sends `signal` to a daemon proven to be this root's own. Never a
    /// pid <= 1 and never a group.
    pub fn signal_daemon(
        &self,
        daemon: &crate::host::instance::VerifiedDaemon,
        signal: Signal,
    ) -> Result<(), EgressError> {
        let pid = daemon.pid();
        if pid <= 1 {
            return Err(EgressError::Signal { pid, signal, error: nix::Error::EPERM });
        }
        nix::sys::signal::kill(Pid::from_raw(pid), signal).map_err(|error| EgressError::Signal { pid, signal, error })
    }
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The most of an HTTP answer read (an MCP initialize answer is a few
/// hundred bytes).
const HTTP_MAX: usize = 64 << 10;

/// Who listens on a TCP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    pub uid: u32,
    /// The pid and name of the process, when this user may look into it.
    pub process: Option<(i32, String)>,
}

impl std::fmt::Display for PortHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.process {
            Some((pid, name)) => write!(f, "{name} (pid {pid})"),
            None => write!(f, "a process of uid {}", self.uid),
        }
    }
}

impl Egress {
    /// Who listens on TCP `port` (Linux: `/proc/net/tcp`, `tcp6` and the
    /// processes' open sockets); None when that cannot be known.
    pub fn port_holder(&self, port: u16) -> Option<PortHolder> {
        port_listener(port)
    }

    /// [`port_holder`](Self::port_holder) as words: "another program" when
    /// it cannot be known.
    pub fn who_holds(&self, port: u16) -> String {
        self.port_holder(port).map_or_else(|| "another program".to_owned(), |h| h.to_string())
    }

    /// POSTs `body` (JSON) to `http://127.0.0.1:<port><path>` and reads the
    /// answer, all within `timeout`. Loopback only; allowed in both forms.
    pub fn http_post_loopback(
        &self,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<HttpAnswer, EgressError> {
        use std::net::{Ipv4Addr, SocketAddr, TcpStream};
        let http = |error: String| EgressError::Http { port, error };
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| http(e.to_string()))?;
        stream.set_write_timeout(Some(timeout)).map_err(|e| http(e.to_string()))?;
        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).map_err(|e| http(e.to_string()))?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        // To the end of the answer, its end of stream, or the deadline.
        while raw.len() < HTTP_MAX && !parse_http(&raw).is_some_and(|(_, complete)| complete) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stream.set_read_timeout(Some(left)).map_err(|e| http(e.to_string()))?;
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                Err(e) => return Err(http(e.to_string())),
            }
        }
        match parse_http(&raw) {
            Some((answer, _)) => Ok(answer),
            None if raw.is_empty() => Err(http(format!("no answer within {}s", timeout.as_secs_f32()))),
            None => {
                let line = String::from_utf8_lossy(&raw[..raw.len().min(80)]).lines().next().unwrap_or("").to_owned();
                Err(http(format!("not an HTTP answer: {line:?}")))
            }
        }
    }
}

/// An HTTP answer as far as `raw` holds it, and whether it is complete
/// (by its length or its last chunk); None before its head is whole.
fn parse_http(raw: &[u8]) -> Option<(HttpAnswer, bool)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.strip_prefix("HTTP/")?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let mut answer = HttpAnswer { status, headers, body: Vec::new() };
    let complete = if answer.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        dechunk(rest, &mut answer.body)
    } else if let Some(len) = answer.header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        answer.body.extend_from_slice(&rest[..rest.len().min(len)]);
        rest.len() >= len
    } else {
        answer.body.extend_from_slice(rest);
        false
    };
    Some((answer, complete))
}

/// Decodes a chunked body into `out`; whether its last chunk came.
fn dechunk(mut rest: &[u8], out: &mut Vec<u8>) -> bool {
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else { return false };
        let size = String::from_utf8_lossy(&rest[..eol]);
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else { return false };
        if n == 0 {
            return true;
        }
        let data = &rest[eol + 2..];
        if data.len() < n + 2 {
            out.extend_from_slice(&data[..data.len().min(n)]);
            return false;
        }
        out.extend_from_slice(&data[..n]);
        rest = &data[n + 2..];
    }
}

/// After a command exits, how long its output may take to reach its end
/// before the processes that still hold the pipes are killed.
pub const EXIT_GRACE: Duration = Duration::from_millis(200);

/// Kills the process group `run` made for a command: it holds only that
/// command and what it started (never memoryd, never a group given from
/// outside).
fn kill_group(group: i32) {
    if group > 1 {
        let _ = nix::sys::signal::killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
}

/// A running command's pipes, all non-blocking, so that one loop can feed,
/// read and watch the clock without a thread that could outlive the call.
struct Pipes<'a> {
    stdin: Option<std::process::ChildStdin>,
    input: &'a [u8],
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
    out: Vec<u8>,
    err: Vec<u8>,
}

impl<'a> Pipes<'a> {
    fn new(child: &mut Child, input: &'a [u8]) -> std::io::Result<Pipes<'a>> {
        let pipes = Pipes {
            stdin: child.stdin.take(),
            input,
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            out: Vec::new(),
            err: Vec::new(),
        };
        let nonblocking = |fd: std::os::fd::BorrowedFd<'_>| {
            use nix::fcntl::{FcntlArg, OFlag, fcntl};
            fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map(drop).map_err(std::io::Error::from)
        };
        use std::os::fd::AsFd;
        if let Some(p) = &pipes.stdin {
            nonblocking(p.as_fd())?;
        }
        if let Some(p) = &pipes.stdout {
            nonblocking(p.as_fd())?;
        }
        if let Some(p) = &pipes.stderr {
            nonblocking(p.as_fd())?;
        }
        Ok(pipes)
    }

    /// Writes what the pipes take now and reads what they hold.
    fn pump(&mut self) {
        self.feed();
        read_available(&mut self.stdout, &mut self.out);
        read_available(&mut self.stderr, &mut self.err);
    }

    fn feed(&mut self) {
        let Some(pipe) = &mut self.stdin else { return };
        while !self.input.is_empty() {
            match pipe.write(self.input) {
                Ok(n) => self.input = &self.input[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // A child that exits without reading its stdin is not our failure.
                Err(_) => break,
            }
        }
        // All written (or refused): closing it is the child's end of input.
        self.stdin = None;
    }

    /// Whether both output pipes reached their end.
    fn at_end(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }

    fn output(self, status: std::process::ExitStatus) -> CommandOutput {
        CommandOutput { code: status.code(), stdout: self.out, stderr: self.err }
    }
}

/// Reads what `pipe` holds now into `buf`; closes it at its end.
fn read_available(pipe: &mut Option<impl Read>, buf: &mut Vec<u8>) {
    let Some(reader) = pipe else { return };
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => break,
        }
    }
    *pipe = None;
}

#[allow(unsafe_code)]
fn detach(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only
    // setsid(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
}

#[cfg(target_os = "linux")]
fn probe_process(pid: i32) -> Option<ProcessInfo> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv: Vec<_> = raw.split(|&b| b == 0).filter(|p| !p.is_empty()).map(String::from_utf8_lossy).collect();
    let argv0 = argv.first().map(|a| a.to_string()).unwrap_or_default();
    let cmdline = argv.join(" ");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime) counts from after the parenthesised command name,
    // which may itself hold spaces.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let start_time = after_comm.split_whitespace().nth(19)?.to_owned();
    let state = after_comm.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    Some(ProcessInfo { pid, argv0, cmdline, start_time })
}

#[cfg(not(target_os = "linux"))]
fn probe_process(pid: i32) -> Option<ProcessInfo> {
    let out =
        Command::new("/bin/ps").args(["-o", "lstart=", "-o", "command=", "-p", &pid.to_string()]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    // `lstart` is a fixed 24-character date.
    let (start, cmd) = line.split_at(line.len().min(24));
    let cmdline = cmd.trim().to_owned();
    let argv0 = cmdline.split_whitespace().next().unwrap_or_default().to_owned();
    Some(ProcessInfo { pid, argv0, cmdline, start_time: start.trim().to_owned() })
}

#[cfg(target_os = "linux")]
fn parent_process(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 4 (ppid) comes after the parenthesised command name.
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
fn parent_process(pid: i32) -> Option<i32> {
    let out = Command::new("/bin/ps").args(["-o", "ppid=", "-p", &pid.to_string()]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The first listener on `port` in `/proc/net/tcp` or `tcp6`: its uid,
/// and the process that has the socket open when this user may see it.
#[cfg(target_os = "linux")]
fn port_listener(port: u16) -> Option<PortHolder> {
    const LISTEN: &str = "0A";
    let (uid, inode) = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        text.lines().skip(1).find_map(|line| {
            // sl local rem st queues timer retransmits uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            if fields.get(3) != Some(&LISTEN) || u16::from_str_radix(local_port, 16) != Ok(port) {
                return None;
            }
            Some((fields.get(7)?.parse::<u32>().ok()?, fields.get(9)?.to_string()))
        })
    })?;
    let socket = PathBuf::from(format!("socket:[{inode}]"));
    let process = std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
        if !fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == socket)) {
            return None;
        }
        let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        Some((pid, name.trim().to_owned()))
    });
    Some(PortHolder { uid, process })
}

#[cfg(not(target_os = "linux"))]
fn port_listener(_port: u16) -> Option<PortHolder> {
    None
}

#[cfg(target_os = "linux")]
fn has_open_file(pid: i32, wanted: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    entries.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|target| target == wanted))
}

#[cfg(not(target_os = "linux"))]
fn has_open_file(pid: i32, wanted: &Path) -> bool {
    let Ok(out) = Command::new("/usr/sbin/lsof").args(["-Fn", "-p", &pid.to_string()]).output() else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.strip_prefix('n').is_some_and(|n| Path::new(n) == wanted))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;

    #[test]
    fn the_refusing_form_runs_only_allowed_absolute_binaries() {
        let sh = PathBuf::from("/bin/sh");
        let refusing = Egress::refusing(vec![sh.clone()]);
        let out = refusing
            .run(&sh, &["-c", "read x; echo got $x; echo err >&2; exit 3"], Some(b"hi\n"), Duration::from_secs(5))
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"got hi\n");
        assert_eq!(out.stderr, b"err\n");
        assert!(refusing.run(Path::new("/bin/echo"), &["x"], None, Duration::from_secs(5)).unwrap_err().is_refusal());
        assert!(refusing.run(Path::new("sh"), &["-c", "true"], None, Duration::from_secs(5)).unwrap_err().is_refusal());
    }

    #[test]
    fn a_command_past_its_timeout_is_killed() {
        let e = Egress::live().run(Path::new("/bin/sleep"), &["5"], None, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, EgressError::Timeout { .. }), "{e}");
    }

    #[test]
    fn the_deadline_covers_a_grandchild_holding_the_output_and_kills_its_group() {
        let dir = tempfile::tempdir().unwrap();
        // The grandchild holds stdout and stderr; the child exits or hangs.
        for (case, tail) in [("exits", "exit 0"), ("hangs", "sleep 600")] {
            let pid_file = dir.path().join(case);
            let script = format!("sleep 600 & echo $! > '{}'; echo started; {tail}", pid_file.display());
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let run = Egress::live().run(Path::new("/bin/sh"), &["-c", &script], None, Duration::from_secs(2));
                let _ = tx.send(run);
            });
            let run = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{case}: the call did not return within 10 s"));
            match (case, run) {
                ("exits", Ok(out)) => {
                    assert_eq!(out.code, Some(0));
                    assert_eq!(out.stdout, b"started\n");
                }
                ("hangs", Err(EgressError::Timeout { .. })) => {}
                (case, other) => panic!("{case}: {other:?}"),
            }
            let grandchild: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Egress::live().probe(grandchild).is_some() {
                assert!(Instant::now() < deadline, "{case}: the grandchild {grandchild} still lives");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    #[test]
    fn http_answers_are_read_to_their_end_by_length_or_last_chunk() {
        let head = "HTTP/1.1 200 OK\r\nX-Memoryd-Pid: 42\r\n";
        let (answer, complete) = parse_http(format!("{head}Content-Length: 5\r\n\r\nhel").as_bytes()).unwrap();
        assert_eq!((answer.status, answer.header("x-memoryd-pid"), complete), (200, Some("42"), false));
        let chunked = format!("{head}Transfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n");
        let (answer, complete) = parse_http(chunked.as_bytes()).unwrap();
        assert_eq!((answer.body.as_slice(), complete), (&b"hello"[..], true));
        assert!(parse_http(b"HTTP/1.1 200 OK\r\nContent-Le").is_none(), "the head is not whole yet");
        assert!(parse_http(b"SSH-2.0-OpenSSH\r\n\r\n").is_none(), "not HTTP");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn names_the_process_listening_on_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = Egress::live().port_holder(port).unwrap();
        assert_eq!(holder.uid, nix::unistd::getuid().as_raw());
        assert_eq!(holder.process.map(|(pid, _)| pid), Some(std::process::id() as i32));
        drop(listener);
        assert_eq!(Egress::live().port_holder(port), None);
        assert_eq!(Egress::live().who_holds(port), "another program");
    }

    #[test]
    fn probes_this_process() {
        let me = Egress::live().probe(std::process::id() as i32).unwrap();
        assert!(!me.cmdline.is_empty());
        assert_eq!(Egress::live().probe(std::process::id() as i32).unwrap().start_time, me.start_time);
        assert!(Egress::live().probe(0).is_none());
        let me = std::process::id() as i32;
        assert_eq!(Egress::live().parent_of(me), Some(nix::unistd::getppid().as_raw()));
    }
}
