//! Rootfs assembly in a chroot and the reproducible, streaming tarball writer.
