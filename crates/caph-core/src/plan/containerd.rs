//! containerd's `config.toml`, written out explicitly in the format of its major version.

use crate::version::Version;

/// The containerd socket kubelet and crictl talk to.
pub const CONTAINERD_SOCKET: &str = "unix:///run/containerd/containerd.sock";

/// An explicit config with the runc runtime using the systemd cgroup driver, as kubeadm expects.
///
/// containerd 1.x reads config version 2 with the CRI plugin `io.containerd.grpc.v1.cri`;
/// containerd 2.x reads version 3, where the runtime settings moved to `io.containerd.cri.v1.runtime`.
pub fn config_toml(version: Version) -> String {
    let (config_version, plugin) = if version.major >= 2 {
        (3, "io.containerd.cri.v1.runtime")
    } else {
        (2, "io.containerd.grpc.v1.cri")
    };
    format!(
        "# Written by caph-image for containerd {version}.\n\
         version = {config_version}\n\
         \n\
         [plugins.\"{plugin}\".containerd.runtimes.runc]\n\
         runtime_type = \"io.containerd.runc.v2\"\n\
         \n\
         [plugins.\"{plugin}\".containerd.runtimes.runc.options]\n\
         SystemdCgroup = true\n"
    )
}

/// The systemd unit for containerd installed from release artifacts into /usr/local.
pub(crate) const CONTAINERD_SERVICE: &str = "\
[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target local-fs.target dbus.service

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
";

/// crictl's configuration, pointing at containerd.
pub(crate) fn crictl_yaml() -> String {
    format!(
        "runtime-endpoint: {CONTAINERD_SOCKET}\nimage-endpoint: {CONTAINERD_SOCKET}\ntimeout: 10\n"
    )
}
