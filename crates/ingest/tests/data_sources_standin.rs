//! scripts/check-sources.sh and scripts/fetch-data.sh against a stand-in registry (no network):
//! a source whose pinned candidate is gone falls back to the next one and records it; a source with
//! no candidate left is named by check-sources (exit 1) and left `.vlmix-unavailable` by fetch,
//! which goes on (exit 0) with everything else.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One stand-in for apt-get, apt-cache, pip and npm: a candidate is offered when the folder
/// `$STANDIN_REGISTRY/<spec>` exists, and "downloading" it copies that folder's file.
const STANDIN: &str = r#"#!/usr/bin/env bash
set -euo pipefail
reg=$STANDIN_REGISTRY; client=$1; shift
last="${*: -1}"
case "$client" in
apt-cache) # madison PKG: one line per offered version
    for offered in "$reg/$last"=*; do [ -d "$offered" ] && echo "$last | ${offered##*=} | http://stand.in bookworm/main all Packages"; done
    exit 0 ;;
apt-get)
    [ "$1" = update ] && exit 0
    [ -d "$reg/$last" ] || { echo "E: Version '${last#*=}' for '${last%%=*}' was not found" >&2; exit 100; }
    cp "$reg/$last"/* . ;;
pip)
    if [ "$1" = index ]; then
        versions=$(cd "$reg" && { ls -d "$last"==* 2>/dev/null || true; } | sed "s/^$last==//" | paste -sd, | sed 's/,/, /g')
        [ -n "$versions" ] || { echo "ERROR: No matching distribution found for $last"; exit 1; }
        printf '%s (%s)\nAvailable versions: %s\n' "$last" "${versions%%,*}" "$versions"
        exit 0
    fi
    dest=$(sed -n 's/.* -d \([^ ]*\) .*/\1/p' <<<"$*")
    [ -d "$reg/$last" ] || { echo "ERROR: Could not find a version that satisfies the requirement $last"; exit 1; }
    cp "$reg/$last"/* "$dest" ;;
npm)
    if [ "$1" = view ]; then [ -d "$reg/$2" ] && echo "${2##*@}"; exit 0; fi
    dest=$(sed -n 's/.*--pack-destination \([^ ]*\) .*/\1/p' <<<"$*")
    [ -d "$reg/$last" ] || { echo "npm error code ETARGET"; exit 1; }
    cp "$reg/$last"/* "$dest" ;;
esac
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sh(command: &str, dir: &Path) {
    let status = Command::new("bash").arg("-c").arg(command).current_dir(dir).status().unwrap();
    assert!(status.success(), "{command}");
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

struct Registry {
    dir: tempfile::TempDir,
}

impl Registry {
    /// Offers `beta@1.0.0` (npm, not 2.0.0), `delta=1` (apt, not 2); nothing of `gamma` (PyPI).
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("standin"), STANDIN).unwrap();
        sh("chmod +x standin", root);
        sh("mkdir -p build/package && echo beta > build/package/data.txt && mkdir -p 'reg/beta@1.0.0' && tar czf 'reg/beta@1.0.0/beta-1.0.0.tgz' -C build package", root);
        sh("mkdir -p deb/DEBIAN deb/usr/share/delta 'reg/delta=1' && echo delta > deb/usr/share/delta/data.txt && printf 'Package: delta\\nVersion: 1\\nArchitecture: all\\nMaintainer: t <t@t>\\nDescription: t\\n' > deb/DEBIAN/control && dpkg-deb --build deb 'reg/delta=1/delta_1_all.deb' >/dev/null", root);
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A manifest with two candidates for beta and for delta (the first gone), one for gamma (gone).
    fn manifest(&self, with_gamma: bool) -> PathBuf {
        let root = self.root();
        let beta = root.join("reg/beta@1.0.0/beta-1.0.0.tgz");
        let delta = root.join("reg/delta=1/delta_1_all.deb");
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        let mut rows = vec![
            "# test manifest".to_string(),
            format!("beta\tnpm\tbeta@2.0.0\tbeta-2.0.0.tgz\t{}\t1\tMIT\tpackage/*", "0".repeat(64)),
            format!("beta\tnpm\tbeta@1.0.0\tbeta-1.0.0.tgz\t{}\t{}\tMIT\tpackage/*", sha256(&beta), size(&beta)),
            format!("delta\tapt\tdelta=2\tdelta_2_all.deb\t{}\t1\tMIT\t./usr/share/delta/*", "2".repeat(64)),
            format!(
                "delta\tapt\tdelta=1\tdelta_1_all.deb\t{}\t{}\tMIT\t./usr/share/delta/*",
                sha256(&delta),
                size(&delta)
            ),
        ];
        if with_gamma {
            rows.push(format!(
                "gamma\tpypi\tgamma==1.0\tgamma-1.0-py3-none-any.whl\t{}\t1\tMIT\tgamma/*",
                "1".repeat(64)
            ));
        }
        let path = root.join(format!("sources-{with_gamma}.tsv"));
        std::fs::write(&path, rows.join("\n") + "\n").unwrap();
        path
    }

    fn run(&self, script: &str, manifest: &Path, home: &Path) -> Output {
        let standin = self.root().join("standin");
        let client = |name: &str| format!("{} {name}", standin.display());
        Command::new(repo().join("scripts").join(script))
            .env("VLMIX_DATA_SOURCES", manifest)
            .env("VLMIX_HOME", home)
            .env("STANDIN_REGISTRY", self.root().join("reg"))
            .env("VLMIX_APT_GET", client("apt-get"))
            .env("VLMIX_APT_CACHE", client("apt-cache"))
            .env("VLMIX_PIP", client("pip"))
            .env("VLMIX_NPM", client("npm"))
            .output()
            .unwrap()
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn check_sources_names_the_candidate_used_and_fails_only_on_a_source_without_one() {
    let registry = Registry::new();
    let home = registry.root().join("home");
    let all = registry.run("check-sources.sh", &registry.manifest(true), &home);
    let out = text(&all);
    println!("{out}");
    assert_eq!(all.status.code(), Some(1), "{out}");
    let row = |name: &str| out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no row {name}: {out}"));
    assert!(row("beta").contains("1/2") && row("beta").contains("beta@1.0.0 (not offered: beta@2.0.0"), "{out}");
    assert!(row("delta").contains("1/2") && row("delta").contains("delta=2: apt offers 1 for delta, not 2"), "{out}");
    assert!(row("gamma").contains("NONE (gamma==1.0: ERROR: No matching distribution"), "{out}");
    assert!(out.contains("no candidate is offered any more for: gamma"), "{out}");

    let rest = registry.run("check-sources.sh", &registry.manifest(false), &home);
    assert!(rest.status.success(), "{}", text(&rest));
}

#[test]
fn fetch_falls_back_records_the_candidate_and_goes_on_without_a_lost_source() {
    let registry = Registry::new();
    let home = registry.root().join("home");
    let manifest = registry.manifest(true);
    let fetched = registry.run("fetch-data.sh", &manifest, &home);
    let out = text(&fetched);
    println!("{out}");
    assert!(fetched.status.success(), "fetch must go on without a lost source: {out}");
    assert!(out.contains("gamma is UNAVAILABLE"), "{out}");
    assert_eq!(std::fs::read_to_string(home.join("sources/beta/package/data.txt")).unwrap(), "beta\n");
    assert_eq!(std::fs::read_to_string(home.join("sources/delta/usr/share/delta/data.txt")).unwrap(), "delta\n");

    let layout = vlmix_data::DataLayout::new(&home, home.join("prepared"));
    let provenance = layout.fetched_sources().unwrap();
    let used: Vec<(&str, &str)> = provenance.iter().map(|s| (s.name.as_str(), s.package.as_str())).collect();
    assert_eq!(used, [("beta", "beta@1.0.0"), ("delta", "delta=1")]);
    let err = layout.require_source("gamma").unwrap_err();
    let gone = vlmix_data::layout::SourceMissing::of(&err).unwrap();
    assert!(gone.reason.contains("gamma==1.0") && gone.reason.contains("Could not find a version"), "{}", gone.reason);

    let again = registry.run("fetch-data.sh", &manifest, &home);
    assert!(
        text(&again).contains("gamma is UNAVAILABLE") && !text(&again).contains("extracting beta"),
        "{}",
        text(&again)
    );
}
