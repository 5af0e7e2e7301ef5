//! Dropping a session leaves no BPF program, map, link or perf event behind.
//!
//! Program-ID enumeration (bpftool prog show) may be denied in containers,
//! so this checks the process's own references instead: programs and maps
//! are freed by the kernel once the last fd is closed and nothing is pinned.
//! Own binary, so no other test opens BPF fds concurrently.

mod common;

fn bpf_fds() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| {
            ["bpf-prog", "bpf-map", "bpf_link", "[perf_event]"]
                .iter()
                .any(|kind| target.contains(kind))
        })
        .collect()
}

#[test]
fn dropping_the_session_closes_every_bpf_object() {
    if !common::have_root("dropping_the_session_closes_every_bpf_object") {
        return;
    }
    assert!(bpf_fds().is_empty(), "{:?}", bpf_fds());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let session =
            tracer::session::TraceSession::start(&tracer::session::SessionOptions::default())
                .unwrap();
        let during = bpf_fds();
        let programs = during.iter().filter(|fd| fd.contains("bpf-prog")).count();
        let attached = session.probes.attached_count();
        // every program of the object is loaded (but a fallback whose primary
        // attached), every attached probe has a perf event or link
        assert_eq!(
            programs,
            tracer::probes::plan::usable_count(&session.probes),
            "{during:?}"
        );
        let attachments = during
            .iter()
            .filter(|fd| fd.contains("perf_event") || fd.contains("bpf_link"))
            .count();
        assert!(
            attachments >= attached,
            "{attachments} < {attached}: {during:?}"
        );
        drop(session);
    });
    assert!(
        bpf_fds().is_empty(),
        "left open after drop: {:?}",
        bpf_fds()
    );
}
