//! The build environment of a chroot: /proc, a read-only /sys, a /dev of its own (a tmpfs with the
//! usual nodes and a private devpts) and resolv.conf mounted into the tree, and a `policy-rc.d`
//! that keeps package scripts from starting services, all undone by a guard, also when the build
//! fails or is cancelled.
//!
//! Safety: the host's /dev is never bound into the tree, so a tree left behind with its mounts
//! (the process was SIGKILLed) can be removed without removing the host's device nodes.
//! [`BuildEnvironment`] unmounts in reverse order and, where a mount is busy (a process left
//! behind still holds it), detaches it lazily. [`mounts_under`] lets callers check that before
//! they delete anything.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use super::AssembleError;

/// The `policy-rc.d` placed during the build: exit status 101 tells `invoke-rc.d` (and so every
/// package's maintainer scripts) that starting services is forbidden.
pub const POLICY_RC_D: &str = "#!/bin/sh\n# Placed by caph-image during the build: no service starts in the chroot.\nexit 101\n";

/// Where `policy-rc.d` goes, relative to the tree.
const POLICY_RC_D_PATH: &str = "usr/sbin/policy-rc.d";
/// Where an existing `policy-rc.d` is kept while ours is in place.
const POLICY_RC_D_SAVED: &str = "usr/sbin/policy-rc.d.caph-image-saved";
/// Where the tree's own resolv.conf (a file or a symlink) is kept while the host's is bound.
const RESOLV_SAVED: &str = "etc/resolv.conf.caph-image-saved";

/// Mounts and files that make a tree usable as a build chroot; dropping it undoes them.
#[derive(Debug)]
pub struct BuildEnvironment {
    root: PathBuf,
    /// Mount points, in the order they were mounted.
    mounted: Vec<PathBuf>,
    /// Whether resolv.conf was replaced (and the original saved, if there was one).
    resolv: Option<bool>,
    /// Whether a policy-rc.d was placed (and an existing one saved).
    policy: Option<bool>,
    /// Mount points that could only be detached lazily.
    lazily_detached: Vec<PathBuf>,
}

impl BuildEnvironment {
    /// Sets up the chroot at `root`: proc, a read-only sysfs, a private /dev and /dev/pts, the
    /// host's resolv.conf bound over the tree's, and `policy-rc.d`. On error everything done
    /// so far is undone before returning.
    pub fn enter(root: &Path) -> Result<BuildEnvironment, AssembleError> {
        let mut environment = BuildEnvironment {
            root: root.to_path_buf(),
            mounted: Vec::new(),
            resolv: None,
            policy: None,
            lazily_detached: Vec::new(),
        };
        environment.setup()?;
        Ok(environment)
    }

    fn setup(&mut self) -> Result<(), AssembleError> {
        let mount_error = |target: &Path, what: &str| {
            let target = target.to_path_buf();
            let what = what.to_owned();
            move |source: io::Error| AssembleError::Mount {
                target,
                what,
                source,
            }
        };
        for dir in ["proc", "sys", "dev", "etc", "usr/sbin", "root"] {
            let path = self.root.join(dir);
            fs::create_dir_all(&path).map_err(mount_error(&path, "creating the mount point"))?;
        }
        let proc = self.root.join("proc");
        rustix::mount::mount(
            "proc",
            &proc,
            "proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        )
        .map_err(|errno| mount_error(&proc, "mounting proc")(errno.into()))?;
        self.mounted.push(proc);
        // Read-only: nothing in a package script has business changing the host's kernel state.
        let sys = self.root.join("sys");
        rustix::mount::mount(
            "sysfs",
            &sys,
            "sysfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::RDONLY,
            None,
        )
        .map_err(|errno| mount_error(&sys, "mounting sysfs")(errno.into()))?;
        self.mounted.push(sys);
        // A /dev of the build's own, not the host's bound in: a tmpfs with the few nodes package
        // scripts use and a private devpts. Should this process die before it unmounts (SIGKILL),
        // removing the left-behind tree then removes these nodes, never the host's /dev.
        let dev = self.root.join("dev");
        rustix::mount::mount(
            "tmpfs",
            &dev,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            Some(c"mode=0755,size=1M"),
        )
        .map_err(|errno| mount_error(&dev, "mounting a tmpfs for /dev")(errno.into()))?;
        self.mounted.push(dev.clone());
        populate_dev(&dev).map_err(mount_error(&dev, "creating the device nodes"))?;
        let pts = dev.join("pts");
        rustix::mount::mount(
            "devpts",
            &pts,
            "devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            Some(c"newinstance,ptmxmode=0666,mode=0620"),
        )
        .map_err(|errno| mount_error(&pts, "mounting a private devpts")(errno.into()))?;
        self.mounted.push(pts);
        self.bind_resolv_conf()?;
        self.place_policy_rc_d()?;
        Ok(())
    }

    /// Binds the host's resolv.conf over the tree's, so apt resolves names during the build. The
    /// tree's own (often a symlink into /run, dangling in a chroot) is moved aside and restored.
    fn bind_resolv_conf(&mut self) -> Result<(), AssembleError> {
        let host = Path::new("/etc/resolv.conf");
        if fs::metadata(host).is_err() {
            // No resolver configuration on the host: nothing to bind; apt will say what fails.
            return Ok(());
        }
        let target = self.root.join("etc/resolv.conf");
        let saved = self.root.join(RESOLV_SAVED);
        let error = |what: &str| {
            let target = target.clone();
            let what = what.to_owned();
            move |source: io::Error| AssembleError::Mount {
                target,
                what,
                source,
            }
        };
        let had_one = fs::symlink_metadata(&target).is_ok();
        if had_one {
            fs::rename(&target, &saved).map_err(error("moving the tree's resolv.conf aside"))?;
        }
        self.resolv = Some(had_one);
        fs::write(&target, b"").map_err(error("creating the resolv.conf mount point"))?;
        rustix::mount::mount_bind(host, &target)
            .map_err(|errno| error("binding the host's resolv.conf")(errno.into()))?;
        self.mounted.push(target);
        Ok(())
    }

    fn place_policy_rc_d(&mut self) -> Result<(), AssembleError> {
        let path = self.root.join(POLICY_RC_D_PATH);
        let saved = self.root.join(POLICY_RC_D_SAVED);
        let error = |what: &str| {
            let target = path.clone();
            let what = what.to_owned();
            move |source: io::Error| AssembleError::Mount {
                target,
                what,
                source,
            }
        };
        let had_one = fs::symlink_metadata(&path).is_ok();
        if had_one {
            fs::rename(&path, &saved).map_err(error("moving the tree's policy-rc.d aside"))?;
        }
        self.policy = Some(had_one);
        fs::write(&path, POLICY_RC_D).map_err(error("writing policy-rc.d"))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(error("making policy-rc.d executable"))?;
        Ok(())
    }

    /// The mount points currently held, in mount order.
    pub fn mount_points(&self) -> &[PathBuf] {
        &self.mounted
    }

    /// Undoes everything and reports the first problem. Busy mounts are detached lazily (and
    /// reported): the tree is then safe to remove, but a process still uses the old mount.
    pub fn leave(mut self) -> Result<Vec<PathBuf>, AssembleError> {
        self.teardown()?;
        Ok(std::mem::take(&mut self.lazily_detached))
    }

    fn teardown(&mut self) -> Result<(), AssembleError> {
        let mut first_error = None;
        while let Some(target) = self.mounted.pop() {
            match unmount(&target) {
                Ok(Unmounted::Cleanly) => {}
                Ok(Unmounted::Lazily) => self.lazily_detached.push(target.clone()),
                Err(error) => {
                    first_error.get_or_insert(error);
                    continue;
                }
            }
            if is_mount_point(&target) {
                // Still there after an unmount (something mounted over it); detach what is left.
                let _ = rustix::mount::unmount(&target, UnmountFlags::DETACH);
            }
        }
        if let Some(had_one) = self.resolv.take() {
            let target = self.root.join("etc/resolv.conf");
            let _ = fs::remove_file(&target);
            if had_one && let Err(source) = fs::rename(self.root.join(RESOLV_SAVED), &target) {
                first_error.get_or_insert(AssembleError::Mount {
                    target,
                    what: "restoring the tree's resolv.conf".to_owned(),
                    source,
                });
            }
        }
        if let Some(had_one) = self.policy.take() {
            let target = self.root.join(POLICY_RC_D_PATH);
            if let Err(source) = fs::remove_file(&target) {
                first_error.get_or_insert(AssembleError::Mount {
                    target: target.clone(),
                    what: "removing policy-rc.d".to_owned(),
                    source,
                });
            }
            if had_one && let Err(source) = fs::rename(self.root.join(POLICY_RC_D_SAVED), &target) {
                first_error.get_or_insert(AssembleError::Mount {
                    target,
                    what: "restoring the tree's policy-rc.d".to_owned(),
                    source,
                });
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for BuildEnvironment {
    fn drop(&mut self) {
        // Errors cannot be reported from here; `unmount` already fell back to a lazy detach.
        let _ = self.teardown();
    }
}

/// The character devices a chroot build needs (name, major, minor), all readable and writable
/// by everyone as on a host.
const DEVICE_NODES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Fills the build's tmpfs /dev: [`DEVICE_NODES`], `pts` for the private devpts, `ptmx` through
/// it, `shm`, and the `fd` and standard stream links.
fn populate_dev(dev: &Path) -> io::Result<()> {
    use rustix::fs::{FileType, Mode, makedev};
    for (name, major, minor) in DEVICE_NODES {
        let path = dev.join(name);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            makedev(*major, *minor),
        )?;
        // mknod honours the umask; the mode must be exactly 0666.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
    }
    fs::create_dir(dev.join("pts"))?;
    fs::create_dir(dev.join("shm"))?;
    fs::set_permissions(dev.join("shm"), fs::Permissions::from_mode(0o1777))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
    }
    Ok(())
}

/// How a mount went away.
enum Unmounted {
    /// A normal unmount.
    Cleanly,
    /// Busy, so detached lazily.
    Lazily,
}

/// Unmounts `target`; when it is busy, detaches it lazily (the last resort: the mount goes away
/// once its last user does, and the path is free at once).
fn unmount(target: &Path) -> Result<Unmounted, AssembleError> {
    match rustix::mount::unmount(target, UnmountFlags::empty()) {
        Ok(()) => Ok(Unmounted::Cleanly),
        Err(rustix::io::Errno::BUSY) => {
            rustix::mount::unmount(target, UnmountFlags::DETACH).map_err(|errno| {
                AssembleError::Mount {
                    target: target.to_path_buf(),
                    what: "detaching (lazily, as the mount is busy)".to_owned(),
                    source: errno.into(),
                }
            })?;
            Ok(Unmounted::Lazily)
        }
        // Already gone (someone else unmounted it): nothing left to do.
        Err(rustix::io::Errno::INVAL) if !is_mount_point(target) => Ok(Unmounted::Cleanly),
        Err(errno) => Err(AssembleError::Mount {
            target: target.to_path_buf(),
            what: "unmounting".to_owned(),
            source: errno.into(),
        }),
    }
}

fn is_mount_point(path: &Path) -> bool {
    mounts_under(path).iter().any(|mount| mount == path)
}

/// Mount points at or below `path`, as `/proc/self/mountinfo` lists them (empty when it cannot be
/// read). `path` should be absolute and free of symlinks, as mountinfo's paths are.
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mount| mount.starts_with(path))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && index + 3 < bytes.len()
            && bytes[index + 1..index + 4]
                .iter()
                .all(|byte| (b'0'..=b'7').contains(byte))
        {
            let value = bytes[index + 1..index + 4]
                .iter()
                .fold(0u32, |acc, byte| acc * 8 + u32::from(byte - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a work directory, but only when nothing is mounted below it: a recursive delete must
/// not reach into proc, sysfs or the host's resolv.conf.
pub fn remove_work_dir(path: &Path) -> Result<(), AssembleError> {
    let mounts = mounts_under(path);
    if !mounts.is_empty() {
        return Err(AssembleError::StillMounted {
            work_dir: path.to_path_buf(),
            mounts,
        });
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AssembleError::Io {
            what: format!("removing the work directory {}", path.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/tail\\04"), "/tail\\04");
    }
}
