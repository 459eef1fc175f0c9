//! How both binaries end on an error: one report format and documented exit codes.
//!
//! The report is the error's message, then each cause on its own line, each said once: many error
//! types put their cause's text into their own message *and* return it as `source()`, which a plain
//! `{:#}` prints twice or three times. A cause whose text is already in what was printed is skipped.
//! No backtrace is printed, whatever `RUST_BACKTRACE` says: these are an operator's errors, not bugs.
//!
//! Exit codes: 0 success; 1 the node failed (a listener, Docker, TLS files, the registry, ...);
//! 2 the command line or the settings are invalid (also clap's code for a bad flag); probes exit 1
//! when the target is not serving.

use std::process::ExitCode;

use crate::config::ConfigError;

/// Exit code for an invalid command line or invalid settings.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for a node that failed to start or failed while running.
pub const EXIT_FAILURE: u8 = 1;

/// The texts of an error chain, each said once, joined by `sep`.
fn distinct<'a>(chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>, sep: &str) -> String {
    let mut out = String::new();
    for cause in chain {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || out.contains(text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(sep);
        }
        out.push_str(text);
    }
    out
}

/// The message and its distinct causes, one per line (`caused by: ...`).
pub fn report(err: &anyhow::Error) -> String {
    distinct(err.chain(), "\n  caused by: ")
}

/// A gRPC status for a log line: its message, then its distinct transport causes (tonic's own
/// `Display` prints the code, the message and the cause's `Debug` form).
pub fn grpc_status(s: &tonic::Status) -> String {
    let causes = std::error::Error::source(s).map(one_line).unwrap_or_default();
    let msg = s.message();
    match (msg.is_empty(), causes.is_empty()) {
        (true, true) => format!("{:?}", s.code()),
        (false, true) => msg.to_owned(),
        (true, false) => causes,
        (false, false) if msg.contains(&causes) || causes.contains(msg) => {
            if msg.len() >= causes.len() {
                msg.to_owned()
            } else {
                causes
            }
        }
        (false, false) => format!("{msg}: {causes}"),
    }
}

/// An error and its distinct causes on one line (`a: b: c`), for log fields.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    distinct(std::iter::successors(Some(err), |e| e.source()), ": ")
}

/// The exit code `err` calls for: [`EXIT_CONFIG`] when a settings error is in its chain.
pub fn code_for(err: &anyhow::Error) -> u8 {
    if err.chain().any(|c| c.is::<ConfigError>()) {
        EXIT_CONFIG
    } else {
        EXIT_FAILURE
    }
}

/// Prints `program: error: <report>` on stderr and returns the exit code for it.
pub fn fail(program: &str, err: &anyhow::Error) -> ExitCode {
    eprintln!("{program}: error: {}", report(err));
    ExitCode::from(code_for(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read CA file x.pem: {0}")]
    struct ReadCa(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load the TLS files: {0}")]
    struct LoadTls(#[source] ReadCa);

    fn missing() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
    }

    #[test]
    fn each_cause_is_said_once() {
        let err = anyhow::Error::new(LoadTls(ReadCa(missing())));
        let text = report(&err);
        assert_eq!(text.matches("No such file").count(), 1, "{text}");
        assert_eq!(text.matches("cannot read CA file").count(), 1, "{text}");
        assert_eq!(code_for(&err), EXIT_FAILURE);
    }

    #[test]
    fn causes_not_in_the_message_get_their_own_line() {
        let err = anyhow::Error::new(missing()).context("starting the runner");
        assert_eq!(
            report(&err),
            "starting the runner\n  caused by: No such file or directory"
        );
    }

    #[test]
    fn one_line_for_logs() {
        let err = LoadTls(ReadCa(missing()));
        assert_eq!(
            one_line(&err),
            "cannot load the TLS files: cannot read CA file x.pem: No such file or directory"
        );
        let err = anyhow::Error::new(missing()).context("starting");
        assert_eq!(one_line(err.as_ref()), "starting: No such file or directory");
    }

    #[test]
    fn grpc_status_without_the_debug_noise() {
        let s = tonic::Status::unavailable("connecting to the runner failed: Connection refused");
        assert_eq!(
            grpc_status(&s),
            "connecting to the runner failed: Connection refused"
        );
        let s = tonic::Status::unavailable("");
        assert_eq!(grpc_status(&s), "Unavailable");
    }

    #[test]
    fn settings_errors_exit_2() {
        let err = anyhow::Error::new(ConfigError::Invalid("port: bad".into())).context("loading");
        assert_eq!(code_for(&err), EXIT_CONFIG);
        let plain = anyhow::anyhow!("listener failed");
        assert_eq!(code_for(&plain), EXIT_FAILURE);
    }
}
