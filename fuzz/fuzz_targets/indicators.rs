//! Indicator loading: each input is tried as the JSON file format, a Defender CSV and a
//! plain list. Whatever loads must export (`nprot indicator export`) to a file that
//! loads back to the same set, and exporting that again gives the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nprot::policy::{
    Action, Indicator, Indicators, Loaded, Policy, load_defender_csv, load_json, load_list,
};

fn owned(set: &Indicators) -> Vec<Indicator> {
    set.iter().map(|i| i.to_indicator()).collect()
}

fn round_trip(format: &str, loaded: Loaded) {
    let set = loaded.indicators;
    let export = serde_json::to_string(&set).expect("indicators serialise");
    let again = match load_json(&export) {
        Ok(l) => l.indicators,
        Err(e) => panic!("{format}: the export of what loaded does not load: {e}\n{export}"),
    };
    assert_eq!(
        owned(&set),
        owned(&again),
        "{format}: export changed the set"
    );
    let export2 = serde_json::to_string(&again).expect("indicators serialise");
    assert_eq!(
        export, export2,
        "{format}: export -> load -> export is not the identity"
    );
    // The daemon indexes every loaded set.
    drop(Policy::new(set, &[]));
}

fuzz_target!(|data: &[u8]| {
    // Every loader reads UTF-8 text (a file that is not is refused before parsing).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(l) = load_json(text) {
        round_trip("json", l);
    }
    if let Ok(l) = load_defender_csv(text) {
        round_trip("csv", l);
    }
    if let Ok(l) = load_list(text, Action::Block) {
        round_trip("list", l);
    }
});
