//! A real Kubernetes API server for the enrichment tests, built once from Debian bookworm's
//! source package `kubernetes` (upstream v1.20.2 with its vendor tree) with Debian's Go 1.19,
//! and cached outside the work tree. etcd comes from Debian's `etcd-server`.
//! No registry ships a kube-apiserver binary; this is the one way to get a real one here.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    setup::debian_packages,
    shell::{self, is_root, output},
};

const SOURCE_VERSION: &str = "1.20.5+really1.20.2-1.1+deb12u1";
const UPSTREAM_DIR: &str = "kubernetes-1.20.2";
const KUBE_VERSION: &str = "v1.20.2";
const KUBE_COMMIT: &str = "faecb196815e248d3ecfb03c680a4507229c2a56";
const DEB_SRC_FILE: &str = "/etc/apt/sources.list.d/collector-tests-deb-src.sources";

/// The cached binary's path (built when missing).
pub fn ensure() -> anyhow::Result<PathBuf> {
    debian_packages(
        "Kubernetes test peers (etcd, kubectl, TLS material)",
        &["etcd-server", "openssl"],
    )?;
    if output("sh", &["-c", "command -v kubectl"]).is_none() {
        debian_packages("kubectl", &["kubernetes-client"])?;
    }
    let cache = cache_dir();
    let binary = cache.join(format!("kube-apiserver-{KUBE_VERSION}"));
    if output(binary.to_str().unwrap_or_default(), &["--version"])
        .is_some_and(|v| v.contains(KUBE_VERSION))
    {
        eprintln!(
            "xtask: ok: kube-apiserver {KUBE_VERSION} for the Kubernetes tests ({})",
            binary.display()
        );
        return Ok(binary);
    }
    if !is_root() {
        bail!(
            "building kube-apiserver needs root (apt-get source and packages); run cargo xtask test as root"
        );
    }
    shell::step(
        &format!(
            "building kube-apiserver {KUBE_VERSION} from Debian's source package (once, ~5 min)"
        ),
        || build(&cache, &binary),
    )?;
    Ok(binary)
}

fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into())
        .join(".cache/collector-tests")
}

fn build(cache: &std::path::Path, binary: &std::path::Path) -> anyhow::Result<()> {
    deb_src_entries()?;
    debian_packages(
        "kube-apiserver build dependencies",
        &[
            "golang-1.19-go",
            "golang-github-modern-go-reflect2-dev",
            "rsync",
            "dpkg-dev",
        ],
    )?;
    let work = cache.join("kube-build");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    shell::run(
        Command::new("apt-get")
            .args(["source", "--download-only", "-q"])
            .arg(format!("kubernetes={SOURCE_VERSION}"))
            .current_dir(&work),
    )
    .context("downloading Debian's kubernetes source package")?;
    let orig = std::fs::read_dir(&work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".orig.tar.gz"))
        .context("no .orig.tar.gz in the source package")?;
    shell::run(Command::new("tar").arg("xzf").arg(&orig).current_dir(&work))?;
    let tree = work.join(UPSTREAM_DIR);

    // The vendored reflect2 v1.0.1 crashes at run time with Go ≥ 1.18; Debian's copy is fixed.
    let vendored = tree.join("vendor/github.com/modern-go/reflect2");
    let license = std::fs::read(vendored.join("LICENSE")).context("vendored reflect2 LICENSE")?;
    std::fs::remove_dir_all(&vendored)?;
    shell::run(
        Command::new("cp")
            .arg("-rL")
            .arg("/usr/share/gocode/src/github.com/modern-go/reflect2")
            .arg(&vendored),
    )?;
    let _ = std::fs::remove_file(vendored.join("go.mod"));
    std::fs::write(vendored.join("LICENSE"), license)?;

    let path = format!(
        "/usr/lib/go-1.19/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    shell::run(
        Command::new("make")
            .arg("WHAT=cmd/kube-apiserver")
            .current_dir(&tree)
            .env("PATH", path)
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0")
            .env("KUBE_GIT_VERSION", KUBE_VERSION)
            .env("KUBE_GIT_TREE_STATE", "clean")
            .env("KUBE_GIT_COMMIT", KUBE_COMMIT)
            .env("GOLDFLAGS", "-s -w"),
    )
    .context("make WHAT=cmd/kube-apiserver")?;
    let built = tree.join("_output/local/bin/linux/amd64/kube-apiserver");
    std::fs::copy(&built, binary)
        .with_context(|| format!("copying {} to {}", built.display(), binary.display()))?;
    // The tree and Go's build cache are ~2 GB; the binary is all we keep.
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// `apt-get source` needs deb-src entries; the image has none. Ours mirror the machine's own
/// `deb` entries (same URIs, suites and keys), read at run time.
fn deb_src_entries() -> anyhow::Result<()> {
    let have_src = output("sh", &["-c", "grep -rhsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/"])
        .is_some_and(|s| !s.trim().is_empty());
    if have_src {
        return Ok(());
    }
    let mut entries = Vec::new();
    for file in std::fs::read_dir("/etc/apt/sources.list.d")?.filter_map(Result::ok) {
        let path = file.path();
        if path.extension().is_some_and(|e| e == "sources") {
            let text = std::fs::read_to_string(&path)?;
            entries.extend(deb_src_stanzas(&text));
        }
    }
    if let Ok(list) = std::fs::read_to_string("/etc/apt/sources.list") {
        entries.extend(
            list.lines()
                .filter(|l| l.trim_start().starts_with("deb ") && l.contains("debian"))
                .map(|l| l.trim_start().replacen("deb ", "deb-src ", 1)),
        );
    }
    if entries.is_empty() {
        bail!("no Debian apt source found to derive a deb-src entry from");
    }
    let file = if entries.iter().all(|e| e.starts_with("deb-src ")) {
        DEB_SRC_FILE.replace(".sources", ".list")
    } else {
        DEB_SRC_FILE.to_owned()
    };
    std::fs::write(&file, entries.join("\n\n") + "\n")
        .with_context(|| format!("writing {file}"))?;
    eprintln!("xtask: wrote {file} (deb-src mirrors of this machine's Debian sources)");
    shell::run(Command::new("apt-get").args(["update", "-q"]))
}

/// The `deb` stanzas of a deb822 `.sources` file that point at Debian, as `deb-src` stanzas.
fn deb_src_stanzas(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|stanza| {
            stanza.lines().any(|l| l.trim() == "Types: deb")
                && stanza
                    .lines()
                    .any(|l| l.starts_with("URIs:") && l.contains("debian"))
        })
        .map(|stanza| {
            stanza
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| {
                    if l.trim() == "Types: deb" {
                        "Types: deb-src"
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_src_stanzas_mirror_debian_deb_entries() {
        let text = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                    Types: deb\nURIs: https://repo.example/node\nSuites: nodistro\n";
        assert_eq!(
            deb_src_stanzas(text),
            vec![
                "Types: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main"
            ]
        );
    }
}
