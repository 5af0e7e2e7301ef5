//! Idempotent installation of the eBPF build prerequisites.
//!
//! Each step first checks whether its piece is already present, prints what
//! it does, and on failure names the missing piece and the manual fix.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::run_command;

/// Toolchain pinned in rust-toolchain.toml.
const TOOLCHAIN: &str = "1.95.0";
/// LLVM major version bpf-linker is built against.
const LLVM_MAJOR: u32 = 22;
/// bpf-linker release known to build against LLVM 22 with rustc 1.95.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The workspace root (parent of the xtask crate).
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// Runs every set-up step.
pub fn run() -> anyhow::Result<()> {
    toolchain_components()?;
    llvm()?;
    bpf_linker()?;
    eprintln!(
        "xtask: set-up complete (rust-src, llvm-{LLVM_MAJOR}-dev, bpf-linker {BPF_LINKER_VERSION})"
    );
    Ok(())
}

fn output_text(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Components of the pinned toolchain the build (rust-src, for
/// -Z build-std=core) and the checks (rustfmt, clippy) need.
const COMPONENTS: [&str; 3] = ["rust-src", "rustfmt", "clippy"];

fn toolchain_components() -> anyhow::Result<()> {
    let installed = output_text(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        TOOLCHAIN,
    ]));
    let Some(installed) = installed else {
        eprintln!("xtask: toolchain {TOOLCHAIN} not installed; installing it with {COMPONENTS:?}");
        return run_command(Command::new("rustup").args([
            "toolchain",
            "install",
            TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            &COMPONENTS.join(","),
        ]))
        .context("installing the pinned toolchain (manual fix: `rustup toolchain install 1.95.0 --component rust-src,rustfmt,clippy`)");
    };
    for component in COMPONENTS {
        if installed.lines().any(|line| line.starts_with(component)) {
            eprintln!("xtask: {component} for {TOOLCHAIN}: present");
            continue;
        }
        eprintln!("xtask: {component} for {TOOLCHAIN}: missing, installing");
        run_command(Command::new("rustup").args(["component", "add", component, "--toolchain", TOOLCHAIN]))
            .with_context(|| format!("adding {component} (manual fix: `rustup component add {component} --toolchain 1.95.0`)"))?;
    }
    Ok(())
}

fn llvm_prefix() -> PathBuf {
    PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}"))
}

fn llvm_present() -> bool {
    llvm_prefix().join("lib/libLLVM.so").exists() && llvm_prefix().join("bin/llvm-config").exists()
}

fn llvm() -> anyhow::Result<()> {
    if llvm_present() {
        eprintln!(
            "xtask: llvm-{LLVM_MAJOR}-dev: present at {}",
            llvm_prefix().display()
        );
        return Ok(());
    }
    let package = format!("llvm-{LLVM_MAJOR}-dev");
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "{package} is missing and this is not a Debian/Ubuntu host; install LLVM {LLVM_MAJOR} development \
             files (libLLVM.so, llvm-config) so that {}/lib/libLLVM.so exists, e.g. `dnf install llvm-devel` \
             on Fedora or from apt.llvm.org",
            llvm_prefix().display()
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{package} is missing; run as root or install it: `sudo apt-get install -y {package}`"
        );
    }
    eprintln!("xtask: {package}: missing, installing with apt-get (about 400 MB)");
    run_command(Command::new("apt-get").arg("update")).with_context(|| {
        format!("apt-get update (manual fix: `apt-get update && apt-get install -y {package}`)")
    })?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", &package])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| {
        format!("installing {package} (Debian 12 ships it in the bookworm-security suite)")
    })?;
    if !llvm_present() {
        bail!(
            "{package} installed but {}/lib/libLLVM.so is still missing",
            llvm_prefix().display()
        );
    }
    Ok(())
}

fn bpf_linker_version() -> Option<String> {
    output_text(Command::new("bpf-linker").arg("--version")).map(|text| text.trim().to_owned())
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(version) = bpf_linker_version()
        && version.contains(BPF_LINKER_VERSION)
    {
        eprintln!("xtask: bpf-linker: present ({version})");
        return Ok(());
    }
    eprintln!(
        "xtask: bpf-linker {BPF_LINKER_VERSION}: missing, building it against LLVM {LLVM_MAJOR} (about a minute)"
    );
    let feature = format!("llvm-{LLVM_MAJOR}");
    run_command(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &feature,
            ])
            .env("LLVM_PREFIX", llvm_prefix()),
    )
    .with_context(|| {
        format!(
            "building bpf-linker (manual fix: `LLVM_PREFIX={} cargo install bpf-linker --version {BPF_LINKER_VERSION} \
             --no-default-features --features {feature}`)",
            llvm_prefix().display()
        )
    })?;
    if bpf_linker_version().is_none() {
        bail!("bpf-linker was installed but is not on PATH; add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// Tools only the tests need (tmux for the live-view screen test).
pub fn test_prerequisites() {
    // tmux: the live-view screen test; prometheus (with promtool): the
    // `tracer serve` scrape test. Tests skip with a printed reason where
    // these cannot be installed.
    for (package, probe, probe_arg) in [
        ("tmux", "tmux", "-V"),
        ("prometheus", "promtool", "--version"),
    ] {
        apt_package(package, probe, probe_arg);
    }
}

/// Installs a Debian package when its program is missing; failures are
/// reported, not fatal (the tests that need it print SKIP).
pub(crate) fn apt_package(package: &str, program: &str, probe_arg: &str) {
    if Command::new(program).arg(probe_arg).output().is_ok() {
        eprintln!("xtask: {package}: present");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || Command::new("apt-get").arg("--version").output().is_err() {
        eprintln!(
            "xtask: {package} missing and cannot be installed here; tests needing it will print SKIP"
        );
        return;
    }
    eprintln!("xtask: {package}: missing, installing with apt-get");
    let install = || {
        run_command(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", package])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    let result = install().or_else(|_| {
        run_command(Command::new("apt-get").arg("update"))?;
        install()
    });
    if let Err(error) = result {
        eprintln!(
            "xtask: installing {package} failed ({error:#}); tests needing it will print SKIP"
        );
    }
    // The package starts its own service where systemd runs; the test
    // starts its own instance on other ports.
    let _ = Command::new("systemctl").args(["stop", package]).output();
}
