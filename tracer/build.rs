//! Builds the eBPF object (`tracer-ebpf`) for `bpfel-unknown-none` with the
//! pinned stable toolchain and embeds it via `OUT_DIR`.
//!
//! Requirements (installed by `cargo xtask setup`): the `rust-src` component
//! of the pinned toolchain and `bpf-linker` on PATH. `RUSTC_BOOTSTRAP=1`
//! lets the stable compiler run `-Z build-std=core` for the BPF target.
//!
//! Without the `ebpf` feature (the fuzz build: no bpf-linker there) the
//! object is an empty file at the same path and nothing is built.
//!
//! aya-build relays every line of the eBPF cargo build (its stderr, so every
//! `Compiling …`, and each rendered compiler message) to this script's
//! stdout as `cargo:warning=`, and has no option to stop that. While it runs,
//! this script's stdout therefore goes to a log file in `OUT_DIR`; cargo's
//! other directives in it are passed on, and the relayed lines are printed
//! only when the eBPF build fails. A successful build whose compiler output
//! has warnings gets one `cargo:warning` naming the log.

use std::{
    io::Write as _,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Must match `rust-toolchain.toml`.
const TOOLCHAIN: &str = "1.95.0";
/// The object's file name in `OUT_DIR` (aya-build names it after the binary).
const OBJECT: &str = "tracer-ebpf";
/// What the eBPF build printed, in `OUT_DIR`.
const LOG: &str = "ebpf-build.log";

fn main() -> anyhow::Result<()> {
    emit_git_commit();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR is not set")?);
    if std::env::var_os("CARGO_FEATURE_EBPF").is_none() {
        let object = out_dir.join(OBJECT);
        std::fs::write(&object, [])
            .with_context(|| format!("writing the empty {}", object.display()))?;
        return Ok(());
    }
    println!("cargo:rerun-if-changed=../rust-toolchain.toml");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("{manifest_dir} has no parent"))?
        .join("tracer-ebpf");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    let skip_ebpf = std::env::var_os("AYA_BUILD_SKIP").is_some();
    if !skip_ebpf && which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH; run `cargo xtask setup` (or see README: Build from source)"
        ));
    }
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    if !skip_ebpf {
        let triple = std::env::var("TARGET").context("TARGET")?;
        share_ebpf_target_dir(&out_dir, &triple)?;
    }
    let log = out_dir.join(LOG);
    let (built, printed) = with_stdout_in(&log, || {
        aya_build::build_ebpf(
            [Package {
                name: "tracer-ebpf",
                root_dir,
                ..Package::default()
            }],
            Toolchain::Custom(TOOLCHAIN),
        )
    })?;
    let mut relayed = Vec::new();
    for line in printed.lines() {
        match line
            .strip_prefix("cargo:warning=")
            .or_else(|| line.strip_prefix("cargo::warning="))
        {
            Some(text) => relayed.push(text),
            // rerun-if-changed and the like: cargo needs them.
            None => println!("{line}"),
        }
    }
    // The log without the directive prefixes, for reading.
    std::fs::write(&log, relayed.join("\n") + "\n")
        .with_context(|| format!("writing {}", log.display()))?;
    match built {
        Ok(()) => {
            if relayed.iter().any(|line| is_compiler_warning(line)) {
                println!(
                    "cargo:warning=the eBPF crate compiled with warnings: see {}",
                    log.display()
                );
            }
            Ok(())
        }
        Err(error) => {
            eprintln!("--- the eBPF build printed:");
            for line in &relayed {
                eprintln!("{line}");
            }
            Err(error.context(format!(
                "building the eBPF object (its output is above and in {})",
                log.display()
            )))
        }
    }
}

/// A rendered rustc warning (`warning: …` or `warning[E…]: …` at column 0;
/// cargo's own status lines are indented).
fn is_compiler_warning(line: &str) -> bool {
    line.starts_with("warning:") || line.starts_with("warning[")
}

unsafe extern "C" {
    /// POSIX `dup2` (the C library every Rust program on Linux links); the
    /// `libc` crate is not a build-dependency.
    fn dup2(old: RawFd, new: RawFd) -> RawFd;
}

/// Points file descriptor `to` at what `from` refers to.
fn redirect(from: RawFd, to: RawFd) -> anyhow::Result<()> {
    // SAFETY: dup2 on descriptors this process has open; Rust's `Stdout`
    // does not own fd 1 and keeps writing to whatever it refers to.
    if unsafe { dup2(from, to) } < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("dup2({from}, {to})"));
    }
    Ok(())
}

/// Runs `run` with this process's stdout going to the file `path`; returns
/// its result and what it printed.
fn with_stdout_in(
    path: &Path,
    run: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(anyhow::Result<()>, String)> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let stdout = std::io::stdout();
    stdout.lock().flush().context("flushing stdout")?;
    let saved = stdout
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating stdout")?;
    let fd = stdout.as_fd().as_raw_fd();
    redirect(file.as_raw_fd(), fd)?;
    let result = run();
    let flushed = stdout.lock().flush();
    // Restored before anything can fail, so cargo sees what follows.
    redirect(saved.as_raw_fd(), fd)?;
    flushed.with_context(|| format!("writing {}", path.display()))?;
    let printed =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((result, printed))
}

/// Points the eBPF build's target directory (aya-build puts it at
/// `OUT_DIR/aya-build/target/tracer-ebpf`, one per host profile and
/// feature set) at one directory beside the host profiles,
/// `<target>/ebpf-build`. Its cargo invocation is the same from every host
/// build (release, BPF target, fixed flags), so clippy's check, the test
/// build and the static release build share one build of `core` and the
/// object instead of making three; cargo's own fingerprints and lock keep
/// that directory correct. Without a cargo target directory above
/// `OUT_DIR` nothing is shared.
fn share_ebpf_target_dir(out_dir: &Path, triple: &str) -> anyhow::Result<()> {
    // OUT_DIR is <target>[/<triple>]/<profile>/build/<unit>/out; cargo marks
    // <target> with CACHEDIR.TAG. Only that one directory is taken, never
    // one further up (a `--target-dir target/x` inside another target).
    let above_profile = out_dir.ancestors().nth(4);
    let target = match above_profile {
        Some(dir) if dir.file_name().is_some_and(|name| name == triple) => dir.parent(),
        other => other,
    };
    let Some(target) = target.filter(|dir| dir.join("CACHEDIR.TAG").is_file()) else {
        return Ok(());
    };
    let shared = target.join("ebpf-build");
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    let parent = out_dir.join("aya-build/target");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let link = parent.join("tracer-ebpf");
    match std::fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if std::fs::read_link(&link).is_ok_and(|to| to == shared) {
                return Ok(());
            }
            std::fs::remove_file(&link)
        }
        // An unshared build from before: its own copy, no longer used.
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&link),
        Ok(_) => std::fs::remove_file(&link),
        Err(_) => Ok(()),
    }
    .with_context(|| format!("removing {}", link.display()))?;
    std::os::unix::fs::symlink(&shared, &link)
        .with_context(|| format!("linking {} to {}", link.display(), shared.display()))
}

fn which_bpf_linker() -> Option<PathBuf> {
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
