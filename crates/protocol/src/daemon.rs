//! The shim daemon's process. Its server bootstrap is ours rather than containerd_shim's
//! `run`, so that it runs from arguments handed over by the node fork server as well as
//! from its own argv; and the node fork server itself, which forks daemons with WasmEdge
//! already loaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::protos::shim::shim_ttrpc::create_task;
use containerd_shim::util::write_address;
use containerd_shim::ExitSignal;
use log::{error, info, warn};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::{SIGCHLD, SIGINT, SIGPIPE, SIGTERM};
use signal_hook::iterator::Signals;
use wshim_sandbox::{bind_server, serve_forks, Zygote, ZygoteError};

use crate::service::TaskService;
use crate::RUNTIME_ID;

/// Where the node fork server for the containerd at `address` listens: beside the shims'
/// sockets, one per containerd.
pub fn node_socket(containerd_address: &str) -> PathBuf {
    let a = containerd_shim::socket_address(containerd_address, "wasmedge-shim", "node-fork-server");
    PathBuf::from(a.strip_prefix("unix://").unwrap_or(&a))
}

/// The node fork server: binds `path`, then forks a shim daemon for every request: the
/// child runs `prepare` (what needs no request: see [`prepare_daemon`]), then `daemon(prepared,
/// args)`. Between requests it keeps one such child forked and prepared ahead, a standby, so
/// a new pod's `start` waits for neither; `ahead` runs before each standby is forked (see
/// [`serve_forks`]). Never returns on success; the process must still be single-threaded.
pub fn run_node_server<S>(path: &Path, ahead: impl Fn(), prepare: impl Fn() -> S, daemon: impl Fn(S, &[String]) -> i32) -> i32 {
    // Out of the way of whoever started it: its own session, no working directory to pin.
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    let exe = std::env::args().next().unwrap_or_else(|| "containerd-shim-wasmedge-v1-daemon".into());
    let standby = [exe, "standby".into(), path.display().to_string()];
    match bind_server(path) {
        Ok(Some((listener, _lock))) => serve_forks(listener, &standby, ahead, prepare, |p, req| daemon(p, &req.args)),
        Ok(None) => 0,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: node fork server: bind {}: {e}", path.display());
            1
        }
    }
}

/// What a daemon sets up before it knows which pod it serves (so a standby can do it ahead):
/// its signal handlers, its role as subreaper, and its container fork server, forked while
/// the process is single-threaded.
pub struct Prepared {
    signals: Signals,
    zygote: Zygote,
}

/// `factory` forks the container fork server; it runs before any thread of this process
/// starts.
pub fn prepare_daemon(factory: impl Fn() -> Result<Zygote, ZygoteError>) -> Result<Prepared, String> {
    // Signal handlers (no thread) first, so no child exit is missed; we reap the container
    // processes, which are our children (CLONE_PARENT) or, reparented, our descendants.
    let signals = Signals::new([SIGTERM, SIGINT, SIGPIPE, SIGCHLD]).map_err(|e| format!("signals: {e}"))?;
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("subreaper: {e}"))?;
    let zygote = factory().map_err(|e| format!("cannot start the fork server: {e}"))?;
    Ok(Prepared { signals, zygote })
}

/// Serves the Task API as containerd's shim for `args` (`-namespace … -id … -address …
/// -socket …`); returns the exit code.
pub fn run_daemon(args: &[String], prepared: Result<Prepared, String>) -> i32 {
    match prepared.and_then(|p| serve(args, p)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            error!("{e}");
            1
        }
    }
}

fn serve(args: &[String], prepared: Prepared) -> Result<(), String> {
    // `serving_us` in the log: from here (the request known) until containerd may connect.
    let t0 = std::time::Instant::now();
    let flags = containerd_shim::parse(args.get(1..).unwrap_or_default()).map_err(|e| format!("arguments: {e}"))?;
    if flags.namespace.is_empty() || flags.socket.is_empty() {
        return Err("arguments: -namespace and -socket are required".into());
    }
    // containerd's events address: checked here, connected to for the first event.
    std::env::var("TTRPC_ADDRESS").map_err(|_| "TTRPC_ADDRESS is not set".to_string())?;
    let Prepared { signals, zygote } = prepared;
    // Named after this shim in `ps`, and at its priority (a standby forked it before it knew
    // either: at the lowest priority).
    zygote.rename(args).map_err(|e| format!("fork server: {e}"))?;
    wshim_sandbox::set_priority(zygote.pid, wshim_sandbox::priority());
    let zygote = Arc::new(zygote);
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id).map_err(|e| format!("log: {e}"))?;
    let exit = Arc::new(ExitSignal::default());
    // containerd's events address is connected to for the first event, on the events thread.
    let service = TaskService::new(zygote, flags.namespace.clone(), exit.clone());
    let exits = service.clone();

    let path = flags.socket.strip_prefix("unix://").unwrap_or(&flags.socket).to_string();
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::os::unix::net::UnixStream::connect(&path).is_ok() => {
            // Another daemon serves this group already (a race between two `start`s).
            write_address(&flags.socket).map_err(|e| format!("address file: {e}"))?;
            signal_listening();
            return Ok(());
        }
        Err(_) => {
            // A socket file left by a dead daemon.
            let _ = std::fs::remove_file(&path);
            bind(&path).map_err(|e| format!("listen on {path}: {e}"))?
        }
    };
    // Our server over ttrpc's handlers (server.rs): a call is read, handled and answered by
    // one thread.
    let server = crate::server::serve(listener, create_task(Arc::new(service))).map_err(|e| format!("ttrpc server: {e}"))?;
    signal_listening();
    info!(socket = path.as_str(), serving_us = t0.elapsed().as_micros() as u64; "shim daemon serving");
    std::thread::Builder::new().name("reaper".into()).spawn(move || reap(signals, &exits)).map_err(|e| format!("reaper thread: {e}"))?;
    exit.wait();
    // No new connection from here on (a `start` that finds this socket reuses this shim).
    let _ = std::fs::remove_file(&path);
    // The Shutdown reply (and any other answer under way) goes out before we exit; bounded,
    // so that a call that never ends cannot keep the daemon.
    if !server.stop(SERVER_SHUTDOWN) {
        warn!(within_s = SERVER_SHUTDOWN.as_secs(); "calls still open at shutdown: exiting anyway");
    }
    Ok(())
}

fn bind(path: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::os::unix::net::UnixListener::bind(path)
}

/// `start` reads our stdout until it closes: a line saying so, then the close, tell it that we
/// listen (an empty stdout: we failed). Then stdout points at stderr.
fn signal_listening() {
    use std::io::Write;
    let _ = std::io::stdout().write_all(LISTENING);
    let _ = std::io::stdout().flush();
    let _ = nix::unistd::dup2_stdout(std::io::stderr());
}

/// How long the daemon waits for open calls to be answered before it exits anyway.
const SERVER_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

/// What the daemon writes on its stdout once it listens (see [`signal_listening`]).
pub(crate) const LISTENING: &[u8] = b"listening\n";

/// Reaps every child and tells the task service which one exited and how: 128+N for a
/// signal, as a shell reports it. On this thread: handing exits to another one would cost a
/// thread wake-up between a container's exit and its Wait's answer.
fn reap(mut signals: Signals, service: &TaskService) {
    for sig in signals.forever() {
        if sig != SIGCHLD {
            // containerd stops a shim with Shutdown; signals to the daemon are ignored.
            continue;
        }
        loop {
            match waitpid(Some(Pid::from_raw(-1)), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    service.on_exit(pid.as_raw(), code);
                }
                Ok(WaitStatus::Signaled(pid, s, _)) => {
                    service.on_exit(pid.as_raw(), 128 + s as i32);
                }
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    error!(error:% = e; "waitpid");
                    break;
                }
            }
        }
    }
}
