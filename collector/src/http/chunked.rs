//! The chunked transfer coding (RFC 9112 §7.1), decoded only as far as framing needs: chunk
//! sizes and line ends are read, chunk data is skipped by length without its bytes.

/// Longest chunk-size line or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkedDecoder {
    /// Reading a chunk-size line (hex size, optional extensions, CRLF).
    Size(Vec<u8>),
    /// Inside chunk data: this many bytes left.
    Data(u64),
    /// The CRLF after chunk data: this many bytes of it left.
    DataEnd(u8),
    /// After the last chunk: trailer lines until an empty one.
    Trailer(Vec<u8>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// This many bytes were consumed; the message goes on.
    Consumed(u64),
    /// The message ends after this many bytes.
    Done(u64),
    /// The decoder needs the bytes at this position, and they were not captured.
    NeedBytes,
    Invalid(&'static str),
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::Size(Vec::new())
    }
}

impl ChunkedDecoder {
    /// Advances over a call's bytes from the current position: `known` holds the captured
    /// bytes from here on, `available` how many bytes the call has from here on (≥ known).
    pub fn step(&mut self, known: &[u8], available: u64) -> Step {
        match self {
            Self::Data(rem) => {
                let take = (*rem).min(available);
                *rem -= take;
                if *rem == 0 {
                    *self = Self::DataEnd(2);
                }
                Step::Consumed(take)
            }
            _ if known.is_empty() => Step::NeedBytes,
            Self::DataEnd(left) => {
                let expected: &[u8] = if *left == 2 { b"\r\n" } else { b"\n" };
                let take = (*left as usize).min(known.len());
                if known[..take] != expected[..take] {
                    return Step::Invalid("chunk data not followed by CRLF");
                }
                *left -= take as u8;
                if *left == 0 {
                    *self = Self::Size(Vec::new());
                }
                Step::Consumed(take as u64)
            }
            Self::Size(line) => match read_line(line, known) {
                Err(e) => Step::Invalid(e),
                Ok((used, false)) => Step::Consumed(used),
                Ok((used, true)) => {
                    let size = parse_size(line);
                    match size {
                        None => Step::Invalid("invalid chunk size"),
                        Some(0) => {
                            *self = Self::Trailer(Vec::new());
                            Step::Consumed(used)
                        }
                        Some(n) => {
                            *self = Self::Data(n);
                            Step::Consumed(used)
                        }
                    }
                }
            },
            Self::Trailer(line) => match read_line(line, known) {
                Err(e) => Step::Invalid(e),
                Ok((used, false)) => Step::Consumed(used),
                Ok((used, true)) => {
                    if line.trim_ascii().is_empty() {
                        Step::Done(used)
                    } else {
                        line.clear();
                        Step::Consumed(used)
                    }
                }
            },
        }
    }
}

/// Appends bytes up to and including the next LF to `line`; returns (bytes used, line done).
/// `line` holds the line without its CRLF once done.
fn read_line(line: &mut Vec<u8>, known: &[u8]) -> Result<(u64, bool), &'static str> {
    match known.iter().position(|&b| b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&known[..i]);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > MAX_LINE {
                return Err("chunk line too long");
            }
            Ok((i as u64 + 1, true))
        }
        None => {
            line.extend_from_slice(known);
            if line.len() > MAX_LINE {
                return Err("chunk line too long");
            }
            Ok((known.len() as u64, false))
        }
    }
}

fn parse_size(line: &[u8]) -> Option<u64> {
    let hex = line.split(|&b| b == b';').next()?.trim_ascii();
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `piece` bytes; returns the offset right after the message.
    fn decode(body: &[u8], piece: usize) -> Result<usize, &'static str> {
        let mut d = ChunkedDecoder::default();
        let mut pos = 0;
        while pos < body.len() {
            let end = (pos + piece).min(body.len());
            let mut p = pos;
            while p < end {
                match d.step(&body[p..end], (end - p) as u64) {
                    Step::Consumed(n) => p += n as usize,
                    Step::Done(n) => return Ok(p + n as usize),
                    Step::NeedBytes => unreachable!("all bytes are known here"),
                    Step::Invalid(e) => return Err(e),
                }
            }
            pos = end;
        }
        Err("unterminated")
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers_whatever_the_split() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        let end = body.len() - b"GET /next".len();
        for piece in 1..body.len() {
            assert_eq!(decode(body, piece), Ok(end), "piece {piece}");
        }
    }

    #[test]
    fn malformed_chunks_are_invalid() {
        assert_eq!(decode(b"zz\r\n", 4), Err("invalid chunk size"));
        assert_eq!(
            decode(b"2\r\nabXX", 8),
            Err("chunk data not followed by CRLF")
        );
    }

    #[test]
    fn data_is_skipped_without_its_bytes() {
        let mut d = ChunkedDecoder::Data(1000);
        assert_eq!(d.step(&[], 600), Step::Consumed(600));
        assert_eq!(d.step(&[], 600), Step::Consumed(400));
        assert_eq!(d.step(&[], 2), Step::NeedBytes);
    }
}
