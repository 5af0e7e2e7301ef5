//! `cargo xtask dist`: a static x86_64 `tracer` (glibc linked in, eBPF
//! object embedded) and a Debian package with the man pages, shell
//! completions and the systemd unit of `tracer serve`, built with
//! `dpkg-deb`; outputs and a SHA-256 list under `target/dist/`.

use std::{
    fmt::Write as _,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Instant,
};

use anyhow::{Context as _, bail};
use sha2::Digest as _;

use crate::{cargo, run_command, setup};

/// The static target: glibc, linked statically (`crt-static`). It was
/// x86_64-unknown-linux-musl; measured with `tracer record` on a signal
/// storm, the musl build spent 3.6 µs of CPU per recorded event, three
/// quarters of it in musl's `memcpy` (serde_json writes each line in many
/// small pieces), against 0.7 µs for the same code linked with glibc
/// (docs/performance.md). The tracer resolves no host names (`--listen`
/// takes an IP address), so glibc's name-service lookups, which a static
/// glibc cannot load, are never needed.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";
/// How the static target is linked statically (cargo applies a target's
/// rustflags only to that target: build scripts and the eBPF build stay
/// as they are).
const STATIC_RUSTFLAGS: (&str, &str) = (
    "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
    "-C target-feature=+crt-static",
);
/// Debian package name.
const PACKAGE: &str = "split-lock-tracer";

/// What `dist` produced.
#[derive(Clone, Debug)]
pub struct DistOutputs {
    /// The static binary.
    pub binary: PathBuf,
    /// The Debian package.
    pub deb: PathBuf,
}

fn copy_mode(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn gzip_into(from: &Path, to: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(file, flate2::Compression::best());
    encoder.write_all(&data)?;
    encoder.finish()?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Builds a static binary of `package` (optionally one `bin` of it) with
/// the stripped `release-static` profile; returns its path.
pub fn build_static(package: &str, bin: Option<&str>) -> anyhow::Result<PathBuf> {
    build_static_with(package, bin, &[])
}

/// As [`build_static`], with more cargo arguments (features). The
/// dependencies are the ones the shipped binary's build compiled, with the
/// same profile, target and flags, so only the package itself is built.
pub fn build_static_with(
    package: &str,
    bin: Option<&str>,
    extra: &[&str],
) -> anyhow::Result<PathBuf> {
    let root = setup::workspace_root()?;
    let mut command = cargo();
    // RUSTFLAGS or CARGO_ENCODED_RUSTFLAGS would make cargo ignore the
    // target's rustflags: the binary would silently be dynamic.
    command
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(STATIC_RUSTFLAGS.0, STATIC_RUSTFLAGS.1);
    command.current_dir(&root).args([
        "build",
        "--profile",
        "release-static",
        "--target",
        STATIC_TARGET,
        "--package",
        package,
    ]);
    if let Some(bin) = bin {
        command.args(["--bin", bin]);
    }
    command.args(extra);
    run_command(&mut command)?;
    let binary = root.join(format!(
        "target/{STATIC_TARGET}/release-static/{}",
        bin.unwrap_or(package)
    ));
    if has_interpreter(&binary)? {
        bail!(
            "{} was linked dynamically (it names an ELF interpreter)",
            binary.display()
        );
    }
    Ok(binary)
}

/// Whether the ELF file at `path` has a `PT_INTERP` program header (a
/// dynamically linked executable); a static(-pie) one has none.
fn has_interpreter(path: &Path) -> anyhow::Result<bool> {
    const PT_INTERP: u32 = 3;
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let field = |at: usize, len: usize| {
        data.get(at..at + len)
            .with_context(|| format!("{}: not a 64-bit ELF file", path.display()))
    };
    if field(0, 4)? != b"\x7fELF" || field(4, 1)? != [2] {
        bail!("{}: not a 64-bit ELF file", path.display());
    }
    let number = |bytes: &[u8]| {
        bytes
            .iter()
            .rev()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    let phoff = number(field(0x20, 8)?);
    let phentsize = number(field(0x36, 2)?);
    let phnum = number(field(0x38, 2)?);
    for index in 0..phnum {
        let kind = number(field(phoff + index * phentsize, 4)?);
        if kind == PT_INTERP as usize {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The outputs of this process's one `dist` build.
static BUILT: OnceLock<DistOutputs> = OnceLock::new();

/// Builds everything, once per xtask process: `cargo xtask test` needs the
/// outputs for the tests, `vm-test` and `bench`, and nothing they depend on
/// changes in between (a second build would only re-check cargo's
/// fingerprints, rerun `generate-assets` and `dpkg-deb` and rewrite
/// target/dist/ under the same names).
pub fn run() -> anyhow::Result<DistOutputs> {
    if let Some(outputs) = BUILT.get() {
        eprintln!(
            "xtask: dist: {} and {} built earlier in this run",
            outputs.binary.display(),
            outputs.deb.display()
        );
        return Ok(outputs.clone());
    }
    let started = Instant::now();
    let outputs = build()?;
    eprintln!(
        "xtask: dist: built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(BUILT.get_or_init(|| outputs).clone())
}

fn build() -> anyhow::Result<DistOutputs> {
    let built = build_static("tracer", None)?;
    let root = setup::workspace_root()?;
    let dist = root.join("target/dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist).with_context(|| format!("cleaning {}", dist.display()))?;
    }
    std::fs::create_dir_all(&dist)?;
    let binary = dist.join("tracer");
    copy_mode(&built, &binary, 0o755)?;

    let assets = dist.join("assets");
    run_command(Command::new(&binary).arg("generate-assets").arg(&assets))?;

    let version = env!("CARGO_PKG_VERSION");
    let tree = dist.join(format!("{PACKAGE}_{version}_amd64"));
    copy_mode(&binary, &tree.join("usr/bin/tracer"), 0o755)?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(assets.join("man"))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    pages.sort();
    for page in &pages {
        let name = page
            .file_name()
            .context("man page name")?
            .to_string_lossy()
            .into_owned();
        gzip_into(page, &tree.join(format!("usr/share/man/man1/{name}.gz")))?;
    }
    let completions = assets.join("completions");
    copy_mode(
        &completions.join("tracer.bash"),
        &tree.join("usr/share/bash-completion/completions/tracer"),
        0o644,
    )?;
    copy_mode(
        &completions.join("_tracer"),
        &tree.join("usr/share/zsh/vendor-completions/_tracer"),
        0o644,
    )?;
    copy_mode(
        &completions.join("tracer.fish"),
        &tree.join("usr/share/fish/vendor_completions.d/tracer.fish"),
        0o644,
    )?;
    copy_mode(
        &root.join("deploy/systemd/split-lock-tracer.service"),
        &tree.join("lib/systemd/system/split-lock-tracer.service"),
        0o644,
    )?;
    copy_mode(
        &root.join("deploy/prometheus/alerts.yml"),
        &tree.join(format!("usr/share/doc/{PACKAGE}/examples/alerts.yml")),
        0o644,
    )?;
    let doc = tree.join(format!("usr/share/doc/{PACKAGE}/copyright"));
    std::fs::write(
        &doc,
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: split-lock-tracer\n\nFiles: *\nLicense: MIT OR Apache-2.0\n",
    )?;
    let installed_kib = walk_size(&tree)? / 1024;
    let control = tree.join("DEBIAN/control");
    std::fs::create_dir_all(control.parent().context("DEBIAN")?)?;
    std::fs::write(
        &control,
        format!(
            "Package: {PACKAGE}\nVersion: {version}\nArchitecture: amd64\nMaintainer: split-lock-tracer developers <noreply@example.invalid>\nInstalled-Size: {installed_kib}\nSection: admin\nPriority: optional\nDescription: eBPF tracer for the KVM split-lock punish/interrupt livelock\n Shows per vCPU thread whether a guest is stuck retrying a split-locked\n instruction whose punishment sleep is interrupted by the VMM's timer,\n records evidence for kernel developers, checks the host (tracer doctor)\n and serves Prometheus metrics (tracer serve). Statically linked.\n"
        ),
    )?;
    let deb = dist.join(format!("{PACKAGE}_{version}_amd64.deb"));
    run_command(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&tree)
            .arg(&deb),
    )
    .context("building the .deb with dpkg-deb (Debian's dpkg package)")?;

    let mut sums = String::new();
    for file in [&binary, &deb] {
        let data = std::fs::read(file)?;
        let digest = sha2::Sha256::digest(&data);
        for byte in digest {
            let _ = write!(sums, "{byte:02x}");
        }
        let _ = writeln!(
            sums,
            "  {}",
            file.file_name().context("name")?.to_string_lossy()
        );
    }
    std::fs::write(dist.join("SHA256SUMS"), &sums)?;
    if !deb.exists() {
        bail!("{} was not written", deb.display());
    }
    println!(
        "dist: {} and {} (SHA256SUMS beside them)",
        binary.display(),
        deb.display()
    );
    Ok(DistOutputs { binary, deb })
}

fn walk_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            walk_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::has_interpreter;

    #[test]
    fn a_dynamic_executable_names_its_interpreter() {
        assert!(has_interpreter(std::path::Path::new("/bin/sh")).unwrap());
    }

    #[test]
    fn an_elf_file_without_program_headers_names_none_and_text_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elf = dir.path().join("empty.elf");
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 2;
        std::fs::write(&elf, &header).unwrap();
        assert!(!has_interpreter(&elf).unwrap());
        let text = dir.path().join("text");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(has_interpreter(&text).is_err());
    }
}
