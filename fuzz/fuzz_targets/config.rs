//! Configuration loading (common/src/config.rs `load_layers`) as both binaries use it: a TOML file
//! and an environment map, both made from the fuzz input, loaded as the LB's or the runner's
//! settings with their real variable names and checks.
//! Invariants: a set variable that loads is reported as the value's source; settings that load
//! render to TOML that loads back (from the file alone) to the same settings; `render` never fails.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ferrofn_common::config::{EnvNames, EnvSource, Loaded, Source, render_toml};
use ferrofn_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path()
}

/// Writes `text` to the scratch file `name` and returns its path.
fn write(name: &str, text: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, text).expect("write scratch file");
    path
}

fn check<T>(
    names: &EnvNames,
    env_vars: &[(String, String)],
    file: Option<&Path>,
    load: impl Fn(Option<&Path>, &EnvSource) -> Result<Loaded<T>, ferrofn_common::config::ConfigError>,
) where
    T: Serialize + DeserializeOwned + Default + PartialEq + std::fmt::Debug,
{
    let env = EnvSource::from_pairs(env_vars.iter().cloned());
    let Ok(loaded) = load(file, &env) else { return };
    let _ = loaded.render();
    for (name, field) in names.current {
        if env_vars.iter().any(|(n, _)| n == name) {
            assert_eq!(
                loaded.source(field),
                Source::Env((*name).to_owned()),
                "{name} is set and loaded but {field} does not come from it"
            );
        }
    }
    let rendered = render_toml(&loaded.settings);
    let path = write("rendered.toml", rendered.as_bytes());
    let again = load(
        Some(&path),
        &EnvSource::from_pairs(Vec::<(String, String)>::new()),
    )
    .unwrap_or_else(|e| panic!("rendered settings do not load: {e}\n{rendered}"));
    assert_eq!(
        again.settings, loaded.settings,
        "TOML round trip changed the settings\n{rendered}"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let which = input.byte();
    let names = if which & 1 == 0 {
        &ferrofn_lb::config::ENV_NAMES
    } else {
        &ferrofn_runner::config::ENV_NAMES
    };
    let all: Vec<&str> = names
        .current
        .iter()
        .map(|(n, _)| *n)
        .chain(names.deprecated.iter().map(|(old, _)| *old))
        .collect();
    let mut env_vars: Vec<(String, String)> = Vec::new();
    for _ in 0..(input.byte() % 8) {
        let name = all[input.byte() as usize % all.len()];
        let value = String::from_utf8_lossy(input.short()).into_owned();
        env_vars.retain(|(n, _)| n != name);
        env_vars.push((name.to_owned(), value));
    }
    let file = (which & 2 != 0).then(|| write("settings.toml", input.rest()));
    if which & 1 == 0 {
        let flags = ferrofn_lb::config::Flags::default();
        check(names, &env_vars, file.as_deref(), |f, e| {
            ferrofn_lb::config::LbSettings::load(f, e, &flags)
        });
    } else {
        let flags = ferrofn_runner::config::Flags::default();
        check(names, &env_vars, file.as_deref(), |f, e| {
            ferrofn_runner::config::RunnerSettings::load(f, e, &flags)
        });
    }
});
