//! Splits a tagged PostgreSQL byte stream into frames without I/O. Frames
//! the hook does not want stream through byte for byte, even when they are
//! larger than one read; wanted frames are collected whole (bounded by
//! `max`) and handed to the hook, which writes them (or a rewrite) out.

use bytes::{BufMut, BytesMut};

use super::codec::{frame_len, put_frame};
use super::PgError;

/// The filter seam of the relay: recording, masking and guardrails plug in here.
pub trait Inspect {
    /// Whether frames with this tag must be seen whole.
    fn wants(&self, tag: u8) -> bool;
    /// Handles one whole wanted frame; must write what the peer should get.
    fn frame(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
        self.frame_seen(tag, body)?;
        put_frame(out, tag, body);
        Ok(())
    }
    /// Observes a frame that passes unchanged.
    fn frame_seen(&mut self, _tag: u8, _body: &[u8]) -> Result<(), PgError> {
        Ok(())
    }
}

enum State {
    Header,
    Pass(usize),
    Collect { tag: u8, len: usize },
}

pub struct Scanner {
    hdr: [u8; 5],
    hdr_len: usize,
    state: State,
    body: BytesMut,
    /// Largest frame accepted at all.
    max: usize,
    /// Largest frame collected whole for the hook (memory is bounded by this).
    collect_max: usize,
}

impl Scanner {
    pub fn new(max: usize) -> Scanner {
        Scanner {
            hdr: [0; 5],
            hdr_len: 0,
            state: State::Header,
            body: BytesMut::new(),
            max,
            collect_max: max,
        }
    }

    /// Any frame size streams through; only collected frames are bounded.
    pub fn collect_limited(collect_max: usize) -> Scanner {
        Scanner {
            collect_max,
            ..Scanner::new(usize::MAX >> 1)
        }
    }

    /// True when no frame is half-read (a clean place to end a stream).
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header) && self.hdr_len == 0
    }

    pub fn feed<H: Inspect>(
        &mut self,
        mut input: &[u8],
        hook: &mut H,
        out: &mut BytesMut,
    ) -> Result<(), PgError> {
        out.reserve(input.len());
        while !input.is_empty() {
            match self.state {
                State::Header => {
                    let take = (5 - self.hdr_len).min(input.len());
                    self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&input[..take]);
                    self.hdr_len += take;
                    input = &input[take..];
                    if self.hdr_len < 5 {
                        break;
                    }
                    self.hdr_len = 0;
                    let tag = self.hdr[0];
                    let len = frame_len(
                        tag,
                        [self.hdr[1], self.hdr[2], self.hdr[3], self.hdr[4]],
                        self.max,
                    )?;
                    if hook.wants(tag) {
                        if len > self.collect_max {
                            return Err(PgError::TooLarge {
                                tag: tag as char,
                                len,
                                max: self.collect_max,
                            });
                        }
                        self.body.clear();
                        self.state = State::Collect { tag, len };
                    } else {
                        out.put_slice(&self.hdr);
                        self.state = State::Pass(len);
                    }
                }
                State::Pass(n) => {
                    let take = n.min(input.len());
                    out.put_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if take == n {
                        State::Header
                    } else {
                        State::Pass(n - take)
                    };
                }
                State::Collect { tag, len } => {
                    // Whole frame already in this chunk: no copy into `body`.
                    if self.body.is_empty() && input.len() >= len {
                        hook.frame(tag, &input[..len], out)?;
                        input = &input[len..];
                        self.state = State::Header;
                        continue;
                    }
                    let take = (len - self.body.len()).min(input.len());
                    self.body.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.body.len() == len {
                        let body = std::mem::take(&mut self.body);
                        hook.frame(tag, &body, out)?;
                        self.body = body;
                        self.body.clear();
                        self.state = State::Header;
                    }
                }
            }
        }
        // Zero-length wanted frames (e.g. Sync) complete with the header.
        if let State::Collect { tag, len: 0 } = self.state {
            hook.frame(tag, &[], out)?;
            self.state = State::Header;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Want(Vec<(u8, Vec<u8>)>);
    impl Inspect for Want {
        fn wants(&self, tag: u8) -> bool {
            tag == b'Q' || tag == b'S'
        }
        fn frame_seen(&mut self, tag: u8, body: &[u8]) -> Result<(), PgError> {
            self.0.push((tag, body.to_vec()));
            Ok(())
        }
    }

    fn stream() -> Vec<u8> {
        let mut b = BytesMut::new();
        put_frame(&mut b, b'Q', b"select 1\0");
        put_frame(&mut b, b'd', &[7u8; 300]);
        put_frame(&mut b, b'S', b"");
        put_frame(&mut b, b'Q', b"select 2\0");
        b.to_vec()
    }

    #[test]
    fn passes_every_byte_for_every_split() {
        let input = stream();
        for chunk in 1..input.len() {
            let mut s = Scanner::new(1024);
            let mut hook = Want(Vec::new());
            let mut out = BytesMut::new();
            for c in input.chunks(chunk) {
                s.feed(c, &mut hook, &mut out).unwrap();
            }
            assert_eq!(&out[..], &input[..], "chunk {chunk}");
            assert_eq!(hook.0.len(), 3, "chunk {chunk}");
            assert_eq!(hook.0[2], (b'Q', b"select 2\0".to_vec()));
            assert!(s.at_boundary());
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut out = BytesMut::new();
        let mut hook = Want(Vec::new());
        assert!(Scanner::new(1024)
            .feed(&[b'Q', 0, 0, 0, 2], &mut hook, &mut out)
            .is_err());
        assert!(Scanner::new(16)
            .feed(&[b'd', 0, 0, 1, 0], &mut hook, &mut out)
            .is_err());
        assert!(Scanner::new(16)
            .feed(&[b'd', 0xff, 0xff, 0xff, 0xff], &mut hook, &mut out)
            .is_err());
    }
}
