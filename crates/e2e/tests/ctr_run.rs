//! `ctr run` of wasm images through containerd-shim-wasmedge-v1, end to end.

use wshim_e2e::*;

#[test]
fn hello_world_output() {
    let r = run_wasm("hello", "e2e-hello", &[], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "Hello from WebAssembly on wasmedge-shim!\n");
}

#[test]
fn args_and_env_reach_wasi() {
    let r = run_wasm("echo", "e2e-echo", &["--env", "GREETING=hi there"], &["/echo.wasm", "one", "two words"]);
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(&lines[..3], ["argv[0]=/echo.wasm", "argv[1]=one", "argv[2]=two words"], "{r:?}");
    assert!(lines.contains(&"env=GREETING=hi there"), "{r:?}");
    assert!(lines.iter().any(|l| l.starts_with("env=PATH=")), "the image's env too: {r:?}");
}

#[test]
fn file_read_from_the_image() {
    let r = run_wasm("cat", "e2e-cat", &[], &["/cat.wasm", "/data/message.txt"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "this file was read from the image's layer\n");
}

#[test]
fn relative_paths_follow_process_cwd() {
    // Relative paths resolve against --cwd, absolute ones against the root, in the same
    // process. (The first version preopened both / and ., which wasi-libc cannot tell apart:
    // every path went to one of the two, which one varying with WasmEdge's heap.) Runs a few
    // times, because that failure came and went.
    const MSG: &str = "this file was read from the image's layer\n";
    for i in 0..3 {
        let r = run_wasm("cat", &format!("e2e-cwd-{i}"), &["--cwd", "/data"], &["/cat.wasm", "message.txt", "/srv/other/message.txt", "/data/message.txt"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.stdout, MSG.repeat(3), "{r:?}");
    }
    let r = run_wasm("cat", "e2e-cwd-root", &[], &["/cat.wasm", "/srv/other/message.txt", "message.txt"]);
    assert_ne!(r.code, 0, "message.txt is not in /: {r:?}");
    assert_eq!(r.stdout, MSG, "the absolute path was read: {r:?}");
    assert!(r.stderr.contains("message.txt"), "{r:?}");
}

#[test]
fn proc_exit_42_is_the_exit_code() {
    let r = run_wasm("exit42", "e2e-exit42", &[], &[]);
    assert_eq!(r.code, 42, "{r:?}");
}

#[test]
fn trap_exits_non_zero_with_the_message_on_stderr() {
    let r = run_wasm("trap", "e2e-trap", &[], &[]);
    assert_eq!(r.code, 134, "{r:?}");
    assert!(r.stderr.contains("about to trap"), "{r:?}");
    // The program's output only: no runtime log lines in it.
    assert!(!r.stdout.contains("[error]"), "{r:?}");
    assert!(r.stderr.contains("wasm trap in /trap.wasm: unreachable"), "{r:?}");
    // And in the shim's log, which containerd copies into its own.
    let log = std::fs::read_to_string("/run/wshim/containerd.log").expect("containerd log");
    assert!(
        log.lines().any(|l| l.contains("level=error") && l.contains(r#"id="e2e-trap""#) && l.contains("wasm trap in /trap.wasm: unreachable")),
        "no trap message for e2e-trap in the containerd log"
    );
}

#[test]
fn custom_function_entrypoint() {
    let r = run_wasm("func", "e2e-func", &[], &["/func.wasm#foo"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "foo called\n");
    let r = run_wasm("func", "e2e-func-start", &[], &[]);
    assert_eq!(r.stdout, "start\n", "{r:?}");
}

#[test]
fn missing_entrypoint_fails_create_with_a_clear_error() {
    let r = run_wasm("missing", "e2e-missing", &[], &[]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("failed to create shim task"), "{r:?}");
    assert!(r.stderr.contains("process.args[0] \"/not-there.wasm\": no such file"), "{r:?}");
}

#[test]
fn missing_function_fails_create_with_a_clear_error() {
    let r = run_wasm("func", "e2e-nofunc", &[], &["/func.wasm#nope"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("no exported function \"nope\""), "{r:?}");
}

#[test]
fn invalid_module_fails_create_with_a_clear_error() {
    let r = run_wasm("invalid", "e2e-invalid", &[], &[]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("failed to create shim task"), "{r:?}");
    assert!(r.stderr.contains("/invalid.wasm: not a valid wasm module"), "{r:?}");
}

#[test]
fn unknown_import_fails_start_with_a_clear_error() {
    // The module loads and validates (Create succeeds); instantiating it, which the shim does
    // between Create and Start, fails: the Start call reports it, naming what is missing.
    let r = run_wasm("badimport", "e2e-badimport", &[], &[]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("start: container setup failed at instantiate: /badimport.wasm:"), "{r:?}");
    assert!(r.stderr.contains("not provided: env.not_provided"), "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
}

#[test]
fn a_start_function_runs_before_the_entrypoint() {
    let r = run_wasm("startfn", "e2e-startfn", &[], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "init\nmain\n", "{r:?}");
}

#[test]
fn the_module_runs_sandboxed() {
    // The module reads the kernel's view of itself through WASI: it is pid 1 of its own pid
    // namespace, in the cgroup ctr asked for, with the hostname unset to the container id.
    let r = run_wasm("cat", "e2e-sandbox", &[], &["/cat.wasm", "/proc/self/stat", "/proc/self/cgroup", "/proc/self/status"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("1 ("), "pid 1 in its namespace: {r:?}");
    assert!(r.stdout.lines().any(|l| l.ends_with(":memory:/default/e2e-sandbox")), "in its own cgroup: {r:?}");
    let cap_bnd = r.stdout.lines().find(|l| l.starts_with("CapBnd:")).expect("CapBnd line");
    assert_ne!(cap_bnd.split_whitespace().nth(1), Some("000001ffffffffff"), "capabilities are bounded: {cap_bnd}");
}

#[test]
fn wasm_variant_annotation_refuses_a_native_entrypoint() {
    let rootfs = bundles().join("native/rootfs");
    let r = run_rootfs(RUNTIME, &rootfs, "e2e-compat-native", &["--annotation", "module.wasm.image/variant=compat"], &["/hello"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("is not a wasm module") && r.stderr.contains("module.wasm.image/variant=compat"), "{r:?}");
}

#[test]
fn native_program_runs_through_the_same_runtime() {
    let rootfs = bundles().join("native/rootfs");
    let r = run_rootfs(RUNTIME, &rootfs, "e2e-native", &["--annotation", "module.wasm.image/variant=compat-smart"], &["/hello"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "Hello from a native program!\n");
}

#[test]
fn front_binary_does_not_load_wasmedge() {
    require_env();
    let front = repo().join("target/env/release/containerd-shim-wasmedge-v1");
    let out = std::process::Command::new("ldd").arg(&front).output().expect("ldd");
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ldd {}: {libs}", front.display());
    assert!(!libs.contains("wasmedge") && !libs.contains("LLVM"), "the front binary links WasmEdge: {libs}");
    let daemon = repo().join("target/env/release/containerd-shim-wasmedge-v1-daemon");
    let out = std::process::Command::new("ldd").arg(&daemon).output().expect("ldd");
    assert!(String::from_utf8_lossy(&out.stdout).contains("libwasmedge"), "the daemon preloads WasmEdge");
}

#[test]
fn the_cri_runtime_handler_wasmedge_is_registered() {
    // Debian 13 has no crictl; the CRI plugin logs the runtimes it loaded at start.
    require_env();
    let log = std::fs::read_to_string("/run/wshim/containerd.log").expect("containerd log");
    let cri = log.lines().find(|l| l.contains("Start cri plugin with config")).expect("the CRI plugin started");
    assert!(cri.contains("wasmedge:{Type:io.containerd.wasmedge.v1"), "no wasmedge handler in: {cri}");
}
