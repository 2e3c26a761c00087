//! Park bundles: several parked jobs of one Page carried in one AMQP message.
//!
//! Parking a job costs the broker a persistent publish and its confirm, about as much as two or
//! three jobs delivered; a Page out of budget with a deep backlog would park every job it holds.
//! So the jobs one lane parks together travel as one message to the delay tier and back. Each
//! piece keeps the exact properties (headers included) it would have had as a message of its own,
//! written in AMQP's own encoding of basic properties, so that nothing about a job changes by
//! being bundled.
//!
//! The body is `MAGIC`, then per piece a big-endian `u32` length and the encoded properties, a
//! `u32` length and the job's body. The [`BUNDLE`] header carries the piece count and marks the
//! message as a bundle. This module owns the format only; which jobs are bundled is
//! `pipeline::park`'s decision, and the consumer splits bundles back into jobs.

use lapin::BasicProperties;
use lapin::protocol::basic::{gen_properties, parse_properties};
use lapin::types::FieldTable;

use super::headers;

/// Marks a message as a bundle; its value is the number of jobs in it.
pub const BUNDLE: &str = "x-pagerelay-bundle";

/// The content type of a bundle's body.
pub const CONTENT_TYPE: &str = "application/vnd.pagerelay.bundle";

/// The first bytes of every bundle body, with the format's version.
pub const MAGIC: &[u8; 4] = b"PRB1";

/// A job taken out of a bundle: the properties and body it was bundled with.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// Why a bundle's body could not be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("the body does not start with the bundle marker")]
    Magic,
    #[error("piece {index} is cut short")]
    Truncated { index: usize },
    #[error("piece {index} has unreadable properties")]
    Properties { index: usize },
    #[error("the bundle holds no jobs")]
    Empty,
    #[error("the header declares {declared} jobs, the body holds {found}")]
    Count { declared: usize, found: usize },
}

/// The number of jobs in the bundle these headers describe, or `None` if they describe an
/// ordinary message.
pub fn count(headers: Option<&FieldTable>) -> Option<usize> {
    headers::get_int(headers, BUNDLE).map(|n| usize::try_from(n).unwrap_or(0))
}

/// Marks `headers` as those of a bundle of `jobs` jobs.
pub fn mark(headers: &mut FieldTable, jobs: usize) {
    headers::set_int(headers, BUNDLE, jobs as i64);
}

/// The properties of a bundle of `jobs` jobs: `headers`, marked as a bundle's, persistent, with
/// the bundle content type.
pub fn properties(mut headers: FieldTable, jobs: usize) -> BasicProperties {
    mark(&mut headers, jobs);
    BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_content_type(CONTENT_TYPE.into())
}

/// The body of a bundle of `pieces`.
pub fn encode<'a>(pieces: impl IntoIterator<Item = (&'a BasicProperties, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(MAGIC);
    for (properties, body) in pieces {
        // The properties go straight into the body; their length is filled in after.
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        // Writing into a Vec only fails if memory does.
        out = cookie_factory::gen_simple(gen_properties(properties), out)
            .expect("encoding properties into memory");
        let written = out.len() - at - 4;
        out[at..at + 4].copy_from_slice(&len_prefix(written));
        out.extend_from_slice(&len_prefix(body.len()));
        out.extend_from_slice(body);
    }
    out
}

fn len_prefix(len: usize) -> [u8; 4] {
    // A bundle is bounded far below 4 GiB by the planner (and by the broker's frame limits).
    u32::try_from(len)
        .expect("a piece under 4 GiB")
        .to_be_bytes()
}

/// The pieces of a bundle body that declares `declared` jobs.
pub fn decode(body: &[u8], declared: usize) -> Result<Vec<Piece>, BundleError> {
    let mut rest = body.strip_prefix(MAGIC).ok_or(BundleError::Magic)?;
    // The declared count sizes the allocation only up to what the body could hold.
    let mut pieces = Vec::with_capacity(declared.min(body.len() / 8));
    while !rest.is_empty() {
        let index = pieces.len();
        let (props, after) = take(rest).ok_or(BundleError::Truncated { index })?;
        let (data, after) = take(after).ok_or(BundleError::Truncated { index })?;
        let properties = match parse_properties(props) {
            Ok(([], properties)) => properties,
            _ => return Err(BundleError::Properties { index }),
        };
        pieces.push(Piece {
            properties,
            body: data.to_vec(),
        });
        rest = after;
    }
    if pieces.is_empty() {
        // Nothing would ever settle its delivery.
        return Err(BundleError::Empty);
    }
    if pieces.len() != declared {
        return Err(BundleError::Count {
            declared,
            found: pieces.len(),
        });
    }
    Ok(pieces)
}

/// One length-prefixed field and what follows it.
fn take(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = input.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, ShortString};

    fn props(id: &str, attempts: i64) -> BasicProperties {
        let mut table = FieldTable::default();
        headers::set_int(&mut table, headers::ATTEMPTS, attempts);
        headers::set_str(&mut table, headers::PARK_REASON, "budget");
        BasicProperties::default()
            .with_message_id(ShortString::from(id.to_string()))
            .with_content_type(ShortString::from("application/json".to_string()))
            .with_delivery_mode(2)
            .with_headers(table)
    }

    #[test]
    fn pieces_come_back_exactly_as_bundled() {
        let a = props("job-a", 1);
        let b = BasicProperties::default();
        let c = props("job-c", 7);
        let body = encode([
            (&a, &b"{\"a\":1}"[..]),
            (&b, &b""[..]),
            (&c, &[0u8, 255, 10][..]),
        ]);
        assert!(body.starts_with(MAGIC));
        let pieces = decode(&body, 3).unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece {
                    properties: a,
                    body: b"{\"a\":1}".to_vec()
                },
                Piece {
                    properties: b,
                    body: Vec::new()
                },
                Piece {
                    properties: c,
                    body: vec![0, 255, 10]
                },
            ]
        );
    }

    #[test]
    fn a_count_that_does_not_match_is_refused() {
        let a = props("job-a", 0);
        let body = encode([(&a, &b"x"[..]), (&a, &b"y"[..])]);
        assert_eq!(
            decode(&body, 3),
            Err(BundleError::Count {
                declared: 3,
                found: 2
            })
        );
        assert_eq!(
            decode(&body, 1),
            Err(BundleError::Count {
                declared: 1,
                found: 2
            })
        );
    }

    #[test]
    fn damaged_bodies_are_errors_not_panics() {
        let a = props("job-a", 0);
        let body = encode([(&a, &b"hello"[..])]);
        assert_eq!(decode(b"{\"page_id\":1}", 1), Err(BundleError::Magic));
        assert_eq!(decode(MAGIC, 0), Err(BundleError::Empty));
        for cut in 4..body.len() {
            assert!(decode(&body[..cut], 1).is_err(), "cut at {cut}");
        }
        let mut garbled = body.clone();
        // The property flags: claim every property is present.
        garbled[8] = 0xff;
        garbled[9] = 0xfc;
        assert!(matches!(
            decode(&garbled, 1),
            Err(BundleError::Properties { index: 0 } | BundleError::Truncated { index: 0 })
        ));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode(&huge, usize::MAX),
            Err(BundleError::Truncated { index: 0 })
        );
    }

    #[test]
    fn the_header_marks_and_counts() {
        let mut table = FieldTable::default();
        assert_eq!(count(Some(&table)), None);
        assert_eq!(count(None), None);
        mark(&mut table, 120);
        assert_eq!(count(Some(&table)), Some(120));
        table.insert(BUNDLE.into(), AMQPValue::LongLongInt(-4));
        assert_eq!(count(Some(&table)), Some(0));
    }
}
