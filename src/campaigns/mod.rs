//! Outbound campaigns, agent first (the desk serves them over HTTP): a
//! supervisor loads a customer list into a campaign of one group; while
//! enough of the group's agents are idle and no inbound caller of the group
//! waits, the dialer takes one customer at a time for one idle agent. This
//! module holds the rules and the lists:
//!
//! - campaigns (their settings, and ready → running ⇄ paused → stopped);
//! - their contacts, in list order, each waiting (from a time on), in an
//!   attempt, or done with an outcome; retries per outcome with a delay and a
//!   maximum; calling hours read in each customer's own time zone;
//! - the do-not-call list, checked at import and again when a contact is
//!   taken for dialling;
//! - the monitor's decision: how many attempts to start now, or why none;
//! - progress: counts per outcome, attempts per hour, connect and abandon
//!   rates.
//!
//! What it owns: every campaign and contact in memory (loaded from the store
//! at start; every change is returned for the caller to make durable before
//! it acts on it or answers anyone). Sans-IO: every operation takes the wall
//! clock `now`. Attempts still open when the PBX stopped are closed as
//! `interrupted` at load, so nobody is dialled twice for one attempt.

pub mod hours;
pub mod import;

use crate::clock::UnixMillis;
use crate::store::{Record, Store, StoreError};
use hours::{zone, Hours};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

macro_rules! id {
    ($name:ident, $what:literal) => {
        #[doc = $what]
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
        pub struct $name(pub u64);
    };
}

id!(CampaignId, "A campaign's number, in creation order.");
id!(
    ContactId,
    "A contact's number, in list order across campaigns."
);

/// When to try a contact again after an outcome, and how often at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Retry {
    pub after_secs: u64,
    /// Most tries in all (the first one included).
    pub max_tries: u32,
}

/// The retry rules of a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetryRules {
    pub busy: Retry,
    pub no_answer: Retry,
    /// Failed calls, and attempts the PBX's stop interrupted.
    pub failed: Retry,
}

impl Default for RetryRules {
    fn default() -> Self {
        RetryRules {
            busy: Retry {
                after_secs: 300,
                max_tries: 3,
            },
            no_answer: Retry {
                after_secs: 1800,
                max_tries: 3,
            },
            failed: Retry {
                after_secs: 600,
                max_tries: 2,
            },
        }
    }
}

/// What happens when the agent neither confirms nor skips in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The contact goes back to the list; the agent is set back.
    #[default]
    Skip,
    /// The customer is dialled anyway.
    Dial,
}

fn half() -> f64 {
    0.5
}
fn one() -> u32 {
    1
}
fn nine() -> String {
    "09:00".into()
}
fn eight_pm() -> String {
    "20:00".into()
}
fn utc() -> String {
    "UTC".into()
}
fn fifteen() -> u32 {
    15
}
fn thirty() -> u32 {
    30
}

/// What a supervisor sets for a campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub name: String,
    /// The group whose agents serve it.
    pub group: String,
    /// The trunk customers are dialled through (its numbering reads the list).
    pub trunk: String,
    /// The caller ID customers see ("": the trunk's rules).
    #[serde(default)]
    pub caller_id: String,
    /// Attempts start while available agents / logged-in agents is at least this.
    #[serde(default = "half")]
    pub idle_ratio: f64,
    /// Most attempts at once.
    #[serde(default = "one")]
    pub max_attempts: u32,
    /// Calling hours, local to each customer ("HH:MM").
    #[serde(default = "nine")]
    pub hours_from: String,
    #[serde(default = "eight_pm")]
    pub hours_to: String,
    /// The time zone of customers whose row names none.
    #[serde(default = "utc")]
    pub time_zone: String,
    #[serde(default)]
    pub retry: RetryRules,
    /// How long the agent has to confirm or skip.
    #[serde(default = "fifteen")]
    pub confirm_secs: u32,
    #[serde(default)]
    pub on_confirm_timeout: OnTimeout,
    /// How long the customer's phone rings before "no answer" (at least 15 s).
    #[serde(default = "thirty")]
    pub ring_secs: u32,
}

/// What a new campaign gets for the settings its creator leaves out
/// (`[campaigns]` in the configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    pub idle_ratio: f64,
    pub max_attempts: u32,
    pub hours_from: String,
    pub hours_to: String,
    pub time_zone: String,
    pub retry: RetryRules,
    pub confirm_secs: u32,
    pub on_confirm_timeout: OnTimeout,
    pub ring_secs: u32,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            idle_ratio: half(),
            max_attempts: one(),
            hours_from: nine(),
            hours_to: eight_pm(),
            time_zone: utc(),
            retry: RetryRules::default(),
            confirm_secs: fifteen(),
            on_confirm_timeout: OnTimeout::default(),
            ring_secs: thirty(),
        }
    }
}

impl Defaults {
    /// The settings `given` (a JSON object) names, these defaults for the
    /// rest.
    pub fn settings(&self, given: serde_json::Value) -> Result<Settings, CampaignError> {
        let serde_json::Value::Object(mut given) = given else {
            return Err(CampaignError::Invalid(
                "the settings are a JSON object".into(),
            ));
        };
        if let Ok(serde_json::Value::Object(defaults)) = serde_json::to_value(self) {
            for (k, v) in defaults {
                given.entry(k).or_insert(v);
            }
        }
        serde_json::from_value(serde_json::Value::Object(given))
            .map_err(|e| CampaignError::Invalid(e.to_string()))
    }

    /// The defaults' own checks (as a campaign's).
    pub fn check(&self) -> Result<(), CampaignError> {
        let mut probe = serde_json::Map::new();
        for k in ["name", "group", "trunk"] {
            probe.insert(k.into(), "defaults".into());
        }
        check(&self.settings(serde_json::Value::Object(probe))?)
    }
}

/// Where a campaign stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Created, not started yet.
    Ready,
    Running,
    Paused,
    /// For good: nothing more is dialled.
    Stopped,
}

/// What a supervisor does to a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Stop,
}

/// A campaign as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Campaign {
    pub id: CampaignId,
    pub settings: Settings,
    pub state: State,
    pub created_ms: u64,
}

impl Record for Campaign {
    const TREE: &'static str = "campaigns.v1";
    fn key(&self) -> Vec<u8> {
        self.id.0.to_be_bytes().to_vec()
    }
}

/// How one attempt at a contact ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Connected,
    Busy,
    NoAnswer,
    Failed,
    /// The agent chose not to call this customer.
    Skipped,
    /// The agent neither confirmed nor skipped in time.
    AgentTimeout,
    /// The customer was connected and the agent's leg ended first (the
    /// customer heard who called and where to call back); counts as reached.
    AgentDropped,
    /// On the do-not-call list when it came to dialling.
    DoNotCall,
    /// The PBX stopped during the attempt.
    Interrupted,
}

impl Outcome {
    /// Whether the customer's phone was (or may have been) dialled: it
    /// counts as a try.
    fn dialled(self) -> bool {
        !matches!(
            self,
            Outcome::Skipped | Outcome::AgentTimeout | Outcome::DoNotCall
        )
    }
}

/// What an agent-first attempt calls back: a campaign's contact or a queue
/// caller's call-back (each is in one attempt at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptKey {
    Contact {
        campaign: CampaignId,
        contact: ContactId,
    },
    /// A queue whose call-backs are served automatically.
    Callback(crate::callbacks::CallbackId),
}

/// What an attempt's call tells the desk, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The agent answered: the record goes to their desktop, the time to
    /// confirm runs.
    AgentAnswered,
    /// The customer's number went to the trunk.
    CustomerDialled,
    /// The customer answered, with the agent on the line.
    CustomerAnswered,
    /// A customer answered when no agent was on the line any more.
    Abandoned,
    /// The attempt is over.
    Ended(Outcome),
}

/// A step of attempt `key`, whose call is `call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub key: AttemptKey,
    pub call: crate::sip::CallId,
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ContactStatus {
    /// To be tried, not before this time.
    Waiting {
        not_before_ms: u64,
    },
    /// Taken for an attempt with this agent.
    InAttempt {
        agent: String,
        since_ms: u64,
    },
    Done {
        outcome: Outcome,
    },
}

/// One customer of a campaign's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Contact {
    pub id: ContactId,
    pub campaign: CampaignId,
    /// Its line in the imported file.
    pub line: u64,
    /// E.164.
    pub number: String,
    pub name: String,
    pub time_zone: Option<String>,
    pub fields: BTreeMap<String, String>,
    pub status: ContactStatus,
    /// Tries so far (attempts that dialled the customer).
    pub tries: u32,
    /// The latest outcome, and when.
    pub last: Option<(Outcome, u64)>,
}

impl Record for Contact {
    const TREE: &'static str = "campaign_contacts.v1";
    /// By campaign, then list order.
    fn key(&self) -> Vec<u8> {
        let mut k = self.campaign.0.to_be_bytes().to_vec();
        k.extend_from_slice(&self.id.0.to_be_bytes());
        k
    }
}

/// A number nobody may call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoNotCall {
    pub number: String,
    pub added_ms: u64,
}

impl Record for DoNotCall {
    const TREE: &'static str = "do_not_call.v1";
    fn key(&self) -> Vec<u8> {
        self.number.as_bytes().to_vec()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CampaignError {
    #[error("no campaign {0}")]
    NotFound(u64),
    #[error("no contact {0} in this campaign")]
    NoContact(u64),
    #[error("{0}")]
    Invalid(String),
    #[error("campaign {id} is {state:?}: it cannot {action}")]
    State {
        id: u64,
        state: State,
        action: &'static str,
    },
    #[error("contact {0} is in no attempt")]
    NotInAttempt(u64),
}

/// What one import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Imported {
    pub imported: usize,
    /// Numbers the campaign already had (a re-run of the same file).
    pub duplicates: usize,
    /// Numbers on the do-not-call list: left out.
    pub do_not_call: usize,
}

/// A campaign's group and trunk as the presence map, the queues and the
/// trunk's registration see them now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditions {
    pub available: usize,
    pub logged_in: usize,
    /// Inbound callers of the group waiting in a queue.
    pub inbound_waiting: usize,
    /// The campaign's trunk can place calls (its registration is not down).
    pub trunk_up: bool,
}

/// Why a campaign starts no attempt now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Idle {
    NotRunning,
    NoAgents,
    /// The campaign's trunk is down (its registration failed).
    TrunkDown,
    /// Inbound callers first.
    InboundWaiting,
    BelowThreshold {
        ratio: f64,
    },
    /// `max_attempts` are under way.
    AtLimit,
    /// Contacts wait, but outside their calling hours until then.
    OutsideHours {
        until_ms: u64,
    },
    /// Contacts wait for their retry time (the earliest one).
    RetryLater {
        at_ms: u64,
    },
    /// Nobody is left to call.
    Finished,
}

/// The monitor's decision for a campaign.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Start(usize),
    Idle(Idle),
}

/// A campaign's progress, for the wallboard and the API.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Progress {
    pub id: CampaignId,
    pub name: String,
    pub group: String,
    pub state: State,
    pub contacts: usize,
    /// Waiting to be tried (now or later).
    pub remaining: usize,
    pub in_attempt: usize,
    /// Done contacts, by outcome.
    pub outcomes: BTreeMap<String, usize>,
    pub attempts_last_hour: usize,
    /// Reached (connected, agent dropped) / contacts dialled and done with, 0..1.
    pub connect_rate: f64,
    /// Customers who answered with no agent on the line (agent first makes
    /// this 0; counted anyway).
    pub abandoned: u64,
    pub abandon_rate: f64,
}

/// One campaign with its contacts.
#[derive(Debug)]
struct Live {
    campaign: Campaign,
    hours: Hours,
    zone: TimeZone,
    contacts: BTreeMap<ContactId, Contact>,
    /// The contacts not done yet (waiting or in an attempt), in list order:
    /// what the dialer looks at.
    open: BTreeSet<ContactId>,
    /// The contacts in an attempt now.
    attempting: HashSet<ContactId>,
    /// The done contacts' outcomes, and how many of each (the progress
    /// without a look at the whole list).
    done: HashMap<ContactId, Outcome>,
    outcomes: HashMap<Outcome, usize>,
    /// When each waiting contact may be dialled next, as last computed (a
    /// contact whose time has not come is not looked at again until then).
    due: HashMap<ContactId, u64>,
    numbers: HashSet<String>,
    /// When each attempt of the last hour started.
    started: VecDeque<u64>,
    abandoned: u64,
}

const HOUR_MS: u64 = 3_600_000;

impl Live {
    fn new(campaign: Campaign) -> Result<Live, CampaignError> {
        let s = &campaign.settings;
        let hours = Hours::parse(&s.hours_from, &s.hours_to).map_err(CampaignError::Invalid)?;
        let zone = zone(&s.time_zone).map_err(CampaignError::Invalid)?;
        Ok(Live {
            campaign,
            hours,
            zone,
            contacts: BTreeMap::new(),
            open: BTreeSet::new(),
            attempting: HashSet::new(),
            done: HashMap::new(),
            outcomes: HashMap::new(),
            due: HashMap::new(),
            numbers: HashSet::new(),
            started: VecDeque::new(),
            abandoned: 0,
        })
    }

    fn add(&mut self, c: Contact) {
        self.numbers.insert(c.number.clone());
        let id = c.id;
        self.contacts.insert(id, c);
        self.touched(id);
    }

    /// Contact `id`'s status changed (or it is gone): its place among the
    /// open ones, and its due time to compute again.
    fn touched(&mut self, id: ContactId) {
        self.due.remove(&id);
        let status = self.contacts.get(&id).map(|c| &c.status);
        match status {
            None | Some(ContactStatus::Done { .. }) => self.open.remove(&id),
            Some(_) => self.open.insert(id),
        };
        match status {
            Some(ContactStatus::InAttempt { .. }) => self.attempting.insert(id),
            _ => self.attempting.remove(&id),
        };
        let outcome = match status {
            Some(ContactStatus::Done { outcome }) => Some(*outcome),
            _ => None,
        };
        if let Some(was) = self.done.remove(&id) {
            if let Some(n) = self.outcomes.get_mut(&was) {
                *n = n.saturating_sub(1);
            }
        }
        if let Some(o) = outcome {
            self.done.insert(id, o);
            *self.outcomes.entry(o).or_default() += 1;
        }
    }

    /// The open contacts with what [`due_at`] needs.
    fn view(
        &mut self,
    ) -> (
        &BTreeSet<ContactId>,
        &mut BTreeMap<ContactId, Contact>,
        Due<'_>,
    ) {
        let due = Due {
            hours: &self.hours,
            zone: &self.zone,
            cache: &mut self.due,
        };
        (&self.open, &mut self.contacts, due)
    }
}

/// A campaign's calling hours and its cache of due times.
struct Due<'a> {
    hours: &'a Hours,
    zone: &'a TimeZone,
    cache: &'a mut HashMap<ContactId, u64>,
}

impl Due<'_> {
    /// When `c` may be dialled next: `now` when it is due now (the time
    /// zone arithmetic is done again only once a cached time has come).
    fn at(&mut self, c: &Contact, now: UnixMillis) -> Option<UnixMillis> {
        let ContactStatus::Waiting { not_before_ms } = c.status else {
            return None;
        };
        if let Some(at) = self.cache.get(&c.id).filter(|at| **at > now.0) {
            return Some(UnixMillis(*at));
        }
        let from = UnixMillis(not_before_ms.max(now.0));
        let zone = c.time_zone.as_deref().and_then(|z| zone(z).ok());
        let at = self
            .hours
            .next_open(from, zone.as_ref().unwrap_or(self.zone));
        self.cache.insert(c.id, at.0);
        Some(at)
    }
}

/// Every campaign, its contacts, and the do-not-call list.
#[derive(Debug, Default)]
pub struct Campaigns {
    live: BTreeMap<CampaignId, Live>,
    dnc: HashSet<String>,
}

impl Campaigns {
    /// Loads everything stored; attempts that were open when the PBX stopped
    /// are closed as interrupted (returned, to be stored).
    pub fn load(store: &Store, now: UnixMillis) -> Result<(Campaigns, Vec<Contact>), StoreError> {
        let mut c = Campaigns::default();
        for campaign in store.all::<Campaign>()? {
            match Live::new(campaign) {
                Ok(l) => {
                    c.live.insert(l.campaign.id, l);
                }
                Err(e) => tracing::error!("a stored campaign is unusable: {e}"),
            }
        }
        for contact in store.all::<Contact>()? {
            if let Some(l) = c.live.get_mut(&contact.campaign) {
                l.add(contact);
            }
        }
        c.dnc = store
            .all::<DoNotCall>()?
            .into_iter()
            .map(|d| d.number)
            .collect();
        let open: Vec<(CampaignId, ContactId)> = c
            .live
            .values()
            .flat_map(|l| l.contacts.values())
            .filter(|k| matches!(k.status, ContactStatus::InAttempt { .. }))
            .map(|k| (k.campaign, k.id))
            .collect();
        let mut closed = Vec::new();
        for (campaign, contact) in open {
            if let Ok(k) = c.finish(now, campaign, contact, Outcome::Interrupted) {
                tracing::warn!(
                    campaign = campaign.0,
                    contact = contact.0,
                    "campaign attempt interrupted by the PBX's stop"
                );
                closed.push(k);
            }
        }
        Ok((c, closed))
    }

    /// A new campaign (checked: hours, time zone, limits).
    pub fn create(
        &mut self,
        now: UnixMillis,
        id: CampaignId,
        settings: Settings,
    ) -> Result<Campaign, CampaignError> {
        check(&settings)?;
        let campaign = Campaign {
            id,
            settings,
            state: State::Ready,
            created_ms: now.0,
        };
        self.live.insert(id, Live::new(campaign.clone())?);
        Ok(campaign)
    }

    pub fn get(&self, id: CampaignId) -> Option<&Campaign> {
        self.live.get(&id).map(|l| &l.campaign)
    }

    pub fn all(&self) -> impl Iterator<Item = &Campaign> {
        self.live.values().map(|l| &l.campaign)
    }

    pub fn contact(&self, id: CampaignId, contact: ContactId) -> Option<&Contact> {
        self.live.get(&id)?.contacts.get(&contact)
    }

    /// Campaign `id`'s contacts, in list order.
    pub fn contacts(&self, id: CampaignId) -> Option<impl Iterator<Item = &Contact>> {
        Some(self.live.get(&id)?.contacts.values())
    }

    /// Undoes a [`create`](Self::create) the store refused.
    pub fn forget(&mut self, id: CampaignId) {
        self.live.remove(&id);
    }

    /// Undoes an [`import`](Self::import) the store refused.
    pub fn unload(&mut self, id: CampaignId, added: &[Contact]) {
        if let Some(l) = self.live.get_mut(&id) {
            for c in added {
                l.contacts.remove(&c.id);
                l.numbers.remove(&c.number);
                l.touched(c.id);
            }
        }
    }

    /// Undoes an [`act`](Self::act) the store refused.
    pub fn set_state(&mut self, id: CampaignId, state: State) {
        if let Some(l) = self.live.get_mut(&id) {
            l.campaign.state = state;
        }
    }

    /// Undoes a [`forbid`](Self::forbid) the store refused.
    pub fn allow(&mut self, added: &[DoNotCall]) {
        for d in added {
            self.dnc.remove(&d.number);
        }
    }

    fn live_mut(&mut self, id: CampaignId) -> Result<&mut Live, CampaignError> {
        self.live.get_mut(&id).ok_or(CampaignError::NotFound(id.0))
    }

    /// Start, pause, resume or stop.
    pub fn act(&mut self, id: CampaignId, action: Action) -> Result<Campaign, CampaignError> {
        let l = self.live_mut(id)?;
        let state = l.campaign.state;
        let next = match (action, state) {
            (Action::Start, State::Ready) | (Action::Resume, State::Paused) => State::Running,
            (Action::Pause, State::Running) => State::Paused,
            (Action::Stop, State::Ready | State::Running | State::Paused) => State::Stopped,
            _ => {
                let action = match action {
                    Action::Start => "start",
                    Action::Pause => "pause",
                    Action::Resume => "resume",
                    Action::Stop => "stop",
                };
                return Err(CampaignError::State {
                    id: id.0,
                    state,
                    action,
                });
            }
        };
        l.campaign.state = next;
        Ok(l.campaign.clone())
    }

    /// Adds the rows of a list: numbers the campaign already has, and numbers
    /// on the do-not-call list, are counted and left out. Returns the new
    /// contacts (to be stored).
    pub fn import(
        &mut self,
        id: CampaignId,
        rows: Vec<import::Row>,
        mut next_id: impl FnMut() -> ContactId,
    ) -> Result<(Vec<Contact>, Imported), CampaignError> {
        let dnc = &self.dnc;
        let l = self
            .live
            .get_mut(&id)
            .ok_or(CampaignError::NotFound(id.0))?;
        if l.campaign.state == State::Stopped {
            return Err(CampaignError::State {
                id: id.0,
                state: State::Stopped,
                action: "take a list",
            });
        }
        let (mut added, mut counts) = (Vec::new(), Imported::default());
        for row in rows {
            if dnc.contains(&row.number) {
                counts.do_not_call += 1;
                continue;
            }
            if l.numbers.contains(&row.number) {
                counts.duplicates += 1;
                continue;
            }
            let contact = Contact {
                id: next_id(),
                campaign: id,
                line: row.line,
                number: row.number,
                name: row.name,
                time_zone: row.time_zone,
                fields: row.fields,
                status: ContactStatus::Waiting { not_before_ms: 0 },
                tries: 0,
                last: None,
            };
            l.add(contact.clone());
            added.push(contact);
            counts.imported += 1;
        }
        Ok((added, counts))
    }

    /// Puts `numbers` (E.164) on the do-not-call list; returns the new ones.
    pub fn forbid(&mut self, now: UnixMillis, numbers: Vec<String>) -> Vec<DoNotCall> {
        numbers
            .into_iter()
            .filter(|n| self.dnc.insert(n.clone()))
            .map(|number| DoNotCall {
                number,
                added_ms: now.0,
            })
            .collect()
    }

    /// How many attempts campaign `id` should start now, or why none.
    pub fn decide(&mut self, id: CampaignId, view: Conditions, now: UnixMillis) -> Decision {
        let dnc = &self.dnc;
        let Some(l) = self.live.get_mut(&id) else {
            return Decision::Idle(Idle::NotRunning);
        };
        let s = &l.campaign.settings;
        if l.campaign.state != State::Running {
            return Decision::Idle(Idle::NotRunning);
        }
        if view.logged_in == 0 || view.available == 0 {
            return Decision::Idle(Idle::NoAgents);
        }
        if !view.trunk_up {
            return Decision::Idle(Idle::TrunkDown);
        }
        if view.inbound_waiting > 0 {
            return Decision::Idle(Idle::InboundWaiting);
        }
        let ratio = view.available as f64 / view.logged_in as f64;
        if ratio < s.idle_ratio {
            return Decision::Idle(Idle::BelowThreshold { ratio });
        }
        let live = l.attempting.len();
        let room = (s.max_attempts as usize).saturating_sub(live);
        if room == 0 {
            return Decision::Idle(Idle::AtLimit);
        }
        let want = room.min(view.available);
        let (open, contacts, mut due_at) = l.view();
        let (mut due, mut earliest, mut retry) = (0, None::<u64>, None::<u64>);
        for c in open.iter().filter_map(|id| contacts.get(id)) {
            let Some(at) = due_at.at(c, now) else {
                continue;
            };
            if at <= now && !dnc.contains(&c.number) {
                due += 1;
                if due == want {
                    break;
                }
                continue;
            }
            let waiting_retry = matches!(c.status, ContactStatus::Waiting { not_before_ms } if not_before_ms > now.0);
            let slot = if waiting_retry {
                &mut retry
            } else {
                &mut earliest
            };
            *slot = Some(slot.map_or(at.0, |e| e.min(at.0)));
        }
        if due > 0 {
            return Decision::Start(due);
        }
        match (earliest, retry) {
            (Some(until_ms), _) => Decision::Idle(Idle::OutsideHours { until_ms }),
            (None, Some(at_ms)) => Decision::Idle(Idle::RetryLater { at_ms }),
            (None, None) if live > 0 => Decision::Idle(Idle::AtLimit),
            (None, None) => Decision::Idle(Idle::Finished),
        }
    }

    /// Takes the next contact that is due for `agent`'s attempt: the first
    /// in list order inside its calling hours. A due contact now on the
    /// do-not-call list is closed as such on the way. Returns the contact
    /// taken (if any) and every contact changed, to be stored before the
    /// agent's phone rings.
    pub fn take(
        &mut self,
        id: CampaignId,
        agent: &str,
        now: UnixMillis,
    ) -> Result<(Option<Contact>, Vec<Contact>), CampaignError> {
        let dnc = &self.dnc;
        let l = self
            .live
            .get_mut(&id)
            .ok_or(CampaignError::NotFound(id.0))?;
        if l.campaign.state != State::Running {
            return Ok((None, Vec::new()));
        }
        let (mut changed, mut taken) = (Vec::new(), None);
        let (open, contacts, mut due_at) = l.view();
        for cid in open {
            let Some(c) = contacts.get_mut(cid) else {
                continue;
            };
            if due_at.at(c, now).is_none_or(|at| at > now) {
                continue;
            }
            if dnc.contains(&c.number) {
                c.status = ContactStatus::Done {
                    outcome: Outcome::DoNotCall,
                };
                c.last = Some((Outcome::DoNotCall, now.0));
                changed.push(c.clone());
                continue;
            }
            c.status = ContactStatus::InAttempt {
                agent: agent.to_string(),
                since_ms: now.0,
            };
            taken = Some(c.clone());
            changed.push(c.clone());
            break;
        }
        for c in &changed {
            l.touched(c.id);
        }
        if taken.is_some() {
            l.started.push_back(now.0);
        }
        Ok((taken, changed))
    }

    /// Attempt at `contact` ended with `outcome`: done, or waiting for its
    /// retry. Returns the contact to store.
    pub fn finish(
        &mut self,
        now: UnixMillis,
        id: CampaignId,
        contact: ContactId,
        outcome: Outcome,
    ) -> Result<Contact, CampaignError> {
        let l = self.live_mut(id)?;
        let rules = l.campaign.settings.retry;
        let c = l
            .contacts
            .get_mut(&contact)
            .ok_or(CampaignError::NoContact(contact.0))?;
        if !matches!(c.status, ContactStatus::InAttempt { .. }) {
            return Err(CampaignError::NotInAttempt(contact.0));
        }
        if outcome.dialled() {
            c.tries += 1;
        }
        c.last = Some((outcome, now.0));
        let retry = match outcome {
            Outcome::Busy => Some(rules.busy),
            Outcome::NoAnswer => Some(rules.no_answer),
            Outcome::Failed | Outcome::Interrupted => Some(rules.failed),
            // Back to the list at once: another agent may take it.
            Outcome::AgentTimeout => Some(Retry {
                after_secs: 0,
                max_tries: u32::MAX,
            }),
            _ => None,
        };
        c.status = match retry {
            Some(r) if c.tries < r.max_tries => ContactStatus::Waiting {
                not_before_ms: now.0 + r.after_secs * 1000,
            },
            _ => ContactStatus::Done { outcome },
        };
        let done = c.clone();
        l.touched(contact);
        Ok(done)
    }

    /// Takes back a `take` whose change could not be stored: the contact
    /// waits again, as on disk.
    pub fn untake(&mut self, taken: &Contact, now: UnixMillis) {
        let Some(l) = self.live.get_mut(&taken.campaign) else {
            return;
        };
        if let Some(c) = l.contacts.get_mut(&taken.id) {
            c.status = ContactStatus::Waiting {
                not_before_ms: now.0,
            };
        }
        l.touched(taken.id);
        if l.started.back() == Some(&now.0) {
            l.started.pop_back();
        }
    }

    /// A customer answered with no agent on the line.
    pub fn abandoned(&mut self, id: CampaignId) {
        if let Some(l) = self.live.get_mut(&id) {
            l.abandoned += 1;
        }
    }

    pub fn progress(&mut self, id: CampaignId, now: UnixMillis) -> Option<Progress> {
        let l = self.live.get_mut(&id)?;
        while l.started.front().is_some_and(|t| *t + HOUR_MS <= now.0) {
            l.started.pop_front();
        }
        let in_attempt = l.attempting.len();
        let remaining = l.open.len().saturating_sub(in_attempt);
        let counted = l.outcomes.iter().filter(|(_, n)| **n > 0);
        let outcomes: BTreeMap<String, usize> = counted
            .clone()
            .map(|(o, n)| (outcome_name(*o), *n))
            .collect();
        let dialled_done = counted.filter(|(o, _)| o.dialled()).map(|(_, n)| n).sum();
        // Reached: the conversation ended by either side.
        let reached = [Outcome::Connected, Outcome::AgentDropped];
        let connected: usize = reached.iter().filter_map(|o| l.outcomes.get(o)).sum();
        let rate = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
        Some(Progress {
            id,
            name: l.campaign.settings.name.clone(),
            group: l.campaign.settings.group.clone(),
            state: l.campaign.state,
            contacts: l.contacts.len(),
            remaining,
            in_attempt,
            outcomes,
            attempts_last_hour: l.started.len(),
            connect_rate: rate(connected, dialled_done),
            abandoned: l.abandoned,
            abandon_rate: rate(l.abandoned as usize, connected + l.abandoned as usize),
        })
    }
}

fn outcome_name(o: Outcome) -> String {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The checks of a campaign's settings (its group and trunk are the
/// caller's to check against the configuration).
fn check(s: &Settings) -> Result<(), CampaignError> {
    let bad = |m: String| Err(CampaignError::Invalid(m));
    if s.name.trim().is_empty() || s.name.len() > 100 {
        return bad("name: 1 to 100 characters".into());
    }
    if !(0.0..=1.0).contains(&s.idle_ratio) {
        return bad(format!(
            "idle_ratio {} is not between 0 and 1",
            s.idle_ratio
        ));
    }
    if !(1..=1000).contains(&s.max_attempts) {
        return bad(format!("max_attempts {} is not 1 to 1000", s.max_attempts));
    }
    if !(5..=300).contains(&s.confirm_secs) {
        return bad(format!("confirm_secs {} is not 5 to 300", s.confirm_secs));
    }
    if !(15..=300).contains(&s.ring_secs) {
        return bad(format!(
            "ring_secs {} is not 15 to 300 (customers ring at least 15 s)",
            s.ring_secs
        ));
    }
    for (name, r) in [
        ("busy", s.retry.busy),
        ("no_answer", s.retry.no_answer),
        ("failed", s.retry.failed),
    ] {
        if r.max_tries == 0 || r.max_tries > 20 {
            return bad(format!(
                "retry.{name}.max_tries {} is not 1 to 20",
                r.max_tries
            ));
        }
    }
    Hours::parse(&s.hours_from, &s.hours_to).map_err(CampaignError::Invalid)?;
    zone(&s.time_zone).map_err(CampaignError::Invalid)?;
    Ok(())
}

#[cfg(test)]
mod tests;
