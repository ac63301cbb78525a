//! `/metrics`: the PBX's figures in the Prometheus (OpenMetrics) text format,
//! read at scrape time: registrations, live calls, calls started and calls per
//! second, the routing latency histogram, waiting callers per queue, agents per
//! state, the event stream's clients. Encoded with `prometheus-client`; the
//! values come from the PBX's own counters, so nothing is counted twice.

use crate::presence::State;
use crate::routing::stats::QueueStats;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeMetric, LabelSetEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the routing latency buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A histogram already counted elsewhere: observations per bucket (the last
/// one is +Inf), their count and sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    /// (upper bound in seconds, observations in this bucket only).
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_secs: f64,
}

impl EncodeMetric for Buckets {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum_secs, self.count, &self.buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// What the PBX reports of itself (the runtime fills it at each scrape).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PbxFigures {
    /// Phones registered now (bindings).
    pub registrations: u64,
    pub live_calls: i64,
    /// Calls started since the PBX started.
    pub calls_started: u64,
    pub sip_received: u64,
    pub sip_malformed: u64,
    /// New requests refused with 503 under overload.
    pub sip_shed: u64,
    /// The guard: datagrams of banned sources dropped, requests of banned
    /// phones' addresses refused (503), bans, failed authentications.
    pub guard_dropped: u64,
    pub guard_refused: u64,
    pub guard_bans: u64,
    pub auth_failures: u64,
    /// Each registering trunk: whether it is registered now.
    pub trunks_up: Vec<(String, bool)>,
    /// Each trunk's channels in use.
    pub trunk_channels: Vec<(String, u32)>,
    /// Outside calls in progress, and outside calls refused by the toll-fraud guard.
    pub outside_calls: u64,
    pub toll_denied: u64,
    /// INVITE received → B-leg INVITE or answer sent.
    pub routing_latency: Buckets,
}

/// The calls-per-second figure: calls started over the last ten seconds
/// (from the last sample at least that old), sampled once a second by the
/// desk's tick.
#[derive(Debug, Default)]
pub struct CallRate {
    samples: VecDeque<(Instant, u64)>,
}

/// The window the rate is averaged over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl CallRate {
    /// Notes the calls-started counter at `now`.
    pub fn sample(&mut self, now: Instant, calls_started: u64) {
        self.samples.push_back((now, calls_started));
        // Keep one sample at or beyond the window's start, as its base.
        while self
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Calls per second over the samples kept (0 before two samples).
    pub fn per_second(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// One labelled value of a family (`queue="500"`, `state="away"`).
struct Label<'a>(&'static str, &'a str);

impl prometheus_client::encoding::EncodeLabelSet for Label<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        (self.0, self.1).encode(encoder.encode_label())
    }
}

/// A per-queue gauge: name, help, and its value for one queue.
type QueueFamily = (&'static str, &'static str, fn(&QueueStats) -> f64);

/// Everything one scrape shows.
#[derive(Debug)]
pub struct Scrape {
    pub pbx: PbxFigures,
    pub calls_per_second: f64,
    pub queues: Vec<QueueStats>,
    /// Extensions per presence state (every state, zeros included).
    pub agents: Vec<(State, u64)>,
    pub stream_clients: u64,
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let p = &self.pbx;
        let gauge = |e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64| {
            ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        let counter = |e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64| {
            ConstCounter::new(v).encode(e.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)
        };
        gauge(
            &mut e,
            "sipdesk_registrations",
            "Phones registered now",
            p.registrations as i64,
        )?;
        gauge(
            &mut e,
            "sipdesk_live_calls",
            "Calls in progress",
            p.live_calls,
        )?;
        counter(
            &mut e,
            "sipdesk_calls_started",
            "Calls started",
            p.calls_started,
        )?;
        ConstGauge::new(self.calls_per_second).encode(e.encode_descriptor(
            "sipdesk_calls_per_second",
            "Calls started per second over the last 10 s",
            None,
            MetricType::Gauge,
        )?)?;
        counter(
            &mut e,
            "sipdesk_sip_received",
            "SIP messages received",
            p.sip_received,
        )?;
        counter(
            &mut e,
            "sipdesk_sip_malformed",
            "SIP messages dropped as malformed",
            p.sip_malformed,
        )?;
        counter(
            &mut e,
            "sipdesk_sip_shed",
            "New SIP requests refused with 503 under overload",
            p.sip_shed,
        )?;
        for (name, help, v) in [
            (
                "sipdesk_guard_dropped",
                "Datagrams of banned sources dropped unread",
                p.guard_dropped,
            ),
            (
                "sipdesk_guard_refused",
                "Requests of banned known phones' addresses refused with 503",
                p.guard_refused,
            ),
            ("sipdesk_guard_bans", "Sources banned", p.guard_bans),
            (
                "sipdesk_auth_failures",
                "Failed authentications (wrong password, unknown user)",
                p.auth_failures,
            ),
            (
                "sipdesk_toll_denied",
                "Outside calls refused by the toll-fraud guard",
                p.toll_denied,
            ),
        ] {
            counter(&mut e, name, help, v)?;
        }
        p.routing_latency.encode(e.encode_descriptor(
            "sipdesk_routing_latency_seconds",
            "New INVITE received to B-leg INVITE or answer sent",
            None,
            MetricType::Histogram,
        )?)?;
        let families: [QueueFamily; 5] = [
            (
                "sipdesk_queue_waiting",
                "Callers waiting in the queue now",
                |q| q.waiting as f64,
            ),
            (
                "sipdesk_queue_longest_wait_seconds",
                "The longest wait of a caller waiting now",
                |q| q.longest_wait_ms as f64 / 1000.0,
            ),
            (
                "sipdesk_queue_answered_today",
                "Queue calls answered today (UTC)",
                |q| q.answered_today as f64,
            ),
            (
                "sipdesk_queue_abandoned_today",
                "Queue callers who hung up waiting today (UTC)",
                |q| q.abandoned_today as f64,
            ),
            (
                "sipdesk_queue_service_level_percent",
                "Answered within the service-level time today",
                |q| q.service_level_pct as f64,
            ),
        ];
        for (name, help, value) in families {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for q in &self.queues {
                ConstGauge::new(value(q))
                    .encode(family.encode_family(&Label("queue", &q.number))?)?;
            }
        }
        let mut family = e.encode_descriptor(
            "sipdesk_trunk_up",
            "1 while the trunk is registered with its provider",
            None,
            MetricType::Gauge,
        )?;
        for (trunk, up) in &p.trunks_up {
            ConstGauge::new(i64::from(*up))
                .encode(family.encode_family(&Label("trunk", trunk))?)?;
        }
        let mut family = e.encode_descriptor(
            "sipdesk_trunk_channels",
            "Calls in and out on the trunk now",
            None,
            MetricType::Gauge,
        )?;
        for (trunk, n) in &p.trunk_channels {
            ConstGauge::new(i64::from(*n)).encode(family.encode_family(&Label("trunk", trunk))?)?;
        }
        ConstGauge::new(p.outside_calls as i64).encode(e.encode_descriptor(
            "sipdesk_outside_calls",
            "Outside calls in progress",
            None,
            MetricType::Gauge,
        )?)?;
        let mut family = e.encode_descriptor(
            "sipdesk_agents",
            "Extensions per presence state",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in &self.agents {
            ConstGauge::new(*n as i64)
                .encode(family.encode_family(&Label("state", state.as_str()))?)?;
        }
        gauge(
            &mut e,
            "sipdesk_event_stream_clients",
            "Desk clients connected to the event stream",
            self.stream_clients as i64,
        )
    }
}

/// The scrape as text.
pub fn encode(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_rate_averages_the_last_ten_seconds() {
        let t0 = Instant::now();
        let mut rate = CallRate::default();
        rate.sample(t0, 100);
        assert_eq!(rate.per_second(), 0.0);
        for s in 1..=20u64 {
            rate.sample(t0 + Duration::from_secs(s), 100 + s * 50);
        }
        assert_eq!(rate.per_second(), 50.0);
        rate.sample(t0 + Duration::from_secs(30), 1200);
        assert_eq!(
            rate.per_second(),
            10.0,
            "100 calls in the 10 s since the last sample"
        );
    }

    #[test]
    fn a_scrape_has_every_family_with_labels_and_cumulative_buckets() {
        let scrape = Scrape {
            pbx: PbxFigures {
                registrations: 3,
                live_calls: 2,
                calls_started: 40,
                routing_latency: Buckets {
                    buckets: vec![(0.001, 5), (0.01, 2), (f64::MAX, 1)],
                    count: 8,
                    sum_secs: 0.5,
                },
                guard_bans: 2,
                trunks_up: vec![("carrier".into(), true), ("backup".into(), false)],
                trunk_channels: vec![("carrier".into(), 3)],
                outside_calls: 3,
                toll_denied: 7,
                ..PbxFigures::default()
            },
            calls_per_second: 1.5,
            queues: vec![],
            agents: vec![(State::Available, 2), (State::Away, 1)],
            stream_clients: 4,
        };
        let text = encode(scrape).expect("encode");
        for line in [
            "sipdesk_registrations 3",
            "sipdesk_live_calls 2",
            "sipdesk_calls_started_total 40",
            "sipdesk_calls_per_second 1.5",
            "sipdesk_routing_latency_seconds_bucket{le=\"0.001\"} 5",
            "sipdesk_routing_latency_seconds_bucket{le=\"0.01\"} 7",
            "sipdesk_routing_latency_seconds_bucket{le=\"+Inf\"} 8",
            "sipdesk_routing_latency_seconds_count 8",
            "sipdesk_agents{state=\"available\"} 2",
            "sipdesk_agents{state=\"away\"} 1",
            "sipdesk_event_stream_clients 4",
            "sipdesk_guard_bans_total 2",
            "sipdesk_trunk_up{trunk=\"carrier\"} 1",
            "sipdesk_trunk_up{trunk=\"backup\"} 0",
            "sipdesk_trunk_channels{trunk=\"carrier\"} 3",
            "sipdesk_outside_calls 3",
            "sipdesk_toll_denied_total 7",
            "# TYPE sipdesk_queue_waiting gauge",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
