//! `wasm-oci`: turns a .wasm file into an OCI image archive for `ctr image import`.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: wasm-oci --name REF --output FILE.tar [--aot] [--entrypoint PATH] [--add HOST:DEST]... [--env K=V]... [--platform OS/ARCH] MODULE.wasm

Builds a wasm OCI image archive in the compat layout (one layer, platform wasi/wasm).
The module goes to /<its file name> and is the entrypoint unless --entrypoint says otherwise.
--aot ships the module compiled by WasmEdge's AOT compiler (universal wasm: the module with
its native code in a custom section), which the shim runs without compiling it again.
--platform sets another platform than wasi/wasm, e.g. linux/amd64 to package a native program
(the MODULE argument) the same way for runtimes that run native images.
Import it with:  ctr image import --all-platforms FILE.tar";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut name, mut output, mut entry, mut module) = (None, None, None, None);
    let (mut files, mut env, mut aot) = (Vec::new(), Vec::new(), false);
    let mut platform = wshim_oci::ImageSpec::wasm_platform();
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match a.as_str() {
            "--name" => name = Some(value("--name")?),
            "--output" | "-o" => output = Some(PathBuf::from(value("--output")?)),
            "--entrypoint" => entry = Some(value("--entrypoint")?),
            "--env" => env.push(value("--env")?),
            "--aot" => aot = true,
            "--platform" => {
                let v = value("--platform")?;
                let (os, arch) = v.split_once('/').filter(|(o, a)| !o.is_empty() && !a.is_empty()).with_context(|| format!("--platform {v}: expected OS/ARCH"))?;
                platform = (os.to_string(), arch.to_string());
            }
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
    // The compiled module lives next to the output until the archive is written.
    let compiled = output.with_extension("aot.partial");
    let module = if aot {
        let bytes = std::fs::read(&module).with_context(|| format!("read {}", module.display()))?;
        let _ = std::fs::remove_file(&compiled);
        wshim_engine::aot::compile(&bytes, &wshim_engine::aot::CompileOptions::default(), &compiled)
            .map_err(|e| anyhow::anyhow!("AOT compile of {}: {e}", module.display()))?;
        compiled.clone()
    } else {
        module
    };
    files.insert(0, (module, dest.clone()));
    let spec = wshim_oci::ImageSpec { name, files, entrypoint: vec![entry.unwrap_or(dest)], env, platform };
    let tmp = output.with_extension("tar.partial");
    let f = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    wshim_oci::build_image_archive(&spec, std::io::BufWriter::new(f))?;
    std::fs::rename(&tmp, &output).with_context(|| format!("rename to {}", output.display()))?;
    if aot {
        let _ = std::fs::remove_file(&compiled);
    }
    Ok(())
}
