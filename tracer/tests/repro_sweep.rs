//! `tracer repro --sweep` on the real KVM guest: the plot parses as SVG
//! with the plotted series, and the CSV and JSON tables hold the same rows,
//! each the sum of the reproducer's own per-vCPU counts for its period.

mod common;

use std::{os::unix::fs::PermissionsExt as _, process::Command};

/// The rows of the CSV as (header, field) maps.
fn csv_rows(text: &str) -> Vec<Vec<(String, String)>> {
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .expect("CSV header")
        .split(',')
        .map(str::to_owned)
        .collect();
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), header.len(), "CSV line {line:?}");
            header
                .iter()
                .cloned()
                .zip(fields.into_iter().map(str::to_owned))
                .collect()
        })
        .collect()
}

/// A JSON value as the CSV writes it (null is an empty field).
fn as_csv_field(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[test]
fn a_short_sweep_writes_an_svg_plot_and_tables_equal_to_the_reproducers_counts() {
    let test = "a_short_sweep_writes_an_svg_plot_and_tables_equal_to_the_reproducers_counts";
    if !common::have_kvm(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("sweep.svg");
    let csv = dir.path().join("sweep.csv");
    let output = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args([
            "repro",
            "--sweep",
            "2ms..6ms:2ms",
            "-d",
            "300ms",
            "--kick",
            "tkill",
        ])
        .arg("--plot")
        .arg(&plot)
        .arg("--table")
        .arg(&csv)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tracer repro --sweep failed: {stderr}"
    );

    for path in [&plot, &csv, &dir.path().join("sweep.json")] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }

    // The JSON table: three periods, each row the sum of its own report.
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("sweep.json")).unwrap())
            .unwrap();
    let rows = table["rows"].as_array().unwrap();
    let reports = table["reports"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(reports.len(), 3);
    for ((row, report), period_us) in rows.iter().zip(reports).zip([2000u64, 4000, 6000]) {
        let report: tracer::repro::ReproReport = serde_json::from_value(report.clone()).unwrap();
        assert_eq!(report.period_us, period_us);
        let period_ms = period_us as f64 / 1000.0;
        let sum = |field: fn(&tracer::repro::VcpuReport) -> u64| -> u64 {
            report.vcpus.iter().map(field).sum()
        };
        assert_eq!(row["period_ms"].as_f64(), Some(period_ms));
        assert_eq!(row["vcpus"], 1);
        for (column, expected) in [
            ("guest_iterations", sum(|v| v.guest_iterations)),
            ("kvm_runs", sum(|v| v.kvm_runs)),
            ("eintr_exits", sum(|v| v.eintr_returns)),
            ("kicks", sum(|v| v.kicks_sent)),
            ("signals_consumed", sum(|v| v.signals_consumed)),
            ("timer_overruns", sum(|v| v.timer_overruns)),
            ("other_exits", sum(|v| v.other_exits.values().sum())),
        ] {
            assert_eq!(
                row[column].as_u64(),
                Some(expected),
                "{column} at {period_ms} ms"
            );
        }
        let elapsed_s = report.elapsed_us as f64 / 1e6;
        assert!((row["elapsed_s"].as_f64().unwrap() - elapsed_s).abs() < 1e-9);
        let rate = row["iterations_per_s"].as_f64().unwrap();
        assert!(
            (rate - sum(|v| v.guest_iterations) as f64 / elapsed_s).abs() < 1e-6 * rate.max(1.0)
        );
        // A real guest ran and was really kicked: KVM_RUN returned with
        // EINTR, and a kick was sent every period.
        assert!(sum(|v| v.kvm_runs) > 1, "{report:?}");
        assert!(sum(|v| v.eintr_returns) > 0, "{report:?}");
        let expected_kicks = (0.3 / (period_ms / 1000.0)) as u64;
        assert!(
            sum(|v| v.kicks_sent) + 2 >= expected_kicks,
            "{} kicks in 300 ms at {period_ms} ms",
            sum(|v| v.kicks_sent)
        );
        assert!(
            table["unavailable"]["verdict"]
                .as_str()
                .unwrap()
                .contains("classifier")
        );
        if table["traced_mode"].is_null() {
            // Not root: no probes, so no verdict (said on stderr).
            assert_eq!(row["verdict"], serde_json::Value::Null);
            assert!(stderr.contains("without the tracer's probes"), "{stderr}");
            continue;
        }
        // The tracer's probes counted the same run independently: every
        // EINTR return and every kick of the reproducer, short only by what
        // the tracer reported lost or skipped.
        let lost = row["traced_lost"].as_u64().unwrap();
        for (traced, own) in [
            ("traced_eintr_exits", sum(|v| v.eintr_returns)),
            ("traced_signals", sum(|v| v.kicks_sent)),
        ] {
            let traced_count = row[traced].as_u64().unwrap();
            assert!(
                traced_count <= own && own - traced_count <= lost,
                "{traced} {traced_count} against the reproducer's {own} ({lost} lost) at {period_ms} ms"
            );
        }
        let verdict = row["verdict"].as_str().expect("a verdict");
        if table["host"]["cpu_traps_split_locks"] == false {
            // Kicked but never trapping: never a split-lock verdict.
            assert!(
                verdict.starts_with("OK") || verdict.starts_with("IDLE"),
                "{verdict} at {period_ms} ms"
            );
        }
    }
    if table["host"]["cpu_traps_split_locks"] == false {
        for row in rows {
            assert!(row["guest_iterations"].as_u64().unwrap() > 0, "{row}");
            assert_eq!(row["ac_exits"], 0);
            assert_eq!(row["interrupted_punishments"], 0);
        }
    }

    // The CSV holds exactly the JSON rows.
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    let csv_rows = csv_rows(&csv_text);
    assert_eq!(csv_rows.len(), rows.len());
    for (csv_row, json_row) in csv_rows.iter().zip(rows) {
        let json_row = json_row.as_object().unwrap();
        assert_eq!(csv_row.len(), json_row.len(), "CSV columns vs JSON fields");
        for (column, field) in csv_row {
            let value = &json_row[column.as_str()];
            match (value, field.parse::<f64>()) {
                // serde_json's default parser can be one unit in the last
                // place off; counts are integers and compared exactly below.
                (serde_json::Value::Number(number), Ok(parsed)) if number.is_f64() => {
                    let number = number.as_f64().unwrap();
                    assert!(
                        (number - parsed).abs() <= 1e-12 * number.abs(),
                        "{column}: JSON {number} CSV {parsed}"
                    );
                }
                _ => assert_eq!(&as_csv_field(value), field, "{column}"),
            }
        }
    }

    // The plot: an SVG document whose three series are polylines through
    // one point per period, named in the legend, with the sleep marked.
    let svg = std::fs::read_to_string(&plot).unwrap();
    let document = roxmltree::Document::parse(&svg).expect("the plot parses as XML");
    let root = document.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let texts: Vec<&str> = document
        .descendants()
        .filter(|node| node.has_tag_name("text"))
        .filter_map(|node| node.text().map(str::trim))
        .collect();
    for series in tracer::repro::sweep::SERIES {
        assert!(
            texts.contains(&series),
            "legend lacks {series:?}: {texts:?}"
        );
    }
    let hz = table["host"]["hz"].as_u64().unwrap();
    assert!(
        texts
            .iter()
            .any(|text| text.contains(&format!("punishment sleep at HZ={hz}"))),
        "{texts:?}"
    );
    if table["host"]["cpu_traps_split_locks"] == false {
        assert!(
            texts
                .iter()
                .any(|text| text.contains("cannot trap split locks")),
            "{texts:?}"
        );
    }
    let three_point_lines = document
        .descendants()
        .filter(|node| node.has_tag_name("polyline"))
        .filter(|node| {
            node.attribute("points")
                .is_some_and(|points| points.split_whitespace().count() == 3)
        })
        .count();
    assert!(
        three_point_lines >= 3,
        "{three_point_lines} series polylines in {svg}"
    );
}

#[test]
fn bad_sweep_arguments_are_refused_with_the_reason() {
    for (args, needle) in [
        (&["--sweep", "1ms-20ms"][..], "expected FROM..TO[:STEP]"),
        (&["--sweep", "20ms..1ms"][..], "greater than its TO"),
        (&["--sweep", "1..5:0"][..], "step must be greater than zero"),
        (
            &["--sweep", "1..5", "--step", "0"][..],
            "step must be greater than zero",
        ),
        (&["--sweep", "1us..1s"][..], "use a larger step"),
        (&["--plot", "x.svg"][..], "--sweep"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tracer"))
            .arg("repro")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
