//! tracefs: finding (and if needed mounting) it, and parsing event `format`
//! files into the field layouts the eBPF programs need.
//!
//! Field offsets differ between kernels (`kvm_exit` gained `requests`, older
//! `signal_generate` lacks `group`/`result`), so they are always read here at
//! start-up and never hard-coded.

use std::{
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;
use tracer_common::{
    FIELD_ABSENT, KvmExitLayout, KvmUserspaceExitLayout, SignalGenerateLayout, TaskRenameLayout,
};

/// Where tracefs is usually found, in order of preference.
pub const TRACEFS_CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Errors about tracefs and format files.
#[derive(Debug, Error)]
pub enum TracefsError {
    /// The format file could not be read (event missing or tracefs absent).
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of the format file was malformed.
    #[error("{path}:{line}: expected {expected}, found {found:?}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What the parser expected.
        expected: &'static str,
        /// The offending text.
        found: String,
    },
    /// A field the tracer needs is missing or has an unexpected size.
    #[error("{path}: field `{field}` {problem}")]
    Field {
        /// File path.
        path: PathBuf,
        /// Field name.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// tracefs is not mounted and could not be mounted.
    #[error("tracefs is not mounted at {tried:?} and mounting it failed: {reason}")]
    NotMounted {
        /// Paths tried.
        tried: Vec<&'static str>,
        /// Why mounting failed.
        reason: String,
    },
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatField {
    /// C declaration without the name (`unsigned long`, `char[16]`).
    pub c_type: String,
    /// Field name.
    pub name: String,
    /// Byte offset in the raw record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Whether the type is signed.
    pub signed: bool,
}

/// A parsed tracefs `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFormat {
    /// Event name.
    pub name: String,
    /// Event id on this kernel.
    pub id: u32,
    /// Fields, common ones included.
    pub fields: Vec<FormatField>,
    /// Path it was read from.
    pub path: PathBuf,
}

impl EventFormat {
    /// Reads `<tracefs>/events/<category>/<name>/format`.
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Self, TracefsError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).map_err(|source| TracefsError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Parses the text of a format file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TracefsError> {
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let parse_error = |expected| TracefsError::Parse {
                path: path.to_owned(),
                line: index + 1,
                expected,
                found: raw.chars().take(120).collect(),
            };
            if let Some(rest) = line.strip_prefix("name:") {
                name = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("ID:") {
                id = Some(
                    rest.trim()
                        .parse()
                        .map_err(|_| parse_error("a decimal event ID"))?,
                );
            } else if line.starts_with("field:") {
                fields.push(
                    parse_field(line).ok_or_else(|| {
                        parse_error("`field:<decl>; offset:N; size:N; signed:N;`")
                    })?,
                );
            }
        }
        let missing = |what| TracefsError::Parse {
            path: path.to_owned(),
            line: 1,
            expected: what,
            found: text.lines().next().unwrap_or_default().to_owned(),
        };
        Ok(Self {
            name: name.ok_or_else(|| missing("a `name:` line"))?,
            id: id.ok_or_else(|| missing("an `ID:` line"))?,
            fields,
            path: path.to_owned(),
        })
    }

    /// Looks a field up by name.
    pub fn field(&self, name: &str) -> Option<&FormatField> {
        self.fields.iter().find(|field| field.name == name)
    }

    fn offset_sized(&self, name: &'static str, size: u32) -> Result<u32, TracefsError> {
        let field = self.field(name).ok_or_else(|| TracefsError::Field {
            path: self.path.clone(),
            field: name,
            problem: "is missing".into(),
        })?;
        if field.size != size {
            return Err(TracefsError::Field {
                path: self.path.clone(),
                field: name,
                problem: format!("has size {} (expected {size})", field.size),
            });
        }
        Ok(field.offset)
    }

    fn optional_offset(&self, name: &'static str, size: u32) -> Result<u32, TracefsError> {
        if self.field(name).is_none() {
            return Ok(FIELD_ABSENT);
        }
        self.offset_sized(name, size)
    }

    /// Layout of `signal:signal_generate` (`group`/`result` are optional).
    pub fn signal_generate_layout(&self) -> Result<SignalGenerateLayout, TracefsError> {
        Ok(SignalGenerateLayout {
            sig: self.offset_sized("sig", 4)?,
            errno: self.offset_sized("errno", 4)?,
            code: self.offset_sized("code", 4)?,
            pid: self.offset_sized("pid", 4)?,
            group: self.optional_offset("group", 4)?,
            result: self.optional_offset("result", 4)?,
        })
    }

    /// Layout of `kvm:kvm_userspace_exit`.
    pub fn kvm_userspace_exit_layout(&self) -> Result<KvmUserspaceExitLayout, TracefsError> {
        Ok(KvmUserspaceExitLayout {
            reason: self.offset_sized("reason", 4)?,
            errno: self.offset_sized("errno", 4)?,
        })
    }

    /// Layout of `task:task_rename` (`pid` is optional).
    pub fn task_rename_layout(&self) -> Result<TaskRenameLayout, TracefsError> {
        Ok(TaskRenameLayout {
            pid: self.optional_offset("pid", 4)?,
            newcomm: self.offset_sized("newcomm", 16)?,
        })
    }

    /// Layout of `kvm:kvm_exit`.
    pub fn kvm_exit_layout(&self) -> Result<KvmExitLayout, TracefsError> {
        Ok(KvmExitLayout {
            exit_reason: self.offset_sized("exit_reason", 4)?,
            guest_rip: self.offset_sized("guest_rip", 8)?,
            isa: self.offset_sized("isa", 4)?,
            info1: self.optional_offset("info1", 8)?,
            info2: self.optional_offset("info2", 8)?,
            intr_info: self.offset_sized("intr_info", 4)?,
            error_code: self.optional_offset("error_code", 4)?,
            vcpu_id: self.offset_sized("vcpu_id", 4)?,
        })
    }
}

fn parse_field(line: &str) -> Option<FormatField> {
    let mut declaration = None;
    let mut offset = None;
    let mut size = None;
    let mut signed = None;
    for part in line
        .split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let (key, value) = part.split_once(':')?;
        match key.trim() {
            "field" => declaration = Some(value.trim()),
            "offset" => offset = value.trim().parse().ok(),
            "size" => size = value.trim().parse().ok(),
            "signed" => signed = Some(value.trim() == "1"),
            _ => {}
        }
    }
    let declaration = declaration?;
    // "char comm[16]" -> type "char[16]", name "comm"; "int sig" -> "int", "sig".
    let (c_type, name) = if let Some((head, tail)) = declaration.split_once('[') {
        let (ty, name) = head.trim().rsplit_once(' ')?;
        (format!("{ty}[{tail}"), name.to_owned())
    } else {
        let (ty, name) = declaration.rsplit_once(' ')?;
        (ty.trim().to_owned(), name.to_owned())
    };
    Some(FormatField {
        c_type,
        name,
        offset: offset?,
        size: size?,
        signed: signed?,
    })
}

/// Returns the tracefs mount point, mounting tracefs at
/// `/sys/kernel/tracing` when no candidate has it (fresh boots often don't).
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(found) = find_mounted() {
        return Ok(found);
    }
    let target = Path::new(TRACEFS_CANDIDATES[0]);
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev"])
        .arg(target)
        .status();
    match status {
        Ok(status) if status.success() => Ok(target.to_owned()),
        Ok(status) => Err(TracefsError::NotMounted {
            tried: TRACEFS_CANDIDATES.to_vec(),
            reason: format!(
                "`mount -t tracefs nodev {}` exited with {status}",
                target.display()
            ),
        }),
        Err(error) => Err(TracefsError::NotMounted {
            tried: TRACEFS_CANDIDATES.to_vec(),
            reason: format!("cannot run mount: {error}"),
        }),
    }
}

/// The first candidate that has an `events` directory, if any.
pub fn find_mounted() -> Option<PathBuf> {
    TRACEFS_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|candidate| candidate.join("events").is_dir())
}
