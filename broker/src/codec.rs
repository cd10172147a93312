//! Little-endian byte helpers shared by the broker's own file and record
//! formats (transaction metadata, producer snapshots).

/// A cursor over bytes being decoded; every read is bounds-checked and
/// returns `None` past the end.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    /// A little-endian `u16`.
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// A little-endian `i16`.
    pub(crate) fn i16(&mut self) -> Option<i16> {
        self.array().map(i16::from_le_bytes)
    }

    /// A little-endian `i32`.
    pub(crate) fn i32(&mut self) -> Option<i32> {
        self.array().map(i32::from_le_bytes)
    }

    /// A little-endian `i64`.
    pub(crate) fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }

    /// A string written by [`put_str`]: `u16` length, then UTF-8 bytes.
    pub(crate) fn str(&mut self) -> Option<String> {
        let len = self.u16()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    /// Whether every byte was read.
    pub(crate) fn is_done(&self) -> bool {
        self.pos == self.buf.len()
    }
}

/// Appends `s` as a `u16` length and its bytes.
pub(crate) fn put_str(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u16).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_returns_none_past_the_end_and_reads_strings_back() {
        let mut v = vec![7u8];
        put_str(&mut v, "héllo");
        v.extend_from_slice(&(-2i64).to_le_bytes());
        let mut r = Reader::new(&v);
        assert_eq!(r.u8(), Some(7));
        assert_eq!(r.str().as_deref(), Some("héllo"));
        assert_eq!(r.i64(), Some(-2));
        assert!(r.is_done());
        assert_eq!(r.u8(), None);
        let mut short = Reader::new(&v[..3]);
        assert_eq!(short.u8(), Some(7));
        assert_eq!(short.str(), None);
    }
}
