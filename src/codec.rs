//! Codecs turn record keys, record values and state entries into bytes and back.
//!
//! A codec is a value implementing [`Codec`]; the crate ships [`Json`], [`Bincode`],
//! [`RawBytes`] and [`Utf8`]. Decoding runs in the partition worker, never in the poll loop.
//!
//! The codec's [`name`](Codec::name) is recorded in each store's metadata, so opening a
//! store written with another format is a clear [`StateError::FormatMismatch`](crate::StateError)
//! instead of garbage.

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A codec failed to encode or decode.
#[derive(Debug, thiserror::Error)]
#[error("{codec} codec: {message}")]
pub struct CodecError {
    codec: String,
    message: String,
}

impl CodecError {
    /// An error raised by the codec called `codec`; use this in your own codecs.
    pub fn new(codec: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            codec: codec.into(),
            message: message.to_string(),
        }
    }
}

/// Encodes and decodes one type. Implement it for your own formats.
///
/// Implementations must be deterministic: equal items must encode to equal bytes, since state
/// keys are compared as bytes (in RocksDB and in the changelog's compaction).
pub trait Codec: Send + Sync + 'static {
    /// The decoded type.
    type Item: Send + 'static;

    /// A short, stable name of the wire format, recorded in store metadata
    /// (`"json"`, `"bincode2"`, …). Change it when the format changes incompatibly.
    fn name(&self) -> &str;

    /// Encodes `item`.
    ///
    /// # Errors
    /// When the item cannot be represented in this format.
    fn encode(&self, item: &Self::Item) -> Result<Vec<u8>, CodecError>;

    /// Appends the encoding of `item` to `out`. Stores build keys as a prefix plus an
    /// encoded key; overriding this saves the intermediate vector.
    ///
    /// # Errors
    /// As [`encode`](Self::encode); `out` may then hold a partial encoding.
    fn encode_into(&self, item: &Self::Item, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(&self.encode(item)?);
        Ok(())
    }

    /// Decodes `bytes`.
    ///
    /// # Errors
    /// When `bytes` are not a valid encoding of `Self::Item`.
    fn decode(&self, bytes: &[u8]) -> Result<Self::Item, CodecError>;
}

/// JSON through `serde_json`.
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T> Json<T> {
    /// A JSON codec for `T`.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for Json<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Json<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json<{}>", std::any::type_name::<T>())
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Codec for Json<T> {
    type Item = T;

    fn name(&self) -> &str {
        "json"
    }

    fn encode(&self, item: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(item).map_err(|e| CodecError::new("json", e))
    }

    fn encode_into(&self, item: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        serde_json::to_writer(out, item).map_err(|e| CodecError::new("json", e))
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::new("json", e))
    }
}

/// bincode 2 (standard configuration, varint integers) through serde.
///
/// bincode is unmaintained (its 3.0 release is a deliberate compile error); it is kept behind
/// this codec so that moving to another serde format touches no store code. Integers are
/// varint-encoded, so bincode keys do not sort numerically in range scans.
pub struct Bincode<T>(PhantomData<fn() -> T>);

impl<T> Bincode<T> {
    /// A bincode codec for `T`.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for Bincode<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Bincode<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Bincode<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bincode<{}>", std::any::type_name::<T>())
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Codec for Bincode<T> {
    type Item = T;

    fn name(&self) -> &str {
        "bincode2"
    }

    fn encode(&self, item: &T) -> Result<Vec<u8>, CodecError> {
        bincode::serde::encode_to_vec(item, bincode::config::standard())
            .map_err(|e| CodecError::new("bincode2", e))
    }

    fn encode_into(&self, item: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        bincode::serde::encode_into_std_write(item, out, bincode::config::standard())
            .map(drop)
            .map_err(|e| CodecError::new("bincode2", e))
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (item, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| CodecError::new("bincode2", e))?;
        if read != bytes.len() {
            return Err(CodecError::new(
                "bincode2",
                format!("{} trailing bytes", bytes.len() - read),
            ));
        }
        Ok(item)
    }
}

/// Bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytes;

impl Codec for RawBytes {
    type Item = Vec<u8>;

    fn name(&self) -> &str {
        "bytes"
    }

    fn encode(&self, item: &Vec<u8>) -> Result<Vec<u8>, CodecError> {
        Ok(item.clone())
    }

    fn encode_into(&self, item: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(item);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

/// UTF-8 text; invalid UTF-8 is a decode error, not a lossy conversion.
#[derive(Debug, Clone, Copy, Default)]
pub struct Utf8;

impl Codec for Utf8 {
    type Item = String;

    fn name(&self) -> &str {
        "utf8"
    }

    fn encode(&self, item: &String) -> Result<Vec<u8>, CodecError> {
        Ok(item.as_bytes().to_vec())
    }

    fn encode_into(&self, item: &String, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(item.as_bytes());
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, CodecError> {
        String::from_utf8(bytes.to_vec()).map_err(|e| CodecError::new("utf8", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Visit {
        user: String,
        pages: u32,
    }

    #[test]
    fn json_and_bincode_round_trip() {
        let v = Visit {
            user: "ada".into(),
            pages: 3,
        };
        let json = Json::<Visit>::new();
        assert_eq!(json.decode(&json.encode(&v).unwrap()).unwrap(), v);
        let bin = Bincode::<Visit>::new();
        assert_eq!(bin.decode(&bin.encode(&v).unwrap()).unwrap(), v);
    }

    #[test]
    fn encode_into_appends_exactly_what_encode_returns() {
        let v = Visit {
            user: "ada".into(),
            pages: 300,
        };
        fn check<C: Codec>(codec: &C, item: &C::Item) {
            let mut out = b"prefix".to_vec();
            codec.encode_into(item, &mut out).unwrap();
            assert_eq!(&out[..6], b"prefix");
            assert_eq!(
                out[6..],
                codec.encode(item).unwrap()[..],
                "{}",
                codec.name()
            );
        }
        check(&Json::<Visit>::new(), &v);
        check(&Bincode::<Visit>::new(), &v);
        check(&Utf8, &"ada".to_string());
        check(&RawBytes, &vec![1, 2, 3]);
    }

    #[test]
    fn malformed_input_is_an_error_naming_the_codec() {
        let err = Json::<Visit>::new().decode(b"{not json").unwrap_err();
        assert!(err.to_string().starts_with("json codec:"), "{err}");
        let err = Utf8.decode(&[0xff, 0xfe]).unwrap_err();
        assert!(err.to_string().starts_with("utf8 codec:"), "{err}");
        let mut bytes = Bincode::<u64>::new().encode(&7).unwrap();
        bytes.push(0);
        assert!(
            Bincode::<u64>::new().decode(&bytes).is_err(),
            "trailing bytes are rejected"
        );
    }
}
