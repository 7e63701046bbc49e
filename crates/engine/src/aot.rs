//! The node's AOT compile cache: a module is compiled once per node by WasmEdge's AOT
//! compiler (LLVM), and every later container of it loads the compiled artifact.
//!
//! * An entry is keyed by the sha256 of the module's bytes, the WasmEdge version and the
//!   compile options ([`CompileOptions`]); its file is `<dir>/<key>.<wasm|so>`.
//! * Writes are atomic: the compiler writes a temp file in the same directory, which is
//!   renamed onto the entry's name once it loads.
//! * Concurrent compiles of one module (threads of one shim, or shims of one node) are
//!   serialised by `flock` on `<dir>/<key>.lock`: the second one waits, then finds the entry.
//! * The total size of the entries is bounded: after each insert the least recently used
//!   entries (by mtime, which a hit refreshes) are removed until the total fits.
//! * An entry that does not load is removed and compiled again; any fault of the cache is
//!   returned as an [`AotError`], on which the caller runs the module uncompiled.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use log::{info, warn};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use wasmedge_sdk::config::{CompilerConfigOptions, ConfigBuilder};
use wasmedge_sdk::{Compiler, CompilerOptimizationLevel, CompilerOutputFormat, Module};

/// Where the daemon keeps the cache unless `WSHIM_AOT_DIR` says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/wasmedge-shim/aot";
/// The default bound on the cache's total size: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// A temp file older than this is a leftover of a compile that died: eviction removes it.
const STALE_TEMP: Duration = Duration::from_secs(3600);
const TEMP_PREFIX: &str = ".tmp-";
/// The custom section in which WasmEdge's universal wasm format carries the native code.
const AOT_SECTION: &str = "wasmedge";

#[derive(Debug, thiserror::Error)]
pub enum AotError {
    #[error("AOT cache directory {dir}: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("AOT cache lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("AOT compile of module {sha256}: {message}")]
    Compile { sha256: String, message: String },
    #[error("AOT compile of module {sha256}: the artifact does not load: {message}")]
    Unloadable { sha256: String, message: String },
    #[error("AOT cache entry {path}: {source}")]
    Entry { path: PathBuf, source: std::io::Error },
    #[error("AOT artifact of module {sha256} is {size} bytes, more than the cache bound {max_bytes}")]
    TooBig { sha256: String, size: u64, max_bytes: u64 },
}

/// The output format of the compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A wasm module with the native code in a `wasmedge` custom section: loads from bytes,
    /// and still runs (interpreted) on a WasmEdge that cannot use the section.
    Universal,
    /// A native shared object.
    Native,
}

/// The options that change what the compiler produces: all of them are part of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileOptions {
    /// 0-3 (O0-O3).
    pub opt_level: u8,
    pub format: Format,
    /// Code that checks for WasmEdge's stop requests in loops, so a running module can be
    /// stopped. (The container's SIGTERM handler exits the process anyway.)
    pub interruptible: bool,
}

impl Default for CompileOptions {
    /// Universal wasm (the artifact reaches the container as bytes, and a stale section only
    /// costs speed), O2, interruptible.
    fn default() -> Self {
        CompileOptions { opt_level: 2, format: Format::Universal, interruptible: true }
    }
}

impl CompileOptions {
    fn tag(&self) -> String {
        let f = match self.format {
            Format::Universal => "wasm",
            Format::Native => "so",
        };
        format!("O{}-{f}{}", self.opt_level.min(3), if self.interruptible { "-int" } else { "" })
    }

    fn extension(&self) -> &'static str {
        match self.format {
            Format::Universal => "wasm",
            Format::Native => "so",
        }
    }

    fn compiler(&self) -> Result<Compiler, String> {
        let level = match self.opt_level {
            0 => CompilerOptimizationLevel::O0,
            1 => CompilerOptimizationLevel::O1,
            2 => CompilerOptimizationLevel::O2,
            _ => CompilerOptimizationLevel::O3,
        };
        let format = match self.format {
            Format::Universal => CompilerOutputFormat::Wasm,
            Format::Native => CompilerOutputFormat::Native,
        };
        let opts = CompilerConfigOptions::new().optimization_level(level).out_format(format).interruptible(self.interruptible);
        let config = ConfigBuilder::default().with_compiler_config(opts).build().map_err(|e| e.to_string())?;
        Compiler::new(Some(&config)).map_err(|e| e.to_string())
    }
}

/// Compiles `module` (wasm bytes) into `out`, which must not exist yet.
pub fn compile(module: &[u8], options: &CompileOptions, out: &Path) -> Result<(), String> {
    // WasmEdge's compiler crashed (SIGSEGV) when two threads compiled at once: one at a time
    // per process. (Processes compiling the same module are serialised by the key's flock.)
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // Its progress lines ("compile start", …) would fill the shim's log.
    wasmedge_sdk::log::LogManager::log_error_info();
    let compiler = options.compiler()?;
    // The SDK appends ".so" to whatever name it is given: compile next to `out`, then rename.
    let dir = out.parent().unwrap_or(Path::new("."));
    let stem = format!("{}compile-{}", TEMP_PREFIX, unique());
    let written = compiler.compile_from_bytes(module, &stem, dir).map_err(|e| e.to_string())?;
    std::fs::rename(&written, out).map_err(|e| {
        let _ = std::fs::remove_file(&written);
        format!("rename {} to {}: {e}", written.display(), out.display())
    })
}

/// Compiles `module` into `out` by running `exe aot-compile OPTIONS` ([`helper_main`]):
/// the module on its stdin, the artifact on its stdout.
///
/// The outcome is read from the pipes, not from the exit status: in the shim daemon,
/// containerd-shim's reaper reaps every child, so `waitpid` may find none (ECHILD). A helper
/// that fails writes no artifact (the caller loads what it gets before keeping it) and says
/// why on stderr.
pub fn compile_in_helper(exe: &Path, timeout: Duration, module: &[u8], options: &CompileOptions, out: &Path) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(exe)
        .args([HELPER_ARG, &options.opt_level.to_string(), options.extension(), if options.interruptible { "1" } else { "0" }])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {}: {e}", exe.display()))?;
    let pid = child.id();
    // Fed and drained from threads: a helper that neither reads nor exits still meets the
    // time limit (killing it ends the write with EPIPE and the reads with EOF).
    let mut stdin = child.stdin.take().expect("piped");
    let module = module.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&module));
    let mut stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = tx.send(stdout.read_to_end(&mut v).map(|_| v));
    });
    let mut stderr = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let artifact = match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => {
            // Its stdout is still open, so it has not exited: the pid is still its own.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            return Err(format!("the compile helper took more than {} s", timeout.as_secs()));
        }
    };
    let message = errs.join().unwrap_or_default();
    let status = child.wait().ok();
    let artifact = artifact.map_err(|e| format!("read the compile helper's output: {e}"))?;
    if artifact.is_empty() || status.is_some_and(|s| !s.success()) {
        let status = status.map_or("reaped elsewhere".to_string(), |s| s.to_string());
        return Err(format!("the compile helper failed ({status}): {}", message.trim()));
    }
    feeder.join().map_err(|_| "the feeding thread panicked".to_string())?.map_err(|e| format!("feed the compile helper: {e}"))?;
    std::fs::write(out, &artifact).map_err(|e| format!("write {}: {e}", out.display()))
}

/// The compile helper: when `args` are `EXE aot-compile LEVEL FORMAT INTERRUPTIBLE`, compiles
/// the module on stdin to stdout and returns the exit code; None for any other arguments.
/// Call it first thing in `main`.
pub fn helper_main(args: &[String]) -> Option<i32> {
    let [_, verb, level, format, interruptible] = args else { return None };
    if verb != HELPER_ARG {
        return None;
    }
    let options = CompileOptions {
        opt_level: level.parse().unwrap_or(2),
        format: if format == "so" { Format::Native } else { Format::Universal },
        interruptible: interruptible == "1",
    };
    match run_helper(&options) {
        Ok(()) => Some(0),
        Err(e) => {
            eprintln!("{e}");
            Some(1)
        }
    }
}

fn run_helper(options: &CompileOptions) -> Result<(), String> {
    use std::io::Write;
    let mut module = Vec::new();
    std::io::stdin().read_to_end(&mut module).map_err(|e| format!("read the module: {e}"))?;
    // Untrusted input goes to LLVM: not as root, and unable to regain it.
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::Gid::from_raw(65534);
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setgid(nobody).map_err(|e| format!("setgid: {e}"))?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).map_err(|e| format!("setuid: {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    // The compiler writes to a path: a private directory of ours.
    let dir = std::env::temp_dir().join(format!("wshim-aot-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let out = dir.join("out");
    let result = compile(&module, options, &out).and_then(|()| std::fs::read(&out).map_err(|e| e.to_string()));
    let _ = std::fs::remove_dir_all(&dir);
    let bytes = result?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&bytes).and_then(|()| stdout.flush()).map_err(|e| format!("write the artifact: {e}"))
}

/// The WasmEdge version this process runs, as used in keys.
pub fn wasmedge_version() -> String {
    wasmedge_sdk::utils::CoreVersion::version_string().chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect()
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `module` already carries WasmEdge's AOT section (universal wasm, e.g. made by
/// `wasm-oci --aot`): such a module is loaded as it is.
pub fn is_precompiled(module: &[u8]) -> bool {
    matches!(scan_sections(module), Some((true, _)))
}

/// Walks the sections of a wasm binary: (has the AOT section, ends exactly at the last
/// section), or None if it is not a wasm binary or a section overruns the end.
fn scan_sections(module: &[u8]) -> Option<(bool, bool)> {
    let mut rest = module.strip_prefix(b"\0asm\x01\0\0\0".as_slice())?;
    let mut aot = false;
    while let Some((&id, r)) = rest.split_first() {
        let (size, r) = leb128_u32(r)?;
        let body = r.get(..size as usize)?;
        if id == 0 {
            if let Some((len, name)) = leb128_u32(body) {
                aot |= name.get(..len as usize) == Some(AOT_SECTION.as_bytes());
            }
        }
        rest = &r[size as usize..];
    }
    Some((aot, rest.is_empty()))
}

fn leb128_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let mut v: u32 = 0;
    for (i, &byte) in b.iter().enumerate().take(5) {
        v |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, &b[i + 1..]));
        }
    }
    None
}

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// How [`AotCache::get_or_compile`] found the artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    /// The module carries its own AOT section: load the module itself.
    Precompiled,
    /// An entry was there already.
    Hit(PathBuf),
    /// This call compiled the entry.
    Compiled(PathBuf),
}

impl Artifact {
    pub fn path(&self) -> Option<&Path> {
        match self {
            Artifact::Precompiled => None,
            Artifact::Hit(p) | Artifact::Compiled(p) => Some(p),
        }
    }
}

/// Where the compiler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileIn {
    /// In the calling process (tools, tests).
    ThisProcess,
    /// In a helper process: this executable (whose `main` calls [`helper_main`]) run with
    /// `aot-compile`. The shim daemon uses it: a crash of LLVM on an odd module must not take
    /// the daemon and its containers down, and the helper compiles untrusted input without
    /// root (uid/gid 65534, no_new_privs) and under a time limit.
    Helper { exe: PathBuf, timeout: Duration },
}

/// The argument that makes an executable a compile helper ([`helper_main`]).
pub const HELPER_ARG: &str = "aot-compile";
/// How long a helper may compile before the module runs uncompiled.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(300);

/// The cache: a directory of compiled modules with a bound on its total size.
#[derive(Debug, Clone)]
pub struct AotCache {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub options: CompileOptions,
    pub compile_in: CompileIn,
    version: String,
}

/// An exclusive `flock` on a key's lock file, held until dropped.
struct KeyLock(#[allow(dead_code)] Flock<File>);

impl AotCache {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64, options: CompileOptions) -> AotCache {
        AotCache { dir: dir.into(), max_bytes, options, compile_in: CompileIn::ThisProcess, version: wasmedge_version() }
    }

    /// The daemon's cache as the environment configures it: `None` when `WSHIM_AOT=off`.
    /// `WSHIM_AOT_DIR` (default [`DEFAULT_DIR`]), `WSHIM_AOT_MAX_BYTES` (default 1 GiB).
    pub fn from_env() -> Option<AotCache> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`AotCache::from_env`] on any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<AotCache> {
        if matches!(var("WSHIM_AOT").as_deref(), Some("off" | "0" | "false")) {
            return None;
        }
        let dir = var("WSHIM_AOT_DIR").filter(|d| !d.is_empty()).unwrap_or_else(|| DEFAULT_DIR.into());
        let max = var("WSHIM_AOT_MAX_BYTES").and_then(|m| m.parse().ok()).unwrap_or(DEFAULT_MAX_BYTES);
        Some(AotCache::new(dir, max, CompileOptions::default()))
    }

    /// The key of `module`'s entry: its sha256, the WasmEdge version, the compile options.
    pub fn key(&self, module: &[u8]) -> String {
        self.key_of_sha(&sha256_hex(module))
    }

    fn key_of_sha(&self, sha: &str) -> String {
        format!("{sha}-{}-{}", self.version, self.options.tag())
    }

    /// The path of the entry for `key`.
    pub fn entry_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.{}", self.options.extension()))
    }

    /// The compiled artifact of `module`, compiled now if the cache has none. This blocks
    /// while another thread or process compiles the same module.
    pub fn get_or_compile(&self, module: &[u8]) -> Result<Artifact, AotError> {
        if is_precompiled(module) {
            return Ok(Artifact::Precompiled);
        }
        let sha = sha256_hex(module);
        let key = self.key_of_sha(&sha);
        let entry = self.entry_path(&key);
        // The common case without the lock: an entry exists once it is renamed into place.
        if let Some(hit) = self.check_hit(&sha, &entry) {
            return Ok(hit);
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| AotError::Dir { dir: self.dir.clone(), source })?;
        let _lock = self.lock(&key)?;
        // Whoever held the lock before us may have compiled it.
        if let Some(hit) = self.check_hit(&sha, &entry) {
            return Ok(hit);
        }
        let tmp = self.dir.join(format!("{TEMP_PREFIX}{key}-{}", unique()));
        let started = std::time::Instant::now();
        let result = self.compile_to(module, &sha, &tmp);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let size = std::fs::metadata(&tmp).map_err(|source| AotError::Entry { path: tmp.clone(), source })?.len();
        if size > self.max_bytes {
            let _ = std::fs::remove_file(&tmp);
            return Err(AotError::TooBig { sha256: sha, size, max_bytes: self.max_bytes });
        }
        std::fs::rename(&tmp, &entry).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            AotError::Entry { path: entry.clone(), source }
        })?;
        let ms = started.elapsed().as_millis() as u64;
        info!(sha256 = sha.as_str(), entry:% = entry.display(), bytes = size, compile_ms = ms; "AOT compiled");
        self.evict(Some(&entry));
        Ok(Artifact::Compiled(entry))
    }

    fn compile_to(&self, module: &[u8], sha: &str, tmp: &Path) -> Result<(), AotError> {
        let compiled = match &self.compile_in {
            CompileIn::ThisProcess => compile(module, &self.options, tmp),
            CompileIn::Helper { exe, timeout } => compile_in_helper(exe, *timeout, module, &self.options, tmp),
        };
        compiled.map_err(|message| AotError::Compile { sha256: sha.into(), message })?;
        // Never rename into place what would not load.
        let bytes = std::fs::read(tmp).map_err(|source| AotError::Entry { path: tmp.to_path_buf(), source })?;
        if self.options.format == Format::Universal {
            load_artifact(&bytes).map_err(|message| AotError::Unloadable { sha256: sha.into(), message })?;
        }
        Ok(())
    }

    /// An existing entry that looks whole, its mtime refreshed (the LRU order). An entry that does
    /// not load is removed, with a warning.
    fn check_hit(&self, sha: &str, entry: &Path) -> Option<Artifact> {
        let mut f = File::open(entry).ok()?;
        let mut bytes = Vec::new();
        // A structural check, not a load: loading the native code costs as much as the
        // container's own load (it doubled a hit's cost for a small module). Entries are
        // loaded once before they are renamed into place; this catches truncation and
        // foreign writes, and a container that cannot load its artifact loads the module.
        let loads = match f.read_to_end(&mut bytes) {
            Ok(_) if self.options.format == Format::Universal => match scan_sections(&bytes) {
                Some((true, true)) => Ok(()),
                Some((false, _)) => Err("no AOT section".to_string()),
                _ => Err("truncated or malformed wasm".to_string()),
            },
            Ok(_) if bytes.starts_with(b"\x7fELF") => Ok(()),
            Ok(_) => Err("not an ELF shared object".into()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(message) = loads {
            warn!(sha256 = sha, entry:% = entry.display(), error = message.as_str(); "AOT cache entry is broken: removed");
            let _ = std::fs::remove_file(entry);
            return None;
        }
        let _ = f.set_modified(SystemTime::now());
        Some(Artifact::Hit(entry.to_path_buf()))
    }

    /// Takes the exclusive lock of `key`. The lock file may be unlinked by eviction between
    /// our open and our flock: then the lock we hold guards nothing, so retry on the new file.
    fn lock(&self, key: &str) -> Result<KeyLock, AotError> {
        let path = self.dir.join(format!("{key}.lock"));
        loop {
            let f = File::options().create(true).truncate(false).write(true).open(&path).map_err(|source| AotError::Lock { path: path.clone(), source })?;
            let held = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| AotError::Lock { path: path.clone(), source: e.into() })?;
            let ours = held.metadata().map_err(|source| AotError::Lock { path: path.clone(), source })?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => return Ok(KeyLock(held)),
                _ => continue,
            }
        }
    }

    /// The cache's entries: (path, size, mtime).
    pub fn entries(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        rd.filter_map(Result::ok)
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                !n.starts_with(TEMP_PREFIX) && matches!(Path::new(&*n).extension().and_then(OsStr::to_str), Some("wasm" | "so"))
            })
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| (e.path(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
            })
            .collect()
    }

    /// The most recently used entry of this cache's WasmEdge version and options (a hit
    /// refreshes an entry's mtime), if any.
    pub fn most_recent(&self) -> Option<PathBuf> {
        let suffix = format!("{}.{}", self.key_of_sha(""), self.options.extension());
        let ours = |p: &Path| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(&suffix));
        self.entries().into_iter().filter(|(p, _, _)| ours(p)).max_by_key(|e| e.2).map(|e| e.0)
    }

    /// Removes the least recently used entries (never `keep`) until the total fits the bound,
    /// and, after an hour, temp files that a dead compile left and lock files of failed ones.
    pub fn evict(&self, keep: Option<&Path>) {
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.filter_map(Result::ok) {
                let stale = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|age| age > STALE_TEMP);
                let name = e.file_name().to_string_lossy().into_owned();
                // A lock file whose entry never came (a failed compile) is only clutter.
                let orphan_lock = name.strip_suffix(".lock").is_some_and(|key| !self.dir.join(format!("{key}.{}", self.options.extension())).exists());
                if stale && (name.starts_with(TEMP_PREFIX) || orphan_lock) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort_by_key(|e| e.2);
        for (path, size, _) in entries {
            if total <= self.max_bytes {
                break;
            }
            if Some(path.as_path()) == keep {
                continue;
            }
            // Removing an entry that a container is about to open is fine: it falls back to
            // the plain module. Its lock file goes too (lock() copes with that).
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    info!(entry:% = path.display(), bytes = size; "AOT cache entry evicted");
                    total -= size;
                    if let Some(stem) = path.file_stem() {
                        let _ = std::fs::remove_file(self.dir.join(format!("{}.lock", stem.to_string_lossy())));
                    }
                }
                Err(e) => warn!(entry:% = path.display(), error:% = e; "AOT cache eviction"),
            }
        }
    }
}

/// Loads compiled bytes as WasmEdge would in the container; the error's message if it fails.
fn load_artifact(bytes: &[u8]) -> Result<(), String> {
    if !is_precompiled(bytes) {
        return Err("no AOT section".into());
    }
    Module::from_bytes(None, bytes).map(drop).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load_module_bytes, load_preferring_artifact, run_module, Outcome};
    use std::sync::{Arc, Barrier};

    /// A module that exits with `code`: different codes give different modules.
    fn exiting(code: i32) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                (memory (export "memory") 1)
                (func (export "_start") (call $exit (i32.const {code}))))"#
        ))
        .unwrap()
    }

    fn run_bytes(bytes: &[u8]) -> Outcome {
        run_module(load_module_bytes(bytes, Path::new("/m.wasm"), "_start").unwrap(), &["m".into()], &[], &[]).unwrap()
    }

    fn cache(dir: &Path, max_bytes: u64) -> AotCache {
        AotCache::new(dir.join("aot"), max_bytes, CompileOptions::default())
    }

    fn temp_files(c: &AotCache) -> Vec<String> {
        std::fs::read_dir(&c.dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(TEMP_PREFIX)).collect()
    }

    #[test]
    fn miss_compiles_then_hit_reuses() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), DEFAULT_MAX_BYTES);
        let m = exiting(42);
        let first = c.get_or_compile(&m).unwrap();
        let Artifact::Compiled(p) = &first else { panic!("{first:?}") };
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&sha256_hex(&m)), "{name}");
        assert!(name.contains(&wasmedge_version()), "{name}");
        let compiled = std::fs::read(p).unwrap();
        assert!(is_precompiled(&compiled) && !is_precompiled(&m));
        assert_eq!(run_bytes(&compiled), Outcome::Exited(42));
        assert_eq!(c.get_or_compile(&m).unwrap(), Artifact::Hit(p.clone()));
        assert_eq!(c.entries().len(), 1);
        assert!(temp_files(&c).is_empty(), "{:?}", temp_files(&c));
    }

    #[test]
    fn key_changes_with_module_and_options() {
        let d = tempfile::tempdir().unwrap();
        let base = cache(d.path(), DEFAULT_MAX_BYTES);
        let m = exiting(1);
        let k = base.key(&m);
        assert_ne!(k, base.key(&exiting(2)));
        for opts in [
            CompileOptions { opt_level: 0, ..Default::default() },
            CompileOptions { interruptible: false, ..Default::default() },
            CompileOptions { format: Format::Native, ..Default::default() },
        ] {
            let other = AotCache::new(&base.dir, DEFAULT_MAX_BYTES, opts);
            assert_ne!(other.key(&m), k, "{opts:?}");
        }
        assert_eq!(AotCache::new(&base.dir, 1, CompileOptions::default()).key(&m), k, "the bound is not part of the key");
    }

    #[test]
    fn the_most_recent_entry_is_the_last_hit() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), DEFAULT_MAX_BYTES);
        assert_eq!(c.most_recent(), None, "no cache directory yet");
        let set_age = |p: &Path, secs: u64| File::options().write(true).open(p).unwrap().set_modified(SystemTime::now() - Duration::from_secs(secs)).unwrap();
        let a = c.get_or_compile(&exiting(1)).unwrap().path().unwrap().to_path_buf();
        let b = c.get_or_compile(&exiting(2)).unwrap().path().unwrap().to_path_buf();
        set_age(&a, 20);
        set_age(&b, 10);
        assert_eq!(c.most_recent().as_ref(), Some(&b));
        // A hit refreshes the entry.
        assert!(matches!(c.get_or_compile(&exiting(1)).unwrap(), Artifact::Hit(_)));
        assert_eq!(c.most_recent().as_ref(), Some(&a));
        // Newer files that are not this cache's entries do not count: another WasmEdge
        // version's entry, a temp file, a lock file.
        let stem = a.file_stem().unwrap().to_string_lossy().into_owned();
        for name in [stem.replace(&c.version, "0.0.1") + ".wasm", format!("{TEMP_PREFIX}{stem}-1"), format!("{stem}.lock")] {
            std::fs::write(c.dir.join(name), "x").unwrap();
        }
        set_age(&a, 5);
        assert_eq!(c.most_recent().as_ref(), Some(&a));
    }

    #[test]
    fn concurrent_compiles_of_one_module_make_one_entry() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), DEFAULT_MAX_BYTES);
        let m = exiting(7);
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<Artifact> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let (c, m, b) = (c.clone(), m.clone(), barrier.clone());
                    s.spawn(move || {
                        b.wait();
                        c.get_or_compile(&m).unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let compiled = results.iter().filter(|a| matches!(a, Artifact::Compiled(_))).count();
        assert_eq!(compiled, 1, "{results:?}");
        assert_eq!(results[0].path(), results[1].path());
        assert_eq!(c.entries().len(), 1);
        assert!(temp_files(&c).is_empty());
        assert_eq!(run_bytes(&std::fs::read(results[0].path().unwrap()).unwrap()), Outcome::Exited(7));
    }

    #[test]
    fn eviction_keeps_the_total_under_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let probe = cache(d.path(), DEFAULT_MAX_BYTES);
        let one = std::fs::metadata(probe.get_or_compile(&exiting(100)).unwrap().path().unwrap()).unwrap().len();
        std::fs::remove_dir_all(&probe.dir).unwrap();
        // Room for two entries and a half.
        let bound = one * 5 / 2;
        let c = cache(d.path(), bound);
        let mut paths = Vec::new();
        for code in 0..4 {
            paths.push(c.get_or_compile(&exiting(code)).unwrap().path().unwrap().to_path_buf());
            // mtimes order the entries; make sure they differ.
            std::thread::sleep(Duration::from_millis(20));
            let total: u64 = c.entries().iter().map(|e| e.1).sum();
            assert!(total <= bound, "total {total} > bound {bound}");
        }
        assert_eq!(c.entries().len(), 2);
        assert!(!paths[0].exists() && !paths[1].exists());
        assert!(paths[2].exists() && paths[3].exists());
        // A hit refreshes an entry: the next insert evicts the other one.
        assert_eq!(c.get_or_compile(&exiting(2)).unwrap(), Artifact::Hit(paths[2].clone()));
        std::thread::sleep(Duration::from_millis(20));
        c.get_or_compile(&exiting(9)).unwrap();
        assert!(paths[2].exists() && !paths[3].exists());
    }

    #[test]
    fn an_artifact_bigger_than_the_bound_is_not_kept() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), 10);
        assert!(matches!(c.get_or_compile(&exiting(1)), Err(AotError::TooBig { .. })));
        assert!(c.entries().is_empty() && temp_files(&c).is_empty());
    }

    #[test]
    fn a_corrupted_entry_is_replaced_and_the_container_falls_back() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), DEFAULT_MAX_BYTES);
        let m = exiting(3);
        let p = c.get_or_compile(&m).unwrap().path().unwrap().to_path_buf();
        let good = std::fs::read(&p).unwrap();
        // Keep the header and the AOT section's name, garble the rest.
        let mut bad = good.clone();
        let n = bad.len();
        bad.truncate(n / 2);
        std::fs::write(&p, &bad).unwrap();
        assert_eq!(c.get_or_compile(&m).unwrap(), Artifact::Compiled(p.clone()), "detected, compiled again");
        assert_eq!(run_bytes(&std::fs::read(&p).unwrap()), Outcome::Exited(3));

        // The container side: an unloadable or missing artifact loads the plain module.
        let plain = d.path().join("m.wasm");
        std::fs::write(&plain, &m).unwrap();
        std::fs::write(&p, b"garbage").unwrap();
        for artifact in [Some(File::open(&p)), Some(File::open(d.path().join("missing"))), None] {
            let loaded = load_preferring_artifact(artifact, &plain, "_start").unwrap();
            assert_eq!(run_module(loaded, &["m".into()], &[], &[]).unwrap(), Outcome::Exited(3));
        }
    }

    #[test]
    fn a_precompiled_module_is_not_compiled_again() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("pre.wasm");
        compile(&exiting(5), &CompileOptions::default(), &out).unwrap();
        let pre = std::fs::read(&out).unwrap();
        let c = cache(d.path(), DEFAULT_MAX_BYTES);
        assert_eq!(c.get_or_compile(&pre).unwrap(), Artifact::Precompiled);
        assert!(c.entries().is_empty());
        assert_eq!(run_bytes(&pre), Outcome::Exited(5));
    }

    #[test]
    fn a_failing_or_lying_compile_helper_leaves_no_entry() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cache(d.path(), DEFAULT_MAX_BYTES);
        let m = exiting(4);
        // Exits 1; exits 0 without an artifact; writes something that is not one.
        // (echo may exit before the module is written: then that write fails first.)
        let cases: [(&str, &[&str]); 3] = [
            ("/bin/false", &["failed (exit status: 1)"]),
            ("/bin/true", &["failed (exit status: 0)"]),
            ("/bin/echo", &["does not load", "feed the compile helper"]),
        ];
        for (exe, want) in cases {
            c.compile_in = CompileIn::Helper { exe: exe.into(), timeout: HELPER_TIMEOUT };
            let e = c.get_or_compile(&m).unwrap_err().to_string();
            assert!(want.iter().any(|w| e.contains(w)) && e.contains(&sha256_hex(&m)), "{exe}: {e}");
            assert!(c.entries().is_empty() && temp_files(&c).is_empty(), "{exe}");
        }
    }

    #[test]
    fn helper_main_only_answers_its_own_arguments() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(helper_main(&args(&["daemon", "-namespace", "default", "-id", "x"])), None);
        assert_eq!(helper_main(&args(&["daemon", "start", "2", "wasm", "1"])), None);
    }

    #[test]
    fn configuration_from_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string());
        let c = AotCache::from_vars(vars(&[])).unwrap();
        assert_eq!((c.dir.as_path(), c.max_bytes), (Path::new(DEFAULT_DIR), DEFAULT_MAX_BYTES));
        let c = AotCache::from_vars(vars(&[("WSHIM_AOT_DIR", "/x"), ("WSHIM_AOT_MAX_BYTES", "123")])).unwrap();
        assert_eq!((c.dir.as_path(), c.max_bytes), (Path::new("/x"), 123));
        assert!(AotCache::from_vars(vars(&[("WSHIM_AOT", "off")])).is_none());
    }
}
