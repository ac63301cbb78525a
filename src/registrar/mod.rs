//! The registrar (RFC 3261 §10.3): applies an authenticated REGISTER to the bindings
//! of its address-of-record. Bindings live in a shared in-memory map for the routing
//! hot path and are written to the store with their absolute expiry; at start they
//! are reloaded and the expired ones dropped.
//!
//! Time is an input ([`UnixMillis`]): the registrar never reads a clock. The
//! shard hands it every REGISTER ([`Registrar::on_register`]): digest
//! authentication, then the rules below, then the answer (held until the store
//! has flushed when bindings changed).

use crate::clock::UnixMillis;
use crate::sip::auth::{DigestAuthority, Verdict};
use crate::sip::message::{headers::parse_u32, Builder, HeaderName, Message, NameAddr, Uri};
use crate::sip::{ConnId, Remote, StatusCode, Transport};
use crate::store::{Record, Store, StoreError, Write, Writer};
use crate::users::Users;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

/// One contact bound to an address-of-record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The extension (user part of the AOR).
    pub aor: String,
    /// The contact URI exactly as the phone sent it.
    pub contact: String,
    /// Preference ×1000 (`q=0.5` → 500); `None` when the phone gave none.
    pub q: Option<u16>,
    /// Absolute expiry, so a restart knows what is still valid.
    pub expires_at_ms: u64,
    /// Call-ID and CSeq of the REGISTER that wrote it (ordering, RFC 3261 §10.3 step 7).
    pub call_id: String,
    pub cseq: u32,
    /// Where the REGISTER came from: requests go there for phones behind NAT.
    pub source: SocketAddr,
    pub transport: Transport,
    /// The TCP connection it arrived on (not persisted: connections die with us).
    #[serde(skip)]
    pub conn: Option<ConnId>,
    pub user_agent: Option<String>,
}

impl Record for Binding {
    const TREE: &'static str = "bindings.v1";
    fn key(&self) -> Vec<u8> {
        let mut k = self.aor.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(self.contact.as_bytes());
        k
    }
}

impl Binding {
    /// Where requests to this contact go: its source address and connection
    /// (a UDP binding goes out of any socket).
    pub fn remote(&self) -> Remote {
        Remote {
            transport: self.transport,
            addr: self.source,
            conn: match self.transport {
                Transport::Udp => None,
                Transport::Tcp => self.conn,
            },
        }
    }

    pub fn remaining_secs(&self, now: UnixMillis) -> u64 {
        self.expires_at_ms.saturating_sub(now.0).div_ceil(1000)
    }
}

/// Registration policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub max_contacts: usize,
}

/// The outcome of a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200 OK listing every current binding; `changed` when the store was written
    /// (the answer must then wait for a flush).
    Ok {
        bindings: Vec<Binding>,
        changed: bool,
    },
    /// Credentials that repeat the nonce count of an earlier copy of this
    /// request, but no binding shows that copy was applied: not a retransmission
    /// but a replay (answered with a fresh challenge).
    Replayed,
    /// A final error response.
    Reject {
        code: u16,
        reason: &'static str,
        /// For 423 Interval Too Brief.
        min_expires: Option<u32>,
    },
}

fn reject(code: u16, reason: &'static str) -> Outcome {
    Outcome::Reject {
        code,
        reason,
        min_expires: None,
    }
}

/// The bindings of every AOR. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Registrar {
    map: Arc<DashMap<String, Vec<Binding>>>,
    /// Where binding changes go (queued off the hot path in the running PBX).
    writer: Writer,
    policy: Policy,
}

impl Registrar {
    /// Reloads persisted bindings, dropping (and deleting) expired ones.
    pub fn load(
        store: &Store,
        writer: Writer,
        policy: Policy,
        now: UnixMillis,
    ) -> Result<Registrar, StoreError> {
        let map: DashMap<String, Vec<Binding>> = DashMap::new();
        let mut expired = Vec::new();
        for b in store.all::<Binding>()? {
            if b.expires_at_ms <= now.0 {
                expired.push(Write::remove(&b));
            } else {
                map.entry(b.aor.clone()).or_default().push(b);
            }
        }
        store.apply(expired)?;
        Ok(Registrar {
            map: Arc::new(map),
            writer,
            policy,
        })
    }

    /// A registrar writing straight into `store` (tools and tests).
    pub fn direct(store: Store, policy: Policy, now: UnixMillis) -> Result<Registrar, StoreError> {
        Registrar::load(&store, Writer::Direct(store.clone()), policy, now)
    }

    /// Live bindings of an AOR, best `q` first.
    pub fn lookup(&self, aor: &str, now: UnixMillis) -> Vec<Binding> {
        let mut v: Vec<Binding> = self
            .map
            .get(aor)
            .map(|e| {
                e.iter()
                    .filter(|b| b.expires_at_ms > now.0)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|b| std::cmp::Reverse(b.q.unwrap_or(1000)));
        v
    }

    /// Number of live bindings over all AORs (for tests and metrics).
    pub fn count(&self, now: UnixMillis) -> usize {
        self.map
            .iter()
            .map(|e| e.iter().filter(|b| b.expires_at_ms > now.0).count())
            .sum()
    }

    /// Removes expired bindings from memory and the store; returns how many.
    pub fn purge_expired(&self, now: UnixMillis) -> Result<usize, StoreError> {
        let mut removed = Vec::new();
        self.map.retain(|_, list| {
            list.retain(|b| {
                let live = b.expires_at_ms > now.0;
                if !live {
                    removed.push(b.clone());
                }
                live
            });
            !list.is_empty()
        });
        for b in &removed {
            self.writer.write(Write::remove(b))?;
        }
        Ok(removed.len())
    }

    /// Applies a REGISTER from `user` (already authenticated) arriving from `source`.
    ///
    /// The registrar is a stateless UAS (RFC 3261 §8.2.7): a retransmitted
    /// REGISTER (the Call-ID and CSeq that wrote a binding) is answered again
    /// with the current bindings and changes nothing. `repeated` says its
    /// credentials repeated a nonce count: only such a retransmission may use them.
    pub fn register(
        &self,
        now: UnixMillis,
        req: &Message,
        source: Remote,
        user: &str,
        repeated: bool,
    ) -> Result<Outcome, StoreError> {
        let Some(to) = req.to_header() else {
            return Ok(reject(400, "Bad To Header"));
        };
        let aor = match Uri::parse(to.uri).and_then(|u| u.user) {
            Some(u) => String::from_utf8_lossy(u).into_owned(),
            None => return Ok(reject(404, "Not Found")),
        };
        if aor != user {
            return Ok(reject(
                403,
                "Forbidden (To does not match the authenticated user)",
            ));
        }
        let (Some(call_id), Some(cseq)) = (req.call_id(), req.cseq()) else {
            return Ok(reject(400, "Missing Call-ID or CSeq"));
        };
        let call_id = String::from_utf8_lossy(call_id).into_owned();
        let header_expires = match req.expires() {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(())) => return Ok(reject(400, "Bad Expires Header")),
        };
        let contacts = req.contacts();
        if repeated && !self.wrote(&aor, &call_id, cseq.seq, now) {
            return Ok(Outcome::Replayed);
        }
        if contacts.is_empty() {
            return Ok(Outcome::Ok {
                bindings: self.lookup(&aor, now),
                changed: false,
            });
        }
        if contacts.is_star() {
            // `Contact: *` needs Expires: 0 and must stand alone (§10.3 step 6).
            if header_expires != Some(0) || req.count(HeaderName::Contact) != 1 {
                return Ok(reject(
                    400,
                    "Contact * Requires Expires 0 And No Other Contact",
                ));
            }
            let removed = self.map.remove(&aor).map(|(_, v)| v).unwrap_or_default();
            for b in &removed {
                self.writer.write(Write::remove(b))?;
            }
            return Ok(Outcome::Ok {
                bindings: Vec::new(),
                changed: !removed.is_empty(),
            });
        }

        // Validate every contact before changing anything.
        let mut updates = Vec::new();
        for entry in contacts.entries() {
            let Some(na): Option<NameAddr<'_>> = entry else {
                return Ok(reject(400, "Bad Contact Header"));
            };
            if Uri::parse(na.uri).is_none() {
                return Ok(reject(400, "Bad Contact URI"));
            }
            let expires = match na.params.get(b"expires") {
                None => header_expires.unwrap_or(self.policy.default_expires),
                Some(v) => match v.and_then(parse_u32) {
                    Some(e) => e,
                    None => return Ok(reject(400, "Bad Contact Expires Parameter")),
                },
            };
            if expires != 0 && expires < self.policy.min_expires {
                return Ok(Outcome::Reject {
                    code: 423,
                    reason: "Interval Too Brief",
                    min_expires: Some(self.policy.min_expires),
                });
            }
            let q = match na.params.value(b"q") {
                None => None,
                Some(v) => match parse_q(v) {
                    Some(q) => Some(q),
                    None => return Ok(reject(400, "Bad Contact q Parameter")),
                },
            };
            let expires = expires.min(self.policy.max_expires);
            updates.push((String::from_utf8_lossy(na.uri).into_owned(), expires, q));
        }

        let user_agent = req
            .value(HeaderName::UserAgent)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let mut list = self.map.entry(aor.clone()).or_default();
        list.retain(|b| b.expires_at_ms > now.0);
        let mut retransmission = false;
        for (contact, _, _) in &updates {
            if let Some(old) = list.iter().find(|b| contact_eq(&b.contact, contact)) {
                if old.call_id == call_id && old.cseq > cseq.seq {
                    return Ok(reject(500, "Out Of Order REGISTER"));
                }
                retransmission |= old.call_id == call_id && old.cseq == cseq.seq;
            }
        }
        if retransmission || repeated {
            updates.clear();
        }
        let mut changed = false;
        for (contact, expires, q) in updates {
            let pos = list.iter().position(|b| contact_eq(&b.contact, &contact));
            if expires == 0 {
                if let Some(i) = pos {
                    let old = list.remove(i);
                    self.writer.write(Write::remove(&old))?;
                    changed = true;
                }
                continue;
            }
            if pos.is_none() && list.len() >= self.policy.max_contacts {
                return Ok(reject(403, "Too Many Contacts"));
            }
            let binding = Binding {
                aor: aor.clone(),
                contact,
                q,
                expires_at_ms: now.0 + u64::from(expires) * 1000,
                call_id: call_id.clone(),
                cseq: cseq.seq,
                source: source.addr,
                transport: source.transport,
                conn: source.conn,
                user_agent: user_agent.clone(),
            };
            self.writer.write(Write::put(binding.clone()))?;
            match pos {
                Some(i) => list[i] = binding,
                None => list.push(binding),
            }
            changed = true;
        }
        let mut bindings = list.clone();
        if list.is_empty() {
            drop(list);
            self.map.remove_if(&aor, |_, v| v.is_empty());
        }
        bindings.sort_by_key(|b| std::cmp::Reverse(b.q.unwrap_or(1000)));
        Ok(Outcome::Ok { bindings, changed })
    }
}

impl Registrar {
    /// Whether a live binding of `aor` was written by this Call-ID and CSeq.
    fn wrote(&self, aor: &str, call_id: &str, cseq: u32, now: UnixMillis) -> bool {
        self.map.get(aor).is_some_and(|list| {
            list.iter()
                .any(|b| b.call_id == call_id && b.cseq == cseq && b.expires_at_ms > now.0)
        })
    }
}

/// What the shard sends back for a REGISTER.
#[derive(Debug)]
pub struct RegisterAnswer {
    pub answer: bytes::Bytes,
    /// Store writes were queued for this REGISTER.
    pub wrote: bool,
    /// The answer confirms bindings (written now or by the first copy of a
    /// retransmission): it waits until every write so far is durable.
    pub durable: bool,
    /// The user whose bindings changed, and whether any remain.
    pub registered: Option<(String, bool)>,
}

/// What checks a REGISTER's credentials: the digest authority, the users'
/// secrets, and the guard (failures counted, locked users refused).
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub auth: &'a DigestAuthority,
    pub users: &'a Users,
    pub guard: &'a crate::guard::Guard,
}

impl Registrar {
    /// A REGISTER: challenged (401) until its digest credentials verify, then
    /// applied to the user's bindings and answered with all of them.
    pub fn on_register(
        &self,
        now: std::time::Instant,
        wall: UnixMillis,
        req: &Message,
        remote: Remote,
        credentials: Credentials<'_>,
    ) -> RegisterAnswer {
        let Credentials { auth, users, guard } = credentials;
        let reply = |code, reason: &str| Builder::stateless_reply(req, remote.addr, code, reason);
        let standard = |status: StatusCode| reply(status.0, status.reason());
        let plain = |b: Builder| RegisterAnswer {
            answer: b.finish(),
            wrote: false,
            durable: false,
            registered: None,
        };
        let challenge = |stale| {
            let mut b = standard(StatusCode::UNAUTHORIZED);
            for c in auth.challenges(now, stale) {
                b.header("WWW-Authenticate", c);
            }
            plain(b)
        };
        let (verdict, repeated) = auth.verify_repeatable(
            now,
            b"REGISTER",
            crate::sip::auth::request_key(req),
            req.authorizations(HeaderName::Authorization),
            |u| users.ha1(u),
        );
        let verdict = guard.verdict(now, remote.addr.ip(), "REGISTER", verdict);
        let user = match verdict {
            Verdict::Authenticated(user) => user,
            Verdict::Challenge { stale } => return challenge(stale),
            Verdict::Forbidden { .. } => {
                tracing::info!(%remote, "REGISTER refused: bad credentials");
                return plain(standard(StatusCode::FORBIDDEN));
            }
        };
        match self.register(wall, req, remote, &user, repeated) {
            Err(e) => {
                tracing::error!("registrar store: {e}");
                plain(standard(StatusCode::SERVER_INTERNAL_ERROR))
            }
            Ok(Outcome::Reject {
                code,
                reason,
                min_expires,
            }) => {
                let mut b = reply(code, reason);
                if let Some(m) = min_expires {
                    b.header("Min-Expires", m.to_string());
                }
                plain(b)
            }
            Ok(Outcome::Replayed) => {
                tracing::info!(%remote, "REGISTER refused: replayed credentials");
                challenge(true)
            }
            Ok(Outcome::Ok { bindings, changed }) => {
                let mut b = standard(StatusCode::OK);
                for binding in &bindings {
                    let mut v = format!(
                        "<{}>;expires={}",
                        binding.contact,
                        binding.remaining_secs(wall)
                    );
                    if let Some(q) = binding.q {
                        v.push_str(&format!(";q={}.{:03}", q / 1000, q % 1000));
                    }
                    b.header("Contact", v);
                }
                RegisterAnswer {
                    answer: b.finish(),
                    wrote: changed,
                    durable: true,
                    registered: Some((user, !bindings.is_empty())),
                }
            }
        }
    }
}

/// Contact URIs compare case-insensitively (a practical subset of RFC 3261 §19.1.4).
fn contact_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// `q` in [0, 1] with up to three decimals, as thousandths.
fn parse_q(v: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let whole: u16 = match int {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let frac_val: u16 = format!("{frac:0<3}").parse().ok()?;
    let q = whole * 1000 + frac_val;
    (q <= 1000).then_some(q)
}

#[cfg(test)]
mod tests;
