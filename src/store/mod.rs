//! Durable state in sled, behind typed handles so another embedded engine could
//! replace it. Trees are named with a version (`bindings.v1`); values are JSON with
//! their own fields, so adding a field never breaks a stored record.
//!
//! The hot path never touches sled: it hands each change to a [`Writer`], which in
//! the running PBX queues it for the writer task (applied on a blocking thread, then
//! group-committed with [`Store::flush`] before anything is acknowledged).

use crate::b2bua::cdr::Cdr;
use crate::history::{CallerAgents, ResponseRecord};
use crate::registrar::Binding;
use crate::users::StoredUser;
use std::path::Path;

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
}

/// One durable change.
#[derive(Debug, Clone)]
pub enum Write {
    PutBinding(Binding),
    RemoveBinding(Binding),
    PutCdr(Cdr),
    /// The caller index entry of one caller.
    PutCallerAgents(CallerAgents),
    PutResponse(ResponseRecord),
}

/// What the writer task receives, in order: changes, and requests to make
/// everything before them durable and tell `shard` that its `seq` is safe.
#[derive(Debug)]
pub enum WriterMsg {
    Write(Write),
    Flush { shard: usize, seq: u64 },
}

/// Where changes go: straight into the store (tools, tests), or queued to the
/// writer task (the running PBX: sled stays off the hot path).
#[derive(Debug, Clone)]
pub enum Writer {
    Direct(Store),
    Queued(tokio::sync::mpsc::UnboundedSender<WriterMsg>),
}

impl Writer {
    pub fn write(&self, w: Write) -> Result<(), StoreError> {
        match self {
            Writer::Direct(store) => store.apply(&w),
            Writer::Queued(tx) => tx
                .send(WriterMsg::Write(w))
                .map_err(|_| StoreError::WriterGone),
        }
    }
}

/// The database handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    bindings: sled::Tree,
    users: sled::Tree,
    cdrs: sled::Tree,
    callers: sled::Tree,
    responses: sled::Tree,
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
            bindings: db.open_tree("bindings.v1")?,
            users: db.open_tree("users.v1")?,
            cdrs: db.open_tree("cdrs.v1")?,
            callers: db.open_tree("callers.v1")?,
            responses: db.open_tree("responses.v1")?,
            db,
        })
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

    /// Applies one change (sled's memory; durable after the next flush).
    pub fn apply(&self, w: &Write) -> Result<(), StoreError> {
        match w {
            Write::PutBinding(b) => self.put_binding(b),
            Write::RemoveBinding(b) => self.remove_binding(b),
            Write::PutCdr(c) => self.put_cdr(c),
            Write::PutCallerAgents(c) => {
                self.callers
                    .insert(c.caller.as_bytes(), serde_json::to_vec(c)?)?;
                Ok(())
            }
            Write::PutResponse(r) => {
                self.responses
                    .insert(Self::response_key(&r.caller, r.id), serde_json::to_vec(r)?)?;
                Ok(())
            }
        }
    }

    fn binding_key(b: &Binding) -> Vec<u8> {
        let mut k = b.aor.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(b.contact.as_bytes());
        k
    }

    pub fn put_binding(&self, b: &Binding) -> Result<(), StoreError> {
        self.bindings
            .insert(Self::binding_key(b), serde_json::to_vec(b)?)?;
        Ok(())
    }

    pub fn remove_binding(&self, b: &Binding) -> Result<(), StoreError> {
        self.bindings.remove(Self::binding_key(b))?;
        Ok(())
    }

    pub fn bindings(&self) -> Result<Vec<Binding>, StoreError> {
        decode_all(&self.bindings)
    }

    /// A new CDR id: time-ordered and unique within this database.
    pub fn next_cdr_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    pub fn put_cdr(&self, cdr: &Cdr) -> Result<(), StoreError> {
        self.cdrs
            .insert(cdr.id.to_be_bytes(), serde_json::to_vec(cdr)?)?;
        Ok(())
    }

    /// Every CDR in id order.
    pub fn cdrs(&self) -> Result<Vec<Cdr>, StoreError> {
        decode_all(&self.cdrs)
    }

    /// Response records are keyed by caller, then id: one caller's are adjacent.
    fn response_key(caller: &str, id: u64) -> Vec<u8> {
        let mut k = caller.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(&id.to_be_bytes());
        k
    }

    /// The whole caller index.
    pub fn caller_index(&self) -> Result<Vec<CallerAgents>, StoreError> {
        decode_all(&self.callers)
    }

    /// One caller's response records, oldest first.
    pub fn responses(&self, caller: &str) -> Result<Vec<ResponseRecord>, StoreError> {
        let mut prefix = caller.as_bytes().to_vec();
        prefix.push(0);
        decode(self.responses.scan_prefix(prefix))
    }

    /// Every response record, by caller then time.
    pub fn all_responses(&self) -> Result<Vec<ResponseRecord>, StoreError> {
        decode_all(&self.responses)
    }

    /// A new id for a response record (time-ordered, unique in this database).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    pub fn put_user(&self, u: &StoredUser) -> Result<(), StoreError> {
        self.users
            .insert(u.extension.as_bytes(), serde_json::to_vec(u)?)?;
        Ok(())
    }

    pub fn users(&self) -> Result<Vec<StoredUser>, StoreError> {
        decode_all(&self.users)
    }
}

fn decode_all<T: serde::de::DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
    decode(tree.iter())
}

fn decode<T: serde::de::DeserializeOwned>(
    records: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> Result<Vec<T>, StoreError> {
    records
        .map(|kv| {
            let (k, v) = kv?;
            serde_json::from_slice(&v).map_err(|source| StoreError::Decode {
                key: String::from_utf8_lossy(&k).into_owned(),
                source,
            })
        })
        .collect()
}
