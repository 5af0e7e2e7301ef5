use std::path::{Path, PathBuf};

use tracer_events::{Comm, Event, EventBody, ProcessInfo, ThreadRow, TrapSource, VmThreads};

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/guest-symbols")
        .join(name)
}

const KALLSYMS: &str = "debian12-6.18.44-kallsyms.txt";
const SYSTEM_MAP: &str = "constructed-System.map";

fn table(name: &str, offset: u64) -> SymbolTable {
    SymbolTable::read(&fixture(name), offset)
        .expect("fixture parses")
        .0
}

#[test]
fn kallsyms_resolves_at_function_boundaries() {
    let symbols = table(KALLSYMS, 0);
    // split_lock_warn starts at ...a950; handle_guest_split_lock's
    // __pfx_ padding at ...aa90 ends it.
    assert_eq!(
        symbols.resolve(0xffff_ffff_8132_a950).as_deref(),
        Some("split_lock_warn+0x0")
    );
    assert_eq!(
        symbols.resolve(0xffff_ffff_8132_aa8f).as_deref(),
        Some("split_lock_warn+0x13f")
    );
    assert_eq!(
        symbols.resolve(0xffff_ffff_8132_aa90).as_deref(),
        Some("__pfx_handle_guest_split_lock+0x0")
    );
    assert_eq!(
        symbols.resolve(0xffff_ffff_8132_aaa7).as_deref(),
        Some("handle_guest_split_lock+0x7")
    );
    // Below the first symbol (a user-space guest IP) and past the last
    // symbol, whose end is unknown: unresolved.
    assert_eq!(symbols.resolve(0x40_1000), None);
    assert_eq!(symbols.resolve(0xffff_ffff_8132_a62f), None);
    assert_eq!(symbols.resolve(0xffff_ffff_c020_1000), None);
}

#[test]
fn module_symbols_carry_their_module() {
    let (symbols, _) = SymbolTable::from_reader(
        "ffffffffc0a00000 t vmx_handle_exit\t[kvm_intel]\nffffffffc0a00400 t vmx_vcpu_run\t[kvm_intel]\n"
            .as_bytes(),
        Path::new("inline"),
        0,
    )
    .unwrap();
    assert_eq!(
        symbols.resolve(0xffff_ffff_c0a0_0012).as_deref(),
        Some("vmx_handle_exit+0x12 [kvm_intel]")
    );
}

#[test]
fn system_map_with_kaslr_offset_matches_runtime_addresses() {
    let link = table(SYSTEM_MAP, 0);
    let offset = 0x2a0_0000;
    let moved = table(SYSTEM_MAP, offset);
    for ip in [
        0xffff_ffff_8132_a950_u64,
        0xffff_ffff_8132_aab3,
        0xffff_ffff_8132_acf0,
    ] {
        let expected = link.resolve(ip).expect("inside the map");
        assert_eq!(moved.resolve(ip + offset), Some(expected.clone()), "{ip:x}");
        // The link address itself no longer resolves to that symbol.
        assert_ne!(moved.resolve(ip), Some(expected));
    }
    // The map and the guest's kallsyms (this guest ran without KASLR) agree.
    let runtime = table(KALLSYMS, 0);
    assert_eq!(
        link.resolve(0xffff_ffff_8132_acf5),
        runtime.resolve(0xffff_ffff_8132_acf5)
    );
}

#[test]
fn offset_overflow_names_the_line() {
    let error = SymbolTable::read(&fixture(SYSTEM_MAP), u64::MAX - 1).unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, SymbolFileError::OffsetOverflow { line: 1, .. }),
        "{text}"
    );
    assert!(text.contains("constructed-System.map:1:"), "{text}");
}

#[test]
fn corrupt_line_names_file_line_and_expectation() {
    let error = SymbolTable::read(&fixture("constructed-corrupt-line3.txt"), 0).unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, SymbolFileError::Parse { line: 3, .. }),
        "{text}"
    );
    assert!(text.contains("constructed-corrupt-line3.txt:3:"), "{text}");
    assert!(
        text.contains("<hex address> <type letter> <name>"),
        "{text}"
    );
    assert!(text.contains("extra words here"), "{text}");
}

#[test]
fn hidden_addresses_huge_lines_and_non_files_are_refused() {
    let hidden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kallsyms/constructed-kptr-restricted.txt");
    assert!(matches!(
        SymbolTable::read(&hidden, 0),
        Err(SymbolFileError::AddressesHidden { .. })
    ));
    let long = format!("ffffffff81000000 T {}\n", "x".repeat(5000));
    assert!(matches!(
        SymbolTable::from_reader(long.as_bytes(), Path::new("long"), 0),
        Err(SymbolFileError::Parse { line: 1, .. })
    ));
    // Endless input stops at the size cap, or at the line cap first.
    let line = b"ffffffff81000000 T symbol_name_of_thirty_bytes\n";
    let endless = std::io::Read::take(
        std::io::Read::chain(&b""[..], Repeat(line, 0)),
        MAX_FILE_BYTES * 2,
    );
    assert!(matches!(
        SymbolTable::from_reader(endless, Path::new("endless"), 0),
        Err(SymbolFileError::TooLarge { .. })
    ));
    let blank = std::io::repeat(b'\n').take(MAX_FILE_BYTES);
    assert!(matches!(
        SymbolTable::from_reader(blank, Path::new("blank"), 0),
        Err(SymbolFileError::TooManyLines { .. })
    ));
    assert!(matches!(
        SymbolTable::read(Path::new("/dev/zero"), 0),
        Err(SymbolFileError::Read { .. })
    ));
    assert!(matches!(
        SymbolTable::from_reader(&b"ffffffff81000000 D data\n"[..], Path::new("d"), 0),
        Err(SymbolFileError::NoFunctions { .. })
    ));
}

#[test]
fn sha256_is_of_the_file_bytes() {
    let path = fixture(KALLSYMS);
    let (_, digest) = SymbolTable::read(&path, 0).unwrap();
    // Checked against coreutils, an implementation of its own.
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .expect("sha256sum runs");
    let expected = String::from_utf8(out.stdout).unwrap();
    assert_eq!(Some(digest.as_str()), expected.split_whitespace().next());
}

#[test]
fn arguments_parse_keys_and_hex() {
    assert_eq!(
        parse_symbols_arg("100=/tmp/k.txt").unwrap(),
        Keyed {
            vm: Some("100".into()),
            value: PathBuf::from("/tmp/k.txt")
        }
    );
    assert_eq!(parse_symbols_arg("/a=b/k").unwrap().vm, None);
    assert!(parse_symbols_arg("vm=").is_err());
    assert_eq!(parse_offset_arg("0x1e00000").unwrap().value, 0x1e0_0000);
    assert_eq!(
        parse_offset_arg("web=2a00000").unwrap().vm.as_deref(),
        Some("web")
    );
    assert!(parse_offset_arg("0xzz").is_err());
}

/// An endless repetition of one line.
struct Repeat(&'static [u8], usize);

impl std::io::Read for Repeat {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        for byte in buffer.iter_mut() {
            *byte = self.0[self.1];
            self.1 = (self.1 + 1) % self.0.len();
        }
        Ok(buffer.len())
    }
}

fn vm(pid: u32, vmid: &str, name: &str) -> VmThreads {
    VmThreads {
        pid,
        info: ProcessInfo {
            name: Some(name.into()),
            vmid: Some(vmid.into()),
            comm: None,
        },
        cpu_model: None,
        vcpus: Vec::new(),
    }
}

fn trap(tgid: u32, source: TrapSource, ip: u64) -> Event {
    Event {
        ts_ns: 1,
        cpu: 0,
        tgid,
        tid: tgid + 1,
        comm: Comm::from("CPU 0/KVM"),
        body: EventBody::SplitLockTrap { source, ip },
        symbol: None,
    }
}

#[test]
fn files_are_chosen_per_vm_and_user_traps_stay_host_addresses() {
    let offset = 0x100_0000;
    let symbols = GuestSymbols::load(
        &[
            Keyed {
                vm: None,
                value: fixture(KALLSYMS),
            },
            Keyed {
                vm: Some("web".into()),
                value: fixture(SYSTEM_MAP),
            },
        ],
        &[Keyed {
            vm: Some("web".into()),
            value: offset,
        }],
    )
    .unwrap();
    let mut symbolizer = Symbolizer::new(symbols);
    symbolizer.set_vms(&[vm(10, "100", "db"), vm(20, "101", "web")]);
    let ip = 0xffff_ffff_8132_aaa7;
    let mut db = trap(10, TrapSource::Guest, ip);
    symbolizer.symbolize(&mut db);
    let db_symbol = db.symbol.as_deref().unwrap();
    assert_eq!(db_symbol.name, "handle_guest_split_lock+0x7");
    assert_eq!(db_symbol.file, 0);
    // "web" (matched by name) has a System.map moved by its offset.
    let mut web = trap(20, TrapSource::Guest, ip + offset);
    symbolizer.symbolize(&mut web);
    let web_symbol = web.symbol.as_deref().unwrap();
    assert_eq!(web_symbol.name, "handle_guest_split_lock+0x7");
    assert_eq!(web_symbol.file, 1);
    // A host process's own trap and its split_lock_warn are host IPs.
    for source in [TrapSource::User, TrapSource::Warn] {
        let mut host = trap(30, source, ip);
        symbolizer.symbolize(&mut host);
        assert_eq!(host.symbol, None, "{source:?}");
    }
    let infos = symbolizer.infos();
    assert_eq!(infos[1].vm.as_deref(), Some("web"));
    assert_eq!(infos[1].kaslr_offset, offset);
    assert_eq!(infos[0].symbols, 42);
}

#[test]
fn duplicate_and_orphan_options_are_refused() {
    let file = Keyed {
        vm: None,
        value: fixture(KALLSYMS),
    };
    assert!(matches!(
        GuestSymbols::load(&[file.clone(), file.clone()], &[]),
        Err(GuestSymbolsError::DuplicateVm(_))
    ));
    assert!(matches!(
        GuestSymbols::load(
            &[file],
            &[Keyed {
                vm: Some("7".into()),
                value: 1
            }]
        ),
        Err(GuestSymbolsError::OffsetWithoutFile(_))
    ));
}

#[test]
fn rows_get_the_name_in_their_ip_cell_and_evidence() {
    let symbols = GuestSymbols::load(
        &[Keyed {
            vm: None,
            value: fixture(KALLSYMS),
        }],
        &[],
    )
    .unwrap();
    let mut symbolizer = Symbolizer::new(symbols);
    let ip = 0xffff_ffff_8132_a9a0;
    symbolizer.symbolize(&mut trap(10, TrapSource::Guest, ip));
    let mut row: ThreadRow = serde_json::from_value(serde_json::json!({
        "pid": 10, "vm": null, "vcpu": 0, "tid": 11, "comm": "CPU 0/KVM",
        "traps_per_s": 1.0, "last_ip": ip, "interrupted_pct": null,
        "signals_per_s": 0.0, "timer_period_ms": null, "eintr_per_s": 0.0,
        "punished_pct": 0.0, "verdict": "throttled", "confirmed": false,
        "evidence": [format!("last IP 0x{ip:x}")],
        "totals": tracer_events::ThreadTotals::default(),
    }))
    .expect("a row");
    symbolizer.annotate_row(&mut row);
    assert_eq!(row.last_ip_symbol.as_deref(), Some("split_lock_warn+0x50"));
    assert_eq!(
        row.evidence,
        [format!("last IP 0x{ip:x} (split_lock_warn+0x50)")]
    );
}
