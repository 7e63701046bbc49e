//! The node's AOT compile cache, through the real containerd: the daemon compiles a module
//! at its first Create, later Creates reuse the entry, a broken entry is replaced, a module
//! shipped compiled (`wasm-oci --aot`) is not compiled again, and compiled code still stops
//! on SIGTERM. The daemon's cache is the default one (`WSHIM_AOT_DIR` unset).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wshim_e2e::*;

const AOT_DIR: &str = "/var/lib/wasmedge-shim/aot";
const HELLO: &str = "Hello from WebAssembly on wasmedge-shim!\n";

fn sha256_of(module: &str) -> String {
    let bytes = std::fs::read(bundles().join(module)).expect("test module: `make bundles` builds it");
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache's compiled entries (not lock files) for the module with this sha256.
fn entries_of(sha: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(AOT_DIR) else { return Vec::new() };
    rd.map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(sha) && !n.ends_with(".lock")
        })
        .collect()
}

/// The shim's log lines (copied into containerd's log) for container `id`.
fn log_of(id: &str) -> Vec<String> {
    let log = std::fs::read_to_string("/run/wshim/containerd.log").expect("containerd log");
    let field = format!(r#"id="{id}""#);
    log.lines().filter(|l| l.contains(&field)).map(str::to_string).collect()
}

fn ran_compiled(id: &str, hit: bool) -> bool {
    log_of(id).iter().any(|l| l.contains("AOT: running the compiled module") && l.contains(&format!(r#"hit="{hit}""#)))
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

#[test]
fn first_run_compiles_the_next_reuses_and_a_broken_entry_is_replaced() {
    require_env();
    let sha = sha256_of("hello.wasm");
    for e in entries_of(&sha) {
        std::fs::remove_file(e).unwrap();
    }

    let r = run_wasm("hello", "e2e-aot-hello-1", &[], &[]);
    assert_eq!((r.code, r.stdout.as_str()), (0, HELLO), "{r:?}");
    let entries = entries_of(&sha);
    assert_eq!(entries.len(), 1, "one entry for hello.wasm ({sha}) in {AOT_DIR}: {entries:?}");
    assert!(ran_compiled("e2e-aot-hello-1", false), "{:#?}", log_of("e2e-aot-hello-1"));
    let ino = inode(&entries[0]);

    let r = run_wasm("hello", "e2e-aot-hello-2", &[], &[]);
    assert_eq!((r.code, r.stdout.as_str()), (0, HELLO), "{r:?}");
    assert!(ran_compiled("e2e-aot-hello-2", true), "{:#?}", log_of("e2e-aot-hello-2"));
    assert_eq!(entries_of(&sha), entries, "the same entry");
    assert_eq!(inode(&entries[0]), ino, "not rewritten");

    // A broken entry: detected at Create, removed and compiled again; the output is right.
    std::fs::write(&entries[0], b"\0asm\x01\0\0\0broken").unwrap();
    let r = run_wasm("hello", "e2e-aot-hello-3", &[], &[]);
    assert_eq!((r.code, r.stdout.as_str()), (0, HELLO), "{r:?}");
    let log = std::fs::read_to_string("/run/wshim/containerd.log").unwrap();
    assert!(
        log.lines().any(|l| l.contains("level=warn") && l.contains("AOT cache entry is broken: removed") && l.contains(&sha)),
        "no warning about the broken entry of {sha}"
    );
    assert!(ran_compiled("e2e-aot-hello-3", false), "{:#?}", log_of("e2e-aot-hello-3"));
    assert_ne!(std::fs::read(&entries[0]).unwrap(), b"\0asm\x01\0\0\0broken");
}

#[test]
fn a_compiled_busy_loop_still_stops_on_sigterm_with_143() {
    let r = signal_running("loop", "e2e-aot-term-loop", "SIGTERM");
    assert_eq!(r.code, 143, "{r:?}");
    assert_eq!(r.stdout, "looping\n");
    assert!(log_of("e2e-aot-term-loop").iter().any(|l| l.contains("AOT: running the compiled module")), "{:#?}", log_of("e2e-aot-term-loop"));
    assert_eq!(entries_of(&sha256_of("loop.wasm")).len(), 1);
}

#[test]
fn an_image_shipped_compiled_is_not_compiled_again() {
    let r = run_wasm("hello-aot", "e2e-aot-precompiled", &[], &[]);
    assert_eq!((r.code, r.stdout.as_str()), (0, HELLO), "{r:?}");
    let log = log_of("e2e-aot-precompiled");
    assert!(log.iter().any(|l| l.contains("AOT: module is precompiled")), "{log:#?}");
    assert!(!log.iter().any(|l| l.contains("AOT: running the compiled module")), "{log:#?}");
}
