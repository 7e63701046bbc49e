//! The freezer on this machine's real cgroupfs: v1 hierarchies and the controller-less
//! unified (v2) mount. Each test makes a cgroup of its own, moves a `sleep` into it,
//! freezes, thaws, kills and removes it. Needs root; fails if it cannot run.

use std::path::Path;
use std::process::{Child, Command};

use wshim_sandbox::{Cgroup, CgroupMode};

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "THE FREEZER TESTS NEED ROOT: run them as root (make test)");
}

fn sleeper() -> Child {
    Command::new("sleep").arg("60").spawn().expect("spawn sleep")
}

fn proc_state(pid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("State:")).unwrap().to_string()
}

fn exercise(name: &str, root: &Path, mode: CgroupMode, frozen_file: &str, frozen_text: &str) {
    require_root();
    assert!(root.exists(), "{} is missing: this machine's cgroup layout changed", root.display());
    let rel = format!("wshim-test/{name}-{}", std::process::id());
    let cg = Cgroup::create(root, &rel, None).unwrap();
    assert_eq!(cg.mode, mode);
    let mut child = sleeper();
    for f in cg.procs_files() {
        std::fs::write(&f, child.id().to_string()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
    assert_eq!(cg.pids(), vec![child.id() as i32]);

    cg.freeze(true).unwrap();
    let dir = if mode == CgroupMode::V1 { cg.dir("freezer").unwrap().to_path_buf() } else { cg.dirs[0].1.clone() };
    let state = std::fs::read_to_string(dir.join(frozen_file)).unwrap();
    assert!(state.contains(frozen_text), "{frozen_file}: {state}");
    cg.freeze(false).unwrap();
    let state = std::fs::read_to_string(dir.join(frozen_file)).unwrap();
    assert!(!state.contains(frozen_text), "thawed, {frozen_file}: {state}");
    assert!(proc_state(child.id()).starts_with("State:"), "the process lives on after the thaw");

    child.kill().unwrap();
    child.wait().unwrap();
    cg.remove().unwrap();
    for (_, d) in &cg.dirs {
        assert!(!d.exists(), "{} left behind", d.display());
        let _ = std::fs::remove_dir(d.parent().unwrap());
    }
}

#[test]
fn v1_freezer_hierarchy() {
    exercise("v1", Path::new("/sys/fs/cgroup"), CgroupMode::V1, "freezer.state", "FROZEN");
}

#[test]
fn v2_unified_mount_freezes_without_controllers() {
    exercise("v2", Path::new("/sys/fs/cgroup/unified"), CgroupMode::V2, "cgroup.events", "frozen 1");
}
