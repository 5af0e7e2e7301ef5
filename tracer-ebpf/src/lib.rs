//! Library target of the eBPF crate. It exists so that `tracer` can list this
//! crate as a build-dependency (cargo then rebuilds the embedded object when
//! these sources change); the programs themselves are in `main.rs`.
#![no_std]
