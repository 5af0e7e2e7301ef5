//! `/proc/kallsyms` parsing and probe-target resolution.
//!
//! Static functions such as `split_lock_warn` may carry compiler suffixes
//! (`.constprop.0`, `.isra.0`, `.lto_priv.0`); `.cold` and `.part.N` pieces
//! are fragments, not entry points, and are never probe targets.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Errors reading or parsing a kallsyms file.
#[derive(Debug, Error)]
pub enum KallsymsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line did not have the `ADDRESS TYPE NAME [MODULE]` shape.
    #[error("{path}:{line}: expected `<hex address> <type> <name> [[module]]`, found {found:?}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending text.
        found: String,
    },
}

/// One symbol of kallsyms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSymbol {
    /// Address (0 when `kptr_restrict` hides it).
    pub address: u64,
    /// Type letter (`T`/`t` text, `D`/`d` data...).
    pub kind: char,
    /// Full symbol name, suffix included.
    pub name: String,
    /// Module name, for symbols of loadable modules.
    pub module: Option<String>,
}

impl KernelSymbol {
    /// Whether the symbol is in a text section (a function).
    pub fn is_function(&self) -> bool {
        matches!(self.kind, 'T' | 't' | 'W' | 'w')
    }
}

/// The function symbols of a kernel, indexed by name.
#[derive(Clone, Debug, Default)]
pub struct Kallsyms {
    functions: BTreeMap<String, KernelSymbol>,
    addresses_hidden: bool,
}

/// Longest kallsyms line read (a symbol name is at most 512 bytes).
pub const MAX_LINE_BYTES: usize = 4096;

/// Suffixes after which a symbol is still the function's entry point.
const ENTRY_SUFFIXES: [&str; 4] = [".constprop.", ".isra.", ".lto_priv.", ".llvm."];

impl Kallsyms {
    /// Reads and parses a kallsyms file (normally `/proc/kallsyms`).
    pub fn read(path: &Path) -> Result<Self, KallsymsError> {
        let text = fs::read_to_string(path).map_err(|source| KallsymsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Reads a kallsyms file line by line and keeps only the functions
    /// [`Self::resolve_probe_target`] can return for `names` (the exact name
    /// or a suffixed clone): the tracer needs five symbols of a file of
    /// 100,000+, and holding them all costs tens of MiB at start-up.
    pub fn read_for(path: &Path, names: &[&str]) -> Result<Self, KallsymsError> {
        let file = fs::File::open(path).map_err(|source| KallsymsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_reader(file, path, names)
    }

    /// [`Self::read_for`] on an open file (`path` names it in errors).
    /// Memory stays at a line plus the kept symbols whatever the input:
    /// a line is at most [`MAX_LINE_BYTES`].
    pub fn from_reader(
        input: impl std::io::Read,
        path: &Path,
        names: &[&str],
    ) -> Result<Self, KallsymsError> {
        use std::io::{BufRead as _, Read as _};
        let mut input = std::io::BufReader::new(input);
        let mut buffer = Vec::new();
        let lines = std::iter::from_fn(move || {
            buffer.clear();
            match (&mut input)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut buffer)
            {
                Ok(0) => None,
                Ok(_) if buffer.len() > MAX_LINE_BYTES => Some(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a line longer than {MAX_LINE_BYTES} bytes"),
                ))),
                Ok(_) => Some(Ok(String::from_utf8_lossy(&buffer)
                    .trim_end_matches('\n')
                    .to_owned())),
                Err(error) => Some(Err(error)),
            }
        })
        .map(|line| {
            line.map_err(|source| KallsymsError::Read {
                path: path.to_owned(),
                source,
            })
        });
        Self::collect(lines, path, |name| {
            names.iter().any(|wanted| {
                name.strip_prefix(wanted)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
        })
    }

    /// Parses kallsyms text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, KallsymsError> {
        Self::collect(text.lines().map(Ok), origin, |_| true)
    }

    fn collect<L: AsRef<str>>(
        lines: impl Iterator<Item = Result<L, KallsymsError>>,
        origin: &Path,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Self, KallsymsError> {
        let mut kallsyms = Self::default();
        let mut any_address = false;
        let mut any_function = false;
        for (index, line) in lines.enumerate() {
            let line = line?;
            let line = line.as_ref();
            if line.trim().is_empty() {
                continue;
            }
            let symbol = parse_line(line).ok_or_else(|| KallsymsError::Parse {
                path: origin.to_owned(),
                line: index + 1,
                found: line.chars().take(120).collect(),
            })?;
            any_address |= symbol.address != 0;
            if symbol.is_function() {
                any_function = true;
                if keep(&symbol.name) {
                    kallsyms
                        .functions
                        .entry(symbol.name.clone())
                        .or_insert(symbol);
                }
            }
        }
        kallsyms.addresses_hidden = any_function && !any_address;
        Ok(kallsyms)
    }

    /// True when every address is zero (`kptr_restrict` or not root).
    pub fn addresses_hidden(&self) -> bool {
        self.addresses_hidden
    }

    /// Number of function symbols.
    pub fn len(&self) -> usize {
        self.functions.len()
    }

    /// Whether no function symbol was found.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// Looks a function up by its exact name.
    pub fn function(&self, name: &str) -> Option<&KernelSymbol> {
        self.functions.get(name)
    }

    /// Resolves the attachable symbol for function `name`: the exact name if
    /// present, else a compiler-suffixed clone that is still an entry point.
    pub fn resolve_probe_target(&self, name: &str) -> Option<&KernelSymbol> {
        if let Some(symbol) = self.functions.get(name) {
            return Some(symbol);
        }
        let prefix = format!("{name}.");
        self.functions
            .range(prefix.clone()..)
            .take_while(|(candidate, _)| candidate.starts_with(&prefix))
            .map(|(_, symbol)| symbol)
            .find(|symbol| {
                let suffix = &symbol.name[name.len()..];
                ENTRY_SUFFIXES.iter().any(|entry| suffix.starts_with(entry))
            })
    }
}

/// Parses one `ADDRESS TYPE NAME [[MODULE]]` line (kallsyms and System.map).
pub(crate) fn parse_line(line: &str) -> Option<KernelSymbol> {
    let mut parts = line.split_whitespace();
    let address = u64::from_str_radix(parts.next()?, 16).ok()?;
    let kind_text = parts.next()?;
    let mut kind_chars = kind_text.chars();
    let kind = kind_chars.next()?;
    if kind_chars.next().is_some() || !kind.is_ascii_alphabetic() {
        return None;
    }
    let name = parts.next()?.to_owned();
    let module = match parts.next() {
        Some(module) => Some(module.strip_prefix('[')?.strip_suffix(']')?.to_owned()),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(KernelSymbol {
        address,
        kind,
        name,
        module,
    })
}
