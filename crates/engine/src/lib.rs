//! WasmEdge as the payload of a container: load and validate a module (at Create), then
//! instantiate WASI with the process's args, env and the root filesystem, and call the
//! entrypoint (at Start). Knows nothing of Linux setup: it runs inside a finished container.

pub mod aot;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use log::{info, warn};

use wasmedge_sdk::error::{CoreCommonError, CoreError, WasmEdgeError};
use wasmedge_sdk::vm::SyncInst;
use wasmedge_sdk::wasi::WasiModule;
use wasmedge_sdk::{ExternalInstanceType, Module, Store, Vm};
use wshim_oci::Entrypoint;
use wshim_sandbox::{Payload, Plan};

/// The exit status a trap gives, as if the program had died of SIGABRT (128 + 6): a wasm
/// trap is an abnormal end, like a native program's abort().
pub const TRAP_EXIT_CODE: i32 = 134;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: not a valid wasm module: {message}")]
    InvalidModule { path: PathBuf, message: String },
    #[error("{path}: no exported function {func:?} (process.args[0] names `{func}` as the entrypoint)")]
    NoSuchFunction { path: PathBuf, func: String },
    #[error("{path}: export {func:?} is not a function")]
    NotAFunction { path: PathBuf, func: String },
    #[error("the process is not a wasm module")]
    NotWasm,
    #[error("WASI setup: {0}")]
    Wasi(String),
}

/// A loaded, validated module and the function to call.
pub struct LoadedModule {
    module: Module,
    func: String,
    /// Whether the module declares a start function, which instantiating it runs.
    starts: bool,
}

/// Loads and validates the module at `path` and checks that `func` is an exported function.
pub fn load_module(path: &Path, func: &str) -> Result<LoadedModule, EngineError> {
    let module = Module::from_file(None, path).map_err(|e| EngineError::InvalidModule { path: path.to_path_buf(), message: e.to_string() })?;
    let starts = std::fs::File::open(path).map_or(true, |f| declares_start(&mut std::io::BufReader::new(f)));
    with_entrypoint(module, path, func, starts)
}

/// Loads `bytes` (a module, or its AOT-compiled universal wasm) as the module at `path`, and
/// checks that `func` is an exported function.
pub fn load_module_bytes(bytes: &[u8], path: &Path, func: &str) -> Result<LoadedModule, EngineError> {
    let module = Module::from_bytes(None, bytes).map_err(|e| EngineError::InvalidModule { path: path.to_path_buf(), message: e.to_string() })?;
    with_entrypoint(module, path, func, declares_start(&mut std::io::BufReader::new(std::io::Cursor::new(bytes))))
}

/// Whether the wasm binary `r` declares a start function (section 8), which instantiation
/// runs: the module's own code. Reads the section headers only (an AOT universal wasm is a
/// module whose compiled code is one custom section more). What it cannot read counts as yes.
fn declares_start<R: Read + std::io::Seek>(r: &mut std::io::BufReader<R>) -> bool {
    const START: u8 = 8;
    fn byte(r: &mut impl Read) -> Option<u8> {
        let mut b = [0u8];
        r.read_exact(&mut b).ok().map(|()| b[0])
    }
    let mut head = [0u8; 8];
    if r.read_exact(&mut head).is_err() || head[..4] != *b"\0asm" {
        return true;
    }
    loop {
        let mut id = [0u8];
        match r.read(&mut id) {
            Ok(0) => return false,
            Ok(_) if id[0] == START => return true,
            Ok(_) => {}
            Err(_) => return true,
        }
        // The section's size: an unsigned LEB128 of at most 5 bytes.
        let mut size = 0u64;
        for shift in (0..35).step_by(7) {
            let Some(b) = byte(r) else { return true };
            size |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            if shift == 28 {
                return true;
            }
        }
        if r.seek_relative(size as i64).is_err() {
            return true;
        }
    }
}

/// Loads the compiled `artifact` of the module at `path` if it can be read and loaded, else the
/// module itself.
pub fn load_preferring_artifact(artifact: Option<std::io::Result<std::fs::File>>, path: &Path, func: &str) -> Result<LoadedModule, EngineError> {
    if let Some(Ok(mut f)) = artifact {
        let mut bytes = Vec::new();
        if f.read_to_end(&mut bytes).is_ok() {
            if let Ok(loaded) = load_module_bytes(&bytes, path, func) {
                return Ok(loaded);
            }
        }
    }
    load_module(path, func)
}

fn with_entrypoint(module: Module, path: &Path, func: &str, starts: bool) -> Result<LoadedModule, EngineError> {
    match module.get_export(func) {
        Some(ExternalInstanceType::Func(_)) => Ok(LoadedModule { module, func: func.to_string(), starts }),
        Some(_) => Err(EngineError::NotAFunction { path: path.to_path_buf(), func: func.to_string() }),
        None => Err(EngineError::NoSuchFunction { path: path.to_path_buf(), func: func.to_string() }),
    }
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Returned from the entrypoint (0) or called `proc_exit(code)`.
    Exited(u32),
    /// Trapped, or failed to instantiate.
    Trapped(String),
}

impl Outcome {
    /// The process exit status: `proc_exit`'s code as a native exit(3) would report it.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited(c) => (*c & 0xff) as i32,
            Outcome::Trapped(_) => TRAP_EXIT_CODE,
        }
    }
}

/// Instantiates WASI and the module, and calls its entrypoint. `preopens` are
/// `guest:host` directory pairs.
pub fn run_module(loaded: LoadedModule, args: &[String], env: &[String], preopens: &[String]) -> Result<Outcome, EngineError> {
    run(loaded, args, env, preopens, false, &mut |_| true).map(|o| o.expect("started: the gate always opens"))
}

/// [`run_module`] in a process that exits right after: the module's instance, its memory
/// and WASI's state are left to the process's exit instead of being torn down first (the
/// frees and unmaps would only cost the exit report time). `start` gates the module's own
/// code (see [`Payload::run`]): a module without a start function is instantiated first, and
/// `start` gets how that went; one with a start function is instantiated after `start`.
/// `Ok(None)`: `start` said no, nothing of the module ran.
pub fn run_module_then_exit(
    loaded: LoadedModule,
    args: &[String],
    env: &[String],
    preopens: &[String],
    start: &mut dyn FnMut(Result<(), String>) -> bool,
) -> Result<Option<Outcome>, EngineError> {
    run(loaded, args, env, preopens, true, start)
}

fn run(
    loaded: LoadedModule,
    args: &[String],
    env: &[String],
    preopens: &[String],
    exiting: bool,
    start: &mut dyn FnMut(Result<(), String>) -> bool,
) -> Result<Option<Outcome>, EngineError> {
    // Instantiation runs a start function, the module's own code: only then is it left
    // until after `start`. Otherwise what fails before the entrypoint is called fails ahead.
    let ahead = !loaded.starts;
    if !ahead && !start(Ok(())) {
        return Ok(None);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    let pre: Vec<&str> = preopens.iter().map(String::as_str).collect();
    let mut wasi = match WasiModule::create(Some(args), Some(env), Some(pre)) {
        Ok(w) => w,
        Err(e) if ahead => {
            start(Err(EngineError::Wasi(e.to_string()).to_string()));
            return Ok(None);
        }
        Err(e) => return Err(EngineError::Wasi(e.to_string())),
    };
    let result = {
        let mut instances: HashMap<String, &mut dyn SyncInst> = HashMap::new();
        instances.insert(wasi.name().to_string(), wasi.as_mut());
        let store = match Store::new(None, instances) {
            Ok(s) => s,
            Err(e) if ahead => {
                start(Err(EngineError::Wasi(e.to_string()).to_string()));
                return Ok(None);
            }
            Err(e) => return Err(EngineError::Wasi(e.to_string())),
        };
        let mut vm = Vm::new(store);
        // With a start function, instantiation may trap or proc_exit too.
        let registered = vm.register_module(None, loaded.module.clone()).map(drop);
        let result = match registered {
            Err(e) if ahead => {
                drop(vm);
                let missing = unprovided_imports(&loaded.module, &wasi);
                let missing = if missing.is_empty() { String::new() } else { format!(" (not provided: {})", missing.join(", ")) };
                start(Err(format!("{e}{missing}")));
                return Ok(None);
            }
            Ok(()) if ahead && !start(Ok(())) => return Ok(None),
            r => r.and_then(|()| vm.run_func(None, &loaded.func, [])).map(drop),
        };
        if exiting {
            std::mem::forget(vm);
        }
        result
    };
    let outcome = match result {
        Ok(_) => Outcome::Exited(wasi.exit_code()),
        Err(e) if matches!(*e, WasmEdgeError::Core(CoreError::Common(CoreCommonError::Terminated))) => Outcome::Exited(wasi.exit_code()),
        Err(e) => Outcome::Trapped(e.to_string()),
    };
    if exiting {
        std::mem::forget(wasi);
    }
    Ok(Some(outcome))
}

/// The functions `module` imports that `wasi` does not provide, as `module.name`: what an
/// instantiation that failed on an unknown import missed. (Only functions: WASI exports no
/// memory, table or global.)
fn unprovided_imports(module: &Module, wasi: &WasiModule) -> Vec<String> {
    use wasmedge_sdk::AsInstance;
    let provided: std::collections::HashSet<String> = wasi.as_ref().func_names().unwrap_or_default().into_iter().collect();
    module
        .imports()
        .iter()
        .filter(|i| i.module_name() != wasi.name() || !(matches!(i.ty(), Ok(ExternalInstanceType::Func(_))) && provided.contains(i.name().as_ref())))
        .map(|i| format!("{}.{}", i.module_name(), i.name()))
        .collect()
}

/// The directories a container's module sees: absolute paths resolve against the container's
/// root, relative ones against `process.cwd`.
///
/// wasi-libc, which C and Rust WASI programs resolve paths with, strips a path's leading `/`
/// and `./` and then takes the preopen with the longest matching name. To it `/data/x` and
/// `data/x` are the same path, and preopens named `/` and `.` are both named "". Of two equal
/// names it takes the higher descriptor, and WasmEdge numbers preopens in an order of its own
/// (it sorts them by their address in memory), so `/` and `.` together resolve every path
/// against one of the two, which one changing from run to run. So:
/// - with `process.cwd` `/`: the root alone;
/// - otherwise `.` is the working directory and the only preopen named "", and each top-level
///   directory of `root` is preopened under its own name, which is longer: `/etc/x` goes to
///   the root's /etc, `x` to the working directory.
///
/// What this cannot give, short of a libc that knows its working directory: an absolute
/// path to a file at the top level of the root resolves under the working directory, and a
/// relative path whose first component names a top-level directory goes to that directory.
/// `root` is `/` in the container (a parameter for tests).
pub fn container_preopens(root: &Path, cwd: &Path) -> Vec<String> {
    if cwd == Path::new("/") {
        return vec![format!("/:{}", root.display())];
    }
    let mut top: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        // A directory, or a link to one, that this process may open: WasmEdge prints an error
        // on the container's stderr for a preopen it cannot open.
        .filter(|e| e.path().is_dir() && nix::unistd::access(&e.path(), nix::unistd::AccessFlags::R_OK).is_ok())
        .filter_map(|e| e.file_name().into_string().ok())
        // WasmEdge splits a preopen at its first ':'.
        .filter(|name| !name.contains(':'))
        .collect();
    top.sort();
    let mut p: Vec<String> = top.iter().map(|name| format!("/{name}:{}", root.join(name).display())).collect();
    p.push(format!(".:{}", cwd.display()));
    p
}

/// WasmEdge as a [`Payload`] of the sandbox.
///
/// In the fork server it keeps an AOT artifact that it was asked to run twice in a row loaded
/// and validated ([`Payload::preload`]): the next container of that module, cloned from the
/// fork server, finds it in its own copy of memory and skips loading it (the prepare stage
/// of `setup_us` went from 250-480 µs to about 20 µs for hello.wasm). Twice, because holding a
/// module costs the fork server about 0.4 MiB, which a pod that runs one long-lived container
/// would pay for nothing. A new pod's fork server starts with the module that the node fork
/// server keeps for new pods ([`preload_for_new_pods`]), if any. The artifact is recognised
/// by its path and file: the container opens the plan's artifact as before and uses the
/// preloaded module only if it is the same path and the same file (device, inode and size),
/// and the module's function the same. (Not the modification time: a cache hit refreshes it
/// for the LRU order. The cache names entries by the module's sha256 and replaces them only
/// by rename, so the same path and inode mean the same contents.)
pub struct WasmEdgePayload {
    preloaded: std::cell::RefCell<Option<Preloaded>>,
}

impl Default for WasmEdgePayload {
    /// In a process forked from the node fork server (a pod's daemon), with the module it
    /// kept for new pods; the process's copy of it is taken.
    fn default() -> WasmEdgePayload {
        // WasmEdge logs to the process's stdout, which in a container is the program's output
        // (a trap's log lines would land in the data a user pipes on). What goes wrong is
        // reported on stderr and in the shim's log instead (`run`, and Failed). Done here, in
        // the process the fork server is forked from: its logger (spdlog's registry) is made
        // once, not again in every container process.
        wasmedge_sdk::log::LogManager::log_off();
        WasmEdgePayload { preloaded: std::cell::RefCell::new(FOR_NEW_PODS.with(|p| p.borrow_mut().take())) }
    }
}

thread_local! {
    /// The node fork server's module for new pods ([`preload_for_new_pods`]). Its forks
    /// inherit their copy (the main thread's), which their first payload takes.
    static FOR_NEW_PODS: std::cell::RefCell<Option<Preloaded>> = const { std::cell::RefCell::new(None) };
}

/// Artifacts bigger than this are not kept loaded for new pods: the node fork server would
/// hold them for as long as they stay the most recent.
pub const NEW_POD_PRELOAD_MAX_BYTES: u64 = 16 << 20;

/// Run by the node fork server before it forks a standby: keeps the AOT cache's most recently
/// used entry loaded, at `_start`, so that the first container of the next pod finds it loaded
/// like a pod's later containers do (the "prepare" stage of a new pod's first Create was
/// 350-520 µs, and about 20 µs preloaded). The most recent module is the best guess for the
/// next pod; unlike a pod's fork server, no "twice" rule: every daemon and fork server forked
/// from the node server shares its copy. A wrong guess costs nothing but the load here: the
/// container checks the file and function, and loads its own module otherwise.
pub fn preload_for_new_pods(cache: &aot::AotCache) {
    const FUNC: &str = "_start";
    let keep = |p: Option<Preloaded>| FOR_NEW_PODS.with(|c| *c.borrow_mut() = p);
    let Some(path) = cache.most_recent() else { return keep(None) };
    let Ok(f) = std::fs::File::open(&path) else { return keep(None) };
    let Some(file) = FileId::of(&f) else { return keep(None) };
    if FOR_NEW_PODS.with(|c| c.borrow().as_ref().is_some_and(|p| p.is(&path, file, FUNC))) {
        return;
    }
    // The old one goes first: two modules are never held at once.
    keep(None);
    if file.size > NEW_POD_PRELOAD_MAX_BYTES {
        return;
    }
    if let Ok(loaded) = Preloaded::load(f, &path, file, FUNC, &path) {
        keep(loaded);
    }
}

struct Preloaded {
    path: PathBuf,
    file: FileId,
    func: String,
    /// None: seen once, not loaded.
    module: Option<LoadedModule>,
}

impl Preloaded {
    /// The artifact open as `f` (the file `file` at `path`), loaded and validated for `func`;
    /// `module` names it in errors. `Ok(None)`: it did not load (that is left to the
    /// container, which reports why); `Err`: it could not be read.
    fn load(mut f: std::fs::File, path: &Path, file: FileId, func: &str, module: &Path) -> std::io::Result<Option<Preloaded>> {
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(load_module_bytes(&bytes, module, func).ok().map(|m| Preloaded { path: path.to_path_buf(), file, func: func.into(), module: Some(m) }))
    }

    /// Whether this is the artifact at `path`, the file `file`, run at `func`.
    fn is(&self, path: &Path, file: FileId, func: &str) -> bool {
        self.file == file && self.path == path && self.func == func
    }
}

/// What tells one file from another, or a cache entry from its replacement.
#[derive(PartialEq, Eq, Clone, Copy)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
}

impl FileId {
    fn of(f: &std::fs::File) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = f.metadata().ok()?;
        Some(FileId { dev: m.dev(), ino: m.ino(), size: m.size() })
    }
}

impl Payload for WasmEdgePayload {
    type Prepared = LoadedModule;

    /// `file` is the module's AOT artifact from the node's cache ([`attach_aot`]). It is only
    /// an optimisation: if it cannot be read or loaded, the plain module is loaded instead.
    fn prepare(&self, plan: &Plan, file: Option<std::io::Result<std::fs::File>>) -> Result<LoadedModule, String> {
        let Entrypoint::Wasm { module, func } = &plan.entry else { return Err(EngineError::NotWasm.to_string()) };
        if let (Some(Ok(f)), Some(path)) = (&file, &plan.payload_file) {
            let mut pre = self.preloaded.borrow_mut();
            if FileId::of(f).is_some_and(|id| pre.as_ref().is_some_and(|p| p.is(path, id, func) && p.module.is_some())) {
                // This process's copy of the fork server's module: ours to consume.
                return Ok(pre.take().and_then(|p| p.module).expect("checked"));
            }
        }
        load_preferring_artifact(file, module, func).map_err(|e| e.to_string())
    }

    fn unused_libraries(&self) -> &[&str] {
        // WasmEdge's AOT compiler. Containers run compiled or interpreted code; compiling
        // happens in the shim daemon (aot.rs), never in a container process.
        &["/libLLVM.so"]
    }

    fn preload(&self, plan: &Plan) {
        let (Entrypoint::Wasm { module, func }, Some(artifact)) = (&plan.entry, &plan.payload_file) else { return };
        let Ok(f) = std::fs::File::open(artifact) else { return };
        let Some(id) = FileId::of(&f) else { return };
        let mut pre = self.preloaded.borrow_mut();
        match pre.as_ref() {
            Some(p) if p.is(artifact, id, func) && p.module.is_some() => return,
            // The second time in a row: load it.
            Some(p) if p.is(artifact, id, func) => {}
            _ => {
                *pre = Some(Preloaded { path: artifact.clone(), file: id, func: func.clone(), module: None });
                return;
            }
        }
        if let Ok(loaded) = Preloaded::load(f, artifact, id, func, module) {
            *pre = loaded;
        }
    }

    fn run(&self, prepared: LoadedModule, plan: &Plan, start: &mut dyn FnMut(Result<(), String>) -> bool) -> Option<(i32, Option<String>)> {
        // The process exits with what this returns (child.rs).
        // What fails ahead of Start fails the Start call: name the module there.
        let mut start = |r: Result<(), String>| start(r.map_err(|e| format!("{}: {e}", plan.args[0])));
        match run_module_then_exit(prepared, &plan.args, &plan.env, &container_preopens(Path::new("/"), &plan.cwd), &mut start) {
            Ok(None) => None,
            Ok(Some(Outcome::Exited(c))) => Some((Outcome::Exited(c).exit_code(), None)),
            Ok(Some(Outcome::Trapped(msg))) | Err(EngineError::Wasi(msg)) => {
                let msg = format!("wasm trap in {}: {msg}", plan.args[0]);
                // The container's stderr: the user sees why it died.
                eprintln!("{msg}");
                Some((TRAP_EXIT_CODE, Some(msg)))
            }
            Err(e) => {
                eprintln!("{e}");
                Some((TRAP_EXIT_CODE, Some(e.to_string())))
            }
        }
    }
}

/// Gets the AOT artifact of `plan`'s module from `cache`, compiling it on a miss, and names
/// it in `plan.payload_file` for the container to load. Called by the daemon at Create,
/// before the container process is cloned. On any fault of the cache the plan is left as it
/// is (the module runs uncompiled) and a warning is logged.
///
/// A miss compiles synchronously, in this Create call: the daemon lives only as long as its
/// containers, so a background compile would often die with it (a `ctr run --rm` of a short
/// job would never get its module compiled), and a compile is paid once per node and module.
/// The price is a slower first Create of a big module; `wasm-oci --aot` avoids it by shipping
/// the artifact in the image.
pub fn attach_aot(cache: &aot::AotCache, plan: &mut Plan) {
    let Entrypoint::Wasm { module, .. } = &plan.entry else { return };
    let id = plan.id.as_str();
    let bytes = match read_in_root(&plan.rootfs, module) {
        Ok(b) => b,
        Err(e) => {
            warn!(id = id, module:% = module.display(), error:% = e; "AOT: cannot read the module; running it uncompiled");
            return;
        }
    };
    match cache.get_or_compile(&bytes) {
        Ok(aot::Artifact::Precompiled) => info!(id = id, module:% = module.display(); "AOT: module is precompiled"),
        Ok(a @ (aot::Artifact::Hit(_) | aot::Artifact::Compiled(_))) => {
            let hit = matches!(a, aot::Artifact::Hit(_));
            let path = a.path().expect("hit or compiled").to_path_buf();
            info!(id = id, module:% = module.display(), entry:% = path.display(), hit = hit; "AOT: running the compiled module");
            plan.payload_file = Some(path);
        }
        Err(e) => warn!(id = id, module:% = module.display(), error:% = e; "AOT cache fault; running the module uncompiled"),
    }
}

/// Reads `path` (a path inside the container) from `rootfs`, resolving symlinks as the
/// container would (never out of its root).
fn read_in_root(rootfs: &Path, path: &Path) -> std::io::Result<Vec<u8>> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let root = std::fs::File::open(rootfs)?;
    let rel = path.strip_prefix("/").unwrap_or(path);
    let how = OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC).resolve(ResolveFlag::RESOLVE_IN_ROOT);
    let fd = openat2(&root, rel, how)?;
    let mut bytes = Vec::new();
    std::fs::File::from(fd).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(dir: &Path, wat: &str) -> PathBuf {
        let p = dir.join("m.wasm");
        std::fs::write(&p, wat::parse_str(wat).unwrap()).unwrap();
        p
    }

    const EXIT: &str = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func (export "_start") (call $exit (i32.const 42)))
        (func (export "quiet"))
        (func (export "boom") unreachable)
        (global (export "g") i32 (i32.const 1)))"#;

    #[test]
    fn proc_exit_code_is_the_exit_code() {
        let d = tempfile::tempdir().unwrap();
        let p = module(d.path(), EXIT);
        let out = run_module(load_module(&p, "_start").unwrap(), &["m".into()], &[], &[]).unwrap();
        assert_eq!(out, Outcome::Exited(42));
        assert_eq!(out.exit_code(), 42);
        let out = run_module(load_module(&p, "quiet").unwrap(), &["m".into()], &[], &[]).unwrap();
        assert_eq!(out, Outcome::Exited(0));
    }

    #[test]
    fn a_start_function_is_found_in_modules_and_artifacts() {
        let d = tempfile::tempdir().unwrap();
        let starts = |wat: &str| {
            let p = module(d.path(), wat);
            let from_file = load_module(&p, "_start").unwrap().starts;
            let from_bytes = load_module_bytes(&std::fs::read(&p).unwrap(), &p, "_start").unwrap().starts;
            assert_eq!(from_file, from_bytes);
            from_file
        };
        assert!(!starts(EXIT));
        // Sections after the start section and a big one before it (a multi-byte size).
        let with_start = format!(
            r#"(module (memory 1) (func $init) (start $init) (func (export "_start")) (data (i32.const 0) "{}"))"#,
            "x".repeat(300)
        );
        assert!(starts(&with_start));
        let big_without = format!(r#"(module (memory 1) (func (export "_start")) (data (i32.const 0) "{}"))"#, "x".repeat(70_000));
        assert!(!starts(&big_without));
        // Not a module (the loader refuses it anyway): counted as starting.
        assert!(declares_start(&mut std::io::BufReader::new(std::io::Cursor::new(b"\0asm\x01\0\0\0\x01\xff"))));
        assert!(declares_start(&mut std::io::BufReader::new(std::io::Cursor::new(b"nope"))));
    }

    #[test]
    fn the_gate_comes_after_instantiation_unless_a_start_function_runs_in_it() {
        let d = tempfile::tempdir().unwrap();
        // A start function that traps: instantiated before the gate, it would fail there.
        let p = module(d.path(), r#"(module (func $init unreachable) (start $init) (func (export "_start")))"#);
        let mut gated = Vec::new();
        let out = run_module_then_exit(load_module(&p, "_start").unwrap(), &["m".into()], &[], &[], &mut |r| {
            gated.push(r);
            true
        });
        assert!(matches!(out.unwrap(), Some(Outcome::Trapped(m)) if m.contains("unreachable")));
        assert_eq!(gated, [Ok(())]);
        // A closed gate: nothing runs.
        let out = run_module_then_exit(load_module(&p, "_start").unwrap(), &["m".into()], &[], &[], &mut |_| false);
        assert_eq!(out.unwrap(), None);
        // Without a start function, instantiation goes first; its failure reaches the gate.
        let p = module(d.path(), r#"(module (import "env" "nope" (func)) (func (export "_start")))"#);
        let mut gated = Vec::new();
        let out = run_module_then_exit(load_module(&p, "_start").unwrap(), &["m".into()], &[], &[], &mut |r| {
            gated.push(r);
            true
        });
        assert_eq!(out.unwrap(), None);
        assert!(matches!(&gated[..], [Err(e)] if e.contains("not provided: env.nope")), "{gated:?}");
        let p = module(d.path(), EXIT);
        let mut gated = Vec::new();
        let out = run_module_then_exit(load_module(&p, "_start").unwrap(), &["m".into()], &[], &[], &mut |r| {
            gated.push(r);
            true
        });
        assert_eq!(out.unwrap(), Some(Outcome::Exited(42)));
        assert_eq!(gated, [Ok(())]);
    }

    #[test]
    fn trap_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let p = module(d.path(), EXIT);
        let out = run_module(load_module(&p, "boom").unwrap(), &["m".into()], &[], &[]).unwrap();
        match out {
            Outcome::Trapped(m) => assert!(m.contains("unreachable"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_entrypoints_and_modules_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = module(d.path(), EXIT);
        let e = load_module(&p, "nope").err().unwrap().to_string();
        assert!(e.contains("nope") && e.contains("m.wasm"), "{e}");
        assert!(matches!(load_module(&p, "g"), Err(EngineError::NotAFunction { .. })));
        let bad = d.path().join("bad.wasm");
        std::fs::write(&bad, b"\0asm\x01\0\0\0\xff\xff").unwrap();
        let e = load_module(&bad, "_start").err().unwrap().to_string();
        assert!(e.contains("bad.wasm") && e.contains("not a valid wasm module"), "{e}");
    }

    #[test]
    fn the_module_is_read_inside_the_rootfs() {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("app")).unwrap();
        std::fs::write(rootfs.join("app/m.wasm"), b"inside").unwrap();
        std::fs::write(d.path().join("host.wasm"), b"host").unwrap();
        std::os::unix::fs::symlink("/app/m.wasm", rootfs.join("abs.wasm")).unwrap();
        std::os::unix::fs::symlink(d.path().join("host.wasm"), rootfs.join("escape.wasm")).unwrap();
        std::os::unix::fs::symlink("../../host.wasm", rootfs.join("app/dotdot.wasm")).unwrap();
        assert_eq!(read_in_root(&rootfs, Path::new("/app/m.wasm")).unwrap(), b"inside");
        assert_eq!(read_in_root(&rootfs, Path::new("/abs.wasm")).unwrap(), b"inside", "absolute links resolve in the rootfs");
        assert!(read_in_root(&rootfs, Path::new("/escape.wasm")).is_err(), "a link to a host path does not reach the host");
        assert!(read_in_root(&rootfs, Path::new("/app/dotdot.wasm")).is_err(), ".. stops at the rootfs");
    }

    #[test]
    fn new_pods_get_the_most_recent_entry_once_per_process() {
        let d = tempfile::tempdir().unwrap();
        let cache = aot::AotCache::new(d.path().join("aot"), aot::DEFAULT_MAX_BYTES, aot::CompileOptions::default());
        preload_for_new_pods(&cache);
        assert!(WasmEdgePayload::default().preloaded.borrow().is_none(), "an empty cache preloads nothing");
        let wasm = wat::parse_str(EXIT).unwrap();
        let entry = cache.get_or_compile(&wasm).unwrap().path().unwrap().to_path_buf();
        preload_for_new_pods(&cache);
        let payload = WasmEdgePayload::default();
        {
            let pre = payload.preloaded.borrow();
            let pre = pre.as_ref().expect("the cache's entry, preloaded");
            assert_eq!((pre.path.as_path(), pre.func.as_str(), pre.module.is_some()), (entry.as_path(), "_start", true));
        }
        assert!(WasmEdgePayload::default().preloaded.borrow().is_none(), "the first payload took it");
        // A newer entry replaces it; an entry too big to keep is not loaded.
        preload_for_new_pods(&cache);
        let newer = cache.get_or_compile(&wat::parse_str(EXIT.replace("42", "7")).unwrap()).unwrap().path().unwrap().to_path_buf();
        std::fs::File::options().write(true).open(&newer).unwrap().set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
        preload_for_new_pods(&cache);
        assert_eq!(FOR_NEW_PODS.with(|p| p.borrow().as_ref().map(|p| p.path.clone())), Some(newer.clone()));
        std::fs::File::options().append(true).open(&newer).unwrap().set_len(NEW_POD_PRELOAD_MAX_BYTES + 1).unwrap();
        preload_for_new_pods(&cache);
        assert!(WasmEdgePayload::default().preloaded.borrow().is_none(), "over the size bound");
    }

    #[test]
    fn preopens_follow_cwd() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(container_preopens(r, Path::new("/")), vec![format!("/:{}", r.display())], "the root alone");
        for d in ["etc", "data", "a:b"] {
            std::fs::create_dir(r.join(d)).unwrap();
        }
        std::fs::write(r.join("file"), "").unwrap();
        std::os::unix::fs::symlink("etc", r.join("link")).unwrap();
        std::os::unix::fs::symlink("nowhere", r.join("dangling")).unwrap();
        let p = container_preopens(r, Path::new("/app"));
        let want: Vec<String> =
            ["data", "etc", "link"].iter().map(|n| format!("/{n}:{}", r.join(n).display())).chain([".:/app".to_string()]).collect();
        assert_eq!(p, want, "top-level directories by name; the working directory the only preopen named \"\"");
    }
}
