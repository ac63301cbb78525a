//! Any bytes as a customer list a supervisor uploads (CSV): reading it must
//! never panic; every row it keeps has an E.164 number and a real line, and
//! every row it leaves out says which line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sipdesk::campaigns::import::read;
use sipdesk::outside::Numbering;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let numbering = Numbering {
        country_code: "81".into(),
        national_prefix: "0".into(),
        international_prefix: "010".into(),
    };
    if let Ok((rows, errors)) = read(text, &numbering) {
        for r in &rows {
            let digits = r.number.strip_prefix('+').unwrap_or_default();
            assert!((7..=15).contains(&digits.len()), "{}", r.number);
            assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{}", r.number);
            assert!(r.line >= 2, "a row after the header: {}", r.line);
        }
        assert!(rows.windows(2).all(|w| w[0].line < w[1].line), "in file order");
        let _ = errors;
    }
});
