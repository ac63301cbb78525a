//! Routing: the ACD. Owns the directory of groups and queues (from the config)
//! and the waiting lines of the queues, and decides, as a pure synchronous
//! function over in-memory state, which agent a queue call is offered to next
//! (DESIGN flow 1):
//!
//! 1. the agent who answered this caller most recently, among the agents who
//!    serve the queue, if available;
//! 2. else that agent's colleagues (the queue's groups the agent is in), by
//!    priority, the longest idle first among equals;
//! 3. else the longest-idle available agent of the queue's groups;
//! 4. else nobody: the caller waits, in arrival order.
//!
//! Agents already tried for the call are skipped. Waiting callers are served in
//! arrival order: a caller may take an agent only if every caller ahead of it in
//! the line has already tried that agent (so a declined agent does not block the
//! line). The decision only proposes:
//! the caller reserves the agent with [`crate::presence::Presence::reserve`],
//! which is atomic, and decides again if someone else was faster.
//!
//! [`dialplan`] says where a dialled number goes (test number, feature code,
//! queue, extension).

pub mod dialplan;
pub mod stats;

use crate::clock::UnixMillis;
use crate::presence::State;
use crate::sip::CallId;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Index of a group in the [`Directory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(pub usize);

/// Index of a queue in the [`Directory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueId(pub usize);

/// A group's members, best priority (lowest number) first.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub members: Vec<(String, u32)>,
}

/// A group callers dial directly: its members ring (no ACD, no waiting line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingGroup {
    pub number: String,
    pub group: GroupId,
    /// One member after another (by priority), or all at once.
    pub in_order: bool,
    /// How long each member (in order) or the whole group rings.
    pub ring: Duration,
    /// Where a call nobody answered goes (a number); `None`: 480.
    pub then: Option<String>,
}

/// What happens to a caller who waited `max_wait` for nothing.
#[derive(Debug, Clone)]
pub enum Overflow {
    /// Play this, then hang up.
    Announce(Arc<crate::media::prompt::Prompt>),
    /// Go on waiting in another queue.
    Queue(QueueId),
    /// Ring an extension (no ACD rules; it is rung even if busy).
    Extension(String),
    /// Offer a call-back: a voice message and/or "press 1".
    Callback(Arc<CallbackOffer>),
}

/// How a queue offers a call-back to a caller who waited too long.
#[derive(Debug, Clone)]
pub struct CallbackOffer {
    /// Whom the call-back is for.
    pub group: String,
    /// Played first ("leave a message after the tone, or press 1").
    pub prompt: Arc<crate::media::prompt::Prompt>,
    /// Played after "1" or at the message limit, before hanging up.
    pub thanks: Arc<crate::media::prompt::Prompt>,
    /// The longest voice message.
    pub max_message: Duration,
}

/// A queue as the ACD runs it.
#[derive(Debug, Clone)]
pub struct Queue {
    pub number: String,
    pub groups: Vec<GroupId>,
    /// How long one agent rings before the next is tried.
    pub ring: Duration,
    pub max_wait: Duration,
    pub wrap_up: Duration,
    /// Played once when a caller enters, before the music.
    pub greeting: Option<Arc<crate::media::prompt::Prompt>>,
    pub music: Arc<crate::media::prompt::Prompt>,
    pub overflow: Overflow,
    /// Played when overflow to a queue or extension fails too.
    pub sorry: Arc<crate::media::prompt::Prompt>,
    /// Callers answered within this count as served in time (service level).
    pub service_level: Duration,
}

/// Why an agent was chosen (logged, and asserted by tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Answered this caller last.
    Sticky,
    /// A colleague of that agent, by priority.
    Colleague,
    /// Idle the longest among the queue's agents.
    LongestIdle,
}

/// The groups and queues, and who is in which group.
#[derive(Debug, Default)]
pub struct Directory {
    pub groups: Vec<Group>,
    pub queues: Vec<Queue>,
    by_number: HashMap<String, QueueId>,
    /// Ring groups by their number.
    ring_groups: HashMap<String, RingGroup>,
    /// Every agent's groups with its priority there.
    memberships: HashMap<String, Vec<(GroupId, u32)>>,
    /// One waiting line per queue.
    lines: Vec<Line>,
    /// Today's statistics per queue.
    days: Vec<Mutex<stats::QueueDay>>,
    tickets: AtomicU64,
}

/// A queue's waiting callers by arrival ticket: the one record of who waits.
#[derive(Debug, Default)]
struct Line(Mutex<BTreeMap<u64, Waiter>>);

/// One waiting caller.
#[derive(Debug)]
struct Waiter {
    /// The shard that owns the call, and the call.
    shard: usize,
    call: CallId,
    /// The agents this caller has already tried.
    tried: Vec<String>,
    /// When the caller entered this queue.
    since: UnixMillis,
}

/// A routing failure (local: the directory was asked about something it lacks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("no group {0}")]
    UnknownGroup(String),
    #[error("no queue or extension {0}")]
    UnknownTarget(String),
    #[error("sound {path}: {message}")]
    Sound { path: String, message: String },
}

impl Directory {
    /// `groups`: name and members (extension, priority). Queues are added after.
    pub fn new(groups: Vec<Group>) -> Directory {
        let mut memberships: HashMap<String, Vec<(GroupId, u32)>> = HashMap::new();
        let groups: Vec<Group> = groups
            .into_iter()
            .enumerate()
            .map(|(i, mut g)| {
                g.members.sort_by_key(|(_, prio)| *prio);
                for (ext, prio) in &g.members {
                    memberships
                        .entry(ext.clone())
                        .or_default()
                        .push((GroupId(i), *prio));
                }
                g
            })
            .collect();
        Directory {
            groups,
            memberships,
            ..Directory::default()
        }
    }

    /// The groups and queues of a (validated) configuration, with their sounds
    /// loaded.
    pub fn from_config(config: &crate::config::Config) -> Result<Directory, RoutingError> {
        use crate::media::prompt::Prompt;
        let mut d = Directory::new(
            config
                .groups
                .iter()
                .map(|g| Group {
                    name: g.name.get_ref().clone(),
                    members: g
                        .members
                        .iter()
                        .map(|m| (m.extension.get_ref().clone(), m.priority))
                        .collect(),
                })
                .collect(),
        );
        let sound = |path: &str, built_in: fn() -> Prompt| -> Result<Arc<Prompt>, RoutingError> {
            if path.is_empty() {
                return Ok(Arc::new(built_in()));
            }
            let failed = |message: String| RoutingError::Sound {
                path: path.to_string(),
                message,
            };
            let bytes = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
            Prompt::from_wav(&bytes)
                .map(Arc::new)
                .map_err(|e| failed(e.to_string()))
        };
        let sorry = Arc::new(Prompt::sorry());
        for q in &config.queues {
            let groups = q
                .groups
                .get_ref()
                .iter()
                .map(|g| d.group_id(g))
                .collect::<Result<_, _>>()?;
            d.add_queue(Queue {
                number: q.number.get_ref().clone(),
                groups,
                ring: Duration::from_secs(q.ring_secs),
                max_wait: Duration::from_secs(q.max_wait_secs),
                wrap_up: Duration::from_secs(q.wrap_up_secs),
                greeting: match q.announcement.get_ref().as_str() {
                    "" => None,
                    path => Some(sound(path, Prompt::confirm)?),
                },
                music: sound(q.music.get_ref(), Prompt::hold_music)?,
                // Resolved below, once every queue has its id.
                overflow: Overflow::Announce(sound(
                    q.overflow_announcement.get_ref(),
                    Prompt::sorry,
                )?),
                sorry: Arc::clone(&sorry),
                service_level: Duration::from_secs(q.service_level_secs),
            });
        }
        for g in config
            .groups
            .iter()
            .filter(|g| !g.number.get_ref().is_empty())
        {
            let group = d.group_id(g.name.get_ref())?;
            let then = g.then.get_ref();
            d.add_ring_group(RingGroup {
                number: g.number.get_ref().clone(),
                group,
                in_order: g.ring == crate::config::RingOrder::Order,
                ring: Duration::from_secs(g.ring_secs),
                then: (!then.is_empty()).then(|| then.clone()),
            });
        }
        for (i, q) in config.queues.iter().enumerate() {
            if q.overflow_callback {
                let group = q.callback_group_name();
                d.queues[i].overflow = Overflow::Callback(Arc::new(CallbackOffer {
                    group,
                    prompt: sound(q.callback_prompt.get_ref(), Prompt::leave_message)?,
                    thanks: sound(q.callback_thanks.get_ref(), Prompt::confirm)?,
                    max_message: Duration::from_secs(q.callback_message_secs),
                }));
                continue;
            }
            let to = q.overflow_to.get_ref();
            if to.is_empty() {
                continue;
            }
            let overflow = match d.queue_by_number(to) {
                Some(id) => Overflow::Queue(id),
                None if config.users.iter().any(|u| u.extension.get_ref() == to) => {
                    Overflow::Extension(to.clone())
                }
                None => return Err(RoutingError::UnknownTarget(to.clone())),
            };
            d.queues[i].overflow = overflow;
        }
        Ok(d)
    }

    pub fn group_id(&self, name: &str) -> Result<GroupId, RoutingError> {
        self.groups
            .iter()
            .position(|g| g.name == name)
            .map(GroupId)
            .ok_or_else(|| RoutingError::UnknownGroup(name.to_string()))
    }

    pub fn add_queue(&mut self, queue: Queue) -> QueueId {
        let id = QueueId(self.queues.len());
        self.by_number.insert(queue.number.clone(), id);
        self.queues.push(queue);
        self.lines.push(Line::default());
        self.days.push(Mutex::default());
        id
    }

    pub fn add_ring_group(&mut self, ring_group: RingGroup) {
        self.ring_groups
            .insert(ring_group.number.clone(), ring_group);
    }

    /// The ring group callers reach at `number`.
    pub fn ring_group(&self, number: &str) -> Option<&RingGroup> {
        self.ring_groups.get(number)
    }

    /// The members of group `id`, in priority order.
    pub fn members(&self, id: GroupId) -> Vec<String> {
        self.groups
            .get(id.0)
            .map(|g| g.members.iter().map(|(ext, _)| ext.clone()).collect())
            .unwrap_or_default()
    }

    pub fn queue_by_number(&self, number: &str) -> Option<QueueId> {
        self.by_number.get(number).copied()
    }

    pub fn queue(&self, id: QueueId) -> &Queue {
        &self.queues[id.0]
    }

    /// The users who share a group with `user` (who may pick up each
    /// other's ringing calls), `user` left out, each once.
    pub fn colleagues(&self, user: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (g, _) in self.memberships.get(user).into_iter().flatten() {
            for (ext, _) in &self.groups[g.0].members {
                if ext != user && !out.contains(ext) {
                    out.push(ext.clone());
                }
            }
        }
        out
    }

    /// Whether `agent` answers calls of `queue` (is in one of its groups).
    pub fn serves(&self, agent: &str, queue: QueueId) -> bool {
        let groups = &self.queues[queue.0].groups;
        self.memberships
            .get(agent)
            .is_some_and(|m| m.iter().any(|(g, _)| groups.contains(g)))
    }

    /// The next agent to offer a call of `queue` to.
    ///
    /// `recent` lists the agents who answered this caller, most recent first;
    /// `skip` says which agents are out for this call (already tried);
    /// `state` reads the presence map: the state and since when.
    pub fn choose<'a>(
        &'a self,
        queue: QueueId,
        recent: &[String],
        skip: impl Fn(&str) -> bool,
        state: impl Fn(&str) -> Option<(State, UnixMillis)>,
    ) -> Option<(&'a str, Reason)> {
        let q = &self.queues[queue.0];
        let idle_since = |ext: &str| match state(ext) {
            Some((State::Available, since)) if !skip(ext) => Some(since),
            _ => None,
        };
        if let Some(last) = recent.iter().find(|a| self.serves(a, queue)) {
            let (ext, memberships) = self.memberships.get_key_value(last.as_str())?;
            if idle_since(ext).is_some() {
                return Some((ext.as_str(), Reason::Sticky));
            }
            // Colleagues in the queue's groups the agent is in: priority, then idle.
            let mut best: Option<(u32, UnixMillis, &'a str)> = None;
            for (g, _) in memberships.iter().filter(|(g, _)| q.groups.contains(g)) {
                for (member, prio) in &self.groups[g.0].members {
                    if best.is_some_and(|(p, _, _)| *prio > p) {
                        break; // members are sorted by priority
                    }
                    if let Some(since) = idle_since(member) {
                        if best.is_none_or(|b| (*prio, since) < (b.0, b.1)) {
                            best = Some((*prio, since, member.as_str()));
                        }
                    }
                }
            }
            if let Some((_, _, ext)) = best {
                return Some((ext, Reason::Colleague));
            }
        }
        q.groups
            .iter()
            .flat_map(|g| self.groups[g.0].members.iter())
            .filter_map(|(m, _)| idle_since(m).map(|since| (since, m.as_str())))
            .min()
            .map(|(_, m)| (m, Reason::LongestIdle))
    }

    /// A new place at the end of every line (arrival order across queues).
    pub fn new_ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::Relaxed)
    }

    /// Puts call `call` of shard `shard` in `queue`'s waiting line at `ticket`
    /// (a call that comes back after an unanswered offer keeps its place), with
    /// the agents it has tried and when it entered the queue.
    pub fn wait(
        &self,
        queue: QueueId,
        ticket: u64,
        waiter: (&[String], usize, &CallId, UnixMillis),
    ) {
        let (tried, shard, call, since) = waiter;
        if let Ok(mut line) = self.lines[queue.0].0.lock() {
            line.insert(
                ticket,
                Waiter {
                    shard,
                    call: call.clone(),
                    tried: tried.to_vec(),
                    since,
                },
            );
        }
    }

    /// The calls of shard `shard` waiting in any line.
    pub fn waiting_on(&self, shard: usize) -> Vec<CallId> {
        let mut calls = Vec::new();
        for line in &self.lines {
            if let Ok(line) = line.0.lock() {
                calls.extend(
                    line.values()
                        .filter(|w| w.shard == shard)
                        .map(|w| w.call.clone()),
                );
            }
        }
        calls
    }

    /// Whether shard `shard` has a call waiting in any line.
    pub fn has_waiting(&self, shard: usize) -> bool {
        self.lines.iter().any(|line| {
            line.0
                .lock()
                .is_ok_and(|l| l.values().any(|w| w.shard == shard))
        })
    }

    /// Takes a call out of the waiting line (offered to an agent, or gone).
    pub fn leave(&self, queue: QueueId, ticket: u64) {
        if let Ok(mut line) = self.lines[queue.0].0.lock() {
            line.remove(&ticket);
        }
    }

    /// The agents a waiting call may take, given the callers ahead of it: `None`
    /// if one of them has tried nobody yet (it comes first for any agent), else
    /// the agents every one of them has tried (`Some(vec![])` when first in line).
    pub fn passable(&self, queue: QueueId, ticket: u64) -> Option<Vec<String>> {
        let line = self.lines[queue.0].0.lock().ok()?;
        let mut ahead = line.range(..ticket).map(|(_, w)| &w.tried);
        let Some(first) = ahead.next() else {
            return Some(Vec::new());
        };
        let mut common = first.clone();
        for tried in ahead {
            common.retain(|a| tried.contains(a));
        }
        (!common.is_empty()).then_some(common)
    }

    /// Callers waiting in each queue (for boards and tests).
    pub fn waiting(&self, queue: QueueId) -> usize {
        self.lines[queue.0].0.lock().map(|l| l.len()).unwrap_or(0)
    }

    fn day(&self, queue: QueueId) -> std::sync::MutexGuard<'_, stats::QueueDay> {
        self.days[queue.0].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An agent answered a caller of `queue` who had waited `waited`.
    pub fn answered(&self, queue: QueueId, now: UnixMillis, waited: Duration) {
        let sl = self.queues[queue.0].service_level;
        self.day(queue).answered(now, waited, sl);
    }

    /// A caller of `queue` hung up before an agent answered.
    pub fn abandoned(&self, queue: QueueId, now: UnixMillis, waited: Duration) {
        self.day(queue).abandoned(now, waited);
    }

    /// An answered call of `queue` ended after `talked`.
    pub fn talked(&self, queue: QueueId, now: UnixMillis, talked: Duration) {
        self.day(queue).talked(now, talked);
    }

    /// Every queue's statistics as of `now` (the wallboard).
    pub fn stats(&self, now: UnixMillis) -> Vec<stats::QueueStats> {
        self.queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (waiting, oldest) = self.lines[i]
                    .0
                    .lock()
                    .map(|l| (l.len(), l.values().map(|w| w.since).min()))
                    .unwrap_or((0, None));
                let longest = oldest.map_or(0, |t| now.0.saturating_sub(t.0));
                self.day(QueueId(i))
                    .stats(now, &q.number, waiting, longest, q.service_level)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::prompt::Prompt;

    fn directory() -> (Directory, QueueId) {
        let mut d = Directory::new(vec![
            Group {
                name: "support".into(),
                members: vec![("201".into(), 2), ("202".into(), 1), ("203".into(), 2)],
            },
            Group {
                name: "sales".into(),
                members: vec![("301".into(), 1), ("201".into(), 1)],
            },
            Group {
                name: "other".into(),
                members: vec![("401".into(), 1)],
            },
        ]);
        let music = Arc::new(Prompt::confirm());
        let q = d.add_queue(Queue {
            number: "500".into(),
            groups: vec![GroupId(0), GroupId(1)],
            ring: Duration::from_secs(15),
            max_wait: Duration::from_secs(60),
            wrap_up: Duration::ZERO,
            greeting: None,
            music: Arc::clone(&music),
            overflow: Overflow::Announce(Arc::clone(&music)),
            sorry: music,
            service_level: Duration::from_secs(20),
        });
        (d, q)
    }

    /// Presence from a table: (extension, state, idle since).
    fn states<'a>(
        t: &'a [(&'a str, State, u64)],
    ) -> impl Fn(&str) -> Option<(State, UnixMillis)> + 'a {
        move |ext| {
            t.iter()
                .find(|(e, _, _)| *e == ext)
                .map(|(_, s, since)| (*s, UnixMillis(*since)))
        }
    }

    const ALL_FREE: &[(&str, State, u64)] = &[
        ("201", State::Available, 50),
        ("202", State::Available, 40),
        ("203", State::Available, 30),
        ("301", State::Available, 20),
        ("401", State::Available, 10),
    ];

    #[test]
    fn colleagues_are_the_members_of_a_users_groups() {
        let (d, _) = directory();
        let table: &[(&str, &[&str])] = &[
            ("201", &["202", "203", "301"]),
            ("202", &["201", "203"]),
            ("401", &[]),
            ("999", &[]),
        ];
        for (user, want) in table {
            assert_eq!(d.colleagues(user), *want, "{user}");
        }
    }

    #[test]
    fn the_last_agent_who_serves_the_queue_gets_the_caller_back() {
        let (d, q) = directory();
        let recent = ["401".to_string(), "203".to_string()];
        assert_eq!(
            d.choose(q, &recent, |_| false, states(ALL_FREE)),
            Some(("203", Reason::Sticky)),
            "401 answered last but does not serve queue 500"
        );
    }

    #[test]
    fn colleagues_of_a_busy_last_agent_by_priority_then_idle_time() {
        let (d, q) = directory();
        let mut t = ALL_FREE.to_vec();
        t[2].1 = State::OnCall; // 203 busy
        let recent = ["203".to_string()];
        assert_eq!(
            d.choose(q, &recent, |_| false, states(&t)),
            Some(("202", Reason::Colleague)),
            "202 has priority 1 in support"
        );
        t[1].1 = State::Away;
        assert_eq!(
            d.choose(q, &recent, |_| false, states(&t)),
            Some(("201", Reason::Colleague)),
            "then 201 (priority 2); 301 is not 203's colleague"
        );
        assert_eq!(
            d.choose(q, &recent, |e| e == "201", states(&t)),
            Some(("301", Reason::LongestIdle)),
            "a skipped colleague falls through to the whole queue"
        );
    }

    #[test]
    fn a_new_caller_gets_the_longest_idle_agent_of_the_queue() {
        let (d, q) = directory();
        assert_eq!(
            d.choose(q, &[], |_| false, states(ALL_FREE)),
            Some(("301", Reason::LongestIdle)),
            "401 idles longer but is not in the queue's groups"
        );
        let busy: Vec<_> = ALL_FREE
            .iter()
            .map(|(e, _, s)| (*e, State::Ringing, *s))
            .collect();
        assert_eq!(d.choose(q, &[], |_| false, states(&busy)), None);
    }

    #[test]
    fn the_waiting_line_serves_in_arrival_order_and_keeps_a_returning_place() {
        let (d, q) = directory();
        let (ca, cb) = (CallId::from("a"), CallId::from("b"));
        let (a, b) = (d.new_ticket(), d.new_ticket());
        d.wait(q, a, (&[], 0, &ca, UnixMillis(1)));
        d.wait(q, b, (&[], 1, &cb, UnixMillis(1)));
        assert_eq!(d.passable(q, a), Some(vec![]), "first in line");
        assert_eq!(d.passable(q, b), None, "behind a caller who tried nobody");
        assert_eq!(
            (d.waiting_on(0), d.waiting_on(1)),
            (vec![ca.clone()], vec![cb])
        );
        d.leave(q, a); // offered to 202
        assert!(!d.has_waiting(0));
        assert_eq!(d.passable(q, b), Some(vec![]));
        d.wait(q, a, (&["202".to_string()], 0, &ca, UnixMillis(1))); // 202 declined: back in front
        assert_eq!(
            d.passable(q, b),
            Some(vec!["202".to_string()]),
            "b may take only what a already tried"
        );
        assert_eq!(d.waiting(q), 2);
    }
}
