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

/// Serves fork requests on `listener` (from [`bind_server`]) forever. The process must be
/// single-threaded, and stays so. Each child runs `child(request)` in a session of its own,
/// with the request's environment and working directory, stdin and stderr on /dev/null,
/// and exits with what it returns.
pub fn serve_forks(listener: OwnedFd, child: impl Fn(ForkRequest) -> i32) -> ! {
    // Children are reaped by the kernel: nobody waits for a shim daemon.
    // SAFETY: SIG_IGN installs no handler code.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) };
    loop {
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
            let _ = send(conn.as_fd(), &ForkReply::Stale, &[]);
            exit(0);
        }
        // SAFETY: this process is single-threaded (it only ever runs this loop), so the child
        // may run any code.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                drop(listener);
                drop(conn);
                exit(become_child(req, stdout, &child));
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

fn become_child(req: ForkRequest, stdout: OwnedFd, child: &impl Fn(ForkRequest) -> i32) -> i32 {
    // SAFETY: restoring the default disposition installs no handler code; the daemon must
    // see its children's exits again.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) };
    let _ = nix::unistd::setsid();
    let Ok(null) = nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, nix::sys::stat::Mode::empty()) else { return 1 };
    if nix::unistd::dup2_stdin(&null).is_err() || nix::unistd::dup2_stdout(&stdout).is_err() || nix::unistd::dup2_stderr(&null).is_err() {
        return 1;
    }
    drop(stdout);
    drop(null);
    if crate::child::close_fds_from(3).is_err() {
        return 1;
    }
    for (k, _) in std::env::vars_os() {
        std::env::remove_var(k);
    }
    for (k, v) in &req.env {
        std::env::set_var(k, v);
    }
    if std::env::set_current_dir(&req.cwd).is_err() {
        return 1;
    }
    // `ps` shows the daemon's command line, not the server's.
    let _ = crate::child::set_cmdline(&req.args);
    child(req)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process at once, which is what the server and its children want
    // (no destructors of state copied from the parent).
    unsafe { libc::_exit(code) }
}
