//! cgroups v1 (including hybrid hosts) and v2, with the cgroupfs root as a parameter so the
//! logic runs on a temp dir laid out like cgroupfs. Only directories under the container's
//! own `cgroupsPath` are created, written and removed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {op}: {source}")]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("{field}: not supported on cgroup {mode:?} ({why})")]
    Unsupported { field: &'static str, mode: CgroupMode, why: &'static str },
    #[error("cgroup root {0}: no cgroup hierarchy found")]
    NoHierarchy(PathBuf),
    #[error(transparent)]
    Devices(#[from] crate::devices_bpf::DeviceFilterError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// One hierarchy per controller (and on hybrid hosts a controller-less `unified` one).
    V1,
    /// The unified hierarchy.
    V2,
}

/// A container's cgroup: one directory per hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub mode: CgroupMode,
    /// (hierarchy name, directory), e.g. ("memory", /sys/fs/cgroup/memory/default/c1).
    pub dirs: Vec<(String, PathBuf)>,
    /// On v1: the `unified` hierarchy is a cgroup2 mount (a hybrid host), which a process
    /// can be cloned into.
    unified_v2: bool,
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { path: path.to_path_buf(), op, source }
}

/// What [`hierarchies`] finds: the mode, the hierarchies (name, directory), and whether a v1
/// root's `unified` hierarchy is a cgroup2 mount.
type Listing = (CgroupMode, Vec<(String, PathBuf)>, bool);

/// The cgroup mode of `root` and, on v1, its hierarchies (name, directory), each once
/// (co-mounted controllers show up twice: cpu -> cpu,cpuacct). Listing them takes some
/// twenty syscalls, on every Create: the answer is kept per root, as long as the root
/// directory is the same one, unmodified (device, inode, modification time; the time moves
/// in clock ticks, so a change within the tick of a listing goes unseen, which a cgroupfs
/// root, changed only by mounting hierarchies, does not meet).
fn hierarchies(root: &Path) -> Result<Listing, CgroupError> {
    use std::os::unix::fs::MetadataExt;
    static KNOWN: std::sync::Mutex<Vec<(PathBuf, (u64, u64, i64, i64), Listing)>> = std::sync::Mutex::new(Vec::new());
    let st = std::fs::metadata(root).map_err(io(root, "stat"))?;
    let stamp = (st.dev(), st.ino(), st.mtime(), st.mtime_nsec());
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, l)) = known.iter().find(|(r, s, _)| r == root && *s == stamp) {
        return Ok(l.clone());
    }
    let mode = CgroupMode::detect(root);
    let mut found = Vec::new();
    if mode == CgroupMode::V1 {
        let mut seen = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(root).map_err(io(root, "list"))?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let h = e.path();
            let canon = std::fs::canonicalize(&h).unwrap_or(h.clone());
            if !h.join("cgroup.procs").exists() || seen.contains(&canon) {
                continue;
            }
            seen.push(canon);
            found.push((e.file_name().to_string_lossy().into_owned(), h));
        }
        if found.is_empty() {
            return Err(CgroupError::NoHierarchy(root.to_path_buf()));
        }
    }
    // Only the cgroup2 mount has cgroup.controllers (empty on a hybrid host).
    let unified_v2 = mode == CgroupMode::V1 && root.join("unified/cgroup.controllers").exists();
    let listing = (mode, found, unified_v2);
    known.retain(|(r, _, _)| r != root);
    known.push((root.to_path_buf(), stamp, listing.clone()));
    Ok(listing)
}

/// The device rules runc appends to every container's (libcontainer's AllowedDevices): mknod
/// of anything, the OCI default devices, ptys, /dev/ptmx and /dev/net/tun.
const DEFAULT_ALLOWED_DEVICES: [&str; 11] =
    ["b *:* m", "c *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 10:200 rwm", "c 136:* rwm"];

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(|source| CgroupError::Io { path: p.clone(), op: "write", source })
}

impl CgroupMode {
    pub fn detect(root: &Path) -> CgroupMode {
        if root.join("cgroup.controllers").exists() {
            CgroupMode::V2
        } else {
            CgroupMode::V1
        }
    }
}

impl Cgroup {
    /// The directories `rel` has (or would have) under `root`, without touching anything.
    pub fn locate(root: &Path, rel: &str) -> Result<Cgroup, CgroupError> {
        let rel = rel.trim_start_matches('/');
        let (mode, hierarchies, unified_v2) = hierarchies(root)?;
        let dirs = match mode {
            CgroupMode::V2 => vec![(String::new(), root.join(rel))],
            CgroupMode::V1 => hierarchies.into_iter().map(|(name, h)| (name, h.join(rel))).collect(),
        };
        Ok(Cgroup { mode, dirs, unified_v2 })
    }

    /// Creates the cgroup under `root` and applies `resources`. Only directories below `root`
    /// on the path `rel` are created; ancestors that already exist are left as they are.
    pub fn create(root: &Path, rel: &str, resources: Option<&LinuxResources>) -> Result<Cgroup, CgroupError> {
        let cg = Cgroup::create_early(root, rel, resources)?;
        if let Err(e) = cg.create_late(root, resources) {
            // The caller gets no Cgroup to remove on error: remove what we made here.
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// The part of [`Cgroup::create`] a process must find before it is cloned: the directory
    /// it is cloned into (CLONE_INTO_CGROUP). On v2 that is the whole cgroup, limits
    /// included; on a v1 host only the directory in the controller-less `unified`
    /// hierarchy, if there is one. [`Cgroup::create_late`] makes the rest, and may run while
    /// the process is being cloned, as long as the process joins only after it.
    pub fn create_early(root: &Path, rel: &str, resources: Option<&LinuxResources>) -> Result<Cgroup, CgroupError> {
        let cg = Cgroup::locate(root, rel)?;
        if cg.mode == CgroupMode::V2 {
            // Device rules are checked before anything is created.
            if let Some(devices) = resources.and_then(|r| r.devices().as_deref()) {
                crate::devices_bpf::rules(devices)?;
            }
            enable_v2_controllers(root, rel.trim_start_matches('/'), resources)?;
        }
        for (_, dir) in cg.early_dirs() {
            make_dirs(root, dir, false)?;
        }
        if let (CgroupMode::V2, Some(r)) = (cg.mode, resources) {
            // The caller gets no Cgroup to remove on error: remove what we made here.
            if let Err(e) = cg.apply_v2(r) {
                let _ = cg.remove();
                return Err(e);
            }
        }
        Ok(cg)
    }

    /// The rest of [`Cgroup::create`] after [`Cgroup::create_early`]: the v1 hierarchies'
    /// directories and limits (nothing on v2, see [`Cgroup::has_late`]). On error, what was
    /// made stays for the caller to remove (a process may be in the early part by then).
    pub fn create_late(&self, root: &Path, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        if !self.has_late() {
            return Ok(());
        }
        let early: Vec<&Path> = self.early_dirs().map(|(_, d)| d).collect();
        for (name, dir) in self.dirs.iter().filter(|(_, d)| !early.contains(&d.as_path())) {
            let hierarchy = dir.ancestors().find(|a| a.parent() == Some(root)).unwrap_or(root);
            make_dirs(hierarchy, dir, name == "cpuset")?;
        }
        resources.map_or(Ok(()), |r| self.apply_v1(r))
    }

    /// Whether [`Cgroup::create_late`] has anything to make: on v1 hosts.
    pub fn has_late(&self) -> bool {
        self.mode == CgroupMode::V1
    }

    /// The directories [`Cgroup::create_early`] makes: v2's (on a hybrid host the `unified`
    /// hierarchy's, where that is a cgroup2 mount).
    fn early_dirs(&self) -> impl Iterator<Item = (&str, &Path)> + '_ {
        self.dirs
            .iter()
            .filter(move |(name, _)| self.mode == CgroupMode::V2 || (self.unified_v2 && name == "unified"))
            .map(|(n, d)| (n.as_str(), d.as_path()))
    }

    pub fn dir(&self, hierarchy: &str) -> Option<&Path> {
        self.dirs.iter().find(|(n, _)| n == hierarchy).map(|(_, d)| d.as_path())
    }

    /// This cgroup's directory in the cgroup v2 hierarchy, if it has one: the cgroup on a
    /// v2 host, its `unified` directory on a hybrid host. A process can be cloned straight
    /// into it (`CLONE_INTO_CGROUP`).
    pub fn v2_dir(&self) -> Option<&Path> {
        match self.mode {
            CgroupMode::V2 => self.dirs.first().map(|(_, d)| d.as_path()),
            CgroupMode::V1 => self.dir("unified").filter(|_| self.unified_v2),
        }
    }

    /// The `cgroup.procs` files a process writes its pid into to join this cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.join("cgroup.procs")).collect()
    }

    /// The files a single-threaded process writes "0" into to join this cgroup itself: `tasks`
    /// in a v1 hierarchy, `cgroup.procs` in the v2 one. Moving the calling thread (v1
    /// `tasks`, pid 0) spares the kernel the global threadgroup lock that moving a whole
    /// process takes, whose write side waits for an RCU grace period (milliseconds); for a
    /// single-threaded process both move the same. v2 has no such file: the process is
    /// cloned into its v2 cgroup instead (CLONE_INTO_CGROUP) where the kernel can.
    pub fn join_files(&self) -> Vec<PathBuf> {
        let v2 = self.v2_dir().map(Path::to_path_buf);
        self.dirs
            .iter()
            .map(|(_, d)| if self.mode == CgroupMode::V2 || v2.as_ref() == Some(d) { d.join("cgroup.procs") } else { d.join("tasks") })
            .collect()
    }

    /// A control file of one hierarchy ("" on v2), trimmed; `None` when missing.
    pub fn read(&self, hierarchy: &str, file: &str) -> Option<String> {
        let dir = if self.mode == CgroupMode::V2 { &self.dirs[0].1 } else { self.dirs.iter().find(|(n, _)| n == hierarchy).map(|(_, d)| d)? };
        std::fs::read_to_string(dir.join(file)).ok().map(|s| s.trim().to_string())
    }

    /// A control file as a number (`max` is `u64::MAX`).
    pub fn read_u64(&self, hierarchy: &str, file: &str) -> u64 {
        match self.read(hierarchy, file).as_deref() {
            Some("max") => u64::MAX,
            Some(v) => v.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0),
            None => 0,
        }
    }

    /// A flat keyed file (`memory.stat`, `cpu.stat`, …) as name → value.
    pub fn read_keyed(&self, hierarchy: &str, file: &str) -> std::collections::HashMap<String, u64> {
        self.read(hierarchy, file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_string(), f.next()?.parse().ok()?))
            })
            .collect()
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|(_, d)| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Freezes (or thaws) every process of the cgroup, and waits until the kernel says it is
    /// done: the v1 freezer, or `cgroup.freeze` on v2.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        // (directory, file to write, value, file to watch, line it shows when done)
        let (dir, file, value, watch, want) = match self.mode {
            CgroupMode::V1 => {
                let dir = self.dir("freezer").ok_or(CgroupError::Unsupported { field: "pause", mode: CgroupMode::V1, why: "no freezer hierarchy" })?;
                let state = if frozen { "FROZEN" } else { "THAWED" };
                (dir, "freezer.state", state, "freezer.state", state)
            }
            CgroupMode::V2 => {
                let (value, want) = if frozen { ("1", "frozen 1") } else { ("0", "frozen 0") };
                (self.dirs[0].1.as_path(), "cgroup.freeze", value, "cgroup.events", want)
            }
        };
        for attempt in 0..500 {
            // v1 may stay FREEZING while a task is in an uninterruptible sleep: ask again.
            if attempt % 50 == 0 {
                write(dir, file, value)?;
            }
            let now = std::fs::read_to_string(dir.join(watch)).map_err(io(dir, "read freezer state"))?;
            if now.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(CgroupError::Io { path: dir.join(watch), op: "wait for freezer", source: std::io::Error::from(std::io::ErrorKind::TimedOut) })
    }

    /// Removes the container's directories (not their ancestors). Retries while exiting
    /// processes keep a directory busy.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for (_, d) in &self.dirs {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(source) => return Err(CgroupError::Io { path: d.clone(), op: "remove", source }),
                }
            }
        }
        Ok(())
    }

    /// Applies `r` to the existing cgroup of a running container (the Task API's Update).
    pub fn update(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        match self.mode {
            CgroupMode::V1 => self.apply_v1(r),
            CgroupMode::V2 => self.apply_v2(r),
        }
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup: `oom_kill`
    /// in v1's memory.oom_control or v2's memory.events. `None` without a memory controller.
    pub fn oom_kills(&self) -> Option<u64> {
        let (h, file) = match self.mode {
            CgroupMode::V1 => ("memory", "memory.oom_control"),
            CgroupMode::V2 => ("", "memory.events"),
        };
        self.read_keyed(h, file).get("oom_kill").copied().or_else(|| self.dir(h).filter(|d| d.join(file).exists()).map(|_| 0))
    }

    /// A descriptor that becomes readable when this cgroup's memory controller runs out of
    /// memory: on v1 an eventfd registered through cgroup.event_control for
    /// memory.oom_control, on v2 an inotify watch on memory.events. `None` without a memory
    /// controller. After it fires, [`OomWatch::drain`] it and compare [`Cgroup::oom_kills`].
    pub fn oom_watch(&self) -> Result<Option<OomWatch>, CgroupError> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        match self.mode {
            CgroupMode::V1 => {
                let Some(dir) = self.dir("memory") else { return Ok(None) };
                let control = dir.join("memory.oom_control");
                let oc = std::fs::File::open(&control).map_err(io(&control, "open"))?;
                let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(|e| CgroupError::Io { path: control.clone(), op: "eventfd", source: e.into() })?;
                write(dir, "cgroup.event_control", &format!("{} {}", efd.as_fd().as_raw_fd(), oc.as_raw_fd()))?;
                // The registration holds its own references; the eventfd is what we poll.
                Ok(Some(OomWatch { fd: OwnedFd::from(efd), _control: Some(oc) }))
            }
            CgroupMode::V2 => {
                let events = self.dirs[0].1.join("memory.events");
                if !events.exists() {
                    return Ok(None);
                }
                let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(|e| CgroupError::Io { path: events.clone(), op: "inotify", source: e.into() })?;
                ino.add_watch(&events, AddWatchFlags::IN_MODIFY).map_err(|e| CgroupError::Io { path: events.clone(), op: "inotify watch", source: e.into() })?;
                Ok(Some(OomWatch { fd: OwnedFd::from(ino), _control: None }))
            }
        }
    }

    fn apply_v1(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        if let (Some(m), Some(dir)) = (r.memory(), self.dir("memory")) {
            if let Some(l) = m.limit() {
                write(dir, "memory.limit_in_bytes", &l.to_string())?;
            }
            if let Some(s) = m.reservation() {
                write(dir, "memory.soft_limit_in_bytes", &s.to_string())?;
            }
            if let Some(s) = m.swap() {
                // Without swap accounting the file is missing; a swap equal to the limit
                // (no extra swap) is then already what happens.
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write(dir, "memory.memsw.limit_in_bytes", &s.to_string())?;
                } else if Some(s) != m.limit() {
                    return Err(CgroupError::Unsupported { field: "linux.resources.memory.swap", mode: CgroupMode::V1, why: "swap accounting is off on this host" });
                }
            }
            if let Some(s) = m.swappiness() {
                write(dir, "memory.swappiness", &s.to_string())?;
            }
            if m.disable_oom_killer() == Some(true) {
                write(dir, "memory.oom_control", "1")?;
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(dir) = self.dir("cpu") {
                if let Some(s) = c.shares() {
                    write(dir, "cpu.shares", &s.to_string())?;
                }
                // The period first: a quota is checked against the current period.
                if let Some(p) = c.period() {
                    write(dir, "cpu.cfs_period_us", &p.to_string())?;
                }
                if let Some(q) = c.quota() {
                    write(dir, "cpu.cfs_quota_us", &q.to_string())?;
                }
            }
            if let Some(dir) = self.dir("cpuset") {
                if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
                    write(dir, "cpuset.cpus", cpus)?;
                }
                if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
                    write(dir, "cpuset.mems", mems)?;
                }
            }
        }
        if let (Some(p), Some(dir)) = (r.pids(), self.dir("pids")) {
            let v = if p.limit() > 0 { p.limit().to_string() } else { "max".into() };
            write(dir, "pids.max", &v)?;
        }
        if let (Some(rules), Some(dir)) = (r.devices(), self.dir("devices")) {
            for d in rules {
                let typ = d.typ().map(|t| t.as_str().to_string()).unwrap_or_else(|| "a".into());
                let num = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_else(|| "*".into());
                let line = format!("{} {}:{} {}", typ, num(d.major()), num(d.minor()), d.access().as_deref().unwrap_or("rwm"));
                write(dir, if d.allow() { "devices.allow" } else { "devices.deny" }, &line)?;
            }
            // After the spec's rules, as runc does: the default devices every container gets
            // (and mknod of any node, and ptys) stay usable whatever the rules denied.
            for line in DEFAULT_ALLOWED_DEVICES {
                write(dir, "devices.allow", line)?;
            }
        }
        Ok(())
    }

    fn apply_v2(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let dir = &self.dirs[0].1;
        if let Some(m) = r.memory() {
            let v = |n: i64| if n < 0 { "max".to_string() } else { n.to_string() };
            if let Some(l) = m.limit() {
                write(dir, "memory.max", &v(l))?;
            }
            if let Some(s) = m.reservation() {
                write(dir, "memory.low", &v(s))?;
            }
            if let Some(s) = m.swap() {
                // v1's swap is memory+swap; v2's memory.swap.max is swap alone.
                let swap = match (s, m.limit()) {
                    (-1, _) => "max".to_string(),
                    (s, Some(l)) if l > 0 => (s - l).max(0).to_string(),
                    (s, _) => s.to_string(),
                };
                write(dir, "memory.swap.max", &swap)?;
            }
            if m.disable_oom_killer() == Some(true) {
                return Err(CgroupError::Unsupported { field: "linux.resources.memory.disableOOMKiller", mode: CgroupMode::V2, why: "cgroup v2 has no switch for it" });
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(s) = c.shares() {
                write(dir, "cpu.weight", &shares_to_weight(s).to_string())?;
            }
            if c.quota().is_some() || c.period().is_some() {
                let quota = match c.quota() {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".into(),
                };
                write(dir, "cpu.max", &format!("{quota} {}", c.period().unwrap_or(100_000)))?;
            }
            if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
                write(dir, "cpuset.cpus", cpus)?;
            }
            if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
                write(dir, "cpuset.mems", mems)?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 { p.limit().to_string() } else { "max".into() };
            write(dir, "pids.max", &v)?;
        }
        // No devices controller on v2: an eBPF program attached to the directory.
        if let Some(devices) = r.devices().as_deref().filter(|d| !d.is_empty()) {
            crate::devices_bpf::apply(dir, devices)?;
        }
        Ok(())
    }
}

/// See [`Cgroup::oom_watch`]. Closing it ends the registration.
#[derive(Debug)]
pub struct OomWatch {
    fd: OwnedFd,
    _control: Option<std::fs::File>,
}

impl OomWatch {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Consumes whatever made the descriptor readable (an eventfd count, inotify events).
    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        while nix::unistd::read(self.fd.as_fd(), &mut buf).is_ok_and(|n| n > 0) {}
    }
}

/// cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000), as runc and crun convert.
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

fn wants_cpuset(r: Option<&LinuxResources>) -> bool {
    r.and_then(|r| r.cpu().as_ref()).is_some_and(|c| c.cpus().is_some() || c.mems().is_some())
}

/// Creates `dir` and its missing ancestors below `top`. New cpuset directories start empty
/// in v1 and refuse members, so each new one copies its parent's cpus and mems.
fn make_dirs(top: &Path, dir: &Path, cpuset: bool) -> Result<(), CgroupError> {
    // Usually only `dir` is missing: one mkdir, no lookups first.
    let missing: Vec<&Path> = match std::fs::create_dir(dir) {
        Ok(()) => {
            copy_cpuset(dir, cpuset)?;
            return Ok(());
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => dir.ancestors().take_while(|a| *a != top && !a.exists()).collect(),
        Err(e) => return Err(io(dir, "create")(e)),
    };
    for d in missing.into_iter().rev() {
        std::fs::create_dir(d).map_err(io(d, "create"))?;
        copy_cpuset(d, cpuset)?;
    }
    Ok(())
}

/// A new v1 cpuset directory `d` gets its parent's cpus and mems.
fn copy_cpuset(d: &Path, cpuset: bool) -> Result<(), CgroupError> {
    if !cpuset {
        return Ok(());
    }
    let parent = d.parent().expect("below top");
    for f in ["cpuset.cpus", "cpuset.mems"] {
        if let Ok(v) = std::fs::read_to_string(parent.join(f)) {
            write(d, f, v.trim())?;
        }
    }
    Ok(())
}

/// On v2, a controller must be enabled in every ancestor's `cgroup.subtree_control` for its
/// files to appear. Only controllers the resources use, and only where not enabled yet.
fn enable_v2_controllers(root: &Path, rel: &str, r: Option<&LinuxResources>) -> Result<(), CgroupError> {
    let Some(r) = r else { return Ok(()) };
    let mut want = Vec::new();
    if r.memory().is_some() {
        want.push("memory");
    }
    if r.cpu().as_ref().is_some_and(|c| c.shares().is_some() || c.quota().is_some() || c.period().is_some()) {
        want.push("cpu");
    }
    if wants_cpuset(Some(r)) {
        want.push("cpuset");
    }
    if r.pids().is_some() {
        want.push("pids");
    }
    if want.is_empty() {
        return Ok(());
    }
    let mut dir = root.to_path_buf();
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    for (i, c) in comps.iter().enumerate() {
        let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        let add: Vec<String> = want.iter().filter(|w| !enabled.split_whitespace().any(|e| e == **w)).map(|w| format!("+{w}")).collect();
        if !add.is_empty() {
            write(&dir, "cgroup.subtree_control", &add.join(" "))?;
        }
        dir = dir.join(c);
        if i + 1 < comps.len() && !dir.exists() {
            std::fs::create_dir(&dir).map_err(io(&dir, "create"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: serde_json::Value) -> LinuxResources {
        serde_json::from_value(json).unwrap()
    }

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn v1_tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for h in ["cpu", "cpuset", "memory", "pids", "devices", "unified"] {
            std::fs::create_dir(d.path().join(h)).unwrap();
            std::fs::write(d.path().join(h).join("cgroup.procs"), "").unwrap();
        }
        std::fs::write(d.path().join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(d.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        std::fs::create_dir(d.path().join("not-a-hierarchy")).unwrap();
        d
    }

    #[test]
    fn v1_creates_applies_and_removes() {
        let t = v1_tree();
        let r = resources(serde_json::json!({
            "memory": {"limit": 67108864, "reservation": 33554432},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000},
            "pids": {"limit": 32},
            "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]
        }));
        let cg = Cgroup::create(t.path(), "/default/c1", Some(&r)).unwrap();
        assert_eq!(cg.mode, CgroupMode::V1);
        assert_eq!(cg.dirs.len(), 6, "{:?}", cg.dirs);
        let p = t.path();
        assert_eq!(read(p.join("memory/default/c1/memory.limit_in_bytes")), "67108864");
        assert_eq!(read(p.join("memory/default/c1/memory.soft_limit_in_bytes")), "33554432");
        assert_eq!(read(p.join("cpu/default/c1/cpu.shares")), "512");
        assert_eq!(read(p.join("cpu/default/c1/cpu.cfs_quota_us")), "50000");
        assert_eq!(read(p.join("pids/default/c1/pids.max")), "32");
        // The last rule written wins in this fake tree; on cgroupfs each write adds a rule.
        // The default devices' rules come last.
        assert_eq!(read(p.join("devices/default/c1/devices.allow")), "c 136:* rwm");
        assert_eq!(read(p.join("devices/default/c1/devices.deny")), "a *:* rwm");
        assert_eq!(read(p.join("cpuset/default/cpuset.cpus")), "0-1", "new cpuset dirs copy their parent");
        assert_eq!(read(p.join("cpuset/default/c1/cpuset.mems")), "0");
        assert!(cg.procs_files().contains(&p.join("unified/default/c1/cgroup.procs")));
        // Joining: the v1 hierarchies' tasks files; this fake `unified` is not cgroup2.
        assert!(cg.join_files().contains(&p.join("memory/default/c1/tasks")));
        assert!(cg.join_files().contains(&p.join("unified/default/c1/tasks")));
        // A fake tree has no kernel to empty the directories; remove what we wrote.
        for (_, d) in &cg.dirs {
            for f in std::fs::read_dir(d).unwrap() {
                std::fs::remove_file(f.unwrap().path()).unwrap();
            }
        }
        cg.remove().unwrap();
        assert!(!p.join("memory/default/c1").exists());
        assert!(p.join("memory/default").exists(), "ancestors stay");
    }

    #[test]
    fn v1_early_makes_only_the_directory_to_clone_into_and_late_the_rest() {
        let t = v1_tree();
        let p = t.path();
        // `unified` as on a hybrid host: a cgroup2 mount (it has cgroup.controllers).
        std::fs::write(p.join("unified/cgroup.controllers"), "").unwrap();
        let r = resources(serde_json::json!({"pids": {"limit": 32}}));
        let cg = Cgroup::create_early(p, "/default/c1", Some(&r)).unwrap();
        assert!(cg.has_late());
        assert!(p.join("unified/default/c1").is_dir());
        for h in ["cpu", "cpuset", "memory", "pids", "devices"] {
            assert!(!p.join(h).join("default/c1").exists(), "{h} made early");
        }
        cg.create_late(p, Some(&r)).unwrap();
        assert_eq!(read(p.join("pids/default/c1/pids.max")), "32");
        assert_eq!(read(p.join("cpuset/default/c1/cpuset.cpus")), "0-1");
        // A late failure leaves what was made for the caller (a process may be in it).
        // (Refused before any file is written: this fake tree cannot remove a directory with files.)
        let bad = resources(serde_json::json!({"memory": {"swap": 4194304}}));
        let cg2 = Cgroup::create_early(p, "/default/c2", Some(&bad)).unwrap();
        let e = cg2.create_late(p, Some(&bad)).unwrap_err();
        assert!(e.to_string().contains("linux.resources.memory.swap"), "{e}");
        assert!(p.join("unified/default/c2").is_dir() && p.join("memory/default/c2").is_dir());
        // create() itself removes what it made on error (in a tree without cpuset, whose new
        // directories get files this fake tree cannot remove them with).
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        for h in ["memory", "pids", "unified"] {
            std::fs::create_dir(p.join(h)).unwrap();
            std::fs::write(p.join(h).join("cgroup.procs"), "").unwrap();
        }
        std::fs::write(p.join("unified/cgroup.controllers"), "").unwrap();
        assert!(Cgroup::create(p, "/default/c3", Some(&bad)).is_err());
        assert!(!p.join("unified/default/c3").exists() && !p.join("memory/default/c3").exists());
    }

    #[test]
    fn the_hierarchies_are_listed_again_when_the_root_changes() {
        let t = v1_tree();
        let names = |cg: &Cgroup| cg.dirs.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let before = Cgroup::locate(t.path(), "/a").unwrap();
        assert_eq!(names(&before), ["cpu", "cpuset", "devices", "memory", "pids", "unified"]);
        // (File times move in steps of a clock tick: a change within the same tick as the
        // listing would go unseen; a cgroupfs root does not change under running shims.)
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir(t.path().join("blkio")).unwrap();
        std::fs::write(t.path().join("blkio/cgroup.procs"), "").unwrap();
        let after = Cgroup::locate(t.path(), "/b").unwrap();
        assert_eq!(names(&after), ["blkio", "cpu", "cpuset", "devices", "memory", "pids", "unified"]);
        assert_eq!(after.dirs[0].1, t.path().join("blkio/b"));
    }

    #[test]
    fn the_v2_directory_to_clone_into() {
        let t = v1_tree();
        let cg = Cgroup::locate(t.path(), "/default/c1").unwrap();
        // A v1 hierarchy named `unified` that is not cgroup2 (no cgroup.controllers): none.
        assert_eq!(cg.v2_dir(), None);
        // A hybrid host: `unified` is a cgroup2 mount (it has cgroup.controllers).
        let t = v1_tree();
        std::fs::write(t.path().join("unified/cgroup.controllers"), "").unwrap();
        let cg = Cgroup::locate(t.path(), "/default/c1").unwrap();
        assert_eq!(cg.v2_dir(), Some(t.path().join("unified/default/c1").as_path()));
        let joins = cg.join_files();
        assert!(joins.contains(&t.path().join("unified/default/c1/cgroup.procs")), "{joins:?}");
        assert!(joins.contains(&t.path().join("pids/default/c1/tasks")), "{joins:?}");
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "memory").unwrap();
        let v2 = Cgroup::locate(d.path(), "k8s/c1").unwrap();
        assert_eq!(v2.v2_dir(), Some(d.path().join("k8s/c1").as_path()));
        assert_eq!(v2.join_files(), vec![d.path().join("k8s/c1/cgroup.procs")]);
    }

    #[test]
    fn v2_writes_unified_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        std::fs::write(d.path().join("cgroup.subtree_control"), "memory").unwrap();
        let r = resources(serde_json::json!({
            "memory": {"limit": 1048576, "swap": 2097152},
            "cpu": {"shares": 1024, "quota": 20000, "period": 100000},
            "pids": {"limit": 0}
        }));
        let cg = Cgroup::create(d.path(), "k8s/pod/c1", Some(&r)).unwrap();
        assert_eq!(cg.mode, CgroupMode::V2);
        let dir = d.path().join("k8s/pod/c1");
        assert_eq!(read(dir.join("memory.max")), "1048576");
        assert_eq!(read(dir.join("memory.swap.max")), "1048576");
        assert_eq!(read(dir.join("cpu.weight")), shares_to_weight(1024).to_string());
        assert_eq!(read(dir.join("cpu.max")), "20000 100000");
        assert_eq!(read(dir.join("pids.max")), "max");
        assert_eq!(read(d.path().join("cgroup.subtree_control")), "+cpu +pids", "only missing controllers are enabled");
        assert_eq!(read(d.path().join("k8s/pod/cgroup.subtree_control")), "+memory +cpu +pids");
    }

    #[test]
    fn v2_device_rules_are_checked_and_need_a_real_cgroup() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "").unwrap();
        let r = resources(serde_json::json!({"devices": [{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwx"}]}));
        let e = Cgroup::create(d.path(), "c1", Some(&r)).unwrap_err().to_string();
        assert!(e.starts_with("linux.resources.devices[0].access"), "{e}");
        assert!(!d.path().join("c1").exists(), "a bad rule is refused before anything is made");
        // A temp dir is no cgroup: the attach fails, names the field, and the dir goes again.
        let r = resources(serde_json::json!({"devices": [{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]}));
        let e = Cgroup::create(d.path(), "c1", Some(&r)).unwrap_err().to_string();
        assert!(e.starts_with("linux.resources.devices: attach"), "{e}");
        assert!(!d.path().join("c1").exists());
    }

    #[test]
    fn weight_conversion_matches_the_known_points() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }
}
