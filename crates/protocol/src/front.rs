//! The front binary's work: the `start` and `delete` commands containerd execs on the hot
//! path. Nothing here loads WasmEdge; `start` hands the server role to the daemon binary.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::shim::shim_ttrpc::Task as TaskApi;
use containerd_shim::util::write_address;
use containerd_shim::{Config, ExitSignal, Flags, Shim, StartOpts};
use log::{info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wshim_sandbox::{cgroups_path, request_fork, unmount_rootfs, Cgroup, ForkRequest};

use crate::{CGROUP_ROOT, RUNTIME_ID, SANDBOX_ID_ANNOTATION};

/// The daemon binary, installed beside the front binary.
pub const DAEMON_NAME: &str = "containerd-shim-wasmedge-v1-daemon";

/// Entry point of `containerd-shim-wasmedge-v1`.
pub fn run_front() {
    let server = !std::env::args().skip(1).any(|a| a == "start" || a == "delete" || a == "-info" || a == "--info");
    if server {
        // Asked to serve: that is the daemon's job (it has WasmEdge loaded).
        let err = Command::new(daemon_path()).args(std::env::args_os().skip(1)).exec();
        eprintln!("{RUNTIME_ID}: exec {}: {err}", daemon_path().display());
        std::process::exit(1);
    }
    containerd_shim::run::<FrontShim>(RUNTIME_ID, Some(Config { no_setup_logger: true, no_reaper: true, no_sub_reaper: true, ..Default::default() }));
}

fn daemon_path() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join(DAEMON_NAME))).unwrap_or_else(|| PathBuf::from(DAEMON_NAME))
}

struct FrontShim;

/// The front binary serves no tasks; this type only satisfies `Shim`.
struct NoTasks;
impl TaskApi for NoTasks {}

impl Shim for FrontShim {
    type T = NoTasks;

    fn new(_runtime_id: &str, _args: &Flags, _config: &mut Config) -> Self {
        FrontShim
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        start_shim(opts)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        delete_shim()
    }

    fn wait(&mut self) {
        ExitSignal::default().wait();
    }

    fn create_task_service(&self, _publisher: containerd_shim::publisher::RemotePublisher) -> NoTasks {
        NoTasks
    }
}

/// The grouping key: a pod's containers share their sandbox's shim.
fn grouping(bundle: &Path, id: &str) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["annotations"][SANDBOX_ID_ANNOTATION].as_str().map(str::to_string))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_string())
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// `start`: finds the shim serving this container's group, or starts the daemon, and
/// returns its address. The daemon signals that it listens by closing its stdout.
pub(crate) fn start_shim(opts: StartOpts) -> containerd_shim::Result<String> {
    let cwd = std::env::current_dir().map_err(|e| containerd_shim::Error::Other(format!("cwd: {e}")))?;
    let group = grouping(&cwd, &opts.id);
    let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &group);
    if std::os::unix::net::UnixStream::connect(socket_path(&address)).is_ok() {
        write_address(&address)?;
        return Ok(address);
    }
    let mut args = vec![daemon_path().display().to_string()];
    args.extend(["-namespace", &opts.namespace, "-id", &opts.id, "-address", &opts.address, "-socket", &address].map(String::from));
    if opts.debug {
        args.push("-debug".into());
    }
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if !opts.ttrpc_address.is_empty() {
        env.retain(|(k, _)| k != "TTRPC_ADDRESS");
        env.push(("TTRPC_ADDRESS".into(), opts.ttrpc_address.clone()));
    }
    let req = ForkRequest { args, env, cwd };
    // The node's fork server has WasmEdge loaded already; start it if it is not running.
    // Only if it cannot be had, the daemon is exec'd (and loads WasmEdge itself).
    let node = crate::daemon::node_socket(&opts.address);
    let forked = fork_daemon(&node, &req).or_else(|e| {
        info!(error:% = e; "starting the node fork server");
        start_node_server(&node)?;
        fork_daemon(&node, &req)
    });
    let listening = match forked {
        Ok(listening) => listening,
        Err(e) => {
            warn!(error:% = e; "no node fork server: exec'ing the daemon");
            exec_daemon(&req)?
        }
    };
    // Not a connection to find out: the daemon would start a connection's threads for it
    // just when containerd connects.
    if !listening {
        return Err(containerd_shim::Error::Other(format!("{DAEMON_NAME} for {} did not start (see containerd's log)", opts.id)));
    }
    write_address(&address)?;
    Ok(address)
}

fn other(e: impl std::fmt::Display) -> containerd_shim::Error {
    containerd_shim::Error::Other(e.to_string())
}

/// Has the node fork server fork the daemon; returns once the daemon listens (it says so
/// and closes its stdout: true) or died (false).
fn fork_daemon(node: &Path, req: &ForkRequest) -> containerd_shim::Result<bool> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(other)?;
    request_fork(node, req, w).map_err(other)?;
    Ok(says_listening(std::fs::File::from(r)))
}

/// Whether the daemon's stdout, read until it closes, says that it listens.
fn says_listening(mut stdout: impl Read) -> bool {
    let mut said = Vec::new();
    let _ = stdout.read_to_end(&mut said);
    said == crate::daemon::LISTENING
}

/// Starts the node fork server (the daemon binary, `node-server PATH`) and waits until it
/// answers.
fn start_node_server(node: &Path) -> containerd_shim::Result<()> {
    let mut cmd = Command::new(daemon_path());
    cmd.arg("node-server").arg(node).current_dir("/").stdout(Stdio::null());
    spawn_detached(&mut cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if socket_answers(node) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(other(format!("node fork server {}: did not come up", node.display())))
}

/// A SOCK_SEQPACKET socket does not take a stream connection: try connecting for real.
fn socket_answers(node: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(s) = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None) else { return false };
    let Ok(addr) = UnixAddr::new(node) else { return false };
    connect(std::os::fd::AsRawFd::as_raw_fd(&s), &addr).is_ok()
}

/// Spawns a process of ours that outlives `start`: stdin and stderr on /dev/null, and its
/// own process group, so that signals meant for containerd's group do not reach it.
fn spawn_detached(cmd: &mut Command) -> containerd_shim::Result<std::process::Child> {
    cmd.stdin(Stdio::null()).stderr(Stdio::null()).process_group(0).spawn().map_err(|e| other(format!("spawn {}: {e}", daemon_path().display())))
}

/// Without a node fork server: exec the daemon, which loads WasmEdge itself. Whether it
/// listens, as [`fork_daemon`].
fn exec_daemon(req: &ForkRequest) -> containerd_shim::Result<bool> {
    let mut cmd = Command::new(&req.args[0]);
    cmd.args(&req.args[1..]).env_clear().envs(req.env.iter().map(|(k, v)| (k, v))).current_dir(&req.cwd).stdout(Stdio::piped());
    let mut child = spawn_detached(&mut cmd)?;
    Ok(child.stdout.take().is_some_and(says_listening))
}

/// `delete`: containerd's cleanup after a shim died. Kills what is left of the container,
/// removes its cgroup and unmounts its rootfs. The bundle is the working directory.
pub(crate) fn delete_shim() -> containerd_shim::Result<DeleteResponse> {
    let bundle = std::env::current_dir().map_err(|e| containerd_shim::Error::Other(format!("cwd: {e}")))?;
    let id = bundle.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    // containerd runs this after every shim exit, asynchronously. By then a new container
    // with the same id may own this bundle path, served by a live shim: leave it alone.
    let served = std::fs::read_to_string(bundle.join("address")).is_ok_and(|a| served_by_live_shim(socket_path(a.trim())));
    if served {
        // containerd logs what we print on stderr ("cleanup warnings").
        eprintln!("{RUNTIME_ID}: delete {id}: a live shim serves this bundle; left alone");
        return Ok(DeleteResponse { exit_status: 128 + libc::SIGKILL as u32, exited_at: Some(Timestamp::from(SystemTime::now())).into(), ..Default::default() });
    }
    // The dead daemon's socket file (a SIGKILLed daemon cannot remove it).
    if let Ok(a) = std::fs::read_to_string(bundle.join("address")) {
        let _ = std::fs::remove_file(socket_path(a.trim()));
    }
    if let Err(e) = cleanup_bundle(&bundle, &id, Path::new(CGROUP_ROOT)) {
        // containerd logs what we print on stderr; the cleanup that could be done is done.
        eprintln!("{RUNTIME_ID}: delete {id}: {e}");
    }
    Ok(DeleteResponse { exit_status: 128 + libc::SIGKILL as u32, exited_at: Some(Timestamp::from(SystemTime::now())).into(), ..Default::default() })
}

/// Whether a shim that is alive listens on `socket`. Connecting is not enough: a SIGKILLed
/// daemon takes milliseconds to exit (its address space is large), and while it does, its
/// listening socket may still take connections after containerd saw the shim's connection
/// drop and ran `delete` (seen about once in 15 runs of lifecycle.rs under load: the
/// container was left running). So the listener's owner (SO_PEERCRED) must not be exiting.
fn served_by_live_shim(socket: &str) -> bool {
    let Ok(conn) = std::os::unix::net::UnixStream::connect(socket) else { return false };
    let Ok(cred) = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials) else { return false };
    !process_exiting(cred.pid())
}

/// Whether process `pid` is gone, a zombie or on its way out (PF_EXITING).
fn process_exiting(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    // After the command name (which may hold spaces): state is field 3, flags field 9.
    let rest: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let state = rest.first().copied().unwrap_or("X");
    let flags: u64 = rest.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0
}

/// Removes what a container of `bundle` may have left: its processes, cgroup and rootfs mount.
pub fn cleanup_bundle(bundle: &Path, id: &str, cgroup_root: &Path) -> Result<(), String> {
    let mut problems = Vec::new();
    match wshim_oci::Bundle::load(bundle) {
        Ok(b) => match cgroups_path(&b.spec, id).map_err(|e| e.to_string()).and_then(|p| Cgroup::locate(cgroup_root, &p).map_err(|e| e.to_string())) {
            Ok(cg) => {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let pids = cg.pids();
                    if pids.is_empty() || Instant::now() > deadline {
                        break;
                    }
                    for p in pids {
                        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if let Err(e) = cg.remove() {
                    problems.push(e.to_string());
                }
            }
            Err(e) => problems.push(e),
        },
        Err(e) => warn!("{e}"),
    }
    if let Err(e) = unmount_rootfs(&bundle.join("rootfs")) {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_whole_line_says_listening() {
        assert!(says_listening(crate::daemon::LISTENING));
        assert!(!says_listening(&b""[..]), "closed without a word: the daemon failed");
        assert!(!says_listening(&b"listen"[..]));
        assert!(!says_listening(&b"listening\nlistening\n"[..]));
    }

    #[test]
    fn a_live_listener_serves_and_a_dead_or_exiting_one_does_not() {
        let dir = std::env::temp_dir().join(format!("wshim-front-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(served_by_live_shim(path.to_str().unwrap()), "our own live listener");
        drop(listener);
        assert!(!served_by_live_shim(path.to_str().unwrap()), "no listener");
        assert!(!process_exiting(std::process::id() as i32));
        // A zombie: a child that exited and is not reaped yet.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().rsplit_once(')').unwrap().1.trim_start().starts_with('Z') {
            assert!(std::time::Instant::now() < deadline, "child {pid} did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(process_exiting(pid), "a zombie is exiting");
        child.wait().unwrap();
        assert!(process_exiting(i32::MAX), "no such process");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
