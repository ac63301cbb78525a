//! The outside line as the calls see it — pure rules, no I/O and no
//! transaction user (the trunks' registrations are `trunk`'s):
//!
//! - which trunk an INVITE came from: its source address (IP authentication),
//!   or the registration it arrives on (the secret `line` parameter of the
//!   Contact a trunk registers, as Asterisk does, for providers that send
//!   calls from addresses other than their registrar's);
//! - the number it called (DID) and where that goes, and who is calling, in
//!   E.164 ([`Numbering`]) and with Privacy honoured;
//! - which route an outside number takes: its trunks in order, the number
//!   each is sent, the caller ID, the answers that move on to the next trunk;
//! - the toll-fraud guard ([`Fraud`]) and each trunk's channel count, shared
//!   by the shards.
//!
//! Built once at start from the configuration (`Config::outside`); only the
//! trunks' addresses change later, when DNS answers anew (`Targets`).

pub mod fraud;
pub mod numbers;
pub mod targets;

pub use fraud::{Caps, Class, Denied, Fraud, Permit};
pub use numbers::Numbering;
pub use targets::{Located, Targets};

use crate::sip::message::{Message, NameAddr, Uri};
use crate::sip::{Remote, Transport};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A trunk, by its place in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrunkId(pub usize);

/// An outbound route, by its place in the configuration (the first match wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub usize);

/// Where a trunk's called number is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DidFrom {
    To,
    RequestUri,
}

/// A route pattern: a regular expression that must match the whole number.
pub fn pattern(p: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| e.to_string())
}

/// Final answers that move an outside call to the next trunk: a code, or a
/// class (`5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    low: u16,
    high: u16,
}

impl Failover {
    pub fn parse(s: &str) -> Option<Failover> {
        let s = s.trim();
        if let Some(class) = s.strip_suffix("xx") {
            let c: u16 = class.parse().ok().filter(|c| (3..=6).contains(c))?;
            return Some(Failover {
                low: c * 100,
                high: c * 100 + 99,
            });
        }
        let code: u16 = s.parse().ok().filter(|c| (300..=699).contains(c))?;
        Some(Failover {
            low: code,
            high: code,
        })
    }

    fn covers(self, code: u16) -> bool {
        (self.low..=self.high).contains(&code)
    }
}

/// A trunk as calls use it.
#[derive(Debug)]
pub struct Line {
    pub name: String,
    pub transport: Transport,
    /// Where its requests go (the outbound proxy, or the provider) and where
    /// its provider's come from, as DNS last said.
    pub targets: Targets,
    /// The provider's SIP domain (Request-URI and From of our INVITEs).
    pub domain: String,
    /// The account (our registration's user, and the caller ID of last resort).
    pub username: String,
    pub auth_username: String,
    pub password: String,
    /// Inbound calls are taken from these networks too (IP authentication).
    pub allow: Vec<IpNet>,
    /// A registering trunk's secret in its Contact (`;line=`): an INVITE to
    /// it is the trunk's, from wherever it comes.
    pub line_token: Option<String>,
    pub numbering: Numbering,
    pub did_from: DidFrom,
    /// Called number (E.164 where it converts) → where it goes.
    pub dids: HashMap<String, String>,
    pub did_default: Option<String>,
    /// 0: no limit.
    pub max_channels: u32,
    /// Codec names offered to the provider, in order ([]: the phone's offer).
    pub codecs: Vec<String>,
    pub caller_id: String,
    pub send_pai: bool,
    /// No answer at all this long: the provider counts as down for the call.
    pub trying_timeout: Duration,
    /// Channels in use.
    channels: AtomicU32,
    /// False while the trunk's registration is down: calls skip it at once.
    up: std::sync::atomic::AtomicBool,
}

impl Line {
    /// A trunk at one address.
    pub fn new(name: String, remote: Remote, domain: String) -> Line {
        let located = Located {
            send_to: vec![remote],
            from: vec![remote.addr.ip()],
        };
        Line::located(name, remote.transport, located, domain)
    }

    /// A trunk where DNS found it.
    pub fn located(name: String, transport: Transport, located: Located, domain: String) -> Line {
        Line {
            username: String::new(),
            auth_username: String::new(),
            password: String::new(),
            allow: Vec::new(),
            line_token: None,
            numbering: Numbering::default(),
            did_from: DidFrom::RequestUri,
            dids: HashMap::new(),
            did_default: None,
            max_channels: 0,
            codecs: Vec::new(),
            caller_id: String::new(),
            send_pai: true,
            trying_timeout: Duration::from_secs(2),
            channels: AtomicU32::new(0),
            up: std::sync::atomic::AtomicBool::new(true),
            name,
            transport,
            targets: Targets::new(located),
            domain,
        }
    }

    /// Takes a channel, if one is free.
    pub fn seize(&self) -> bool {
        let max = self.max_channels;
        self.channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release(&self) {
        let _ = self
            .channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn channels(&self) -> u32 {
        self.channels.load(Ordering::Acquire)
    }

    /// Whether calls may try this trunk (its registration is not down).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// An outbound route.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub pattern: regex::Regex,
    pub class: Class,
    pub trunks: Vec<TrunkId>,
    pub strip: usize,
    pub prepend: String,
    pub e164: bool,
    pub failover: Vec<Failover>,
    pub caller_id: String,
}

/// An inbound call as the trunk's rules read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The called number, in E.164 where it converts.
    pub did: String,
    /// Where it goes (a number of ours, or `group:NAME`); `None`: nowhere.
    pub target: Option<String>,
    /// The caller in E.164, or "anonymous" (withheld, missing or malformed).
    pub caller: String,
    pub display: Option<String>,
}

/// One try of an outside call: a trunk, one of its targets, and the number
/// it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub trunk: TrunkId,
    pub target: Remote,
    pub number: String,
}

/// Everything outside, shared by the shards.
#[derive(Debug)]
pub struct Outside {
    pub lines: Vec<Line>,
    pub routes: Vec<Route>,
    /// Each user's dialing classes (their own or the default, plus their groups').
    classes: HashMap<String, Vec<Class>>,
    default_classes: Vec<Class>,
    /// Each user's caller ID (their own, else their first group's that has one).
    caller_ids: HashMap<String, String>,
    /// Users whose caller ID is always withheld.
    withheld: std::collections::HashSet<String>,
    pub fraud: Fraud,
}

impl Default for Outside {
    fn default() -> Self {
        Outside::new(Vec::new(), Vec::new(), Caps::default())
    }
}

impl Outside {
    pub fn new(lines: Vec<Line>, routes: Vec<Route>, caps: Caps) -> Outside {
        Outside {
            lines,
            routes,
            classes: HashMap::new(),
            default_classes: vec![Class::Internal, Class::National],
            caller_ids: HashMap::new(),
            withheld: Default::default(),
            fraud: Fraud::new(caps),
        }
    }

    /// Who may dial what: `default` unless a user has their own classes.
    pub fn with_classes(
        mut self,
        default: Vec<Class>,
        classes: HashMap<String, Vec<Class>>,
        caller_ids: HashMap<String, String>,
    ) -> Outside {
        self.default_classes = default;
        self.classes = classes;
        self.caller_ids = caller_ids;
        self
    }

    /// These users' outside calls withhold their caller ID.
    pub fn with_withheld(mut self, users: std::collections::HashSet<String>) -> Outside {
        self.withheld = users;
        self
    }

    /// Whether `user`'s outside calls withhold their caller ID.
    pub fn withholds(&self, user: &str) -> bool {
        self.withheld.contains(user)
    }

    pub fn line(&self, t: TrunkId) -> &Line {
        &self.lines[t.0]
    }

    /// Trunk `t`'s registration went up or down.
    pub fn set_up(&self, t: TrunkId, up: bool) {
        if let Some(l) = self.lines.get(t.0) {
            l.up.store(up, Ordering::Release);
        }
    }

    /// The trunk named `name`.
    pub fn trunk_named(&self, name: &str) -> Option<TrunkId> {
        self.lines.iter().position(|l| l.name == name).map(TrunkId)
    }

    /// The trunk whose provider sent a request from `ip`.
    pub fn trunk_from(&self, ip: IpAddr) -> Option<TrunkId> {
        self.lines
            .iter()
            .position(|l| l.targets.sends_from(ip) || l.allow.iter().any(|n| n.contains(&ip)))
            .map(TrunkId)
    }

    /// The trunk an INVITE from `ip` came from: by its source address, else
    /// by the `line` token of a trunk's registration in its Request-URI.
    pub fn trunk_of(&self, ip: IpAddr, req: &Message) -> Option<TrunkId> {
        use subtle::ConstantTimeEq;
        if let Some(t) = self.trunk_from(ip) {
            return Some(t);
        }
        let uri = req.request_uri()?;
        let token = uri.params.get(b"line")??;
        self.lines
            .iter()
            .position(|l| {
                l.line_token
                    .as_ref()
                    .is_some_and(|t| bool::from(t.as_bytes().ct_eq(token)))
            })
            .map(TrunkId)
    }

    /// Reads an INVITE from trunk `t`: its DID and target, and its caller.
    pub fn inbound(&self, t: TrunkId, req: &Message) -> Inbound {
        let line = self.line(t);
        let called = match line.did_from {
            DidFrom::To => req.to_header().and_then(|n| Uri::parse(n.uri)),
            DidFrom::RequestUri => req.request_uri(),
        };
        let raw = called
            .and_then(|u| u.user)
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .unwrap_or_default();
        let did = line.numbering.to_e164(&raw).unwrap_or(raw.clone());
        let target = line
            .dids
            .get(&did)
            .or_else(|| line.dids.get(&raw))
            .or(line.did_default.as_ref())
            .cloned();
        let (caller, display) = caller(req, &line.numbering);
        Inbound {
            did,
            target,
            caller,
            display,
        }
    }

    /// The route an outside number takes (`None`: it is no outside number).
    pub fn route(&self, number: &str) -> Option<RouteId> {
        self.routes
            .iter()
            .position(|r| r.pattern.is_match(number))
            .map(RouteId)
    }

    pub fn route_of(&self, r: RouteId) -> &Route {
        &self.routes[r.0]
    }

    /// The tries of `dialled` on route `r`, in order: each trunk's targets
    /// in their order now (a trunk DNS found nowhere has none).
    pub fn attempts(&self, r: RouteId, dialled: &str) -> Vec<Attempt> {
        let route = self.route_of(r);
        let mut attempts = Vec::new();
        for t in &route.trunks {
            let number = self.number_for(route, *t, dialled);
            for target in self.line(*t).targets.in_order() {
                let (trunk, number) = (*t, number.clone());
                attempts.push(Attempt {
                    trunk,
                    target,
                    number,
                });
            }
        }
        attempts
    }

    /// `dialled` as `route` sends it to trunk `t`.
    fn number_for(&self, route: &Route, t: TrunkId, dialled: &str) -> String {
        let rest = dialled.get(route.strip..).unwrap_or_default();
        let base = format!("{}{rest}", route.prepend);
        match route.e164 {
            true => self.line(t).numbering.to_e164(&base).unwrap_or(base),
            false => base,
        }
    }

    /// Whether a final answer `code` on route `r` moves on to the next trunk.
    pub fn fails_over(&self, r: RouteId, code: u16) -> bool {
        self.route_of(r).failover.iter().any(|f| f.covers(code))
    }

    /// The caller ID `user`'s call on route `r` (if any) shows through trunk `t`.
    pub fn caller_id(&self, r: Option<RouteId>, t: TrunkId, user: &str) -> String {
        let line = self.line(t);
        [
            self.caller_ids.get(user).map(String::as_str),
            r.map(|r| self.route_of(r).caller_id.as_str()),
            Some(line.caller_id.as_str()),
        ]
        .into_iter()
        .flatten()
        .find(|c| !c.is_empty())
        .unwrap_or(&line.username)
        .to_string()
    }

    /// Whether `user`'s dialing classes allow `dialled` on route `r` (as a
    /// forwarding destination: never an emergency number, never a blocked
    /// prefix; the rate caps are the guard's, per call).
    pub fn may_dial(&self, user: &str, r: RouteId, dialled: &str) -> bool {
        let classes = self.classes.get(user).unwrap_or(&self.default_classes);
        let route = self.route_of(r);
        route.class != Class::Emergency
            && classes.contains(&route.class)
            && !self.fraud.blocks(dialled)
    }

    /// The toll-fraud check for `user` (authenticated, from `source`) dialling
    /// `dialled` on route `r`.
    pub fn check(
        &self,
        now: Instant,
        source: IpAddr,
        user: Option<&str>,
        r: RouteId,
        dialled: &str,
    ) -> Result<Permit, Denied> {
        let classes = user
            .and_then(|u| self.classes.get(u))
            .unwrap_or(&self.default_classes);
        let route = self.route_of(r);
        let sent: Vec<String> = route
            .trunks
            .iter()
            .map(|t| self.number_for(route, *t, dialled))
            .collect();
        let mut numbers: Vec<&str> = vec![dialled];
        numbers.extend(sent.iter().map(String::as_str));
        let class = route.class;
        self.fraud
            .check(now, source, user, classes, class, &numbers)
    }
}

/// Whether a request asks for its sender's identity to be withheld
/// (`Privacy: id` or `user`, RFC 3323/3325).
pub fn privacy_asked(req: &Message) -> bool {
    req.other_values("Privacy")
        .flat_map(|v| v.split(|c| *c == b';' || *c == b','))
        .any(|p| {
            let p = p.trim_ascii();
            p.eq_ignore_ascii_case(b"id") || p.eq_ignore_ascii_case(b"user")
        })
}

/// The caller of an inbound INVITE: P-Asserted-Identity, else From, in E.164;
/// "anonymous" when withheld (`Privacy: id` or `user`), missing or malformed.
fn caller(req: &Message, numbering: &Numbering) -> (String, Option<String>) {
    if privacy_asked(req) {
        return ("anonymous".into(), None);
    }
    let asserted = req
        .other_values("P-Asserted-Identity")
        .flat_map(|v| v.split(|c| *c == b','))
        .filter_map(NameAddr::parse)
        .find(|n| Uri::parse(n.uri).is_some_and(|u| u.user.is_some()));
    let party = asserted.or_else(|| req.from_header());
    let number = party
        .and_then(|n| Uri::parse(n.uri))
        .and_then(|u| u.user)
        .and_then(|u| std::str::from_utf8(u).ok())
        .and_then(|u| numbering.to_e164(u));
    let display = party
        .and_then(|n| n.display)
        .map(|d| String::from_utf8_lossy(d).trim_matches('"').to_string())
        .filter(|d| !d.is_empty() && !d.eq_ignore_ascii_case("anonymous"));
    match number {
        Some(n) => (n, display),
        None => ("anonymous".into(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::numbers::tests::japan;
    use super::*;

    fn outside() -> Outside {
        let remote = |a: &str| Remote::udp(a.parse().expect("addr"));
        let mut first = Line::new(
            "first".into(),
            remote("192.0.2.10:5060"),
            "first.example".into(),
        );
        first.numbering = japan();
        first.did_from = DidFrom::To;
        first.dids.insert("+81312345678".into(), "500".into());
        first.did_default = Some("201".into());
        first.caller_id = "+81312340000".into();
        first.max_channels = 1;
        let mut second = Line::new(
            "second".into(),
            remote("192.0.2.20:5060"),
            "second.example".into(),
        );
        second.numbering = japan();
        second.allow.push("198.51.100.0/24".parse().expect("net"));
        second.username = "office".into();
        let route = |name: &str, p: &str, class, e164| Route {
            name: name.into(),
            pattern: pattern(p).expect("pattern"),
            class,
            trunks: vec![TrunkId(0), TrunkId(1)],
            strip: 0,
            prepend: String::new(),
            e164,
            failover: ["408", "5xx"]
                .iter()
                .filter_map(|f| Failover::parse(f))
                .collect(),
            caller_id: String::new(),
        };
        let routes = vec![
            route("emergency", "110|119", Class::Emergency, false),
            route("national", "0[1-9][0-9]{8,9}", Class::National, true),
            route(
                "international",
                "010[1-9][0-9]{6,14}",
                Class::International,
                false,
            ),
        ];
        let mut caller_ids = HashMap::new();
        caller_ids.insert("202".to_string(), "+81312349999".to_string());
        Outside::new(vec![first, second], routes, Caps::default()).with_classes(
            vec![Class::Internal, Class::National],
            HashMap::new(),
            caller_ids,
        )
    }

    fn invite(headers: &str) -> Message {
        let text = format!(
            "INVITE sip:office@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKx\r\n\
             Call-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{headers}Content-Length: 0\r\n\r\n"
        );
        crate::sip::message::parse(bytes::Bytes::from(text), &Default::default()).expect("parse")
    }

    #[test]
    fn a_trunk_is_known_by_its_providers_addresses_only() {
        let o = outside();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(o.trunk_from(ip("192.0.2.10")), Some(TrunkId(0)));
        assert_eq!(o.trunk_from(ip("198.51.100.7")), Some(TrunkId(1)));
        assert_eq!(o.trunk_from(ip("203.0.113.5")), None);
    }

    #[test]
    fn a_registering_trunk_is_known_by_the_line_token_of_its_contact_from_anywhere() {
        let mut o = outside();
        o.lines[1].line_token = Some("5ecret".into());
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let to = |uri: &str| {
            let text = format!(
                "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKx\r\n\
                 Call-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            );
            crate::sip::message::parse(bytes::Bytes::from(text), &Default::default())
                .expect("parse")
        };
        let edge = ip("203.0.113.5");
        let ours = to("sip:office@192.0.2.1;transport=udp;line=5ecret");
        assert_eq!(o.trunk_of(edge, &ours), Some(TrunkId(1)));
        assert_eq!(
            o.trunk_of(edge, &to("sip:office@192.0.2.1;line=guess")),
            None
        );
        assert_eq!(o.trunk_of(edge, &to("sip:office@192.0.2.1;line")), None);
        assert_eq!(o.trunk_of(edge, &to("sip:office@192.0.2.1")), None);
        assert_eq!(
            o.trunk_of(ip("192.0.2.10"), &ours),
            Some(TrunkId(0)),
            "the address first"
        );
    }

    #[test]
    fn the_did_is_matched_in_e164_and_unknown_ones_take_the_default() {
        let o = outside();
        let call = |to: &str| {
            o.inbound(
                TrunkId(0),
                &invite(&format!(
                    "From: <sip:0399998888@x>;tag=a\r\nTo: <sip:{to}@x>\r\n"
                )),
            )
        };
        for to in ["0312345678", "+81312345678", "81312345678"] {
            assert_eq!(call(to).target.as_deref(), Some("500"), "{to}");
        }
        assert_eq!(call("0312345679").target.as_deref(), Some("201"));
    }

    #[test]
    fn the_caller_comes_from_pai_then_from_in_e164_and_privacy_hides_it() {
        let o = outside();
        let caller = |h: &str| o.inbound(TrunkId(0), &invite(&format!("{h}To: <sip:1@x>\r\n")));
        let c = caller("From: \"Sato\" <sip:0399998888@x>;tag=a\r\n");
        assert_eq!(
            (c.caller.as_str(), c.display.as_deref()),
            ("+81399998888", Some("Sato"))
        );
        let c =
            caller("From: <sip:gateway@x>;tag=a\r\nP-Asserted-Identity: <tel:+81399998888>\r\n");
        assert_eq!(c.caller, "+81399998888");
        let c = caller("From: <sip:0399998888@x>;tag=a\r\nPrivacy: id\r\n");
        assert_eq!(c.caller, "anonymous");
        for bad in [
            "From: <sip:anonymous@anonymous.invalid>;tag=a\r\n",
            "From: <sip:x@y>;tag=a\r\n",
            "From: <sip:y>;tag=a\r\n",
        ] {
            assert_eq!(caller(bad).caller, "anonymous", "{bad}");
        }
    }

    #[test]
    fn an_outside_number_takes_the_first_matching_route_and_each_trunk_its_form() {
        let o = outside();
        assert_eq!(o.route("110"), Some(RouteId(0)));
        assert_eq!(o.route("0312345678"), Some(RouteId(1)));
        assert_eq!(o.route("0104420794601"), Some(RouteId(2)));
        assert_eq!(o.route("201"), None);
        let numbers: Vec<String> = o
            .attempts(RouteId(1), "0312345678")
            .into_iter()
            .map(|a| a.number)
            .collect();
        assert_eq!(numbers, ["+81312345678", "+81312345678"]);
        assert!(o.fails_over(RouteId(1), 503) && o.fails_over(RouteId(1), 408));
        assert!(!o.fails_over(RouteId(1), 486) && !o.fails_over(RouteId(1), 603));
    }

    #[test]
    fn the_caller_id_is_the_users_then_the_routes_then_the_trunks_then_the_account() {
        let o = outside();
        assert_eq!(
            o.caller_id(Some(RouteId(1)), TrunkId(0), "202"),
            "+81312349999"
        );
        assert_eq!(
            o.caller_id(Some(RouteId(1)), TrunkId(0), "201"),
            "+81312340000"
        );
        assert_eq!(o.caller_id(Some(RouteId(1)), TrunkId(1), "201"), "office");
    }

    #[test]
    fn a_trunk_hands_out_at_most_its_channels() {
        let o = outside();
        let line = o.line(TrunkId(0));
        assert!(line.seize());
        assert!(!line.seize());
        line.release();
        assert!(line.seize());
        assert!(o.line(TrunkId(1)).seize() && o.line(TrunkId(1)).seize());
    }

    #[test]
    fn a_user_without_the_class_is_refused_and_emergency_always_goes() {
        let o = outside();
        let now = Instant::now();
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(o
            .check(now, ip, Some("201"), RouteId(1), "0312345678")
            .is_ok());
        assert_eq!(
            o.check(now, ip, Some("201"), RouteId(2), "0104420794601"),
            Err(Denied::Class("international"))
        );
        assert!(o.check(now, ip, Some("201"), RouteId(0), "110").is_ok());
    }
}
