//! Arbitrary text where the store takes text from outside: full session
//! keys, configuration time codes, unset and validation reasons, JSON data
//! values. Nothing panics, and what is accepted obeys the documented rules.
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use sessiondb::{fuzzing, parse_time_code, Data, Reason, UnsetReason};

fuzz_target!(|text: &str| {
    if let Some((actor, secret)) = fuzzing::split_full_key(text) {
        assert_eq!(format!("{actor}:{secret}"), text);
        assert!(!actor.is_empty() && actor.len() <= sessiondb::MAX_ACTOR_ID_LEN);
        assert!(!actor.chars().any(char::is_control));
        assert!(!secret.is_empty() && secret.len() <= sessiondb::MAX_KEY_LENGTH);
        assert!(secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
    if let Ok(d) = parse_time_code(text) {
        assert!(!d.is_zero(), "a zero time code was accepted");
    }
    if let Ok(reason) = UnsetReason::parse(text) {
        assert_eq!(reason.as_str(), text);
        assert!(text.len() <= sessiondb::MAX_REASON_LEN);
    }
    if let Ok(reason) = Reason::from_str(text) {
        assert_eq!(reason.as_str(), text);
    }
    let mut data = Data::new();
    if data.insert_json("v", text).is_ok() {
        // Stored compact; reading it back and storing again changes nothing.
        let stored = data.get_json("v").map(str::to_owned).unwrap_or_default();
        let mut again = Data::new();
        assert!(again.insert_json("v", &stored).is_ok());
        assert_eq!(again, data);
    }
});
