//! The daemon binary as the AOT compile helper (`aot-compile`): the cache's real compile path
//! in the shim, privilege drop included when run as root.

use wshim_engine::aot::{AotCache, Artifact, CompileIn, CompileOptions, HELPER_TIMEOUT};
use wshim_engine::{load_module_bytes, run_module, Outcome};

#[test]
fn the_daemon_binary_compiles_for_the_cache() {
    let module = wat::parse_str(
        r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start") (call $exit (i32.const 33))))"#,
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut cache = AotCache::new(d.path().join("aot"), 1 << 30, CompileOptions::default());
    cache.compile_in = CompileIn::Helper { exe: env!("CARGO_BIN_EXE_containerd-shim-wasmedge-v1-daemon").into(), timeout: HELPER_TIMEOUT };
    let a = cache.get_or_compile(&module).unwrap();
    let Artifact::Compiled(path) = &a else { panic!("{a:?}") };
    let bytes = std::fs::read(path).unwrap();
    let loaded = load_module_bytes(&bytes, std::path::Path::new("/m.wasm"), "_start").unwrap();
    assert_eq!(run_module(loaded, &["m".into()], &[], &[]).unwrap(), Outcome::Exited(33));
    assert_eq!(cache.get_or_compile(&module).unwrap(), Artifact::Hit(path.clone()));
}
