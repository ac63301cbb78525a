//! Call recording on demand with a fake clock: the desk starts and stops
//! it, only a party of the call may, the record is stored under the
//! customer once the relay saved the WAV; the phone's feature code (SIP
//! INFO or RFC 4733) toggles it with a beep; a call that ends saves it; a
//! recording that cannot be written is reported and the call goes on.

use super::*;
use crate::calls::RecordError;
use crate::media::MediaEvent;
use crate::recordings::Progress;

fn lab() -> Lab {
    Lab::two_phones(&[PHONE_A])
}

/// The id of the call recording the relay was asked to make last.
fn recording_id(lab: &Lab) -> u64 {
    lab.media_log()
        .iter()
        .rev()
        .find_map(|l| l.split("record_call ").nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no call recording: {:?}", lab.media_log()))
}

fn progress(lab: &mut Lab) -> Vec<(String, Progress)> {
    let reports = lab.h.shard.poll_recordings();
    reports.into_iter().map(|r| (r.agent, r.progress)).collect()
}

fn saved(lab: &mut Lab, call: &str, id: u64, saved: bool) {
    let ended = MediaEvent::Recorded {
        id,
        saved,
        ms: 4000,
    };
    lab.h
        .shard
        .handle_media(lab.now, &CallId::from(call), ended);
    lab.out();
}

#[test]
fn the_desk_records_a_call_and_the_record_is_stored_under_the_customer_once_saved() {
    let mut lab = lab();
    let call = CallId::from("rec@a");
    let out = lab.input(invite("rec@a", "202", ""), CALLER);
    let b = toward(&out, PHONE_A).clone();
    lab.input(response(&b, 180, "b", "", ""), PHONE_A);
    assert_eq!(
        lab.h.shard.record(lab.now, "201", &call, true),
        Err(RecordError::NotConnected("rec@a".into())),
        "only a connected call"
    );
    let sdp_b = SDP.replace("10.0.0.1", "10.0.0.2");
    let out = lab.input(response(&b, 200, "b", &sdp_b, ""), PHONE_A);
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    lab.input(caller_request(&ok, "ACK", 1, "", ""), CALLER);

    assert_eq!(
        lab.h.shard.record(lab.now, "203", &call, true),
        Err(RecordError::NotYours("rec@a".into()))
    );
    let id = lab.h.shard.record(lab.now, "202", &call, true).expect("on");
    assert_eq!(recording_id(&lab), id);
    assert_eq!(progress(&mut lab), [("202".to_string(), Progress::Started)]);
    assert_eq!(
        lab.h.shard.record(lab.now, "201", &call, true),
        Err(RecordError::Already("rec@a".into())),
        "the caller (a user too) may record, but it already is"
    );
    assert_eq!(lab.h.shard.record(lab.now, "202", &call, false), Ok(id));
    assert!(lab
        .media_log()
        .last()
        .is_some_and(|l| l.ends_with("stop_recording_call")));
    assert_eq!(
        lab.h.shard.record(lab.now, "202", &call, false),
        Err(RecordError::NotRecording("rec@a".into()))
    );
    assert!(lab.writes.iter().all(|w| !w.contains("CallRecording")));
    saved(&mut lab, "rec@a", id, true);
    let stored = lab.writes.last().cloned().unwrap_or_default();
    assert!(
        stored.contains("CallRecording")
            && stored.contains("customer: \"201\"")
            && stored.contains("agent: \"202\"")
            && stored.contains("ms: 4000"),
        "{stored}"
    );
    let reported = progress(&mut lab);
    assert!(
        matches!(&reported[..], [(agent, Progress::Saved { recording })] if agent == "202" && recording.id == id),
        "{reported:?}"
    );
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    one(&out, "SIP/2.0 200 OK");
    assert!(lab.idle());
}

#[test]
fn the_code_keyed_on_the_phone_toggles_recording_and_a_call_that_ends_saves_it() {
    let mut lab = lab();
    let (ok, _) = connected(&mut lab, "key@a", "");
    // The caller (201) keys *1 by SIP INFO: relayed to 202 as well.
    let out = lab.input(dtmf_info(&ok, 2, '*'), CALLER);
    assert!(!starting(&out, "INFO sip:").is_empty(), "relayed: {out:#?}");
    lab.input(dtmf_info(&ok, 3, '1'), CALLER);
    let first = recording_id(&lab);
    assert!(
        lab.media_log().iter().any(|l| l.contains(" play 0 ")),
        "a beep to 201: {:?}",
        lab.media_log()
    );
    assert_eq!(progress(&mut lab), [("201".to_string(), Progress::Started)]);
    // 202 keys it as telephone-events: stops it (two beeps to 202).
    for d in ['*', '1'] {
        lab.h
            .shard
            .handle_media(lab.now, &CallId::from("key@a"), MediaEvent::Digit(1, d));
    }
    assert!(lab
        .media_log()
        .last()
        .is_some_and(|l| l.contains(" play 1 ")));
    assert!(lab
        .media_log()
        .iter()
        .any(|l| l.ends_with("stop_recording_call")));
    saved(&mut lab, "key@a", first, true);
    // Slow keys are not the code; keyed again it records anew.
    lab.input(dtmf_info(&ok, 4, '*'), CALLER);
    lab.advance(Duration::from_secs(4));
    lab.input(dtmf_info(&ok, 5, '1'), CALLER);
    assert_eq!(recording_id(&lab), first, "not the code");
    lab.input(dtmf_info(&ok, 6, '*'), CALLER);
    lab.input(dtmf_info(&ok, 7, '1'), CALLER);
    let second = recording_id(&lab);
    assert_ne!(second, first);
    // The caller hangs up: the recording is saved as the relay goes.
    let out = lab.input(caller_request(&ok, "BYE", 8, "", ""), CALLER);
    one(&out, "SIP/2.0 200 OK");
    assert!(!lab.idle(), "the recording is still being saved");
    saved(&mut lab, "key@a", second, true);
    assert_eq!(
        lab.writes
            .iter()
            .filter(|w| w.contains("CallRecording"))
            .count(),
        2
    );
    assert!(lab.idle());
}

#[test]
fn a_recording_that_cannot_be_written_is_reported_and_the_call_goes_on() {
    let mut lab = lab();
    let (ok, _) = connected(&mut lab, "full@a", "");
    let call = CallId::from("full@a");
    let id = lab.h.shard.record(lab.now, "202", &call, true).expect("on");
    progress(&mut lab);
    saved(&mut lab, "full@a", id, false);
    let reported = progress(&mut lab);
    assert!(
        matches!(&reported[..], [(_, Progress::Failed { .. })]),
        "{reported:?}"
    );
    assert!(lab.writes.iter().all(|w| !w.contains("CallRecording")));
    // Still connected, no longer recording: it may be started again.
    let again = lab
        .h
        .shard
        .record(lab.now, "202", &call, true)
        .expect("again");
    assert_ne!(again, id);
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    one(&out, "SIP/2.0 200 OK");
    one(&out, "BYE sip:");
    saved(&mut lab, "full@a", again, true);
    assert_eq!(lab.cdrs, 1);
    assert!(lab.idle());
}

#[test]
fn a_call_the_pbx_placed_is_recorded_from_the_desk_by_either_party() {
    let (mut lab, key, out) = originated();
    let a = one(&out, "INVITE sip:201@").clone();
    assert_eq!(
        lab.h.shard.record(lab.now, "201", &key, true),
        Err(RecordError::NotConnected(key.to_string())),
        "not while it rings"
    );
    let out = lab.input(response(&a, 200, "a", SDP, ""), PHONE_A);
    let b = one(&out, "INVITE sip:202@").clone();
    lab.input(response(&b, 200, "b", SDP, ""), PHONE_B);
    assert_eq!(
        lab.h.shard.record(lab.now, "203", &key, true),
        Err(RecordError::NotYours(key.to_string()))
    );
    let id = lab.h.shard.record(lab.now, "201", &key, true).expect("on");
    assert_eq!(recording_id(&lab), id);
    assert_eq!(
        lab.h.shard.record(lab.now, "202", &key, false),
        Ok(id),
        "the called extension may stop it"
    );
    saved(&mut lab, &key.to_string(), id, true);
    let stored = lab.writes.last().cloned().unwrap_or_default();
    assert!(
        stored.contains("CallRecording")
            && stored.contains("customer: \"202\"")
            && stored.contains("agent: \"201\""),
        "{stored}"
    );
}
