//! User namespaces (`linux.uidMappings` / `gidMappings`) against runc. `ctr run --uidmap`
//! only applies to images, so these tests write the spec: ctr's default (`ctr oci spec`)
//! plus a user namespace mapping container ids 0..65536 to host ids 100000.., run with
//! `ctr run --config`. Container ids are prefixed `e2e-userns-`.

use std::path::PathBuf;

use wshim_e2e::*;

const RUNC: &str = "io.containerd.runc.v2";

/// ctr's default spec for `args` in `rootfs`, with a new user namespace and `edit` applied;
/// written under target/e2e-userns/, returns its path.
fn spec(id: &str, rootfs: &str, args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let out = ctr(&["oci", "spec"]);
    assert_eq!(out.code, 0, "{out:?}");
    let mut s: serde_json::Value = serde_json::from_str(&out.stdout).expect("ctr oci spec prints JSON");
    s["process"]["args"] = serde_json::json!(args);
    s["process"]["env"] = serde_json::json!(["PATH=/"]);
    s["root"] = serde_json::json!({"path": bundles().join("native").join(rootfs)});
    let linux = &mut s["linux"];
    linux["namespaces"].as_array_mut().unwrap().push(serde_json::json!({"type": "user"}));
    linux["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    linux["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    // Where assert_nothing_left looks for leftover cgroups.
    linux["cgroupsPath"] = serde_json::json!(format!("/default/{id}"));
    edit(&mut s);
    let dir = repo().join("target/e2e-userns");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{id}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&s).unwrap()).unwrap();
    path
}

fn run_spec(runtime: &str, id: &str, spec: &std::path::Path, detach: bool) -> Run {
    remove(id);
    let out = ctr(&["run", if detach { "-d" } else { "--rm" }, "--runtime", runtime, "--config", spec.to_str().unwrap(), id]);
    if !detach {
        assert_nothing_left(id);
    }
    out
}

fn probe(runtime: &str, id: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<String> {
    let s = spec(id, "rootfs-probe", &["/probe"], edit);
    let r = run_spec(runtime, id, &s, false);
    assert_eq!(r.code, 0, "{runtime}: {r:?}");
    r.stdout.lines().map(str::to_string).collect()
}

fn field<'a>(report: &'a [String], key: &str) -> &'a str {
    report.iter().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("no {key} in {report:?}"))
}

#[test]
fn a_user_namespace_matches_runc() {
    let ours = probe(RUNTIME, "e2e-userns-probe-ours", |_| {});
    let runc = probe(RUNC, "e2e-userns-probe-runc", |_| {});
    assert_eq!(ours, runc, "ours vs runc");
    assert_eq!(field(&ours, "uid_map"), "0 100000 65536");
    assert_eq!(field(&ours, "gid_map"), "0 100000 65536");
    assert_eq!(field(&ours, "uid"), "0");
    assert_eq!(field(&ours, "CapEff"), "00000000a80425fb", "ctr's default capabilities, over the namespace");
    assert_eq!(field(&ours, "fds"), "0,1,2");
}

#[test]
fn a_user_inside_the_user_namespace_matches_runc() {
    let user = |s: &mut serde_json::Value| s["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [5]});
    let ours = probe(RUNTIME, "e2e-userns-user-ours", user);
    let runc = probe(RUNC, "e2e-userns-user-runc", user);
    assert_eq!(ours, runc, "ours vs runc");
    assert_eq!(field(&ours, "uid"), "1000");
    assert_eq!(field(&ours, "groups"), "5");
    assert_eq!(field(&ours, "CapEff"), "0000000000000000");
}

/// Seen from the host, the container's root is host uid 100000, with runc as with us.
#[test]
fn the_container_root_is_the_mapped_host_uid() {
    for (runtime, id) in [(RUNTIME, "e2e-userns-host-ours"), (RUNC, "e2e-userns-host-runc")] {
        let s = spec(id, "rootfs-pause", &["/pause"], |_| {});
        let r = run_spec(runtime, id, &s, true);
        assert_eq!(r.code, 0, "{runtime}: {r:?}");
        let pid = wait_status(id, "RUNNING", 10);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let ids = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).unwrap().split_whitespace().collect::<Vec<_>>();
        let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
        kill_and_remove(id);
        assert_eq!(ids("Uid:"), ["100000"; 4], "{runtime}");
        assert_eq!(ids("Gid:"), ["100000"; 4], "{runtime}");
        assert_eq!(uid_map.split_whitespace().collect::<Vec<_>>(), ["0", "100000", "65536"], "{runtime}");
    }
}

#[test]
fn bad_mappings_are_refused_naming_the_field() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 2] = [
        (
            "e2e-userns-bad-nons",
            |s| {
                let ns = s["linux"]["namespaces"].as_array_mut().unwrap();
                ns.retain(|n| n["type"] != "user");
            },
            "linux.uidMappings: invalid value \"0 100000 65536\": mappings without a user namespace",
        ),
        (
            "e2e-userns-bad-overlap",
            |s| {
                s["linux"]["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}, {"containerID": 100, "hostID": 300000, "size": 1}])
            },
            "linux.gidMappings[1]: invalid value \"containerID 100 hostID 300000 size 1\": its containerID range overlaps linux.gidMappings[0]",
        ),
    ];
    for (id, edit, want) in cases {
        let s = spec(id, "rootfs-probe", &["/probe"], edit);
        let r = run_spec(RUNTIME, id, &s, false);
        assert_ne!(r.code, 0, "{r:?}");
        assert!(r.stderr.contains(want), "expected {want:?} in {r:?}");
    }
}

/// A wasm image through ctr's own --uidmap (which also remaps the image's snapshot).
#[test]
fn wasm_runs_in_a_user_namespace() {
    let maps = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
    let r = run_wasm("cat", "e2e-userns-wasm", &maps, &["/cat.wasm", "/proc/self/uid_map", "/data/message.txt"]);
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["0", "100000", "65536"], "{r:?}");
    assert_eq!(lines[1], "this file was read from the image's layer");
}

/// A bind mount whose source is nosuid/nodev/noexec, asked to be only `ro`: in a user
/// namespace those flags are locked, and the remount must keep them instead of failing with
/// EPERM. The source is a tmpfs made in containerd's mount namespace. (runc 1.1.15 fails
/// here with "operation not permitted"; later runc and crun keep the locked flags.)
#[test]
fn a_bind_mount_keeps_the_locked_flags_of_its_source() {
    let containerd = std::fs::read_to_string("/run/wshim/containerd.pid").unwrap().trim().to_string();
    let src = format!("/run/wshim/e2e-userns-locked-{}", std::process::id());
    let in_containerd_ns = |args: &[&str]| {
        let out = std::process::Command::new("nsenter").args(["-t", &containerd, "-m", "--"]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    in_containerd_ns(&["mkdir", "-p", &src]);
    in_containerd_ns(&["mount", "-t", "tmpfs", "-o", "nosuid,nodev,noexec,size=64k", "tmpfs", &src]);
    let bind = |s: &mut serde_json::Value| {
        s["mounts"].as_array_mut().unwrap().push(serde_json::json!({"destination": "/run/locked", "type": "bind", "source": src, "options": ["rbind", "ro"]}))
    };
    let ours = std::panic::catch_unwind(|| probe(RUNTIME, "e2e-userns-locked-ours", bind));
    in_containerd_ns(&["umount", &src]);
    in_containerd_ns(&["rmdir", &src]);
    let ours = ours.expect("ours runs");
    assert_eq!(field(&ours, "uid_map"), "0 100000 65536");
}

/// What CRI specs add: a cgroup namespace (made inside the user namespace, after the cgroup
/// is joined) and a read-only `cgroup` mount, plus a sysctl of the container's own network
/// namespace.
#[test]
fn a_cgroup_namespace_and_mount_inside_the_user_namespace_match_runc() {
    let cri = |s: &mut serde_json::Value| {
        s["linux"]["namespaces"].as_array_mut().unwrap().push(serde_json::json!({"type": "cgroup"}));
        s["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_unprivileged_port_start": "0"});
        s["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]
        }));
    };
    let ours = probe(RUNTIME, "e2e-userns-cgns-ours", cri);
    let runc = probe(RUNC, "e2e-userns-cgns-runc", cri);
    assert_eq!(ours, runc, "ours vs runc");
}

/// A pod's way: a sandbox container makes the user and network namespaces, another one joins
/// both by path and makes its own mount, pid, ipc and uts namespaces inside that user
/// namespace. Both runtimes join the same sandbox (ours).
#[test]
fn a_user_namespace_joined_by_path_matches_runc() {
    let sandbox = "e2e-userns-join-sandbox";
    let s = spec(sandbox, "rootfs-pause", &["/pause"], |_| {});
    let r = run_spec(RUNTIME, sandbox, &s, true);
    assert_eq!(r.code, 0, "{r:?}");
    let pid = wait_status(sandbox, "RUNNING", 10);
    let join = |s: &mut serde_json::Value| {
        for ns in s["linux"]["namespaces"].as_array_mut().unwrap() {
            match ns["type"].as_str().unwrap() {
                "user" => ns["path"] = serde_json::json!(format!("/proc/{pid}/ns/user")),
                "network" => ns["path"] = serde_json::json!(format!("/proc/{pid}/ns/net")),
                _ => {}
            }
        }
    };
    let ours = std::panic::catch_unwind(|| probe(RUNTIME, "e2e-userns-join-ours", join));
    let runc = std::panic::catch_unwind(|| probe(RUNC, "e2e-userns-join-runc", join));
    let sandbox_userns = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    // And a long-lived joiner, to compare namespaces from the host: the sandbox's user and
    // network namespace, a mount namespace of its own.
    let joiner = "e2e-userns-join-pause";
    let s = spec(joiner, "rootfs-pause", &["/pause"], join);
    let r = run_spec(RUNTIME, joiner, &s, true);
    let joined = (r.code == 0).then(|| {
        let jpid = wait_status(joiner, "RUNNING", 10);
        let ns = |p: u32, n: &str| std::fs::read_link(format!("/proc/{p}/ns/{n}")).unwrap();
        (ns(jpid, "user") == ns(pid, "user"), ns(jpid, "net") == ns(pid, "net"), ns(jpid, "mnt") == ns(pid, "mnt"))
    });
    if r.code == 0 {
        kill_and_remove(joiner);
    }
    kill_and_remove(sandbox);
    assert_eq!(joined, Some((true, true, false)), "joiner {r:?}: (same user ns, same net ns, same mount ns)");
    let (ours, runc) = (ours.expect("ours"), runc.expect("runc"));
    assert_eq!(ours, runc, "ours vs runc");
    assert_eq!(field(&ours, "uid_map"), "0 100000 65536");
    assert_eq!(field(&ours, "pid"), "1", "a pid namespace of its own");
    assert!(sandbox_userns.to_string_lossy().starts_with("user:["), "{sandbox_userns:?}");
    assert_ne!(sandbox_userns, std::fs::read_link("/proc/self/ns/user").unwrap(), "the sandbox has a user namespace of its own");
}

/// `ctr task exec` into a container with a user namespace (as `kubectl exec` into a pod with
/// `hostUsers: false`): the exec'd probe sees what runc's sees, the container's mappings,
/// root and capabilities over the namespace. Also into a wasm container (whose process is
/// not dumpable, so its namespaces must be opened before entering its user namespace), and
/// a wasm module as the exec'd process.
#[test]
fn exec_enters_the_user_namespace_like_runc() {
    let keys = ["uid", "gid", "uid_map", "gid_map", "groups", "CapEff", "CapBnd", "NoNewPrivs", "Seccomp", "fds"];
    let mut reports = Vec::new();
    for (runtime, id, init) in [
        (RUNTIME, "e2e-userns-exec-ours", &["/pause"][..]),
        (RUNC, "e2e-userns-exec-runc", &["/pause"][..]),
        (RUNTIME, "e2e-userns-exec-wasm", &["/sleep.wasm", "60"][..]),
    ] {
        let s = spec(id, "rootfs-tools", init, |_| {});
        let r = run_spec(runtime, id, &s, true);
        assert_eq!(r.code, 0, "{runtime} {id}: {r:?}");
        let pid = wait_status(id, "RUNNING", 10);
        let e = ctr(&["tasks", "exec", "--exec-id", "probe1", id, "/probe"]);
        let w = ctr(&["tasks", "exec", "--exec-id", "echo1", id, "/echo.wasm", "in", "userns"]);
        let userns = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
        kill_and_remove(id);
        assert_eq!(e.code, 0, "{runtime} {id}: exec of the probe: {e:?}");
        let report: Vec<String> = e.stdout.lines().map(str::to_string).collect();
        let pid_seen: i32 = field(&report, "pid").parse().unwrap();
        assert!(pid_seen > 1, "{id}: the exec'd process is not in the container's pid namespace: pid {pid_seen}");
        assert_ne!(userns, std::fs::read_link("/proc/self/ns/user").unwrap(), "{id}: the container has no user namespace of its own");
        if runtime == RUNTIME {
            assert_eq!(w.code, 0, "{id}: exec of a wasm module: {w:?}");
            assert!(w.stdout.starts_with("argv[0]=/echo.wasm\nargv[1]=in\nargv[2]=userns\n"), "{w:?}");
        }
        reports.push(keys.map(|k| format!("{k}={}", field(&report, k))));
    }
    assert_eq!(reports[0], reports[1], "exec: ours vs runc");
    assert_eq!(reports[2], reports[0], "exec into a wasm container vs into a native one");
    assert_eq!(field(&reports[0].to_vec(), "uid_map"), "0 100000 65536");
    assert_eq!(field(&reports[0].to_vec(), "uid"), "0");
}
