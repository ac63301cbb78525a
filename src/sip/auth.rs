//! Digest authentication, server side (RFC 3261 §22, RFC 7616, RFC 8760): SHA-256
//! and MD5, `qop=auth`, stateless nonces that carry their creation time and an
//! HMAC, `stale=true` for expired nonces, and a nonce-count replay check.
//!
//! Only HA1 values (`H(user:realm:password)`) are ever stored. An unknown user and a
//! wrong password get the same answer, after the same amount of hashing.

use crate::sip::message::{Auth, Message};
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// A digest algorithm we offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    #[serde(rename = "SHA-256")]
    Sha256,
    #[serde(rename = "MD5")]
    Md5,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }
    /// `algorithm=` values are case-insensitive; absent means MD5 (RFC 7616 §3.3).
    pub fn from_param(v: Option<&[u8]>) -> Option<Algorithm> {
        match v {
            None => Some(Algorithm::Md5),
            Some(v) if v.eq_ignore_ascii_case(b"MD5") => Some(Algorithm::Md5),
            Some(v) if v.eq_ignore_ascii_case(b"SHA-256") => Some(Algorithm::Sha256),
            Some(_) => None,
        }
    }
    /// Lowercase hex of the hash of `parts` joined by `:`.
    pub fn hex(self, parts: &[&[u8]]) -> String {
        fn run<D: Digest>(parts: &[&[u8]]) -> String {
            let mut d = D::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            hex::encode(d.finalize())
        }
        match self {
            Algorithm::Sha256 => run::<Sha256>(parts),
            Algorithm::Md5 => run::<Md5>(parts),
        }
    }
}

/// The stored secrets of one user: HA1 per algorithm, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ha1 {
    pub md5: Option<String>,
    pub sha256: Option<String>,
}

impl Ha1 {
    pub fn from_password(user: &str, realm: &str, password: &str) -> Ha1 {
        let parts: [&[u8]; 3] = [user.as_bytes(), realm.as_bytes(), password.as_bytes()];
        Ha1 {
            md5: Some(Algorithm::Md5.hex(&parts)),
            sha256: Some(Algorithm::Sha256.hex(&parts)),
        }
    }
    fn get(&self, alg: Algorithm) -> Option<&str> {
        match alg {
            Algorithm::Md5 => self.md5.as_deref(),
            Algorithm::Sha256 => self.sha256.as_deref(),
        }
    }
}

/// What to do with a request after looking at its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated as this user.
    Authenticated(String),
    /// Answer 401/407 with fresh challenges; `stale` when the credentials were right
    /// but the nonce had expired or was replayed.
    Challenge { stale: bool },
    /// Answer 403: wrong password or unknown user (indistinguishable on purpose);
    /// `user` is the name the credentials claimed, if they named one.
    Forbidden { user: Option<String> },
}

/// The header answering a 401 (`Authorization`) or 407
/// (`Proxy-Authorization`) challenge in `resp` for `method` to `uri` with
/// `creds`: the first challenge we can answer, or `None`.
pub fn authorization(
    resp: &super::message::Message,
    method: &str,
    uri: &str,
    creds: (&str, &str),
    cnonce: &str,
) -> Option<(&'static str, String)> {
    use super::message::HeaderName;
    let (challenge, header) = match resp.status() {
        Some(401) => (HeaderName::WwwAuthenticate, "Authorization"),
        Some(407) => (HeaderName::ProxyAuthenticate, "Proxy-Authorization"),
        _ => return None,
    };
    resp.values(challenge)
        .filter_map(Auth::parse)
        .find_map(|c| answer_challenge(&c, method, uri, creds, 1, cnonce))
        .map(|v| (header, v))
}

/// A UAC's answer to a digest challenge (RFC 7616 §3.4, RFC 2617 §3.2.2):
/// the `Authorization` (or `Proxy-Authorization`) value for `method` to
/// `uri` as `user` with `password`, the `nc`-th use of the challenge's nonce,
/// with our `cnonce`. `qop=auth` when offered (else RFC 2069 form, MD5 only);
/// the challenge's opaque is returned. `None` for what we cannot answer
/// (another scheme, an unknown or `-sess` algorithm, only `auth-int`).
pub fn answer_challenge(
    challenge: &Auth<'_>,
    method: &str,
    uri: &str,
    (user, password): (&str, &str),
    nc: u32,
    cnonce: &str,
) -> Option<String> {
    if !challenge.scheme.eq_ignore_ascii_case(b"Digest") {
        return None;
    }
    let text = |name| {
        challenge
            .param(name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    let (realm, nonce) = (text("realm")?, text("nonce")?);
    let alg = Algorithm::from_param(challenge.param("algorithm").as_deref())?;
    let qops = text("qop");
    let auth_qop = qops
        .as_deref()
        .map(|q| q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")));
    let ha1 = alg.hex(&[user.as_bytes(), realm.as_bytes(), password.as_bytes()]);
    let ha2 = alg.hex(&[method.as_bytes(), uri.as_bytes()]);
    let nc = format!("{nc:08x}");
    let response = match auth_qop {
        Some(true) => alg.hex(&[
            ha1.as_bytes(),
            nonce.as_bytes(),
            nc.as_bytes(),
            cnonce.as_bytes(),
            b"auth",
            ha2.as_bytes(),
        ]),
        Some(false) => return None,
        None if alg == Algorithm::Md5 => {
            alg.hex(&[ha1.as_bytes(), nonce.as_bytes(), ha2.as_bytes()])
        }
        None => return None,
    };
    let mut v = format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm={}",
        alg.name()
    );
    if auth_qop == Some(true) {
        v.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
    }
    if let Some(opaque) = text("opaque") {
        v.push_str(&format!(", opaque=\"{opaque}\""));
    }
    Some(v)
}

type HmacSha256 = Hmac<Sha256>;

/// A nonce count, as the replay check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NonceUse {
    Fresh,
    /// The count the same request used before: a retransmission.
    Repeated,
    Replayed,
}

/// What the replay check remembers of a nonce.
#[derive(Debug, Clone, Copy)]
struct Seen {
    nc: u32,
    /// The [`request_key`] of the request that used `nc`, when its TU answers
    /// retransmissions itself.
    request: Option<u32>,
    issued_secs: u64,
}

/// Tells a retransmission from a replay: the same request (Call-ID and CSeq)
/// sent again may repeat the nonce count its first copy used (a registrar that
/// answers retransmissions itself sees them; RFC 3261 §8.2.7), any other
/// request must use a higher one.
pub fn request_key(req: &Message) -> u32 {
    let cseq = req.cseq().map(|c| c.seq).unwrap_or_default().to_be_bytes();
    let hash = crate::sip::call_id::fnv1a_parts([req.call_id().unwrap_or_default(), &cseq]);
    (hash >> 32) as u32 ^ hash as u32
}

/// Most nonce records kept for the replay check (about 100 bytes each).
const SEEN_NC_CAP: usize = 1_000_000;
/// How often expired nonce records are dropped.
const PRUNE_EVERY_SECS: u64 = 5;

/// Issues and checks nonces for one realm. Shared by all shards (`&self` only).
#[derive(Debug)]
pub struct DigestAuthority {
    realm: String,
    algorithms: Vec<Algorithm>,
    /// HMAC key for nonces; random per process, so nonces of an earlier run are stale.
    secret: [u8; 32],
    /// Nonce timestamps count from here (a monotonic origin: the core never reads a clock).
    epoch: Instant,
    nonce_ttl: Duration,
    /// Per nonce used: the highest nonce-count seen, the request that used it
    /// (its [`request_key`]) and the nonce's issue time (replay check).
    seen_nc: DashMap<[u8; 16], Seen>,
    /// When `seen_nc` was last pruned (seconds since `epoch`).
    last_prune_secs: AtomicU64,
    /// Nonces issued before this (seconds since `epoch`) are stale: their records
    /// were given up to keep `seen_nc` bounded.
    floor_secs: AtomicU64,
}

impl DigestAuthority {
    pub fn new(
        realm: &str,
        algorithms: Vec<Algorithm>,
        nonce_ttl: Duration,
        epoch: Instant,
    ) -> Self {
        DigestAuthority {
            realm: realm.to_string(),
            algorithms,
            secret: rand::random(),
            epoch,
            nonce_ttl,
            seen_nc: DashMap::new(),
            last_prune_secs: AtomicU64::new(0),
            floor_secs: AtomicU64::new(0),
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn mac(&self, body: &[u8; 16]) -> [u8; 16] {
        // HMAC accepts keys of any length, so construction cannot fail.
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(body);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// A fresh nonce: hex(creation seconds ‖ random ‖ HMAC).
    pub fn nonce(&self, now: Instant) -> String {
        let secs = now.saturating_duration_since(self.epoch).as_secs();
        let mut body = [0u8; 16];
        body[..8].copy_from_slice(&secs.to_be_bytes());
        body[8..].copy_from_slice(&rand::random::<[u8; 8]>());
        let mut out = hex::encode(body);
        out.push_str(&hex::encode(self.mac(&body)));
        out
    }

    /// The `WWW-Authenticate` / `Proxy-Authenticate` values, most preferred first.
    pub fn challenges(&self, now: Instant, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now);
        self.algorithms
            .iter()
            .map(|alg| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{}",
                    self.realm,
                    alg.name(),
                    if stale { ", stale=true" } else { "" }
                )
            })
            .collect()
    }

    /// Checks a nonce we issued: `Some(body)` when genuine and not expired.
    fn check_nonce(&self, now: Instant, nonce: &[u8]) -> Option<[u8; 16]> {
        if nonce.len() != 64 {
            return None;
        }
        let mut raw = [0u8; 32];
        hex::decode_to_slice(nonce, &mut raw).ok()?;
        let mut body = [0u8; 16];
        body.copy_from_slice(&raw[..16]);
        if !bool::from(self.mac(&body).ct_eq(&raw[16..])) {
            return None;
        }
        let mut secs = [0u8; 8];
        secs.copy_from_slice(&body[..8]);
        let issued = u64::from_be_bytes(secs);
        let age = now
            .saturating_duration_since(self.epoch)
            .as_secs()
            .checked_sub(issued)?;
        (age <= self.nonce_ttl.as_secs()).then_some(body)
    }

    /// Checks the credentials of a request. `lookup` returns a user's HA1s.
    /// Only credentials for our realm are considered; none → a challenge. A
    /// nonce count must rise with every use (replay check).
    pub fn verify<'a>(
        &self,
        now: Instant,
        method: &[u8],
        credentials: impl Iterator<Item = Auth<'a>>,
        lookup: impl Fn(&str) -> Option<Ha1>,
    ) -> Verdict {
        // Without a request key no count may repeat: the flag is never set.
        self.check(now, method, None, credentials, lookup).0
    }

    /// [`verify`](Self::verify) for a TU that answers retransmissions itself (a
    /// stateless registrar): the same request (`request`, its [`request_key`]) may
    /// repeat the nonce count it used. The flag says it did: the TU must then
    /// answer without changing anything.
    pub fn verify_repeatable<'a>(
        &self,
        now: Instant,
        method: &[u8],
        request: u32,
        credentials: impl Iterator<Item = Auth<'a>>,
        lookup: impl Fn(&str) -> Option<Ha1>,
    ) -> (Verdict, bool) {
        self.check(now, method, Some(request), credentials, lookup)
    }

    fn check<'a>(
        &self,
        now: Instant,
        method: &[u8],
        request: Option<u32>,
        credentials: impl Iterator<Item = Auth<'a>>,
        lookup: impl Fn(&str) -> Option<Ha1>,
    ) -> (Verdict, bool) {
        let verdict = |v| (v, false);
        let ours = credentials.into_iter().find(|a| {
            a.scheme.eq_ignore_ascii_case(b"Digest")
                && a.param("realm").as_deref() == Some(self.realm.as_bytes())
        });
        let Some(auth) = ours else {
            return verdict(Verdict::Challenge { stale: false });
        };
        let algorithm = Algorithm::from_param(auth.param("algorithm").as_deref());
        let Some(alg) = algorithm.filter(|a| self.algorithms.contains(a)) else {
            return verdict(Verdict::Challenge { stale: false });
        };
        let (Some(user), Some(nonce), Some(uri), Some(response)) = (
            auth.param("username"),
            auth.param("nonce"),
            auth.param("uri"),
            auth.param("response"),
        ) else {
            return verdict(Verdict::Forbidden { user: None });
        };
        let user = String::from_utf8_lossy(&user).into_owned();
        let forbidden = |user: &str| {
            verdict(Verdict::Forbidden {
                user: Some(user.to_string()),
            })
        };
        let qop = auth.param("qop");
        let (nc, cnonce) = (auth.param("nc"), auth.param("cnonce"));
        let known = lookup(&user).and_then(|h| h.get(alg).map(str::to_string));
        // An unknown user is hashed against a throwaway HA1: same work, same answer.
        let ha1 = known.clone().unwrap_or_else(|| alg.hex(&[b"-"]));
        let ha2 = alg.hex(&[method, &uri]);
        let expected = match (&qop, &nc, &cnonce) {
            (Some(q), Some(nc), Some(cn)) if q.eq_ignore_ascii_case(b"auth") => {
                alg.hex(&[ha1.as_bytes(), &nonce, nc, cn, q, ha2.as_bytes()])
            }
            (None, _, _) if alg == Algorithm::Md5 => {
                alg.hex(&[ha1.as_bytes(), &nonce, ha2.as_bytes()])
            }
            _ => return forbidden(&user),
        };
        let matches = bool::from(expected.as_bytes().ct_eq(&response.to_ascii_lowercase()));
        if !matches || known.is_none() {
            return forbidden(&user);
        }
        let Some(body) = self.check_nonce(now, &nonce) else {
            return verdict(Verdict::Challenge { stale: true });
        };
        if let Some(nc) = nc {
            let Some(count) = std::str::from_utf8(&nc)
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
            else {
                return forbidden(&user);
            };
            match self.note_nonce_count(now, body, count, request) {
                NonceUse::Fresh => {}
                NonceUse::Repeated => return (Verdict::Authenticated(user), true),
                NonceUse::Replayed => return verdict(Verdict::Challenge { stale: true }),
            }
        }
        verdict(Verdict::Authenticated(user))
    }

    /// Records `nc` for a nonce: fresh if it is above the last one seen; a
    /// replay if not, unless the same request repeats its own count.
    fn note_nonce_count(
        &self,
        now: Instant,
        nonce: [u8; 16],
        nc: u32,
        request: Option<u32>,
    ) -> NonceUse {
        let now_s = now.saturating_duration_since(self.epoch).as_secs();
        self.prune(now_s);
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&nonce[..8]);
        let issued_secs = u64::from_be_bytes(issued);
        if issued_secs < self.floor_secs.load(Ordering::Relaxed) {
            return NonceUse::Replayed; // its record may have been evicted: treat as stale
        }
        let mut seen = self.seen_nc.entry(nonce).or_insert(Seen {
            nc: 0,
            request: None,
            issued_secs,
        });
        if nc == seen.nc && request.is_some() && request == seen.request {
            return NonceUse::Repeated;
        }
        if nc <= seen.nc {
            return NonceUse::Replayed;
        }
        seen.nc = nc;
        seen.request = request;
        NonceUse::Fresh
    }

    /// Drops records of expired nonces, at most every few seconds (one caller does
    /// it). If the map is still above its cap, the oldest nonces are given up: the
    /// floor rises and nonces issued before it count as stale from then on.
    fn prune(&self, now_s: u64) {
        let last = self.last_prune_secs.load(Ordering::Relaxed);
        if now_s < last + PRUNE_EVERY_SECS && self.seen_nc.len() <= SEEN_NC_CAP {
            return;
        }
        if self
            .last_prune_secs
            .compare_exchange(last, now_s, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return; // another shard is pruning
        }
        let ttl = self.nonce_ttl.as_secs();
        let mut floor = now_s
            .saturating_sub(ttl)
            .max(self.floor_secs.load(Ordering::Relaxed));
        loop {
            self.seen_nc.retain(|_, seen| seen.issued_secs >= floor);
            if self.seen_nc.len() <= SEEN_NC_CAP / 2 || floor >= now_s {
                break;
            }
            floor += (now_s - floor).div_ceil(2);
        }
        self.floor_secs.fetch_max(floor, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "sipdesk";

    fn authority(t0: Instant) -> DigestAuthority {
        DigestAuthority::new(
            REALM,
            vec![Algorithm::Sha256, Algorithm::Md5],
            Duration::from_secs(300),
            t0,
        )
    }

    fn lookup(user: &str) -> Option<Ha1> {
        (user == "201").then(|| Ha1::from_password("201", REALM, "secret"))
    }

    /// What a client computes (RFC 7616 §3.4.1).
    fn credentials(alg: Algorithm, user: &str, password: &str, nonce: &str, nc: &str) -> String {
        let ha1 = alg.hex(&[user.as_bytes(), REALM.as_bytes(), password.as_bytes()]);
        let ha2 = alg.hex(&[b"REGISTER", b"sip:pbx"]);
        let resp = alg.hex(&[
            ha1.as_bytes(),
            nonce.as_bytes(),
            nc.as_bytes(),
            b"abc",
            b"auth",
            ha2.as_bytes(),
        ]);
        format!(
            "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:pbx\", response=\"{resp}\", algorithm={}, qop=auth, nc={nc}, cnonce=\"abc\"",
            alg.name()
        )
    }

    /// Each call is a new request (a new CSeq).
    fn verify(a: &DigestAuthority, now: Instant, header: &str) -> Verdict {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        verify_request(a, now, header, NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn verify_request(a: &DigestAuthority, now: Instant, header: &str, request: u32) -> Verdict {
        let parsed = Auth::parse(header.as_bytes());
        match a.verify_repeatable(now, b"REGISTER", request, parsed.into_iter(), lookup) {
            (Verdict::Authenticated(u), true) => Verdict::Authenticated(format!("{u} (repeated)")),
            (v, _) => v,
        }
    }

    fn nonce_of(challenge: &str) -> String {
        challenge
            .split("nonce=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn known_rfc_7616_md5_vector_is_reproduced() {
        // HA1 of RFC 2617 §3.5's example user, a cross-check of the hash plumbing.
        let ha1 = Algorithm::Md5.hex(&[b"Mufasa", b"testrealm@host.com", b"Circle Of Life"]);
        assert_eq!(ha1, "939e7578ed9e3c518a452acee763bce9");
    }

    #[test]
    fn both_algorithms_authenticate_with_the_right_password() {
        let t0 = Instant::now();
        let a = authority(t0);
        let ch = a.challenges(t0, false);
        assert!(ch[0].contains("algorithm=SHA-256") && ch[1].contains("algorithm=MD5"));
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            let nonce = nonce_of(&a.challenges(t0, false)[0]);
            let v = verify(
                &a,
                t0,
                &credentials(alg, "201", "secret", &nonce, "00000001"),
            );
            assert_eq!(v, Verdict::Authenticated("201".into()), "{alg:?}");
        }
    }

    #[test]
    fn a_uac_answers_a_challenge_as_rfc_2617_computes_it() {
        // RFC 2617 §3.5's example.
        let challenge = Auth::parse(
            b"Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .expect("challenge");
        let v = answer_challenge(
            &challenge,
            "GET",
            "/dir/index.html",
            ("Mufasa", "Circle Of Life"),
            1,
            "0a4f113b",
        )
        .expect("answer");
        assert!(
            v.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{v}"
        );
        assert!(
            v.contains("qop=auth, nc=00000001, cnonce=\"0a4f113b\""),
            "{v}"
        );
        assert!(
            v.ends_with("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""),
            "{v}"
        );
        // Our own authority accepts what the UAC computes, in both algorithms.
        let t0 = Instant::now();
        let a = authority(t0);
        // (Both challenges carry one nonce: each use counts up.)
        for (nc, c) in (1..).zip(a.challenges(t0, false)) {
            let challenge = Auth::parse(c.as_bytes()).expect("ours");
            let v = answer_challenge(
                &challenge,
                "REGISTER",
                "sip:pbx",
                ("201", "secret"),
                nc,
                "c0ffee",
            )
            .expect("answer");
            let header = Auth::parse(v.as_bytes()).expect("answer parses");
            let verdict = a.verify(t0, b"REGISTER", std::iter::once(header), |u| {
                (u == "201").then(|| Ha1::from_password("201", REALM, "secret"))
            });
            assert_eq!(verdict, Verdict::Authenticated("201".into()), "{c}");
        }
        let only_int =
            Auth::parse(b"Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"").expect("c");
        assert_eq!(
            answer_challenge(&only_int, "INVITE", "sip:x", ("a", "b"), 1, "c"),
            None
        );
    }

    #[test]
    fn wrong_password_and_unknown_user_get_the_same_answer() {
        let t0 = Instant::now();
        let a = authority(t0);
        let nonce = a.nonce(t0);
        let wrong = verify(
            &a,
            t0,
            &credentials(Algorithm::Md5, "201", "nope", &nonce, "00000001"),
        );
        let unknown = verify(
            &a,
            t0,
            &credentials(Algorithm::Md5, "999", "secret", &nonce, "00000001"),
        );
        // The same verdict: it names the claimed user, known or not.
        assert_eq!(
            wrong,
            Verdict::Forbidden {
                user: Some("201".into())
            }
        );
        assert_eq!(
            unknown,
            Verdict::Forbidden {
                user: Some("999".into())
            }
        );
    }

    #[test]
    fn expired_or_foreign_nonce_is_stale() {
        let t0 = Instant::now();
        let a = authority(t0);
        let nonce = a.nonce(t0);
        let late = t0 + Duration::from_secs(301);
        let v = verify(
            &a,
            late,
            &credentials(Algorithm::Sha256, "201", "secret", &nonce, "00000001"),
        );
        assert_eq!(v, Verdict::Challenge { stale: true });
        let other = authority(t0).nonce(t0);
        let v = verify(
            &a,
            t0,
            &credentials(Algorithm::Sha256, "201", "secret", &other, "00000001"),
        );
        assert_eq!(v, Verdict::Challenge { stale: true });
    }

    #[test]
    fn a_replayed_nonce_count_is_refused() {
        let t0 = Instant::now();
        let a = authority(t0);
        let nonce = a.nonce(t0);
        let c1 = credentials(Algorithm::Md5, "201", "secret", &nonce, "00000001");
        assert!(matches!(verify(&a, t0, &c1), Verdict::Authenticated(_)));
        assert_eq!(verify(&a, t0, &c1), Verdict::Challenge { stale: true });
        let c2 = credentials(Algorithm::Md5, "201", "secret", &nonce, "00000002");
        assert!(matches!(verify(&a, t0, &c2), Verdict::Authenticated(_)));
    }

    #[test]
    fn a_retransmitted_request_may_repeat_its_own_nonce_count_and_no_other_may() {
        let t0 = Instant::now();
        let a = authority(t0);
        let nonce = a.nonce(t0);
        let c1 = credentials(Algorithm::Md5, "201", "secret", &nonce, "00000001");
        let first = verify_request(&a, t0, &c1, 41);
        assert!(matches!(first, Verdict::Authenticated(_)));
        let again = verify_request(&a, t0, &c1, 41);
        assert_eq!(again, Verdict::Authenticated("201 (repeated)".into()));
        let other = verify_request(&a, t0, &c1, 42);
        assert_eq!(other, Verdict::Challenge { stale: true }, "replay");
        let strict = a.verify(
            t0,
            b"REGISTER",
            Auth::parse(c1.as_bytes()).into_iter(),
            lookup,
        );
        assert_eq!(
            strict,
            Verdict::Challenge { stale: true },
            "verify never repeats"
        );
    }

    #[test]
    fn nonce_records_are_pruned_as_they_expire_and_bounded() {
        let t0 = Instant::now();
        let a = authority(t0);
        for i in 0..1000u64 {
            let mut body = [0u8; 16];
            body[8..].copy_from_slice(&i.to_be_bytes());
            assert_eq!(a.note_nonce_count(t0, body, 1, None), NonceUse::Fresh);
        }
        assert_eq!(a.seen_nc.len(), 1000);
        // Past the TTL, the next use prunes every expired record.
        let later = t0 + Duration::from_secs(400);
        let fresh = a.nonce(later);
        let v = verify(
            &a,
            later,
            &credentials(Algorithm::Md5, "201", "secret", &fresh, "00000001"),
        );
        assert!(matches!(v, Verdict::Authenticated(_)));
        assert_eq!(a.seen_nc.len(), 1, "only the fresh nonce is remembered");
    }

    #[test]
    fn no_credentials_or_another_realm_or_unoffered_algorithm_is_challenged() {
        let t0 = Instant::now();
        let a = DigestAuthority::new(REALM, vec![Algorithm::Sha256], Duration::from_secs(300), t0);
        assert_eq!(
            a.verify(t0, b"REGISTER", std::iter::empty(), lookup),
            Verdict::Challenge { stale: false }
        );
        let nonce = a.nonce(t0);
        let md5 = credentials(Algorithm::Md5, "201", "secret", &nonce, "00000001");
        assert_eq!(verify(&a, t0, &md5), Verdict::Challenge { stale: false });
        let foreign = md5.replace("realm=\"sipdesk\"", "realm=\"other\"");
        assert_eq!(
            verify(&a, t0, &foreign),
            Verdict::Challenge { stale: false }
        );
    }
}
