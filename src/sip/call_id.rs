//! The Call-ID of a dialog as a key: the exact bytes of the header (RFC 3261
//! §20.8 compares Call-IDs byte for byte), never a lossy text conversion, so two
//! different Call-IDs can never share call state.

use bytes::Bytes;
use std::fmt;

/// A Call-ID, compared and hashed by its bytes. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(Bytes);

impl CallId {
    /// The Call-ID of a received message (copied out of its buffer, so a stored
    /// key does not pin the whole datagram).
    pub fn from_bytes(b: &[u8]) -> CallId {
        CallId(Bytes::copy_from_slice(b))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Which of `shards` owns this Call-ID (FNV-1a of its bytes).
    pub fn shard(&self, shards: usize) -> usize {
        shard_of(&self.0, shards)
    }
}

/// The shard of a Call-ID's bytes (also used for keys that are not Call-IDs,
/// such as an unreadable datagram's source address).
pub fn shard_of(bytes: &[u8], shards: usize) -> usize {
    (fnv1a(bytes) % shards.max(1) as u64) as usize
}

/// Call-IDs whose messages go to another shard than their hash says: the
/// legs a transfer handed from one shard's call to another's. Empty almost
/// always, and then costs one atomic load per message.
#[derive(Debug, Default)]
pub struct Moved {
    shards: dashmap::DashMap<CallId, usize>,
    count: std::sync::atomic::AtomicUsize,
}

impl Moved {
    /// The shard that owns `call_id`'s messages.
    pub fn shard(&self, call_id: &[u8], shards: usize) -> usize {
        use std::sync::atomic::Ordering;
        if self.count.load(Ordering::Relaxed) > 0 {
            if let Some(s) = self.shards.get(&CallId::from_bytes(call_id)) {
                return *s;
            }
        }
        shard_of(call_id, shards)
    }

    /// From now on `call_id`'s messages go to `shard`.
    pub fn insert(&self, call_id: CallId, shard: usize) {
        if self.shards.insert(call_id, shard).is_none() {
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// `call_id` ended: its hash decides again.
    pub fn remove(&self, call_id: &CallId) {
        if self.shards.remove(call_id).is_some() {
            self.count
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    fnv1a_parts([b])
}

/// FNV-1a over several byte strings in turn: a fast, stable, not secret tag
/// (shards, stateless To tags, the digest replay check's request key).
pub(crate) fn fnv1a_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    parts
        .into_iter()
        .flatten()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
            (h ^ u64::from(*c)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

impl From<String> for CallId {
    fn from(s: String) -> CallId {
        CallId(Bytes::from(s))
    }
}

impl From<&str> for CallId {
    fn from(s: &str) -> CallId {
        CallId(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl AsRef<[u8]> for CallId {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Shown as text; a Call-ID that is not UTF-8 is shown escaped (logs, dialog-info).
impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) => f.write_str(s),
            Err(_) => fmt::Display::fmt(&self.0.escape_ascii(), f),
        }
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_that_differ_only_in_non_utf8_bytes_are_different_keys() {
        let a = CallId::from_bytes(b"abc\xff@h");
        let b = CallId::from_bytes(b"abc\xfe@h");
        assert_ne!(a, b);
        assert_eq!(
            String::from_utf8_lossy(a.as_bytes()),
            String::from_utf8_lossy(b.as_bytes()),
            "what a lossy conversion would have merged"
        );
        let set: std::collections::HashSet<CallId> = [a, b].into_iter().collect();
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn the_shard_is_stable_and_in_range() {
        let c = CallId::from("x@y");
        assert_eq!(c.shard(4), c.shard(4));
        assert!(c.shard(3) < 3);
        assert_eq!(c.shard(0), 0);
    }
}
