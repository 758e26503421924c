#!/bin/bash
# caph-image plan: image ubuntu-24.04-k8s-v1.36.0, target tarball, architecture arm
# spec sha256 3458d28dbc1465bdcf277a5664f40954a226ea44973cdd4d31aea16ac4afc7d0
# Each step runs as its own `bash -s`, in this order, after the CAPH_* exports of the build.

# ---- step 1/17: wait-for-system ----
set -euo pipefail
# cloud-init may still be installing packages on a fresh server; wait where it exists.
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init status --wait >/dev/null || echo "cloud-init finished with status $?; continuing" >&2
fi
# Keep apt's timers from taking the dpkg lock during the build; hygiene unmasks them.
systemctl mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service unattended-upgrades.service >/dev/null 2>&1 || true
if [ -d /run/systemd/system ]; then
  systemctl stop apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service unattended-upgrades.service >/dev/null 2>&1 || true
fi
# Wait for any dpkg run in progress (where dpkg's lock exists) before the first apt call.
if [ -e /var/lib/dpkg/lock-frontend ] && command -v flock >/dev/null 2>&1; then
  flock --timeout 600 /var/lib/dpkg/lock-frontend true
fi

# ---- step 2/17: kernel-modules-config ----
set -euo pipefail
install -d -m 0755 /etc/modules-load.d
cat > /etc/modules-load.d/caph-image.conf <<'CAPH_IMAGE_FILE'
overlay
br_netfilter
ip_vs
CAPH_IMAGE_FILE
chown root:root /etc/modules-load.d/caph-image.conf
chmod 0644 /etc/modules-load.d/caph-image.conf

# ---- step 3/17: sysctl-config ----
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

# ---- step 4/17: swap-off ----
set -euo pipefail
swapoff -a || true
if [ -f /etc/fstab ]; then
  sed -i -E 's@^([^#[:space:]][^[:space:]]*[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]].*)$@# swap disabled by caph-image: \1@' /etc/fstab
fi
if [ -f /swap.img ]; then rm -f /swap.img; fi

# ---- step 5/17: packages ----
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold update
apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold install -y --no-install-recommends apt-transport-https ca-certificates conntrack curl ethtool gnupg iproute2 iptables kmod socat systemd-timesyncd open-iscsi nfs-common lvm2 xfsprogs

# ---- step 6/17: containerd ----
set -euo pipefail
caph_fetch() {
  # caph_fetch URL DEST EXPECTED_SHA256: download, then refuse the file unless its sha256 matches.
  local url=$1 dest=$2 expected=$3 actual
  curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 20 --output "$dest" "$url"
  actual=$(sha256sum "$dest" | cut -d' ' -f1)
  if [ "$actual" != "$expected" ]; then
    rm -f "$dest"
    echo "caph-image: checksum mismatch for $url: expected sha256 $expected, got $actual" >&2
    exit 1
  fi
  echo "verified $url (sha256 $actual)"
}
caph_published_sha256() {
  # caph_published_sha256 CHECKSUM_URL FILE_NAME: the digest for FILE_NAME in an upstream checksum file.
  local sums digest
  sums=$(curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 20 "$1")
  digest=$(printf '%s\n' "$sums" | awk -v name="$2" 'NF == 1 && NR == 1 { only = $1 } NF >= 2 { f = $2; sub(/^\*/, "", f); if (f == name) { print $1; found = 1; exit } } END { if (!found && only != "") print only }')
  if [ -z "$digest" ]; then
    echo "caph-image: no sha256 for $2 in $1" >&2
    exit 1
  fi
  printf '%s\n' "$digest"
}
expected=$(caph_published_sha256 https://github.com/containerd/containerd/releases/download/v2.1.4/containerd-2.1.4-linux-arm64.tar.gz.sha256sum containerd-2.1.4-linux-arm64.tar.gz)
caph_fetch https://github.com/containerd/containerd/releases/download/v2.1.4/containerd-2.1.4-linux-arm64.tar.gz /tmp/caph-containerd.tar.gz "$expected"
tar -C /usr/local -xzf /tmp/caph-containerd.tar.gz
rm -f /tmp/caph-containerd.tar.gz
/usr/local/bin/containerd --version

# ---- step 7/17: containerd-unit ----
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

# ---- step 8/17: containerd-config ----
set -euo pipefail
install -d -m 0755 /etc/containerd
cat > /etc/containerd/config.toml <<'CAPH_IMAGE_FILE'
# Written by caph-image for containerd 2.1.4.
version = 3

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
SystemdCgroup = true
CAPH_IMAGE_FILE
chown root:root /etc/containerd/config.toml
chmod 0644 /etc/containerd/config.toml

# ---- step 9/17: runc ----
set -euo pipefail
caph_fetch() {
  # caph_fetch URL DEST EXPECTED_SHA256: download, then refuse the file unless its sha256 matches.
  local url=$1 dest=$2 expected=$3 actual
  curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 20 --output "$dest" "$url"
  actual=$(sha256sum "$dest" | cut -d' ' -f1)
  if [ "$actual" != "$expected" ]; then
    rm -f "$dest"
    echo "caph-image: checksum mismatch for $url: expected sha256 $expected, got $actual" >&2
    exit 1
  fi
  echo "verified $url (sha256 $actual)"
}
caph_published_sha256() {
  # caph_published_sha256 CHECKSUM_URL FILE_NAME: the digest for FILE_NAME in an upstream checksum file.
  local sums digest
  sums=$(curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 20 "$1")
  digest=$(printf '%s\n' "$sums" | awk -v name="$2" 'NF == 1 && NR == 1 { only = $1 } NF >= 2 { f = $2; sub(/^\*/, "", f); if (f == name) { print $1; found = 1; exit } } END { if (!found && only != "") print only }')
  if [ -z "$digest" ]; then
    echo "caph-image: no sha256 for $2 in $1" >&2
    exit 1
  fi
  printf '%s\n' "$digest"
}
expected=$(caph_published_sha256 https://github.com/opencontainers/runc/releases/download/v1.3.0/runc.sha256sum runc.arm64)
caph_fetch https://github.com/opencontainers/runc/releases/download/v1.3.0/runc.arm64 /tmp/caph-runc "$expected"
install -m 0755 /tmp/caph-runc /usr/local/sbin/runc
rm -f /tmp/caph-runc
/usr/local/sbin/runc --version

# ---- step 10/17: crictl ----
set -euo pipefail
caph_fetch() {
  # caph_fetch URL DEST EXPECTED_SHA256: download, then refuse the file unless its sha256 matches.
  local url=$1 dest=$2 expected=$3 actual
  curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 20 --output "$dest" "$url"
  actual=$(sha256sum "$dest" | cut -d' ' -f1)
  if [ "$actual" != "$expected" ]; then
    rm -f "$dest"
    echo "caph-image: checksum mismatch for $url: expected sha256 $expected, got $actual" >&2
    exit 1
  fi
  echo "verified $url (sha256 $actual)"
}
caph_published_sha256() {
  # caph_published_sha256 CHECKSUM_URL FILE_NAME: the digest for FILE_NAME in an upstream checksum file.
  local sums digest
  sums=$(curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 20 "$1")
  digest=$(printf '%s\n' "$sums" | awk -v name="$2" 'NF == 1 && NR == 1 { only = $1 } NF >= 2 { f = $2; sub(/^\*/, "", f); if (f == name) { print $1; found = 1; exit } } END { if (!found && only != "") print only }')
  if [ -z "$digest" ]; then
    echo "caph-image: no sha256 for $2 in $1" >&2
    exit 1
  fi
  printf '%s\n' "$digest"
}
expected=$(caph_published_sha256 https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.36.0/crictl-v1.36.0-linux-arm64.tar.gz.sha256 crictl-v1.36.0-linux-arm64.tar.gz)
caph_fetch https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.36.0/crictl-v1.36.0-linux-arm64.tar.gz /tmp/caph-crictl.tar.gz "$expected"
tar -C /usr/local/bin -xzf /tmp/caph-crictl.tar.gz crictl
rm -f /tmp/caph-crictl.tar.gz
/usr/local/bin/crictl --version

# ---- step 11/17: crictl-config ----
set -euo pipefail
install -d -m 0755 /etc
cat > /etc/crictl.yaml <<'CAPH_IMAGE_FILE'
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/containerd/containerd.sock
timeout: 10
CAPH_IMAGE_FILE
chown root:root /etc/crictl.yaml
chmod 0644 /etc/crictl.yaml

# ---- step 12/17: kubernetes ----
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
install -d -m 0755 /etc/apt/keyrings
# No key pin in the spec: the key is trusted as served over HTTPS; apt then verifies every package against it.
curl --fail --silent --show-error --location --retry 5 --output /tmp/caph-kubernetes-release.key https://pkgs.k8s.io/core:/stable:/v1.36/deb/Release.key
gpg --dearmor --batch --yes --output /etc/apt/keyrings/kubernetes-apt-keyring.gpg /tmp/caph-kubernetes-release.key
rm -f /tmp/caph-kubernetes-release.key
echo 'deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v1.36/deb/ /' > /etc/apt/sources.list.d/kubernetes.list
apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold update
wanted=1.36.0
# Resolve the exact package revision for the version (for example 1.36.0-1.1).
package_version=$(apt-cache madison kubelet | awk -v v="$wanted" '{ split($3, parts, "-"); if (parts[1] == v) { print $3; exit } }')
if [ -z "$package_version" ]; then
  echo "caph-image: kubelet $wanted is not in the repository" >&2
  exit 1
fi
apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold install -y --no-install-recommends "kubelet=$package_version" "kubeadm=$package_version" "kubectl=$package_version"
apt-mark hold kubelet kubeadm kubectl
kubelet --version

# ---- step 13/17: enable-services ----
set -euo pipefail
# systemctl enable works offline too, so this holds in a chroot as on a booted server.
systemctl daemon-reload >/dev/null 2>&1 || true
systemctl enable containerd.service kubelet.service

# ---- step 14/17: file-1 ----
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

# ---- step 15/17: host-keys-unit ----
set -euo pipefail
install -d -m 0755 /etc/systemd/system
cat > /etc/systemd/system/caph-image-host-keys.service <<'CAPH_IMAGE_FILE'
[Unit]
Description=SSH host keys for a node installed from a caph-image tarball
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

# ---- step 16/17: provenance ----
set -euo pipefail
# Written like os-release: KEY=value lines a shell can source.
{
  printf '%s=%s\n' CAPH_IMAGE_NAME ubuntu-24.04-k8s-v1.36.0
  printf '%s=%s\n' SPEC_FILE images/ubuntu-24.04-k8s-1.36.toml
  printf '%s=%s\n' SPEC_SHA256 3458d28dbc1465bdcf277a5664f40954a226ea44973cdd4d31aea16ac4afc7d0
  printf '%s=%s\n' OS ubuntu
  printf '%s=%s\n' OS_VERSION 24.04
  printf '%s=%s\n' ARCHITECTURE arm
  printf '%s=%s\n' TARGET tarball
  printf '%s=%s\n' KUBERNETES_VERSION 1.36.0
  printf '%s=%s\n' CONTAINERD_VERSION 2.1.4
  printf '%s=%s\n' RUNC_VERSION 1.3.0
  printf '%s=%s\n' CRICTL_VERSION 1.36.0
  printf 'BUILD_ID=%s\n' "${CAPH_BUILD_ID:-unknown}"
  printf 'BUILD_TIME=%s\n' "${CAPH_BUILD_TIME:-unknown}"
  printf 'BUILDER="%s"\n' "${CAPH_BUILDER:-caph-image}"
} > /etc/caph-image-release
chmod 0644 /etc/caph-image-release

# ---- step 17/17: hygiene ----
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
systemctl unmask apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service unattended-upgrades.service >/dev/null 2>&1 || true
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
