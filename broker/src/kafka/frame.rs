//! A response frame as a list of byte segments, written to the socket with
//! one vectored write where it can. Most responses are one segment; a
//! fetch response interleaves its own small encoded parts with the stored
//! record batches themselves, which are slices of the memory-mapped log,
//! so batches reach the socket without being copied into a buffer first.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

/// An encoded response frame (size prefix included).
#[derive(Debug, Default)]
pub(crate) struct Frame {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Frame {
    /// Appends a segment; empty ones are dropped, so every part left has
    /// bytes to write.
    pub(crate) fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.remaining += part.len();
            self.parts.push_back(part);
        }
    }

    /// Puts a segment before the others (the size prefix, once the size is
    /// known).
    pub(crate) fn push_front(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.remaining += part.len();
            self.parts.push_front(part);
        }
    }

    /// The segments, for tests.
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        self.parts.iter().flat_map(|p| p.iter().copied()).collect()
    }
}

impl From<Bytes> for Frame {
    fn from(b: Bytes) -> Frame {
        let mut f = Frame::default();
        f.push(b);
        f
    }
}

impl Buf for Frame {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| p.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of a frame");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self.parts.front_mut().expect("remaining counts the parts");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_its_segments_in_order_across_advances() {
        let mut f = Frame::from(Bytes::from_static(b"abc"));
        f.push(Bytes::new());
        f.push(Bytes::from_static(b"defg"));
        f.push_front(Bytes::from_static(b"12"));
        assert_eq!(f.remaining(), 9);
        assert_eq!(f.to_vec(), b"12abcdefg");
        let mut slices = [IoSlice::new(&[]); 8];
        assert_eq!(f.chunks_vectored(&mut slices), 3);
        f.advance(3);
        assert_eq!(f.chunk(), b"bc");
        f.advance(2);
        assert_eq!(f.chunk(), b"defg");
        let mut out = Vec::new();
        while f.has_remaining() {
            let c = f.chunk().len().min(3);
            out.extend_from_slice(&f.chunk()[..c]);
            f.advance(c);
        }
        assert_eq!(out, b"defg");
        assert_eq!(f.remaining(), 0);
        assert_eq!(f.chunk(), b"");
    }
}
