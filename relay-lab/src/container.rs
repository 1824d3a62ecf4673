//! A fresh Debian, booted with systemd as PID 1 (systemd-nspawn) in a lab host's network
//! namespace: where the packages are installed, started, upgraded, reloaded and removed the way
//! an operator does it on a VM.
//!
//! The root filesystem is debootstrapped once (minutes, from Debian's mirror) and kept under
//! `target/rootfs/`; each container boots a copy of it, so every test starts from a system the
//! relay never touched. Each container gets its own bpffs instance mounted at its /sys/fs/bpf:
//! its pins are its own, and go when it goes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::run_checked;

/// The Debian release the tests boot: the oldest the relay supports (docs/operations.md).
pub const RELEASE: &str = "bookworm";
/// Where debootstrap fetches it from.
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// Packages on top of debootstrap's minbase: systemd as init and what the relay's package
/// depends on. Nothing of the relay's.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,iproute2";
/// The capabilities a relay needs inside (and nspawn keeps out by default), and the system
/// calls nspawn's filter would refuse it.
const CAPABILITIES: &str = "CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN,CAP_SYS_ADMIN";
const SYSCALLS: &str = "bpf perf_event_open";

fn workspace_target() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// The pristine root filesystem, made on first use (debootstrap) and cached. Concurrent callers
/// wait for the one that makes it.
pub fn pristine_rootfs() -> Result<PathBuf> {
    let dir = workspace_target().join("rootfs");
    fs::create_dir_all(&dir)?;
    let lock = fs::File::create(dir.join(".lock"))?;
    lock.lock().context("locking target/rootfs")?;
    let tag: String = INCLUDE
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        .to_string();
    let root = dir.join(format!("{RELEASE}-{tag}"));
    if root.join(".complete").exists() {
        return Ok(root);
    }
    let partial = dir.join(format!("{RELEASE}-{tag}.partial"));
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    eprintln!(
        "debootstrap {RELEASE} into {} (once; cached)",
        root.display()
    );
    let started = Instant::now();
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={INCLUDE}"),
            RELEASE,
        ])
        .arg(&partial)
        .arg(MIRROR)
        .output()
        .context("running debootstrap (installed by `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "debootstrap failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // A root password-less console is irrelevant (no login); the machine id is made at boot.
    let _ = fs::remove_file(partial.join("etc/machine-id"));
    fs::write(partial.join("etc/hostname"), "relay-vm\n")?;
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::rename(&partial, &root)?;
    fs::write(root.join(".complete"), "")?;
    eprintln!("debootstrap took {:.0?}", started.elapsed());
    Ok(root)
}

/// A booted container. Dropping it shuts it down and removes its copy and its bpffs.
pub struct Container {
    name: String,
    dir: PathBuf,
    nspawn: Option<Child>,
    leader: u32,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Container {
    /// Copies the pristine root and boots it with `netns` (a lab host's namespace, by name) as
    /// its network; returns once systemd reports the system up.
    pub fn boot(prefix: &str, netns: &str) -> Result<Container> {
        remove_stale();
        let started = Instant::now();
        let pristine = pristine_rootfs()?;
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = containers_dir().join(&name);
        fs::create_dir_all(&dir)?;
        let mut container = Container {
            name,
            dir: dir.clone(),
            nspawn: None,
            leader: 0,
        };
        run_checked(
            Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(&pristine)
                .arg(container.root()),
        )?;
        // The lab addresses the container's interfaces from outside, so nothing inside would
        // ever bring the network "online": networkd's wait would hold network-online.target
        // (which the relay's unit wants) for its 2-minute timeout. On a VM, the distribution's
        // network configuration reaches it.
        for unit in [
            "systemd-networkd.service",
            "systemd-networkd-wait-online.service",
        ] {
            let mask = container.root().join("etc/systemd/system").join(unit);
            let _ = fs::remove_file(&mask);
            std::os::unix::fs::symlink("/dev/null", mask)?;
        }
        fs::create_dir_all(container.bpffs())?;
        run_checked(
            Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(container.bpffs()),
        )?;
        let console = fs::File::create(dir.join("console.log"))?;
        let child = Command::new("systemd-nspawn")
            .args(["--quiet", "--register=no", "--keep-unit", "--boot"])
            .arg(format!("--machine={}", container.name))
            .arg("--directory")
            .arg(container.root())
            .arg(format!("--network-namespace-path=/run/netns/{netns}"))
            .arg(format!("--capability={CAPABILITIES}"))
            .arg(format!("--system-call-filter={SYSCALLS}"))
            .arg(format!(
                "--bind={}:/sys/fs/bpf",
                container.bpffs().display()
            ))
            .arg("--console=pipe")
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .context("starting systemd-nspawn (systemd-container, from `cargo xtask setup`)")?;
        fs::write(dir.join("nspawn.pid"), child.id().to_string())?;
        let nspawn_pid = child.id();
        container.nspawn = Some(child);
        container.leader = container.find_leader(nspawn_pid)?;
        // Up: every unit started (or failed, which the tests look at themselves).
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let state = container
                .exec(&["systemctl", "is-system-running"])
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            if state == "running" || state == "degraded" {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the container did not boot in 90 s (state {state:?}):\n{}",
                    container.console()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "container {} booted in {:.1?}",
            container.name,
            started.elapsed()
        );
        Ok(container)
    }

    /// The container's PID 1 (as this process sees it): a descendant of nspawn whose pid in its
    /// own namespace is 1.
    fn find_leader(&mut self, nspawn: u32) -> Result<u32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.nspawn.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("systemd-nspawn exited ({status}):\n{}", self.console());
            }
            for entry in fs::read_dir("/proc")?.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
                    continue;
                };
                let inner_is_one = status
                    .lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .is_some_and(|ids| {
                        let ids: Vec<&str> = ids.split_whitespace().collect();
                        ids.len() >= 2 && ids.last() == Some(&"1")
                    });
                if inner_is_one && descends_from(pid, nspawn) {
                    return Ok(pid);
                }
            }
            if Instant::now() > deadline {
                bail!("no PID 1 under systemd-nspawn:\n{}", self.console());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its name (unique: prefix, our pid, a counter).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its root filesystem, as this process sees it.
    pub fn root(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Its bpffs, as this process sees it (the container's /sys/fs/bpf).
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    /// What systemd printed on the console.
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// Runs `argv` inside (all of the container's namespaces, its root, a clean environment).
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        Command::new("nsenter")
            .arg(format!("--target={}", self.leader))
            .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--"])
            .args([
                "env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "DEBIAN_FRONTEND=noninteractive",
            ])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("nsenter {argv:?}"))
    }

    /// Runs a shell script inside; its stdout and stderr, or an error with both.
    pub fn sh(&self, script: &str) -> Result<String> {
        let started = Instant::now();
        let out = self.exec(&["sh", "-c", script])?;
        if started.elapsed() > Duration::from_secs(2) {
            eprintln!("{}: `{script}` took {:.1?}", self.name, started.elapsed());
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("`{script}` failed ({}):\n{text}", out.status);
        }
        Ok(text)
    }

    /// Copies a file of this host to `inside` (an absolute path in the container).
    pub fn copy_in(&self, from: &Path, inside: &str) -> Result<()> {
        let to = self.root().join(inside.trim_start_matches('/'));
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(from, &to).with_context(|| format!("copying {} in", from.display()))?;
        Ok(())
    }

    /// Whether `inside` (an absolute path in the container) exists.
    pub fn exists(&self, inside: &str) -> bool {
        self.root()
            .join(inside.trim_start_matches('/'))
            .symlink_metadata()
            .is_ok()
    }

    /// The journal of one unit since boot.
    pub fn journal(&self, unit: &str) -> String {
        self.exec(&["journalctl", "--no-pager", "-o", "cat", "-u", unit])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            let started = Instant::now();
            // nspawn turns SIGTERM into an orderly shutdown of a booted container.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "container {} shut down in {:.1?}",
                self.name,
                started.elapsed()
            );
        }
        remove_dir(&self.dir);
    }
}

fn containers_dir() -> PathBuf {
    workspace_target().join("tmp/containers")
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..8 {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // The field after the command (which may hold spaces) in parentheses.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return false;
        };
        if ppid == ancestor {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        pid = ppid;
    }
    false
}

/// Unmounts the container's bpffs (its pins go with it) and removes its files.
fn remove_dir(dir: &Path) {
    let bpffs = dir.join("bpf");
    let _ = Command::new("umount").arg("--lazy").arg(&bpffs).status();
    let _ = fs::remove_dir_all(dir);
}

/// Containers left by a test process that died: their nspawn is gone.
fn remove_stale() {
    let Ok(entries) = fs::read_dir(containers_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let alive = fs::read_to_string(entry.path().join("nspawn.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd-nspawn")
            });
        if !alive {
            remove_dir(&entry.path());
        }
    }
}
