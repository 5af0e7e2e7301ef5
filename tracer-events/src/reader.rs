//! Streaming reader of recordings, with errors that name the line.

use std::{
    io::BufRead,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::record::{FORMAT_NAME, FORMAT_VERSION, Metadata, Record};

/// Why a recording cannot be read. Every variant is bad input (exit code 2)
/// except [`ReadError::Io`].
#[derive(Debug, Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Empty file.
    #[error("{path}: empty file, expected a recording starting with a \"meta\" line")]
    Empty {
        /// File.
        path: PathBuf,
    },
    /// The first line is not this format's metadata.
    #[error(
        "{path}:1: not a recording: expected a JSON object with \"type\":\"meta\" and \"format\":\"{FORMAT_NAME}\" ({detail})"
    )]
    NotARecording {
        /// File.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// Another format version.
    #[error(
        "{path}:1: recording format version {found}, this tracer reads version {FORMAT_VERSION}"
    )]
    WrongVersion {
        /// File.
        path: PathBuf,
        /// Version found.
        found: u64,
    },
    /// A line that is not a valid record.
    #[error("{path}:{line}: {expected}: {detail}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What was expected there.
        expected: &'static str,
        /// The parser's complaint.
        detail: String,
    },
}

impl ReadError {
    /// Whether the error is bad input (as opposed to an I/O failure).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }
}

/// Reads a recording record by record.
pub struct RecordingReader<R> {
    path: PathBuf,
    input: R,
    line: u64,
    buffer: String,
    /// The metadata line.
    pub metadata: Metadata,
    /// Non-fatal problems (a cut last line, no summary).
    pub warnings: Vec<String>,
    saw_summary: bool,
    done: bool,
}

impl RecordingReader<std::io::BufReader<std::fs::File>> {
    /// Opens a file and reads its metadata line.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::new(path, std::io::BufReader::with_capacity(1 << 20, file))
    }
}

impl<R: BufRead> RecordingReader<R> {
    /// Reads the metadata line of `input` (`path` names it in errors).
    pub fn new(path: &Path, mut input: R) -> Result<Self, ReadError> {
        let mut buffer = String::new();
        let read = read_line(path, 1, &mut input, &mut buffer)?;
        if read == 0 {
            return Err(ReadError::Empty {
                path: path.to_owned(),
            });
        }
        let metadata = parse_metadata(path, buffer.trim_end_matches('\n'))?;
        Ok(Self {
            path: path.to_owned(),
            input,
            line: 1,
            buffer,
            metadata,
            warnings: Vec::new(),
            saw_summary: false,
            done: false,
        })
    }

    /// Line number of the last record returned.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The next record after the metadata, `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<Record>, ReadError> {
        loop {
            if self.done {
                return Ok(None);
            }
            self.buffer.clear();
            let read = read_line(&self.path, self.line + 1, &mut self.input, &mut self.buffer)?;
            if read == 0 {
                self.done = true;
                if !self.saw_summary {
                    self.warnings.push(format!(
                        "{}: no summary record after line {}: the recorder did not finish (killed, crashed or the disk filled); totals are recomputed from the events",
                        self.path.display(),
                        self.line
                    ));
                }
                return Ok(None);
            }
            self.line += 1;
            let complete = self.buffer.ends_with('\n');
            let text = self.buffer.trim_end_matches('\n');
            if text.trim().is_empty() {
                continue;
            }
            if self.saw_summary {
                return Err(self.corrupt("nothing after the summary record", "extra line".into()));
            }
            match serde_json::from_str::<Record>(text) {
                Ok(Record::Meta(_)) => {
                    return Err(self.corrupt(
                        "an event, lost or summary record",
                        "a second meta record".into(),
                    ));
                }
                Ok(record) => {
                    if matches!(record, Record::Summary(_)) {
                        self.saw_summary = true;
                    }
                    return Ok(Some(record));
                }
                Err(error) if !complete => {
                    // The writer was cut off mid-line: everything before is valid.
                    self.done = true;
                    self.warnings.push(format!(
                        "{}:{}: last line is incomplete ({} bytes, {error}); ignored: the recording was interrupted",
                        self.path.display(),
                        self.line,
                        text.len()
                    ));
                    return Ok(None);
                }
                Err(error) => {
                    return Err(self.corrupt(
                        "a JSON record with \"type\" event, lost or summary",
                        error.to_string(),
                    ));
                }
            }
        }
    }

    fn corrupt(&self, expected: &'static str, detail: String) -> ReadError {
        ReadError::Corrupt {
            path: self.path.clone(),
            line: self.line,
            expected,
            detail,
        }
    }
}

fn read_line(
    path: &Path,
    line: u64,
    input: &mut impl BufRead,
    buffer: &mut String,
) -> Result<usize, ReadError> {
    input.read_line(buffer).map_err(|source| {
        if source.kind() == std::io::ErrorKind::InvalidData {
            ReadError::Corrupt {
                path: path.to_owned(),
                line,
                expected: "UTF-8 text",
                detail: source.to_string(),
            }
        } else {
            ReadError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })
}

fn parse_metadata(path: &Path, text: &str) -> Result<Metadata, ReadError> {
    let not_a_recording = |detail: String| ReadError::NotARecording {
        path: path.to_owned(),
        detail,
    };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|error| not_a_recording(format!("line 1 is not JSON: {error}")))?;
    if value.get("type").and_then(serde_json::Value::as_str) != Some("meta")
        || value.get("format").and_then(serde_json::Value::as_str) != Some(FORMAT_NAME)
    {
        let found: String = text.chars().take(60).collect();
        return Err(not_a_recording(format!("found {found:?}")));
    }
    let version = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| not_a_recording("no numeric \"version\"".into()))?;
    if version != u64::from(FORMAT_VERSION) {
        return Err(ReadError::WrongVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    match serde_json::from_value::<Record>(value) {
        Ok(Record::Meta(metadata)) => Ok(*metadata),
        Ok(_) => unreachable!("type checked above"),
        Err(error) => Err(ReadError::Corrupt {
            path: path.to_owned(),
            line: 1,
            expected: "a complete meta record",
            detail: error.to_string(),
        }),
    }
}
