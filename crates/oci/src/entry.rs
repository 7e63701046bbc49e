use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{resolve_in_root, Bundle, WASM_MAGIC};

/// crun's and runwasi's annotation naming the image variant: `compat` or `compat-smart`.
pub const ANNOTATION_VARIANT: &str = "module.wasm.image/variant";
/// crun's annotation selecting a handler; `wasm` forces the wasm path.
pub const ANNOTATION_HANDLER: &str = "run.oci.handler";

/// What the container's process is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Entrypoint {
    /// A wasm module at `module` (a path inside the container) whose export `func` runs.
    Wasm { module: PathBuf, func: String },
    /// A native executable at `program` (a path inside the container), run with execve.
    Native { program: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("process.args[0] {arg0:?}: no such file in the container's root filesystem {rootfs}")]
    NotFound { arg0: String, rootfs: PathBuf },
    #[error("process.args[0] {arg0:?}: {host} is not a wasm module (annotation {annotation} asks for wasm)")]
    NotWasm { arg0: String, host: PathBuf, annotation: String },
    #[error("process.args[0] {arg0:?}: cannot read {host}: {source}")]
    Read { arg0: String, host: PathBuf, source: std::io::Error },
    #[error("process.args[0] {arg0:?}: {source}")]
    Resolve { arg0: String, source: crate::ResolveError },
    #[error("annotation {key}={value:?}: unknown value (expected compat or compat-smart)")]
    BadVariant { key: &'static str, value: String },
}

/// Splits `path#func` into the module path and the function (default `_start`).
pub fn parse_entrypoint(arg0: &str) -> (&str, &str) {
    match arg0.rsplit_once('#') {
        Some((path, func)) if !path.is_empty() && !func.is_empty() && !func.contains('/') => (path, func),
        _ => (arg0, "_start"),
    }
}

enum Want {
    Wasm,
    Smart,
    ByContent,
}

/// Decides whether the bundle's process is wasm or native, from the annotations and from the
/// first bytes of `process.args[0]` in the root filesystem (which must be mounted).
pub fn detect(bundle: &Bundle) -> Result<Entrypoint, EntryError> {
    let arg0 = bundle.args()[0].clone();
    let want = match (bundle.annotation(ANNOTATION_VARIANT), bundle.annotation(ANNOTATION_HANDLER)) {
        (_, Some("wasm")) => Want::Wasm,
        (Some("compat"), _) => Want::Wasm,
        (Some("compat-smart"), _) => Want::Smart,
        (Some(other), _) => return Err(EntryError::BadVariant { key: ANNOTATION_VARIANT, value: other.to_string() }),
        (None, _) => Want::ByContent,
    };
    let env_path = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.env().as_ref())
        .and_then(|env| env.iter().find_map(|e| e.strip_prefix("PATH=").map(str::to_string)));

    // The whole argument names a file: a native program or a module run from `_start`.
    // Otherwise `path#func` may name a module and one of its exports.
    let (container_path, host, func) = match locate(bundle, &arg0, env_path.as_deref())? {
        Some((c, h)) => (c, h, "_start"),
        None => {
            let (path, func) = parse_entrypoint(&arg0);
            match locate(bundle, path, env_path.as_deref())? {
                Some((c, h)) if func != "_start" || path != arg0 => (c, h, func),
                _ => return Err(EntryError::NotFound { arg0, rootfs: bundle.rootfs.clone() }),
            }
        }
    };
    let is_wasm = has_wasm_magic(&host).map_err(|source| EntryError::Read { arg0: arg0.clone(), host: host.clone(), source })?;
    match (want, is_wasm) {
        (_, true) => Ok(Entrypoint::Wasm { module: container_path, func: func.to_string() }),
        (Want::Wasm, false) => Err(EntryError::NotWasm {
            arg0,
            host,
            annotation: match bundle.annotation(ANNOTATION_HANDLER) {
                Some("wasm") => format!("{ANNOTATION_HANDLER}=wasm"),
                _ => format!("{ANNOTATION_VARIANT}=compat"),
            },
        }),
        (Want::Smart | Want::ByContent, false) => Ok(Entrypoint::Native { program: container_path }),
    }
}

/// Finds `name` in the root filesystem: as a path when it has a `/`, else along `PATH`.
/// Returns the path inside the container and the resolved host path of a regular file.
fn locate(bundle: &Bundle, name: &str, env_path: Option<&str>) -> Result<Option<(PathBuf, PathBuf)>, EntryError> {
    let cwd = bundle.spec.process().as_ref().map(|p| p.cwd().clone()).unwrap_or_else(|| PathBuf::from("/"));
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![cwd.join(name)]
    } else {
        env_path
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(name))
            .collect()
    };
    for c in candidates {
        let host = resolve_in_root(&bundle.rootfs, &c).map_err(|source| EntryError::Resolve { arg0: name.to_string(), source })?;
        if host.is_file() {
            return Ok(Some((c, host)));
        }
    }
    Ok(None)
}

fn has_wasm_magic(path: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path)?;
    let mut got = 0;
    while got < 4 {
        match f.read(&mut magic[got..])? {
            0 => return Ok(false),
            n => got += n,
        }
    }
    Ok(magic == WASM_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(args: &[&str], annotations: &[(&str, &str)]) -> (tempfile::TempDir, Bundle) {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::write(rootfs.join("m.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(rootfs.join("bin/tool"), b"\x7fELF....").unwrap();
        let ann: serde_json::Map<String, serde_json::Value> =
            annotations.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
        let cfg = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": args, "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "annotations": ann,
        });
        std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
        let b = Bundle::load(d.path()).unwrap();
        (d, b)
    }

    #[test]
    fn splits_function() {
        assert_eq!(parse_entrypoint("/a/m.wasm#foo"), ("/a/m.wasm", "foo"));
        assert_eq!(parse_entrypoint("/a/m.wasm"), ("/a/m.wasm", "_start"));
        assert_eq!(parse_entrypoint("#foo"), ("#foo", "_start"));
    }

    #[test]
    fn wasm_by_magic_with_function() {
        let (_d, b) = bundle(&["/m.wasm#foo"], &[]);
        assert_eq!(detect(&b).unwrap(), Entrypoint::Wasm { module: "/m.wasm".into(), func: "foo".into() });
        let (_d, b) = bundle(&["m.wasm"], &[]);
        assert!(matches!(detect(&b), Err(EntryError::NotFound { .. })), "bare names search PATH");
    }

    #[test]
    fn native_by_content_and_path_search() {
        let (_d, b) = bundle(&["tool"], &[]);
        assert_eq!(detect(&b).unwrap(), Entrypoint::Native { program: "/bin/tool".into() });
    }

    #[test]
    fn compat_refuses_native_and_smart_allows_it() {
        let (_d, b) = bundle(&["/bin/tool"], &[(ANNOTATION_VARIANT, "compat")]);
        let e = detect(&b).unwrap_err().to_string();
        assert!(e.contains("not a wasm module") && e.contains("compat"), "{e}");
        let (_d, b) = bundle(&["/bin/tool"], &[(ANNOTATION_VARIANT, "compat-smart")]);
        assert_eq!(detect(&b).unwrap(), Entrypoint::Native { program: "/bin/tool".into() });
        let (_d, b) = bundle(&["/bin/tool"], &[(ANNOTATION_HANDLER, "wasm")]);
        assert!(matches!(detect(&b), Err(EntryError::NotWasm { .. })));
        let (_d, b) = bundle(&["/bin/tool"], &[(ANNOTATION_VARIANT, "bogus")]);
        assert!(detect(&b).unwrap_err().to_string().contains(ANNOTATION_VARIANT));
    }

    #[test]
    fn missing_entrypoint_names_arg0_and_rootfs() {
        let (_d, b) = bundle(&["/nope.wasm"], &[]);
        let e = detect(&b).unwrap_err().to_string();
        assert!(e.contains("/nope.wasm") && e.contains("process.args[0]") && e.contains("rootfs"), "{e}");
    }
}
