//! `cargo xtask dist`: what operators install, into `target/dist/` — nothing to compile on the
//! relay host.
//!
//! * the static relay binary (musl, the release XDP object embedded): no glibc floor, so the one
//!   binary runs on any x86_64 Linux with systemd that the XDP program itself can run on;
//! * `relay_VERSION_amd64.deb` (cargo-deb; metadata in relay-userspace/Cargo.toml, maintainer
//!   scripts in deploy/debian/);
//! * `relay-VERSION-x86_64-linux.tar.gz`, the same files with deploy/dist/install.sh;
//! * an OCI image from scratch around the static binary, as a layout directory and as an
//!   `oci-archive` tarball, written here directly (the format is a few JSON documents and a
//!   layer tarball: no registry, no daemon), its manifest digest printed;
//! * `dist-VERSION.json` naming all of them (what the install tests read) and `SHA256SUMS`.
//!
//! VERSION is the workspace's version and a package revision (`--revision`, default 1), the
//! Debian way: a second build of the same sources is `0.1.0-2`. Timestamps inside the tarballs
//! are the commit's, so the same commit gives the same image digest.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSection};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{
    ebpf::{self, Profile},
    run::{clean_command, output, status, workspace_root},
    setup::MUSL_TARGET,
};

/// The workspace's package version (xtask shares it).
pub fn cargo_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Builds everything for package revision `revision`.
pub fn run(revision: u32) -> Result<()> {
    let root = workspace_root();
    let version = format!("{}-{revision}", cargo_version());
    let dist = root.join("target/dist");
    let stage = dist.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(&stage)?;
    println!("== dist {version}");

    ebpf::build(Profile::Release)?;
    let commit = git_commit(&root);
    let epoch = commit_time(&root);
    status(
        clean_command("cargo")
            .current_dir(&root)
            .args(["build", "--release", "--locked", "--target", MUSL_TARGET])
            .args(["-p", "relay-userspace", "--bin", "relay"])
            .env("RELAY_GIT_COMMIT", &commit)
            // ring's C code, for musl (Debian's musl-tools).
            .env("CC_x86_64_unknown_linux_musl", "musl-gcc"),
    )?;
    let built = root.join("target").join(MUSL_TARGET).join("release/relay");
    check_static(&built)?;
    // One stripped binary in all three artifacts (symbols are a developer's; 15 MB → 6).
    let binary = stage.join("relay");
    fs::copy(&built, &binary)?;
    status(Command::new("strip").arg("--strip-all").arg(&binary))?;
    let version_line =
        output(Command::new(&binary).arg("--version")).context("the built relay does not run")?;
    println!("built {}", version_line.trim());

    // Man pages, gzipped (mtime 0 in the gzip header: reproducible).
    let raw = stage.join("man-raw");
    status(Command::new(&binary).arg("manpages").arg("--out").arg(&raw))?;
    let man = stage.join("man");
    fs::create_dir_all(&man)?;
    for page in sorted_files(&raw)? {
        let name = page.file_name().unwrap().to_string_lossy().to_string();
        let mut gz = flate2::GzBuilder::new().write(
            fs::File::create(man.join(format!("{name}.gz")))?,
            flate2::Compression::best(),
        );
        gz.write_all(&fs::read(&page)?)?;
        gz.finish()?;
    }
    fs::remove_dir_all(&raw)?;

    // The unit as each package installs it.
    let unit = fs::read_to_string(root.join("deploy/relay.service"))?;
    fs::create_dir_all(stage.join("deb"))?;
    fs::write(stage.join("deb/relay.service"), &unit)?;

    let deb = dist.join(format!("relay_{version}_amd64.deb"));
    status(
        clean_command("cargo")
            .current_dir(&root)
            .args(["deb", "-p", "relay-userspace", "--no-build", "--no-strip"])
            .args(["--target", MUSL_TARGET])
            .args(["--deb-revision", &revision.to_string(), "--output"])
            .arg(&deb),
    )?;

    let tarball = dist.join(format!("relay-{version}-x86_64-linux.tar.gz"));
    write_tarball(&root, &stage, &binary, &unit, &version, epoch, &tarball)?;

    let oci_layout = dist.join(format!("relay-oci-{version}"));
    let oci_archive = dist.join(format!("relay-oci-{version}.tar"));
    let oci_digest = write_oci(
        &root,
        &binary,
        &version,
        &commit,
        epoch,
        &oci_layout,
        &oci_archive,
    )?;

    let manifest = json!({
        "version": version,
        "commit": commit,
        "deb": deb,
        "tarball": tarball,
        "oci_layout": oci_layout,
        "oci_archive": oci_archive,
        "oci_digest": oci_digest,
    });
    fs::write(
        dist.join(format!("dist-{version}.json")),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    write_sums(&dist)?;
    println!("Debian package: {}", deb.display());
    println!("tarball:        {}", tarball.display());
    println!(
        "OCI image:      {} (layout {}), digest {oci_digest}",
        oci_archive.display(),
        oci_layout.display(),
    );
    Ok(())
}

/// The commit, with "-dirty" when tracked files differ from it.
fn git_commit(root: &Path) -> String {
    let Some(head) =
        output(
            Command::new("git")
                .current_dir(root)
                .args(["rev-parse", "--short=12", "HEAD"]),
        )
    else {
        return "unknown".into();
    };
    let dirty = output(Command::new("git").current_dir(root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_some_and(|s| !s.trim().is_empty());
    format!("{}{}", head.trim(), if dirty { "-dirty" } else { "" })
}

/// The commit's time (seconds since the epoch): every timestamp in the tarballs.
fn commit_time(root: &Path) -> u64 {
    output(
        Command::new("git")
            .current_dir(root)
            .args(["log", "-1", "--format=%ct"]),
    )
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

/// Fails unless `binary` is statically linked: no interpreter, no shared libraries.
fn check_static(binary: &Path) -> Result<()> {
    let data = fs::read(binary)?;
    let file = object::File::parse(&*data)?;
    if file.section_by_name(".interp").is_some() {
        bail!(
            "{} has a dynamic loader (.interp): not static",
            binary.display()
        );
    }
    if let Some(dynamic) = file.section_by_name(".dynamic")
        && file.imports().is_ok_and(|i| !i.is_empty())
    {
        bail!(
            "{} imports symbols through {}: not static",
            binary.display(),
            dynamic.name().unwrap_or(".dynamic")
        );
    }
    Ok(())
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.is_file());
    files.sort();
    Ok(files)
}

/// A reproducible tar: sorted, owned by root, every timestamp `epoch`.
struct Tar<W: Write> {
    builder: tar::Builder<W>,
    epoch: u64,
}

impl<W: Write> Tar<W> {
    fn new(out: W, epoch: u64) -> Tar<W> {
        Tar {
            builder: tar::Builder::new(out),
            epoch,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.epoch);
        h
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let mut h = self.header(tar::EntryType::Directory, 0o755, 0);
        self.builder
            .append_data(&mut h, format!("{path}/"), std::io::empty())?;
        Ok(())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut h = self.header(tar::EntryType::Regular, mode, data.len() as u64);
        self.builder.append_data(&mut h, path, data)?;
        Ok(())
    }

    fn finish(self) -> Result<W> {
        Ok(self.builder.into_inner()?)
    }
}

#[allow(clippy::too_many_arguments)]
fn write_tarball(
    root: &Path,
    stage: &Path,
    binary: &Path,
    unit: &str,
    version: &str,
    epoch: u64,
    out: &Path,
) -> Result<()> {
    let top = format!("relay-{version}");
    let gz = flate2::write::GzEncoder::new(fs::File::create(out)?, flate2::Compression::best());
    let mut tar = Tar::new(gz, epoch);
    tar.dir(&top)?;
    tar.file(
        &format!("{top}/install.sh"),
        0o755,
        &fs::read(root.join("deploy/dist/install.sh"))?,
    )?;
    tar.file(
        &format!("{top}/VERSION"),
        0o644,
        format!("{version}\n").as_bytes(),
    )?;
    tar.file(
        &format!("{top}/relay.example.yaml"),
        0o644,
        &fs::read(root.join("deploy/relay.example.yaml"))?,
    )?;
    tar.dir(&format!("{top}/bin"))?;
    tar.file(&format!("{top}/bin/relay"), 0o755, &fs::read(binary)?)?;
    // Installed under /usr/local: the unit's paths follow.
    let local = unit
        .replace("/usr/bin/relay", "/usr/local/bin/relay")
        .replace("/usr/share/doc/relay", "/usr/local/share/doc/relay");
    tar.dir(&format!("{top}/systemd"))?;
    tar.file(
        &format!("{top}/systemd/relay.service"),
        0o644,
        local.as_bytes(),
    )?;
    tar.dir(&format!("{top}/sysctl.d"))?;
    tar.file(
        &format!("{top}/sysctl.d/60-relay.conf"),
        0o644,
        &fs::read(root.join("deploy/sysctl.d/60-relay.conf"))?,
    )?;
    tar.dir(&format!("{top}/doc"))?;
    let mut docs = vec![
        root.join("README.md"),
        root.join("CHANGELOG.md"),
        root.join("deploy/nftables.conf"),
        root.join("deploy/tune-nic.sh"),
        root.join("deploy/prometheus-alerts.yaml"),
        root.join("deploy/grafana-dashboard.json"),
    ];
    docs.extend(
        sorted_files(&root.join("docs"))?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    docs.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
    for doc in docs {
        let name = doc.file_name().unwrap().to_string_lossy().to_string();
        let mode = if name.ends_with(".sh") { 0o755 } else { 0o644 };
        tar.file(&format!("{top}/doc/{name}"), mode, &fs::read(&doc)?)?;
    }
    tar.dir(&format!("{top}/man"))?;
    for page in sorted_files(&stage.join("man"))? {
        let name = page.file_name().unwrap().to_string_lossy().to_string();
        tar.file(&format!("{top}/man/{name}"), 0o644, &fs::read(&page)?)?;
    }
    tar.finish()?.finish()?;
    Ok(())
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `data` as a blob of the layout; its descriptor's digest and size.
fn blob(layout: &Path, data: &[u8]) -> Result<(String, usize)> {
    let digest = sha256_hex(data);
    fs::write(layout.join("blobs/sha256").join(&digest), data)?;
    Ok((format!("sha256:{digest}"), data.len()))
}

/// RFC 3339 UTC of `epoch` (the image's creation time: the commit's).
fn rfc3339(epoch: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The OCI image: one layer with the static binary, its example configuration and its docs;
/// `relay serve --config /etc/relay/relay.yaml` by default (Kubernetes mounts the real one there).
/// Returns the manifest's digest.
#[allow(clippy::too_many_arguments)]
fn write_oci(
    root: &Path,
    binary: &Path,
    version: &str,
    commit: &str,
    epoch: u64,
    layout: &Path,
    archive: &Path,
) -> Result<String> {
    if layout.exists() {
        fs::remove_dir_all(layout)?;
    }
    fs::create_dir_all(layout.join("blobs/sha256"))?;

    let mut tar = Tar::new(Vec::new(), epoch);
    for dir in [
        "etc",
        "etc/relay",
        "usr",
        "usr/bin",
        "usr/share",
        "usr/share/doc",
    ] {
        tar.dir(dir)?;
    }
    tar.file(
        "etc/relay/relay.yaml",
        0o600,
        &fs::read(root.join("deploy/relay.example.yaml"))?,
    )?;
    tar.dir("usr/share/doc/relay")?;
    tar.file(
        "usr/share/doc/relay/operations.md",
        0o644,
        &fs::read(root.join("docs/operations.md"))?,
    )?;
    tar.file("usr/bin/relay", 0o755, &fs::read(binary)?)?;
    let layer_tar = tar.finish()?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer_tar));
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    gz.write_all(&layer_tar)?;
    let (layer_digest, layer_size) = blob(layout, &gz.finish()?)?;

    let created = rfc3339(epoch);
    let labels = json!({
        "org.opencontainers.image.title": "relay",
        "org.opencontainers.image.description":
            "Kernel-bypass UDP relay: XDP fast path, TURN, WireGuard and Geneve fronts",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": commit,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": "MIT OR Apache-2.0",
    });
    let config = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/bin/relay"],
            "Cmd": ["serve", "--config", "/etc/relay/relay.yaml"],
            "Env": ["PATH=/usr/bin"],
            "Labels": labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": created, "created_by": "cargo xtask dist" }],
    });
    let (config_digest, config_size) = blob(layout, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer_size,
        }],
        "annotations": labels,
    });
    let (manifest_digest, manifest_size) = blob(layout, &serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": { "org.opencontainers.image.ref.name": version },
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;

    // The same layout as one file (`skopeo copy oci-archive:…`, `podman load -i …`).
    let mut tar = Tar::new(fs::File::create(archive)?, epoch);
    tar.file("oci-layout", 0o644, &fs::read(layout.join("oci-layout"))?)?;
    tar.file("index.json", 0o644, &fs::read(layout.join("index.json"))?)?;
    tar.dir("blobs")?;
    tar.dir("blobs/sha256")?;
    for blob in sorted_files(&layout.join("blobs/sha256"))? {
        let name = blob.file_name().unwrap().to_string_lossy().to_string();
        tar.file(&format!("blobs/sha256/{name}"), 0o644, &fs::read(&blob)?)?;
    }
    tar.finish()?;
    Ok(manifest_digest)
}

/// `SHA256SUMS` of every artifact in `dist` (`sha256sum -c SHA256SUMS`).
fn write_sums(dist: &Path) -> Result<()> {
    let mut lines = String::new();
    for file in sorted_files(dist)? {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if name == "SHA256SUMS" || name.ends_with(".json") {
            continue;
        }
        lines.push_str(&format!("{}  {name}\n", sha256_hex(&fs::read(&file)?)));
    }
    fs::write(dist.join("SHA256SUMS"), lines)?;
    Ok(())
}
