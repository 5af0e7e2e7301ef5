//! Reading the running kernel and host: symbols, tracefs formats, CPU and
//! /proc facts.

pub mod bounded;
pub mod bpf;
pub mod btf;
pub mod host;
pub mod kallsyms;
pub mod tracefs;
