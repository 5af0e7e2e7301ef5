//! Split-lock livelock tracer: library behind the `tracer` binary, so tests
//! and xtask can drive every piece.
// A declared dependency nothing uses fails CI (clippy -D warnings); tests
// link the dev-dependencies too, so the check is on the non-test build.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod cli;
pub mod commands;
pub mod doctor;
pub mod ebpf_log;
pub mod events;
pub mod heap;
pub mod kernel;
pub mod live;
pub mod metrics;
pub mod mitigation;
pub mod model;
pub mod probes;
pub mod report;
pub mod repro;
pub mod runner;
pub mod session;
pub mod signal_check;
#[cfg(any(test, feature = "testkit"))]
pub mod simulate;
pub mod sinks;
#[cfg(any(test, feature = "testkit"))]
pub mod storm;
pub mod symbols;
pub mod tui;
pub mod version;

/// The eBPF object built by `build.rs` (all probes in one object); empty
/// without the `ebpf` feature (the fuzz build), where nothing can be loaded.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));
