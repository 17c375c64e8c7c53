//! Rejections and precedence without the environment (the binary's tests cover the
//! environment: it is process-wide, and unit tests run in parallel).

use super::*;
use crate::cli::Command;

/// A config file removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn file(text: &str) -> TempFile {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "collector-config-test-{}-{}.yaml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).unwrap();
    TempFile(path)
}

fn run_with(file_text: &str, flags: &[&str]) -> Result<Parsed, CliError> {
    let f = file(file_text);
    let mut argv: Vec<OsString> = ["collector", "run", "-c"].map(OsString::from).to_vec();
    argv.push(f.path().into());
    argv.extend(flags.iter().map(OsString::from));
    parse(argv)
}

fn config_error(file_text: &str) -> String {
    match run_with(file_text, &[]) {
        Err(CliError::Config(m)) => m,
        Err(CliError::Clap(e)) => panic!("clap error instead: {e}"),
        Ok(_) => panic!("accepted: {file_text}"),
    }
}

fn source_of(parsed: &Parsed, key: &str) -> (String, &'static str) {
    let (_, v, s) = parsed
        .effective
        .iter()
        .find(|(k, _, _)| k == key)
        .unwrap_or_else(|| panic!("{key} not listed"));
    (v.clone(), s)
}

#[test]
fn the_file_fills_what_flags_do_not_set() {
    let parsed = run_with(
        "exporter: exchanges\ntrace-hold-ms: 250\nexclude-process: [sshd, chronyd]\n",
        &["--trace-hold-ms", "900"],
    )
    .unwrap();
    let Command::Run(args) = &parsed.cli.command else {
        panic!()
    };
    assert_eq!(args.exporter, crate::cli::ExporterKind::Exchanges);
    assert_eq!(args.trace_hold_ms, 900, "the flag beats the file");
    assert_eq!(args.exclude_processes, ["sshd", "chronyd"]);
    assert_eq!(source_of(&parsed, "trace-hold-ms"), ("900".into(), "flag"));
    assert_eq!(
        source_of(&parsed, "exporter"),
        ("exchanges".into(), "config file")
    );
    assert_eq!(source_of(&parsed, "capture-bytes").1, "default");
}

#[test]
fn an_empty_file_changes_nothing() {
    let parsed = run_with("", &[]).unwrap();
    assert_eq!(source_of(&parsed, "exporter"), ("stdout".into(), "default"));
}

#[test]
fn every_rejection_names_the_file_and_the_key() {
    let cases = [
        ("exporterr: xray\n", "unknown key `exporterr`"),
        (
            "capture-bytes: 0\n",
            "key `capture-bytes`: invalid value '0'",
        ),
        (
            "capture-bytes: lots\n",
            "key `capture-bytes`: invalid value 'lots'",
        ),
        (
            "ringbuf-bytes: 5000\n",
            "key `ringbuf-bytes`: invalid value '5000'",
        ),
        ("exporter: kafka\n", "key `exporter`: invalid value 'kafka'"),
        (
            "trace-hold-ms: 999999\n",
            "key `trace-hold-ms`: invalid value '999999'",
        ),
        ("exporter:\n", "key `exporter`: no value"),
        (
            "exporter: {a: b}\n",
            "key `exporter`: expected a value or a list of values",
        ),
        (
            "- exporter\n",
            "expected a mapping of option names to values",
        ),
        ("exporter: [xray\n", "not valid YAML"),
        ("1: x\n", "key Number(1) is not a string"),
        ("config: other.yaml\n", "unknown key `config`"),
    ];
    for (text, want) in cases {
        let msg = config_error(text);
        assert!(msg.starts_with("config file /"), "{msg}");
        assert!(msg.contains(want), "{text:?}: {msg}");
    }
}

#[test]
fn an_unreadable_file_is_named() {
    let argv = ["collector", "run", "-c", "/nonexistent/collector.yaml"].map(OsString::from);
    match parse(argv.to_vec()) {
        Err(CliError::Config(m)) => {
            assert!(
                m.contains("/nonexistent/collector.yaml: cannot read"),
                "{m}"
            )
        }
        _ => panic!("accepted"),
    }
}

#[test]
fn otlp_header_values_are_never_printed() {
    let parsed = run_with(
        "otlp-headers: \"x-honeycomb-team=s3cr3t-key,authorization=Bearer%20abc\"\n",
        &[],
    )
    .unwrap_or_else(|_| panic!("parses"));
    let text = render_effective(&parsed.effective);
    assert!(
        text.contains("otlp-headers: x-honeycomb-team=(hidden),authorization=(hidden)"),
        "{text}"
    );
    assert!(!text.contains("s3cr3t") && !text.contains("abc"), "{text}");
}
