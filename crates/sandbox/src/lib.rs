//! Linux container setup, crun-style, and the fork server that starts containers.
//!
//! * [`Plan`] is the validated subset of an OCI runtime spec that this crate honours; every
//!   field it cannot honour is refused by [`Plan::from_bundle`] with an error naming it.
//! * [`Zygote`] is a single-threaded process forked before the shim starts any thread. It
//!   clones container processes on request; they become children of the shim (`CLONE_PARENT`).
//! * [`create_container`] is the parent side of container creation, [`child`] the child side.
//! * [`Payload`] is how a process that is not a native executable (a wasm module) gets run
//!   inside the finished container: this crate knows nothing about wasm.
//!
//! This is the only crate of the workspace with `unsafe` code.

mod cgroup;
mod child;
pub mod devices_bpf;
mod error;
mod forker;
mod mounts;
mod parent;
mod plan;
mod seccomp;
mod sync;
mod userns;
mod zygote;

pub use cgroup::{Cgroup, CgroupError, CgroupMode, OomWatch};
pub use error::{SetupError, Step};
pub use forker::{bind_server, priority, request_fork, serve_forks, set_priority, ForkError, ForkRequest};
pub use mounts::{mount_rootfs, unmount_rootfs, RootfsMount};
pub use parent::{create_container, create_exec, Container, CreateError, SetupTiming};
pub use plan::{CapPlan, DevicePlan, MountPlan};
pub use plan::{cgroups_path, check_resources, Plan, PlanError, Stdio};
pub use userns::IdMap;
pub use zygote::{Spawned, Zygote, ZygoteError};

/// When (CLOCK_MONOTONIC, in ns, one clock for every process) the stages of a container
/// process's setup ended: it started running after clone, joined its cgroups, has its root
/// filesystem, its payload prepared, and reported ready. Zero for a stage it skipped.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct SetupClock {
    pub started: u64,
    pub joined: u64,
    pub rootfs: u64,
    pub prepared: u64,
    pub ready: u64,
}

/// CLOCK_MONOTONIC now, in ns.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// Runs a container's process when it is not a native executable.
pub trait Payload {
    /// Whatever `prepare` made ready (a loaded, validated module).
    type Prepared;
    /// Called inside the finished container, before it reports ready to the shim: errors here
    /// fail the Create call. `entry` is the plan's entrypoint. `file` is `plan.payload_file`,
    /// opened before pivot_root (None when the plan names none); it is closed after prepare.
    fn prepare(&self, plan: &Plan, file: Option<std::io::Result<std::fs::File>>) -> Result<Self::Prepared, String>;
    /// Runs the process; returns its exit code and, if it ended abnormally (a trap), a
    /// message for the shim's log. Called once the process reported Ready, with the user,
    /// capabilities and no_new_privs applied. It may first do work that runs none of the
    /// payload's own code (a wasm module's instantiation), while the shim answers Create and
    /// containerd sends Start; then it calls `start` once, with how that work went (an error
    /// fails the Start call), before anything of the payload's own runs. `start` waits for
    /// Start and says whether to go on; if not, `run` returns None at once.
    fn run(&self, prepared: Self::Prepared, plan: &Plan, start: &mut dyn FnMut(Result<(), String>) -> bool) -> Option<(i32, Option<String>)>;
    /// Called in the fork server after it cloned the process for `plan` (so not on that
    /// process's path): work done here is inherited by the processes it clones later, whose
    /// `prepare` may then skip it. The fork server is single-threaded and must stay so.
    fn preload(&self, _plan: &Plan) {}
    /// Shared libraries the fork server has loaded whose code no container process runs (a
    /// compiler, say), by a part of their file name. Their written data is not inherited by
    /// the processes it clones (see `zygote::not_inherited`).
    fn unused_libraries(&self) -> &[&str] {
        &[]
    }
}
