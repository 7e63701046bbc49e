use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {path}: cannot read config.json: {source}")]
    ReadConfig { path: PathBuf, source: std::io::Error },
    #[error("bundle {path}: config.json is not a valid OCI runtime spec: {message}")]
    ParseConfig { path: PathBuf, message: String },
    #[error("bundle {path}: config.json has no `process`")]
    NoProcess { path: PathBuf },
    #[error("bundle {path}: `process.args` is empty")]
    NoArgs { path: PathBuf },
    #[error("bundle {path}: config.json has no `root`")]
    NoRoot { path: PathBuf },
}

/// A loaded bundle: its directory, its spec and the absolute path of its root filesystem.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Reads and checks `DIR/config.json`. The root path is made absolute against `DIR`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        let config = dir.join("config.json");
        let text = std::fs::read(&config).map_err(|source| BundleError::ReadConfig { path: config.clone(), source })?;
        let spec: Spec = serde_json::from_slice(&text)
            .map_err(|e| BundleError::ParseConfig { path: config.clone(), message: e.to_string() })?;
        let process = spec.process().as_ref().ok_or_else(|| BundleError::NoProcess { path: config.clone() })?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(BundleError::NoArgs { path: config });
        }
        let root = spec.root().as_ref().ok_or_else(|| BundleError::NoRoot { path: config.clone() })?;
        let rootfs = if root.path().is_absolute() { root.path().clone() } else { dir.join(root.path()) };
        Ok(Bundle { dir, spec, rootfs })
    }

    pub fn args(&self) -> &[String] {
        // `load` checked that process and args exist.
        self.spec.process().as_ref().and_then(|p| p.args().as_deref()).unwrap_or(&[])
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.spec.annotations().as_ref()?.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, json: &str) {
        std::fs::write(dir.join("config.json"), json).unwrap();
    }

    #[test]
    fn loads_and_resolves_relative_root() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), r#"{"ociVersion":"1.0.2","process":{"args":["/hello.wasm","a"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#);
        let b = Bundle::load(d.path()).unwrap();
        assert_eq!(b.rootfs, d.path().join("rootfs"));
        assert_eq!(b.args(), ["/hello.wasm", "a"]);
    }

    #[test]
    fn missing_config_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let e = Bundle::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains(&d.path().display().to_string()), "{e}");
    }

    #[test]
    fn broken_json_is_a_parse_error() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "{not json");
        assert!(matches!(Bundle::load(d.path()), Err(BundleError::ParseConfig { .. })));
    }

    #[test]
    fn empty_args_are_refused() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), r#"{"ociVersion":"1.0.2","process":{"args":[],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#);
        let e = Bundle::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("process.args"), "{e}");
    }
}
