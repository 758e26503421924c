//! Simulated machines: each one a loopback address with a real OpenSSH `sshd`, optionally chrooted into its own root filesystem.
