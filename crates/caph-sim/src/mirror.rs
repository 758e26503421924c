//! A loopback download mirror for tests: serves files over real HTTP, as the release pages of
//! containerd, runc, crictl, the CNI plugins and Kubernetes would, with the checksum files
//! published beside them.
//!
//! The artifacts made by [`release_artifacts`] are stand-ins: small shell programs that answer
//! `--version` like the real binaries, packed in the upstream layouts (a `bin/` tarball for
//! containerd, a bare `runc.<arch>`, a `crictl` tarball, a CNI plugins tarball, bare Kubernetes
//! binaries). [`crate::runtime::debian_runtime`] makes the real containerd, runc and CNI plugins
//! from Debian's packages in the same layouts, to serve in their place; kubelet, kubeadm and
//! crictl have no real binary reachable here and stay stand-ins. Checksums are real sha256
//! values of what is served.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::http::{Limits, RequestLog};

/// A running mirror; stops when dropped.
#[derive(Debug)]
pub struct Mirror {
    addr: SocketAddr,
    files: Arc<Mutex<BTreeMap<String, Bytes>>>,
    requests: Arc<Mutex<RequestLog<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mirror {
    /// Serves `files` (path without leading slash → content) on a free port of `ip` (a loopback address).
    pub async fn start(
        ip: std::net::IpAddr,
        files: BTreeMap<String, Vec<u8>>,
    ) -> std::io::Result<Mirror> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let files = Arc::new(Mutex::new(
            files
                .into_iter()
                .map(|(path, content)| (path, Bytes::from(content)))
                .collect::<BTreeMap<_, _>>(),
        ));
        let requests = Arc::new(Mutex::new(RequestLog::new(Limits::default().request_log)));
        let (served, log) = (files.clone(), requests.clone());
        let task = crate::http::serve(
            listener,
            Limits::default(),
            move |_, request: Request<Incoming>| {
                let (served, log) = (served.clone(), log.clone());
                async move { Ok::<_, Infallible>(answer(&served, &log, &request)) }
            },
        );
        Ok(Mirror {
            addr,
            files,
            requests,
            task,
        })
    }

    /// The base URL, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The paths requested so far, in order (the latest ones, as [`crate::http::RequestLog`]).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.requests).to_vec()
    }

    /// Replaces what is served at `path` (for example with corrupted bytes), leaving its checksum file alone.
    pub fn replace(&self, path: &str, content: Vec<u8>) {
        lock(&self.files).insert(path.to_string(), Bytes::from(content));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn answer(
    files: &Mutex<BTreeMap<String, Bytes>>,
    log: &Mutex<RequestLog<String>>,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().trim_start_matches('/').to_string();
    lock(log).push(crate::http::for_log(&path));
    let found = lock(files).get(&path).cloned();
    let (status, body) = match (
        request.method() == hyper::Method::GET || request.method() == hyper::Method::HEAD,
        found,
    ) {
        (true, Some(content)) => (StatusCode::OK, content),
        (true, None) => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
        (false, _) => (
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"method not allowed\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

/// Versions of the stand-in release artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseVersions {
    /// containerd, e.g. `2.1.4`.
    pub containerd: String,
    /// runc, e.g. `1.3.0`.
    pub runc: String,
    /// crictl, e.g. `1.34.0`.
    pub crictl: String,
    /// The CNI plugins, e.g. `1.9.1`.
    pub cni: String,
    /// Kubernetes, e.g. `1.34.2`.
    pub kubernetes: String,
}

/// The files of the five release sites for `arches` (`amd64`, `arm64`), under the prefixes
/// `containerd/`, `runc/`, `crictl/`, `cni/` and `kubernetes/`: point a spec's `url`s at
/// `<mirror>/<prefix>`.
pub fn release_artifacts(versions: &ReleaseVersions, arches: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut runc_sums = String::new();
    for arch in arches {
        // containerd: containerd-<v>-linux-<arch>.tar.gz holding bin/, with a .sha256sum beside it.
        let name = format!(
            "containerd-{v}-linux-{arch}.tar.gz",
            v = versions.containerd
        );
        let tarball = gzip_tar(&[
            (
                "bin/containerd",
                version_program(
                    "containerd",
                    &format!(
                        "containerd github.com/containerd/containerd/v2 v{} stand-in",
                        versions.containerd
                    ),
                ),
            ),
            (
                "bin/containerd-shim-runc-v2",
                version_program(
                    "containerd-shim-runc-v2",
                    &format!("containerd-shim-runc-v2 v{}", versions.containerd),
                ),
            ),
            (
                "bin/ctr",
                version_program(
                    "ctr",
                    &format!(
                        "ctr github.com/containerd/containerd/v2 v{}",
                        versions.containerd
                    ),
                ),
            ),
        ]);
        files.insert(
            format!("containerd/v{}/{name}.sha256sum", versions.containerd),
            format!("{}  {name}\n", sha256_hex(&tarball)).into_bytes(),
        );
        files.insert(
            format!("containerd/v{}/{name}", versions.containerd),
            tarball,
        );

        // runc: a bare runc.<arch>; one runc.sha256sum lists every architecture.
        let runc = version_program("runc", &format!("runc version {}", versions.runc));
        runc_sums.push_str(&format!("{}  runc.{arch}\n", sha256_hex(&runc)));
        files.insert(format!("runc/v{}/runc.{arch}", versions.runc), runc);

        // crictl: crictl-v<v>-linux-<arch>.tar.gz with a bare-digest .sha256.
        let name = format!("crictl-v{v}-linux-{arch}.tar.gz", v = versions.crictl);
        let tarball = gzip_tar(&[(
            "crictl",
            version_program("crictl", &format!("crictl version v{}", versions.crictl)),
        )]);
        files.insert(
            format!("crictl/v{}/{name}.sha256", versions.crictl),
            format!("{}\n", sha256_hex(&tarball)).into_bytes(),
        );
        files.insert(format!("crictl/v{}/{name}", versions.crictl), tarball);

        // CNI plugins: cni-plugins-linux-<arch>-v<v>.tgz of bare plugins, with a .sha256 beside it.
        let name = format!("cni-plugins-linux-{arch}-v{v}.tgz", v = versions.cni);
        let tarball = gzip_tar(&[
            ("./loopback", cni_program("loopback")),
            ("./bridge", cni_program("bridge")),
            ("./host-local", cni_program("host-local")),
        ]);
        files.insert(
            format!("cni/v{}/{name}.sha256", versions.cni),
            format!("{}  {name}\n", sha256_hex(&tarball)).into_bytes(),
        );
        files.insert(format!("cni/v{}/{name}", versions.cni), tarball);

        // Kubernetes: bare binaries with bare-digest .sha256 files.
        for (component, answer) in [
            ("kubelet", format!("Kubernetes v{}", versions.kubernetes)),
            (
                "kubeadm",
                format!(
                    "kubeadm version: &version.Info{{GitVersion:\"v{}\"}}",
                    versions.kubernetes
                ),
            ),
            (
                "kubectl",
                format!("Client Version: v{}", versions.kubernetes),
            ),
        ] {
            let program = version_program(component, &answer);
            let path = format!(
                "kubernetes/v{}/bin/linux/{arch}/{component}",
                versions.kubernetes
            );
            files.insert(
                format!("{path}.sha256"),
                format!("{}\n", sha256_hex(&program)).into_bytes(),
            );
            files.insert(path, program);
        }
    }
    files.insert(
        format!("runc/v{}/runc.sha256sum", versions.runc),
        runc_sums.into_bytes(),
    );
    files
}

/// A shell program that prints `answer` for `--version` (and `version`), and fails otherwise.
fn version_program(name: &str, answer: &str) -> Vec<u8> {
    format!(
        "#!/bin/sh\n# Stand-in for {name}, served by caph-sim's test mirror.\ncase \"${{1:-}}\" in\n  --version|version|-v) echo '{answer}' ;;\n  *) echo '{name}: stand-in binary' >&2; exit 1 ;;\nesac\n"
    )
    .into_bytes()
}

/// A shell program that answers the CNI specification's VERSION command like a CNI plugin.
fn cni_program(name: &str) -> Vec<u8> {
    format!(
        "#!/bin/sh\n# Stand-in for the CNI plugin {name}, served by caph-sim's test mirror.\nif [ \"${{CNI_COMMAND:-}}\" = VERSION ]; then\n  echo '{{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\",\"1.1.0\"]}}'\nelse\n  echo '{name}: stand-in CNI plugin' >&2; exit 1\nfi\n"
    )
    .into_bytes()
}

/// sha256 as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A gzip-compressed tar of `entries` (path, content), every entry mode 0755 and mtime 0.
pub fn gzip_tar(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (path, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o755);
        header.set_mtime(0);
        header.set_cksum();
        // Writing into a Vec cannot fail.
        let _ = builder.append_data(&mut header, path, content.as_slice());
    }
    builder
        .into_inner()
        .and_then(|encoder| encoder.finish())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_what_is_served() {
        let versions = ReleaseVersions {
            containerd: "2.1.4".into(),
            runc: "1.3.0".into(),
            crictl: "1.34.0".into(),
            cni: "1.9.1".into(),
            kubernetes: "1.34.2".into(),
        };
        let files = release_artifacts(&versions, &["amd64", "arm64"]);
        let kubelet = &files["kubernetes/v1.34.2/bin/linux/arm64/kubelet"];
        assert_eq!(
            String::from_utf8_lossy(&files["kubernetes/v1.34.2/bin/linux/arm64/kubelet.sha256"])
                .trim(),
            sha256_hex(kubelet)
        );
        let sums = String::from_utf8_lossy(&files["runc/v1.3.0/runc.sha256sum"]).into_owned();
        assert!(sums.contains(&format!(
            "{}  runc.amd64",
            sha256_hex(&files["runc/v1.3.0/runc.amd64"])
        )));
    }
}
