//! The in-process path of one container, without the fork: bundle (config.json) → plan →
//! module loaded and validated → WASI instantiated → `_start` entered and returned.
//! Also each stage alone, to see where the time goes.
//!
//! `create_to_start/{interpreted,aot_cached}/{entered,compute}`: the same path as the shim
//! runs it at Create and Start, with the module interpreted or with its AOT artifact in a
//! warm node cache (daemon side: read, hash, find and check the entry; container side: load
//! the artifact). `entered` returns at once; `compute` runs a 1M-step integer loop.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use wshim_engine::aot::{AotCache, CompileOptions};
use wshim_engine::{attach_aot, container_preopens, load_module, load_preferring_artifact, run_module, Outcome};
use wshim_oci::{detect, Bundle, Entrypoint};
use wshim_sandbox::{Plan, Stdio};

/// `_start` returns at once: the bench measures reaching it, not the program.
const ENTERED: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// 1M steps of an xorshift mix, then proc_exit(result & 0x7f | 1) so the work is not dead.
const COMPUTE: &str = r#"(module
    (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
    (memory (export "memory") 1)
    (func (export "_start") (local $i i32) (local $x i32)
        (local.set $x (i32.const 2463534242))
        (loop $l
            (local.set $x (i32.xor (local.get $x) (i32.shl (local.get $x) (i32.const 13))))
            (local.set $x (i32.xor (local.get $x) (i32.shr_u (local.get $x) (i32.const 17))))
            (local.set $x (i32.xor (local.get $x) (i32.shl (local.get $x) (i32.const 5))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000))))
        (call $exit (i32.or (i32.and (local.get $x) (i32.const 0x7f)) (i32.const 1)))))"#;

fn bundle(dir: &Path) {
    bundle_of(dir, "entered", ENTERED)
}

fn bundle_of(dir: &Path, name: &str, wat: &str) {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join(format!("{name}.wasm")), wat::parse_str(wat).unwrap()).unwrap();
    // The shape of the spec ctr generates, trimmed to what the path reads.
    let cfg = serde_json::json!({
        "ociVersion": "1.1.0",
        "process": {"args": [format!("/{name}.wasm")], "cwd": "/", "user": {"uid": 0, "gid": 0},
                    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
                  "cgroupsPath": "/default/bench"}
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

fn whole_path(dir: &Path) {
    let b = Bundle::load(dir).unwrap();
    let entry = detect(&b).unwrap();
    let plan = Plan::from_bundle("bench", &b, entry, Stdio::default()).unwrap();
    let Entrypoint::Wasm { module, func } = &plan.entry else { panic!("not wasm") };
    // Outside a container the module is at its host path.
    let host = b.rootfs.join(module.strip_prefix("/").unwrap());
    let loaded = load_module(&host, func).unwrap();
    let out = run_module(loaded, &plan.args, &plan.env, &container_preopens(Path::new("/"), &plan.cwd)).unwrap();
    assert_eq!(out, Outcome::Exited(0));
}

/// Create → `_start` returned, as the shim does it; with `cache`, through the AOT cache.
fn create_to_start(dir: &Path, cache: Option<&AotCache>) -> Outcome {
    let b = Bundle::load(dir).unwrap();
    let entry = detect(&b).unwrap();
    let mut plan = Plan::from_bundle("bench", &b, entry, Stdio::default()).unwrap();
    // The daemon, before the clone.
    if let Some(cache) = cache {
        attach_aot(cache, &mut plan);
        assert!(plan.payload_file.is_some(), "the artifact is cached");
    }
    // The container: the child opens the payload file, prepare loads it.
    let Entrypoint::Wasm { module, func } = &plan.entry else { panic!("not wasm") };
    let host = b.rootfs.join(module.strip_prefix("/").unwrap());
    let artifact = plan.payload_file.as_ref().map(std::fs::File::open);
    let loaded = load_preferring_artifact(artifact, &host, func).unwrap();
    run_module(loaded, &plan.args, &plan.env, &container_preopens(Path::new("/"), &plan.cwd)).unwrap()
}

fn aot_benches(c: &mut Criterion) {
    let d = tempfile::tempdir().unwrap();
    let cache = AotCache::new(d.path().join("aot"), 1 << 30, CompileOptions::default());
    let mut g = c.benchmark_group("create_to_start");
    g.sample_size(20);
    for (name, wat) in [("entered", ENTERED), ("compute", COMPUTE)] {
        let dir = d.path().join(name);
        bundle_of(&dir, name, wat);
        // Warm the cache, and check both ways give the same result.
        assert_eq!(create_to_start(&dir, Some(&cache)), create_to_start(&dir, None));
        g.bench_function(format!("interpreted/{name}"), |b| b.iter(|| create_to_start(&dir, None)));
        g.bench_function(format!("aot_cached/{name}"), |b| b.iter(|| create_to_start(&dir, Some(&cache))));
    }
    // The daemon's share of a hit: read and hash the module, find the entry, check it loads.
    let dir = d.path().join("entered");
    g.bench_function("aot_hit_daemon_side/entered", |b| {
        b.iter(|| {
            let bundle = Bundle::load(&dir).unwrap();
            let entry = detect(&bundle).unwrap();
            let mut plan = Plan::from_bundle("bench", &bundle, entry, Stdio::default()).unwrap();
            attach_aot(&cache, &mut plan);
            plan
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let d = tempfile::tempdir().unwrap();
    bundle(d.path());
    let module = d.path().join("rootfs/entered.wasm");
    c.bench_function("bundle_to_start_entered", |b| b.iter(|| whole_path(d.path())));
    c.bench_function("bundle_to_plan", |b| {
        b.iter(|| {
            let bundle = Bundle::load(d.path()).unwrap();
            let entry = detect(&bundle).unwrap();
            Plan::from_bundle("bench", &bundle, entry, Stdio::default()).unwrap()
        })
    });
    c.bench_function("load_and_validate_module", |b| b.iter(|| load_module(&module, "_start").unwrap()));
    c.bench_function("instantiate_and_run", |b| {
        b.iter_batched(
            || load_module(&module, "_start").unwrap(),
            |m| run_module(m, &["entered".into()], &[], &["/:/".into()]).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(in_process, benches, aot_benches);
criterion_main!(in_process);
