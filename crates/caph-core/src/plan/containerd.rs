//! containerd's `config.toml`, written out explicitly in the format of its major version.

use crate::version::Version;

/// The containerd socket kubelet and crictl talk to.
pub const CONTAINERD_SOCKET: &str = "unix:///run/containerd/containerd.sock";

/// Where containerd reads registry host configurations (`hosts.toml` per registry), for mirrors.
pub const CONTAINERD_CERTS_DIR: &str = "/etc/containerd/certs.d";
/// Drop-in configs containerd merges over `config.toml`.
pub const CONTAINERD_DROPIN_DIR: &str = "/etc/containerd/conf.d";

/// An explicit config for containerd `version`, as kubeadm expects it: the runc runtime with the
/// systemd cgroup driver, the pause image kubeadm uses as the sandbox image, registry host
/// configurations from [`CONTAINERD_CERTS_DIR`] and drop-ins from [`CONTAINERD_DROPIN_DIR`].
///
/// containerd 1.x reads config version 2, where all of it sits under the CRI plugin
/// `io.containerd.grpc.v1.cri`; containerd 2.x reads version 3, where the runtime settings moved
/// to `io.containerd.cri.v1.runtime`, and the sandbox image (now a pinned image) and the registry
/// settings to `io.containerd.cri.v1.images`.
pub fn config_toml(version: Version, sandbox_image: &str) -> String {
    // Where each setting lives in the config version of this containerd major.
    let (config_version, sandbox_setting, registry_table, runtime_plugin) = if version.major >= 2 {
        (
            3,
            "[plugins.\"io.containerd.cri.v1.images\".pinned_images]\nsandbox",
            "[plugins.\"io.containerd.cri.v1.images\".registry]",
            "io.containerd.cri.v1.runtime",
        )
    } else {
        (
            2,
            "[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image",
            "[plugins.\"io.containerd.grpc.v1.cri\".registry]",
            "io.containerd.grpc.v1.cri",
        )
    };
    format!(
        "# Written by caph-image for containerd {version}.\n\
         version = {config_version}\n\
         imports = [\"{CONTAINERD_DROPIN_DIR}/*.toml\"]\n\
         \n\
         {sandbox_setting} = \"{sandbox_image}\"\n\
         \n\
         {registry_table}\n\
         config_path = \"{CONTAINERD_CERTS_DIR}\"\n\
         \n\
         [plugins.\"{runtime_plugin}\".containerd.runtimes.runc]\n\
         runtime_type = \"io.containerd.runc.v2\"\n\
         \n\
         [plugins.\"{runtime_plugin}\".containerd.runtimes.runc.options]\n\
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
