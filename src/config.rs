//! Configuration: the typed form of `conf/sipdesk.toml`, parsed and validated into
//! values the rest of the PBX can trust. The default file is compiled in
//! ([`DEFAULT_TOML`]); [`Config::default`] equals it (a test keeps them in sync).
//! Every error names the offending key and its line.

use crate::sip::auth::{Algorithm, Ha1};
use crate::sip::transaction::TimerConfig;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The default configuration, as shipped in `conf/sipdesk.toml`.
pub const DEFAULT_TOML: &str = include_str!("../conf/sipdesk.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: line {line}: `{key}`: {message}")]
    Invalid {
        origin: String,
        line: usize,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sip: SipConfig,
    pub rtp: RtpConfig,
    pub calls: CallsConfig,
    pub test_numbers: TestNumbersConfig,
    pub http: HttpConfig,
    pub data: DataConfig,
    pub log: LogConfig,
    pub demo: DemoConfig,
    pub users: Vec<UserConfig>,
    pub groups: Vec<GroupConfig>,
    pub queues: Vec<QueueConfig>,
    pub features: FeaturesConfig,
    pub voicemail: VoicemailConfig,
    pub security: SecurityConfig,
    pub trunks: Vec<TrunkConfig>,
    pub routes: Vec<RouteConfig>,
    pub outbound: OutboundConfig,
    /// What new campaigns get for the settings their creator leaves out.
    pub campaigns: crate::campaigns::Defaults,
    /// Set by [`Config::with_demo_desk`]: the demo group and queue were added
    /// (so the groups and queues are the demo's own, not the office's).
    #[serde(skip)]
    demo_added: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub domain: Spanned<String>,
    pub auth_algorithms: Spanned<Vec<Algorithm>>,
    pub nonce_ttl_secs: u64,
    pub min_expires: Spanned<u32>,
    pub max_expires: Spanned<u32>,
    pub default_expires: Spanned<u32>,
    pub max_message_bytes: Spanned<usize>,
    pub max_headers: usize,
    pub t1_ms: Spanned<u64>,
    pub t2_ms: Spanned<u64>,
    pub t4_ms: u64,
    pub shards: Spanned<usize>,
    pub max_transactions: Spanned<usize>,
    /// Overload protection: a new request that waited longer than this in
    /// its shard's queue is refused with 503 and Retry-After (milliseconds,
    /// 10 to 10000). The default, 50, is far above the normal queueing delay
    /// (under a millisecond) and well inside T1 (500 ms), after which clients
    /// retransmit and a backlog only grows.
    pub shed_after_ms: Spanned<u64>,
    /// DNS servers for the trunks' host names ("ip:port"); [] = the system's.
    pub dns_servers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpConfig {
    pub port_min: Spanned<u16>,
    pub port_max: Spanned<u16>,
    pub bind_ip: std::net::IpAddr,
    pub advertise_ip: Spanned<String>,
    pub inactivity_secs: Spanned<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    pub ring_timeout_secs: u64,
    pub authenticate: bool,
    pub music_on_hold: bool,
    pub min_session_expires_secs: Spanned<u64>,
    /// Whose ringback tone a placed call's first party hears.
    pub tone_zone: crate::media::prompt::ToneZone,
    /// WAV a campaign's customer hears when the agent's leg ended first ("":
    /// the built-in tones).
    pub campaign_farewell: Spanned<String>,
}

/// Who may talk to the PBX (see the guard): rate limits, bans, allow-list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Networks (CIDR) never limited or banned: the office's own.
    pub allow: Spanned<Vec<String>>,
    /// Requests a second one source may send, sustained, and at once.
    pub rate: Spanned<u32>,
    pub burst: Spanned<u32>,
    /// Failed authentications from one source (or against one user) within
    /// `window_secs` before a ban (or the user's lock).
    pub max_auth_failures: Spanned<u32>,
    pub window_secs: u64,
    pub ban_secs: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        let p = crate::guard::Policy::default();
        SecurityConfig {
            allow: sp(vec!["127.0.0.0/8".into(), "::1/128".into()]),
            rate: sp(p.rate),
            burst: sp(p.burst),
            max_auth_failures: sp(p.max_auth_failures),
            window_secs: p.window.as_secs(),
            ban_secs: p.ban.as_secs(),
        }
    }
}

/// Where a trunk's host (with its port, if given) is, over a transport: its
/// addresses in the order to try them (none: it does not resolve).
pub type Locate<'a> = dyn Fn(&str, Option<u16>, crate::sip::Transport) -> Vec<SocketAddr> + 'a;

impl Config {
    /// The outside line's rules: trunks (their hosts located with `resolve`;
    /// one that is found nowhere has no targets until DNS answers), routes,
    /// dialing classes, caller IDs and the toll-fraud caps.
    pub fn outside(&self, resolve: &Locate<'_>) -> crate::outside::Outside {
        use crate::outside::{Caps, Class, DidFrom, Failover, Line, Outside, Route, TrunkId};
        let mut lines = Vec::new();
        for t in &self.trunks {
            let (name, host) = (t.name.get_ref(), t.host.get_ref());
            let transport = t.sip_transport();
            let domain = match t.domain.get_ref().as_str() {
                "" => host.clone(),
                d => d.to_string(),
            };
            let located = t.located(resolve);
            if located.send_to.is_empty() {
                tracing::error!(trunk = %name, %host, "trunk down: its host (or outbound proxy) does not resolve");
            }
            let mut line = Line::located(name.clone(), transport, located, domain);
            if t.register {
                line.line_token = Some(crate::sip::message::build::random_tag());
            }
            line.allow = t
                .allow
                .get_ref()
                .iter()
                .filter_map(|n| parse_net(n).ok())
                .collect();
            line.username = t.username.get_ref().clone();
            line.auth_username = match t.auth_username.get_ref().as_str() {
                "" => line.username.clone(),
                a => a.to_string(),
            };
            line.password = t.password.get_ref().clone();
            line.numbering = crate::outside::Numbering {
                country_code: t.country_code.get_ref().clone(),
                national_prefix: t.national_prefix.get_ref().clone(),
                international_prefix: t.international_prefix.get_ref().clone(),
            };
            line.did_from = match t.did_from {
                Some(DidSource::To) => DidFrom::To,
                Some(DidSource::RequestUri) => DidFrom::RequestUri,
                None if t.register => DidFrom::To,
                None => DidFrom::RequestUri,
            };
            line.dids = t
                .dids
                .get_ref()
                .iter()
                .map(|(did, to)| {
                    let key = line.numbering.to_e164(did).unwrap_or(did.clone());
                    (key, to.clone())
                })
                .collect();
            line.did_default = Some(t.did_default.get_ref().clone()).filter(|d| !d.is_empty());
            line.max_channels = t.max_channels;
            line.codecs = t.codecs.get_ref().clone();
            line.caller_id = t.caller_id.get_ref().clone();
            line.send_pai = t.send_pai;
            line.trying_timeout = Duration::from_millis(t.trying_timeout_ms.max(200));
            lines.push(line);
        }
        let names: Vec<&str> = self
            .trunks
            .iter()
            .map(|t| t.name.get_ref().as_str())
            .collect();
        let routes = self
            .routes
            .iter()
            .filter_map(|r| {
                Some(Route {
                    name: r.name.get_ref().clone(),
                    pattern: crate::outside::pattern(r.pattern.get_ref()).ok()?,
                    class: r.class,
                    trunks: r
                        .trunks
                        .get_ref()
                        .iter()
                        .filter_map(|t| names.iter().position(|n| n == t).map(TrunkId))
                        .collect(),
                    strip: r.strip,
                    prepend: r.prepend.clone(),
                    e164: r.e164,
                    failover: r
                        .failover
                        .get_ref()
                        .iter()
                        .filter_map(|f| Failover::parse(f))
                        .collect(),
                    caller_id: r.caller_id.clone(),
                })
            })
            .collect();
        let o = &self.outbound;
        let caps = Caps {
            max_calls: o.max_calls,
            max_calls_per_user: o.max_calls_per_user,
            max_calls_per_user_per_hour: o.max_calls_per_user_per_hour,
            blocked_prefixes: o.blocked_prefixes.clone(),
        };
        let mut classes = std::collections::HashMap::new();
        let mut caller_ids = std::collections::HashMap::new();
        for u in &self.users {
            let ext = u.extension.get_ref();
            let mut mine = u
                .dialing_classes
                .clone()
                .unwrap_or(o.dialing_classes.clone());
            mine.push(Class::Internal);
            let groups = self
                .groups
                .iter()
                .filter(|g| g.members.iter().any(|m| m.extension.get_ref() == ext));
            for g in groups.clone() {
                mine.extend(g.dialing_classes.iter().copied());
            }
            classes.insert(ext.clone(), mine);
            let id = Some(u.caller_id.clone())
                .filter(|c| !c.is_empty())
                .or_else(|| groups.map(|g| g.caller_id.clone()).find(|c| !c.is_empty()));
            if let Some(id) = id {
                caller_ids.insert(ext.clone(), id);
            }
        }
        let withheld = self
            .users
            .iter()
            .filter(|u| u.withhold_caller_id)
            .map(|u| u.extension.get_ref().clone())
            .collect();
        Outside::new(lines, routes, caps)
            .with_classes(o.dialing_classes.clone(), classes, caller_ids)
            .with_withheld(withheld)
    }
}

impl SecurityConfig {
    /// The guard's rules (`allow` holds only valid networks once validated).
    pub fn policy(&self) -> crate::guard::Policy {
        crate::guard::Policy {
            allow: self
                .allow
                .get_ref()
                .iter()
                .filter_map(|n| parse_net(n).ok())
                .collect(),
            rate: *self.rate.get_ref(),
            burst: *self.burst.get_ref(),
            max_auth_failures: *self.max_auth_failures.get_ref(),
            window: std::time::Duration::from_secs(self.window_secs),
            ban: std::time::Duration::from_secs(self.ban_secs),
        }
    }
}

/// A network in CIDR form, or one address (a /32 or /128).
/// `host[:port]` as (host, port): an IPv6 address may be in brackets.
pub fn split_hostport(s: &str) -> (String, Option<u16>) {
    match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')) => {
            match p.parse::<u16>() {
                Ok(port) => (h.trim_matches(['[', ']']).to_string(), Some(port)),
                Err(_) => (s.trim_matches(['[', ']']).to_string(), None),
            }
        }
        _ => (s.trim_matches(['[', ']']).to_string(), None),
    }
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s} is not a network (CIDR) or an address"))
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            ring_timeout_secs: 30,
            authenticate: true,
            music_on_hold: true,
            min_session_expires_secs: sp(90),
            tone_zone: Default::default(),
            campaign_farewell: sp(String::new()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestNumbersConfig {
    pub echo: String,
    pub hangup: String,
    pub hangup_after_secs: u64,
    pub busy: String,
    pub open: bool,
}

impl Default for TestNumbersConfig {
    fn default() -> Self {
        TestNumbersConfig {
            echo: "9000".into(),
            hangup: "9001".into(),
            hangup_after_secs: 5,
            busy: "9002".into(),
            open: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The desk (API, event stream, desktop); port 0 picks a free one.
    pub listen: SocketAddr,
    /// How long a desk login lasts without renewal.
    pub session_ttl_secs: u64,
    /// Events kept for clients that reconnect (beyond this they resync).
    pub event_buffer: usize,
    /// The outcomes an agent picks for a conversation (response records).
    pub dispositions: Vec<String>,
    /// A bearer token that may read `/metrics` (for Prometheus); "" leaves it
    /// to supervisors' sessions.
    pub metrics_token: Spanned<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    pub extensions: Vec<String>,
    /// While the demo users are the only users (no `[[users]]`, no `[[groups]]`,
    /// no `[[queues]]`): a group of all of them, a queue it serves, and the one
    /// of them who is a supervisor on the desk. "" leaves one out.
    pub group: String,
    pub queue: String,
    pub supervisor: String,
    /// The demo group's ring-group number (all its phones at once).
    pub ring_group: String,
    /// The demo users have mailboxes (voicemail, no PIN).
    pub voicemail: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub extension: Spanned<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub ha1_md5: Option<String>,
    #[serde(default)]
    pub ha1_sha256: Option<String>,
    /// On the desk: `agent` (acts as themself) or `supervisor` (sees all).
    #[serde(default)]
    pub role: DeskRole,
    /// The phone gets its message lamp by NOTIFY without subscribing to
    /// `message-summary` (as some phones expect): on every change and when it
    /// registers.
    #[serde(default)]
    pub unsolicited_mwi: bool,
    /// The user has a mailbox: callers their phones do not take (no answer,
    /// busy, do not disturb, no phone) leave a message there, unless a
    /// forwarding rule sends them elsewhere.
    #[serde(default)]
    pub voicemail: bool,
    /// The PIN the voicemail menu asks for on the phone (4 to 10 digits);
    /// none: the phone's credentials are enough.
    #[serde(default)]
    pub voicemail_pin: Option<String>,
    /// What this user may dial outside; absent = `[outbound] dialing_classes`.
    #[serde(default)]
    pub dialing_classes: Option<Vec<crate::outside::Class>>,
    /// The caller ID of this user's outside calls; "" = the group's, route's or trunk's.
    #[serde(default)]
    pub caller_id: String,
    /// This user's outside calls withhold the caller ID (anonymous From,
    /// `Privacy: id`); a phone can also ask per call with `Privacy: id`.
    #[serde(default)]
    pub withhold_caller_id: bool,
    /// Call forwarding from the start (the user's own changes, from the
    /// phone or the desk, are stored and win): every call, when busy or in
    /// do not disturb, when not answered within `forward_no_answer_secs`
    /// (0: 20 s). "" forwards nowhere.
    #[serde(default)]
    pub forward_always: String,
    #[serde(default)]
    pub forward_busy: String,
    #[serde(default)]
    pub forward_no_answer: String,
    #[serde(default)]
    pub forward_no_answer_secs: u32,
}

impl UserConfig {
    /// The forwarding this user starts with.
    pub fn forwarding(&self) -> crate::forwarding::Rules {
        let to = |n: &String| (!n.is_empty()).then(|| n.clone());
        crate::forwarding::Rules {
            always: to(&self.forward_always),
            busy: to(&self.forward_busy),
            no_answer: to(&self.forward_no_answer),
            no_answer_secs: self.forward_no_answer_secs,
        }
    }
}

/// A user's role on the desk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeskRole {
    #[default]
    Agent,
    Supervisor,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: Spanned<String>,
    #[serde(default)]
    pub members: Vec<MemberConfig>,
    /// Dialing classes every member has besides their own.
    #[serde(default)]
    pub dialing_classes: Vec<crate::outside::Class>,
    /// The caller ID of members' outside calls, unless they have their own.
    #[serde(default)]
    pub caller_id: String,
    /// A personal call-back to a member left unclaimed this long is offered
    /// to the whole group.
    #[serde(default = "default_callback_escalate")]
    pub callback_escalate_secs: u64,
    /// A call-back still open this long is flagged on the group's desktops and
    /// the wallboard.
    #[serde(default = "default_callback_flag")]
    pub callback_flag_secs: u64,
    /// A number that makes the group a ring group: a call to it rings the
    /// members (`ring`), then goes to `then`. "" = no number.
    #[serde(default = "unset")]
    pub number: Spanned<String>,
    /// `all`: every member at once for `ring_secs`; `order`: one member after
    /// another by priority, `ring_secs` each.
    #[serde(default)]
    pub ring: RingOrder,
    #[serde(default = "default_group_ring_secs")]
    pub ring_secs: u64,
    /// Where a call nobody answered goes (an extension, group, queue or
    /// outside number); "" = the caller hears "not available" (480).
    #[serde(default = "unset")]
    pub then: Spanned<String>,
}

/// How a ring group rings its members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RingOrder {
    #[default]
    All,
    Order,
}

fn default_group_ring_secs() -> u64 {
    20
}

fn default_callback_escalate() -> u64 {
    900
}

fn default_callback_flag() -> u64 {
    3600
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub extension: Spanned<String>,
    #[serde(default = "default_priority")]
    pub priority: u32,
}

/// A number callers dial to reach the agents of some groups (the ACD).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub number: Spanned<String>,
    /// The groups whose agents answer this queue.
    pub groups: Spanned<Vec<String>>,
    /// How long one agent is rung before the next is tried.
    #[serde(default = "default_ring_secs")]
    pub ring_secs: u64,
    /// The longest a caller waits before the overflow action.
    #[serde(default = "default_max_wait_secs")]
    pub max_wait_secs: u64,
    /// How long an agent stays in wrap-up after a call from this queue.
    #[serde(default = "default_wrap_up_secs")]
    pub wrap_up_secs: u64,
    /// Callers answered within this many seconds count as served in time (the
    /// wallboard's service level).
    #[serde(default = "default_service_level_secs")]
    pub service_level_secs: u64,
    /// WAV played once when a caller enters, before the music; "" = none.
    #[serde(default = "unset")]
    pub announcement: Spanned<String>,
    /// WAV played (looping) to a waiting caller; "" = the built-in music.
    #[serde(default = "unset")]
    pub music: Spanned<String>,
    /// WAV played before hanging up at overflow; "" = the built-in one.
    #[serde(default = "unset")]
    pub overflow_announcement: Spanned<String>,
    /// Where a caller goes after `max_wait_secs`: another queue or an extension;
    /// "" = play the overflow announcement and hang up.
    #[serde(default = "unset")]
    pub overflow_to: Spanned<String>,
    /// After `max_wait_secs`, offer a call-back instead: the caller hears
    /// `callback_prompt`, may leave a voice message and/or press 1, and the
    /// PBX writes a call-back to `callback_group`.
    #[serde(default)]
    pub overflow_callback: bool,
    /// Whom the call-back is for; "" = the queue's first group.
    #[serde(default = "unset")]
    pub callback_group: Spanned<String>,
    /// WAV: "leave a message after the tone, or press 1 to be called back"
    /// (ending in a tone); "" = a built-in chime and beep.
    #[serde(default = "unset")]
    pub callback_prompt: Spanned<String>,
    /// WAV played after "1" or when the message is cut at its limit; "" =
    /// two short beeps.
    #[serde(default = "unset")]
    pub callback_thanks: Spanned<String>,
    /// The longest voice message, 5 to 600 seconds.
    #[serde(default = "default_callback_message_secs")]
    pub callback_message_secs: u64,
    /// Who calls the callers back: agents from their call-back box
    /// (`manual`), or the PBX, agent first, dialling through `callback_trunk`
    /// as the group's agents come free (`auto`).
    #[serde(default)]
    pub callback_mode: CallbackMode,
    #[serde(default = "unset")]
    pub callback_trunk: Spanned<String>,
}

impl QueueConfig {
    /// The group its call-backs are for: `callback_group`, else its first.
    pub fn callback_group_name(&self) -> String {
        match self.callback_group.get_ref().as_str() {
            "" => self.groups.get_ref().first().cloned().unwrap_or_default(),
            g => g.to_string(),
        }
    }
}

/// Who calls a queue's callers back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackMode {
    #[default]
    Manual,
    Auto,
}

fn default_callback_message_secs() -> u64 {
    120
}

fn unset() -> Spanned<String> {
    sp(String::new())
}

fn default_ring_secs() -> u64 {
    15
}
fn default_max_wait_secs() -> u64 {
    300
}
fn default_wrap_up_secs() -> u64 {
    10
}
fn default_service_level_secs() -> u64 {
    20
}

/// A connection to a SIP provider (`[[trunks]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub name: Spanned<String>,
    /// The provider's host name or address (its domain, too, unless `domain`).
    pub host: Spanned<String>,
    /// The provider's port; absent with a host name: found by DNS SRV
    /// (RFC 3263), else 5060.
    #[serde(default)]
    pub port: Option<u16>,
    /// `udp` or `tcp`.
    #[serde(default = "default_trunk_transport")]
    pub transport: Spanned<String>,
    /// The provider's SIP domain; "" = `host`.
    #[serde(default = "unset")]
    pub domain: Spanned<String>,
    /// Whether sipdesk registers with the provider (needs `username` and
    /// `password`).
    #[serde(default = "yes")]
    pub register: bool,
    #[serde(default = "unset")]
    pub username: Spanned<String>,
    /// The digest user name, if not `username`.
    #[serde(default = "unset")]
    pub auth_username: Spanned<String>,
    #[serde(default = "unset")]
    pub password: Spanned<String>,
    /// The registration expiry asked for (60 to 86400 seconds).
    #[serde(default = "default_trunk_expires")]
    pub expires: Spanned<u32>,
    /// `host[:port]` every request of this trunk goes to instead of the
    /// provider's address; "" = none.
    #[serde(default = "unset")]
    pub outbound_proxy: Spanned<String>,
    /// More networks (CIDR) this provider's INVITEs come from, besides its own
    /// address (IP authentication: inbound calls are taken only from these).
    #[serde(default = "no_networks")]
    pub allow: Spanned<Vec<String>>,
    /// Calls in and out at once at most (0: no limit); beyond, inbound gets 503
    /// and outbound tries the next trunk.
    #[serde(default)]
    pub max_channels: u32,
    /// The codecs offered to this provider (`PCMU`, `PCMA`, `G722`…, in the
    /// order of preference); [] = whatever the phone offers.
    #[serde(default = "no_networks")]
    pub codecs: Spanned<Vec<String>>,
    /// A provider that sends no answer at all this long is treated as down:
    /// the call tries the next trunk.
    #[serde(default = "default_trying_timeout")]
    pub trying_timeout_ms: u64,
    /// How this provider writes numbers: the office's country code (no `+`),
    /// national prefix and international prefix. Callers' numbers are turned
    /// into E.164 with them.
    #[serde(default = "unset")]
    pub country_code: Spanned<String>,
    #[serde(default = "unset")]
    pub national_prefix: Spanned<String>,
    #[serde(default = "unset")]
    pub international_prefix: Spanned<String>,
    /// Where the called number (DID) of an inbound call is read: `to` or
    /// `request_uri` (default: `to` when registering, else `request_uri`).
    #[serde(default)]
    pub did_from: Option<DidSource>,
    /// Called number (as the provider sends it, or in E.164) → where it
    /// goes: a queue, an extension, or `group:NAME`.
    #[serde(default = "no_dids")]
    pub dids: Spanned<std::collections::BTreeMap<String, String>>,
    /// Where other called numbers go; "" = 404.
    #[serde(default = "unset")]
    pub did_default: Spanned<String>,
    /// The caller ID sent on outside calls when neither the user, their group
    /// nor the route sets one; "" = the account's `username`.
    #[serde(default = "unset")]
    pub caller_id: Spanned<String>,
    /// Whether outside calls carry the caller ID in P-Asserted-Identity
    /// (RFC 3325) as well as From.
    #[serde(default = "yes")]
    pub send_pai: bool,
}

/// Where a trunk's called number is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DidSource {
    To,
    RequestUri,
}

fn no_dids() -> Spanned<std::collections::BTreeMap<String, String>> {
    sp(std::collections::BTreeMap::new())
}
fn no_networks() -> Spanned<Vec<String>> {
    sp(Vec::new())
}
fn default_trying_timeout() -> u64 {
    2000
}

/// An outbound route (`[[routes]]`): the numbers matching `pattern` (a
/// regular expression over the whole dialled number) go out through `trunks`,
/// in order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: Spanned<String>,
    pub pattern: Spanned<String>,
    /// What these numbers are: `emergency`, `national`, `international`,
    /// `premium` (users need the class to dial them; emergency always goes).
    pub class: crate::outside::Class,
    pub trunks: Spanned<Vec<String>>,
    /// Leading digits removed, then `prepend` added, before sending.
    #[serde(default)]
    pub strip: usize,
    #[serde(default)]
    pub prepend: String,
    /// Send the number in E.164 (with the trunk's numbering), after `strip`
    /// and `prepend`.
    #[serde(default)]
    pub e164: bool,
    /// Final answers on which the next trunk is tried: codes (`503`) or
    /// classes (`5xx`). Never once the callee rang or answered.
    #[serde(default = "default_failover")]
    pub failover: Spanned<Vec<String>>,
    /// The caller ID for this route (below the user's and group's); "" = the
    /// trunk's.
    #[serde(default)]
    pub caller_id: String,
}

fn default_failover() -> Spanned<Vec<String>> {
    sp(vec!["408".into(), "5xx".into(), "6xx".into()])
}

/// The toll-fraud rules (`[outbound]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// What users may dial unless their own `dialing_classes` say otherwise
    /// (groups' classes are added; emergency is always allowed).
    pub dialing_classes: Vec<crate::outside::Class>,
    /// Outside calls at once, in total and per user; outside calls a user
    /// may start in one hour (0: no cap).
    pub max_calls: u32,
    pub max_calls_per_user: u32,
    pub max_calls_per_user_per_hour: u32,
    /// Numbers starting with one of these (as dialled or in E.164) are never called.
    pub blocked_prefixes: Vec<String>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        use crate::outside::Class;
        OutboundConfig {
            dialing_classes: vec![Class::Internal, Class::National],
            max_calls: 30,
            max_calls_per_user: 2,
            max_calls_per_user_per_hour: 30,
            blocked_prefixes: Vec::new(),
        }
    }
}

impl TrunkConfig {
    /// Where the trunk is, as `resolve` says: its requests go to the outbound
    /// proxy if it has one, else to the provider; the provider's requests may
    /// come from either.
    pub fn located(&self, resolve: &Locate<'_>) -> crate::outside::Located {
        let transport = self.sip_transport();
        let provider = resolve(self.host.get_ref(), self.port, transport);
        let proxy = match self.outbound_proxy.get_ref().as_str() {
            "" => Vec::new(),
            p => {
                let (host, port) = split_hostport(p);
                resolve(&host, port, transport)
            }
        };
        let via = match self.outbound_proxy.get_ref().is_empty() {
            true => &provider,
            false => &proxy,
        };
        let mut from: Vec<std::net::IpAddr> = Vec::new();
        for ip in provider.iter().chain(&proxy).map(SocketAddr::ip) {
            if !from.contains(&ip) {
                from.push(ip);
            }
        }
        crate::outside::Located {
            send_to: via
                .iter()
                .map(|addr| crate::sip::Remote {
                    transport,
                    addr: *addr,
                    conn: None,
                })
                .collect(),
            from,
        }
    }

    /// The trunk's transport (validated: `udp` or `tcp`).
    pub fn sip_transport(&self) -> crate::sip::Transport {
        match self.transport.get_ref().as_str() {
            "tcp" => crate::sip::Transport::Tcp,
            _ => crate::sip::Transport::Udp,
        }
    }
}

fn default_trunk_transport() -> Spanned<String> {
    sp("udp".to_string())
}
fn yes() -> bool {
    true
}
fn default_trunk_expires() -> Spanned<u32> {
    sp(300)
}

/// Voicemail settings (who has a mailbox: `[[users]] voicemail`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoicemailConfig {
    /// The longest message a caller may leave (seconds, 5 to 600).
    pub max_message_secs: Spanned<u64>,
}

impl Default for VoicemailConfig {
    fn default() -> Self {
        VoicemailConfig {
            max_message_secs: sp(120),
        }
    }
}

/// Codes an agent dials from the phone to set presence ("" disables one).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    pub available: String,
    pub away: String,
    pub busy: String,
    /// Forwarding: the code followed by the number sets a rule, the `_off`
    /// code clears it.
    pub forward_always: String,
    pub forward_always_off: String,
    pub forward_busy: String,
    pub forward_busy_off: String,
    pub forward_no_answer: String,
    pub forward_no_answer_off: String,
    /// Pickup: answers a call ringing at a colleague's phone (one who shares
    /// a group with the user); `pickup` alone takes the longest-ringing one,
    /// `pickup_extension` followed by an extension that extension's.
    pub pickup: String,
    pub pickup_extension: String,
    /// The voicemail menu: the user's own mailbox (PIN, then the messages).
    pub voicemail: String,
    /// Keyed during a call (not dialled): starts recording it, and keyed
    /// again stops (empty: recording only from the desk).
    pub record: String,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        FeaturesConfig {
            available: "*40".into(),
            away: "*41".into(),
            busy: "*42".into(),
            forward_always: "*72".into(),
            forward_always_off: "*73".into(),
            forward_busy: "*90".into(),
            forward_busy_off: "*91".into(),
            forward_no_answer: "*52".into(),
            forward_no_answer_off: "*53".into(),
            pickup: "*8".into(),
            pickup_extension: "**".into(),
            voicemail: "*97".into(),
            record: "*1".into(),
        }
    }
}

impl FeaturesConfig {
    /// Every code that is set.
    pub fn codes(&self) -> impl Iterator<Item = &str> {
        [
            &self.available,
            &self.away,
            &self.busy,
            &self.forward_always,
            &self.forward_always_off,
            &self.forward_busy,
            &self.forward_busy_off,
            &self.forward_no_answer,
            &self.forward_no_answer_off,
            &self.pickup,
            &self.pickup_extension,
            &self.voicemail,
        ]
        .into_iter()
        .map(String::as_str)
        .filter(|c| !c.is_empty())
    }
}

fn default_priority() -> u32 {
    1
}

fn sp<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

impl Default for SipConfig {
    fn default() -> Self {
        let any: SocketAddr = ([0, 0, 0, 0], 5060).into();
        SipConfig {
            udp: vec![any],
            tcp: vec![any],
            domain: sp("sipdesk.local".into()),
            auth_algorithms: sp(vec![Algorithm::Md5]),
            nonce_ttl_secs: 300,
            min_expires: sp(60),
            max_expires: sp(7200),
            default_expires: sp(3600),
            max_message_bytes: sp(65_535),
            max_headers: 128,
            t1_ms: sp(500),
            t2_ms: sp(4000),
            t4_ms: 5000,
            shards: sp(0),
            max_transactions: sp(1_000_000),
            shed_after_ms: sp(50),
            dns_servers: Vec::new(),
        }
    }
}

impl Default for RtpConfig {
    fn default() -> Self {
        RtpConfig {
            port_min: sp(20000),
            port_max: sp(30000),
            bind_ip: std::net::IpAddr::from([0, 0, 0, 0]),
            advertise_ip: sp("auto".into()),
            inactivity_secs: sp(60),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: ([127, 0, 0, 1], 8080).into(),
            session_ttl_secs: 28_800,
            event_buffer: 4096,
            dispositions: ["resolved", "call back", "escalated", "no action needed"]
                .map(String::from)
                .to_vec(),
            metrics_token: sp(String::new()),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { dir: "data".into() }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            extensions: ["201", "202", "203", "204"].map(String::from).to_vec(),
            group: "support".into(),
            queue: "500".into(),
            supervisor: "204".into(),
            ring_group: "600".into(),
            voicemail: true,
        }
    }
}

/// A configured user after validation: secrets reduced to HA1 values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub extension: String,
    pub name: Option<String>,
    pub ha1: Ha1,
}

impl Config {
    /// The compiled-in default configuration.
    pub fn embedded() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_TOML, "embedded default")
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: describe_toml_error(text, &e),
        })?;
        config.validate(text, origin)?;
        Ok(config)
    }

    fn validate(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let bad = |span: std::ops::Range<usize>, key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            line: line_of(text, span.start),
            key: key.to_string(),
            message,
        };
        let s = &self.sip;
        if s.domain.get_ref().trim().is_empty() || s.domain.get_ref().contains(['"', '\\', ' ']) {
            return Err(bad(
                s.domain.span(),
                "sip.domain",
                "must be a non-empty host name".into(),
            ));
        }
        let token = &self.http.metrics_token;
        if !token.get_ref().is_empty()
            && (token.get_ref().len() < 16
                || !token.get_ref().bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(bad(
                token.span(),
                "http.metrics_token",
                "use at least 16 printable characters, no spaces (or \"\" for none)".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.trunks {
            let n = t.name.get_ref();
            if n.is_empty() || !names.insert(n.clone()) {
                return Err(bad(
                    t.name.span(),
                    "trunks.name",
                    format!("\"{n}\": empty or used twice"),
                ));
            }
            if t.host.get_ref().trim().is_empty() {
                return Err(bad(
                    t.host.span(),
                    "trunks.host",
                    format!("trunk {n}: needs a host"),
                ));
            }
            if !matches!(t.transport.get_ref().as_str(), "udp" | "tcp") {
                return Err(bad(
                    t.transport.span(),
                    "trunks.transport",
                    format!("trunk {n}: \"udp\" or \"tcp\""),
                ));
            }
            if t.register && (t.username.get_ref().is_empty() || t.password.get_ref().is_empty()) {
                return Err(bad(
                    t.name.span(),
                    "trunks.username",
                    format!("trunk {n}: registering needs username and password"),
                ));
            }
            if !(60..=86_400).contains(t.expires.get_ref()) {
                return Err(bad(
                    t.expires.span(),
                    "trunks.expires",
                    format!("trunk {n}: 60 to 86400 seconds"),
                ));
            }
        }
        let sec = &self.security;
        if let Some(e) = sec.allow.get_ref().iter().find_map(|n| parse_net(n).err()) {
            return Err(bad(sec.allow.span(), "security.allow", e));
        }
        for (key, v) in [
            ("security.rate", &sec.rate),
            ("security.burst", &sec.burst),
            ("security.max_auth_failures", &sec.max_auth_failures),
        ] {
            if *v.get_ref() == 0 {
                return Err(bad(v.span(), key, "must be at least 1".into()));
            }
        }
        if s.auth_algorithms.get_ref().is_empty() {
            return Err(bad(
                s.auth_algorithms.span(),
                "sip.auth_algorithms",
                "offer at least one algorithm".into(),
            ));
        }
        let (min, def, max) = (
            *s.min_expires.get_ref(),
            *s.default_expires.get_ref(),
            *s.max_expires.get_ref(),
        );
        if min == 0 || min > def {
            return Err(bad(
                s.min_expires.span(),
                "sip.min_expires",
                format!("must be between 1 and default_expires ({def})"),
            ));
        }
        if def > max {
            return Err(bad(
                s.max_expires.span(),
                "sip.max_expires",
                format!("must be at least default_expires ({def})"),
            ));
        }
        if !(1024..=1_048_576).contains(s.max_message_bytes.get_ref()) {
            return Err(bad(
                s.max_message_bytes.span(),
                "sip.max_message_bytes",
                "must be between 1024 and 1048576".into(),
            ));
        }
        if *s.t1_ms.get_ref() == 0 || s.t1_ms.get_ref() > s.t2_ms.get_ref() {
            return Err(bad(
                s.t1_ms.span(),
                "sip.t1_ms",
                "must be positive and not above t2_ms".into(),
            ));
        }
        if *s.max_transactions.get_ref() < 1000 {
            return Err(bad(
                s.max_transactions.span(),
                "sip.max_transactions",
                "at least 1000".into(),
            ));
        }
        if !(10..=10_000).contains(s.shed_after_ms.get_ref()) {
            return Err(bad(
                s.shed_after_ms.span(),
                "sip.shed_after_ms",
                "from 10 to 10000".into(),
            ));
        }
        if *s.shards.get_ref() > 256 {
            return Err(bad(s.shards.span(), "sip.shards", "at most 256".into()));
        }
        let r = &self.rtp;
        if *r.inactivity_secs.get_ref() == 0 {
            return Err(bad(
                r.inactivity_secs.span(),
                "rtp.inactivity_secs",
                "must be at least 1 (a call without RTP for this long is hung up)".into(),
            ));
        }
        for u in &self.users {
            let bad_pin = u.voicemail_pin.as_ref().is_some_and(|p| {
                !(4..=10).contains(&p.len()) || !p.bytes().all(|b| b.is_ascii_digit())
            });
            if bad_pin {
                return Err(bad(
                    u.extension.span(),
                    "users.voicemail_pin",
                    format!("{}: 4 to 10 digits", u.extension.get_ref()),
                ));
            }
        }
        let vm = &self.voicemail.max_message_secs;
        if !(5..=600).contains(vm.get_ref()) {
            return Err(bad(
                vm.span(),
                "voicemail.max_message_secs",
                "from 5 to 600 seconds".into(),
            ));
        }
        let min_se = *self.calls.min_session_expires_secs.get_ref();
        if !(1..=86_400).contains(&min_se) {
            return Err(bad(
                self.calls.min_session_expires_secs.span(),
                "calls.min_session_expires_secs",
                "must be between 1 and 86400 (RFC 4028 recommends at least 90)".into(),
            ));
        }
        let farewell = &self.calls.campaign_farewell;
        if !farewell.get_ref().is_empty() {
            if let Err(e) = read_sound(farewell.get_ref()) {
                return Err(bad(
                    farewell.span(),
                    "calls.campaign_farewell",
                    format!("{}: {e}", farewell.get_ref()),
                ));
            }
        }
        if r.port_min.get_ref() >= r.port_max.get_ref() || *r.port_min.get_ref() < 1024 {
            return Err(bad(
                r.port_min.span(),
                "rtp.port_min",
                "must be at least 1024 and below rtp.port_max".into(),
            ));
        }
        let adv = r.advertise_ip.get_ref();
        if adv != "auto" && adv.parse::<std::net::IpAddr>().is_err() {
            return Err(bad(
                r.advertise_ip.span(),
                "rtp.advertise_ip",
                format!("`{adv}` is neither \"auto\" nor an IP address"),
            ));
        }
        let mut seen = HashSet::new();
        for u in &self.users {
            let ext = u.extension.get_ref();
            if ext.is_empty()
                || !ext
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.+".contains(&c))
            {
                return Err(bad(
                    u.extension.span(),
                    "users.extension",
                    format!("`{ext}` is not a valid SIP user part (letters, digits, - _ . +)"),
                ));
            }
            if !seen.insert(ext.clone()) {
                return Err(bad(
                    u.extension.span(),
                    "users.extension",
                    format!("extension {ext} is defined twice"),
                ));
            }
            let has_ha1 = u.ha1_md5.is_some() || u.ha1_sha256.is_some();
            if u.password.is_some() == has_ha1 {
                return Err(bad(
                    u.extension.span(),
                    "users.password",
                    format!("user {ext} needs either `password` or `ha1_md5`/`ha1_sha256`"),
                ));
            }
            for (key, v, len) in [
                ("users.ha1_md5", &u.ha1_md5, 32),
                ("users.ha1_sha256", &u.ha1_sha256, 64),
            ] {
                if let Some(v) = v {
                    if v.len() != len || !v.bytes().all(|c| c.is_ascii_hexdigit()) {
                        return Err(bad(
                            u.extension.span(),
                            key,
                            format!("user {ext}: must be {len} hex digits"),
                        ));
                    }
                }
            }
        }
        let mut groups = HashSet::new();
        for g in &self.groups {
            if !groups.insert(g.name.get_ref().clone()) {
                return Err(bad(
                    g.name.span(),
                    "groups.name",
                    format!("group {} is defined twice", g.name.get_ref()),
                ));
            }
            for m in &g.members {
                if !seen.contains(m.extension.get_ref()) {
                    return Err(bad(
                        m.extension.span(),
                        "groups.members.extension",
                        format!(
                            "group {}: no user {}",
                            g.name.get_ref(),
                            m.extension.get_ref()
                        ),
                    ));
                }
            }
        }
        self.validate_queues(&seen, &groups, &bad)?;
        self.validate_forwarding(&seen, &bad)?;
        self.validate_outside(&seen, &groups, &bad)?;
        if let Err(e) = self.campaigns.check() {
            return Err(bad(0..0, "campaigns", e.to_string()));
        }
        if s.udp.is_empty() && s.tcp.is_empty() {
            return Err(bad(
                0..0,
                "sip.udp",
                "listen on at least one UDP or TCP address".into(),
            ));
        }
        Ok(())
    }

    /// Trunks' networks, numbering and DIDs, and the routes' patterns,
    /// trunks and failover codes must be usable.
    fn validate_outside(
        &self,
        users: &HashSet<String>,
        groups: &HashSet<String>,
        bad: &dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let digits = |v: &str| v.bytes().all(|c| c.is_ascii_digit());
        let queues: HashSet<&str> = self
            .queues
            .iter()
            .map(|q| q.number.get_ref().as_str())
            .collect();
        let reachable = |target: &str| match target.strip_prefix("group:") {
            Some(g) => groups.contains(g),
            None => {
                queues.contains(target)
                    || users.contains(target)
                    || self.demo.extensions.iter().any(|e| e == target)
                    || (target == self.demo.queue && !target.is_empty())
            }
        };
        for t in &self.trunks {
            let n = t.name.get_ref();
            if let Some(e) = t.allow.get_ref().iter().find_map(|a| parse_net(a).err()) {
                return Err(bad(
                    t.allow.span(),
                    "trunks.allow",
                    format!("trunk {n}: {e}"),
                ));
            }
            let proxy = t.outbound_proxy.get_ref();
            if proxy.contains([' ', '"', '/']) {
                return Err(bad(
                    t.outbound_proxy.span(),
                    "trunks.outbound_proxy",
                    format!("trunk {n}: `{proxy}` is not host[:port]"),
                ));
            }
            for (key, v) in [
                ("trunks.country_code", &t.country_code),
                ("trunks.national_prefix", &t.national_prefix),
                ("trunks.international_prefix", &t.international_prefix),
            ] {
                if !digits(v.get_ref()) {
                    return Err(bad(v.span(), key, format!("trunk {n}: digits only")));
                }
            }
            if let Some(c) = t.codecs.get_ref().iter().find(|c| {
                c.is_empty() || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }) {
                return Err(bad(
                    t.codecs.span(),
                    "trunks.codecs",
                    format!("trunk {n}: `{c}` is not a codec name"),
                ));
            }
            for (did, target) in t.dids.get_ref() {
                let number = did.strip_prefix('+').unwrap_or(did);
                if number.is_empty() || !digits(number) {
                    return Err(bad(
                        t.dids.span(),
                        "trunks.dids",
                        format!("trunk {n}: `{did}` is not a number"),
                    ));
                }
                if !reachable(target) {
                    return Err(bad(
                        t.dids.span(),
                        "trunks.dids",
                        format!("trunk {n}: {did} goes to `{target}`: no such queue, extension or group"),
                    ));
                }
            }
            let default = t.did_default.get_ref();
            if !default.is_empty() && !reachable(default) {
                return Err(bad(
                    t.did_default.span(),
                    "trunks.did_default",
                    format!("trunk {n}: `{default}`: no such queue, extension or group"),
                ));
            }
        }
        let trunks: HashSet<&str> = self
            .trunks
            .iter()
            .map(|t| t.name.get_ref().as_str())
            .collect();
        let mut names = HashSet::new();
        for r in &self.routes {
            let n = r.name.get_ref();
            if n.is_empty() || !names.insert(n.clone()) {
                return Err(bad(
                    r.name.span(),
                    "routes.name",
                    format!("\"{n}\": empty or used twice"),
                ));
            }
            if let Err(e) = crate::outside::pattern(r.pattern.get_ref()) {
                return Err(bad(
                    r.pattern.span(),
                    "routes.pattern",
                    format!("route {n}: {e}"),
                ));
            }
            if r.trunks.get_ref().is_empty() {
                return Err(bad(
                    r.trunks.span(),
                    "routes.trunks",
                    format!("route {n}: name at least one trunk"),
                ));
            }
            if let Some(t) = r
                .trunks
                .get_ref()
                .iter()
                .find(|t| !trunks.contains(t.as_str()))
            {
                return Err(bad(
                    r.trunks.span(),
                    "routes.trunks",
                    format!("route {n}: no trunk {t}"),
                ));
            }
            if let Some(f) = r
                .failover
                .get_ref()
                .iter()
                .find(|f| crate::outside::Failover::parse(f).is_none())
            {
                return Err(bad(
                    r.failover.span(),
                    "routes.failover",
                    format!("route {n}: `{f}` is neither a code (503) nor a class (5xx)"),
                ));
            }
        }
        Ok(())
    }

    /// Queue numbers must be unique and free (no extension, test number or feature
    /// code), serve known groups, overflow somewhere that exists, and name WAV files
    /// that can be played.
    /// Ring groups' numbers are their own; forwards and `then` do not point
    /// at themselves; the waits are sane.
    fn validate_forwarding(
        &self,
        users: &HashSet<String>,
        bad: &dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let record = &self.features.record;
        let dtmf = |c: char| c.is_ascii_digit() || "*#ABCD".contains(c);
        if !record.is_empty() && !(2..=8).contains(&record.len()) || !record.chars().all(dtmf) {
            return Err(bad(
                0..0,
                "features.record",
                format!("`{record}`: 2 to 8 DTMF keys (0-9 * # A-D), or empty"),
            ));
        }
        let mut codes = HashSet::new();
        if let Some(c) = self.features.codes().find(|c| !codes.insert(*c)) {
            return Err(bad(
                0..0,
                "features",
                format!("feature code {c} is used twice"),
            ));
        }
        let t = &self.test_numbers;
        let mut taken: HashSet<&str> = [&t.echo, &t.hangup, &t.busy]
            .into_iter()
            .map(String::as_str)
            .filter(|n| !n.is_empty())
            .chain(self.features.codes())
            .chain(self.queues.iter().map(|q| q.number.get_ref().as_str()))
            .collect();
        for g in &self.groups {
            let (name, n) = (g.name.get_ref(), g.number.get_ref());
            if n.is_empty() {
                continue;
            }
            let clash = if users.contains(n) || self.demo.extensions.contains(n) {
                Some("is also an extension")
            } else if !taken.insert(n.as_str()) {
                Some("is also a queue, a test number, a feature code or another group's")
            } else {
                None
            };
            if let Some(why) = clash {
                return Err(bad(
                    g.number.span(),
                    "groups.number",
                    format!("group {name}: {n} {why}"),
                ));
            }
            if g.ring_secs == 0 || g.ring_secs > 600 {
                return Err(bad(
                    g.number.span(),
                    "groups.ring_secs",
                    format!("group {name}: 1 to 600 seconds"),
                ));
            }
            if g.then.get_ref() == n {
                return Err(bad(
                    g.then.span(),
                    "groups.then",
                    format!("group {name}: `then` is the group's own number"),
                ));
            }
        }
        for u in &self.users {
            let ext = u.extension.get_ref();
            let rules = u.forwarding();
            let checked =
                crate::forwarding::check(ext, &rules, |_| crate::forwarding::Reach::Inside);
            if let Err(e) = checked {
                return Err(bad(
                    u.extension.span(),
                    "users.forward_always",
                    e.to_string(),
                ));
            }
        }
        Ok(())
    }

    fn validate_queues(
        &self,
        users: &HashSet<String>,
        groups: &HashSet<String>,
        bad: &dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let t = &self.test_numbers;
        let f = &self.features;
        let taken: HashSet<&str> = [&t.echo, &t.hangup, &t.busy]
            .into_iter()
            .map(String::as_str)
            .filter(|n| !n.is_empty())
            .chain(f.codes())
            .collect();
        let mut numbers = HashSet::new();
        for q in &self.queues {
            let n = q.number.get_ref();
            let clash = if n.is_empty() {
                Some("must not be empty")
            } else if users.contains(n) || self.demo.extensions.contains(n) {
                Some("is also an extension")
            } else if taken.contains(n.as_str()) {
                Some("is also a test number or feature code")
            } else if !numbers.insert(n.clone()) {
                Some("is defined twice")
            } else {
                None
            };
            if let Some(why) = clash {
                return Err(bad(
                    q.number.span(),
                    "queues.number",
                    format!("queue {n} {why}"),
                ));
            }
            if q.groups.get_ref().is_empty() {
                return Err(bad(
                    q.groups.span(),
                    "queues.groups",
                    format!("queue {n}: name at least one group"),
                ));
            }
            if let Some(g) = q.groups.get_ref().iter().find(|g| !groups.contains(*g)) {
                return Err(bad(
                    q.groups.span(),
                    "queues.groups",
                    format!("queue {n}: no group {g}"),
                ));
            }
            if q.ring_secs == 0 {
                return Err(bad(
                    q.number.span(),
                    "queues.ring_secs",
                    format!("queue {n}: must be at least 1"),
                ));
            }
            if q.overflow_callback && !q.overflow_to.get_ref().is_empty() {
                return Err(bad(
                    q.overflow_to.span(),
                    "queues.overflow_to",
                    format!("queue {n}: overflow_to and overflow_callback: choose one"),
                ));
            }
            let cb = q.callback_group.get_ref();
            if !cb.is_empty() && !groups.contains(cb) {
                return Err(bad(
                    q.callback_group.span(),
                    "queues.callback_group",
                    format!("queue {n}: no group {cb}"),
                ));
            }
            if q.callback_mode == CallbackMode::Auto {
                let trunk = q.callback_trunk.get_ref();
                let why = if !q.overflow_callback {
                    Some("needs overflow_callback = true (the call-backs it serves)".to_string())
                } else if !self.trunks.iter().any(|t| t.name.get_ref() == trunk) {
                    Some(format!("callback_trunk: no trunk {trunk:?}"))
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(bad(
                        q.callback_trunk.span(),
                        "queues.callback_mode",
                        format!("queue {n}: callback_mode = \"auto\" {why}"),
                    ));
                }
            }
            if !(5..=600).contains(&q.callback_message_secs) {
                return Err(bad(
                    q.number.span(),
                    "queues.callback_message_secs",
                    format!("queue {n}: 5 to 600 seconds"),
                ));
            }
            for (key, file) in [
                ("queues.announcement", &q.announcement),
                ("queues.music", &q.music),
                ("queues.overflow_announcement", &q.overflow_announcement),
                ("queues.callback_prompt", &q.callback_prompt),
                ("queues.callback_thanks", &q.callback_thanks),
            ] {
                if file.get_ref().is_empty() {
                    continue;
                }
                if let Err(e) = read_sound(file.get_ref()) {
                    return Err(bad(
                        file.span(),
                        key,
                        format!("queue {n}: {}: {e}", file.get_ref()),
                    ));
                }
            }
        }
        for q in &self.queues {
            let to = q.overflow_to.get_ref();
            if !to.is_empty() && !numbers.contains(to) && !users.contains(to) {
                return Err(bad(
                    q.overflow_to.span(),
                    "queues.overflow_to",
                    format!(
                        "queue {}: {to} is neither a queue nor an extension",
                        q.number.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The fixed address to put in SDP, or `None` for "auto".
    pub fn advertise_ip(&self) -> Option<std::net::IpAddr> {
        self.rtp.advertise_ip.get_ref().parse().ok()
    }

    /// The SIP domain (and digest realm).
    pub fn domain(&self) -> &str {
        self.sip.domain.get_ref()
    }

    pub fn timers(&self) -> TimerConfig {
        TimerConfig {
            t1: Duration::from_millis(*self.sip.t1_ms.get_ref()),
            t2: Duration::from_millis(*self.sip.t2_ms.get_ref()),
            t4: Duration::from_millis(self.sip.t4_ms),
        }
    }

    /// Whether the demo users are the whole phone system (nothing of the
    /// office configured): then the demo group and queue exist too.
    /// The users with a mailbox, with their PINs: the configured ones, and
    /// the demo users while the demo desk is on (`[demo] voicemail`).
    pub fn mailboxes(&self) -> Vec<(String, Option<String>)> {
        let mut boxes: Vec<(String, Option<String>)> = self
            .users
            .iter()
            .filter(|u| u.voicemail)
            .map(|u| (u.extension.get_ref().clone(), u.voicemail_pin.clone()))
            .collect();
        if self.demo_desk() && self.demo.voicemail {
            boxes.extend(self.demo.extensions.iter().map(|e| (e.clone(), None)));
        }
        boxes
    }

    pub fn demo_desk(&self) -> bool {
        self.demo_added
            || (!self.demo.extensions.is_empty()
                && self.users.is_empty()
                && self.groups.is_empty()
                && self.queues.is_empty())
    }

    /// This configuration with the demo group (every demo extension, in order)
    /// and the demo queue serving it, when [`demo_desk`](Self::demo_desk).
    pub fn with_demo_desk(mut self) -> Config {
        if self.demo_added || !self.demo_desk() || self.demo.group.is_empty() {
            return self;
        }
        self.demo_added = true;
        let d = &self.demo;
        self.groups.push(GroupConfig {
            name: sp(d.group.clone()),
            members: (d.extensions.iter().zip(1..))
                .map(|(e, priority)| MemberConfig {
                    extension: sp(e.clone()),
                    priority,
                })
                .collect(),
            callback_escalate_secs: default_callback_escalate(),
            callback_flag_secs: default_callback_flag(),
            dialing_classes: Vec::new(),
            caller_id: String::new(),
            number: sp(d.ring_group.clone()),
            ring: RingOrder::All,
            ring_secs: default_group_ring_secs(),
            then: unset(),
        });
        if !d.queue.is_empty() {
            self.queues.push(QueueConfig {
                number: sp(d.queue.clone()),
                groups: sp(vec![d.group.clone()]),
                ring_secs: default_ring_secs(),
                max_wait_secs: default_max_wait_secs(),
                wrap_up_secs: default_wrap_up_secs(),
                service_level_secs: default_service_level_secs(),
                announcement: unset(),
                music: unset(),
                overflow_announcement: unset(),
                overflow_to: unset(),
                // The demo shows the call-back box filled by the PBX too.
                overflow_callback: true,
                callback_group: unset(),
                callback_prompt: unset(),
                callback_thanks: unset(),
                callback_message_secs: default_callback_message_secs(),
                callback_mode: CallbackMode::Manual,
                callback_trunk: unset(),
            });
        }
        self
    }

    /// The desk's supervisors: users with `role = "supervisor"`, and the demo's.
    /// The users whose phones get unsolicited message-summary NOTIFYs.
    pub fn unsolicited_mwi(&self) -> Vec<String> {
        self.users
            .iter()
            .filter(|u| u.unsolicited_mwi)
            .map(|u| u.extension.get_ref().clone())
            .collect()
    }

    pub fn supervisors(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .users
            .iter()
            .filter(|u| u.role == DeskRole::Supervisor)
            .map(|u| u.extension.get_ref().clone())
            .collect();
        if self.demo_desk() && !self.demo.supervisor.is_empty() {
            v.push(self.demo.supervisor.clone());
        }
        v
    }

    /// Configured users with their secrets reduced to HA1 values.
    pub fn users(&self) -> Vec<User> {
        let realm = self.domain();
        self.users
            .iter()
            .map(|u| {
                let ext = u.extension.get_ref().clone();
                let ha1 = match &u.password {
                    Some(pw) => Ha1::from_password(&ext, realm, pw),
                    None => Ha1 {
                        md5: u.ha1_md5.clone().map(|h| h.to_ascii_lowercase()),
                        sha256: u.ha1_sha256.clone().map(|h| h.to_ascii_lowercase()),
                    },
                };
                User {
                    extension: ext,
                    name: u.name.clone(),
                    ha1,
                }
            })
            .collect()
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.matches('\n').count() + 1)
}

/// toml's own message already names the key; make sure the line is stated first.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = line_of(text, span.start);
            let src = text.lines().nth(line - 1).unwrap_or_default().trim();
            format!("line {line}: {msg} (in `{src}`)")
        }
        None => msg,
    }
}

/// The sound in WAV file `path`.
pub fn read_sound(path: &str) -> Result<crate::media::prompt::Prompt, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    crate::media::prompt::Prompt::from_wav(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_has_the_demo_group_queue_and_supervisor() {
        let config = Config::embedded().expect("valid").with_demo_desk();
        assert!(
            config.demo_desk(),
            "still the demo's desk once its group is added"
        );
        assert_eq!(config.groups.len(), 1);
        assert_eq!(config.groups[0].name.get_ref(), "support");
        let members: Vec<&str> = config.groups[0]
            .members
            .iter()
            .map(|m| m.extension.get_ref().as_str())
            .collect();
        assert_eq!(members, ["201", "202", "203", "204"]);
        assert_eq!(config.queues[0].number.get_ref(), "500");
        assert_eq!(config.queues[0].groups.get_ref(), &["support"]);
        assert_eq!(config.supervisors(), ["204"]);
        let again = config.clone().with_demo_desk();
        assert_eq!(again.groups.len(), 1, "added once");
        let office = Config::parse(
            "[[users]]\nextension = \"301\"\npassword = \"x\"\nrole = \"supervisor\"\n",
            "test",
        )
        .expect("valid")
        .with_demo_desk();
        assert!(!office.demo_desk() && office.groups.is_empty());
        assert_eq!(office.supervisors(), ["301"]);
    }

    #[test]
    fn the_embedded_file_equals_the_built_in_defaults() {
        // Spanned<T> compares values only, so spans do not matter here.
        let embedded = Config::embedded().expect("embedded config is valid");
        assert_eq!(embedded, Config::default());
    }

    #[test]
    fn a_partial_file_keeps_defaults_for_what_it_leaves_out() {
        let c = Config::parse("[sip]\nudp = [\"127.0.0.1:5070\"]\n", "t").expect("valid");
        assert_eq!(c.sip.udp, vec!["127.0.0.1:5070".parse().expect("addr")]);
        assert_eq!(c.domain(), "sipdesk.local");
    }

    #[test]
    fn a_shedding_wait_outside_10_to_10000_ms_is_refused() {
        for bad in ["9", "10001"] {
            let text = format!("[sip]\nshed_after_ms = {bad}\n");
            let e = Config::parse(&text, "t").expect_err(bad);
            assert!(e.to_string().contains("sip.shed_after_ms"), "{e}");
        }
        let c = Config::parse("[sip]\nshed_after_ms = 1000\n", "t").expect("valid");
        assert_eq!(*c.sip.shed_after_ms.get_ref(), 1000);
        assert_eq!(*Config::default().sip.shed_after_ms.get_ref(), 50);
    }

    #[test]
    fn a_voicemail_limit_outside_5_to_600_seconds_is_refused() {
        for bad in ["0", "4", "601"] {
            let text = format!("[voicemail]\nmax_message_secs = {bad}\n");
            let e = Config::parse(&text, "t").expect_err(bad);
            assert!(
                e.to_string().contains("line 2")
                    && e.to_string().contains("voicemail.max_message_secs"),
                "{e}"
            );
        }
        let c = Config::parse(
            "[[users]]\nextension = \"201\"\npassword = \"x\"\nvoicemail = true\n",
            "t",
        )
        .expect("a mailbox");
        assert!(c.users[0].voicemail);
        let pin = "[[users]]\nextension = \"201\"\npassword = \"x\"\nvoicemail_pin = \"12a4\"\n";
        let e = Config::parse(pin, "t").expect_err("pin");
        assert!(e.to_string().contains("voicemail_pin"), "{e}");
    }

    #[test]
    fn a_zero_inactivity_period_or_a_tiny_min_se_is_refused() {
        let e = Config::parse("[rtp]\ninactivity_secs = 0\n", "t").expect_err("zero");
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("rtp.inactivity_secs"),
            "{e}"
        );
        let e = Config::parse("[calls]\nmin_session_expires_secs = 0\n", "t").expect_err("min-se");
        assert!(
            e.to_string().contains("calls.min_session_expires_secs"),
            "{e}"
        );
    }

    #[test]
    fn a_ring_group_needs_a_number_of_its_own_and_a_forward_may_not_point_home() {
        let user = "[[users]]\nextension = \"201\"\npassword = \"pw\"\n";
        let group = |extra: &str| {
            format!("{user}[[groups]]\nname = \"front\"\nnumber = \"600\"\nmembers = [{{ extension = \"201\" }}]\n{extra}")
        };
        let c = Config::parse(&group("ring = \"order\"\nthen = \"201\"\n"), "t").expect("valid");
        assert_eq!(c.groups[0].ring, RingOrder::Order);
        let e = Config::parse(
            &group("[[queues]]\nnumber = \"600\"\ngroups = [\"front\"]\n"),
            "t",
        )
        .expect_err("clash");
        assert!(e.to_string().contains("600"), "{e}");
        let e = Config::parse(&group("then = \"600\"\n"), "t").expect_err("then home");
        assert!(e.to_string().contains("groups.then"), "{e}");
        let e = Config::parse(&group("ring_secs = 0\n"), "t").expect_err("no ring");
        assert!(e.to_string().contains("groups.ring_secs"), "{e}");
        let e = Config::parse(&format!("{user}forward_always = \"201\"\n"), "t")
            .expect_err("to itself");
        assert!(e.to_string().contains("cannot forward to itself"), "{e}");
        let e = Config::parse(&format!("{user}forward_no_answer_secs = 500\n"), "t")
            .expect_err("too long");
        assert!(e.to_string().contains("no_answer_secs"), "{e}");
        let e = Config::parse("[[queues]]\nnumber = \"*40\"\ngroups = []\n", "t")
            .expect_err("a code is no queue");
        assert!(e.to_string().contains("feature code"), "{e}");
        let e = Config::parse("[features]\nforward_busy = \"*40\"\n", "t").expect_err("twice");
        assert!(e.to_string().contains("used twice"), "{e}");
    }

    #[test]
    fn automatic_call_backs_need_the_call_back_offer_and_a_trunk() {
        let queue = "[[groups]]\nname = \"g\"\nmembers = []\n[[queues]]\nnumber = \"500\"\ngroups = [\"g\"]\ncallback_mode = \"auto\"\n";
        let e = Config::parse(queue, "t").expect_err("no offer");
        assert!(e.to_string().contains("needs overflow_callback"), "{e}");
        let offered = format!("{queue}overflow_callback = true\ncallback_trunk = \"nope\"\n");
        let e = Config::parse(&offered, "t").expect_err("no trunk");
        assert!(
            e.to_string().contains("queues.callback_mode")
                && e.to_string().contains("no trunk \"nope\""),
            "{e}"
        );
        let e = Config::parse("[calls]\ncampaign_farewell = \"/nonexistent.wav\"\n", "t")
            .expect_err("no such file");
        assert!(e.to_string().contains("calls.campaign_farewell"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_line() {
        let e = Config::parse("[sip]\nudp = [\"127.0.0.1:5070\"]\nfoo = 1\n", "t")
            .expect_err("unknown");
        let msg = e.to_string();
        assert!(msg.contains("line 3") && msg.contains("foo"), "{msg}");
        let e = Config::parse("[sip]\n\nudp = [\"nonsense\"]\n", "t").expect_err("addr");
        assert!(e.to_string().contains("line 3"), "{e}");
        let e =
            Config::parse("[rtp]\nport_min = 40000\nport_max = 30000\n", "t").expect_err("range");
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("rtp.port_min"),
            "{e}"
        );
        let e = Config::parse("[[users]]\nextension = \"201\"\n", "t").expect_err("secret");
        assert!(e.to_string().contains("users.password"), "{e}");
        let e = Config::parse(
            "[[users]]\nextension = \"201\"\npassword = \"x\"\n[[groups]]\nname = \"s\"\nmembers = [{ extension = \"999\" }]\n",
            "t",
        )
        .expect_err("member");
        assert!(
            e.to_string().contains("line 6") && e.to_string().contains("999"),
            "{e}"
        );
    }

    #[test]
    fn bad_trunks_and_routes_name_the_key_and_line() {
        let base = "[[users]]\nextension = \"201\"\npassword = \"x\"\n\
                    [[trunks]]\nname = \"carrier\"\nhost = \"192.0.2.1\"\nregister = false\n";
        let bad = |more: &str| {
            Config::parse(&format!("{base}{more}"), "t")
                .expect_err(more)
                .to_string()
        };
        let route = "[[routes]]\nname = \"national\"\nclass = \"national\"\n";
        let e = bad(&format!(
            "{route}pattern = \"0[1-9\"\ntrunks = [\"carrier\"]\n"
        ));
        assert!(e.contains("line 11") && e.contains("routes.pattern"), "{e}");
        let e = bad(&format!(
            "{route}pattern = \"0.*\"\ntrunks = [\"nobody\"]\n"
        ));
        assert!(
            e.contains("routes.trunks") && e.contains("no trunk nobody"),
            "{e}"
        );
        let e = bad(&format!(
            "{route}pattern = \"0.*\"\ntrunks = [\"carrier\"]\nfailover = [\"5x\"]\n"
        ));
        assert!(e.contains("routes.failover") && e.contains("5x"), "{e}");
        let e = bad(&format!(
            "{route}pattern = \"0.*\"\ntrunks = [\"carrier\"]\nclass = \"cheap\"\n"
        ));
        assert!(e.contains("class"), "{e}");
        let e = bad("dids = { \"0312345678\" = \"777\" }\n");
        assert!(
            e.contains("line 8") && e.contains("trunks.dids") && e.contains("777"),
            "{e}"
        );
        let e = bad("dids = { \"03-x\" = \"201\" }\n");
        assert!(e.contains("not a number"), "{e}");
        let e = bad("allow = [\"10.0.0.0/33\"]\n");
        assert!(e.contains("trunks.allow"), "{e}");
        let e = bad("country_code = \"+81\"\n");
        assert!(e.contains("trunks.country_code"), "{e}");
    }

    #[test]
    fn an_outbound_proxy_takes_the_trunks_requests_and_either_may_send_its_calls() {
        let text =
            "[[trunks]]\nname = \"carrier\"\nhost = \"sip.carrier.test\"\nregister = false\n\
                    outbound_proxy = \"edge.carrier.test:5070\"\n";
        let config = Config::parse(text, "t").expect("valid");
        let addrs = |host: &str, port: Option<u16>, _| -> Vec<SocketAddr> {
            let ips: &[&str] = match host {
                "sip.carrier.test" => &["192.0.2.1", "192.0.2.2"],
                "edge.carrier.test" => &["198.51.100.9"],
                _ => &[],
            };
            let port = port.unwrap_or(5060);
            ips.iter()
                .filter_map(|ip| format!("{ip}:{port}").parse().ok())
                .collect()
        };
        let located = config.trunks[0].located(&addrs);
        let to: Vec<String> = located.send_to.iter().map(|r| r.addr.to_string()).collect();
        assert_eq!(to, ["198.51.100.9:5070"]);
        let from: Vec<String> = located.from.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(from, ["192.0.2.1", "192.0.2.2", "198.51.100.9"]);
        let o = config.outside(&|_, _, _| Vec::new());
        assert!(
            o.line(crate::outside::TrunkId(0))
                .targets
                .in_order()
                .is_empty(),
            "kept, to be found later"
        );
    }

    #[test]
    fn the_outside_rules_come_from_the_trunks_routes_users_and_groups() {
        let text = "[[users]]\nextension = \"201\"\npassword = \"x\"\ncaller_id = \"+81312340201\"\n\
                    [[users]]\nextension = \"202\"\npassword = \"x\"\ndialing_classes = []\n\
                    [[groups]]\nname = \"sales\"\nmembers = [{ extension = \"202\" }]\ndialing_classes = [\"international\"]\ncaller_id = \"+81312349999\"\n\
                    [[trunks]]\nname = \"carrier\"\nhost = \"192.0.2.1\"\nregister = false\ncountry_code = \"81\"\nnational_prefix = \"0\"\n\
                    dids = { \"0312345678\" = \"201\" }\n\
                    [[routes]]\nname = \"international\"\npattern = \"010[0-9]+\"\nclass = \"international\"\ntrunks = [\"carrier\"]\n";
        let config = Config::parse(text, "t").expect("valid");
        let o = config.outside(&|host, port, _| {
            format!("{host}:{}", port.unwrap_or(5060))
                .parse()
                .into_iter()
                .collect()
        });
        let line = o.line(crate::outside::TrunkId(0));
        let targets = line.targets.in_order();
        assert_eq!(targets[0].addr, "192.0.2.1:5060".parse().expect("addr"));
        assert_eq!(
            line.did_from,
            crate::outside::DidFrom::RequestUri,
            "IP authentication"
        );
        assert_eq!(
            line.dids.get("+81312345678").map(String::as_str),
            Some("201")
        );
        let r = o.route("0104420794601").expect("a route");
        let now = std::time::Instant::now();
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        assert!(
            o.check(now, ip, Some("201"), r, "0104420794601").is_err(),
            "default classes"
        );
        assert!(
            o.check(now, ip, Some("202"), r, "0104420794601").is_ok(),
            "the group's class"
        );
        let t = crate::outside::TrunkId(0);
        assert_eq!(o.caller_id(Some(r), t, "201"), "+81312340201");
        assert_eq!(o.caller_id(Some(r), t, "202"), "+81312349999");
    }

    #[test]
    fn queues_must_name_known_groups_free_numbers_and_playable_sounds() {
        let base = "[[users]]\nextension = \"201\"\npassword = \"x\"\n\
                    [[groups]]\nname = \"support\"\nmembers = [{ extension = \"201\" }]\n";
        let bad = |queue: &str| {
            Config::parse(&format!("{base}[[queues]]\n{queue}"), "t")
                .expect_err(queue)
                .to_string()
        };
        let e = bad("number = \"500\"\ngroups = [\"sales\"]\n");
        assert!(e.contains("line 9") && e.contains("no group sales"), "{e}");
        let e = bad("number = \"201\"\ngroups = [\"support\"]\n");
        assert!(
            e.contains("queues.number") && e.contains("also an extension"),
            "{e}"
        );
        let e = bad("number = \"9000\"\ngroups = [\"support\"]\n");
        assert!(e.contains("test number"), "{e}");
        let e = bad("number = \"500\"\ngroups = [\"support\"]\noverflow_to = \"777\"\n");
        assert!(e.contains("queues.overflow_to") && e.contains("777"), "{e}");
        let e = bad("number = \"500\"\ngroups = [\"support\"]\nmusic = \"/nonexistent.wav\"\n");
        assert!(
            e.contains("queues.music") && e.contains("/nonexistent.wav"),
            "{e}"
        );
        let ok = Config::parse(
            &format!("{base}[[queues]]\nnumber = \"500\"\ngroups = [\"support\"]\noverflow_to = \"201\"\n"),
            "t",
        )
        .expect("valid");
        assert_eq!(ok.queues[0].ring_secs, 15);
    }

    #[test]
    fn users_are_reduced_to_ha1() {
        let c = Config::parse(
            "[[users]]\nextension = \"201\"\npassword = \"pw\"\n[[users]]\nextension = \"202\"\nha1_md5 = \"0123456789abcdef0123456789ABCDEF\"\n",
            "t",
        )
        .expect("valid");
        let users = c.users();
        assert_eq!(
            users[0].ha1,
            Ha1::from_password("201", "sipdesk.local", "pw")
        );
        assert_eq!(
            users[1].ha1.md5.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(users[1].ha1.sha256, None);
    }
}
