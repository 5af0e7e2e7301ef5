//! Guest symbolization carried by a recording: which symbol files were
//! given (`meta.guest_symbols`) and, per event, the name a trapping guest
//! IP resolved to (`event.symbol`).

use serde::{Deserialize, Serialize};

/// A guest symbol file given with `--guest-symbols [VM=]FILE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolFileInfo {
    /// The VMID or VM name the file is for; `None` for every VM without
    /// a file of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Path as given on the command line.
    pub path: String,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
    /// Added to every address of the file (`--guest-kaslr-offset`; 0 for
    /// a guest's `/proc/kallsyms`, whose addresses are already runtime).
    #[serde(default)]
    pub kaslr_offset: u64,
    /// Symbols read from the file.
    #[serde(default)]
    pub symbols: u64,
}

/// The symbol a guest IP resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedSymbol {
    /// `function+0xoffset`, with ` [module]` for a module's function.
    pub name: String,
    /// Index into `meta.guest_symbols` of the file that resolved it.
    pub file: u32,
}
