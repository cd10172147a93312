//! LEB128 varints and zigzag encoding, as used inside record batches.
//!
//! Decoding works on a byte slice and a cursor, never reads past the slice,
//! and rejects encodings longer than the type they decode into.

/// The longest varint a `u64` can need.
pub const MAX_VARINT_LEN_U64: usize = 10;

/// Appends `value` as an unsigned LEB128 varint.
#[inline]
pub fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `value` zigzag-encoded, so small negative numbers stay short.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, value: i64) {
    put_uvarint(out, zigzag(value));
}

/// The number of bytes `put_uvarint` writes for `value`.
#[inline]
pub fn uvarint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The number of bytes `put_varint` writes for `value`.
#[inline]
pub fn varint_len(value: i64) -> usize {
    uvarint_len(zigzag(value))
}

#[inline]
fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

#[inline]
fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VarintError {
    /// The slice ended inside the varint.
    Truncated,
    /// The varint is longer than the target type allows.
    Overlong,
}

/// Decodes an unsigned varint at `*pos`, advancing `*pos` past it.
#[inline]
pub fn get_uvarint(buf: &[u8], pos: &mut usize) -> Result<u64, VarintError> {
    let mut result: u64 = 0;
    for i in 0..MAX_VARINT_LEN_U64 {
        let Some(&byte) = buf.get(*pos + i) else {
            return Err(VarintError::Truncated);
        };
        // The tenth byte may only carry the single top bit of a u64.
        if i == MAX_VARINT_LEN_U64 - 1 && byte > 1 {
            return Err(VarintError::Overlong);
        }
        result |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *pos += i + 1;
            return Ok(result);
        }
    }
    Err(VarintError::Overlong)
}

/// Decodes a zigzag varint at `*pos`, advancing `*pos` past it.
#[inline]
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<i64, VarintError> {
    get_uvarint(buf, pos).map(unzigzag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings_match_leb128() {
        let mut out = Vec::new();
        put_uvarint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        put_varint(&mut out, -1);
        assert_eq!(out, [0x01]);
    }

    #[test]
    fn truncated_and_overlong_varints_are_rejected() {
        let mut pos = 0;
        assert_eq!(
            get_uvarint(&[0x80, 0x80], &mut pos),
            Err(VarintError::Truncated)
        );
        assert_eq!(pos, 0);
        let overlong = [0xff; 11];
        assert_eq!(get_uvarint(&overlong, &mut pos), Err(VarintError::Overlong));
    }

    proptest! {
        #[test]
        fn every_u64_round_trips(v: u64) {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            prop_assert_eq!(out.len(), uvarint_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_uvarint(&out, &mut pos), Ok(v));
            prop_assert_eq!(pos, out.len());
        }

        #[test]
        fn every_i64_round_trips(v: i64) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_varint(&out, &mut pos), Ok(v));
        }
    }
}
