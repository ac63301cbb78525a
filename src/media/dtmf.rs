//! DTMF digits as callers send them: RFC 4733 telephone-events in RTP (the
//! relay watches a side's negotiated payload type) and, for phones that send
//! them in signalling, SIP INFO bodies (`application/dtmf-relay` with
//! `Signal=`, or `application/dtmf` with the bare digit).

/// The digit of an RFC 4733 event code (0–9, *, #, A–D; the rest are tones
/// that are not digits).
fn digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// The digit a telephone-event payload (RFC 4733 §2.3: event, E|R|volume,
/// duration) carries, if any.
pub fn telephone_event(payload: &[u8]) -> Option<char> {
    match payload {
        [event, _, _, _, ..] => digit(*event),
        _ => None,
    }
}

/// Tells new events from the retransmissions of one (every packet of an event,
/// and its three end packets, carry the event's RTP timestamp).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventFilter {
    last: Option<u32>,
}

impl EventFilter {
    /// The digit of a telephone-event packet with RTP timestamp `ts`, the
    /// first time its event is seen.
    pub fn digit(&mut self, ts: u32, payload: &[u8]) -> Option<char> {
        let d = telephone_event(payload)?;
        if self.last == Some(ts) {
            return None;
        }
        self.last = Some(ts);
        Some(d)
    }
}

/// The digit of a SIP INFO body of `content_type`: `application/dtmf-relay`
/// (`Signal=5`, one line among others such as `Duration=160`) or
/// `application/dtmf` (the digit alone). Anything else: `None`.
pub fn info_digit(content_type: &[u8], body: &[u8]) -> Option<char> {
    let ct = content_type
        .split(|c| *c == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let one = |v: &[u8]| -> Option<char> {
        let v = v.trim_ascii();
        match v {
            [c] if c.is_ascii_digit() || b"*#ABCDabcd".contains(c) => {
                Some(char::from(c.to_ascii_uppercase()))
            }
            // Some phones send the event code ("10" for *, "11" for #).
            b"10" => Some('*'),
            b"11" => Some('#'),
            _ => None,
        }
    };
    if ct.eq_ignore_ascii_case(b"application/dtmf-relay") {
        body.split(|c| *c == b'\n').find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|c| *c == b'=')?);
            name.trim_ascii()
                .eq_ignore_ascii_case(b"signal")
                .then(|| one(&value[1..]))
                .flatten()
        })
    } else if ct.eq_ignore_ascii_case(b"application/dtmf") {
        one(body)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_digit_however_many_packets_carry_it() {
        let mut f = EventFilter::default();
        // "1", three packets of the event then three end packets, one timestamp.
        let digits: Vec<char> = [
            (100, [1, 0x0a, 0, 160]),
            (100, [1, 0x0a, 1, 64]),
            (100, [1, 0x8a, 3, 32]),
            (100, [1, 0x8a, 3, 32]),
            (420, [11, 0x0a, 0, 160]),
            (420, [11, 0x8a, 1, 64]),
        ]
        .iter()
        .filter_map(|(ts, p)| f.digit(*ts, p))
        .collect();
        assert_eq!(digits, ['1', '#']);
        assert_eq!(telephone_event(&[16, 0, 0, 0]), None, "a tone, not a digit");
        assert_eq!(telephone_event(&[1, 0]), None, "too short");
    }

    #[test]
    fn info_bodies_of_both_kinds_give_their_digit_and_others_none() {
        let relay = b"Signal=1\r\nDuration=160\r\n";
        assert_eq!(info_digit(b"application/dtmf-relay", relay), Some('1'));
        assert_eq!(
            info_digit(b"Application/DTMF-Relay; x=1", b"Signal= *\r\n"),
            Some('*')
        );
        assert_eq!(
            info_digit(b"application/dtmf-relay", b"Signal=11\r\n"),
            Some('#')
        );
        assert_eq!(info_digit(b"application/dtmf", b"7"), Some('7'));
        assert_eq!(
            info_digit(b"application/dtmf-relay", b"Duration=160\r\n"),
            None
        );
        assert_eq!(
            info_digit(b"application/dtmf-relay", b"Signal=12\r\n"),
            None
        );
        assert_eq!(info_digit(b"text/plain", b"1"), None);
        assert_eq!(info_digit(b"application/dtmf-relay", b"Signal"), None);
    }
}
