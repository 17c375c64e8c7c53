//! Where `run`'s settings come from. Every option is a flag, an environment variable
//! (`COLLECTOR_*`, plus `AWS_REGION`, `NODE_NAME`, …) and a key of the YAML file given with
//! `-c/--config`; precedence: flag > environment > config file > default.
//!
//! The file's schema is `run`'s own: each key is a long option name (`capture-bytes: 4096`,
//! `exclude-process: [sshd, chronyd]`), so `collector run --help` documents both. Unknown keys
//! and invalid values are rejected at start-up with the key named; values are checked by the
//! same parsers as the flags.

use std::{collections::BTreeSet, ffi::OsString, path::PathBuf};

use clap::{CommandFactory as _, FromArgMatches as _, parser::ValueSource};
use serde_yaml_ng::Value;

use crate::cli::Cli;

/// The parsed command line, and for `run`, each option's effective value and its origin.
pub struct Parsed {
    pub cli: Cli,
    pub effective: Vec<(String, String, &'static str)>,
}

#[derive(Debug)]
pub enum CliError {
    /// Usage errors, `--help`, `--version`: clap prints them.
    Clap(clap::Error),
    /// A config file that cannot be used: the message names the file and the key.
    Config(String),
}

pub fn parse(argv: Vec<OsString>) -> Result<Parsed, CliError> {
    let matches = Cli::command()
        .try_get_matches_from(&argv)
        .map_err(CliError::Clap)?;
    let mut from_file = BTreeSet::new();
    let matches = match matches.subcommand() {
        Some(("run", run)) if run.get_one::<PathBuf>("config").is_some() => {
            let path = run.get_one::<PathBuf>("config").expect("checked");
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::Config(format!("config file {}: cannot read: {e}", path.display()))
            })?;
            let extra = file_args(&text, run, &mut from_file)
                .map_err(|m| CliError::Config(format!("config file {}: {m}", path.display())))?;
            // No global options: argv[1] is the subcommand; the file's options go right
            // after it, where they cannot shadow anything the command line or env set.
            let mut full: Vec<OsString> = argv.iter().take(2).cloned().collect();
            full.extend(extra.into_iter().map(OsString::from));
            full.extend(argv.iter().skip(2).cloned());
            Cli::command()
                .try_get_matches_from(full)
                .map_err(CliError::Clap)?
        }
        _ => matches,
    };
    let effective = match matches.subcommand() {
        Some(("run", run)) => effective(run, &from_file),
        _ => Vec::new(),
    };
    let cli = Cli::from_arg_matches(&matches).map_err(CliError::Clap)?;
    Ok(Parsed { cli, effective })
}

fn run_command() -> clap::Command {
    Cli::command()
        .find_subcommand("run")
        .expect("run exists")
        .clone()
}

/// The file's settings as `--key=value` arguments, for keys neither a flag nor an environment
/// variable set.
fn file_args(
    text: &str,
    run: &clap::ArgMatches,
    from_file: &mut BTreeSet<String>,
) -> Result<Vec<String>, String> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let map = match doc {
        Value::Mapping(m) => m,
        Value::Null => return Ok(Vec::new()),
        _ => return Err("expected a mapping of option names to values".into()),
    };
    let cmd = run_command();
    let known: Vec<&str> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "config" | "help" | "print-config"))
        .collect();
    let mut args = Vec::new();
    for (key, value) in map {
        let key = match key {
            Value::String(s) => s,
            other => return Err(format!("key {other:?} is not a string")),
        };
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && known.contains(&key.as_str()))
        else {
            return Err(format!(
                "unknown key `{key}` (keys are `collector run` long option names: {})",
                known.join(", ")
            ));
        };
        let values = match value {
            Value::Sequence(items) => items
                .into_iter()
                .map(|v| scalar(&key, v))
                .collect::<Result<Vec<_>, _>>()?,
            other => vec![scalar(&key, other)?],
        };
        let key_args: Vec<String> = if arg.get_action().takes_values() {
            values.iter().map(|v| format!("--{key}={v}")).collect()
        } else {
            match values.as_slice() {
                [v] if v == "true" => vec![format!("--{key}")],
                [v] if v == "false" => vec![],
                _ => return Err(format!("key `{key}`: expected true or false")),
            }
        };
        // The same parser as the flag, on this key alone, so the error names the key.
        if let Err(e) = Cli::command().try_get_matches_from(
            ["collector", "run"]
                .into_iter()
                .map(String::from)
                .chain(key_args.iter().cloned()),
        ) {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            return Err(format!(
                "key `{key}`: {}",
                first.strip_prefix("error: ").unwrap_or(first)
            ));
        }
        let id = arg.get_id().as_str();
        if matches!(
            run.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        from_file.insert(id.to_owned());
        args.extend(key_args);
    }
    Ok(args)
}

fn scalar(key: &str, value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Err(format!("key `{key}`: no value")),
        _ => Err(format!("key `{key}`: expected a value or a list of values")),
    }
}

/// Each option's value and where it came from (for `run --print-config`).
fn effective(
    run: &clap::ArgMatches,
    from_file: &BTreeSet<String>,
) -> Vec<(String, String, &'static str)> {
    run_command()
        .get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "print-config"))
        .map(|a| {
            let id = a.get_id().as_str();
            let value = run
                .get_raw(id)
                .map(|vs| {
                    vs.map(|v| v.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let source = match run.value_source(id) {
                Some(ValueSource::CommandLine) if from_file.contains(id) => "config file",
                Some(ValueSource::CommandLine) => "flag",
                Some(ValueSource::EnvVariable) => "environment",
                Some(ValueSource::DefaultValue) => "default",
                _ => "unset",
            };
            let name = a.get_long().unwrap_or(id).to_owned();
            (name.clone(), hide_secrets(&name, value), source)
        })
        .collect()
}

/// Header values are credentials (API keys, tokens): only their names are printed.
fn hide_secrets(name: &str, value: String) -> String {
    if name != "otlp-headers" || value.is_empty() {
        return value;
    }
    value
        .split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) => format!("{}=(hidden)", k.trim()),
            None => "(hidden)".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `key: value  # source` lines.
pub fn render_effective(effective: &[(String, String, &'static str)]) -> String {
    effective
        .iter()
        .map(|(k, v, s)| format!("{k}: {v}  # {s}\n"))
        .collect()
}

#[cfg(test)]
mod tests;
