//! Durable state in sled, behind a small generic interface so another embedded
//! engine (redb) could replace it. The store knows no domain type: each domain
//! owns its record type and says, through [`Record`], which tree it lives in
//! (named with a version, `bindings.v1`) and what its key is. Values are JSON
//! with their own fields, so adding a field never breaks a stored record.
//!
//! The hot path never touches sled: it hands each change to a [`Writer`], which in
//! the running PBX queues it for the writer task. The writer encodes and applies
//! what is queued as one sled batch per tree, then group-commits with
//! [`Store::flush`] before anything that depends on it is acknowledged.

use dashmap::DashMap;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;
use std::sync::Arc;

/// A storage failure (local, never caused by the network).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    #[error("stored record {key} is unreadable: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("encoding a record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the store writer has stopped")]
    WriterGone,
    #[error("the store could not make the change durable")]
    NotDurable,
}

/// A domain record the store can keep.
pub trait Record: Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static {
    /// The tree, with its version: `cdrs.v1`.
    const TREE: &'static str;
    /// The record's key in its tree; keys order a tree's iteration.
    fn key(&self) -> Vec<u8>;
}

/// A record to store, with its encoding deferred to the writer (off the hot path).
/// Implemented for every [`Record`].
pub trait Encode: Send + std::fmt::Debug {
    fn tree(&self) -> &'static str;
    fn key(&self) -> Vec<u8>;
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error>;
}

impl<R: Record> Encode for R {
    fn tree(&self) -> &'static str {
        R::TREE
    }
    fn key(&self) -> Vec<u8> {
        Record::key(self)
    }
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// One durable change.
#[derive(Debug)]
pub enum Write {
    Put(Box<dyn Encode>),
    Remove { tree: &'static str, key: Vec<u8> },
}

impl Write {
    pub fn put<R: Record>(record: R) -> Write {
        Write::Put(Box::new(record))
    }
    pub fn remove<R: Record>(record: &R) -> Write {
        Write::Remove {
            tree: R::TREE,
            key: record.key(),
        }
    }
}

/// What the writer task receives, in order: changes, and requests to make
/// everything before them durable and tell `shard` that its `seq` is safe.
#[derive(Debug)]
pub enum WriterMsg {
    Write(Write),
    /// Flush everything up to the shard's write `seq`, then tell it;
    /// `prompt`: an answer somebody waits on is held for it (see
    /// `shard::FlushAsk`), else the flush may gather more first.
    Flush {
        shard: usize,
        seq: u64,
        prompt: bool,
    },
    /// Apply these with the next group commit, flush, then answer whether
    /// they are durable (the desk's writes: nothing else flushes, because
    /// sled 0.34 can deadlock when a flush runs beside a batch apply).
    Commit {
        writes: Vec<Write>,
        done: tokio::sync::oneshot::Sender<bool>,
    },
    /// Apply what came before, then stop (shutdown).
    Stop,
}

/// Where changes go: straight into the store (tools, tests), or queued to the
/// writer task (the running PBX: sled stays off the hot path).
#[derive(Debug, Clone)]
pub enum Writer {
    Direct(Store),
    Queued(std::sync::mpsc::Sender<WriterMsg>),
}

impl Writer {
    pub fn write(&self, w: Write) -> Result<(), StoreError> {
        match self {
            Writer::Direct(store) => store.apply(vec![w]),
            Writer::Queued(tx) => tx
                .send(WriterMsg::Write(w))
                .map_err(|_| StoreError::WriterGone),
        }
    }

    /// Writes `writes` and returns once they are on disk (none: once what
    /// was committed before is).
    pub async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        match self {
            Writer::Direct(store) => {
                store.apply(writes)?;
                store.flush().await
            }
            Writer::Queued(tx) => {
                let (done, durable) = tokio::sync::oneshot::channel();
                tx.send(WriterMsg::Commit { writes, done })
                    .map_err(|_| StoreError::WriterGone)?;
                match durable.await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(StoreError::NotDurable),
                    Err(_) => Err(StoreError::WriterGone),
                }
            }
        }
    }
}

/// The database handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    /// Trees opened so far, by name.
    trees: Arc<DashMap<&'static str, sled::Tree>>,
}

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(Some(500))
            // A small page cache keeps the resident size modest; hot data lives in our maps.
            .cache_capacity(32 * 1024 * 1024)
            .open()?;
        Ok(Store {
            db,
            trees: Arc::new(DashMap::new()),
        })
    }

    /// Opens a database this process just closed: sled's IO threads may hold
    /// its file lock for a moment after the last handle is dropped (a restart
    /// is a new process and never waits here).
    #[cfg(test)]
    pub fn reopen(dir: &Path) -> Store {
        for _ in 0..200 {
            if let Ok(store) = Store::open(dir) {
                return store;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Store::open(dir).expect("reopen")
    }

    fn tree(&self, name: &'static str) -> Result<sled::Tree, StoreError> {
        if let Some(t) = self.trees.get(name) {
            return Ok(t.clone());
        }
        let t = self.db.open_tree(name)?;
        self.trees.insert(name, t.clone());
        Ok(t)
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Blocking flush (for start-up and shutdown paths).
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Applies changes in order as one sled batch per tree (in sled's memory;
    /// durable after the next flush). A record that cannot be encoded is skipped
    /// and reported; the rest are applied.
    pub fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut batches: Vec<(&'static str, sled::Batch)> = Vec::new();
        let mut failed = None;
        for w in writes {
            let tree = match &w {
                Write::Put(r) => r.tree(),
                Write::Remove { tree, .. } => tree,
            };
            let i = match batches.iter().position(|(t, _)| *t == tree) {
                Some(i) => i,
                None => {
                    batches.push((tree, sled::Batch::default()));
                    batches.len() - 1
                }
            };
            let batch = &mut batches[i].1;
            match w {
                Write::Put(r) => match r.encode() {
                    Ok(v) => batch.insert(r.key(), v),
                    Err(e) => failed = Some(StoreError::Encode(e)),
                },
                Write::Remove { key, .. } => batch.remove(key),
            }
        }
        for (tree, batch) in batches {
            self.tree(tree)?.apply_batch(batch)?;
        }
        failed.map_or(Ok(()), Err)
    }

    /// Stores one record at once (start-up paths and tools).
    pub fn put<R: Record>(&self, record: R) -> Result<(), StoreError> {
        self.apply(vec![Write::put(record)])
    }

    /// Every record of a kind, in key order.
    pub fn all<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        decode(self.tree(R::TREE)?.iter())
    }

    /// Hands every record of a kind to `f`, in key order, without collecting
    /// them (start-up scans, exports); `f` returns `false` to stop.
    pub fn each<R: Record>(&self, mut f: impl FnMut(R) -> bool) -> Result<(), StoreError> {
        for kv in self.tree(R::TREE)?.iter() {
            if !f(decode_one(kv?)?) {
                break;
            }
        }
        Ok(())
    }

    /// The record of a kind stored at `key`.
    pub fn get<R: Record>(&self, key: &[u8]) -> Result<Option<R>, StoreError> {
        match self.tree(R::TREE)?.get(key)? {
            Some(v) => decode_one((sled::IVec::from(key), v)).map(Some),
            None => Ok(None),
        }
    }

    /// The records of one owner (see [`owned_key`]), oldest first.
    pub fn owned_by<R: Record>(&self, owner: &str) -> Result<Vec<R>, StoreError> {
        self.with_prefix(&owner_prefix(owner))
    }

    /// The records whose key starts with `prefix`, in key order.
    pub fn with_prefix<R: Record>(&self, prefix: &[u8]) -> Result<Vec<R>, StoreError> {
        decode(self.tree(R::TREE)?.scan_prefix(prefix))
    }

    /// The last key of a kind's tree (seeds id counters at start).
    pub fn last_key<R: Record>(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(R::TREE)?.last()?.map(|(k, _)| k.to_vec()))
    }
}

fn decode<T: DeserializeOwned>(
    records: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> Result<Vec<T>, StoreError> {
    records.map(|kv| decode_one(kv?)).collect()
}

fn decode_one<T: DeserializeOwned>((k, v): (sled::IVec, sled::IVec)) -> Result<T, StoreError> {
    serde_json::from_slice(&v).map_err(|source| StoreError::Decode {
        key: String::from_utf8_lossy(&k).into_owned(),
        source,
    })
}

/// Unique, time-ordered ids without touching the disk: an id is the wall time
/// in milliseconds shifted by 12 bits, never below the shard's last id plus the
/// shard count, and congruent to the shard's index modulo the shard count, so
/// shards never collide and ids taken a millisecond apart on different shards
/// sort in time order (records are listed by id). The base, chosen at start,
/// is above every stored id.
#[derive(Debug, Clone)]
pub struct IdGen {
    next: u64,
    step: u64,
    shard: u64,
}

impl IdGen {
    /// The base for a start at `wall_ms` when `stored_max` is the highest id on
    /// disk: room for 4096 ids per millisecond of uptime before the next start
    /// could reuse one.
    pub fn base(wall_ms: u64, stored_max: Option<u64>) -> u64 {
        (wall_ms << 12).max(stored_max.map_or(0, |m| m + 1))
    }

    pub fn new(base: u64, shard: usize, shards: usize) -> IdGen {
        let step = shards.max(1) as u64;
        let shard = shard as u64 % step;
        IdGen {
            next: base - base % step + shard + if base % step > shard { step } else { 0 },
            step,
            shard,
        }
    }

    /// The next id at wall time `now`.
    pub fn next_id(&mut self, now: crate::clock::UnixMillis) -> u64 {
        let t = now.0 << 12;
        let at_time = t - t % self.step + self.shard;
        let id = self.next.max(at_time);
        self.next = id + self.step;
        id
    }
}

/// The key of record `id` of one owner (a caller, a customer, a mailbox):
/// one owner's records are adjacent, in id order (see [`Store::owned_by`]).
pub fn owned_key(owner: &str, id: u64) -> Vec<u8> {
    let mut k = owner_prefix(owner);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn owner_prefix(owner: &str) -> Vec<u8> {
    let mut k = owner.as_bytes().to_vec();
    k.push(0);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Note {
        id: u64,
        text: String,
    }

    impl Record for Note {
        const TREE: &'static str = "notes.v1";
        fn key(&self) -> Vec<u8> {
            self.id.to_be_bytes().to_vec()
        }
    }

    #[test]
    fn records_round_trip_in_key_order_and_removals_apply_in_one_batch() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        let n = |id, text: &str| Note {
            id,
            text: text.into(),
        };
        store
            .apply(vec![
                Write::put(n(2, "b")),
                Write::put(n(1, "a")),
                Write::put(n(3, "c")),
                Write::remove(&n(3, "")),
            ])
            .expect("apply");
        store.flush_now().expect("flush");
        drop(store);
        let store = Store::reopen(dir.path());
        assert_eq!(
            store.all::<Note>().expect("all"),
            vec![n(1, "a"), n(2, "b")]
        );
        assert_eq!(
            store.last_key::<Note>().expect("last"),
            Some(2u64.to_be_bytes().to_vec())
        );
    }

    #[test]
    fn shard_ids_never_collide_and_start_above_what_is_stored() {
        let base = IdGen::base(1_000, Some(9_000_000));
        assert_eq!(base, 9_000_001);
        let (mut a, mut b) = (IdGen::new(base, 0, 2), IdGen::new(base, 1, 2));
        let t = crate::clock::UnixMillis(1);
        let ids: Vec<u64> = (0..4).flat_map(|_| [a.next_id(t), b.next_id(t)]).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        assert!(ids.iter().all(|id| *id >= base));
        assert_eq!(IdGen::base(1_000, None), 1_000 << 12);
    }

    #[test]
    fn ids_taken_later_on_another_shard_sort_later() {
        use crate::clock::UnixMillis;
        let base = IdGen::base(1_000, None);
        let (mut a, mut b) = (IdGen::new(base, 0, 2), IdGen::new(base, 1, 2));
        // Shard a is busy: a thousand ids in the first millisecond.
        let busy: Vec<u64> = (0..1000).map(|_| a.next_id(UnixMillis(1_000))).collect();
        let later = b.next_id(UnixMillis(1_002));
        assert!(
            busy.iter().all(|id| *id < later),
            "a later record sorts after"
        );
        assert_eq!(later % 2, 1, "still shard b's");
        assert!(a.next_id(UnixMillis(1_003)) > later);
    }
}
