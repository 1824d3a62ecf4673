//! The BPF filesystem where maps and links are pinned.

use std::{io, path::Path};

use anyhow::{Context, Result, bail};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::statfs,
};

/// `BPF_FS_MAGIC` from linux/magic.h (statfs's `f_type` is signed in glibc, unsigned in musl:
/// compared as the 32-bit value the kernel reports).
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// Where bpffs is conventionally mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Whether `path` lies on a mounted bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type().0 as u32 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Mounts bpffs at [`BPFFS_ROOT`] unless it is mounted already. Returns whether it mounted.
pub fn ensure_mounted() -> Result<bool> {
    let root = Path::new(BPFFS_ROOT);
    if is_bpffs(root) {
        return Ok(false);
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {BPFFS_ROOT}"))?;
    mount(
        Some("bpf"),
        root,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {BPFFS_ROOT} (needs root)"))?;
    Ok(true)
}

/// Creates the pin directory (mode 0700: it holds session keys) on a mounted bpffs.
pub fn ensure_pin_dir(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    if !is_bpffs(parent) && !is_bpffs(dir) {
        if parent == Path::new(BPFFS_ROOT) {
            ensure_mounted()?;
        } else {
            bail!(
                "pin directory {} is not on a bpffs mount (mount -t bpf bpf {})",
                dir.display(),
                parent.display()
            );
        }
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))?;
    Ok(())
}
