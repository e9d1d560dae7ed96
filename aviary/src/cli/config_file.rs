//! `--config aviary.toml` (or `AVIARY_CONFIG`): flag values from a TOML file.
//!
//! Keys are flag names without `--` (`listen`, `redis-url`, `trusted-proxies`); a table named
//! after a command (`[data-plane]`, `[control-plane]`, `[dev]`, `[migrate]`, `[token]`, ...)
//! holds values for that command only and wins over the top level, so one file can describe a
//! whole cluster. A top-level key that is a flag of another command is left alone; a key that is
//! no flag of any command, or not of its table's command, is an error naming it.
//!
//! Precedence is flag > `AVIARY_*` variable > file > default. Every flag already has a variable
//! (a test holds that), so the file is applied before clap parses, by setting the variable of
//! each value whose variable is unset: clap then does the rest, with its own validation and
//! error messages naming the flag.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::CommandFactory;

use crate::args::Cli;

/// What a config file contributed, for `aviary config check` to say where each value came from.
#[derive(Debug, Default)]
pub struct Applied {
    /// The file read, if any.
    pub path: Option<PathBuf>,
    /// Variables (`AVIARY_*`) set from the file.
    pub from_file: BTreeSet<String>,
    /// Variables whose file value was overridden by the environment.
    pub overridden: BTreeSet<String>,
    /// Top-level keys that are flags of other commands only.
    pub other_commands: Vec<String>,
}

/// Finds the config file named by `--config` or `AVIARY_CONFIG` and applies it to the command
/// `argv` runs (see the module docs). Runs before any thread starts: it sets variables.
pub fn apply(argv: &[OsString]) -> anyhow::Result<Applied> {
    let Some(path) = config_path(argv) else { return Ok(Applied::default()) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let mut root = Cli::command();
    root.build();
    let leaf = leaf_command(&root, argv);
    let values = select(&root, leaf, &table).with_context(|| format!("in config file {}", path.display()))?;
    let mut applied = Applied { path: Some(path), ..Applied::default() };
    applied.other_commands = values.other_commands;
    for (variable, value) in values.chosen {
        if std::env::var_os(&variable).is_some_and(|v| !v.is_empty()) {
            applied.overridden.insert(variable);
            continue;
        }
        // SAFETY: called first thing in `main`, before the runtime or any other thread exists,
        // so nothing reads the environment concurrently.
        unsafe { std::env::set_var(&variable, value) };
        applied.from_file.insert(variable);
    }
    Ok(applied)
}

/// `--config FILE`, `--config=FILE`, else a non-empty `AVIARY_CONFIG`.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("AVIARY_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The command `argv` runs (`data-plane`, or `dev` in `config check dev`): the deepest
/// subcommand named, skipping option values.
fn leaf_command<'a>(root: &'a clap::Command, argv: &[OsString]) -> &'a clap::Command {
    let mut current = root;
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if let Some(long) = text.strip_prefix("--") {
            let takes_value = find_flag(current, long)
                .or_else(|| find_flag(root, long))
                .is_some_and(|a| a.get_action().takes_values() && a.get_num_args().is_none_or(|n| n.min_values() != 0));
            if !long.contains('=') && takes_value {
                args.next();
            }
        } else if let Some(sub) = current.find_subcommand(text.as_ref()) {
            current = sub;
        }
    }
    current
}

fn find_flag<'a>(command: &'a clap::Command, long: &str) -> Option<&'a clap::Arg> {
    command.get_arguments().find(|a| a.get_long() == Some(long))
}

/// Flags a file may set: every long flag with a value, except `--config` itself and clap's own.
fn settable(arg: &clap::Arg) -> bool {
    arg.get_long().is_some_and(|l| !matches!(l, "config" | "help" | "version"))
}

/// Every command (at any depth) by name; `config check dev` shares `dev`'s name and flags.
fn commands(root: &clap::Command) -> BTreeMap<String, Vec<&clap::Command>> {
    fn walk<'a>(command: &'a clap::Command, out: &mut BTreeMap<String, Vec<&'a clap::Command>>) {
        for sub in command.get_subcommands() {
            if sub.get_name() != "help" {
                out.entry(sub.get_name().to_owned()).or_default().push(sub);
                walk(sub, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &mut out);
    out
}

struct Selected {
    /// Variable name -> value, for the command being run.
    chosen: BTreeMap<String, String>,
    other_commands: Vec<String>,
}

fn select(root: &clap::Command, leaf: &clap::Command, table: &toml::Table) -> anyhow::Result<Selected> {
    let commands = commands(root);
    let any_flag: BTreeSet<&str> = std::iter::once(root)
        .chain(commands.values().flatten().copied())
        .flat_map(|c| c.get_arguments())
        .filter(|a| settable(a))
        .filter_map(|a| a.get_long())
        .collect();
    let leaf_flag = |key: &str| find_flag(leaf, key).or_else(|| find_flag(root, key)).filter(|a| settable(a));
    let mut chosen = BTreeMap::new();
    let mut other_commands = Vec::new();
    // Top level first, then the leaf's table over it.
    for (key, value) in table {
        if value.is_table() {
            continue;
        }
        if !any_flag.contains(key.as_str()) {
            bail!("unknown key `{key}`: no aviary command has a --{key} flag");
        }
        match leaf_flag(key) {
            Some(arg) => {
                chosen.insert(variable(arg)?, render(key, arg, value)?);
            }
            None => other_commands.push(key.clone()),
        }
    }
    for (name, value) in table {
        let Some(section) = value.as_table() else { continue };
        let Some(targets) = commands.get(name.as_str()) else {
            bail!("unknown table `[{name}]`: no aviary command is called {name}");
        };
        for (key, value) in section {
            let in_target = targets.iter().any(|c| find_flag(c, key).is_some_and(settable))
                || find_flag(root, key).is_some_and(settable);
            if !in_target {
                bail!("unknown key `{key}` in `[{name}]`: `aviary {name}` has no --{key} flag");
            }
            if name == leaf.get_name() {
                let arg = leaf_flag(key).expect("checked above against the same command");
                chosen.insert(variable(arg)?, render(key, arg, value)?);
            }
        }
    }
    Ok(Selected { chosen, other_commands })
}

fn variable(arg: &clap::Arg) -> anyhow::Result<String> {
    match arg.get_env() {
        Some(env) => Ok(env.to_string_lossy().into_owned()),
        None => bail!("--{} has no AVIARY_* variable, so a config file cannot set it", arg.get_long().unwrap_or("?")),
    }
}

/// The text clap would read from the variable: scalars as written, arrays joined with the
/// flag's delimiter.
fn render(key: &str, arg: &clap::Arg, value: &toml::Value) -> anyhow::Result<String> {
    fn scalar(key: &str, value: &toml::Value) -> anyhow::Result<String> {
        Ok(match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!("`{key}` must be a string, number or boolean, not {}", other.type_str()),
        })
    }
    match value {
        toml::Value::Array(items) => {
            let Some(delimiter) = arg.get_value_delimiter() else {
                bail!("`{key}` takes one value, not a list");
            };
            let items = items.iter().map(|v| scalar(key, v)).collect::<anyhow::Result<Vec<_>>>()?;
            Ok(items.join(&delimiter.to_string()))
        }
        other => scalar(key, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("aviary").chain(args.iter().copied()).map(OsString::from).collect()
    }

    fn built() -> clap::Command {
        let mut root = Cli::command();
        root.build();
        root
    }

    #[test]
    fn every_flag_of_every_command_has_a_variable() {
        let root = built();
        for commands in commands(&root).values() {
            for command in commands {
                for arg in command.get_arguments().filter(|a| settable(a)) {
                    assert!(arg.get_env().is_some(), "aviary {} --{:?} has no env", command.get_name(), arg.get_long());
                }
            }
        }
    }

    #[test]
    fn the_command_run_is_found_past_option_values() {
        let root = built();
        assert_eq!(
            leaf_command(&root, &argv(&["--log", "dev", "data-plane", "--listen", "x"])).get_name(),
            "data-plane"
        );
        assert_eq!(leaf_command(&root, &argv(&["config", "check", "dev"])).get_name(), "dev");
        assert_eq!(leaf_command(&root, &argv(&["--config=a.toml", "migrate"])).get_name(), "migrate");
    }

    #[test]
    fn tables_override_the_top_level_and_other_commands_keys_are_left() {
        let root = built();
        let table: toml::Table = toml::from_str(
            "listen = \"0.0.0.0:1\"\ndatabase-url = \"postgres://x\"\ntrusted-proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n\
             [data-plane]\nlisten = \"0.0.0.0:2\"\n[control-plane]\nlisten = \"0.0.0.0:3\"\n",
        )
        .unwrap();
        let leaf = leaf_command(&root, &argv(&["data-plane"]));
        let selected = select(&root, leaf, &table).unwrap();
        assert_eq!(selected.chosen["AVIARY_LISTEN"], "0.0.0.0:2");
        assert_eq!(selected.chosen["AVIARY_TRUSTED_PROXIES"], "10.0.0.0/8,127.0.0.1");
        assert_eq!(selected.other_commands, ["database-url"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let root = built();
        let leaf = leaf_command(&root, &argv(&["dev"]));
        for (text, wanted) in [
            ("listn = \"x\"", "unknown key `listn`"),
            ("[dev]\ndatabase-url = \"x\"", "unknown key `database-url` in `[dev]`"),
            ("[deev]\nlisten = \"x\"", "unknown table `[deev]`"),
            ("listen = [\"a\"]", "`listen` takes one value"),
        ] {
            let table: toml::Table = toml::from_str(text).unwrap();
            let err = select(&root, leaf, &table).err().expect(text).to_string();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }
}
