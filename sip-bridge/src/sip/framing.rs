//! Splitting transport bytes into SIP messages (RFC 3261 section 18, RFC 5626
//! section 3.5.1), so socket code only moves bytes.
//!
//! A datagram is one message (or a keep-alive). A stream carries messages back to
//! back, each framed by its Content-Length, which is mandatory there; blank lines
//! between messages are skipped; a bare CRLFCRLF is a keep-alive ping to answer
//! with CRLF. Buffers are bounded: a peer cannot make us hold more than one
//! maximum-size message.

use bytes::{Buf, Bytes, BytesMut};

/// Default largest message accepted (headers and body).
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;
/// Largest header block accepted while looking for its end.
const MAX_HEADERS: usize = 16 * 1024;

/// Framing failures: the connection is unusable after one (close it, answering
/// 400/513 first where a message start is known).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// A stream message without Content-Length (RFC 3261 section 18.3).
    #[error("message on a stream without Content-Length")]
    MissingContentLength,
    /// Content-Length is not a number.
    #[error("Content-Length is not a number")]
    BadContentLength,
    /// Larger than the limit (answer 513 Message Too Large).
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// What a datagram or a stream yielded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framed {
    /// One complete SIP message.
    Message(Bytes),
    /// CRLFCRLF keep-alive ping (answer with [`PONG`] on streams).
    Ping,
    /// CRLF keep-alive pong.
    Pong,
}

/// The keep-alive answer on a stream.
pub const PONG: &[u8] = b"\r\n";

/// Classifies one datagram (RFC 5626: a CRLF datagram is a keep-alive).
pub fn datagram(data: Bytes, max: usize) -> Result<Framed, FramingError> {
    if data.len() > max {
        return Err(FramingError::TooLarge(data.len()));
    }
    if data.iter().all(|&b| b == b'\r' || b == b'\n') {
        return Ok(if data.len() >= 4 {
            Framed::Ping
        } else {
            Framed::Pong
        });
    }
    Ok(Framed::Message(data))
}

/// Reassembles messages from a TCP/TLS/WebSocket-less stream.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max: usize,
}

impl StreamFramer {
    /// A framer accepting messages up to `max` bytes.
    pub fn new(max: usize) -> Self {
        StreamFramer {
            buf: BytesMut::with_capacity(4096),
            max,
        }
    }

    /// Bytes waiting for the rest of a message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Appends received bytes. Fails (and the connection should close) when more
    /// is buffered than one maximum message.
    pub fn push(&mut self, data: &[u8]) -> Result<(), FramingError> {
        if self.buf.len() + data.len() > self.max + MAX_HEADERS {
            return Err(FramingError::TooLarge(self.buf.len() + data.len()));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete item, `None` if more bytes are needed.
    pub fn next_item(&mut self) -> Result<Option<Framed>, FramingError> {
        // Keep-alives and blank lines between messages.
        let crlfs = self
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if crlfs > 0 {
            if crlfs == self.buf.len() {
                // Only line ends so far: a ping is CRLFCRLF, a pong a lone CRLF.
                if self.buf.starts_with(b"\r\n\r\n") {
                    self.buf.advance(4);
                    return Ok(Some(Framed::Ping));
                }
                if self.buf.as_ref() == b"\r\n" {
                    self.buf.advance(2);
                    return Ok(Some(Framed::Pong));
                }
                return Ok(None);
            }
            self.buf.advance(crlfs);
        }
        let Some(head_end) = find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > MAX_HEADERS {
                return Err(FramingError::TooLarge(self.buf.len()));
            }
            return Ok(None);
        };
        let body_start = head_end + 4;
        let len =
            content_length(&self.buf[..head_end])?.ok_or(FramingError::MissingContentLength)?;
        let total = body_start
            .checked_add(len)
            .ok_or(FramingError::TooLarge(usize::MAX))?;
        if total > self.max {
            return Err(FramingError::TooLarge(total));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        Ok(Some(Framed::Message(self.buf.split_to(total).freeze())))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The Content-Length (or compact `l`) value in a header block, if present.
pub(crate) fn content_length(head: &[u8]) -> Result<Option<usize>, FramingError> {
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let v = std::str::from_utf8(line[colon + 1..].trim_ascii())
                .map_err(|_| FramingError::BadContentLength)?;
            return v
                .parse()
                .map(Some)
                .map_err(|_| FramingError::BadContentLength);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 5\r\n\r\nhello";

    #[test]
    fn splits_back_to_back_messages_in_any_chunking() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(OPTIONS);
        stream.extend_from_slice(b"\r\n\r\n"); // a ping between messages
        stream.extend_from_slice(OPTIONS);
        for chunk in [1, 3, 7, 64, 1000] {
            let mut f = StreamFramer::new(DEFAULT_MAX_MESSAGE);
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                f.push(c).unwrap();
                while let Some(item) = f.next_item().unwrap() {
                    got.push(item);
                }
            }
            let messages: Vec<_> = got
                .iter()
                .filter(|i| matches!(i, Framed::Message(_)))
                .collect();
            assert_eq!(messages.len(), 2, "chunk {chunk}");
            assert!(
                messages
                    .iter()
                    .all(|m| **m == Framed::Message(Bytes::from_static(OPTIONS)))
            );
            assert_eq!(f.pending(), 0);
        }
    }

    #[test]
    fn keepalives() {
        let mut f = StreamFramer::new(DEFAULT_MAX_MESSAGE);
        f.push(b"\r\n\r\n").unwrap();
        assert_eq!(f.next_item().unwrap(), Some(Framed::Ping));
        f.push(b"\r\n").unwrap();
        assert_eq!(f.next_item().unwrap(), Some(Framed::Pong));
        assert_eq!(
            datagram(Bytes::from_static(b"\r\n\r\n"), 100),
            Ok(Framed::Ping)
        );
        assert_eq!(datagram(Bytes::from_static(b"\r\n"), 100), Ok(Framed::Pong));
        assert!(matches!(
            datagram(Bytes::from_static(OPTIONS), 1000),
            Ok(Framed::Message(_))
        ));
        assert_eq!(
            datagram(Bytes::from_static(OPTIONS), 10),
            Err(FramingError::TooLarge(OPTIONS.len()))
        );
    }

    #[test]
    fn stream_errors() {
        let mut f = StreamFramer::new(DEFAULT_MAX_MESSAGE);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n")
            .unwrap();
        assert_eq!(f.next_item(), Err(FramingError::MissingContentLength));
        let mut f = StreamFramer::new(DEFAULT_MAX_MESSAGE);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: abc\r\n\r\n")
            .unwrap();
        assert_eq!(f.next_item(), Err(FramingError::BadContentLength));
        let mut f = StreamFramer::new(1000);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 5000\r\n\r\n")
            .unwrap();
        assert!(matches!(f.next_item(), Err(FramingError::TooLarge(_))));
        // A flood without a header end is cut off, not buffered forever.
        let mut f = StreamFramer::new(1000);
        let junk = vec![b'x'; 4096];
        let mut failed = false;
        for _ in 0..10 {
            if f.push(&junk).is_err() || f.next_item().is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        assert!(f.pending() <= 1000 + MAX_HEADERS);
    }
}
