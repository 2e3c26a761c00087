//! Offline checking of a JSON Lines file of jobs: the library half of `pagerelay validate`.
//!
//! Owns the verdict format. Each non-blank line is one job, checked as [`Job::decode`] would check
//! a delivery published with no routing key, no `message_id` and no `content_type`, and gets one
//! line of output:
//!
//! ```text
//! ok <job_id>                 the job is valid; `-` stands for a job without a job_id
//! invalid <line>: <reason>    line numbers count from 1 and include blank lines
//! ```
//!
//! Blank lines (empty or only whitespace) are skipped without a verdict, so files may end with a
//! newline or group jobs with empty lines. A `\r` before the newline is dropped. Lines are read as
//! bytes, so a line that is not UTF-8 gets an `invalid` verdict instead of ending the run, and a
//! line longer than [`MAX_JOB_BYTES`] is skipped over without being held in memory.
//!
//! It does not own the command line (exit codes and file handling are in `main.rs`).

use std::io::{self, BufRead, Write};

use super::{DeliveryMeta, Job, JobError, MAX_JOB_BYTES};

/// How many lines got which verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValidateSummary {
    pub valid: usize,
    pub invalid: usize,
    /// Blank lines, skipped without a verdict.
    pub blank: usize,
}

impl ValidateSummary {
    /// Whether no line was invalid (also true for an input without jobs).
    pub fn all_valid(&self) -> bool {
        self.invalid == 0
    }
}

/// Checks every line of `input` and writes one verdict per job to `out`.
///
/// # Errors
///
/// Only I/O errors of `input` or `out`; invalid jobs are verdicts, not errors.
pub fn validate_lines(mut input: impl BufRead, mut out: impl Write) -> io::Result<ValidateSummary> {
    let meta = DeliveryMeta::default();
    let mut summary = ValidateSummary::default();
    let mut line = Vec::new();
    let mut number = 0usize;
    while let Some(length) = read_line(&mut input, &mut line)? {
        number += 1;
        if line.len() == length && line.iter().all(u8::is_ascii_whitespace) {
            summary.blank += 1;
            continue;
        }
        let verdict = if length > MAX_JOB_BYTES {
            Err(JobError::TooLarge {
                size: length,
                limit: MAX_JOB_BYTES,
            })
        } else {
            Job::decode(&line, &meta)
        };
        match verdict {
            Ok(job) => {
                summary.valid += 1;
                let id = if job.job_id_generated {
                    "-"
                } else {
                    &job.job_id
                };
                writeln!(out, "ok {id}")?;
            }
            Err(e) => {
                summary.invalid += 1;
                writeln!(out, "invalid {number}: {e}")?;
            }
        }
    }
    out.flush()?;
    Ok(summary)
}

/// Reads the next line into `line` without its `\n` or `\r\n` and returns the line's full length,
/// or `None` at the end of the input. Only the first `MAX_JOB_BYTES + 1` bytes are kept: enough to
/// hold any line short enough to decode, and to know that a longer one is too long.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<Option<usize>> {
    line.clear();
    let mut length = 0usize;
    let mut last = None;
    let mut saw_any = false;
    loop {
        let chunk = match input.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        saw_any = true;
        let (content, used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(end) => (&chunk[..end], end + 1, true),
            None => (chunk, chunk.len(), false),
        };
        let room = (MAX_JOB_BYTES + 1).saturating_sub(line.len());
        line.extend_from_slice(&content[..content.len().min(room)]);
        length += content.len();
        last = content.last().copied().or(last);
        input.consume(used);
        if done {
            break;
        }
    }
    if !saw_any {
        return Ok(None);
    }
    // The `\r` of a `\r\n` ending belongs to the ending, not to the job.
    if last == Some(b'\r') {
        length -= 1;
        line.truncate(length);
    }
    Ok(Some(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (String, ValidateSummary) {
        let mut out = Vec::new();
        let summary = validate_lines(input, &mut out).expect("in-memory I/O cannot fail");
        (String::from_utf8(out).expect("verdicts are UTF-8"), summary)
    }

    const GOOD: &str = r#"{"page_id":"1","job_id":"a-1","recipient":{"id":"2"},"messaging_type":"UPDATE","message":{"text":"hi"}}"#;
    const NO_ID: &str = r#"{"page_id":"1","recipient":{"id":"2"},"sender_action":"typing_on"}"#;

    #[test]
    fn one_verdict_per_job_with_physical_line_numbers() {
        let input = format!("{GOOD}\n\n{NO_ID}\r\n   \nnot json\n{{\"page_id\":\"x\"}}");
        let (out, summary) = run(input.as_bytes());
        assert_eq!(
            out,
            "ok a-1\n\
             ok -\n\
             invalid 5: body: not JSON: expected ident at line 1 column 2\n\
             invalid 6: page_id: \"x\" is not 1 to 64 ASCII digits\n"
        );
        assert_eq!(
            summary,
            ValidateSummary {
                valid: 2,
                invalid: 2,
                blank: 2
            }
        );
        assert!(!summary.all_valid());
    }

    #[test]
    fn empty_input_has_no_verdicts_and_is_all_valid() {
        let (out, summary) = run(b"");
        assert_eq!(out, "");
        assert_eq!(summary, ValidateSummary::default());
        assert!(summary.all_valid());
    }

    #[test]
    fn a_line_that_is_not_utf8_is_a_verdict_not_an_error() {
        let mut input = GOOD.as_bytes().to_vec();
        input.extend_from_slice(b"\n{\"page_id\":\"\xff\"}\n");
        input.extend_from_slice(GOOD.as_bytes());
        let (out, summary) = run(&input);
        assert_eq!(
            out,
            "ok a-1\ninvalid 2: body: not UTF-8 (invalid byte at offset 12)\nok a-1\n"
        );
        assert_eq!(summary.invalid, 1);
    }

    #[test]
    fn overlong_lines_report_their_length_and_the_next_line_is_read() {
        let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_JOB_BYTES));
        // A tiny buffer makes the overlong line arrive in many chunks.
        let input = format!("{long}\r\n{GOOD}\n{long}");
        let reader = io::BufReader::with_capacity(7, input.as_bytes());
        let mut out = Vec::new();
        let summary = validate_lines(reader, &mut out).unwrap();
        let size = long.len();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "invalid 1: body: {size} bytes, limit is {MAX_JOB_BYTES}\n\
                 ok a-1\n\
                 invalid 3: body: {size} bytes, limit is {MAX_JOB_BYTES}\n"
            )
        );
        assert_eq!(summary.invalid, 2);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_decoded() {
        let prefix = &GOOD[..GOOD.len() - 1];
        let pad = MAX_JOB_BYTES - prefix.len() - r#","pad":""}"#.len();
        let job = format!("{prefix},\"pad\":\"{}\"}}", "x".repeat(pad));
        assert_eq!(job.len(), MAX_JOB_BYTES);
        let (out, _) = run(format!("{job}\r\n").as_bytes());
        assert_eq!(out, "ok a-1\n");
        let (out, _) = run(format!("{job} \n").as_bytes());
        assert_eq!(
            out,
            format!(
                "invalid 1: body: {} bytes, limit is {MAX_JOB_BYTES}\n",
                MAX_JOB_BYTES + 1
            )
        );
    }

    #[test]
    fn write_errors_are_returned() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = validate_lines(GOOD.as_bytes(), Broken).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
