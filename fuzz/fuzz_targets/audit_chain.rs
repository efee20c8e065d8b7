//! The audit file (`protocol::audit::chain`) is read back by `harpoctl audit verify`, on
//! files an attacker may have edited. The decoder and the verifier must refuse anything
//! that is not an intact chain without panicking, and a chain they accept must decode
//! line by line.

#![no_main]

use harpocrates_protocol::audit::chain::{Verifier, decode_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into two "files" at a line boundary, so the
    // rotation rules (`continue` records, file numbers) are reached too.
    let (knob, body) = data.split_first().map_or((0, data), |(k, rest)| (*k, rest));
    let lines: Vec<&[u8]> = body.split_inclusive(|b| *b == b'\n').collect();
    let cut = usize::from(knob) % (lines.len() + 1);
    let mut verifier = Verifier::new();
    let mut accepted = true;
    for (file, part) in [&lines[..cut], &lines[cut..]].into_iter().enumerate() {
        if verifier.start_file(format!("audit.log.{file}")).is_err() {
            accepted = false;
            break;
        }
        for (n, line) in part.iter().enumerate() {
            if verifier.line(n as u64 + 1, line).is_err() {
                accepted = false;
                break;
            }
        }
    }
    let finished = verifier.finish();
    if accepted && finished.is_ok() {
        for line in &lines {
            let line = line.strip_suffix(b"\n").expect("an accepted chain ends its lines");
            assert!(decode_line(line).is_ok(), "an accepted chain has a line that does not decode");
        }
    }
});
