//! Compatibility rules between the spec's components, each from an upstream source that its
//! diagnostic names: Kubernetes and containerd, crictl and Kubernetes, runc's container-escape
//! fixes, and end-of-life dates. The facts live in [`crate::releases`]; this module judges.

use std::ops::Range;

use super::reader::{Reader, Section};
use crate::releases::{self, Date};
use crate::version::Version;

/// The component versions the rules look at, as far as they parsed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Components {
    pub(crate) kubernetes: Option<Version>,
    pub(crate) containerd: Option<Version>,
    pub(crate) runc: Option<Version>,
    pub(crate) crictl: Option<Version>,
}

/// Records every rule the components break: errors for pairs upstream does not support and for
/// runc releases with known escapes, warnings for releases past their end of life on `today`.
pub(crate) fn check(
    reader: &mut Reader<'_>,
    root: &Section<'_, '_>,
    components: Components,
    today: Option<Date>,
) {
    if let (Some(kubernetes), Some(containerd)) = (components.kubernetes, components.containerd) {
        containerd_supports_kubernetes(reader, root, kubernetes, containerd);
    }
    if let (Some(kubernetes), Some(crictl)) = (components.kubernetes, components.crictl) {
        crictl_follows_kubernetes(reader, root, kubernetes, crictl);
    }
    if let Some(runc) = components.runc {
        runc_has_the_escape_fixes(reader, root, runc);
    }
    if let Some(today) = today {
        if let Some(kubernetes) = components.kubernetes {
            end_of_life(
                reader,
                root,
                "kubernetes",
                "Kubernetes",
                kubernetes,
                releases::end_of_life(releases::KUBERNETES_END_OF_LIFE, kubernetes),
                releases::KUBERNETES_EOL_SOURCE,
                today,
            );
        }
        if let Some(containerd) = components.containerd {
            end_of_life(
                reader,
                root,
                "containerd",
                "containerd",
                containerd,
                releases::end_of_life(releases::CONTAINERD_END_OF_LIFE, containerd),
                releases::CONTAINERD_EOL_SOURCE,
                today,
            );
        }
    }
}

/// The span of `section.version`, or of the section when the key is elsewhere.
fn version_span(root: &Section<'_, '_>, section: &str) -> Range<usize> {
    let Some(value) = root.table.get(section) else {
        return root.span.clone();
    };
    value
        .get_ref()
        .as_table()
        .and_then(|table| table.get("version"))
        .map_or_else(|| value.span(), |version| version.span())
}

fn minor(version: Version) -> String {
    version.minor_series()
}

fn list(versions: &[Version]) -> String {
    versions
        .iter()
        .map(|version| format!("{version}+"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn containerd_supports_kubernetes(
    reader: &mut Reader<'_>,
    root: &Section<'_, '_>,
    kubernetes: Version,
    containerd: Version,
) {
    let span = version_span(root, "containerd");
    let row = releases::CONTAINERD_FOR_KUBERNETES
        .iter()
        .find(|(minor, _)| *minor == (kubernetes.major, kubernetes.minor))
        .map(|(_, floors)| *floors);
    if containerd.major < 2
        && (kubernetes.major, kubernetes.minor) > releases::LAST_KUBERNETES_WITH_CONTAINERD_1
    {
        let (last_major, last_minor) = releases::LAST_KUBERNETES_WITH_CONTAINERD_1;
        let help = match row {
            Some(floors) => format!("use containerd {}", list(floors)),
            None => "use containerd 2.x".to_string(),
        };
        reader.error(
            &span,
            "containerd.version",
            format!(
                "containerd {containerd} does not support Kubernetes {kubernetes}: Kubernetes \
                 {last_major}.{last_minor} is the last release that supports containerd 1.x \
                 (source: {})",
                releases::CONTAINERD_1_SOURCE
            ),
            Some(help),
        );
        return;
    }
    let Some(floors) = row else {
        let newest = releases::CONTAINERD_FOR_KUBERNETES
            .last()
            .map(|((major, minor), _)| (*major, *minor))
            .unwrap_or_default();
        if (kubernetes.major, kubernetes.minor) > newest {
            reader.warning(
                &span,
                "containerd.version",
                format!(
                    "no containerd support data for Kubernetes {}: the pair with containerd \
                     {containerd} is unchecked (source: {})",
                    minor(kubernetes),
                    releases::CONTAINERD_SUPPORT_SOURCE
                ),
                Some(
                    "check containerd's RELEASES.md and add the row to caph-core's releases table"
                        .to_string(),
                ),
            );
        }
        return;
    };
    match floors
        .iter()
        .find(|floor| (floor.major, floor.minor) == (containerd.major, containerd.minor))
    {
        None => reader.error(
            &span,
            "containerd.version",
            format!(
                "containerd {containerd} is not supported with Kubernetes {kubernetes}, which \
                 goes with containerd {} (source: {})",
                list(floors),
                releases::CONTAINERD_SUPPORT_SOURCE
            ),
            Some(format!("use containerd {}", list(floors))),
        ),
        Some(floor) if containerd < *floor => reader.error(
            &span,
            "containerd.version",
            format!(
                "containerd {containerd} is older than {floor}, the first {} release \
                 supported with Kubernetes {kubernetes} (source: {})",
                minor(containerd),
                releases::CONTAINERD_SUPPORT_SOURCE
            ),
            Some(format!("use containerd {floor} or newer")),
        ),
        Some(_) => {}
    }
}

fn crictl_follows_kubernetes(
    reader: &mut Reader<'_>,
    root: &Section<'_, '_>,
    kubernetes: Version,
    crictl: Version,
) {
    if (crictl.major, crictl.minor) == (kubernetes.major, kubernetes.minor) {
        return;
    }
    reader.error(
        &version_span(root, "crictl"),
        "crictl.version",
        format!(
            "crictl {crictl} does not match Kubernetes {kubernetes}: the minor releases must be \
             the same (source: {})",
            releases::CRICTL_SOURCE
        ),
        Some(format!(
            "use crictl {}.x, for example \"{}.0\"",
            minor(kubernetes),
            minor(kubernetes)
        )),
    );
}

fn runc_has_the_escape_fixes(reader: &mut Reader<'_>, root: &Section<'_, '_>, runc: Version) {
    let Some(fixed) = releases::runc_fix_needed(runc) else {
        return;
    };
    reader.error(
        &version_span(root, "runc"),
        "runc.version",
        format!(
            "runc {runc} lets a container escape ({}); the first fixed release of its line is \
             {fixed} (source: {})",
            releases::RUNC_CVES,
            releases::RUNC_CVE_SOURCE
        ),
        Some(format!("use runc {fixed} or newer")),
    );
}

#[allow(clippy::too_many_arguments)]
fn end_of_life(
    reader: &mut Reader<'_>,
    root: &Section<'_, '_>,
    section: &str,
    product: &str,
    version: Version,
    date: Option<Date>,
    source: &str,
    today: Date,
) {
    let Some(date) = date else {
        return;
    };
    if today <= date {
        return;
    }
    reader.warning(
        &version_span(root, section),
        &format!("{section}.version"),
        format!(
            "{product} {} reached its end of life on {date}: no more fixes, security ones \
             included (source: {source})",
            minor(version)
        ),
        Some(format!(
            "move to a {product} release that is still supported"
        )),
    );
}
