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
            .map_err(|e| BundleError::ParseConfig { path: config.clone(), message: with_json_path(&text, &e) })?;
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

/// serde's message for `e`, led by the JSON path of the value it failed on (for example
/// `process.capabilities.bounding[3]: unknown variant ...`), so the user learns which field
/// is wrong and not only a line and column.
fn with_json_path(text: &[u8], e: &serde_json::Error) -> String {
    match json_path_at(text, e.line(), e.column()) {
        Some(p) if !p.is_empty() && e.is_data() => format!("{p}: {e}"),
        _ => e.to_string(),
    }
}

/// The path (`a.b[2].c`) of the innermost value open once the character at 1-based `line`
/// and `column` (where serde_json stops: the last character it consumed) of the
/// JSON `text`. A tolerant scan: it only tracks objects, arrays, keys and strings.
fn json_path_at(text: &[u8], line: usize, column: usize) -> Option<String> {
    enum Frame {
        Obj { key: Option<String>, in_value: bool },
        Arr { index: usize },
    }
    let (mut l, mut c) = (1, 0);
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b == b'\n' {
            l += 1;
            c = 0;
        } else {
            c += 1;
        }
        if l > line || (l == line && c > column) {
            break;
        }
        match b {
            b'{' => stack.push(Frame::Obj { key: None, in_value: false }),
            b'[' => stack.push(Frame::Arr { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b':' => {
                if let Some(Frame::Obj { in_value, .. }) = stack.last_mut() {
                    *in_value = true;
                }
            }
            b',' => match stack.last_mut() {
                Some(Frame::Obj { key, in_value }) => {
                    *key = None;
                    *in_value = false;
                }
                Some(Frame::Arr { index }) => *index += 1,
                None => {}
            },
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    let step = if text[i] == b'\\' { 2 } else { 1 };
                    i += step;
                    c += step;
                }
                c += 1;
                if let Some(Frame::Obj { key, in_value: false }) = stack.last_mut() {
                    *key = Some(String::from_utf8_lossy(&text[start..i.min(text.len())]).into_owned());
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for f in &stack {
        match f {
            Frame::Obj { key: Some(k), in_value: true } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Obj { .. } => {}
            Frame::Arr { index } => path.push_str(&format!("[{index}]")),
        }
    }
    Some(path)
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
    fn a_bad_value_is_named_by_its_json_path() {
        let d = tempfile::tempdir().unwrap();
        let base = r#"{"ociVersion":"1.0.2","process":{"args":["/a"],"cwd":"/","user":{"uid":0,"gid":0},EXTRA},"root":{"path":"rootfs"}}"#;
        for (extra, path) in [
            // oci-spec reads a capability set whole, then converts: the set is named.
            (r#""capabilities":{"bounding":["CAP_KILL","CAP_NOPE"]}"#, "process.capabilities.bounding: "),
            (r#""rlimits":[{"type":"RLIMIT_NOFILE","soft":1,"hard":1},{"type":"RLIMIT_BOGUS","soft":1,"hard":1}]"#, "process.rlimits[1].type: "),
            (r#""rlimits":[{"type":"RLIMIT_NOFILE","soft":-1,"hard":1}]"#, "process.rlimits[0].soft: "),
            (r#""env":["A=\"b\"",7]"#, "process.env[1]: "),
        ] {
            write(d.path(), &base.replace("EXTRA", extra));
            let e = Bundle::load(d.path()).unwrap_err().to_string();
            assert!(e.contains(&format!("spec: {path}")), "{path}: {e}");
        }
        // Pretty-printed too.
        let pretty = serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&base.replace("EXTRA", r#""capabilities":{"bounding":["CAP_KILL","CAP_NOPE"]}"#)).unwrap()).unwrap();
        write(d.path(), &pretty);
        let e = Bundle::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("spec: process.capabilities.bounding: "), "{e}");
    }

    #[test]
    fn empty_args_are_refused() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), r#"{"ociVersion":"1.0.2","process":{"args":[],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#);
        let e = Bundle::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("process.args"), "{e}");
    }
}
