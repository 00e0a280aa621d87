//! Schemas of the API's strings whose rules the store enforces: each says
//! in the document what the store accepts, so that a client generated from
//! it (and Schemathesis) knows. Lengths are the store's limits in bytes of
//! UTF-8; JSON Schema counts characters, so a name of many multi-byte
//! characters can pass `maxLength` and still be refused (`400`).

use std::borrow::Cow;

use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// No control characters (Unicode's `Cc`: what `char::is_control` means).
const NO_CONTROL: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";

fn string(
    min: usize,
    max: usize,
    pattern: &str,
    description: &str,
    example: &str,
) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .description(Some(description))
        .examples([example])
}

/// Declares a named schema made by `$make`.
macro_rules! named_schema {
    ($(#[$doc:meta])* $name:ident => $make:expr) => {
        $(#[$doc])*
        pub enum $name {}

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $make.into()
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

named_schema!(
    /// An actor (player) id.
    ActorId => string(
        1,
        sessiondb::MAX_ACTOR_ID_LEN,
        NO_CONTROL,
        "An actor (player) id: 1 to 255 bytes of UTF-8, no control characters.",
        "player-7",
    )
);

named_schema!(
    /// A session's language.
    Language => string(
        1,
        sessiondb::MAX_LANGUAGE_LEN,
        "^[A-Za-z0-9_-]*$",
        "A BCP 47 tag: 1 to 35 letters, digits, `-` or `_`.",
        "en",
    )
);

named_schema!(
    /// The name of a data value.
    DataName => string(
        1,
        sessiondb::MAX_DATA_NAME_LEN,
        ".*",
        "The name of a data value: 1 to 255 bytes of UTF-8.",
        "gold",
    )
);

named_schema!(
    /// Why a session ends.
    UnsetReasonName => string(
        1,
        sessiondb::MAX_REASON_LEN,
        "^[A-Za-z0-9_.-]*$",
        "Why a session ends: `expired`, `loggedOut`, `replaced`, `reassigned`, or the game's \
         own (such as `banned`): 1 to 64 letters, digits, `_`, `.` or `-`.",
        "banned",
    )
);

named_schema!(
    /// A session's data.
    SessionData => ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Object))
        .property_names(Some(DataName::schema()))
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .description(Some(
            "A session's data: names (1 to 255 bytes) to JSON values, at most 64 KiB in all \
             (the store's `max_data_bytes`).",
        ))
);
