//! The container process, from clone(2) to running its payload. One straight-line function;
//! each step's position is forced by the comment above it.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::str::FromStr;

use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::socket::MsgFlags;
use nix::sys::stat::{umask, Mode};
use nix::unistd::{chdir, dup2, execve, sethostname, setsid, Gid, Uid};

use crate::error::{Ctx, SetupError, Step};
use crate::sync::{recv, send, wait_for, ChildMsg, ParentMsg};
use crate::{mounts, Payload, Plan};

/// Runs in the new process returned by clone(2) in the fork server; never returns.
pub(crate) fn container_init<P: Payload>(plan: Plan, sync: OwnedFd, stdio: [OwnedFd; 3], payload: &P) -> ! {
    let code = match init(&plan, &sync, stdio, payload) {
        Ok(code) => code,
        Err(e) => {
            let _ = send(sync.as_fd(), &ChildMsg::Failed(e), &[]);
            1
        }
    };
    // SAFETY: _exit skips destructors and atexit handlers that belong to the fork server.
    unsafe { libc::_exit(code) }
}

fn init<P: Payload>(plan: &Plan, sync: &OwnedFd, stdio: [OwnedFd; 3], payload: &P) -> Result<i32, SetupError> {
    let mut clock = crate::SetupClock { started: crate::monotonic_ns(), ..Default::default() };
    // Until execve replaces it, this process is the shim's binary: non-dumpable, no other
    // process may open /proc/PID/exe (or mem) and reach that binary (CVE-2019-5736). A
    // wasm process stays so for its life; execve of a native program resets it.
    // SAFETY: prctl with PR_SET_DUMPABLE takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(SetupError::new(Step::Session, format!("PR_SET_DUMPABLE: {}", std::io::Error::last_os_error())));
    }
    // A session of its own: signals to the shim's process group must not reach the container.
    setsid().ctx(Step::Session, "setsid")?;
    // In a user namespace (new or joined), nothing below may run before the shim mapped our ids and
    // set the limits we can no longer set ourselves (userns.rs).
    crate::userns::wait_for_parent(plan, sync)?;
    // A wasm process is a clone of the fork server: without this, `ps` would show the
    // shim's command line for every container. While the host's /proc is still visible.
    if !plan.is_native() {
        set_cmdline(&plan.args)?;
    }

    // Join the cgroup while still in the shim's cgroup namespace, so that a new cgroup
    // namespace below is rooted at the container's own cgroup. Its v1 directories may still
    // be being made while we were cloned: the parent says when they exist, and may send
    // their join files open (it opened them on its thread while we were being cloned: a
    // path walk and a kernfs open each, some 15 us, off our path).
    let opened = if plan.cgroup_pending { wait_for(sync.as_fd(), ParentMsg::CgroupReady, Step::JoinCgroup, "the cgroup", "making the cgroup")? } else { Vec::new() };
    let opened = if opened.len() == plan.cgroup_procs.len() { opened } else { Vec::new() };
    for (i, f) in plan.cgroup_procs.iter().enumerate() {
        if plan.cgroup_placed.as_ref() == Some(f) {
            continue;
        }
        match opened.get(i) {
            Some(fd) => nix::unistd::write(fd, b"0").map(drop).ctx(Step::JoinCgroup, f.display())?,
            None => std::fs::write(f, "0").ctx(Step::JoinCgroup, f.display())?,
        }
    }
    drop(opened);
    clock.joined = crate::monotonic_ns();

    // The payload's host file (in the cache of the shim's mount namespace): before a joined
    // mount namespace or pivot_root can hide it. Opened, not failed on: prepare decides what
    // a missing file means (a compiled module is an optimisation; the module is the fallback).
    let payload_file = plan.payload_file.as_ref().map(std::fs::File::open);

    // Namespaces given by path (a pod's shared ones, or all of a container's for an exec).
    // Before any mount work, so a joined mount namespace is the one the container's mounts
    // go into. (A pid namespace was joined by the fork server, before the clone; a new
    // container's user namespace by the process that cloned us, see
    // userns::clone_in_userns; an exec process's below, after the others.)
    // An exec process needs the container's root too: setns into a mount namespace puts a
    // process at the namespace's first root, which pivot_root does not change. Opened while
    // the host's /proc is in sight.
    let exec_root = if plan.exec { Some(std::fs::File::open(&plan.rootfs).ctx(Step::JoinNamespace, plan.rootfs.display())?) } else { None };
    // An exec process into a container with a user namespace: opened now, as host root.
    // /proc/PID/ns of a non-dumpable (wasm) process is closed to anyone without
    // CAP_SYS_PTRACE in the initial user namespace, which entering the container's drops.
    let exec_userns = match plan.join_userns() {
        Some(path) if plan.exec => Some((std::fs::File::open(path).ctx(Step::JoinNamespace, path.display())?, path)),
        _ => None,
    };
    for (flag, path) in plan.join_ns.iter().filter(|(f, _)| *f != libc::CLONE_NEWPID && *f != libc::CLONE_NEWUSER) {
        let f = std::fs::File::open(path).ctx(Step::JoinNamespace, path.display())?;
        setns(f.as_fd(), CloneFlags::from_bits_truncate(*flag)).ctx(Step::JoinNamespace, path.display())?;
    }
    // The user namespace last: host root may join every namespace of the container, and
    // from inside it the process holds every capability over them (chroot below included).
    if let Some((f, path)) = exec_userns {
        setns(f.as_fd(), CloneFlags::CLONE_NEWUSER).ctx(Step::JoinNamespace, path.display())?;
    }
    if let Some(root) = exec_root {
        nix::unistd::fchdir(&root).ctx(Step::PivotRoot, "enter the container's root")?;
        nix::unistd::chroot(".").ctx(Step::PivotRoot, "chroot into the container's root")?;
    }
    if plan.new_cgroup_ns {
        unshare(CloneFlags::CLONE_NEWCGROUP).ctx(Step::UnshareCgroupNs, "unshare")?;
    }

    // /proc/self is the host's /proc here (and the container's after pivot_root, both fine).
    if let Some(adj) = plan.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).ctx(Step::Session, "process.oomScoreAdj")?;
    }
    // The shim opened containerd's FIFOs (or /dev/null) for us; they become fds 0-2.
    install_stdio(stdio)?;

    // Host-owned files are behind us (cgroupfs, FIFOs); what the rootfs setup creates must
    // belong to the container's root.
    crate::userns::become_root(plan)?;
    // An exec process joined the container's mount namespace above, whose root is the
    // container's root: the container is set up already, only the process remains.
    if !plan.exec {
        mounts::setup_rootfs(plan)?;

        if let Some(h) = &plan.hostname {
            sethostname(h).ctx(Step::Hostname, "hostname")?;
        }
        if let Some(d) = &plan.domainname {
            // SAFETY: the pointer and length describe `d`, which outlives the call.
            let r = unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) };
            if r != 0 {
                return Err(SetupError::new(Step::Hostname, format!("domainname: {}", std::io::Error::last_os_error())));
            }
        }
        // /proc/sys is the container's own view now (its /proc mount, its namespaces).
        for (k, v) in &plan.sysctl {
            let p = Path::new("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&p, v).ctx(Step::Sysctl, k)?;
        }
        // Only now: /proc/sys is usually one of the read-only paths.
        mounts::protect_paths(plan)?;
        clock.rootfs = crate::monotonic_ns();
    }
    // The pty comes from the container's own devpts (mounted above), so the process sees its
    // terminal under its /dev/pts; setsid above lets it become the controlling terminal.
    if plan.terminal {
        setup_console(sync)?;
    }
    for &(res, soft, hard) in &plan.rlimits {
        let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(res as _, &lim) } != 0 {
            return Err(SetupError::new(Step::Rlimits, format!("resource {res}: {}", std::io::Error::last_os_error())));
        }
    }
    if let Some(m) = plan.umask {
        umask(Mode::from_bits_truncate(m));
    }
    chdir(&plan.cwd).ctx(Step::Cwd, plan.cwd.display())?;

    // Load the module while still root in the container: its file may be unreadable to the
    // process's user, like an executable that is exec-only.
    let prepared = if plan.is_native() { None } else { Some(payload.prepare(plan, payload_file).map_err(|e| SetupError::new(Step::Prepare, e))?) };
    clock.prepared = crate::monotonic_ns();

    // Without no_new_privs, loading a filter takes CAP_SYS_ADMIN: load it before the caps
    // go (the filter then also sees the setuid and capset calls, which profiles allow).
    if !plan.no_new_privs {
        load_seccomp(plan)?;
    }
    set_user_and_caps(plan)?;
    caps_as_after_execve(plan)?;
    if plan.no_new_privs {
        // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(SetupError::new(Step::NoNewPrivs, std::io::Error::last_os_error()));
        }
        // With no_new_privs, as late as possible: the filter sees little but the payload.
        load_seccomp(plan)?;
    }

    // Nothing the fork server or the shim had open may reach the container (CVE-2024-21626).
    close_fds_except(sync.as_raw_fd())?;

    if prepared.is_some() {
        // The process is its pid namespace's init, which the kernel shields from every signal
        // it has no handler for (SIGKILL aside). Handle the stopping signals the way a native
        // program's default action would end it: exit 128+signal. Before Ready: the shim
        // answers Start without waiting for us (Container::start), and a Kill right after
        // that Start must find the handlers; one before Start ends the process too, as it
        // ends a created runc container.
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            // SAFETY: the handler only calls _exit, which is async-signal-safe.
            unsafe { libc::signal(s, exit_on_signal as *const () as libc::sighandler_t) };
        }
    }
    clock.ready = crate::monotonic_ns();
    send(sync.as_fd(), &ChildMsg::Ready(clock), &[]).ctx(Step::Prepare, "report ready")?;

    let Some(prepared) = prepared else {
        match recv::<ParentMsg>(sync.as_fd(), MsgFlags::empty()) {
            Ok(Some((ParentMsg::Start, _))) => {}
            // The shim went away, or deleted us before Start.
            _ => return Ok(137),
        }
        let crate::plan::Plan { args, env, .. } = plan;
        let wshim_oci::Entrypoint::Native { program } = &plan.entry else { unreachable!("checked by is_native") };
        let prog = CString::new(program.as_os_str().as_bytes()).ctx(Step::Exec, "program")?;
        let argv: Vec<CString> = args.iter().map(|a| CString::new(a.as_bytes())).collect::<Result<_, _>>().ctx(Step::Exec, "process.args")?;
        let envp: Vec<CString> = env.iter().map(|a| CString::new(a.as_bytes())).collect::<Result<_, _>>().ctx(Step::Exec, "process.env")?;
        // The sync socket is close-on-exec: its EOF tells the shim the exec happened.
        let e = execve(&prog, &argv, &envp).unwrap_err();
        return Err(SetupError::new(Step::Exec, format!("{}: {e}", program.display())));
    };
    // The payload first does what it can before Start (instantiates the module while the
    // shim answers Create and containerd sends Start), reports it (Primed, or Failed, which
    // the shim's Start returns), then waits for Start. After Primed nothing can fail before
    // the payload's entry, so the shim's Start does not wait for the process to run.
    let mut not_started = 137;
    let mut start = |primed: Result<(), String>| {
        let (msg, ok) = match primed {
            Ok(()) => (ChildMsg::Primed, true),
            Err(e) => (ChildMsg::Failed(SetupError::new(Step::Instantiate, e)), false),
        };
        if !ok {
            not_started = 1;
        }
        // Failed or not, wait for Start (or the shim's end): an exit now would be a created
        // task's, and the Start call would not learn why.
        let sent = send(sync.as_fd(), &msg, &[]).is_ok();
        let go = sent && matches!(recv::<ParentMsg>(sync.as_fd(), MsgFlags::empty()), Ok(Some((ParentMsg::Start, _))));
        ok && go
    };
    let Some((code, message)) = payload.run(prepared, plan, &mut start) else { return Ok(not_started) };
    if message.is_some() {
        let _ = send(sync.as_fd(), &ChildMsg::Exited { code, message }, &[]);
    }
    Ok(code)
}

extern "C" fn exit_on_signal(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) }
}

/// Makes `stdio` the process's fds 0, 1 and 2.
fn install_stdio(stdio: [OwnedFd; 3]) -> Result<(), SetupError> {
    for (target, fd) in stdio.into_iter().enumerate() {
        if fd.as_raw_fd() == target as i32 {
            // Already in place: only close-on-exec must go.
            fcntl(&fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).ctx(Step::OpenStdio, "clear close-on-exec")?;
            let _ = fd.into_raw_fd();
            continue;
        }
        // SAFETY: `target` is one of the standard descriptors, which this process owns.
        let mut t = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(target as i32) };
        dup2(&fd, &mut t).ctx(Step::OpenStdio, format!("dup2 onto fd {target}"))?;
        // dup2 clears close-on-exec on the copy; keep 0-2 open and forget the handle.
        let _ = t.into_raw_fd();
    }
    Ok(())
}

/// `process.terminal`: a new pty from the container's /dev/ptmx becomes the controlling
/// terminal and fds 0-2; its master goes to the shim, which relays it to containerd's FIFOs.
fn setup_console(sync: &OwnedFd) -> Result<(), SetupError> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).ctx(Step::Console, "open /dev/ptmx")?;
    grantpt(&master).ctx(Step::Console, "grantpt")?;
    unlockpt(&master).ctx(Step::Console, "unlockpt")?;
    let name = ptsname_r(&master).ctx(Step::Console, "ptsname")?;
    let slave = open(name.as_str(), OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC, Mode::empty()).ctx(Step::Console, &name)?;
    // SAFETY: TIOCSCTTY takes an integer argument; the process leads its own session (setsid).
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(SetupError::new(Step::Console, format!("TIOCSCTTY {name}: {}", std::io::Error::last_os_error())));
    }
    let slave_copies = [slave.try_clone(), slave.try_clone()];
    let [Ok(a), Ok(b)] = slave_copies else { return Err(SetupError::new(Step::Console, "dup pty")) };
    install_stdio([slave, a, b])?;
    send(sync.as_fd(), &ChildMsg::Console, &[master.as_raw_fd()]).ctx(Step::Console, "send the pty master to the shim")?;
    Ok(())
}

fn set_user_and_caps(plan: &Plan) -> Result<(), SetupError> {
    use caps::{CapSet, Capability};
    let parse = |names: &[String]| -> Result<HashSet<Capability>, SetupError> {
        names.iter().map(|n| Capability::from_str(n).map_err(|e| SetupError::new(Step::Capabilities, format!("{n}: {e}")))).collect()
    };
    // The bounding set shrinks while we still hold CAP_SETPCAP.
    if let Some(c) = &plan.caps {
        let keep = parse(&c.bounding)?;
        // Dropped without asking first (one syscall, not two, per capability); a failure counts
        // only if the capability is still there (one this kernel does not know fails too).
        for cap in caps::all().into_iter().filter(|c| !keep.contains(c)) {
            if let Err(e) = caps::drop(None, CapSet::Bounding, cap) {
                if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                    return Err(SetupError::new(Step::Capabilities, format!("drop {cap} from bounding: {e}")));
                }
            }
        }
    }
    // Keep the permitted set across setuid so the spec's sets can be applied after it.
    // SAFETY: prctl with PR_SET_KEEPCAPS takes integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let gids: Vec<Gid> = plan.additional_gids.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&gids).ctx(Step::User, "process.user.additionalGids")?;
    let gid = Gid::from_raw(plan.gid);
    nix::unistd::setresgid(gid, gid, gid).ctx(Step::User, "process.user.gid")?;
    let uid = Uid::from_raw(plan.uid);
    nix::unistd::setresuid(uid, uid, uid).ctx(Step::User, "process.user.uid")?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    if let Some(c) = &plan.caps {
        caps::set(None, CapSet::Effective, &HashSet::new()).ctx(Step::Capabilities, "clear effective")?;
        caps::set(None, CapSet::Permitted, &parse(&c.permitted)?).ctx(Step::Capabilities, "permitted")?;
        caps::set(None, CapSet::Inheritable, &parse(&c.inheritable)?).ctx(Step::Capabilities, "inheritable")?;
        caps::set(None, CapSet::Effective, &parse(&c.effective)?).ctx(Step::Capabilities, "effective")?;
        caps::clear(None, CapSet::Ambient).ctx(Step::Capabilities, "clear ambient")?;
        for cap in parse(&c.ambient)? {
            caps::raise(None, CapSet::Ambient, cap).ctx(Step::Capabilities, format!("ambient {cap}"))?;
        }
    }
    Ok(())
}

/// A native program's execve as a non-root user leaves it only its ambient capabilities
/// (there are no file capabilities to add). A wasm payload has no execve: drop the same ones
/// here, or a module run as uid 1000 would keep CAP_DAC_OVERRIDE and the like.
fn caps_as_after_execve(plan: &Plan) -> Result<(), SetupError> {
    use caps::CapSet;
    if plan.is_native() || plan.uid == 0 {
        return Ok(());
    }
    let ambient = caps::read(None, CapSet::Ambient).ctx(Step::Capabilities, "read ambient")?;
    caps::set(None, CapSet::Effective, &ambient).ctx(Step::Capabilities, "effective as after execve")?;
    caps::set(None, CapSet::Permitted, &ambient).ctx(Step::Capabilities, "permitted as after execve")
}

/// Rewrites this process's argv area, which /proc/PID/cmdline (what `ps` shows) reads, to
/// `args` (cut to fit), and sets the thread name to the program's file name. Reads where
/// the area is from /proc/self/stat, so it must run while the host's /proc is visible.
pub(crate) fn set_cmdline(args: &[String]) -> Result<(), SetupError> {
    // Where the kernel put argv: read once, in the fork server (which renames itself at its
    // start); the processes it clones have it at the same address, and skip /proc/self/stat.
    static ARG_AREA: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    let (start, end) = match ARG_AREA.get() {
        Some(&area) => area,
        None => {
            let stat = std::fs::read_to_string("/proc/self/stat").ctx(Step::Session, "read /proc/self/stat")?;
            // Fields after the command name: arg_start and arg_end are the 48th and 49th fields.
            let rest: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
            let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<usize>().ok());
            let (Some(start), Some(end)) = (field(48), field(49)) else {
                return Err(SetupError::new(Step::Session, "no arg_start/arg_end in /proc/self/stat"));
            };
            *ARG_AREA.get_or_init(|| (start, end))
        }
    };
    if end <= start {
        return Ok(());
    }
    let mut text: Vec<u8> = args.iter().flat_map(|a| a.bytes().filter(|b| *b != 0).chain(std::iter::once(0))).collect();
    text.truncate(end - start - 1);
    text.resize(end - start, 0);
    // SAFETY: [start, end) is this process's own argv strings, written by the kernel at exec
    // on the initial stack and never freed. Nothing in this process holds a Rust reference
    // into it; std reads argv only through raw pointers when asked for env::args().
    unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), start as *mut u8, text.len()) };
    if let Some(name) = args.first().map(|a| a.rsplit('/').next().unwrap_or(a)) {
        let mut comm: Vec<u8> = name.bytes().filter(|b| *b != 0).take(15).collect();
        comm.push(0);
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0) };
    }
    Ok(())
}

fn load_seccomp(plan: &Plan) -> Result<(), SetupError> {
    let Some(bpf) = &plan.seccomp_bpf else { return Ok(()) };
    let prog = libc::sock_fprog { len: (bpf.len() / 8) as u16, filter: bpf.as_ptr() as *mut libc::sock_filter };
    // SAFETY: `prog` points at `bpf`, a whole number of sock_filter entries that libseccomp
    // produced; the kernel copies it during the call.
    if unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog as libc::c_ulong, 0, 0) } != 0 {
        return Err(SetupError::new(Step::Seccomp, format!("load filter: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

pub(crate) fn close_fds_except(keep: i32) -> Result<(), SetupError> {
    for (lo, hi) in [(3u32, keep as u32 - 1), (keep as u32 + 1, u32::MAX)] {
        if lo > hi {
            continue;
        }
        // SAFETY: close_range only closes descriptors; none of the ones in range is used
        // again by this process (the payload is prepared, stdio is 0-2, sync is `keep`).
        if unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) } != 0 {
            return Err(SetupError::new(Step::CloseFds, std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
