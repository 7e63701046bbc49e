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
    RootDir::open(root).map_err(|source| ResolveError::Io { path: root.to_path_buf(), source })?.resolve(path)
}

/// A container's root directory, held open so that paths in it are looked up from it, not
/// from the host's `/` down through every component of the root's own path (a bundle's
/// rootfs is six or seven components deep, and a container's setup resolves a dozen paths).
pub struct RootDir {
    path: PathBuf,
    fd: std::os::fd::OwnedFd,
}

impl RootDir {
    pub fn open(root: &Path) -> std::io::Result<RootDir> {
        let f = std::fs::File::open(root)?;
        Ok(RootDir { path: root.to_path_buf(), fd: f.into() })
    }

    /// [`resolve_in_root`] in this root.
    pub fn resolve(&self, path: &Path) -> Result<PathBuf, ResolveError> {
        use nix::fcntl::readlinkat;
        use nix::sys::stat::{fstatat, SFlag};
        let root = &self.path;
        // Relative to the root: "" is the root itself.
        let mut done = PathBuf::new();
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
            let host = || root.join(&candidate);
            match fstatat(&self.fd, &candidate, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits() => {
                    links += 1;
                    if links > 40 {
                        return Err(ResolveError::Loop { path: path.to_path_buf() });
                    }
                    let target = readlinkat(&self.fd, &candidate).map_err(|e| ResolveError::Io { path: host(), source: e.into() })?;
                    let target = PathBuf::from(target);
                    if target.is_absolute() {
                        done = PathBuf::new();
                    }
                    push_components(&mut stack, &target);
                }
                Ok(_) | Err(nix::errno::Errno::ENOENT) => done = candidate,
                Err(e) => return Err(ResolveError::Io { path: host(), source: e.into() }),
            }
        }
        Ok(root.join(done))
    }
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

    #[test]
    fn relative_links_dotdot_and_missing_parts_resolve_from_the_open_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("../../..", root.join("usr/lib/up")).unwrap();
        std::fs::write(root.join("file"), b"x").unwrap();
        let r = RootDir::open(root).unwrap();
        assert_eq!(r.resolve(Path::new("/lib/x.so")).unwrap(), root.join("usr/lib/x.so"));
        assert_eq!(r.resolve(Path::new("lib/up/etc")).unwrap(), root.join("etc"));
        assert_eq!(r.resolve(Path::new("/")).unwrap(), root.to_path_buf());
        assert_eq!(r.resolve(Path::new("/missing/dir")).unwrap(), root.join("missing/dir"));
        // A file on the way is an error naming the host path (ENOTDIR).
        let e = r.resolve(Path::new("/file/below")).unwrap_err().to_string();
        assert!(e.contains(&root.join("file/below").display().to_string()), "{e}");
    }
}
