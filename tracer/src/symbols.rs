//! Guest symbolization: a guest's `/proc/kallsyms` or `System.map`
//! (`--guest-symbols [VM=]FILE`, `--guest-kaslr-offset [VM=]HEX`) turns a
//! trapping guest IP into `function+0xoffset`.
//!
//! A file is read line by line with caps on its size and line count, and
//! kept as one sorted array of addresses with the names in a single
//! string, so a 15 MiB kallsyms costs a few MiB.

use std::{
    collections::HashMap,
    io::{BufRead as _, Read as _},
    path::{Path, PathBuf},
};

use sha2::Digest as _;
use thiserror::Error;
use tracer_events::{Event, EventBody, ResolvedSymbol, SymbolFileInfo, TrapSource, VmThreads};

use crate::kernel::{bounded, kallsyms};

/// Largest symbol file read (64 MiB: a distribution kernel's kallsyms
/// with its modules has 10-20 MiB).
pub const MAX_FILE_BYTES: u64 = bounded::KALLSYMS_CAP;
/// Most lines a symbol file may have (a kernel has a few hundred thousand).
pub const MAX_LINES: usize = 4_000_000;

/// Why a symbol file cannot be used.
#[derive(Debug, Error)]
pub enum SymbolFileError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read the guest symbol file: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Error.
        #[source]
        source: std::io::Error,
    },
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("{path}: larger than {MAX_FILE_BYTES} bytes, not a kallsyms or System.map")]
    TooLarge {
        /// File.
        path: PathBuf,
    },
    /// More than [`MAX_LINES`] lines.
    #[error("{path}: more than {MAX_LINES} lines, not a kallsyms or System.map")]
    TooManyLines {
        /// File.
        path: PathBuf,
    },
    /// A line that is not a symbol.
    #[error(
        "{path}:{line}: expected `<hex address> <type letter> <name> [[module]]` (a guest's /proc/kallsyms or System.map), found {found:?}"
    )]
    Parse {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The line (first 120 characters).
        found: String,
    },
    /// The KASLR offset moves an address past the end of the address space.
    #[error(
        "{path}:{line}: address 0x{address:x} plus KASLR offset 0x{offset:x} overflows 64 bits"
    )]
    OffsetOverflow {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Address in the file.
        address: u64,
        /// The offset.
        offset: u64,
    },
    /// Every address is zero: read with `kptr_restrict` in force.
    #[error(
        "{path}: every address is 0 (the guest hid them: read /proc/kallsyms as root with kernel.kptr_restrict=0, or use System.map)"
    )]
    AddressesHidden {
        /// File.
        path: PathBuf,
    },
    /// No function symbol at all.
    #[error("{path}: no function symbol (type T, t, W or w) found")]
    NoFunctions {
        /// File.
        path: PathBuf,
    },
}

/// One symbol of a [`SymbolTable`].
#[derive(Clone, Copy, Debug)]
struct Entry {
    address: u64,
    name_start: u32,
    name_len: u32,
    /// Index into `modules`, or `u32::MAX`.
    module: u32,
    function: bool,
}

/// A guest kernel's symbols sorted by runtime address.
#[derive(Clone, Debug, Default)]
pub struct SymbolTable {
    entries: Vec<Entry>,
    names: String,
    modules: Vec<String>,
}

/// The file's bytes hashed while it is parsed.
struct Hashed<R> {
    inner: R,
    hash: sha2::Sha256,
}

impl<R: std::io::Read> std::io::Read for Hashed<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hash.update(&buffer[..read]);
        Ok(read)
    }
}

impl SymbolTable {
    /// Reads a regular file; returns the table and the file's SHA-256 (hex).
    pub fn read(path: &Path, kaslr_offset: u64) -> Result<(Self, String), SymbolFileError> {
        let file = bounded::open_regular(path).map_err(|source| SymbolFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_reader(file, path, kaslr_offset)
    }

    /// Parses symbols from `input` (`path` names it in errors), adding
    /// `kaslr_offset` to every address.
    pub fn from_reader(
        input: impl std::io::Read,
        path: &Path,
        kaslr_offset: u64,
    ) -> Result<(Self, String), SymbolFileError> {
        let read_error = |source| SymbolFileError::Read {
            path: path.to_owned(),
            source,
        };
        let mut input = std::io::BufReader::new(Hashed {
            inner: input.take(MAX_FILE_BYTES + 1),
            hash: sha2::Sha256::new(),
        });
        let mut table = Self::default();
        let mut module_index: HashMap<String, u32> = HashMap::new();
        let mut buffer = Vec::new();
        let mut total = 0u64;
        let mut any_address = false;
        let mut line_number = 0usize;
        loop {
            buffer.clear();
            let read = (&mut input)
                .take(kallsyms::MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut buffer)
                .map_err(read_error)?;
            if read == 0 {
                break;
            }
            total += read as u64;
            line_number += 1;
            if total > MAX_FILE_BYTES {
                return Err(SymbolFileError::TooLarge {
                    path: path.to_owned(),
                });
            }
            if line_number > MAX_LINES {
                return Err(SymbolFileError::TooManyLines {
                    path: path.to_owned(),
                });
            }
            let text = String::from_utf8_lossy(&buffer);
            let parse_error = || SymbolFileError::Parse {
                path: path.to_owned(),
                line: line_number,
                found: text.trim_end().chars().take(120).collect(),
            };
            if buffer.len() > kallsyms::MAX_LINE_BYTES {
                return Err(parse_error());
            }
            let line = text.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                continue;
            }
            let symbol = kallsyms::parse_line(line).ok_or_else(parse_error)?;
            any_address |= symbol.address != 0;
            let address = symbol.address.checked_add(kaslr_offset).ok_or(
                SymbolFileError::OffsetOverflow {
                    path: path.to_owned(),
                    line: line_number,
                    address: symbol.address,
                    offset: kaslr_offset,
                },
            )?;
            let function = symbol.is_function();
            let module = match symbol.module {
                Some(module) => {
                    let next = table.modules.len() as u32;
                    *module_index.entry(module).or_insert_with_key(|module| {
                        table.modules.push(module.clone());
                        next
                    })
                }
                None => u32::MAX,
            };
            table.entries.push(Entry {
                address,
                name_start: table.names.len() as u32,
                name_len: symbol.name.len() as u32,
                module,
                function,
            });
            table.names.push_str(&symbol.name);
        }
        if !table.entries.iter().any(|entry| entry.function) {
            return Err(SymbolFileError::NoFunctions {
                path: path.to_owned(),
            });
        }
        if !any_address {
            return Err(SymbolFileError::AddressesHidden {
                path: path.to_owned(),
            });
        }
        // Stable: of symbols at one address the file's first stays first.
        table.entries.sort_by_key(|entry| entry.address);
        table.entries.shrink_to_fit();
        table.names.shrink_to_fit();
        let digest = input.into_inner().hash.finalize();
        let hex = digest
            .iter()
            .fold(String::with_capacity(64), |mut hex, byte| {
                use std::fmt::Write as _;
                let _ = write!(hex, "{byte:02x}");
                hex
            });
        Ok((table, hex))
    }

    /// Symbols read.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `function+0xoffset` (plus ` [module]`) of the function containing
    /// `ip`: the last function at or below it, ending where the next
    /// higher symbol starts. `None` below the first symbol, in data, or
    /// past the last symbol (its end is unknown), e.g. a user-space IP.
    pub fn resolve(&self, ip: u64) -> Option<String> {
        let above = self.entries.partition_point(|entry| entry.address <= ip);
        let candidate = self.entries.get(above.checked_sub(1)?)?;
        // The first symbol at the candidate's address (file order).
        let first =
            self.entries[..above].partition_point(|entry| entry.address < candidate.address);
        let symbol = self.entries[first..above]
            .iter()
            .find(|entry| entry.function)?;
        // The function must end before the IP: a symbol above it exists.
        self.entries.get(above)?;
        let name =
            &self.names[symbol.name_start as usize..(symbol.name_start + symbol.name_len) as usize];
        let offset = ip - symbol.address;
        Some(match self.modules.get(symbol.module as usize) {
            Some(module) => format!("{name}+0x{offset:x} [{module}]"),
            None => format!("{name}+0x{offset:x}"),
        })
    }
}

/// `[VM=]VALUE` of a repeatable option keyed by VMID or VM name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyed<T> {
    /// The VMID or name; `None` for every VM without its own.
    pub vm: Option<String>,
    /// The value.
    pub value: T,
}

/// Parses `--guest-symbols [VM=]FILE`. `VM=` is taken as a key only when it
/// has no `/` (so a path with `=` in a directory name stays a path).
pub fn parse_symbols_arg(text: &str) -> Result<Keyed<PathBuf>, String> {
    let (vm, path) = match text.split_once('=') {
        Some((vm, path)) if !vm.is_empty() && !vm.contains('/') => (Some(vm.to_owned()), path),
        _ => (None, text),
    };
    if path.is_empty() {
        return Err(format!("expected [VM=]FILE, got {text:?}"));
    }
    Ok(Keyed {
        vm,
        value: PathBuf::from(path),
    })
}

/// Parses `--guest-kaslr-offset [VM=]HEX` (`0x` optional).
pub fn parse_offset_arg(text: &str) -> Result<Keyed<u64>, String> {
    let (vm, hex) = match text.split_once('=') {
        Some((vm, hex)) => (Some(vm.to_owned()), hex),
        None => (None, text),
    };
    let digits = hex
        .strip_prefix("0x")
        .or_else(|| hex.strip_prefix("0X"))
        .unwrap_or(hex);
    let value = u64::from_str_radix(digits, 16)
        .map_err(|_| format!("expected [VM=]HEX such as 0x1e00000, got {text:?}"))?;
    Ok(Keyed { vm, value })
}

/// Errors combining the symbol options.
#[derive(Debug, Error)]
pub enum GuestSymbolsError {
    /// A file was unusable.
    #[error(transparent)]
    File(#[from] SymbolFileError),
    /// Two files for one VM (or two without a VM).
    #[error("--guest-symbols given twice for {0}")]
    DuplicateVm(String),
    /// An offset for a VM without a symbol file.
    #[error("--guest-kaslr-offset for {0}, which has no --guest-symbols file")]
    OffsetWithoutFile(String),
}

fn key_label(vm: Option<&str>) -> String {
    vm.map_or_else(|| "every VM".to_owned(), |vm| format!("VM {vm}"))
}

/// The guest symbol files of a session or report.
#[derive(Debug, Default)]
pub struct GuestSymbols {
    files: Vec<(SymbolFileInfo, SymbolTable)>,
}

impl GuestSymbols {
    /// Loads every `--guest-symbols` file with its `--guest-kaslr-offset`.
    pub fn load(
        files: &[Keyed<PathBuf>],
        offsets: &[Keyed<u64>],
    ) -> Result<Self, GuestSymbolsError> {
        let mut loaded: Vec<(SymbolFileInfo, SymbolTable)> = Vec::new();
        for file in files {
            if loaded.iter().any(|(info, _)| info.vm == file.vm) {
                return Err(GuestSymbolsError::DuplicateVm(key_label(
                    file.vm.as_deref(),
                )));
            }
            let offset = offsets
                .iter()
                .rev()
                .find(|offset| offset.vm == file.vm)
                .map_or(0, |offset| offset.value);
            let (table, sha256) = SymbolTable::read(&file.value, offset)?;
            loaded.push((
                SymbolFileInfo {
                    vm: file.vm.clone(),
                    path: file.value.display().to_string(),
                    sha256,
                    kaslr_offset: offset,
                    symbols: table.len() as u64,
                },
                table,
            ));
        }
        if let Some(orphan) = offsets
            .iter()
            .find(|offset| !loaded.iter().any(|(info, _)| info.vm == offset.vm))
        {
            return Err(GuestSymbolsError::OffsetWithoutFile(key_label(
                orphan.vm.as_deref(),
            )));
        }
        Ok(Self { files: loaded })
    }

    /// Whether no file was given.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// What a recording says about the files.
    pub fn infos(&self) -> Vec<SymbolFileInfo> {
        self.files.iter().map(|(info, _)| info.clone()).collect()
    }

    /// The file for a VM with `vmid` and `name`: its own, else the one
    /// without a VM.
    fn file_for(&self, vmid: Option<&str>, name: Option<&str>) -> Option<usize> {
        let own = self.files.iter().position(|(info, _)| {
            info.vm
                .as_deref()
                .is_some_and(|key| Some(key) == vmid || Some(key) == name)
        });
        own.or_else(|| self.files.iter().position(|(info, _)| info.vm.is_none()))
    }

    /// Resolves `ip` in file `file`.
    fn resolve(&self, file: usize, ip: u64) -> Option<ResolvedSymbol> {
        let (_, table) = self.files.get(file)?;
        table.resolve(ip).map(|name| ResolvedSymbol {
            name,
            file: file as u32,
        })
    }
}

/// Most distinct (pid, IP) names kept for rows (a hostile recording
/// cannot grow the map without end).
pub const MAX_REMEMBERED: usize = 65_536;

/// Guest symbols bound to the VMs of a host or recording: which file
/// serves which process, and the names of the IPs seen.
#[derive(Debug, Default)]
pub struct Symbolizer {
    symbols: GuestSymbols,
    /// Process -> its file; processes not listed are not known VMs.
    by_pid: HashMap<u32, Option<usize>>,
    /// Names of the IPs events carried, for rows (`last_ip`).
    seen: HashMap<(u32, u64), String>,
}

impl Symbolizer {
    /// A symbolizer over `symbols` (empty: events keep what they carry).
    pub fn new(symbols: GuestSymbols) -> Self {
        Self {
            symbols,
            ..Self::default()
        }
    }

    /// The files, for the recording's metadata.
    pub fn infos(&self) -> Vec<SymbolFileInfo> {
        self.symbols.infos()
    }

    /// Whether any file was given.
    pub fn has_files(&self) -> bool {
        !self.symbols.is_empty()
    }

    /// Learns the VMs (pid, VMID, name) of a host or recording.
    pub fn set_vms(&mut self, vms: &[VmThreads]) {
        for vm in vms {
            self.by_pid.insert(
                vm.pid,
                self.symbols
                    .file_for(vm.info.vmid.as_deref(), vm.info.name.as_deref()),
            );
        }
    }

    /// Learns a process seen while tracing: a VM when it has a VMID or a
    /// VM name (other processes' `split_lock_warn` IPs are host IPs).
    pub fn set_process(&mut self, pid: u32, info: &tracer_events::ProcessInfo) {
        if info.vmid.is_some() || info.name.is_some() {
            let file = self
                .symbols
                .file_for(info.vmid.as_deref(), info.name.as_deref());
            self.by_pid.insert(pid, file);
        }
    }

    /// The guest IP of an event, if it has one: a guest trap's, an #AC
    /// exit's, and `split_lock_warn`'s in a known VM (in any other process
    /// that IP is the host's).
    fn guest_ip(&self, event: &Event) -> Option<u64> {
        match event.body {
            EventBody::SplitLockTrap {
                source: TrapSource::Guest,
                ip,
            } => Some(ip),
            EventBody::SplitLockTrap {
                source: TrapSource::Warn,
                ip,
            } if self.by_pid.contains_key(&event.tgid) => Some(ip),
            EventBody::VmExit { guest_rip, .. } => Some(guest_rip),
            _ => None,
        }
    }

    /// Sets `event.symbol` from the files when there are any (a VM without
    /// a file of its own uses the file without a VM); remembers the name
    /// either way for [`Self::annotate_row`].
    pub fn symbolize(&mut self, event: &mut Event) {
        let Some(ip) = self.guest_ip(event) else {
            return;
        };
        if self.has_files() {
            let file = match self.by_pid.get(&event.tgid) {
                Some(file) => *file,
                None => self.symbols.file_for(None, None),
            };
            event.symbol = file
                .and_then(|file| self.symbols.resolve(file, ip))
                .map(Box::new);
        }
        if let Some(symbol) = &event.symbol
            && (self.seen.len() < MAX_REMEMBERED || self.seen.contains_key(&(event.tgid, ip)))
        {
            self.seen.insert((event.tgid, ip), symbol.name.clone());
        }
    }

    /// Sets `row.last_ip_symbol` and names the IP in the row's evidence.
    pub fn annotate_row(&self, row: &mut tracer_events::ThreadRow) {
        let Some(ip) = row.last_ip else { return };
        let Some(name) = self.seen.get(&(row.pid, ip)) else {
            return;
        };
        let hex = format!("0x{ip:x}");
        for line in &mut row.evidence {
            if line.contains(&hex) && !line.contains(name.as_str()) {
                *line = line.replace(&hex, &format!("{hex} ({name})"));
            }
        }
        row.last_ip_symbol = Some(name.clone());
    }
}

#[cfg(test)]
mod tests;
