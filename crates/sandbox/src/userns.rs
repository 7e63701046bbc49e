//! User namespaces: `linux.uidMappings` / `linux.gidMappings`.
//!
//! The container process is cloned with CLONE_NEWUSER together with its other new
//! namespaces; the kernel makes the user namespace first, so the mount, pid, net, ipc, uts
//! (and later cgroup) namespaces are owned by it and the process holds every capability over
//! them. A new user namespace has no id mappings: the process cannot write its own (that
//! takes privileges in the parent namespace), so the shim writes them and tells it to go on:
//!
//! 1. child: clone(CLONE_NEWUSER | …), then waits on the sync socket ([`wait_for_parent`]);
//! 2. shim: writes /proc/PID/uid_map and gid_map as root of the parent namespace (so
//!    `setgroups` need not be denied), sets the rlimits and oom_score_adj, which a process
//!    in a user namespace can no longer raise or lower itself, and sends `IdsMapped`;
//! 3. child: joins its cgroup and opens stdio still as host root (kuid 0: cgroupfs and
//!    containerd's FIFOs belong to it), then becomes the container's root
//!    ([`become_root`]) before building the rootfs, so what it creates there is owned by the
//!    container's root, as with runc;
//! 4. device nodes cannot be made in a user namespace: `mounts` binds the host's nodes.
//!
//! A user namespace joined by path (a pod's) must be entered before the new namespaces are
//! made, so they belong to it; the fork server cannot enter it (there is no way back), so
//! [`clone_in_userns`] clones a short-lived intermediate that enters it and clones the
//! container process from there. Steps 2 and 3 then run as above, without writing maps.
//!
//! An exec process into a container with a user namespace makes no namespace: it is cloned
//! as host root, opens the container's namespaces (/proc/PID/ns of a non-dumpable wasm
//! process is closed to it once it is inside), joins all but the user namespace, then the
//! user namespace, and goes on with steps 2 and 3.

use std::os::fd::{AsFd, BorrowedFd};

use nix::unistd::{Gid, Uid};
use oci_spec::runtime::LinuxIdMapping;
use serde::{Deserialize, Serialize};

use crate::error::{Ctx, SetupError, Step};
use crate::plan::PlanError;
use crate::sync::{send, wait_for, ParentMsg};
use crate::Plan;

/// One line of uid_map or gid_map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// The kernel takes at most this many lines per map (since Linux 4.15).
const MAX_LINES: usize = 340;

fn invalid(field: String, value: String, why: impl Into<String>) -> PlanError {
    PlanError::Invalid { field, value, why: why.into() }
}

/// Checks one of `linux.uidMappings` / `linux.gidMappings` (`field`) and converts it.
pub(crate) fn check_mappings(field: &str, maps: &[LinuxIdMapping]) -> Result<Vec<IdMap>, PlanError> {
    if maps.len() > MAX_LINES {
        return Err(invalid(field.into(), format!("{} entries", maps.len()), format!("the kernel takes at most {MAX_LINES}")));
    }
    let maps: Vec<IdMap> = maps.iter().map(|m| IdMap { container_id: m.container_id(), host_id: m.host_id(), size: m.size() }).collect();
    for (i, m) in maps.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let text = format!("containerID {} hostID {} size {}", m.container_id, m.host_id, m.size);
        if m.size == 0 {
            return Err(invalid(format!("{f}.size"), text, "must be at least 1"));
        }
        if m.container_id.checked_add(m.size - 1).is_none() || m.host_id.checked_add(m.size - 1).is_none() {
            return Err(invalid(f, text, "the range runs past 2^32-1"));
        }
        for (j, n) in maps[..i].iter().enumerate() {
            let overlap = |a: u32, b: u32| a < b.saturating_add(n.size) && b < a.saturating_add(m.size);
            if overlap(m.container_id, n.container_id) {
                return Err(invalid(f, text, format!("its containerID range overlaps {field}[{j}]")));
            }
            if overlap(m.host_id, n.host_id) {
                return Err(invalid(f, text, format!("its hostID range overlaps {field}[{j}]")));
            }
        }
    }
    Ok(maps)
}

/// Whether container id `id` is mapped by `maps`.
pub(crate) fn maps_id(maps: &[IdMap], id: u32) -> bool {
    maps.iter().any(|m| id >= m.container_id && id - m.container_id < m.size)
}

/// The text written to /proc/PID/{uid,gid}_map: one "container host size" line per mapping.
pub(crate) fn map_text(maps: &[IdMap]) -> String {
    maps.iter().map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size)).collect()
}

/// Shim side, step 2: maps the ids of container process `pid` (in a new user namespace),
/// applies what it can no longer apply itself, then lets it go on. An error names the field.
pub(crate) fn set_up_from_parent(pid: i32, plan: &Plan, sync: BorrowedFd<'_>) -> Result<(), SetupError> {
    // uid_map and gid_map take one write(2) each, all lines at once. A joined namespace has
    // its maps already.
    let maps = if plan.new_userns() { [("uid_map", "linux.uidMappings", &plan.uid_mappings), ("gid_map", "linux.gidMappings", &plan.gid_mappings)].to_vec() } else { Vec::new() };
    for (file, field, maps) in maps {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, map_text(maps)).ctx(Step::UserNamespace, format!("{field}: write {path}"))?;
    }
    // Raising a hard limit takes CAP_SYS_RESOURCE in the initial user namespace, which the
    // container process lost with CLONE_NEWUSER: set them from here (the child sets the same
    // values again, which needs nothing).
    for &(res, soft, hard) in &plan.rlimits {
        let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
        // SAFETY: prlimit reads the struct we pass and writes nothing (old limit pointer null).
        if unsafe { libc::prlimit(pid, res as _, &lim, std::ptr::null_mut()) } != 0 {
            return Err(SetupError::new(Step::Rlimits, format!("resource {res} of pid {pid}: {}", std::io::Error::last_os_error())));
        }
    }
    // Lowering oom_score_adj takes the same capability; written by a privileged process it
    // also becomes the floor the child may write again.
    if let Some(adj) = plan.oom_score_adj {
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string()).ctx(Step::Session, "process.oomScoreAdj")?;
    }
    // If the child already failed it is gone and this send fails; its report is still queued
    // on the socket for the caller to read.
    let _ = send(sync, &ParentMsg::IdsMapped, &[]);
    log::debug!(pid, uid_map = map_text(&plan.uid_mappings).trim(), gid_map = map_text(&plan.gid_mappings).trim(); "user namespace mapped");
    Ok(())
}

/// Child side, step 1: waits until the shim mapped our ids. First thing after clone.
pub(crate) fn wait_for_parent(plan: &Plan, sync: &std::os::fd::OwnedFd) -> Result<(), SetupError> {
    if !plan.in_userns() {
        return Ok(());
    }
    wait_for(sync.as_fd(), ParentMsg::IdsMapped, Step::UserNamespace, "the id mappings", "mapping our ids").map(drop)
}

/// Child side, step 3: from host root (unmapped here, yet holding every capability in the
/// namespace) to the namespace's root. Capabilities stay: a change to uid 0 keeps them.
pub(crate) fn become_root(plan: &Plan) -> Result<(), SetupError> {
    if !plan.in_userns() {
        return Ok(());
    }
    // Host root's supplementary groups are unmapped here; drop them before the gid change.
    nix::unistd::setgroups(&[]).ctx(Step::UserNamespace, "setgroups []")?;
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).ctx(Step::UserNamespace, "setresgid 0")?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).ctx(Step::UserNamespace, "setresuid 0")?;
    Ok(())
}

/// For the fork server: like a fork-style clone(2) with `flags` (which include CLONE_PARENT),
/// but the new process starts inside the user namespace at `path`, and the namespaces
/// `flags` asks for are made by the kernel as that namespace's. Returns 0 in the new process,
/// its pid in the caller, or -1 with errno set.
///
/// An intermediate, cloned with CLONE_PARENT (so the shim reaps it, as it ignores exits of
/// pids that are not containers), enters the namespace, clones the container process (again
/// CLONE_PARENT: a child of the shim), writes its pid down a pipe and exits.
pub(crate) fn clone_in_userns(path: &std::path::Path, flags: libc::c_int) -> libc::c_long {
    let (r, w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            nix::errno::Errno::set(e);
            return -1;
        }
    };
    // SAFETY: a fork-style raw clone (no CLONE_VM, no new stack) of the single-threaded fork
    // server: the child runs on a copy of its memory and returns 0 here.
    let mid = unsafe { libc::syscall(libc::SYS_clone, (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    if mid < 0 {
        return -1;
    }
    if mid == 0 {
        drop(r);
        let pid: i64 = match std::fs::File::open(path).and_then(|f| nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWUSER).map_err(Into::into)) {
            Err(e) => -(e.raw_os_error().unwrap_or(libc::EPERM) as i64),
            // SAFETY: as above, from this (single-threaded) intermediate.
            Ok(()) => match unsafe { libc::syscall(libc::SYS_clone, flags as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) } {
                0 => {
                    // The container process: the pipe is not for it.
                    drop(w);
                    return 0;
                }
                p if p < 0 => -(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EPERM) as i64),
                p => p,
            },
        };
        let _ = nix::unistd::write(&w, &pid.to_ne_bytes());
        // SAFETY: _exit skips the fork server's destructors and atexit handlers.
        unsafe { libc::_exit(0) }
    }
    drop(w);
    let mut buf = [0u8; 8];
    match nix::unistd::read(&r, &mut buf) {
        Ok(8) => match i64::from_ne_bytes(buf) {
            p if p > 0 => p,
            e => {
                nix::errno::Errno::set_raw((-e) as i32);
                -1
            }
        },
        // The intermediate died without a word.
        _ => {
            nix::errno::Errno::set(nix::errno::Errno::ECHILD);
            -1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps(json: serde_json::Value) -> Vec<LinuxIdMapping> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn good_mappings_convert_and_render() {
        let m = check_mappings("linux.uidMappings", &maps(serde_json::json!([
            {"containerID": 0, "hostID": 100000, "size": 65536},
            {"containerID": 65536, "hostID": 1000, "size": 1}
        ])))
        .unwrap();
        assert_eq!(map_text(&m), "0 100000 65536\n65536 1000 1\n");
        assert!(maps_id(&m, 0) && maps_id(&m, 65535) && maps_id(&m, 65536));
        assert!(!maps_id(&m, 65537));
    }

    #[test]
    fn bad_mappings_name_the_entry() {
        for (json, field, why) in [
            (serde_json::json!([{"containerID": 0, "hostID": 1, "size": 0}]), "linux.uidMappings[0].size", "at least 1"),
            (
                serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 10}, {"containerID": 5, "hostID": 200000, "size": 10}]),
                "linux.uidMappings[1]",
                "containerID range overlaps linux.uidMappings[0]",
            ),
            (
                serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 10}, {"containerID": 10, "hostID": 100009, "size": 1}]),
                "linux.uidMappings[1]",
                "hostID range overlaps linux.uidMappings[0]",
            ),
            (serde_json::json!([{"containerID": 4294967295u32, "hostID": 1, "size": 2}]), "linux.uidMappings[0]", "past 2^32-1"),
        ] {
            let e = check_mappings("linux.uidMappings", &maps(json)).unwrap_err().to_string();
            assert!(e.starts_with(field) && e.contains(why), "expected {field} … {why}, got {e}");
        }
        let many: Vec<serde_json::Value> = (0..341).map(|i| serde_json::json!({"containerID": i, "hostID": 100000 + i, "size": 1})).collect();
        let e = check_mappings("linux.gidMappings", &maps(serde_json::Value::Array(many))).unwrap_err().to_string();
        assert!(e.starts_with("linux.gidMappings") && e.contains("at most 340"), "{e}");
    }
}
