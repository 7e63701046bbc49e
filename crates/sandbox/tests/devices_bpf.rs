//! cgroup v2 device rules for real: this machine's unified mount has no controllers, but a
//! BPF_PROG_TYPE_CGROUP_DEVICE program needs none. The test makes a v2 cgroup of its own
//! with device rules (the program is attached by `Cgroup::create`), starts a shell in it and
//! checks which device nodes it may open. Needs root; fails if it cannot run.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use wshim_sandbox::{Cgroup, CgroupMode};

#[test]
fn v2_device_program_allows_and_denies_like_the_rules_say() {
    assert!(nix::unistd::geteuid().is_root(), "THE DEVICE PROGRAM TEST NEEDS ROOT: run it as root (make test)");
    let root = Path::new("/sys/fs/cgroup/unified");
    assert!(root.join("cgroup.procs").exists(), "{} is missing: this machine's cgroup layout changed", root.display());
    let rel = format!("wshim-test/devices-{}", std::process::id());
    let resources: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "r"}
    ]}))
    .unwrap();
    let cg = Cgroup::create(root, &rel, Some(&resources)).unwrap();
    assert_eq!(cg.mode, CgroupMode::V2);
    let procs = std::ffi::CString::new(cg.procs_files()[0].as_os_str().as_encoded_bytes()).unwrap();

    // Each line: the device, then the exit status of opening it that way.
    let script = "for t in 'r /dev/null' 'w /dev/null' 'r /dev/zero' 'w /dev/zero' 'r /dev/full'; do \
                    set -- $t; if [ $1 = r ]; then (exec 3<$2) 2>>/tmp/err.$$; else (exec 3>$2) 2>>/tmp/err.$$; fi; echo \"$1 $2 $?\"; \
                  done; cat /tmp/err.$$ >&2; rm -f /tmp/err.$$";
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script]);
    // SAFETY: between fork and exec the closure only makes raw syscalls (open, write, close)
    // on a path built before the fork; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    let out = cmd.output();
    // Clean up before asserting anything, so a failure leaves no cgroup behind.
    let removed = cg.remove();
    let _ = std::fs::remove_dir(root.join("wshim-test"));
    let out = out.expect("run the shell in the cgroup");
    removed.unwrap();
    assert!(!cg.dirs[0].1.exists(), "cgroup left behind");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["r /dev/null 0", "w /dev/null 0", "r /dev/zero 0", "w /dev/zero 2", "r /dev/full 2"],
        "stderr: {stderr}"
    );
    assert_eq!(stderr.matches("Operation not permitted").count(), 2, "the denials are EPERM: {stderr}");
}
