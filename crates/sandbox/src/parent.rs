//! The shim's side of creating and starting a container. One straight-line function; the
//! child's side is `child::container_init`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::MsgFlags;
use nix::unistd::Pid;

use crate::cgroup::{Cgroup, CgroupError, OomWatch};
use crate::error::SetupError;
use crate::sync::{self, recv, send, ChildMsg, ParentMsg};
use crate::{Plan, Zygote, ZygoteError};

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Zygote(#[from] ZygoteError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("container process {pid} exited during {during} without a report")]
    Died { pid: i32, during: &'static str },
    #[error("talking to container process {pid}: {source}")]
    Sync { pid: i32, source: std::io::Error },
}

/// A created container process, waiting for Start (or started); also an exec process.
#[derive(Debug)]
pub struct Container {
    pub pid: i32,
    pub cgroup: Cgroup,
    sync: OwnedFd,
    /// With `process.terminal`: the master of the pty that is the process's stdio.
    pub console: Option<OwnedFd>,
    /// The process was cloned straight into the cgroup's v2 directory (CLONE_INTO_CGROUP).
    pub into_cgroup: bool,
    /// It runs a native program (execve at Start), not a wasm module.
    native: bool,
    /// Where the setup's time went, for the log.
    pub timing: SetupTiming,
    /// A container's (not an exec's): its cgroup's OOM watch and OOM kill count so far,
    /// made while the process set itself up ([`Cgroup::oom_watch`], [`Cgroup::oom_kills`]).
    pub oom: Option<(Result<Option<OomWatch>, CgroupError>, u64)>,
}

/// µs from the start of [`create_container`] (or [`create_exec`]) until each stage ended, in
/// this order: the cgroup made, the spawn request sent to the fork server, read there, clone
/// returned there, then the child's stages ([`crate::SetupClock`]: running, cgroups joined,
/// rootfs done, payload prepared, ready). Zero for a stage that did not happen. Displayed as
/// the nine numbers separated by spaces (the `setup_us` of the shim's log).
#[derive(Debug, Clone, Copy, Default)]
pub struct SetupTiming(pub [u64; 9]);

impl SetupTiming {
    fn new(t0: u64, [cgroup, requested, received, cloned]: [u64; 4], c: crate::SetupClock) -> SetupTiming {
        SetupTiming([cgroup, requested, received, cloned, c.started, c.joined, c.rootfs, c.prepared, c.ready].map(|t| if t == 0 { 0 } else { t.saturating_sub(t0) / 1000 }))
    }
}

impl std::fmt::Display for SetupTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [first, rest @ ..] = &self.0;
        write!(f, "{first}")?;
        rest.iter().try_for_each(|v| write!(f, " {v}"))
    }
}

/// Creates the container described by `plan`: its cgroup under `cgroup_root`, then its
/// process (through the fork server), which sets itself up and stops before the payload.
/// `stdio` becomes the process's fds 0-2. On error nothing is left but a process that is
/// being killed (the caller reaps it) and the cgroup, returned for the caller to remove.
pub fn create_container(mut plan: Plan, zygote: &Zygote, cgroup_root: &Path, stdio: [OwnedFd; 3]) -> Result<Container, (CreateError, Option<Cgroup>)> {
    let t0 = crate::monotonic_ns();
    // The directory the process is cloned into exists before the clone (CLONE_INTO_CGROUP);
    // on a v1 host that is only the `unified` one, and the v1 hierarchies' directories are
    // made while the fork server clones (they cost about as much as the clone). The child
    // waits for them (`cgroup_pending`) before it joins them as its first step, so nothing
    // it does runs unaccounted.
    let cgroup = Cgroup::create_early(cgroup_root, &plan.cgroups_path, plan.resources.as_ref()).map_err(|e| (e.into(), None))?;
    plan.cgroup_mount_sources = cgroup.dirs.clone();
    let resources = plan.resources.clone();
    let late = || cgroup.create_late(cgroup_root, resources.as_ref());
    let late = cgroup.has_late().then_some(&late as &(dyn Fn() -> Result<(), CgroupError> + Sync));
    spawn(plan, zygote, stdio, cgroup.clone(), t0, late, true).map_err(|e| (e, Some(cgroup.clone())))
}

/// Creates an extra process in the running container `container` (an exec): `plan` comes
/// from [`Plan::for_exec`]. It joins the container's namespaces and cgroup, and waits for
/// [`Container::start`] like the container's own process.
pub fn create_exec(plan: Plan, zygote: &Zygote, container: &Container, stdio: [OwnedFd; 3]) -> Result<Container, CreateError> {
    spawn(plan, zygote, stdio, container.cgroup.clone(), crate::monotonic_ns(), None, false)
}

/// The process for `plan`, in `cgroup`: the files it joins and the v2 directory it may be
/// cloned into both come from that one cgroup here. `late` makes the rest of the cgroup
/// while the fork server clones; the child joins only once it is done. With `watch_oom`,
/// the cgroup's OOM watch is set up while the child sets itself up.
fn spawn(
    mut plan: Plan,
    zygote: &Zygote,
    stdio: [OwnedFd; 3],
    cgroup: Cgroup,
    t0: u64,
    late: Option<&(dyn Fn() -> Result<(), CgroupError> + Sync)>,
    watch_oom: bool,
) -> Result<Container, CreateError> {
    plan.cgroup_procs = cgroup.join_files();
    plan.cgroup_pending = late.is_some();
    let plan = &plan;
    let (ours, theirs) = sync::pair().map_err(ZygoteError::Io)?;
    // The fork server clones the process; it is our child (CLONE_PARENT), so our reaper
    // sees its exit. The child's end of the socketpair and stdio went with the request;
    // with the cgroup's v2 directory, the process starts in it (CLONE_INTO_CGROUP) and
    // joins only the v1 hierarchies itself.
    let into_cgroup = cgroup.v2_dir().map(|d| {
        nix::fcntl::open(d, nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
            .map(|fd| (fd, d.join("cgroup.procs")))
    });
    // Not opening it is no error: the process then joins by cgroup.procs, which reports it.
    let into_cgroup = into_cgroup.and_then(Result::ok);
    let t_requested = crate::monotonic_ns();
    // The rest of the cgroup on a thread of its own while the fork server reads the request
    // and clones. The thread tells the child as soon as it is done (the message waits in the
    // socket), so the child does not wait for the fork server's answer to us. Except in a user
    // namespace: the child takes its id mappings first, and those need its pid.
    let tell_from_thread = !plan.in_userns();
    let (spawned, made) = std::thread::scope(|s| {
        let sync = ours.as_fd();
        // The thread's result: when the cgroup was made, and whether telling the child worked.
        let made = late.map(|late| {
            s.spawn(move || {
                late()?;
                let t = crate::monotonic_ns();
                if !tell_from_thread {
                    return Ok::<_, CgroupError>((t, Ok(())));
                }
                // With the files it joins by, opened here: the child only writes them. All
                // or none (then it opens them itself and names the one that fails).
                let opened: Result<Vec<OwnedFd>, _> = plan.cgroup_procs.iter().map(|f| open_for_join(f)).collect();
                let opened = opened.unwrap_or_default();
                let raw: Vec<RawFd> = opened.iter().map(AsRawFd::as_raw_fd).collect();
                Ok((t, send(sync, &ParentMsg::CgroupReady, &raw)))
            })
        });
        let spawned = zygote.spawn(plan, theirs, stdio, into_cgroup);
        let panicked = || CgroupError::Io { path: cgroup.dirs.first().map(|(_, d)| d.clone()).unwrap_or_default(), op: "create", source: std::io::Error::other("the thread making it panicked") };
        (spawned, made.map(|h| h.join().unwrap_or_else(|_| Err(panicked()))))
    });
    let crate::zygote::Spawned { pid, placed, received, cloned } = spawned?;
    let fail = |e: CreateError| {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        Err(e)
    };
    let t_cgroup = match made {
        Some(Ok((t, Ok(())))) => t,
        Some(Ok((_, Err(source)))) => return fail(CreateError::Sync { pid, source }),
        Some(Err(e)) => return fail(e.into()),
        None => t0,
    };
    // In a user namespace the child waits for us to map its ids and set its limits (userns.rs),
    // then for the cgroup.
    if plan.in_userns() {
        if let Err(e) = crate::userns::set_up_from_parent(pid, plan, ours.as_fd()) {
            return fail(e.into());
        }
        if plan.cgroup_pending {
            if let Err(source) = send(ours.as_fd(), &ParentMsg::CgroupReady, &[]) {
                return fail(CreateError::Sync { pid, source });
            }
        }
    }

    // Setup runs in the child now (a millisecond and more): meanwhile, the OOM watch, then
    // the OOM kill count it starts from (in that order: a kill between the two is counted).
    let mut oom = watch_oom.then(|| {
        let watch = cgroup.oom_watch();
        (watch, cgroup.oom_kills().unwrap_or(0))
    });
    // The child answers Ready, or Failed naming the step. With a terminal, the pty master
    // comes first.
    let mut console = None;
    let err = loop {
        match recv::<ChildMsg>(ours.as_fd(), MsgFlags::empty()) {
            Ok(Some((ChildMsg::Ready(clock), _))) => {
                let timing = SetupTiming::new(t0, [t_cgroup, t_requested, received, cloned], clock);
                return Ok(Container { pid, cgroup, sync: ours, console, into_cgroup: placed, native: plan.is_native(), timing, oom: oom.take() });
            }
            Ok(Some((ChildMsg::Console, mut fds))) if fds.len() == 1 && console.is_none() => console = fds.pop(),
            Ok(Some((ChildMsg::Failed(e), _))) => break CreateError::Setup(e),
            Ok(Some((other, _))) => break CreateError::Sync { pid, source: std::io::Error::other(format!("unexpected {other:?}")) },
            Ok(None) => break CreateError::Died { pid, during: "setup" },
            Err(source) => break CreateError::Sync { pid, source },
        }
    };
    fail(err)
}

/// A cgroup file the child writes "0" into to join: opened here, written there.
fn open_for_join(f: &Path) -> nix::Result<OwnedFd> {
    use nix::fcntl::{open, OFlag};
    open(f, OFlag::O_WRONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
}

impl Container {
    /// Lets the process run its payload. For a native program, returns once execve
    /// succeeded (or with its error). A wasm process instantiates its module between Ready
    /// and Start and then says Primed (or Failed), which this returns; nothing can fail after
    /// that before the module is entered (its signal handlers are in place since Ready), so
    /// this does not wait for the process to run: that would cost the caller a wake-up of the
    /// process and one of its own. The Primed is usually waiting already, sent while the
    /// shim answered Create and containerd sent Start.
    pub fn start(&self) -> Result<(), CreateError> {
        let pid = self.pid;
        send(self.sync.as_fd(), &ParentMsg::Start, &[]).map_err(|source| CreateError::Sync { pid, source })?;
        match recv::<ChildMsg>(self.sync.as_fd(), MsgFlags::empty()) {
            // EOF: the close-on-exec socket went with a successful execve.
            Ok(None) if self.native => Ok(()),
            Ok(None) => Err(CreateError::Died { pid, during: "instantiation" }),
            Ok(Some((ChildMsg::Primed, _))) if !self.native => Ok(()),
            Ok(Some((ChildMsg::Failed(e), _))) => Err(e.into()),
            Ok(Some((other, _))) => Err(CreateError::Sync { pid, source: std::io::Error::other(format!("unexpected {other:?}")) }),
            Err(source) => Err(CreateError::Sync { pid, source }),
        }
    }

    /// After the process exited: the message it left for the log (a wasm trap), if any.
    pub fn exit_message(&self) -> Option<String> {
        match recv::<ChildMsg>(self.sync.as_fd(), MsgFlags::MSG_DONTWAIT) {
            Ok(Some((ChildMsg::Exited { message, .. }, _))) => message,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_timing_is_us_since_the_start_in_stage_order_and_zero_for_skipped_stages() {
        let clock = crate::SetupClock { started: 4_000_000, joined: 5_500_000, rootfs: 0, prepared: 7_000_000, ready: 7_250_000 };
        let t = SetupTiming::new(1_000_000, [1_900_000, 2_000_000, 2_200_000, 3_100_000], clock);
        assert_eq!(t.0, [900, 1000, 1200, 2100, 3000, 4500, 0, 6000, 6250]);
        assert_eq!(t.to_string(), "900 1000 1200 2100 3000 4500 0 6000 6250");
    }
}
