//! Session keys: generating secrets, splitting full keys, and the digest
//! under which a session is stored.
//!
//! A full key is `actorId:secret`. Only `digest(secret)` is ever stored, so a
//! copy of the database holds no usable key, and lookups go by digest, so no
//! secret is ever compared byte by byte (no timing side channel).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::error::{clip, Error, Reason, Result};

/// Length in bytes of the digest that identifies a session in storage.
pub(crate) const DIGEST_LEN: usize = 32;
/// Longest actor id accepted, in bytes.
pub const MAX_ACTOR_ID_LEN: usize = 255;
/// Longest language code accepted, in bytes.
pub const MAX_LANGUAGE_LEN: usize = 35;

/// SHA-256 of a session secret: the session's storage key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Digest(pub [u8; DIGEST_LEN]);

impl Digest {
    pub fn of_secret(secret: &str) -> Digest {
        Digest(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Digest> {
        bytes.try_into().ok().map(Digest)
    }

    /// Lower-case hex, as exports and messages show it.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Digest> {
        // `from_str_radix` alone would also take a sign ("+f").
        if text.len() != DIGEST_LEN * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; DIGEST_LEN];
        for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Digest(out))
    }
}

/// Lower-case hex of `bytes`, the one hex writer of the crate.
pub(crate) fn hex(bytes: &[u8]) -> String {
    // By table, not `write!` per byte: a Redis key holds a digest's hex,
    // and formatting was a sixth of a hot resolve's client time.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Fills `buf` from the operating system's CSPRNG.
fn os_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Random { source: e.into() })
}

/// `N` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    os_random(&mut bytes)?;
    Ok(bytes)
}

/// A random number in [0, 1), for jitter; 0.5 if the generator fails.
pub(crate) fn unit_random() -> f64 {
    random_bytes::<4>().map_or(0.5, |b| {
        f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
    })
}

/// Random bytes of a public session id: 16 URL-safe characters.
const PUBLIC_ID_BYTES: usize = 12;

/// `len` URL-safe characters from `bytes` (6 random bits each).
fn url_safe(bytes: &[u8], len: usize) -> String {
    let mut s = URL_SAFE_NO_PAD.encode(bytes);
    s.truncate(len);
    s
}

/// A fresh secret of `len` URL-safe characters, 6 random bits each.
pub(crate) fn new_secret(len: usize) -> Result<String> {
    let mut bytes = vec![0u8; len.div_ceil(4) * 3];
    os_random(&mut bytes)?;
    Ok(url_safe(&bytes, len))
}

/// A fresh secret of `len` characters, as `new_secret`, and a fresh public
/// session id: 16 URL-safe characters (96 random bits), safe to log and to
/// show other players. One call to the operating system for both.
pub(crate) fn new_secret_and_public_id(len: usize) -> Result<(String, String)> {
    let secret_bytes = len.div_ceil(4) * 3;
    let mut bytes = vec![0u8; secret_bytes + PUBLIC_ID_BYTES];
    os_random(&mut bytes)?;
    let (secret, id) = bytes.split_at(secret_bytes);
    Ok((url_safe(secret, len), url_safe(id, 16)))
}

/// A full key split into its parts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FullKey<'a> {
    pub actor_id: &'a str,
    pub secret: &'a str,
}

impl<'a> FullKey<'a> {
    /// Splits `actorId:secret` at the last `:`, as MAGE does.
    ///
    /// Fails with `invalidSessionKey` when there is no `:`, either side is
    /// empty, the actor id is not valid, or the secret is not URL-safe text
    /// of a plausible length.
    pub fn parse(full: &'a str) -> Result<FullKey<'a>> {
        let invalid = Error::Invalid(Reason::InvalidSessionKey);
        let (actor_id, secret) = full
            .rsplit_once(':')
            .ok_or(Error::Invalid(Reason::InvalidSessionKey))?;
        if check_actor_id(actor_id).is_err()
            || secret.is_empty()
            || secret.len() > crate::config::MAX_KEY_LENGTH
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid);
        }
        Ok(FullKey { actor_id, secret })
    }

    pub fn digest(&self) -> Digest {
        Digest::of_secret(self.secret)
    }
}

/// Joins an actor id and a secret into a full key.
pub(crate) fn full_key(actor_id: &str, secret: &str) -> String {
    let mut s = String::with_capacity(actor_id.len() + 1 + secret.len());
    s.push_str(actor_id);
    s.push(':');
    s.push_str(secret);
    s
}

/// Actor ids: 1..=255 bytes, no control characters.
pub(crate) fn check_actor_id(actor_id: &str) -> Result<()> {
    let problem = if actor_id.is_empty() {
        "must not be empty"
    } else if actor_id.len() > MAX_ACTOR_ID_LEN {
        "must be at most 255 bytes"
    } else if actor_id.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidActorId {
        actor_id: clip(actor_id),
        problem,
    })
}

/// Language codes: 1..=35 bytes of `[A-Za-z0-9_-]` (BCP 47 tags fit).
pub(crate) fn check_language(language: &str) -> Result<()> {
    let problem = if language.is_empty() {
        "must not be empty (MAGE's default is \"en\")"
    } else if language.len() > MAX_LANGUAGE_LEN {
        "must be at most 35 bytes"
    } else if !language
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        "must be letters, digits, '-' or '_' (a BCP 47 tag such as \"en\" or \"pt-BR\")"
    } else {
        return Ok(());
    };
    Err(Error::InvalidLanguage {
        language: clip(language),
        problem,
    })
}

/// Longest public session id accepted, in bytes. The store makes ids of
/// 16 characters; an import may bring others of up to this length.
pub const MAX_SESSION_ID_LEN: usize = 64;

/// Public session ids: 1..=64 URL-safe characters (`A-Z a-z 0-9 - _`).
pub(crate) fn check_session_id(id: &str) -> Result<()> {
    let problem = if id.is_empty() {
        "must not be empty"
    } else if id.len() > MAX_SESSION_ID_LEN {
        "must be at most 64 characters"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        "must be URL-safe characters: letters, digits, '-' or '_'"
    } else {
        return Ok(());
    };
    Err(Error::InvalidSessionId {
        id: clip(id),
        problem,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        let d = Digest::of_secret("abc");
        assert_eq!(Digest::from_hex(&d.hex()), Some(d));
        assert_eq!(Digest::from_hex(&d.hex().to_uppercase()), Some(d));
        let signed = format!("+f{}", &d.hex()[2..]);
        assert_eq!(Digest::from_hex(&signed), None);
        assert_eq!(Digest::from_hex(&d.hex()[1..]), None);
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }

    use super::*;

    #[test]
    fn secrets_have_the_requested_length_and_alphabet() {
        for len in [22, 23, 32, 128] {
            let s = new_secret(len).unwrap();
            assert_eq!(s.len(), len);
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
        assert_ne!(new_secret(32).unwrap(), new_secret(32).unwrap());
        for len in [22, 23, 32, 128] {
            let (s, id) = new_secret_and_public_id(len).unwrap();
            assert_eq!((s.len(), id.len()), (len, 16));
            assert!(format!("{s}{id}")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert!(!s.starts_with(&id) && !id.starts_with(&s[..16]));
        }
    }

    #[test]
    fn full_keys_split_at_the_last_colon() {
        let k = FullKey::parse("guild:7:abcDEF_-").unwrap();
        assert_eq!(k.actor_id, "guild:7");
        assert_eq!(k.secret, "abcDEF_-");
        for bad in [
            "",
            "nokey",
            ":secret",
            "actor:",
            "actor:sec ret",
            "actor:séc",
        ] {
            assert_eq!(
                FullKey::parse(bad).unwrap_err().reason(),
                Some(Reason::InvalidSessionKey),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn digest_is_sha256_of_the_secret() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            Digest::of_secret("abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
