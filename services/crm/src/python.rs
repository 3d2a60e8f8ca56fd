//! Running a reference implementation in Python (the evaluations compare ours with
//! PyPI packages): a script given as text, its last JSON line as the answer.

use std::{io::Write, path::Path, process::Command};

use anyhow::Context;

/// Runs `script` with `python` and `args`; returns the last line of its output that
/// is a JSON object, and the wall time in milliseconds. `what` names the package in
/// errors.
pub fn run_json(
    python: &Path,
    what: &str,
    script: &str,
    args: &[std::ffi::OsString],
) -> anyhow::Result<(serde_json::Value, f64)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("reference.py");
    std::fs::File::create(&file)?.write_all(script.as_bytes())?;
    let started = std::time::Instant::now();
    let output = Command::new(python)
        .arg(&file)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no JSON from the {what} script"))?;
    Ok((serde_json::from_str(line)?, ms))
}
