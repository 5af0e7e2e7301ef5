//! Reading the running kernel: symbols and tracefs formats.

pub mod kallsyms;
pub mod tracefs;
