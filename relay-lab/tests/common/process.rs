//! Running the external tools tests check against (systemd-analyze, nft, shellcheck, the relay
//! binary itself), with their own output in the failure message.

use std::process::Command;

/// Runs `cmd` to completion and returns its stdout; fails the test, showing what the command
/// printed on both streams, unless it exited successfully.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{:?} failed ({}):\n{stdout}{}",
        cmd.get_program(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `relay` binary under test (see `relay_lab::relay_bin`).
pub fn relay_path() -> String {
    relay_lab::relay_bin()
        .expect("the relay binary")
        .display()
        .to_string()
}
