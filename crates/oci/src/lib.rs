//! OCI bundle and image handling: reading a bundle's `config.json`, deciding whether its
//! process is a wasm module or a native program, and building wasm OCI image archives.
//! Nothing here starts processes.

mod bundle;
mod entry;
mod image;
mod resolve;

pub use bundle::{Bundle, BundleError};
pub use entry::{detect, parse_entrypoint, Entrypoint, EntryError, ANNOTATION_HANDLER, ANNOTATION_VARIANT};
pub use image::{build_image_archive, ImageError, ImageSpec};
pub use resolve::{resolve_in_root, ResolveError, RootDir};

/// The first four bytes of every wasm binary module.
pub const WASM_MAGIC: [u8; 4] = *b"\0asm";
