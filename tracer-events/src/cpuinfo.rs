//! `/proc/cpuinfo`: the first processor's identity, microcode and the
//! split-lock/bus-lock detection flags.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Identity of the host CPU (first processor block).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// `vendor_id` (GenuineIntel, AuthenticAMD, ...).
    pub vendor: String,
    /// `cpu family`.
    pub family: u32,
    /// `model`.
    pub model: u32,
    /// `stepping`, when reported.
    pub stepping: Option<u32>,
    /// `model name`.
    pub model_name: String,
    /// `microcode` revision, when reported (absent in some guests).
    pub microcode: Option<u64>,
    /// Whether `flags` lists `split_lock_detect` (the kernel enabled #AC
    /// split-lock detection on this CPU).
    pub split_lock_detect: bool,
    /// Whether `flags` lists `bus_lock_detect` (#DB after bus locks).
    pub bus_lock_detect: bool,
    /// Whether `flags` lists `hypervisor` (this host is itself a guest).
    pub hypervisor: bool,
    /// Number of processor blocks.
    pub processors: usize,
}

/// Why `/proc/cpuinfo` text could not be understood.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpuInfoError {
    /// No `processor` block at all.
    #[error("no processor block (expected lines like \"processor\\t: 0\")")]
    Empty,
    /// A required field is missing from the first block.
    #[error("first processor block has no {0:?} line")]
    Missing(&'static str),
    /// A field is not a number.
    #[error("line {line}: {field:?} is {value:?}, expected a number")]
    NotANumber {
        /// 1-based line number.
        line: usize,
        /// Field name.
        field: &'static str,
        /// The text found.
        value: String,
    },
}

fn number(field: &'static str, value: &str, line: usize) -> Result<u64, CpuInfoError> {
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.map_err(|_| CpuInfoError::NotANumber {
        line,
        field,
        value: value.to_owned(),
    })
}

impl CpuInfo {
    /// Parses `/proc/cpuinfo` text (x86 layout).
    pub fn parse(text: &str) -> Result<Self, CpuInfoError> {
        let mut info = Self::default();
        let mut family = None;
        let mut model = None;
        let mut in_first_block = false;
        let mut seen_block = false;
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let Some((key, value)) = line.split_once(':') else {
                if line.trim().is_empty() && seen_block {
                    in_first_block = false;
                }
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            if key == "processor" {
                info.processors += 1;
                in_first_block = !seen_block;
                seen_block = true;
                continue;
            }
            if !in_first_block {
                continue;
            }
            match key {
                "vendor_id" => value.clone_into(&mut info.vendor),
                "cpu family" => family = Some(number("cpu family", value, line_number)? as u32),
                "model" => model = Some(number("model", value, line_number)? as u32),
                "stepping" => {
                    info.stepping = number("stepping", value, line_number)
                        .ok()
                        .map(|v| v as u32);
                }
                "model name" => value.clone_into(&mut info.model_name),
                "microcode" => info.microcode = Some(number("microcode", value, line_number)?),
                "flags" => {
                    for flag in value.split_whitespace() {
                        match flag {
                            "split_lock_detect" => info.split_lock_detect = true,
                            "bus_lock_detect" => info.bus_lock_detect = true,
                            "hypervisor" => info.hypervisor = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if !seen_block {
            return Err(CpuInfoError::Empty);
        }
        info.family = family.ok_or(CpuInfoError::Missing("cpu family"))?;
        info.model = model.ok_or(CpuInfoError::Missing("model"))?;
        Ok(info)
    }

    /// `family 6 model 0x9c stepping 0` style summary.
    pub fn signature(&self) -> String {
        let stepping = self
            .stepping
            .map_or_else(|| "?".to_owned(), |s| s.to_string());
        format!(
            "family {} model {} (0x{:x}) stepping {stepping}",
            self.family, self.model, self.model
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_first_block_only_and_counts_processors() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 156\n\
model name\t: Intel(R) Celeron(R) N5105 @ 2.00GHz\nstepping\t: 0\nmicrocode\t: 0x24000023\n\
flags\t\t: fpu split_lock_detect\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n\
model\t\t: 1\nflags\t\t: fpu\n";
        let info = CpuInfo::parse(text).unwrap();
        assert_eq!(info.model, 156);
        assert_eq!(info.microcode, Some(0x2400_0023));
        assert!(info.split_lock_detect && !info.bus_lock_detect);
        assert_eq!(info.processors, 2);
        assert_eq!(info.signature(), "family 6 model 156 (0x9c) stepping 0");
    }

    #[test]
    fn errors_name_the_line_and_field() {
        assert_eq!(CpuInfo::parse(""), Err(CpuInfoError::Empty));
        assert_eq!(
            CpuInfo::parse("processor : 0\ncpu family : six\n"),
            Err(CpuInfoError::NotANumber {
                line: 2,
                field: "cpu family",
                value: "six".into()
            })
        );
        assert_eq!(
            CpuInfo::parse("processor : 0\ncpu family : 6\n"),
            Err(CpuInfoError::Missing("model"))
        );
    }
}
