//! Running subprocesses: every failure becomes an error that names the command.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};

/// `program arg1 arg2 …` for messages.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            s.push_str(&format!(" '{arg}'"));
        } else {
            s.push(' ');
            s.push_str(&arg);
        }
    }
    s
}

/// Runs `cmd` with inherited stdout/stderr (stdin closed) and fails unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    println!("+ {shown}");
    let status = cmd.stdin(Stdio::null()).status().with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; fails (with its stderr) unless it succeeds.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`{shown}` failed ({}): {}", out.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` streaming its stdout to ours while keeping a copy (stderr is inherited).
/// Returns the exit status and the captured stdout; the caller judges the status.
pub fn run_tee(cmd: &mut Command) -> Result<(ExitStatus, String)> {
    let shown = display(cmd);
    println!("+ {shown}");
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().with_context(|| format!("cannot start `{shown}`"))?;
    let mut reader = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut captured = Vec::new();
    let mut line = Vec::new();
    let stdout = std::io::stdout();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).with_context(|| format!("reading the output of `{shown}`"))?;
        if n == 0 {
            break;
        }
        let mut out = stdout.lock();
        // The terminal going away must not stop the run; the copy is what counts.
        let _ = out.write_all(&line);
        let _ = out.flush();
        captured.extend_from_slice(&line);
    }
    let status = child.wait().with_context(|| format!("waiting for `{shown}`"))?;
    Ok((status, String::from_utf8_lossy(&captured).into_owned()))
}

/// The cargo that runs this xtask (`$CARGO`), else `cargo` from PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
