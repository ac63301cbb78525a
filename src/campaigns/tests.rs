//! The campaign rules with a fake clock: the monitor's decision, calling
//! hours in several time zones, retries per outcome, the do-not-call list at
//! import and at dialling time, restart safety, progress.

use super::*;
use crate::outside::numbers::tests::japan;

/// 2026-12-01T00:00:00Z, a Tuesday: 09:00 in Tokyo, 19:00 (Monday) in New York.
const T0: u64 = 1_796_083_200_000;
const HOUR: u64 = 3_600_000;
const MINUTE: u64 = 60_000;

fn settings() -> Settings {
    serde_json::from_value(serde_json::json!({
        "name": "winter offers", "group": "sales", "trunk": "carrier",
        "time_zone": "Asia/Tokyo", "max_attempts": 2, "idle_ratio": 0.5
    }))
    .expect("settings")
}

/// A running campaign with these rows (`number,name,time_zone`).
fn running(rows: &str) -> (Campaigns, CampaignId) {
    let mut c = Campaigns::default();
    let id = CampaignId(1);
    c.create(UnixMillis(T0), id, settings()).expect("create");
    let text = format!("number,name,time_zone\n{rows}");
    let (rows, errors) = import::read(&text, &japan()).expect("csv");
    assert!(errors.is_empty(), "{errors:?}");
    let mut next = 100;
    c.import(id, rows, || {
        next += 1;
        ContactId(next)
    })
    .expect("import");
    c.act(id, Action::Start).expect("start");
    (c, id)
}

fn agents(available: usize, logged_in: usize) -> Conditions {
    Conditions {
        available,
        logged_in,
        inbound_waiting: 0,
        trunk_up: true,
    }
}

#[test]
fn attempts_start_only_above_the_idle_ratio_inside_the_limits_and_after_inbound_callers() {
    let (mut c, id) = running("0312345601,A,\n0312345602,B,\n0312345603,C,\n");
    let now = UnixMillis(T0 + HOUR);
    assert_eq!(
        c.decide(id, agents(1, 4), now),
        Decision::Idle(Idle::BelowThreshold { ratio: 0.25 })
    );
    assert_eq!(c.decide(id, agents(2, 4), now), Decision::Start(2));
    assert_eq!(
        c.decide(id, agents(4, 4), now),
        Decision::Start(2),
        "max_attempts"
    );
    assert_eq!(
        c.decide(id, agents(0, 0), now),
        Decision::Idle(Idle::NoAgents)
    );
    let down = Conditions {
        trunk_up: false,
        ..agents(4, 4)
    };
    assert_eq!(c.decide(id, down, now), Decision::Idle(Idle::TrunkDown));
    let busy_inbound = Conditions {
        inbound_waiting: 1,
        ..agents(4, 4)
    };
    assert_eq!(
        c.decide(id, busy_inbound, now),
        Decision::Idle(Idle::InboundWaiting)
    );
}

#[test]
fn calling_hours_are_each_customers_own_and_the_campaign_says_until_when_it_waits() {
    // Tokyo (the default) is open 09:00-20:00 JST = 00:00-11:00 UTC; New
    // York 09:00-20:00 EST = 14:00-01:00 UTC.
    let (mut c, id) = running("+12125550100,Ann,America/New_York\n0312345601,Keiko,\n");
    let morning_tokyo = UnixMillis(T0 + 2 * HOUR);
    let (taken, _) = c.take(id, "201", morning_tokyo).expect("take");
    assert_eq!(
        taken.map(|k| k.name),
        Some("Keiko".into()),
        "New York sleeps"
    );
    let (none, _) = c.take(id, "202", morning_tokyo).expect("take");
    assert!(none.is_none());
    assert_eq!(
        c.decide(id, agents(2, 2), morning_tokyo),
        Decision::Idle(Idle::OutsideHours {
            until_ms: T0 + 14 * HOUR
        })
    );
    let morning_new_york = UnixMillis(T0 + 14 * HOUR);
    let (ann, _) = c.take(id, "202", morning_new_york).expect("take");
    assert_eq!(ann.map(|k| k.number), Some("+12125550100".into()));
}

#[test]
fn outcomes_are_retried_by_their_rules_until_the_maximum() {
    let (mut c, id) = running("0312345601,Busy Bee,\n");
    let mut now = UnixMillis(T0 + HOUR);
    for try_no in 1..=3 {
        let (k, _) = c.take(id, "201", now).expect("take");
        let k = k.unwrap_or_else(|| panic!("try {try_no} is due"));
        let k = c.finish(now, id, k.id, Outcome::Busy).expect("finish");
        assert_eq!(k.tries, try_no);
        if try_no < 3 {
            assert_eq!(
                k.status,
                ContactStatus::Waiting {
                    not_before_ms: now.0 + 5 * MINUTE
                }
            );
            let soon = UnixMillis(now.0 + 4 * MINUTE);
            assert!(
                c.take(id, "201", soon).expect("take").0.is_none(),
                "not before its time"
            );
            assert_eq!(
                c.decide(id, agents(1, 1), soon),
                Decision::Idle(Idle::RetryLater {
                    at_ms: now.0 + 5 * MINUTE
                })
            );
            now = UnixMillis(now.0 + 5 * MINUTE);
        } else {
            assert_eq!(
                k.status,
                ContactStatus::Done {
                    outcome: Outcome::Busy
                },
                "three tries of a busy line at most"
            );
        }
    }
    assert_eq!(
        c.decide(id, agents(1, 1), now),
        Decision::Idle(Idle::Finished)
    );
}

#[test]
fn an_agent_who_never_confirms_puts_the_contact_back_without_counting_a_try() {
    let (mut c, id) = running("0312345601,Keiko,\n");
    let now = UnixMillis(T0 + HOUR);
    let (k, _) = c.take(id, "201", now).expect("take");
    let k = k.expect("taken");
    let back = c
        .finish(now, id, k.id, Outcome::AgentTimeout)
        .expect("finish");
    assert_eq!(back.tries, 0);
    assert_eq!(
        back.status,
        ContactStatus::Waiting {
            not_before_ms: now.0
        }
    );
    let (again, _) = c.take(id, "202", now).expect("take");
    assert_eq!(again.map(|k| k.id), Some(k.id), "the next agent gets it");
    let done = c.finish(now, id, k.id, Outcome::Connected).expect("finish");
    assert_eq!(
        done.status,
        ContactStatus::Done {
            outcome: Outcome::Connected
        }
    );
    assert!(
        c.finish(now, id, k.id, Outcome::Busy).is_err(),
        "no attempt is open"
    );
}

#[test]
fn the_do_not_call_list_is_checked_at_import_and_again_at_dialling_time() {
    let mut c = Campaigns::default();
    let id = CampaignId(1);
    c.create(UnixMillis(T0), id, settings()).expect("create");
    c.forbid(UnixMillis(T0), vec!["+81312345601".into()]);
    let text = "number,name\n0312345601,Listed\n0312345602,Fine\n0312345603,Later\n";
    let (rows, _) = import::read(text, &japan()).expect("csv");
    let mut next = 0;
    let mut ids = || {
        next += 1;
        ContactId(next)
    };
    let (added, counts) = c.import(id, rows.clone(), &mut ids).expect("import");
    assert_eq!(added.len(), 2);
    assert_eq!(
        (counts.imported, counts.do_not_call, counts.duplicates),
        (2, 1, 0)
    );
    // The same file again: nothing new, nothing twice.
    let (again, counts) = c.import(id, rows, &mut ids).expect("import");
    assert!(again.is_empty());
    assert_eq!((counts.duplicates, counts.do_not_call), (2, 1));
    // "Fine" asks not to be called after the import: it is skipped when due.
    let new = c.forbid(
        UnixMillis(T0),
        vec!["+81312345602".into(), "+81312345601".into()],
    );
    assert_eq!(new.len(), 1, "only the new number is stored");
    c.act(id, Action::Start).expect("start");
    let (taken, changed) = c.take(id, "201", UnixMillis(T0 + HOUR)).expect("take");
    assert_eq!(taken.map(|k| k.name), Some("Later".into()));
    assert_eq!(
        changed[0].status,
        ContactStatus::Done {
            outcome: Outcome::DoNotCall
        }
    );
}

#[test]
fn an_attempt_open_at_a_restart_is_closed_as_interrupted_and_retried_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("store");
    let (mut c, id) = running("0312345601,Keiko,\n");
    let now = UnixMillis(T0 + HOUR);
    let (k, changed) = c.take(id, "201", now).expect("take");
    let k = k.expect("taken");
    let campaign = c.get(id).cloned().expect("campaign");
    store.put(campaign).expect("put");
    for k in changed {
        store.put(k).expect("put");
    }
    let later = UnixMillis(now.0 + MINUTE);
    let (loaded, closed) = Campaigns::load(&store, later).expect("load");
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].last, Some((Outcome::Interrupted, later.0)));
    assert_eq!(closed[0].tries, 1, "it may have been dialled: counted");
    assert!(matches!(closed[0].status, ContactStatus::Waiting { .. }));
    assert_eq!(loaded.get(id).map(|c| c.state), Some(State::Running));
    assert!(loaded.contact(id, k.id).is_some());
}

#[test]
fn progress_counts_outcomes_attempts_of_the_hour_and_the_connect_rate() {
    let (mut c, id) = running("0312345601,A,\n0312345602,B,\n0312345603,C,\n");
    let now = UnixMillis(T0 + HOUR);
    for outcome in [Outcome::Connected, Outcome::NoAnswer, Outcome::Skipped] {
        let (k, _) = c.take(id, "201", now).expect("take");
        c.finish(now, id, k.expect("taken").id, outcome)
            .expect("finish");
    }
    let p = c.progress(id, now).expect("progress");
    assert_eq!(p.contacts, 3);
    assert_eq!(p.remaining, 1, "no answer: retried later");
    assert_eq!(p.outcomes.get("connected"), Some(&1));
    assert_eq!(p.outcomes.get("skipped"), Some(&1));
    assert_eq!(p.attempts_last_hour, 3);
    assert_eq!(p.connect_rate, 1.0, "of the dialled ones done");
    assert_eq!((p.abandoned, p.abandon_rate), (0, 0.0));
    let p = c.progress(id, UnixMillis(now.0 + HOUR)).expect("progress");
    assert_eq!(p.attempts_last_hour, 0);
}

#[test]
fn bad_settings_and_actions_out_of_turn_are_named() {
    let mut c = Campaigns::default();
    let mut s = settings();
    s.idle_ratio = 1.5;
    let e = c
        .create(UnixMillis(T0), CampaignId(1), s)
        .expect_err("refused");
    assert!(e.to_string().contains("idle_ratio"), "{e}");
    let mut s = settings();
    s.ring_secs = 10;
    assert!(c
        .create(UnixMillis(T0), CampaignId(1), s)
        .expect_err("refused")
        .to_string()
        .contains("15 s"));
    let mut s = settings();
    s.time_zone = "Nowhere/City".into();
    assert!(c.create(UnixMillis(T0), CampaignId(1), s).is_err());
    c.create(UnixMillis(T0), CampaignId(1), settings())
        .expect("create");
    let e = c.act(CampaignId(1), Action::Pause).expect_err("refused");
    assert!(e.to_string().contains("cannot pause"), "{e}");
    c.act(CampaignId(1), Action::Stop).expect("stop");
    assert!(
        c.act(CampaignId(1), Action::Resume).is_err(),
        "stopped for good"
    );
    assert!(matches!(
        c.act(CampaignId(9), Action::Start),
        Err(CampaignError::NotFound(9))
    ));
}

#[test]
fn settings_left_out_are_the_configured_defaults_and_bad_defaults_are_refused() {
    let defaults = Defaults {
        confirm_secs: 45,
        time_zone: "Asia/Tokyo".into(),
        ..Defaults::default()
    };
    let given = serde_json::json!({ "name": "spring", "group": "sales", "trunk": "carrier",
                                    "time_zone": "Europe/Berlin" });
    let s = defaults.settings(given).expect("settings");
    assert_eq!(
        (s.confirm_secs, s.time_zone.as_str()),
        (45, "Europe/Berlin")
    );
    assert_eq!(s.ring_secs, 30);
    assert!(
        defaults.settings(serde_json::json!([1])).is_err(),
        "not an object"
    );
    let unknown = serde_json::json!({ "name": "x", "group": "g", "trunk": "t", "nope": 1 });
    assert!(
        defaults.settings(unknown).is_err(),
        "unknown fields are still refused"
    );
    assert!(defaults.check().is_ok());
    let bad = Defaults {
        ring_secs: 5,
        ..Defaults::default()
    };
    assert!(matches!(bad.check(), Err(CampaignError::Invalid(m)) if m.contains("ring_secs")));
}
