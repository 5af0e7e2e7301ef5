//! Builds the eBPF object (`tracer-ebpf`) for `bpfel-unknown-none` with the
//! pinned stable toolchain and embeds it via `OUT_DIR`.
//!
//! Requirements (installed by `cargo xtask setup`): the `rust-src` component
//! of the pinned toolchain and `bpf-linker` on PATH. `RUSTC_BOOTSTRAP=1`
//! lets the stable compiler run `-Z build-std=core` for the BPF target.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Must match `rust-toolchain.toml`.
const TOOLCHAIN: &str = "1.95.0";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../rust-toolchain.toml");
    emit_git_commit();
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("{manifest_dir} has no parent"))?
        .join("tracer-ebpf");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    if std::env::var_os("AYA_BUILD_SKIP").is_none() && which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH; run `cargo xtask setup` (or see README: Build from source)"
        ));
    }
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: "tracer-ebpf",
            root_dir,
            ..Package::default()
        }],
        Toolchain::Custom(TOOLCHAIN),
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
}

/// Exposes the git commit as `TRACER_GIT_COMMIT` for `tracer --version`.
fn emit_git_commit() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |text| text.trim().to_owned());
    println!("cargo:rustc-env=TRACER_GIT_COMMIT={commit}");
    for head in ["../.git/HEAD", "../.git/index"] {
        println!("cargo:rerun-if-changed={head}");
    }
}
