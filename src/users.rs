//! The user directory: every extension that may register or call, with its display
//! name and HA1 secrets. Built at start from the config and the users stored in the
//! data directory (demo users, `sipdesk user` commands); read by digest auth on
//! every request, so it is a shared map that is never held across an `.await`.

use crate::config::User;
use crate::sip::auth::Ha1;
use crate::store::{Record, Store, StoreError};
use dashmap::DashMap;
use rand::Rng;
use std::sync::Arc;

/// A user as stored in the database (never a plain password).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredUser {
    pub extension: String,
    pub name: Option<String>,
    pub ha1: Ha1,
}

impl Record for StoredUser {
    const TREE: &'static str = "users.v1";
    fn key(&self) -> Vec<u8> {
        self.extension.as_bytes().to_vec()
    }
}

/// Where a user came from, for the start-up banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoUser {
    pub extension: String,
    pub password: String,
}

/// The shared directory handle.
#[derive(Debug, Clone, Default)]
pub struct Users {
    map: Arc<DashMap<String, StoredUser>>,
}

impl Users {
    pub fn insert(&self, u: StoredUser) {
        self.map.insert(u.extension.clone(), u);
    }
    pub fn ha1(&self, extension: &str) -> Option<Ha1> {
        self.map.get(extension).map(|u| u.ha1.clone())
    }
    /// The display name, if the user has one.
    pub fn name(&self, extension: &str) -> Option<String> {
        self.map.get(extension).and_then(|u| u.name.clone())
    }
    pub fn contains(&self, extension: &str) -> bool {
        self.map.contains_key(extension)
    }
    /// Every extension, sorted.
    pub fn extensions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.iter().map(|e| e.key().clone()).collect();
        v.sort();
        v
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Loads stored users, then configured ones (the config wins). When neither
    /// exists, creates the demo extensions with random passwords, stores them and
    /// returns them so the caller can print them once.
    pub fn load(
        store: &Store,
        configured: &[User],
        demo: &[String],
        realm: &str,
    ) -> Result<(Users, Vec<DemoUser>), StoreError> {
        let users = Users::default();
        for u in store.all::<StoredUser>()? {
            users.insert(u);
        }
        for u in configured {
            users.insert(StoredUser {
                extension: u.extension.clone(),
                name: u.name.clone(),
                ha1: u.ha1.clone(),
            });
        }
        let mut created = Vec::new();
        if users.is_empty() {
            for ext in demo {
                let password = random_password();
                let u = StoredUser {
                    extension: ext.clone(),
                    name: Some(format!("Demo {ext}")),
                    ha1: Ha1::from_password(ext, realm, &password),
                };
                store.put(u.clone())?;
                users.insert(u);
                created.push(DemoUser {
                    extension: ext.clone(),
                    password,
                });
            }
            store.flush_now()?;
        }
        Ok((users, created))
    }
}

/// 16 characters from an unambiguous alphabet (~93 bits).
fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_users_get_random_passwords_once_and_are_reloaded() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(dir.path()).expect("open");
        let demo = vec!["201".to_string(), "202".to_string()];
        let (users, created) = Users::load(&store, &[], &demo, "r").expect("load");
        assert_eq!(created.len(), 2);
        assert_ne!(created[0].password, created[1].password);
        assert!(created[0].password.len() >= 16);
        let (again, created2) = Users::load(&store, &[], &demo, "r").expect("reload");
        assert!(created2.is_empty(), "printed only once");
        assert_eq!(again.ha1("201"), users.ha1("201"));
        assert_eq!(
            again.ha1("201"),
            Some(Ha1::from_password("201", "r", &created[0].password))
        );
    }
}
