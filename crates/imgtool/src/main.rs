//! `wasm-oci`: turns a .wasm file into an OCI image archive for `ctr image import`.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: wasm-oci --name REF --output FILE.tar [--entrypoint PATH] [--add HOST:DEST]... [--env K=V]... MODULE.wasm

Builds a wasm OCI image archive in the compat layout (one layer, platform wasi/wasm).
The module goes to /<its file name> and is the entrypoint unless --entrypoint says otherwise.
Import it with:  ctr image import --all-platforms FILE.tar";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut name, mut output, mut entry, mut module) = (None, None, None, None);
    let (mut files, mut env) = (Vec::new(), Vec::new());
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match a.as_str() {
            "--name" => name = Some(value("--name")?),
            "--output" | "-o" => output = Some(PathBuf::from(value("--output")?)),
            "--entrypoint" => entry = Some(value("--entrypoint")?),
            "--env" => env.push(value("--env")?),
            "--add" => {
                let v = value("--add")?;
                let (host, dest) = v.split_once(':').with_context(|| format!("--add {v}: expected HOST:DEST"))?;
                files.push((PathBuf::from(host), dest.to_string()));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if s.starts_with('-') => bail!("unknown option {s}\n{USAGE}"),
            s => module = Some(PathBuf::from(s)),
        }
    }
    let (Some(name), Some(output), Some(module)) = (name, output, module) else { bail!("{USAGE}") };
    let file_name = module.file_name().context("module path has no file name")?.to_string_lossy().into_owned();
    let dest = format!("/{file_name}");
    files.insert(0, (module, dest.clone()));
    let spec = wshim_oci::ImageSpec { name, files, entrypoint: vec![entry.unwrap_or(dest)], env };
    let tmp = output.with_extension("tar.partial");
    let f = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    wshim_oci::build_image_archive(&spec, std::io::BufWriter::new(f))?;
    std::fs::rename(&tmp, &output).with_context(|| format!("rename to {}", output.display()))?;
    Ok(())
}
