//! The fork server. It is forked from the shim while the shim is still single-threaded and
//! stays single-threaded, so that cloning container processes from it is safe. Whatever the
//! shim loaded before forking it (WasmEdge, LLVM) is shared copy-on-write with every container.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::socket::MsgFlags;
use serde::{Deserialize, Serialize};

use crate::sync::{self, recv, send};
use crate::{Payload, Plan};

#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    #[error("fork server: the process already runs {0} threads; it must be forked before any thread starts")]
    Threaded(usize),
    #[error("fork server: {0}")]
    Io(#[from] std::io::Error),
    #[error("fork server: clone of the container process failed: {0}")]
    Clone(String),
    #[error("fork server is gone")]
    Gone,
}

#[derive(Serialize, Deserialize)]
struct SpawnRequest {
    plan: Plan,
    /// With a fifth descriptor, a cgroup v2 directory to clone the process into: this is
    /// its cgroup.procs, which the process then need not write.
    into_cgroup: Option<std::path::PathBuf>,
}

/// What the shim asks of its fork server.
#[derive(Serialize, Deserialize)]
enum ZygoteMsg {
    Spawn(SpawnRequest),
    /// Show this command line (the shim's, renamed) in `ps`; no reply. A shim forked ahead
    /// of its request (a standby) forked its fork server before it knew its own.
    Rename(Vec<String>),
}

#[derive(Serialize, Deserialize)]
enum SpawnReply {
    /// The process, whether it was cloned into the cgroup, and when (CLOCK_MONOTONIC, ns)
    /// this server had read the request and clone returned, for the shim's log.
    Pid(i32, bool, u64, u64),
    Error(String),
}

/// A process the fork server cloned.
pub struct Spawned {
    pub pid: i32,
    /// It started in the cgroup v2 directory it was asked for (CLONE_INTO_CGROUP).
    pub placed: bool,
    /// When (CLOCK_MONOTONIC, ns) the server had read the request, and clone returned there.
    pub received: u64,
    pub cloned: u64,
}

/// The shim's handle on its fork server.
pub struct Zygote {
    sock: Mutex<OwnedFd>,
    pub pid: i32,
}

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").and_then(|n| n.trim().parse().ok())))
        .unwrap_or(1)
}

impl Zygote {
    /// Forks the fork server. Call it before the process starts any thread.
    pub fn fork<P: Payload>(payload: P) -> Result<Zygote, ZygoteError> {
        let threads = thread_count();
        if threads != 1 {
            return Err(ZygoteError::Threaded(threads));
        }
        let (ours, theirs) = sync::pair()?;
        // SAFETY: the process is single-threaded (checked above), so the child may run any code.
        match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
            nix::unistd::ForkResult::Parent { child } => {
                drop(theirs);
                // The fork server has the payload now. Our copy is left as it is, not freed:
                // what it holds (a module the node fork server loaded) shares its pages with
                // that server, and freeing it would write to them and so copy them
                // (memory.sh, 20 shims: 38.5-38.8 MB of PSS against 39.4 MB).
                std::mem::forget(payload);
                Ok(Zygote { sock: Mutex::new(ours), pid: child.as_raw() })
            }
            nix::unistd::ForkResult::Child => {
                drop(ours);
                serve(theirs, payload)
            }
        }
    }

    /// Asks the fork server for a container process for `plan`; `sync` is the child's end of
    /// the shim's socketpair with it, `stdio` the process's fds 0, 1 and 2, `into_cgroup` a
    /// cgroup v2 directory (and its cgroup.procs) to start it in, if the kernel can. Returns
    /// the new process's pid, a child of this process, and whether it started in that cgroup.
    pub fn spawn(&self, plan: &Plan, sync: OwnedFd, stdio: [OwnedFd; 3], into_cgroup: Option<(OwnedFd, std::path::PathBuf)>) -> Result<Spawned, ZygoteError> {
        let sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        let mut fds = vec![sync.as_raw_fd(), stdio[0].as_raw_fd(), stdio[1].as_raw_fd(), stdio[2].as_raw_fd()];
        fds.extend(into_cgroup.as_ref().map(|(fd, _)| fd.as_raw_fd()));
        let req = SpawnRequest { plan: plan.clone(), into_cgroup: into_cgroup.as_ref().map(|(_, procs)| procs.clone()) };
        send(sock.as_fd(), &ZygoteMsg::Spawn(req), &fds)?;
        // The fork server holds its copies now; ours would keep the FIFOs open.
        drop(sync);
        drop(stdio);
        drop(into_cgroup);
        match recv::<SpawnReply>(sock.as_fd(), MsgFlags::empty())? {
            Some((SpawnReply::Pid(pid, placed, received, cloned), _)) => Ok(Spawned { pid, placed, received, cloned }),
            Some((SpawnReply::Error(e), _)) => Err(ZygoteError::Clone(e)),
            None => Err(ZygoteError::Gone),
        }
    }

    /// Names the fork server after the shim's command line `args` in `ps`.
    pub fn rename(&self, args: &[String]) -> Result<(), ZygoteError> {
        let sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        Ok(send(sock.as_fd(), &ZygoteMsg::Rename(args.to_vec()), &[])?)
    }
}

/// The fork server's command line: the shim's, with its program renamed.
fn fork_server_args(mut args: Vec<String>) -> Vec<String> {
    if let Some(a0) = args.first_mut() {
        *a0 = format!("{}-fork-server", a0.trim_end_matches("-daemon"));
    }
    args
}

fn serve<P: Payload>(sock: OwnedFd, payload: P) -> ! {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a plain signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // Hold nothing of the shim's: not its stdio (the `start` command waits for EOF on the
    // daemon's stdout), not any other descriptor. Only the request socket stays.
    if let Ok(null) = nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, nix::sys::stat::Mode::empty()) {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    crate::child::close_fds_except(sock.as_raw_fd()).unwrap_or_else(|_| unsafe_exit(1));
    // Tell it apart from the shim in `ps`: the same arguments, another name.
    // /proc/self/cmdline, not env::args(): a daemon forked by the node fork server has its
    // command line rewritten in place, which only the former reads right.
    let args: Vec<String> = std::fs::read("/proc/self/cmdline")
        .map(|b| b.split(|c| *c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
        .unwrap_or_default();
    let _ = crate::child::set_cmdline(&fork_server_args(args));
    not_inherited(payload.unused_libraries());
    // The shim may have installed handlers (signal-hook) that write to its pipes: not ours.
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGPIPE, Signal::SIGCHLD, Signal::SIGHUP] {
        // SAFETY: restoring the default disposition installs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigDfl) };
    }
    let mut nets = SpareNet::new();
    loop {
        if let Some(n) = nets.as_mut().filter(|n| n.wanted()) {
            // Only while no request waits.
            if !crate::forker::readable(sock.as_fd(), SPARE_NET_IDLE_MS) {
                n.make();
            }
        }
        let (mut req, mut fds) = match recv::<ZygoteMsg>(sock.as_fd(), MsgFlags::empty()) {
            Ok(Some((ZygoteMsg::Spawn(req), fds))) => (req, fds),
            Ok(Some((ZygoteMsg::Rename(args), _))) => {
                let _ = crate::child::set_cmdline(&fork_server_args(args));
                continue;
            }
            // The shim closed its end or is gone: nothing more to serve.
            Ok(None) | Err(_) => unsafe_exit(0),
        };
        let received = crate::monotonic_ns();
        // [sync, stdin, stdout, stderr, cgroup?], in the order `spawn` sent them.
        let cgroup_dir = if req.into_cgroup.is_some() && fds.len() == 5 { fds.pop() } else { None };
        let Ok([child_sync, stdin, stdout, stderr]) = <[OwnedFd; 4]>::try_from(fds) else {
            let _ = send(sock.as_fd(), &SpawnReply::Error("request without its four descriptors".into()), &[]);
            continue;
        };
        let stdio = [stdin, stdout, stderr];
        // A pid namespace joined by path applies only to children of the caller: enter it
        // here around the clone, and come back to our own afterwards.
        let join_pid = match req.plan.join_ns.iter().find(|(f, _)| *f == libc::CLONE_NEWPID) {
            None => None,
            Some((_, path)) => match enter_pid_ns(path) {
                Ok(own) => Some(own),
                Err(e) => {
                    let _ = send(sock.as_fd(), &SpawnReply::Error(format!("linux.namespaces (pid) {}: {e}", path.display())), &[]);
                    continue;
                }
            },
        };
        let mut flags = req.plan.clone_flags().bits() | libc::CLONE_PARENT | libc::SIGCHLD;
        // A new network namespace made ahead, entered around the clone. Not for a container
        // in a user namespace (new or joined): that one must own its network namespace, or
        // its root may not set its sysctls, nor may another container of it join it.
        let new_net = flags & libc::CLONE_NEWNET != 0 && !req.plan.in_userns();
        let in_spare = match nets.as_mut() {
            Some(n) if new_net => n.enter(),
            _ => false,
        };
        if in_spare {
            flags &= !libc::CLONE_NEWNET;
        }
        // SAFETY: a raw clone without CLONE_VM or a new stack behaves like fork(2): the child
        // gets a copy of this single-threaded process and returns 0 here. CLONE_PARENT makes
        // the shim, not this server, its parent, so the shim reaps it and sees its status.
        let mut placed = false;
        let pid = match req.plan.clone_in_userns() {
            // The new namespaces must belong to that user namespace: cloned from inside it.
            Some(path) => crate::userns::clone_in_userns(path, flags),
            None => {
                // Straight into the cgroup (one migration fewer), where the kernel can;
                // otherwise (before Linux 5.7, or refused) as before, and the child joins.
                let into = cgroup_dir.as_ref().map_or(-1, |d| clone_into_cgroup(flags, d.as_fd()));
                placed = into >= 0;
                if placed {
                    into
                } else {
                    unsafe { libc::syscall(libc::SYS_clone, flags as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) }
                }
            }
        };
        let cloned = crate::monotonic_ns();
        if pid == 0 {
            drop(sock);
            drop(cgroup_dir);
            if placed {
                // Already in that cgroup: writing its cgroup.procs would be a needless migration.
                req.plan.cgroup_placed = req.into_cgroup.take();
            }
            crate::child::container_init(req.plan, child_sync, stdio, &payload);
        }
        drop(cgroup_dir);
        drop(child_sync);
        drop(stdio);
        if let Some(n) = nets.as_mut() {
            if in_spare {
                if let Err(e) = n.leave() {
                    // Later containers would share that namespace: stop serving.
                    let _ = send(sock.as_fd(), &SpawnReply::Error(format!("fork server: return to own network namespace: {e}")), &[]);
                    unsafe_exit(1);
                }
            }
            n.asked(new_net);
        }
        if let Some(own) = join_pid {
            if let Err(e) = nix::sched::setns(own.as_fd(), nix::sched::CloneFlags::CLONE_NEWPID) {
                // Later containers would land in the wrong pid namespace: stop serving.
                let _ = send(sock.as_fd(), &SpawnReply::Error(format!("fork server: return to own pid namespace: {e}")), &[]);
                unsafe_exit(1);
            }
        }
        let reply = if pid < 0 { SpawnReply::Error(std::io::Error::last_os_error().to_string()) } else { SpawnReply::Pid(pid as i32, placed, received, cloned) };
        if send(sock.as_fd(), &reply, &[]).is_err() {
            unsafe_exit(0);
        }
        // While the process sets itself up: whatever the next ones can inherit.
        if pid > 0 {
            payload.preload(&req.plan);
        }
    }
}

/// Marks the writable segments of the loaded libraries named by `names` (a part of the file
/// name) MADV_DONTFORK: the processes cloned from here do not get them. clone copies the page
/// table entries of every written private page, and the process's exit tears them down again:
/// libLLVM's relocated data alone is 5.5 MB (1400 pages) that no container process touches.
/// Kept are the pages holding the library's dynamic section and its TLS image, which the
/// dynamic linker reads for any symbol lookup or new thread; the library's code stays mapped.
fn not_inherited(names: &[&str]) {
    struct Ranges<'a>(&'a [&'a str], Vec<(usize, usize)>);
    unsafe extern "C" fn each(info: *mut libc::dl_phdr_info, _size: libc::size_t, data: *mut libc::c_void) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes the `Ranges` given below as `data`, and a valid
        // `info` whose name and program headers stay valid during the call.
        let (r, info) = unsafe { (&mut *(data as *mut Ranges<'_>), &*info) };
        if info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: a non-null dlpi_name is a NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_string_lossy();
        if !r.0.iter().any(|n| name.contains(n)) {
            return 0;
        }
        // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        // SAFETY: sysconf takes an integer and returns one.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let base = info.dlpi_addr as usize;
        let span = |p: &libc::Elf64_Phdr| (base + p.p_vaddr as usize, base + (p.p_vaddr + p.p_memsz) as usize);
        let keep: Vec<(usize, usize)> =
            phdrs.iter().filter(|p| p.p_type == libc::PT_DYNAMIC || p.p_type == libc::PT_TLS).map(|p| span(p)).map(|(a, b)| (a & !(page - 1), (b + page - 1) & !(page - 1))).collect();
        for p in phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_W != 0) {
            let (a, b) = span(p);
            // Whole pages inside the segment, minus the kept ones.
            let mut start = (a + page - 1) & !(page - 1);
            let end = b & !(page - 1);
            let mut cuts: Vec<&(usize, usize)> = keep.iter().filter(|(ka, kb)| *ka < end && *kb > start).collect();
            cuts.sort();
            for (ka, kb) in cuts {
                if *ka > start {
                    r.1.push((start, *ka));
                }
                start = start.max(*kb);
            }
            if end > start {
                r.1.push((start, end));
            }
        }
        0
    }
    if names.is_empty() {
        return;
    }
    let mut r = Ranges(names, Vec::new());
    // SAFETY: `each` only reads what dl_iterate_phdr hands it and writes to `r`, which
    // outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut r as *mut Ranges<'_> as *mut libc::c_void) };
    for (a, b) in r.1 {
        // SAFETY: advice on whole pages of a mapping of this process; MADV_DONTFORK changes no
        // contents, only what a child gets.
        unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTFORK) };
    }
}

/// `CLONE_INTO_CGROUP` (clone3, Linux 5.7): the child starts in this cgroup v2 directory.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// clone3(2)'s argument, as in linux/sched.h (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Like the fork-style clone(2) with `flags` (clone's layout: the exit signal in the low
/// byte), but the child starts in the cgroup v2 directory `cgroup`. Returns what clone
/// returns: 0 in the child, the pid in the caller, -1 with errno set.
fn clone_into_cgroup(flags: libc::c_int, cgroup: std::os::fd::BorrowedFd<'_>) -> libc::c_long {
    let flags = flags as u32 as u64;
    let mut args = CloneArgs { flags: (flags & !0xff) | CLONE_INTO_CGROUP, cgroup: cgroup.as_raw_fd() as u64, ..Default::default() };
    // With CLONE_PARENT clone3 wants no exit signal: the child gets the caller's.
    if flags & libc::CLONE_PARENT as u64 == 0 {
        args.exit_signal = flags & 0xff;
    }
    // SAFETY: no new stack: like fork(2), the child runs on a copy of this single-threaded
    // process and returns 0 here. `args` outlives the call and its size is passed with it.
    unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) }
}

/// Makes `path` the pid namespace of our next child; returns our own, to go back to.
/// How long the fork server must have been idle before it makes a spare network namespace.
const SPARE_NET_IDLE_MS: u16 = 2;

/// A network namespace made ahead, while the fork server is idle, for the next container
/// that asks for a new one. Making one (`unshare`: a loopback device, sysctl tables, every
/// protocol's per-namespace state) takes most of a millisecond here; entering a made one
/// for the clone and coming back, two `setns`. The new one is no different: no interface
/// up, owned by the initial user namespace, like one made by clone(CLONE_NEWNET) here.
/// One is made before the first request (a standby's first container is a new pod's, whose
/// sandbox gets a new network namespace) and then only while requests keep asking for new
/// ones (twice in a row): a pod whose other containers join its sandbox's, or a shim of one
/// container, keeps no spare.
struct SpareNet {
    own: std::fs::File,
    spare: Option<std::fs::File>,
    /// A request has been served.
    served: bool,
    /// The last requests in a row that asked for a new network namespace (counted up to 2).
    streak: u32,
    /// Making one failed once: clone makes them from then on.
    failed: bool,
}

impl SpareNet {
    fn new() -> Option<SpareNet> {
        let own = std::fs::File::open("/proc/thread-self/ns/net").ok()?;
        Some(SpareNet { own, spare: None, served: false, streak: 0, failed: false })
    }

    /// Whether to make a spare: none held, and before the first request or after two in a
    /// row that asked for a new network namespace.
    fn wanted(&self) -> bool {
        self.spare.is_none() && !self.failed && (!self.served || self.streak >= 2)
    }

    /// Makes the spare; this process is back in its own namespace afterwards (or exits).
    fn make(&mut self) {
        use nix::sched::{setns, unshare, CloneFlags};
        if unshare(CloneFlags::CLONE_NEWNET).is_err() {
            self.failed = true;
            return;
        }
        let made = std::fs::File::open("/proc/thread-self/ns/net");
        if setns(self.own.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
            // Containers would share this namespace.
            unsafe_exit(1);
        }
        match made {
            Ok(f) => self.spare = Some(f),
            Err(_) => self.failed = true,
        }
    }

    /// Enters the spare, if there is one, for the clone that follows: the child keeps it,
    /// and [`SpareNet::leave`] brings this process back. False if it could not.
    fn enter(&mut self) -> bool {
        let Some(spare) = self.spare.take() else { return false };
        nix::sched::setns(spare.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
    }

    fn leave(&self) -> nix::Result<()> {
        nix::sched::setns(self.own.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
    }

    /// A request was served that asked for a new network namespace, or not.
    fn asked(&mut self, new_net: bool) {
        self.served = true;
        self.streak = if new_net { (self.streak + 1).min(2) } else { 0 };
    }
}

fn enter_pid_ns(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let own = std::fs::File::open("/proc/self/ns/pid")?;
    let target = std::fs::File::open(path)?;
    nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWPID)?;
    Ok(own)
}

fn unsafe_exit(code: i32) -> ! {
    // SAFETY: _exit ends the process without running the shim's atexit handlers or
    // destructors, which belong to the parent.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The network namespace this thread is in, by inode.
    fn current_net() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    }

    #[test]
    fn a_spare_network_namespace_is_made_when_idle_entered_for_one_clone_and_left() {
        // On a thread of its own: setns and unshare move only the calling thread.
        std::thread::spawn(|| {
            let host = current_net();
            let mut n = SpareNet::new().unwrap();
            assert!(n.wanted(), "one before the first request");
            n.make();
            let spare = n.spare.as_ref().expect("made (the tests run as root)").metadata().unwrap().ino();
            assert_ne!(spare, host);
            assert_eq!(current_net(), host, "back in its own namespace after making one");
            assert!(!n.wanted());
            assert!(n.enter());
            assert_eq!(current_net(), spare, "in the spare for the clone");
            n.leave().unwrap();
            assert_eq!(current_net(), host);
            assert!(!n.enter(), "a spare serves once");
            // The first request used it: none again until two in a row ask for one.
            n.asked(true);
            assert!(!n.wanted());
            n.asked(true);
            assert!(n.wanted());
            n.asked(false);
            assert!(!n.wanted(), "a request joining a namespace ends the streak");
            n.asked(true);
            assert!(!n.wanted());
        })
        .join()
        .unwrap();
    }
}
