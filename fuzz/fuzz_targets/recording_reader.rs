//! Feeds arbitrary bytes to the recording reader and the replay behind
//! `tracer report`: any input must give records or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::report::Replay;
use tracer_events::reader::RecordingReader;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz-input");
    let Ok(mut reader) = RecordingReader::new(path, std::io::Cursor::new(data)) else {
        return;
    };
    let mut replay = Replay::new(reader.metadata.clone());
    while let Ok(Some(record)) = reader.next_record() {
        replay.apply(&record);
    }
    let result = replay.finish();
    let _ = tracer::report::render_table(&result, reader.metadata.clock.start_ns);
});
