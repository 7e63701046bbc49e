//! The shim's side of creating and starting a container. One straight-line function; the
//! child's side is `child::container_init`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::MsgFlags;
use nix::unistd::Pid;

use crate::cgroup::{Cgroup, CgroupError};
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

/// A created container process, waiting for Start (or started).
#[derive(Debug)]
pub struct Container {
    pub pid: i32,
    pub cgroup: Cgroup,
    sync: OwnedFd,
}

/// Creates the container described by `plan`: its cgroup under `cgroup_root`, then its
/// process (through the fork server), which sets itself up and stops before the payload.
/// On error nothing is left but a process that is being killed (the caller reaps it) and a
/// cgroup the caller removes with [`Container::cleanup_cgroup`]-like logic; see `abort`.
pub fn create_container(mut plan: Plan, zygote: &Zygote, cgroup_root: &Path) -> Result<Container, (CreateError, Option<Cgroup>)> {
    // The cgroup exists, with its limits, before the process: the child joins it as its
    // first step, so nothing it does runs unaccounted.
    let cgroup = Cgroup::create(cgroup_root, &plan.cgroups_path, plan.resources.as_ref()).map_err(|e| (e.into(), None))?;
    plan.cgroup_procs = cgroup.procs_files();
    plan.cgroup_mount_sources = cgroup.dirs.clone();

    let fail = |e: CreateError, cg: &Cgroup| (e, Some(cg.clone()));
    let (ours, theirs) = sync::pair().map_err(|e| fail(ZygoteError::Io(e).into(), &cgroup))?;
    // The fork server clones the process; it is our child (CLONE_PARENT), so our reaper
    // sees its exit. The child's end of the socketpair went with the request.
    let pid = zygote.spawn(&plan, theirs).map_err(|e| fail(e.into(), &cgroup))?;
    // In a user namespace the child waits for us to map its ids and set its limits (userns.rs).
    if plan.in_userns() {
        if let Err(e) = crate::userns::set_up_from_parent(pid, &plan, ours.as_fd()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            return Err((e.into(), Some(cgroup)));
        }
    }

    // Setup runs in the child now; it answers Ready, or Failed naming the step.
    let report = recv::<ChildMsg>(ours.as_fd(), MsgFlags::empty());
    let err = match report {
        Ok(Some((ChildMsg::Ready, _))) => return Ok(Container { pid, cgroup, sync: ours }),
        Ok(Some((ChildMsg::Failed(e), _))) => CreateError::Setup(e),
        Ok(Some((other, _))) => CreateError::Sync { pid, source: std::io::Error::other(format!("unexpected {other:?}")) },
        Ok(None) => CreateError::Died { pid, during: "setup" },
        Err(source) => CreateError::Sync { pid, source },
    };
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    Err((err, Some(cgroup)))
}

impl Container {
    /// Lets the process run its payload. Returns once it runs: for a native program once
    /// execve succeeded, for a wasm module once it was entered.
    pub fn start(&self) -> Result<(), CreateError> {
        let pid = self.pid;
        send(self.sync.as_fd(), &ParentMsg::Start, &[]).map_err(|source| CreateError::Sync { pid, source })?;
        match recv::<ChildMsg>(self.sync.as_fd(), MsgFlags::empty()) {
            // EOF: the close-on-exec socket went with a successful execve.
            Ok(None) | Ok(Some((ChildMsg::Started, _))) => Ok(()),
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
