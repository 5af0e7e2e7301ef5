//! `tracer report`: replay a recording through the model and render it.

use std::{
    io::{BufWriter, ErrorKind, Write},
    path::Path,
};

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
use report::perfetto::PerfettoBuilder;

/// Stand-in when built without the `perfetto` feature: refuses the format.
#[cfg(not(feature = "perfetto"))]
struct PerfettoBuilder<W>(W);

#[cfg(not(feature = "perfetto"))]
#[allow(
    clippy::unused_self,
    clippy::unnecessary_wraps,
    reason = "the same calls as the real builder, which uses self and can fail"
)]
impl<W> PerfettoBuilder<W> {
    fn new(_: &tracer_events::Metadata, out: W) -> Self {
        Self(out)
    }
    fn event(&mut self, _: &tracer_events::Event) {}
    fn lost(&mut self, _: &tracer_events::LostRecord) {}
    fn mitigation(&mut self, _: &tracer_events::MitigationChange) {}
    fn write_error(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn finish(self, _: &[tracer_events::VerdictChange], _: u64) -> std::io::Result<(W, u64)> {
        Ok((self.0, 0))
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
    if let Some(output) = &args.output
        && is_same_file(&args.file, output)
    {
        // The evidence would be replaced by its report (also through a
        // hard link or another path to the same file).
        eprintln!(
            "tracer: {} is the recording being read; refusing to write the report over it",
            output.display()
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

/// Where the report goes: the `-o` file or stdout. The ftrace text and the
/// Perfetto trace are written while the recording is read, so memory does
/// not grow with its length; the table and JSON are written at the end. A
/// file is written beside its path and renamed into place only when the
/// report is whole ([`writer::Replacement`]), so a failed report leaves no
/// partial file and a file replaced with `--force` stays as it was.
struct Output {
    writer: BufWriter<Target>,
    /// The reader of stdout went away (`tracer report … | head`): the rest
    /// is not written, and that is not an error.
    closed: bool,
}

enum Target {
    Stdout(std::io::Stdout),
    File(writer::Replacement),
}

impl Write for Target {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Stdout(out) => out.write(bytes),
            Self::File(file) => file.write(bytes),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stdout(out) => out.flush(),
            Self::File(file) => file.flush(),
        }
    }
}

impl Output {
    fn open(path: Option<&Path>, force: bool) -> anyhow::Result<Self> {
        let target = match path {
            Some(path) => Target::File(writer::Replacement::create(path, force)?),
            None => Target::Stdout(std::io::stdout()),
        };
        Ok(Self {
            writer: BufWriter::with_capacity(1 << 16, target),
            closed: false,
        })
    }

    fn is_stdout(&self) -> bool {
        matches!(self.writer.get_ref(), Target::Stdout(_))
    }

    /// Context for a write error.
    fn target(&self) -> String {
        match self.writer.get_ref() {
            Target::Stdout(_) => "writing to stdout".to_owned(),
            Target::File(file) => format!("writing {}", file.path().display()),
        }
    }

    /// Writes `text`; a closed stdout ends the writing quietly.
    fn text(&mut self, text: &str) -> anyhow::Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.writer.write_all(text.as_bytes()) {
            Err(error) if error.kind() == ErrorKind::BrokenPipe && self.is_stdout() => {
                self.closed = true;
                Ok(())
            }
            other => other.with_context(|| self.target()),
        }
    }

    /// Flushes the report and, for a file, renames it into place.
    fn finish(mut self) -> anyhow::Result<()> {
        match self.writer.flush() {
            Err(error) if error.kind() == ErrorKind::BrokenPipe && self.is_stdout() => {
                return Ok(());
            }
            other => other.with_context(|| self.target())?,
        }
        match self
            .writer
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
        {
            Target::Stdout(_) => Ok(()),
            Target::File(file) => Ok(file.commit()?),
        }
    }
}

impl Write for Output {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.writer.write(bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

/// What the records are rendered into while they are read.
enum Stream {
    /// Table or JSON: everything at the end.
    AtEnd(Output),
    Ftrace(Output),
    Perfetto(PerfettoBuilder<Output>),
}

fn render(args: &ReportArgs) -> anyhow::Result<i32> {
    // Nothing is at the output path until the report is whole: see
    // `Output`.
    let mut reader = RecordingReader::open(&args.file)?;
    // Files given now replace the names the recording carries.
    let mut symbolizer = Symbolizer::new(args.symbols.load()?);
    if symbolizer.has_files() {
        symbolizer.set_vms(&reader.metadata.vms);
        reader.metadata.guest_symbols = symbolizer.infos();
    }
    let mut replay = Replay::new(reader.metadata.clone());
    let mut out = Output::open(args.output.as_deref(), args.force)?;
    let mut stream = match args.format {
        ReportFormat::Ftrace => {
            out.text(&ftrace::header(&reader.metadata))?;
            out.text("#\n# TASK-TID [CPU] TIMESTAMP: FUNCTION: DETAILS\n")?;
            Stream::Ftrace(out)
        }
        ReportFormat::Perfetto => Stream::Perfetto(PerfettoBuilder::new(&reader.metadata, out)),
        ReportFormat::Table | ReportFormat::Json => Stream::AtEnd(out),
    };
    let mut line = String::new();
    while let Some(mut record) = reader.next_record()? {
        if let Record::Event(event) = &mut record {
            symbolizer.symbolize(event);
        }
        match (&mut stream, &record) {
            (Stream::Ftrace(out), record) => {
                line.clear();
                match record {
                    Record::Event(event) => line.push_str(&ftrace::event_line(event)),
                    Record::Mitigation(change) => line.push_str(&ftrace::mitigation_line(change)),
                    Record::Lost(lost) => line.push_str(&ftrace::lost_line(lost)),
                    _ => {}
                }
                if !line.is_empty() {
                    line.push('\n');
                    out.text(&line)?;
                }
                if out.closed {
                    // Nobody reads the rest.
                    return Ok(0);
                }
            }
            (Stream::Perfetto(builder), Record::Event(event)) => {
                builder.event(event);
                builder
                    .write_error()
                    .with_context(|| perfetto_target(args))?;
            }
            (Stream::Perfetto(builder), Record::Lost(lost)) => builder.lost(lost),
            (Stream::Perfetto(builder), Record::Mitigation(change)) => builder.mitigation(change),
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
    match stream {
        Stream::AtEnd(mut out) => {
            let text = if args.format == ReportFormat::Json {
                let document = report::render_json(&reader.metadata, &result, &reader.warnings);
                let mut text = serde_json::to_string_pretty(&document)?;
                text.push('\n');
                text
            } else {
                report::render_table(&result, start_ns)
            };
            out.text(&text)?;
            out.finish()?;
        }
        Stream::Ftrace(mut out) => {
            out.text(&ftrace::footer(&result, &reader.warnings))?;
            out.finish()?;
        }
        Stream::Perfetto(builder) => {
            let (out, written) = builder
                .finish(&result.changes, replay.end_ns())
                .with_context(|| perfetto_target(args))?;
            out.finish()?;
            eprintln!(
                "wrote {written} bytes of Perfetto trace to {}",
                args.output.as_ref().expect("checked above").display()
            );
        }
    }
    Ok(0)
}

fn perfetto_target(args: &ReportArgs) -> String {
    let path = args.output.as_ref().expect("checked above");
    format!("writing {}", path.display())
}

/// Whether `output` exists and is the file `input` names.
fn is_same_file(input: &Path, output: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(input), std::fs::symlink_metadata(output)) {
        (Ok(input), Ok(output)) => input.dev() == output.dev() && input.ino() == output.ino(),
        _ => false,
    }
}
