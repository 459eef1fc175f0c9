//! v2 API JSON bodies (lb/src/registry/models.rs, lb/src/http/api/mod.rs `parse_object`): an app, fn
//! or trigger as a create or PUT body, its validation and its PUT merge.
//! Invariants: a parsed object re-encodes and decodes to itself (times at millisecond precision:
//! they parse at any precision and print at ms, as Fn's `common.DateTime`); validation is a pure function of
//! the object (the re-decoded copy gets the same verdict); applying the same patch twice changes
//! nothing the second time; a PUT never changes the ID or name of an app or fn (a trigger's name may
//! change: Fn's rule).
#![no_main]

use bytes::Bytes;
use ferrofn_common::datetime::DateTime;
use ferrofn_fuzz::Input;
use ferrofn_lb::http::api::{ApiObject, parse_object};
use ferrofn_lb::registry::models::{App, Function, Trigger};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;

trait Model: ApiObject + Serialize + Clone + PartialEq + std::fmt::Debug {
    fn validate(&self) -> Result<(), ferrofn_common::error::FnError>;
    fn validate_create(&self) -> Result<(), ferrofn_common::error::FnError>;
    fn apply_patch(&mut self, patch: &Self);
    fn clear_updated(&mut self);
    /// The times as they print (milliseconds): they parse at any precision, as Fn's `DateTime`.
    fn times_at_millis(&mut self);
    fn identity(&self) -> (String, String);
}

macro_rules! model {
    ($t:ty) => {
        impl Model for $t {
            fn validate(&self) -> Result<(), ferrofn_common::error::FnError> {
                <$t>::validate(self)
            }
            fn validate_create(&self) -> Result<(), ferrofn_common::error::FnError> {
                <$t>::validate_create(self)
            }
            fn apply_patch(&mut self, patch: &Self) {
                <$t>::apply_patch(self, patch)
            }
            fn clear_updated(&mut self) {
                self.updated_at = DateTime::ZERO;
            }
            fn times_at_millis(&mut self) {
                for t in [&mut self.created_at, &mut self.updated_at] {
                    *t = DateTime::parse(&t.to_string()).expect("a printed time parses");
                }
            }
            fn identity(&self) -> (String, String) {
                (self.id.clone(), self.name.clone())
            }
        }
    };
}
model!(App);
model!(Function);
model!(Trigger);

fn verdict(r: Result<(), ferrofn_common::error::FnError>) -> Result<(), (u16, String)> {
    r.map_err(|e| (e.code(), e.message().to_owned()))
}

fn check<T: Model>(base: &[u8], patch: &[u8], patch_renames: bool) {
    let Ok(object) = parse_object::<T>(&Bytes::copy_from_slice(base)) else {
        return;
    };
    let json = serde_json::to_vec(&object).expect("models always encode");
    let again = parse_object::<T>(&Bytes::from(json.clone())).unwrap_or_else(|e| {
        panic!(
            "our own encoding does not parse: {e:?}\n{}",
            String::from_utf8_lossy(&json)
        )
    });
    let mut at_millis = object.clone();
    at_millis.times_at_millis();
    assert_eq!(
        again,
        at_millis,
        "decode(encode(o)) != o\n{}",
        String::from_utf8_lossy(&json)
    );
    assert_eq!(verdict(again.validate()), verdict(object.validate()));
    assert_eq!(
        verdict(again.validate_create()),
        verdict(object.validate_create())
    );

    let Ok(patch) = parse_object::<T>(&Bytes::copy_from_slice(patch)) else {
        return;
    };
    let mut once = object.clone();
    once.apply_patch(&patch);
    let mut twice = once.clone();
    twice.apply_patch(&patch);
    once.clear_updated();
    twice.clear_updated();
    assert_eq!(twice, once, "applying the same patch twice is not idempotent");
    if !patch_renames {
        assert_eq!(once.identity(), object.identity(), "a PUT changed the id or name");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let kind = input.byte();
    let split = input.u16() as usize;
    let rest = input.rest();
    let (base, patch) = rest.split_at(split.min(rest.len()));
    match kind % 3 {
        0 => check::<App>(base, patch, false),
        1 => check::<Function>(base, patch, false),
        // A trigger PUT may rename (Fn's rule: non-empty name/source/app/fn replace).
        _ => check::<Trigger>(base, patch, true),
    }
});
