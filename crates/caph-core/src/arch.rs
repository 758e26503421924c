//! CPU architectures, with the names each world uses for them.

use std::fmt;

/// A CPU architecture an image is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    /// x86-64: `x86` in Hetzner Cloud, `amd64` in Debian and Kubernetes downloads.
    X86,
    /// AArch64: `arm` in Hetzner Cloud, `arm64` in Debian and Kubernetes downloads.
    Arm,
}

impl Arch {
    /// Both architectures, in the order builds and reports list them.
    pub const ALL: [Arch; 2] = [Arch::X86, Arch::Arm];

    /// The Hetzner Cloud name: `x86` or `arm`.
    pub fn hcloud_name(self) -> &'static str {
        match self {
            Arch::X86 => "x86",
            Arch::Arm => "arm",
        }
    }

    /// The Debian, Kubernetes and containerd name: `amd64` or `arm64`.
    pub fn debian_name(self) -> &'static str {
        match self {
            Arch::X86 => "amd64",
            Arch::Arm => "arm64",
        }
    }

    /// Accepts either naming (`x86`, `amd64`, `arm`, `arm64`), case-sensitively.
    pub fn parse(name: &str) -> Option<Arch> {
        match name {
            "x86" | "amd64" => Some(Arch::X86),
            "arm" | "arm64" => Some(Arch::Arm),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hcloud_name())
    }
}
