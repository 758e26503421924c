#!/bin/bash
# caph-image plan: image ubuntu-24.04-k8s-v1.36.4, target tarball, architecture arm
# spec sha256 b66a3c8f9656ef628915a2020476b9879e55f025e0696113b2860575c49de9a1
# Each step runs as its own `bash -s`, in this order, after the CAPH_* exports of the build.

# ---- step 1/23: wait-for-system ----
set -euo pipefail
# cloud-init may still be installing packages on a fresh server; wait where it exists.
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init status --wait >/dev/null || echo "cloud-init finished with status $?; continuing" >&2
fi
# Keep apt's timers from taking the dpkg lock during the build; they stay masked on the node unless the spec sets system.automatic_upgrades.
systemctl mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service unattended-upgrades.service >/dev/null 2>&1 || true
if [ -d /run/systemd/system ]; then
  systemctl stop apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service unattended-upgrades.service >/dev/null 2>&1 || true
fi
# Wait for any dpkg run in progress (where dpkg's lock exists) before the first apt call.
if [ -e /var/lib/dpkg/lock-frontend ] && command -v flock >/dev/null 2>&1; then
  flock --timeout 600 /var/lib/dpkg/lock-frontend true
fi

# ---- step 2/23: kernel-modules-config ----
set -euo pipefail
install -d -m 0755 /etc/modules-load.d
cat > /etc/modules-load.d/caph-image.conf <<'CAPH_IMAGE_FILE'
overlay
br_netfilter
ip_vs
CAPH_IMAGE_FILE
chown root:root /etc/modules-load.d/caph-image.conf
chmod 0644 /etc/modules-load.d/caph-image.conf

# ---- step 3/23: sysctl-config ----
set -euo pipefail
install -d -m 0755 /etc/sysctl.d
cat > /etc/sysctl.d/99-zz-caph-image.conf <<'CAPH_IMAGE_FILE'
fs.inotify.max_user_instances = 8192
fs.inotify.max_user_watches = 524288
kernel.panic = 10
kernel.panic_on_oops = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.bridge.bridge-nf-call-iptables = 1
net.ipv4.ip_forward = 1
net.ipv6.conf.all.forwarding = 1
vm.max_map_count = 524288
vm.overcommit_memory = 1
CAPH_IMAGE_FILE
chown root:root /etc/sysctl.d/99-zz-caph-image.conf
chmod 0644 /etc/sysctl.d/99-zz-caph-image.conf

# ---- step 4/23: swap-off ----
set -euo pipefail
swapoff -a || true
if [ -f /etc/fstab ]; then
  sed -i -E 's@^([^#[:space:]][^[:space:]]*[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]].*)$@# swap disabled by caph-image: \1@' /etc/fstab
fi
if [ -f /swap.img ]; then rm -f /swap.img; fi

# ---- step 5/23: packages ----
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold update
apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold install -y --no-install-recommends apt-transport-https ca-certificates conntrack curl dbus ebtables ethtool gnupg iproute2 iptables kmod mount socat systemd-timesyncd util-linux open-iscsi nfs-common lvm2 xfsprogs

# ---- step 6/23: containerd ----
set -euo pipefail
caph_download() {
  # caph_download URL DEST: download, or stop and say which download failed and curl's reason.
  local url=$1 dest=$2 reason
  if ! reason=$(curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 20 --output "$dest" "$url" 2>&1); then
    rm -f "$dest"
    echo "caph-image: downloading $url failed: ${reason:-curl gave no reason}" >&2
    exit 1
  fi
}
caph_fetch() {
  # caph_fetch URL DEST EXPECTED_SHA256 ORIGIN: download, then refuse the file unless its sha256
  # matches; ORIGIN says where the expected digest comes from (the spec's pin, or a checksum file).
  local url=$1 dest=$2 expected=$3 origin=${4:-} actual
  caph_download "$url" "$dest"
  actual=$(sha256sum "$dest" | cut -d' ' -f1)
  if [ "$actual" != "$expected" ]; then
    rm -f "$dest"
    echo "caph-image: checksum mismatch for $url: expected sha256 $expected (${origin:-the expected digest}), got $actual" >&2
    exit 1
  fi
  echo "verified $url (sha256 $actual)"
}
caph_published_sha256() {
  # caph_published_sha256 CHECKSUM_URL FILE_NAME: the digest for FILE_NAME in an upstream checksum file.
  # Runs in $(...), where `set -e` does not reach: every failure exits explicitly.
  local sums digest sums_file
  sums_file=$(mktemp)
  ( caph_download "$1" "$sums_file" ) || { rm -f "$sums_file"; exit 1; }
  sums=$(cat "$sums_file")
  rm -f "$sums_file"
  digest=$(printf '%s\n' "$sums" | awk -v name="$2" 'NF == 1 && NR == 1 { only = $1 } NF >= 2 { f = $2; sub(/^\*/, "", f); if (f == name) { print $1; found = 1; exit } } END { if (!found && only != "") print only }')
  if [ -z "$digest" ]; then
    echo "caph-image: no sha256 for $2 in $1" >&2
    exit 1
  fi
  printf '%s\n' "$digest"
}
expected=a985fbb7e18fc0362d31a055338f5d7b0e087a3e27f14c70d1c5965399a29f95
caph_fetch https://github.com/containerd/containerd/releases/download/v2.3.4/containerd-2.3.4-linux-arm64.tar.gz /tmp/caph-containerd.tar.gz "$expected" 'pinned by containerd.sha256.arm64 in the spec'
tar -C /usr/local -xzf /tmp/caph-containerd.tar.gz
rm -f /tmp/caph-containerd.tar.gz
/usr/local/bin/containerd --version

# ---- step 7/23: containerd-unit ----
set -euo pipefail
install -d -m 0755 /etc/systemd/system
cat > /etc/systemd/system/containerd.service <<'CAPH_IMAGE_FILE'
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
CAPH_IMAGE_FILE
chown root:root /etc/systemd/system/containerd.service
chmod 0644 /etc/systemd/system/containerd.service

# ---- step 8/23: containerd-directories ----
set -euo pipefail
# Registry host configurations (mirrors) and config drop-ins, which config.toml names.
install -d -m 0755 /etc/containerd/certs.d /etc/containerd/conf.d

# ---- step 9/23: containerd-config ----
set -euo pipefail
install -d -m 0755 /etc/containerd
cat > /etc/containerd/config.toml <<'CAPH_IMAGE_FILE'
# Written by caph-image for containerd 2.3.4.
version = 3
imports = ["/etc/containerd/conf.d/*.toml"]

[plugins."io.containerd.cri.v1.images".pinned_images]
sandbox = "registry.k8s.io/pause:3.10.2"

[plugins."io.containerd.cri.v1.images".registry]
config_path = "/etc/containerd/certs.d"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
SystemdCgroup = true
CAPH_IMAGE_FILE
chown root:root /etc/containerd/config.toml
chmod 0644 /etc/containerd/config.toml

# ---- step 10/23: runc ----
set -euo pipefail
caph_download() {
  # caph_download URL DEST: download, or stop and say which download failed and curl's reason.
  local url=$1 dest=$2 reason
  if ! reason=$(curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 20 --output "$dest" "$url" 2>&1); then
    rm -f "$dest"
    echo "caph-image: downloading $url failed: ${reason:-curl gave no reason}" >&2
    exit 1
  fi
}
caph_fetch() {
  # caph_fetch URL DEST EXPECTED_SHA256 ORIGIN: download, then refuse the file unless its sha256
  # matches; ORIGIN says where the expected digest comes from (the spec's pin, or a checksum file).
  local url=$1 dest=$2 expected=$3 origin=${4:-} actual
  caph_download "$url" "$dest"
  actual=$(sha256sum "$dest" | cut -d' ' -f1)
  if [ "$actual" != "$expected" ]; then
    rm -f "$dest"
    echo "caph-image: checksum mismatch for $url: expected sha256 $expected (${origin:-the expected digest}), got $actual" >&2
    exit 1
  fi
  echo "verified $url (sha256 $actual)"
}
caph_published_sha256() {
  # caph_published_sha256 CHECKSUM_URL FILE_NAME: the digest for FILE_NAME in an upstream checksum file.
  # Runs in $(...), where `set -e` does not reach: every failure exits explicitly.
  local sums digest sums_file
  sums_file=$(mktemp)
  ( caph_download "$1" "$sums_file" ) || { rm -f "$sums_file"; exit 1; }
  sums=$(cat "$sums_file")
  rm -f "$sums_file"
  digest=$(printf '%s\n' "$sums" | awk -v name="$2" 'NF == 1 && NR == 1 { only = $1 } NF >= 2 { f = $2; sub(/^\*/, "", f); if (f == name) { print $1; found = 1; exit } } END { if (!found && only != "") print only }')
  if [ -z "$digest" ]; then
    echo "caph-image: no sha256 for $2 in $1" >&2
    exit 1
  fi
  printf '%s\n' "$digest"
}
expected=633301e2e32f8a5ad54031aab4901eb00308bec677dd15faa2751e8f9dab5ca4
caph_fetch https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.arm64 /tmp/caph-runc "$expected" 'pinned by runc.sha256.arm64 in the spec'
install -m 0755 /tmp/caph-runc /usr/local/sbin/runc
rm -f /tmp/caph-runc
/usr/local/sbin/runc --version

# ---- step 11/23: crictl ----
set -euo pipefail
caph_download() {
  # caph_download URL DEST: download, or stop and say which download failed and curl's reason.
  local url=$1 dest=$2 reason
  if ! reason=$(curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 20 --output "$dest" "$url" 2>&1); then
    rm -f "$dest"
    echo "caph-image: downloading $url failed: ${reason:-curl gave no reason}" >&2
    exit 1
  fi
}
caph_fetch() {
  # caph_fetch URL DEST EXPECTED_SHA256 ORIGIN: download, then refuse the file unless its sha256
  # matches; ORIGIN says where the expected digest comes from (the spec's pin, or a checksum file).
  local url=$1 dest=$2 expected=$3 origin=${4:-} actual
  caph_download "$url" "$dest"
  actual=$(sha256sum "$dest" | cut -d' ' -f1)
  if [ "$actual" != "$expected" ]; then
    rm -f "$dest"
    echo "caph-image: checksum mismatch for $url: expected sha256 $expected (${origin:-the expected digest}), got $actual" >&2
    exit 1
  fi
  echo "verified $url (sha256 $actual)"
}
caph_published_sha256() {
  # caph_published_sha256 CHECKSUM_URL FILE_NAME: the digest for FILE_NAME in an upstream checksum file.
  # Runs in $(...), where `set -e` does not reach: every failure exits explicitly.
  local sums digest sums_file
  sums_file=$(mktemp)
  ( caph_download "$1" "$sums_file" ) || { rm -f "$sums_file"; exit 1; }
  sums=$(cat "$sums_file")
  rm -f "$sums_file"
  digest=$(printf '%s\n' "$sums" | awk -v name="$2" 'NF == 1 && NR == 1 { only = $1 } NF >= 2 { f = $2; sub(/^\*/, "", f); if (f == name) { print $1; found = 1; exit } } END { if (!found && only != "") print only }')
  if [ -z "$digest" ]; then
    echo "caph-image: no sha256 for $2 in $1" >&2
    exit 1
  fi
  printf '%s\n' "$digest"
}
expected=68328594ccf780a80ae2b092d9f6ce484eec7cf540c275242e8fd954bfd95332
caph_fetch https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.36.0/crictl-v1.36.0-linux-arm64.tar.gz /tmp/caph-crictl.tar.gz "$expected" 'pinned by crictl.sha256.arm64 in the spec'
tar -C /usr/local/bin -xzf /tmp/caph-crictl.tar.gz crictl
rm -f /tmp/caph-crictl.tar.gz
/usr/local/bin/crictl --version

# ---- step 12/23: crictl-config ----
set -euo pipefail
install -d -m 0755 /etc
cat > /etc/crictl.yaml <<'CAPH_IMAGE_FILE'
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/containerd/containerd.sock
timeout: 10
CAPH_IMAGE_FILE
chown root:root /etc/crictl.yaml
chmod 0644 /etc/crictl.yaml

# ---- step 13/23: cni-plugins ----
set -euo pipefail
caph_download() {
  # caph_download URL DEST: download, or stop and say which download failed and curl's reason.
  local url=$1 dest=$2 reason
  if ! reason=$(curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 20 --output "$dest" "$url" 2>&1); then
    rm -f "$dest"
    echo "caph-image: downloading $url failed: ${reason:-curl gave no reason}" >&2
    exit 1
  fi
}
caph_fetch() {
  # caph_fetch URL DEST EXPECTED_SHA256 ORIGIN: download, then refuse the file unless its sha256
  # matches; ORIGIN says where the expected digest comes from (the spec's pin, or a checksum file).
  local url=$1 dest=$2 expected=$3 origin=${4:-} actual
  caph_download "$url" "$dest"
  actual=$(sha256sum "$dest" | cut -d' ' -f1)
  if [ "$actual" != "$expected" ]; then
    rm -f "$dest"
    echo "caph-image: checksum mismatch for $url: expected sha256 $expected (${origin:-the expected digest}), got $actual" >&2
    exit 1
  fi
  echo "verified $url (sha256 $actual)"
}
caph_published_sha256() {
  # caph_published_sha256 CHECKSUM_URL FILE_NAME: the digest for FILE_NAME in an upstream checksum file.
  # Runs in $(...), where `set -e` does not reach: every failure exits explicitly.
  local sums digest sums_file
  sums_file=$(mktemp)
  ( caph_download "$1" "$sums_file" ) || { rm -f "$sums_file"; exit 1; }
  sums=$(cat "$sums_file")
  rm -f "$sums_file"
  digest=$(printf '%s\n' "$sums" | awk -v name="$2" 'NF == 1 && NR == 1 { only = $1 } NF >= 2 { f = $2; sub(/^\*/, "", f); if (f == name) { print $1; found = 1; exit } } END { if (!found && only != "") print only }')
  if [ -z "$digest" ]; then
    echo "caph-image: no sha256 for $2 in $1" >&2
    exit 1
  fi
  printf '%s\n' "$digest"
}
expected=56171987d3947707c3563db2f4001bccaf50fd63468611b9f3cbecb1375ee7ec
caph_fetch https://github.com/containernetworking/plugins/releases/download/v1.9.1/cni-plugins-linux-arm64-v1.9.1.tgz /tmp/caph-cni-plugins.tgz "$expected" 'pinned by cni.sha256.arm64 in the spec'
install -d -m 0755 /opt/cni/bin
tar -C /opt/cni/bin -xzf /tmp/caph-cni-plugins.tgz
rm -f /tmp/caph-cni-plugins.tgz
# Every CNI plugin answers the VERSION command of the CNI specification.
CNI_COMMAND=VERSION /opt/cni/bin/loopback </dev/null

# ---- step 14/23: kubernetes ----
set -euo pipefail
caph_download() {
  # caph_download URL DEST: download, or stop and say which download failed and curl's reason.
  local url=$1 dest=$2 reason
  if ! reason=$(curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 20 --output "$dest" "$url" 2>&1); then
    rm -f "$dest"
    echo "caph-image: downloading $url failed: ${reason:-curl gave no reason}" >&2
    exit 1
  fi
}
caph_fetch() {
  # caph_fetch URL DEST EXPECTED_SHA256 ORIGIN: download, then refuse the file unless its sha256
  # matches; ORIGIN says where the expected digest comes from (the spec's pin, or a checksum file).
  local url=$1 dest=$2 expected=$3 origin=${4:-} actual
  caph_download "$url" "$dest"
  actual=$(sha256sum "$dest" | cut -d' ' -f1)
  if [ "$actual" != "$expected" ]; then
    rm -f "$dest"
    echo "caph-image: checksum mismatch for $url: expected sha256 $expected (${origin:-the expected digest}), got $actual" >&2
    exit 1
  fi
  echo "verified $url (sha256 $actual)"
}
caph_published_sha256() {
  # caph_published_sha256 CHECKSUM_URL FILE_NAME: the digest for FILE_NAME in an upstream checksum file.
  # Runs in $(...), where `set -e` does not reach: every failure exits explicitly.
  local sums digest sums_file
  sums_file=$(mktemp)
  ( caph_download "$1" "$sums_file" ) || { rm -f "$sums_file"; exit 1; }
  sums=$(cat "$sums_file")
  rm -f "$sums_file"
  digest=$(printf '%s\n' "$sums" | awk -v name="$2" 'NF == 1 && NR == 1 { only = $1 } NF >= 2 { f = $2; sub(/^\*/, "", f); if (f == name) { print $1; found = 1; exit } } END { if (!found && only != "") print only }')
  if [ -z "$digest" ]; then
    echo "caph-image: no sha256 for $2 in $1" >&2
    exit 1
  fi
  printf '%s\n' "$digest"
}
expected=6a849c07d3e1c708f5c40f1ac8be03a56124204dfc7e1931e4113634019c0dad
caph_fetch https://dl.k8s.io/release/v1.36.4/bin/linux/arm64/kubeadm /tmp/caph-kubeadm "$expected" 'pinned by kubernetes.sha256.arm64.kubeadm in the spec'
install -m 0755 /tmp/caph-kubeadm /usr/local/bin/kubeadm
rm -f /tmp/caph-kubeadm
expected=0ecf44450ee6063bf19dd166a103ee6df4a9034455c2abce626e6eea657d73fb
caph_fetch https://dl.k8s.io/release/v1.36.4/bin/linux/arm64/kubectl /tmp/caph-kubectl "$expected" 'pinned by kubernetes.sha256.arm64.kubectl in the spec'
install -m 0755 /tmp/caph-kubectl /usr/local/bin/kubectl
rm -f /tmp/caph-kubectl
expected=fd53ea3fcbd077844f50a3c67e9b52f62972a563674956bab0c0f4fb7ea37d50
caph_fetch https://dl.k8s.io/release/v1.36.4/bin/linux/arm64/kubelet /tmp/caph-kubelet "$expected" 'pinned by kubernetes.sha256.arm64.kubelet in the spec'
install -m 0755 /tmp/caph-kubelet /usr/local/bin/kubelet
rm -f /tmp/caph-kubelet
/usr/local/bin/kubelet --version

# ---- step 15/23: kubelet-unit ----
set -euo pipefail
install -d -m 0755 /etc/systemd/system
cat > /etc/systemd/system/kubelet.service <<'CAPH_IMAGE_FILE'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/local/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
CAPH_IMAGE_FILE
chown root:root /etc/systemd/system/kubelet.service
chmod 0644 /etc/systemd/system/kubelet.service

# ---- step 16/23: kubelet-kubeadm-dropin ----
set -euo pipefail
install -d -m 0755 /etc/systemd/system/kubelet.service.d
cat > /etc/systemd/system/kubelet.service.d/10-kubeadm.conf <<'CAPH_IMAGE_FILE'
# kubeadm writes kubeadm-flags.env and config.yaml at join time; this wires them into kubelet.
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
CAPH_IMAGE_FILE
chown root:root /etc/systemd/system/kubelet.service.d/10-kubeadm.conf
chmod 0644 /etc/systemd/system/kubelet.service.d/10-kubeadm.conf

# ---- step 17/23: enable-services ----
set -euo pipefail
# systemctl enable works offline too, so this holds in a chroot as on a booted server.
systemctl daemon-reload >/dev/null 2>&1 || true
systemctl enable containerd.service kubelet.service

# ---- step 18/23: file-1 ----
set -euo pipefail
install -d -m 0755 /etc/systemd/networkd.conf.d
cat > /etc/systemd/networkd.conf.d/99-caph-cilium.conf <<'CAPH_IMAGE_FILE'
# Cilium manages its own routes and rules; systemd-networkd must leave them alone.
[Network]
ManageForeignRoutes=no
ManageForeignRoutingPolicyRules=no
CAPH_IMAGE_FILE
chown root:root /etc/systemd/networkd.conf.d/99-caph-cilium.conf
chmod 0644 /etc/systemd/networkd.conf.d/99-caph-cilium.conf

# ---- step 19/23: cloud-init ----
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold install -y --no-install-recommends cloud-init cloud-guest-utils
cloud-init --version

# ---- step 20/23: cloud-init-config ----
set -euo pipefail
install -d -m 0755 /etc/cloud/cloud.cfg.d
cat > /etc/cloud/cloud.cfg.d/99-caph-image.cfg <<'CAPH_IMAGE_FILE'
# Written by caph-image for a dedicated server installed by installimage.
# The bootstrap data comes from the NoCloud seed that Cluster API Provider Hetzner's post-install
# script writes (/var/lib/cloud/seed/nocloud-net); there is no metadata service to ask.
datasource_list: [ NoCloud, None ]
# installimage writes the network configuration for the interface it found.
network:
  config: disabled
# installimage made this node's SSH host keys: keep them. cloud-init makes the types it lists that
# are missing, and its default list still has DSA, which OpenSSH no longer uses: list the ones
# installimage makes.
ssh_deletekeys: false
ssh_genkeytypes: [ rsa, ecdsa, ed25519 ]
# Cluster API Provider Hetzner logs in as root with the keys installimage installed.
disable_root: false
# installimage sized the partitions to the drives by the layout, and a layout may put / on RAID or
# LVM: nothing for cloud-init to grow.
growpart:
  mode: 'off'
resize_rootfs: false
# The image has no locale data to generate from (no locales package); C.UTF-8 comes with libc,
# where cloud-init's default en_US.UTF-8 would fail the first boot in locale-gen.
locale: C.UTF-8
CAPH_IMAGE_FILE
chown root:root /etc/cloud/cloud.cfg.d/99-caph-image.cfg
chmod 0644 /etc/cloud/cloud.cfg.d/99-caph-image.cfg

# ---- step 21/23: host-keys-unit ----
set -euo pipefail
install -d -m 0755 /etc/systemd/system
cat > /etc/systemd/system/caph-image-host-keys.service <<'CAPH_IMAGE_FILE'
[Unit]
Description=SSH host keys for a node installed from a caph-image tarball
After=cloud-init.service
Before=ssh.service
ConditionPathExists=/usr/bin/ssh-keygen

[Service]
Type=oneshot
ExecStart=/usr/bin/find /etc/ssh -maxdepth 1 -name ssh_host_*_key -type f -empty -delete
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service multi-user.target
CAPH_IMAGE_FILE
chown root:root /etc/systemd/system/caph-image-host-keys.service
chmod 0644 /etc/systemd/system/caph-image-host-keys.service

# ---- step 22/23: provenance ----
set -euo pipefail
# Written like os-release: KEY=value lines a shell can source.
{
  printf '%s=%s\n' CAPH_IMAGE_NAME ubuntu-24.04-k8s-v1.36.4
  printf '%s=%s\n' SPEC_FILE images/ubuntu-24.04-k8s-1.36.toml
  printf '%s=%s\n' SPEC_SHA256 b66a3c8f9656ef628915a2020476b9879e55f025e0696113b2860575c49de9a1
  printf '%s=%s\n' OS ubuntu
  printf '%s=%s\n' OS_VERSION 24.04
  printf '%s=%s\n' ARCHITECTURE arm
  printf '%s=%s\n' TARGET tarball
  printf '%s=%s\n' KUBERNETES_VERSION 1.36.4
  printf '%s=%s\n' CONTAINERD_VERSION 2.3.4
  printf '%s=%s\n' RUNC_VERSION 1.4.3
  printf '%s=%s\n' CRICTL_VERSION 1.36.0
  printf 'BUILD_ID=%s\n' "${CAPH_BUILD_ID:-unknown}"
  printf 'BUILD_TIME=%s\n' "${CAPH_BUILD_TIME:-unknown}"
  printf 'BUILDER="%s"\n' "${CAPH_BUILDER:-caph-image}"
} > /etc/caph-image-release
chmod 0644 /etc/caph-image-release

# ---- step 23/23: hygiene ----
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# No automatic upgrades on a node (system.automatic_upgrades = false): apt's timers stay masked, and apt's periodic jobs are off.
install -d -m 0755 /etc/apt/apt.conf.d
printf '%s\n' 'APT::Periodic::Update-Package-Lists "0";' 'APT::Periodic::Unattended-Upgrade "0";' > /etc/apt/apt.conf.d/20auto-upgrades
apt-get clean
rm -rf /var/lib/apt/lists/*
find /var/log -type f -exec truncate -s 0 {} +
rm -f /etc/ssh/ssh_host_*
# installimage regenerates only the host key types whose files exist: leave each type
# as an empty file (no key material), and a unit that makes keys where nothing did.
install -m 0600 /dev/null /etc/ssh/ssh_host_rsa_key
install -m 0600 /dev/null /etc/ssh/ssh_host_ecdsa_key
install -m 0600 /dev/null /etc/ssh/ssh_host_ed25519_key
systemctl enable caph-image-host-keys.service
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init clean --logs --machine-id --seed || cloud-init clean --logs
fi
# An empty machine-id makes systemd generate a fresh one on first boot.
truncate -s 0 /etc/machine-id
if [ -d /var/lib/dbus ]; then rm -f /var/lib/dbus/machine-id && ln -s /etc/machine-id /var/lib/dbus/machine-id; fi
rm -rf /tmp/* /var/tmp/* /root/.bash_history
sync
