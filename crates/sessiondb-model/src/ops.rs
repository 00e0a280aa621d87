//! The operations a test applies to the store and the model, as small
//! enums whose `Debug` output reads as a script, so that a shrunk failing
//! case is easy to follow.

use crate::{Data, Meta, Settings, UnsetReason};

/// The clock's starting time: 2023-11-14T22:13:20Z.
pub const T0: u64 = 1_700_000_000_000;
/// This node's id in every test store.
pub const NODE_ID: &str = "node-1";
/// The secret of `Key::Unknown` keys: well-formed, never issued.
pub const UNKNOWN_SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// An actor id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Actor {
    /// `"a"`
    A,
    /// `"b"`
    B,
    /// `"c"`
    C,
    /// `"guild:7"`: a colon inside the actor id.
    Guild,
    /// `""`: invalid.
    Empty,
}

impl Actor {
    /// The actor id.
    pub fn id(self) -> &'static str {
        match self {
            Actor::A => "a",
            Actor::B => "b",
            Actor::C => "c",
            Actor::Guild => "guild:7",
            Actor::Empty => "",
        }
    }
}

/// A language code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Lang {
    /// `"en"`
    En,
    /// `"pt-BR"`
    PtBr,
    /// `"e n"`: invalid.
    Bad,
}

impl Lang {
    /// The language code.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::PtBr => "pt-BR",
            Lang::Bad => "e n",
        }
    }
}

/// A data name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Name {
    /// `"n"`
    N,
    /// `"w"`
    W,
    /// `""`: invalid.
    Empty,
}

impl Name {
    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Name::N => "n",
            Name::W => "w",
            Name::Empty => "",
        }
    }
}

/// A data value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Value {
    /// A small integer.
    Int(i8),
    /// The string `"hello"`.
    Word,
    /// A string of 80 `x`: over a small data limit.
    Big,
}

impl Value {
    /// The value's JSON text, as the store keeps it.
    pub fn json(self) -> String {
        match self {
            Value::Int(n) => n.to_string(),
            Value::Word => "\"hello\"".to_owned(),
            Value::Big => format!("\"{}\"", "x".repeat(80)),
        }
    }
}

/// The data a register starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Payload {
    /// No data.
    Empty,
    /// `{"n": 1}`
    Small,
    /// `{"w": Value::Big}`
    Big,
}

impl Payload {
    /// The data as names and JSON texts.
    pub fn data(self) -> Data {
        let mut d = Data::new();
        match self {
            Payload::Empty => {}
            Payload::Small => {
                d.insert("n".into(), Value::Int(1).json());
            }
            Payload::Big => {
                d.insert("w".into(), Value::Big.json());
            }
        }
        d
    }
}

/// The metadata a register gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Device {
    /// `{"device": "phone", "platform": "ios"}`
    Phone,
    /// `{"device": "desktop"}`
    Desktop,
    /// `{"bad name": "x"}`: refused (`invalidMeta`).
    Bad,
}

impl Device {
    /// The metadata as names and values.
    pub fn meta(self) -> Meta {
        let pairs: &[(&str, &str)] = match self {
            Device::Phone => &[("device", "phone"), ("platform", "ios")],
            Device::Desktop => &[("device", "desktop")],
            Device::Bad => &[("bad name", "x")],
        };
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }
}

/// Which public session id an operation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum SessionRef {
    /// The id of the session the n-th seen key was issued for (modulo
    /// their number); with none yet, an id never issued.
    Seen(u8),
    /// A well-formed id never issued.
    Unknown,
    /// `"not an id!"`: refused (`invalidSessionId`).
    Malformed,
}

/// The id of [`SessionRef::Unknown`].
pub const UNKNOWN_SESSION_ID: &str = "AAAAAAAAAAAAAAAA";
/// The id of [`SessionRef::Malformed`].
pub const MALFORMED_SESSION_ID: &str = "not an id!";

/// An unset reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Why {
    /// `expired`
    Expired,
    /// `loggedOut`
    LoggedOut,
    /// `replaced`
    Replaced,
    /// `reassigned`
    Reassigned,
    /// `rotated`
    Rotated,
    /// `banned`: custom.
    Banned,
    /// `"has space"`: an invalid custom reason.
    Bad,
}

impl Why {
    /// The reason.
    pub fn reason(self) -> UnsetReason {
        match self {
            Why::Expired => UnsetReason::Expired,
            Why::LoggedOut => UnsetReason::LoggedOut,
            Why::Replaced => UnsetReason::Replaced,
            Why::Reassigned => UnsetReason::Reassigned,
            Why::Rotated => UnsetReason::Rotated,
            Why::Banned => UnsetReason::Other("banned".into()),
            Why::Bad => UnsetReason::Other("has space".into()),
        }
    }
}

/// What an `update` closure does to the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Change {
    /// `n = n + 1` (a missing or non-integer `n` counts as 0).
    Incr,
    /// Removes every name.
    Clear,
    /// Changes nothing (no write).
    Same,
    /// Sets `w` to `Value::Big`.
    Grow,
}

impl Change {
    /// Applies the change to data held as JSON texts.
    pub fn apply(self, data: &mut Data) {
        match self {
            Change::Incr => {
                let n = data
                    .get("n")
                    .and_then(|j| j.parse::<i64>().ok())
                    .unwrap_or(0);
                data.insert("n".into(), (n + 1).to_string());
            }
            Change::Clear => data.clear(),
            Change::Same => {}
            Change::Grow => {
                data.insert("w".into(), Value::Big.json());
            }
        }
    }
}

/// Which full key an operation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Key {
    /// The n-th key the store handed out (register, reassign), modulo their
    /// number; with none yet, an unknown key of actor `a`.
    Seen(u8),
    /// The n-th of [`MALFORMED`], modulo its length.
    Malformed(u8),
    /// A well-formed key of this actor that was never issued.
    Unknown(Actor),
    /// The secret of the n-th seen key under another actor id.
    Swapped(u8, Actor),
}

/// Keys that must be rejected with `invalidSessionKey`.
pub const MALFORMED: &[&str] = &[
    "",
    "no-colon",
    ":AAAAAAAAAAAAAAAAAAAAAA",
    "a:",
    "a:not a secret",
    "a:s\u{e9}cret",
    "a\u{7}:AAAAAAAAAAAAAAAAAAAAAA",
];

/// How far the clock moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Step {
    /// 1 ms.
    Ms,
    /// Half the touch interval.
    HalfTouch,
    /// The touch interval.
    Touch,
    /// Half the TTL.
    HalfTtl,
    /// The TTL less 1 ms.
    TtlLess1,
    /// The TTL.
    Ttl,
    /// Three TTLs.
    Long,
}

impl Step {
    /// The step in ms under `settings`.
    pub fn ms(self, settings: &Settings) -> u64 {
        let ttl = settings.ttl_ms;
        match self {
            Step::Ms => 1,
            Step::HalfTouch => settings.touch_ms / 2,
            Step::Touch => settings.touch_ms,
            Step::HalfTtl => ttl / 2,
            Step::TtlLess1 => ttl - 1,
            Step::Ttl => ttl,
            Step::Long => 3 * ttl,
        }
    }
}

/// The app version a store is opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Version {
    /// No version check.
    #[default]
    Unset,
    /// `1.0.0`
    V100,
    /// `1.0.7`: compatible with 1.0.0.
    V107,
    /// `1.1.0`: a new minor, incompatible.
    V110,
}

impl Version {
    /// The version string.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Version::Unset => None,
            Version::V100 => Some("1.0.0"),
            Version::V107 => Some("1.0.7"),
            Version::V110 => Some("1.1.0"),
        }
    }
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Op {
    /// `register(actor, language, data)`
    Register(Actor, Lang, Payload),
    /// `register_with_meta(actor, "en", no data, meta)`
    RegisterOn(Actor, Device),
    /// `rotate(key)`
    Rotate(Key),
    /// `actor_sessions(actor)`
    ActorSessions(Actor),
    /// `expire_session(actor, id, reason)`
    ExpireSession(Actor, SessionRef, Why),
    /// `expire_others(key, reason)`
    ExpireOthers(Key, Why),
    /// `resolve(key)`
    Resolve(Key),
    /// `is_valid(key)`
    IsValid(Key),
    /// `restore(key)`
    Restore(Key),
    /// `extend(key)`
    Extend(Key),
    /// `logout(key)`
    Logout(Key),
    /// `expire(key, reason)`
    Expire(Key, Why),
    /// `expire_actor(actor, reason)`
    ExpireActor(Actor, Why),
    /// `data(key)`
    Data(Key),
    /// `set_data(key, name, value)`
    SetData(Key, Name, Value),
    /// `del_data(key, name)`
    DelData(Key, Name),
    /// `update(key, change)`
    Update(Key, Change),
    /// `reassign(from, to)`
    Reassign(Actor, Actor),
    /// `actor_session(actor)`
    ActorSession(Actor),
    /// `actor_addresses(actors)`
    ActorAddresses(Vec<Actor>),
    /// Moves the clock.
    Advance(Step),
    /// `reap_expired()`
    Reap,
    /// `check()` is healthy, `stats().sessions` and every actor's session agree.
    Check,
    /// `close()`, then open again with this app version.
    Reopen(Version),
    /// Drops the store without `close`, then opens again with this app version.
    DropReopen(Version),
}

/// The idle TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Ttl {
    /// 10 s.
    S10,
    /// 1 min.
    M1,
    /// 10 min (the default).
    #[default]
    M10,
}

/// The touch interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum TouchInterval {
    /// A tenth of the TTL (the default).
    #[default]
    Default,
    /// Zero: every resolve writes.
    Zero,
    /// Half the TTL.
    Half,
}

/// The absolute lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Lifetime {
    /// None (the default).
    #[default]
    Unlimited,
    /// Half the TTL: every session's expiry is its deadline.
    Short,
    /// Twice the TTL.
    Long,
}

/// A store's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Setup {
    /// Idle TTL.
    pub ttl: Ttl,
    /// Touch interval.
    pub touch: TouchInterval,
    /// Absolute lifetime.
    pub lifetime: Lifetime,
    /// Sessions per actor: 1 + this % 3.
    pub per_actor: u8,
    /// Reaper batch: 1 + this % 3, or 1000 when this is 0.
    pub reap_batch: u8,
    /// A 64-byte data limit instead of the default 64 KiB.
    pub small_data: bool,
    /// App version at the first open.
    pub version: Version,
}

impl Default for Setup {
    /// The store's defaults: 10 min TTL, one session per actor.
    fn default() -> Self {
        Setup {
            ttl: Ttl::M10,
            touch: TouchInterval::Default,
            lifetime: Lifetime::Unlimited,
            per_actor: 0,
            reap_batch: 0,
            small_data: false,
            version: Version::Unset,
        }
    }
}

impl Setup {
    /// The idle TTL in ms.
    pub fn ttl_ms(&self) -> u64 {
        match self.ttl {
            Ttl::S10 => 10_000,
            Ttl::M1 => 60_000,
            Ttl::M10 => 600_000,
        }
    }

    /// The touch interval in ms.
    pub fn touch_ms(&self) -> u64 {
        match self.touch {
            TouchInterval::Default => self.ttl_ms() / 10,
            TouchInterval::Zero => 0,
            TouchInterval::Half => self.ttl_ms() / 2,
        }
    }

    /// The absolute lifetime in ms.
    pub fn max_lifetime_ms(&self) -> Option<u64> {
        match self.lifetime {
            Lifetime::Unlimited => None,
            Lifetime::Short => Some(self.ttl_ms() / 2),
            Lifetime::Long => Some(self.ttl_ms() * 2),
        }
    }

    /// Sessions per actor.
    pub fn max_per_actor(&self) -> usize {
        1 + usize::from(self.per_actor % 3)
    }

    /// The reaper's batch size.
    pub fn reap_batch(&self) -> usize {
        match self.reap_batch {
            0 => 1_000,
            n => 1 + usize::from(n % 3),
        }
    }

    /// The data limit in bytes.
    pub fn max_data_bytes(&self) -> usize {
        if self.small_data {
            64
        } else {
            64 * 1024
        }
    }

    /// The model's settings for this setup at the first open.
    pub fn settings(&self) -> Settings {
        Settings {
            ttl_ms: self.ttl_ms(),
            touch_ms: self.touch_ms(),
            max_lifetime_ms: self.max_lifetime_ms(),
            max_per_actor: self.max_per_actor(),
            max_data_bytes: self.max_data_bytes(),
            app_version: self.version.as_str().map(str::to_owned),
            node_id: Some(NODE_ID.to_owned()),
        }
    }
}
