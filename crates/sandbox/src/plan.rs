//! The validated subset of an OCI runtime spec that the sandbox honours.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};
use serde::{Deserialize, Serialize};
use wshim_oci::{Bundle, Entrypoint};

/// A spec field we cannot honour, or a bad value. Always names the field.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{field}: not supported by this runtime yet ({why})")]
    Unsupported { field: String, why: &'static str },
    #[error("{field}: invalid value {value:?}: {why}")]
    Invalid { field: String, value: String, why: String },
    #[error(transparent)]
    Devices(#[from] crate::devices_bpf::DeviceFilterError),
}

fn unsupported(field: impl Into<String>, why: &'static str) -> PlanError {
    PlanError::Unsupported { field: field.into(), why }
}

fn invalid(field: impl Into<String>, value: impl Into<String>, why: impl Into<String>) -> PlanError {
    PlanError::Invalid { field: field.into(), value: value.into(), why: why.into() }
}

/// Paths of the FIFOs (or files) containerd gave for the process's stdio; `None` is /dev/null.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stdio {
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountPlan {
    pub destination: PathBuf,
    pub fstype: String,
    pub source: Option<PathBuf>,
    pub flags: u64,
    pub propagation: u64,
    pub data: String,
    pub bind: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicePlan {
    pub path: PathBuf,
    /// `c`, `b`, `u` or `p`.
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CapPlan {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub rootfs: PathBuf,
    pub readonly_root: bool,
    pub entry: Entrypoint,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    /// Namespaces created by clone(2) itself (user, pid, mount, ipc, uts, net).
    pub clone_flags: i32,
    /// `linux.uidMappings` / `linux.gidMappings`, written by the shim for a new user namespace.
    pub uid_mappings: Vec<crate::userns::IdMap>,
    pub gid_mappings: Vec<crate::userns::IdMap>,
    /// A new cgroup namespace, made after the process joined its cgroup.
    pub new_cgroup_ns: bool,
    /// Namespaces joined by path, as (CLONE_NEW* flag, path).
    pub join_ns: Vec<(i32, PathBuf)>,
    pub mounts: Vec<MountPlan>,
    pub devices: Vec<DevicePlan>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub rootfs_propagation: u64,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub sysctl: Vec<(String, String)>,
    /// (resource, soft, hard)
    pub rlimits: Vec<(u32, u64, u64)>,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub caps: Option<CapPlan>,
    pub no_new_privs: bool,
    /// `linux.seccomp`, compiled to BPF by the shim.
    pub seccomp_bpf: Option<Vec<u8>>,
    pub oom_score_adj: Option<i32>,
    pub cgroups_path: String,
    pub resources: Option<LinuxResources>,
    pub stdio: Stdio,
    /// Filled in by the parent once the cgroup exists: files the child writes "0" into to join
    /// it ([`crate::Cgroup::join_files`]).
    pub cgroup_procs: Vec<PathBuf>,
    /// Set by the parent: some of those files are still being made when the child starts;
    /// it waits for `CgroupReady` before joining.
    pub cgroup_pending: bool,
    /// Set by the fork server: the one of those files whose cgroup the process was cloned
    /// into (CLONE_INTO_CGROUP), not to be written.
    pub cgroup_placed: Option<PathBuf>,
    /// Filled in by the parent: (controller dir name, host dir) bound under a `cgroup` mount.
    pub cgroup_mount_sources: Vec<(String, PathBuf)>,
    /// An extra process in a running container: it joins every namespace by path and does
    /// no root filesystem, hostname or sysctl setup.
    pub exec: bool,
    /// `process.terminal`: stdio is a new pty whose master goes to the shim.
    pub terminal: bool,
    /// A host file the payload needs besides the process (e.g. a compiled form of it). The
    /// child opens it before pivot_root hides host paths, and hands it to `Payload::prepare`.
    #[serde(default)]
    pub payload_file: Option<PathBuf>,
}

/// The default devices every container gets (OCI runtime spec, "Default Devices").
const DEFAULT_DEVICES: [(&str, i64, i64); 6] =
    [("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7), ("/dev/random", 1, 8), ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0)];

impl Plan {
    /// Validates `bundle` into a plan. `id` names the container; `default_cgroup_parent` is
    /// where its cgroup goes when the spec has no `linux.cgroupsPath`.
    pub fn from_bundle(id: &str, bundle: &Bundle, entry: Entrypoint, stdio: Stdio) -> Result<Plan, PlanError> {
        let spec: &Spec = &bundle.spec;
        let process = spec.process().as_ref().expect("Bundle::load checked process");
        check_process(process)?;
        if spec.hooks().is_some() {
            return Err(unsupported("hooks", "OCI hooks are not run by this runtime"));
        }
        let linux = spec.linux().clone().unwrap_or_default();
        let seccomp_bpf = linux.seccomp().as_ref().map(crate::seccomp::compile).transpose()?;
        if linux.intel_rdt().is_some() {
            return Err(unsupported("linux.intelRdt", "not implemented"));
        }
        if linux.personality().is_some() {
            return Err(unsupported("linux.personality", "not implemented"));
        }
        if linux.mount_label().as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(unsupported("linux.mountLabel", "SELinux is not available"));
        }

        let mut clone_flags = CloneFlags::empty();
        let mut new_cgroup_ns = false;
        let mut join_ns = Vec::new();
        for (i, ns) in linux.namespaces().clone().unwrap_or_default().iter().enumerate() {
            let flag = match ns.typ() {
                LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
                LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
                LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
                LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
                LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
                LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
                LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
                LinuxNamespaceType::Time => return Err(unsupported(format!("linux.namespaces[{i}] (time)"), "not implemented")),
            };
            match ns.path() {
                Some(p) if !p.as_os_str().is_empty() => {
                    if !p.exists() {
                        return Err(invalid(format!("linux.namespaces[{i}].path"), p.display().to_string(), "no such file"));
                    }
                    join_ns.push((flag.bits(), p.clone()));
                }
                _ if flag == CloneFlags::CLONE_NEWCGROUP => new_cgroup_ns = true,
                _ => clone_flags |= flag,
            }
        }
        let (uid_mappings, gid_mappings) = check_user_namespace(&linux, process.user(), clone_flags, &join_ns)?;
        if !clone_flags.contains(CloneFlags::CLONE_NEWNS) && !join_ns.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWNS.bits()) {
            return Err(unsupported("linux.namespaces", "a container without a mount namespace would pivot_root the shim's own"));
        }

        let mut mounts = Vec::new();
        for (i, m) in spec.mounts().clone().unwrap_or_default().iter().enumerate() {
            let field = format!("mounts[{i}]");
            if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
                return Err(unsupported(format!("{field}.uidMappings"), "idmapped mounts are not implemented"));
            }
            if !m.destination().is_absolute() {
                return Err(invalid(format!("{field}.destination"), m.destination().display().to_string(), "must be absolute"));
            }
            let (flags, propagation, data, bind) = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
            let fstype = m.typ().clone().unwrap_or_else(|| if bind { "bind".into() } else { "none".into() });
            mounts.push(MountPlan {
                destination: m.destination().clone(),
                fstype,
                source: m.source().clone(),
                flags: flags.bits(),
                propagation: propagation.bits(),
                data,
                bind,
            });
        }

        let mut devices: Vec<DevicePlan> = DEFAULT_DEVICES
            .iter()
            .map(|(p, maj, min)| DevicePlan { path: p.into(), kind: 'c', major: *maj, minor: *min, mode: 0o666, uid: 0, gid: 0 })
            .collect();
        for (i, d) in linux.devices().clone().unwrap_or_default().iter().enumerate() {
            let kind = match d.typ() {
                oci_spec::runtime::LinuxDeviceType::C => 'c',
                oci_spec::runtime::LinuxDeviceType::B => 'b',
                oci_spec::runtime::LinuxDeviceType::U => 'u',
                oci_spec::runtime::LinuxDeviceType::P => 'p',
                oci_spec::runtime::LinuxDeviceType::A => {
                    return Err(invalid(format!("linux.devices[{i}].type"), "a", "a device node has a type c, b, u or p"))
                }
            };
            if !d.path().starts_with("/dev") {
                return Err(invalid(format!("linux.devices[{i}].path"), d.path().display().to_string(), "must be under /dev"));
            }
            devices.retain(|x| x.path != *d.path());
            devices.push(DevicePlan {
                path: d.path().clone(),
                kind,
                major: d.major(),
                minor: d.minor(),
                mode: d.file_mode().unwrap_or(0o666),
                uid: d.uid().unwrap_or(0),
                gid: d.gid().unwrap_or(0),
            });
        }

        let rootfs_propagation = match linux.rootfs_propagation().as_deref() {
            None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
            Some(p) => match propagation_flag(p) {
                Some(f) => f,
                None => return Err(invalid("linux.rootfsPropagation", p, "expected shared, slave, private or unbindable (r-)")),
            },
        };

        let rlimits = rlimits(process)?;
        let caps = caps(process);

        let mut sysctl: Vec<(String, String)> = linux.sysctl().clone().unwrap_or_default().into_iter().collect();
        sysctl.sort();
        for (k, _) in &sysctl {
            if k.contains('/') || k.contains("..") {
                return Err(invalid(format!("linux.sysctl.{k}"), k.clone(), "not a sysctl name"));
            }
            if let Some(why) = sysctl_not_namespaced(k, clone_flags, &join_ns) {
                return Err(invalid(format!("linux.sysctl.{k}"), k.clone(), why));
            }
        }

        let cgroups_path = cgroups_path(spec, id)?;
        if let Some(res) = linux.resources() {
            check_resources(res)?;
        }

        Ok(Plan {
            id: id.to_string(),
            rootfs: bundle.rootfs.clone(),
            readonly_root: spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false),
            entry,
            args: process.args().clone().unwrap_or_default(),
            env: process.env().clone().unwrap_or_default(),
            cwd: process.cwd().clone(),
            clone_flags: clone_flags.bits(),
            uid_mappings,
            gid_mappings,
            new_cgroup_ns,
            join_ns,
            mounts,
            devices,
            masked_paths: linux.masked_paths().clone().unwrap_or_default().into_iter().map(PathBuf::from).collect(),
            readonly_paths: linux.readonly_paths().clone().unwrap_or_default().into_iter().map(PathBuf::from).collect(),
            rootfs_propagation: rootfs_propagation.bits(),
            hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
            domainname: spec.domainname().clone().filter(|h| !h.is_empty()),
            sysctl,
            rlimits,
            uid: process.user().uid(),
            gid: process.user().gid(),
            additional_gids: process.user().additional_gids().clone().unwrap_or_default(),
            umask: process.user().umask(),
            caps,
            no_new_privs: process.no_new_privileges().unwrap_or(false),
            seccomp_bpf,
            oom_score_adj: process.oom_score_adj(),
            cgroups_path,
            resources: linux.resources().clone(),
            stdio,
            cgroup_procs: Vec::new(),
            cgroup_pending: false,
            cgroup_placed: None,
            cgroup_mount_sources: Vec::new(),
            payload_file: None,
            exec: false,
            terminal: process.terminal().unwrap_or(false),
        })
    }

    /// The plan of an extra process (an exec) in this plan's running container, whose first
    /// process is `init_pid`: the container's namespaces (all joined through /proc/PID/ns),
    /// cgroup and seccomp filter, with `process`'s args, env, cwd, user, capabilities and
    /// rlimits. `entry` is what `process.args[0]` names in the container.
    pub fn for_exec(&self, process: &Process, init_pid: i32, entry: Entrypoint) -> Result<Plan, PlanError> {
        check_process(process)?;
        let ns = |name: &str| PathBuf::from(format!("/proc/{init_pid}/ns/{name}"));
        // In a container with a user namespace the process enters it too: the child itself,
        // after joining the others as host root (child.rs).
        let userns = self.in_userns().then_some((CloneFlags::CLONE_NEWUSER, "user"));
        let mut join_ns: Vec<(i32, PathBuf)> = userns
            .into_iter()
            .chain([
            (CloneFlags::CLONE_NEWIPC, "ipc"),
            (CloneFlags::CLONE_NEWUTS, "uts"),
            (CloneFlags::CLONE_NEWNET, "net"),
            (CloneFlags::CLONE_NEWPID, "pid"),
            (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
        ])
        .map(|(f, n)| (f.bits(), ns(n)))
        .collect();
        // The mount namespace last: after it, /proc/PID/ns of the host is out of sight.
        join_ns.push((CloneFlags::CLONE_NEWNS.bits(), ns("mnt")));
        Ok(Plan {
            // Where the container's root is, seen from the host: the exec process enters it
            // after the mount namespace (whose own root need not be the container's).
            rootfs: PathBuf::from(format!("/proc/{init_pid}/root")),
            entry,
            args: process.args().clone().unwrap_or_default(),
            env: process.env().clone().unwrap_or_default(),
            cwd: process.cwd().clone(),
            clone_flags: 0,
            new_cgroup_ns: false,
            join_ns,
            rlimits: rlimits(process)?,
            uid: process.user().uid(),
            gid: process.user().gid(),
            additional_gids: process.user().additional_gids().clone().unwrap_or_default(),
            umask: process.user().umask(),
            caps: caps(process),
            no_new_privs: process.no_new_privileges().unwrap_or(false),
            oom_score_adj: process.oom_score_adj().or(self.oom_score_adj),
            cgroup_procs: Vec::new(),
            cgroup_pending: false,
            cgroup_placed: None,
            // The container's compiled module is not this process's.
            payload_file: None,
            exec: true,
            terminal: process.terminal().unwrap_or(false),
            ..self.clone()
        })
    }

    pub fn is_native(&self) -> bool {
        matches!(self.entry, Entrypoint::Native { .. })
    }

    pub(crate) fn clone_flags(&self) -> CloneFlags {
        CloneFlags::from_bits_truncate(self.clone_flags)
    }

    /// The process gets a new user namespace (whose ids the shim maps).
    pub fn new_userns(&self) -> bool {
        self.clone_flags().contains(CloneFlags::CLONE_NEWUSER)
    }

    /// The user namespace joined by path (a pod's, or the container's for an exec), if any.
    pub fn join_userns(&self) -> Option<&Path> {
        self.join_ns.iter().find(|(f, _)| *f == libc::CLONE_NEWUSER).map(|(_, p)| p.as_path())
    }

    /// The user namespace the fork server must clone the process in: one joined by path
    /// for a new container, whose new namespaces must belong to it. An exec process makes
    /// no namespace and enters the container's user namespace itself.
    pub(crate) fn clone_in_userns(&self) -> Option<&Path> {
        if self.exec {
            None
        } else {
            self.join_userns()
        }
    }

    /// The process runs in a user namespace other than the shim's, new or joined.
    pub fn in_userns(&self) -> bool {
        self.new_userns() || self.join_userns().is_some()
    }
}

/// `process.user` must be mapped by the mappings given (none given: nothing to check).
fn check_user_mapped(user: &oci_spec::runtime::User, uids: &[crate::userns::IdMap], gids: &[crate::userns::IdMap]) -> Result<(), PlanError> {
    use crate::userns::maps_id;
    if !uids.is_empty() && !maps_id(uids, user.uid()) {
        return Err(invalid("process.user.uid", user.uid().to_string(), "not mapped by linux.uidMappings"));
    }
    if gids.is_empty() {
        return Ok(());
    }
    if !maps_id(gids, user.gid()) {
        return Err(invalid("process.user.gid", user.gid().to_string(), "not mapped by linux.gidMappings"));
    }
    for (i, g) in user.additional_gids().as_deref().unwrap_or_default().iter().enumerate() {
        if !maps_id(gids, *g) {
            return Err(invalid(format!("process.user.additionalGids[{i}]"), g.to_string(), "not mapped by linux.gidMappings"));
        }
    }
    Ok(())
}

/// `linux.uidMappings` / `linux.gidMappings` against `linux.namespaces` and `process.user`.
fn check_user_namespace(
    linux: &oci_spec::runtime::Linux,
    user: &oci_spec::runtime::User,
    clone_flags: CloneFlags,
    join_ns: &[(i32, PathBuf)],
) -> Result<(Vec<crate::userns::IdMap>, Vec<crate::userns::IdMap>), PlanError> {
    use crate::userns::{check_mappings, maps_id};
    let uids = check_mappings("linux.uidMappings", linux.uid_mappings().as_deref().unwrap_or_default())?;
    let gids = check_mappings("linux.gidMappings", linux.gid_mappings().as_deref().unwrap_or_default())?;
    let joined = join_ns.iter().any(|(f, _)| *f == libc::CLONE_NEWUSER);
    if !clone_flags.contains(CloneFlags::CLONE_NEWUSER) && !joined {
        for (field, maps) in [("linux.uidMappings", &uids), ("linux.gidMappings", &gids)] {
            if !maps.is_empty() {
                return Err(invalid(field, crate::userns::map_text(maps).trim(), "mappings without a user namespace in linux.namespaces"));
            }
        }
        return Ok((uids, gids));
    }
    if joined {
        // The joined namespace has its maps already; mappings given along (as CRI does) only
        // describe them, and can be checked against process.user.
        let namespaces = linux.namespaces().clone().unwrap_or_default();
        for (i, ns) in namespaces.iter().enumerate() {
            if ns.typ() == LinuxNamespaceType::Pid && ns.path().as_ref().is_some_and(|p| !p.as_os_str().is_empty()) {
                return Err(unsupported(
                    format!("linux.namespaces[{i}].path"),
                    "joining a pid namespace by path together with a user namespace joined by path is not implemented",
                ));
            }
        }
        check_user_mapped(user, &uids, &gids)?;
        return Ok((uids, gids));
    }
    // The namespace's root sets the container up (as with runc, which needs it mapped too).
    for (field, maps) in [("linux.uidMappings", &uids), ("linux.gidMappings", &gids)] {
        if maps.is_empty() {
            return Err(invalid(field, "[]", "a new user namespace needs mappings"));
        }
        if !maps_id(maps, 0) {
            return Err(invalid(field, crate::userns::map_text(maps).trim(), "the container's root (0) is not mapped"));
        }
    }
    check_user_mapped(user, &uids, &gids)?;
    // Namespaces joined by path belong to another user namespace; ours would hold no
    // capability over them (runc joins them before unsharing the user namespace).
    if !join_ns.is_empty() {
        for (i, ns) in linux.namespaces().as_deref().unwrap_or_default().iter().enumerate() {
            if ns.path().as_ref().is_some_and(|p| !p.as_os_str().is_empty()) {
                return Err(unsupported(
                    format!("linux.namespaces[{i}].path"),
                    "joining a namespace by path together with a new user namespace is not implemented",
                ));
            }
        }
    }
    Ok((uids, gids))
}

/// Process fields no process of ours can honour.
fn check_process(process: &Process) -> Result<(), PlanError> {
    if process.apparmor_profile().as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(unsupported("process.apparmorProfile", "AppArmor is not available"));
    }
    if process.selinux_label().as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(unsupported("process.selinuxLabel", "SELinux is not available"));
    }
    if process.io_priority().is_some() {
        return Err(unsupported("process.ioPriority", "not implemented"));
    }
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args", "[]", "names no program"));
    }
    Ok(())
}

fn rlimits(process: &Process) -> Result<Vec<(u32, u64, u64)>, PlanError> {
    let mut rlimits = Vec::new();
    for (i, r) in process.rlimits().clone().unwrap_or_default().iter().enumerate() {
        let res = rlimit_resource(&format!("{:?}", r.typ()))
            .ok_or_else(|| invalid(format!("process.rlimits[{i}].type"), format!("{:?}", r.typ()), "unknown resource"))?;
        if r.soft() > r.hard() {
            return Err(invalid(format!("process.rlimits[{i}]"), format!("soft {} hard {}", r.soft(), r.hard()), "soft exceeds hard"));
        }
        rlimits.push((res, r.soft(), r.hard()));
    }
    Ok(rlimits)
}

fn caps(process: &Process) -> Option<CapPlan> {
    process.capabilities().as_ref().map(|c| {
        let names = |s: &Option<oci_spec::runtime::Capabilities>| -> Vec<String> {
            s.as_ref().map(|set| set.iter().map(|c| format!("CAP_{}", c.to_string().trim_start_matches("CAP_"))).collect()).unwrap_or_default()
        };
        CapPlan {
            bounding: names(c.bounding()),
            effective: names(c.effective()),
            permitted: names(c.permitted()),
            inheritable: names(c.inheritable()),
            ambient: names(c.ambient()),
        }
    })
}

/// The container's cgroup path: `linux.cgroupsPath`, or `/wasmedge-shim/ID` when unset.
pub fn cgroups_path(spec: &Spec, id: &str) -> Result<String, PlanError> {
    let path = match spec.linux().as_ref().and_then(|l| l.cgroups_path().as_ref()).map(|p| p.display().to_string()) {
        Some(p) if p.contains(':') => {
            return Err(unsupported("linux.cgroupsPath", "the systemd cgroup driver (slice:prefix:name) is not supported; use cgroupfs"))
        }
        Some(p) if !p.is_empty() => p,
        _ => format!("/wasmedge-shim/{id}"),
    };
    if path.split('/').any(|c| c == "..") {
        return Err(invalid("linux.cgroupsPath", path, "must not contain .."));
    }
    Ok(path)
}

/// Refuses resource fields this runtime cannot apply (at Create, and at Update).
pub fn check_resources(res: &LinuxResources) -> Result<(), PlanError> {
    if res.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(unsupported("linux.resources.hugepageLimits", "not implemented"));
    }
    if res.network().is_some() {
        return Err(unsupported("linux.resources.network", "not implemented"));
    }
    if res.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(unsupported("linux.resources.rdma", "not implemented"));
    }
    if let Some(b) = res.block_io() {
        let empty = b.weight().is_none()
            && b.leaf_weight().is_none()
            && b.weight_device().as_ref().is_none_or(|v| v.is_empty())
            && b.throttle_read_bps_device().as_ref().is_none_or(|v| v.is_empty())
            && b.throttle_write_bps_device().as_ref().is_none_or(|v| v.is_empty())
            && b.throttle_read_iops_device().as_ref().is_none_or(|v| v.is_empty())
            && b.throttle_write_iops_device().as_ref().is_none_or(|v| v.is_empty());
        if !empty {
            return Err(unsupported("linux.resources.blockIO", "not implemented"));
        }
    }
    if let Some(d) = res.devices() {
        crate::devices_bpf::rules(d)?;
    }
    if let Some(m) = res.memory() {
        if m.kernel().is_some() || m.kernel_tcp().is_some() {
            return Err(unsupported("linux.resources.memory.kernel", "kernel memory limits are deprecated and not implemented"));
        }
        if let Some(l) = m.limit() {
            if l < -1 || l == 0 {
                return Err(invalid("linux.resources.memory.limit", l.to_string(), "must be positive or -1"));
            }
        }
    }
    if let Some(c) = res.cpu() {
        if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
            return Err(unsupported("linux.resources.cpu.realtimeRuntime", "not implemented"));
        }
        if c.idle().is_some() {
            return Err(unsupported("linux.resources.cpu.idle", "not implemented"));
        }
    }
    if res.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(unsupported("linux.resources.unified", "not implemented"));
    }
    Ok(())
}

/// Why writing sysctl `k` would reach beyond the container (runc's rule): only the ipc,
/// network and uts namespaces' own knobs, each with that namespace, are allowed.
fn sysctl_not_namespaced(k: &str, clone_flags: CloneFlags, join_ns: &[(i32, PathBuf)]) -> Option<&'static str> {
    let has = |f: CloneFlags| clone_flags.contains(f) || join_ns.iter().any(|(j, _)| *j == f.bits());
    const IPC: [&str; 8] =
        ["kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"];
    if IPC.contains(&k) || k.starts_with("fs.mqueue.") {
        return (!has(CloneFlags::CLONE_NEWIPC)).then_some("an ipc sysctl needs an ipc namespace (linux.namespaces)");
    }
    if k.starts_with("net.") {
        return (!has(CloneFlags::CLONE_NEWNET)).then_some("a net sysctl needs a network namespace (linux.namespaces)");
    }
    match k {
        "kernel.domainname" if has(CloneFlags::CLONE_NEWUTS) => None,
        "kernel.hostname" => Some("set the spec's hostname instead"),
        _ => Some("not in a namespace of the container's own: writing it would change the host"),
    }
}

fn propagation_flag(p: &str) -> Option<MsFlags> {
    Some(match p {
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Splits mount options into mount(2) flags, propagation flags, filesystem data and
/// whether the mount is a bind mount.
pub(crate) fn parse_mount_options(options: &[String]) -> (MsFlags, MsFlags, String, bool) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    let mut bind = false;
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => {
                bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            other => {
                if let Some(p) = propagation_flag(other) {
                    propagation |= p;
                } else {
                    data.push(other.to_string());
                }
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, propagation, data.join(","), bind)
}

fn rlimit_resource(name: &str) -> Option<u32> {
    // oci-spec's Debug form is e.g. `RlimitNofile`.
    let n = name.to_ascii_uppercase();
    let n = n.trim_start_matches("RLIMIT_").trim_start_matches("RLIMIT");
    Some(match n {
        "AS" => libc::RLIMIT_AS,
        "CORE" => libc::RLIMIT_CORE,
        "CPU" => libc::RLIMIT_CPU,
        "DATA" => libc::RLIMIT_DATA,
        "FSIZE" => libc::RLIMIT_FSIZE,
        "LOCKS" => libc::RLIMIT_LOCKS,
        "MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "NICE" => libc::RLIMIT_NICE,
        "NOFILE" => libc::RLIMIT_NOFILE,
        "NPROC" => libc::RLIMIT_NPROC,
        "RSS" => libc::RLIMIT_RSS,
        "RTPRIO" => libc::RLIMIT_RTPRIO,
        "RTTIME" => libc::RLIMIT_RTTIME,
        "SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "STACK" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

/// Joins a container path onto the root, so that `/a/b` becomes `ROOT/a/b`.
pub(crate) fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(extra: serde_json::Value) -> (tempfile::TempDir, Bundle) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("rootfs")).unwrap();
        let mut cfg = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["/m.wasm"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]}
        });
        merge(&mut cfg, extra);
        std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
        let b = Bundle::load(d.path()).unwrap();
        (d, b)
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn plan(extra: serde_json::Value) -> Result<Plan, PlanError> {
        let (_d, b) = bundle(extra);
        Plan::from_bundle("c1", &b, Entrypoint::Wasm { module: "/m.wasm".into(), func: "_start".into() }, Stdio::default())
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let p = plan(serde_json::json!({})).unwrap();
        assert_eq!(p.cgroups_path, "/wasmedge-shim/c1");
        assert!(p.clone_flags().contains(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS));
        assert_eq!(p.devices.len(), DEFAULT_DEVICES.len());
        assert_eq!(p.rootfs_propagation, (MsFlags::MS_SLAVE | MsFlags::MS_REC).bits());
    }

    #[test]
    fn unsupported_fields_are_named() {
        for (extra, field) in [
            (serde_json::json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x"}}}), "linux.seccomp.listenerPath"),
            (serde_json::json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "time"}]}}), "linux.namespaces[1] (time)"),
            (
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "user", "path": "/proc/self/ns/user"}, {"type": "pid", "path": "/proc/self/ns/pid"}]}}),
                "linux.namespaces[2].path",
            ),
            (
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "user"}, {"type": "network", "path": "/proc/self/ns/net"}],
                    "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}], "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}}),
                "linux.namespaces[2].path",
            ),
            (serde_json::json!({"linux": {"cgroupsPath": "system.slice:wshim:c1"}}), "linux.cgroupsPath"),
            (serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}}), "linux.namespaces"),
            (serde_json::json!({"hooks": {"prestart": [{"path": "/bin/true"}]}}), "hooks"),
            (serde_json::json!({"linux": {"resources": {"memory": {"limit": 0}}}}), "linux.resources.memory.limit"),
            (serde_json::json!({"linux": {"rootfsPropagation": "sideways"}}), "linux.rootfsPropagation"),
            (serde_json::json!({"linux": {"sysctl": {"vm.swappiness": "10"}}}), "linux.sysctl.vm.swappiness"),
            (serde_json::json!({"linux": {"sysctl": {"net.ipv4.ip_forward": "1"}}}), "linux.sysctl.net.ipv4.ip_forward"),
            (serde_json::json!({"linux": {"sysctl": {"kernel.shmmax": "1"}}}), "linux.sysctl.kernel.shmmax"),
            (serde_json::json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "network", "path": "/nonexistent/ns"}]}}), "linux.namespaces[1].path"),
        ] {
            let e = plan(extra).unwrap_err().to_string();
            assert!(e.starts_with(field), "expected {field}, got {e}");
        }
    }

    fn userns(extra: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::json!({"linux": {
            "namespaces": [{"type": "user"}, {"type": "mount"}, {"type": "pid"}],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]
        }});
        merge(&mut v, extra);
        v
    }

    #[test]
    fn a_user_namespace_with_mappings_is_planned() {
        let p = plan(userns(serde_json::json!({}))).unwrap();
        assert!(p.new_userns());
        assert!(p.clone_flags().contains(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID));
        assert_eq!(p.uid_mappings, vec![crate::userns::IdMap { container_id: 0, host_id: 100000, size: 65536 }]);
        assert_eq!(p.gid_mappings, p.uid_mappings);
        assert!(!plan(serde_json::json!({})).unwrap().new_userns());
    }

    #[test]
    fn a_user_namespace_joined_by_path_is_planned() {
        let p = plan(userns(serde_json::json!({"linux": {"namespaces": [{"type": "user", "path": "/proc/self/ns/user"}, {"type": "mount"}, {"type": "pid"}]}})))
            .unwrap();
        assert!(!p.new_userns() && p.in_userns());
        assert_eq!(p.join_userns(), Some(Path::new("/proc/self/ns/user")));
        assert!(!p.clone_flags().contains(CloneFlags::CLONE_NEWUSER));
        // Mappings given along only describe the joined namespace; they may be absent.
        let p = plan(serde_json::json!({"linux": {"namespaces": [{"type": "user", "path": "/proc/self/ns/user"}, {"type": "mount"}]}})).unwrap();
        assert!(p.in_userns() && p.uid_mappings.is_empty());
    }

    #[test]
    fn an_exec_into_a_user_namespace_enters_it_itself() {
        let p = plan(userns(serde_json::json!({}))).unwrap();
        let process: Process = serde_json::from_value(serde_json::json!({"args": ["/probe"], "cwd": "/", "user": {"uid": 0, "gid": 0}})).unwrap();
        let e = p.for_exec(&process, 42, p.entry.clone()).unwrap();
        assert_eq!(e.join_userns(), Some(Path::new("/proc/42/ns/user")));
        assert!(e.in_userns() && !e.new_userns());
        // Not cloned inside it by the fork server: it makes no namespace of its own.
        assert_eq!(e.clone_in_userns(), None);
        assert_eq!(e.join_ns.last().map(|(f, _)| *f), Some(libc::CLONE_NEWNS));
        // A container of a pod is cloned inside the pod's.
        let joined = plan(serde_json::json!({"linux": {"namespaces": [{"type": "user", "path": "/proc/self/ns/user"}, {"type": "mount"}]}})).unwrap();
        assert_eq!(joined.clone_in_userns(), Some(Path::new("/proc/self/ns/user")));
        // Without a user namespace, none is joined.
        let plain = plan(serde_json::json!({})).unwrap();
        assert_eq!(plain.for_exec(&process, 42, plain.entry.clone()).unwrap().join_userns(), None);
    }

    #[test]
    fn bad_user_namespace_settings_name_the_field() {
        let one = |c: u32, h: u32, s: u32| serde_json::json!([{"containerID": c, "hostID": h, "size": s}]);
        for (extra, field, why) in [
            (
                serde_json::json!({"linux": {"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}}),
                "linux.uidMappings",
                "without a user namespace",
            ),
            (userns(serde_json::json!({"linux": {"gidMappings": []}})), "linux.gidMappings", "needs mappings"),
            (userns(serde_json::json!({"linux": {"uidMappings": one(1, 100000, 10)}})), "linux.uidMappings", "root (0) is not mapped"),
            (
                userns(serde_json::json!({"linux": {"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 100}, {"containerID": 50, "hostID": 300000, "size": 10}]}})),
                "linux.uidMappings[1]",
                "containerID range overlaps linux.uidMappings[0]",
            ),
            (userns(serde_json::json!({"linux": {"gidMappings": one(0, 100000, 0)}})), "linux.gidMappings[0].size", "at least 1"),
            (userns(serde_json::json!({"process": {"user": {"uid": 70000, "gid": 0}}})), "process.user.uid", "not mapped"),
            (userns(serde_json::json!({"process": {"user": {"uid": 0, "gid": 70000}}})), "process.user.gid", "not mapped"),
            (
                userns(serde_json::json!({"process": {"user": {"uid": 0, "gid": 0, "additionalGids": [1, 99999]}}})),
                "process.user.additionalGids[1]",
                "not mapped",
            ),
        ] {
            let e = plan(extra).unwrap_err().to_string();
            assert!(e.starts_with(field) && e.contains(why), "expected {field} … {why}, got {e}");
        }
    }

    #[test]
    fn bad_device_rules_name_the_field() {
        let e = plan(serde_json::json!({"linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "access": "rx"}]}}}))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("linux.resources.devices[1].access"), "{e}");
    }

    #[test]
    fn namespaced_sysctls_pass() {
        let p = plan(serde_json::json!({"linux": {
            "namespaces": [{"type": "mount"}, {"type": "ipc"}, {"type": "network"}, {"type": "uts"}],
            "sysctl": {"kernel.shmmax": "1", "fs.mqueue.msg_max": "20", "net.core.somaxconn": "100", "kernel.domainname": "x"}
        }}))
        .unwrap();
        assert_eq!(p.sysctl.len(), 4);
    }

    #[test]
    fn mount_options_split() {
        let o: Vec<String> = ["nosuid", "strictatime", "mode=755", "size=65536k", "rbind", "rprivate", "ro"].iter().map(|s| s.to_string()).collect();
        let (flags, prop, data, bind) = parse_mount_options(&o);
        assert!(flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(prop, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(data, "mode=755,size=65536k");
        assert!(bind);
        let (flags, _, _, _) = parse_mount_options(&["ro".to_string(), "rw".to_string()]);
        assert!(!flags.contains(MsFlags::MS_RDONLY), "later options win");
    }

    #[test]
    fn rlimits_and_user_carry_over() {
        let p = plan(serde_json::json!({"process": {
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}],
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [5], "umask": 18}
        }}))
        .unwrap();
        assert_eq!(p.rlimits, vec![(libc::RLIMIT_NOFILE, 100, 200)]);
        assert_eq!((p.uid, p.gid, p.additional_gids.clone(), p.umask), (1000, 1000, vec![5], Some(18)));
        let e = plan(serde_json::json!({"process": {"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 300, "hard": 200}]}})).unwrap_err();
        assert!(e.to_string().contains("process.rlimits[0]"), "{e}");
    }
}
