//! Mounts: the rootfs mounts containerd hands to Create (done in the shim), and the
//! container's own mount table (done in the child, before and after pivot_root).

use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, umask, Mode, SFlag};
use nix::unistd::{chdir, chown, pivot_root, Gid, Uid};

use crate::error::{Ctx, SetupError, Step};
use crate::plan::{parse_mount_options, under, DevicePlan, MountPlan, Plan};

/// One of the mounts containerd passes in CreateTaskRequest.rootfs.
#[derive(Debug, Clone)]
pub struct RootfsMount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Mounts containerd's rootfs mounts, in order, on `target` (the bundle's `rootfs`).
pub fn mount_rootfs(mounts: &[RootfsMount], target: &Path) -> Result<(), std::io::Error> {
    for m in mounts {
        let (flags, _prop, data, _bind) = parse_mount_options(&m.options);
        let fstype = if m.fstype == "bind" || m.fstype == "rbind" { None } else { Some(m.fstype.as_str()) };
        let extra = if m.fstype == "bind" || m.fstype == "rbind" { MsFlags::MS_BIND } else { MsFlags::empty() };
        mount(Some(m.source.as_str()), target, fstype, flags | extra, (!data.is_empty()).then_some(data.as_str()))
            .map_err(|e| std::io::Error::other(format!("mount {} ({}) on {}: {e}", m.source, m.fstype, target.display())))?;
    }
    Ok(())
}

/// Detaches every mount stacked on `target`. Not mounted is fine.
pub fn unmount_rootfs(target: &Path) -> Result<(), std::io::Error> {
    for _ in 0..16 {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(std::io::Error::other(format!("unmount {}: {e}", target.display()))),
        }
    }
    Ok(())
}

/// Builds the container's filesystem view and pivots into it. Runs in the child, in its new
/// mount namespace, so nothing here is visible to the host.
pub(crate) fn setup_rootfs(plan: &Plan) -> Result<(), SetupError> {
    let rootfs = &plan.rootfs;
    // Stop our mounts from propagating back to the host before making any.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>).ctx(Step::Mounts, "make / rslave")?;
    // pivot_root needs the new root to be a mount point.
    mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .ctx(Step::Mounts, format!("bind {} onto itself", rootfs.display()))?;
    // Paths in the root are looked up from it. Opened after the bind: an fd from before
    // would be below it, and not see the mounts made on it next.
    let root = wshim_oci::RootDir::open(rootfs).ctx(Step::Mounts, format!("open {}", rootfs.display()))?;

    for (i, m) in plan.mounts.iter().enumerate() {
        mount_one(plan, &root, m).map_err(|e| SetupError::new(Step::Mounts, format!("mounts[{i}] ({}): {}", m.destination.display(), e.message)))?;
    }
    make_devices(plan, &root)?;
    drop(root);

    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the
    // container's tree. The old root is made rslave first so the detach stays here.
    chdir(rootfs).ctx(Step::PivotRoot, format!("chdir {}", rootfs.display()))?;
    pivot_root(".", ".").ctx(Step::PivotRoot, rootfs.display())?;
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>).ctx(Step::PivotRoot, "make old root rslave")?;
    umount2(".", MntFlags::MNT_DETACH).ctx(Step::PivotRoot, "detach old root")?;
    chdir("/").ctx(Step::PivotRoot, "chdir /")?;
    // The spec's propagation for the container's root (default rslave).
    let prop = MsFlags::from_bits_truncate(plan.rootfs_propagation);
    mount(None::<&str>, "/", None::<&str>, prop, None::<&str>).ctx(Step::PivotRoot, "set rootfsPropagation")?;

    if plan.readonly_root {
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY, None::<&str>)
            .ctx(Step::Mounts, "root.readonly")?;
    }
    Ok(())
}

/// `linux.readonlyPaths`, then `linux.maskedPaths` (runc's order). After the sysctls are
/// written: /proc/sys is usually among the read-only paths.
pub(crate) fn protect_paths(plan: &Plan) -> Result<(), SetupError> {
    for p in &plan.readonly_paths {
        readonly_path(p)?;
    }
    let mut empty_dir = None;
    for p in &plan.masked_paths {
        mask_path(p, &mut empty_dir)?;
    }
    Ok(())
}

fn mount_one(plan: &Plan, root: &wshim_oci::RootDir, m: &MountPlan) -> Result<(), SetupError> {
    let dest = root.resolve(&m.destination).ctx(Step::Mounts, "resolve destination")?;
    let flags = MsFlags::from_bits_truncate(m.flags);
    let data = (!m.data.is_empty()).then_some(m.data.as_str());

    if m.fstype == "cgroup" || m.fstype == "cgroup2" {
        return mount_cgroup(plan, m, &dest, flags);
    }
    if m.bind {
        let src = m.source.clone().ok_or_else(|| SetupError::new(Step::Mounts, "bind mount without source"))?;
        let md = std::fs::metadata(&src).ctx(Step::Mounts, format!("source {}", src.display()))?;
        ensure_target(&dest, md.is_dir())?;
        mount(Some(&src), &dest, None::<&str>, MsFlags::MS_BIND | (flags & MsFlags::MS_REC), None::<&str>)
            .ctx(Step::Mounts, format!("bind {}", src.display()))?;
        // A bind mount ignores most flags; they take effect on a remount.
        let remount = flags & !(MsFlags::MS_REC | MsFlags::MS_BIND);
        if !remount.is_empty() {
            remount_bind(&dest, remount).ctx(Step::Mounts, "remount bind with options")?;
        }
    } else {
        ensure_target(&dest, true)?;
        let src = m.source.clone().unwrap_or_else(|| PathBuf::from(&m.fstype));
        match mount(Some(&src), &dest, Some(m.fstype.as_str()), flags, data) {
            Ok(()) => {}
            // sysfs cannot be mounted without a network namespace of our own: bind the host's
            // read-only instead, as runc does.
            Err(nix::errno::Errno::EPERM) if m.fstype == "sysfs" => {
                mount(Some("/sys"), &dest, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).ctx(Step::Mounts, "bind /sys")?;
                mount(None::<&str>, &dest, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags, None::<&str>)
                    .ctx(Step::Mounts, "remount /sys read-only")?;
            }
            Err(e) => return Err(SetupError::new(Step::Mounts, format!("mount {} type {}: {e}", src.display(), m.fstype))),
        }
    }
    let prop = MsFlags::from_bits_truncate(m.propagation);
    if !prop.is_empty() {
        mount(None::<&str>, &dest, None::<&str>, prop, None::<&str>).ctx(Step::Mounts, "set propagation")?;
    }
    Ok(())
}

/// A `cgroup` mount shows the container only its own cgroup. On v1 that is a tmpfs holding
/// one bind mount per hierarchy of the container's own directories; on v2 a cgroup2 mount
/// (the container has its own cgroup namespace) or a bind of its directory.
fn mount_cgroup(plan: &Plan, m: &MountPlan, dest: &Path, flags: MsFlags) -> Result<(), SetupError> {
    ensure_target(dest, true)?;
    let ro = flags.contains(MsFlags::MS_RDONLY);
    let base = flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let sources = &plan.cgroup_mount_sources;
    if sources.len() == 1 && sources[0].0.is_empty() {
        if plan.new_cgroup_ns {
            mount(Some("cgroup2"), dest, Some("cgroup2"), flags, None::<&str>).ctx(Step::Mounts, "mount cgroup2")?;
        } else {
            bind_ro(&sources[0].1, dest, ro, base)?;
        }
        return Ok(());
    }
    mount(Some("tmpfs"), dest, Some("tmpfs"), base, Some("mode=755")).ctx(Step::Mounts, format!("tmpfs for {}", m.destination.display()))?;
    for (name, host_dir) in sources {
        let d = dest.join(name);
        ensure_target(&d, true)?;
        bind_ro(host_dir, &d, ro, base)?;
    }
    if ro {
        mount(None::<&str>, dest, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base, Some("mode=755")).ctx(Step::Mounts, "remount cgroup tmpfs ro")?;
    }
    Ok(())
}

fn bind_ro(src: &Path, dest: &Path, ro: bool, base: MsFlags) -> Result<(), SetupError> {
    mount(Some(src), dest, None::<&str>, MsFlags::MS_BIND, None::<&str>).ctx(Step::Mounts, format!("bind {}", src.display()))?;
    let ro = if ro { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    remount_bind(dest, ro | base).ctx(Step::Mounts, "remount bind")
}

/// Remounts the bind mount at `dest` with `flags`. In a user namespace, the flags a bind
/// mount inherited from a mount of a more privileged namespace (nosuid, nodev, noexec, ro,
/// the atime mode) are locked: a remount that would clear one fails with EPERM. Then it is
/// retried with the locked flags added, as runc does.
fn remount_bind(dest: &Path, flags: MsFlags) -> nix::Result<()> {
    let remount = |f: MsFlags| mount(None::<&str>, dest, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | f, None::<&str>);
    match remount(flags) {
        Err(nix::errno::Errno::EPERM) => {
            use nix::sys::statvfs::{statvfs, FsFlags};
            let now = statvfs(dest)?.flags();
            let mut kept = flags;
            for (st, ms) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
                (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
                (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if now.contains(st) {
                    kept |= ms;
                }
            }
            if kept == flags {
                return Err(nix::errno::Errno::EPERM);
            }
            remount(kept)
        }
        other => other,
    }
}

fn ensure_target(dest: &Path, dir: bool) -> Result<(), SetupError> {
    if dest.exists() {
        return Ok(());
    }
    if dir {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dest).ctx(Step::Mounts, format!("mkdir {}", dest.display()))
    } else {
        if let Some(p) = dest.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(p).ctx(Step::Mounts, format!("mkdir {}", p.display()))?;
        }
        std::fs::File::create(dest).map(drop).ctx(Step::Mounts, format!("create {}", dest.display()))
    }
}

fn make_devices(plan: &Plan, root: &wshim_oci::RootDir) -> Result<(), SetupError> {
    let dev = under(&plan.rootfs, Path::new("/dev"));
    // Nodes get exactly the spec's mode: mknod applies the umask (the spec's own comes later).
    let umask_was = umask(Mode::empty());
    let ids = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    let made = plan.devices.iter().try_for_each(|d| make_device(root, d, ids).map_err(|e| SetupError::new(Step::Mounts, format!("device {}: {}", d.path.display(), e.message))));
    umask(umask_was);
    made?;
    // The links every Linux program expects under /dev. One already there (the rootfs's own
    // /dev, or a container sharing this rootfs made it meanwhile) is kept.
    let link = |target: &str, l: &Path, what: &str| match symlink(target, l) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        r => r.ctx(Step::Mounts, format!("symlink {what}")),
    };
    for (name, target) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")] {
        link(target, &dev.join(name), &format!("/dev/{name}"))?;
    }
    if dev.join("pts").is_dir() {
        link("pts/ptmx", &dev.join("ptmx"), "/dev/ptmx")?;
    }
    Ok(())
}

/// Makes the node `d` in the container's /dev; the caller has set the umask to 0. `ids`:
/// this process's effective uid and gid, which a node it makes gets.
fn make_device(root: &wshim_oci::RootDir, d: &DevicePlan, ids: (u32, u32)) -> Result<(), SetupError> {
    let dest = root.resolve(&d.path).ctx(Step::Mounts, "resolve")?;
    let kind = match d.kind {
        'b' => SFlag::S_IFBLK,
        'p' => SFlag::S_IFIFO,
        _ => SFlag::S_IFCHR,
    };
    let dev = makedev(d.major as u64, d.minor as u64);
    let mode = Mode::from_bits_truncate(d.mode & 0o7777);
    // The common case, a fresh /dev tmpfs: nothing there yet, the directory made, and the
    // node ours (created by this process, root of the container). Else the long way below.
    if (d.uid, d.gid) == ids && mknod(&dest, kind, mode, dev).is_ok() {
        return Ok(());
    }
    if let Some(p) = dest.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(p).ctx(Step::Mounts, "mkdir")?;
    }
    // A node already there (a rootfs without a /dev tmpfs, shared by containers created at
    // the same time) is kept when it is this device, as runc keeps it; anything else there
    // is replaced.
    let is_this_device = |p: &Path| {
        nix::sys::stat::lstat(p).is_ok_and(|st| st.st_mode & SFlag::S_IFMT.bits() == kind.bits() && (kind == SFlag::S_IFIFO || st.st_rdev == dev))
    };
    if is_this_device(&dest) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&dest);
    match mknod(&dest, kind, mode, dev) {
        Err(nix::errno::Errno::EEXIST) if is_this_device(&dest) => Ok(()),
        Ok(()) => chown(&dest, Some(Uid::from_raw(d.uid)), Some(Gid::from_raw(d.gid))).ctx(Step::Mounts, "chown"),
        // Where mknod is not allowed, bind the host's node, as runc does.
        Err(nix::errno::Errno::EPERM) => {
            std::fs::File::create(&dest).ctx(Step::Mounts, "create bind target")?;
            mount(Some(&d.path), &dest, None::<&str>, MsFlags::MS_BIND, None::<&str>).ctx(Step::Mounts, "bind host device")
        }
        Err(e) => Err(SetupError::new(Step::Mounts, format!("mknod: {e}"))),
    }
}

/// A directory gets an empty read-only tmpfs, anything else /dev/null; a missing path is
/// skipped. Looked at first (a stat is a path walk): a mount tried on the wrong kind fails
/// only after its costly part, a tmpfs made for a file, or a bind of /dev/null made and then
/// torn down (which waits for an RCU grace period). The first masked directory gets its own
/// tmpfs (`empty_dir` is then that path), later ones a bind of it, which makes no file
/// system: a read-only tmpfs cannot be written through any of its mounts, so sharing one is
/// sharing an empty directory.
fn mask_path(p: &Path, empty_dir: &mut Option<PathBuf>) -> Result<(), SetupError> {
    let what = || format!("maskedPaths {}", p.display());
    let is_dir = match nix::sys::stat::stat(p) {
        Ok(st) => st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits(),
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e).ctx(Step::Mounts, what()),
    };
    let made = match (is_dir, &empty_dir) {
        (false, _) => mount(Some("/dev/null"), p, None::<&str>, MsFlags::MS_BIND, None::<&str>),
        (true, Some(dir)) => mount(Some(dir.as_path()), p, None::<&str>, MsFlags::MS_BIND, None::<&str>),
        (true, None) => mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, None::<&str>),
    };
    made.ctx(Step::Mounts, what())?;
    if is_dir && empty_dir.is_none() {
        *empty_dir = Some(p.to_path_buf());
    }
    Ok(())
}

fn readonly_path(p: &Path) -> Result<(), SetupError> {
    match mount(Some(p), p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>) {
        Ok(()) => {}
        // Missing: nothing to protect.
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e).ctx(Step::Mounts, format!("readonlyPaths {}", p.display())),
    }
    // Read-only, and otherwise as it was (runc's way): nosuid, nodev and noexec stay only
    // where the mount already had them, so a read-only path of programs still runs them.
    use nix::sys::statvfs::{statvfs, FsFlags};
    let had = statvfs(p).ctx(Step::Mounts, format!("readonlyPaths {}: statvfs", p.display()))?.flags();
    let mut keep = MsFlags::empty();
    for (fs, ms) in [(FsFlags::ST_NOSUID, MsFlags::MS_NOSUID), (FsFlags::ST_NODEV, MsFlags::MS_NODEV), (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC)] {
        if had.contains(fs) {
            keep |= ms;
        }
    }
    mount(None::<&str>, p, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | keep, None::<&str>)
        .ctx(Step::Mounts, format!("readonlyPaths {}", p.display()))
}
