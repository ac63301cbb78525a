//! Telephone numbers in E.164: a provider sends the same customer as
//! `+81312345678`, `0312345678` or `81312345678`; the caller index, the
//! history and the board must see one key. Each trunk says how its numbers
//! are written (country code, national prefix, international prefix) and
//! [`Numbering::to_e164`] turns what it sends into `+` and digits.

/// How a trunk's numbers are written (`[[trunks]] country_code`,
/// `national_prefix`, `international_prefix`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Numbering {
    /// The office's country code, without `+` (`81`); "" leaves numbers
    /// without one as they are.
    pub country_code: String,
    /// What starts a national number (`0`).
    pub national_prefix: String,
    /// What starts an international number (`010`, `00`).
    pub international_prefix: String,
}

/// The most digits an E.164 number has (ITU-T E.164 §6), and the fewest
/// any country's full numbers have (country code included).
const MAX_DIGITS: usize = 15;
const MIN_DIGITS: usize = 7;

/// Fewer digits than this after the country code cannot be a subscriber's
/// number, so a leading country code without `+` is only taken as one when
/// at least this many digits follow it.
const MIN_NATIONAL: usize = 7;

impl Numbering {
    /// The number `raw` (a URI's user part or a `tel:` number, visual
    /// separators allowed) in E.164, or `None` when it is not a number at all
    /// (then the caller is anonymous).
    pub fn to_e164(&self, raw: &str) -> Option<String> {
        let raw = raw.split(';').next().unwrap_or_default();
        let mut cleaned = String::with_capacity(raw.len());
        for (i, c) in raw.trim().chars().enumerate() {
            match c {
                '0'..='9' => cleaned.push(c),
                '+' if i == 0 => cleaned.push(c),
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => return None,
            }
        }
        let digits = match cleaned.strip_prefix('+') {
            Some(international) => international.to_string(),
            None => self.international_digits(&cleaned)?,
        };
        (MIN_DIGITS..=MAX_DIGITS)
            .contains(&digits.len())
            .then(|| format!("+{digits}"))
    }

    /// The international digits (country code first) of a number written
    /// without `+`.
    fn international_digits(&self, n: &str) -> Option<String> {
        let (cc, nat, intl) = (
            self.country_code.as_str(),
            self.national_prefix.as_str(),
            self.international_prefix.as_str(),
        );
        // The international prefix first: it often begins with the national one.
        if let Some(rest) = n.strip_prefix(intl).filter(|_| !intl.is_empty()) {
            return Some(rest.to_string());
        }
        if cc.is_empty() {
            return (!n.is_empty()).then(|| n.to_string());
        }
        if let Some(rest) = n.strip_prefix(nat).filter(|_| !nat.is_empty()) {
            return Some(format!("{cc}{rest}"));
        }
        if n.len() >= cc.len() + MIN_NATIONAL && n.starts_with(cc) {
            return Some(n.to_string());
        }
        (!n.is_empty()).then(|| format!("{cc}{n}"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Japan's numbering (the tests' office).
    pub(crate) fn japan() -> Numbering {
        Numbering {
            country_code: "81".into(),
            national_prefix: "0".into(),
            international_prefix: "010".into(),
        }
    }

    #[test]
    fn one_customer_written_three_ways_is_one_number() {
        let j = japan();
        for raw in [
            "+81312345678",
            "0312345678",
            "81312345678",
            "+81 3-1234-5678",
        ] {
            assert_eq!(j.to_e164(raw).as_deref(), Some("+81312345678"), "{raw}");
        }
    }

    #[test]
    fn the_international_prefix_is_read_before_the_national_one() {
        let j = japan();
        assert_eq!(j.to_e164("0104420794601").as_deref(), Some("+4420794601"));
        let uk = Numbering {
            country_code: "44".into(),
            national_prefix: "0".into(),
            international_prefix: "00".into(),
        };
        assert_eq!(uk.to_e164("00331234567").as_deref(), Some("+331234567"));
        assert_eq!(uk.to_e164("02079460123").as_deref(), Some("+442079460123"));
    }

    #[test]
    fn what_is_not_a_number_is_none() {
        let j = japan();
        for raw in [
            "",
            "anonymous",
            "+",
            "12",
            "03x1234",
            "+1234567890123456",
            "++81",
        ] {
            assert_eq!(j.to_e164(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn tel_parameters_are_ignored() {
        assert_eq!(
            japan()
                .to_e164("+81312345678;phone-context=example.com")
                .as_deref(),
            Some("+81312345678")
        );
    }
}
