//! The canonical binary encoding.
//!
//! Every value that is hashed or signed has exactly one byte form:
//! - integers are fixed-width little-endian;
//! - `bool` is one byte, `0` or `1`;
//! - `f32` is its IEEE-754 bits, little-endian; NaN and infinities are rejected so that a
//!   float field can never carry an unreadable payload;
//! - sequences and byte strings are a `u32` little-endian length followed by the items;
//!   every length read from the wire is checked against a per-field maximum *and* against
//!   the bytes that remain before anything is allocated;
//! - enums are a one-byte tag followed by the variant's fields; unknown tags are errors;
//! - structs are their fields in declaration order, with no padding and no field names.
//!
//! [`decode`] insists that the input is consumed exactly: trailing bytes are an error. So
//! for every value `v`, `decode(encode(v)) == v`, and for every byte string `b` that
//! decodes, `encode(decode(b)) == b`.

use thiserror::Error;

/// Why bytes could not be decoded. Decoding never panics; every failure is one of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("input ended early: needed {needed} more bytes at offset {offset}")]
    UnexpectedEnd { offset: usize, needed: usize },
    #[error("{count} trailing bytes after a complete value")]
    TrailingBytes { count: usize },
    #[error("length {len} of {what} exceeds the maximum {max}")]
    LengthTooLarge { what: &'static str, len: u64, max: u64 },
    #[error("unknown tag {tag} for {what}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("invalid boolean byte {0}")]
    InvalidBool(u8),
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
    #[error("non-finite float in {0}")]
    NonFiniteFloat(&'static str),
    #[error("invalid value for {what}: {reason}")]
    InvalidValue { what: &'static str, reason: &'static str },
}

/// A value with a canonical byte form.
pub trait Encode {
    /// Appends the canonical bytes of `self` to `out`.
    fn encode_to(&self, out: &mut Vec<u8>);

    /// The canonical bytes of `self`.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_to(&mut out);
        out
    }
}

/// A value that can be read back from its canonical byte form.
pub trait Decode: Sized {
    /// Reads one value from the front of `reader`.
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// Decodes exactly one `T` from `bytes`, rejecting trailing bytes.
pub fn decode<T: Decode>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut reader = Reader::new(bytes);
    let value = T::decode_from(&mut reader)?;
    reader.finish()?;
    Ok(value)
}

/// A cursor over untrusted bytes.
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::UnexpectedEnd { offset: self.offset, needed: n - self.remaining() });
        }
        let slice = &self.bytes[self.offset..self.offset + n];
        self.offset += n;
        Ok(slice)
    }

    /// Takes exactly `N` bytes as an array.
    pub fn take_array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads a `u32` length and checks it against `max` and against the bytes that remain,
    /// assuming each item takes at least `min_item_bytes`. Nothing is allocated before this
    /// check, so a forged length cannot exhaust memory.
    pub fn read_len(&mut self, what: &'static str, max: usize, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let len = u32::decode_from(self)? as usize;
        if len > max {
            return Err(DecodeError::LengthTooLarge { what, len: len as u64, max: max as u64 });
        }
        let needed = len.saturating_mul(min_item_bytes.max(1));
        if needed > self.remaining() {
            return Err(DecodeError::UnexpectedEnd { offset: self.offset, needed: needed - self.remaining() });
        }
        Ok(len)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }
}

macro_rules! impl_int {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode_to(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
        impl Decode for $t {
            fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(<$t>::from_le_bytes(reader.take_array()?))
            }
        }
    )*};
}
impl_int!(u8, u16, u32, u64, u128);

impl Encode for bool {
    fn encode_to(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl Decode for bool {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode_from(reader)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::InvalidBool(other)),
        }
    }
}

impl Encode for f32 {
    fn encode_to(&self, out: &mut Vec<u8>) {
        debug_assert!(self.is_finite(), "non-finite floats have no canonical encoding");
        out.extend_from_slice(&self.to_bits().to_le_bytes());
    }
}

impl Decode for f32 {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let value = f32::from_bits(u32::decode_from(reader)?);
        if !value.is_finite() {
            return Err(DecodeError::NonFiniteFloat("f32"));
        }
        Ok(value)
    }
}

impl<const N: usize> Encode for [u8; N] {
    fn encode_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl<const N: usize> Decode for [u8; N] {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        reader.take_array()
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode_to(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                value.encode_to(out);
            }
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode_from(reader)? {
            0 => Ok(None),
            1 => Ok(Some(T::decode_from(reader)?)),
            tag => Err(DecodeError::UnknownTag { what: "option", tag }),
        }
    }
}

/// Writes a `u32` length prefix. Lengths above `u32::MAX` cannot be produced by values that
/// respect the protocol limits, which are all far smaller.
pub fn encode_len(len: usize, out: &mut Vec<u8>) {
    let len = u32::try_from(len).expect("protocol lengths fit in u32"); // ok: every protocol limit is far below u32::MAX
    len.encode_to(out);
}

/// Encodes a sequence: length, then each item.
pub fn encode_seq<T: Encode>(items: &[T], out: &mut Vec<u8>) {
    encode_len(items.len(), out);
    for item in items {
        item.encode_to(out);
    }
}

/// Decodes a sequence of at most `max` items, each at least `min_item_bytes` long.
pub fn decode_seq<T: Decode>(
    reader: &mut Reader<'_>,
    what: &'static str,
    max: usize,
    min_item_bytes: usize,
) -> Result<Vec<T>, DecodeError> {
    let len = reader.read_len(what, max, min_item_bytes)?;
    let mut items = Vec::with_capacity(len);
    for _ in 0..len {
        items.push(T::decode_from(reader)?);
    }
    Ok(items)
}

/// Encodes a byte string: length, then the bytes.
pub fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    encode_len(bytes.len(), out);
    out.extend_from_slice(bytes);
}

/// Decodes a byte string of at most `max` bytes.
pub fn decode_bytes(reader: &mut Reader<'_>, what: &'static str, max: usize) -> Result<Vec<u8>, DecodeError> {
    let len = reader.read_len(what, max, 1)?;
    Ok(reader.take(len)?.to_vec())
}

/// Decodes a UTF-8 string of at most `max` bytes.
pub fn decode_string(reader: &mut Reader<'_>, what: &'static str, max: usize) -> Result<String, DecodeError> {
    String::from_utf8(decode_bytes(reader, what, max)?).map_err(|_| DecodeError::InvalidUtf8(what))
}

/// Implements [`Encode`] and [`Decode`] for a struct whose fields all implement them,
/// encoding the fields in the order listed (which must be declaration order).
#[macro_export]
macro_rules! canonical_struct {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl $crate::codec::Encode for $ty {
            fn encode_to(&self, out: &mut Vec<u8>) {
                $( $crate::codec::Encode::encode_to(&self.$field, out); )*
            }
        }
        impl $crate::codec::Decode for $ty {
            fn decode_from(reader: &mut $crate::codec::Reader<'_>) -> Result<Self, $crate::codec::DecodeError> {
                Ok(Self { $( $field: $crate::codec::Decode::decode_from(reader)?, )* })
            }
        }
    };
}

/// Implements [`Encode`] and [`Decode`] for a single-field tuple struct (a newtype).
#[macro_export]
macro_rules! canonical_newtype {
    ($ty:ident) => {
        impl $crate::codec::Encode for $ty {
            fn encode_to(&self, out: &mut Vec<u8>) {
                $crate::codec::Encode::encode_to(&self.0, out);
            }
        }
        impl $crate::codec::Decode for $ty {
            fn decode_from(reader: &mut $crate::codec::Reader<'_>) -> Result<Self, $crate::codec::DecodeError> {
                Ok(Self($crate::codec::Decode::decode_from(reader)?))
            }
        }
    };
}

/// Implements [`Encode`] and [`Decode`] for a fieldless enum with explicit one-byte tags.
#[macro_export]
macro_rules! canonical_tag_enum {
    ($ty:ident, $what:literal { $($variant:ident = $tag:literal),* $(,)? }) => {
        impl $crate::codec::Encode for $ty {
            fn encode_to(&self, out: &mut Vec<u8>) {
                out.push(match self { $( $ty::$variant => $tag, )* });
            }
        }
        impl $crate::codec::Decode for $ty {
            fn decode_from(reader: &mut $crate::codec::Reader<'_>) -> Result<Self, $crate::codec::DecodeError> {
                match <u8 as $crate::codec::Decode>::decode_from(reader)? {
                    $( $tag => Ok($ty::$variant), )*
                    tag => Err($crate::codec::DecodeError::UnknownTag { what: $what, tag }),
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_little_endian_fixed_width() {
        assert_eq!(0x0102_0304u32.to_bytes(), vec![4, 3, 2, 1]);
        assert_eq!(1u64.to_bytes(), vec![1, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        assert_eq!(decode::<u16>(&[1, 0, 9]), Err(DecodeError::TrailingBytes { count: 1 }));
    }

    #[test]
    fn short_input_is_rejected() {
        assert!(matches!(decode::<u32>(&[1, 0]), Err(DecodeError::UnexpectedEnd { .. })));
    }

    #[test]
    fn invalid_bool_and_option_tags_are_rejected() {
        assert_eq!(decode::<bool>(&[2]), Err(DecodeError::InvalidBool(2)));
        assert_eq!(decode::<Option<u8>>(&[7, 0]), Err(DecodeError::UnknownTag { what: "option", tag: 7 }));
    }

    #[test]
    fn non_finite_floats_are_rejected() {
        assert_eq!(decode::<f32>(&f32::NAN.to_bits().to_le_bytes()), Err(DecodeError::NonFiniteFloat("f32")));
        assert_eq!(decode::<f32>(&f32::INFINITY.to_bits().to_le_bytes()), Err(DecodeError::NonFiniteFloat("f32")));
    }

    #[test]
    fn forged_lengths_fail_before_allocating() {
        // A length of u32::MAX with no payload must fail on the limit, not on allocation.
        let bytes = u32::MAX.to_bytes();
        let mut reader = Reader::new(&bytes);
        let err = decode_seq::<u64>(&mut reader, "items", 1_000, 8).unwrap_err();
        assert!(matches!(err, DecodeError::LengthTooLarge { .. }));
        // Within the limit but beyond the remaining input: rejected without allocating.
        let bytes = 500u32.to_bytes();
        let mut reader = Reader::new(&bytes);
        let err = decode_seq::<u64>(&mut reader, "items", 1_000, 8).unwrap_err();
        assert!(matches!(err, DecodeError::UnexpectedEnd { .. }));
    }

    #[test]
    fn strings_must_be_utf8() {
        let mut bytes = Vec::new();
        encode_bytes(&[0xff, 0xfe], &mut bytes);
        let mut reader = Reader::new(&bytes);
        assert_eq!(decode_string(&mut reader, "name", 10), Err(DecodeError::InvalidUtf8("name")));
    }
}
