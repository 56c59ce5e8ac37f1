//! Value encoding: MessagePack (rmp-serde) for every value that crosses a task, actor or process
//! boundary, plus the bookkeeping that finds the `ObjectRef`s nested inside a value while it is
//! encoded, so that they become dependencies and stay alive as long as the value does; and
//! [`Buffer`], the byte buffer that is decoded without a copy.

use std::cell::RefCell;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::RawRef;
use crate::error::Error;
use crate::ids::ObjectId;

thread_local! {
    static NESTED: RefCell<Option<Vec<RawRef>>> = const { RefCell::new(None) };
    /// The bytes a [`decode_shared`] on this thread reads: a [`Buffer`] inside them is a
    /// slice of them.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// An encoded value and the object ids found inside it.
///
/// It holds a handle to every nested reference (`pins`), so the referenced objects stay alive
/// while the encoded value is on its way, even after the value it came from is dropped; whoever
/// stores it (the object table, a task's pins) takes references of its own first.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    /// The MessagePack bytes.
    pub data: Bytes,
    /// Ids of the `ObjectRef`s nested in the value, in encounter order.
    pub nested: Vec<ObjectId>,
    /// Handles keeping the nested objects alive until the value is stored.
    pub pins: Vec<RawRef>,
}

/// Encodes `value`, collecting the ids of `ObjectRef`s nested in it.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded, Error> {
    let outer = NESTED.with(|n| n.borrow_mut().replace(Vec::new()));
    // A worker process or driver writes large values into shared memory as it encodes them,
    // to hand them to its node without another copy.
    let res: Result<Bytes, String> = if crate::worker::shm::encoding_here() {
        let mut w = crate::worker::shm::Writer::new();
        rmp_serde::encode::write(&mut w, value)
            .map_err(|e| e.to_string())
            .and_then(|()| w.finish().map_err(|e| e.to_string()))
    } else {
        let mut w = crate::store::buffers::PooledWriter::default();
        rmp_serde::encode::write(&mut w, value)
            .map(|()| Bytes::from(w.into_vec()))
            .map_err(|e| e.to_string())
    };
    let pins = NESTED.with(|n| {
        let mut slot = n.borrow_mut();
        let found = slot.take().unwrap_or_default();
        *slot = outer;
        found
    });
    let data = res.map_err(Error::Serialization)?;
    Ok(Encoded {
        data,
        nested: pins.iter().map(RawRef::id).collect(),
        pins,
    })
}

/// Decodes a value encoded by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Serialization(e.to_string()))
}

/// Decodes a value encoded by [`encode`] from shared bytes: the [`Buffer`]s in it are slices
/// of `bytes`, not copies (they keep `bytes` alive).
pub fn decode_shared<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Error> {
    let outer = SOURCE.with(|s| s.borrow_mut().replace(bytes.clone()));
    let r = decode(bytes);
    SOURCE.with(|s| *s.borrow_mut() = outer);
    r
}

/// A byte buffer that `get` and task arguments hand over without copying it: decoded from an
/// object in this process's store (for a large value in a worker process or a driver: the
/// shared-memory mapping it arrived in), it is a slice of that object and keeps it alive, as a
/// numpy array that Ray reads from its object store is. Elsewhere (inside another buffer's
/// copy, or decoded by plain [`decode`]) it is copied. Encoded as MessagePack `bin`, like
/// `serde_bytes::ByteBuf`, so the two read each other's values.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Buffer(Bytes);

impl Buffer {
    /// The bytes, shared.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} bytes)", self.0.len())
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Buffer {
    fn from(v: Vec<u8>) -> Self {
        Buffer(Bytes::from(v))
    }
}

impl From<Bytes> for Buffer {
    fn from(b: Bytes) -> Self {
        Buffer(b)
    }
}

impl Serialize for Buffer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

struct BufferVisitor;

impl<'de> serde::de::Visitor<'de> for BufferVisitor {
    type Value = Buffer;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Buffer, E> {
        let shared = SOURCE.with(|s| {
            let s = s.borrow();
            let src = s.as_ref()?;
            let (lo, hi) = (src.as_ptr() as usize, src.as_ptr() as usize + src.len());
            let p = v.as_ptr() as usize;
            (p >= lo && p + v.len() <= hi).then(|| src.slice_ref(v))
        });
        Ok(Buffer(shared.unwrap_or_else(|| Bytes::copy_from_slice(v))))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Buffer, E> {
        Ok(Buffer(Bytes::copy_from_slice(v)))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Buffer, E> {
        Ok(Buffer::from(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Buffer, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Buffer::from(v))
    }
}

impl<'de> serde::Deserialize<'de> for Buffer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Buffer, D::Error> {
        d.deserialize_bytes(BufferVisitor)
    }
}

/// Called by `ObjectRef`'s `Serialize` impl: records a nested reference if an [`encode`] is
/// running on this thread.
pub(crate) fn note_nested(r: &RawRef) {
    NESTED.with(|n| {
        if let Some(v) = n.borrow_mut().as_mut() {
            v.push(r.clone());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_no_nested_for_plain_values() {
        let e = encode(&(1u32, "x".to_string(), vec![1.5f64])).expect("encode");
        assert!(e.nested.is_empty());
        let back: (u32, String, Vec<f64>) = decode(&e.data).expect("decode");
        assert_eq!(back, (1, "x".to_string(), vec![1.5]));
    }

    #[test]
    fn a_buffer_decoded_from_shared_bytes_is_a_slice_of_them() {
        let big = Buffer::from(vec![7u8; 1 << 16]);
        let e = encode(&(3u8, big.clone())).expect("encode");
        let (n, back): (u8, Buffer) = decode_shared(&e.data).expect("decode");
        assert_eq!((n, &back), (3, &big));
        let at = back.as_ptr() as usize - e.data.as_ptr() as usize;
        assert!(at < e.data.len(), "the buffer was copied");
        // Plain decode copies; a ByteBuf reads the same encoding.
        let (_, copied): (u8, Buffer) = decode(&e.data).expect("decode");
        assert_ne!(copied.as_ptr(), back.as_ptr());
        let (_, bb): (u8, serde_bytes::ByteBuf) = decode(&e.data).expect("decode");
        assert_eq!(&bb[..], &big[..]);
        // From a sequence of numbers too (another encoder's Vec<u8>).
        let seq = encode(&vec![1u8, 2, 3]).expect("encode");
        let b: Buffer = decode_shared(&seq.data).expect("decode");
        assert_eq!(&b[..], &[1, 2, 3]);
    }

    #[test]
    fn decode_garbage_is_an_error() {
        let r: Result<(u32, String), _> = decode(&[0xc1, 0xff, 0x00]);
        assert!(matches!(r, Err(Error::Serialization(_))));
    }
}
