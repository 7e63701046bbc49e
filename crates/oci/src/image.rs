//! Wasm OCI image archives in the "compat" layout: one layer holding the module (and any
//! extra files), the entrypoint set, platform `wasi/wasm` (or another, for comparisons with
//! native runtimes). `ctr image import` accepts them.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("image file destination {0:?} must be an absolute path")]
    RelativeDest(String),
    #[error("the image needs an entrypoint")]
    NoEntrypoint,
    #[error("cannot write the image archive: {0}")]
    Write(#[from] std::io::Error),
}

/// What goes into a wasm image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Full reference, e.g. `docker.io/library/hello:latest`.
    pub name: String,
    /// Host files and where they go in the image (absolute paths).
    pub files: Vec<(PathBuf, String)>,
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    /// The image's (os, architecture): `("wasi", "wasm")` for a wasm image.
    pub platform: (String, String),
}

impl ImageSpec {
    /// The platform of a wasm image.
    pub fn wasm_platform() -> (String, String) {
        ("wasi".into(), "wasm".into())
    }
}

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Writes an OCI image layout, as one tar archive, to `out`.
pub fn build_image_archive(spec: &ImageSpec, out: impl Write) -> Result<(), ImageError> {
    if spec.entrypoint.is_empty() {
        return Err(ImageError::NoEntrypoint);
    }
    let layer = layer_tar(&spec.files)?;
    let layer_digest = digest(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": spec.platform.1,
        "os": spec.platform.0,
        "config": { "Entrypoint": spec.entrypoint, "Env": spec.env },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [{ "created_by": "wasmedge-shim image tool" }],
    }))
    .expect("static json");
    let config_digest = digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": CONFIG_TYPE, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": LAYER_TYPE, "digest": layer_digest, "size": layer.len() }],
        "annotations": { crate::ANNOTATION_VARIANT: "compat" },
    }))
    .expect("static json");
    let manifest_digest = digest(&manifest);
    let tag = spec.name.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map_or("latest", |(_, t)| t);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "os": spec.platform.0, "architecture": spec.platform.1 },
            "annotations": {
                "io.containerd.image.name": spec.name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .expect("static json");

    let mut ar = tar::Builder::new(out);
    add_bytes(&mut ar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
    add_bytes(&mut ar, "index.json", &index, 0o644)?;
    for (d, bytes) in [(&layer_digest, &layer), (&config_digest, &config), (&manifest_digest, &manifest)] {
        let name = format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        add_bytes(&mut ar, &name, bytes, 0o644)?;
    }
    ar.into_inner()?.flush()?;
    Ok(())
}

fn layer_tar(files: &[(PathBuf, String)]) -> Result<Vec<u8>, ImageError> {
    let mut ar = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (host, dest) in files {
        if !dest.starts_with('/') {
            return Err(ImageError::RelativeDest(dest.clone()));
        }
        let bytes = std::fs::read(host).map_err(|source| ImageError::ReadFile { path: host.clone(), source })?;
        let rel = dest.trim_start_matches('/');
        // Parent directories first, each once, so the layer unpacks anywhere.
        let mut parent = std::path::Path::new(rel).parent();
        let mut chain = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            chain.push(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        for d in chain.into_iter().rev() {
            if dirs.insert(d.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(0);
                ar.append_data(&mut h, format!("{d}/"), std::io::empty())?;
            }
        }
        // Modules and the host's executables are executable in the image.
        let host_exec = std::fs::metadata(host).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0).unwrap_or(false);
        let mode = if bytes.starts_with(&crate::WASM_MAGIC) || host_exec { 0o755 } else { 0o644 };
        add_bytes(&mut ar, rel, &bytes, mode)?;
    }
    Ok(ar.into_inner()?)
}

fn add_bytes<W: Write>(ar: &mut tar::Builder<W>, name: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    ar.append_data(&mut h, name, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Read;

    fn unpack(bytes: &[u8]) -> HashMap<String, Vec<u8>> {
        let mut out = HashMap::new();
        for e in tar::Archive::new(bytes).entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            out.insert(name, v);
        }
        out
    }

    #[test]
    fn archive_is_a_consistent_oci_layout() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("hello.wasm");
        std::fs::write(&m, b"\0asm\x01\0\0\0").unwrap();
        let spec = ImageSpec {
            name: "docker.io/library/hello:v1".into(),
            files: vec![(m, "/app/hello.wasm".into())],
            entrypoint: vec!["/app/hello.wasm".into()],
            env: vec![],
            platform: ImageSpec::wasm_platform(),
        };
        let mut buf = Vec::new();
        build_image_archive(&spec, &mut buf).unwrap();
        let files = unpack(&buf);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m0 = &index["manifests"][0];
        assert_eq!(m0["platform"]["os"], "wasi");
        assert_eq!(m0["annotations"]["io.containerd.image.name"], "docker.io/library/hello:v1");
        assert_eq!(m0["annotations"]["org.opencontainers.image.ref.name"], "v1");
        // Every descriptor points at a blob with that digest and size.
        let blob = |desc: &serde_json::Value| {
            let dg = desc["digest"].as_str().unwrap();
            let b = files[&format!("blobs/sha256/{}", &dg[7..])].clone();
            assert_eq!(digest(&b), dg);
            assert_eq!(desc["size"].as_u64().unwrap() as usize, b.len());
            b
        };
        let manifest: serde_json::Value = serde_json::from_slice(&blob(m0)).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/app/hello.wasm");
        assert_eq!(config["architecture"], "wasm");
        let layer = blob(&manifest["layers"][0]);
        assert_eq!(config["rootfs"]["diff_ids"][0], digest(&layer));
        let lf = unpack(&layer);
        assert_eq!(lf["app/hello.wasm"], b"\0asm\x01\0\0\0");
        assert!(lf.contains_key("app/"));
    }

    #[test]
    fn a_native_image_has_its_platform_and_an_executable_entrypoint() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("hello");
        std::fs::write(&f, b"\x7fELF").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = ImageSpec { name: "x:v".into(), files: vec![(f, "/hello".into())], entrypoint: vec!["/hello".into()], env: vec![], platform: ("linux".into(), "amd64".into()) };
        let mut buf = Vec::new();
        build_image_archive(&spec, &mut buf).unwrap();
        let files = unpack(&buf);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(index["manifests"][0]["platform"], serde_json::json!({"os": "linux", "architecture": "amd64"}));
        let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&files[&format!("blobs/sha256/{}", &manifest_digest[7..])]).unwrap();
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
        let layer = &files[&format!("blobs/sha256/{}", &layer_digest[7..])];
        let mut ar = tar::Archive::new(&layer[..]);
        let e = ar.entries().unwrap().map(|e| e.unwrap()).find(|e| e.path().unwrap().to_string_lossy() == "hello").expect("hello in the layer");
        assert_eq!(e.header().mode().unwrap() & 0o777, 0o755);
    }

    #[test]
    fn relative_destination_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x");
        std::fs::write(&f, b"x").unwrap();
        let spec = ImageSpec { name: "x".into(), files: vec![(f, "x".into())], entrypoint: vec!["/x".into()], env: vec![], platform: ImageSpec::wasm_platform() };
        assert!(matches!(build_image_archive(&spec, Vec::new()), Err(ImageError::RelativeDest(_))));
    }
}
