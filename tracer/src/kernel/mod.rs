//! Reading the running kernel: symbols and tracefs formats.

pub mod host;
pub mod kallsyms;
pub mod tracefs;
