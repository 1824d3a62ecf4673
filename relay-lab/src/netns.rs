//! A network namespace owned by this process: uniquely named, deleted on drop (also when a test
//! panics), with helpers to run commands in it or move the current thread into it.

use std::{
    fs::File,
    os::fd::AsFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns`), removed when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `{prefix}-{pid}-{n}`, unique on this host, with loopback up.
    pub fn create(prefix: &str) -> Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME args…`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        Self::ip_in(&self.name, args)
    }

    /// Runs `ip -n name args…` for a namespace known by name.
    pub fn ip_in(name: &str, args: &[&str]) -> Result<()> {
        run_checked(Command::new("ip").args(["-n", name]).args(args)).map(|_| ())
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args…` inside the namespace and returns its stdout; fails on a non-zero
    /// exit with the command's stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = run_checked(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Moves the calling thread into the namespace until the guard drops. Everything
    /// namespace-scoped the thread does meanwhile (interface indexes, attaching XDP,
    /// BPF_PROG_TEST_RUN's route lookups, sockets) happens in here.
    pub fn enter(&self) -> Result<EnteredNetns> {
        let original = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        let target = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening netns {}", self.name))?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {}", self.name))?;
        Ok(EnteredNetns { original })
    }
}

impl Netns {
    /// Leaves the namespace in place when this handle is dropped (a kept lab).
    pub fn keep(self) -> String {
        let name = self.name.clone();
        std::mem::forget(self);
        name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The calling thread is inside a namespace; dropping this moves it back.
#[must_use = "the thread leaves the namespace when this is dropped"]
pub struct EnteredNetns {
    original: File,
}

impl Drop for EnteredNetns {
    fn drop(&mut self) {
        let _ = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET);
    }
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run_checked(cmd: &mut Command) -> Result<Output> {
    let what = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
