//! kallsyms and tracefs-format parsing against fixtures from several kernels.

mod common;

use std::path::Path;

use common::{fixture, skip};
use tracer::kernel::{
    btf::{self, BtfError},
    kallsyms::{Kallsyms, KallsymsError},
    tracefs::{EventFormat, TracefsError},
};
use tracer_common::FIELD_ABSENT;

fn kallsyms(name: &str) -> Kallsyms {
    Kallsyms::read(&fixture(&format!("kallsyms/{name}"))).unwrap()
}

fn format(kernel: &str, category: &str, event: &str) -> EventFormat {
    EventFormat::read(&fixture(&format!("tracefs/{kernel}")), category, event).unwrap()
}

#[test]
fn captured_kallsyms_resolves_exact_names_and_ignores_cold_parts() {
    let symbols = kallsyms("linux-6.18.44-guest.txt");
    assert!(!symbols.addresses_hidden());
    let warn = symbols.resolve_probe_target("split_lock_warn").unwrap();
    assert_eq!(warn.name, "split_lock_warn");
    assert_eq!(warn.address, 0xffff_ffff_8132_2d00);
    assert_eq!(warn.kind, 't');
    assert_eq!(
        symbols
            .resolve_probe_target("handle_guest_split_lock")
            .unwrap()
            .kind,
        'T'
    );
    assert!(symbols.resolve_probe_target("sld_update_msr").is_none());
}

#[test]
fn suffixed_static_function_is_resolved_but_cold_fragment_is_not() {
    let symbols = kallsyms("constructed-suffixed-split-lock-warn.txt");
    assert_eq!(
        symbols
            .resolve_probe_target("split_lock_warn")
            .unwrap()
            .name,
        "split_lock_warn.constprop.0"
    );
    let module = symbols.function("kvm_arch_vcpu_ioctl_run").unwrap();
    assert_eq!(module.module.as_deref(), Some("kvm"));
    // Only a .cold fragment: never a probe target.
    let cold_only = Kallsyms::parse(
        "ffffffff8104a2f0 t split_lock_warn.cold\n",
        Path::new("inline"),
    )
    .unwrap();
    assert!(cold_only.resolve_probe_target("split_lock_warn").is_none());
}

#[test]
fn amd_host_has_no_split_lock_symbols_and_restricted_addresses_are_flagged() {
    let amd = kallsyms("constructed-amd-no-split-lock.txt");
    assert!(
        amd.resolve_probe_target("handle_guest_split_lock")
            .is_none()
    );
    assert!(amd.resolve_probe_target("msleep_interruptible").is_some());
    assert!(kallsyms("constructed-kptr-restricted.txt").addresses_hidden());
}

#[test]
fn corrupt_kallsyms_line_is_reported_with_file_and_line() {
    let path = fixture("kallsyms/constructed-corrupt.txt");
    let error = Kallsyms::read(&path).unwrap_err();
    match &error {
        KallsymsError::Parse {
            path: at,
            line,
            found,
        } => {
            assert_eq!(at, &path);
            assert_eq!(*line, 2);
            assert_eq!(found, "this line is not a symbol");
        }
        other @ KallsymsError::Read { .. } => panic!("unexpected error {other:?}"),
    }
    assert!(error.to_string().contains("constructed-corrupt.txt:2"));
}

/// The session's filtered reader resolves every probe target exactly as
/// the full parse does, keeps nothing else, and reports the same errors.
#[test]
fn filtered_kallsyms_resolves_the_probe_targets_like_the_full_parse() {
    let targets = [
        "handle_guest_split_lock",
        "handle_user_split_lock",
        "split_lock_warn",
        "msleep_interruptible",
        "down_interruptible",
    ];
    for name in [
        "linux-6.18.44-guest.txt",
        "constructed-suffixed-split-lock-warn.txt",
        "constructed-amd-no-split-lock.txt",
        "constructed-kptr-restricted.txt",
    ] {
        let path = fixture(&format!("kallsyms/{name}"));
        let full = Kallsyms::read(&path).unwrap();
        let filtered = Kallsyms::read_for(&path, &targets).unwrap();
        for target in targets {
            assert_eq!(
                filtered.resolve_probe_target(target),
                full.resolve_probe_target(target),
                "{name}: {target}"
            );
        }
        assert_eq!(
            filtered.addresses_hidden(),
            full.addresses_hidden(),
            "{name}"
        );
        assert!(
            filtered.len() <= 2 * targets.len(),
            "{name}: kept {}",
            filtered.len()
        );
        assert!(
            full.len() > filtered.len() || full.len() <= targets.len(),
            "{name}"
        );
    }
    let corrupt = fixture("kallsyms/constructed-corrupt.txt");
    let error = Kallsyms::read_for(&corrupt, &targets).unwrap_err();
    assert!(
        error.to_string().contains("constructed-corrupt.txt:2"),
        "{error}"
    );
}

#[test]
fn kvm_exit_layout_on_6_18_and_6_1() {
    let new = format("6.18.44", "kvm", "kvm_exit");
    assert_eq!(new.id, 103);
    assert!(new.field("requests").is_some());
    let layout = new.kvm_exit_layout().unwrap();
    assert_eq!(
        (
            layout.exit_reason,
            layout.guest_rip,
            layout.isa,
            layout.intr_info,
            layout.vcpu_id
        ),
        (8, 16, 24, 48, 56)
    );
    let old = format("6.1.192", "kvm", "kvm_exit");
    assert!(old.field("requests").is_none());
    assert_eq!(old.kvm_exit_layout().unwrap(), layout);
}

#[test]
fn signal_generate_layout_with_and_without_group_and_result() {
    let new = format("6.18.44", "signal", "signal_generate")
        .signal_generate_layout()
        .unwrap();
    assert_eq!(
        (new.sig, new.code, new.pid, new.group, new.result),
        (8, 16, 36, 40, 44)
    );
    let old = format("old-signal-no-group", "signal", "signal_generate")
        .signal_generate_layout()
        .unwrap();
    assert_eq!(
        (old.pid, old.group, old.result),
        (36, FIELD_ABSENT, FIELD_ABSENT)
    );
    let comm = format("6.18.44", "signal", "signal_generate");
    let comm = comm.field("comm").unwrap();
    assert_eq!(
        (comm.c_type.as_str(), comm.size, comm.offset),
        ("char[16]", 16, 20)
    );
}

#[test]
fn userspace_exit_layout() {
    let layout = format("6.18.44", "kvm", "kvm_userspace_exit")
        .kvm_userspace_exit_layout()
        .unwrap();
    assert_eq!((layout.reason, layout.errno), (8, 12));
}

/// The formats `cargo xtask vm-test` captured from the booted Debian
/// kernels (fixtures/README.md): the layouts the probes use are read from
/// them, and they agree with the development kernel's.
#[test]
fn captured_debian_6_1_and_6_12_formats_give_the_probe_layouts() {
    let reference = format("6.18.44", "kvm", "kvm_exit")
        .kvm_exit_layout()
        .unwrap();
    for kernel in ["6.1.0-57-amd64", "6.12.118+deb12-amd64"] {
        assert_eq!(
            format(kernel, "kvm", "kvm_exit").kvm_exit_layout().unwrap(),
            reference,
            "{kernel}"
        );
        let signal = format(kernel, "signal", "signal_generate")
            .signal_generate_layout()
            .unwrap();
        assert_eq!(
            (
                signal.sig,
                signal.code,
                signal.pid,
                signal.group,
                signal.result
            ),
            (8, 16, 36, 40, 44),
            "{kernel}"
        );
        let exit = format(kernel, "kvm", "kvm_userspace_exit")
            .kvm_userspace_exit_layout()
            .unwrap();
        assert_eq!((exit.reason, exit.errno), (8, 12), "{kernel}");
    }
}

#[test]
fn wrong_field_size_and_malformed_lines_are_errors_naming_the_file() {
    let text = "name: kvm_userspace_exit\nID: 42\nformat:\n\tfield:__u64 reason;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:int errno;\toffset:16;\tsize:4;\tsigned:1;\n";
    let parsed = EventFormat::parse(text, Path::new("x/format")).unwrap();
    let error = parsed.kvm_userspace_exit_layout().unwrap_err();
    assert!(
        matches!(
            error,
            TracefsError::Field {
                field: "reason",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("size 8 (expected 4)"));

    let broken = "name: x\nID: 1\n\tfield:int sig;\toffset:eight;\tsize:4;\tsigned:1;\n";
    let error = EventFormat::parse(broken, Path::new("y/format")).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("y/format:3: expected `field:"),
        "{error}"
    );

    let no_id = "name: x\n";
    assert!(EventFormat::parse(no_id, Path::new("z/format")).is_err());
}

/// `task_struct.pid` from the running kernel's BTF (the raw-tracepoint
/// signal program reads the target thread through it; the KVM recording
/// tests check the resulting tids end to end), and the errors that name the
/// file and what was missing.
#[test]
fn btf_member_offsets_and_errors() {
    let missing = btf::member_offset(Path::new("/nonexistent/vmlinux"), "task_struct", "pid");
    assert!(
        matches!(&missing, Err(BtfError::Read { path, .. }) if path == Path::new("/nonexistent/vmlinux")),
        "{missing:?}"
    );
    let vmlinux = Path::new(btf::VMLINUX_BTF);
    if !vmlinux.exists() {
        skip(
            "btf_member_offsets_and_errors",
            "no /sys/kernel/btf/vmlinux on this kernel (CONFIG_DEBUG_INFO_BTF off): live part skipped",
        );
        return;
    }
    let pid = btf::member_offset(vmlinux, "task_struct", "pid").unwrap();
    let tgid = btf::member_offset(vmlinux, "task_struct", "tgid").unwrap();
    // `pid_t pid; pid_t tgid;` sit next to each other in every kernel.
    assert_eq!(tgid, pid + 4);
    assert!(pid > 0 && pid < 16 * 1024, "{pid}");
    assert_eq!(btf::task_pid_offset().unwrap(), pid);
    let no_struct = btf::member_offset(vmlinux, "no_such_struct_here", "pid").unwrap_err();
    assert!(
        matches!(no_struct, BtfError::NoStruct { .. }),
        "{no_struct:?}"
    );
    assert!(no_struct.to_string().contains("no_such_struct_here"));
    let no_member = btf::member_offset(vmlinux, "task_struct", "no_such_member").unwrap_err();
    assert!(
        matches!(no_member, BtfError::NoMember { .. }),
        "{no_member:?}"
    );
    assert!(no_member.to_string().contains("/sys/kernel/btf/vmlinux"));
}
