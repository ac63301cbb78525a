//! The call-back box: "please call this customer back" messages addressed to
//! an agent (personal, P) or a group (G), in the order they were written.
//! Each is handled by exactly one person: open → in progress (claimed by one
//! agent, since when) → done (succeeded or failed, by whom, when, a note); a
//! claim can be released, a failed one re-opened. A personal item nobody
//! claims is offered to the agent's groups after the groups' escalation time,
//! and any item still open after their flag time is flagged.
//!
//! The PBX writes call-backs too: a queue caller who waited too long leaves a
//! voice message or presses 1 ([`Request`]); for a customer and target that
//! already have an open item, the PBX adds to it instead of writing a second.
//!
//! What it owns: the open items (in memory, in creation order; done ones live
//! only in the store) and the request keys that make a retried create return
//! the first item. Sans-IO: every operation takes `now`, changes the box and
//! returns the item as it must now be stored; the caller makes it durable
//! before answering anyone.

use crate::clock::UnixMillis;
use crate::store::{Record, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A call-back's number: unique, in creation order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct CallbackId(pub u64);

/// Who a call-back is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One agent (P on their desktop).
    Agent(String),
    /// Every member of a group (G).
    Group(String),
}

/// How calling back went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// Where a call-back stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    Open,
    /// Claimed: `by` handles it.
    InProgress {
        by: String,
        since_ms: u64,
    },
    Done {
        outcome: Outcome,
        by: String,
        at_ms: u64,
        note: String,
    },
}

/// A voice message a caller left (a WAV file kept by the PBX).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Voice {
    pub id: u64,
    /// Its length.
    pub ms: u64,
}

/// A call-back the PBX asks for: a queue caller who waited too long and left
/// a voice message (already durable) or pressed 1, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The queue call: told when the call-back is stored (the caller hears
    /// the thanks only then).
    pub call: crate::sip::CallId,
    /// The caller's number, as the caller index knows it.
    pub customer: String,
    /// The queue they waited in.
    pub queue: String,
    /// The group the queue offers call-backs to.
    pub group: String,
    pub voice: Option<Voice>,
    /// They pressed 1 to be called back.
    pub asked: bool,
}

impl Request {
    /// The item's message: what the caller did.
    pub fn message(&self) -> String {
        let q = &self.queue;
        let voice = self.voice.map(|v| {
            let secs = v.ms.div_ceil(1000);
            format!("left a voice message ({}:{:02})", secs / 60, secs % 60)
        });
        match (voice, self.asked) {
            (Some(v), true) => format!("Waited in queue {q}, {v} and pressed 1 to be called back"),
            (Some(v), false) => format!("Waited in queue {q} and {v}"),
            (None, _) => format!("Waited in queue {q} and pressed 1 to be called back"),
        }
    }
}

/// The writer of the call-backs the PBX writes.
pub const PBX: &str = "pbx";

/// One call-back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Callback {
    pub id: CallbackId,
    /// The customer's number, as the caller index knows it.
    pub customer: String,
    pub name: String,
    pub message: String,
    /// Who wrote it (an extension; "pbx" for the ones the PBX writes).
    pub written_by: String,
    pub target: Target,
    pub created_ms: u64,
    pub status: Status,
    /// When a personal item was offered to the agent's groups as well.
    pub escalated_ms: Option<u64>,
    /// When it was flagged as waiting too long.
    pub flagged_ms: Option<u64>,
    /// The groups that see it: the target group, or the agent's groups once
    /// escalated.
    pub groups: Vec<String>,
    /// The writer's key for this create (a retry with it returns this item).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
    /// Voice messages the customer left, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voice: Vec<Voice>,
    /// The queue its caller waited in (the ones the PBX writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

impl Record for Callback {
    const TREE: &'static str = "callbacks.v1";
    /// By id: the tree is in creation order.
    fn key(&self) -> Vec<u8> {
        self.id.0.to_be_bytes().to_vec()
    }
}

impl Callback {
    pub fn is_done(&self) -> bool {
        matches!(self.status, Status::Done { .. })
    }

    /// Whether `extension` sees it (`member_of` says whether they are in a
    /// group); supervisors see everything and are not asked here.
    pub fn visible_to(&self, extension: &str, member_of: impl Fn(&str) -> bool) -> bool {
        let mine = matches!(&self.target, Target::Agent(a) if a == extension);
        mine || self.groups.iter().any(|g| member_of(g))
    }

    /// Whether it waits for `extension` (lights their message lamp): open and
    /// theirs to see, or handled by them. [`CallbackBox::waiting`] counts by
    /// this rule (the tests hold it to it).
    #[cfg(test)]
    pub fn waits_for(&self, extension: &str, member_of: impl Fn(&str) -> bool) -> bool {
        match &self.status {
            Status::Open => self.visible_to(extension, member_of),
            Status::InProgress { by, .. } => by == extension,
            Status::Done { .. } => false,
        }
    }
}

/// Why an operation was refused (the caller's mistake, or a lost race).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("no call-back {0}")]
    NotFound(u64),
    #[error("call-back {id} is handled by {by} since {since_ms}")]
    Held { id: u64, by: String, since_ms: u64 },
    #[error("call-back {0} is done")]
    Done(u64),
    #[error("call-back {0} is not claimed by you")]
    NotYours(u64),
    #[error("call-back {0} is not in progress")]
    NotInProgress(u64),
    #[error("call-back {0} did not fail: only a failed one can be re-opened")]
    NotFailed(u64),
    #[error("{0}")]
    Invalid(String),
}

/// Escalation limits of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A personal item unclaimed this long is offered to the group too.
    pub escalate_after: Duration,
    /// An item still open this long is flagged.
    pub flag_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            escalate_after: Duration::from_secs(900),
            flag_after: Duration::from_secs(3600),
        }
    }
}

/// What a writer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCallback {
    pub customer: String,
    pub name: String,
    pub message: String,
    pub written_by: String,
    pub target: Target,
    pub request_key: Option<String>,
    pub voice: Option<Voice>,
    /// The queue its caller waited in (the ones the PBX writes).
    pub queue: Option<String>,
}

/// The box: open items and the request keys seen.
#[derive(Debug, Default)]
pub struct CallbackBox {
    open: BTreeMap<CallbackId, Callback>,
    /// (writer, key) → the item it created.
    keys: HashMap<(String, String), CallbackId>,
    /// Each group's limits (groups not listed use the defaults).
    limits: HashMap<String, Limits>,
    /// Each agent's groups, for escalation.
    agent_groups: HashMap<String, Vec<String>>,
}

impl CallbackBox {
    /// The box over the stored items, with the groups (name, members, limits).
    pub fn load(
        store: &Store,
        groups: &[(String, Vec<String>, Limits)],
    ) -> Result<Self, StoreError> {
        let mut b = CallbackBox::default();
        for (name, members, limits) in groups {
            b.limits.insert(name.clone(), *limits);
            for m in members {
                b.agent_groups
                    .entry(m.clone())
                    .or_default()
                    .push(name.clone());
            }
        }
        store.each(|c: Callback| {
            b.remember(&c);
            if !c.is_done() {
                b.open.insert(c.id, c);
            }
            true
        })?;
        Ok(b)
    }

    fn remember(&mut self, c: &Callback) {
        if let Some(k) = &c.request_key {
            self.keys.insert((c.written_by.clone(), k.clone()), c.id);
        }
    }

    /// The open and in-progress items, in creation order.
    pub fn open(&self) -> impl Iterator<Item = &Callback> {
        self.open.values()
    }

    pub fn get(&self, id: CallbackId) -> Option<&Callback> {
        self.open.get(&id)
    }

    /// How many items wait for each of `extensions` (lights their message
    /// lamps): the open ones they may see, and the ones they handle. One pass
    /// per distinct set of groups: the
    /// members of a group share its items' count (a lamp for each of 200
    /// members costs no more than for one).
    pub fn waiting(&self, extensions: &[String]) -> Vec<(String, u32)> {
        let no_groups: Vec<String> = Vec::new();
        let groups_of = |ext: &str| self.agent_groups.get(ext).unwrap_or(&no_groups);
        // Their own: items they handle, and personal ones their groups do not see.
        let mut own: HashMap<&str, u32> = HashMap::new();
        for c in self.open.values() {
            match (&c.status, &c.target) {
                (Status::InProgress { by, .. }, _) => *own.entry(by).or_default() += 1,
                (Status::Open, Target::Agent(a))
                    if !c.groups.iter().any(|g| groups_of(a).contains(g)) =>
                {
                    *own.entry(a).or_default() += 1
                }
                _ => {}
            }
        }
        let mut shared: HashMap<&[String], u32> = HashMap::new();
        extensions
            .iter()
            .map(|ext| {
                let groups = groups_of(ext).as_slice();
                let via_groups = *shared.entry(groups).or_insert_with(|| {
                    let n = self
                        .open
                        .values()
                        .filter(|c| c.status == Status::Open)
                        .filter(|c| c.groups.iter().any(|g| groups.contains(g)))
                        .count();
                    u32::try_from(n).unwrap_or(u32::MAX)
                });
                let mine = own.get(ext.as_str()).copied().unwrap_or(0);
                (ext.clone(), via_groups.saturating_add(mine))
            })
            .collect()
    }

    /// The item a retried create (same writer, same key) made, if open.
    pub fn created_by_key(&self, written_by: &str, key: &str) -> Option<CallbackId> {
        self.keys
            .get(&(written_by.to_string(), key.to_string()))
            .copied()
    }

    /// Adds an item with `id` (from the caller's id lane, so later ids sort
    /// later); a create whose key was seen returns `Err(existing id)`.
    pub fn create(
        &mut self,
        now: UnixMillis,
        id: CallbackId,
        new: NewCallback,
    ) -> Result<Callback, CallbackId> {
        if let Some(k) = &new.request_key {
            if let Some(first) = self.created_by_key(&new.written_by, k) {
                return Err(first);
            }
        }
        Ok(self.insert(now, id, new))
    }

    fn insert(&mut self, now: UnixMillis, id: CallbackId, new: NewCallback) -> Callback {
        let groups = match &new.target {
            Target::Group(g) => vec![g.clone()],
            Target::Agent(_) => Vec::new(),
        };
        let c = Callback {
            id,
            customer: new.customer,
            name: new.name,
            message: new.message,
            written_by: new.written_by,
            target: new.target,
            created_ms: now.0,
            status: Status::Open,
            escalated_ms: None,
            flagged_ms: None,
            groups,
            request_key: new.request_key,
            voice: new.voice.into_iter().collect(),
            queue: new.queue,
        };
        self.remember(&c);
        self.open.insert(id, c.clone());
        c
    }

    /// What the PBX writes: added to the open item for the same customer and
    /// target when there is one (`true`), else a new item with `id`.
    pub fn create_or_add(
        &mut self,
        now: UnixMillis,
        id: CallbackId,
        new: NewCallback,
    ) -> (Callback, bool) {
        let open = self
            .open
            .values_mut()
            .find(|c| c.customer == new.customer && c.target == new.target);
        if let Some(c) = open {
            c.message = format!("{}\nAgain: {}", c.message, new.message);
            c.voice.extend(new.voice);
            return (c.clone(), true);
        }
        (self.insert(now, id, new), false)
    }

    fn item(&mut self, id: CallbackId) -> Result<&mut Callback, CallbackError> {
        self.open.get_mut(&id).ok_or(CallbackError::NotFound(id.0))
    }

    /// `by` takes an open item; of concurrent claims the first wins.
    pub fn claim(
        &mut self,
        now: UnixMillis,
        id: CallbackId,
        by: &str,
    ) -> Result<Callback, CallbackError> {
        let c = self.item(id)?;
        if let Status::InProgress {
            by: holder,
            since_ms,
        } = &c.status
        {
            return Err(CallbackError::Held {
                id: id.0,
                by: holder.clone(),
                since_ms: *since_ms,
            });
        }
        c.status = Status::InProgress {
            by: by.to_string(),
            since_ms: now.0,
        };
        Ok(c.clone())
    }

    /// The holder (or a supervisor, `anyone`) gives a claimed item back.
    pub fn release(
        &mut self,
        id: CallbackId,
        by: &str,
        anyone: bool,
    ) -> Result<Callback, CallbackError> {
        let c = self.item(id)?;
        match &c.status {
            Status::InProgress { by: holder, .. } if holder == by || anyone => {}
            Status::InProgress { .. } => return Err(CallbackError::NotYours(id.0)),
            _ => return Err(CallbackError::NotInProgress(id.0)),
        }
        c.status = Status::Open;
        Ok(c.clone())
    }

    /// The holder closes an item; it leaves the open list.
    pub fn close(
        &mut self,
        now: UnixMillis,
        id: CallbackId,
        by: &str,
        outcome: Outcome,
        note: &str,
    ) -> Result<Callback, CallbackError> {
        let c = self.item(id)?;
        match &c.status {
            Status::InProgress { by: holder, .. } if holder == by => {}
            Status::InProgress { .. } => return Err(CallbackError::NotYours(id.0)),
            _ => return Err(CallbackError::NotInProgress(id.0)),
        }
        c.status = Status::Done {
            outcome,
            by: by.to_string(),
            at_ms: now.0,
            note: note.to_string(),
        };
        let done = c.clone();
        self.open.remove(&id);
        Ok(done)
    }

    /// A failed item (read back from the store) opens again for another try.
    pub fn reopen(&mut self, mut c: Callback) -> Result<Callback, CallbackError> {
        if self.open.contains_key(&c.id) {
            return Err(CallbackError::NotFailed(c.id.0)); // opened again already
        }
        if !matches!(
            c.status,
            Status::Done {
                outcome: Outcome::Failed,
                ..
            }
        ) {
            return Err(match c.status {
                Status::Done { .. } => CallbackError::NotFailed(c.id.0),
                _ => CallbackError::Invalid(format!("call-back {} is not done", c.id.0)),
            });
        }
        c.status = Status::Open;
        self.open.insert(c.id, c.clone());
        Ok(c)
    }

    /// The limits that apply to an item: its groups', or its agent's groups'
    /// (the shortest of each).
    fn limits_of(&self, c: &Callback) -> Limits {
        let groups: &[String] = match &c.target {
            Target::Group(_) => &c.groups,
            Target::Agent(a) => self.agent_groups.get(a).map_or(&[], Vec::as_slice),
        };
        let mut all = groups.iter().filter_map(|g| self.limits.get(g));
        let first = all.next().copied().unwrap_or_default();
        all.fold(first, |l, m| Limits {
            escalate_after: l.escalate_after.min(m.escalate_after),
            flag_after: l.flag_after.min(m.flag_after),
        })
    }

    /// Escalations and flags due at `now`: the items changed (to be stored).
    pub fn tick(&mut self, now: UnixMillis) -> Vec<Callback> {
        let mut changed = Vec::new();
        let ids: Vec<CallbackId> = self
            .open
            .values()
            .filter(|c| c.status == Status::Open)
            .map(|c| c.id)
            .collect();
        for id in ids {
            let Some(c) = self.open.get(&id) else {
                continue;
            };
            let limits = self.limits_of(c);
            let age = Duration::from_millis(now.0.saturating_sub(c.created_ms));
            let escalate = match &c.target {
                Target::Agent(a) if c.escalated_ms.is_none() && age >= limits.escalate_after => {
                    self.agent_groups.get(a).cloned().filter(|g| !g.is_empty())
                }
                _ => None,
            };
            let flag = c.flagged_ms.is_none() && age >= limits.flag_after;
            if escalate.is_none() && !flag {
                continue;
            }
            let Some(c) = self.open.get_mut(&id) else {
                continue;
            };
            if let Some(groups) = escalate {
                c.escalated_ms = Some(now.0);
                c.groups = groups;
            }
            if flag {
                c.flagged_ms = Some(now.0);
            }
            changed.push(c.clone());
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(target: Target, key: Option<&str>) -> NewCallback {
        NewCallback {
            customer: "+81312345678".into(),
            name: "Keiko Sato".into(),
            message: "about the invoice".into(),
            written_by: "201".into(),
            target,
            request_key: key.map(str::to_string),
            voice: None,
            queue: None,
        }
    }

    fn boxed() -> CallbackBox {
        let mut b = CallbackBox::default();
        b.limits.insert(
            "support".into(),
            Limits {
                escalate_after: Duration::from_secs(60),
                flag_after: Duration::from_secs(300),
            },
        );
        b.agent_groups.insert("202".into(), vec!["support".into()]);
        b
    }

    const T0: UnixMillis = UnixMillis(1_000_000);

    fn at(secs: u64) -> UnixMillis {
        UnixMillis(T0.0 + secs * 1000)
    }

    #[test]
    fn one_claim_wins_the_holder_closes_and_the_item_leaves_the_open_list() {
        let mut b = boxed();
        let id = CallbackId(1);
        b.create(T0, id, new(Target::Group("support".into()), None))
            .expect("new");
        let claimed = b.claim(at(1), id, "202").expect("first claim");
        assert_eq!(
            claimed.status,
            Status::InProgress {
                by: "202".into(),
                since_ms: at(1).0
            }
        );
        assert_eq!(
            b.claim(at(2), id, "203"),
            Err(CallbackError::Held {
                id: 1,
                by: "202".into(),
                since_ms: at(1).0
            })
        );
        assert_eq!(
            b.close(at(3), id, "203", Outcome::Succeeded, ""),
            Err(CallbackError::NotYours(1))
        );
        let done = b
            .close(at(3), id, "202", Outcome::Failed, "no answer")
            .expect("close");
        assert!(done.is_done());
        assert_eq!(b.open().count(), 0);
        assert_eq!(b.claim(at(4), id, "202"), Err(CallbackError::NotFound(1)));
        // A failed one opens again; a succeeded one does not.
        let again = b.reopen(done).expect("reopen");
        assert_eq!(again.status, Status::Open);
        b.claim(at(5), id, "203").expect("claim");
        assert_eq!(b.release(id, "202", false), Err(CallbackError::NotYours(1)));
        b.release(id, "203", false).expect("release");
        b.claim(at(6), id, "202").expect("claim");
        let ok = b
            .close(at(7), id, "202", Outcome::Succeeded, "")
            .expect("close");
        assert_eq!(b.reopen(ok), Err(CallbackError::NotFailed(1)));
    }

    #[test]
    fn a_retried_create_with_the_same_key_returns_the_first_item() {
        let mut b = boxed();
        let first = b
            .create(
                T0,
                CallbackId(1),
                new(Target::Agent("202".into()), Some("k1")),
            )
            .expect("new");
        assert_eq!(
            b.create(
                at(1),
                CallbackId(2),
                new(Target::Agent("202".into()), Some("k1"))
            ),
            Err(first.id)
        );
        let mut other = new(Target::Agent("202".into()), Some("k1"));
        other.written_by = "203".into();
        assert!(
            b.create(at(1), CallbackId(3), other).is_ok(),
            "keys are per writer"
        );
        assert_eq!(b.open().map(|c| c.id.0).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn an_unclaimed_personal_item_escalates_to_the_agents_groups_then_is_flagged() {
        let mut b = boxed();
        let id = CallbackId(1);
        b.create(T0, id, new(Target::Agent("202".into()), None))
            .expect("new");
        let only_202 =
            |c: &Callback, ext: &str| c.visible_to(ext, |g| g == "support" && ext == "203");
        assert!(b.tick(at(59)).is_empty());
        assert!(
            !only_202(b.get(id).expect("open"), "203"),
            "personal: the group does not see it yet"
        );
        let up = b.tick(at(60));
        assert_eq!(up.len(), 1);
        assert_eq!(
            (up[0].escalated_ms, up[0].flagged_ms),
            (Some(at(60).0), None)
        );
        assert_eq!(up[0].groups, ["support"]);
        assert!(
            only_202(b.get(id).expect("open"), "203"),
            "offered to the group"
        );
        assert!(b.tick(at(120)).is_empty(), "escalated once");
        let flagged = b.tick(at(300));
        assert_eq!(flagged[0].flagged_ms, Some(at(300).0));
        assert!(b.tick(at(900)).is_empty(), "flagged once");
    }

    #[test]
    fn claimed_items_and_agents_without_a_group_do_not_escalate() {
        let mut b = boxed();
        b.create(T0, CallbackId(1), new(Target::Agent("202".into()), None))
            .expect("new");
        b.create(T0, CallbackId(2), new(Target::Agent("299".into()), None))
            .expect("new");
        b.claim(at(1), CallbackId(1), "202").expect("claim");
        let due = b.tick(at(60));
        assert!(due.is_empty(), "{due:?}");
        // 299 has no group: default limits, flagged after an hour, never escalated.
        let due = b.tick(at(3600));
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].id, due[0].escalated_ms), (CallbackId(2), None));
    }

    #[test]
    fn a_lamp_counts_open_items_for_me_and_the_ones_i_handle_not_others_claims() {
        let mut b = boxed();
        b.agent_groups.insert("203".into(), vec!["support".into()]);
        fn support(ext: &str) -> impl Fn(&str) -> bool + '_ {
            move |g| g == "support" && (ext == "202" || ext == "203")
        }
        // The one-pass count agrees with each item's own rule.
        let check = |b: &CallbackBox| {
            let exts: Vec<String> = ["202", "203", "299"].map(String::from).to_vec();
            for (ext, n) in b.waiting(&exts) {
                let by_rule = b
                    .open()
                    .filter(|c| c.waits_for(&ext, support(&ext)))
                    .count();
                assert_eq!(n as usize, by_rule, "{ext}");
            }
            b.waiting(&exts)
                .into_iter()
                .map(|(_, n)| n)
                .collect::<Vec<_>>()
        };
        b.create(
            T0,
            CallbackId(1),
            new(Target::Group("support".into()), None),
        )
        .expect("new");
        b.create(T0, CallbackId(2), new(Target::Agent("202".into()), None))
            .expect("new");
        // 202: the group's and its own; 203: the group's; 299: none (no group).
        assert_eq!(check(&b), [2, 1, 0]);
        b.claim(at(1), CallbackId(1), "203").expect("claim");
        assert_eq!(
            check(&b),
            [1, 1, 0],
            "203 handles the group's: 202 sees only its own"
        );
        // 202's own item, escalated to support: 203 sees it too, 202 counts it once.
        b.tick(at(60));
        assert_eq!(check(&b), [1, 2, 0]);
        b.close(at(2), CallbackId(1), "203", Outcome::Succeeded, "")
            .expect("close");
        assert_eq!(check(&b), [1, 1, 0]);
    }

    #[test]
    fn the_pbx_adds_to_the_open_item_for_the_same_customer_and_target_instead_of_a_second() {
        let mut b = boxed();
        let request = Request {
            call: "q@a".into(),
            customer: "+81312345678".into(),
            queue: "500".into(),
            group: "support".into(),
            voice: Some(Voice { id: 9, ms: 42_000 }),
            asked: false,
        };
        assert_eq!(
            request.message(),
            "Waited in queue 500 and left a voice message (0:42)"
        );
        let pbx = |voice| NewCallback {
            written_by: PBX.into(),
            message: "Waited in queue 500 and pressed 1 to be called back".into(),
            voice,
            ..new(Target::Group("support".into()), None)
        };
        let (first, added) = b.create_or_add(T0, CallbackId(1), pbx(request.voice));
        assert!(!added);
        assert_eq!(first.voice, [Voice { id: 9, ms: 42_000 }]);
        let (again, added) = b.create_or_add(at(60), CallbackId(2), pbx(None));
        assert!(added, "the same customer and group: added");
        assert_eq!(again.id, CallbackId(1));
        assert!(again.message.contains("\nAgain: Waited in queue 500"));
        let mut other = pbx(None);
        other.customer = "+81300000000".into();
        assert!(!b.create_or_add(at(61), CallbackId(3), other).1);
        assert_eq!(b.open().count(), 2);
        // Once it is done, the next request makes a new item.
        b.claim(at(62), CallbackId(1), "202").expect("claim");
        b.close(at(63), CallbackId(1), "202", Outcome::Succeeded, "")
            .expect("close");
        assert!(!b.create_or_add(at(64), CallbackId(4), pbx(None)).1);
    }

    #[test]
    fn open_items_and_keys_survive_a_reload_in_creation_order() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        let mut b = boxed();
        for i in [3u64, 1, 2] {
            let c = b
                .create(
                    T0,
                    CallbackId(i),
                    new(Target::Group("support".into()), Some(&format!("k{i}"))),
                )
                .expect("new");
            store.put(c).expect("put");
        }
        let done = b
            .claim(at(1), CallbackId(2), "202")
            .and_then(|_| b.close(at(2), CallbackId(2), "202", Outcome::Succeeded, ""));
        store.put(done.expect("closed")).expect("put");
        let groups = [(
            "support".to_string(),
            vec!["202".to_string()],
            Limits::default(),
        )];
        let again = CallbackBox::load(&store, &groups).expect("load");
        assert_eq!(again.open().map(|c| c.id.0).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(
            again.created_by_key("201", "k2"),
            Some(CallbackId(2)),
            "a done item's key is kept"
        );
    }
}
