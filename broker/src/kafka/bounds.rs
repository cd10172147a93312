//! A bounds check that runs on every Kafka request body before the
//! `kafka-protocol` crate decodes it.
//!
//! Why: the crate trusts the counts it reads off the wire. An array's
//! decoder calls `Vec::with_capacity(n)` with `n` straight from the input
//! (`types::Array` and `types::CompactArray`), so a 20-byte request that
//! claims two billion partitions makes the broker ask for gigabytes before
//! it has read a single partition, and the process aborts. Ferry's rule is
//! that no length read from input allocates before it is checked against a
//! limit (DESIGN.md, "Bounds"), so the Kafka listener calls
//! [`check_request`] first and only hands the body to the crate if it
//! passes.
//!
//! How: `schema` (bounds/schema.rs) is a table, generated from the crate's own decoders by
//! `scripts/gen-kafka-bounds.py`, of the fields each request reads at each
//! version. [`check_request`] walks the body along that table, reading
//! exactly the bytes the crate's decoder would read, and allocating
//! nothing. On the way it checks that:
//!
//! - every array holds at most [`MAX_ARRAY_LEN`] elements, and no more
//!   than the bytes left could encode (each element takes at least a
//!   known number of bytes, so a count above `remaining / min_size` is a
//!   lie);
//! - every string, bytes field and skipped tagged field fits in the bytes
//!   left;
//! - every tagged-field section is well formed: its count fits in the
//!   bytes left, each tag is valid for the version, and each tagged field
//!   the crate decodes is exactly as long as its declared size (the crate
//!   trusts the value and ignores the size, so a wrong size would make it
//!   misread everything after; this is the one place the guard is stricter
//!   than the crate).
//!
//! The crate's other primitives are safe once those hold: fixed-size
//! reads, strings and bytes (`try_get_bytes` checks the length against
//! what is left before slicing) and skipped tagged fields all check the
//! input first. The decoders that allocate a `Vec<u8>` or `String` before
//! checking (`Decoder<Vec<u8>>`, `Decoder<String>`) are not used by any
//! request message: those decode into `Bytes` and `StrBytes`.
//!
//! With the check passed, every `Vec::with_capacity(n)` in the decode has
//! `n` no larger than the input it came from, so the decode allocates at
//! most a small multiple (the element's in-memory size over its minimum
//! wire size, times the nesting depth) of the body's length.
//!
//! Trailing bytes: the crate's decoders stop after the last field and
//! ignore whatever follows, so [`check_request`] accepts trailing bytes
//! too. It does not check UTF-8 either; the crate rejects bad strings
//! itself, without allocating.
//!
//! Versions: the guard knows exactly the versions the crate's request
//! decoders accept. For OffsetCommit v10, OffsetFetch v10 and
//! InitProducerId v6 that is less than `ApiKey::valid_versions()` claims:
//! the crate cannot decode those, so the guard refuses them, and the
//! listener must not advertise them in ApiVersions.

#[cfg(test)]
mod tests;

// Generated, and laid out one field a line for reading; rustfmt leaves it.
#[rustfmt::skip]
mod schema;

/// The most elements any one array in a request may hold.
///
/// The largest collection a legitimate request names in one array is a
/// broker-wide table listed in full: a `DescribeTransactions` of every
/// transactional id ([`crate::MAX_TRANSACTIONAL_IDS`], 100 000), or a
/// `Metadata` or `Fetch` over every topic ([`crate::MAX_TOPICS`]). The
/// limit is set to the largest of those, so the guard never refuses a
/// request the broker could serve. It matters most for elements that take
/// one or two bytes on the wire (compact strings, as in `DescribeGroups`'
/// group ids), where the remaining-bytes check alone would still allow a
/// count as large as the frame; with it, one array's allocation is bounded
/// by `MAX_ARRAY_LEN × size_of::<element>()`, a few megabytes.
pub const MAX_ARRAY_LEN: usize = 100_000;

const _: () = {
    assert!(MAX_ARRAY_LEN >= crate::MAX_TRANSACTIONAL_IDS);
    assert!(MAX_ARRAY_LEN >= crate::MAX_TOPICS);
    assert!(MAX_ARRAY_LEN >= crate::MAX_PARTITIONS_PER_TOPIC as usize);
};

/// Why a request body failed the check. `path` names the field, from the
/// request struct down, as in `ProduceRequest.topic_data[0].partition_data`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BoundsError {
    #[error("API key {api_key} version {api_version} is not a request the broker can decode")]
    UnsupportedRequest { api_key: i16, api_version: i16 },
    #[error("{path}: array of {count} elements is over the limit of {limit}")]
    ArrayTooLong {
        path: String,
        count: u64,
        limit: usize,
    },
    #[error(
        "{path}: array of {count} elements of at least {min_element_bytes} bytes each \
         cannot fit in the {remaining} bytes left"
    )]
    ArrayExceedsInput {
        path: String,
        count: u64,
        min_element_bytes: usize,
        remaining: usize,
    },
    #[error("{path}: length {length} is more than the {remaining} bytes left")]
    LengthExceedsInput {
        path: String,
        length: u64,
        remaining: usize,
    },
    #[error("{path}: length {length} is negative")]
    NegativeLength { path: String, length: i32 },
    #[error("{path}: null, but the field is not nullable")]
    UnexpectedNull { path: String },
    #[error("{path}: needs {needed} bytes, but only {remaining} are left")]
    Truncated {
        path: String,
        needed: usize,
        remaining: usize,
    },
    #[error("{path}: {count} tagged fields cannot fit in the {remaining} bytes left")]
    TooManyTaggedFields {
        path: String,
        count: u32,
        remaining: usize,
    },
    #[error("{path}: tag {tag} is not valid in version {version}")]
    TagNotInVersion {
        path: String,
        tag: u32,
        version: i16,
    },
    #[error("{path}: tagged field {tag} declares {declared} bytes, but its value takes {actual}")]
    TaggedFieldSize {
        path: String,
        tag: u32,
        declared: u32,
        actual: usize,
    },
}

/// Checks that the request body (the bytes after the request header) of
/// `api_key` at `api_version` can be decoded without any allocation larger
/// than its input justifies: every array count is at most [`MAX_ARRAY_LEN`]
/// and at most `remaining_bytes / (min encoded size of one element)`, every
/// string/bytes length fits in the remaining input, tagged-field sections
/// are well formed. Unknown (api_key, version) → error.
///
/// Bytes after the last field are accepted, as the crate's decoder
/// ignores them.
pub fn check_request(api_key: i16, api_version: i16, body: &[u8]) -> Result<(), BoundsError> {
    walk_request(api_key, api_version, body).map(|_| ())
}

/// Walks a request body as the crate's decoder would and returns how many
/// bytes that decoder reads (the rest are trailing bytes it ignores).
fn walk_request(api_key: i16, api_version: i16, body: &[u8]) -> Result<usize, BoundsError> {
    let api = find_api(api_key, api_version).ok_or(BoundsError::UnsupportedRequest {
        api_key,
        api_version,
    })?;
    let mut r = Reader { rest: body };
    walk_struct(&mut r, api.body, api_version).map_err(|e| e.within(api.body.name))?;
    Ok(body.len() - r.rest.len())
}

/// The schema of `api_key` if the crate can decode `api_version` of it.
fn find_api(api_key: i16, api_version: i16) -> Option<&'static Api> {
    schema::APIS
        .iter()
        .find(|a| a.key == api_key && (a.versions.0..=a.versions.1).contains(&api_version))
}

// The schema's vocabulary. `schema.rs` is a table of these.

/// One request: its API key, the versions the crate decodes, its body.
struct Api {
    key: i16,
    /// The API's name, so that the generated table reads as a listing.
    #[allow(dead_code)]
    name: &'static str,
    versions: (i16, i16),
    body: &'static StructSchema,
}

/// A struct on the wire: its fields in order, then, from its first
/// flexible version on, a tagged-field section.
struct StructSchema {
    name: &'static str,
    flexible: Option<i16>,
    fields: &'static [Field],
    /// The tagged fields the crate decodes itself; it skips other tags.
    tags: &'static [Tag],
}

/// A field, read in versions `versions.0..=versions.1`.
struct Field {
    name: &'static str,
    versions: (i16, i16),
    ty: Ty,
}

/// A tagged field the crate decodes (always in compact form). Outside
/// `versions` the crate refuses the tag.
struct Tag {
    tag: u32,
    name: &'static str,
    versions: (i16, i16),
    ty: Ty,
}

/// What a field reads: just the types the covered requests use (the
/// generator refuses others). Strings, bytes and arrays are compact (varint
/// length, plus one) in flexible versions, and otherwise have an `int16`
/// (strings) or `int32` (bytes, arrays) length; -1, or 0 when compact,
/// means null.
#[derive(Clone, Copy)]
enum Ty {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    Uuid,
    Str,
    NullableStr,
    Bytes,
    NullableBytes,
    Array(Elem),
    NullableArray(Elem),
    Struct(&'static StructSchema),
}

/// An array's element.
#[derive(Clone, Copy)]
enum Elem {
    Int32,
    Int64,
    Str,
    Struct(&'static StructSchema),
}

const fn f(name: &'static str, first: i16, last: i16, ty: Ty) -> Field {
    Field {
        name,
        versions: (first, last),
        ty,
    }
}

const fn tag(tag: u32, name: &'static str, first: i16, last: i16, ty: Ty) -> Tag {
    Tag {
        tag,
        name,
        versions: (first, last),
        ty,
    }
}

impl StructSchema {
    fn is_flexible(&self, version: i16) -> bool {
        self.flexible.is_some_and(|first| version >= first)
    }

    /// The fewest bytes this struct takes at `version`.
    fn min_size(&self, version: i16) -> usize {
        let compact = self.is_flexible(version);
        let fields: usize = self
            .fields
            .iter()
            .filter(|f| f.in_version(version))
            .map(|f| f.ty.min_size(version, compact))
            .sum();
        // An empty tagged-field section is one varint 0.
        fields + usize::from(compact)
    }
}

impl Field {
    fn in_version(&self, version: i16) -> bool {
        (self.versions.0..=self.versions.1).contains(&version)
    }
}

impl Ty {
    /// The fewest bytes a value of this type takes on the wire.
    fn min_size(self, version: i16, compact: bool) -> usize {
        match self {
            Ty::Bool | Ty::Int8 => 1,
            Ty::Int16 => 2,
            Ty::Int32 => 4,
            Ty::Int64 => 8,
            Ty::Uuid => 16,
            Ty::Str | Ty::NullableStr if compact => 1,
            Ty::Str | Ty::NullableStr => 2,
            Ty::Bytes | Ty::NullableBytes | Ty::Array(_) | Ty::NullableArray(_) if compact => 1,
            Ty::Bytes | Ty::NullableBytes | Ty::Array(_) | Ty::NullableArray(_) => 4,
            Ty::Struct(s) => s.min_size(version),
        }
    }
}

impl Elem {
    fn ty(self) -> Ty {
        match self {
            Elem::Int32 => Ty::Int32,
            Elem::Int64 => Ty::Int64,
            Elem::Str => Ty::Str,
            Elem::Struct(s) => Ty::Struct(s),
        }
    }
}

// The walk.

/// The bytes not read yet.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BoundsError> {
        if n > self.rest.len() {
            return Err(BoundsError::Truncated {
                path: String::new(),
                needed: n,
                remaining: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// Skips `len` bytes of a string, bytes or tagged field.
    fn skip_len(&mut self, len: u64) -> Result<(), BoundsError> {
        match usize::try_from(len) {
            Ok(n) if n <= self.rest.len() => {
                self.rest = &self.rest[n..];
                Ok(())
            }
            _ => Err(BoundsError::LengthExceedsInput {
                path: String::new(),
                length: len,
                remaining: self.rest.len(),
            }),
        }
    }

    fn i16(&mut self) -> Result<i16, BoundsError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, BoundsError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An unsigned varint, read as the crate reads it: at most five bytes,
    /// stopping at the first without the high bit; bits past 32 are lost.
    fn varint(&mut self) -> Result<u32, BoundsError> {
        let mut value = 0u32;
        for i in 0..5 {
            let b = u32::from(self.take(1)?[0]);
            value |= (b & 0x7f) << (i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }

    /// A length or count: `Some(n)`, or `None` for null. Compact lengths
    /// are a varint holding `n + 1`; the others an `int16` or `int32`
    /// holding `n`, or -1.
    fn length(&mut self, compact: bool, wide: bool) -> Result<Option<u64>, BoundsError> {
        if compact {
            return Ok(self.varint()?.checked_sub(1).map(u64::from));
        }
        let n = if wide {
            self.i32()?
        } else {
            i32::from(self.i16()?)
        };
        match n {
            -1 => Ok(None),
            n if n < 0 => Err(BoundsError::NegativeLength {
                path: String::new(),
                length: n,
            }),
            n => Ok(Some(n.unsigned_abs().into())),
        }
    }
}

fn walk_struct(r: &mut Reader<'_>, s: &StructSchema, version: i16) -> Result<(), BoundsError> {
    let compact = s.is_flexible(version);
    for field in s.fields.iter().filter(|f| f.in_version(version)) {
        walk_value(r, field.ty, version, compact).map_err(|e| e.within(field.name))?;
    }
    if compact {
        walk_tagged_fields(r, s, version)?;
    }
    Ok(())
}

fn walk_value(r: &mut Reader<'_>, ty: Ty, version: i16, compact: bool) -> Result<(), BoundsError> {
    let nullable = matches!(
        ty,
        Ty::NullableStr | Ty::NullableBytes | Ty::NullableArray(_)
    );
    let not_null = |len: Option<u64>| match len {
        None if !nullable => Err(BoundsError::UnexpectedNull {
            path: String::new(),
        }),
        len => Ok(len),
    };
    match ty {
        Ty::Bool | Ty::Int8 | Ty::Int16 | Ty::Int32 | Ty::Int64 | Ty::Uuid => {
            r.take(ty.min_size(version, compact)).map(|_| ())
        }
        Ty::Str | Ty::NullableStr => match not_null(r.length(compact, false)?)? {
            Some(len) => r.skip_len(len),
            None => Ok(()),
        },
        Ty::Bytes | Ty::NullableBytes => match not_null(r.length(compact, true)?)? {
            Some(len) => r.skip_len(len),
            None => Ok(()),
        },
        Ty::Array(elem) | Ty::NullableArray(elem) => match not_null(r.length(compact, true)?)? {
            Some(count) => walk_array(r, elem, count, version, compact),
            None => Ok(()),
        },
        Ty::Struct(s) => walk_struct(r, s, version),
    }
}

/// Checks an array's count before walking its elements: this is the check
/// the crate's `Vec::with_capacity(count)` lacks.
fn walk_array(
    r: &mut Reader<'_>,
    elem: Elem,
    count: u64,
    version: i16,
    compact: bool,
) -> Result<(), BoundsError> {
    if count > MAX_ARRAY_LEN as u64 {
        return Err(BoundsError::ArrayTooLong {
            path: String::new(),
            count,
            limit: MAX_ARRAY_LEN,
        });
    }
    let ty = elem.ty();
    let min = ty.min_size(version, compact);
    if count.saturating_mul(min as u64) > r.remaining() as u64 {
        return Err(BoundsError::ArrayExceedsInput {
            path: String::new(),
            count,
            min_element_bytes: min,
            remaining: r.remaining(),
        });
    }
    for i in 0..count {
        walk_value(r, ty, version, compact).map_err(|e| e.at_index(i))?;
    }
    Ok(())
}

/// A tagged-field section: a varint count, then per field a varint tag, a
/// varint size and the value. The crate decodes the tags it knows from the
/// stream (trusting, not checking, the size) and skips the others.
fn walk_tagged_fields(
    r: &mut Reader<'_>,
    s: &StructSchema,
    version: i16,
) -> Result<(), BoundsError> {
    const SECTION: &str = "tagged_fields";
    let count = r.varint().map_err(|e| e.within(SECTION))?;
    // Each field takes at least two bytes: its tag and its size.
    if u64::from(count) * 2 > r.remaining() as u64 {
        return Err(BoundsError::TooManyTaggedFields {
            path: SECTION.to_owned(),
            count,
            remaining: r.remaining(),
        });
    }
    for _ in 0..count {
        let tag = r.varint().map_err(|e| e.within(SECTION))?;
        let size = r.varint().map_err(|e| e.within(SECTION))?;
        match s.tags.iter().find(|t| t.tag == tag) {
            Some(known) => {
                if !(known.versions.0..=known.versions.1).contains(&version) {
                    return Err(BoundsError::TagNotInVersion {
                        path: known.name.to_owned(),
                        tag,
                        version,
                    });
                }
                let before = r.remaining();
                walk_value(r, known.ty, version, true).map_err(|e| e.within(known.name))?;
                let actual = before - r.remaining();
                if actual != size as usize {
                    return Err(BoundsError::TaggedFieldSize {
                        path: known.name.to_owned(),
                        tag,
                        declared: size,
                        actual,
                    });
                }
            }
            None => r
                .skip_len(size.into())
                .map_err(|e| e.within(&format!("{SECTION}[tag {tag}]")))?,
        }
    }
    Ok(())
}

impl BoundsError {
    fn path_mut(&mut self) -> Option<&mut String> {
        match self {
            BoundsError::UnsupportedRequest { .. } => None,
            BoundsError::ArrayTooLong { path, .. }
            | BoundsError::ArrayExceedsInput { path, .. }
            | BoundsError::LengthExceedsInput { path, .. }
            | BoundsError::NegativeLength { path, .. }
            | BoundsError::UnexpectedNull { path }
            | BoundsError::Truncated { path, .. }
            | BoundsError::TooManyTaggedFields { path, .. }
            | BoundsError::TagNotInVersion { path, .. }
            | BoundsError::TaggedFieldSize { path, .. } => Some(path),
        }
    }

    /// Prefixes the path with an enclosing field or struct name. Paths are
    /// built on the way out, so a body that passes costs no allocation.
    fn within(mut self, name: &str) -> Self {
        if let Some(path) = self.path_mut() {
            *path = match path.chars().next() {
                None => name.to_owned(),
                Some('[') => format!("{name}{path}"),
                Some(_) => format!("{name}.{path}"),
            };
        }
        self
    }

    /// Prefixes the path with an array index.
    fn at_index(mut self, i: u64) -> Self {
        if let Some(path) = self.path_mut() {
            *path = match path.chars().next() {
                None | Some('[') => format!("[{i}]{path}"),
                Some(_) => format!("[{i}].{path}"),
            };
        }
        self
    }
}
