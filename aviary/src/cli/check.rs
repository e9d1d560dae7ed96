//! `aviary config check <role> [flags]`: validates a role's configuration without starting it.
//!
//! clap has already parsed the flags, variables and file (a malformed value stops there, exit
//! 2, naming the flag). This adds the checks a role would otherwise only make at start-up or
//! not at all (a log filter that silently falls back to `info`, a credentials key of the wrong
//! length, a control-plane URL tonic cannot dial, two listeners on one address), then prints
//! the effective configuration as TOML a `--config` file accepts, secrets redacted, each line
//! naming where its value came from. Any problem: one `error: --flag: ...` line each, exit 1.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

use crate::args::{Cli, Role};
use crate::cli::config_file::Applied;

pub fn run(cli: &Cli, role: &Role, matches: &ArgMatches, applied: &Applied) -> ExitCode {
    let problems = problems(cli, role);
    if !problems.is_empty() {
        for (flag, problem) in &problems {
            eprintln!("error: --{flag}: {problem}");
        }
        eprintln!("aviary config check: {} invalid value(s); nothing was started", problems.len());
        return ExitCode::FAILURE;
    }
    let mut root = Cli::command();
    root.build();
    let check = root.find_subcommand("config").and_then(|c| c.find_subcommand("check")).expect("config check exists");
    let (name, role_matches) = matches
        .subcommand_matches("config")
        .and_then(|m| m.subcommand_matches("check"))
        .and_then(|m| m.subcommand())
        .expect("clap parsed a role");
    let command = check.find_subcommand(name).expect("the parsed role exists");
    println!("# aviary {name}: the configuration is valid. Effective values; secrets redacted.");
    if let Some(path) = &applied.path {
        println!("# config file: {}", path.display());
    }
    if !applied.other_commands.is_empty() {
        println!("# keys for other commands, not used here: {}", applied.other_commands.join(", "));
    }
    let globals = root.get_arguments().filter(|a| a.is_global_set());
    let lines = globals
        .map(|a| (a, matches))
        .chain(command.get_arguments().filter(|a| !a.is_global_set()).map(|a| (a, role_matches)));
    for (arg, matches) in lines {
        let Some(key) = arg.get_long().filter(|l| !matches!(*l, "config" | "help" | "version")) else { continue };
        let id = arg.get_id().as_str();
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let variable = arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) if applied.from_file.contains(&variable) => "file".to_owned(),
            Some(ValueSource::EnvVariable) => format!("env {variable}"),
            Some(ValueSource::DefaultValue) => "default".to_owned(),
            _ if raw.is_empty() => {
                println!("# {key} = (unset)");
                continue;
            }
            _ => "default".to_owned(),
        };
        let many = arg.get_value_delimiter().is_some() || matches!(arg.get_action(), clap::ArgAction::Append);
        let value = if arg.is_hide_env_values_set() {
            toml_string("<redacted>")
        } else if many {
            format!("[{}]", raw.iter().map(|v| toml_scalar(&redact_url_password(v))).collect::<Vec<_>>().join(", "))
        } else {
            raw.first().map(|v| toml_scalar(&redact_url_password(v))).unwrap_or_default()
        };
        println!("{key} = {value}  # {source}");
    }
    ExitCode::SUCCESS
}

/// `scheme://user:secret@host/...` with the password redacted (database and Redis URLs).
fn redact_url_password(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else { return text.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return text.to_owned() };
    let Some(colon) = rest[..at].find(':') else { return text.to_owned() };
    format!("{scheme}://{}:<redacted>{}", &rest[..colon], &rest[at..])
}

/// A TOML basic string: JSON's string escapes are all valid TOML escapes.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// Numbers and booleans bare, everything else quoted (the file reads either the same way).
fn toml_scalar(text: &str) -> String {
    if text.parse::<i64>().is_ok() || text == "true" || text == "false" { text.to_owned() } else { toml_string(text) }
}

/// (flag, what is wrong) for every value clap accepted but the role would refuse or ignore.
fn problems(cli: &Cli, role: &Role) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&cli.log) {
        out.push(("log", format!("not a log filter ({e}); e.g. `info` or `aviary_data_plane=debug,info`")));
    }
    let credentials_key = |key: &Option<String>, out: &mut Vec<_>| {
        if let Some(key) = key.as_deref().filter(|k| !k.trim().is_empty())
            && let Err(e) = aviary_core::sealing::SecretBox::parse(key)
        {
            out.push(("credentials-key", e.to_string()));
        }
    };
    let distinct = |pairs: &[(&'static str, Option<SocketAddr>)], out: &mut Vec<_>| {
        for (i, (flag, addr)) in pairs.iter().enumerate() {
            let Some(addr) = addr.filter(|a| a.port() != 0) else { continue };
            if let Some((other, _)) = pairs[..i].iter().find(|(_, a)| *a == Some(addr)) {
                out.push((*flag, format!("{addr} is also --{other}'s address")));
            }
        }
    };
    let otlp_endpoint = |traces: &crate::args::TraceArgs, out: &mut Vec<_>| {
        if let Some(endpoint) = traces.otlp_endpoint.as_deref().filter(|e| !e.trim().is_empty())
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            out.push((
                "otlp-endpoint",
                format!("`{endpoint}` is not an http:// or https:// URL (e.g. http://otel-collector:4318)"),
            ));
        }
    };
    match role {
        Role::Dev(args) => {
            otlp_endpoint(&args.traces, &mut out);
            credentials_key(&args.credentials_key, &mut out);
            let metrics = crate::args::metrics_listen(args.metrics_listen, args.listen);
            distinct(
                &[
                    ("listen", Some(args.listen)),
                    ("grpc-listen", Some(args.grpc_listen)),
                    ("metrics-listen", Some(metrics)),
                ],
                &mut out,
            );
        }
        Role::ControlPlane(args) => {
            otlp_endpoint(&args.traces, &mut out);
            database_url(&args.database_url, &mut out);
            credentials_key(&args.credentials_key, &mut out);
            if args.operator_token.trim().is_empty() {
                out.push(("operator-token", "must not be empty".to_owned()));
            }
            let metrics = crate::args::metrics_listen(args.metrics_listen, args.listen);
            distinct(
                &[
                    ("listen", Some(args.listen)),
                    ("grpc-listen", Some(args.grpc_listen)),
                    ("metrics-listen", Some(metrics)),
                ],
                &mut out,
            );
        }
        Role::DataPlane(args) => {
            otlp_endpoint(&args.traces, &mut out);
            match tonic::transport::Endpoint::from_shared(args.control_plane.clone()) {
                Ok(endpoint) if matches!(endpoint.uri().scheme_str(), Some("http" | "https")) => {}
                _ => out.push((
                    "control-plane",
                    format!("`{}` is not an http:// or https:// URL (e.g. http://cp:8071)", args.control_plane),
                )),
            }
            if args.node_token.trim().is_empty() {
                out.push(("node-token", "must not be empty (the control plane's --node-token)".to_owned()));
            }
            for url in &args.redis_urls {
                if !["redis://", "rediss://", "unix://", "redis+unix://"].iter().any(|s| url.starts_with(s)) {
                    out.push((
                        "redis-url",
                        format!("`{}` is not a redis://, rediss:// or unix:// URL", redact_url_password(url)),
                    ));
                }
            }
            if args.cache_dir.exists() && !args.cache_dir.is_dir() {
                out.push(("cache-dir", format!("{} exists and is not a directory", args.cache_dir.display())));
            }
            let metrics = crate::args::metrics_listen(args.metrics_listen, args.listen);
            distinct(&[("listen", Some(args.listen)), ("metrics-listen", Some(metrics))], &mut out);
        }
        Role::Migrate(args) => database_url(&args.database_url, &mut out),
    }
    out
}

fn database_url(url: &str, out: &mut Vec<(&'static str, String)>) {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        out.push(("database-url", format!("`{}` is not a postgres:// URL", redact_url_password(url))));
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url_password;

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(redact_url_password("postgres://u:p@h:5432/db"), "postgres://u:<redacted>@h:5432/db");
        assert_eq!(redact_url_password("redis://:pw@r:6379"), "redis://:<redacted>@r:6379");
        assert_eq!(redact_url_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url_password("0.0.0.0:8080"), "0.0.0.0:8080");
    }
}
