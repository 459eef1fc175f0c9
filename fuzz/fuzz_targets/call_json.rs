//! The call model decoder (`TryCall.models_call_json`, common/src/call.rs) and the `cpus` parser.
//! Invariants: whatever decodes re-encodes, and the encoding decodes to the same model (times
//! compared at millisecond precision: they parse at any precision and print at ms, as Fn's
//! `common.DateTime`; the fuzzer's first crash, kept as a unit test in common/src/call.rs) and to
//! the same text; a decode error classifies without panicking; a parsed `cpus` is in range and its display
//! form parses back to the same value.
#![no_main]

use ferrofn_common::call::{CallModel, MAX_MILLI_CPUS, MilliCpus};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match CallModel::from_json(text) {
        Ok(model) => {
            let json = model.to_json();
            let again = CallModel::from_json(&json)
                .unwrap_or_else(|e| panic!("our own encoding does not decode: {e}\n{json}"));
            let mut at_millis = model.clone();
            for (t, back) in [
                (&mut at_millis.created_at, again.created_at),
                (&mut at_millis.started_at, again.started_at),
                (&mut at_millis.completed_at, again.completed_at),
            ] {
                assert_eq!(
                    t.to_string(),
                    back.to_string(),
                    "a time changed beyond its milliseconds"
                );
                *t = back;
            }
            assert_eq!(again, at_millis, "decode(encode(m)) != m\n{json}");
            assert_eq!(again.to_json(), json, "encoding is not stable");
        }
        Err(e) => {
            let _ = (e.api_error(), e.line(), e.column(), e.to_string());
        }
    }
    if let Ok(cpus) = MilliCpus::parse(text) {
        assert!(
            cpus.0 <= MAX_MILLI_CPUS,
            "{text:?} parsed to {} milli-CPUs",
            cpus.0
        );
        let shown = cpus.to_string();
        let back = MilliCpus::parse(&shown).expect("display form parses");
        assert_eq!(back, cpus, "{text:?} -> {shown:?}");
    }
});
