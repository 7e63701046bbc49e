use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{path}: too many levels of symbolic links")]
    Loop { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Resolves `path` as the container would see it with `root` as `/`: absolute symlinks and
/// `..` never leave `root`. Returns the host path. A missing final component is not an error
/// here (the caller decides); a missing directory on the way is.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf, ResolveError> {
    let mut done = PathBuf::from("/");
    let mut links = 0;
    // The components still to walk, the next one last.
    let mut stack: Vec<String> = Vec::new();
    push_components(&mut stack, path);
    while let Some(comp) = stack.pop() {
        match comp.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let candidate = done.join(&comp);
        let host = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        match std::fs::symlink_metadata(&host) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(ResolveError::Loop { path: path.to_path_buf() });
                }
                let target = std::fs::read_link(&host).map_err(|source| ResolveError::Io { path: host.clone(), source })?;
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                push_components(&mut stack, &target);
            }
            Ok(_) => done = candidate,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => done = candidate,
            Err(source) => return Err(ResolveError::Io { path: host, source }),
        }
    }
    Ok(root.join(done.strip_prefix("/").unwrap_or(&done)))
}

fn push_components(stack: &mut Vec<String>, p: &Path) {
    let comps: Vec<String> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    stack.extend(comps.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_symlink_stays_inside_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("app/m.wasm"), b"x").unwrap();
        symlink("/app/m.wasm", root.join("link")).unwrap();
        symlink("/etc/passwd", root.join("escape")).unwrap();
        assert_eq!(resolve_in_root(root, Path::new("/link")).unwrap(), root.join("app/m.wasm"));
        assert_eq!(resolve_in_root(root, Path::new("/escape")).unwrap(), root.join("etc/passwd"));
        assert_eq!(resolve_in_root(root, Path::new("/../../etc/x")).unwrap(), root.join("etc/x"));
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        symlink("/b", d.path().join("a")).unwrap();
        symlink("/a", d.path().join("b")).unwrap();
        assert!(matches!(resolve_in_root(d.path(), Path::new("/a")), Err(ResolveError::Loop { .. })));
    }
}
