//! `tracer report`: replay a recording through the model and render it.

use std::io::Write as _;

use anyhow::Context as _;
use tracer_events::{
    Record,
    reader::{ReadError, RecordingReader},
    writer,
};

use crate::{
    cli::{ReportArgs, ReportFormat},
    report::{self, Replay, ftrace},
    symbols::{GuestSymbolsError, Symbolizer},
};

#[cfg(feature = "perfetto")]
type PerfettoBuilder = report::perfetto::PerfettoBuilder;

/// Stand-in when built without the `perfetto` feature: refuses the format.
#[cfg(not(feature = "perfetto"))]
struct PerfettoBuilder;

#[cfg(not(feature = "perfetto"))]
#[allow(
    clippy::unused_self,
    reason = "the same calls as the real builder, which uses self"
)]
impl PerfettoBuilder {
    fn new(_: &tracer_events::Metadata) -> Self {
        Self
    }
    fn event(&mut self, _: &tracer_events::Event) {}
    fn lost(&mut self, _: &tracer_events::LostRecord) {}
    fn mitigation(&mut self, _: &tracer_events::MitigationChange) {}
    fn finish(self, _: &[tracer_events::VerdictChange], _: u64) -> Vec<u8> {
        Vec::new()
    }
}

/// Exit code for bad input.
pub const EXIT_BAD_INPUT: i32 = 2;

/// Runs the report; bad input exits with [`EXIT_BAD_INPUT`].
pub fn run(args: &ReportArgs) -> anyhow::Result<i32> {
    if args.format == ReportFormat::Perfetto && cfg!(not(feature = "perfetto")) {
        eprintln!(
            "tracer: this build has no Perfetto export (built without the `perfetto` feature)"
        );
        return Ok(EXIT_BAD_INPUT);
    }
    if args.format == ReportFormat::Perfetto && args.output.is_none() {
        eprintln!(
            "tracer: --format perfetto writes a binary trace: give the output file with -o FILE"
        );
        return Ok(EXIT_BAD_INPUT);
    }
    match render(args) {
        Ok(code) => Ok(code),
        Err(error) => match error.downcast_ref::<ReadError>() {
            Some(read) if read.is_bad_input() => {
                eprintln!("tracer: {read}");
                Ok(EXIT_BAD_INPUT)
            }
            _ if error.downcast_ref::<GuestSymbolsError>().is_some() => {
                eprintln!("tracer: {error:#}");
                Ok(EXIT_BAD_INPUT)
            }
            _ => Err(error),
        },
    }
}

fn render(args: &ReportArgs) -> anyhow::Result<i32> {
    let mut reader = RecordingReader::open(&args.file)?;
    // Files given now replace the names the recording carries.
    let mut symbolizer = Symbolizer::new(args.symbols.load()?);
    if symbolizer.has_files() {
        symbolizer.set_vms(&reader.metadata.vms);
        reader.metadata.guest_symbols = symbolizer.infos();
    }
    let mut replay = Replay::new(reader.metadata.clone());
    let mut text = String::new();
    let mut perfetto =
        (args.format == ReportFormat::Perfetto).then(|| PerfettoBuilder::new(&reader.metadata));
    if args.format == ReportFormat::Ftrace {
        text.push_str(&ftrace::header(&reader.metadata));
        text.push_str("#\n# TASK-TID [CPU] TIMESTAMP: FUNCTION: DETAILS\n");
    }
    while let Some(mut record) = reader.next_record()? {
        if let Record::Event(event) = &mut record {
            symbolizer.symbolize(event);
        }
        match (&record, args.format) {
            (Record::Event(event), ReportFormat::Ftrace) => {
                text.push_str(&ftrace::event_line(event));
                text.push('\n');
            }
            (Record::Mitigation(change), ReportFormat::Ftrace) => {
                text.push_str(&ftrace::mitigation_line(change));
                text.push('\n');
            }
            (Record::Mitigation(change), ReportFormat::Perfetto) => {
                if let Some(builder) = perfetto.as_mut() {
                    builder.mitigation(change);
                }
            }
            (Record::Lost(lost), ReportFormat::Ftrace) => {
                text.push_str(&ftrace::lost_line(lost));
                text.push('\n');
            }
            (Record::Event(event), ReportFormat::Perfetto) => {
                if let Some(builder) = perfetto.as_mut() {
                    builder.event(event);
                }
            }
            (Record::Lost(lost), ReportFormat::Perfetto) => {
                if let Some(builder) = perfetto.as_mut() {
                    builder.lost(lost);
                }
            }
            _ => {}
        }
        replay.apply(&record);
    }
    for warning in &reader.warnings {
        eprintln!("tracer: warning: {warning}");
    }
    let mut result = replay.finish();
    for row in &mut result.rows {
        symbolizer.annotate_row(row);
    }
    let start_ns = reader.metadata.clock.start_ns;
    match args.format {
        ReportFormat::Table => {
            text = report::render_table(&result, start_ns);
        }
        ReportFormat::Ftrace => text.push_str(&ftrace::footer(&result, &reader.warnings)),
        ReportFormat::Json => {
            let document = report::render_json(&reader.metadata, &result, &reader.warnings);
            text = serde_json::to_string_pretty(&document)?;
            text.push('\n');
        }
        ReportFormat::Perfetto => {
            let bytes = perfetto
                .take()
                .expect("perfetto builder")
                .finish(&result.changes, replay.end_ns());
            let path = args.output.as_ref().expect("checked above");
            let mut file = writer::create_output(path, args.force)?;
            file.write_all(&bytes)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} bytes of Perfetto trace to {}",
                bytes.len(),
                path.display()
            );
            return Ok(0);
        }
    }
    if let Some(path) = &args.output {
        let mut file = writer::create_output(path, args.force)?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    } else {
        let mut stdout = std::io::stdout().lock();
        let written = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush());
        match written {
            // `tracer report ... | head` is fine.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.context("writing to stdout")?,
        }
    }
    Ok(0)
}
