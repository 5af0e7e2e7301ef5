//! `tracer report --guest-symbols`: a modelled recording whose guest traps
//! at a fixture kernel's function is shown as `function+0xoffset` in every
//! format, and bad symbol files fail with the file and line.

mod common;

use std::{path::Path, process::Command};

use tracer::simulate::{self, ProbeSet, Scenario};

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");
/// `handle_guest_split_lock+0x33` in the captured Debian 6.18.44 kallsyms.
const TRAP_IP: u64 = 0xffff_ffff_8132_aad3;

fn recording(dir: &Path, rip: u64) -> std::path::PathBuf {
    let path = dir.join("trap.jsonl");
    let mut scenario = Scenario::seed_001(250, 1.0, 200);
    scenario.rip = rip;
    simulate::write_recording(&path, false, &[scenario], ProbeSet::Full).unwrap();
    path
}

fn report(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(TRACER)
        .arg("report")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn report_names_the_trapping_function_in_table_ftrace_json_and_perfetto() {
    let dir = tempfile::tempdir().unwrap();
    let file = recording(dir.path(), TRAP_IP);
    let symbols = common::fixture("guest-symbols/debian12-6.18.44-kallsyms.txt");
    let name = "handle_guest_split_lock+0x33";
    let with = |format: &str| {
        report(&[
            file.as_os_str(),
            "--format".as_ref(),
            format.as_ref(),
            "--guest-symbols".as_ref(),
            symbols.as_os_str(),
        ])
    };
    let (code, table, stderr) = with("table");
    assert_eq!(code, 0, "{stderr}");
    assert!(table.contains(name), "{table}");
    let (code, ftrace, stderr) = with("ftrace");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        ftrace.contains(&format!("ip=0x{TRAP_IP:x} sym={name}")),
        "{ftrace}"
    );
    assert!(
        ftrace.contains("# guest symbols 0 for every VM: "),
        "{ftrace}"
    );
    let (code, json, stderr) = with("json");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        json.contains(&format!("\"last_ip_symbol\": \"{name}\"")),
        "{json}"
    );
    // Without the file the same recording shows the bare IP.
    let (code, plain, _) = report(&[file.as_os_str(), "--format".as_ref(), "ftrace".as_ref()]);
    assert_eq!(code, 0);
    assert!(!plain.contains("sym="), "{plain}");
    #[cfg(feature = "perfetto")]
    {
        let trace = dir.path().join("trace.pftrace");
        let (code, _, stderr) = report(&[
            file.as_os_str(),
            "--format".as_ref(),
            "perfetto".as_ref(),
            "-o".as_ref(),
            trace.as_os_str(),
            "--guest-symbols".as_ref(),
            symbols.as_os_str(),
        ]);
        assert_eq!(code, 0, "{stderr}");
        let bytes = std::fs::read(&trace).unwrap();
        let slice = format!("guest split-lock episode at {name}");
        assert!(
            bytes
                .windows(slice.len())
                .any(|window| window == slice.as_bytes()),
            "no slice named {slice:?}"
        );
    }
}

#[test]
fn an_ip_outside_the_symbols_stays_a_bare_address() {
    let dir = tempfile::tempdir().unwrap();
    // A guest user-space IP.
    let file = recording(dir.path(), 0x40_1a2b);
    let symbols = common::fixture("guest-symbols/debian12-6.18.44-kallsyms.txt");
    let (code, ftrace, stderr) = report(&[
        file.as_os_str(),
        "--format".as_ref(),
        "ftrace".as_ref(),
        "--guest-symbols".as_ref(),
        symbols.as_os_str(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(ftrace.contains("ip=0x401a2b"), "{ftrace}");
    assert!(!ftrace.contains("sym="), "{ftrace}");
}

#[test]
fn a_corrupt_symbol_file_fails_with_its_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = recording(dir.path(), TRAP_IP);
    let corrupt = common::fixture("guest-symbols/constructed-corrupt-line3.txt");
    let (code, stdout, stderr) = report(&[
        file.as_os_str(),
        "--guest-symbols".as_ref(),
        corrupt.as_os_str(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!("{}:3: expected", corrupt.display())),
        "{stderr}"
    );
    let missing = dir.path().join("no-such-kallsyms");
    let (code, _, stderr) = report(&[
        file.as_os_str(),
        "--guest-symbols".as_ref(),
        missing.as_os_str(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no-such-kallsyms"), "{stderr}");
}
