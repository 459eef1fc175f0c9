//! The LB and runner binaries run with glibc's mmap threshold fixed (common/src/malloc.rs): they
//! re-execute themselves once, first thing, with the tunable in `GLIBC_TUNABLES`, keeping the
//! process id. The re-execution is read back from `/proc/<pid>/environ` (its marker), the
//! tunables from the startup log line (glibc tokenises the variable in place, so `environ`
//! shows it cut at its first `:`); an operator's own threshold is kept and nothing is
//! re-executed then. (What the threshold buys, a flat RSS over many large transfers, is measured
//! by `make bench`, target 8b.)

use anyhow::{Context, Result, ensure};

use ferrofn_common::malloc::{MMAP_THRESHOLD, REEXEC_MARK, TUNABLE};
use ferrofn_tests::lb_proc::LbBinary;
use ferrofn_tests::runner_proc::RunnerProc;

/// The environment of process `pid`, `KEY=VALUE` each.
fn environ(pid: u32) -> Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).with_context(|| format!("environ of {pid}"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .collect())
}

fn var(env: &[String], key: &str) -> Option<String> {
    env.iter()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
}

/// The `GLIBC_TUNABLES` a node's startup line (`tokio runtime`) reports.
fn logged_tunables(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("tokio runtime"))?;
    let value = line.split_once("glibc_tunables=")?.1;
    Some(value.split_whitespace().next().unwrap_or("").to_owned())
}

#[tokio::test]
async fn the_binaries_run_with_a_fixed_mmap_threshold_and_an_operators_own_stands() -> Result<()> {
    let ours = format!("{TUNABLE}={MMAP_THRESHOLD}");

    let dir = tempfile::tempdir()?;
    let db = format!("sqlite3://{}", dir.path().join("fn.db").display());
    let lb = LbBinary::start(
        &["--plaintext"],
        &[
            ("FN_DB_URL", db.as_str()),
            ("GLIBC_TUNABLES", "glibc.malloc.arena_max=4"),
        ],
    )
    .await?;
    let env = environ(lb.child.id().context("LB pid")?)?;
    ensure!(var(&env, REEXEC_MARK).is_some(), "the LB re-executed itself once");
    let log = lb.stderr.lock().unwrap().clone();
    ensure!(
        logged_tunables(&log) == Some(format!("glibc.malloc.arena_max=4:{ours}")),
        "the threshold is added to the operator's other tunables; the LB logged:\n{log}"
    );

    let runner = RunnerProc::start(&[]).await?;
    ensure!(
        var(&environ(runner.pid())?, REEXEC_MARK).is_some(),
        "the runner re-executed itself once"
    );
    ensure!(
        logged_tunables(&runner.logs()).as_deref() == Some(ours.as_str()),
        "the runner logged:\n{}",
        runner.logs()
    );

    let own = "glibc.malloc.mmap_threshold=65536";
    let runner = RunnerProc::start(&[("GLIBC_TUNABLES", own)]).await?;
    let env = environ(runner.pid())?;
    ensure!(
        logged_tunables(&runner.logs()).as_deref() == Some(own),
        "an operator's own threshold stands; the runner logged:\n{}",
        runner.logs()
    );
    ensure!(
        var(&env, REEXEC_MARK).is_none(),
        "nothing to change, so no re-execution"
    );
    Ok(())
}
