//! The node's preloaded fork server. One long-lived, single-threaded process per containerd
//! that has already paid for loading WasmEdge (and LLVM) forks each new shim daemon on
//! request, instead of containerd's `start` exec'ing a daemon that loads it again (17-40 ms
//! per pod here). The forked daemons share the loaded, relocated library pages with the
//! server copy-on-write, which is also most of a shim's memory.
//!
//! The server knows nothing about shims: a request names the process to become (arguments,
//! environment, working directory) and carries its stdout; the child calls a function.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::socket::{accept, bind, connect, listen, socket, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr};
use serde::{Deserialize, Serialize};

use crate::sync::{recv, send};

/// The process a fork becomes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForkRequest {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
enum ForkReply {
    Pid(i32),
    /// The server's executable was replaced (an upgrade): it exits; start a new one.
    Stale,
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error("node fork server {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("node fork server {path}: its executable was replaced; it exits")]
    Stale { path: PathBuf },
    #[error("node fork server {path}: fork failed: {message}")]
    Fork { path: PathBuf, message: String },
}

fn seqpacket() -> std::io::Result<OwnedFd> {
    socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(std::io::Error::from)
}

/// Asks the server at `path` for a process; `stdout` becomes its fd 1. Returns its pid.
pub fn request_fork(path: &Path, req: &ForkRequest, stdout: OwnedFd) -> Result<i32, ForkError> {
    let io = |source: std::io::Error| ForkError::Io { path: path.to_path_buf(), source };
    let sock = seqpacket().map_err(io)?;
    connect(sock.as_raw_fd(), &UnixAddr::new(path).map_err(|e| io(e.into()))?).map_err(|e| io(e.into()))?;
    send(sock.as_fd(), req, &[stdout.as_raw_fd()]).map_err(io)?;
    drop(stdout);
    match recv::<ForkReply>(sock.as_fd(), MsgFlags::empty()).map_err(io)? {
        Some((ForkReply::Pid(pid), _)) => Ok(pid),
        Some((ForkReply::Stale, _)) => Err(ForkError::Stale { path: path.to_path_buf() }),
        Some((ForkReply::Error(message), _)) => Err(ForkError::Fork { path: path.to_path_buf(), message }),
        None => Err(io(std::io::Error::other("closed without an answer"))),
    }
}

/// Binds the server's socket (mode 0600: it forks root processes on request). Call before
/// [`serve_forks`], so that whoever started the server can wait for the socket to answer.
/// One server per path: `PATH.lock` is held for the server's life. `Ok(None)` when another
/// server holds it (two starts raced, or the one being replaced has not exited yet after
/// 2 s): this one is not needed.
pub fn bind_server(path: &Path) -> std::io::Result<Option<(OwnedFd, nix::fcntl::Flock<std::fs::File>)>> {
    use nix::fcntl::{Flock, FlockArg};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let mut file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let lock = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => break l,
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                file = f;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(e.into()),
        }
    };
    // Ours now: a socket file left there is a dead server's.
    let _ = std::fs::remove_file(path);
    let sock = seqpacket()?;
    // The socket file is created with the umask applied: make it 0600 from the start.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = bind(sock.as_raw_fd(), &UnixAddr::new(path)?);
    nix::sys::stat::umask(old);
    bound?;
    listen(&sock, Backlog::new(64).map_err(std::io::Error::from)?)?;
    // The caller keeps the lock for the server's life.
    Ok(Some((sock, lock)))
}

fn stale() -> bool {
    std::fs::read_link("/proc/self/exe").is_ok_and(|p| p.to_string_lossy().ends_with(" (deleted)"))
}

/// How long the server must be idle before it forks a new standby child: long enough for
/// the daemon just handed a request to be listening (about 1-2 ms), so the fork does not
/// compete with it, short enough to be ready for the next pod. Measured here, new pod
/// `start` (request to daemon listening, p50): 4.3 ms without a standby, 3.1 ms refilling
/// at once, 2.2 ms after 5 ms idle. Pods started back to back (wshim-stress, one at a time,
/// one every 15 ms): `start` 1.4-1.8 ms faster, but the refill then overlaps the Create that
/// follows (0.7-1.5 ms slower, hence the standby's low priority while it prepares). Requests
/// that come faster than 5 ms apart are served by forks.
const STANDBY_IDLE_MS: u16 = 5;

/// A child forked ahead of the next request: it has run `prepare` and waits on `sock` for
/// the request (and its stdout) that makes it the process asked for.
struct Standby {
    pid: i32,
    sock: OwnedFd,
}

/// Serves fork requests on `listener` (from [`bind_server`]) forever. The process must be
/// single-threaded, and stays so. Each child runs `prepare()` and then `run(prepared,
/// request)` in a session of its own, with the request's environment and working directory,
/// stdin and stderr on /dev/null, and exits with what `run` returns.
///
/// Whenever the server is idle it keeps one child forked ahead (a standby, named
/// `standby_args` in `ps`) that has run `prepare` already: the next request goes to it, and
/// neither the fork nor `prepare` is on that request's path. `prepare` must therefore not
/// depend on the request (its environment and working directory are the server's).
/// `ahead` runs in the server before each standby is forked: what it leaves in memory, every
/// later child inherits.
pub fn serve_forks<S>(listener: OwnedFd, standby_args: &[String], ahead: impl Fn(), prepare: impl Fn() -> S, run: impl Fn(S, ForkRequest) -> i32) -> ! {
    // Children are reaped by the kernel: nobody waits for a shim daemon.
    // SAFETY: SIG_IGN installs no handler code.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) };
    let mut standby: Option<Standby> = None;
    loop {
        if standby.is_none() && !readable(listener.as_fd(), STANDBY_IDLE_MS) {
            ahead();
            standby = fork_standby(standby_args, &prepare, &run);
            continue;
        }
        let conn = match accept(listener.as_raw_fd()) {
            // SAFETY: accept returned a new descriptor that nothing else owns.
            Ok(fd) => unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
            Err(_) => exit(1),
        };
        let Ok(Some((req, mut fds))) = recv::<ForkRequest>(conn.as_fd(), MsgFlags::empty()) else { continue };
        let Some(stdout) = fds.pop() else {
            let _ = send(conn.as_fd(), &ForkReply::Error("request without stdout".into()), &[]);
            continue;
        };
        if stale() {
            // Stop listening before the answer: our process takes milliseconds to exit (its
            // address space is large), and a listener still open meanwhile would take, and
            // then reset, the connections of the `start` that answer makes start a new server.
            // The standby (of the old executable too) sees its socket close and exits.
            drop(listener);
            let _ = send(conn.as_fd(), &ForkReply::Stale, &[]);
            exit(0);
        }
        // The standby takes it if it is alive to; otherwise (it died) a fork of its own.
        if let Some(s) = standby.take() {
            if send(s.sock.as_fd(), &req, &[stdout.as_raw_fd()]).is_ok() {
                let _ = send(conn.as_fd(), &ForkReply::Pid(s.pid), &[]);
                continue;
            }
        }
        // SAFETY: this process is single-threaded (it only ever runs this loop), so the child
        // may run any code.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                drop(listener);
                drop(conn);
                let code = match become_child(&req, stdout) {
                    Ok(()) => run(prepare(), req),
                    Err(()) => 1,
                };
                exit(code);
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let _ = send(conn.as_fd(), &ForkReply::Pid(child.as_raw()), &[]);
            }
            Err(e) => {
                let _ = send(conn.as_fd(), &ForkReply::Error(e.to_string()), &[]);
            }
        }
    }
}

/// Whether a connection (or, on a socket, a message) waits on `listener` within `ms`
/// milliseconds. Also the container fork server's idle test (zygote.rs).
pub(crate) fn readable(listener: std::os::fd::BorrowedFd<'_>, ms: u16) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(listener, PollFlags::POLLIN)];
    // An error (EINTR) counts as readable: the loop then simply tries accept.
    !matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(0))
}

/// Forks the standby child; `None` if that failed (requests are then served by forks).
fn fork_standby<S>(name: &[String], prepare: &impl Fn() -> S, run: &impl Fn(S, ForkRequest) -> i32) -> Option<Standby> {
    let (ours, theirs) = crate::sync::pair().ok()?;
    // SAFETY: this process is single-threaded, so the child may run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // Not our end (nor, see `detach`, the listener): when the server goes, the
            // standby's socket reads EOF and it exits.
            drop(ours);
            exit(standby_child(theirs, name, prepare, run))
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => Some(Standby { pid: child.as_raw(), sock: ours }),
        Err(_) => None,
    }
}

fn standby_child<S>(sock: OwnedFd, name: &[String], prepare: &impl Fn() -> S, run: &impl Fn(S, ForkRequest) -> i32) -> i32 {
    if detach(sock.as_raw_fd()).is_err() {
        return 1;
    }
    let _ = crate::child::set_cmdline(name);
    // Preparing ahead is never urgent, and it often overlaps the Create of the pod that took
    // the last standby: at the lowest priority it does not slow that down. Restored below, so
    // the process asked for runs at the server's priority (whoever it forked in `prepare`
    // must be given it again too).
    let nice = priority();
    set_priority(0, 19);
    let prepared = prepare();
    let (req, stdout) = match recv::<ForkRequest>(sock.as_fd(), MsgFlags::empty()) {
        Ok(Some((req, mut fds))) if fds.len() == 1 => (req, fds.pop().expect("one descriptor")),
        // The server is gone (or sent nonsense): nobody will ever ask for this process.
        _ => return 0,
    };
    drop(sock);
    set_priority(0, nice);
    match take_request(&req, stdout) {
        Ok(()) => run(prepared, req),
        Err(()) => 1,
    }
}

/// This process's nice value.
pub fn priority() -> i32 {
    // SAFETY: getpriority takes integers; errno is cleared first, as -1 is a valid result.
    unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    }
}

/// Sets the nice value of process `pid` (0: this one); best effort.
pub fn set_priority(pid: i32, nice: i32) {
    // SAFETY: setpriority takes integers only.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice) };
}

/// How every child of the server starts, standby or not: the default SIGCHLD again (a daemon
/// must see its children's exits), a session of its own, stdio on /dev/null, and no
/// descriptor of the server's (its listener, its lock file, its connections) but `keep`,
/// which must not be 0, 1 or 2.
fn detach(keep: std::os::fd::RawFd) -> Result<(), ()> {
    // SAFETY: restoring the default disposition installs no handler code.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) };
    let _ = nix::unistd::setsid();
    let null = nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, nix::sys::stat::Mode::empty()).map_err(|_| ())?;
    if nix::unistd::dup2_stdin(&null).is_err() || nix::unistd::dup2_stdout(&null).is_err() || nix::unistd::dup2_stderr(&null).is_err() {
        return Err(());
    }
    drop(null);
    crate::child::close_fds_except(keep).map_err(|_| ())
}

/// A fresh fork becomes the process `req` asks for: [`detach`], then [`take_request`].
fn become_child(req: &ForkRequest, stdout: OwnedFd) -> Result<(), ()> {
    detach(stdout.as_raw_fd())?;
    take_request(req, stdout)
}

/// The request's part of becoming its process: `stdout` as fd 1, the request's environment,
/// working directory and command line. A standby runs only this: what `prepare` set up
/// (descriptors, signal handlers) stays.
fn take_request(req: &ForkRequest, stdout: OwnedFd) -> Result<(), ()> {
    nix::unistd::dup2_stdout(&stdout).map_err(|_| ())?;
    drop(stdout);
    // The process is still single-threaded: nothing reads the environment meanwhile.
    for (k, _) in std::env::vars_os() {
        std::env::remove_var(k);
    }
    for (k, v) in &req.env {
        std::env::set_var(k, v);
    }
    std::env::set_current_dir(&req.cwd).map_err(|_| ())?;
    // `ps` shows the daemon's command line, not the server's.
    let _ = crate::child::set_cmdline(&req.args);
    Ok(())
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process at once, which is what the server and its children want
    // (no destructors of state copied from the parent).
    unsafe { libc::_exit(code) }
}
